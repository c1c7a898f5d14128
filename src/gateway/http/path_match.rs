//! Paths and methods as routes and policies name them, compiled once per configuration change
//! and compared per request without allocating.

use http::Method;

use crate::api::gateway::{HttpMethod, PathMatchType};

/// How a path is compared, compiled.
#[derive(Clone, Debug)]
pub enum PathMatcher {
    Exact(String),
    Prefix(String),
    /// Anchored at both ends.
    Regex(regex::Regex),
}

impl PathMatcher {
    /// The prefix of a `PathPrefix` match.
    pub fn prefix(&self) -> Option<&str> {
        match self {
            PathMatcher::Prefix(prefix) => Some(prefix),
            _ => None,
        }
    }

    /// The matcher for a route's path match; an invalid regular expression is an error.
    pub fn compile(kind: PathMatchType, value: &str) -> Result<Self, regex::Error> {
        Ok(match kind {
            PathMatchType::Exact => PathMatcher::Exact(value.to_owned()),
            PathMatchType::PathPrefix => PathMatcher::Prefix(value.to_owned()),
            PathMatchType::RegularExpression => {
                PathMatcher::Regex(regex::Regex::new(&format!("^(?:{value})$"))?)
            }
        })
    }

    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatcher::Exact(value) => path == value,
            PathMatcher::Prefix(value) => prefix_matches(value, path),
            PathMatcher::Regex(regex) => regex.is_match(path),
        }
    }
}

/// `/api` takes `/api`, `/api/` and `/api/x`, not `/apix`.
fn prefix_matches(value: &str, path: &str) -> bool {
    let prefix = value.trim_end_matches('/');
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/') || prefix.is_empty(),
        None => false,
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
