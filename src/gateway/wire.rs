//! An endpoint's response headers kept as they came on the wire: HTTP/1.1 header lines, with the
//! hop-by-hop and framing headers already left out.
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
}
