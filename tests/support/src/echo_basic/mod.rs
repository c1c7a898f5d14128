//! An emulation of the Gateway API conformance suite's backend, `echo-basic`, for Pods whose
//! image is [`ECHO_BASIC_IMAGE`]: the same listeners (`HTTP_PORT`/3000 HTTP/1.1,
//! `H2C_PORT`/3001 h2c, `HTTPS_PORT`/8443 when `TLS_SERVER_CERT` and `TLS_SERVER_PRIVKEY` are
//! set, verifying client certificates against `TLS_CLIENT_CACERTS` when one is given), the same
//! handlers and the same bytes on the wire, and its stdout kept as the Pod's log
//! (`Echoing back request made to <URI> to client (<addr>)`, which the mirror tests read).
//!
//! The suite trusts an answer only if it parses as echo-basic's JSON, so the emulation copies
//! net/http's behaviour down to header order, chunking thresholds and Go's JSON escapes; the
//! e2e test `echo_basic` sends both this and the real program (built from the pinned module)
//! the kinds of requests the suite sends and compares the answers byte for byte.

mod go_compat;
mod h2;
mod handler;
mod http1;
mod tls;
mod websocket;

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use k8s_openapi::jiff::Timestamp;
use tokio::{
    io::AsyncWriteExt,
    net::{TcpListener, TcpStream},
    task::JoinSet,
};
use tokio_rustls::TlsAcceptor;

use self::{
    handler::{Handler, Listener},
    http1::{Connection, Ended},
};

/// A Pod whose container image contains this is served by the echo-basic emulation.
pub const ECHO_BASIC_IMAGE: &str = "gateway-api/echo-basic";

/// The HTTP/2 connection preface a prior-knowledge h2c client starts with.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Who the server says it is: echo-basic's `Context` and `httpPort`, from its environment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EchoContext {
    pub namespace: String,
    pub ingress: String,
    pub service: String,
    pub pod: String,
    pub http_port: String,
}

/// Everything echo-basic reads from its environment.
#[derive(Clone, Debug)]
pub struct EchoConfig {
    pub context: EchoContext,
    pub http_port: u16,
    pub h2c_port: u16,
    pub https_port: u16,
    /// PEM certificate chain and key for the HTTPS listener.
    pub tls: Option<(Vec<u8>, Vec<u8>)>,
    /// PEM CA certificates that client certificates must chain to (optional: a client without
    /// one is served too, as Go's `VerifyClientCertIfGiven`).
    pub client_ca: Option<Vec<u8>>,
}

/// Why the emulation could not start.
#[derive(Debug, thiserror::Error)]
pub enum EchoError {
    #[error("{name}={value:?} is not a port")]
    Port { name: &'static str, value: String },
    #[error("the HTTPS certificate or key is unusable: {0}")]
    Tls(String),
    #[error("could not listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

impl EchoConfig {
    /// The configuration echo-basic would read from `env` (the container's environment).
    /// `read_file` resolves the paths `TLS_SERVER_CERT`, `TLS_SERVER_PRIVKEY` and
    /// `TLS_CLIENT_CACERTS` name (in a Pod, files of a mounted Secret or ConfigMap); `None` means
    /// the file does not exist.
    pub fn from_env(
        env: &HashMap<String, String>,
        read_file: impl Fn(&str) -> Option<Vec<u8>>,
    ) -> Result<Self, EchoError> {
        let var = |name: &str| env.get(name).cloned().unwrap_or_default();
        let port = |name: &'static str, default: &str| -> Result<(String, u16), EchoError> {
            let value = Some(var(name))
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| default.to_owned());
            let number = value.parse().map_err(|_| EchoError::Port {
                name,
                value: value.clone(),
            })?;
            Ok((value, number))
        };
        let (http_port_text, http_port) = port("HTTP_PORT", "3000")?;
        let (_, h2c_port) = port("H2C_PORT", "3001")?;
        let (_, https_port) = port("HTTPS_PORT", "8443")?;
        let (cert, key) = (var("TLS_SERVER_CERT"), var("TLS_SERVER_PRIVKEY"));
        let read =
            |path: &str| read_file(path).ok_or_else(|| EchoError::Tls(format!("{path} does not exist")));
        let tls = if cert.is_empty() || key.is_empty() {
            None
        } else {
            Some((read(&cert)?, read(&key)?))
        };
        let client_ca = match var("TLS_CLIENT_CACERTS") {
            path if path.is_empty() || tls.is_none() => None,
            path => Some(read(&path)?),
        };
        Ok(Self {
            context: EchoContext {
                namespace: var("NAMESPACE"),
                ingress: var("INGRESS_NAME"),
                service: var("SERVICE_NAME"),
                pod: var("POD_NAME"),
                http_port: http_port_text,
            },
            http_port,
            h2c_port,
            https_port,
            tls,
            client_ca,
        })
    }

    /// The ports the emulation listens on, HTTPS last when it is enabled.
    pub fn ports(&self) -> Vec<u16> {
        let mut ports = vec![self.http_port, self.h2c_port];
        if self.tls.is_some() {
            ports.push(self.https_port);
        }
        ports
    }
}

/// What a container wrote to stdout, line by line with the time it was written: served as the
/// Pod's log.
#[derive(Debug, Default)]
pub struct PodLog {
    lines: Mutex<Vec<(Timestamp, String)>>,
}

impl PodLog {
    pub fn line(&self, line: String) {
        let mut lines = self.lines.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        lines.push((Timestamp::now(), line));
    }

    /// The lines written at or after `since` (all when `None`), oldest first.
    pub fn lines_since(&self, since: Option<Timestamp>) -> Vec<(Timestamp, String)> {
        let lines = self.lines.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        lines
            .iter()
            .filter(|(at, _)| since.is_none_or(|since| *at >= since))
            .cloned()
            .collect()
    }
}

/// A running emulation; dropping or [stopping](Self::stop) it closes every listener and connection.
pub struct RunningEcho {
    tasks: JoinSet<()>,
    addrs: Vec<SocketAddr>,
}

impl RunningEcho {
    /// Binds every listener of `config` on `ip`, then serves.
    pub async fn start(ip: IpAddr, config: EchoConfig, log: Arc<PodLog>) -> Result<Self, EchoError> {
        let mut listeners = Vec::new();
        for port in config.ports() {
            let addr = SocketAddr::new(ip, port);
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| EchoError::Bind { addr, source })?;
            listeners.push(listener);
        }
        Self::serve(listeners, config, log)
    }

    /// Serves on listeners already bound for `config.ports()`, in that order.
    pub fn serve(
        listeners: Vec<TcpListener>,
        config: EchoConfig,
        log: Arc<PodLog>,
    ) -> Result<Self, EchoError> {
        let tls = match &config.tls {
            Some((cert, key)) => Some(tls::acceptor(cert, key, config.client_ca.as_deref())?),
            None => None,
        };
        let handler = Arc::new(Handler::new(config.context.clone(), log.clone()));
        let mut tasks = JoinSet::new();
        let mut addrs = Vec::new();
        let mut listeners = listeners.into_iter();
        let kinds = [Kind::Http, Kind::H2c, Kind::Https];
        for kind in kinds {
            if kind == Kind::Https && tls.is_none() {
                break;
            }
            let Some(listener) = listeners.next() else {
                break;
            };
            let port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
            if let Ok(addr) = listener.local_addr() {
                addrs.push(addr);
            }
            log.line(format!(
                "Starting server, listening on port {port} ({})",
                kind.name()
            ));
            tasks.spawn(accept_loop(listener, kind, handler.clone(), tls.clone()));
        }
        Ok(Self { tasks, addrs })
    }

    /// The addresses listened on: HTTP, h2c, then HTTPS if enabled.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    pub async fn stop(mut self) {
        self.tasks.shutdown().await;
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Http,
    H2c,
    Https,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Http => "http",
            Kind::H2c => "h2c",
            Kind::Https => "https",
        }
    }
}

async fn accept_loop(listener: TcpListener, kind: Kind, handler: Arc<Handler>, tls: Option<TlsAcceptor>) {
    // Connections live in this set: stopping the Pod drops them all.
    let mut connections = JoinSet::new();
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::debug!(%error, "echo-basic accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let tls = tls.clone();
        connections.spawn(async move {
            match kind {
                Kind::Http => serve_plain(stream, remote, handler, Listener::Mux, false).await,
                Kind::H2c => serve_plain(stream, remote, handler, Listener::H2c, true).await,
                Kind::Https => {
                    if let Some(tls) = tls {
                        serve_tls(stream, remote, handler, tls).await;
                    }
                }
            }
        });
    }
}

async fn serve_plain(
    stream: TcpStream,
    remote: SocketAddr,
    handler: Arc<Handler>,
    listener: Listener,
    h2c: bool,
) {
    let connection = Connection {
        remote,
        listener,
        tls: None,
    };
    if h2c && starts_with_h2_preface(&stream).await {
        h2::serve(stream, handler, connection).await;
        return;
    }
    if let Ended::Aborted(stream) = http1::serve(stream, Vec::new(), handler, connection).await {
        // SetLinger(0) then Close: the peer sees a reset, not an orderly end.
        let _ = stream.set_zero_linger();
        drop(stream);
    }
}

async fn serve_tls(stream: TcpStream, remote: SocketAddr, handler: Arc<Handler>, tls: TlsAcceptor) {
    let Ok(Ok(stream)) = tokio::time::timeout(Duration::from_secs(10), tls.accept(stream)).await else {
        return;
    };
    let (_, session) = stream.get_ref();
    let info = tls::tls_info(session);
    let is_h2 = session.alpn_protocol() == Some(b"h2");
    let connection = Connection {
        remote,
        listener: Listener::Mux,
        tls: Some(info),
    };
    if is_h2 {
        h2::serve(stream, handler, connection).await;
        return;
    }
    if let Ended::Aborted(mut stream) = http1::serve(stream, Vec::new(), handler, connection).await {
        // A *tls.Conn has no linger: Close sends close_notify and ends the connection.
        let _ = stream.shutdown().await;
    }
}

/// Whether the client's first bytes are the HTTP/2 preface (without consuming them). net/http
/// tells h2c prior knowledge from HTTP/1.1 the same way.
async fn starts_with_h2_preface(stream: &TcpStream) -> bool {
    let mut seen = [0u8; H2_PREFACE.len()];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut seen)).await {
            Ok(Ok(n)) => n,
            _ => return false,
        };
        if n == 0 || seen[..n] != H2_PREFACE[..n] {
            return false;
        }
        if n == H2_PREFACE.len() {
            return true;
        }
        // A prefix of the preface so far: wait for the rest.
        tokio::time::sleep(Duration::from_millis(5)).await;
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
    }
}
