//! Host names as routing and TLS server names see them: patterns (`shop.example.com`,
//! `*.example.com`) and the host a request names.

use std::borrow::Cow;

/// A host name pattern: an exact name, or `*.suffix` matching one more label in front (as a
/// microgate.dev Gateway and a certificate mean it) or any number of them (as the Gateway API
/// means it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    /// The suffix including its leading dot: `*.example.com` holds `.example.com`.
    Wildcard(String),
    /// The suffix including its leading dot; matches one label or more in front of it.
    Subdomains(String),
}

impl HostPattern {
    pub fn parse(pattern: &str) -> Self {
        match pattern.strip_prefix('*') {
            Some(suffix) => HostPattern::Wildcard(suffix.to_ascii_lowercase()),
            None => HostPattern::Exact(pattern.to_ascii_lowercase()),
        }
    }

    /// A pattern as the Gateway API writes it: its wildcard takes any number of labels.
    pub fn parse_any_depth(pattern: &str) -> Self {
        match pattern.strip_prefix('*') {
            Some(suffix) => HostPattern::Subdomains(suffix.to_ascii_lowercase()),
            None => HostPattern::Exact(pattern.to_ascii_lowercase()),
        }
    }

    /// The suffix a wildcard pattern matches (`None` for an exact name).
    pub fn wildcard_suffix(&self) -> Option<&str> {
        match self {
            HostPattern::Exact(_) => None,
            HostPattern::Wildcard(suffix) | HostPattern::Subdomains(suffix) => Some(suffix),
        }
    }

    /// `host` must already be lowercase and without a port.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(name) => name == host,
            HostPattern::Wildcard(suffix) => host
                .strip_suffix(suffix.as_str())
                .is_some_and(|label| !label.is_empty() && !label.contains('.')),
            HostPattern::Subdomains(suffix) => host
                .strip_suffix(suffix.as_str())
                .is_some_and(|labels| !labels.is_empty()),
        }
    }
}

/// How closely `patterns` (a listener's hostnames) take `host`: an exact name above any
/// wildcard, a longer wildcard above a shorter, and no hostnames (any host) lowest; `None` when
/// they do not take it. The Gateway API gives a request to the listener that ranks highest.
pub fn rank(patterns: &[HostPattern], host: Option<&str>) -> Option<usize> {
    if patterns.is_empty() {
        return Some(0);
    }
    let host = host?;
    patterns
        .iter()
        .filter(|p| p.matches(host))
        .map(|p| p.wildcard_suffix().map_or(usize::MAX, |suffix| suffix.len() + 1))
        .max()
}

/// The request's host, lowercase, without a port: from the URI's authority (HTTP/2, or an
/// absolute-form request) or the Host header.
pub fn request_host<'a>(
    authority: Option<&'a http::uri::Authority>,
    host_header: Option<&'a http::HeaderValue>,
) -> Option<Cow<'a, str>> {
    let raw = authority
        .map(http::uri::Authority::host)
        .or_else(|| host_header?.to_str().ok())?;
    let host = match raw.rsplit_once(':') {
        // An IPv6 literal keeps its colons inside brackets.
        Some((name, port))
            if !name.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) && !raw.ends_with(']') =>
        {
            name
        }
        _ => raw,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    // Most clients send it in lower case already: then it is borrowed, not copied.
    Some(if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_hosts_match_exactly_one_label() {
        let wildcard = HostPattern::parse("*.example.com");
        assert!(wildcard.matches("shop.example.com"));
        assert!(!wildcard.matches("example.com"));
        assert!(!wildcard.matches("a.b.example.com"));
        assert!(HostPattern::parse("Shop.Example.com").matches("shop.example.com"));
        let any_depth = HostPattern::parse_any_depth("*.example.com");
        assert!(any_depth.matches("shop.example.com"));
        assert!(any_depth.matches("a.b.example.com"));
        assert!(!any_depth.matches("example.com"));
    }

    #[test]
    fn host_comes_without_port_and_lowercase() {
        let header = |host: &str| host.parse::<http::HeaderValue>().expect("header value");
        assert_eq!(
            request_host(None, Some(&header("Shop.Example.com:8080"))).as_deref(),
            Some("shop.example.com")
        );
        assert_eq!(
            request_host(None, Some(&header("[::1]:80"))).as_deref(),
            Some("::1")
        );
        let absolute: http::Uri = "http://a.example.com:9/x".parse().expect("uri");
        assert_eq!(
            request_host(absolute.authority(), Some(&header("other.example.com"))).as_deref(),
            Some("a.example.com")
        );
    }
}
