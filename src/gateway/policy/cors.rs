//! Cross-origin resource sharing (the Fetch standard's CORS protocol) as a route declares it
//! (the Gateway API's CORS filter): the gateway answers preflight requests itself, and adds
//! `Access-Control-Allow-Origin` (and the rest) to the answers of allowed origins.
//!
//! An allowed origin is always echoed, never answered with `*`: that is right with and without
//! credentials. A wildcard list of methods or headers is answered with what the preflight asks
//! for, for the same reason.

use http::{HeaderMap, HeaderName, HeaderValue, Method, header};

/// The preflight cache time when the route names none (the Gateway API's default).
pub const DEFAULT_MAX_AGE: u32 = 5;

/// A route's CORS policy.
#[derive(Debug)]
pub struct Cors {
    origins: Vec<OriginPattern>,
    credentials: bool,
    methods: Allowed,
    headers: Allowed,
    expose: Allowed,
    max_age: HeaderValue,
}

/// What a list of methods or headers allows.
#[derive(Debug)]
enum Allowed {
    Nothing,
    /// `*`: whatever is asked for.
    Any,
    /// The names, joined as the response header's value.
    Listed(HeaderValue),
}

impl Allowed {
    fn new(names: &[String]) -> Self {
        if names.iter().any(|n| n == "*") {
            return Allowed::Any;
        }
        match HeaderValue::try_from(names.join(", ")) {
            Ok(value) if !names.is_empty() => Allowed::Listed(value),
            _ => Allowed::Nothing,
        }
    }
}

/// An allowed origin: a scheme, a host (maybe `*.` and a suffix: any number of labels), a port.
#[derive(Debug, PartialEq, Eq)]
enum OriginPattern {
    Any,
    Origin {
        scheme: String,
        /// Set for `*.example.com`: `.example.com`.
        suffix: Option<String>,
        host: String,
        port: u16,
    },
}

impl OriginPattern {
    fn parse(pattern: &str) -> Option<Self> {
        if pattern == "*" {
            return Some(OriginPattern::Any);
        }
        let (scheme, host, port) = split_origin(pattern)?;
        let (suffix, host) = match host.strip_prefix('*') {
            Some(suffix) => (Some(suffix.to_owned()), String::new()),
            None => (None, host),
        };
        Some(OriginPattern::Origin {
            scheme,
            suffix,
            host,
            port,
        })
    }

    fn matches(&self, origin: &(String, String, u16)) -> bool {
        match self {
            OriginPattern::Any => true,
            OriginPattern::Origin {
                scheme,
                suffix,
                host,
                port,
            } => {
                *scheme == origin.0
                    && *port == origin.2
                    && match suffix {
                        Some(suffix) => origin.1.len() > suffix.len() && origin.1.ends_with(suffix.as_str()),
                        None => *host == origin.1,
                    }
            }
        }
    }
}

/// An origin's scheme and host (lowercase) and port (the scheme's own when it names none).
fn split_origin(origin: &str) -> Option<(String, String, u16)> {
    let (scheme, rest) = origin.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let (host, port) = match rest.strip_prefix('[') {
        // An IPv6 literal: the port, if any, follows the bracket.
        Some(bracketed) => {
            let (address, after) = bracketed.split_once(']')?;
            let port = match after.strip_prefix(':') {
                Some(port) => port.parse::<u16>().ok()?,
                None if after.is_empty() => default_port,
                None => return None,
            };
            (&rest[..address.len() + 2], port)
        }
        None => match rest.split_once(':') {
            Some((host, port)) => (host, port.parse::<u16>().ok()?),
            None => (rest, default_port),
        },
    };
    if host.is_empty() || host.contains('/') {
        return None;
    }
    Some((scheme, host.to_ascii_lowercase(), port))
}

static ALLOW_ORIGIN: HeaderName = header::ACCESS_CONTROL_ALLOW_ORIGIN;
static REQUEST_METHOD: HeaderName = header::ACCESS_CONTROL_REQUEST_METHOD;
static REQUEST_HEADERS: HeaderName = header::ACCESS_CONTROL_REQUEST_HEADERS;

impl Cors {
    /// The policy of a CORS filter; origins that are not `scheme://host[:port]` (or `*`) are
    /// left out. `max_age`: seconds, [`DEFAULT_MAX_AGE`] when unset or not positive.
    pub fn new(
        origins: &[String],
        credentials: bool,
        methods: &[String],
        headers: &[String],
        expose: &[String],
        max_age: Option<i32>,
    ) -> Self {
        let max_age = max_age
            .and_then(|s| u32::try_from(s).ok())
            .filter(|s| *s > 0)
            .unwrap_or(DEFAULT_MAX_AGE);
        Self {
            origins: origins.iter().filter_map(|o| OriginPattern::parse(o)).collect(),
            credentials,
            methods: Allowed::new(methods),
            headers: Allowed::new(headers),
            expose: Allowed::new(expose),
            max_age: HeaderValue::from(max_age),
        }
    }

    /// The request's `Origin`, if the policy allows it.
    pub fn allowed_origin<'h>(&self, request: &'h HeaderMap) -> Option<&'h HeaderValue> {
        let value = request.get(header::ORIGIN)?;
        let origin = split_origin(value.to_str().ok()?)?;
        self.origins
            .iter()
            .any(|pattern| pattern.matches(&origin))
            .then_some(value)
    }

    /// Whether a request is a CORS preflight: `OPTIONS` with an `Origin` and the method it asks
    /// about.
    pub fn is_preflight(method: &Method, request: &HeaderMap) -> bool {
        method == Method::OPTIONS
            && request.contains_key(header::ORIGIN)
            && request.contains_key(&REQUEST_METHOD)
    }

    /// The headers of the gateway's answer to a preflight `request`: none when its origin is not
    /// allowed.
    pub fn preflight(&self, request: &HeaderMap) -> HeaderMap {
        let mut answer = HeaderMap::new();
        let Some(origin) = self.allowed_origin(request) else {
            return answer;
        };
        self.add_common(origin.clone(), &mut answer);
        let echo = |name: &HeaderName| request.get(name).cloned();
        let methods = match &self.methods {
            Allowed::Any => echo(&REQUEST_METHOD),
            Allowed::Listed(list) => Some(list.clone()),
            Allowed::Nothing => None,
        };
        if let Some(methods) = methods {
            answer.insert(header::ACCESS_CONTROL_ALLOW_METHODS, methods);
        }
        let headers = match &self.headers {
            Allowed::Any => echo(&REQUEST_HEADERS),
            Allowed::Listed(list) => Some(list.clone()),
            Allowed::Nothing => None,
        };
        if let Some(headers) = headers {
            answer.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, headers);
        }
        answer.insert(header::ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
        answer
    }

    /// Adds to an answer for the allowed `origin` what tells the browser it may read it.
    pub fn add_to_answer(&self, origin: HeaderValue, answer: &mut HeaderMap) {
        self.add_common(origin, answer);
    }

    fn add_common(&self, origin: HeaderValue, answer: &mut HeaderMap) {
        answer.insert(&ALLOW_ORIGIN, origin);
        // The answer depends on the Origin: caches must not give it to another.
        answer.append(header::VARY, HeaderValue::from_static("Origin"));
        if self.credentials {
            answer.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        match &self.expose {
            Allowed::Listed(list) => {
                answer.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, list.clone());
            }
            // With credentials `*` is the literal header name `*`: nothing to expose then.
            Allowed::Any if !self.credentials => {
                answer.insert(
                    header::ACCESS_CONTROL_EXPOSE_HEADERS,
                    HeaderValue::from_static("*"),
                );
            }
            Allowed::Any | Allowed::Nothing => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(values: &[&str]) -> Vec<String> {
        values.iter().map(|v| v.to_string()).collect()
    }

    fn request(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn origins_match_exactly_or_by_a_leftmost_wildcard_with_default_ports() {
        let cors = Cors::new(
            &strings(&["https://www.foo.com", "https://*.bar.com", "http://local:8080"]),
            false,
            &[],
            &[],
            &[],
            None,
        );
        let allowed = |origin: &'static str| cors.allowed_origin(&request(&[("origin", origin)])).is_some();
        assert!(allowed("https://www.foo.com"));
        assert!(allowed("https://www.foo.com:443"));
        assert!(allowed("HTTPS://WWW.FOO.COM"));
        assert!(!allowed("http://www.foo.com"));
        assert!(!allowed("https://www.foo.com:8443"));
        assert!(allowed("https://www.bar.com"));
        assert!(allowed("https://xpto.www.bar.com"));
        assert!(!allowed("https://bar.com"));
        assert!(!allowed("https://foobar.com"));
        assert!(allowed("http://local:8080"));
        assert!(!allowed("http://local"));
        assert!(!allowed("null"));
        let any = Cors::new(&strings(&["*"]), false, &[], &[], &[], None);
        assert!(
            any.allowed_origin(&request(&[("origin", "https://foobar.com:12345")]))
                .is_some()
        );
    }

    #[test]
    fn a_preflight_gets_the_lists_or_what_it_asked_for() {
        let listed = Cors::new(
            &strings(&["https://www.foo.com"]),
            true,
            &strings(&["GET", "OPTIONS"]),
            &strings(&["x-header-1", "x-header-2"]),
            &strings(&["x-header-3"]),
            Some(3600),
        );
        let asked = request(&[
            ("origin", "https://www.foo.com"),
            ("access-control-request-method", "GET"),
            ("access-control-request-headers", "x-header-1"),
        ]);
        assert!(Cors::is_preflight(&Method::OPTIONS, &asked));
        assert!(!Cors::is_preflight(&Method::GET, &asked));
        let answer = listed.preflight(&asked);
        assert_eq!(answer["access-control-allow-origin"], "https://www.foo.com");
        assert_eq!(answer["access-control-allow-methods"], "GET, OPTIONS");
        assert_eq!(answer["access-control-allow-headers"], "x-header-1, x-header-2");
        assert_eq!(answer["access-control-expose-headers"], "x-header-3");
        assert_eq!(answer["access-control-max-age"], "3600");
        assert_eq!(answer["access-control-allow-credentials"], "true");

        let wildcard = Cors::new(
            &strings(&["*"]),
            false,
            &strings(&["*"]),
            &strings(&["*"]),
            &[],
            None,
        );
        let answer = wildcard.preflight(&asked);
        assert_eq!(answer["access-control-allow-methods"], "GET");
        assert_eq!(answer["access-control-allow-headers"], "x-header-1");
        assert_eq!(answer["access-control-max-age"], "5");
        assert!(!answer.contains_key("access-control-allow-credentials"));

        let stranger = request(&[
            ("origin", "https://foobar.com"),
            ("access-control-request-method", "GET"),
        ]);
        assert!(listed.preflight(&stranger).is_empty());
    }
}
