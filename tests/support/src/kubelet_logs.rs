//! The fake kubelet's HTTPS endpoint for Pod logs. The API server serves `pods/log` (`kubectl
//! logs`, the conformance suite's mirror tests) by calling the kubelet at the Node's address
//! and `status.daemonEndpoints.kubeletEndpoint.Port`:
//! `GET /containerLogs/{namespace}/{pod}/{container}?sinceTime=...&timestamps=...&tailLines=...`.
//!
//! The certificate is self-signed: the API server of the local control plane is given no
//! `--kubelet-certificate-authority`, so it does not verify kubelets, and it presents no client
//! certificate (no `--kubelet-client-certificate`), so none is asked for.

use std::{
    convert::Infallible,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::jiff::Timestamp;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::{net::TcpListener, task::JoinSet};
use tokio_rustls::TlsAcceptor;

use crate::kubelet::Shared;

#[derive(Debug, thiserror::Error)]
pub enum LogServerError {
    #[error("make the kubelet's serving certificate: {0}")]
    Certificate(String),
    #[error("listen on {addr} for the kubelet's log endpoint: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A running log endpoint; [`stop`](Self::stop) closes it.
pub struct KubeletLogServer {
    port: u16,
    tasks: JoinSet<()>,
}

impl KubeletLogServer {
    /// Listens on `node_ip` (a free port) and serves the logs of the Pods `shared` runs.
    pub(crate) async fn start(node_ip: Ipv4Addr, shared: Arc<Shared>) -> Result<Self, LogServerError> {
        let acceptor = acceptor(node_ip)?;
        let addr = SocketAddr::new(IpAddr::V4(node_ip), 0);
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| LogServerError::Bind { addr, source })?;
        let port = listener
            .local_addr()
            .map_err(|source| LogServerError::Bind { addr, source })?
            .port();
        let mut tasks = JoinSet::new();
        tasks.spawn(accept_loop(listener, acceptor, shared));
        tracing::info!(%node_ip, port, "serving pod logs");
        Ok(Self { port, tasks })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub async fn stop(mut self) {
        self.tasks.shutdown().await;
    }
}

fn acceptor(node_ip: Ipv4Addr) -> Result<TlsAcceptor, LogServerError> {
    let failed = |e: &dyn std::fmt::Display| LogServerError::Certificate(e.to_string());
    let mut params =
        rcgen::CertificateParams::new(vec![crate::kubelet::NODE_NAME.to_owned()]).map_err(|e| failed(&e))?;
    params
        .subject_alt_names
        .push(rcgen::SanType::IpAddress(IpAddr::V4(node_ip)));
    let key = rcgen::KeyPair::generate().map_err(|e| failed(&e))?;
    let cert = params.self_signed(&key).map_err(|e| failed(&e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| failed(&e))?
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .map_err(|e| failed(&e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

async fn accept_loop(listener: TcpListener, acceptor: TlsAcceptor, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::debug!(%error, "kubelet log endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let acceptor = acceptor.clone();
        let shared = shared.clone();
        connections.spawn(async move {
            let Ok(stream) = acceptor.accept(stream).await else {
                return;
            };
            let service = service_fn(move |request| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(answer(&shared, &request)) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(error) = builder.serve_connection(TokioIo::new(stream), service).await {
                tracing::trace!(%error, "kubelet log connection ended with an error");
            }
        });
    }
}

/// The options of a `containerLogs` request that change what is sent.
#[derive(Debug, Default, PartialEq, Eq)]
struct LogOptions {
    since: Option<Timestamp>,
    timestamps: bool,
    tail_lines: Option<usize>,
    limit_bytes: Option<usize>,
}

fn parse_options(query: &str) -> Result<LogOptions, String> {
    let mut options = LogOptions::default();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = value
            .replace("%3A", ":")
            .replace("%3a", ":")
            .replace("%2B", "+")
            .replace("%2b", "+");
        match key {
            "sinceTime" => {
                options.since = Some(value.parse().map_err(|e| format!("sinceTime={value}: {e}"))?);
            }
            "timestamps" => options.timestamps = value == "true",
            "tailLines" => {
                options.tail_lines = Some(value.parse().map_err(|_| format!("tailLines={value}"))?)
            }
            "limitBytes" => {
                options.limit_bytes = Some(value.parse().map_err(|_| format!("limitBytes={value}"))?)
            }
            _ => {}
        }
    }
    Ok(options)
}

fn answer(shared: &Shared, request: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response
    };
    let path = request.uri().path();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let ["containerLogs", namespace, pod, _container] = parts.as_slice() else {
        return text(
            StatusCode::NOT_FOUND,
            format!("{path}: not a kubelet endpoint this fake kubelet serves\n"),
        );
    };
    let options = match parse_options(request.uri().query().unwrap_or_default()) {
        Ok(options) => options,
        Err(reason) => return text(StatusCode::BAD_REQUEST, format!("{reason}\n")),
    };
    let Some(log) = shared.pod_log(namespace, pod) else {
        return text(
            StatusCode::NOT_FOUND,
            format!("pod {namespace}/{pod} is not running on this node\n"),
        );
    };
    let mut lines = log.lines_since(options.since);
    if let Some(tail) = options.tail_lines {
        lines.drain(..lines.len().saturating_sub(tail));
    }
    let mut body = String::new();
    for (at, line) in lines {
        if options.timestamps {
            body.push_str(&format!("{at} "));
        }
        body.push_str(&line);
        body.push('\n');
    }
    if let Some(limit) = options.limit_bytes
        && body.len() > limit
    {
        let mut cut = limit;
        while !body.is_char_boundary(cut) {
            cut -= 1;
        }
        body.truncate(cut);
    }
    text(StatusCode::OK, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_as_the_api_server_sends_them() {
        let options =
            parse_options("sinceTime=2026-12-01T16%3A40%3A00Z&timestamps=true&tailLines=5").expect("valid");
        assert_eq!(
            options,
            LogOptions {
                since: Some("2026-12-01T16:40:00Z".parse().expect("a time")),
                timestamps: true,
                tail_lines: Some(5),
                limit_bytes: None,
            }
        );
        assert!(parse_options("sinceTime=yesterday").is_err());
    }
}
