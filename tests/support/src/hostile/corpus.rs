//! The hostile-input corpus: raw request bytes, each with what a strict proxy must do with them.
//! The cases live as data in `tests/hostile/requests.corpus` (read by the e2e test and by the
//! `hostile-report` tool alike); this reads that format.
//!
//! ```text
//! case cl-te-basic                 # a unique id
//! class CL.TE                      # the smuggling class, for the tables
//! expect refuse                    # refuse | forward | either (see Expect)
//! requests 2                       # requests a proxy forwards if it forwards (default 1)
//! prefix 1                         # leading requests that are fine even when the case is refused
//! drop x-secret                    # headers that must not reach the backend (comma-separated)
//! canary no                        # do not send the canary request after the case
//! incomplete                       # the body is meant to be still arriving when the case ends
//! close                            # a proxy that forwards it must close the connection after
//! body hello                       # the body the backend must read, if forwarded (escaped)
//! send POST / HTTP/1.1\r\nHost: h\r\n\r\n
//! ```
//! `send` lines are joined. Escapes: `\r \n \t \0 \\ \xHH`; `{{text*N}}` is `text` N times.

use std::fmt;

/// The corpus file, compiled in so that any tool of the harness runs the same cases.
pub const CORPUS: &str = include_str!("../../../hostile/requests.corpus");

/// What a strict proxy does with a case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// The bytes are not a message a strict server takes: forwarding them in any form is a guess.
    Refuse,
    /// Well-formed: forwarded, cleanly framed.
    Forward,
    /// RFC 9112 lets a recipient refuse or normalize (a bare LF as line end, a 100-continue):
    /// either is fine, as long as what is forwarded is clean.
    Either,
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Expect::Refuse => "refuse",
            Expect::Forward => "forward",
            Expect::Either => "either",
        })
    }
}

#[derive(Clone, Debug)]
pub struct Case {
    pub id: String,
    pub class: String,
    pub expect: Expect,
    /// Requests the case holds, as a proxy that forwards it should forward them.
    pub requests: usize,
    /// Requests at the front that a strict proxy forwards even when it refuses what follows.
    pub prefix: usize,
    /// Header names (lowercase) that must never reach the backend.
    pub drop: Vec<String>,
    /// Whether the canary request follows the case on the same connection.
    pub canary: bool,
    /// Whether the case's last body is meant to be still arriving when the case ends.
    pub incomplete: bool,
    /// Whether a proxy that forwards the case must close the connection after answering it.
    pub close: bool,
    /// The body the backend must read for the first request after the prefix, if forwarded.
    pub body: Option<Vec<u8>>,
    pub bytes: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
#[error("requests.corpus line {line}: {message}")]
pub struct CorpusError {
    pub line: usize,
    pub message: String,
}

/// Every case of the corpus.
pub fn cases() -> Result<Vec<Case>, CorpusError> {
    parse(CORPUS)
}

pub fn parse(text: &str) -> Result<Vec<Case>, CorpusError> {
    let mut cases: Vec<Case> = Vec::new();
    for (number, raw) in text.lines().enumerate() {
        let line = number + 1;
        let fail = |message: String| CorpusError { line, message };
        let trimmed = raw.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let (key, value) = trimmed.split_once(' ').unwrap_or((trimmed, ""));
        if key == "case" {
            let id = value.trim().to_owned();
            if id.is_empty() || cases.iter().any(|c| c.id == id) {
                return Err(fail(format!("case id {id:?} is empty or repeated")));
            }
            cases.push(Case {
                id,
                class: String::new(),
                expect: Expect::Forward,
                requests: 1,
                prefix: 0,
                drop: Vec::new(),
                canary: true,
                incomplete: false,
                close: false,
                body: None,
                bytes: Vec::new(),
            });
            continue;
        }
        let Some(case) = cases.last_mut() else {
            return Err(fail(format!("{key} before the first case")));
        };
        match key {
            "class" => case.class = value.trim().to_owned(),
            "expect" => {
                case.expect = match value.trim() {
                    "refuse" => Expect::Refuse,
                    "forward" => Expect::Forward,
                    "either" => Expect::Either,
                    other => return Err(fail(format!("unknown expectation {other:?}"))),
                }
            }
            "requests" | "prefix" => {
                let n = value
                    .trim()
                    .parse()
                    .map_err(|_| fail(format!("{key} needs a number")))?;
                if key == "requests" {
                    case.requests = n;
                } else {
                    case.prefix = n;
                }
            }
            "drop" => case.drop.extend(
                value
                    .split(',')
                    .map(|name| name.trim().to_ascii_lowercase())
                    .filter(|name| !name.is_empty()),
            ),
            "canary" => case.canary = value.trim() != "no",
            "incomplete" => case.incomplete = true,
            "close" => case.close = true,
            "body" => case.body = Some(unescape(value).map_err(fail)?),
            // A value starts after exactly one space: leading spaces of the bytes are kept.
            "send" => case.bytes.extend(unescape(value).map_err(fail)?),
            other => return Err(fail(format!("unknown key {other:?}"))),
        }
    }
    for case in &cases {
        if case.class.is_empty() || case.bytes.is_empty() {
            return Err(CorpusError {
                line: 0,
                message: format!("case {} needs a class and bytes", case.id),
            });
        }
    }
    Ok(cases)
}

/// The bytes a `send` value stands for.
pub fn unescape(text: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find("{{") {
        out.extend(unescape_plain(&rest[..open])?);
        let after = &rest[open + 2..];
        let close = after.find("}}").ok_or("{{ without }}")?;
        let (body, times) = after[..close]
            .rsplit_once('*')
            .ok_or("{{text*N}} needs a count")?;
        let times: usize = times.parse().map_err(|_| format!("bad count {times:?}"))?;
        let piece = unescape_plain(body)?;
        for _ in 0..times {
            out.extend_from_slice(&piece);
        }
        rest = &after[close + 2..];
    }
    out.extend(unescape_plain(rest)?);
    Ok(out)
}

fn unescape_plain(text: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'\\' {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        let escape = bytes.get(i + 1).ok_or("a trailing backslash")?;
        i += 2;
        match escape {
            b'r' => out.push(b'\r'),
            b'n' => out.push(b'\n'),
            b't' => out.push(b'\t'),
            b'0' => out.push(0),
            b'\\' => out.push(b'\\'),
            b'x' => {
                let hex = text.get(i..i + 2).ok_or("\\x needs two hex digits")?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| format!("bad \\x{hex}"))?);
                i += 2;
            }
            other => return Err(format!("unknown escape \\{}", *other as char)),
        }
    }
    Ok(out)
}

/// `bytes` written back in the corpus' escapes (for reports).
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::new();
    for &b in bytes {
        match b {
            b'\r' => out.push_str("\\r"),
            b'\n' => out.push_str("\\n"),
            b'\t' => out.push_str("\\t"),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_corpus_reads_and_escapes_round_trip() {
        let cases = cases().expect("the corpus reads");
        assert!(cases.len() >= 150, "{} cases", cases.len());
        assert_eq!(
            unescape("a\\r\\n\\x00{{ab*3}}\\\\").expect("valid"),
            b"a\r\n\0ababab\\"
        );
        for case in &cases {
            assert_eq!(
                unescape(&escape(&case.bytes)).expect("valid"),
                case.bytes,
                "{}",
                case.id
            );
        }
    }
}
