//! A plain HTTP/1.1 client for checking what an address answers, one connection per request.
//!
//! Tests use it to ask a pod IP, the gateway or anything else on loopback "who are you?", and to
//! see a refused connection for what it is.

use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{HeaderMap, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// What an HTTP request got back.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP exchange with {addr}: {source}")]
    Http {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
    #[error("no answer from {addr} within {after:?}")]
    Timeout { addr: SocketAddr, after: Duration },
}

impl ProbeError {
    /// Whether nothing listens at the address (the kernel refused the connection).
    pub fn is_connection_refused(&self) -> bool {
        matches!(self, ProbeError::Connect { source, .. } if source.kind() == std::io::ErrorKind::ConnectionRefused)
    }
}

/// `GET http://addr/path`, reading the whole body; 5 s at most.
pub async fn get(addr: SocketAddr, path: &str) -> Result<Answer, ProbeError> {
    request(addr, Method::GET, path, "").await
}

/// Any method with a body, reading the whole answer; 5 s at most.
pub async fn request(addr: SocketAddr, method: Method, path: &str, body: &str) -> Result<Answer, ProbeError> {
    request_with(addr, method, path, HeaderMap::new(), body).await
}

/// [`request`] with extra request headers.
pub async fn request_with(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: HeaderMap,
    body: &str,
) -> Result<Answer, ProbeError> {
    let after = Duration::from_secs(5);
    let body = Bytes::copy_from_slice(body.as_bytes());
    tokio::time::timeout(after, exchange(addr, method, path, headers, body))
        .await
        .map_err(|_| ProbeError::Timeout { addr, after })?
}

async fn exchange(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Answer, ProbeError> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|source| ProbeError::Connect { addr, source })?;
    let http = |source| ProbeError::Http { addr, source };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http)?;
    let connection = tokio::spawn(connection);
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, addr.to_string())
        .body(Full::new(body))
        .expect("a method, a path and a host header make a valid request");
    request.headers_mut().extend(headers);
    let response = sender.send_request(request).await.map_err(http)?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await.map_err(http)?.to_bytes();
    connection.abort();
    Ok(Answer {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}
