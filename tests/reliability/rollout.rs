//! The full-size rollout: 1000 requests per second through the gateway for 100 s (100 000
//! requests), while a 3-replica Microservice changes its image three times; with the route's
//! retries on, and again with them off. Target: 0 failed.
//!
//! microgate runs as its own process (`microgate run`, the binary under test: controller and
//! gateway in one), the way it is shipped; this process plays kubelet and sends the load.

use std::{net::SocketAddr, process::Stdio, time::Duration};

use kube::api::PostParams;
use microgate::api::{Gateway, Microservice};
use microgate_test_support::{
    TestNamespace,
    background_load::Load,
    cluster, probe,
    reliability::{self, Outcome},
    rollout::{self, Change},
    wait::{self, Probe},
    with_namespace,
};
use serde_json::json;
use tokio::process::Child;

use crate::platform::{free_port, microgate_process};

const RATE: u32 = 1_000;
const COUNT: u64 = 100_000;
/// Each request takes the service 10 ms, so that about 10 are in flight at any moment.
const PATH: &str = "/?delay-ms=10";
const WAIT: Duration = Duration::from_secs(60);
const TARGET: &str = "0 failed of 100 000 (1000 req/s for 100 s)";

/// `microgate run` for the test's namespace, its admin port on `admin`.
async fn start_microgate(ns: &TestNamespace, admin: SocketAddr) -> Child {
    cluster::install_crds(&ns.client, microgate::api::crds()).await;
    let child = microgate_process("run", ns, admin, &cluster::kubeconfig_path())
        .arg("--listen-address=127.0.0.1")
        .stdout(Stdio::null())
        .spawn()
        .expect("start microgate run");
    wait::until("microgate run to be ready", WAIT, || async {
        match probe::get(admin, "/readyz").await {
            Ok(answer) if answer.status == 200 => Probe::Done(()),
            other => Probe::NotYet(format!("{other:?}")),
        }
    })
    .await
    .expect("microgate run turns ready");
    child
}

/// The Microservice `echo` (3 replicas, default termination) and a Gateway on `port` whose one
/// route retries, or not; waits until the route answers.
async fn deploy(ns: &TestNamespace, port: u16, retries: bool) {
    let ms: Microservice = serde_json::from_value(json!({
        "apiVersion": "microgate.dev/v1alpha1", "kind": "Microservice", "metadata": {"name": "echo"},
        "spec": {"image": "registry.example/echo:1", "replicas": 3},
    }))
    .expect("a valid Microservice");
    ns.api::<Microservice>()
        .create(&PostParams::default(), &ms)
        .await
        .expect("create the Microservice");
    let retry = if retries {
        json!({"attempts": 2, "retryOn": ["connect-failure", "reset", "gateway-error"],
               "backoff": {"base": "1ms", "max": "5ms"}})
    } else {
        json!({"attempts": 0})
    };
    let gateway: Gateway = serde_json::from_value(json!({
        "apiVersion": "microgate.dev/v1alpha1", "kind": "Gateway", "metadata": {"name": "gw"},
        "spec": {"listeners": [{"name": "http", "port": port}],
                 "routes": [{"name": "all", "backends": [{"microservice": "echo"}], "retry": retry}]},
    }))
    .expect("a valid Gateway");
    ns.api::<Gateway>()
        .create(&PostParams::default(), &gateway)
        .await
        .expect("create the Gateway");
    let listener = SocketAddr::from(([127, 0, 0, 1], port));
    let microservices = ns.api::<Microservice>();
    wait::until("3 ready endpoints behind the gateway", WAIT, || async {
        let ready = microservices
            .get("echo")
            .await
            .ok()
            .and_then(|ms| ms.status)
            .map_or(0, |status| status.ready_endpoints);
        match probe::get(listener, "/").await {
            Ok(answer) if answer.status == 200 && ready == 3 => Probe::Done(()),
            other => Probe::NotYet(format!("{ready} ready endpoints; {other:?}")),
        }
    })
    .await
    .expect("the route answers");
}

async fn three_image_changes(prefix: &str, retries: bool, scenario: &str, description: &str) {
    with_namespace(prefix, |ns| async move {
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let port = free_port();
        let _microgate = start_microgate(&ns, admin).await;
        deploy(&ns, port, retries).await;
        let load = Load::get(SocketAddr::from(([127, 0, 0, 1], port)), PATH, RATE, COUNT);
        let changes: Vec<_> = [(10, 2), (40, 3), (70, 4)]
            .into_iter()
            .map(|(at, version)| {
                (
                    Duration::from_secs(at),
                    Change::Image(format!("registry.example/echo:{version}")),
                )
            })
            .collect();
        let figures = rollout::changes_under_load(&ns, "echo", admin, load, &changes).await;
        eprintln!("{scenario}: {}; {}", figures.summary(), figures.load);
        reliability::record(&Outcome {
            scenario,
            description,
            target: TARGET,
            measured: figures.summary(),
            met: figures.load.failed == 0 && figures.load.sent == COUNT,
        });
        assert_eq!(figures.load.sent, COUNT);
        assert_eq!(figures.load.failed, 0, "{}", figures.load);
        if !retries {
            assert_eq!(figures.retries, 0, "a route without retries retried");
        }
    })
    .await;
}

#[tokio::test]
async fn three_image_changes_at_1000_requests_per_second_fail_none_with_retries() {
    three_image_changes(
        "rel-rollout-retries",
        true,
        "rollout-image-retries",
        "3 replicas change image 3 times under 1000 req/s for 100 s; route retries on; microgate run as its own process",
    )
    .await;
}

#[tokio::test]
async fn three_image_changes_at_1000_requests_per_second_fail_none_without_retries() {
    three_image_changes(
        "rel-rollout-no-retries",
        false,
        "rollout-image-no-retries",
        "3 replicas change image 3 times under 1000 req/s for 100 s; route retries off; microgate run as its own process",
    )
    .await;
}
