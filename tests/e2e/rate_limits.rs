//! AccessPolicies' rate limits end to end: a local limit answers 429 with `Retry-After` and the
//! IETF `RateLimit` headers once a client's bucket is empty, per key; a Global limit is shared
//! by two gateway processes through a real Redis, and when Redis stops each limit does what its
//! `whenUnreachable` says.

use std::{net::SocketAddr, process::Stdio, time::Instant};

use hyper::{HeaderMap, Method, StatusCode, header::HeaderValue};
use kube::api::PostParams;
use microgate::api::AccessPolicy;
use microgate_test_support::{TestNamespace, cluster, probe, redis_server::RedisServer, with_namespace};
use serde_json::json;
use tokio::process::Command;

use super::{Platform, free_port, gateway_process::wait_ready};

async fn create_policy(ns: &TestNamespace, name: &str, spec: serde_json::Value) {
    let policy: AccessPolicy = serde_json::from_value(json!({
        "apiVersion": "microgate.dev/v1alpha1", "kind": "AccessPolicy", "metadata": {"name": name},
        "spec": spec,
    }))
    .expect("a valid AccessPolicy");
    ns.api::<AccessPolicy>()
        .create(&PostParams::default(), &policy)
        .await
        .expect("create the AccessPolicy");
}

async fn get(addr: SocketAddr, path: &str, user: Option<&str>) -> probe::Answer {
    let mut headers = HeaderMap::new();
    if let Some(user) = user {
        headers.insert("x-user", HeaderValue::from_str(user).expect("a header value"));
    }
    probe::request_with(addr, Method::GET, path, headers, "")
        .await
        .expect("an answer")
}

fn header<'a>(answer: &'a probe::Answer, name: &str) -> &'a str {
    answer
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[tokio::test]
async fn a_local_limit_answers_429_with_retry_after_and_ratelimit_headers_per_key() {
    with_namespace("e2e-ratelimit-local", |ns| async move {
        let platform = Platform::start_with(&ns, std::future::pending(), 2).await;
        platform.microservice(&ns, "echo", 1, json!({})).await;
        create_policy(
            &ns,
            "five-a-minute",
            json!({"rateLimits": [{"name": "per-user", "requests": 5, "per": "1m", "key": {"header": "x-user"}}]}),
        )
        .await;
        platform
            .gateway(
                &ns,
                json!([
                    {"name": "limited", "matches": [{"path": {"type": "PathPrefix", "value": "/api"}}],
                     "backends": [{"microservice": "echo"}], "accessPolicy": "five-a-minute"},
                    {"name": "open", "backends": [{"microservice": "echo"}]},
                ]),
            )
            .await;
        let addr = platform.listener;
        // Two workers serve the listener; the buckets are the process's, shared by both.
        for sent in 1..=5 {
            let answer = get(addr, "/api/orders", Some("ada")).await;
            assert_eq!(answer.status, StatusCode::OK, "request {sent}: {}", answer.body);
            assert_eq!(header(&answer, "ratelimit-policy"), "\"per-user\";q=5;w=60");
            assert!(
                header(&answer, "ratelimit").starts_with(&format!("\"per-user\";r={};t=", 5 - sent)),
                "request {sent}: {}",
                header(&answer, "ratelimit")
            );
        }
        let refused = get(addr, "/api/orders", Some("ada")).await;
        assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS, "{}", refused.body);
        assert_eq!(header(&refused, "x-microgate-reason"), "rate-limited");
        let retry_after: u64 = header(&refused, "retry-after").parse().expect("Retry-After in seconds");
        assert!((1..=12).contains(&retry_after), "one token per 12 s: {retry_after}");
        assert_eq!(
            header(&refused, "ratelimit"),
            format!("\"per-user\";r=0;t={retry_after}")
        );
        // Another key has a bucket of its own; a route without the policy is not limited.
        assert_eq!(get(addr, "/api/orders", Some("bob")).await.status, StatusCode::OK);
        assert_eq!(get(addr, "/", Some("ada")).await.status, StatusCode::OK);
        assert!(get(addr, "/", Some("ada")).await.headers.get("ratelimit").is_none());
    })
    .await;
}

/// A `microgate gateway` process on `address` (the platform's gateway is on 127.0.0.1), with
/// Global limits in `redis_url`.
async fn gateway_process(ns: &TestNamespace, address: [u8; 4], redis_url: &str) -> tokio::process::Child {
    let admin = SocketAddr::from((address, free_port()));
    let child = Command::new(env!("CARGO_BIN_EXE_microgate"))
        .args(["gateway", "--workers=1"])
        .arg(format!("--listen-address={}", std::net::Ipv4Addr::from(address)))
        .arg(format!("--namespace={}", ns.name))
        .arg(format!("--admin-addr={admin}"))
        .arg(format!("--redis-url={redis_url}"))
        .env("KUBECONFIG", cluster::kubeconfig_path())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start microgate gateway");
    wait_ready(admin, std::time::Duration::from_millis(50)).await;
    child
}

#[tokio::test]
async fn a_global_limit_is_shared_by_two_gateways_and_redis_down_does_what_each_limit_says() {
    with_namespace("e2e-ratelimit-global", |ns| async move {
        let mut redis = RedisServer::start().await.expect("a redis-server");
        let platform = Platform::start_with_redis(&ns, redis.url()).await;
        platform.microservice(&ns, "echo", 1, json!({})).await;
        // 50 requests at once, then 10 a second, for everyone through every replica.
        let shared = |when: &str| {
            json!({"rateLimits": [{"name": "shared", "requests": 10, "per": "1s", "burst": 50,
                "key": {"header": "x-user"}, "scope": "Global", "whenUnreachable": when}]})
        };
        create_policy(&ns, "open-when-down", shared("Allow")).await;
        create_policy(&ns, "closed-when-down", shared("Deny")).await;
        platform
            .gateway(
                &ns,
                json!([
                    {"name": "a", "matches": [{"path": {"type": "PathPrefix", "value": "/a"}}],
                     "backends": [{"microservice": "echo"}], "accessPolicy": "open-when-down"},
                    {"name": "b", "matches": [{"path": {"type": "PathPrefix", "value": "/b"}}],
                     "backends": [{"microservice": "echo"}], "accessPolicy": "closed-when-down"},
                ]),
            )
            .await;
        let _second = gateway_process(&ns, [127, 0, 0, 2], &redis.url()).await;
        let port = platform.listener.port();
        let gateways = [platform.listener, SocketAddr::from(([127, 0, 0, 2], port))];

        // Both gateways, alternately, as fast as they answer: what they allow together is what
        // one bucket allows.
        let started = Instant::now();
        let (mut allowed, mut refused, mut sent) = (0u32, 0u32, 0u32);
        while started.elapsed().as_secs_f64() < 3.0 {
            let answer = get(gateways[(sent % 2) as usize], "/a/orders", Some("ada")).await;
            sent += 1;
            match answer.status {
                StatusCode::OK => allowed += 1,
                StatusCode::TOO_MANY_REQUESTS => refused += 1,
                other => panic!("unexpected {other}: {}", answer.body),
            }
        }
        let elapsed = started.elapsed().as_secs_f64();
        let bucket_allows = 50.0 + 10.0 * elapsed;
        let share = f64::from(allowed) / bucket_allows;
        println!(
            "two gateways, one Global limit: {allowed} allowed, {refused} refused of {sent} in {elapsed:.2} s; \
             the bucket allows {bucket_allows:.1} ({:.1} %)",
            share * 100.0
        );
        assert!(refused > 0, "the limit was never reached: {sent} sent");
        assert!(
            (0.9..=1.0 + 1.0 / bucket_allows).contains(&share),
            "allowed {allowed} against {bucket_allows:.1}"
        );

        // Redis stops: Allow lets requests through, Deny refuses them, on both gateways.
        redis.stop();
        for gateway in gateways {
            assert_eq!(get(gateway, "/a/x", Some("eve")).await.status, StatusCode::OK);
            let closed = get(gateway, "/b/x", Some("eve")).await;
            assert_eq!(closed.status, StatusCode::TOO_MANY_REQUESTS, "{}", closed.body);
        }
        // Redis back (empty): limits apply again.
        redis.restart().await.expect("redis-server restarts");
        let mut back = false;
        for _ in 0..100 {
            if get(gateways[0], "/b/x", Some("eve")).await.status == StatusCode::OK {
                back = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert!(back, "Deny lifts once Redis answers again");
    })
    .await;
}
