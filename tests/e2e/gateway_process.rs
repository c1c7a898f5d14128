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

/// `microgate gateway --gateway-api --leader-elect` in the test's namespace, listening on `ip`,
/// as the Pod `pod`: short Lease timings, so that a failover takes seconds.
fn elected_gateway(
    ns: &microgate_test_support::TestNamespace,
    ip: [u8; 4],
    pod: &str,
) -> tokio::process::Child {
    let listen = std::net::Ipv4Addr::from(ip);
    let admin = SocketAddr::from((ip, free_port()));
    super::microgate_process("gateway", ns, admin, &cluster::kubeconfig_path())
        .args([
            "--gateway-api",
            "--leader-elect",
            "--leader-election-lease-duration=4s",
            "--leader-election-renew-deadline=3s",
            "--leader-election-retry-period=1s",
        ])
        .arg(format!("--listen-address={listen}"))
        .env("POD_NAMESPACE", &ns.name)
        .env("POD_NAME", pod)
        .spawn()
        .expect("start microgate gateway")
}

/// Two gateway replicas that each publish their own listen address as the Gateway's address
/// (they disagree, as replicas may): only the one holding the Lease writes it, so it stays put
/// while both serve and the status changes hands only when the writer is gone. (Without the
/// election each would write its own address back after the other's, forever.)
#[tokio::test]
async fn of_several_gateway_replicas_the_one_holding_the_lease_writes_the_statuses() {
    use k8s_openapi::api::coordination::v1::Lease;
    use kube::api::{Patch, PatchParams};
    use microgate::api::gateway_api::{HTTPRoute, KubeGateway};
    use microgate_test_support::wait::{self, Probe};

    with_namespace("e2e-gateway-status-writer", |ns| async move {
        // The platform serves no Gateway API: only the two processes write its statuses.
        let platform = Platform::start(&ns).await;
        platform.microservice(&ns, "echo", 1, json!({})).await;
        microgate_test_support::gwapi_conformance::install_crds("experimental");
        let (classes, class_name) = super::gateway_api::create_class(&ns).await;
        let apply = PatchParams::apply("e2e").force();
        let port = free_port();
        super::gateway_api::apply_gateway(
            &ns,
            "edge",
            &class_name,
            json!([
                {"name": "http", "port": port, "protocol": "HTTP"},
            ]),
        )
        .await;
        let route = |header: &str| {
            json!({
                "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                "metadata": {"name": "edge"},
                "spec": {"parentRefs": [{"name": "edge"}], "rules": [{
                    "filters": [{"type": "ResponseHeaderModifier",
                        "responseHeaderModifier": {"set": [{"name": "x-route", "value": header}]}}],
                    "backendRefs": [{"group": "microgate.dev", "kind": "Microservice", "name": "echo"}],
                }]},
            })
        };
        let routes = ns.api::<HTTPRoute>();
        routes
            .patch("edge", &apply, &Patch::Apply(route("first")))
            .await
            .expect("create the HTTPRoute");
        let gateways = ns.api::<KubeGateway>();
        let address = || async {
            let gateway = gateways.get("edge").await.expect("the Gateway");
            let status = serde_json::to_value(&gateway.status).expect("JSON");
            status["addresses"][0]["value"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        };
        let address_becomes = |wanted: &'static str| {
            let address = &address;
            async move {
                wait::until(format!("the Gateway's address {wanted}"), WAIT, || async {
                    let now = address().await;
                    if now == wanted {
                        Probe::Done(())
                    } else {
                        Probe::NotYet(now)
                    }
                })
                .await
            }
        };
        let serves = |ip: [u8; 4], header: &'static str| async move {
            let listener = SocketAddr::from((ip, port));
            wait::until(
                format!("{listener} to serve the route ({header})"),
                WAIT,
                || async {
                    match probe::get(listener, "/").await {
                        Ok(a) if a.status == 200 && a.headers.get("x-route").is_some_and(|v| v == header) => {
                            Probe::Done(())
                        }
                        other => Probe::NotYet(format!("{other:?}")),
                    }
                },
            )
            .await
        };

        let mut first = elected_gateway(&ns, [127, 0, 0, 5], "gateway-a");
        address_becomes("127.0.0.5")
            .await
            .expect("the first replica writes its address");
        let holder = ns
            .api::<Lease>()
            .get("microgate-gateway")
            .await
            .expect("the gateway's Lease")
            .spec
            .and_then(|s| s.holder_identity)
            .unwrap_or_default();
        assert!(holder.starts_with("gateway-a"), "the Lease is held by {holder:?}");

        let _second = elected_gateway(&ns, [127, 0, 0, 6], "gateway-b");
        serves([127, 0, 0, 6], "first")
            .await
            .expect("the second replica serves");
        // Both compile every change; the address the Gateway says stays the writer's.
        routes
            .patch("edge", &apply, &Patch::Apply(route("second")))
            .await
            .expect("change the HTTPRoute");
        serves([127, 0, 0, 5], "second")
            .await
            .expect("the first replica has the change");
        serves([127, 0, 0, 6], "second")
            .await
            .expect("the second replica has the change");
        for _ in 0..20 {
            assert_eq!(
                address().await,
                "127.0.0.5",
                "only the Lease holder writes the status"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // The writer dies without letting go: the other takes the Lease once it has expired.
        first.start_kill().expect("kill the first replica");
        let _ = first.wait().await;
        address_becomes("127.0.0.6")
            .await
            .expect("the second replica writes once it holds the Lease");
        classes
            .delete(&class_name, &kube::api::DeleteParams::default())
            .await
            .expect("delete the GatewayClass");
    })
    .await;
}
