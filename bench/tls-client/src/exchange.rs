//! One connection: TCP, the TLS handshake, and one HTTP/1.1 request with its answer.

use std::{io, net::SocketAddr, time::Duration};

use rustls::{HandshakeKind, pki_types::ServerName};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_rustls::{TlsConnector, client::TlsStream};

pub type Stream = TlsStream<TcpStream>;

/// How long one connection may take, from connect to the end of its answer.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("connect: {0}")]
    Connect(io::Error),
    #[error("handshake: {0}")]
    Handshake(io::Error),
    #[error("sending the request: {0}")]
    Write(io::Error),
    #[error("reading the answer: {0}")]
    Read(io::Error),
    #[error("the connection ended before the answer did")]
    Truncated,
    #[error("malformed answer head: {0}")]
    Malformed(httparse::Error),
    #[error("the answer's head is larger than {0} bytes")]
    HeadTooLarge(usize),
    #[error("status {0}")]
    Status(u16),
    #[error("the server kept the connection open after answering `Connection: close`")]
    NotClosed,
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

impl ExchangeError {
    /// A short label, for counting failures by kind.
    pub fn label(&self) -> &'static str {
        match self {
            ExchangeError::Connect(_) => "connect",
            ExchangeError::Handshake(_) => "handshake",
            ExchangeError::Write(_) => "write",
            ExchangeError::Read(_) => "read",
            ExchangeError::Truncated => "truncated",
            ExchangeError::Malformed(_) | ExchangeError::HeadTooLarge(_) => "malformed",
            ExchangeError::Status(_) => "status",
            ExchangeError::NotClosed => "not-closed",
            ExchangeError::Timeout(_) => "timeout",
        }
    }
}

/// What the handshake settled, as the client saw it.
#[derive(Debug, Clone)]
pub struct Negotiated {
    pub kind: Option<HandshakeKind>,
    pub cipher: Option<String>,
    pub group: Option<String>,
    pub alpn: Option<String>,
}

/// Connects and completes the TLS handshake.
pub async fn open(
    connector: &TlsConnector,
    address: SocketAddr,
    server_name: &ServerName<'static>,
) -> Result<(Stream, Negotiated), ExchangeError> {
    let tcp = connect(address, None).await?;
    handshake(connector, tcp, server_name).await
}

/// Connects, from `source` (any port) if given.
pub async fn connect(
    address: SocketAddr,
    source: Option<std::net::IpAddr>,
) -> Result<TcpStream, ExchangeError> {
    let tcp = match source {
        None => TcpStream::connect(address).await,
        Some(source) => {
            let socket = if source.is_ipv4() {
                tokio::net::TcpSocket::new_v4()
            } else {
                tokio::net::TcpSocket::new_v6()
            }
            .map_err(ExchangeError::Connect)?;
            socket
                .bind(SocketAddr::new(source, 0))
                .map_err(ExchangeError::Connect)?;
            socket.connect(address).await
        }
    }
    .map_err(ExchangeError::Connect)?;
    // Requests are one small write each: no reason to hold them back.
    tcp.set_nodelay(true).map_err(ExchangeError::Connect)?;
    Ok(tcp)
}

/// Completes the TLS handshake on `tcp`.
pub async fn handshake(
    connector: &TlsConnector,
    tcp: TcpStream,
    server_name: &ServerName<'static>,
) -> Result<(Stream, Negotiated), ExchangeError> {
    let stream = connector
        .connect(server_name.clone(), tcp)
        .await
        .map_err(ExchangeError::Handshake)?;
    let (_, session) = stream.get_ref();
    let negotiated = Negotiated {
        kind: session.handshake_kind(),
        cipher: session
            .negotiated_cipher_suite()
            .map(|s| format!("{:?}", s.suite())),
        group: session
            .negotiated_key_exchange_group()
            .map(|g| format!("{:?}", g.name())),
        alpn: session
            .alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned()),
    };
    Ok((stream, negotiated))
}

/// How an answer to `Connection: close` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The server sent close_notify before closing.
    Clean,
    /// The TCP connection ended without close_notify.
    Unclean,
}

/// Sends `GET /` and reads the whole answer, which must be a 200. With `close`, the request
/// says `Connection: close` and the server must then end the connection.
pub async fn request(stream: &mut Stream, host: &str, close: bool) -> Result<Option<Ending>, ExchangeError> {
    let connection = if close { "close" } else { "keep-alive" };
    let head = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: {connection}\r\n\r\n");
    stream
        .write_all(head.as_bytes())
        .await
        .map_err(ExchangeError::Write)?;
    stream.flush().await.map_err(ExchangeError::Write)?;
    read_answer(stream).await?;
    if !close {
        return Ok(None);
    }
    let mut rest = [0u8; 512];
    match stream.read(&mut rest).await {
        Ok(0) => Ok(Some(Ending::Clean)),
        Ok(_) => Err(ExchangeError::NotClosed),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(Some(Ending::Unclean)),
        Err(e) => Err(ExchangeError::Read(e)),
    }
}

const MAX_HEAD: usize = 16 * 1024;

/// Reads one answer: its head, then a body framed by Content-Length or chunked encoding.
pub async fn read_answer<S: AsyncRead + Unpin>(stream: &mut S) -> Result<(), ExchangeError> {
    let mut buffer = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let (head_length, status, framing) = loop {
        let n = stream.read(&mut chunk).await.map_err(ExchangeError::Read)?;
        if n == 0 {
            return Err(ExchangeError::Truncated);
        }
        buffer.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&buffer).map_err(ExchangeError::Malformed)? {
            httparse::Status::Complete(length) => {
                let status = response.code.unwrap_or(0);
                break (length, status, Framing::of(response.headers));
            }
            httparse::Status::Partial if buffer.len() > MAX_HEAD => {
                return Err(ExchangeError::HeadTooLarge(MAX_HEAD));
            }
            httparse::Status::Partial => {}
        }
    };
    if status != 200 {
        return Err(ExchangeError::Status(status));
    }
    let done = |buffer: &[u8]| match framing {
        Framing::Length(length) => buffer.len() >= head_length + length,
        Framing::Chunked => buffer[head_length..].ends_with(b"0\r\n\r\n"),
    };
    while !done(&buffer) {
        let n = stream.read(&mut chunk).await.map_err(ExchangeError::Read)?;
        if n == 0 {
            return Err(ExchangeError::Truncated);
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
    Ok(())
}

#[derive(Debug, Clone, Copy)]
enum Framing {
    Length(usize),
    Chunked,
}

impl Framing {
    fn of(headers: &[httparse::Header<'_>]) -> Framing {
        let value = |name: &str| {
            headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).trim().to_ascii_lowercase())
        };
        if value("transfer-encoding").is_some_and(|v| v.ends_with("chunked")) {
            return Framing::Chunked;
        }
        // The bench's backends always say how long their answers are.
        Framing::Length(value("content-length").and_then(|v| v.parse().ok()).unwrap_or(0))
    }
}
