//! HTTP/1.1 in wire form: an endpoint's response headers kept as they came (header lines, the
//! hop-by-hop and framing ones already left out), and the writers both HTTP/1.1 sides share.
//!
//! Making them into a `HeaderMap` (a name lookup, a value check and a hashed insert per header)
//! cost more than any other step of a proxied request, and the gateway's own HTTP/1.1 server
//! would only write them back out. So an HTTP/1.1 endpoint's headers travel in wire form with the
//! response body ([`crate::gateway::upstream::UpstreamBody`]) and become a map only where one is needed:
//! for hyper's server (HTTP/2 clients) and for the retry policy's look at `Retry-After`.

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};

#[derive(Debug, Clone, Default)]
pub struct WireHeaders {
    /// `name: value` lines, each ended by CRLF, as the response parser checked them.
    lines: Bytes,
    has_date: bool,
}

impl WireHeaders {
    pub fn new(lines: Bytes, has_date: bool) -> Self {
        Self { lines, has_date }
    }

    /// The lines, ready to be written into a response head.
    pub fn as_bytes(&self) -> &[u8] {
        &self.lines
    }

    /// Whether there is a `Date` header among them.
    pub fn has_date(&self) -> bool {
        self.has_date
    }

    /// The headers as (name, value) pairs.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.lines.split(|b| *b == b'\n').filter_map(|line| {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let colon = line.iter().position(|b| *b == b':')?;
            Some((&line[..colon], line[colon + 1..].trim_ascii()))
        })
    }

    /// The value of the first header called `name`.
    pub fn get(&self, name: &str) -> Option<HeaderValue> {
        self.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .and_then(|(_, value)| HeaderValue::from_bytes(value).ok())
    }

    /// Adds the headers to `headers`, their values sharing the lines' buffer.
    pub fn append_to(&self, headers: &mut HeaderMap) {
        for (name, value) in self.iter() {
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name),
                HeaderValue::from_maybe_shared(self.lines.slice_ref(value)),
            ) {
                headers.append(name, value);
            }
        }
    }
}

/// Writes one `name: value` header line.
pub fn write_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A Content-Length value: 1*DIGIT (RFC 9110 8.6) and nothing else; no sign, no inner space,
/// no overflow. (httparse has already cut the whitespace around a value.)
pub fn parse_content_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 19 {
        return None;
    }
    let mut n = 0u64;
    for &b in value {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u64::from(b - b'0');
    }
    Some(n)
}

/// The size a chunk-size line (without its CRLF) gives: `1*HEXDIG [BWS ";" chunk-ext]`, at
/// most 15 digits (no overflow); extensions are ignored but may hold no control byte, no CR or
/// LF above all (a parser that ends lines at LF would read the rest as data).
pub fn chunk_size(line: &[u8]) -> Option<u64> {
    let (size, extension) = match line.iter().position(|b| *b == b';') {
        Some(semi) => (&line[..semi], &line[semi + 1..]),
        None => (line, &b""[..]),
    };
    let digits = &size[..size.len()
        - size
            .iter()
            .rev()
            .take_while(|b| matches!(b, b' ' | b'\t'))
            .count()];
    if digits.is_empty()
        || digits.len() > 15
        || !extension.iter().all(|b| *b == b'\t' || *b >= b' ' && *b != 0x7f)
    {
        return None;
    }
    digits.iter().try_fold(0u64, |size, d| {
        Some(size * 16 + u64::from((*d as char).to_digit(16)?))
    })
}

/// What a strict read of a chunked body at the front of a buffer came to.
#[derive(Debug, PartialEq, Eq)]
pub enum ChunkedRead {
    /// The whole body: its bytes on the wire (chunks, trailers, the final CRLF) and decoded.
    Whole { wire: usize, body: Bytes },
    /// Valid so far; more is needed.
    Partial,
    /// Longer than `max_body`: to be streamed, not held.
    TooLarge,
    /// Not chunked as RFC 9112 7.1 has it.
    Invalid,
}

/// The longest chunk-size or trailer line.
const MAX_CHUNK_LINE: usize = 4096;

/// Reads a chunked body from the front of `buf`, strictly: every line ends in CRLF, sizes are
/// plain hex, data is followed by CRLF, trailer lines are `name: value` fields (they are read
/// and left out). `max_body`: the most decoded bytes to hold.
pub fn read_chunked(buf: &[u8], max_body: usize) -> ChunkedRead {
    // A line's end, once it is there; a bare LF or CR is refused at once.
    let line_at = |at: usize| {
        let rest = &buf[at..];
        match rest.windows(2).position(|w| w == b"\r\n") {
            Some(eol) => Ok(eol),
            None if rest.len() > MAX_CHUNK_LINE
                || rest.contains(&b'\n')
                || rest.iter().rev().skip(1).any(|b| *b == b'\r') =>
            {
                Err(ChunkedRead::Invalid)
            }
            None => Err(ChunkedRead::Partial),
        }
    };
    let mut at = 0;
    let mut body = BytesMut::new();
    loop {
        let eol = match line_at(at) {
            Ok(eol) => eol,
            Err(read) => return read,
        };
        let Some(size) = chunk_size(&buf[at..at + eol]) else {
            return ChunkedRead::Invalid;
        };
        at += eol + 2;
        if size == 0 {
            break;
        }
        if body.len() as u64 + size > max_body as u64 {
            return ChunkedRead::TooLarge;
        }
        // Within max_body: it fits.
        let size = size as usize;
        let Some(end) = buf.get(at + size..at + size + 2) else {
            if buf.get(at + size).is_some_and(|b| *b != b'\r') {
                return ChunkedRead::Invalid;
            }
            return ChunkedRead::Partial;
        };
        if end != b"\r\n" {
            return ChunkedRead::Invalid;
        }
        body.extend_from_slice(&buf[at..at + size]);
        at += size + 2;
    }
    loop {
        let eol = match line_at(at) {
            Ok(eol) => eol,
            Err(read) => return read,
        };
        let line = &buf[at..at + eol];
        at += eol + 2;
        if line.is_empty() {
            return ChunkedRead::Whole {
                wire: at,
                body: body.freeze(),
            };
        }
        if !is_field_line(line) {
            return ChunkedRead::Invalid;
        }
    }
}

/// Whether `line` is `token ":" OWS field-value OWS` with no control byte but HTAB.
fn is_field_line(line: &[u8]) -> bool {
    let Some(colon) = line.iter().position(|b| *b == b':') else {
        return false;
    };
    let tchar = |b: &u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b);
    colon > 0
        && line[..colon].iter().all(tchar)
        && line[colon + 1..]
            .iter()
            .all(|b| *b == b'\t' || (*b >= b' ' && *b != 0x7f))
}

/// `n` in decimal digits, written into `digits`.
pub fn decimal(mut n: u64, digits: &mut [u8; 20]) -> &[u8] {
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &digits[at..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_lines_read_as_headers() {
        let wire = WireHeaders::new(
            Bytes::from_static(b"Server: x\r\nX-Two:2 \r\nx-two: 3\r\n"),
            false,
        );
        assert_eq!(wire.get("x-two").expect("present"), "2");
        assert_eq!(wire.get("SERVER").expect("present"), "x");
        assert!(wire.get("date").is_none());
        let mut headers = HeaderMap::new();
        wire.append_to(&mut headers);
        assert_eq!(headers.len(), 3);
        assert_eq!(headers.get_all("x-two").iter().count(), 2);
        assert!(WireHeaders::default().iter().next().is_none());
    }

    #[test]
    fn chunked_bodies_are_read_strictly() {
        let whole = |wire: &[u8]| match read_chunked(wire, 100) {
            ChunkedRead::Whole { wire: len, body } => (len, body),
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(wire)),
        };
        let (len, body) = whole(b"5;a=b\r\nhello\r\n1\r\n!\r\n0\r\nX-T: 1\r\n\r\nNEXT");
        assert_eq!((len, &body[..]), (33, &b"hello!"[..]));
        assert_eq!(read_chunked(b"5\r\nhel", 100), ChunkedRead::Partial);
        assert_eq!(read_chunked(b"5\r\nhello\r\n0\r\n", 100), ChunkedRead::Partial);
        assert_eq!(read_chunked(b"65\r\n", 100), ChunkedRead::TooLarge);
        for bad in [
            &b"\r\nhello\r\n0\r\n\r\n"[..],
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhello\n0\r\n\r\n",
            b"5\r\nhelloX",
            b"5;\0\r\nhello\r\n0\r\n\r\n",
            b"5\r\nhello\r\n0\n\r\n",
            b"5\r\nhello\r\n0\r\n\n",
            b"5\r\nhello\r\n0\r\nX: a\n\r\n",
            b"5\r\nhello\r\n0\r\nnocolon\r\n\r\n",
            b"5\r\nhello\r\n0\r\nX : a\r\n\r\n",
            b"FFFFFFFFFFFFFFFF1\r\n",
        ] {
            assert_eq!(
                read_chunked(bad, 100),
                ChunkedRead::Invalid,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn numbers_and_header_lines_are_written_as_http_wants_them() {
        assert_eq!(decimal(0, &mut [0; 20]), b"0");
        assert_eq!(decimal(1234567, &mut [0; 20]), b"1234567");
        assert_eq!(decimal(u64::MAX, &mut [0; 20]), u64::MAX.to_string().as_bytes());
        assert_eq!(parse_content_length(b"0"), Some(0));
        assert_eq!(parse_content_length(b"18446744073709551615"), None, "20 digits");
        assert_eq!(
            parse_content_length(b"9999999999999999999"),
            Some(9_999_999_999_999_999_999)
        );
        for bad in [
            &b""[..],
            b"+5",
            b"-5",
            b"0x5",
            b"5 5",
            b"5,5",
            b"5.0",
            b" 5",
            b"\x0b5",
        ] {
            assert_eq!(parse_content_length(bad), None, "{bad:?}");
        }
        let mut out = Vec::new();
        write_header(&mut out, b"x-a", b"1");
        assert_eq!(out, b"x-a: 1\r\n");
    }
}
