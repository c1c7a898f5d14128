//! HTTP/1.1 from clients, read and written by the connection's own task.
//!
//! The common request (no body, or a small one with a Content-Length) is parsed here with
//! httparse, handed to the [`Proxy`], and its response written back with the head and the first
//! body bytes in one write. A small chunked body is read whole here too, strictly. Whatever is
//! rarer is handed over, with the bytes already read, to hyper's server for the rest of the
//! connection: the HTTP/2 preface, a request body too large to hold, `Expect: 100-continue`.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
    time::{Duration, SystemTime},
};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri, Version, header};
use hyper::body::Body;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf},
    sync::watch,
    time::{Instant, Sleep},
};

use super::{ClientTimeouts, idle::PARK_AFTER};
use crate::gateway::{
    buffers::{self, READ_BUFFER, ReadBuffer, WriteBuffer},
    http::{
        body::Whole,
        client::Client,
        wire::{ChunkedRead, decimal, parse_content_length, read_chunked, write_header},
    },
    request::{MAX_BUFFERED_BODY, Proxy, ResponseBody, take_wire_headers},
};

/// How long a client may take to send a request's head, counted from when the connection is
/// ready for it (so also how long a kept-alive connection may sit idle): slowloris.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to accept (read) a batch of its response: a client that stops
/// reading is cut off then, rather than holding its connection, and the endpoint's, forever.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How far the header-read deadline may lag: moving a timer costs a timer-wheel update, so it is
/// moved only when it would move by more than this (a tenth of the deadline, at most 1 s).
const TIMER_SLACK: Duration = Duration::from_secs(1);
/// The most a request head may take.
pub const MAX_HEAD: usize = 64 * 1024;
/// What an HTTP/2 client with prior knowledge sends first (RFC 9113 §3.4).
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The most headers a request may carry.
const MAX_HEADERS: usize = 100;
/// How long, and how many bytes, a refused client's remaining bytes are read before the close.
const LINGER_TIME: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 256 * 1024;
/// Response bytes gathered before a write.
const WRITE_BATCH: usize = 64 * 1024;

/// How serving a connection ended.
pub enum Served<S> {
    Closed,
    /// The connection has waited [`PARK_AFTER`] for its next request with nothing in flight:
    /// it may wait on elsewhere, held outside any task (see [`super::idle`]).
    Idle(S),
    /// The connection needs what only hyper's server does: serve it from here, the bytes already
    /// read first.
    HandOver(Rewind<S>),
}

/// What the client sent next.
// Made once per request and moved once: boxing the request would cost an allocation each time.
#[allow(clippy::large_enum_variant)]
enum Next {
    Request {
        request: Request<Whole>,
        keep_alive: bool,
    },
    HandOver,
    /// Malformed: answer this and close.
    Reject(StatusCode),
    /// Nothing came for [`PARK_AFTER`], and the connection may be parked.
    Idle,
    Closed,
}

struct Connection<S> {
    stream: S,
    /// The bytes read and not yet parsed, in a buffer lent by the worker's pool; `None` while
    /// there are none, so that an idle connection holds no buffer. (A response is written from a
    /// buffer lent for its writing only.)
    read: Option<ReadBuffer>,
    /// The header-read deadline; while the connection waits with nothing read and may be
    /// parked, the parking deadline.
    timer: Pin<Box<Sleep>>,
    timeouts: ClientTimeouts,
    /// Whether an idle connection is handed back to be parked (see [`Served::Idle`]).
    parks: bool,
}

/// Serves HTTP/1.1 requests on `stream` until the client closes, the gateway drains, the
/// connection needs hyper, or (if it `parks`) it has waited [`PARK_AFTER`] for a request.
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    client: &Client,
    proxy: &Proxy,
    draining: &mut watch::Receiver<bool>,
    timeouts: ClientTimeouts,
    parks: bool,
) -> Served<S> {
    // Parking is for connections whose keep-alive outlasts the wait before it.
    let parks = parks && timeouts.header_read > PARK_AFTER;
    let mut connection = Connection {
        stream,
        read: None,
        timer: Box::pin(tokio::time::sleep(timeouts.header_read)),
        timeouts,
        parks,
    };
    loop {
        match connection.next_request(draining).await {
            Next::Request { request, keep_alive } => {
                let head_request = request.method() == Method::HEAD;
                let http10 = request.version() == Version::HTTP_10;
                // Boxed for the request's time only: the state of an answer in the making (the
                // endpoint's connection, retries, the response's body) is most of a
                // connection's, and an idle connection should not carry room for it.
                let answered = Box::pin(async {
                    let response = proxy.handle(client, request).await;
                    let keep_alive = keep_alive && !*draining.borrow();
                    connection
                        .respond(response, head_request, http10, keep_alive)
                        .await
                })
                .await;
                match answered {
                    Ok(true) => {}
                    Ok(false) => {
                        // An orderly end: over TLS this sends close_notify (RFC 8446 §6.1), so
                        // the client can tell the end of the answer from a truncation.
                        // Bounded: a client that reads nothing must not hold the task.
                        let _ =
                            tokio::time::timeout(Duration::from_secs(1), connection.stream.shutdown()).await;
                        return Served::Closed;
                    }
                    Err(_) => return Served::Closed,
                }
            }
            Next::HandOver => {
                return Served::HandOver(Rewind {
                    prefix: connection
                        .read
                        .map(|read| read.into_inner().freeze())
                        .unwrap_or_default(),
                    stream: connection.stream,
                });
            }
            Next::Reject(status) => {
                let _ = connection.reject(status).await;
                return Served::Closed;
            }
            Next::Idle => {
                // Whatever is still to be sent goes before the connection parks: over TLS, records
                // rustls made while reading (the answer to a client's key update, say).
                let flushed = tokio::time::timeout(timeouts.write, connection.stream.flush()).await;
                return match flushed {
                    Ok(Ok(())) => Served::Idle(connection.stream),
                    _ => Served::Closed,
                };
            }
            Next::Closed => return Served::Closed,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    async fn next_request(&mut self, draining: &mut watch::Receiver<bool>) -> Next {
        let ready = Instant::now();
        let head_deadline = ready + self.timeouts.header_read;
        // A connection that may be parked waits here for PARK_AFTER only, with nothing read; its
        // timer moves to the head's deadline once the head's first bytes are in.
        let first_wait = if self.parks {
            PARK_AFTER
        } else {
            self.timeouts.header_read
        };
        let deadline = ready + first_wait;
        let slack = TIMER_SLACK.min(first_wait / 10);
        let timer = self.timer.deadline();
        if deadline > timer + slack || deadline + slack < timer {
            self.timer.as_mut().reset(deadline);
        }
        let mut waits_for_head = !self.parks;
        // The deadline is for the head: a body (at most MAX_BUFFERED_BODY) may take longer.
        let mut reading_body = false;
        loop {
            match &mut self.read {
                Some(read) if !read.is_empty() => match parse_request(read.bytes()) {
                    Parsed::Complete(next) => return next,
                    Parsed::NeedMore if read.bytes().len() >= MAX_HEAD => {
                        return Next::Reject(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
                    }
                    Parsed::NeedMore => {}
                    Parsed::NeedBody => reading_body = true,
                },
                // Nothing left to parse: the buffer goes back to the pool until bytes come.
                _ => {
                    self.read = None;
                    if *draining.borrow() {
                        return Next::Closed;
                    }
                }
            }
            let idle = self.read.is_none();
            if !idle && !waits_for_head {
                waits_for_head = true;
                self.timer.as_mut().reset(head_deadline);
            }
            let read = tokio::select! {
                biased;
                read = read_more(&mut self.stream, &mut self.read) => read,
                // Only an idle connection stops at once: a request half read is finished.
                _ = draining.changed(), if idle => return Next::Closed,
                () = &mut self.timer, if !reading_body => {
                    if waits_for_head {
                        return Next::Closed;
                    }
                    return Next::Idle;
                }
            };
            match read {
                Ok(0) | Err(_) => return Next::Closed,
                Ok(_) => {}
            }
        }
    }

    /// Writes `response`; whether the connection stays open for another request.
    async fn respond(
        &mut self,
        response: http::Response<ResponseBody>,
        head_request: bool,
        http10: bool,
        mut keep_alive: bool,
    ) -> io::Result<bool> {
        let (parts, mut body) = response.into_parts();
        let status = parts.status;
        let bodiless = head_request
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        let length = body.size_hint().exact();
        let mut lent = WriteBuffer::take();
        let out = lent.bytes();
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
        out.extend_from_slice(b"\r\n");
        let mut has_date = false;
        for (name, value) in &parts.headers {
            // A body's framing is this hop's to say, except in a bodiless answer, where the
            // length tells what the body would have been.
            if !bodiless && (name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING) {
                continue;
            }
            has_date |= name == header::DATE;
            write_header(out, name.as_str().as_bytes(), value.as_bytes());
        }
        if let Some(wire) = take_wire_headers(&mut body) {
            out.extend_from_slice(wire.as_bytes());
            has_date |= wire.has_date();
        }
        if !has_date {
            date::with_now(|now| write_header(out, b"date", now));
        }
        let chunked = match (bodiless, length) {
            (true, _) => false,
            (false, Some(n)) => {
                write_header(out, b"content-length", decimal(n, &mut [0; 20]));
                false
            }
            // An HTTP/1.0 client knows no chunks: the end of the connection ends the body.
            (false, None) if http10 => {
                keep_alive = false;
                false
            }
            (false, None) => {
                write_header(out, b"transfer-encoding", b"chunked");
                true
            }
        };
        if !keep_alive {
            write_header(out, b"connection", b"close");
        } else if http10 {
            write_header(out, b"connection", b"keep-alive");
        }
        out.extend_from_slice(b"\r\n");
        let limit = self.timeouts.write;
        let stream = &mut self.stream;
        if bodiless {
            drop(body);
            write_all_within(stream, out, limit).await?;
            return Ok(keep_alive);
        }
        let mut sent = 0u64;
        loop {
            // A frame ready now joins the bytes gathered so far; otherwise they go out first.
            let polled = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await;
            let frame = match polled {
                Poll::Ready(frame) => frame,
                Poll::Pending => {
                    flush(stream, out, limit).await?;
                    std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
                }
            };
            match frame {
                None => break,
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else { continue };
                    if data.is_empty() {
                        continue;
                    }
                    sent += data.len() as u64;
                    if chunked {
                        out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                    }
                    if out.len() + data.len() > WRITE_BATCH {
                        flush(stream, out, limit).await?;
                        write_all_within(stream, &data, limit).await?;
                    } else {
                        out.extend_from_slice(&data);
                    }
                    if chunked {
                        out.extend_from_slice(b"\r\n");
                    }
                }
                // The endpoint broke off: so does this answer, which the client sees cut short.
                Some(Err(error)) => {
                    flush(stream, out, limit).await?;
                    tracing::debug!(%error, "response body broke off");
                    return Ok(false);
                }
            }
        }
        if chunked {
            out.extend_from_slice(b"0\r\n\r\n");
        }
        flush(stream, out, limit).await?;
        // A body shorter than its announced length leaves the client waiting: close to end it.
        Ok(keep_alive && length.is_none_or(|n| n == sent))
    }

    async fn reject(&mut self, status: StatusCode) -> io::Result<()> {
        let answer = format!(
            "HTTP/1.1 {} {}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            status.as_str(),
            status.canonical_reason().unwrap_or("")
        );
        write_all_within(&mut self.stream, answer.as_bytes(), self.timeouts.write).await?;
        self.stream.shutdown().await?;
        // Closing a socket with unread bytes in it sends a reset, which can overtake the answer
        // and destroy it at the client: read what the client already sent first (a lingering
        // close, as nginx does), for a bounded time and amount. On the heap: an array here would
        // be part of every connection's task, idle ones included.
        let mut sink = vec![0u8; 4096];
        let linger = async {
            let mut drained = 0;
            while drained < LINGER_BYTES {
                match self.stream.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => drained += n,
                }
            }
        };
        let _ = tokio::time::timeout(LINGER_TIME, linger).await;
        Ok(())
    }
}

/// Reads more of a request: into the buffer already holding its first bytes, or, for a
/// connection that holds none, into one lent once the client's bytes are there.
async fn read_more<S: AsyncRead + Unpin>(stream: &mut S, read: &mut Option<ReadBuffer>) -> io::Result<usize> {
    match read {
        Some(buf) => {
            buf.bytes().reserve(READ_BUFFER);
            stream.read_buf(buf.bytes()).await
        }
        None => {
            let (buf, n) = buffers::read_when_ready(stream).await?;
            *read = Some(buf);
            Ok(n)
        }
    }
}

/// Writes out the bytes gathered in `out` and empties it.
async fn flush<S: AsyncWrite + Unpin>(stream: &mut S, out: &mut Vec<u8>, limit: Duration) -> io::Result<()> {
    if !out.is_empty() {
        write_all_within(stream, out, limit).await?;
        out.clear();
    }
    Ok(())
}

/// Writes all of `bytes` and flushes them, failing if the client takes longer than `limit` to
/// accept them. The flush matters over TLS: rustls takes the bytes and keeps the records the
/// socket had no room for, which would otherwise wait for the client's next request (a client
/// waiting for the rest of its answer would wait for ever).
async fn write_all_within<S: AsyncWrite + Unpin>(
    stream: &mut S,
    bytes: &[u8],
    limit: Duration,
) -> io::Result<()> {
    // Most writes go out at once: only one that has to wait for the client reads the clock.
    // `None`: all written and flushed; `Some(n)`: n bytes taken, the rest and the flush to go.
    let first = std::future::poll_fn(|cx| {
        let written = match Pin::new(&mut *stream).poll_write(cx, bytes) {
            Poll::Ready(Ok(0)) if !bytes.is_empty() => {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            Poll::Ready(Ok(n)) => n,
            Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
            Poll::Pending => return Poll::Ready(Ok(Some(0))),
        };
        if written < bytes.len() {
            return Poll::Ready(Ok(Some(written)));
        }
        match Pin::new(&mut *stream).poll_flush(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(None)),
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => Poll::Ready(Ok(Some(written))),
        }
    })
    .await?;
    let Some(written) = first else {
        return Ok(());
    };
    let rest = bytes.get(written..).unwrap_or_default();
    let slow = async {
        stream.write_all(rest).await?;
        stream.flush().await
    };
    match tokio::time::timeout(limit, slow).await {
        Ok(result) => result,
        Err(_) => {
            tracing::debug!(?limit, "the client stopped reading its response: closing");
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client did not read its response",
            ))
        }
    }
}

#[allow(clippy::large_enum_variant)]
enum Parsed {
    Complete(Next),
    /// The head is not all there yet.
    NeedMore,
    /// The head is, its body not yet.
    NeedBody,
}

/// Whether a comma-separated header value lists `token` (any case).
fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// The bytes of `buf` up to its first line end.
fn first_line(buf: &[u8]) -> &[u8] {
    let end = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
    &buf[..end]
}

/// Parses a request off the front of `buf`: its head and, if it has one, its body.
fn parse_request(buf: &mut BytesMut) -> Parsed {
    // The HTTP/2 connection preface (prior knowledge) starts like a request with method PRI.
    // It is waited for whole under the header-read deadline: once handed over, hyper would
    // wait for the rest of it without one.
    if buf.starts_with(b"PRI ") {
        if buf.len() < HTTP2_PREFACE.len() && HTTP2_PREFACE.starts_with(buf) {
            return Parsed::NeedMore;
        }
        return Parsed::Complete(Next::HandOver);
    }
    let mut slots = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut parsed,
        buf,
        &mut slots,
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::NeedMore,
        Err(httparse::Error::TooManyHeaders) => {
            return Parsed::Complete(Next::Reject(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE));
        }
        // Three words whose last does not name HTTP at all: neither HTTP/1 nor the HTTP/2
        // preface. The connection is closed without an answer, as RFC 9113 §3.4 asks of a port
        // that speaks HTTP/2 when the preface is wrong.
        Err(httparse::Error::Version) if !first_line(buf).windows(5).any(|w| w == b"HTTP/") => {
            return Parsed::Complete(Next::Closed);
        }
        Err(_) => return Parsed::Complete(Next::Reject(StatusCode::BAD_REQUEST)),
    };
    let bad = Parsed::Complete(Next::Reject(StatusCode::BAD_REQUEST));
    let version = parsed.version.unwrap_or(1);
    let Ok(method) = Method::from_bytes(parsed.method.unwrap_or("").as_bytes()) else {
        return bad;
    };
    let mut keep_alive = version == 1;
    let mut content_length: Option<u64> = None;
    // Framing and Host are judged once all the headers are read: a request that breaks a rule
    // is refused whole, whatever order its headers came in.
    let mut transfer_encoding: Option<&[u8]> = None;
    let mut transfer_encodings = 0u32;
    let mut expect = false;
    // An `Upgrade: websocket` that `Connection` names: a request that may take the connection over.
    let (mut upgrade_websocket, mut connection_upgrade) = (false, false);
    let mut host: Option<&[u8]> = None;
    let mut hosts = 0u32;
    let base = buf.as_ptr() as usize;
    // A head is at most MAX_HEAD bytes long: every offset fits.
    let at = |part: &[u8]| (part.as_ptr() as usize - base) as u32;
    let target = parsed.path.unwrap_or("/").as_bytes();
    if let Some(status) = refuse_target(&method, target) {
        return Parsed::Complete(Next::Reject(status));
    }
    let target = (at(target), target.len() as u32);
    // Offsets, not slices: the head is frozen (shared by the values) only after parsing.
    let count = parsed.headers.len();
    let mut spans = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
    for (span, h) in spans.iter_mut().zip(parsed.headers.iter()) {
        let name = h.name.as_bytes();
        match name.len() {
            4 if name.eq_ignore_ascii_case(b"host") => {
                hosts += 1;
                host = Some(h.value);
            }
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                let Some(n) = parse_content_length(h.value) else {
                    return bad;
                };
                if content_length.is_some_and(|l| l != n) {
                    return bad;
                }
                content_length = Some(n);
            }
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                transfer_encodings += 1;
                transfer_encoding = Some(h.value);
            }
            6 if name.eq_ignore_ascii_case(b"expect") => expect = true,
            7 if name.eq_ignore_ascii_case(b"upgrade") => {
                upgrade_websocket |= has_token(h.value, b"websocket");
            }
            10 if name.eq_ignore_ascii_case(b"connection") => {
                for token in h.value.split(|b| *b == b',') {
                    let token = token.trim_ascii();
                    if token.eq_ignore_ascii_case(b"close") {
                        keep_alive = false;
                    } else if token.eq_ignore_ascii_case(b"upgrade") {
                        connection_upgrade = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") && version == 0 {
                        keep_alive = true;
                    }
                }
            }
            _ => {}
        }
        *span = (at(name), name.len() as u32, at(h.value), h.value.len() as u32);
    }
    // RFC 9112 3.2: an HTTP/1.1 request has exactly one Host; HTTP/1.0 at most one. (An
    // absolute-form target that names another host is the proxy's to refuse: host-mismatch.)
    let host_ok = match (hosts, host) {
        (0, _) => version == 0,
        (1, Some(value)) => valid_host(value),
        _ => false,
    };
    if !host_ok {
        return bad;
    }
    if let Some(coding) = transfer_encoding {
        // Two framings, or chunks an HTTP/1.0 hop cannot know: refused rather than guessed at
        // (RFC 9112 6.1, 6.3). A coding other than chunked would reach the endpoint undecoded.
        if content_length.is_some() || version == 0 || transfer_encodings > 1 {
            return bad;
        }
        if !coding.trim_ascii().eq_ignore_ascii_case(b"chunked") {
            return Parsed::Complete(Next::Reject(StatusCode::NOT_IMPLEMENTED));
        }
    }
    // Interim answers are hyper's, and so are connections a request may take over (WebSocket).
    if expect || (upgrade_websocket && connection_upgrade && version == 1) {
        return Parsed::Complete(Next::HandOver);
    }
    // A body is read whole here when it is small; a larger one is streamed by hyper.
    let (wire_len, body) = if transfer_encoding.is_some() {
        match read_chunked(&buf[len..], MAX_BUFFERED_BODY) {
            ChunkedRead::Whole { wire, body } => (wire, Some(body)),
            ChunkedRead::Partial if buf.len() - len <= 2 * MAX_BUFFERED_BODY => return Parsed::NeedBody,
            ChunkedRead::Partial | ChunkedRead::TooLarge => return Parsed::Complete(Next::HandOver),
            ChunkedRead::Invalid => return bad,
        }
    } else {
        let body_len = content_length.unwrap_or(0);
        if body_len > MAX_BUFFERED_BODY as u64 {
            return Parsed::Complete(Next::HandOver);
        }
        let body_len = body_len as usize;
        if buf.len() < len + body_len {
            return Parsed::NeedBody;
        }
        (body_len, None)
    };
    let head = buf.split_to(len).freeze();
    let wire = buf.split_to(wire_len).freeze();
    let body = body.unwrap_or(wire);
    let slice = |(at, len): (u32, u32)| head.slice(at as usize..(at + len) as usize);
    let Ok(uri) = Uri::from_maybe_shared(slice(target)) else {
        return bad;
    };
    let mut headers = HeaderMap::with_capacity(count);
    for &(name_at, name_len, value_at, value_len) in &spans[..count] {
        let Ok(name) = HeaderName::from_bytes(&head[name_at as usize..(name_at + name_len) as usize]) else {
            return bad;
        };
        let Ok(value) = HeaderValue::from_maybe_shared(slice((value_at, value_len))) else {
            return bad;
        };
        headers.append(name, value);
    }
    let mut request = Request::new(Whole::new(body));
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = if version == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    *request.headers_mut() = headers;
    Parsed::Complete(Next::Request { request, keep_alive })
}

/// Reads requests off `bytes` as a connection would, until one is not whole or is refused: the
/// fuzzer's way in (see `crate::gateway::fuzzing`).
pub(in crate::gateway) fn fuzz_requests(bytes: &[u8]) {
    let mut buf = BytesMut::from(bytes);
    let mut left = buf.len();
    while let Parsed::Complete(Next::Request { request, .. }) = parse_request(&mut buf) {
        // What was read came out of the buffer: the reader moves forward or stops.
        assert!(buf.len() < left, "a request was read from no bytes");
        left = buf.len();
        assert!(request.body().bytes().len() <= MAX_BUFFERED_BODY);
    }
}

/// The authority of an absolute-form target (`http://host:port/...`), if it is one.
fn target_authority(target: &[u8]) -> Option<&[u8]> {
    if target.first() == Some(&b'/') {
        return None;
    }
    let rest = target
        .split_at_checked(target.iter().position(|b| *b == b':')? + 3)?
        .1;
    Some(
        &rest[..rest
            .iter()
            .position(|b| matches!(b, b'/' | b'?' | b'#'))
            .unwrap_or(rest.len())],
    )
}

/// Why a request target is refused, if it is: the gateway is no forward proxy (CONNECT,
/// authority form), `*` is for OPTIONS only, and an absolute-form target is http(s) without
/// userinfo. Origin form, the usual, is decided by its first byte.
fn refuse_target(method: &Method, target: &[u8]) -> Option<StatusCode> {
    if *method == Method::CONNECT {
        return Some(StatusCode::METHOD_NOT_ALLOWED);
    }
    // A fragment is the client's alone (RFC 9110 7.1); in a request target it is an attempt at
    // something, and the URI parser would drop it silently.
    if target.contains(&b'#') {
        return Some(StatusCode::BAD_REQUEST);
    }
    match target.first() {
        Some(b'/') => None,
        Some(b'*') if target.len() == 1 && *method == Method::OPTIONS => None,
        _ => {
            let lower = target.to_ascii_lowercase();
            let absolute = lower.starts_with(b"http://") || lower.starts_with(b"https://");
            let userinfo = target_authority(target).is_some_and(|a| a.contains(&b'@'));
            (!absolute || userinfo).then_some(StatusCode::BAD_REQUEST)
        }
    }
}

/// Whether a Host value is `uri-host [":" port]` (RFC 9110 7.2): a reg-name or IP literal, no
/// whitespace, userinfo, path or second host.
fn valid_host(value: &[u8]) -> bool {
    let (host, port) = match value.iter().rposition(|b| *b == b':') {
        Some(colon) if value.first() != Some(&b'[') || value[..colon].ends_with(b"]") => {
            (&value[..colon], &value[colon + 1..])
        }
        _ => (value, &b""[..]),
    };
    let literal = host.first() == Some(&b'[');
    !host.is_empty()
        && port.iter().all(u8::is_ascii_digit)
        && if literal {
            host.len() > 2
                && host.ends_with(b"]")
                && host[1..host.len() - 1]
                    .iter()
                    .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'))
        } else {
            host.iter().all(|b| {
                b.is_ascii_alphanumeric()
                    || matches!(
                        b,
                        b'-' | b'.'
                            | b'_'
                            | b'~'
                            | b'%'
                            | b'!'
                            | b'$'
                            | b'&'
                            | b'\''
                            | b'('
                            | b')'
                            | b'*'
                            | b'+'
                            | b','
                            | b';'
                            | b'='
                    )
            })
        }
}

/// A connection handed over to hyper: the bytes already read come first.
pub struct Rewind<S> {
    prefix: Bytes,
    stream: S,
}

impl<S> Rewind<S> {
    /// A connection handed over before anything was read from it.
    pub fn fresh(stream: S) -> Self {
        Self {
            prefix: Bytes::new(),
            stream,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The `Date` header's value, formatted once a second per thread.
mod date {
    use std::cell::RefCell;

    use super::SystemTime;

    thread_local! {
        static NOW: RefCell<(u64, Vec<u8>)> = const { RefCell::new((0, Vec::new())) };
    }

    pub fn with_now(f: impl FnOnce(&[u8])) {
        let now = SystemTime::now();
        let second = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        NOW.with_borrow_mut(|(cached, value)| {
            if *cached != second || value.is_empty() {
                *cached = second;
                *value = httpdate::fmt_http_date(now).into_bytes();
            }
            f(value);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Takes every write whole but sends it only when flushed, and its first flush has to wait:
    /// as a TLS session keeps the records its socket has no room for yet.
    #[derive(Default)]
    struct SendsWhenFlushed {
        held: Vec<u8>,
        sent: Vec<u8>,
        flushes_waited: usize,
    }

    impl AsyncWrite for SendsWhenFlushed {
        fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            self.held.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            if self.flushes_waited == 0 {
                self.flushes_waited += 1;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let held = std::mem::take(&mut self.held);
            self.sent.extend_from_slice(&held);
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_write_is_done_once_its_bytes_are_sent_not_only_taken() {
        let mut stream = SendsWhenFlushed::default();
        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        write_all_within(&mut stream, answer, Duration::from_secs(5))
            .await
            .expect("written");
        assert_eq!(stream.sent, answer);
        assert_eq!(stream.flushes_waited, 1);
    }

    fn parse(bytes: &[u8]) -> (Parsed, BytesMut) {
        let mut buf = BytesMut::from(bytes);
        (parse_request(&mut buf), buf)
    }

    #[test]
    fn a_request_with_a_small_body_is_read_whole_and_the_next_one_stays() {
        let (parsed, rest) =
            parse(b"POST /a?b=1 HTTP/1.1\r\nHost: shop\r\nContent-Length: 3\r\nX-A: 1\r\n\r\nabcGET /");
        let Parsed::Complete(Next::Request { request, keep_alive }) = parsed else {
            panic!("a request")
        };
        assert!(keep_alive);
        assert_eq!(request.method(), Method::POST);
        assert_eq!(request.uri(), "/a?b=1");
        assert_eq!(request.headers()["host"], "shop");
        assert_eq!(request.headers()["x-a"], "1");
        assert_eq!(request.body().bytes(), "abc");
        assert_eq!(&rest[..], b"GET /");
    }

    #[test]
    fn a_small_chunked_body_is_read_whole_and_strictly() {
        let (parsed, rest) = parse(
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n1\r\nd\r\n0\r\nT: 1\r\n\r\nGET /",
        );
        let Parsed::Complete(Next::Request { request, .. }) = parsed else {
            panic!("a request")
        };
        assert_eq!(request.body().bytes(), "abcd");
        assert_eq!(&rest[..], b"GET /");
        let head = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(matches!(
            parse(&[&head[..], b"3\r\nab"].concat()).0,
            Parsed::NeedBody
        ));
        for body in [
            &b"3\r\nabc\r\n0\r\n\n"[..],
            b"3;\0\r\nabc\r\n0\r\n\r\n",
            b"3\nabc\r\n0\r\n\r\n",
        ] {
            assert!(
                matches!(
                    parse(&[&head[..], body].concat()).0,
                    Parsed::Complete(Next::Reject(StatusCode::BAD_REQUEST))
                ),
                "{body:?}"
            );
        }
    }

    #[test]
    fn incomplete_heads_and_bodies_wait_for_more() {
        assert!(matches!(parse(b"GET / HTTP/1.1\r\nHost: a").0, Parsed::NeedMore));
        assert!(matches!(
            parse(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nab").0,
            Parsed::NeedBody
        ));
    }

    #[test]
    fn a_partial_http2_preface_waits_for_the_rest_under_the_deadline() {
        for bytes in [
            &b"PRI "[..],
            b"PRI * HTTP/2.0\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r",
        ] {
            assert!(matches!(parse(bytes).0, Parsed::NeedMore), "{bytes:?}");
        }
        // Not a preface after all: hyper's server says so to the client.
        let (parsed, _) = parse(b"PRI * HTTP/2.0\r\n\r\nXX");
        assert!(matches!(parsed, Parsed::Complete(Next::HandOver)));
    }

    #[test]
    fn bytes_that_are_neither_http1_nor_the_http2_preface_close_the_connection_unanswered() {
        let (parsed, _) = parse(b"INVALID CONNECTION PREFACE\r\n\r\n");
        assert!(matches!(parsed, Parsed::Complete(Next::Closed)));
        // An HTTP/1 request with a version it does not support is still answered.
        let (parsed, _) = parse(b"GET / HTTP/1.2\r\n\r\n");
        assert!(matches!(
            parsed,
            Parsed::Complete(Next::Reject(StatusCode::BAD_REQUEST))
        ));
    }

    #[test]
    fn what_hyper_serves_better_is_handed_over() {
        for bytes in [
            &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n200000\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:  Chunked \r\n\r\nFFFFFFFF\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999\r\n\r\n",
        ] {
            let (parsed, rest) = parse(bytes);
            assert!(matches!(parsed, Parsed::Complete(Next::HandOver)), "{bytes:?}");
            assert_eq!(&rest[..], bytes, "nothing consumed");
        }
    }

    #[test]
    fn malformed_requests_are_rejected() {
        for (bytes, status) in [
            (&b"HELLO THERE\r\n\r\n"[..], StatusCode::BAD_REQUEST),
            (
                b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
                StatusCode::BAD_REQUEST,
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabc",
                StatusCode::BAD_REQUEST,
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
                StatusCode::BAD_REQUEST,
            ),
            (
                b"GET /admin#x HTTP/1.1\r\nHost: a\r\n\r\n",
                StatusCode::BAD_REQUEST,
            ),
        ] {
            let (parsed, _) = parse(bytes);
            assert!(
                matches!(parsed, Parsed::Complete(Next::Reject(s)) if s == status),
                "{bytes:?}"
            );
        }
        // Framing, Host and target rules (RFC 9112 3.2, 6.1, 6.3; RFC 9110 8.6).
        for (bytes, status) in [
            (&b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc"[..], StatusCode::BAD_REQUEST),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x3\r\n\r\nabc", StatusCode::BAD_REQUEST),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3 3\r\n\r\nabc", StatusCode::BAD_REQUEST),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551619\r\n\r\n", StatusCode::BAD_REQUEST),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
                StatusCode::BAD_REQUEST,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
                StatusCode::BAD_REQUEST,
            ),
            (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", StatusCode::BAD_REQUEST),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                StatusCode::NOT_IMPLEMENTED,
            ),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", StatusCode::NOT_IMPLEMENTED),
            (b"GET / HTTP/1.1\r\n\r\n", StatusCode::BAD_REQUEST),
            (b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", StatusCode::BAD_REQUEST),
            (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", StatusCode::BAD_REQUEST),
            (b"GET / HTTP/1.1\r\nHost: u@a\r\n\r\n", StatusCode::BAD_REQUEST),
            (b"GET / HTTP/1.1\r\nHost: a:x\r\n\r\n", StatusCode::BAD_REQUEST),
            (b"GET http://u@a/ HTTP/1.1\r\nHost: a\r\n\r\n", StatusCode::BAD_REQUEST),
            (b"GET a:80 HTTP/1.1\r\nHost: a\r\n\r\n", StatusCode::BAD_REQUEST),
            (b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", StatusCode::BAD_REQUEST),
            (b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", StatusCode::METHOD_NOT_ALLOWED),
        ] {
            let (parsed, _) = parse(bytes);
            assert!(
                matches!(parsed, Parsed::Complete(Next::Reject(s)) if s == status),
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        for bytes in [
            &b"GET http://a:8/x HTTP/1.1\r\nHost: a:8\r\n\r\n"[..],
            b"OPTIONS * HTTP/1.1\r\nHost: [::1]:80\r\n\r\n",
            b"GET / HTTP/1.0\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
        ] {
            assert!(
                matches!(parse(bytes).0, Parsed::Complete(Next::Request { .. })),
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        let many: String = (0..MAX_HEADERS + 1).map(|i| format!("X-{i}: 1\r\n")).collect();
        let (parsed, _) = parse(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes());
        assert!(matches!(
            parsed,
            Parsed::Complete(Next::Reject(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE))
        ));
    }

    #[test]
    fn connection_tokens_and_versions_decide_keep_alive() {
        for (bytes, expected) in [
            (&b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..], true),
            (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", false),
            (b"GET / HTTP/1.0\r\n\r\n", false),
            (b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", true),
        ] {
            let Parsed::Complete(Next::Request { keep_alive, .. }) = parse(bytes).0 else {
                panic!("a request: {bytes:?}")
            };
            assert_eq!(keep_alive, expected, "{bytes:?}");
        }
    }

    #[test]
    fn the_date_is_an_http_date() {
        let mut value = Vec::new();
        date::with_now(|now| value = now.to_vec());
        let text = String::from_utf8(value).expect("ascii");
        assert!(httpdate::parse_http_date(&text).is_ok(), "{text}");
    }
}
