//! Which route a request takes: path, method, header and query matching over a compiled table.
//!
//! Pure and allocation-free per request: the table is compiled once per configuration change
//! (see `compile`), and matching only compares borrowed strings.

use std::ops::ControlFlow;

use http::{HeaderMap, Method};

pub use crate::gateway::http::path_match::{PathMatcher, method_of};

/// One `matches[]` entry: all of its conditions must hold.
#[derive(Clone, Debug, Default)]
pub struct RequestMatch {
    pub path: Option<PathMatcher>,
    pub method: Option<Method>,
    /// Header names lowercase, values exact.
    pub headers: Vec<(http::HeaderName, String)>,
    /// Query parameters, exact.
    pub query: Vec<(String, String)>,
}

/// A condition of a [`RequestMatch`] a request does not satisfy.
#[derive(Clone, Copy, Debug)]
pub enum Mismatch<'m> {
    Path(&'m PathMatcher),
    /// A query parameter, and the value it must have.
    Query(&'m str, &'m str),
    Method(&'m Method),
    /// A header, and the value it must have.
    Header(&'m http::HeaderName, &'m str),
}

impl RequestMatch {
    pub fn matches(&self, method: &Method, uri: &http::Uri, headers: &HeaderMap) -> bool {
        self.check(method, uri, headers, |_| ControlFlow::Break(()))
            .is_continue()
    }

    /// Checks each condition in turn, telling `mismatch` of each one the request fails, until
    /// it says to stop: the router stops at the first, an explanation wants them all. One
    /// function for both, so that an explanation cannot disagree with the router.
    #[inline]
    pub fn check<'m>(
        &'m self,
        method: &Method,
        uri: &http::Uri,
        headers: &HeaderMap,
        mut mismatch: impl FnMut(Mismatch<'m>) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        if let Some(path) = &self.path
            && !path.matches(uri.path())
        {
            mismatch(Mismatch::Path(path))?;
        }
        if !self.query.is_empty() {
            let query = uri.query().unwrap_or("");
            for (name, value) in &self.query {
                let present = query.split('&').any(|pair| {
                    pair.split_once('=').unwrap_or((pair, "")) == (name.as_str(), value.as_str())
                });
                if !present {
                    mismatch(Mismatch::Query(name, value))?;
                }
            }
        }
        if let Some(wanted) = &self.method
            && wanted != method
        {
            mismatch(Mismatch::Method(wanted))?;
        }
        for (name, value) in &self.headers {
            let present = headers
                .get_all(name)
                .iter()
                .any(|v| v.as_bytes() == value.as_bytes());
            if !present {
                mismatch(Mismatch::Header(name, value))?;
            }
        }
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::gateway::PathMatchType;

    #[test]
    fn path_prefix_respects_segment_boundaries() {
        let prefix = |value: &str, path: &str| PathMatcher::Prefix(value.into()).matches(path);
        assert!(prefix("/api", "/api"));
        assert!(prefix("/api", "/api/orders"));
        assert!(prefix("/api/", "/api/orders"));
        assert!(prefix("/api/", "/api"));
        assert!(!prefix("/api", "/apix"));
        assert!(prefix("/", "/anything"));
        assert!(PathMatcher::Exact("/a".into()).matches("/a"));
        assert!(!PathMatcher::Exact("/a".into()).matches("/a/"));
    }

    #[test]
    fn a_match_needs_every_condition() {
        let rule = RequestMatch {
            path: Some(PathMatcher::Prefix("/api".into())),
            method: Some(Method::GET),
            headers: vec![(http::HeaderName::from_static("x-canary"), "yes".into())],
            query: vec![],
        };
        let mut headers = HeaderMap::new();
        headers.insert("x-canary", "yes".parse().expect("value"));
        let uri = |u: &str| u.parse::<http::Uri>().expect("uri");
        assert!(rule.matches(&Method::GET, &uri("/api/orders"), &headers));
        assert!(!rule.matches(&Method::POST, &uri("/api/orders"), &headers));
        assert!(!rule.matches(&Method::GET, &uri("/web"), &headers));
        assert!(!rule.matches(&Method::GET, &uri("/api/orders"), &HeaderMap::new()));
        assert!(RequestMatch::default().matches(&Method::DELETE, &uri("/"), &HeaderMap::new()));
    }

    #[test]
    fn regular_expressions_match_the_whole_path_and_query_parameters_match_exactly() {
        let uri = |u: &str| u.parse::<http::Uri>().expect("uri");
        let versioned =
            PathMatcher::compile(PathMatchType::RegularExpression, "/api/v[0-9]+/.*").expect("valid");
        assert!(versioned.matches("/api/v2/orders"));
        assert!(!versioned.matches("/x/api/v2/orders"), "anchored at the start");
        assert!(!versioned.matches("/api/vx/orders"));
        assert!(PathMatcher::compile(PathMatchType::RegularExpression, "/(unclosed").is_err());
        let rule = RequestMatch {
            query: vec![("debug".into(), "1".into())],
            ..RequestMatch::default()
        };
        assert!(rule.matches(&Method::GET, &uri("/a?x=2&debug=1"), &HeaderMap::new()));
        assert!(!rule.matches(&Method::GET, &uri("/a?debug=10"), &HeaderMap::new()));
        assert!(!rule.matches(&Method::GET, &uri("/a"), &HeaderMap::new()));
    }
}
