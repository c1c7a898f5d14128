//! The API server failing the gateway, each a function of its size: `api_server_faults` runs
//! them short in every `make test`, the reliability suite runs the outage at full length. The
//! gateway under test is `microgate gateway`, its own process, reaching the API server through
//! what the scenario breaks; the test's platform (controller, fake kubelet, and a gateway of its
//! own) keeps the shared API server, so the Pods stay as they were.

use std::{
    net::SocketAddr,
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use kube::api::{Patch, PatchParams};
use microgate::api::Gateway;
use microgate_test_support::{
    TestNamespace, cluster,
    load::{self, Plan, ms},
    private_apiserver::PrivateApiServer,
    probe,
    proxy::CuttableProxy,
    reliability::{self, Outcome},
};
use serde_json::json;
use tokio::process::{Child, Command};

use crate::platform::{Platform, free_port};

/// Where the gateway under test listens: its own loopback address, on the platform's port.
const GATEWAY_IP: [u8; 4] = [127, 0, 0, 4];

/// Held by each scenario while it runs: the outage's load would otherwise measure the other
/// scenario as much as its own fault.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `microgate gateway` for the test's namespace, reaching the API server as `kubeconfig` says,
/// with its watches opened again after `watch_timeout`.
struct GatewayProcess {
    child: Child,
    listener: SocketAddr,
}

impl GatewayProcess {
    async fn start(
        ns: &TestNamespace,
        platform: &Platform,
        kubeconfig: &Path,
        watch_timeout: Duration,
    ) -> Self {
        let admin = SocketAddr::from((GATEWAY_IP, free_port()));
        let child = Command::new(env!("CARGO_BIN_EXE_microgate"))
            .args(["gateway", "--listen-address=127.0.0.4"])
            .arg(format!("--namespace={}", ns.name))
            .arg(format!("--admin-addr={admin}"))
            .arg(format!("--watch-timeout={}s", watch_timeout.as_secs()))
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start microgate gateway");
        let listener = SocketAddr::from((GATEWAY_IP, platform.listener.port()));
        let process = Self { child, listener };
        process.wait_until_answering(200, Duration::from_secs(60)).await;
        process
    }

    /// Polls `/` every 20 ms until it is answered `status`; returns when it first was.
    async fn wait_until_answering(&self, status: u16, within: Duration) -> Instant {
        let deadline = Instant::now() + within;
        loop {
            let answer = probe::get(self.listener, "/").await;
            if answer.as_ref().is_ok_and(|a| a.status == status) {
                return Instant::now();
            }
            assert!(
                Instant::now() < deadline,
                "the gateway process never answered {status} within {within:?}; last: {answer:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// The change whose arrival each scenario times: the route `all` now also asks for a header,
/// so that `/` without it is answered 404.
async fn require_a_header(ns: &TestNamespace) {
    let routes = json!({"spec": {"routes": [{"name": "all",
        "matches": [{"path": {"value": "/"}, "headers": [{"name": "x-after", "value": "1"}]}],
        "backends": [{"microservice": "echo"}]}]}});
    ns.api::<Gateway>()
        .patch("gw", &PatchParams::default(), &Patch::Merge(&routes))
        .await
        .expect("patch the Gateway");
}

/// The API server is stopped for `outage` while GETs flow through the gateway at `rate`; then
/// it starts again where it was, the route changes, and the time the change takes to reach the
/// gateway's table counts from the moment the API server answers again.
pub async fn api_server_down(ns: &TestNamespace, outage: Duration, rate: u32, scenario: &str) {
    const PROPAGATION: Duration = Duration::from_secs(5);
    let _alone = ONE_AT_A_TIME.lock().await;
    let platform = Platform::with_echo(ns, 2, json!({})).await;
    let server = PrivateApiServer::start()
        .await
        .expect("start a private API server");
    let port = server.addr().port();
    let kubeconfig = cluster::kubeconfig_for(server.addr()).expect("a kubeconfig for the private API server");
    let gateway = GatewayProcess::start(ns, &platform, &kubeconfig, microgate::watch::DEFAULT_TIMEOUT).await;

    // The load runs from a second before the outage to a second after it.
    let margin = Duration::from_secs(1);
    let count = usize::try_from((outage + 2 * margin).as_secs() * u64::from(rate)).unwrap_or(usize::MAX);
    let load = tokio::spawn(load::run(gateway.listener, Plan::get(rate, count)));
    tokio::time::sleep(margin).await;
    server.stop().await;
    let stopped = Instant::now();
    tokio::time::sleep(outage).await;
    let server = PrivateApiServer::start_on(port)
        .await
        .expect("start the private API server again on its port");
    let down_for = stopped.elapsed();
    let back = Instant::now();
    require_a_header(ns).await;
    let report = load.await.expect("the load runs");
    let seen = gateway
        .wait_until_answering(404, Duration::from_secs(60))
        .await
        .saturating_duration_since(back);

    let met = report.failed() == 0 && seen <= PROPAGATION;
    reliability::record(&Outcome {
        scenario,
        description: &format!(
            "the gateway's API server stopped for {} s under {rate} GET/s, then started again; a route changed as soon as it answered",
            outage.as_secs()
        ),
        target: "0 failed while it is down (the last table serves); the change in the table within 5 s of its return",
        measured: format!(
            "{} failed of {} (down {:.1} s; p99 {:.1} ms); the change served {:.2} s after the API server was back",
            report.failed(),
            report.total(),
            down_for.as_secs_f64(),
            ms(report.latency_quantile(0.99)),
            seen.as_secs_f64()
        ),
        met,
    });
    assert_eq!(report.failed(), 0, "{}", report.summary());
    assert!(
        seen <= PROPAGATION,
        "the change reached the gateway {seen:?} after the API server came back"
    );
    drop(gateway);
    server.stop().await;
}

/// Every connection between the gateway and the API server goes silent (nothing more arrives,
/// nothing closes) while the gateway's watches are open; new connections work. The route
/// changes at once: the gateway sees it only when its watches give up on the silence, after
/// `watch_timeout` (and kube's 5 s margin) and a backoff.
pub async fn silent_watch(ns: &TestNamespace, watch_timeout: Duration, scenario: &str) {
    // The watch timeout, kube's margin, the longest backoff, and a few seconds to list again.
    let target = watch_timeout + Duration::from_secs(5) + Duration::from_secs(2) + Duration::from_secs(3);
    let _alone = ONE_AT_A_TIME.lock().await;
    let platform = Platform::with_echo(ns, 2, json!({})).await;
    let api_port = cluster::state().await.expect("the cluster's state").api_port;
    let proxy = CuttableProxy::start(SocketAddr::from(([127, 0, 0, 1], api_port)))
        .await
        .expect("start the proxy");
    let kubeconfig = cluster::kubeconfig_for(proxy.addr()).expect("a kubeconfig through the proxy");
    let gateway = GatewayProcess::start(ns, &platform, &kubeconfig, watch_timeout).await;
    // Its watches are open (it routes); let them settle past the first list.
    tokio::time::sleep(Duration::from_secs(1)).await;

    proxy.silence();
    let silenced = Instant::now();
    require_a_header(ns).await;
    // Meanwhile the gateway keeps serving its last table.
    let mut served = 0;
    let mut failed = Vec::new();
    let seen = loop {
        match probe::get(gateway.listener, "/").await {
            Ok(answer) if answer.status == 404 => break silenced.elapsed(),
            Ok(answer) if answer.status == 200 => served += 1,
            other => failed.push(format!("{other:?}")),
        }
        assert!(
            silenced.elapsed() < target * 3,
            "the change never reached the gateway ({served} served, failed: {failed:?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let met = failed.is_empty() && seen <= target;
    reliability::record(&Outcome {
        scenario,
        description: &format!(
            "every connection of the gateway to the API server goes silent (open, nothing more arrives) with --watch-timeout {} s; a route changes at once",
            watch_timeout.as_secs()
        ),
        target: &format!(
            "the change in the table within the watch timeout, kube's 5 s margin and the backoff (≤ {} s); the last table serves meanwhile",
            target.as_secs()
        ),
        measured: format!(
            "the change served {:.1} s after the silence; {served} requests served meanwhile, {} failed",
            seen.as_secs_f64(),
            failed.len()
        ),
        met,
    });
    assert!(
        failed.is_empty(),
        "requests failed during the silence: {failed:?}"
    );
    assert!(
        seen <= target,
        "the change reached the gateway {seen:?} after the silence"
    );
}
