//! The path corpus of `make test` and `make hostile`: request targets that name `/admin` in
//! ways services read differently, and how a lenient server reads each, against two routes (an
//! exact `/admin` to one service and `/` to another).

/// Hostile paths (request targets as sent on the wire).
pub const PATHS: &[&str] = &[
    // plain dot segments
    "/x/../admin",
    "/x/y/../../admin",
    "/./admin",
    "/admin/.",
    "/admin/./",
    "/x/./../admin",
    "/admin/x/..",
    "/admin/x/../",
    "/../admin",
    "/x/../../admin",
    "/..",
    // encoded dot segments, any case
    "/x/%2e%2e/admin",
    "/x/%2E%2E/admin",
    "/x/.%2e/admin",
    "/x/%2e./admin",
    "/%2e/admin",
    "/admin/%2e",
    "/%2e%2e/admin",
    // doubled, encoded and backslash slashes
    "//admin",
    "///admin",
    "/x//../admin",
    "/admin//",
    "/%2fadmin",
    "/%2Fadmin",
    "/x%2f..%2fadmin",
    "/x/..%2fadmin",
    "/%5cadmin",
    "/x\\..\\admin",
    "/\\admin",
    "/x/..\\admin",
    // escapes of unreserved characters, mixed case
    "/%61dmin",
    "/%61%64%6d%69%6e",
    "/%61%64%6D%69%6E",
    "/adm%69n",
    "/ADMIN",
    "/Admin",
    "/%41dmin",
    // overlong and invalid UTF-8 escapes
    "/%c0%afadmin",
    "/x/%c0%ae%c0%ae/admin",
    "/%e0%80%afadmin",
    "/%f0%80%80%afadmin",
    "/%c1%9cadmin",
    "/%ff/admin",
    "/%c3%28admin",
    // control bytes, escaped
    "/admin%00",
    "/admin%00.html",
    "/%00/../admin",
    "/admin%0a",
    "/admin%0d%0aX-Injected:%201",
    "/admin%09",
    "/admin%7f",
    // path parameters
    "/admin;",
    "/admin;x=1",
    "/admin;jsessionid=abc",
    "/x;/../admin",
    "/;/admin",
    "/admin/;x",
    "/x/..;/admin",
    // bad escapes
    "/admin%",
    "/admin%2",
    "/%zzadmin",
    // a fragment in the target
    "/admin#x",
    "/public#/../admin",
    // queries and near misses
    "/admin?x=../y",
    "/admin?%2e%2e",
    "/adminx",
    "/admin.",
    "/admin~",
    "/admin%20",
    // very long
    "/x/LONG/../../admin",
    "/LONG",
];

/// How a lenient server (one that decodes every escape, drops bytes that are not UTF-8, takes
/// `\` and `%5C` for `/`, drops `;` parameters and resolves dot segments, as frameworks variously
/// do) reads `path`.
pub fn lenient(path: &str) -> String {
    let path = path.split('?').next().unwrap_or_default();
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(value) = bytes
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok())
        {
            decoded.push(value);
            i += 3;
            continue;
        }
        decoded.push(bytes[i]);
        i += 1;
    }
    // Bytes that are not UTF-8 dropped, as some decoders do.
    let text = String::from_utf8_lossy(&decoded)
        .replace(['\u{fffd}'], "")
        .replace('\\', "/");
    // Dot segments resolved and slashes merged; a trailing slash stays (`/admin/` is not
    // `/admin` to an Exact match, nor to RFC 3986).
    let mut out: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for segment in text.split('/').skip(1) {
        let segment = segment.split(';').next().unwrap_or_default();
        trailing_slash = matches!(segment, "" | "." | "..");
        match segment {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let joined = format!("/{}", out.join("/"));
    if trailing_slash && joined != "/" {
        joined + "/"
    } else {
        joined
    }
}

pub fn expand(path: &str) -> String {
    path.replace("LONG", &"a".repeat(4000))
}

/// An answer read whole off a raw connection: its status and its header fields (names in
/// lowercase).
#[derive(Debug)]
pub struct RawAnswer {
    pub status: u16,
    pub headers: std::collections::BTreeMap<String, String>,
}

/// `GET target` sent as raw bytes (so that a proxy sees exactly the corpus's target, which an
/// HTTP client library would check or change), with `Host: shop`, read to the end; 5 s at most.
pub async fn get_raw(addr: std::net::SocketAddr, target: &str) -> std::io::Result<RawAnswer> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!("GET {target} HTTP/1.1\r\nHost: shop\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut bytes = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read_to_end(&mut bytes)).await;
    let text = String::from_utf8_lossy(&bytes);
    let mut lines = text.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok(RawAnswer { status, headers })
}

/// What became of one path through a proxy with the two routes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PathVerdict {
    /// 4xx.
    Refused,
    /// 3xx.
    Redirected,
    /// The `/admin` service, with the path `/admin`.
    AdminNormalized,
    /// The `/admin` service, with another path than `/admin` (the raw one, say).
    AdminRaw,
    /// The other service, with a path no lenient reading takes for `/admin`.
    OtherNotAdmin,
    /// The other service, with a path a lenient server takes for `/admin`: a bypass.
    OtherAsAdmin,
    /// Anything else (no answer, 5xx).
    Unexpected,
}

impl PathVerdict {
    pub fn name(self) -> &'static str {
        match self {
            Self::Refused => "refused",
            Self::Redirected => "redirected",
            Self::AdminNormalized => "admin, normalized",
            Self::AdminRaw => "admin, raw path",
            Self::OtherNotAdmin => "other, not admin",
            Self::OtherAsAdmin => "other, AS ADMIN",
            Self::Unexpected => "unexpected",
        }
    }

    /// Judges an answer: its `status`, which service answered (`admin` or not: `service`), and
    /// the path that service received (`seen`), for the request target `target`.
    pub fn judge(target: &str, status: u16, admin_answered: Option<bool>, seen: &str) -> Self {
        match (status, admin_answered) {
            (400..=499, _) => Self::Refused,
            (300..=399, _) => Self::Redirected,
            (200, Some(true)) if seen.split('?').next() == Some("/admin") => Self::AdminNormalized,
            (200, Some(true)) => Self::AdminRaw,
            // What the backend received decides; the target only when the backend did not say.
            (200, Some(false)) if lenient(if seen.is_empty() { target } else { seen }) == "/admin" => {
                Self::OtherAsAdmin
            }
            (200, Some(false)) => Self::OtherNotAdmin,
            _ => Self::Unexpected,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lenient_reading_takes_the_classic_bypasses_for_admin() {
        for path in [
            "/x/../admin",
            "/%61dmin",
            "/admin;x=1",
            "/x\\..\\admin",
            "/%2fadmin",
            "//admin",
        ] {
            assert_eq!(lenient(path), "/admin", "{path}");
        }
        assert_eq!(lenient("/adminx"), "/adminx");
        assert_eq!(lenient("/admin/."), "/admin/");
        assert_eq!(
            lenient("/%ff/admin"),
            "/admin",
            "a decoder that drops a stray byte"
        );
    }

    #[test]
    fn verdicts() {
        assert_eq!(
            PathVerdict::judge("/x/../admin", 200, Some(false), "/x/../admin"),
            PathVerdict::OtherAsAdmin
        );
        assert_eq!(
            PathVerdict::judge("/x/../admin", 200, Some(true), "/x/../admin"),
            PathVerdict::AdminRaw
        );
        assert_eq!(
            PathVerdict::judge("/x/../admin", 200, Some(true), "/admin"),
            PathVerdict::AdminNormalized
        );
        assert_eq!(
            PathVerdict::judge("/adminx", 200, Some(false), "/adminx"),
            PathVerdict::OtherNotAdmin
        );
        assert_eq!(PathVerdict::judge("/..", 400, None, ""), PathVerdict::Refused);
    }
}
