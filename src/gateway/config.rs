//! Compiles Gateway resources, Microservice traffic policies and the registry's endpoints into
//! one immutable [`RouteTable`]. The gateway swaps in a whole new table per change, so a request
//! always sees one consistent configuration.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::Duration,
};

use kube::ResourceExt;

use rustls::server::{ServerSessionMemoryCache, StoresServerSessions};

use super::{
    balance::{EndpointState, Pool},
    client_ip::TrustedProxies,
    metrics::{GatewayMetrics, RouteMetrics},
    outlier::Ejection,
    path::{Ambiguous, PathPolicy},
    retry::RetryBudget,
    router::{HostPattern, PathMatcher, RequestMatch, method_of},
    tls::{self, CertificateStore, SecretKey, TlsListener, TlsPort},
    upstream::{CircuitBreaker, Limits},
};
use crate::{
    api::{
        Gateway,
        gateway::{
            AmbiguousPath, ChangedPath, Listener, ListenerProtocol, PathNormalization, RedirectScheme,
        },
        microservice::Protocol,
        policy::{LoadBalancerPolicy, RetryPolicy, TrafficPolicy},
    },
    discovery::{Registry, ServiceKey},
};

/// TLS sessions each HTTPS listener remembers for resumption.
const TLS_SESSIONS_PER_LISTENER: usize = 1024;

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

/// One Microservice as routes send to it: its endpoints' pool and its hash key.
#[derive(Debug)]
pub struct Upstream {
    pub service: ServiceKey,
    pub pool: Pool,
    pub hash_on: Option<HashOn>,
    /// The Microservice speaks HTTP/2 (protocol HTTP2 or GRPC): cleartext, prior knowledge.
    pub http2: bool,
    pub ejection: Ejection,
    pub breaker: CircuitBreaker,
    /// What is in flight and open to this Microservice, shared with the upstreams that replace
    /// this one.
    pub limits: Arc<Limits>,
}

#[derive(Debug)]
pub struct Backend {
    pub upstream: Arc<Upstream>,
    pub weight: u32,
}

/// A redirect the gateway answers itself, as a route declares it.
#[derive(Debug)]
pub struct Redirect {
    pub scheme: Option<RedirectScheme>,
    pub hostname: Option<String>,
    pub port: Option<u16>,
    pub status: http::StatusCode,
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
    fn specificity(&self) -> (u8, u8, usize, bool, usize, usize) {
        let host = |patterns: &[HostPattern]| {
            patterns
                .iter()
                .map(|p| match p {
                    HostPattern::Exact(_) => 2,
                    HostPattern::Wildcard(_) => 1,
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
    pub listeners: BTreeMap<u16, Vec<Attached>>,
    /// The ports that terminate TLS, with their HTTPS listeners. A port not here is plain HTTP.
    pub tls: BTreeMap<u16, Arc<TlsPort>>,
    /// Listeners not served, by `namespace/gateway/listener`, and why.
    pub not_served: BTreeMap<String, String>,
    /// The listeners that believe some proxies' `X-Forwarded-For`, by port, with their ids.
    /// Empty unless some listener sets `clientIPDetection`.
    trusted_proxies: BTreeMap<u16, Vec<(Arc<str>, TrustedProxies)>>,
    /// The most client connections each port holds open at once: the sum of its listeners'.
    pub max_connections: BTreeMap<u16, usize>,
    /// The listeners whose path normalization is not the default, by port, with their ids.
    path_policies: BTreeMap<u16, Vec<(Arc<str>, PathPolicy)>>,
    upstreams: HashMap<ServiceKey, Arc<Upstream>>,
    budgets: HashMap<String, Arc<RetryBudget>>,
    /// Each HTTPS listener's session cache, kept across tables so that sessions stay resumable.
    tls_sessions: HashMap<Arc<str>, Arc<dyn StoresServerSessions>>,
}

impl RouteTable {
    pub fn upstream(&self, key: &ServiceKey) -> Option<&Arc<Upstream>> {
        self.upstreams.get(key)
    }

    /// Every endpoint of every Microservice the table routes to.
    pub fn endpoints(&self) -> impl Iterator<Item = &Arc<EndpointState>> {
        self.upstreams
            .values()
            .flat_map(|upstream| upstream.pool.endpoints())
    }

    /// The proxies whose `X-Forwarded-For` the listener of a request believes: on `port`, the
    /// HTTPS listener `tls_listener`, or the port's one plain-HTTP listener.
    pub fn trusted_proxies(&self, port: u16, tls_listener: Option<&str>) -> Option<&TrustedProxies> {
        if self.trusted_proxies.is_empty() {
            return None;
        }
        let listeners = self.trusted_proxies.get(&port)?;
        let found = match tls_listener {
            Some(id) => listeners.iter().find(|(listener, _)| &**listener == id),
            None => listeners.first(),
        };
        found.map(|(_, proxies)| proxies)
    }

    /// How the listener of a request normalizes its path: on `port`, the HTTPS listener
    /// `tls_listener`, or the port's one plain-HTTP listener.
    pub fn path_policy(&self, port: u16, tls_listener: Option<&str>) -> PathPolicy {
        if self.path_policies.is_empty() {
            return PathPolicy::default();
        }
        let Some(listeners) = self.path_policies.get(&port) else {
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

/// `namespace/gateway/listener`: how the table, connections and status name a listener.
pub fn listener_id(gateway: &Gateway, listener: &Listener) -> String {
    format!(
        "{}/{}/{}",
        gateway.namespace().unwrap_or_default(),
        gateway.name_any(),
        listener.name
    )
}

/// The Secrets the HTTPS listeners of `gateways` name.
pub fn certificate_refs(gateways: &[Arc<Gateway>]) -> Vec<SecretKey> {
    gateways
        .iter()
        .flat_map(|gateway| {
            let namespace = gateway.namespace().unwrap_or_default();
            gateway
                .spec
                .listeners
                .iter()
                .filter_map(|l| l.tls.as_ref())
                .flat_map(|tls| tls.certificate_refs.iter())
                .map(move |r| SecretKey {
                    namespace: namespace.clone(),
                    name: r.name.clone(),
                })
        })
        .collect()
}

/// The ports of a table being compiled, by protocol.
#[derive(Default)]
struct Ports {
    plain: std::collections::BTreeSet<u16>,
    tls: BTreeMap<u16, TlsPort>,
}

/// Places the listener `id` on its port: a plain-HTTP port, or one HTTPS listener among those
/// of its port. Fails with the reason the listener cannot be served.
fn place_listener(
    ports: &mut Ports,
    id: &Arc<str>,
    namespace: &str,
    listener: &Listener,
    certificates: &CertificateStore,
    sessions: &mut HashMap<Arc<str>, Arc<dyn StoresServerSessions>>,
    previous: Option<&RouteTable>,
) -> Result<u16, String> {
    let port = u16::try_from(listener.port).map_err(|_| format!("port {} is out of range", listener.port))?;
    match listener.protocol {
        ListenerProtocol::Http if ports.tls.contains_key(&port) => {
            return Err(format!("port {port} already serves HTTPS for another listener"));
        }
        ListenerProtocol::Https if ports.plain.contains(&port) => {
            return Err(format!(
                "port {port} already serves plain HTTP for another listener"
            ));
        }
        ListenerProtocol::Http => {
            ports.plain.insert(port);
            return Ok(port);
        }
        ListenerProtocol::Https => {}
    }
    let tls = listener
        .tls
        .as_ref()
        .ok_or_else(|| "an HTTPS listener needs tls.certificateRefs".to_owned())?;
    let keys: Vec<_> = tls
        .certificate_refs
        .iter()
        .filter_map(|r| {
            certificates.certificate(&SecretKey {
                namespace: namespace.to_owned(),
                name: r.name.clone(),
            })
        })
        .collect();
    if keys.is_empty() {
        return Err("none of its certificate Secrets has held a valid certificate".to_owned());
    }
    let hostnames: Vec<HostPattern> = listener.hostnames.iter().map(|h| HostPattern::parse(h)).collect();
    let port_listeners = ports.tls.entry(port).or_default();
    if let Some(taken) = port_listeners.listeners.iter().find(|other| {
        (other.hostnames.is_empty() && hostnames.is_empty())
            || other.hostnames.iter().any(|h| hostnames.contains(h))
    }) {
        return Err(format!(
            "listener {} already serves these hostnames on port {port}",
            taken.id
        ));
    }
    let session_cache = previous
        .and_then(|p| p.tls_sessions.get(id))
        .cloned()
        .unwrap_or_else(|| ServerSessionMemoryCache::new(TLS_SESSIONS_PER_LISTENER));
    sessions.insert(id.clone(), session_cache.clone());
    // An unchanged listener keeps its configuration.
    let reused = previous
        .and_then(|p| p.tls_listener(id))
        .filter(|old| {
            old.min_version == tls.min_version
                && old.certificates.len() == keys.len()
                && old.certificates.iter().zip(&keys).all(|(a, b)| Arc::ptr_eq(a, b))
        })
        .map(|old| old.config.clone());
    let config = match reused {
        Some(config) => config,
        None => tls::server_config(keys.clone(), tls.min_version, session_cache)
            .map_err(|error| format!("TLS configuration refused: {error}"))?,
    };
    port_listeners.listeners.push(TlsListener {
        id: id.clone(),
        hostnames,
        config,
        certificates: keys,
        min_version: tls.min_version,
    });
    Ok(port)
}

/// Builds the table. `services` holds what each known Microservice's spec says; `previous`
/// lends its endpoint state and retry budgets to what stays.
pub fn compile(
    gateways: &[Arc<Gateway>],
    services: &HashMap<ServiceKey, ServiceSettings>,
    registry: &Registry,
    metrics: &GatewayMetrics,
    certificates: &CertificateStore,
    previous: Option<&RouteTable>,
) -> RouteTable {
    let mut table = RouteTable::default();
    let mut ports = Ports::default();
    let mut gateways: Vec<_> = gateways.iter().collect();
    gateways.sort_by_key(|g| (g.namespace(), g.name_any()));
    for gateway in gateways {
        let namespace = gateway.namespace().unwrap_or_default();
        let spec = &gateway.spec;
        // The listeners served, with their ids and ports; earlier Gateways keep a contested port.
        let mut served = Vec::with_capacity(spec.listeners.len());
        for listener in &spec.listeners {
            let id: Arc<str> = listener_id(gateway, listener).into();
            let trusted = match listener
                .client_ip_detection
                .as_ref()
                .and_then(|d| d.x_forwarded_for.as_ref())
                .map(TrustedProxies::parse)
                .transpose()
            {
                Ok(trusted) => trusted,
                Err(error) => {
                    let why = format!("clientIPDetection.xForwardedFor: {error}");
                    tracing::warn!(listener = %id, %why, "listener not served");
                    table.not_served.insert(id.to_string(), why);
                    continue;
                }
            };
            match place_listener(
                &mut ports,
                &id,
                &namespace,
                listener,
                certificates,
                &mut table.tls_sessions,
                previous,
            ) {
                Ok(port) => {
                    // A listener with no routes still listens (and answers 404).
                    table.listeners.entry(port).or_default();
                    let limit = listener
                        .max_connections
                        .and_then(|n| usize::try_from(n).ok())
                        .filter(|n| *n > 0)
                        .unwrap_or(DEFAULT_MAX_CONNECTIONS);
                    *table.max_connections.entry(port).or_default() += limit;
                    if let Some(trusted) = trusted {
                        table
                            .trusted_proxies
                            .entry(port)
                            .or_default()
                            .push((id.clone(), trusted));
                    }
                    let path_policy = listener
                        .path_normalization
                        .as_ref()
                        .map(path_policy)
                        .unwrap_or_default();
                    if path_policy != PathPolicy::default() {
                        table
                            .path_policies
                            .entry(port)
                            .or_default()
                            .push((id.clone(), path_policy));
                    }
                    served.push((id, port, listener));
                }
                Err(why) => {
                    tracing::warn!(listener = %id, %why, "listener not served");
                    table.not_served.insert(id.to_string(), why);
                }
            }
        }
        for route in &spec.routes {
            let id = format!("{namespace}/{}/{}", gateway.name_any(), route.name);
            // A route with an invalid regular expression is not served (the controller says so in
            // the Gateway's Accepted condition): dropping just that match could widen the route.
            let Some(matches) = route
                .matches
                .iter()
                .map(compile_match)
                .collect::<Option<Vec<_>>>()
            else {
                tracing::warn!(route = %id, "not served: a path regular expression does not compile");
                continue;
            };
            let retry = route
                .retry
                .clone()
                .or_else(|| spec.defaults.as_ref().and_then(|d| d.retry.clone()));
            let budget = retry.as_ref().map(|r| {
                previous
                    .and_then(|p| p.budgets.get(&id))
                    .cloned()
                    .unwrap_or_else(|| {
                        let percent = u32::try_from(r.budget.percent).unwrap_or(0);
                        let floor = u32::try_from(r.budget.min_per_second).unwrap_or(0);
                        Arc::new(RetryBudget::new(percent, floor))
                    })
            });
            let budget = budget.unwrap_or_else(|| Arc::new(RetryBudget::new(0, 0)));
            table.budgets.insert(id.clone(), budget.clone());
            let backends: Vec<Backend> = route
                .backends
                .iter()
                .filter(|b| b.weight > 0)
                .map(|b| {
                    let key = ServiceKey::new(&namespace, &b.microservice);
                    let upstream = table
                        .upstreams
                        .entry(key.clone())
                        .or_insert_with(|| Arc::new(upstream(&key, services.get(&key), registry, previous)))
                        .clone();
                    Backend {
                        upstream,
                        weight: u32::try_from(b.weight).unwrap_or(0),
                    }
                })
                .collect();
            let route_metrics = metrics.route(&id);
            let redirect = route.redirect.as_ref().map(|r| Redirect {
                scheme: r.scheme,
                hostname: r.hostname.clone(),
                port: r.port.and_then(|p| u16::try_from(p).ok()),
                status: u16::try_from(r.status_code)
                    .ok()
                    .and_then(|code| http::StatusCode::from_u16(code).ok())
                    .filter(http::StatusCode::is_redirection)
                    .unwrap_or(http::StatusCode::FOUND),
            });
            let compiled = Arc::new(Route {
                metrics: route_metrics,
                id,
                redirect,
                hostnames: route.hostnames.iter().map(|h| HostPattern::parse(h)).collect(),
                matches,
                total_weight: backends.iter().map(|b| b.weight).sum(),
                backends,
                timeout: route
                    .timeout
                    .or_else(|| spec.defaults.as_ref().and_then(|d| d.timeout))
                    .map(|d| d.get()),
                retry,
                budget,
            });
            for (listener_id, port, listener) in &served {
                if !route.listeners.is_empty() && !route.listeners.contains(&listener.name) {
                    continue;
                }
                let matchers: Vec<Option<usize>> = if compiled.matches.is_empty() {
                    vec![None]
                } else {
                    (0..compiled.matches.len()).map(Some).collect()
                };
                for matcher in matchers {
                    table.listeners.entry(*port).or_default().push(Attached {
                        listener: listener_id.clone(),
                        listener_hostnames: listener
                            .hostnames
                            .iter()
                            .map(|h| HostPattern::parse(h))
                            .collect(),
                        route: compiled.clone(),
                        matcher,
                    });
                }
            }
        }
    }
    table.tls = ports
        .tls
        .into_iter()
        .map(|(port, listeners)| (port, Arc::new(listeners)))
        .collect();
    for entries in table.listeners.values_mut() {
        // A stable sort: equally specific entries keep the Gateways' and routes' order.
        entries.sort_by_key(|entry| std::cmp::Reverse(entry.specificity()));
    }
    table
}

/// A listener's `pathNormalization` as the request path applies it.
fn path_policy(spec: &PathNormalization) -> PathPolicy {
    let action = |a: AmbiguousPath| match a {
        AmbiguousPath::Reject => Ambiguous::Reject,
        AmbiguousPath::Keep => Ambiguous::Keep,
    };
    PathPolicy {
        escaped_slashes: action(spec.escaped_slashes),
        encoded_dots: action(spec.encoded_dot_segments),
        path_parameters: action(spec.path_parameters),
        merge_slashes: spec.merge_slashes,
        redirect_changed: spec.changed_path == ChangedPath::Redirect,
    }
}

/// What the gateway needs of a Microservice's spec.
#[derive(Clone, Debug, Default)]
pub struct ServiceSettings {
    pub traffic: TrafficPolicy,
    pub protocol: Protocol,
}

fn upstream(
    key: &ServiceKey,
    settings: Option<&ServiceSettings>,
    registry: &Registry,
    previous: Option<&RouteTable>,
) -> Upstream {
    let defaults = ServiceSettings::default();
    let settings = settings.unwrap_or(&defaults);
    let policy = &settings.traffic;
    let http2 = matches!(settings.protocol, Protocol::Http2 | Protocol::Grpc);
    let snapshot = registry.snapshot(key);
    let ready: Vec<_> = snapshot.ready().cloned().collect();
    let previous_pool = previous.and_then(|p| p.upstreams.get(key)).map(|u| &u.pool);
    let hash_on = match (
        &policy.load_balancer.policy,
        &policy.load_balancer.consistent_hash,
    ) {
        (LoadBalancerPolicy::ConsistentHash, Some(hash)) => {
            if let Some(header) = hash
                .header
                .as_deref()
                .and_then(|h| http::HeaderName::try_from(h).ok())
            {
                Some(HashOn::Header(header))
            } else if let Some(cookie) = &hash.cookie {
                Some(HashOn::Cookie(cookie.clone()))
            } else {
                Some(HashOn::SourceIp)
            }
        }
        _ => None,
    };
    let limits = previous
        .and_then(|p| p.upstreams.get(key))
        .map(|u| u.limits.clone())
        .unwrap_or_default();
    Upstream {
        service: key.clone(),
        pool: Pool::new(policy.load_balancer.policy, &ready, previous_pool, &limits),
        hash_on,
        http2,
        ejection: Ejection::from(&policy.outlier_detection),
        breaker: CircuitBreaker::from(&policy.circuit_breaker),
        limits,
    }
}

/// A route's match as the router uses it; `None` when its regular expression is invalid (the
/// controller reports that on the Gateway), so that it never matches.
fn compile_match(m: &crate::api::gateway::RouteMatch) -> Option<RequestMatch> {
    let path = match &m.path {
        Some(p) => Some(PathMatcher::compile(p.kind, &p.value).ok()?),
        None => None,
    };
    Some(RequestMatch {
        path,
        query: m
            .query_params
            .iter()
            .map(|q| (q.name.clone(), q.value.clone()))
            .collect(),
        method: m.method.map(method_of),
        headers: m
            .headers
            .iter()
            .filter_map(|h| {
                Some((
                    http::HeaderName::try_from(h.name.to_ascii_lowercase()).ok()?,
                    h.value.clone(),
                ))
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table of one Gateway `ns/gw` with `spec`, no endpoints and no certificates.
    fn compile_spec(spec: serde_json::Value) -> RouteTable {
        let gateway: Gateway = serde_json::from_value(serde_json::json!({
            "apiVersion": "microgate.dev/v1alpha1", "kind": "Gateway",
            "metadata": {"name": "gw", "namespace": "ns"},
            "spec": spec,
        }))
        .expect("a valid Gateway");
        let metrics = GatewayMetrics::register(&mut Default::default());
        compile(
            &[Arc::new(gateway)],
            &HashMap::new(),
            &Registry::default(),
            &metrics,
            &CertificateStore::default(),
            None,
        )
    }

    fn table(routes: serde_json::Value) -> RouteTable {
        compile_spec(serde_json::json!({"listeners": [{"name": "http", "port": 8080}], "routes": routes}))
    }

    fn order(table: &RouteTable) -> Vec<String> {
        table.listeners[&8080]
            .iter()
            .map(|e| {
                format!(
                    "{}#{}",
                    e.route.id.rsplit('/').next().unwrap_or_default(),
                    e.matcher.map_or(-1, |m| m as i64)
                )
            })
            .collect()
    }

    #[test]
    fn entries_are_tried_most_specific_first_and_in_declaration_order_among_equals() {
        let table = table(serde_json::json!([
            {"name": "catch-all", "backends": [{"microservice": "web"}]},
            {"name": "api", "matches": [{"path": {"value": "/api"}}], "backends": [{"microservice": "api"}]},
            {"name": "orders", "matches": [
                {"path": {"value": "/api/orders"}},
                {"path": {"type": "Exact", "value": "/api"}}], "backends": [{"microservice": "orders"}]},
            {"name": "canary", "matches": [{"path": {"value": "/api/orders"},
                "headers": [{"name": "x-canary", "value": "1"}]}], "backends": [{"microservice": "canary"}]},
            {"name": "writes", "matches": [{"path": {"value": "/api/orders"}, "method": "POST"}],
                "backends": [{"microservice": "orders"}]},
            {"name": "second-api", "matches": [{"path": {"value": "/api/"}}], "backends": [{"microservice": "api"}]},
        ]));
        assert_eq!(
            order(&table),
            [
                "orders#1",
                "writes#0",
                "canary#0",
                "orders#0",
                "api#0",
                "second-api#0",
                "catch-all#-1"
            ]
        );
    }

    #[test]
    fn listener_settings_are_compiled_per_port_and_a_bad_one_leaves_its_listener_out() {
        let table = compile_spec(serde_json::json!({"listeners": [
            {"name": "lb", "port": 8080, "maxConnections": 10,
                "clientIPDetection": {"xForwardedFor": {"trustedCIDRs": ["10.0.0.0/8"]}}},
            {"name": "plain", "port": 8081, "pathNormalization": {"escapedSlashes": "Keep",
                "encodedDotSegments": "Reject", "pathParameters": "Reject",
                "mergeSlashes": false, "changedPath": "Redirect"}},
            {"name": "bad", "port": 8082,
                "clientIPDetection": {"xForwardedFor": {"trustedCIDRs": ["not-a-cidr"]}}},
        ]}));
        assert_eq!(
            table.trusted_proxies(8080, None),
            Some(&TrustedProxies::Cidrs(vec![
                "10.0.0.0/8".parse().expect("a CIDR")
            ]))
        );
        assert_eq!(table.trusted_proxies(8081, None), None);
        assert_eq!(table.path_policy(8080, None), PathPolicy::default());
        assert_eq!(
            table.path_policy(8081, None),
            PathPolicy {
                escaped_slashes: Ambiguous::Keep,
                merge_slashes: false,
                redirect_changed: true,
                ..PathPolicy::default()
            }
        );
        assert_eq!(table.max_connections.get(&8080), Some(&10));
        assert_eq!(table.max_connections.get(&8081), Some(&DEFAULT_MAX_CONNECTIONS));
        assert!(!table.listeners.contains_key(&8082));
        assert!(
            table.not_served["ns/gw/bad"].contains("not-a-cidr"),
            "{:?}",
            table.not_served
        );
    }
}
