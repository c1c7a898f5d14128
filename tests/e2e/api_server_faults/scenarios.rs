//! The API server failing microgate, each a function of its size: `api_server_faults` runs
//! them short in every `make test`, the reliability suite runs the outage at full length. What
//! is under test runs as its own process (`microgate gateway`, or `microgate controller`),
//! reaching the API server through what the scenario breaks; the rest of the test (the
//! platform's controller and gateway, the fake kubelet) keeps the shared API server, so the
//! Pods stay as they were.

use std::{
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

use kube::api::{Patch, PatchParams};
use microgate::api::{Gateway, Microservice};
use microgate_test_support::{
    TestNamespace, cluster,
    load::{self, Plan, ms},
    private_apiserver::PrivateApiServer,
    probe,
    proxy::CuttableProxy,
    reliability::{self, Outcome},
    wait::{self, Probe},
};
use serde_json::json;
use tokio::process::Child;

use crate::platform::{Platform, free_port, microgate_process};

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
        let child = microgate_process("gateway", ns, admin, kubeconfig)
            .arg("--listen-address=127.0.0.4")
            .arg(format!("--watch-timeout={}s", watch_timeout.as_secs()))
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
    // The watch timeout and kube's margin; as long again for the request that reopens a watch,
    // should it go out over a pooled connection silenced too (the client gives up on a response
    // that has not started within the head timeout); the longest backoff, and a few seconds to
    // list again.
    let target = watch_timeout
        + Duration::from_secs(5)
        + microgate::watch::head_timeout_for(watch_timeout)
        + Duration::from_secs(2)
        + Duration::from_secs(3);
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
            "the change in the table within the watch timeout, kube's 5 s margin, the client's head timeout (a reopened watch may go out over a silenced pooled connection) and the backoff (≤ {} s); the last table serves meanwhile",
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

/// `microgate controller` reaches the API server through a proxy that silences every open
/// connection (its watches and the connections its client keeps for the next request); a
/// Microservice is then scaled. The change must reach its Deployment, and the new replica the
/// status, once the watches give up on the silence.
pub async fn silent_controller(ns: &TestNamespace, watch_timeout: Duration, scenario: &str) {
    // The watch timeout and kube's margin; the head timeout of a request sent over a pooled
    // connection silenced too; the longest backoff, and a few seconds for the reconcile, the
    // rollout and the status.
    let target = watch_timeout
        + Duration::from_secs(5)
        + microgate::watch::head_timeout_for(watch_timeout)
        + Duration::from_secs(2)
        + Duration::from_secs(5);
    let _alone = ONE_AT_A_TIME.lock().await;
    cluster::install_crds(&ns.client, microgate::api::crds()).await;
    let api_port = cluster::state().await.expect("the cluster's state").api_port;
    let proxy = CuttableProxy::start(SocketAddr::from(([127, 0, 0, 1], api_port)))
        .await
        .expect("start the proxy");
    let kubeconfig = cluster::kubeconfig_for(proxy.addr()).expect("a kubeconfig through the proxy");
    let admin = SocketAddr::from((GATEWAY_IP, free_port()));
    let mut child = microgate_process("controller", ns, admin, &kubeconfig)
        .arg(format!("--watch-timeout={}s", watch_timeout.as_secs()))
        .spawn()
        .expect("start microgate controller");
    let microservices = ns.api::<Microservice>();
    let spec = json!({"apiVersion": "microgate.dev/v1alpha1", "kind": "Microservice",
        "metadata": {"name": "orders"}, "spec": {"image": "registry.example/echo:1", "replicas": 1}});
    microservices
        .patch("orders", &PatchParams::apply("e2e"), &Patch::Apply(&spec))
        .await
        .expect("create the Microservice");
    let ready = |replicas: i32, within: Duration| {
        let microservices = microservices.clone();
        async move {
            wait::until(
                format!("orders with {replicas} ready replicas"),
                within,
                || async {
                    let ms = microservices.get("orders").await.expect("the Microservice");
                    let ready = ms.status.as_ref().map(|s| s.ready_replicas);
                    if ready == Some(replicas) {
                        Probe::Done(Instant::now())
                    } else {
                        Probe::NotYet(format!("{ready:?} ready"))
                    }
                },
            )
            .await
        }
    };
    ready(1, Duration::from_secs(60))
        .await
        .expect("the first replica is ready");
    // Let the client's connections go back to its pool between requests.
    tokio::time::sleep(Duration::from_secs(1)).await;

    proxy.silence();
    let silenced = Instant::now();
    microservices
        .patch(
            "orders",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 2}})),
        )
        .await
        .expect("scale the Microservice");
    let outcome = ready(2, target * 3).await.map(|at| at - silenced);
    let alive = child.try_wait().ok().flatten().is_none();
    let measured = match &outcome {
        Ok(took) => format!(
            "scaled and both replicas reported Ready {:.1} s after the silence",
            took.as_secs_f64()
        ),
        Err(problem) => format!("not scaled: {problem}"),
    };
    reliability::record(&Outcome {
        scenario,
        description: &format!(
            "every connection of the operator to the API server goes silent (watches and kept-alive connections) with --watch-timeout {} s; a Microservice is scaled at once",
            watch_timeout.as_secs()
        ),
        target: &format!(
            "the change carried out within the watch timeout, kube's 5 s margin, the client's head timeout, the backoff and 5 s (≤ {} s), without a restart",
            target.as_secs()
        ),
        measured,
        met: alive && outcome.as_ref().is_ok_and(|took| *took <= target),
    });
    assert!(alive, "the controller process ended");
    let took = outcome.expect("the operator carries out the change after the silence");
    assert!(took <= target, "carried out {took:?} after the silence");
    let _ = child.start_kill();
}
