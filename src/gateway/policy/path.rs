//! One path, one meaning: the request path normalized before anything looks at it (routing,
//! policies, metrics, the access log), and the normalized path is what the service receives, so
//! the gateway and the service agree on which resource a request names.
//!
//! Normalization follows RFC 3986 §6.2.2: percent-escapes of unreserved characters are decoded
//! (`%61` → `a`), the remaining escapes get uppercase hex (`%2f` → `%2F`), dot segments are
//! removed (§5.2.4) and, unless the listener says otherwise, repeated slashes are merged. Forms
//! on which services disagree are refused (400, reason in `x-microgate-reason`) or, where the
//! listener says so, redirected to the normalized path: an encoded slash or backslash, a
//! backslash, an encoded dot segment, a `;` path parameter, a path that climbs above the root,
//! an escape of a control byte, escapes that are not UTF-8 (overlong forms among them). The
//! query is passed on unchanged. Matching stays case-sensitive, as the Gateway API says.
//!
//! A path with none of `%`, `\`, `;`, `//`, or a `.` segment is already normal: it is found so in
//! one pass over its bytes, without allocating.

use std::borrow::Cow;

/// What to do with a form that services read in different ways.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Ambiguous {
    /// Answer 400.
    #[default]
    Reject,
    /// Pass it on as it is (an encoded slash stays `%2F`, not a separator; a path parameter
    /// stays part of its segment).
    Keep,
}

/// How one listener normalizes paths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathPolicy {
    /// `%2F`, `%5C` and a raw `\`.
    pub escaped_slashes: Ambiguous,
    /// `%2E` in a `.` or `..` segment.
    pub encoded_dots: Ambiguous,
    /// A `;` in the path (`/admin;x=1` is `/admin` to some servers).
    pub path_parameters: Ambiguous,
    /// Merge `//` into `/`.
    pub merge_slashes: bool,
    /// A path that normalization changed is answered with a redirect to the normalized one
    /// (308) instead of being forwarded normalized.
    pub redirect_changed: bool,
}

impl Default for PathPolicy {
    fn default() -> Self {
        Self {
            escaped_slashes: Ambiguous::Reject,
            encoded_dots: Ambiguous::Reject,
            path_parameters: Ambiguous::Reject,
            merge_slashes: true,
            redirect_changed: false,
        }
    }
}

/// Why a path was refused: the code in `x-microgate-reason`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    EscapedSlash,
    EncodedDotSegment,
    PathParameter,
    AboveRoot,
    ControlByte,
    InvalidUtf8,
    BadEscape,
    NotOriginForm,
}

impl Refusal {
    pub fn code(self) -> &'static str {
        match self {
            Self::EscapedSlash => "path-escaped-slash",
            Self::EncodedDotSegment => "path-encoded-dot-segment",
            Self::PathParameter => "path-parameter",
            Self::AboveRoot => "path-above-root",
            Self::ControlByte => "path-control-byte",
            Self::InvalidUtf8 => "path-invalid-utf8",
            Self::BadEscape => "path-bad-escape",
            Self::NotOriginForm => "path-not-absolute",
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Self::EscapedSlash => "the path holds an encoded slash or a backslash",
            Self::EncodedDotSegment => "the path holds an encoded dot segment",
            Self::PathParameter => "the path holds a ';' path parameter",
            Self::AboveRoot => "the path climbs above the root",
            Self::ControlByte => "the path holds an escaped control byte",
            Self::InvalidUtf8 => "the path's escapes are not UTF-8 (or are an overlong form)",
            Self::BadEscape => "the path holds a '%' not followed by two hex digits",
            Self::NotOriginForm => "the path does not start with '/'",
        }
    }
}

/// Normalizes `path` (without its query) under `policy`: the path itself when it is already
/// normal, a new one when not, or why it is refused.
pub fn normalize<'p>(path: &'p str, policy: &PathPolicy) -> Result<Cow<'p, str>, Refusal> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        // `*` (OPTIONS) and an empty path are left to the router, which matches neither.
        return if path.is_empty() || path == "*" {
            Ok(Cow::Borrowed(path))
        } else {
            Err(Refusal::NotOriginForm)
        };
    }
    if is_normal(bytes) {
        return Ok(Cow::Borrowed(path));
    }
    let segments = decode_segments(path, policy)?;
    let mut out: Vec<&str> = Vec::with_capacity(segments.len());
    let last = segments.len().saturating_sub(1);
    // Whether the result ends with a slash: a trailing empty segment, or a trailing dot segment.
    let mut trailing_slash = false;
    for (i, segment) in segments.iter().enumerate() {
        let is_last = i == last;
        let dot_segment = matches!(segment.text.as_str(), "." | "..");
        if dot_segment && segment.encoded_dot && policy.encoded_dots == Ambiguous::Reject {
            return Err(Refusal::EncodedDotSegment);
        }
        match segment.text.as_str() {
            "." => trailing_slash = is_last,
            ".." => {
                if out.pop().is_none() {
                    return Err(Refusal::AboveRoot);
                }
                trailing_slash = is_last;
            }
            "" if is_last => trailing_slash = true,
            "" if policy.merge_slashes => {}
            text => {
                out.push(text);
                trailing_slash = false;
            }
        }
    }
    let mut normalized = String::with_capacity(path.len());
    for segment in &out {
        normalized.push('/');
        normalized.push_str(segment);
    }
    if trailing_slash || normalized.is_empty() {
        normalized.push('/');
    }
    Ok(if normalized == path {
        Cow::Borrowed(path)
    } else {
        Cow::Owned(normalized)
    })
}

/// Whether `path` (starting with `/`) is already normal: no escape, backslash, path parameter,
/// empty segment or dot segment.
fn is_normal(path: &[u8]) -> bool {
    let mut previous = b'/';
    let mut segment_dots = 0usize; // dots since the last slash, while the segment is only dots
    let mut segment_len = 0usize;
    for &b in &path[1..] {
        match b {
            b'%' | b'\\' | b';' => return false,
            b'/' => {
                if previous == b'/' || (segment_len > 0 && segment_dots == segment_len && segment_len <= 2) {
                    return false;
                }
                segment_dots = 0;
                segment_len = 0;
            }
            b'.' => {
                segment_dots += 1;
                segment_len += 1;
            }
            _ => segment_len += 1,
        }
        previous = b;
    }
    // A last segment of `.` or `..`.
    !(segment_len > 0 && segment_dots == segment_len && segment_len <= 2)
}

/// One path segment, escapes normalized.
struct Segment {
    text: String,
    /// The segment held `%2E`.
    encoded_dot: bool,
}

/// Splits `path` (after its leading `/`) into segments, decoding unreserved escapes and
/// uppercasing the others, and refusing what `policy` refuses.
fn decode_segments(path: &str, policy: &PathPolicy) -> Result<Vec<Segment>, Refusal> {
    let bytes = path.as_bytes();
    let mut segments = Vec::new();
    let mut current = Segment {
        text: String::new(),
        encoded_dot: false,
    };
    let mut i = 1;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'/' => {
                segments.push(std::mem::replace(
                    &mut current,
                    Segment {
                        text: String::new(),
                        encoded_dot: false,
                    },
                ));
                i += 1;
                continue;
            }
            b'\\' => {
                if policy.escaped_slashes == Ambiguous::Reject {
                    return Err(Refusal::EscapedSlash);
                }
                // Kept, escaped: a raw backslash is not a valid path character to pass on.
                current.text.push_str("%5C");
            }
            b';' => {
                if policy.path_parameters == Ambiguous::Reject {
                    return Err(Refusal::PathParameter);
                }
                current.text.push(';');
            }
            b'%' => {
                let value = bytes
                    .get(i + 1..i + 3)
                    .and_then(|hex| Some(hex_value(hex[0])? << 4 | hex_value(hex[1])?))
                    .ok_or(Refusal::BadEscape)?;
                match value {
                    0x00..=0x1f | 0x7f => return Err(Refusal::ControlByte),
                    b'/' | b'\\' => {
                        if policy.escaped_slashes == Ambiguous::Reject {
                            return Err(Refusal::EscapedSlash);
                        }
                        push_escape(&mut current.text, value);
                    }
                    b'.' => {
                        current.text.push('.');
                        current.encoded_dot = true;
                    }
                    v if is_unreserved(v) => current.text.push(char::from(v)),
                    0x80.. => {
                        // A run of escaped non-ASCII bytes must be UTF-8: an overlong form
                        // (`%C0%AF` is `/` to a lenient decoder) or a stray byte a decoder may
                        // drop (`/%FF/admin` turning into `//admin`) is refused.
                        let (run, next) = escaped_run(bytes, i)?;
                        if std::str::from_utf8(&run).is_err() {
                            return Err(Refusal::InvalidUtf8);
                        }
                        for byte in run {
                            push_escape(&mut current.text, byte);
                        }
                        i = next;
                        continue;
                    }
                    v => push_escape(&mut current.text, v),
                }
                i += 3;
                continue;
            }
            _ => current.text.push(char::from(b)),
        }
        i += 1;
    }
    segments.push(current);
    Ok(segments)
}

/// The bytes of the escapes from `at` on that are not ASCII (`%80` to `%FF`), and where the
/// run ends.
fn escaped_run(bytes: &[u8], mut at: usize) -> Result<(Vec<u8>, usize), Refusal> {
    let mut run = Vec::new();
    while bytes.get(at) == Some(&b'%') {
        let value = bytes
            .get(at + 1..at + 3)
            .and_then(|hex| Some(hex_value(hex[0])? << 4 | hex_value(hex[1])?))
            .ok_or(Refusal::BadEscape)?;
        if value < 0x80 {
            break;
        }
        run.push(value);
        at += 3;
    }
    Ok((run, at))
}

fn push_escape(out: &mut String, value: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(value >> 4)]));
    out.push(char::from(HEX[usize::from(value & 0xf)]));
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// RFC 3986 §2.3.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(path: &str) -> Result<String, &'static str> {
        normalize(path, &PathPolicy::default())
            .map(Cow::into_owned)
            .map_err(Refusal::code)
    }

    #[test]
    fn normal_paths_are_borrowed_unchanged() {
        for path in [
            "/",
            "/admin",
            "/a/b/c",
            "/a/b/",
            "/.well-known/x",
            "/a..b/c.d",
            "/...",
            "/a/.x",
        ] {
            assert!(
                matches!(normalize(path, &PathPolicy::default()), Ok(Cow::Borrowed(_))),
                "{path}"
            );
        }
    }

    #[test]
    fn rfc_3986_normalization() {
        for (path, expected) in [
            ("/%61dmin", "/admin"),
            ("/%7Euser/%2d%5f", "/~user/-_"),
            ("/a/%c3%a9", "/a/%C3%A9"),
            ("/x/../admin", "/admin"),
            ("/admin/.", "/admin/"),
            ("/admin/./", "/admin/"),
            ("/a/b/..", "/a/"),
            ("//admin", "/admin"),
            ("/a//b///c", "/a/b/c"),
            ("/a/b//", "/a/b/"),
            ("/./admin", "/admin"),
            ("/a/%20b", "/a/%20b"),
            ("/a/%3f", "/a/%3F"),
        ] {
            assert_eq!(norm(path), Ok(expected.to_owned()), "{path}");
        }
    }

    #[test]
    fn ambiguous_forms_are_refused_by_default() {
        for (path, code) in [
            ("/admin%2fx", "path-escaped-slash"),
            ("/admin%2Fx", "path-escaped-slash"),
            ("/admin%5cx", "path-escaped-slash"),
            ("/admin\\x", "path-escaped-slash"),
            ("/x/%2e%2e/admin", "path-encoded-dot-segment"),
            ("/x/.%2e/admin", "path-encoded-dot-segment"),
            ("/x/%2e/admin", "path-encoded-dot-segment"),
            ("/admin;x=1", "path-parameter"),
            ("/..", "path-above-root"),
            ("/../admin", "path-above-root"),
            ("/a/../../admin", "path-above-root"),
            ("/admin%00", "path-control-byte"),
            ("/admin%0a", "path-control-byte"),
            ("/admin%7f", "path-control-byte"),
            ("/%c0%afadmin", "path-invalid-utf8"),
            ("/%e0%80%afadmin", "path-invalid-utf8"),
            ("/%f0%80%80%afadmin", "path-invalid-utf8"),
            ("/%ff/admin", "path-invalid-utf8"),
            ("/%c3%28admin", "path-invalid-utf8"),
            ("/%c3", "path-invalid-utf8"),
            ("/admin%", "path-bad-escape"),
            ("/admin%g1", "path-bad-escape"),
            ("admin", "path-not-absolute"),
        ] {
            assert_eq!(norm(path), Err(code), "{path}");
        }
    }

    #[test]
    fn kept_forms_pass_as_escapes_that_split_nothing() {
        let keep = PathPolicy {
            escaped_slashes: Ambiguous::Keep,
            encoded_dots: Ambiguous::Keep,
            path_parameters: Ambiguous::Keep,
            merge_slashes: false,
            redirect_changed: false,
        };
        let norm = |p: &str| normalize(p, &keep).map(Cow::into_owned);
        assert_eq!(norm("/a%2fb/../c"), Ok("/c".to_owned()));
        assert_eq!(norm("/a%2fb"), Ok("/a%2Fb".to_owned()));
        assert_eq!(norm("/a\\b"), Ok("/a%5Cb".to_owned()));
        assert_eq!(norm("/admin;x=1"), Ok("/admin;x=1".to_owned()));
        assert_eq!(norm("/x/%2e%2e/admin"), Ok("/admin".to_owned()));
        assert_eq!(norm("/a//b"), Ok("/a//b".to_owned()));
    }

    #[test]
    fn normalizing_twice_changes_nothing() {
        for path in ["/%61/b/../c//d/", "/a/%c3%a9/./x", "/a/b/c/..", "/%7e"] {
            let once = norm(path).expect("normal");
            assert_eq!(norm(&once), Ok(once.clone()), "{path}");
        }
    }
}
