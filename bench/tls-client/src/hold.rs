//! Idle connections held open: what each costs a server in memory.

use std::{
    collections::BTreeMap,
    io,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use futures::StreamExt;
use rustls::pki_types::ServerName;
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};
use tokio_rustls::TlsConnector;

use crate::{
    Target,
    exchange::{self, CONNECTION_TIMEOUT, ExchangeError},
};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub target: Target,
    /// Connections to open and hold.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Connections being opened at any time.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Plain TCP: no TLS.
    #[arg(long)]
    plain: bool,
    /// HTTP/2 (ALPN h2 over TLS, prior knowledge when plain) instead of HTTP/1.1.
    #[arg(long)]
    http2: bool,
    /// Source addresses the connections are spread over, 127.1.0.1 and up: one address has
    /// about 28 000 ephemeral ports, too few for a hundred thousand connections to one server.
    #[arg(long, default_value_t = 1)]
    sources: u32,
}

impl Args {
    pub fn h2(&self) -> bool {
        self.http2
    }
}

/// How long the check waits for a held connection to say it has been closed.
const CHECK_WAIT: Duration = Duration::from_millis(500);

struct Context {
    connector: TlsConnector,
    server_name: ServerName<'static>,
    host: String,
    address: SocketAddr,
    plain: bool,
    http2: bool,
    sources: u32,
}

pub async fn run(args: Args, connector: TlsConnector) -> io::Result<()> {
    let server_name = ServerName::try_from(args.target.server_name.clone()).map_err(io::Error::other)?;
    let context = Arc::new(Context {
        connector,
        server_name,
        host: args.target.server_name.clone(),
        address: args.target.address,
        plain: args.plain,
        http2: args.http2,
        sources: args.sources.max(1),
    });
    let started = Instant::now();
    let opened: Vec<_> = futures::stream::iter(0..args.connections)
        .map(|index| tokio::spawn(open_one(context.clone(), index)))
        .buffer_unordered(args.concurrency.max(1))
        .collect()
        .await;
    let mut streams = Vec::with_capacity(opened.len());
    let mut failed: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut first_failure = None;
    for result in opened {
        match result.map_err(io::Error::other)? {
            Ok(stream) => streams.push(stream),
            Err(error) => {
                *failed.entry(error.label()).or_default() += 1;
                first_failure.get_or_insert_with(|| error.to_string());
            }
        }
    }
    let line = serde_json::json!({
        "open": streams.len(),
        "seconds": started.elapsed().as_secs_f64(),
        "failed": failed,
        "first_failure": first_failure,
    });
    println!("{line}");

    // The caller measures the server now, then asks how many connections it kept.
    let mut go = String::new();
    tokio::io::BufReader::new(tokio::io::stdin())
        .read_line(&mut go)
        .await?;
    let open = futures::stream::iter(streams.iter_mut().map(still_open))
        .buffer_unordered(4096)
        .collect::<Vec<bool>>()
        .await;
    let kept = open.iter().filter(|open| **open).count();
    let line = serde_json::json!({"still_open": kept, "closed": streams.len() - kept});
    println!("{line}");
    Ok(())
}

/// The `index`th connection's source address.
fn source(sources: u32, index: usize) -> Option<IpAddr> {
    if sources <= 1 {
        return None;
    }
    let k = (index as u32) % sources;
    Some(Ipv4Addr::new(127, 1, (k / 250) as u8, (k % 250 + 1) as u8).into())
}

/// Opens one connection and makes one request on it. Only the TCP connection is kept: the
/// client's TLS state is dropped (the server's is what is measured), so a hundred thousand held
/// connections cost the client little.
async fn open_one(context: Arc<Context>, index: usize) -> Result<TcpStream, ExchangeError> {
    let exchange = async {
        let tcp = exchange::connect(context.address, source(context.sources, index)).await?;
        if context.plain {
            let mut tcp = tcp;
            one_request(&mut tcp, &context.host, context.http2, false).await?;
            return Ok(tcp);
        }
        let (mut stream, _) = exchange::handshake(&context.connector, tcp, &context.server_name).await?;
        one_request(&mut stream, &context.host, context.http2, true).await?;
        Ok(stream.into_inner().0)
    };
    tokio::time::timeout(CONNECTION_TIMEOUT, exchange)
        .await
        .unwrap_or(Err(ExchangeError::Timeout(CONNECTION_TIMEOUT)))
}

async fn one_request<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    host: &str,
    http2: bool,
    https: bool,
) -> Result<(), ExchangeError> {
    if http2 {
        return h2_request(stream, host, https).await;
    }
    let head = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
    stream
        .write_all(head.as_bytes())
        .await
        .map_err(ExchangeError::Write)?;
    stream.flush().await.map_err(ExchangeError::Write)?;
    exchange::read_answer(stream).await
}

/// HTTP/2 frame types and flags used here (RFC 9113 §6).
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// One `GET /` on stream 1 of a new HTTP/2 connection, read to its end: the preface, empty
/// SETTINGS, the request, then frames until stream 1 ends (the server's SETTINGS acknowledged).
async fn h2_request<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    host: &str,
    https: bool,
) -> Result<(), ExchangeError> {
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    // HPACK: :method GET, :scheme http(s), :path / from the static table; :authority as a
    // literal without indexing (name index 1).
    let mut block = vec![
        0x82,
        if https { 0x87 } else { 0x86 },
        0x84,
        0x01,
        host.len() as u8,
    ];
    block.extend_from_slice(host.as_bytes());
    out.extend(frame(HEADERS, END_STREAM | END_HEADERS, 1, &block));
    stream.write_all(&out).await.map_err(ExchangeError::Write)?;
    stream.flush().await.map_err(ExchangeError::Write)?;
    loop {
        let mut head = [0u8; 9];
        stream.read_exact(&mut head).await.map_err(ExchangeError::Read)?;
        let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
        let (kind, flags) = (head[3], head[4]);
        let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        if len > 1 << 20 {
            return Err(ExchangeError::HeadTooLarge(1 << 20));
        }
        let mut payload = vec![0u8; len];
        stream
            .read_exact(&mut payload)
            .await
            .map_err(ExchangeError::Read)?;
        match kind {
            SETTINGS if flags & ACK == 0 => {
                stream
                    .write_all(&frame(SETTINGS, ACK, 0, &[]))
                    .await
                    .map_err(ExchangeError::Write)?;
            }
            GOAWAY => return Err(ExchangeError::Truncated),
            // The status: an indexed :status 200 (0x88) first, as every server here sends it.
            HEADERS if id == 1 && payload.first() != Some(&0x88) => {
                return Err(ExchangeError::Status(0));
            }
            HEADERS | DATA if id == 1 && flags & END_STREAM != 0 => return Ok(()),
            _ => {}
        }
    }
}

/// Whether the server still holds the connection: nothing but a few frames (an HTTP/2 PING, a
/// TLS alert before a close) within a moment means open; an end or an error means closed.
async fn still_open(stream: &mut TcpStream) -> bool {
    let mut buffer = [0u8; 1024];
    for _ in 0..16 {
        match tokio::time::timeout(CHECK_WAIT, stream.read(&mut buffer)).await {
            Err(_) => return true,
            Ok(Ok(0)) | Ok(Err(_)) => return false,
            Ok(Ok(_)) => {}
        }
    }
    true
}
