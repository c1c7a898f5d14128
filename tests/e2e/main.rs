//! End to end on the real control plane and real sockets: the controller and the gateway run in
//! this process (as `microgate run` does), the harness plays kubelet with real HTTP backends,
//! and requests go through the gateway's listener.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use futures::{StreamExt, stream};
use hyper::StatusCode;
use k8s_openapi::api::core::v1::Pod;
use microgate::{api::Gateway, discovery::ServiceKey, gateway};
use microgate_test_support::{
    TestNamespace,
    backend::{POD_NAME_HEADER, SEEN_AUTHORITY_HEADER, SEEN_HOST_HEADER},
    probe,
    wait::{self, Probe},
    with_namespace,
};
use serde_json::json;

mod platform;

pub(crate) use platform::{
    ADMIN_TOKEN, Platform, Settings, WAIT, create_gateway, create_gateway_spec, free_port, metric,
    microgate_process, pods_of,
};

mod access;
mod api_server_faults;
mod client_ip;
mod explain;
mod faults;
mod gateway_api;
mod gateway_process;
mod global_rate_limit;
mod h2_hostile;
mod hostile;
mod idle;
mod jwt;
mod leader;
mod operator_faults;
mod paths;
mod rate_limits;
mod registry;
mod rollouts;
mod slow_clients;
mod tls;
mod tracing;

/// Sends `count` GETs (`concurrency` at a time) and counts answers by (status, pod).
async fn traffic(
    addr: SocketAddr,
    path: &str,
    count: usize,
    concurrency: usize,
) -> BTreeMap<(u16, String), usize> {
    let answers: Vec<_> = stream::iter(0..count)
        .map(|_| async move {
            match probe::get(addr, path).await {
                Ok(answer) => {
                    let pod = answer
                        .headers
                        .get(POD_NAME_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-")
                        .to_owned();
                    (answer.status.as_u16(), pod)
                }
                Err(_) => (0, "-".to_owned()),
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let mut counts = BTreeMap::new();
    for answer in answers {
        *counts.entry(answer).or_default() += 1;
    }
    counts
}

#[tokio::test]
async fn round_robin_spreads_requests_exactly_over_the_pods() {
    with_namespace("e2e-rr", |ns| async move {
        let platform = Platform::with_echo(&ns, 3, json!({})).await;
        let counts = traffic(platform.listener, "/", 300, 1).await;
        let pods = pods_of(&ns, "echo").await;
        let expected: BTreeMap<_, _> = pods.iter().map(|p| ((200, p.clone()), 100)).collect();
        assert_eq!(counts, expected);
    })
    .await;
}

#[tokio::test]
async fn weighted_backends_split_traffic_90_10() {
    with_namespace("e2e-weights", |ns| async move {
        let platform = Platform::start(&ns).await;
        platform.microservice(&ns, "stable", 1, json!({})).await;
        platform.microservice(&ns, "canary", 1, json!({})).await;
        platform
            .gateway(
                &ns,
                json!([{"name": "split", "backends": [
                {"microservice": "stable", "weight": 90}, {"microservice": "canary", "weight": 10}]}]),
            )
            .await;
        let total = 10_000;
        let counts = traffic(platform.listener, "/", total, 16).await;
        let canary_pod = &pods_of(&ns, "canary").await[0];
        let canary = counts.get(&(200, canary_pod.clone())).copied().unwrap_or(0);
        let ok: usize = counts
            .iter()
            .filter(|((s, _), _)| *s == 200)
            .map(|(_, n)| n)
            .sum();
        assert_eq!(ok, total, "{counts:?}");
        let share = canary as f64 / total as f64;
        assert!(
            (0.07..=0.13).contains(&share),
            "canary got {:.1} % of traffic",
            share * 100.0
        );
    })
    .await;
}

#[tokio::test]
async fn unmatched_requests_get_a_404_that_says_so() {
    with_namespace("e2e-404", |ns| async move {
        let platform = Platform::start(&ns).await;
        platform.microservice(&ns, "echo", 1, json!({})).await;
        platform
            .gateway(
                &ns,
                json!([{"name": "api", "matches": [{"path": {"type": "PathPrefix", "value": "/api"}}],
                "backends": [{"microservice": "echo"}]}]),
            )
            .await;
        let miss = probe::get(platform.listener, "/apix").await.expect("an answer");
        assert_eq!(miss.status, StatusCode::NOT_FOUND);
        assert_eq!(miss.body, "no route matches this request\n");
        let hit = probe::get(platform.listener, "/api/orders")
            .await
            .expect("an answer");
        assert_eq!(hit.status, StatusCode::OK);
    })
    .await;
}

#[tokio::test]
async fn retries_hide_a_pod_that_answers_503() {
    with_namespace("e2e-retry", |ns| async move {
        let platform = Platform::start(&ns).await;
        platform.microservice(&ns, "echo", 3, json!({})).await;
        let failing = &pods_of(&ns, "echo").await[0];
        ns.backend(failing).expect("the failing pod's backend").respond_with_status(StatusCode::SERVICE_UNAVAILABLE);
        platform
            .gateway(&ns, json!([{"name": "all", "backends": [{"microservice": "echo"}],
                "retry": {"attempts": 2, "retryOn": ["gateway-error"], "backoff": {"base": "1ms", "max": "5ms"},
                          "budget": {"percent": 50, "minPerSecond": 10}}}]))
            .await;
        let total = 1000;
        let counts = traffic(platform.listener, "/", total, 8).await;
        let ok: usize = counts.iter().filter(|((s, _), _)| *s == 200).map(|(_, n)| n).sum();
        let success = ok as f64 / total as f64;
        assert!(success >= 0.999, "success {:.2} %: {counts:?}", success * 100.0);
        let failed_attempts = ns.backend(failing).expect("backend").requests() as usize;
        let bound = total / 2 + 100;
        assert!(failed_attempts <= bound, "{failed_attempts} retries exceed the budget of {bound}");
        eprintln!("{ok}/{total} succeeded; the failing pod took {failed_attempts} attempts, each retried elsewhere");
    })
    .await;
}

#[tokio::test]
async fn a_pod_turned_unready_stops_getting_traffic() {
    with_namespace("e2e-unready", |ns| async move {
        let platform = Platform::with_echo(&ns, 2, json!({})).await;
        let pods = pods_of(&ns, "echo").await;
        let key = ServiceKey::new(&ns.name, "echo");
        let started = Instant::now();
        ns.set_ready(&pods[0], false).await.expect("fail readiness");
        wait::until("the registry to drop the pod", WAIT, || async {
            let ready = platform.registry.snapshot(&key).ready_count();
            if ready == 1 {
                Probe::Done(())
            } else {
                Probe::NotYet(format!("{ready} ready"))
            }
        })
        .await
        .expect("the pod leaves the ready set");
        let out_of_rotation = started.elapsed();
        // The gateway recompiles on the registry's change; give it a moment, then check traffic.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let counts = traffic(platform.listener, "/", 100, 4).await;
        assert_eq!(
            counts.get(&(200, pods[1].clone())),
            Some(&100),
            "all to the ready pod: {counts:?}"
        );
        eprintln!("unready pod left the registry {out_of_rotation:?} after the status write");
    })
    .await;
}

#[tokio::test]
async fn a_route_timeout_answers_504_at_its_deadline() {
    with_namespace("e2e-timeout", |ns| async move {
        let platform = Platform::start(&ns).await;
        platform.microservice(&ns, "slow", 1, json!({})).await;
        let pod = &pods_of(&ns, "slow").await[0];
        ns.backend(pod).expect("backend").delay(Duration::from_secs(3));
        platform
            .gateway(
                &ns,
                json!([{"name": "all", "backends": [{"microservice": "slow"}], "timeout": "300ms"}]),
            )
            .await;
        let started = Instant::now();
        let answer = probe::get(platform.listener, "/").await.expect("an answer");
        let elapsed = started.elapsed();
        assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT);
        assert!(
            elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(3),
            "answered after {elapsed:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn a_post_that_reached_the_service_is_not_retried() {
    with_namespace("e2e-post", |ns| async move {
        let platform = Platform::start(&ns).await;
        platform.microservice(&ns, "echo", 1, json!({})).await;
        let pod = &pods_of(&ns, "echo").await[0];
        let backend = ns.backend(pod).expect("backend");
        backend.respond_with_status(StatusCode::SERVICE_UNAVAILABLE);
        platform
            .gateway(&ns, json!([{"name": "all", "backends": [{"microservice": "echo"}],
                "retry": {"attempts": 2, "retryOn": ["gateway-error"], "backoff": {"base": "1ms", "max": "2ms"}}}]))
            .await;
        let before = backend.requests();
        let get = probe::get(platform.listener, "/").await.expect("an answer");
        assert_eq!(get.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(backend.requests() - before, 3, "a GET is tried 1 + 2 times");

        let before = backend.requests();
        let post = probe::request(platform.listener, hyper::Method::POST, "/orders", "{}").await.expect("an answer");
        assert_eq!(post.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(backend.requests() - before, 1, "a POST that reached the service is sent once");
    })
    .await;
}

fn condition(gateway: &Gateway, type_: &str) -> Option<(String, String, String)> {
    let c = gateway
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

async fn await_programmed(ns: &TestNamespace, name: &str, status: &str) -> Gateway {
    let api = ns.api::<Gateway>();
    wait::until(format!("Gateway {name} Programmed={status}"), WAIT, || async {
        match api.get(name).await {
            Ok(gw) if condition(&gw, "Programmed").is_some_and(|c| c.0 == status) => Probe::Done(gw),
            Ok(gw) => Probe::NotYet(format!("{:?}", gw.status.map(|s| s.conditions))),
            Err(error) => Probe::NotYet(error.to_string()),
        }
    })
    .await
    .expect("the data plane reports Programmed")
}

#[tokio::test]
async fn a_served_gateway_is_accepted_and_programmed() {
    with_namespace("e2e-programmed", |ns| async move {
        let _platform = Platform::with_echo(&ns, 1, json!({})).await;
        let gateway = await_programmed(&ns, "gw", "True").await;
        assert_eq!(
            condition(&gateway, "Programmed").map(|c| c.1),
            Some("Programmed".to_owned())
        );
        let accepted = wait::until("Accepted=True beside Programmed", WAIT, || async {
            match ns.api::<Gateway>().get("gw").await {
                Ok(gw)
                    if condition(&gw, "Accepted").is_some_and(|c| c.0 == "True")
                        && condition(&gw, "Programmed").is_some_and(|c| c.0 == "True") =>
                {
                    Probe::Done(gw)
                }
                other => Probe::NotYet(format!("{:?}", other.map(|g| g.status))),
            }
        })
        .await
        .expect("both conditions, each from its own writer");
        assert_eq!(accepted.status.expect("status").routes[0].ready_backends, 1);
    })
    .await;
}

#[tokio::test]
async fn a_listener_port_already_taken_is_reported_not_programmed() {
    with_namespace("e2e-port-taken", |ns| async move {
        let platform = Platform::start(&ns).await;
        platform.microservice(&ns, "echo", 1, json!({})).await;
        // Something else holds the port the Gateway asks for.
        let squatter = std::net::TcpListener::bind(platform.listener).expect("hold the port");
        create_gateway(
            &ns,
            platform.listener.port(),
            json!([{"name": "all", "backends": [{"microservice": "echo"}]}]),
        )
        .await;
        let gateway = await_programmed(&ns, "gw", "False").await;
        let (_, reason, message) = condition(&gateway, "Programmed").expect("Programmed");
        assert_eq!(reason, "ListenerNotBound");
        assert!(
            message.contains(&platform.listener.port().to_string()),
            "{message}"
        );
        drop(squatter);
    })
    .await;
}

#[tokio::test]
async fn a_failing_pod_is_ejected_after_its_consecutive_failures() {
    with_namespace("e2e-eject", |ns| async move {
        let platform = Platform::start(&ns).await;
        let policy = json!({"outlierDetection": {"consecutiveFailures": 3, "baseEjectionTime": "1m", "maxEjectionPercent": 50}});
        platform.microservice(&ns, "echo", 3, policy).await;
        let failing = &pods_of(&ns, "echo").await[0];
        let backend = ns.backend(failing).expect("backend");
        // No retries: every failure reaches the client, so ejection alone is what helps.
        platform.gateway(&ns, json!([{"name": "all", "backends": [{"microservice": "echo"}]}])).await;
        // It fails from now on (the gateway's readiness probe above may have reached it).
        backend.respond_with_status(StatusCode::SERVICE_UNAVAILABLE);
        let before = backend.requests();
        let counts = traffic(platform.listener, "/", 300, 1).await;
        let failures: usize = counts.iter().filter(|((s, _), _)| *s == 503).map(|(_, n)| n).sum();
        assert_eq!(backend.requests() - before, 3, "ejected after 3 consecutive failures: {counts:?}");
        assert_eq!(failures, 3, "{counts:?}");
    })
    .await;
}

#[tokio::test]
async fn the_circuit_breaker_answers_503_beyond_max_requests() {
    with_namespace("e2e-breaker", |ns| async move {
        let platform = Platform::start(&ns).await;
        platform
            .microservice(&ns, "slow", 1, json!({"circuitBreaker": {"maxRequests": 2}}))
            .await;
        let pod = &pods_of(&ns, "slow").await[0];
        platform
            .gateway(
                &ns,
                json!([{"name": "all", "backends": [{"microservice": "slow"}]}]),
            )
            .await;
        ns.backend(pod)
            .expect("backend")
            .delay(Duration::from_millis(500));
        let answers: Vec<_> = stream::iter(0..6)
            .map(|_| probe::get(platform.listener, "/"))
            .buffer_unordered(6)
            .collect()
            .await;
        let open: Vec<_> = answers
            .iter()
            .flatten()
            .filter(|a| {
                a.headers
                    .get("x-microgate-reason")
                    .is_some_and(|r| r == "circuit-open")
            })
            .collect();
        let ok = answers
            .iter()
            .flatten()
            .filter(|a| a.status == StatusCode::OK)
            .count();
        assert_eq!((ok, open.len()), (2, 4), "{answers:?}");
        assert!(open.iter().all(|a| a.status == StatusCode::SERVICE_UNAVAILABLE));
    })
    .await;
}

#[tokio::test]
async fn upstream_connections_are_reused_and_capped_by_max_connections() {
    with_namespace("e2e-connections", |ns| async move {
        let breaker = json!({"circuitBreaker": {"maxConnections": 2, "maxPendingRequests": 2}});
        let platform = Platform::with_echo(&ns, 1, breaker).await;
        let pod = &pods_of(&ns, "echo").await[0];
        let backend = ns.backend(pod).expect("backend");

        // Two requests take the two connections, two wait for one of them, two are refused.
        backend.delay(Duration::from_millis(400));
        let answers: Vec<_> = stream::iter(0..6)
            .map(|_| probe::get(platform.listener, "/"))
            .buffer_unordered(6)
            .collect()
            .await;
        let reason = |a: &probe::Answer| {
            a.headers
                .get("x-microgate-reason")
                .and_then(|r| r.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        let ok = answers
            .iter()
            .flatten()
            .filter(|a| a.status == StatusCode::OK)
            .count();
        let refused: Vec<_> = answers
            .iter()
            .flatten()
            .filter(|a| a.status == StatusCode::SERVICE_UNAVAILABLE && reason(a) == "pending-overflow")
            .collect();
        assert_eq!((ok, refused.len()), (4, 2), "{answers:?}");
        assert!(
            backend.peak_connections() <= 2,
            "{} connections were open at once",
            backend.peak_connections()
        );

        // Sequential requests reuse the connections already open.
        backend.delay(Duration::ZERO);
        let opened = backend.connections();
        let counts = traffic(platform.listener, "/", 100, 1).await;
        assert_eq!(counts.get(&(200, pod.clone())), Some(&100), "{counts:?}");
        assert_eq!(
            backend.connections(),
            opened,
            "no new connection for 100 sequential requests"
        );
    })
    .await;
}

#[tokio::test]
async fn two_workers_share_the_port_and_hand_over_the_one_connection_max_connections_allows() {
    with_namespace("e2e-workers", |ns| async move {
        let breaker = json!({"circuitBreaker": {"maxConnections": 1, "maxPendingRequests": 10}});
        let platform = Platform::with_echo_on(&ns, 1, breaker, 2).await;
        let pod = &pods_of(&ns, "echo").await[0];
        let backend = ns.backend(pod).expect("backend");

        // Every request comes on a new client connection, which the kernel gives to either
        // worker's socket. A worker keeps its own idle endpoint connections; one without any,
        // at maxConnections 1, closes the other worker's to open its own.
        let opened = backend.connections();
        let counts = traffic(platform.listener, "/", 200, 1).await;
        assert_eq!(counts.get(&(200, pod.clone())), Some(&200), "{counts:?}");
        assert!(
            backend.peak_connections() <= 1,
            "{} connections open at once",
            backend.peak_connections()
        );
        assert!(
            backend.connections() > opened + 1,
            "both workers served: the one connection moved between them ({} opened)",
            backend.connections() - opened
        );
    })
    .await;
}

#[tokio::test]
async fn two_workers_open_an_http2_connection_each_and_share_one_at_max_connections() {
    with_namespace("e2e-workers-h2", |ns| async move {
        let platform = Platform::start_with(&ns, std::future::pending(), 2).await;
        for (name, max_connections) in [("roomy", 1024), ("tight", 1)] {
            let breaker = json!({"maxConnections": max_connections, "maxPendingRequests": 10});
            let spec = json!({"image": "registry.example/echo:1", "protocol": "HTTP2", "trafficPolicy": {"circuitBreaker": breaker}});
            platform.microservice_with(&ns, name, spec).await;
        }
        platform
            .gateway(&ns, json!([
                {"name": "roomy", "matches": [{"path": {"value": "/roomy"}}], "backends": [{"microservice": "roomy"}]},
                {"name": "tight", "matches": [{"path": {"value": "/tight"}}], "backends": [{"microservice": "tight"}]}]))
            .await;
        // Every request comes on a new client connection, which the kernel gives to either
        // worker's socket, one after the other. Each worker opens its own HTTP/2 connection to the
        // endpoint; at maxConnections 1 the second worker sends on the first one's instead.
        for (name, opened_by_workers) in [("roomy", 2), ("tight", 1)] {
            let pod = &pods_of(&ns, name).await[0];
            let backend = ns.backend(pod).expect("backend");
            let opened = backend.connections();
            let counts = traffic(platform.listener, &format!("/{name}"), 200, 1).await;
            assert_eq!(counts.get(&(200, pod.clone())), Some(&200), "{name}: {counts:?}");
            assert_eq!(
                backend.connections() - opened,
                opened_by_workers,
                "{name}: HTTP/2 connections opened for 200 requests over both workers"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn chunked_answers_pass_through_and_connections_closed_while_idle_are_not_a_failure() {
    with_namespace("e2e-upstream-http1", |ns| async move {
        let platform = Platform::start(&ns).await;
        platform.microservice(&ns, "web", 1, json!({})).await;
        let pod = &pods_of(&ns, "web").await[0];
        let backend = ns.backend(pod).expect("backend");
        // The backend closes a connection idle for 200 ms without a word, as many servers do.
        backend.close_idle_connections_after(Duration::from_millis(200));
        platform
            .gateway(
                &ns,
                json!([{"name": "all", "backends": [{"microservice": "web"}]}]),
            )
            .await;

        // A body in chunks arrives whole, and the connection serves the next request.
        backend.answer_in_chunks(true);
        let opened = backend.connections();
        for _ in 0..5 {
            let answer = probe::get(platform.listener, "/").await.expect("an answer");
            assert_eq!(answer.status, StatusCode::OK);
            assert_eq!(answer.body, format!("{pod}\n"));
        }
        assert!(
            backend.connections() <= opened + 1,
            "chunked answers cost a connection each: {} opened for 5 requests",
            backend.connections() - opened
        );
        backend.answer_in_chunks(false);

        // The gateway's next request on a connection closed while idle must not come back as a
        // failure, whatever its method.
        let before = backend.connections();
        for method in [
            hyper::Method::GET,
            hyper::Method::POST,
            hyper::Method::GET,
            hyper::Method::POST,
        ] {
            tokio::time::sleep(Duration::from_millis(400)).await;
            let answer = probe::request(platform.listener, method.clone(), "/", "payload")
                .await
                .expect("an answer");
            assert_eq!(
                answer.status,
                StatusCode::OK,
                "{method} after an idle close: {answer:?}"
            );
            assert_eq!(
                answer.headers["x-body-bytes"], "7",
                "the body reached the backend"
            );
        }
        assert_eq!(
            backend.connections(),
            before + 4,
            "each request after an idle close needed a new connection"
        );
    })
    .await;
}

/// Sends raw bytes and reads everything the gateway answers until it closes the connection or
/// stays silent for a second; whether it closed.
async fn raw_conversation(addr: SocketAddr, bytes: &[u8]) -> (String, bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the gateway");
    stream.write_all(bytes).await.expect("send");
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut closed = false;
    while let Ok(read) = tokio::time::timeout(Duration::from_secs(1), stream.read(&mut chunk)).await {
        match read {
            Ok(0) | Err(_) => {
                closed = true;
                break;
            }
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
        }
    }
    (String::from_utf8_lossy(&answer).into_owned(), closed)
}

#[tokio::test]
async fn pipelined_http10_head_and_chunked_requests_are_answered_in_order() {
    with_namespace("e2e-http1-server", |ns| async move {
        let platform = Platform::with_echo(&ns, 1, json!({})).await;
        let pod = &pods_of(&ns, "echo").await[0];

        // Three requests in one write: a GET, a HEAD, then a POST with a chunked body (which the
        // gateway's own server hands to hyper's, mid-connection). Three answers, in order.
        let (answers, closed) = raw_conversation(
            platform.listener,
            b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n\
              HEAD /two HTTP/1.1\r\nHost: a\r\n\r\n\
              POST /three HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        )
        .await;
        assert!(!closed, "the connection stays open");
        let heads: Vec<&str> = answers.matches("HTTP/1.1 ").collect();
        assert_eq!(heads.len(), 3, "three answers: {answers}");
        let parts: Vec<&str> = answers.split("HTTP/1.1 ").skip(1).collect();
        let body = format!("{pod}\n");
        assert!(
            parts[0].starts_with("200") && parts[0].ends_with(&body),
            "the GET: {}",
            parts[0]
        );
        assert!(
            parts[1].starts_with("200")
                && parts[1]
                    .to_ascii_lowercase()
                    .contains(&format!("content-length: {}", body.len()))
                && parts[1].ends_with("\r\n\r\n"),
            "the HEAD has the GET's length and no body: {}",
            parts[1]
        );
        assert!(
            parts[2].starts_with("200") && parts[2].contains("x-body-bytes: 3"),
            "the chunked POST arrived whole: {}",
            parts[2]
        );
        for part in &parts {
            assert!(
                part.to_ascii_lowercase().contains("\r\ndate: "),
                "every answer is dated: {part}"
            );
        }

        // HTTP/1.0 without keep-alive: one answer, then the gateway closes.
        let (answer, closed) =
            raw_conversation(platform.listener, b"GET / HTTP/1.0\r\nHost: a\r\n\r\n").await;
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.ends_with(&body),
            "{answer}"
        );
        assert!(closed, "an HTTP/1.0 connection closes after its answer");

        // A request that asks to close gets its answer, saying so, and the connection closes.
        let (answer, closed) = raw_conversation(
            platform.listener,
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nGET /never HTTP/1.1\r\n\r\n",
        )
        .await;
        assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer}");
        assert!(
            answer.to_ascii_lowercase().contains("connection: close"),
            "{answer}"
        );
        assert!(closed, "the connection closes after the answer");
    })
    .await;
}

/// Sends raw bytes and returns the status line of the answer ("" if the connection closed first).
async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the gateway");
    stream.write_all(bytes).await.expect("send");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn malformed_requests_get_a_4xx_and_the_gateway_keeps_serving() {
    with_namespace("e2e-malformed", |ns| async move {
        let platform = Platform::with_echo(&ns, 1, json!({})).await;
        let huge_header = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
            "x".repeat(128 * 1024)
        );
        let cases: Vec<(&str, Vec<u8>, &[&str])> = vec![
            (
                "conflicting Content-Length",
                b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabc".to_vec(),
                &["400"],
            ),
            (
                "bad chunk size",
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"
                    .to_vec(),
                &["400"],
            ),
            ("garbage request line", b"HELLO THERE\r\n\r\n".to_vec(), &["400"]),
            ("oversized headers", huge_header.into_bytes(), &["431", "400"]),
            (
                "bad header name",
                b"GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n".to_vec(),
                &["400"],
            ),
        ];
        for (what, bytes, expected) in cases {
            let status_line = raw_exchange(platform.listener, &bytes).await;
            let code = status_line
                .split_whitespace()
                .nth(1)
                .unwrap_or_default()
                .to_owned();
            assert!(
                expected.contains(&code.as_str()),
                "{what}: answered {status_line:?}, expected one of {expected:?}"
            );
            let healthy = probe::get(platform.listener, "/")
                .await
                .expect("the gateway still answers");
            assert_eq!(healthy.status, StatusCode::OK, "after {what}");
        }
    })
    .await;
}

#[tokio::test]
async fn a_stopping_gateway_finishes_requests_in_flight_and_accepts_no_more() {
    with_namespace("e2e-drain", |ns| async move {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let platform = Platform::start_until(&ns, async move {
            let _ = stopped.await;
        })
        .await;
        platform.microservice(&ns, "slow", 1, json!({})).await;
        platform
            .gateway(
                &ns,
                json!([{"name": "all", "backends": [{"microservice": "slow"}]}]),
            )
            .await;
        let pod = &pods_of(&ns, "slow").await[0];
        ns.backend(pod)
            .expect("backend")
            .delay(Duration::from_millis(800));

        let in_flight = tokio::spawn(probe::get(platform.listener, "/"));
        tokio::time::sleep(Duration::from_millis(200)).await;
        let _ = stop.send(());
        tokio::time::sleep(Duration::from_millis(200)).await;
        let refused = probe::get(platform.listener, "/")
            .await
            .expect_err("no new connections while draining");
        assert!(refused.is_connection_refused(), "{refused}");
        let answer = in_flight
            .await
            .expect("the request task")
            .expect("the request in flight is answered");
        assert_eq!(answer.status, StatusCode::OK);
    })
    .await;
}

#[tokio::test]
async fn a_body_too_large_to_buffer_is_streamed_through() {
    with_namespace("e2e-large-body", |ns| async move {
        let platform = Platform::start(&ns).await;
        platform.microservice(&ns, "echo", 1, json!({})).await;
        platform
            .gateway(
                &ns,
                json!([{"name": "all", "backends": [{"microservice": "echo"}], "retry": {"attempts": 2}}]),
            )
            .await;
        for size in [
            1000,
            gateway::request::MAX_BUFFERED_BODY + 1,
            3 * gateway::request::MAX_BUFFERED_BODY,
        ] {
            let body = "x".repeat(size);
            let answer = probe::request(platform.listener, hyper::Method::PUT, "/upload", &body)
                .await
                .expect("an answer");
            assert_eq!(answer.status, StatusCode::OK, "{size} bytes");
            let received = answer
                .headers
                .get(microgate_test_support::backend::BODY_BYTES_HEADER)
                .and_then(|v| v.to_str().ok());
            assert_eq!(
                received,
                Some(size.to_string().as_str()),
                "the backend got all {size} bytes"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn a_pod_killed_mid_traffic_costs_no_client_a_failure() {
    with_namespace("e2e-kill", |ns| async move {
        let platform = Platform::start(&ns).await;
        platform.microservice(&ns, "echo", 3, json!({})).await;
        platform
            .gateway(&ns, json!([{"name": "all", "backends": [{"microservice": "echo"}],
                "retry": {"attempts": 2, "retryOn": ["connect-failure", "reset", "gateway-error"],
                          "backoff": {"base": "1ms", "max": "5ms"}, "budget": {"percent": 50, "minPerSecond": 50}}}]))
            .await;
        let victim = pods_of(&ns, "echo").await[0].clone();
        let load = tokio::spawn(traffic(platform.listener, "/", 2000, 8));
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Killed: deleted with grace period 0, the Pod goes at once and its backend dies with it.
        ns.api::<Pod>()
            .delete(&victim, &kube::api::DeleteParams { grace_period_seconds: Some(0), ..Default::default() })
            .await
            .expect("delete a pod under load");
        let counts = load.await.expect("the load task");
        let failed: usize = counts.iter().filter(|((s, _), _)| *s != 200).map(|(_, n)| n).sum();
        assert_eq!(failed, 0, "{counts:?}");
    })
    .await;
}

/// Sends `count` requests, `concurrency` at a time, over three pods of which one answers 100 ms
/// late, balanced by `policy`; returns how many the slow pod got.
async fn requests_to_a_slow_pod(ns: &TestNamespace, policy: &str, count: usize, concurrency: usize) -> usize {
    let platform = Platform::start(ns).await;
    platform
        .microservice(ns, "echo", 3, json!({"loadBalancer": {"policy": policy}}))
        .await;
    platform
        .gateway(
            ns,
            json!([{"name": "all", "backends": [{"microservice": "echo"}]}]),
        )
        .await;
    let slow = pods_of(ns, "echo").await[0].clone();
    ns.backend(&slow)
        .expect("backend")
        .delay(Duration::from_millis(100));
    let counts = traffic(platform.listener, "/", count, concurrency).await;
    let ok: usize = counts
        .iter()
        .filter(|((s, _), _)| *s == 200)
        .map(|(_, n)| n)
        .sum();
    assert_eq!(ok, count, "{counts:?}");
    counts.get(&(200, slow)).copied().unwrap_or(0)
}

#[tokio::test]
async fn least_request_sends_less_to_a_slow_pod() {
    with_namespace("e2e-least", |ns| async move {
        let to_slow = requests_to_a_slow_pod(&ns, "LeastRequest", 600, 8).await;
        // Round robin would send it a third (200); requests in flight steer most elsewhere.
        assert!(to_slow < 100, "the slow pod got {to_slow} of 600");
    })
    .await;
}

#[tokio::test]
async fn peak_ewma_sends_less_to_a_slow_pod() {
    with_namespace("e2e-ewma", |ns| async move {
        // One request at a time: nothing is ever in flight elsewhere, only latency can steer.
        let to_slow = requests_to_a_slow_pod(&ns, "PeakEwma", 150, 1).await;
        // Round robin would send it a third (50).
        assert!(to_slow < 25, "the slow pod got {to_slow} of 150");
    })
    .await;
}

#[tokio::test]
async fn an_upstreams_retry_after_is_waited_before_the_retry() {
    with_namespace("e2e-retry-after", |ns| async move {
        let platform = Platform::start(&ns).await;
        platform.microservice(&ns, "echo", 1, json!({})).await;
        let routes = json!([{"name": "all", "backends": [{"microservice": "echo"}], "timeout": "10s",
            "retry": {"attempts": 1, "retryOn": ["retriable-status-codes"], "retriableStatusCodes": [503],
                "backoff": {"base": "1ms", "max": "2ms"}}}]);
        platform.gateway(&ns, routes).await;
        let pod = &pods_of(&ns, "echo").await[0];
        let backend = ns.backend(pod).expect("backend");
        backend.fail_next_with_retry_after(1, StatusCode::SERVICE_UNAVAILABLE, 1);
        let before = backend.requests();
        let started = Instant::now();
        let answer = probe::get(platform.listener, "/").await.expect("an answer");
        let took = started.elapsed();
        assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
        assert_eq!(backend.requests() - before, 2, "the 503, then the retry");
        // The backoff alone is at most 2 ms: only Retry-After makes the retry wait a second.
        assert!(took >= Duration::from_secs(1), "retried after {took:?}");
    })
    .await;
}

#[tokio::test]
async fn consistent_hashing_keeps_a_key_on_one_pod() {
    with_namespace("e2e-hash", |ns| async move {
        let platform = Platform::start(&ns).await;
        let policy =
            json!({"loadBalancer": {"policy": "ConsistentHash", "consistentHash": {"header": "x-user"}}});
        platform.microservice(&ns, "echo", 3, policy).await;
        platform
            .gateway(
                &ns,
                json!([{"name": "all", "backends": [{"microservice": "echo"}]}]),
            )
            .await;
        let mut pods_per_user = BTreeMap::new();
        for user in 0..20 {
            for _ in 0..10 {
                let mut headers = hyper::HeaderMap::new();
                headers.insert("x-user", format!("user-{user}").parse().expect("header value"));
                let answer = probe::request_with(platform.listener, hyper::Method::GET, "/", headers, "")
                    .await
                    .expect("an answer");
                let pod = answer.headers[POD_NAME_HEADER]
                    .to_str()
                    .expect("pod name")
                    .to_owned();
                pods_per_user
                    .entry(user)
                    .or_insert_with(std::collections::BTreeSet::new)
                    .insert(pod);
            }
        }
        assert!(
            pods_per_user.values().all(|pods| pods.len() == 1),
            "each user sticks to one pod: {pods_per_user:?}"
        );
        let used: std::collections::BTreeSet<_> = pods_per_user.values().flatten().collect();
        assert!(used.len() > 1, "users spread over the pods: {used:?}");
    })
    .await;
}

#[tokio::test]
async fn http2_microservices_are_reached_over_cleartext_http2() {
    with_namespace("e2e-h2c", |ns| async move {
        let platform = Platform::start(&ns).await;
        for (name, protocol) in [("classic", "HTTP"), ("modern", "HTTP2")] {
            let spec = json!({"image": "registry.example/echo:1", "protocol": protocol});
            platform.microservice_with(&ns, name, spec).await;
        }
        platform
            .gateway(&ns, json!([
                {"name": "classic", "matches": [{"path": {"value": "/classic"}}], "backends": [{"microservice": "classic"}]},
                {"name": "modern", "matches": [{"path": {"value": "/modern"}}], "backends": [{"microservice": "modern"}]}]))
            .await;
        let version = |answer: &probe::Answer| {
            answer.headers.get(microgate_test_support::backend::HTTP_VERSION_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned)
        };
        let seen = |answer: &probe::Answer, name: &str| answer.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let client_host = platform.listener.to_string();
        let classic = probe::get(platform.listener, "/classic").await.expect("an answer");
        assert_eq!(version(&classic).as_deref(), Some("HTTP/1.1"));
        assert_eq!(seen(&classic, SEEN_HOST_HEADER), Some(client_host.clone()), "HTTP/1.1 passes the client's Host on");
        let modern = probe::get(platform.listener, "/modern").await.expect("an answer");
        assert_eq!(modern.status, StatusCode::OK);
        assert_eq!(version(&modern).as_deref(), Some("HTTP/2.0"));
        // The client's host as :authority, and no Host header that could disagree with it.
        assert_eq!(seen(&modern, SEEN_AUTHORITY_HEADER), Some(client_host), "{modern:?}");
        assert_eq!(seen(&modern, SEEN_HOST_HEADER), None, "{modern:?}");
    })
    .await;
}

#[tokio::test]
async fn regular_expression_paths_and_query_parameters_route_requests() {
    with_namespace("e2e-regex", |ns| async move {
        let platform = Platform::start(&ns).await;
        platform.microservice(&ns, "versioned", 1, json!({})).await;
        platform.microservice(&ns, "debug", 1, json!({})).await;
        platform.microservice(&ns, "web", 1, json!({})).await;
        platform
            .gateway(&ns, json!([
                {"name": "web", "backends": [{"microservice": "web"}]},
                {"name": "versioned", "matches": [{"path": {"type": "RegularExpression", "value": "/api/v[0-9]+/.*"}}],
                 "backends": [{"microservice": "versioned"}]},
                {"name": "debug", "matches": [{"path": {"value": "/api"}, "queryParams": [{"name": "debug", "value": "1"}]}],
                 "backends": [{"microservice": "debug"}]}]))
            .await;
        let served_by = |path: &'static str| async move {
            let answer = probe::get(platform.listener, path).await.expect("an answer");
            let pod = answer.headers.get(POD_NAME_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("-").to_owned();
            pod.split('-').next().unwrap_or_default().to_owned()
        };
        assert_eq!(served_by("/api/v2/orders").await, "versioned");
        assert_eq!(served_by("/api/vx/orders").await, "web");
        assert_eq!(served_by("/api/orders?debug=1").await, "debug");
        assert_eq!(served_by("/api/orders?debug=0").await, "web");
    })
    .await;
}
