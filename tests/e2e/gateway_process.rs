//! `microgate gateway` and `microgate run` as their own processes (the binary under test), next
//! to the test's platform: each turns ready only once it can route, and the gateway's access log
//! has one JSON line per request.

use std::{net::SocketAddr, process::Stdio, sync::Arc, time::Duration};

use microgate_test_support::{cluster, probe, with_namespace};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::Command,
    sync::Mutex,
};

use super::{Platform, free_port};

const WAIT: Duration = Duration::from_secs(60);

/// Polls `/readyz` on `admin` every `period` until it answers 200 (at most [`WAIT`]).
pub(super) async fn wait_ready(admin: SocketAddr, period: Duration) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match probe::get(admin, "/readyz").await {
            Ok(answer) if answer.status == 200 => return,
            other => {
                assert!(tokio::time::Instant::now() < deadline, "never ready: {other:?}");
                tokio::time::sleep(period).await;
            }
        }
    }
}

#[tokio::test]
async fn a_gateway_process_is_ready_only_when_it_routes_and_logs_each_request_as_json() {
    with_namespace("e2e-gateway-process", |ns| async move {
        // The platform's gateway listens on 127.0.0.1; the process under test on 127.0.0.2, same port.
        let platform = Platform::with_echo(&ns, 2, json!({})).await;
        let admin = SocketAddr::from(([127, 0, 0, 2], free_port()));
        let mut child = Command::new(env!("CARGO_BIN_EXE_microgate"))
            .args([
                "gateway",
                "--access-log",
                "--log-json",
                "--listen-address=127.0.0.2",
            ])
            .arg(format!("--namespace={}", ns.name))
            .arg(format!("--admin-addr={admin}"))
            .env("KUBECONFIG", cluster::kubeconfig_path())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start microgate gateway");
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        if let Some(stdout) = child.stdout.take() {
            let lines = lines.clone();
            tokio::spawn(async move {
                let mut reader = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    lines.lock().await.push(line);
                }
            });
        }

        let deadline = tokio::time::Instant::now() + WAIT;
        wait_ready(admin, Duration::from_millis(20)).await;
        // Ready means routed: the very first request after readiness reaches a Pod.
        let listener = SocketAddr::from(([127, 0, 0, 2], platform.listener.port()));
        let answer = probe::get(listener, "/logged?n=1").await.expect("an answer");
        assert_eq!(answer.status, 200, "{answer:?}");
        let post = probe::request(listener, hyper::Method::POST, "/", "body")
            .await
            .expect("an answer");
        assert_eq!(post.status, 200, "{post:?}");

        let access = |lines: &[String]| -> Vec<Value> {
            lines
                .iter()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter(|v| v["target"] == "microgate::access")
                .collect()
        };
        let logged = loop {
            let logged = access(&lines.lock().await);
            if logged.len() >= 2 || tokio::time::Instant::now() > deadline {
                break logged;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(logged.len(), 2, "one line per request: {logged:?}");
        let first = &logged[0]["fields"];
        assert_eq!(first["method"], "GET", "{first}");
        assert_eq!(first["uri"], "/logged?n=1", "{first}");
        assert_eq!(first["status"], 200, "{first}");
        assert_eq!(first["route"], format!("{}/gw/all", ns.name), "{first}");
        // The client IP (no proxy is trusted here, so the peer's), and the peer's socket address.
        assert_eq!(first["client"], "127.0.0.1", "{first}");
        assert!(
            first["peer"]
                .as_str()
                .is_some_and(|c| c.starts_with("127.0.0.1:")),
            "{first}"
        );
        assert!(first["ms"].as_f64().is_some_and(|ms| ms >= 0.0), "{first}");
        assert_eq!(logged[1]["fields"]["method"], "POST", "{logged:?}");
        let _ = child.start_kill();
    })
    .await;
}

#[tokio::test]
async fn a_run_process_is_ready_only_when_its_gateway_routes_too() {
    with_namespace("e2e-run-process", |ns| async move {
        // The platform's gateway listens on 127.0.0.1; `microgate run` on 127.0.0.3, same port.
        let platform = Platform::with_echo(&ns, 2, json!({})).await;
        let admin = SocketAddr::from(([127, 0, 0, 3], free_port()));
        let mut child = Command::new(env!("CARGO_BIN_EXE_microgate"))
            .args(["run", "--listen-address=127.0.0.3"])
            .arg(format!("--namespace={}", ns.name))
            .arg(format!("--admin-addr={admin}"))
            .env("KUBECONFIG", cluster::kubeconfig_path())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start microgate run");
        // Its controller's caches sync before its gateway has a route table: polled tightly, a
        // readiness that only waited for the caches would let the request below get a 404.
        wait_ready(admin, Duration::from_millis(2)).await;
        let listener = SocketAddr::from(([127, 0, 0, 3], platform.listener.port()));
        let answer = probe::get(listener, "/").await.expect("an answer");
        assert_eq!(answer.status, 200, "the first request once ready: {answer:?}");
        let _ = child.start_kill();
    })
    .await;
}
