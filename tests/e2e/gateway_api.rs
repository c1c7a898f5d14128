//! The Kubernetes Gateway API front end with Microservices as backends (`group: microgate.dev`):
//! traffic through an HTTPRoute reaches the Microservice's Pods with its traffic policy, and the
//! GatewayClass, Gateway and HTTPRoute say so in their status; a rule's `ExtensionRef` filter
//! applies an AccessPolicy; a rule's `retry` tries another endpoint after a broken connection
//! or a `backendRequest` timeout; a Gateway's frontend TLS checks client certificates on its
//! HTTPS listeners. (Service backends, resolved from
//! EndpointSlices, are proven by the official suite: `make conformance`.)

use std::collections::BTreeSet;

use hyper::{HeaderMap, Method, StatusCode};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service};
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use microgate::{
    api::{
        AccessPolicy,
        gateway_api::{GatewayClass, HTTPRoute, KubeGateway},
    },
    gateway,
};
use microgate_test_support::{
    TestNamespace,
    backend::POD_NAME_HEADER,
    probe,
    tls::{TestCa, TlsClient},
    wait::{self, Probe},
    with_namespace,
};
use serde_json::{Value, json};

use super::{Platform, Settings, WAIT, metric, pods_of};

/// The condition `type_` of `conditions`, as (status, reason).
fn condition(conditions: &Value, type_: &str) -> Option<(String, String)> {
    conditions
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .map(|c| {
            (
                c["status"].as_str().unwrap_or_default().to_owned(),
                c["reason"].as_str().unwrap_or_default().to_owned(),
            )
        })
}

fn pair(status: &str, reason: &str) -> Option<(String, String)> {
    Some((status.to_owned(), reason.to_owned()))
}

/// A GatewayClass of microgate's controller for the test namespace `ns` (GatewayClasses are
/// cluster-wide: one per test namespace); the test deletes it when it is done.
/// Applies the Gateway `name` of the GatewayClass `class`, with `listeners`.
pub(crate) async fn apply_gateway(ns: &TestNamespace, name: &str, class: &str, listeners: Value) {
    ns.api::<KubeGateway>()
        .patch(
            name,
            &PatchParams::apply("e2e").force(),
            &Patch::Apply(json!({
                "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                "metadata": {"name": name},
                "spec": {"gatewayClassName": class, "listeners": listeners},
            })),
        )
        .await
        .expect("create the Gateway");
}

pub(crate) async fn create_class(ns: &TestNamespace) -> (Api<GatewayClass>, String) {
    let name = format!("microgate-{}", ns.name);
    let classes: Api<GatewayClass> = Api::all(ns.client.clone());
    classes
        .patch(
            &name,
            &PatchParams::apply("e2e").force(),
            &Patch::Apply(json!({
                "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
                "metadata": {"name": name},
                "spec": {"controllerName": "microgate.dev/gateway-controller"},
            })),
        )
        .await
        .expect("create the GatewayClass");
    (classes, name)
}

#[tokio::test]
async fn an_httproute_sends_to_microservices_and_every_status_says_what_happened() {
    with_namespace("e2e-gwapi", |ns| async move {
        let platform = Platform::start_with_gateway_api(&ns).await;
        platform.microservice(&ns, "echo", 2, json!({})).await;
        let apply = PatchParams::apply("e2e").force();
        let (classes, class_name) = create_class(&ns).await;
        // An AccessPolicy that an HTTPRoute rule names in an ExtensionRef filter.
        ns.api::<Secret>()
            .patch(
                "keys",
                &apply,
                &Patch::Apply(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "keys"},
                    "stringData": {"ci": "k-1"}})),
            )
            .await
            .expect("create the Secret");
        ns.api::<AccessPolicy>()
            .patch(
                "keys",
                &apply,
                &Patch::Apply(json!({"apiVersion": "microgate.dev/v1alpha1", "kind": "AccessPolicy",
                    "metadata": {"name": "keys"},
                    "spec": {"authentication": {"apiKeys": {"secretRef": {"name": "keys"}}}}})),
            )
            .await
            .expect("create the AccessPolicy");
        let port = platform.listener.port();
        apply_gateway(&ns, "shop", &class_name, json!([
            {"name": "http", "port": port, "protocol": "HTTP", "hostname": "*.example.com"},
            {"name": "udp", "port": port + 1, "protocol": "UDP"},
        ]))
        .await;
        ns.api::<HTTPRoute>()
            .patch(
                "shop",
                &apply,
                &Patch::Apply(json!({
                    "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                    "metadata": {"name": "shop"},
                    "spec": {
                        "parentRefs": [{"name": "shop", "sectionName": "http"}],
                        "hostnames": ["shop.example.com"],
                        "rules": [
                            {"matches": [{"path": {"type": "PathPrefix", "value": "/private"}}],
                             "filters": [{"type": "ExtensionRef", "extensionRef":
                                {"group": "microgate.dev", "kind": "AccessPolicy", "name": "keys"}}],
                             "backendRefs": [{"group": "microgate.dev", "kind": "Microservice", "name": "echo"}]},
                            {"matches": [{"path": {"type": "PathPrefix", "value": "/gone"}}],
                             "backendRefs": [{"group": "microgate.dev", "kind": "Microservice", "name": "missing"}]},
                            {"backendRefs": [{"group": "microgate.dev", "kind": "Microservice", "name": "echo"}]},
                        ],
                    },
                })),
            )
            .await
            .expect("create the HTTPRoute");
        // A rule whose ExtensionRef names an AccessPolicy that does not exist.
        ns.api::<HTTPRoute>()
            .patch(
                "vault",
                &apply,
                &Patch::Apply(json!({
                    "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                    "metadata": {"name": "vault"},
                    "spec": {
                        "parentRefs": [{"name": "shop", "sectionName": "http"}],
                        "hostnames": ["vault.example.com"],
                        "rules": [
                            {"filters": [{"type": "ExtensionRef", "extensionRef":
                                {"group": "microgate.dev", "kind": "AccessPolicy", "name": "absent"}}],
                             "backendRefs": [{"group": "microgate.dev", "kind": "Microservice", "name": "echo"}]},
                        ],
                    },
                })),
            )
            .await
            .expect("create the HTTPRoute naming a missing AccessPolicy");

        // Traffic: both Pods of the Microservice answer, for the route's host only.
        let mut host = HeaderMap::new();
        host.insert("host", "shop.example.com".parse().expect("a header value"));
        let pods: BTreeSet<String> = pods_of(&ns, "echo").await.into_iter().collect();
        let seen = wait::until("requests through the HTTPRoute to reach both Pods", WAIT, || async {
            let mut seen = BTreeSet::new();
            for _ in 0..20 {
                match probe::request_with(platform.listener, Method::GET, "/orders", host.clone(), "").await {
                    Ok(answer) if answer.status == StatusCode::OK => {
                        if let Some(pod) = answer.headers.get(POD_NAME_HEADER).and_then(|v| v.to_str().ok()) {
                            seen.insert(pod.to_owned());
                        }
                    }
                    Ok(answer) => return Probe::NotYet(format!("{} {}", answer.status, answer.body.trim())),
                    Err(error) => return Probe::NotYet(error.to_string()),
                }
            }
            if seen == pods {
                Probe::Done(seen)
            } else {
                Probe::NotYet(format!("reached {seen:?} of {pods:?}"))
            }
        })
        .await
        .expect("traffic reaches the Microservice");
        assert_eq!(seen, pods);
        let gone = probe::request_with(platform.listener, Method::GET, "/gone", host.clone(), "")
            .await
            .expect("an answer");
        assert_eq!(gone.status, StatusCode::INTERNAL_SERVER_ERROR, "{}", gone.body);
        let private = probe::request_with(platform.listener, Method::GET, "/private", host.clone(), "")
            .await
            .expect("an answer");
        assert_eq!(private.status, StatusCode::UNAUTHORIZED, "{}", private.body);
        let mut keyed = host.clone();
        keyed.insert("x-api-key", "k-1".parse().expect("a header value"));
        let private = probe::request_with(platform.listener, Method::GET, "/private", keyed, "")
            .await
            .expect("an answer");
        assert_eq!(private.status, StatusCode::OK, "{}", private.body);
        let mut other = HeaderMap::new();
        other.insert("host", "other.example.com".parse().expect("a header value"));
        let unrouted = probe::request_with(platform.listener, Method::GET, "/orders", other, "")
            .await
            .expect("an answer");
        assert_eq!(unrouted.status, StatusCode::NOT_FOUND, "{}", unrouted.body);
        // A filter that cannot be applied is not skipped: the rule refuses its requests.
        let mut vault_host = HeaderMap::new();
        vault_host.insert("host", "vault.example.com".parse().expect("a header value"));
        // The vault route reaches the table after the shop route it was created beside.
        wait::until("the vault route to refuse with 500", WAIT, || async {
            match probe::request_with(platform.listener, Method::GET, "/secrets", vault_host.clone(), "").await {
                Ok(answer) if answer.status == StatusCode::INTERNAL_SERVER_ERROR => Probe::Done(()),
                Ok(answer) => Probe::NotYet(format!("{} {}", answer.status, answer.body.trim())),
                Err(error) => Probe::NotYet(error.to_string()),
            }
        })
        .await
        .expect("a rule whose filter cannot be applied refuses its requests");

        // Status: what each resource shows.
        let statuses = wait::until("the Gateway API statuses", WAIT, || async {
            let class = serde_json::to_value(classes.get(&class_name).await.expect("the class")).expect("JSON");
            let gateway = serde_json::to_value(ns.api::<KubeGateway>().get("shop").await.expect("the Gateway"))
                .expect("JSON");
            let route = serde_json::to_value(ns.api::<HTTPRoute>().get("shop").await.expect("the route"))
                .expect("JSON");
            let parent = &route["status"]["parents"][0];
            let ready = condition(&class["status"]["conditions"], "Accepted") == pair("True", "Accepted")
                && condition(&gateway["status"]["conditions"], "Programmed") == pair("True", "Programmed")
                && condition(&parent["conditions"], "ResolvedRefs").is_some();
            if ready {
                Probe::Done((class, gateway, route))
            } else {
                Probe::NotYet(format!("{}", json!({"class": class["status"], "gateway": gateway["status"], "route": route["status"]})))
            }
        })
        .await
        .expect("the statuses are written");
        let (class, gateway, route) = statuses;
        assert!(
            class["status"]["supportedFeatures"]
                .as_array()
                .is_some_and(|f| f.iter().any(|f| f["name"] == "HTTPRoute")),
            "{}",
            class["status"]
        );
        let gateway_status = &gateway["status"];
        assert_eq!(gateway_status["addresses"][0]["value"], "127.0.0.1", "{gateway_status}");
        // One listener of two is valid: accepted, and says which is not.
        assert_eq!(
            condition(&gateway_status["conditions"], "Accepted"),
            pair("True", "ListenersNotValid"),
            "{gateway_status}"
        );
        let listeners = gateway_status["listeners"].as_array().expect("listener statuses");
        let http = listeners.iter().find(|l| l["name"] == "http").expect("the http listener");
        assert_eq!(http["attachedRoutes"], 2, "shop and vault");
        assert_eq!(condition(&http["conditions"], "Programmed"), pair("True", "Programmed"));
        let udp = listeners.iter().find(|l| l["name"] == "udp").expect("the udp listener");
        assert_eq!(
            condition(&udp["conditions"], "Accepted"),
            pair("False", "UnsupportedProtocol")
        );
        let parent = &route["status"]["parents"][0];
        assert_eq!(parent["controllerName"], "microgate.dev/gateway-controller");
        assert_eq!(condition(&parent["conditions"], "Accepted"), pair("True", "Accepted"));
        assert_eq!(
            condition(&parent["conditions"], "ResolvedRefs"),
            pair("False", "BackendNotFound"),
            "{parent}"
        );

        // The route naming the missing AccessPolicy says so, not that its references resolved.
        let vault = wait::until("the vault route's status", WAIT, || async {
            let route = serde_json::to_value(ns.api::<HTTPRoute>().get("vault").await.expect("the route"))
                .expect("JSON");
            let conditions = route["status"]["parents"][0]["conditions"].clone();
            match condition(&conditions, "ResolvedRefs") {
                Some(_) => Probe::Done(conditions),
                None => Probe::NotYet(format!("{}", route["status"])),
            }
        })
        .await
        .expect("the vault route's status is written");
        assert_eq!(condition(&vault, "ResolvedRefs"), pair("False", "BackendNotFound"), "{vault}");
        let message = vault
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "ResolvedRefs"))
            .and_then(|c| c["message"].as_str())
            .unwrap_or_default();
        assert!(message.contains("AccessPolicy") && message.contains("absent"), "{vault}");

        classes
            .delete(&class_name, &DeleteParams::default())
            .await
            .expect("delete the GatewayClass");
    })
    .await;
}

#[tokio::test]
async fn a_gateway_publishes_the_address_of_the_service_clients_reach_it_through() {
    with_namespace("e2e-gwapi-publish", |ns| async move {
        let settings = Settings {
            publish_service: Some(gateway::PublishedService {
                namespace: ns.name.clone(),
                name: "edge".to_owned(),
            }),
            ..Settings::gateway_api()
        };
        let platform = Platform::start_configured(&ns, std::future::pending(), settings).await;
        let apply = PatchParams::apply("e2e").force();
        let (classes, class_name) = create_class(&ns).await;
        let services = ns.api::<Service>();
        services
            .patch(
                "edge",
                &apply,
                &Patch::Apply(
                    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "edge"},
                    "spec": {"type": "LoadBalancer", "selector": {"app": "gateway"},
                             "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}),
                ),
            )
            .await
            .expect("create the gateway's Service");
        let cluster_ip = services
            .get("edge")
            .await
            .expect("the Service")
            .spec
            .and_then(|s| s.cluster_ip)
            .expect("a cluster IP");
        let port = platform.listener.port();
        apply_gateway(
            &ns,
            "edge",
            &class_name,
            json!([
                {"name": "http", "port": port, "protocol": "HTTP"},
            ]),
        )
        .await;
        let addresses = |wanted: Value| {
            let ns = &ns;
            async move {
                wait::until("the Gateway's published addresses", WAIT, || async {
                    let gateway = ns.api::<KubeGateway>().get("edge").await.expect("the Gateway");
                    let status = serde_json::to_value(&gateway.status).expect("JSON");
                    if status["addresses"] == wanted {
                        Probe::Done(())
                    } else {
                        Probe::NotYet(format!("{}", status["addresses"]))
                    }
                })
                .await
            }
        };
        // No load balancer yet: the Service's cluster IP, not the address the gateway listens on.
        addresses(json!([{"type": "IPAddress", "value": cluster_ip}]))
            .await
            .expect("the cluster IP is published");
        // The load balancer's ingress points once it has them (as a cloud controller writes them).
        services
            .patch_status(
                "edge",
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"loadBalancer": {"ingress": [
                    {"ip": "203.0.113.7"}, {"hostname": "edge.example.net"},
                ]}}})),
            )
            .await
            .expect("set the load balancer's ingress");
        addresses(json!([
            {"type": "IPAddress", "value": "203.0.113.7"},
            {"type": "Hostname", "value": "edge.example.net"},
        ]))
        .await
        .expect("the load balancer's addresses are published");
        classes
            .delete(&class_name, &DeleteParams::default())
            .await
            .expect("delete the GatewayClass");
    })
    .await;
}

/// Sends `count` GETs for `path` one after another; each answer's status and serving Pod.
async fn answers(platform: &Platform, path: &str, count: usize) -> Vec<(StatusCode, String)> {
    let mut answers = Vec::with_capacity(count);
    for _ in 0..count {
        let answer = probe::get(platform.listener, path).await.expect("an answer");
        let pod = answer
            .headers
            .get(POD_NAME_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        answers.push((answer.status, pod));
    }
    answers
}

#[tokio::test]
async fn an_httproute_retry_tries_again_after_a_broken_connection_or_a_backend_request_timeout() {
    with_namespace("e2e-gwapi-retry", |ns| async move {
        let platform = Platform::start_with_gateway_api(&ns).await;
        // Round robin sends every other request to the failing Pod, and no ejection takes it
        // out of rotation: each phase below meets its failure about ten times.
        let policy =
            json!({"loadBalancer": {"policy": "RoundRobin"}, "outlierDetection": {"consecutiveFailures": 0}});
        platform.microservice(&ns, "echo", 2, policy).await;
        let pods = pods_of(&ns, "echo").await;
        let failing = ns.backend(&pods[0]).expect("the first Pod's backend");
        let healthy = pods[1].clone();
        let apply = PatchParams::apply("e2e").force();
        let (classes, class_name) = create_class(&ns).await;
        let port = platform.listener.port();
        apply_gateway(
            &ns,
            "edge",
            &class_name,
            json!([
                {"name": "http", "port": port, "protocol": "HTTP"},
            ]),
        )
        .await;
        let echo = json!([{"group": "microgate.dev", "kind": "Microservice", "name": "echo"}]);
        let prefix = |value: &str| json!([{"path": {"type": "PathPrefix", "value": value}}]);
        ns.api::<HTTPRoute>()
            .patch(
                "retries",
                &apply,
                &Patch::Apply(json!({
                    "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                    "metadata": {"name": "retries"},
                    "spec": {
                        "parentRefs": [{"name": "edge"}],
                        "rules": [
                            // No codes: only the failures without an answer are retried.
                            {"matches": prefix("/retried"), "backendRefs": echo,
                             "retry": {"attempts": 1},
                             "timeouts": {"backendRequest": "200ms"}},
                            {"matches": prefix("/once"), "backendRefs": echo,
                             "timeouts": {"backendRequest": "200ms"}},
                        ],
                    },
                })),
            )
            .await
            .expect("create the HTTPRoute");
        let route = ns.api::<HTTPRoute>().get("retries").await.expect("the HTTPRoute");
        assert!(
            serde_json::to_value(&route.spec).expect("JSON")["rules"][0]["retry"].is_object(),
            "the experimental CRD keeps the rule's retry"
        );
        wait::until("both rules to reach both Pods", WAIT, || async {
            for path in ["/retried", "/once"] {
                let mut seen = BTreeSet::new();
                for _ in 0..4 {
                    match probe::get(platform.listener, path).await {
                        Ok(answer) if answer.status == StatusCode::OK => {
                            if let Some(pod) =
                                answer.headers.get(POD_NAME_HEADER).and_then(|v| v.to_str().ok())
                            {
                                seen.insert(pod.to_owned());
                            }
                        }
                        Ok(answer) => {
                            return Probe::NotYet(format!(
                                "{path}: {} {}",
                                answer.status,
                                answer.body.trim()
                            ));
                        }
                        Err(error) => return Probe::NotYet(error.to_string()),
                    }
                }
                if seen.len() != 2 {
                    return Probe::NotYet(format!("{path} reached {seen:?}"));
                }
            }
            Probe::Done(())
        })
        .await
        .expect("the HTTPRoute serves");

        // HTTPRouteRetryConnectionError: the connection breaks after the request was read.
        failing.reset_after_reading(true);
        let before = failing.requests();
        let retried = answers(&platform, "/retried", 20).await;
        assert!(
            retried
                .iter()
                .all(|(status, pod)| *status == StatusCode::OK && *pod == healthy),
            "every request answered by the healthy Pod: {retried:?}"
        );
        assert!(failing.requests() - before >= 5, "the failing Pod was tried");
        let once = answers(&platform, "/once", 20).await;
        assert!(
            once.iter().any(|(status, _)| *status == StatusCode::BAD_GATEWAY),
            "without retry the broken connections reach the client: {once:?}"
        );
        failing.reset_after_reading(false);

        // HTTPRouteRetryBackendTimeout: the attempt outlives backendRequest.
        failing.delay(std::time::Duration::from_secs(2));
        let before = failing.requests();
        let retried = answers(&platform, "/retried", 20).await;
        assert!(
            retried
                .iter()
                .all(|(status, pod)| *status == StatusCode::OK && *pod == healthy),
            "every request answered by the healthy Pod: {retried:?}"
        );
        assert!(failing.requests() - before >= 5, "the slow Pod was tried");
        let once = answers(&platform, "/once", 20).await;
        assert!(
            once.iter()
                .any(|(status, _)| *status == StatusCode::GATEWAY_TIMEOUT),
            "without retry the timeouts reach the client: {once:?}"
        );
        failing.delay(std::time::Duration::ZERO);

        classes
            .delete(&class_name, &DeleteParams::default())
            .await
            .expect("delete the GatewayClass");
    })
    .await;
}

/// A gateway serving one namespace reads that Namespace alone (its RBAC allows no more), which is
/// all a listener's `allowedRoutes` selector can match for it: a route is taken once the
/// Namespace's labels match, and refused (NotAllowedByListeners) while they do not.
#[tokio::test]
async fn a_listener_selecting_namespaces_by_label_takes_routes_once_the_namespace_matches() {
    with_namespace("e2e-gwapi-selector", |ns| async move {
        let platform = Platform::start_with_gateway_api(&ns).await;
        platform.microservice(&ns, "echo", 1, json!({})).await;
        let apply = PatchParams::apply("e2e").force();
        let (classes, class_name) = create_class(&ns).await;
        let port = platform.listener.port();
        let from_team = json!({"namespaces": {"from": "Selector",
            "selector": {"matchLabels": {"e2e.microgate.dev/team": "orders"}}}});
        apply_gateway(
            &ns,
            "teams",
            &class_name,
            json!([
                {"name": "http", "port": port, "protocol": "HTTP", "allowedRoutes": from_team},
            ]),
        )
        .await;
        ns.api::<HTTPRoute>()
            .patch(
                "orders",
                &apply,
                &Patch::Apply(json!({
                    "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                    "metadata": {"name": "orders"},
                    "spec": {"parentRefs": [{"name": "teams"}], "rules": [
                        {"backendRefs": [{"group": "microgate.dev", "kind": "Microservice", "name": "echo"}]},
                    ]},
                })),
            )
            .await
            .expect("create the HTTPRoute");
        let accepted = |wanted: Option<(String, String)>| {
            let ns = &ns;
            async move {
                wait::until("the HTTPRoute's Accepted condition", WAIT, || async {
                    let route = ns.api::<HTTPRoute>().get("orders").await.expect("the HTTPRoute");
                    let status = serde_json::to_value(&route.status).expect("JSON");
                    let got = condition(&status["parents"][0]["conditions"], "Accepted");
                    if got == wanted {
                        Probe::Done(())
                    } else {
                        Probe::NotYet(format!("{got:?}"))
                    }
                })
                .await
            }
        };
        accepted(pair("False", "NotAllowedByListeners"))
            .await
            .expect("refused while the Namespace has no matching label");
        let refused = probe::get(platform.listener, "/").await.expect("an answer");
        assert_eq!(refused.status, StatusCode::NOT_FOUND, "{refused:?}");

        Api::<Namespace>::all(ns.client.clone())
            .patch(
                &ns.name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"e2e.microgate.dev/team": "orders"}}})),
            )
            .await
            .expect("label the Namespace");
        accepted(pair("True", "Accepted"))
            .await
            .expect("taken once the Namespace's labels match");
        let taken = probe::get(platform.listener, "/").await.expect("an answer");
        assert_eq!(taken.status, StatusCode::OK, "{taken:?}");
        classes
            .delete(&class_name, &DeleteParams::default())
            .await
            .expect("delete the GatewayClass");
    })
    .await;
}

/// A rule's RequestMirror filters copy each request to their backends (Microservices here);
/// the client's answer comes from the rule's backend alone, and what became of each copy is
/// counted by mirror: answered by the Pod that got it, or not sent for want of an endpoint.
#[tokio::test]
async fn request_mirrors_get_a_copy_of_each_request_and_count_what_became_of_it() {
    with_namespace("e2e-gwapi-mirror", |ns| async move {
        let platform = Platform::start_with_gateway_api(&ns).await;
        platform.microservice(&ns, "echo", 1, json!({})).await;
        platform.microservice(&ns, "shadow", 1, json!({})).await;
        platform.microservice(&ns, "empty", 0, json!({})).await;
        let apply = PatchParams::apply("e2e").force();
        let (classes, class_name) = create_class(&ns).await;
        let port = platform.listener.port();
        apply_gateway(&ns, "shop", &class_name, json!([
            {"name": "http", "port": port, "protocol": "HTTP"},
        ]))
        .await;
        let microservice = |name: &str| json!({"group": "microgate.dev", "kind": "Microservice", "name": name});
        ns.api::<HTTPRoute>()
            .patch(
                "shop",
                &apply,
                &Patch::Apply(json!({
                    "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                    "metadata": {"name": "shop"},
                    "spec": {"parentRefs": [{"name": "shop"}], "rules": [{
                        "filters": [
                            {"type": "RequestMirror", "requestMirror": {"backendRef": microservice("shadow")}},
                            {"type": "RequestMirror", "requestMirror": {"backendRef": microservice("empty")}},
                        ],
                        "backendRefs": [microservice("echo")],
                    }]},
                })),
            )
            .await
            .expect("create the HTTPRoute");
        wait::until("the route to serve", WAIT, || async {
            match probe::get(platform.listener, "/").await {
                Ok(answer) if answer.status == StatusCode::OK => Probe::Done(()),
                other => Probe::NotYet(format!("{other:?}")),
            }
        })
        .await
        .expect("the route serves");
        let shadow_pod = pods_of(&ns, "shadow").await.remove(0);
        let shadow = ns.backend(&shadow_pod).expect("the shadow Pod's backend");
        let admin = platform.admin;
        let copies_counted = |service: &str, outcome: &str| {
            let labels = format!(r#"service="{service}",outcome="{outcome}""#);
            async move { metric(admin, "microgate_gateway_mirror_copies_total", &labels).await }
        };
        let answered_before = copies_counted("shadow", "answered").await;
        let no_endpoint_before = copies_counted("empty", "no-endpoint").await;
        let copies_before = shadow.requests();

        for n in 0..10 {
            let answer = probe::get(platform.listener, &format!("/orders/{n}"))
                .await
                .expect("an answer");
            assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
            let pod = answer
                .headers
                .get(POD_NAME_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            assert!(pod.starts_with("echo-"), "answered by the rule's backend, not a mirror: {pod}");
        }
        wait::until("every copy counted", WAIT, || async {
            let answered = copies_counted("shadow", "answered").await - answered_before;
            let no_endpoint = copies_counted("empty", "no-endpoint").await - no_endpoint_before;
            let copies = shadow.requests() - copies_before;
            if answered == 10.0 && no_endpoint == 10.0 && copies == 10 {
                Probe::Done(())
            } else {
                Probe::NotYet(format!("{answered} answered, {no_endpoint} without an endpoint, {copies} at the shadow Pod"))
            }
        })
        .await
        .expect("10 copies answered by the shadow Pod and 10 counted without an endpoint");
        classes
            .delete(&class_name, &DeleteParams::default())
            .await
            .expect("delete the GatewayClass");
    })
    .await;
}

/// A Gateway's `spec.tls.frontend` makes its HTTPS listener ask clients for a certificate: one
/// the named CA signed gets through, a client without one or with a stranger's is refused in
/// the handshake; with `AllowInsecureFallback` every client gets through and the Gateway says
/// so in its `InsecureFrontendValidationMode` condition.
#[tokio::test]
async fn an_https_listener_checking_client_certificates_refuses_clients_its_ca_did_not_sign() {
    with_namespace("e2e-gwapi-mtls", |ns| async move {
        let platform = Platform::start_with_gateway_api(&ns).await;
        platform.microservice(&ns, "echo", 1, json!({})).await;
        let apply = PatchParams::apply("e2e").force();
        let (classes, class_name) = create_class(&ns).await;
        let host = "shop.example.com";
        let server_ca = TestCa::new();
        ns.api::<Secret>()
            .create(
                &PostParams::default(),
                &server_ca.issue(&[host]).secret("shop-tls"),
            )
            .await
            .expect("create the certificate Secret");
        let client_ca = TestCa::named("shop clients");
        ns.api::<ConfigMap>()
            .patch(
                "client-ca",
                &apply,
                &Patch::Apply(
                    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "client-ca"},
                    "data": {"ca.crt": client_ca.cert_pem()}}),
                ),
            )
            .await
            .expect("create the CA ConfigMap");
        let gateway = |mode: &str| {
            json!({
                "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                "metadata": {"name": "shop"},
                "spec": {
                    "gatewayClassName": class_name,
                    "tls": {"frontend": {"default": {"validation": {
                        "mode": mode,
                        "caCertificateRefs": [{"group": "", "kind": "ConfigMap", "name": "client-ca"}],
                    }}}},
                    "listeners": [{"name": "https", "port": platform.listener.port(), "protocol": "HTTPS",
                        "hostname": host, "tls": {"certificateRefs": [{"name": "shop-tls"}]}}],
                },
            })
        };
        let gateways = ns.api::<KubeGateway>();
        gateways
            .patch("shop", &apply, &Patch::Apply(gateway("AllowValidOnly")))
            .await
            .expect("create the Gateway");
        ns.api::<HTTPRoute>()
            .patch(
                "shop",
                &apply,
                &Patch::Apply(json!({
                    "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                    "metadata": {"name": "shop"},
                    "spec": {"parentRefs": [{"name": "shop"}], "rules": [
                        {"backendRefs": [{"group": "microgate.dev", "kind": "Microservice", "name": "echo"}]},
                    ]},
                })),
            )
            .await
            .expect("create the HTTPRoute");
        let addr = platform.listener;
        let signed = server_ca.http1_client_presenting(&client_ca.issue_client("orders"));
        let stranger =
            server_ca.http1_client_presenting(&TestCa::named("strangers").issue_client("intruder"));
        let anonymous = server_ca.http1_client();
        let served = |client: TlsClient, what: &'static str| async move {
            wait::until(what, WAIT, || async {
                match client.get(addr, host, "/").await {
                    Ok(answer) if answer.status == StatusCode::OK => Probe::Done(()),
                    other => Probe::NotYet(format!("{other:?}")),
                }
            })
            .await
        };
        served(signed.clone(), "a client the CA signed to be served")
            .await
            .expect("served with a certificate the CA signed");
        let refused = anonymous
            .get(addr, host, "/")
            .await
            .expect_err("no certificate: refused");
        assert!(refused.contains("CertificateRequired"), "{refused}");
        let refused = stranger
            .get(addr, host, "/")
            .await
            .expect_err("a stranger's certificate: refused");
        assert!(refused.contains("UnknownCA"), "{refused}");

        gateways
            .patch("shop", &apply, &Patch::Apply(gateway("AllowInsecureFallback")))
            .await
            .expect("let clients in without a valid certificate");
        served(anonymous, "a client without a certificate to be served")
            .await
            .expect("insecure fallback: served without a certificate");
        served(stranger, "a client with a stranger's certificate to be served")
            .await
            .expect("insecure fallback: served with a certificate the CA did not sign");
        served(signed, "a client the CA signed to be served")
            .await
            .expect("still served with a certificate the CA signed");
        wait::until(
            "the Gateway to say clients are let in without a valid certificate",
            WAIT,
            || async {
                let gateway = gateways.get("shop").await.expect("the Gateway");
                let status = serde_json::to_value(&gateway.status).expect("JSON");
                let got = condition(&status["conditions"], "InsecureFrontendValidationMode");
                if got == pair("True", "ConfigurationChanged") {
                    Probe::Done(())
                } else {
                    Probe::NotYet(format!("{got:?}"))
                }
            },
        )
        .await
        .expect("InsecureFrontendValidationMode is True");
        classes
            .delete(&class_name, &DeleteParams::default())
            .await
            .expect("delete the GatewayClass");
    })
    .await;
}
