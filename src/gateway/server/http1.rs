//! HTTP/1.1 from clients, read and written by the connection's own task.
//!
//! The common request (no body, or a small one with a Content-Length) is parsed here with
//! httparse, handed to the [`Proxy`], and its response written back with the head and the first
//! body bytes in one write. Whatever is rarer is handed over, with the bytes already read, to
//! hyper's server for the rest of the connection: the HTTP/2 preface, a chunked or large request
//! body, `Expect: 100-continue`.

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

use super::ClientTimeouts;
use crate::gateway::{
    body::{ResponseBody, Whole, take_wire_headers},
    proxy::{Client, MAX_BUFFERED_BODY, Proxy},
    wire::{decimal, write_header},
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
/// Response bytes gathered before a write.
const WRITE_BATCH: usize = 64 * 1024;

/// How serving a connection ended.
pub enum Served<S> {
    Closed,
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
    Closed,
}

struct Connection<S> {
    stream: S,
    read: BytesMut,
    write: Vec<u8>,
    /// The header-read deadline.
    timer: Pin<Box<Sleep>>,
    timeouts: ClientTimeouts,
}

/// Serves HTTP/1.1 requests on `stream` until the client closes, the gateway drains, or the
/// connection needs hyper.
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    client: &Client,
    proxy: &Proxy,
    draining: &mut watch::Receiver<bool>,
    timeouts: ClientTimeouts,
) -> Served<S> {
    let mut connection = Connection {
        stream,
        read: BytesMut::with_capacity(8 * 1024),
        write: Vec::with_capacity(8 * 1024),
        timer: Box::pin(tokio::time::sleep(timeouts.header_read)),
        timeouts,
    };
    loop {
        match connection.next_request(draining).await {
            Next::Request { request, keep_alive } => {
                let head_request = request.method() == Method::HEAD;
                let http10 = request.version() == Version::HTTP_10;
                let response = proxy.handle(client, request).await;
                let keep_alive = keep_alive && !*draining.borrow();
                match connection
                    .respond(response, head_request, http10, keep_alive)
                    .await
                {
                    Ok(true) => {}
                    Ok(false) | Err(_) => return Served::Closed,
                }
            }
            Next::HandOver => {
                return Served::HandOver(Rewind {
                    prefix: connection.read.freeze(),
                    stream: connection.stream,
                });
            }
            Next::Reject(status) => {
                let _ = connection.reject(status).await;
                return Served::Closed;
            }
            Next::Closed => return Served::Closed,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    async fn next_request(&mut self, draining: &mut watch::Receiver<bool>) -> Next {
        let deadline = Instant::now() + self.timeouts.header_read;
        if deadline > self.timer.deadline() + TIMER_SLACK.min(self.timeouts.header_read / 10) {
            self.timer.as_mut().reset(deadline);
        }
        // The deadline is for the head: a body (at most MAX_BUFFERED_BODY) may take longer.
        let mut reading_body = false;
        loop {
            if !self.read.is_empty() {
                match parse_request(&mut self.read) {
                    Parsed::Complete(next) => return next,
                    Parsed::NeedMore if self.read.len() >= MAX_HEAD => {
                        return Next::Reject(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
                    }
                    Parsed::NeedMore => {}
                    Parsed::NeedBody => reading_body = true,
                }
            } else if *draining.borrow() {
                return Next::Closed;
            }
            self.read.reserve(8 * 1024);
            let idle = self.read.is_empty();
            let read = tokio::select! {
                biased;
                read = self.stream.read_buf(&mut self.read) => read,
                // Only an idle connection stops at once: a request half read is finished.
                _ = draining.changed(), if idle => return Next::Closed,
                () = &mut self.timer, if !reading_body => return Next::Closed,
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
        let out = &mut self.write;
        out.clear();
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
        if bodiless {
            drop(body);
            write_all_within(&mut self.stream, &self.write, self.timeouts.write).await?;
            return Ok(keep_alive);
        }
        let mut sent = 0u64;
        loop {
            // A frame ready now joins the bytes gathered so far; otherwise they go out first.
            let polled = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await;
            let frame = match polled {
                Poll::Ready(frame) => frame,
                Poll::Pending => {
                    self.flush().await?;
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
                        self.write
                            .extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                    }
                    if self.write.len() + data.len() > WRITE_BATCH {
                        self.flush().await?;
                        write_all_within(&mut self.stream, &data, self.timeouts.write).await?;
                    } else {
                        self.write.extend_from_slice(&data);
                    }
                    if chunked {
                        self.write.extend_from_slice(b"\r\n");
                    }
                }
                // The endpoint broke off: so does this answer, which the client sees cut short.
                Some(Err(error)) => {
                    self.flush().await?;
                    tracing::debug!(%error, "response body broke off");
                    return Ok(false);
                }
            }
        }
        if chunked {
            self.write.extend_from_slice(b"0\r\n\r\n");
        }
        self.flush().await?;
        // A body shorter than its announced length leaves the client waiting: close to end it.
        Ok(keep_alive && length.is_none_or(|n| n == sent))
    }

    async fn flush(&mut self) -> io::Result<()> {
        if !self.write.is_empty() {
            write_all_within(&mut self.stream, &self.write, self.timeouts.write).await?;
            self.write.clear();
        }
        Ok(())
    }

    async fn reject(&mut self, status: StatusCode) -> io::Result<()> {
        let answer = format!(
            "HTTP/1.1 {} {}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            status.as_str(),
            status.canonical_reason().unwrap_or("")
        );
        write_all_within(&mut self.stream, answer.as_bytes(), self.timeouts.write).await?;
        self.stream.shutdown().await
    }
}

/// Writes all of `bytes`, failing if the client takes longer than `limit` to accept them.
async fn write_all_within<S: AsyncWrite + Unpin>(
    stream: &mut S,
    bytes: &[u8],
    limit: Duration,
) -> io::Result<()> {
    // Most writes go out at once: only one that has to wait for the client reads the clock.
    let first = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *stream).poll_write(cx, bytes))).await;
    let written = match first {
        Poll::Ready(Ok(0)) if !bytes.is_empty() => return Err(io::ErrorKind::WriteZero.into()),
        Poll::Ready(Ok(n)) => n,
        Poll::Ready(Err(error)) => return Err(error),
        Poll::Pending => 0,
    };
    if written == bytes.len() {
        return Ok(());
    }
    match tokio::time::timeout(limit, stream.write_all(&bytes[written..])).await {
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
    let base = buf.as_ptr() as usize;
    // A head is at most MAX_HEAD bytes long: every offset fits.
    let at = |part: &[u8]| (part.as_ptr() as usize - base) as u32;
    let target = parsed.path.unwrap_or("/").as_bytes();
    let target = (at(target), target.len() as u32);
    // Offsets, not slices: the head is frozen (shared by the values) only after parsing.
    let count = parsed.headers.len();
    let mut spans = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
    for (span, h) in spans.iter_mut().zip(parsed.headers.iter()) {
        let name = h.name.as_bytes();
        match name.len() {
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                let Some(n) = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok())
                else {
                    return bad;
                };
                if content_length.is_some_and(|l| l != n) {
                    return bad;
                }
                content_length = Some(n);
            }
            // Chunked bodies and interim answers are hyper's.
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => return Parsed::Complete(Next::HandOver),
            6 if name.eq_ignore_ascii_case(b"expect") => return Parsed::Complete(Next::HandOver),
            10 if name.eq_ignore_ascii_case(b"connection") => {
                for token in h.value.split(|b| *b == b',') {
                    let token = token.trim_ascii();
                    if token.eq_ignore_ascii_case(b"close") {
                        keep_alive = false;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") && version == 0 {
                        keep_alive = true;
                    }
                }
            }
            _ => {}
        }
        *span = (at(name), name.len() as u32, at(h.value), h.value.len() as u32);
    }
    let body_len = content_length.unwrap_or(0);
    if body_len > MAX_BUFFERED_BODY as u64 {
        // Streamed to the endpoint as it arrives: hyper's.
        return Parsed::Complete(Next::HandOver);
    }
    let body_len = body_len as usize;
    if buf.len() < len + body_len {
        return Parsed::NeedBody;
    }
    let head = buf.split_to(len).freeze();
    let body = buf.split_to(body_len).freeze();
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
    fn incomplete_heads_and_bodies_wait_for_more() {
        assert!(matches!(parse(b"GET / HTTP/1.1\r\nHost: a").0, Parsed::NeedMore));
        assert!(matches!(
            parse(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nab").0,
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
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n",
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
        ] {
            let (parsed, _) = parse(bytes);
            assert!(
                matches!(parsed, Parsed::Complete(Next::Reject(s)) if s == status),
                "{bytes:?}"
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
            (&b"GET / HTTP/1.1\r\n\r\n"[..], true),
            (b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", false),
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
