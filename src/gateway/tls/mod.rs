//! TLS termination for HTTPS listeners: certificates from Secrets, one rustls configuration per
//! listener, and the listener a connection belongs to picked from its ClientHello's server name.
//!
//! A connection's handshake reads the ClientHello first (`LazyConfigAcceptor`), picks the
//! listener of its port whose hostnames take the SNI (an exact name before a wildcard, then the
//! listener without hostnames), and completes with that listener's configuration. No listener:
//! the handshake is refused, never answered with another host's certificate. A listener that
//! checks client certificates asks for one in that handshake (see [`ClientAuth`]).

mod certificate;
mod client_auth;
#[cfg(test)]
pub(crate) use client_auth::tests::ca_pem;
mod store;
mod validity;

use std::sync::{Arc, OnceLock};

use rustls::{
    ServerConfig, SignatureScheme,
    crypto::CryptoProvider,
    server::{ClientHello, ResolvesServerCert, StoresServerSessions},
    sign::CertifiedKey,
};

pub use certificate::{CertificateError, TLS_SECRET_TYPE};
pub use client_auth::{CaBundleError, ClientAuth, read_ca_bundle};
pub use store::{CertificateStore, SecretKey};

use super::http::host::HostPattern;
use crate::api::gateway::TlsVersion;

/// How long a client may take over its TLS handshake.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The cryptography rustls uses: `ring`, the provider the Kubernetes client already builds,
/// so the binary carries one crypto library. Measured in memory on 2 cores (rustls 0.23.46),
/// `aws-lc-rs` did more server handshakes per CPU-second (TLS 1.3 ECDSA P-256 1.14×, RSA 2048
/// 2.0×, TLS 1.2 ECDHE 1.4×) and AES-GCM 1.15×, at twice the build time and 2.1 MB more
/// binary; README's TLS section says when that trade is made.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// One HTTPS listener as connections meet it.
#[derive(Debug)]
pub struct TlsListener {
    /// `namespace/gateway/listener`: which routes the connection's requests may take.
    pub id: Arc<str>,
    pub hostnames: Vec<HostPattern>,
    pub config: Arc<ServerConfig>,
    /// What `config` was made from, so that an unchanged listener keeps it.
    pub certificates: Vec<Arc<CertifiedKey>>,
    pub min_version: TlsVersion,
    pub client_auth: Option<ClientAuth>,
}

/// The HTTPS listeners sharing one port.
#[derive(Debug, Default)]
pub struct TlsPort {
    pub listeners: Vec<TlsListener>,
}

impl TlsPort {
    /// The listener for a ClientHello naming `server_name`: an exact hostname, else the
    /// longest wildcard that matches, else the listener without hostnames.
    pub fn select(&self, server_name: Option<&str>) -> Option<&TlsListener> {
        // A request's host is lowercase already (see `request_host`): copied only when not.
        let name = server_name.map(|n| {
            let n = n.trim_end_matches('.');
            if n.bytes().any(|b| b.is_ascii_uppercase()) {
                std::borrow::Cow::Owned(n.to_ascii_lowercase())
            } else {
                std::borrow::Cow::Borrowed(n)
            }
        });
        let name = name.as_deref();
        let exact = |l: &&TlsListener| {
            l.hostnames
                .iter()
                .any(|p| matches!(p, HostPattern::Exact(_)) && name.is_some_and(|n| p.matches(n)))
        };
        let wildcard_length = |l: &TlsListener| {
            l.hostnames
                .iter()
                .filter_map(|p| match p.wildcard_suffix() {
                    Some(suffix) if name.is_some_and(|n| p.matches(n)) => Some(suffix.len()),
                    _ => None,
                })
                .max()
        };
        self.listeners
            .iter()
            .find(exact)
            .or_else(|| {
                self.listeners
                    .iter()
                    .filter_map(|l| Some((wildcard_length(l)?, l)))
                    .max_by_key(|(length, _)| *length)
                    .map(|(_, l)| l)
            })
            .or_else(|| self.listeners.iter().find(|l| l.hostnames.is_empty()))
    }
}

/// The rustls configuration of a listener serving `certificates` (in order of preference),
/// from `min_version` on, with ALPN `h2` and `http/1.1`, checking client certificates as
/// `client_auth` says (unset: none are asked for). `sessions` is shared by every configuration
/// made for the listener, so that a new route table does not end the sessions clients would
/// resume.
pub fn server_config(
    certificates: Vec<Arc<CertifiedKey>>,
    min_version: TlsVersion,
    client_auth: Option<&ClientAuth>,
    sessions: Arc<dyn StoresServerSessions>,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let versions: &[&'static rustls::SupportedProtocolVersion] = match min_version {
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let builder = ServerConfig::builder_with_provider(provider()).with_protocol_versions(versions)?;
    let builder = match client_auth {
        Some(auth) => builder.with_client_cert_verifier(client_auth::verifier(auth)?),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(Certificates(certificates)));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.session_storage = sessions;
    Ok(Arc::new(config))
}

/// The configuration of a handshake no listener takes: it resolves no certificate, so rustls
/// refuses the handshake with an alert.
pub fn refusing_config() -> Arc<ServerConfig> {
    static REFUSING: OnceLock<Arc<ServerConfig>> = OnceLock::new();
    REFUSING
        .get_or_init(|| {
            let config = ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map(|builder| {
                    builder
                        .with_no_client_auth()
                        .with_cert_resolver(Arc::new(Certificates(Vec::new())))
                });
            // The provider's defaults are always consistent; a failure would be a rustls bug.
            Arc::new(config.unwrap_or_else(|error| panic!("rustls refuses its own defaults: {error}")))
        })
        .clone()
}

/// A listener's certificates: the first whose key can sign with a scheme the client offers.
#[derive(Debug)]
struct Certificates(Vec<Arc<CertifiedKey>>);

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let offered: &[SignatureScheme] = hello.signature_schemes();
        self.0
            .iter()
            .find(|certified| certified.key.choose_scheme(offered).is_some())
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(id: &str, hostnames: &[&str]) -> TlsListener {
        TlsListener {
            id: id.into(),
            hostnames: hostnames.iter().map(|h| HostPattern::parse(h)).collect(),
            config: refusing_config(),
            certificates: Vec::new(),
            min_version: TlsVersion::Tls12,
            client_auth: None,
        }
    }

    #[test]
    fn sni_picks_exact_then_longest_wildcard_then_the_listener_without_hostnames() {
        let port = TlsPort {
            listeners: vec![
                listener("wide", &["*.example.com"]),
                listener("default", &[]),
                listener("narrow", &["*.shop.example.com"]),
                listener("exact", &["www.shop.example.com", "Other.Example"]),
            ],
        };
        let pick = |name: Option<&str>| port.select(name).map(|l| &*l.id);
        assert_eq!(pick(Some("www.shop.example.com")), Some("exact"));
        assert_eq!(pick(Some("other.example.")), Some("exact"));
        assert_eq!(pick(Some("api.shop.example.com")), Some("narrow"));
        assert_eq!(pick(Some("shop.example.com")), Some("wide"));
        assert_eq!(pick(Some("unknown.test")), Some("default"));
        assert_eq!(pick(None), Some("default"));
    }

    #[test]
    fn without_a_default_listener_an_unknown_name_gets_none() {
        let port = TlsPort {
            listeners: vec![listener("a", &["a.example"])],
        };
        assert!(port.select(Some("b.example")).is_none());
        assert!(port.select(None).is_none());
    }
}
