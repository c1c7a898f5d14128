//! Tracing end to end, against a real Jaeger: a retried request is one trace with a server span
//! and a span per attempt (endpoint, status, why it was retried), the endpoint gets the trace
//! through `traceparent`, a request with no trace starts one, and a collector that is down
//! costs the requests nothing.

use std::time::Duration;

use hyper::{HeaderMap, Method, StatusCode, header::HeaderValue};
use microgate::gateway::trace::Settings;
use microgate_test_support::{TestNamespace, jaeger::Jaeger, probe, wait, wait::Probe, with_namespace};
use serde_json::json;

use super::{Platform, free_port, pods_of};

/// How long spans may take to reach Jaeger (the exporter batches for half a second).
const EXPORTED: Duration = Duration::from_secs(20);

async fn traced_platform(ns: &TestNamespace, otlp_endpoint: String, sampling_ratio: f64) -> Platform {
    let settings = Settings {
        otlp_endpoint,
        sampling_ratio,
        service_name: format!("microgate-{}", ns.name),
    };
    let settings = crate::Settings {
        tracing: Some(settings),
        ..crate::Settings::default()
    };
    Platform::start_configured(ns, std::future::pending(), settings).await
}

/// GET `/` with `traceparent` (when given).
async fn get_traced(platform: &Platform, traceparent: Option<&str>) -> probe::Answer {
    let mut headers = HeaderMap::new();
    if let Some(value) = traceparent {
        headers.insert("traceparent", HeaderValue::from_str(value).expect("header value"));
        headers.insert("tracestate", HeaderValue::from_static("client=1"));
    }
    probe::request_with(platform.listener, Method::GET, "/", headers, "")
        .await
        .expect("an answer")
}

/// The parts of a `traceparent` value: trace id, parent id, flags.
fn traceparent_parts(value: &str) -> (String, String, String) {
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "{value}");
    assert_eq!(parts[0], "00", "{value}");
    (parts[1].to_owned(), parts[2].to_owned(), parts[3].to_owned())
}

#[tokio::test]
async fn a_retried_request_is_one_trace_in_jaeger_with_both_attempts() {
    let jaeger = Jaeger::start().await.expect("start jaeger");
    with_namespace("e2e-trace-retry", |ns| async move {
        // Ratio 0: only the client's sampled flag records this trace.
        let platform = traced_platform(&ns, jaeger.otlp_endpoint(), 0.0).await;
        platform.microservice(&ns, "echo", 2, json!({})).await;
        let pods = pods_of(&ns, "echo").await;
        let failing = ns.backend(&pods[0]).expect("the failing pod's backend");
        failing.respond_with_status(StatusCode::SERVICE_UNAVAILABLE);
        platform
            .gateway(
                &ns,
                json!([{"name": "all", "backends": [{"microservice": "echo"}],
                "retry": {"attempts": 2, "retryOn": ["5xx"], "backoff": {"base": "1ms", "max": "5ms"},
                          "budget": {"percent": 100, "minPerSecond": 100}}}]),
            )
            .await;
        // Which pod a first attempt goes to is the balancer's choice: send traced requests
        // until one went to the failing pod first.
        let client_span = "b7ad6b7169203331";
        let mut retried = None;
        for n in 0..20u32 {
            let trace_id = format!("0af7651916cd43dd8448eb21{n:08x}");
            let before = failing.requests();
            let answer = get_traced(&platform, Some(&format!("00-{trace_id}-{client_span}-01"))).await;
            assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
            if failing.requests() > before {
                retried = Some((trace_id, answer));
                break;
            }
        }
        let (trace_id, answer) = retried.expect("a request whose first attempt went to the failing pod");

        // The endpoint that answered got the client's trace, with the gateway's span as parent.
        let seen = answer.headers["x-seen-traceparent"]
            .to_str()
            .expect("ascii")
            .to_owned();
        let (seen_trace, seen_parent, seen_flags) = traceparent_parts(&seen);
        assert_eq!(
            (seen_trace.as_str(), seen_flags.as_str()),
            (trace_id.as_str(), "01"),
            "{seen}"
        );
        assert_ne!(
            seen_parent, client_span,
            "the gateway's attempt is the endpoint's parent"
        );
        assert_eq!(answer.headers["x-seen-tracestate"], "client=1");

        let spans = jaeger
            .wait_for_trace(&trace_id, 3, EXPORTED)
            .await
            .expect("the trace in jaeger");
        assert_eq!(spans.len(), 3, "{spans:#?}");
        let server = spans
            .iter()
            .find(|s| s.tag("span.kind") == Some("server"))
            .unwrap_or_else(|| panic!("a server span: {spans:#?}"));
        assert_eq!(server.parent.as_deref(), Some(client_span), "{server:#?}");
        assert_eq!(server.tag("http.request.method"), Some("GET"));
        assert_eq!(server.tag("http.response.status_code"), Some("200"));
        assert_eq!(server.tag("url.path"), Some("/"));
        assert_eq!(server.tag("client.address"), Some("127.0.0.1"));
        assert!(
            server.tag("microgate.route").is_some_and(|r| r.ends_with("/all")),
            "{server:#?}"
        );
        let mut attempts: Vec<_> = spans
            .iter()
            .filter(|s| s.tag("span.kind") == Some("client"))
            .collect();
        attempts.sort_by_key(|s| s.tag("microgate.attempt").map(str::to_owned));
        assert_eq!(attempts.len(), 2, "{spans:#?}");
        for attempt in &attempts {
            assert_eq!(
                attempt.parent.as_deref(),
                Some(server.span_id.as_str()),
                "{attempt:#?}"
            );
        }
        let (first, second) = (attempts[0], attempts[1]);
        let ip = |pod: &str| ns.pod_ip(pod).expect("a pod ip").to_string();
        assert_eq!(first.tag("microgate.attempt"), Some("1"));
        assert_eq!(
            first.tag("server.address"),
            Some(ip(&pods[0]).as_str()),
            "{first:#?}"
        );
        assert_eq!(first.tag("k8s.pod.name"), Some(pods[0].as_str()));
        assert_eq!(first.tag("http.response.status_code"), Some("503"));
        assert_eq!(first.tag("error.type"), Some("503"));
        assert_eq!(first.tag("microgate.retry.reason"), Some("status 503"));
        assert_eq!(second.tag("microgate.attempt"), Some("2"));
        assert_eq!(
            second.tag("server.address"),
            Some(ip(&pods[1]).as_str()),
            "{second:#?}"
        );
        assert_eq!(second.tag("http.response.status_code"), Some("200"));
        assert_eq!(second.tag("http.request.resend_count"), Some("1"));
        assert_eq!(second.tag("microgate.retry.reason"), None);
        // The endpoint's parent is the attempt that reached it.
        assert_eq!(seen_parent, second.span_id, "{second:#?}");
        // The request's latency bucket names its trace as an exemplar.
        let metrics = probe::get(platform.admin, "/metrics")
            .await
            .expect("metrics")
            .body;
        let exemplar = format!(r#"# {{trace_id="{trace_id}"}}"#);
        assert!(
            metrics.lines().any(
                |l| l.starts_with("microgate_gateway_request_duration_seconds_bucket{")
                    && l.contains(&exemplar)
            ),
            "no exemplar {exemplar} in {metrics}"
        );
        assert!(
            jaeger
                .services()
                .await
                .expect("services")
                .contains(&format!("microgate-{}", ns.name))
        );
    })
    .await;
}

#[tokio::test]
async fn a_request_without_a_trace_starts_one_and_an_unsampled_trace_stays_unsampled() {
    let jaeger = Jaeger::start().await.expect("start jaeger");
    with_namespace("e2e-trace-new", |ns| async move {
        let platform = traced_platform(&ns, jaeger.otlp_endpoint(), 1.0).await;
        platform.microservice(&ns, "echo", 1, json!({})).await;
        platform
            .gateway(
                &ns,
                json!([{"name": "all", "backends": [{"microservice": "echo"}]}]),
            )
            .await;
        let answer = get_traced(&platform, None).await;
        assert_eq!(answer.status, StatusCode::OK);
        let seen = answer.headers["x-seen-traceparent"]
            .to_str()
            .expect("ascii")
            .to_owned();
        let (trace_id, parent, flags) = traceparent_parts(&seen);
        assert_eq!(flags, "01", "ratio 1.0 samples every new trace: {seen}");
        assert!(
            answer.headers.get("x-seen-tracestate").is_none(),
            "a new trace has no state"
        );
        let spans = jaeger
            .wait_for_trace(&trace_id, 2, EXPORTED)
            .await
            .expect("the trace in jaeger");
        let server = spans
            .iter()
            .find(|s| s.tag("span.kind") == Some("server"))
            .expect("server span");
        assert_eq!(server.parent, None, "a new trace's root: {server:#?}");
        let attempt = spans
            .iter()
            .find(|s| s.tag("span.kind") == Some("client"))
            .expect("attempt span");
        assert_eq!(attempt.span_id, parent);

        // A client that decided against sampling is followed (and a malformed traceparent
        // starts a new trace rather than failing the request).
        let unsampled = "00-1af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
        let answer = get_traced(&platform, Some(unsampled)).await;
        assert_eq!(answer.status, StatusCode::OK);
        let (trace_id, _, flags) =
            traceparent_parts(answer.headers["x-seen-traceparent"].to_str().expect("ascii"));
        assert_eq!(
            (trace_id.as_str(), flags.as_str()),
            ("1af7651916cd43dd8448eb211c80319c", "00")
        );
        let answer = get_traced(&platform, Some("00-not-a-trace-01")).await;
        assert_eq!(answer.status, StatusCode::OK);
        let (trace_id, _, flags) =
            traceparent_parts(answer.headers["x-seen-traceparent"].to_str().expect("ascii"));
        assert_eq!(flags, "01");
        assert_eq!(trace_id.len(), 32);
        assert!(
            answer.headers.get("x-seen-tracestate").is_none(),
            "state of a trace that was not kept"
        );
        jaeger
            .wait_for_trace(&trace_id, 2, EXPORTED)
            .await
            .expect("the new trace in jaeger");
    })
    .await;
}

#[tokio::test]
async fn requests_succeed_while_the_collector_is_down() {
    with_namespace("e2e-trace-down", |ns| async move {
        // Nothing listens on this port: every export fails.
        let platform = traced_platform(&ns, format!("http://127.0.0.1:{}", free_port()), 1.0).await;
        platform.microservice(&ns, "echo", 1, json!({})).await;
        platform
            .gateway(
                &ns,
                json!([{"name": "all", "backends": [{"microservice": "echo"}]}]),
            )
            .await;
        for _ in 0..50 {
            let answer = get_traced(&platform, None).await;
            assert_eq!(answer.status, StatusCode::OK);
            assert!(answer.headers.contains_key("x-seen-traceparent"));
        }
        let admin = platform.admin;
        wait::until("the failed exports to be counted", EXPORTED, || async {
            let metrics = probe::get(admin, "/metrics")
                .await
                .map(|a| a.body)
                .unwrap_or_default();
            let dropped = metrics
                .lines()
                .find(|l| l.starts_with(r#"microgate_gateway_spans_dropped_total{reason="export-failed"}"#))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
            if dropped > 0 {
                Probe::Done(dropped)
            } else {
                Probe::NotYet(format!("{dropped} dropped"))
            }
        })
        .await
        .expect("dropped spans counted");
    })
    .await;
}
