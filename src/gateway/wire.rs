//! HTTP/1.1 in wire form: an endpoint's response headers kept as they came (header lines, the
//! hop-by-hop and framing ones already left out), and the writers both HTTP/1.1 sides share.
//!
//! Making them into a `HeaderMap` (a name lookup, a value check and a hashed insert per header)
//! cost more than any other step of a proxied request, and the gateway's own HTTP/1.1 server
//! would only write them back out. So an HTTP/1.1 endpoint's headers travel in wire form with the
//! response body ([`super::upstream::UpstreamBody`]) and become a map only where one is needed:
//! for hyper's server (HTTP/2 clients) and for the retry policy's look at `Retry-After`.

use bytes::Bytes;
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
    fn numbers_and_header_lines_are_written_as_http_wants_them() {
        assert_eq!(decimal(0, &mut [0; 20]), b"0");
        assert_eq!(decimal(1234567, &mut [0; 20]), b"1234567");
        assert_eq!(decimal(u64::MAX, &mut [0; 20]), u64::MAX.to_string().as_bytes());
        let mut out = Vec::new();
        write_header(&mut out, b"x-a", b"1");
        assert_eq!(out, b"x-a: 1\r\n");
    }
}
