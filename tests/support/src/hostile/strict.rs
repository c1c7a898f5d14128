//! A strict HTTP/1.1 request reader (RFC 9112 with none of its "MAY accept" leniencies): what
//! the recording backend makes of the bytes a proxy forwarded. Anything it would have to guess
//! about is an error that names the guess: a bare CR or LF, obs-fold, a control byte in a value,
//! whitespace before a colon, a missing or repeated Host, Content-Length and Transfer-Encoding
//! together, a signed or padded or repeated length, a transfer coding other than `chunked`, a
//! chunk line that is not exactly `HEXDIG[;ext] CRLF`.

/// The longest head it reads, as microgate and the peers allow.
pub const MAX_HEAD: usize = 64 * 1024;

/// One request, read whole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StrictRequest {
    pub method: String,
    pub target: String,
    pub version: String,
    /// Names lowercased, values as sent (without the surrounding whitespace).
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
    pub chunked: bool,
    /// Trailer fields of a chunked body.
    pub trailers: Vec<(String, Vec<u8>)>,
}

impl StrictRequest {
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }
}

/// What reading one request off the front of a buffer came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Read {
    /// A whole request, and how many bytes it took.
    Request(StrictRequest, usize),
    /// Valid so far, not complete.
    Incomplete,
    /// Not a request a strict server may take: what it would have had to guess.
    Invalid(String),
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_field_vchar(b: u8) -> bool {
    (0x21..=0x7e).contains(&b) || b >= 0x80
}

/// The next line of `buf` from `at` (without its CRLF), and where the one after starts.
fn line(buf: &[u8], at: usize) -> Result<Option<(&[u8], usize)>, String> {
    let rest = &buf[at..];
    let Some(lf) = rest.iter().position(|b| *b == b'\n') else {
        if let Some(cr) = rest.iter().position(|b| *b == b'\r')
            && cr + 1 < rest.len()
        {
            return Err("bare CR".into());
        }
        if rest.len() > MAX_HEAD {
            return Err("line too long".into());
        }
        return Ok(None);
    };
    if lf == 0 || rest[lf - 1] != b'\r' {
        return Err("bare LF".into());
    }
    let content = &rest[..lf - 1];
    if content.contains(&b'\r') {
        return Err("bare CR".into());
    }
    Ok(Some((content, at + lf + 1)))
}

/// A field line `name: value`, strictly.
fn field(line: &[u8]) -> Result<(String, Vec<u8>), String> {
    if line.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
        return Err("obs-fold or whitespace before a field".into());
    }
    let colon = line
        .iter()
        .position(|b| *b == b':')
        .ok_or("field line without a colon")?;
    let name = &line[..colon];
    if name.is_empty() {
        return Err("empty field name".into());
    }
    if name.last().is_some_and(|b| *b == b' ' || *b == b'\t') {
        return Err("whitespace before the colon".into());
    }
    if !name.iter().all(|b| is_tchar(*b)) {
        return Err(format!("invalid field name {:?}", String::from_utf8_lossy(name)));
    }
    let value = line[colon + 1..].trim_ascii();
    if let Some(bad) = value
        .iter()
        .find(|b| !(is_field_vchar(**b) || **b == b' ' || **b == b'\t'))
    {
        return Err(format!("control byte 0x{bad:02x} in a field value"));
    }
    Ok((String::from_utf8_lossy(name).to_ascii_lowercase(), value.to_vec()))
}

fn is_digits(value: &[u8]) -> bool {
    !value.is_empty() && value.iter().all(u8::is_ascii_digit)
}

/// Reads one request off the front of `buf`.
pub fn read_request(buf: &[u8]) -> Read {
    match read(buf) {
        Ok(Some((request, len))) => Read::Request(request, len),
        Ok(None) => Read::Incomplete,
        Err(reason) => Read::Invalid(reason),
    }
}

fn read(buf: &[u8]) -> Result<Option<(StrictRequest, usize)>, String> {
    let Some((start, mut at)) = line(buf, 0)? else {
        return Ok(None);
    };
    let mut parts = start.split(|b| *b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("request line is not three parts split by single spaces".into());
    };
    if method.is_empty() || !method.iter().all(|b| is_tchar(*b)) {
        return Err("invalid method".into());
    }
    if target.is_empty() || !target.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err("invalid request target".into());
    }
    let version = match version {
        b"HTTP/1.1" => "HTTP/1.1",
        b"HTTP/1.0" => "HTTP/1.0",
        _ => return Err("unknown HTTP version".into()),
    };
    let method = String::from_utf8_lossy(method).into_owned();
    let target = String::from_utf8_lossy(target).into_owned();
    if method == "CONNECT" {
        return Err("CONNECT reached an origin server".into());
    }
    let origin_form = target.starts_with('/');
    let absolute_form = target.starts_with("http://") || target.starts_with("https://");
    if !(origin_form || absolute_form || (target == "*" && method == "OPTIONS")) {
        return Err("request target in no form an origin server takes".into());
    }
    let mut headers = Vec::new();
    loop {
        let Some((content, next)) = line(buf, at)? else {
            if buf.len() > MAX_HEAD {
                return Err("head too large".into());
            }
            return Ok(None);
        };
        at = next;
        if content.is_empty() {
            break;
        }
        headers.push(field(content)?);
        if at > MAX_HEAD {
            return Err("head too large".into());
        }
    }
    let values = |name: &str| -> Vec<&[u8]> {
        headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
            .collect()
    };
    let hosts = values("host");
    match (version, hosts.len()) {
        ("HTTP/1.1", 0) => return Err("no Host".into()),
        (_, 0 | 1) => {}
        _ => return Err("more than one Host".into()),
    }
    if let Some(host) = hosts.first() {
        if host.is_empty() && version == "HTTP/1.1" && !absolute_form {
            return Err("empty Host".into());
        }
        if !valid_host(host) {
            return Err(format!("invalid Host {:?}", String::from_utf8_lossy(host)));
        }
        if absolute_form {
            let authority = target
                .split_once("://")
                .map(|(_, rest)| rest.split(['/', '?']).next().unwrap_or_default())
                .unwrap_or_default();
            if !authority.as_bytes().eq_ignore_ascii_case(host) {
                return Err("absolute-form target and Host disagree".into());
            }
        }
    }
    let lengths = values("content-length");
    let codings = values("transfer-encoding");
    let chunked = match (codings.as_slice(), lengths.as_slice()) {
        ([], _) => false,
        (_, [_, ..]) => return Err("Content-Length and Transfer-Encoding together".into()),
        (_, []) if version == "HTTP/1.0" => return Err("Transfer-Encoding in HTTP/1.0".into()),
        ([coding], []) if coding.eq_ignore_ascii_case(b"chunked") => true,
        ([_], []) => return Err("a transfer coding other than chunked".into()),
        (_, []) => return Err("more than one Transfer-Encoding".into()),
    };
    let length = match lengths.as_slice() {
        [] => 0,
        [value] if is_digits(value) && value.len() <= 18 => std::str::from_utf8(value)
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .ok_or("Content-Length out of range")?,
        [_] => return Err("Content-Length not plain digits".into()),
        _ => return Err("more than one Content-Length".into()),
    };
    let mut request = StrictRequest {
        method,
        target,
        version: version.to_owned(),
        headers,
        body: Vec::new(),
        chunked,
        trailers: Vec::new(),
    };
    if !chunked {
        if buf.len() - at < length {
            return Ok(None);
        }
        request.body = buf[at..at + length].to_vec();
        return Ok(Some((request, at + length)));
    }
    loop {
        let Some((size_line, next)) = line(buf, at)? else {
            return Ok(None);
        };
        let (digits, extension) = match size_line.iter().position(|b| *b == b';') {
            Some(semi) => (&size_line[..semi], Some(&size_line[semi + 1..])),
            None => (size_line, None),
        };
        if digits.is_empty() || digits.len() > 16 || !digits.iter().all(u8::is_ascii_hexdigit) {
            return Err(format!("chunk size {:?}", String::from_utf8_lossy(size_line)));
        }
        if let Some(extension) = extension
            && !valid_extension(extension)
        {
            return Err(format!(
                "chunk extension {:?}",
                String::from_utf8_lossy(extension)
            ));
        }
        let size = std::str::from_utf8(digits)
            .ok()
            .and_then(|d| usize::from_str_radix(d, 16).ok())
            .ok_or("chunk size out of range")?;
        at = next;
        if size == 0 {
            break;
        }
        if buf.len() < at + size + 2 {
            if buf.len() > at + size && buf[at + size] != b'\r' {
                return Err("chunk data not followed by CRLF".into());
            }
            return Ok(None);
        }
        if &buf[at + size..at + size + 2] != b"\r\n" {
            return Err("chunk data not followed by CRLF".into());
        }
        request.body.extend_from_slice(&buf[at..at + size]);
        at += size + 2;
    }
    loop {
        let Some((content, next)) = line(buf, at)? else {
            return Ok(None);
        };
        at = next;
        if content.is_empty() {
            return Ok(Some((request, at)));
        }
        request.trailers.push(field(content)?);
    }
}

/// `uri-host [":" port]`: a reg-name (unreserved, pct-encoded, sub-delims) or an IP literal.
fn valid_host(host: &[u8]) -> bool {
    let (name, port) = match host.iter().rposition(|b| *b == b':') {
        Some(colon) if !host.starts_with(b"[") || host[..colon].ends_with(b"]") => {
            (&host[..colon], &host[colon + 1..])
        }
        _ => (host, &b""[..]),
    };
    port.iter().all(u8::is_ascii_digit)
        && if name.starts_with(b"[") {
            name.ends_with(b"]")
                && name[1..name.len() - 1]
                    .iter()
                    .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'))
        } else {
            name.iter()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=".contains(b))
        }
}

/// `chunk-ext` after its first `;`: `name[=token|quoted-string]` pieces split by `;`, no
/// whitespace.
fn valid_extension(extension: &[u8]) -> bool {
    extension.split(|b| *b == b';').all(|piece| {
        let (name, value) = match piece.iter().position(|b| *b == b'=') {
            Some(eq) => (&piece[..eq], Some(&piece[eq + 1..])),
            None => (piece, None),
        };
        let token = |t: &[u8]| !t.is_empty() && t.iter().all(|b| is_tchar(*b));
        token(name)
            && value.is_none_or(|v| {
                token(v)
                    || (v.len() >= 2
                        && v[0] == b'"'
                        && v[v.len() - 1] == b'"'
                        && v[1..v.len() - 1]
                            .iter()
                            .all(|b| *b == b'\t' || *b == b' ' || (0x21..=0x7e).contains(b) && *b != b'"'))
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid(bytes: &[u8]) -> String {
        match read_request(bytes) {
            Read::Invalid(reason) => reason,
            other => panic!("{:?} was read as {other:?}", String::from_utf8_lossy(bytes)),
        }
    }

    #[test]
    fn well_formed_requests_are_read_whole() {
        let Read::Request(request, len) =
            read_request(b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabcGET")
        else {
            panic!("a request")
        };
        assert_eq!(
            (request.target.as_str(), &request.body[..], len),
            ("/a", &b"abc"[..], 51)
        );
        let wire = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3;a=b\r\nabc\r\n0\r\nX-T: 1\r\n\r\n";
        let Read::Request(request, len) = read_request(wire) else {
            panic!("a chunked request")
        };
        assert_eq!(
            (&request.body[..], len, request.trailers.len()),
            (&b"abc"[..], wire.len(), 1)
        );
        assert_eq!(read_request(b"GET / HTTP/1.1\r\nHost: h\r\n"), Read::Incomplete);
        assert_eq!(
            read_request(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nab"),
            Read::Incomplete
        );
    }

    #[test]
    fn every_guess_is_refused() {
        for bytes in [
            &b"GET / HTTP/1.1\nHost: h\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: h\rX: y\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nX: a\0b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost : h\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h evil\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: u@h\r\n\r\n",
            b"GET http://a/ HTTP/1.1\r\nHost: b\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +1\r\n\r\na",
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\na",
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n 1\r\na\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n0\r\n\r\n",
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"GET / HTTP/1.2\r\nHost: h\r\n\r\n",
        ] {
            invalid(bytes);
        }
    }
}
