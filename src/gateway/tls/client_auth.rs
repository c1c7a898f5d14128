//! Client certificates on HTTPS listeners (mutual TLS): the CA bundle a listener checks its
//! clients against, read from PEM, and the rustls verifier that does the checking.
//!
//! A listener either requires a certificate that chains to one of its CAs, or (insecure
//! fallback) asks for one but lets every client in, leaving the decision to the backend.

use std::sync::Arc;

use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme,
    client::danger::HandshakeSignatureValid,
    pki_types::{CertificateDer, UnixTime, pem::PemObject},
    server::{
        WebPkiClientVerifier,
        danger::{ClientCertVerified, ClientCertVerifier},
    },
};

/// Why a CA bundle cannot be trusted. The messages go into the listener's `ResolvedRefs`
/// condition, after the name of the object that holds the bundle.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CaBundleError {
    #[error("holds no PEM certificate")]
    NoCertificate,
    #[error("is not valid PEM: {0}")]
    BadPem(String),
    #[error("holds a certificate that cannot be a trust anchor: {0}")]
    NotAnAnchor(String),
}

/// How a listener checks its clients' certificates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientAuth {
    /// The CA certificates (DER) a client certificate must chain to.
    pub roots: Arc<[CertificateDer<'static>]>,
    /// Clients without a certificate, or with one that does not chain to `roots`, are let in
    /// all the same (the Gateway API's `AllowInsecureFallback`).
    pub insecure_fallback: bool,
}

/// The CA certificates of the PEM bundle `pem`, each usable as a trust anchor.
pub fn read_ca_bundle(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, CaBundleError> {
    let certificates = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| CaBundleError::BadPem(error.to_string()))?;
    if certificates.is_empty() {
        return Err(CaBundleError::NoCertificate);
    }
    let mut roots = RootCertStore::empty();
    for certificate in &certificates {
        roots
            .add(certificate.clone())
            .map_err(|error| CaBundleError::NotAnAnchor(error.to_string()))?;
    }
    Ok(certificates)
}

/// The verifier of a listener that checks clients as `auth` says.
pub(super) fn verifier(auth: &ClientAuth) -> Result<Arc<dyn ClientCertVerifier>, rustls::Error> {
    let mut roots = RootCertStore::empty();
    for certificate in auth.roots.iter() {
        roots.add(certificate.clone())?;
    }
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), super::provider());
    if !auth.insecure_fallback {
        return builder
            .build()
            .map_err(|error| rustls::Error::General(error.to_string()));
    }
    let checked = builder
        .allow_unauthenticated()
        .build()
        .map_err(|error| rustls::Error::General(error.to_string()))?;
    Ok(Arc::new(InsecureFallback { checked }))
}

/// Asks for a certificate and checks it, but lets in a client whose certificate fails the
/// check, as it lets in one without a certificate.
#[derive(Debug)]
struct InsecureFallback {
    checked: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for InsecureFallback {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.checked.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match self.checked.verify_client_cert(end_entity, intermediates, now) {
            Ok(verified) => Ok(verified),
            Err(error) => {
                tracing::debug!(%error, "client certificate not valid; let in (insecure fallback)");
                Ok(ClientCertVerified::assertion())
            }
        }
    }

    // The client still proves it holds the key of the certificate it sent.
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.checked.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.checked.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.checked.supported_verify_schemes()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A self-signed CA certificate, PEM (also the compiler's tests' CA bundle).
    pub(crate) fn ca_pem() -> String {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("parameters");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().expect("a key");
        params.self_signed(&key).expect("a CA certificate").pem()
    }

    #[test]
    fn a_bundle_of_ca_certificates_is_read_whole() {
        let bundle = format!("{}{}", ca_pem(), ca_pem());
        assert_eq!(read_ca_bundle(bundle.as_bytes()).map(|roots| roots.len()), Ok(2));
    }

    #[test]
    fn a_bundle_without_certificates_is_refused() {
        assert_eq!(
            read_ca_bundle(b"not PEM at all"),
            Err(CaBundleError::NoCertificate)
        );
        let broken = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(matches!(
            read_ca_bundle(broken.as_bytes()),
            Err(CaBundleError::NotAnAnchor(_))
        ));
    }

    #[test]
    fn only_the_insecure_fallback_lets_clients_without_a_certificate_in() {
        let roots: Arc<[CertificateDer<'static>]> = read_ca_bundle(ca_pem().as_bytes()).expect("a CA").into();
        let strict = verifier(&ClientAuth {
            roots: roots.clone(),
            insecure_fallback: false,
        })
        .expect("a verifier");
        assert!(strict.offer_client_auth() && strict.client_auth_mandatory());
        let lenient = verifier(&ClientAuth {
            roots,
            insecure_fallback: true,
        })
        .expect("a verifier");
        assert!(lenient.offer_client_auth() && !lenient.client_auth_mandatory());
        let stranger = CertificateDer::from(b"not a certificate".to_vec());
        assert!(
            strict
                .verify_client_cert(&stranger, &[], UnixTime::now())
                .is_err()
        );
        assert!(
            lenient
                .verify_client_cert(&stranger, &[], UnixTime::now())
                .is_ok()
        );
    }
}
