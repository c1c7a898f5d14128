//! echo-basic's HTTPS listener: Go's default server TLS (TLS 1.2 and 1.3, ALPN `h2` then
//! `http/1.1`), client certificates verified only when given (`VerifyClientCertIfGiven`), and
//! the connection's facts named as Go's crypto/tls names them.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio_rustls::TlsAcceptor;

use super::{EchoError, handler::TlsInfo};

/// The acceptor for a PEM certificate chain and key; `client_ca` (PEM) enables client
/// certificate verification.
pub fn acceptor(cert: &[u8], key: &[u8], client_ca: Option<&[u8]>) -> Result<TlsAcceptor, EchoError> {
    let tls_error = |e: &dyn std::fmt::Display| EchoError::Tls(e.to_string());
    let chain = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_error(&e))?;
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| tls_error(&e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error(&e))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for ca in CertificateDer::pem_slice_iter(pem) {
                roots
                    .add(ca.map_err(|e| tls_error(&e))?)
                    .map_err(|e| tls_error(&e))?;
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| tls_error(&e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| tls_error(&e))?;
    // Go's default for a server with HTTP/2 enabled.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The TLS facts of a rustls connection, named as Go's crypto/tls names them.
pub fn tls_info(connection: &rustls::ServerConnection) -> TlsInfo {
    let version = match connection.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
        _ => "",
    };
    let cipher_suite = connection
        .negotiated_cipher_suite()
        .and_then(|suite| suite.suite().as_str())
        .map(|name| name.replace("TLS13_", "TLS_"))
        .unwrap_or_default();
    let peer_certificates = connection
        .peer_certificates()
        .unwrap_or_default()
        .iter()
        .map(|cert| go_pem("CERTIFICATE", cert.as_ref()))
        .collect();
    TlsInfo {
        version,
        peer_certificates,
        server_name: connection.server_name().unwrap_or_default().to_owned(),
        negotiated_protocol: connection
            .alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default(),
        cipher_suite,
    }
}

/// `pem.Encode`: base64 in lines of 64 characters between the BEGIN and END lines.
fn go_pem(kind: &str, der: &[u8]) -> String {
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {kind}-----\n");
    for line in encoded.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {kind}-----\n"));
    out
}
