//! echo-basic's HTTP/1.x side as Go's net/http server writes it: the handler's headers sorted,
//! then `Date`, `Content-Length`, a sniffed `Content-Type`, `Connection` and
//! `Transfer-Encoding`, in that order; bodies over 2048 bytes (net/http's buffer before
//! chunking) sent chunked. hyper would title-case or reorder names, so the bytes are written
//! here.

use std::{net::SocketAddr, sync::Arc, time::SystemTime};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{
    go_compat,
    handler::{Answer, EchoRequest, Handler, Listener, Response, TlsInfo},
    websocket,
};

/// net/http's `bufferBeforeChunkingSize`: a body written in one piece larger than this is chunked.
const BUFFER_BEFORE_CHUNKING: usize = 2048;
/// net/http's `DefaultMaxHeaderBytes` plus its slack.
const MAX_HEAD_BYTES: usize = (1 << 20) + 4096;
/// A request body left unread beyond this closes the connection instead of being drained.
const MAX_POST_HANDLER_READ: usize = 256 << 10;

/// How a connection ended.
pub enum Ended<S> {
    Closed,
    /// The handler hijacked it to abort it (`/retry/`): the caller closes it its own way.
    Aborted(S),
}

/// What a connection knows about itself.
pub struct Connection {
    pub remote: SocketAddr,
    pub listener: Listener,
    pub tls: Option<TlsInfo>,
}

/// Serves requests on `stream` until the client or the answer closes it. `buffered` holds bytes
/// already read from it (a sniffed preface).
pub async fn serve<S>(
    mut stream: S,
    mut buffered: Vec<u8>,
    handler: Arc<Handler>,
    connection: Connection,
) -> Ended<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        let head_end = loop {
            if let Some(end) = find_head_end(&buffered) {
                break end;
            }
            if buffered.len() > MAX_HEAD_BYTES {
                let _ = stream
                    .write_all(b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n431 Request Header Fields Too Large")
                    .await;
                return Ended::Closed;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return Ended::Closed,
                Ok(n) => buffered.extend_from_slice(&chunk[..n]),
            }
        };
        let head: Vec<u8> = buffered.drain(..head_end).collect();
        let parsed = match parse_head(&head, &connection) {
            Ok(parsed) => parsed,
            Err(reason) => {
                let public = if reason.is_empty() {
                    "400 Bad Request".to_owned()
                } else {
                    format!("400 Bad Request: {reason}")
                };
                let answer = format!(
                    "HTTP/1.1 {public}\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n{public}"
                );
                let _ = stream.write_all(answer.as_bytes()).await;
                return Ended::Closed;
            }
        };
        let Parsed {
            request,
            body,
            wants_close,
            wants_keep_alive_10,
        } = parsed;
        let mut close_after = wants_close || (request.proto == "HTTP/1.0" && !wants_keep_alive_10);
        match drain_body(&mut stream, &mut buffered, body).await {
            Ok(true) => {}
            Ok(false) => close_after = true,
            Err(_) => return Ended::Closed,
        }

        let answer = handler.answer(connection.listener, &request).await;
        let response = match answer {
            Answer::Respond(response) => response,
            Answer::Abort => return Ended::Aborted(stream),
            Answer::WebSocket { head, echo } => {
                if stream.write_all(&head).await.is_err() || !echo {
                    return Ended::Closed;
                }
                websocket::echo(stream, buffered).await;
                return Ended::Closed;
            }
        };
        let bytes = encode(&request, &response, &mut close_after, wants_keep_alive_10);
        if stream.write_all(&bytes).await.is_err() || stream.flush().await.is_err() {
            return Ended::Closed;
        }
        if close_after {
            let _ = stream.shutdown().await;
            return Ended::Closed;
        }
    }
}

fn find_head_end(buffer: &[u8]) -> Option<usize> {
    buffer.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

enum Body {
    None,
    Length(usize),
    Chunked,
}

struct Parsed {
    request: EchoRequest,
    body: Body,
    wants_close: bool,
    wants_keep_alive_10: bool,
}

/// The request head as net/http reads it; `Err` carries the public reason of a 400.
fn parse_head(head: &[u8], connection: &Connection) -> Result<Parsed, String> {
    let mut slots = vec![httparse::EMPTY_HEADER; 512];
    let mut parsed = httparse::Request::new(&mut slots);
    match parsed.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(String::new()),
    }
    let method = parsed.method.unwrap_or_default().to_owned();
    let target = parsed.path.unwrap_or_default().to_owned();
    let proto = match parsed.version {
        Some(0) => "HTTP/1.0",
        _ => "HTTP/1.1",
    };
    let mut headers = Vec::new();
    let mut hosts = Vec::new();
    let mut body = Body::None;
    let mut connection_tokens = Vec::new();
    for header in parsed.headers.iter() {
        let name = go_compat::canonical_header_key(header.name.as_bytes());
        let value = trim(header.value).to_vec();
        match name.as_slice() {
            b"Host" => {
                hosts.push(value);
                continue;
            }
            // net/http consumes the framing header; the handler never sees it.
            b"Transfer-Encoding" => {
                if value.eq_ignore_ascii_case(b"chunked") {
                    body = Body::Chunked;
                }
                continue;
            }
            b"Content-Length" => {
                if matches!(body, Body::None) {
                    let length = std::str::from_utf8(&value)
                        .ok()
                        .and_then(|v| v.parse().ok())
                        .ok_or_else(|| "bad Content-Length".to_owned())?;
                    body = Body::Length(length);
                }
            }
            b"Connection" => connection_tokens.extend(
                String::from_utf8_lossy(&value)
                    .split(',')
                    .map(|t| t.trim().to_ascii_lowercase()),
            ),
            _ => {}
        }
        headers.push((name, value));
    }
    if hosts.len() > 1 {
        return Err("too many Host headers".to_owned());
    }
    if proto == "HTTP/1.1" && hosts.is_empty() {
        return Err("missing required Host header".to_owned());
    }
    let mut host = hosts
        .first()
        .map(|h| String::from_utf8_lossy(h).into_owned())
        .unwrap_or_default();
    // An absolute-form target names the host itself, and net/http prefers it.
    if let Some((_, rest)) = target.split_once("://")
        && !target.starts_with('/')
    {
        let authority = rest.split(['/', '?']).next().unwrap_or_default();
        if !authority.is_empty() {
            host = authority.to_owned();
        }
    }
    let wants_close = connection_tokens.iter().any(|t| t == "close");
    let wants_keep_alive_10 = proto == "HTTP/1.0" && connection_tokens.iter().any(|t| t == "keep-alive");
    Ok(Parsed {
        request: EchoRequest {
            method,
            request_uri: target,
            host,
            proto,
            headers,
            remote_addr: connection.remote,
            tls: connection.tls.clone(),
        },
        body,
        wants_close,
        wants_keep_alive_10,
    })
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(start, |e| e + 1);
    &bytes[start..end]
}

/// Reads and discards the request body. `Ok(false)`: too large to drain, close after answering.
async fn drain_body<S>(stream: &mut S, buffered: &mut Vec<u8>, body: Body) -> std::io::Result<bool>
where
    S: AsyncRead + Unpin,
{
    match body {
        Body::None => Ok(true),
        Body::Length(length) if length > MAX_POST_HANDLER_READ => Ok(false),
        Body::Length(length) => {
            fill(stream, buffered, length).await?;
            buffered.drain(..length);
            Ok(true)
        }
        Body::Chunked => loop {
            let line_end = loop {
                if let Some(i) = buffered.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                read_more(stream, buffered).await?;
            };
            let line = String::from_utf8_lossy(&buffered[..line_end]).into_owned();
            let size_text = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_text, 16)
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "bad chunk size"))?;
            buffered.drain(..line_end + 2);
            if size == 0 {
                // Trailers, up to the empty line.
                loop {
                    if let Some(i) = buffered.windows(2).position(|w| w == b"\r\n") {
                        let empty = i == 0;
                        buffered.drain(..i + 2);
                        if empty {
                            return Ok(true);
                        }
                    } else {
                        read_more(stream, buffered).await?;
                    }
                }
            }
            fill(stream, buffered, size + 2).await?;
            buffered.drain(..size + 2);
        },
    }
}

async fn fill<S: AsyncRead + Unpin>(
    stream: &mut S,
    buffered: &mut Vec<u8>,
    want: usize,
) -> std::io::Result<()> {
    while buffered.len() < want {
        read_more(stream, buffered).await?;
    }
    Ok(())
}

async fn read_more<S: AsyncRead + Unpin>(stream: &mut S, buffered: &mut Vec<u8>) -> std::io::Result<()> {
    let mut chunk = [0u8; 4096];
    let n = stream.read(&mut chunk).await?;
    if n == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    buffered.extend_from_slice(&chunk[..n]);
    Ok(())
}

/// The response's bytes, as net/http's `chunkWriter.writeHeader` and `finishRequest` write them.
pub fn encode(
    request: &EchoRequest,
    response: &Response,
    close_after: &mut bool,
    keep_alive_10: bool,
) -> Vec<u8> {
    let is_head = request.method == "HEAD";
    let is_11 = request.proto != "HTTP/1.0";
    let code = response.status;
    let body_allowed = go_compat::body_allowed(code);
    let one_piece = response.body.len() <= BUFFER_BEFORE_CHUNKING;
    let has_content_length = one_piece && body_allowed && (!is_head || !response.body.is_empty());
    let chunking = !has_content_length && body_allowed && !is_head && code != 204 && is_11;
    if !has_content_length && body_allowed && !is_head && !is_11 {
        *close_after = true;
    }
    let mut connection = None;
    if keep_alive_10 && (is_head || has_content_length || !body_allowed) {
        connection = Some("keep-alive");
    } else if !is_11 {
        *close_after = true;
    }
    if *close_after && is_11 {
        connection = Some("close");
    }

    let mut out = Vec::with_capacity(256 + response.body.len());
    let text = go_compat::status_text(code);
    let version = if is_11 { "HTTP/1.1" } else { "HTTP/1.0" };
    if text.is_empty() {
        out.extend_from_slice(format!("{version} {code:03} status code {code}\r\n").as_bytes());
    } else {
        out.extend_from_slice(format!("{version} {code:03} {text}\r\n").as_bytes());
    }
    for (name, values) in &response.headers {
        if !go_compat::valid_header_name(name) {
            continue;
        }
        if !body_allowed && code == 304 && matches!(name.as_slice(), b"Content-Type" | b"Content-Length") {
            continue;
        }
        for value in values {
            let value: Vec<u8> = value
                .iter()
                .map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b })
                .collect();
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            out.extend_from_slice(trim(&value));
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(format!("Date: {}\r\n", httpdate::fmt_http_date(SystemTime::now())).as_bytes());
    if has_content_length {
        out.extend_from_slice(format!("Content-Length: {}\r\n", response.body.len()).as_bytes());
    }
    if body_allowed && !response.headers.contains_key(b"Content-Type".as_slice()) && !response.body.is_empty()
    {
        // Every body echo-basic writes without a type is plain text.
        out.extend_from_slice(b"Content-Type: text/plain; charset=utf-8\r\n");
    }
    if let Some(connection) = connection {
        out.extend_from_slice(format!("Connection: {connection}\r\n").as_bytes());
    }
    if chunking {
        out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if is_head || !body_allowed {
        return out;
    }
    if chunking {
        if !response.body.is_empty() {
            out.extend_from_slice(format!("{:x}\r\n", response.body.len()).as_bytes());
            out.extend_from_slice(&response.body);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n\r\n");
    } else {
        out.extend_from_slice(&response.body);
    }
    out
}
