//! Who the client is: a forged `X-Forwarded-For` from a client the listener does not trust
//! neither steers `sourceIp` hashing nor reaches the endpoint; from a trusted proxy (by CIDR or
//! by hop count) the right entry is the client, and the endpoint gets the list with the peer.

use std::net::SocketAddr;

use hyper::{HeaderMap, Method, StatusCode, header::HeaderValue};
use k8s_openapi::api::core::v1::Secret;
use kube::api::PostParams;
use microgate_test_support::{
    backend::{POD_NAME_HEADER, SEEN_FORWARDED_FOR_HEADER},
    probe,
    tls::{Session, TestCa},
    wait::{self, Probe},
    with_namespace,
};
use serde_json::json;

use crate::{Platform, WAIT, free_port};

/// Pods of `echo`: enough that a key steered at random rarely lands on one pod every time.
const PODS: i32 = 4;
/// Distinct forged or proxied addresses each test sends.
const ADDRESSES: u8 = 16;

fn hashed_on_source_ip() -> serde_json::Value {
    json!({"loadBalancer": {"policy": "ConsistentHash", "consistentHash": {"sourceIp": true}}})
}

/// One GET to `addr` with these `X-Forwarded-For` lines: the pod that answered, and the
/// `X-Forwarded-For` the endpoint saw.
async fn get_as(addr: SocketAddr, forwarded_for: &[&str]) -> (String, String) {
    let mut headers = HeaderMap::new();
    for line in forwarded_for {
        headers.append(
            "x-forwarded-for",
            HeaderValue::from_str(line).expect("a header value"),
        );
    }
    let answer = probe::request_with(addr, Method::GET, "/", headers, "")
        .await
        .expect("an answer");
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let header = |name: &str| {
        answer
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    (header(POD_NAME_HEADER), header(SEEN_FORWARDED_FOR_HEADER))
}

async fn await_listening(addr: SocketAddr) {
    wait::until(format!("the gateway to listen on {addr}"), WAIT, || async {
        match probe::get(addr, "/").await {
            Ok(answer) if answer.status == StatusCode::OK => Probe::Done(()),
            Ok(answer) => Probe::NotYet(format!("{}", answer.status)),
            Err(error) => Probe::NotYet(error.to_string()),
        }
    })
    .await
    .expect("the gateway serves the listener");
}

#[tokio::test]
async fn a_forged_x_forwarded_for_neither_steers_source_ip_hashing_nor_reaches_the_endpoint() {
    with_namespace("e2e-xff-forged", |ns| async move {
        let platform = Platform::with_echo(&ns, PODS, hashed_on_source_ip()).await;
        let addr = platform.listener;
        // The pod this client's own address (127.0.0.1) hashes to.
        let (pinned, seen) = get_as(addr, &[]).await;
        assert_eq!(seen, "127.0.0.1");
        for i in 1..=ADDRESSES {
            for forged in [
                vec![format!("203.0.113.{i}")],
                vec![format!("198.51.100.{i}, 203.0.113.{i}"), "10.0.0.1".to_owned()],
            ] {
                let lines: Vec<&str> = forged.iter().map(String::as_str).collect();
                let (pod, seen) = get_as(addr, &lines).await;
                assert_eq!(pod, pinned, "X-Forwarded-For {forged:?} moved the client");
                assert_eq!(seen, "127.0.0.1", "the endpoint saw the forged {forged:?}");
            }
        }
    })
    .await;
}

#[tokio::test]
async fn behind_trusted_proxies_the_right_x_forwarded_for_entry_is_the_client() {
    with_namespace("e2e-xff-trusted", |ns| async move {
        let platform = Platform::start(&ns).await;
        platform
            .microservice(&ns, "echo", PODS, hashed_on_source_ip())
            .await;
        let (by_cidr, by_hops, untrusted) = (free_port(), free_port(), free_port());
        let xff = |detection: serde_json::Value| json!({"xForwardedFor": detection});
        crate::create_gateway_spec(
            &ns,
            "gw",
            json!({
                "listeners": [
                    {"name": "by-cidr", "port": by_cidr,
                        "clientIPDetection": xff(json!({"trustedCIDRs": ["127.0.0.0/8", "10.0.0.0/8"]}))},
                    {"name": "by-hops", "port": by_hops,
                        "clientIPDetection": xff(json!({"numTrustedHops": 2}))},
                    {"name": "untrusted", "port": untrusted,
                        "clientIPDetection": xff(json!({"trustedCIDRs": ["192.0.2.0/24"]}))},
                ],
                "routes": [{"name": "all", "backends": [{"microservice": "echo"}]}],
            }),
        )
        .await;
        let at = |port| SocketAddr::from(([127, 0, 0, 1], port));
        for port in [by_cidr, by_hops, untrusted] {
            await_listening(at(port)).await;
        }
        let (pinned, _) = get_as(at(untrusted), &[]).await;
        let mut pods = std::collections::BTreeSet::new();
        for i in 1..=ADDRESSES {
            let client = format!("203.0.113.{i}");
            // Sent by the client itself through a trusted peer: the address is the client.
            let (direct, seen) = get_as(at(by_cidr), &[&client]).await;
            assert_eq!(seen, format!("{client}, 127.0.0.1"));
            pods.insert(direct.clone());
            // A forged left part and trusted proxies on the right: the walk stops at the client.
            let list = format!("9.9.9.9, {client}, 10.1.2.3");
            let (walked, seen) = get_as(at(by_cidr), &[&list, "127.0.0.5"]).await;
            assert_eq!(walked, direct, "{list} is the client {client}");
            assert_eq!(seen, format!("{list}, 127.0.0.5, 127.0.0.1"));
            // Two hops: the second address from the right.
            let list = format!("9.9.9.9, {client}, 10.1.2.3");
            let (counted, seen) = get_as(at(by_hops), &[&list]).await;
            assert_eq!(counted, direct, "{list} is the client {client} two hops back");
            assert_eq!(seen, format!("{list}, 127.0.0.1"));
            // A peer outside the trusted CIDRs: its header is neither read nor passed on.
            let (ignored, seen) = get_as(at(untrusted), &[&client]).await;
            assert_eq!(ignored, pinned, "an untrusted peer's {client} moved the client");
            assert_eq!(seen, "127.0.0.1");
        }
        // The trusted addresses do steer: they are the clients, spread over the pods.
        assert!(
            pods.len() > 1,
            "{ADDRESSES} client addresses all hashed to {pods:?}: the header was not used"
        );
    })
    .await;
}

#[tokio::test]
async fn https_listeners_sharing_a_port_each_trust_their_own_proxies() {
    with_namespace("e2e-xff-tls", |ns| async move {
        let platform = Platform::start(&ns).await;
        platform.microservice(&ns, "echo", 1, json!({})).await;
        let ca = TestCa::new();
        let certificate = ca.issue(&["behind-lb.example.com", "direct.example.com"]);
        ns.api::<Secret>()
            .create(&PostParams::default(), &certificate.secret("edge-tls"))
            .await
            .expect("create the Secret");
        let port = free_port();
        let https = |name: &str, host: &str| {
            json!({"name": name, "port": port, "protocol": "HTTPS", "hostnames": [host],
                "tls": {"certificateRefs": [{"name": "edge-tls"}]}})
        };
        let mut behind_lb = https("behind-lb", "behind-lb.example.com");
        behind_lb["clientIPDetection"] = json!({"xForwardedFor": {"trustedCIDRs": ["127.0.0.0/8"]}});
        crate::create_gateway_spec(
            &ns,
            "gw",
            json!({
                "listeners": [behind_lb, https("direct", "direct.example.com")],
                "routes": [{"name": "all", "backends": [{"microservice": "echo"}]}],
            }),
        )
        .await;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut forwarded = HeaderMap::new();
        forwarded.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.7"));
        // Over HTTP/1.1 (the gateway's own server) and HTTP/2 (hyper's), by ALPN.
        for (client, protocol) in [
            (ca.http1_client(), "HTTP/1.1"),
            (ca.client(&[b"h2"], rustls::DEFAULT_VERSIONS), "HTTP/2"),
        ] {
            for (host, expected) in [
                ("behind-lb.example.com", "203.0.113.7, 127.0.0.1"),
                ("direct.example.com", "127.0.0.1"),
            ] {
                let seen = wait::until(format!("{host} to be served over {protocol}"), WAIT, || async {
                    let connected = match client.connect(addr, host).await {
                        Ok(connected) => connected,
                        Err(error) => return Probe::NotYet(error.to_string()),
                    };
                    let answer = match Session::start(connected).await {
                        Ok(mut session) => session.send_with(Method::GET, host, "/", forwarded.clone()).await,
                        Err(error) => Err(error),
                    };
                    match answer {
                        Ok(answer) if answer.status == StatusCode::OK => Probe::Done(
                            answer
                                .headers
                                .get(SEEN_FORWARDED_FOR_HEADER)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_owned(),
                        ),
                        Ok(answer) => Probe::NotYet(answer.status.to_string()),
                        Err(error) => Probe::NotYet(error),
                    }
                })
                .await
                .expect("the listener serves");
                assert_eq!(seen, expected, "{host} over {protocol}");
            }
        }
    })
    .await;
}
