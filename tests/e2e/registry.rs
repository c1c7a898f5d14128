//! The registry API on the admin port: a blocking query and the event stream hear of a Pod
//! turning unready, a client balances by itself from it, and only loopback clients or those
//! with the admin token may read it.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use microgate_test_support::{TestNamespace, probe, with_namespace};
use serde_json::{Value, json};
use tokio::{net::TcpSocket, sync::watch};

use super::{ADMIN_TOKEN, Platform, pods_of};

#[path = "../../examples/registry-client/follow.rs"]
#[allow(dead_code)]
mod follow;

const WAIT: Duration = Duration::from_secs(30);

/// GET `path` on `admin`, from a socket bound to `source`, with `token` as a bearer token.
async fn get_from(
    source: IpAddr,
    admin: SocketAddr,
    path: &str,
    token: Option<&str>,
) -> (StatusCode, String) {
    let socket = TcpSocket::new_v4().expect("a socket");
    socket
        .bind(SocketAddr::new(source, 0))
        .expect("bind the client's address");
    let stream = socket.connect(admin).await.expect("connect to the admin port");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    let connection = tokio::spawn(connection);
    let mut request = Request::get(path).header(header::HOST, admin.to_string());
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request.body(Empty::<Bytes>::new()).expect("a request");
    let response = tokio::time::timeout(WAIT, sender.send_request(request))
        .await
        .expect("an answer in time")
        .expect("an answer");
    let status = response.status();
    let body = response.into_body().collect().await.expect("a body").to_bytes();
    connection.abort();
    (status, String::from_utf8_lossy(&body).into_owned())
}

async fn registry(admin: SocketAddr, query: &str) -> Value {
    let (status, body) = get_from([127, 0, 0, 1].into(), admin, &format!("/registry{query}"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    serde_json::from_str(&body).expect("the registry is JSON")
}

/// The endpoint of Pod `pod` in upstream `ns/name` of `registry`.
fn endpoint<'r>(registry: &'r Value, ns: &TestNamespace, name: &str, pod: &str) -> Option<&'r Value> {
    registry["upstreams"]
        .as_array()?
        .iter()
        .find(|u| u["namespace"] == ns.name.as_str() && u["name"] == name)?["endpoints"]
        .as_array()?
        .iter()
        .find(|e| e["pod"] == pod)
}

/// Server-Sent Events from `admin`'s `/registry/events`, as `(event, id, data)`.
async fn events(admin: SocketAddr) -> tokio::sync::mpsc::Receiver<(String, String, Value)> {
    let stream = tokio::net::TcpStream::connect(admin).await.expect("connect");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(connection);
    let request = Request::get("/registry/events")
        .header(header::HOST, admin.to_string())
        .body(Empty::<Bytes>::new())
        .expect("a request");
    let response = sender.send_request(request).await.expect("an answer");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[header::CONTENT_TYPE], "text/event-stream");
    let (send, receive) = tokio::sync::mpsc::channel(64);
    let mut body = response.into_body();
    tokio::spawn(async move {
        let mut text = String::new();
        while let Some(Ok(frame)) = body.frame().await {
            let Ok(data) = frame.into_data() else { continue };
            text.push_str(&String::from_utf8_lossy(&data));
            while let Some(end) = text.find("\n\n") {
                let block: String = text.drain(..end + 2).collect();
                let field = |name: &str| {
                    block
                        .lines()
                        .filter_map(|l| l.strip_prefix(name))
                        .map(|v| v.strip_prefix(' ').unwrap_or(v))
                        .collect::<Vec<_>>()
                        .join("\n")
                };
                // Keep-alive comments carry no event.
                if field("event:").is_empty() {
                    continue;
                }
                let data = serde_json::from_str(&field("data:")).expect("an event's data is JSON");
                if send.send((field("event:"), field("id:"), data)).await.is_err() {
                    return;
                }
            }
        }
    });
    receive
}

#[tokio::test]
async fn a_blocking_query_and_the_event_stream_hear_of_a_pod_turning_unready() {
    with_namespace("e2e-registry", |ns| async move {
        let platform = Platform::with_echo(&ns, 3, json!({})).await;
        let pods = pods_of(&ns, "echo").await;
        let admin = platform.admin;
        let before = registry(admin, "").await;
        let version = before["version"].as_u64().expect("a version");
        let echo = before["upstreams"]
            .as_array()
            .expect("upstreams")
            .iter()
            .find(|u| u["name"] == "echo")
            .expect("the echo upstream");
        assert_eq!(echo["kind"], "Microservice", "{echo}");
        assert_eq!(echo["routed"], true, "{echo}");
        assert_eq!(echo["loadBalancer"], "RoundRobin", "{echo}");
        for pod in &pods {
            let e = endpoint(&before, &ns, "echo", pod).expect("every pod is an endpoint");
            assert_eq!(
                (&e["ready"], &e["inRotation"], &e["ejected"], &e["inFlight"]),
                (&json!(true), &json!(true), &json!(false), &json!(0)),
                "{e}"
            );
            assert_eq!(e["address"], format!("{}:8080", ns.pod_ip(pod).expect("an IP")), "{e}");
            assert!(e["node"].is_string(), "a bound Pod's node: {e}");
        }

        // Ask with the current version: the answer waits for a change. Other changes (the
        // Gateway's status, say) may answer first; ask again until the Pod shows unready.
        let unready = pods[0].clone();
        let blocking = {
            let ns_name = ns.name.clone();
            let unready = unready.clone();
            tokio::spawn(async move {
                let mut known = version;
                loop {
                    let answer = registry(admin, &format!("?version={known}&wait=30s")).await;
                    let answered = Instant::now();
                    let next = answer["version"].as_u64().expect("a version");
                    assert!(next >= known, "versions never go back: {known} then {next}");
                    let upstream = answer["upstreams"]
                        .as_array()
                        .and_then(|u| u.iter().find(|u| u["namespace"] == ns_name.as_str() && u["name"] == "echo"))
                        .cloned()
                        .unwrap_or_default();
                    let flipped = upstream["endpoints"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|e| e["pod"] == unready.as_str() && e["ready"] == false);
                    if flipped {
                        return (answered, answer);
                    }
                    assert!(next != known, "a blocking query answers with the version it was given only after the wait");
                    known = next;
                }
            })
        };
        let mut stream = events(admin).await;
        let (event, id, first) = tokio::time::timeout(WAIT, stream.recv())
            .await
            .expect("the first event at once")
            .expect("an event");
        assert_eq!(event, "registry");
        assert_eq!(id, first["version"].to_string());
        assert_eq!(endpoint(&first, &ns, "echo", &unready).expect("the pod")["ready"], true);
        // Long enough for the blocking query to be waiting, not answered by a late change.
        tokio::time::sleep(Duration::from_millis(300)).await;

        let flip = Instant::now();
        ns.set_ready(&unready, false).await.expect("fail readiness");
        let written = Instant::now();
        let (answered, answer) = tokio::time::timeout(WAIT, blocking)
            .await
            .expect("the blocking query answers")
            .expect("the query task");
        let e = endpoint(&answer, &ns, "echo", &unready).expect("the unready pod is still listed");
        assert_eq!(e["ready"], false, "{e}");
        assert!(answer["version"].as_u64() > Some(version), "{answer}");
        eprintln!(
            "blocking query answered {:.1} ms after the readiness change began (a GET and a PATCH of the Pod's status), {:.1} ms after the API server acknowledged the PATCH",
            answered.duration_since(flip).as_secs_f64() * 1000.0,
            answered.saturating_duration_since(written).as_secs_f64() * 1000.0,
        );

        let streamed = tokio::time::timeout(WAIT, async {
            while let Some((_, id, data)) = stream.recv().await {
                assert_eq!(id, data["version"].to_string());
                if endpoint(&data, &ns, "echo", &unready).is_some_and(|e| e["ready"] == false) {
                    return Some(Instant::now());
                }
            }
            None
        })
        .await
        .expect("an event with the change")
        .expect("the stream stays open");
        eprintln!(
            "event stream delivered the change {:.1} ms after the readiness change began",
            streamed.duration_since(flip).as_secs_f64() * 1000.0
        );
    })
    .await;
}

#[tokio::test]
async fn a_client_balances_by_itself_from_the_registry() {
    with_namespace("e2e-registry-client", |ns| async move {
        let platform = Platform::with_echo(&ns, 3, json!({})).await;
        let pods = pods_of(&ns, "echo").await;
        let source = follow::Source {
            admin: platform.admin,
            token: None,
            namespace: ns.name.clone(),
            name: "echo".into(),
        };
        let (publish, endpoints) = watch::channel(follow::Endpoints::default());
        let follower = tokio::spawn(follow::follow(source, publish));
        let mut balancer = follow::RoundRobin::new(endpoints);
        let send_all = |balancer: follow::RoundRobin, n: usize| async move {
            let mut counts = std::collections::BTreeMap::<String, usize>::new();
            for _ in 0..n {
                let endpoint = balancer.pick().expect("an endpoint");
                let answer = microgate_test_support::probe::get(endpoint, "/")
                    .await
                    .expect("an answer");
                assert_eq!(answer.status, 200);
                let pod = answer.headers[microgate_test_support::backend::POD_NAME_HEADER]
                    .to_str()
                    .expect("a pod name")
                    .to_owned();
                *counts.entry(pod).or_default() += 1;
            }
            counts
        };
        tokio::time::timeout(WAIT, async {
            while balancer.endpoints().usable.len() < 3 {
                assert!(balancer.changed().await);
            }
        })
        .await
        .expect("the follower sees the three endpoints");
        let counts = send_all(balancer.clone(), 30).await;
        assert_eq!(
            counts.values().copied().collect::<Vec<_>>(),
            [10, 10, 10],
            "{counts:?}"
        );

        ns.set_ready(&pods[1], false).await.expect("fail readiness");
        tokio::time::timeout(WAIT, async {
            while balancer.endpoints().usable.len() != 2 {
                assert!(balancer.changed().await);
            }
        })
        .await
        .expect("the follower drops the unready endpoint");
        let counts = send_all(balancer.clone(), 20).await;
        assert_eq!(counts.len(), 2, "{counts:?}");
        assert!(!counts.contains_key(&pods[1]), "{counts:?}");
        assert!(counts.values().all(|n| *n == 10), "{counts:?}");
        follower.abort();
    })
    .await;
}

#[tokio::test]
async fn only_loopback_clients_or_those_with_the_token_may_read_the_registry() {
    with_namespace("e2e-registry-access", |ns| async move {
        let platform = Platform::start(&ns).await;
        let admin = platform.admin;
        // A client whose address is not the gateway's loopback (127.0.0.1): as a remote one.
        let elsewhere: IpAddr = [127, 0, 0, 2].into();
        let local: IpAddr = [127, 0, 0, 1].into();
        for path in [
            "/registry",
            "/registry/events",
            "/debug/config",
            "/debug/explain?url=http://a/",
        ] {
            let (status, body) = get_from(elsewhere, admin, path, None).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {body}");
            assert!(body.contains("bearer token"), "{body}");
            let (status, _) = get_from(elsewhere, admin, path, Some("not-the-token")).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{path} with a wrong token");
        }
        let (status, body) = get_from(elsewhere, admin, "/registry", Some(ADMIN_TOKEN)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(serde_json::from_str::<Value>(&body).expect("JSON")["version"].is_u64());
        let (status, _) = get_from(local, admin, "/registry", None).await;
        assert_eq!(status, StatusCode::OK, "loopback needs no token");
        // The rest of the admin port is as open as before.
        let (status, _) = get_from(elsewhere, admin, "/metrics", None).await;
        assert_eq!(status, StatusCode::OK);
    })
    .await;
}

#[tokio::test]
async fn a_service_port_of_the_gateway_api_is_listed_with_its_zone_and_node() {
    use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
    use kube::api::{Patch, PatchParams};
    use microgate::api::gateway_api::HTTPRoute;
    with_namespace("e2e-registry-service", |ns| async move {
        let platform = Platform::start_with_gateway_api(&ns).await;
        let apply = PatchParams::apply("e2e").force();
        let (_, class_name) = crate::gateway_api::create_class(&ns).await;
        let port = platform.listener.port();
        crate::gateway_api::apply_gateway(
            &ns,
            "web",
            &class_name,
            json!([{"name": "http", "port": port, "protocol": "HTTP"}]),
        )
        .await;
        // A selector-less Service whose slice someone else writes; the address is never sent
        // to here (documentation range, accepted by the API server unlike loopback).
        ns.api::<Service>()
            .patch(
                "site",
                &apply,
                &Patch::Apply(json!({
                    "apiVersion": "v1", "kind": "Service", "metadata": {"name": "site"},
                    "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
                })),
            )
            .await
            .expect("create the Service");
        ns.api::<EndpointSlice>()
            .patch(
                "site-1",
                &apply,
                &Patch::Apply(json!({
                    "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                    "metadata": {"name": "site-1", "labels": {"kubernetes.io/service-name": "site"}},
                    "addressType": "IPv4",
                    "ports": [{"name": "http", "port": 8080}],
                    "endpoints": [
                        {"addresses": ["192.0.2.10"], "conditions": {"ready": true},
                         "nodeName": "node-a", "zone": "zone-a",
                         "targetRef": {"kind": "Pod", "name": "site-0"}},
                        {"addresses": ["192.0.2.11"], "conditions": {"ready": false}, "zone": "zone-b"},
                    ],
                })),
            )
            .await
            .expect("create the EndpointSlice");
        ns.api::<HTTPRoute>()
            .patch(
                "site",
                &apply,
                &Patch::Apply(json!({
                    "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                    "metadata": {"name": "site"},
                    "spec": {"parentRefs": [{"name": "web"}],
                             "rules": [{"backendRefs": [{"name": "site", "port": 80}]}]},
                })),
            )
            .await
            .expect("create the HTTPRoute");

        let upstream =
            microgate_test_support::wait::until("the Service port in the registry", WAIT, || async {
                let answer = registry(platform.admin, "").await;
                let found = answer["upstreams"].as_array().and_then(|u| {
                    u.iter()
                        .find(|u| {
                            u["kind"] == "Service"
                                && u["namespace"] == ns.name.as_str()
                                && u["name"] == "site"
                        })
                        .cloned()
                });
                match found {
                    Some(upstream) if upstream["endpoints"].as_array().is_some_and(|e| !e.is_empty()) => {
                        microgate_test_support::wait::Probe::Done(upstream)
                    }
                    _ => microgate_test_support::wait::Probe::NotYet(answer.to_string()),
                }
            })
            .await
            .expect("the Service port is listed");
        assert_eq!(upstream["port"], 80, "{upstream:#}");
        assert_eq!(upstream["routed"], true);
        // Only the ready endpoint: the gateway reads no others from a slice.
        let endpoints = upstream["endpoints"].as_array().expect("endpoints");
        assert_eq!(endpoints.len(), 1, "{upstream:#}");
        let e = &endpoints[0];
        assert_eq!(
            (
                &e["pod"],
                &e["address"],
                &e["node"],
                &e["zone"],
                &e["ready"],
                &e["inRotation"]
            ),
            (
                &json!("site-0"),
                &json!("192.0.2.10:8080"),
                &json!("node-a"),
                &json!("zone-a"),
                &json!(true),
                &json!(true)
            ),
            "{e}"
        );
        let explained = probe::get(
            platform.admin,
            &format!("/debug/explain?url=http://any.example.com:{port}/&format=text"),
        )
        .await
        .expect("an answer");
        assert!(
            explained.body.contains(&format!(
                "backend   Service {}/site:80  weight 1 (100 %)",
                ns.name
            )),
            "{}",
            explained.body
        );
        assert!(explained.body.contains("192.0.2.10:8080"), "{}", explained.body);
    })
    .await;
}

#[tokio::test]
async fn an_ejection_and_its_end_each_answer_a_blocking_query() {
    with_namespace("e2e-registry-ejection", |ns| async move {
        let policy = json!({"outlierDetection": {"consecutiveFailures": 2, "baseEjectionTime": "1s", "maxEjectionPercent": 50}});
        let platform = Platform::with_echo(&ns, 2, policy).await;
        let pods = pods_of(&ns, "echo").await;
        let failing = &pods[0];
        let version = registry(platform.admin, "").await["version"]
            .as_u64()
            .expect("a version");
        // Wait for the change in the background while the endpoint fails.
        let admin = platform.admin;
        let waiting = tokio::spawn(async move {
            let mut known = version;
            loop {
                let answer = registry(admin, &format!("?version={known}&wait=30s")).await;
                known = answer["version"].as_u64().expect("a version");
                let ejected = answer["upstreams"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|u| u["endpoints"].as_array().into_iter().flatten())
                    .find(|e| e["ejected"] == true)
                    .cloned();
                if let Some(ejected) = ejected {
                    return (known, ejected, Instant::now());
                }
            }
        });
        ns.backend(failing)
            .expect("backend")
            .respond_with_status(StatusCode::SERVICE_UNAVAILABLE);
        // Round-robin: every other request meets the failing endpoint.
        for _ in 0..6 {
            let _ = microgate_test_support::probe::get(platform.listener, "/").await;
        }
        let (version, ejected, ejected_at) = tokio::time::timeout(WAIT, waiting)
            .await
            .expect("the blocking query hears of the ejection")
            .expect("the query task");
        assert_eq!(ejected["pod"], failing.as_str(), "{ejected}");
        assert_eq!(ejected["ejections"], 1, "{ejected}");
        assert!(ejected["ejectedUntil"].is_string(), "{ejected}");
        ns.backend(failing).expect("backend").reset();

        // No request comes: once other changes have been heard, only the timer set for the
        // ejection's end can answer (else the wait would run out, with the same version).
        let mut known = version;
        let ended = loop {
            let answer = registry(admin, &format!("?version={known}&wait=30s")).await;
            let next = answer["version"].as_u64().expect("a version");
            assert_ne!(next, known, "the wait ran out: the ejection's end moved no version");
            let endpoint = endpoint(&answer, &ns, "echo", failing).expect("the endpoint");
            if endpoint["ejected"] == false {
                break Instant::now();
            }
            known = next;
        };
        let lasted = ended.duration_since(ejected_at);
        eprintln!("the ejection's end answered a blocking query {:.0} ms after its start was heard", lasted.as_secs_f64() * 1000.0);
    })
    .await;
}
