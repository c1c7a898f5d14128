//! Slow and greedy clients: heads trickled byte by byte are cut at the header deadline while
//! other clients are served; an idle keep-alive connection is closed; a client that does not
//! read its response is cut off; a listener at its connection limit refuses at once.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use hyper::StatusCode;
use microgate::gateway::listen::ClientTimeouts;
use microgate_test_support::{
    probe,
    wait::{self, Probe},
    with_namespace,
};
use serde_json::json;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::{Platform, Settings, WAIT, free_port, pods_of};

/// Short deadlines, so that the tests wait seconds, not the defaults' tens of seconds.
const TIMEOUTS: ClientTimeouts = ClientTimeouts {
    header_read: Duration::from_secs(2),
    write: Duration::from_secs(2),
};
/// Connections trickling their heads at once.
const TRICKLERS: usize = 1000;
/// How often a trickler sends its next byte.
const TRICKLE_EVERY: Duration = Duration::from_millis(200);
pub(super) const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: shop\r\n\r\n";

pub(super) async fn platform_with_echo(
    ns: &microgate_test_support::TestNamespace,
    timeouts: ClientTimeouts,
) -> Platform {
    let settings = Settings {
        client_timeouts: timeouts,
        ..Settings::default()
    };
    let platform = Platform::start_configured(ns, std::future::pending(), settings).await;
    platform.microservice(ns, "echo", 1, json!({})).await;
    platform
        .gateway(
            ns,
            json!([{"name": "all", "backends": [{"microservice": "echo"}]}]),
        )
        .await;
    platform
}

/// Reads one response with a Content-Length off `stream`: its status.
pub(super) async fn read_response(stream: &mut TcpStream) -> Result<u16, String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(head)) = response.parse(&buf) {
            let length: usize = response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())
                .ok_or("a response without content-length")?;
            if buf.len() >= head + length {
                return response.code.ok_or_else(|| "no status".to_owned());
            }
        }
        match stream.read(&mut chunk).await {
            Ok(0) => return Err(format!("closed after {} bytes", buf.len())),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(error) => return Err(error.to_string()),
        }
    }
}

/// Reads until the gateway closes `stream` (end of stream or reset), at most `within`: the
/// bytes read, or `None` if it is still open then.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut all = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => all.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .ok()
    .map(|()| all)
}

/// Sends a request head one byte per [`TRICKLE_EVERY`], never finishing it; how long the
/// connection lasted once the gateway closed it.
async fn trickle(addr: SocketAddr, give_up: Duration) -> Result<Duration, String> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let started = Instant::now();
    let head = b"GET / HTTP/1.1\r\nHost: shop\r\nX-Slow: ";
    let mut sent = 0;
    let mut buf = [0u8; 512];
    while started.elapsed() < give_up {
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => return Ok(started.elapsed()),
                // An answer (say a 408) before the close is fine: read on to the close.
                Ok(_) => {}
            },
            () = tokio::time::sleep(TRICKLE_EVERY) => {
                let byte = head.get(sent).copied().unwrap_or(b'a');
                if stream.write_all(&[byte]).await.is_err() {
                    return Ok(started.elapsed());
                }
                sent += 1;
            }
        }
    }
    Err(format!("still open after {give_up:?}, {sent} bytes sent"))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(index).copied().unwrap_or_default()
}

/// Sends GETs one after another until `stop`; every one must succeed. Their latencies, sorted.
async fn steady_traffic(addr: SocketAddr, stop: Arc<AtomicBool>, at_least: usize) -> Vec<Duration> {
    let mut latencies = Vec::new();
    while latencies.len() < at_least || !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let answer = probe::get(addr, "/").await.expect("a normal request is answered");
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        latencies.push(started.elapsed());
    }
    latencies.sort();
    latencies
}

#[tokio::test]
async fn trickled_heads_are_cut_at_the_header_deadline_while_other_clients_are_served() {
    with_namespace("e2e-slowloris", |ns| async move {
        let platform = platform_with_echo(&ns, TIMEOUTS).await;
        let addr = platform.listener;

        // An idle keep-alive connection is closed at the header deadline.
        let mut idle = TcpStream::connect(addr).await.expect("connect");
        idle.write_all(REQUEST).await.expect("send a request");
        assert_eq!(read_response(&mut idle).await, Ok(200));
        let rest = read_until_closed(&mut idle, TIMEOUTS.header_read * 4).await;
        assert_eq!(
            rest.as_deref(),
            Some(&b""[..]),
            "an idle keep-alive connection is closed, silently"
        );

        let idle_run = steady_traffic(addr, Arc::new(AtomicBool::new(true)), 200).await;

        let give_up = TIMEOUTS.header_read * 4;
        let tricklers: Vec<_> = (0..TRICKLERS)
            .map(|_| tokio::spawn(trickle(addr, give_up)))
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let traffic = tokio::spawn(steady_traffic(addr, stop.clone(), 200));
        let mut lasted = Vec::with_capacity(TRICKLERS);
        let mut failures = Vec::new();
        for trickler in tricklers {
            match trickler.await.expect("the trickler runs") {
                Ok(duration) => lasted.push(duration),
                Err(why) => failures.push(why),
            }
        }
        stop.store(true, Ordering::Relaxed);
        let under_attack = traffic.await.expect("normal traffic runs");
        assert!(
            failures.is_empty(),
            "{} of {TRICKLERS} trickling connections were not cut: {:?}",
            failures.len(),
            &failures[..failures.len().min(5)]
        );
        lasted.sort();
        eprintln!(
            "{TRICKLERS} trickling connections cut after {:?} (median) to {:?} (longest); header deadline {:?}",
            percentile(&lasted, 0.5),
            lasted.last().copied().unwrap_or_default(),
            TIMEOUTS.header_read,
        );
        eprintln!(
            "normal requests: idle p50 {:?} p99 {:?} ({} requests); during the trickle p50 {:?} p99 {:?} ({} requests, all 200)",
            percentile(&idle_run, 0.5),
            percentile(&idle_run, 0.99),
            idle_run.len(),
            percentile(&under_attack, 0.5),
            percentile(&under_attack, 0.99),
            under_attack.len(),
        );
    })
    .await;
}

#[tokio::test]
async fn a_client_that_does_not_read_its_response_is_cut_off() {
    with_namespace("e2e-slow-reader", |ns| async move {
        let platform = platform_with_echo(&ns, TIMEOUTS).await;
        let pod = &pods_of(&ns, "echo").await[0];
        // Far more than the kernel's socket buffers hold between the endpoint and the client.
        let body: u64 = 64 << 20;
        ns.backend(pod).expect("the backend").pad_bodies(body);
        let mut greedy = TcpStream::connect(platform.listener).await.expect("connect");
        greedy.write_all(REQUEST).await.expect("send a request");
        // Read nothing for longer than the write timeout.
        tokio::time::sleep(TIMEOUTS.write * 3).await;
        let received = read_until_closed(&mut greedy, Duration::from_secs(20))
            .await
            .expect("the gateway closed the connection");
        assert!(
            (received.len() as u64) < body,
            "the whole body arrived ({} bytes): the client was not cut off",
            received.len()
        );
        eprintln!(
            "a client not reading a {body}-byte answer was cut off after {} bytes",
            received.len()
        );
        // Others are still served.
        ns.backend(pod).expect("the backend").pad_bodies(0);
        let answer = probe::get(platform.listener, "/").await.expect("an answer");
        assert_eq!(answer.status, StatusCode::OK);
    })
    .await;
}

#[tokio::test]
async fn a_listener_at_its_connection_limit_refuses_new_ones_at_once() {
    with_namespace("e2e-conn-limit", |ns| async move {
        let platform = Platform::start(&ns).await;
        platform.microservice(&ns, "echo", 1, json!({})).await;
        let port = free_port();
        let limit = 4;
        crate::create_gateway_spec(
            &ns,
            "gw",
            json!({
                "listeners": [{"name": "http", "port": port, "maxConnections": limit}],
                "routes": [{"name": "all", "backends": [{"microservice": "echo"}]}],
            }),
        )
        .await;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        // Take every slot with a kept-alive connection that has been answered (so is counted);
        // a slot still held by a probe that just closed is retried.
        let mut held = Vec::new();
        for _ in 0..limit {
            let connection = wait::until("a connection to be served", WAIT, || async {
                let Ok(mut stream) = TcpStream::connect(addr).await else {
                    return Probe::NotYet("not listening".to_owned());
                };
                if stream.write_all(REQUEST).await.is_err() {
                    return Probe::NotYet("write failed".to_owned());
                }
                match read_response(&mut stream).await {
                    Ok(200) => Probe::Done(stream),
                    other => Probe::NotYet(format!("{other:?}")),
                }
            })
            .await
            .expect("a connection within the limit is served");
            held.push(connection);
        }

        let mut refused = TcpStream::connect(addr).await.expect("the kernel accepts");
        let answer = read_until_closed(&mut refused, Duration::from_secs(10))
            .await
            .expect("the refused connection is closed");
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with("HTTP/1.1 503 ")
                && answer.contains("x-microgate-reason: connection-limit")
                && answer.contains("connection: close"),
            "{answer}"
        );
        // The held connections are still served.
        held[0].write_all(REQUEST).await.expect("send");
        assert_eq!(read_response(&mut held[0]).await, Ok(200));

        // A closed connection frees its slot.
        held.pop();
        wait::until("a freed slot to take a new connection", WAIT, || async {
            match probe::get(addr, "/").await {
                Ok(answer) if answer.status == StatusCode::OK => Probe::Done(()),
                Ok(answer) => Probe::NotYet(answer.status.to_string()),
                Err(error) => Probe::NotYet(error.to_string()),
            }
        })
        .await
        .expect("a slot is freed");
    })
    .await;
}
