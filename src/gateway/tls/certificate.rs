//! A `kubernetes.io/tls` Secret made into a certificate the listeners can serve, or the reason
//! it cannot be: missing keys, bad PEM, a key that is not the certificate's, an expired or
//! not yet valid certificate.

use std::{sync::Arc, time::SystemTime};

use k8s_openapi::api::core::v1::Secret;
use rustls::{
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    sign::CertifiedKey,
};

use super::validity::{Validity, read_validity};

/// The Secret type the Gateway API and cert-manager use for a certificate and its key.
pub const TLS_SECRET_TYPE: &str = "kubernetes.io/tls";

/// Why a Secret cannot serve as a listener's certificate. The messages go into the listener's
/// `ResolvedRefs` condition, after the Secret's name.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CertificateError {
    #[error("does not exist")]
    NotFound,
    #[error("is of type {0:?}, not {TLS_SECRET_TYPE:?}")]
    WrongType(String),
    #[error("has no {0} key")]
    MissingKey(&'static str),
    #[error("tls.crt holds no PEM certificate")]
    NoCertificate,
    #[error("tls.crt is not valid PEM: {0}")]
    BadCertificatePem(String),
    #[error("tls.key holds no PEM private key (PKCS#8, PKCS#1 or SEC1): {0}")]
    BadKeyPem(String),
    #[error("tls.key cannot be used: {0}")]
    UnusableKey(String),
    #[error("tls.key is not the key of the certificate in tls.crt")]
    KeyMismatch,
    #[error("the certificate in tls.crt cannot be read: {0}")]
    UnreadableCertificate(String),
    #[error("the certificate in tls.crt expired at {0}")]
    Expired(String),
    #[error("the certificate in tls.crt is not valid before {0}")]
    NotYetValid(String),
}

/// The certificate chain and key of `secret`, checked at `now`.
pub fn from_secret(
    secret: &Secret,
    provider: &CryptoProvider,
    now: SystemTime,
) -> Result<Arc<CertifiedKey>, CertificateError> {
    let kind = secret.type_.as_deref().unwrap_or("Opaque");
    if kind != TLS_SECRET_TYPE {
        return Err(CertificateError::WrongType(kind.to_owned()));
    }
    let data = secret.data.as_ref();
    let field = |name: &'static str| {
        data.and_then(|d| d.get(name))
            .map(|bytes| bytes.0.as_slice())
            .filter(|bytes| !bytes.is_empty())
            .ok_or(CertificateError::MissingKey(name))
    };
    from_pem(field("tls.crt")?, field("tls.key")?, provider, now)
}

/// The certificate chain `cert_pem` (leaf first) with its private key `key_pem`, checked at `now`.
pub fn from_pem(
    cert_pem: &[u8],
    key_pem: &[u8],
    provider: &CryptoProvider,
    now: SystemTime,
) -> Result<Arc<CertifiedKey>, CertificateError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| CertificateError::BadCertificatePem(error.to_string()))?;
    let leaf = chain.first().ok_or(CertificateError::NoCertificate)?;
    let Validity {
        not_before,
        not_after,
    } = read_validity(leaf).map_err(|error| CertificateError::UnreadableCertificate(error.to_string()))?;
    if now > not_after {
        return Err(CertificateError::Expired(httpdate::fmt_http_date(not_after)));
    }
    if now < not_before {
        return Err(CertificateError::NotYetValid(httpdate::fmt_http_date(not_before)));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|error| CertificateError::BadKeyPem(error.to_string()))?;
    let key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|error| CertificateError::UnusableKey(error.to_string()))?;
    let certified = CertifiedKey::new(chain, key);
    match certified.keys_match() {
        Ok(()) => Ok(Arc::new(certified)),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(CertificateError::KeyMismatch)
        }
        Err(error) => Err(CertificateError::UnreadableCertificate(error.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use k8s_openapi::ByteString;

    use super::*;

    fn provider() -> Arc<CryptoProvider> {
        super::super::provider()
    }

    struct Pair {
        cert: String,
        key: String,
    }

    /// A self-signed ECDSA P-256 certificate for `name`, valid from 2020 through 2099.
    fn pair(name: &str) -> Pair {
        let key = rcgen::KeyPair::generate().expect("a key");
        let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).expect("params");
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2099, 12, 31);
        let cert = params.self_signed(&key).expect("a certificate");
        Pair {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    fn year(year: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs((year - 1970) * 365 * 24 * 3600)
    }

    fn secret(type_: &str, cert: &str, key: &str) -> Secret {
        Secret {
            type_: Some(type_.to_owned()),
            data: Some(
                [
                    ("tls.crt".to_owned(), ByteString(cert.as_bytes().to_vec())),
                    ("tls.key".to_owned(), ByteString(key.as_bytes().to_vec())),
                ]
                .into(),
            ),
            ..Secret::default()
        }
    }

    #[test]
    fn a_valid_tls_secret_gives_its_certificate_and_key() {
        let p = pair("shop.example.com");
        let key = from_secret(
            &secret(TLS_SECRET_TYPE, &p.cert, &p.key),
            &provider(),
            SystemTime::now(),
        )
        .expect("valid");
        assert_eq!(key.cert.len(), 1);
    }

    #[test]
    fn each_kind_of_bad_secret_says_what_is_wrong() {
        let p = pair("a.example.com");
        let other = pair("b.example.com");
        let now = SystemTime::now();
        let check = |s: Secret| from_secret(&s, &provider(), now).expect_err("invalid");
        assert_eq!(
            check(secret("Opaque", &p.cert, &p.key)),
            CertificateError::WrongType("Opaque".into())
        );
        assert_eq!(
            check(secret(TLS_SECRET_TYPE, &p.cert, "")),
            CertificateError::MissingKey("tls.key")
        );
        assert_eq!(
            check(secret(TLS_SECRET_TYPE, "not pem", &p.key)),
            CertificateError::NoCertificate
        );
        assert!(matches!(
            check(secret(
                TLS_SECRET_TYPE,
                &p.cert,
                "-----BEGIN PRIVATE KEY-----\nnope\n"
            )),
            CertificateError::BadKeyPem(_)
        ));
        assert_eq!(
            check(secret(TLS_SECRET_TYPE, &p.cert, &other.key)),
            CertificateError::KeyMismatch
        );
        let later = year(2101);
        assert!(matches!(
            from_secret(&secret(TLS_SECRET_TYPE, &p.cert, &p.key), &provider(), later),
            Err(CertificateError::Expired(_))
        ));
        let earlier = year(2019);
        assert!(matches!(
            from_secret(&secret(TLS_SECRET_TYPE, &p.cert, &p.key), &provider(), earlier),
            Err(CertificateError::NotYetValid(_))
        ));
    }
}
