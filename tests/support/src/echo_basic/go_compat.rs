//! The small pieces of Go's standard library whose exact output echo-basic's answers carry: JSON
//! string escaping and indentation (`encoding/json`), header-name canonicalization
//! (`net/textproto`), status texts, `time.ParseDuration`, `url.ParseQuery` and `path.Clean`.
//! Each mirrors the Go function it names, down to the bytes it writes.

use std::time::Duration;

/// `json.Marshal`'s encoding of a Go string: HTML-safe escapes (`<`, `>`, `&`), `\u2028` and
/// `\u2029` escaped, each invalid UTF-8 byte replaced by `\ufffd`.
pub fn json_string(out: &mut String, value: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    for chunk in value.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '<' | '>' | '&' | '\u{0}'..='\u{1f}' => {
                    let b = c as u8;
                    out.push_str("\\u00");
                    out.push(char::from(HEX[usize::from(b >> 4)]));
                    out.push(char::from(HEX[usize::from(b & 0xf)]));
                }
                '\u{2028}' => out.push_str("\\u2028"),
                '\u{2029}' => out.push_str("\\u2029"),
                c => out.push(c),
            }
        }
        // Go decodes byte by byte: every byte of an invalid sequence is one replacement rune.
        for _ in chunk.invalid() {
            out.push_str("\\ufffd");
        }
    }
    out.push('"');
}

/// `textproto.CanonicalMIMEHeaderKey`: `content-type` → `Content-Type`; a name holding a byte
/// that is not a token character is returned unchanged.
pub fn canonical_header_key(name: &[u8]) -> Vec<u8> {
    if !name.iter().all(|&b| is_token_byte(b)) {
        return name.to_vec();
    }
    let mut upper = true;
    name.iter()
        .map(|&b| {
            let c = if upper {
                b.to_ascii_uppercase()
            } else {
                b.to_ascii_lowercase()
            };
            upper = b == b'-';
            c
        })
        .collect()
}

/// `httpguts.ValidHeaderFieldName`: a non-empty token.
pub fn valid_header_name(name: &[u8]) -> bool {
    !name.is_empty() && name.iter().all(|&b| is_token_byte(b))
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// `http.StatusText`.
pub fn status_text(code: u16) -> &'static str {
    match code {
        100 => "Continue",
        101 => "Switching Protocols",
        102 => "Processing",
        103 => "Early Hints",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        205 => "Reset Content",
        206 => "Partial Content",
        207 => "Multi-Status",
        208 => "Already Reported",
        226 => "IM Used",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        305 => "Use Proxy",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Request Entity Too Large",
        414 => "Request URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Requested Range Not Satisfiable",
        417 => "Expectation Failed",
        418 => "I'm a teapot",
        421 => "Misdirected Request",
        422 => "Unprocessable Entity",
        423 => "Locked",
        424 => "Failed Dependency",
        425 => "Too Early",
        426 => "Upgrade Required",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        451 => "Unavailable For Legal Reasons",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        506 => "Variant Also Negotiates",
        507 => "Insufficient Storage",
        508 => "Loop Detected",
        510 => "Not Extended",
        511 => "Network Authentication Required",
        _ => "",
    }
}

/// `bodyAllowedForStatus`: 1xx, 204 and 304 answers carry no body.
pub fn body_allowed(code: u16) -> bool {
    !((100..200).contains(&code) || code == 204 || code == 304)
}

/// `time.ParseDuration`, with Go's error messages. A negative duration sleeps for nothing.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let quoted = go_quote(text);
    let invalid = || format!("time: invalid duration {quoted}");
    let mut s = text;
    let mut negative = false;
    if let Some(rest) = s.strip_prefix('-') {
        negative = true;
        s = rest;
    } else if let Some(rest) = s.strip_prefix('+') {
        s = rest;
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(invalid());
    }
    let mut total_nanos: f64 = 0.0;
    while !s.is_empty() {
        let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (whole, rest) = s.split_at(digits);
        let (fraction, rest) = match rest.strip_prefix('.') {
            Some(after) => {
                let n = after.find(|c: char| !c.is_ascii_digit()).unwrap_or(after.len());
                after.split_at(n)
            }
            None => ("", rest),
        };
        if whole.is_empty() && fraction.is_empty() {
            return Err(invalid());
        }
        let unit_len = rest
            .find(|c: char| c == '.' || c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (unit, rest) = rest.split_at(unit_len);
        if unit.is_empty() {
            return Err(format!("time: missing unit in duration {quoted}"));
        }
        let per_unit: f64 = match unit {
            "ns" => 1.0,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => {
                return Err(format!(
                    "time: unknown unit {} in duration {quoted}",
                    go_quote(unit)
                ));
            }
        };
        let number: f64 = format!(
            "{}.{}",
            if whole.is_empty() { "0" } else { whole },
            if fraction.is_empty() { "0" } else { fraction }
        )
        .parse()
        .map_err(|_| invalid())?;
        total_nanos += number * per_unit;
        s = rest;
    }
    if negative || total_nanos <= 0.0 {
        return Ok(Duration::ZERO);
    }
    Ok(Duration::from_nanos(total_nanos.min(u64::MAX as f64) as u64))
}

/// The `quote` of Go's time package: the string in double quotes, `"` and `\` escaped,
/// control bytes as `\xNN`.
fn go_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c == '\u{7f}' => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The first value of `key` in a raw query, as `url.Values.Get` after `url.ParseQuery` finds it:
/// pairs with a `;` or a bad escape are skipped, `+` is a space.
pub fn query_get(raw_query: &str, key: &str) -> Option<String> {
    for pair in raw_query.split('&') {
        if pair.is_empty() || pair.contains(';') {
            continue;
        }
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (Some(k), Some(v)) = (query_unescape(k), query_unescape(v)) else {
            continue;
        };
        if k == key {
            return Some(v);
        }
    }
    None
}

fn query_unescape(s: &str) -> Option<String> {
    percent_decode(s.as_bytes(), true).and_then(|b| String::from_utf8(b).ok())
}

/// Percent-decoding as `url.PathUnescape` (`plus_is_space` false) or `url.QueryUnescape`.
pub fn percent_decode(s: &[u8], plus_is_space: bool) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Some(out)
}

/// `url.URL.EscapedPath` of a decoded path (`url.escape` in `encodePath` mode).
pub fn escape_path(path: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(path.len());
    for &b in path {
        let keep = b.is_ascii_alphanumeric() || b"-_.~$&+,/:;=@".contains(&b);
        if keep {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
    out
}

/// `cleanPath` of net/http's ServeMux: `path.Clean`, keeping a trailing slash.
pub fn clean_path(p: &str) -> String {
    if p.is_empty() {
        return "/".to_owned();
    }
    let p = if p.starts_with('/') {
        p.to_owned()
    } else {
        format!("/{p}")
    };
    let mut parts: Vec<&str> = Vec::new();
    for segment in p.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    let mut clean = format!("/{}", parts.join("/"));
    if p.ends_with('/') && clean != "/" {
        clean.push('/');
    }
    clean
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_escape_as_go_does() {
        let mut out = String::new();
        json_string(&mut out, b"a<b>&\"\\\n\x01\xe2\x82 \xe2\x80\xa8");
        assert_eq!(out, r#""a\u003cb\u003e\u0026\"\\\n\u0001\ufffd\ufffd \u2028""#);
    }

    #[test]
    fn header_keys_are_canonical_unless_invalid() {
        assert_eq!(canonical_header_key(b"x-echo-SET-header"), b"X-Echo-Set-Header");
        assert_eq!(canonical_header_key(b"x_foo"), b"X_foo");
        assert_eq!(canonical_header_key(b"bad key"), b"bad key");
    }

    #[test]
    fn durations_parse_and_fail_like_go() {
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(
            parse_duration("x"),
            Err("time: invalid duration \"x\"".to_owned())
        );
        assert_eq!(
            parse_duration("10"),
            Err("time: missing unit in duration \"10\"".to_owned())
        );
        assert_eq!(
            parse_duration("3d"),
            Err("time: unknown unit \"d\" in duration \"3d\"".to_owned())
        );
    }

    #[test]
    fn query_values_and_paths() {
        assert_eq!(query_get("a=1&delay=1s&delay=2s", "delay").as_deref(), Some("1s"));
        assert_eq!(query_get("x=a+b%21", "x").as_deref(), Some("a b!"));
        assert_eq!(query_get("x=%zz&x=2", "x").as_deref(), Some("2"));
        assert_eq!(clean_path("/a/./b/../c/"), "/a/c/");
        assert_eq!(clean_path("/"), "/");
        assert_eq!(escape_path(b"/a b/\xc3\xa9"), "/a%20b/%C3%A9");
    }
}
