//! HTTP/2 spoken byte by byte, for tests that play a hostile client: frames written exactly as a
//! test asks (including ones no well-behaved client library would send), a minimal HPACK encoder
//! (literals and indexed fields, no Huffman), and a reader that records what the server answered.
//!
//! Blocking sockets on purpose: an attack runs on a thread of its own, so its CPU time can be
//! read for that thread alone (see [`crate::usage`]).

use std::{
    collections::BTreeMap,
    io::{self, Read, Write},
    net::{Shutdown, SocketAddr, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

/// What a client sends first on a connection with prior knowledge (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Frame types (RFC 9113 §6).
pub mod kind {
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const PRIORITY: u8 = 0x2;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const WINDOW_UPDATE: u8 = 0x8;
    pub const CONTINUATION: u8 = 0x9;
}

/// Frame flags.
pub mod flag {
    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
}

/// SETTINGS identifiers (RFC 9113 §6.5.2).
pub mod setting {
    pub const HEADER_TABLE_SIZE: u16 = 0x1;
    pub const ENABLE_PUSH: u16 = 0x2;
    pub const INITIAL_WINDOW_SIZE: u16 = 0x4;
}

/// Error codes (RFC 9113 §7).
pub mod reason {
    pub const NO_ERROR: u32 = 0x0;
    pub const PROTOCOL_ERROR: u32 = 0x1;
    pub const STREAM_CLOSED: u32 = 0x5;
    pub const FRAME_SIZE_ERROR: u32 = 0x6;
    pub const REFUSED_STREAM: u32 = 0x7;
    pub const CANCEL: u32 = 0x8;
    pub const COMPRESSION_ERROR: u32 = 0x9;
    pub const ENHANCE_YOUR_CALM: u32 = 0xb;

    /// The code's name, for messages.
    pub fn name(code: u32) -> String {
        let known = [
            "NO_ERROR",
            "PROTOCOL_ERROR",
            "INTERNAL_ERROR",
            "FLOW_CONTROL_ERROR",
            "SETTINGS_TIMEOUT",
            "STREAM_CLOSED",
            "FRAME_SIZE_ERROR",
            "REFUSED_STREAM",
            "CANCEL",
            "COMPRESSION_ERROR",
            "CONNECT_ERROR",
            "ENHANCE_YOUR_CALM",
            "INADEQUATE_SECURITY",
            "HTTP_1_1_REQUIRED",
        ];
        usize::try_from(code)
            .ok()
            .and_then(|i| known.get(i))
            .map_or_else(|| format!("0x{code:x}"), |name| (*name).to_owned())
    }
}

/// One frame: its 9-byte header's fields and its payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn new(kind: u8, flags: u8, stream: u32, payload: Vec<u8>) -> Self {
        Self {
            kind,
            flags,
            stream,
            payload,
        }
    }

    /// SETTINGS with these (identifier, value) pairs.
    pub fn settings(pairs: &[(u16, u32)]) -> Self {
        let mut payload = Vec::with_capacity(pairs.len() * 6);
        for (id, value) in pairs {
            payload.extend_from_slice(&id.to_be_bytes());
            payload.extend_from_slice(&value.to_be_bytes());
        }
        Self::new(kind::SETTINGS, 0, 0, payload)
    }

    pub fn settings_ack() -> Self {
        Self::new(kind::SETTINGS, flag::ACK, 0, Vec::new())
    }

    pub fn ping(data: [u8; 8]) -> Self {
        Self::new(kind::PING, 0, 0, data.to_vec())
    }

    /// HEADERS carrying `block` (an HPACK header block fragment).
    pub fn headers(stream: u32, flags: u8, block: Vec<u8>) -> Self {
        Self::new(kind::HEADERS, flags, stream, block)
    }

    pub fn continuation(stream: u32, flags: u8, block: Vec<u8>) -> Self {
        Self::new(kind::CONTINUATION, flags, stream, block)
    }

    pub fn data(stream: u32, flags: u8, data: Vec<u8>) -> Self {
        Self::new(kind::DATA, flags, stream, data)
    }

    pub fn rst_stream(stream: u32, code: u32) -> Self {
        Self::new(kind::RST_STREAM, 0, stream, code.to_be_bytes().to_vec())
    }

    /// PRIORITY: `stream` depends on `dependency` with `weight`.
    pub fn priority(stream: u32, dependency: u32, weight: u8) -> Self {
        let mut payload = dependency.to_be_bytes().to_vec();
        payload.push(weight);
        Self::new(kind::PRIORITY, 0, stream, payload)
    }

    pub fn window_update(stream: u32, increment: u32) -> Self {
        Self::new(kind::WINDOW_UPDATE, 0, stream, increment.to_be_bytes().to_vec())
    }

    /// Appends the frame's bytes to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let len = u32::try_from(self.payload.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&len.to_be_bytes()[1..]);
        out.push(self.kind);
        out.push(self.flags);
        out.extend_from_slice(&(self.stream & 0x7fff_ffff).to_be_bytes());
        out.extend_from_slice(&self.payload);
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(9 + self.payload.len());
        self.encode_into(&mut out);
        out
    }

    /// Reads one frame; `None` when the peer closed the connection between frames.
    pub fn read(from: &mut impl Read) -> io::Result<Option<Self>> {
        let mut head = [0u8; 9];
        let mut filled = 0;
        while filled < head.len() {
            match from.read(&mut head[filled..]) {
                Ok(0) if filled == 0 => return Ok(None),
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => filled += n,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0; len];
        from.read_exact(&mut payload)?;
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        Ok(Some(Self::new(head[3], head[4], stream, payload)))
    }
}

/// A minimal HPACK encoder (RFC 7541): enough to write any header block a test needs, never
/// Huffman-coded, never compressed unless the test asks for the dynamic table.
pub mod hpack {
    /// An integer with an `prefix_bits`-bit prefix, the first byte's high bits set to `pattern`.
    pub fn integer(out: &mut Vec<u8>, pattern: u8, prefix_bits: u32, value: usize) {
        let max = (1usize << prefix_bits) - 1;
        if value < max {
            out.push(pattern | value as u8);
            return;
        }
        out.push(pattern | max as u8);
        let mut rest = value - max;
        while rest >= 128 {
            out.push((rest % 128) as u8 | 0x80);
            rest /= 128;
        }
        out.push(rest as u8);
    }

    fn string(out: &mut Vec<u8>, bytes: &[u8]) {
        integer(out, 0x00, 7, bytes.len());
        out.extend_from_slice(bytes);
    }

    /// A literal field with a new name, not added to the dynamic table (§6.2.2).
    pub fn literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
        out.push(0x00);
        string(out, name);
        string(out, value);
    }

    /// A literal field with a new name, added to the dynamic table (§6.2.1): it becomes index 62.
    pub fn literal_indexed(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
        out.push(0x40);
        string(out, name);
        string(out, value);
    }

    /// A field by its index in the static (1..=61) or dynamic (62..) table (§6.1).
    pub fn indexed(out: &mut Vec<u8>, index: usize) {
        integer(out, 0x80, 7, index);
    }

    /// The pseudo-headers of a request for `path` on `authority` over cleartext.
    pub fn request(method: &str, path: &str, authority: &str) -> Vec<u8> {
        let mut block = Vec::with_capacity(64 + path.len() + authority.len());
        literal(&mut block, b":method", method.as_bytes());
        literal(&mut block, b":scheme", b"http");
        literal(&mut block, b":path", path.as_bytes());
        literal(&mut block, b":authority", authority.as_bytes());
        block
    }
}

/// What the server sent on a connection, as its frames arrived.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// The GOAWAY, if one came: (last stream id, error code, debug data).
    pub goaway: Option<(u32, u32, String)>,
    /// RST_STREAM frames by error code.
    pub resets: BTreeMap<u32, u64>,
    /// HEADERS frames (response heads), and the `:status` of each when it was a literal or a
    /// static-table entry.
    pub response_heads: u64,
    pub statuses: BTreeMap<String, u64>,
    pub settings: u64,
    pub settings_acks: u64,
    pub ping_acks: u64,
    pub frames: u64,
    pub bytes: u64,
    /// The connection ended (EOF or reset), by either side.
    pub closed: bool,
    /// It was the server that ended it, before this client closed its side.
    pub closed_by_server: bool,
    /// CPU time of the reading thread, once it ended.
    pub reader_cpu: Duration,
}

impl Observed {
    pub fn resets_total(&self) -> u64 {
        self.resets.values().sum()
    }

    fn record(&mut self, frame: &Frame) {
        self.frames += 1;
        self.bytes += 9 + frame.payload.len() as u64;
        match frame.kind {
            kind::GOAWAY if frame.payload.len() >= 8 && self.goaway.is_none() => {
                let p = &frame.payload;
                let last = u32::from_be_bytes([p[0], p[1], p[2], p[3]]) & 0x7fff_ffff;
                let code = u32::from_be_bytes([p[4], p[5], p[6], p[7]]);
                let debug = String::from_utf8_lossy(&p[8..]).into_owned();
                self.goaway = Some((last, code, debug));
            }
            kind::RST_STREAM if frame.payload.len() == 4 => {
                let p = &frame.payload;
                *self
                    .resets
                    .entry(u32::from_be_bytes([p[0], p[1], p[2], p[3]]))
                    .or_default() += 1;
            }
            kind::HEADERS => {
                self.response_heads += 1;
                *self.statuses.entry(status_of(&frame.payload)).or_default() += 1;
            }
            kind::SETTINGS if frame.flags & flag::ACK != 0 => self.settings_acks += 1,
            kind::SETTINGS => self.settings += 1,
            kind::PING if frame.flags & flag::ACK != 0 => self.ping_acks += 1,
            _ => {}
        }
    }
}

/// The `:status` of a response head, when its first field says it plainly: a static-table
/// index (8-14) or a literal with the `:status` name (index 8); otherwise `"?"`. A client that
/// sets SETTINGS_HEADER_TABLE_SIZE to 0 gets every status that way.
fn status_of(block: &[u8]) -> String {
    const STATIC: [(u8, &str); 7] = [
        (8, "200"),
        (9, "204"),
        (10, "206"),
        (11, "304"),
        (12, "400"),
        (13, "404"),
        (14, "500"),
    ];
    // Dynamic table size updates (§6.3) may come first: skip them.
    let mut block = block;
    while let Some(&first) = block.first() {
        if first & 0xe0 != 0x20 {
            break;
        }
        let continued = first & 0x1f == 0x1f;
        block = &block[1..];
        if continued {
            let end = block
                .iter()
                .position(|b| b & 0x80 == 0)
                .map_or(block.len(), |i| i + 1);
            block = &block[end..];
        }
    }
    let Some(&first) = block.first() else {
        return "?".to_owned();
    };
    if first & 0x80 != 0 {
        let index = first & 0x7f;
        return STATIC
            .iter()
            .find(|(i, _)| *i == index)
            .map_or("?", |(_, s)| s)
            .to_owned();
    }
    // Literal with indexed name 8 (`:status`), with (0x48) or without (0x08) or never (0x18)
    // indexing: the value follows as a string of three digits, plain or Huffman-coded.
    if !matches!(first, 0x48 | 0x08 | 0x18) || block.len() < 2 {
        return "?".to_owned();
    }
    let len = usize::from(block[1] & 0x7f);
    let Some(value) = block.get(2..2 + len) else {
        return "?".to_owned();
    };
    if block[1] & 0x80 == 0 {
        return String::from_utf8_lossy(value).into_owned();
    }
    huffman_digits(value, 3).unwrap_or_else(|| "?".to_owned())
}

/// Decodes `count` digits from HPACK's Huffman code (RFC 7541 appendix B), where '0'-'2' are the
/// 5-bit codes 0-2 and '3'-'9' the 6-bit codes 0x19-0x1f.
fn huffman_digits(bytes: &[u8], count: usize) -> Option<String> {
    let bit = |i: usize| -> Option<u8> { bytes.get(i / 8).map(|b| (b >> (7 - i % 8)) & 1) };
    let mut at = 0;
    let mut digits = String::new();
    for _ in 0..count {
        let mut code = 0u8;
        for _ in 0..5 {
            code = code << 1 | bit(at)?;
            at += 1;
        }
        let digit = if code <= 2 {
            code
        } else {
            code = code << 1 | bit(at)?;
            at += 1;
            code.checked_sub(0x19).filter(|d| *d <= 6)? + 3
        };
        digits.push(char::from(b'0' + digit));
    }
    Some(digits)
}

/// How long a write may make no progress before [`RawClient::write_until_stalled`] calls the
/// connection stalled.
pub const STALL: Duration = Duration::from_secs(2);

/// A client connection that has done the HTTP/2 handshake (preface, SETTINGS both ways) and now
/// writes whatever a test gives it, while a thread of its own reads and records the server's
/// frames.
pub struct RawClient {
    stream: TcpStream,
    observed: Arc<Mutex<Observed>>,
    /// Set before this side closes, so the reader can tell who ended the connection.
    closing: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
}

impl RawClient {
    /// Connects to `addr`, sends the preface and `settings`, and acknowledges the server's
    /// SETTINGS before returning.
    pub fn connect(addr: SocketAddr, settings: &[(u16, u32)]) -> io::Result<Self> {
        let mut client = Self::connect_without_reading(addr, settings)?;
        let (mut stream, observed, closing) = (
            client.stream.try_clone()?,
            client.observed.clone(),
            client.closing.clone(),
        );
        client.reader = Some(
            std::thread::Builder::new()
                .name("h2-raw-reader".to_owned())
                .spawn(move || read_until_closed(&mut stream, &observed, &closing))?,
        );
        Ok(client)
    }

    /// [`RawClient::connect`], after which nothing reads what the server sends: a client that
    /// lets the server's answers pile up.
    pub fn connect_without_reading(addr: SocketAddr, settings: &[(u16, u32)]) -> io::Result<Self> {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_nodelay(true)?;
        let mut hello = PREFACE.to_vec();
        Frame::settings(settings).encode_into(&mut hello);
        stream.write_all(&hello)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut observed = Observed::default();
        loop {
            let frame = Frame::read(&mut stream)?
                .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "closed before its SETTINGS"))?;
            observed.record(&frame);
            if frame.kind == kind::SETTINGS && frame.flags & flag::ACK == 0 {
                break;
            }
        }
        stream.write_all(&Frame::settings_ack().encode())?;
        stream.set_read_timeout(None)?;
        Ok(Self {
            stream,
            observed: Arc::new(Mutex::new(observed)),
            closing: Arc::new(AtomicBool::new(false)),
            reader: None,
        })
    }

    /// Writes `frame` over and over until `limit` bytes are written or a write makes no
    /// progress for [`STALL`]: the bytes written, and whether the writes stalled (the server
    /// stopped reading).
    pub fn write_until_stalled(&mut self, frame: &[u8], limit: usize) -> (usize, bool) {
        let batch: Vec<u8> = frame
            .iter()
            .copied()
            .cycle()
            .take(frame.len() * (64 * 1024 / frame.len().max(1)))
            .collect();
        if self.stream.set_write_timeout(Some(STALL)).is_err() {
            return (0, false);
        }
        let (mut written, mut offset) = (0, 0);
        while written < limit {
            match self.stream.write(&batch[offset..]) {
                Ok(0) => return (written, false),
                Ok(n) => {
                    written += n;
                    offset = (offset + n) % batch.len();
                }
                Err(error) if matches!(error.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    return (written, true);
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return (written, false),
            }
        }
        (written, false)
    }

    /// Writes `bytes` as they are.
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// What the server has sent so far.
    pub fn observed(&self) -> Observed {
        self.observed.lock().map(|o| o.clone()).unwrap_or_default()
    }

    /// Waits up to `wait` for the server to close the connection, then closes it from this side
    /// and returns everything the server sent.
    pub fn finish(mut self, wait: Duration) -> Observed {
        let deadline = std::time::Instant::now() + wait;
        while !self.observed().closed && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.closing.store(true, Ordering::SeqCst);
        let _ = self.stream.shutdown(Shutdown::Both);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        self.observed()
    }
}

fn read_until_closed(stream: &mut TcpStream, observed: &Mutex<Observed>, closing: &AtomicBool) {
    let mut buffered = io::BufReader::with_capacity(64 * 1024, stream);
    while let Ok(Some(frame)) = Frame::read(&mut buffered) {
        if let Ok(mut observed) = observed.lock() {
            observed.record(&frame);
        }
    }
    if let Ok(mut observed) = observed.lock() {
        observed.closed = true;
        observed.closed_by_server = !closing.load(Ordering::SeqCst);
        observed.reader_cpu = crate::usage::thread_cpu().unwrap_or_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_follow_rfc_7541_c_1() {
        let mut out = Vec::new();
        hpack::integer(&mut out, 0x00, 5, 10);
        assert_eq!(out, [10]);
        out.clear();
        hpack::integer(&mut out, 0x00, 5, 1337);
        assert_eq!(out, [31, 154, 10]);
        out.clear();
        hpack::indexed(&mut out, 62);
        assert_eq!(out, [0x80 | 62]);
    }

    #[test]
    fn a_frame_reads_back_as_written() {
        let frame = Frame::headers(3, flag::END_HEADERS, hpack::request("GET", "/", "a"));
        let bytes = frame.encode();
        assert_eq!(bytes[..3], [0, 0, frame.payload.len() as u8]);
        let read = Frame::read(&mut &bytes[..]).expect("a frame");
        assert_eq!(read, Some(frame));
        assert_eq!(Frame::read(&mut &b""[..]).expect("clean end"), None);
    }

    #[test]
    fn statuses_are_read_from_plain_response_heads() {
        assert_eq!(status_of(&[0x88]), "200");
        assert_eq!(status_of(b"\x48\x03431"), "431");
        // A dynamic table size update to 0 first, as after SETTINGS_HEADER_TABLE_SIZE 0.
        assert_eq!(status_of(b"\x20\x08\x03431"), "431");
        assert_eq!(status_of(&[0xbe]), "?");
        // "431" Huffman-coded: 011010 011001 00001, padded with ones.
        assert_eq!(status_of(&[0x48, 0x83, 0x69, 0x90, 0xff]), "431");
        assert_eq!(status_of(&[0x20, 0x08, 0x83, 0x69, 0x90, 0xff]), "431");
    }
}
