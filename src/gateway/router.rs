//! Which route a request takes: host, path, method and header matching over a compiled table.
//!
//! Pure and allocation-free per request: the table is compiled once per configuration change
//! (see `config`), and matching only compares borrowed strings.

use http::{HeaderMap, Method};

use crate::api::gateway::{HttpMethod, PathMatchType};

/// A host name pattern: an exact name, or `*.suffix` matching exactly one more label in front.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    /// The suffix including its leading dot: `*.example.com` holds `.example.com`.
    Wildcard(String),
}

impl HostPattern {
    pub fn parse(pattern: &str) -> Self {
        match pattern.strip_prefix('*') {
            Some(suffix) => HostPattern::Wildcard(suffix.to_ascii_lowercase()),
            None => HostPattern::Exact(pattern.to_ascii_lowercase()),
        }
    }

    /// `host` must already be lowercase and without a port.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(name) => name == host,
            HostPattern::Wildcard(suffix) => host
                .strip_suffix(suffix.as_str())
                .is_some_and(|label| !label.is_empty() && !label.contains('.')),
        }
    }
}

/// One `matches[]` entry: all of its conditions must hold.
#[derive(Clone, Debug, Default)]
pub struct RequestMatch {
    pub path: Option<(PathMatchType, String)>,
    pub method: Option<Method>,
    /// Header names lowercase, values exact.
    pub headers: Vec<(http::HeaderName, String)>,
}

impl RequestMatch {
    pub fn matches(&self, method: &Method, path: &str, headers: &HeaderMap) -> bool {
        if let Some((kind, value)) = &self.path
            && !path_matches(*kind, value, path)
        {
            return false;
        }
        if self.method.as_ref().is_some_and(|m| m != method) {
            return false;
        }
        self.headers.iter().all(|(name, value)| {
            headers
                .get_all(name)
                .iter()
                .any(|v| v.as_bytes() == value.as_bytes())
        })
    }
}

/// Exact: the whole path. PathPrefix: `/api` takes `/api`, `/api/` and `/api/x`, not `/apix`.
pub fn path_matches(kind: PathMatchType, value: &str, path: &str) -> bool {
    match kind {
        PathMatchType::Exact => path == value,
        PathMatchType::PathPrefix => {
            let prefix = value.trim_end_matches('/');
            match path.strip_prefix(prefix) {
                Some(rest) => rest.is_empty() || rest.starts_with('/') || prefix.is_empty(),
                None => false,
            }
        }
    }
}

pub fn method_of(method: HttpMethod) -> Method {
    match method {
        HttpMethod::Get => Method::GET,
        HttpMethod::Head => Method::HEAD,
        HttpMethod::Post => Method::POST,
        HttpMethod::Put => Method::PUT,
        HttpMethod::Delete => Method::DELETE,
        HttpMethod::Connect => Method::CONNECT,
        HttpMethod::Options => Method::OPTIONS,
        HttpMethod::Trace => Method::TRACE,
        HttpMethod::Patch => Method::PATCH,
    }
}

/// The request's host, lowercase, without a port: from the URI (HTTP/2) or the Host header.
pub fn request_host<'a>(uri: &'a http::Uri, headers: &'a HeaderMap) -> Option<String> {
    let raw = uri
        .host()
        .or_else(|| headers.get(http::header::HOST)?.to_str().ok())?;
    let host = match raw.rsplit_once(':') {
        // An IPv6 literal keeps its colons inside brackets.
        Some((name, port))
            if !name.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) && !raw.ends_with(']') =>
        {
            name
        }
        _ => raw,
    };
    Some(
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_prefix_respects_segment_boundaries() {
        let prefix = |value: &str, path: &str| path_matches(PathMatchType::PathPrefix, value, path);
        assert!(prefix("/api", "/api"));
        assert!(prefix("/api", "/api/orders"));
        assert!(prefix("/api/", "/api/orders"));
        assert!(prefix("/api/", "/api"));
        assert!(!prefix("/api", "/apix"));
        assert!(prefix("/", "/anything"));
        assert!(path_matches(PathMatchType::Exact, "/a", "/a"));
        assert!(!path_matches(PathMatchType::Exact, "/a", "/a/"));
    }

    #[test]
    fn wildcard_hosts_match_exactly_one_label() {
        let wildcard = HostPattern::parse("*.example.com");
        assert!(wildcard.matches("shop.example.com"));
        assert!(!wildcard.matches("example.com"));
        assert!(!wildcard.matches("a.b.example.com"));
        assert!(HostPattern::parse("Shop.Example.com").matches("shop.example.com"));
    }

    #[test]
    fn host_comes_without_port_and_lowercase() {
        let headers = |host: &str| {
            let mut map = HeaderMap::new();
            map.insert(http::header::HOST, host.parse().expect("header value"));
            map
        };
        let uri: http::Uri = "/path".parse().expect("uri");
        assert_eq!(
            request_host(&uri, &headers("Shop.Example.com:8080")).as_deref(),
            Some("shop.example.com")
        );
        assert_eq!(request_host(&uri, &headers("[::1]:80")).as_deref(), Some("::1"));
        let absolute: http::Uri = "http://a.example.com:9/x".parse().expect("uri");
        assert_eq!(
            request_host(&absolute, &HeaderMap::new()).as_deref(),
            Some("a.example.com")
        );
    }

    #[test]
    fn a_match_needs_every_condition() {
        let rule = RequestMatch {
            path: Some((PathMatchType::PathPrefix, "/api".into())),
            method: Some(Method::GET),
            headers: vec![(http::HeaderName::from_static("x-canary"), "yes".into())],
        };
        let mut headers = HeaderMap::new();
        headers.insert("x-canary", "yes".parse().expect("value"));
        assert!(rule.matches(&Method::GET, "/api/orders", &headers));
        assert!(!rule.matches(&Method::POST, "/api/orders", &headers));
        assert!(!rule.matches(&Method::GET, "/web", &headers));
        assert!(!rule.matches(&Method::GET, "/api/orders", &HeaderMap::new()));
        assert!(RequestMatch::default().matches(&Method::DELETE, "/", &HeaderMap::new()));
    }
}
