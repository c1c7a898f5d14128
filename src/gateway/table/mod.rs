//! The compiled route table: every listener, route and backend the data plane serves, as plain
//! data the request path reads. The front ends in `compile` build one; the gateway swaps in a
//! whole new table per change, so a request always sees one consistent configuration.
//!
//! Besides configuration, a table holds the live state that must outlive a change (endpoint
//! pools, retry budgets, TLS session caches): a new table borrows it from the previous one.

pub mod matching;
pub mod select;

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::Arc,
    time::Duration,
};

use rustls::server::StoresServerSessions;

use super::{
    balance::{EndpointState, Pool, outlier::Ejection},
    metrics::RouteMetrics,
    policy::{
        access::{AccessControl, AccessMetrics},
        client_ip::TrustedProxies,
        cors::Cors,
        path::PathPolicy,
    },
    retry::RetryBudget,
    tls::{TlsListener, TlsPort},
    upstream::{CircuitBreaker, Limits},
};
use crate::{
    api::{gateway::RedirectScheme, policy::RetryPolicy},
    discovery::ServiceKey,
};
use matching::{PathMatcher, RequestMatch};

pub use crate::gateway::http::host::HostPattern;

/// Client connections a listener holds open at once unless its `maxConnections` says: well
/// under a usual open-file limit, so that a flood of connections cannot exhaust the process.
pub const DEFAULT_MAX_CONNECTIONS: usize = 16_384;

/// What a request's consistent-hash key is taken from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashOn {
    Header(http::HeaderName),
    Cookie(String),
    SourceIp,
}

/// What an upstream is made of: a Microservice's endpoints, or those of one port of a
/// Kubernetes Service (the Gateway API's backends).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum UpstreamKey {
    Microservice(ServiceKey),
    ServicePort(ServiceKey, u16),
}

/// One Microservice (or Service port) as routes send to it: its endpoints' pool and its hash key.
#[derive(Debug)]
pub struct Upstream {
    /// The Microservice or Service, for messages and metrics.
    pub service: ServiceKey,
    pub pool: Pool,
    pub hash_on: Option<HashOn>,
    /// The Microservice speaks HTTP/2 (protocol HTTP2 or GRPC): cleartext, prior knowledge.
    pub http2: bool,
    /// The endpoints take WebSocket upgrades (a Service port's `appProtocol:
    /// kubernetes.io/ws`): only to them does a client's `Upgrade: websocket` pass.
    pub websocket: bool,
    pub ejection: Ejection,
    pub breaker: CircuitBreaker,
    /// What is in flight and open to this Microservice, shared with the upstreams that replace
    /// this one.
    pub limits: Arc<Limits>,
}

#[derive(Debug)]
pub struct Backend {
    /// `None`: a reference that does not resolve; its share of requests is answered 500.
    pub upstream: Option<Arc<Upstream>>,
    pub weight: u32,
    /// Headers changed for requests this backend takes (a Gateway API backendRef's filter).
    pub request_headers: Option<HeaderEdit>,
}

/// A redirect the gateway answers itself, as a route declares it.
#[derive(Debug)]
pub struct Redirect {
    pub scheme: Option<RedirectScheme>,
    pub hostname: Option<String>,
    pub port: Option<u16>,
    pub path: Option<PathRewrite>,
    pub status: http::StatusCode,
}

/// How a filter replaces a request's path.
#[derive(Clone, Debug)]
pub enum PathRewrite {
    Full(String),
    /// The part the entry's `PathPrefix` match matched is replaced.
    Prefix(String),
}

impl PathRewrite {
    /// `path` with the replacement: the whole of it, or the part `matched_prefix` matched.
    pub fn apply(&self, path: &str, matched_prefix: Option<&str>) -> String {
        match self {
            PathRewrite::Full(replacement) => replacement.clone(),
            PathRewrite::Prefix(replacement) => {
                let prefix = matched_prefix.unwrap_or("/").trim_end_matches('/');
                let rest = path.get(prefix.len()..).unwrap_or("");
                let replacement = replacement.trim_end_matches('/');
                match (replacement.is_empty(), rest.is_empty()) {
                    (true, true) => "/".to_owned(),
                    (true, false) => rest.to_owned(),
                    (false, _) => format!("{replacement}{rest}"),
                }
            }
        }
    }
}

/// What a route changes of a request before sending it on.
#[derive(Debug, Default)]
pub struct Rewrite {
    pub hostname: Option<http::HeaderValue>,
    pub path: Option<PathRewrite>,
}

/// Headers a filter sets (replacing), adds (beside the ones there) and removes.
#[derive(Debug, Default)]
pub struct HeaderEdit {
    pub set: Vec<(http::HeaderName, http::HeaderValue)>,
    pub add: Vec<(http::HeaderName, http::HeaderValue)>,
    pub remove: Vec<http::HeaderName>,
}

impl HeaderEdit {
    pub fn apply(&self, headers: &mut http::HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }
}

#[derive(Debug)]
pub struct Route {
    /// `namespace/gateway/route`, for logs and metrics.
    pub id: String,
    /// Set: the route answers with this redirect and has no backends.
    pub redirect: Option<Redirect>,
    pub hostnames: Vec<HostPattern>,
    pub matches: Vec<RequestMatch>,
    pub backends: Vec<Backend>,
    pub total_weight: u32,
    pub timeout: Option<Duration>,
    pub retry: Option<RetryPolicy>,
    pub budget: Arc<RetryBudget>,
    pub metrics: RouteMetrics,
    /// The answer when no backend has weight: 503 for a microgate.dev route, 500 for an
    /// HTTPRoute, as the Gateway API asks.
    pub no_backend: http::StatusCode,
    pub request_headers: Option<HeaderEdit>,
    pub response_headers: Option<HeaderEdit>,
    pub rewrite: Option<Rewrite>,
    /// Backends that get a copy of the route's requests (their answers are dropped).
    pub mirrors: Vec<Mirror>,
    /// Set: the gateway answers CORS preflights and marks answers to allowed origins.
    pub cors: Option<Cors>,
    /// Set: who may call the route and how often (its AccessPolicy).
    pub access: Option<RouteAccess>,
}

/// A route's AccessPolicy, shared by every route that names it, and the route's count of its
/// decisions.
#[derive(Debug)]
pub struct RouteAccess {
    pub control: Arc<AccessControl>,
    pub metrics: AccessMetrics,
}

/// A backend that gets a copy of a share of a route's requests: `numerator` in `denominator`.
#[derive(Debug)]
pub struct Mirror {
    pub upstream: Arc<Upstream>,
    pub numerator: u32,
    /// Never 0.
    pub denominator: u32,
}

/// One of a route's matches as one listener serves it: the listener's hostnames must match too.
/// A route without matches is one entry that takes every request.
#[derive(Debug)]
pub struct Attached {
    /// `namespace/gateway/listener`: on an HTTPS port, a connection takes only the routes of
    /// the listener its TLS server name picked.
    pub listener: Arc<str>,
    pub listener_hostnames: Vec<HostPattern>,
    pub route: Arc<Route>,
    /// Which of `route.matches` this entry is (`None`: the route has none).
    pub matcher: Option<usize>,
}

impl Attached {
    pub fn request_match(&self) -> Option<&RequestMatch> {
        self.matcher.and_then(|i| self.route.matches.get(i))
    }

    /// The Gateway API's precedence, most specific first: an exact hostname before a wildcard,
    /// an exact path before a prefix, a longer prefix before a shorter, a prefix before a regular
    /// expression, a method before none, more header matches, then more query parameter matches
    /// before fewer. Equal entries keep their declaration order.
    pub(crate) fn specificity(&self) -> (u8, u8, usize, bool, usize, usize) {
        let host = |patterns: &[HostPattern]| {
            patterns
                .iter()
                .map(|p| match p {
                    HostPattern::Exact(_) => 2,
                    HostPattern::Wildcard(_) | HostPattern::Subdomains(_) => 1,
                })
                .max()
                .unwrap_or(0)
        };
        let hosts = host(&self.route.hostnames).max(host(&self.listener_hostnames));
        let request = self.request_match();
        let (kind, length) = match request.and_then(|m| m.path.as_ref()) {
            Some(PathMatcher::Exact(value)) => (3, value.len()),
            Some(PathMatcher::Prefix(value)) => (2, value.trim_end_matches('/').len()),
            Some(PathMatcher::Regex(_)) => (1, 0),
            None => (0, 0),
        };
        let method = request.is_some_and(|m| m.method.is_some());
        let headers = request.map(|m| m.headers.len()).unwrap_or(0);
        let query = request.map(|m| m.query.len()).unwrap_or(0);
        (hosts, kind, length, method, headers, query)
    }
}

/// Everything the data plane needs, per listener port, routes in the order they are tried.
#[derive(Debug, Default)]
pub struct RouteTable {
    pub listeners: BTreeMap<SocketAddr, Vec<Attached>>,
    /// The ports that terminate TLS, with their HTTPS listeners. A port not here is plain HTTP.
    pub tls: BTreeMap<SocketAddr, Arc<TlsPort>>,
    /// Listeners not served, by `namespace/gateway/listener`, and why.
    pub not_served: BTreeMap<String, String>,
    /// The listeners that believe some proxies' `X-Forwarded-For`, by port, with their ids.
    /// Empty unless some listener sets `clientIPDetection`.
    pub(crate) trusted_proxies: BTreeMap<SocketAddr, Vec<(Arc<str>, TrustedProxies)>>,
    /// The most client connections each port holds open at once: the sum of its listeners'.
    pub max_connections: BTreeMap<SocketAddr, usize>,
    /// The hostnames of the plain-HTTP listeners of each address that has listeners with
    /// different hostnames: a request there takes only the routes of the listeners whose
    /// hostnames take its host best (the Gateway API's listener isolation).
    pub isolated: BTreeMap<SocketAddr, Vec<Vec<HostPattern>>>,
    /// The listeners whose path normalization is not the default, by port, with their ids.
    pub(crate) path_policies: BTreeMap<SocketAddr, Vec<(Arc<str>, PathPolicy)>>,
    /// The routes that name each AccessPolicy (`namespace/name`), by id.
    pub access_policies: BTreeMap<String, Vec<String>>,
    pub(crate) upstreams: HashMap<UpstreamKey, Arc<Upstream>>,
    pub(crate) budgets: HashMap<String, Arc<RetryBudget>>,
    /// Each HTTPS listener's session cache, kept across tables so that sessions stay resumable.
    pub(crate) tls_sessions: HashMap<Arc<str>, Arc<dyn StoresServerSessions>>,
}

impl RouteTable {
    /// Every endpoint of every Microservice the table routes to.
    pub fn endpoints(&self) -> impl Iterator<Item = &Arc<EndpointState>> {
        self.upstreams
            .values()
            .flat_map(|upstream| upstream.pool.endpoints())
    }

    /// The proxies whose `X-Forwarded-For` the listener of a request believes: on `port`, the
    /// HTTPS listener `tls_listener`, or the port's one plain-HTTP listener.
    pub fn trusted_proxies(&self, local: SocketAddr, tls_listener: Option<&str>) -> Option<&TrustedProxies> {
        if self.trusted_proxies.is_empty() {
            return None;
        }
        let listeners = self.trusted_proxies.get(&local)?;
        let found = match tls_listener {
            Some(id) => listeners.iter().find(|(listener, _)| &**listener == id),
            None => listeners.first(),
        };
        found.map(|(_, proxies)| proxies)
    }

    /// How the listener of a request normalizes its path: on `port`, the HTTPS listener
    /// `tls_listener`, or the port's one plain-HTTP listener.
    pub fn path_policy(&self, local: SocketAddr, tls_listener: Option<&str>) -> PathPolicy {
        if self.path_policies.is_empty() {
            return PathPolicy::default();
        }
        let Some(listeners) = self.path_policies.get(&local) else {
            return PathPolicy::default();
        };
        let found = match tls_listener {
            Some(id) => listeners.iter().find(|(listener, _)| &**listener == id),
            None => listeners.first(),
        };
        found.map(|(_, policy)| *policy).unwrap_or_default()
    }

    /// The HTTPS listener `id`, if it is served.
    pub fn tls_listener(&self, id: &str) -> Option<&TlsListener> {
        self.tls
            .values()
            .flat_map(|port| port.listeners.iter())
            .find(|listener| &*listener.id == id)
    }
}
