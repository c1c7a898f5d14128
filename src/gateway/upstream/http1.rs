//! HTTP/1.1 to an endpoint, on a connection the request owns while it uses it.
//!
//! hyper's client drives each connection from a task of its own and hands requests, responses and
//! body chunks to it over channels: three task wake-ups per proxied request. Here the request's
//! own task writes the request and reads the response straight from the socket, and the response
//! body reads the rest; the connection goes back to its endpoint's idle queue when the body ends.

use std::{
    io,
    net::SocketAddr,
    task::{Context, Poll, ready},
};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, Method, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::{Frame, SizeHint};
use tokio::{io::AsyncWriteExt, net::TcpStream};

use super::ConnectionSlot;
use crate::gateway::http::{
    body::OutgoingBody,
    forwarding::{Forwarding, is_connection_listed, is_hop_by_hop_name, names_other_headers},
    wire::{WireHeaders, chunk_size, decimal, parse_content_length, write_header},
};
use crate::gateway::trace::{UpstreamTrace, context::TRACEPARENT};

/// A request as an endpoint gets it: the client's head, and what the gateway adds.
pub struct RequestHead<'a> {
    pub method: &'a Method,
    /// The path and query (origin form).
    pub target: &'a str,
    /// The client's headers, hop-by-hop ones included (they are left out as the head is written).
    pub headers: &'a HeaderMap,
    pub forwarding: &'a Forwarding,
    /// The trace headers of this attempt, which replace the client's (tracing on).
    pub trace: Option<&'a UpstreamTrace>,
}

/// The most a response head may take, status line and headers together.
const MAX_HEAD: usize = 64 * 1024;
/// The most headers a response may carry (as many as hyper allows).
const MAX_HEADERS: usize = 100;
/// The most interim (1xx) answers before the final one: an endpoint that sends them without end
/// would hold the request forever.
const MAX_INTERIM: usize = 16;
/// How much room a read asks for.
const READ_CHUNK: usize = 16 * 1024;
/// A body up to this size is written with its head in one write.
const COALESCE_BODY: usize = 16 * 1024;

/// Why an exchange on a connection failed.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// The endpoint closed the connection before the first byte of an answer: on a reused
    /// connection, the race with its idle timeout, and the request may be sent again.
    #[error("the endpoint closed the connection before answering")]
    ClosedBeforeAnswer,
    #[error("writing the request failed: {0}")]
    Write(io::Error),
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("invalid response from the endpoint: {0}")]
    Invalid(&'static str),
    #[error("invalid response from the endpoint: {0}")]
    Parse(#[from] httparse::Error),
    #[error("the request body could not be read: {0}")]
    RequestBody(Box<dyn std::error::Error + Send + Sync>),
}

impl ExchangeError {
    /// Whether the connection had been closed by the endpoint before this exchange began, as far
    /// as can be told: nothing of an answer came back.
    pub fn is_stale_connection(&self) -> bool {
        matches!(self, Self::ClosedBeforeAnswer | Self::Write(_))
    }
}

/// An open connection to one endpoint.
pub struct Connection {
    stream: TcpStream,
    /// Bytes read and not yet consumed.
    read: BytesMut,
    /// The request head being written (kept to reuse its allocation).
    write: Vec<u8>,
    /// Whether it has carried an exchange before.
    pub reused: bool,
    /// Counted against the Microservice's `maxConnections` until the connection closes.
    _slot: ConnectionSlot,
}

/// How a response's body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Length(u64),
    Chunked(Chunked),
    /// Until the endpoint closes the connection.
    UntilClose,
}

/// Where a chunked body's decoder stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunked {
    /// Before a chunk-size line.
    Size,
    /// Inside a chunk's data, with this much left.
    Data(u64),
    /// After a chunk's data, before its CRLF.
    DataEnd,
    /// After the last chunk, reading trailer lines up to the empty one.
    Trailers,
}

/// A response head, and how to read what follows it.
pub struct Head {
    pub status: StatusCode,
    pub headers: WireHeaders,
    pub framing: Framing,
    /// Whether the connection may carry another exchange after this one.
    pub keep_alive: bool,
}

impl Connection {
    pub fn new(stream: TcpStream, slot: ConnectionSlot) -> Self {
        Self {
            stream,
            read: BytesMut::with_capacity(READ_CHUNK),
            write: Vec::with_capacity(1024),
            reused: false,
            _slot: slot,
        }
    }

    /// Writes the request, then reads the response head.
    pub async fn exchange(
        &mut self,
        head: &RequestHead<'_>,
        body: &mut OutgoingBody,
    ) -> Result<Head, ExchangeError> {
        let method = head.method;
        self.reused = true;
        let whole = match body {
            http_body_util::Either::Left(whole) => Some(whole.bytes()),
            http_body_util::Either::Right(_) => None,
        };
        self.write.clear();
        // A request that named no host (HTTP/1.0) names the endpoint, as HTTP/1.1 requires.
        let host = head
            .forwarding
            .lacks_host(head.headers)
            .then(|| self.stream.peer_addr().ok())
            .flatten();
        encode_head(&mut self.write, head, whole.as_ref().map(Bytes::len), host);
        // A small body goes out with its head, in one write.
        let coalesced = whole.as_ref().is_some_and(|bytes| bytes.len() <= COALESCE_BODY);
        if let Some(bytes) = whole.as_ref().filter(|_| coalesced) {
            self.write.extend_from_slice(bytes);
        }
        self.stream
            .write_all(&self.write)
            .await
            .map_err(ExchangeError::Write)?;
        match whole {
            Some(_) if coalesced => {}
            Some(bytes) => self
                .stream
                .write_all(&bytes)
                .await
                .map_err(ExchangeError::Write)?,
            None => self.write_chunked(body).await?,
        }
        self.read_head(method).await
    }

    /// Whether the endpoint has not closed the connection (nor sent anything unasked on it).
    pub fn is_open(&self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    async fn write_chunked(&mut self, body: &mut OutgoingBody) -> Result<(), ExchangeError> {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(ExchangeError::RequestBody)?;
            let Ok(data) = frame.into_data() else { continue };
            if data.is_empty() {
                continue;
            }
            self.stream
                .write_all(format!("{:x}\r\n", data.len()).as_bytes())
                .await?;
            self.stream.write_all(&data).await?;
            self.stream.write_all(b"\r\n").await?;
        }
        self.stream.write_all(b"0\r\n\r\n").await?;
        Ok(())
    }

    async fn read_head(&mut self, method: &Method) -> Result<Head, ExchangeError> {
        let mut answered = false;
        let mut interim = 0;
        loop {
            if !self.read.is_empty() {
                answered = true;
                if let Some(head) = parse_head(&mut self.read, method, &mut interim)? {
                    // A body that is bad from its first chunk line is known now, while the
                    // client can still be told so with a 502 instead of a body cut short.
                    if let Framing::Chunked(_) = head.framing
                        && let Some(eol) = find_crlf(&self.read)?
                        && chunk_size(&self.read[..eol]).is_none()
                    {
                        return Err(ExchangeError::Invalid("chunk size line"));
                    }
                    return Ok(head);
                }
                if self.read.len() >= MAX_HEAD {
                    return Err(ExchangeError::Invalid("response head too large"));
                }
            }
            self.read.reserve(READ_CHUNK);
            let read = tokio::io::AsyncReadExt::read_buf(&mut self.stream, &mut self.read).await;
            match read {
                Ok(0) | Err(_) if !answered && self.read.is_empty() => {
                    return Err(ExchangeError::ClosedBeforeAnswer);
                }
                Ok(0) => return Err(ExchangeError::Invalid("response head cut short")),
                Ok(_) => {}
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// Reads into the buffer; `Ok(0)` is the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        self.read.reserve(READ_CHUNK);
        loop {
            ready!(self.stream.poll_read_ready(cx))?;
            match self.stream.try_read_buf(&mut self.read) {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                read => return Poll::Ready(read),
            }
        }
    }

    /// Whether nothing is left unread, so that the next exchange starts clean.
    pub fn is_clean(&self) -> bool {
        self.read.is_empty()
    }
}

/// Writes a request head in origin form. `body_len`: the length of a body held whole, `None` for
/// one streamed in chunks. The client's own framing headers are hop-by-hop or replaced here.
/// `host`: a Host to add, for a request that has none.
fn encode_head(out: &mut Vec<u8>, head: &RequestHead<'_>, body_len: Option<usize>, host: Option<SocketAddr>) {
    let method = head.method;
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(head.target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in head.headers {
        if name != header::CONTENT_LENGTH
            && head.forwarding.passes(name, head.headers)
            && !head.trace.is_some_and(|trace| trace.replaces(name.as_str()))
        {
            write_header(out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    for (name, value) in head.forwarding.added() {
        write_header(out, name.as_str().as_bytes(), value);
    }
    if let Some(trace) = head.trace {
        write_header(out, TRACEPARENT.as_str().as_bytes(), &trace.traceparent);
    }
    if let Some(host) = host {
        write_header(out, b"host", host.to_string().as_bytes());
    }
    match body_len {
        // A method that usually has a body says when it has none.
        Some(0) if !matches!(*method, Method::POST | Method::PUT | Method::PATCH) => {}
        Some(len) => write_header(out, b"content-length", decimal(len as u64, &mut [0; 20])),
        None => write_header(out, b"transfer-encoding", b"chunked"),
    }
    out.extend_from_slice(b"\r\n");
}

/// Parses a response head off the front of `buf`, skipping interim (1xx) responses. `None`: more
/// bytes are needed.
/// `interim`: interim answers skipped so far, of at most [`MAX_INTERIM`].
fn parse_head(
    buf: &mut BytesMut,
    method: &Method,
    interim: &mut usize,
) -> Result<Option<Head>, ExchangeError> {
    loop {
        let mut slots = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut parsed,
            buf,
            &mut slots,
        )? {
            httparse::Status::Complete(len) => len,
            httparse::Status::Partial => return Ok(None),
        };
        let code = parsed.code.unwrap_or(0);
        let status = StatusCode::from_u16(code).map_err(|_| ExchangeError::Invalid("status code"))?;
        if status.is_informational() {
            if status == StatusCode::SWITCHING_PROTOCOLS {
                return Err(ExchangeError::Invalid("unrequested protocol switch"));
            }
            *interim += 1;
            if *interim > MAX_INTERIM {
                return Err(ExchangeError::Invalid("endless interim responses"));
            }
            buf.advance(len);
            continue;
        }
        let version = parsed.version.unwrap_or(0);
        // Where each value lies in the head, so that the values can share its buffer.
        let base = buf.as_ptr() as usize;
        let count = parsed.headers.len();
        let mut keep_alive = version == 1;
        let mut chunked = false;
        let mut codings = 0u32;
        // Each line must end in CRLF: a bare LF would end a line here that the endpoint meant
        // as part of a value (response splitting). httparse has refused a bare CR already.
        let crlf_after = |end: usize| {
            let rest = &buf[end.min(buf.len())..];
            let blank = rest.iter().take_while(|b| matches!(b, b' ' | b'\t')).count();
            rest[blank..].starts_with(b"\r\n")
        };
        if !buf[..len].ends_with(b"\r\n\r\n")
            || parsed
                .headers
                .first()
                .is_some_and(|h| !buf[..h.name.as_ptr() as usize - base].ends_with(b"\r\n"))
        {
            return Err(ExchangeError::Invalid("a line ended by a bare LF"));
        }
        // Whether a Connection header names headers other than the usual hop-by-hop ones: only
        // then is each header checked against its list.
        let mut names_more = false;
        // Offsets, not slices: the head is frozen (shared by the values) only after parsing. A
        // hop-by-hop header, read for framing here and not passed on, gets a zero-length name.
        let mut spans = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
        for (span, h) in spans.iter_mut().zip(parsed.headers.iter()) {
            let name = h.name.as_bytes();
            // A head is at most MAX_HEAD bytes long: every offset fits.
            let at = |part: &[u8]| (part.as_ptr() as usize - base) as u32;
            if !crlf_after(h.value.as_ptr() as usize - base + h.value.len()) {
                return Err(ExchangeError::Invalid("a line ended by a bare LF"));
            }
            let hop_by_hop = is_hop_by_hop_name(name);
            *span = (
                at(name),
                if hop_by_hop { 0 } else { name.len() as u32 },
                at(h.value),
                h.value.len() as u32,
            );
            if !hop_by_hop {
                continue;
            }
            if name.eq_ignore_ascii_case(b"transfer-encoding") {
                // The gateway decodes chunks and nothing else: another coding would reach the
                // client undecoded, without the header that names it.
                codings += 1;
                chunked = h.value.eq_ignore_ascii_case(b"chunked");
                if !chunked || codings > 1 {
                    return Err(ExchangeError::Invalid("a transfer coding other than chunked"));
                }
            } else if name.eq_ignore_ascii_case(b"connection") {
                for token in h.value.split(|b| *b == b',') {
                    let token = token.trim_ascii();
                    if token.eq_ignore_ascii_case(b"close") {
                        keep_alive = false;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        keep_alive |= version == 0;
                    }
                }
                names_more |= names_other_headers(h.value);
            }
        }
        let bodiless =
            *method == Method::HEAD || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
        let mut length: Option<u64> = None;
        let mut has_date = false;
        let head = buf.split_to(len).freeze();
        let bytes = |at: u32, len: u32| &head[at as usize..(at + len) as usize];
        let connection_values: Vec<&[u8]> = if names_more {
            spans[..count]
                .iter()
                .filter(|&&(n, nl, _, _)| {
                    nl == 0
                        && head
                            .get(n as usize..n as usize + 10)
                            .is_some_and(|name| name.eq_ignore_ascii_case(b"connection"))
                })
                .map(|&(_, _, v, vl)| bytes(v, vl))
                .collect()
        } else {
            Vec::new()
        };
        // Decide which lines are kept: a zero-length name marks one left out.
        for span in &mut spans[..count] {
            let (name_at, name_len, at, len) = *span;
            if name_len == 0 {
                continue;
            }
            let raw_name = bytes(name_at, name_len);
            let is_length = raw_name.eq_ignore_ascii_case(b"content-length");
            if is_length {
                // Read even when Connection names it: an endpoint does not unsay its framing.
                let n =
                    parse_content_length(bytes(at, len)).ok_or(ExchangeError::Invalid("content-length"))?;
                if length.is_some_and(|l| l != n) {
                    return Err(ExchangeError::Invalid("conflicting content-length"));
                }
                length = Some(n);
            }
            let listed = names_more
                && is_connection_listed(
                    std::str::from_utf8(raw_name).unwrap_or_default(),
                    connection_values.iter().copied(),
                );
            if listed {
                span.1 = 0;
                continue;
            }
            if is_length {
                // The body's length is the next hop's to say, but for a bodiless answer, whose
                // length is that of the body it would have had.
                if !bodiless {
                    span.1 = 0;
                    continue;
                }
            }
            has_date |= raw_name.eq_ignore_ascii_case(b"date");
        }
        let headers = WireHeaders::new(kept_lines(&head, &spans[..count]), has_date);
        // Two framings, or chunks from an HTTP/1.0 endpoint: faulty framing (RFC 9112 6.1, 6.3),
        // which a proxy must not guess at.
        if chunked && (length.is_some() || version == 0) {
            return Err(ExchangeError::Invalid("conflicting framing"));
        }
        let framing = if bodiless {
            Framing::Length(0)
        } else {
            match (chunked, length) {
                (true, _) => Framing::Chunked(Chunked::Size),
                (false, Some(n)) => Framing::Length(n),
                (false, None) => Framing::UntilClose,
            }
        };
        if framing == Framing::UntilClose {
            keep_alive = false;
        }
        return Ok(Some(Head {
            status,
            headers,
            framing,
            keep_alive,
        }));
    }
}

/// The kept header lines of `head` (spans with a non-zero name length), each ended by CRLF. When
/// they are one run of CRLF-ended lines they share the head's buffer; otherwise their runs are
/// copied into one new buffer.
fn kept_lines(head: &Bytes, spans: &[(u32, u32, u32, u32)]) -> Bytes {
    let line_end = |&(_, _, v, vl): &(u32, u32, u32, u32)| (v + vl) as usize;
    let ends_in_crlf = |span| head.get(line_end(span)..line_end(span) + 2) == Some(&b"\r\n"[..]);
    // Runs of adjacent CRLF-ended lines, as (start, end) in `head`, CRLF included.
    let mut runs = spans.iter().filter(|span| span.1 != 0).map(|span| {
        let start = span.0 as usize;
        if ends_in_crlf(span) {
            (start, line_end(span) + 2, true)
        } else {
            (start, line_end(span), false)
        }
    });
    let Some(mut run) = runs.next() else {
        return Bytes::new();
    };
    let mut lines: Option<BytesMut> = None;
    for next in runs {
        if run.2 && next.0 == run.1 {
            run = (run.0, next.1, next.2);
            continue;
        }
        let lines = lines.get_or_insert_with(|| BytesMut::with_capacity(head.len()));
        lines.extend_from_slice(&head[run.0..run.1]);
        if !run.2 {
            lines.extend_from_slice(b"\r\n");
        }
        run = next;
    }
    match lines {
        None if run.2 => head.slice(run.0..run.1),
        lines => {
            let mut lines = lines.unwrap_or_default();
            lines.extend_from_slice(&head[run.0..run.1]);
            if !run.2 {
                lines.extend_from_slice(b"\r\n");
            }
            lines.freeze()
        }
    }
}

/// What reading a body's next piece came to.
pub enum Read {
    Data(Bytes),
    End,
}

/// Reads the next piece of a body framed by `framing` from `conn`, advancing `framing`.
pub fn poll_body(
    conn: &mut Connection,
    framing: &mut Framing,
    cx: &mut Context<'_>,
) -> Poll<io::Result<Read>> {
    loop {
        match framing {
            Framing::Length(0) => return Poll::Ready(Ok(Read::End)),
            Framing::Length(left) => {
                if !conn.read.is_empty() {
                    let take = conn.read.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                    *left -= take as u64;
                    return Poll::Ready(Ok(Read::Data(conn.read.split_to(take).freeze())));
                }
                if ready!(conn.poll_fill(cx))? == 0 {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "body cut short",
                    )));
                }
            }
            Framing::UntilClose => {
                if !conn.read.is_empty() {
                    return Poll::Ready(Ok(Read::Data(conn.read.split().freeze())));
                }
                if ready!(conn.poll_fill(cx))? == 0 {
                    return Poll::Ready(Ok(Read::End));
                }
            }
            Framing::Chunked(state) => {
                match decode_chunked(&mut conn.read, state)? {
                    Some(Read::End) => {
                        *framing = Framing::Length(0);
                        return Poll::Ready(Ok(Read::End));
                    }
                    Some(data) => return Poll::Ready(Ok(data)),
                    None => {}
                }
                if ready!(conn.poll_fill(cx))? == 0 {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "body cut short",
                    )));
                }
            }
        }
    }
}

fn invalid(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// Decodes what it can of a chunked body from the front of `buf`. `None`: more bytes are needed.
fn decode_chunked(buf: &mut BytesMut, state: &mut Chunked) -> io::Result<Option<Read>> {
    loop {
        match state {
            Chunked::Size => {
                let Some(eol) = find_crlf(buf)? else {
                    return Ok(None);
                };
                let size = chunk_size(&buf[..eol]).ok_or_else(|| invalid("chunk size line"))?;
                buf.advance(eol + 2);
                *state = if size == 0 {
                    Chunked::Trailers
                } else {
                    Chunked::Data(size)
                };
            }
            Chunked::Data(left) => {
                if buf.is_empty() {
                    return Ok(None);
                }
                let take = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                *left -= take as u64;
                if *left == 0 {
                    *state = Chunked::DataEnd;
                }
                return Ok(Some(Read::Data(buf.split_to(take).freeze())));
            }
            Chunked::DataEnd => {
                if buf.len() < 2 {
                    return Ok(None);
                }
                if &buf[..2] != b"\r\n" {
                    return Err(invalid("chunk data not followed by CRLF"));
                }
                buf.advance(2);
                *state = Chunked::Size;
            }
            // Trailers are not forwarded: skip lines up to the empty one.
            Chunked::Trailers => {
                let Some(eol) = find_crlf(buf)? else {
                    return Ok(None);
                };
                buf.advance(eol + 2);
                if eol == 0 {
                    return Ok(Some(Read::End));
                }
            }
        }
    }
}

/// Where the first CRLF in `buf` starts; an over-long line is an error.
fn find_crlf(buf: &[u8]) -> io::Result<Option<usize>> {
    match buf.windows(2).position(|w| w == b"\r\n") {
        Some(at) => Ok(Some(at)),
        None if buf.len() > MAX_HEAD => Err(invalid("line too long")),
        None => Ok(None),
    }
}

/// A response as an endpoint's bytes give it: the head (interim answers skipped), then the body
/// by its framing. The fuzzer's way in (see `crate::gateway::fuzzing`).
pub(in crate::gateway) fn fuzz_response(bytes: &[u8]) {
    let mut buf = BytesMut::from(bytes);
    let mut interim = 0;
    let Ok(Some(head)) = parse_head(&mut buf, &Method::GET, &mut interim) else {
        return;
    };
    assert!(interim <= MAX_INTERIM);
    if let Framing::Chunked(mut state) = head.framing {
        while let Ok(Some(Read::Data(data))) = decode_chunked(&mut buf, &mut state) {
            assert!(!data.is_empty(), "an empty piece of a chunked body");
        }
    }
}

/// A chunked body decoded in one piece and in two (split where the first byte says): the same
/// body either way, and the same as the request side's strict reader finds when that one reads
/// it whole. The fuzzer's way in.
pub(in crate::gateway) fn fuzz_chunked(bytes: &[u8]) {
    let decode = |pieces: &[&[u8]]| -> Option<Vec<u8>> {
        let mut buf = BytesMut::new();
        let mut state = Chunked::Size;
        let mut body = Vec::new();
        for piece in pieces {
            buf.extend_from_slice(piece);
            loop {
                match decode_chunked(&mut buf, &mut state) {
                    Ok(Some(Read::Data(data))) => body.extend_from_slice(&data),
                    Ok(Some(Read::End)) => return Some(body),
                    Ok(None) => break,
                    Err(_) => return None,
                }
            }
        }
        None
    };
    let split = usize::from(bytes.first().copied().unwrap_or(0)).min(bytes.len());
    let whole = decode(&[bytes]);
    assert_eq!(
        whole,
        decode(&[&bytes[..split], &bytes[split..]]),
        "the split changed the body"
    );
    if let crate::gateway::http::wire::ChunkedRead::Whole { body, .. } =
        crate::gateway::http::wire::read_chunked(bytes, 1 << 20)
    {
        assert_eq!(
            whole.as_deref(),
            Some(&body[..]),
            "the two chunked readers disagree"
        );
    }
}

/// Frames one piece of a body as the server side wants it.
pub fn frame(read: Read) -> Option<Frame<Bytes>> {
    match read {
        Read::Data(bytes) => Some(Frame::data(bytes)),
        Read::End => None,
    }
}

/// The size hint of a body framed by `framing`.
pub fn size_hint(framing: &Framing) -> SizeHint {
    match framing {
        Framing::Length(n) => SizeHint::with_exact(*n),
        _ => SizeHint::default(),
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn parse(bytes: &[u8], method: Method) -> Result<Option<Head>, ExchangeError> {
        parse_head(&mut BytesMut::from(bytes), &method, &mut 0)
    }

    #[test]
    fn a_response_head_gives_its_status_headers_and_framing() {
        let mut buf =
            BytesMut::from(&b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: 1\r\nX-A: 2\r\n\r\nok"[..]);
        let head = parse_head(&mut buf, &Method::GET, &mut 0)
            .expect("valid")
            .expect("complete");
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(head.framing, Framing::Length(2));
        assert!(head.keep_alive);
        // One run of lines, shared with the head; the length is this hop's to write.
        assert_eq!(head.headers.as_bytes(), b"X-A: 1\r\nX-A: 2\r\n");
        assert_eq!(&buf[..], b"ok");

        let head = head_of(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Hop: 1\r\nConnection: close, X-Hop\r\nKeep-Alive: timeout=5\r\nX-Kept: 1\r\n\r\n",
        );
        assert_eq!(head.framing, Framing::Chunked(Chunked::Size));
        assert!(!head.keep_alive);
        // Hop-by-hop headers, and those Connection names, are not passed on.
        assert_eq!(head.headers.as_bytes(), b"X-Kept: 1\r\n");
        // Kept lines with others between them are copied together, each ended by CRLF.
        let head = head_of(
            b"HTTP/1.1 200 OK\r\nA: 1 \r\nConnection: keep-alive\r\nDate: x\r\nContent-Length: 0\r\n\r\n",
        );
        assert_eq!(head.headers.as_bytes(), b"A: 1\r\nDate: x\r\n");
        assert!(head.headers.has_date());
        // nginx's order: two runs around the framing headers, copied into one buffer.
        let head = head_of(
            b"HTTP/1.1 200 OK\r\nServer: n\r\nDate: d\r\nContent-Type: t\r\nContent-Length: 2\r\nConnection: keep-alive\r\nx-backend: b1\r\n\r\n",
        );
        assert_eq!(
            head.headers.as_bytes(),
            b"Server: n\r\nDate: d\r\nContent-Type: t\r\nx-backend: b1\r\n"
        );
        let head = head_of(b"HTTP/1.0 200 OK\r\n\r\n");
        assert_eq!(head.framing, Framing::UntilClose);
        assert!(!head.keep_alive);
        let head = head_of(b"HTTP/1.1 204 No Content\r\n\r\n");
        assert_eq!(head.framing, Framing::Length(0));
        let head = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", Method::HEAD)
            .expect("valid")
            .expect("complete");
        assert_eq!(head.framing, Framing::Length(0));
        // A bodiless answer keeps the length of the body it would have had.
        assert_eq!(head.headers.as_bytes(), b"Content-Length: 5\r\n");

        assert!(matches!(
            head_partial(b"HTTP/1.1 200 OK\r\nContent-Len"),
            Ok(None)
        ));
        assert!(head_partial(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n").is_err());
        assert!(head_partial(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n").is_err());
        assert!(head_partial(b"garbage\r\n\r\n").is_err());
        // Faulty framing and lines a parser could split otherwise are refused, not guessed at.
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX-A: a\nSet-Cookie: b\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\n",
            b"HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: x\r\n\r\n",
        ] {
            assert!(head_partial(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let mut interim = 0;
        let mut endless = BytesMut::from(&b"HTTP/1.1 100 Continue\r\n\r\n".repeat(MAX_INTERIM + 1)[..]);
        assert!(parse_head(&mut endless, &Method::GET, &mut interim).is_err());
    }

    fn head_of(bytes: &[u8]) -> Head {
        parse(bytes, Method::GET).expect("valid").expect("complete")
    }

    fn head_partial(bytes: &[u8]) -> Result<Option<Head>, ExchangeError> {
        parse(bytes, Method::GET)
    }

    #[test]
    fn a_chunked_body_decodes_across_reads_and_skips_trailers() {
        let wire = b"5;ext=1\r\nhello\r\n1\r\n!\r\n0\r\nX-Trailer: t\r\n\r\nNEXT";
        // Fed one byte at a time, as the worst split of reads would.
        let mut buf = BytesMut::new();
        let mut state = Chunked::Size;
        let mut body = Vec::new();
        let mut ended = false;
        for byte in wire {
            buf.extend_from_slice(&[*byte]);
            while let Some(read) = decode_chunked(&mut buf, &mut state).expect("valid") {
                match read {
                    Read::Data(data) => body.extend_from_slice(&data),
                    Read::End => {
                        ended = true;
                        break;
                    }
                }
            }
            if ended {
                break;
            }
        }
        assert!(ended);
        assert_eq!(body, b"hello!");
        assert!(buf.is_empty(), "the bytes after the body stay unread");
        for bad in [
            &b"zz\r\n"[..],
            b"+5\r\n",
            b" 5\r\n",
            b"\r\n",
            b"5;a\nb\r\n",
            b"5;a\rb\r\n",
            b"1000000000000000\r\n",
        ] {
            let mut state = Chunked::Size;
            assert!(
                decode_chunked(&mut BytesMut::from(bad), &mut state).is_err(),
                "{bad:?}"
            );
        }
        assert_eq!(chunk_size(b"1a ;ext=\"v\""), Some(26));
        let mut state = Chunked::Size;
        assert!(decode_chunked(&mut BytesMut::from(&b"zz\r\n"[..]), &mut state).is_err());
        let mut state = Chunked::Size;
        assert!(decode_chunked(&mut BytesMut::from(&b"2\r\nabX"[..]), &mut state).is_ok_and(|r| r.is_some()));
        assert!(decode_chunked(&mut BytesMut::from(&b"X\r\n"[..]), &mut state).is_err());
    }

    fn encoded(method: Method, target: &str, headers: &HeaderMap, body_len: Option<usize>) -> String {
        let client = crate::gateway::http::client::Client::new(
            "0.0.0.0:80".parse().expect("addr"),
            "10.0.0.7:1000".parse().expect("addr"),
        );
        let mut with_id = headers.clone();
        // A fixed request id keeps the expected heads readable.
        with_id.insert(
            &crate::gateway::http::forwarding::X_REQUEST_ID,
            HeaderValue::from_static("id"),
        );
        let forwarding = Forwarding::new(&with_id, &client, Some("shop"));
        let head = RequestHead {
            method: &method,
            target,
            headers: &with_id,
            forwarding: &forwarding,
            trace: None,
        };
        let mut out = Vec::new();
        encode_head(&mut out, &head, body_len, None);
        String::from_utf8(out).expect("ascii")
    }

    #[test]
    fn an_attempts_traceparent_replaces_the_clients_and_tracestate_goes_only_with_its_trace() {
        let client = crate::gateway::http::client::Client::new(
            "0.0.0.0:80".parse().expect("addr"),
            "10.0.0.7:1000".parse().expect("addr"),
        );
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("shop"));
        headers.insert(
            &crate::gateway::http::forwarding::X_REQUEST_ID,
            HeaderValue::from_static("id"),
        );
        headers.insert(
            "traceparent",
            HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        );
        headers.insert("tracestate", HeaderValue::from_static("vendor=1"));
        let forwarding = Forwarding::new(&headers, &client, Some("shop"));
        let ours = *b"00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01";
        for keep_tracestate in [true, false] {
            let trace = UpstreamTrace {
                traceparent: ours,
                keep_tracestate,
            };
            let head = RequestHead {
                method: &Method::GET,
                target: "/",
                headers: &headers,
                forwarding: &forwarding,
                trace: Some(&trace),
            };
            let mut out = Vec::new();
            encode_head(&mut out, &head, Some(0), None);
            let text = String::from_utf8(out).expect("ascii");
            assert_eq!(text.matches("traceparent:").count(), 1, "{text}");
            assert!(
                text.contains("traceparent: 00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01\r\n"),
                "{text}"
            );
            assert_eq!(
                text.contains("tracestate: vendor=1\r\n"),
                keep_tracestate,
                "{text}"
            );
        }
    }

    #[test]
    fn a_request_head_has_its_own_framing_and_the_forwarding_headers() {
        let forwarded = "x-forwarded-for: 10.0.0.7\r\nx-forwarded-proto: http\r\nx-forwarded-host: shop\r\n";
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("shop"));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("99"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-hop"));
        headers.insert("x-hop", HeaderValue::from_static("1"));
        headers.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        assert_eq!(
            encoded(Method::POST, "/a?b", &headers, Some(3)),
            format!(
                "POST /a?b HTTP/1.1\r\nhost: shop\r\nx-request-id: id\r\n{forwarded}content-length: 3\r\n\r\n"
            )
        );
        assert_eq!(
            encoded(Method::GET, "/", &headers, Some(0)),
            format!("GET / HTTP/1.1\r\nhost: shop\r\nx-request-id: id\r\n{forwarded}\r\n")
        );
        // A request without Host gets one.
        assert_eq!(
            encoded(Method::PUT, "/", &HeaderMap::new(), None),
            format!(
                "PUT / HTTP/1.1\r\nx-request-id: id\r\nhost: shop\r\n{forwarded}transfer-encoding: chunked\r\n\r\n"
            )
        );
    }
}
