//! AccessPolicies' rate limits end to end: a local limit answers 429 with `Retry-After` and the
//! IETF `RateLimit` headers once a client's bucket is empty, per key, and holds its rate for
//! each of several client addresses across worker threads; a Global limit is shared
//! by two gateway processes through a real Redis, and when Redis stops each limit does what its
//! `whenUnreachable` says.

use std::{net::SocketAddr, process::Stdio, time::Instant};

use hyper::{HeaderMap, Method, StatusCode, header::HeaderValue};
use microgate_test_support::{TestNamespace, cluster, probe, redis_server::RedisServer, with_namespace};
use serde_json::json;
use tokio::process::Command;

use super::{
    Platform,
    access::{create_policy, header},
    free_port,
    gateway_process::wait_ready,
};

async fn get(addr: SocketAddr, path: &str, user: Option<&str>) -> probe::Answer {
    let mut headers = HeaderMap::new();
    if let Some(user) = user {
        headers.insert("x-user", HeaderValue::from_str(user).expect("a header value"));
    }
    probe::request_with(addr, Method::GET, path, headers, "")
        .await
        .expect("an answer")
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

/// Sends keep-alive GETs of `path` from `source` (a loopback address of its own) to `gateway`
/// until `deadline`, one at a time: how many were answered 200 and how many 429, when the first
/// was sent and when the last was answered.
async fn hammer(
    source: [u8; 4],
    gateway: SocketAddr,
    path: &str,
    deadline: Instant,
) -> (u32, u32, Instant, Instant) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket
        .bind(SocketAddr::from((source, 0)))
        .expect("a loopback source address");
    let stream = socket.connect(gateway).await.expect("connect to the gateway");
    let mut stream = BufReader::new(stream);
    let request = format!("GET {path} HTTP/1.1\r\nHost: limits.test\r\n\r\n");
    let (mut allowed, mut refused) = (0, 0);
    let first = Instant::now();
    while Instant::now() < deadline {
        stream
            .get_mut()
            .write_all(request.as_bytes())
            .await
            .expect("send");
        let mut status_line = String::new();
        stream.read_line(&mut status_line).await.expect("a status line");
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            stream.read_line(&mut line).await.expect("a header line");
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().expect("a length");
            }
        }
        let mut body = vec![0; length];
        stream.read_exact(&mut body).await.expect("the body");
        match status_line.split(' ').nth(1) {
            Some("200") => allowed += 1,
            Some("429") => refused += 1,
            other => panic!("unexpected status {other:?}: {status_line}"),
        }
    }
    (allowed, refused, first, Instant::now())
}

#[tokio::test]
async fn a_local_limit_holds_its_rate_per_client_ip_across_worker_threads() {
    with_namespace("e2e-ratelimit-accuracy", |ns| async move {
        let platform = Platform::start_with(&ns, std::future::pending(), 2).await;
        platform.microservice(&ns, "echo", 1, json!({})).await;
        create_policy(
            &ns,
            "per-ip",
            // A burst of a second's worth: a client the loaded machine holds back for less than
            // a second loses no tokens, so what is allowed measures the limit, not the machine.
            json!({"rateLimits": [{"name": "per-ip", "requests": 100, "per": "1s", "burst": 100}]}),
        )
        .await;
        platform
            .gateway(&ns, json!([{"name": "all", "backends": [{"microservice": "echo"}], "accessPolicy": "per-ip"}]))
            .await;
        // Four client addresses, two connections each (the two workers take connections in turn).
        let deadline = Instant::now() + std::time::Duration::from_secs(2);
        let mut clients = Vec::new();
        for ip in 11..15u8 {
            for _ in 0..2 {
                let client = tokio::spawn(hammer([127, 0, 0, ip], platform.listener, "/x", deadline));
                clients.push((ip, client));
            }
        }
        let mut per_ip = std::collections::BTreeMap::<u8, (u32, u32, Option<Instant>, Option<Instant>)>::new();
        for (ip, client) in clients {
            let (allowed, refused, first, last) = client.await.expect("a client");
            let entry = per_ip.entry(ip).or_default();
            entry.0 += allowed;
            entry.1 += refused;
            entry.2 = Some(entry.2.map_or(first, |f| f.min(first)));
            entry.3 = Some(entry.3.map_or(last, |l| l.max(last)));
        }
        for (ip, (allowed, refused, first, last)) in per_ip {
            // From this address's first request to its last answer.
            let window = match (first, last) {
                (Some(first), Some(last)) => last.duration_since(first).as_secs_f64(),
                _ => panic!("127.0.0.{ip} sent nothing"),
            };
            let bucket_allows = 100.0 + 100.0 * window;
            let share = f64::from(allowed) / bucket_allows;
            println!(
                "127.0.0.{ip}: {allowed} allowed, {refused} refused in {window:.2} s; the bucket allows {bucket_allows:.1} ({:.1} %)",
                share * 100.0
            );
            assert!(refused > 0, "127.0.0.{ip} never reached the limit");
            assert!(
                (0.95..=1.0 + 1.0 / bucket_allows).contains(&share),
                "127.0.0.{ip}: allowed {allowed} against {bucket_allows:.1}"
            );
        }
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
