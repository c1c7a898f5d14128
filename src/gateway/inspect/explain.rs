//! Why a request would take the route it takes: which port and listener receive it, what the
//! gateway does before routing (TLS, path normalization), every entry of the port in the order
//! they are tried with the reasons each one refused it or lost to the winner by the Gateway
//! API's precedence, and the winner's backends, endpoints, retry and timeout.
//!
//! The checks are the router's own ([`Candidates::check`], `RequestMatch::check`), so an
//! explanation cannot disagree with what the data plane does.

use std::{borrow::Cow, fmt::Write as _, net::SocketAddr, ops::ControlFlow};

use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri, uri::Authority};
use serde::Serialize;

use super::{
    config::{self, BackendView, MatchView, hostnames, path_matcher, shown},
    registry::{self, EndpointView},
};
use crate::{
    api::{duration::Duration, policy::RetryPolicy},
    discovery::Registry,
    gateway::{
        http::host::{HostPattern, request_host},
        policy::path,
        table::{
            Attached, RouteTable,
            matching::{Mismatch, PathMatcher},
            select::{Candidates, Refusal},
        },
    },
};

/// What is wrong with a request to explain.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("{0:?} is not an HTTP method")]
    Method(String),
    #[error("{url:?} is not an absolute http:// or https:// URL: {why}")]
    Url { url: String, why: String },
    #[error("header {0:?}: write it as name:value")]
    Header(String),
}

/// A request as an explanation takes it: a method, an absolute URL, headers.
#[derive(Debug)]
pub struct ExplainRequest {
    pub method: Method,
    pub tls: bool,
    pub authority: Authority,
    pub port: u16,
    pub uri: Uri,
    pub headers: HeaderMap,
}

impl ExplainRequest {
    /// `headers` as `name:value` (or `name: value`).
    pub fn parse(method: &str, url: &str, headers: &[String]) -> Result<Self, RequestError> {
        let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes())
            .map_err(|_| RequestError::Method(method.to_owned()))?;
        let bad_url = |why: &str| RequestError::Url {
            url: url.to_owned(),
            why: why.to_owned(),
        };
        let uri: Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| bad_url(&e.to_string()))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad_url("the scheme must be http or https")),
        };
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| bad_url("it names no host"))?;
        let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let mut map = HeaderMap::new();
        for header in headers {
            let (name, value) = header
                .split_once(':')
                .ok_or_else(|| RequestError::Header(header.clone()))?;
            let name = HeaderName::try_from(name.trim()).map_err(|_| RequestError::Header(header.clone()))?;
            let value =
                HeaderValue::try_from(value.trim()).map_err(|_| RequestError::Header(header.clone()))?;
            map.append(name, value);
        }
        Ok(Self {
            method,
            tls,
            authority,
            port,
            uri,
            headers: map,
        })
    }

    fn host(&self) -> String {
        request_host(Some(&self.authority), None)
            .map(Cow::into_owned)
            .unwrap_or_default()
    }
}

/// The whole answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Explanation {
    pub method: String,
    pub url: String,
    pub host: String,
    pub headers: Vec<(String, String)>,
    /// Whether some route takes it.
    pub routed: bool,
    /// Set when no listening address has the URL's port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_listener: Option<String>,
    /// One per address the gateway listens on with the URL's port (usually one).
    pub addresses: Vec<AtAddress>,
    /// Whether the endpoints' state is live (a running gateway's) or as compiled.
    pub live: bool,
}

/// What happens to the request at one listening address.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AtAddress {
    pub address: SocketAddr,
    /// The HTTPS listener the server name picks (on a TLS port).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_listener: Option<String>,
    /// The path routing sees, when normalization changed it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub normalized_path: Option<String>,
    /// The gateway answers itself before routing, and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answered_before_routing: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<Taken>,
    /// Every entry of the port, most specific first, with its verdict.
    pub candidates: Vec<Candidate>,
}

/// The entry that takes the request, and what it does with it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Taken {
    pub listener: String,
    pub route: String,
    /// Which of the route's matches (`None`: it has none).
    #[serde(rename = "match")]
    pub matcher: Option<usize>,
    pub conditions: MatchView,
    pub hostnames: Vec<String>,
    /// The gateway answers with a redirect instead of forwarding.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redirect: Option<String>,
    pub backends: Vec<BackendEndpoints>,
    pub timeout: Option<Duration>,
    pub retry: Option<RetryPolicy>,
    /// The AccessPolicy checked before forwarding.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_policy: Option<config::AccessView>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendEndpoints {
    #[serde(flatten)]
    pub backend: BackendView,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<crate::api::policy::LoadBalancerPolicy>,
    pub endpoints: Vec<EndpointView>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Candidate {
    /// Its place in the order entries are tried (1: first).
    pub position: usize,
    pub listener: String,
    pub route: String,
    #[serde(rename = "match")]
    pub matcher: Option<usize>,
    pub conditions: MatchView,
    /// `takes`, `refused` or `lost`.
    pub verdict: &'static str,
    /// Why it refused the request, or why it lost to the entry that takes it.
    pub reasons: Vec<String>,
}

/// Explains `request` against `table`; `registry` adds a Microservice's unready endpoints;
/// `live`: the table is a running gateway's (its endpoints' state is live).
pub fn explain(table: &RouteTable, registry: &Registry, request: &ExplainRequest, live: bool) -> Explanation {
    let host = request.host();
    let addresses: Vec<SocketAddr> = table
        .listeners
        .keys()
        .filter(|a| a.port() == request.port)
        .copied()
        .collect();
    let no_listener = addresses.is_empty().then(|| {
        let ports: std::collections::BTreeSet<u16> = table.listeners.keys().map(SocketAddr::port).collect();
        format!(
            "no listener on port {} (ports served: {})",
            request.port,
            ports.iter().map(u16::to_string).collect::<Vec<_>>().join(", ")
        )
    });
    let at: Vec<AtAddress> = addresses
        .into_iter()
        .map(|local| at_address(table, registry, request, &host, local))
        .collect();
    Explanation {
        method: request.method.to_string(),
        url: request.uri.to_string(),
        host,
        headers: request
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.to_string(),
                    shown(n.as_str(), &String::from_utf8_lossy(v.as_bytes())),
                )
            })
            .collect(),
        routed: at.iter().any(|a| a.route.is_some()),
        no_listener,
        addresses: at,
        live,
    }
}

fn at_address(
    table: &RouteTable,
    registry: &Registry,
    request: &ExplainRequest,
    host: &str,
    local: SocketAddr,
) -> AtAddress {
    let mut at = AtAddress {
        address: local,
        tls_listener: None,
        normalized_path: None,
        answered_before_routing: None,
        route: None,
        candidates: Vec::new(),
    };
    let tls_port = table.tls.get(&local);
    match (tls_port, request.tls) {
        (Some(_), false) => {
            at.answered_before_routing = Some(format!(
                "port {} terminates TLS: a plain http:// request there fails",
                local.port()
            ));
            return at;
        }
        (None, true) => {
            at.answered_before_routing = Some(format!(
                "port {} serves plain HTTP: an https:// request there fails its handshake",
                local.port()
            ));
            return at;
        }
        (Some(port), true) => match port.select(Some(host)) {
            Some(listener) => at.tls_listener = Some(listener.id.to_string()),
            None => {
                at.answered_before_routing = Some(format!(
                    "no HTTPS listener of port {} takes the server name {host}: the handshake fails",
                    local.port()
                ));
                return at;
            }
        },
        (None, false) => {}
    }
    let listener = at.tls_listener.clone();
    let policy = table.path_policy(local, listener.as_deref());
    let uri = match path::normalize(request.uri.path(), &policy) {
        Err(refusal) => {
            at.answered_before_routing = Some(format!("400 {}: {}", refusal.code(), refusal.reason()));
            return at;
        }
        Ok(Cow::Borrowed(_)) => request.uri.clone(),
        Ok(Cow::Owned(normalized)) => {
            if policy.redirect_changed {
                at.answered_before_routing = Some(format!(
                    "308 to the normalized path {normalized} (the listener redirects changed paths)"
                ));
                return at;
            }
            at.normalized_path = Some(normalized.clone());
            let target = match request.uri.query() {
                Some(query) => format!("{normalized}?{query}"),
                None => normalized,
            };
            target.parse().unwrap_or_else(|_| request.uri.clone())
        }
    };
    let Some(candidates) = Candidates::at(table, local, listener.as_deref(), Some(host)) else {
        return at;
    };
    let mut winner: Option<&Attached> = None;
    for (index, entry) in candidates.entries.iter().enumerate() {
        let mut reasons = Vec::new();
        let _ = candidates.check(entry, &request.method, &uri, &request.headers, |refusal| {
            reasons.push(refusal_text(
                entry,
                refusal,
                request,
                &uri,
                host,
                listener.as_deref(),
            ));
            ControlFlow::Continue(())
        });
        let verdict = match (&winner, reasons.is_empty()) {
            (None, true) => {
                winner = Some(entry);
                "takes"
            }
            (Some(winner), true) => {
                reasons.push(precedence(winner, entry));
                "lost"
            }
            (_, false) => "refused",
        };
        at.candidates.push(Candidate {
            position: index + 1,
            listener: entry.listener.to_string(),
            route: entry.route.id.clone(),
            matcher: entry.matcher,
            conditions: entry.request_match().map(config::match_view).unwrap_or_default(),
            verdict,
            reasons,
        });
    }
    at.route = winner.map(|entry| taken(table, registry, entry));
    at
}

fn taken(table: &RouteTable, registry: &Registry, entry: &Attached) -> Taken {
    let route = config::route_view(table, &entry.route);
    let backends = entry
        .route
        .backends
        .iter()
        .zip(route.backends)
        .map(|(backend, view)| {
            let found = backend.upstream.as_ref().and_then(|upstream| {
                table
                    .upstreams
                    .iter()
                    .find(|(_, u)| std::sync::Arc::ptr_eq(u, upstream))
            });
            BackendEndpoints {
                backend: view,
                load_balancer: backend.upstream.as_ref().map(|u| u.pool.policy()),
                endpoints: found
                    .map(|(key, upstream)| registry::endpoints_of(key, upstream, registry))
                    .unwrap_or_default(),
            }
        })
        .collect();
    Taken {
        listener: entry.listener.to_string(),
        route: entry.route.id.clone(),
        matcher: entry.matcher,
        conditions: entry.request_match().map(config::match_view).unwrap_or_default(),
        hostnames: route.hostnames,
        redirect: route.redirect,
        backends,
        timeout: route.timeout,
        retry: route.retry,
        access_policy: route.access_policy,
    }
}

fn refusal_text(
    entry: &Attached,
    refusal: Refusal<'_>,
    request: &ExplainRequest,
    uri: &Uri,
    host: &str,
    tls_listener: Option<&str>,
) -> String {
    match refusal {
        Refusal::OtherTlsListener => format!(
            "listener {} is not {}, the HTTPS listener the server name {host} picks",
            entry.listener,
            tls_listener.unwrap_or("?")
        ),
        Refusal::IsolatedListener => format!(
            "listener {} does not take {host} as well as another listener of this address ({})",
            entry.listener,
            listed(&entry.listener_hostnames)
        ),
        Refusal::ListenerHostname => format!(
            "host {host} is not one of listener {}'s hostnames ({})",
            entry.listener,
            listed(&entry.listener_hostnames)
        ),
        Refusal::RouteHostname => format!(
            "host {host} is not one of the route's hostnames ({})",
            listed(&entry.route.hostnames)
        ),
        Refusal::Match(Mismatch::Path(matcher)) => {
            format!("path {} does not match {}", uri.path(), path_matcher(matcher))
        }
        Refusal::Match(Mismatch::Query(name, value)) => {
            format!("query parameter {name}={value} is missing")
        }
        Refusal::Match(Mismatch::Method(method)) => {
            format!("method {} is not {method}", request.method)
        }
        Refusal::Match(Mismatch::Header(name, value)) => {
            let wanted = shown(name.as_str(), value);
            match request.headers.get(name) {
                Some(sent) => format!(
                    "header {name} is {}, not {wanted}",
                    shown(name.as_str(), &String::from_utf8_lossy(sent.as_bytes()))
                ),
                None => format!("header {name}: {wanted} is missing"),
            }
        }
    }
}

fn listed(patterns: &[HostPattern]) -> String {
    hostnames(patterns).join(", ")
}

/// Why `loser`, which would take the request too, comes after `winner` (the Gateway API's
/// precedence, as `Attached::specificity` orders the table).
fn precedence(winner: &Attached, loser: &Attached) -> String {
    let (w, l) = (winner.specificity(), loser.specificity());
    let who = format!("{}#{}", winner.route.id, winner.matcher.map_or(0, |m| m));
    let path_kind = |entry: &Attached| match entry.request_match().and_then(|m| m.path.as_ref()) {
        Some(PathMatcher::Exact(_)) => "an Exact path",
        Some(PathMatcher::Prefix(_)) => "a PathPrefix",
        Some(PathMatcher::Regex(_)) => "a RegularExpression path",
        None => "no path match",
    };
    let why = if w.0 != l.0 {
        "its hostname is more specific (an exact name before a wildcard, a wildcard before none)".to_owned()
    } else if w.1 != l.1 {
        format!("{} is more specific than {}", path_kind(winner), path_kind(loser))
    } else if w.2 != l.2 {
        format!("its path prefix is longer ({} characters against {})", w.2, l.2)
    } else if w.3 != l.3 {
        "it matches the method and this one does not".to_owned()
    } else if w.4 != l.4 {
        format!("it matches more headers ({} against {})", w.4, l.4)
    } else if w.5 != l.5 {
        format!("it matches more query parameters ({} against {})", w.5, l.5)
    } else {
        "as specific, and it comes first (a Gateway's routes in declaration order; HTTPRoutes oldest first, then by namespace and name)".to_owned()
    };
    format!("would take it too, but {who} is tried first: {why}")
}

impl Explanation {
    /// The explanation for people. When no route takes the request, the three candidates that
    /// failed on the fewest conditions stand for the rest.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{} {}", self.method, self.url);
        for (name, value) in &self.headers {
            let _ = writeln!(out, "  {name}: {value}");
        }
        if let Some(why) = &self.no_listener {
            let _ = writeln!(out, "\nno route: {why}");
            return out;
        }
        for at in &self.addresses {
            let _ = writeln!(
                out,
                "\nat {}{}",
                at.address,
                match &at.tls_listener {
                    Some(listener) => format!(" (TLS: the server name picks listener {listener})"),
                    None => String::new(),
                }
            );
            if let Some(path) = &at.normalized_path {
                let _ = writeln!(out, "  the path is normalized to {path} before routing");
            }
            if let Some(answer) = &at.answered_before_routing {
                let _ = writeln!(out, "  no route: the gateway answers before routing: {answer}");
                continue;
            }
            match &at.route {
                Some(taken) => taken.write(&mut out, self.live),
                None => {
                    let _ = writeln!(
                        out,
                        "  no route: none of the {} entries of this port takes it (the gateway answers 404 no-route)",
                        at.candidates.len()
                    );
                    let mut nearest: Vec<&Candidate> = at.candidates.iter().collect();
                    nearest.sort_by_key(|c| c.reasons.len());
                    let _ = writeln!(out, "  nearest candidates:");
                    for candidate in nearest.iter().take(3) {
                        candidate.write(&mut out);
                    }
                    continue;
                }
            }
            let _ = writeln!(out, "\n  candidates, in the order they are tried:");
            for candidate in &at.candidates {
                candidate.write(&mut out);
            }
        }
        out
    }
}

impl Taken {
    fn write(&self, out: &mut String, live: bool) {
        let _ = writeln!(out, "  listener  {}", self.listener);
        let which = self
            .matcher
            .map_or("(no matches: every request)".to_owned(), |m| {
                format!("match #{m}: {}", describe(&self.conditions))
            });
        let _ = writeln!(out, "  route     {}  {which}", self.route);
        if !self.hostnames.is_empty() {
            let _ = writeln!(out, "            hostnames {}", self.hostnames.join(", "));
        }
        if let Some(policy) = &self.access_policy {
            let mut checks = policy.authentication.clone();
            checks.extend(policy.authorization.iter().map(|a| format!("authorization: {a}")));
            checks.extend(policy.rate_limits.iter().map(|l| format!("rate limit {l}")));
            let _ = writeln!(
                out,
                "  policy    AccessPolicy {}{}",
                policy.id,
                match &policy.unenforceable {
                    Some(why) => format!(": not enforceable ({why}); every request is refused"),
                    None if checks.is_empty() => String::new(),
                    None => format!(": {}", checks.join("; ")),
                }
            );
        }
        if let Some(redirect) = &self.redirect {
            let _ = writeln!(out, "  redirect  {redirect} (the gateway answers; no backend)");
            return;
        }
        let _ = writeln!(
            out,
            "  timeout   {}",
            self.timeout.map_or("none".to_owned(), |t| t.to_string())
        );
        match &self.retry {
            Some(retry) => {
                let on: Vec<String> = retry
                    .retry_on
                    .iter()
                    .map(|r| {
                        serde_json::to_value(r)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_owned))
                            .unwrap_or_default()
                    })
                    .collect();
                let _ = writeln!(
                    out,
                    "  retry     up to {} retries{}, on {}{}; budget {} % (at least {}/s)",
                    retry.attempts,
                    retry
                        .per_try_timeout
                        .map_or(String::new(), |t| format!(", {t} per try")),
                    on.join(", "),
                    if retry.retriable_status_codes.is_empty() {
                        String::new()
                    } else {
                        format!(" {:?}", retry.retriable_status_codes)
                    },
                    retry.budget.percent,
                    retry.budget.min_per_second
                );
            }
            None => {
                let _ = writeln!(out, "  retry     none");
            }
        }
        if self.backends.is_empty() {
            let _ = writeln!(
                out,
                "  backends  none with weight (the gateway answers 503 no-backend)"
            );
        }
        for backend in &self.backends {
            let _ = writeln!(
                out,
                "  backend   {}  weight {} ({:.0} %){}",
                backend
                    .backend
                    .upstream
                    .as_deref()
                    .unwrap_or("<not found: its share is answered 500>"),
                backend.backend.weight,
                backend.backend.share,
                backend
                    .load_balancer
                    .map_or(String::new(), |lb| format!(", {lb:?}"))
            );
            if backend.endpoints.is_empty() {
                let _ = writeln!(
                    out,
                    "            no endpoints (its share is answered 503 no-endpoints)"
                );
            }
            for e in &backend.endpoints {
                let mut state = vec![if e.ready { "ready" } else { "not ready" }.to_owned()];
                if !e.in_rotation {
                    state.push("not in rotation".to_owned());
                }
                if e.ejected {
                    state.push(format!(
                        "ejected until {}",
                        e.ejected_until.as_deref().unwrap_or("?")
                    ));
                }
                if live {
                    state.push(format!("{} in flight", e.in_flight));
                    if let Some(latency) = e.latency_ms {
                        state.push(format!("latency {latency:.1} ms"));
                    }
                }
                let _ = writeln!(
                    out,
                    "            {:<40} {:<22} node {:<16} {}",
                    e.pod,
                    e.address.to_string(),
                    e.node.as_deref().unwrap_or("-"),
                    state.join(", ")
                );
            }
        }
        if !live {
            let _ = writeln!(
                out,
                "  (endpoints as the cluster lists them; in-flight requests, latency and ejections only from a running gateway's /debug/explain)"
            );
        }
    }
}

impl Candidate {
    fn write(&self, out: &mut String) {
        let which = self.matcher.map_or(String::new(), |m| format!("#{m}"));
        let _ = writeln!(
            out,
            "  {:>3}. {:<8} {}{which}  [{}] on {}",
            self.position,
            self.verdict,
            self.route,
            describe(&self.conditions),
            self.listener
        );
        for reason in &self.reasons {
            let _ = writeln!(out, "         - {reason}");
        }
    }
}

/// A match's conditions on one line.
fn describe(m: &MatchView) -> String {
    let mut parts = Vec::new();
    if let Some(path) = &m.path {
        parts.push(path.clone());
    }
    if let Some(method) = &m.method {
        parts.push(format!("method {method}"));
    }
    for (name, value) in &m.headers {
        parts.push(format!("header {name}: {value}"));
    }
    for (name, value) in &m.query {
        parts.push(format!("query {name}={value}"));
    }
    if parts.is_empty() {
        "every request".to_owned()
    } else {
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, net::IpAddr, sync::Arc};

    use super::*;
    use crate::{
        api::Gateway,
        gateway::{compile::microgate::compile, metrics::GatewayMetrics, tls::CertificateStore},
    };

    fn shop() -> RouteTable {
        let gateway: Gateway = serde_json::from_value(serde_json::json!({
            "apiVersion": "microgate.dev/v1alpha1", "kind": "Gateway",
            "metadata": {"name": "shop", "namespace": "shop"},
            "spec": {
                "listeners": [{"name": "http", "port": 8080, "hostnames": ["shop.example.com"]}],
                "routes": [
                    {"name": "storefront", "matches": [{"path": {"value": "/"}}],
                        "backends": [{"microservice": "storefront"}]},
                    {"name": "orders", "matches": [{"path": {"value": "/api/orders"}}],
                        "backends": [{"microservice": "orders", "weight": 90}, {"microservice": "canary", "weight": 10}],
                        "timeout": "5s", "retry": {"attempts": 2}},
                    {"name": "beta", "matches": [{"path": {"value": "/api/orders"},
                        "headers": [{"name": "x-user", "value": "42"}], "method": "POST"}],
                        "backends": [{"microservice": "canary"}]},
                ],
            },
        }))
        .expect("a valid Gateway");
        let metrics = GatewayMetrics::register(&mut Default::default());
        compile(
            &[Arc::new(gateway)],
            IpAddr::from([127, 0, 0, 1]),
            &HashMap::new(),
            &Registry::default(),
            &metrics,
            &CertificateStore::default(),
            None,
        )
    }

    fn explained(method: &str, url: &str, headers: &[&str]) -> Explanation {
        let headers: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
        let request = ExplainRequest::parse(method, url, &headers).expect("a valid request");
        explain(&shop(), &Registry::default(), &request, false)
    }

    #[test]
    fn the_winner_and_why_the_others_refused_or_lost() {
        let explanation = explained(
            "GET",
            "http://shop.example.com:8080/api/orders/7",
            &["x-user: 42"],
        );
        assert!(explanation.routed);
        let at = &explanation.addresses[0];
        let taken = at.route.as_ref().expect("a route");
        assert_eq!(taken.route, "shop/shop/orders");
        assert_eq!(taken.backends.len(), 2);
        assert_eq!(taken.backends[0].backend.share, 90.0);
        assert_eq!(taken.timeout.map(|t| t.to_string()).as_deref(), Some("5s"));
        let verdicts: Vec<_> = at
            .candidates
            .iter()
            .map(|c| (c.route.as_str(), c.verdict))
            .collect();
        assert_eq!(
            verdicts,
            [
                ("shop/shop/beta", "refused"),
                ("shop/shop/orders", "takes"),
                ("shop/shop/storefront", "lost")
            ]
        );
        assert_eq!(at.candidates[0].reasons, ["method GET is not POST"]);
        assert!(
            at.candidates[2].reasons[0].contains("its path prefix is longer (11 characters against 0)"),
            "{:?}",
            at.candidates[2].reasons
        );
        let text = explanation.text();
        assert!(
            text.contains("route     shop/shop/orders  match #0: PathPrefix /api/orders"),
            "{text}"
        );
    }

    #[test]
    fn a_request_no_route_takes_says_why_for_every_candidate() {
        let explanation = explained("POST", "http://other.example.com:8080/api/orders", &["x-user:41"]);
        assert!(!explanation.routed);
        let at = &explanation.addresses[0];
        assert!(at.candidates.iter().all(|c| c.verdict == "refused"));
        let beta = &at.candidates[0];
        assert_eq!(
            beta.reasons,
            [
                "host other.example.com is not one of listener shop/shop/http's hostnames (shop.example.com)",
                "header x-user is 41, not 42"
            ]
        );
        let text = explanation.text();
        assert!(text.contains("no route: none of the 3 entries"), "{text}");
        assert!(text.contains("nearest candidates"), "{text}");

        let elsewhere = explained("GET", "http://shop.example.com:9999/", &[]);
        assert!(!elsewhere.routed);
        assert_eq!(
            elsewhere.no_listener.as_deref(),
            Some("no listener on port 9999 (ports served: 8080)")
        );
        let tls = explained("GET", "https://shop.example.com:8080/", &[]);
        assert!(
            tls.addresses[0]
                .answered_before_routing
                .as_deref()
                .is_some_and(|a| a.contains("serves plain HTTP")),
            "{tls:?}"
        );
    }

    #[test]
    fn bad_requests_are_refused_with_what_is_wrong() {
        assert!(matches!(
            ExplainRequest::parse("GET", "/no/host", &[]),
            Err(RequestError::Url { .. })
        ));
        assert!(matches!(
            ExplainRequest::parse("GET", "http://a/", &["no-colon".to_owned()]),
            Err(RequestError::Header(_))
        ));
        assert!(matches!(
            ExplainRequest::parse("G(T", "http://a/", &[]),
            Err(RequestError::Method(_))
        ));
    }
}
