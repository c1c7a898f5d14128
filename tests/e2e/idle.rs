//! Idle keep-alive connections hold no buffer and, soon after, no task: the gateway's metrics
//! show no buffer lent while hundreds of answered connections sit idle, one lent while a head is
//! half sent, and every idle connection parked outside its task, still serving its next request;
//! over TLS too, where the session waits with the parked socket and carries on when woken.

use std::{net::SocketAddr, time::Duration};

use hyper::{Method, StatusCode};
use microgate::gateway::listen::ClientTimeouts;
use microgate_test_support::{
    probe,
    tls::{Session, TestCa},
    wait::{self, Probe},
    with_namespace,
};
use serde_json::json;
use tokio::{io::AsyncWriteExt, net::TcpStream};

use crate::{
    WAIT, create_gateway_spec, free_port,
    slow_clients::{REQUEST, platform_with_echo, read_response},
    tls::{create_secret, https},
};

/// Answered connections left idle at once.
const IDLE: usize = 300;

/// Long enough that no idle connection is closed while the test looks at them.
const TIMEOUTS: ClientTimeouts = ClientTimeouts {
    header_read: Duration::from_secs(120),
    write: Duration::from_secs(10),
};

/// A gauge of the gateway's from its /metrics.
async fn gauge(admin: SocketAddr, name: &str) -> Result<u64, String> {
    let answer = probe::get(admin, "/metrics").await.map_err(|e| e.to_string())?;
    answer
        .body
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .ok_or_else(|| format!("no {name} in /metrics"))
}

/// Waits until the gauge `name` is `expected`.
async fn gauge_becomes(admin: SocketAddr, name: &str, expected: u64) {
    wait::until(format!("{name} {expected}"), WAIT, || async {
        match gauge(admin, name).await {
            Ok(value) if value == expected => Probe::Done(()),
            Ok(value) => Probe::NotYet(format!("{name} {value}")),
            Err(error) => Probe::NotYet(error),
        }
    })
    .await
    .expect("the gauge settles");
}

/// Waits until the buffers lent are `expected`.
async fn lent_becomes(admin: SocketAddr, expected: u64) {
    gauge_becomes(admin, "microgate_gateway_client_buffers_lent", expected).await;
}

/// Waits until the parked connections are `expected`.
async fn parked_becomes(admin: SocketAddr, expected: u64) {
    gauge_becomes(admin, "microgate_gateway_client_connections_parked", expected).await;
}

#[tokio::test]
async fn idle_keep_alive_connections_hold_no_buffer() {
    with_namespace("e2e-idle-buffers", |ns| async move {
        let platform = platform_with_echo(&ns, TIMEOUTS).await;
        let addr = platform.listener;
        let mut idle = Vec::with_capacity(IDLE);
        for _ in 0..IDLE {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            stream.write_all(REQUEST).await.expect("send");
            assert_eq!(read_response(&mut stream).await, Ok(200));
            idle.push(stream);
        }
        // Every connection was answered and is open, waiting for its next request: none holds
        // a buffer, and the pool keeps only a few for reuse.
        lent_becomes(platform.admin, 0).await;
        let pooled = gauge(platform.admin, "microgate_gateway_client_buffers_pooled")
            .await
            .expect("the pool's gauge");
        assert!(
            (1..=128).contains(&pooled),
            "{pooled} buffers pooled for {IDLE} idle connections"
        );

        // A head half sent holds its read buffer until the rest comes and is answered.
        let mut half = TcpStream::connect(addr).await.expect("connect");
        half.write_all(&REQUEST[..10]).await.expect("send");
        lent_becomes(platform.admin, 1).await;
        half.write_all(&REQUEST[10..]).await.expect("send the rest");
        assert_eq!(read_response(&mut half).await, Ok(200));
        lent_becomes(platform.admin, 0).await;

        // Idle for a moment, every connection leaves its task and waits parked.
        parked_becomes(platform.admin, IDLE as u64 + 1).await;

        // Parked connections still serve: their next requests take a task and a buffer again,
        // pipelined ones included, and they are parked again once idle.
        for stream in idle.iter_mut().take(10) {
            stream.write_all(REQUEST).await.expect("send");
            assert_eq!(read_response(stream).await, Ok(200));
        }
        let pipelined = [REQUEST, REQUEST].concat();
        idle[10].write_all(&pipelined).await.expect("send two requests");
        assert_eq!(read_response(&mut idle[10]).await, Ok(200));
        assert_eq!(read_response(&mut idle[10]).await, Ok(200));
        lent_becomes(platform.admin, 0).await;
        parked_becomes(platform.admin, IDLE as u64 + 1).await;

        // A client that closes a parked connection ends it: it is parked no more.
        idle.truncate(IDLE - 50);
        parked_becomes(platform.admin, IDLE as u64 + 1 - 50).await;
    })
    .await;
}

/// TLS connections left idle after one request each.
const TLS_IDLE: usize = 50;

#[tokio::test]
async fn idle_tls_connections_park_with_their_sessions_and_carry_on_when_woken() {
    with_namespace("e2e-idle-tls", |ns| async move {
        const HOST: &str = "idle.example.com";
        let platform = platform_with_echo(&ns, TIMEOUTS).await;
        let ca = TestCa::new();
        create_secret(&ns, &ca.issue(&[HOST]).secret("idle-tls")).await;
        let port = free_port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        create_gateway_spec(
            &ns,
            "edge",
            json!({
                "listeners": [https("idle", port, &[HOST], "idle-tls")],
                "routes": [{"name": "all", "backends": [{"microservice": "echo"}]}],
            }),
        )
        .await;
        let client = ca.http1_client();
        wait::until("the HTTPS listener to answer", WAIT, || async {
            match client.get(addr, HOST, "/").await {
                Ok(answer) if answer.status == StatusCode::OK => Probe::Done(()),
                Ok(answer) => Probe::NotYet(format!("{}", answer.status)),
                Err(error) => Probe::NotYet(error),
            }
        })
        .await
        .expect("the HTTPS listener serves");

        let mut sessions = Vec::with_capacity(TLS_IDLE);
        for _ in 0..TLS_IDLE {
            let connected = client.connect(addr, HOST).await.expect("a handshake");
            let mut session = Session::start(connected).await.expect("HTTP/1.1 over TLS");
            let answer = session.send(Method::GET, HOST, "/").await.expect("an answer");
            assert_eq!(answer.status, StatusCode::OK);
            sessions.push(session);
        }
        // Idle for a moment, every TLS connection leaves its task, its session with it.
        parked_becomes(platform.admin, TLS_IDLE as u64).await;

        // Woken by its next request, a parked session carries on with the keys of its handshake
        // (the client would fail on anything else), and parks again once idle.
        for session in sessions.iter_mut().take(10) {
            for _ in 0..2 {
                let answer = session
                    .send(Method::GET, HOST, "/")
                    .await
                    .expect("a parked session answers");
                assert_eq!(answer.status, StatusCode::OK);
            }
        }
        parked_becomes(platform.admin, TLS_IDLE as u64).await;

        // A client that closes a parked TLS connection ends it.
        sessions.truncate(TLS_IDLE - 20);
        parked_becomes(platform.admin, TLS_IDLE as u64 - 20).await;
    })
    .await;
}
