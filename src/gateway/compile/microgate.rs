//! The `microgate.dev` front end: Gateways (listeners and routes in one resource) whose backends
//! are Microservices.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use kube::ResourceExt;

use super::{ListenerSettings, ListenerTls, ServiceSettings, TableBuilder};
use crate::{
    api::{
        Gateway,
        gateway::{AmbiguousPath, ChangedPath, Listener, ListenerProtocol, PathNormalization, RouteMatch},
    },
    discovery::{Registry, ServiceKey},
    gateway::{
        metrics::GatewayMetrics,
        policy::{
            client_ip::TrustedProxies,
            path::{Ambiguous, PathPolicy},
        },
        table::{
            Attached, Backend, HostPattern, Redirect, Route, RouteTable,
            matching::{PathMatcher, RequestMatch, method_of},
        },
        tls::{CertificateStore, SecretKey},
    },
};

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

/// Builds the table of `gateways`, whose listeners all listen on `address`. `services` holds
/// what each known Microservice's spec says; `previous` lends its endpoint state and retry
/// budgets to what stays.
#[allow(clippy::too_many_arguments)]
pub fn compile(
    gateways: &[Arc<Gateway>],
    address: IpAddr,
    services: &HashMap<ServiceKey, ServiceSettings>,
    registry: &Registry,
    metrics: &GatewayMetrics,
    certificates: &CertificateStore,
    previous: Option<&RouteTable>,
) -> RouteTable {
    let mut builder = TableBuilder::new(services, registry, metrics, certificates, previous);
    add(&mut builder, gateways, address);
    builder.finish()
}

/// Adds `gateways`, whose listeners all listen on `address`, to the table being built.
pub fn add(builder: &mut TableBuilder<'_>, gateways: &[Arc<Gateway>], address: IpAddr) {
    let mut gateways: Vec<_> = gateways.iter().collect();
    gateways.sort_by_key(|g| (g.namespace(), g.name_any()));
    for gateway in gateways {
        add_gateway(builder, gateway, address);
    }
}

fn add_gateway(builder: &mut TableBuilder<'_>, gateway: &Gateway, address: IpAddr) {
    let namespace = gateway.namespace().unwrap_or_default();
    let spec = &gateway.spec;
    // The listeners served, with their ids and ports; earlier Gateways keep a contested port.
    let mut served = Vec::with_capacity(spec.listeners.len());
    for listener in &spec.listeners {
        let id: Arc<str> = listener_id(gateway, listener).into();
        match listener_settings(&id, &namespace, address, listener) {
            Ok(settings) => {
                let local = settings.local;
                if builder.listener(settings).is_ok() {
                    served.push((id, local, listener));
                }
            }
            Err(why) => builder.not_served(&id, why),
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
        let budget = builder.budget(&id, retry.as_ref());
        let backends: Vec<Backend> = route
            .backends
            .iter()
            .filter(|b| b.weight > 0)
            .map(|b| Backend {
                upstream: Some(builder.upstream(&ServiceKey::new(&namespace, &b.microservice))),
                weight: u32::try_from(b.weight).unwrap_or(0),
                request_headers: None,
            })
            .collect();
        let redirect = route.redirect.as_ref().map(|r| Redirect {
            scheme: r.scheme,
            hostname: r.hostname.clone(),
            port: r.port.and_then(|p| u16::try_from(p).ok()),
            path: None,
            status: u16::try_from(r.status_code)
                .ok()
                .and_then(|code| http::StatusCode::from_u16(code).ok())
                .filter(http::StatusCode::is_redirection)
                .unwrap_or(http::StatusCode::FOUND),
        });
        let (access, cors) = match route
            .access_policy
            .as_ref()
            .or_else(|| spec.defaults.as_ref().and_then(|d| d.access_policy.as_ref()))
        {
            Some(policy) => {
                let (access, cors) = builder.access_policy(&id, &namespace, policy);
                (Some(access), cors)
            }
            None => (None, None),
        };
        let compiled = Arc::new(Route {
            metrics: builder.route_metrics(&id),
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
            no_backend: http::StatusCode::SERVICE_UNAVAILABLE,
            request_headers: None,
            response_headers: None,
            rewrite: None,
            mirrors: Vec::new(),
            cors,
            access,
        });
        for (listener_id, local, listener) in &served {
            if !route.listeners.is_empty() && !route.listeners.contains(&listener.name) {
                continue;
            }
            let matchers: Vec<Option<usize>> = if compiled.matches.is_empty() {
                vec![None]
            } else {
                (0..compiled.matches.len()).map(Some).collect()
            };
            for matcher in matchers {
                builder.attach(
                    *local,
                    Attached {
                        listener: listener_id.clone(),
                        listener_hostnames: listener
                            .hostnames
                            .iter()
                            .map(|h| HostPattern::parse(h))
                            .collect(),
                        route: compiled.clone(),
                        matcher,
                    },
                );
            }
        }
    }
}

/// A listener in the table's terms, or why it cannot be served.
fn listener_settings(
    id: &Arc<str>,
    namespace: &str,
    address: IpAddr,
    listener: &Listener,
) -> Result<ListenerSettings, String> {
    let trusted_proxies = listener
        .client_ip_detection
        .as_ref()
        .and_then(|d| d.x_forwarded_for.as_ref())
        .map(TrustedProxies::parse)
        .transpose()
        .map_err(|error| format!("clientIPDetection.xForwardedFor: {error}"))?;
    let port = u16::try_from(listener.port).map_err(|_| format!("port {} is out of range", listener.port))?;
    let tls = match listener.protocol {
        ListenerProtocol::Http => None,
        ListenerProtocol::Https => {
            let tls = listener
                .tls
                .as_ref()
                .ok_or_else(|| "an HTTPS listener needs tls.certificateRefs".to_owned())?;
            Some(ListenerTls {
                certificates: tls
                    .certificate_refs
                    .iter()
                    .map(|r| SecretKey {
                        namespace: namespace.to_owned(),
                        name: r.name.clone(),
                    })
                    .collect(),
                min_version: tls.min_version,
                client_auth: None,
            })
        }
    };
    Ok(ListenerSettings {
        id: id.clone(),
        local: SocketAddr::new(address, port),
        hostnames: listener.hostnames.iter().map(|h| HostPattern::parse(h)).collect(),
        tls,
        trusted_proxies,
        path_policy: listener
            .path_normalization
            .as_ref()
            .map(path_policy)
            .unwrap_or_default(),
        max_connections: listener.max_connections.and_then(|n| usize::try_from(n).ok()),
    })
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

/// A route's match as the router uses it; `None` when its regular expression is invalid (the
/// controller reports that on the Gateway), so that it never matches.
fn compile_match(m: &RouteMatch) -> Option<RequestMatch> {
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
    use crate::gateway::table::DEFAULT_MAX_CONNECTIONS;

    const ADDRESS: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn at(port: u16) -> SocketAddr {
        SocketAddr::new(ADDRESS, port)
    }

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
            ADDRESS,
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
        table.listeners[&at(8080)]
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
            table.trusted_proxies(at(8080), None),
            Some(&TrustedProxies::Cidrs(vec![
                "10.0.0.0/8".parse().expect("a CIDR")
            ]))
        );
        assert_eq!(table.trusted_proxies(at(8081), None), None);
        assert_eq!(table.path_policy(at(8080), None), PathPolicy::default());
        assert_eq!(
            table.path_policy(at(8081), None),
            PathPolicy {
                escaped_slashes: Ambiguous::Keep,
                merge_slashes: false,
                redirect_changed: true,
                ..PathPolicy::default()
            }
        );
        assert_eq!(table.max_connections.get(&at(8080)), Some(&10));
        assert_eq!(
            table.max_connections.get(&at(8081)),
            Some(&DEFAULT_MAX_CONNECTIONS)
        );
        assert!(!table.listeners.contains_key(&at(8082)));
        assert!(
            table.not_served["ns/gw/bad"].contains("not-a-cidr"),
            "{:?}",
            table.not_served
        );
    }
}
