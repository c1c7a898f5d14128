//! The Gateway reconciler (control-plane half): checks that every route's backends name
//! Microservices that exist, and reports the Gateway's shape and readiness in its status.
//! Whether the data plane serves it (`Programmed`) is the gateway's to report.

use std::{collections::BTreeMap, sync::Arc};

use k8s_openapi::jiff::Timestamp;
use kube::{
    Api, ResourceExt,
    api::{ListParams, Patch, PatchParams},
    runtime::controller::Action,
};
use serde_json::json;

use super::{
    Context,
    conditions::{self, Desired},
    context::failure_key,
    error::{Error, Result},
};
use crate::{
    api::{
        FIELD_MANAGER, Gateway, GatewayStatus, Microservice,
        gateway::{HttpMethod, PathMatch, Route, RouteMatch, RouteStatus},
    },
    discovery::ServiceKey,
    gateway::table::matching::PathMatcher,
};

pub const ACCEPTED: &str = "Accepted";

/// How often an unchanged Gateway is looked at anyway.
const RESYNC: std::time::Duration = std::time::Duration::from_secs(600);

pub async fn reconcile(gateway: Arc<Gateway>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.start("Gateway");
    let name = gateway.name_any();
    let namespace = gateway.namespace().ok_or_else(|| Error::MissingMetadata {
        object: name.clone(),
        what: "namespace",
    })?;
    let object = format!("{namespace}/{name}");
    let microservices: Api<Microservice> = Api::namespaced(ctx.client.clone(), &namespace);
    // Existence from the API server; readiness from the registry the gateway balances over.
    let ready_endpoints: BTreeMap<String, usize> = microservices
        .list_metadata(&ListParams::default())
        .await
        .map_err(|source| Error::Read {
            what: format!("the Microservices of {namespace}"),
            source,
        })?
        .items
        .into_iter()
        .map(|ms| {
            let name = ms.name_any();
            let ready = ctx
                .registry
                .snapshot(&ServiceKey::new(&namespace, &name))
                .ready_count();
            (name, ready)
        })
        .collect();

    let status = compute(&gateway, &ready_endpoints, Timestamp::now());
    if !gateway
        .status
        .as_ref()
        .is_some_and(|current| owned_parts_equal(current, &status))
    {
        let api: Api<Gateway> = Api::namespaced(ctx.client.clone(), &namespace);
        // Server-side apply of only what the controller owns: the list-map of conditions keeps
        // the data plane's Programmed condition, which it applies under its own field manager.
        let patch = json!({"apiVersion": "microgate.dev/v1alpha1", "kind": "Gateway", "status": status});
        api.patch_status(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(patch),
        )
        .await
        .map_err(|source| Error::Status {
            what: format!("Gateway {object}"),
            source,
        })?;
    }
    ctx.succeeded(&failure_key(gateway.as_ref()));
    Ok(Action::requeue(RESYNC))
}

/// A failed pass: count it, log it, and retry with exponential backoff.
pub fn error_policy(gateway: Arc<Gateway>, error: &Error, ctx: Arc<Context>) -> Action {
    let labels = crate::telemetry::ErrorLabels {
        kind: "Gateway",
        error: error.metric_label(),
    };
    ctx.metrics.failures.get_or_create(&labels).inc();
    tracing::warn!(name = %gateway.name_any(), namespace = gateway.namespace().unwrap_or_default(), %error, "Gateway reconcile failed");
    Action::requeue(ctx.backoff_after_failure(failure_key(gateway.as_ref())))
}

/// Whether `current` already shows everything the controller writes (the data plane's
/// conditions aside).
fn owned_parts_equal(current: &GatewayStatus, ours: &GatewayStatus) -> bool {
    let accepted = |s: &GatewayStatus| s.conditions.iter().find(|c| c.type_ == ACCEPTED).cloned();
    current.observed_generation == ours.observed_generation
        && current.listeners == ours.listeners
        && current.route_count == ours.route_count
        && current.routes == ours.routes
        && accepted(current) == accepted(ours)
}

/// The status the controller owns: Accepted, the shape and each route's ready backends.
/// The Gateway's status given each Microservice of its namespace and its ready endpoints.
pub fn compute(
    gateway: &Gateway,
    ready_endpoints: &BTreeMap<String, usize>,
    now: Timestamp,
) -> GatewayStatus {
    let previous = gateway.status.clone().unwrap_or_default();
    let mut missing = Vec::new();
    let routes = gateway
        .spec
        .routes
        .iter()
        .map(|route| {
            let mut ready_backends = 0;
            for backend in &route.backends {
                match ready_endpoints.get(&backend.microservice) {
                    Some(&ready) if ready > 0 => ready_backends += 1,
                    Some(_) => {}
                    None => missing.push(format!(
                        "route {}: Microservice {} does not exist",
                        route.name, backend.microservice
                    )),
                }
            }
            RouteStatus {
                name: route.name.clone(),
                ready_backends,
            }
        })
        .collect();
    let invalid: Vec<String> = gateway
        .spec
        .routes
        .iter()
        .flat_map(|route| {
            route
                .matches
                .iter()
                .filter_map(move |m| Some((route, m.path.as_ref()?)))
        })
        .filter_map(|(route, path)| {
            let error = PathMatcher::compile(path.kind, &path.value).err()?;
            Some(format!(
                "route {}: invalid path regular expression {:?}: {error}",
                route.name, path.value
            ))
        })
        .collect();
    let shadowed = shadowed_matches(gateway);
    let accepted = if !invalid.is_empty() {
        Desired::new(ACCEPTED, false, "InvalidRegex", invalid.join("; "))
    } else if !shadowed.is_empty() {
        Desired::new(ACCEPTED, false, "OverlappingMatches", shadowed.join("; "))
    } else if missing.is_empty() {
        Desired::new(
            ACCEPTED,
            true,
            "Accepted",
            "every backend names an existing Microservice",
        )
    } else {
        Desired::new(ACCEPTED, false, "BackendNotFound", missing.join("; "))
    };
    // Programmed belongs to the data plane: keep whatever it last reported.
    let conditions = conditions::merge(
        &previous.conditions,
        vec![accepted],
        gateway.metadata.generation,
        now,
    );
    GatewayStatus {
        observed_generation: gateway.metadata.generation,
        listeners: gateway
            .spec
            .listeners
            .iter()
            .map(|l| format!("{}:{}/{}", l.name, l.port, l.protocol.as_str()))
            .collect::<Vec<_>>()
            .join(","),
        route_count: i32::try_from(gateway.spec.routes.len()).unwrap_or(i32::MAX),
        conditions,
        routes,
        // The data plane's to write (left out of the controller's apply).
        listener_statuses: Vec::new(),
    }
}

/// Matches that can never take a request because an earlier route declares the same one for the
/// same listeners and host names (the earlier route wins every such request).
fn shadowed_matches(gateway: &Gateway) -> Vec<String> {
    let routes = &gateway.spec.routes;
    let hosts = |route: &Route| {
        let mut hosts: Vec<String> = route.hostnames.iter().map(|h| h.to_ascii_lowercase()).collect();
        hosts.sort();
        hosts.dedup();
        hosts
    };
    let shares_a_listener = |a: &Route, b: &Route| {
        a.listeners.is_empty()
            || b.listeners.is_empty()
            || a.listeners.iter().any(|l| b.listeners.contains(l))
    };
    let mut found = Vec::new();
    for (later_index, later) in routes.iter().enumerate() {
        for earlier in &routes[..later_index] {
            if !shares_a_listener(earlier, later) || hosts(earlier) != hosts(later) {
                continue;
            }
            let earlier_keys: Vec<MatchKey> = MatchKey::all_of(earlier);
            let shadowed = MatchKey::all_of(later)
                .into_iter()
                .filter(|key| earlier_keys.contains(key))
                .count();
            if shadowed > 0 {
                found.push(format!(
                    "route {}: {shadowed} of its matches are identical to route {}'s, which takes their requests",
                    later.name, earlier.name
                ));
                break;
            }
        }
    }
    found
}

/// A route match in a canonical form: header names case-folded, conditions sorted.
#[derive(PartialEq)]
struct MatchKey {
    path: Option<PathMatch>,
    method: Option<HttpMethod>,
    headers: Vec<(String, String)>,
    query: Vec<(String, String)>,
}

impl MatchKey {
    /// A route without matches takes every request: one empty match.
    fn all_of(route: &Route) -> Vec<Self> {
        if route.matches.is_empty() {
            return vec![Self::from(&RouteMatch::default())];
        }
        route.matches.iter().map(Self::from).collect()
    }
}

impl From<&RouteMatch> for MatchKey {
    fn from(m: &RouteMatch) -> Self {
        let mut headers: Vec<_> = m
            .headers
            .iter()
            .map(|h| (h.name.to_ascii_lowercase(), h.value.clone()))
            .collect();
        headers.sort();
        let mut query: Vec<_> = m
            .query_params
            .iter()
            .map(|q| (q.name.clone(), q.value.clone()))
            .collect();
        query.sort();
        Self {
            path: m.path.clone(),
            method: m.method,
            headers,
            query,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gateway() -> Gateway {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "microgate.dev/v1alpha1", "kind": "Gateway",
            "metadata": {"name": "shop", "namespace": "s", "generation": 3},
            "spec": {
                "listeners": [{"name": "http", "port": 8080}, {"name": "admin", "port": 9000}],
                "routes": [
                    {"name": "orders", "matches": [{"path": {"type": "PathPrefix", "value": "/api/orders"}}],
                        "backends": [{"microservice": "orders"}, {"microservice": "orders-canary"}]},
                    {"name": "web", "backends": [{"microservice": "storefront"}]},
                ],
            },
        }))
        .expect("valid gateway")
    }

    fn now() -> Timestamp {
        Timestamp::from_second(1_700_000_000).expect("valid time")
    }

    #[test]
    fn accepted_when_every_backend_exists_with_ready_backends_per_route() {
        let ready = BTreeMap::from([
            ("orders".into(), 2),
            ("orders-canary".into(), 0),
            ("storefront".into(), 1),
        ]);
        let status = compute(&gateway(), &ready, now());
        assert_eq!(status.listeners, "http:8080/HTTP,admin:9000/HTTP");
        assert_eq!(status.route_count, 2);
        assert_eq!(status.observed_generation, Some(3));
        let ready_backends: Vec<_> = status
            .routes
            .iter()
            .map(|r| (r.name.as_str(), r.ready_backends))
            .collect();
        assert_eq!(ready_backends, [("orders", 1), ("web", 1)]);
        assert_eq!(status.conditions[0].type_, ACCEPTED);
        assert_eq!(status.conditions[0].status, "True");
    }

    #[test]
    fn an_invalid_path_regular_expression_is_not_accepted() {
        let mut gateway = gateway();
        gateway.spec.routes[0].matches = vec![
            serde_json::from_value(serde_json::json!(
            {"path": {"type": "RegularExpression", "value": "/api/(v1"}}))
            .expect("a valid match"),
        ];
        let ready = BTreeMap::from([
            ("orders".into(), 1),
            ("orders-canary".into(), 1),
            ("storefront".into(), 1),
        ]);
        let accepted = &compute(&gateway, &ready, now()).conditions[0];
        assert_eq!(
            (accepted.status.as_str(), accepted.reason.as_str()),
            ("False", "InvalidRegex")
        );
        assert!(
            accepted
                .message
                .starts_with("route orders: invalid path regular expression"),
            "{}",
            accepted.message
        );
    }

    #[test]
    fn a_missing_microservice_is_named_in_the_accepted_condition() {
        let ready = BTreeMap::from([("orders".into(), 2)]);
        let status = compute(&gateway(), &ready, now());
        let accepted = &status.conditions[0];
        assert_eq!(
            (accepted.status.as_str(), accepted.reason.as_str()),
            ("False", "BackendNotFound")
        );
        assert!(
            accepted
                .message
                .contains("route orders: Microservice orders-canary does not exist")
        );
        assert!(
            accepted
                .message
                .contains("route web: Microservice storefront does not exist")
        );
    }

    #[test]
    fn a_match_shadowed_by_an_identical_earlier_one_is_not_accepted() {
        let with_routes = |routes: serde_json::Value| -> Gateway {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "microgate.dev/v1alpha1", "kind": "Gateway",
                "metadata": {"name": "shop", "namespace": "s", "generation": 1},
                "spec": {"listeners": [{"name": "a", "port": 8080}, {"name": "b", "port": 8081}], "routes": routes},
            }))
            .expect("a valid Gateway")
        };
        let ready = BTreeMap::from([("x".into(), 1), ("y".into(), 1)]);
        let reason = |routes| {
            let status = compute(&with_routes(routes), &ready, now());
            let accepted = status.conditions[0].clone();
            (accepted.reason, accepted.message)
        };
        let api = |name: &str, backend: &str, extra: serde_json::Value| {
            let mut route = serde_json::json!({"name": name, "backends": [{"microservice": backend}],
                "matches": [{"path": {"type": "PathPrefix", "value": "/api"}, "method": "GET",
                    "headers": [{"name": "X-A", "value": "1"}, {"name": "x-b", "value": "2"}]}]});
            if let (Some(route), Some(extra)) = (route.as_object_mut(), extra.as_object()) {
                route.extend(extra.clone());
            }
            route
        };
        let none = serde_json::json!({});
        // Identical but for header case and order: the second never gets a request.
        let mut second = api("second", "y", none.clone());
        second["matches"][0]["headers"] =
            serde_json::json!([{"name": "X-B", "value": "2"}, {"name": "x-a", "value": "1"}]);
        let (why, message) = reason(serde_json::json!([api("first", "x", none.clone()), second]));
        assert_eq!(why, "OverlappingMatches");
        assert!(
            message.contains("route second: 1 of its matches are identical to route first's"),
            "{message}"
        );
        // Two catch-all routes: the same.
        let catch_all = |name: &str| serde_json::json!({"name": name, "backends": [{"microservice": "x"}]});
        assert_eq!(
            reason(serde_json::json!([catch_all("p"), catch_all("q")])).0,
            "OverlappingMatches"
        );
        // Different listeners, different host names, or a different method: no overlap.
        for distinct in [
            serde_json::json!([
                api("first", "x", serde_json::json!({"listeners": ["a"]})),
                api("second", "y", serde_json::json!({"listeners": ["b"]}))
            ]),
            serde_json::json!([
                api("first", "x", serde_json::json!({"hostnames": ["a.example.com"]})),
                api("second", "y", none.clone())
            ]),
            serde_json::json!([api("first", "x", none.clone()), {"name": "second", "backends": [{"microservice": "y"}],
                "matches": [{"path": {"type": "PathPrefix", "value": "/api"}, "method": "POST"}]}]),
        ] {
            assert_eq!(reason(distinct.clone()).0, "Accepted", "{distinct}");
        }
    }

    #[test]
    fn the_data_planes_condition_is_not_the_controllers_to_write_or_compare() {
        let mut gateway = gateway();
        let ready = BTreeMap::from([
            ("orders".into(), 1),
            ("orders-canary".into(), 1),
            ("storefront".into(), 1),
        ]);
        let ours = compute(&gateway, &ready, now());
        assert!(
            ours.conditions.iter().all(|c| c.type_ == ACCEPTED),
            "only Accepted is written"
        );
        let mut shown = ours.clone();
        shown
            .conditions
            .push(k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
                type_: "Programmed".into(),
                status: "True".into(),
                reason: "Programmed".into(),
                message: String::new(),
                observed_generation: Some(3),
                last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now()),
            });
        gateway.status = Some(shown.clone());
        assert!(
            owned_parts_equal(&shown, &compute(&gateway, &ready, now())),
            "no write for the data plane's part"
        );
    }
}
