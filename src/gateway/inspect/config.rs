//! `/debug/config`: the whole live route table as JSON — ports and their listeners, every
//! route with its matches, hostnames, backends and weights, timeout, retry and filters, and
//! every upstream with its balancing and health policy. Never a secret: TLS listeners show how
//! many certificates they hold, not what, and header values a filter sets under a name that
//! suggests a credential are shown as `<redacted>`.

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc};

use serde::Serialize;

use crate::{
    api::{
        duration::Duration,
        policy::{LoadBalancerPolicy, RetryPolicy},
    },
    gateway::{
        http::host::HostPattern,
        policy::{access::Authenticator, rate_limit::keyed::LimitKey},
        table::{
            Backend, HeaderEdit, PathRewrite, Route, RouteTable, Upstream, UpstreamKey,
            matching::{PathMatcher, RequestMatch},
        },
    },
};

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigView {
    /// The registry version the table was read at (see `/registry`).
    pub version: u64,
    pub ports: Vec<PortView>,
    /// Listeners the table does not serve, and why.
    pub not_served: BTreeMap<String, String>,
    /// Every route, once, in the order the first port tries them.
    pub routes: Vec<RouteView>,
    pub upstreams: Vec<UpstreamConfig>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PortView {
    pub address: SocketAddr,
    pub tls: bool,
    /// The HTTPS listeners of a TLS port, chosen by the client's server name.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tls_listeners: Vec<TlsListenerView>,
    pub max_connections: Option<usize>,
    /// Plain-HTTP listeners of different hostnames share it: a request takes only routes of
    /// the listeners whose hostnames take its host best.
    pub listener_isolation: bool,
    /// The entries in the order they are tried: a route's match as one listener serves it.
    pub entries: Vec<EntryView>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TlsListenerView {
    pub id: String,
    pub hostnames: Vec<String>,
    pub min_version: String,
    pub certificates: usize,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EntryView {
    pub listener: String,
    pub listener_hostnames: Vec<String>,
    pub route: String,
    /// Which of the route's matches (`None`: it has none and takes every request).
    #[serde(rename = "match")]
    pub matcher: Option<usize>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteView {
    pub id: String,
    pub hostnames: Vec<String>,
    pub matches: Vec<MatchView>,
    pub backends: Vec<BackendView>,
    pub timeout: Option<Duration>,
    pub retry: Option<RetryPolicy>,
    /// The status answered when no backend has weight.
    pub no_backend_status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redirect: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_headers: Option<HeaderEditView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_headers: Option<HeaderEditView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cors: Option<String>,
    /// The AccessPolicy the route names, as enforced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_policy: Option<AccessView>,
}

/// An AccessPolicy as a route enforces it: what authenticates, whether rules authorize; never
/// a key or a password.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AccessView {
    pub id: String,
    /// `ApiKeys in header x-api-key`, `Basic`, `JWT`.
    pub authentication: Vec<String>,
    /// Authorization rules and what happens when none decides.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authorization: Option<String>,
    /// Set: the policy cannot be enforced, and every request is refused (500), for this reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unenforceable: Option<String>,
    /// `name: 100 per 1s (burst 20), by client IP`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rate_limits: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MatchView {
    /// `PathPrefix /api`, `Exact /a`, `RegularExpression /v[0-9]+/.*`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<(String, String)>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub query: Vec<(String, String)>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendView {
    /// `Microservice ns/name`, `Service ns/name:port`; `None`: a reference that does not
    /// resolve (its share is answered 500).
    pub upstream: Option<String>,
    pub weight: u32,
    /// Its share of the route's requests, in percent.
    pub share: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_headers: Option<HeaderEditView>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HeaderEditView {
    pub set: Vec<(String, String)>,
    pub add: Vec<(String, String)>,
    pub remove: Vec<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UpstreamConfig {
    pub upstream: String,
    pub load_balancer: LoadBalancerPolicy,
    pub http2: bool,
    pub websocket: bool,
    /// Consecutive failures that eject an endpoint (0: never), for `baseEjectionTime` times the
    /// ejections so far, at most `maxEjectionPercent` of the endpoints at once.
    pub consecutive_failures: u32,
    pub base_ejection_time: Duration,
    pub max_ejection_percent: u32,
    pub max_connections: usize,
    pub max_pending_requests: usize,
    pub max_requests: usize,
    /// The endpoints in rotation.
    pub endpoints: usize,
}

/// The whole of `table`, read at registry version `version`.
pub fn view(table: &RouteTable, version: u64) -> ConfigView {
    let mut routes: Vec<RouteView> = Vec::new();
    let mut seen: Vec<*const Route> = Vec::new();
    let ports = table
        .listeners
        .iter()
        .map(|(address, entries)| {
            let tls_port = table.tls.get(address);
            for entry in entries {
                if !seen.contains(&Arc::as_ptr(&entry.route)) {
                    seen.push(Arc::as_ptr(&entry.route));
                    routes.push(route_view(table, &entry.route));
                }
            }
            PortView {
                address: *address,
                tls: tls_port.is_some(),
                tls_listeners: tls_port
                    .iter()
                    .flat_map(|port| port.listeners.iter())
                    .map(|l| TlsListenerView {
                        id: l.id.to_string(),
                        hostnames: hostnames(&l.hostnames),
                        min_version: format!("{:?}", l.min_version),
                        certificates: l.certificates.len(),
                    })
                    .collect(),
                max_connections: table.max_connections.get(address).copied(),
                listener_isolation: table.isolated.contains_key(address),
                entries: entries
                    .iter()
                    .map(|e| EntryView {
                        listener: e.listener.to_string(),
                        listener_hostnames: hostnames(&e.listener_hostnames),
                        route: e.route.id.clone(),
                        matcher: e.matcher,
                    })
                    .collect(),
            }
        })
        .collect();
    let mut upstreams: Vec<UpstreamConfig> = table
        .upstreams
        .iter()
        .map(|(key, upstream)| UpstreamConfig {
            upstream: upstream_name(key),
            load_balancer: upstream.pool.policy(),
            http2: upstream.http2,
            websocket: upstream.websocket,
            consecutive_failures: upstream.ejection.consecutive_failures,
            base_ejection_time: Duration::from(upstream.ejection.base),
            max_ejection_percent: upstream.ejection.max_percent,
            max_connections: upstream.breaker.max_connections,
            max_pending_requests: upstream.breaker.max_pending_requests,
            max_requests: upstream.breaker.max_requests,
            endpoints: upstream.pool.len(),
        })
        .collect();
    upstreams.sort_by(|a, b| a.upstream.cmp(&b.upstream));
    ConfigView {
        version,
        ports,
        not_served: table.not_served.clone(),
        routes,
        upstreams,
    }
}

pub fn route_view(table: &RouteTable, route: &Route) -> RouteView {
    RouteView {
        id: route.id.clone(),
        hostnames: hostnames(&route.hostnames),
        matches: route.matches.iter().map(match_view).collect(),
        backends: backends(table, route),
        timeout: route.timeout.map(Duration::from),
        retry: route.retry.clone(),
        no_backend_status: route.no_backend.as_u16(),
        redirect: route.redirect.as_ref().map(|r| {
            let mut to = Vec::new();
            if let Some(scheme) = r.scheme {
                to.push(format!("scheme {scheme:?}").to_lowercase());
            }
            if let Some(host) = &r.hostname {
                to.push(format!("host {host}"));
            }
            if let Some(port) = r.port {
                to.push(format!("port {port}"));
            }
            if let Some(path) = &r.path {
                to.push(format!("path {}", path_rewrite(path)));
            }
            format!("{} to {}", r.status.as_u16(), to.join(", "))
        }),
        request_headers: route.request_headers.as_ref().map(header_edit),
        response_headers: route.response_headers.as_ref().map(header_edit),
        rewrite: route.rewrite.as_ref().map(|r| {
            let mut parts = Vec::new();
            if let Some(host) = r.hostname.as_ref().and_then(|h| h.to_str().ok()) {
                parts.push(format!("host {host}"));
            }
            if let Some(path) = &r.path {
                parts.push(format!("path {}", path_rewrite(path)));
            }
            parts.join(", ")
        }),
        mirrors: route
            .mirrors
            .iter()
            .map(|m| {
                format!(
                    "{} ({} in {})",
                    upstream_label(table, &m.upstream),
                    m.numerator,
                    m.denominator
                )
            })
            .collect(),
        cors: route.cors.as_ref().map(|c| format!("{c:?}")),
        access_policy: route.access.as_ref().map(|access| {
            let control = &access.control;
            AccessView {
                id: control.id.to_string(),
                authentication: control
                    .authentication
                    .iter()
                    .map(|a| match a {
                        Authenticator::ApiKeys(keys) => format!("ApiKeys in header {}", keys.header),
                        Authenticator::Basic(_) => "Basic".to_owned(),
                        Authenticator::Jwt(_) => "JWT".to_owned(),
                    })
                    .collect(),
                authorization: control.authorization.as_ref().map(|a| {
                    format!(
                        "{} rules, else {}",
                        a.rules.len(),
                        if a.default_allow { "allow" } else { "deny" }
                    )
                }),
                unenforceable: control.unenforceable.clone(),
                rate_limits: control
                    .limits
                    .iter()
                    .map(|l| {
                        let key = match &l.key {
                            LimitKey::ClientIp => "client IP".to_owned(),
                            LimitKey::Header(name) => format!("header {name}"),
                            LimitKey::Claim(claim) => format!("claim {claim}"),
                        };
                        format!(
                            "{}: {} per {} (burst {}), by {key}",
                            l.name,
                            l.limit.requests,
                            Duration::from(l.limit.per),
                            l.limit.burst
                        )
                    })
                    .collect(),
            }
        }),
    }
}

pub fn backends(table: &RouteTable, route: &Route) -> Vec<BackendView> {
    route
        .backends
        .iter()
        .map(|b| backend_view(table, route, b))
        .collect()
}

fn backend_view(table: &RouteTable, route: &Route, backend: &Backend) -> BackendView {
    BackendView {
        upstream: backend.upstream.as_ref().map(|u| upstream_label(table, u)),
        weight: backend.weight,
        share: if route.total_weight == 0 {
            0.0
        } else {
            f64::from(backend.weight) * 100.0 / f64::from(route.total_weight)
        },
        request_headers: backend.request_headers.as_ref().map(header_edit),
    }
}

/// `Microservice ns/name` or `Service ns/name:port`: `upstream` as `table` keys it.
pub fn upstream_label(table: &RouteTable, upstream: &Arc<Upstream>) -> String {
    table
        .upstreams
        .iter()
        .find(|(_, u)| Arc::ptr_eq(u, upstream))
        .map(|(key, _)| upstream_name(key))
        .unwrap_or_else(|| upstream.service.to_string())
}

pub fn upstream_name(key: &UpstreamKey) -> String {
    match key {
        UpstreamKey::Microservice(service) => format!("Microservice {service}"),
        UpstreamKey::ServicePort(service, port) => format!("Service {service}:{port}"),
    }
}

pub fn hostnames(patterns: &[HostPattern]) -> Vec<String> {
    patterns.iter().map(host_pattern).collect()
}

pub fn host_pattern(pattern: &HostPattern) -> String {
    match pattern {
        HostPattern::Exact(name) => name.clone(),
        HostPattern::Wildcard(suffix) | HostPattern::Subdomains(suffix) => format!("*{suffix}"),
    }
}

pub fn path_matcher(path: &PathMatcher) -> String {
    match path {
        PathMatcher::Exact(value) => format!("Exact {value}"),
        PathMatcher::Prefix(value) => format!("PathPrefix {value}"),
        PathMatcher::Regex(regex) => {
            // Compiled anchored as ^(?:...)$: shown as it was written.
            let written = regex.as_str();
            let written = written
                .strip_prefix("^(?:")
                .and_then(|r| r.strip_suffix(")$"))
                .unwrap_or(written);
            format!("RegularExpression {written}")
        }
    }
}

pub fn match_view(m: &RequestMatch) -> MatchView {
    MatchView {
        path: m.path.as_ref().map(path_matcher),
        method: m.method.as_ref().map(ToString::to_string),
        headers: m
            .headers
            .iter()
            .map(|(name, value)| (name.to_string(), shown(name.as_str(), value)))
            .collect(),
        query: m.query.clone(),
    }
}

fn path_rewrite(rewrite: &PathRewrite) -> String {
    match rewrite {
        PathRewrite::Full(path) => format!("replaced by {path}"),
        PathRewrite::Prefix(prefix) => format!("matched prefix replaced by {prefix}"),
    }
}

fn header_edit(edit: &HeaderEdit) -> HeaderEditView {
    let pairs = |headers: &[(http::HeaderName, http::HeaderValue)]| {
        headers
            .iter()
            .map(|(name, value)| {
                let value = String::from_utf8_lossy(value.as_bytes());
                (name.to_string(), shown(name.as_str(), &value))
            })
            .collect()
    };
    HeaderEditView {
        set: pairs(&edit.set),
        add: pairs(&edit.add),
        remove: edit.remove.iter().map(ToString::to_string).collect(),
    }
}

/// A header's value as the debug endpoints show it: not at all when its name suggests a
/// credential.
pub fn shown(name: &str, value: &str) -> String {
    const SECRET_WORDS: [&str; 6] = ["auth", "cookie", "token", "key", "secret", "password"];
    let name = name.to_ascii_lowercase();
    if SECRET_WORDS.iter().any(|word| name.contains(word)) {
        "<redacted>".to_owned()
    } else {
        value.to_owned()
    }
}
