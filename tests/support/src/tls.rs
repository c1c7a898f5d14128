//! TLS for tests: a certificate authority that issues server and client certificates, the
//! `kubernetes.io/tls` Secret a listener reads them from, and clients that trust the authority
//! (presenting a certificate of their own if given one) and report what the handshake settled
//! (certificate, protocol version, ALPN).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode, Version, header::HeaderMap};
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::api::ObjectMeta;
use rustls::{
    ClientConfig, RootCertStore, SupportedProtocolVersion,
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName},
};
use tokio::net::TcpStream;
use tokio_rustls::{TlsConnector, client::TlsStream};

/// A certificate authority of the test's own.
pub struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

/// A server certificate and its key, PEM.
#[derive(Clone, Debug)]
pub struct ServerCert {
    pub cert_pem: String,
    pub key_pem: String,
    /// The leaf certificate, DER: what a client sees in the handshake.
    pub der: Vec<u8>,
}

/// A client certificate and its key, for mutual TLS.
#[derive(Clone, Debug)]
pub struct ClientCert {
    der: CertificateDer<'static>,
    /// PKCS#8.
    key_der: Vec<u8>,
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

impl TestCa {
    pub fn new() -> Self {
        Self::named("microgate test CA")
    }

    /// An authority whose certificate names `common_name`: a peer tells authorities apart by
    /// name before it checks a signature.
    pub fn named(common_name: &str) -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        let key = rcgen::KeyPair::generate().expect("a CA key");
        Self {
            issuer: rcgen::CertifiedIssuer::self_signed(params, key).expect("a CA certificate"),
        }
    }

    /// An ECDSA P-256 certificate for `names`, valid from 2020 through 2099.
    pub fn issue(&self, names: &[&str]) -> ServerCert {
        self.issue_valid(names, (2020, 1, 1), (2099, 12, 31))
    }

    /// A certificate for `names` valid from `not_before` through `not_after` (year, month, day).
    pub fn issue_valid(
        &self,
        names: &[&str],
        not_before: (i32, u8, u8),
        not_after: (i32, u8, u8),
    ) -> ServerCert {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = rcgen::CertificateParams::new(names).expect("certificate parameters");
        params.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        let key = rcgen::KeyPair::generate().expect("a key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("a signed certificate");
        ServerCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }

    /// A client certificate (extended key usage `clientAuth`) naming `name`, valid from 2020
    /// through 2099.
    pub fn issue_client(&self, name: &str) -> ClientCert {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("certificate parameters");
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2099, 12, 31);
        let key = rcgen::KeyPair::generate().expect("a key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("a signed certificate");
        ClientCert {
            der: cert.der().clone(),
            key_der: key.serialize_der(),
        }
    }

    /// This authority's certificate, PEM (for a CA bundle file or ConfigMap).
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// A root store holding only this authority.
    pub fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots
            .add(self.issuer.der().clone())
            .expect("the CA certificate is a trust anchor");
        roots
    }

    /// A client that trusts this authority, offering `alpn` and speaking `versions`.
    pub fn client(&self, alpn: &[&[u8]], versions: &[&'static SupportedProtocolVersion]) -> TlsClient {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .expect("supported versions")
            .with_root_certificates(self.roots())
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        TlsClient {
            connector: TlsConnector::from(Arc::new(config)),
        }
    }

    /// An HTTP/1.1 client over TLS 1.2 or 1.3.
    pub fn http1_client(&self) -> TlsClient {
        self.client(&[b"http/1.1"], rustls::DEFAULT_VERSIONS)
    }

    /// An HTTP/1.1 client over TLS 1.2 or 1.3 that presents `certificate` when the server asks
    /// for one.
    pub fn http1_client_presenting(&self, certificate: &ClientCert) -> TlsClient {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certificate.key_der.clone()));
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(rustls::DEFAULT_VERSIONS)
            .expect("supported versions")
            .with_root_certificates(self.roots())
            .with_client_auth_cert(vec![certificate.der.clone()], key)
            .expect("a usable client certificate");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        TlsClient {
            connector: TlsConnector::from(Arc::new(config)),
        }
    }
}

impl ServerCert {
    /// The `kubernetes.io/tls` Secret `name` holding this certificate.
    pub fn secret(&self, name: &str) -> Secret {
        tls_secret(name, &self.cert_pem, &self.key_pem)
    }
}

/// A `kubernetes.io/tls` Secret with these contents, valid or not.
pub fn tls_secret(name: &str, cert_pem: &str, key_pem: &str) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/tls".to_owned()),
        data: Some(
            [
                ("tls.crt".to_owned(), ByteString(cert_pem.as_bytes().to_vec())),
                ("tls.key".to_owned(), ByteString(key_pem.as_bytes().to_vec())),
            ]
            .into(),
        ),
        ..Secret::default()
    }
}

/// A TLS client configuration.
#[derive(Clone)]
pub struct TlsClient {
    connector: TlsConnector,
}

/// An established TLS connection and what its handshake settled.
pub struct Connected {
    pub stream: TlsStream<TcpStream>,
    /// The server's leaf certificate, DER.
    pub certificate: Vec<u8>,
    pub version: rustls::ProtocolVersion,
    pub alpn: Option<Vec<u8>>,
}

/// An answer read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: String,
}

impl TlsClient {
    /// Connects to `addr` and shakes hands, naming `server_name` in SNI; 5 s at most.
    pub async fn connect(&self, addr: SocketAddr, server_name: &str) -> std::io::Result<Connected> {
        let name = ServerName::try_from(server_name.to_owned())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let handshake = async {
            let tcp = TcpStream::connect(addr).await?;
            self.connector.connect(name, tcp).await
        };
        let stream = tokio::time::timeout(Duration::from_secs(5), handshake)
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
        let (_, session) = stream.get_ref();
        let certificate = session
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|c: &CertificateDer<'_>| c.to_vec())
            .unwrap_or_default();
        let version = session
            .protocol_version()
            .ok_or_else(|| std::io::Error::other("no protocol version after the handshake"))?;
        let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
        Ok(Connected {
            stream,
            certificate,
            version,
            alpn,
        })
    }

    /// One `GET https://host/path` on a new connection (HTTP/2 if ALPN settles on it).
    pub async fn get(&self, addr: SocketAddr, host: &str, path: &str) -> Result<Answer, String> {
        let connected = self.connect(addr, host).await.map_err(|e| e.to_string())?;
        let mut session = Session::start(connected).await?;
        session.send(Method::GET, host, path).await
    }
}

/// HTTP over one TLS connection, kept open for several requests.
pub struct Session {
    sender: Sender,
    connection: tokio::task::JoinHandle<()>,
    pub certificate: Vec<u8>,
    pub version: rustls::ProtocolVersion,
}

enum Sender {
    Http1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    Http2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl Session {
    pub async fn start(connected: Connected) -> Result<Self, String> {
        let io = TokioIo::new(connected.stream);
        let (sender, connection) = if connected.alpn.as_deref() == Some(b"h2") {
            let (sender, connection) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|e| e.to_string())?;
            (
                Sender::Http2(sender),
                tokio::spawn(async move { drop(connection.await) }),
            )
        } else {
            let (sender, connection) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| e.to_string())?;
            (
                Sender::Http1(sender),
                tokio::spawn(async move { drop(connection.await) }),
            )
        };
        Ok(Self {
            sender,
            connection,
            certificate: connected.certificate,
            version: connected.version,
        })
    }

    /// One request on this connection, read whole; 5 s at most.
    pub async fn send(&mut self, method: Method, host: &str, path: &str) -> Result<Answer, String> {
        self.send_with(method, host, path, HeaderMap::new()).await
    }

    /// [`Session::send`] with extra request headers.
    pub async fn send_with(
        &mut self,
        method: Method,
        host: &str,
        path: &str,
        headers: HeaderMap,
    ) -> Result<Answer, String> {
        let exchange = async {
            let response = match &mut self.sender {
                Sender::Http1(sender) => {
                    let request = Request::builder()
                        .method(method)
                        .uri(path)
                        .header(hyper::header::HOST, host)
                        .body(Full::new(Bytes::new()))
                        .map_err(|e| e.to_string())?;
                    let mut request = request;
                    request.headers_mut().extend(headers);
                    sender.send_request(request).await
                }
                Sender::Http2(sender) => {
                    let request = Request::builder()
                        .method(method)
                        .uri(format!("https://{host}{path}"))
                        .version(Version::HTTP_2)
                        .body(Full::new(Bytes::new()))
                        .map_err(|e| e.to_string())?;
                    let mut request = request;
                    request.headers_mut().extend(headers);
                    sender.send_request(request).await
                }
            }
            .map_err(|e| with_causes(&e))?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
            Ok(Answer {
                status: parts.status,
                version: parts.version,
                headers: parts.headers,
                body: String::from_utf8_lossy(&body).into_owned(),
            })
        };
        tokio::time::timeout(Duration::from_secs(5), exchange)
            .await
            .map_err(|_| "the request timed out".to_owned())?
    }
}

/// `error` and what caused it, down the chain (hyper's own message leaves the cause out: a
/// TLS alert, say).
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut described = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        described.push_str(": ");
        described.push_str(&inner.to_string());
        cause = inner.source();
    }
    described
}

impl Drop for Session {
    fn drop(&mut self) {
        self.connection.abort();
    }
}
