//! Rollouts cost no request: a Microservice's image change, a scale-down and a scale-up under
//! steady open-loop load through the gateway, with retries on and with retries off. What makes
//! it so: a rolling update that never lowers ready capacity (the Deployment's strategy), a
//! terminating Pod that leaves the gateway's rotation at once, and a termination that keeps
//! serving through its drain delay before SIGTERM (the harness plays the kubelet's sequence).
//! Each scenario records its figure for RELIABILITY.md before it asserts.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::DeleteParams;
use microgate::discovery::ServiceKey;
use microgate_test_support::{
    TestNamespace,
    background_load::{self, Load},
    reliability::{self, Outcome},
    rollout::{self, Change, Figures},
    wait::{self, Probe},
    with_namespace,
};
use serde_json::json;

use super::{Platform, WAIT, pods_of};

/// The steady load of the short scenarios: 400 requests per second for 20 s, each taking the
/// service 20 ms, so that about 8 are in flight at any moment (a Pod stopped abruptly would
/// fail some).
const RATE: u32 = 400;
const PATH: &str = "/?delay-ms=20";
const COUNT: u64 = 8_000;
/// When the change is made, into the load.
const LEAD_IN: Duration = Duration::from_secs(4);

/// A route that retries what can be retried safely, or one that never retries.
fn route(retries: bool) -> serde_json::Value {
    let retry = if retries {
        json!({"attempts": 2, "retryOn": ["connect-failure", "reset", "gateway-error"],
               "backoff": {"base": "1ms", "max": "5ms"}})
    } else {
        json!({"attempts": 0})
    };
    json!([{"name": "all", "backends": [{"microservice": "echo"}], "retry": retry}])
}

/// The platform, a Microservice `echo` of `replicas` (default termination: a 5 s drain delay)
/// and a Gateway to it.
async fn setup(ns: &TestNamespace, replicas: i32, retries: bool) -> Platform {
    let platform = Platform::start(ns).await;
    platform
        .microservice_with(
            ns,
            "echo",
            json!({"image": "registry.example/echo:1", "replicas": replicas}),
        )
        .await;
    platform.gateway(ns, route(retries)).await;
    platform
}

/// Records the scenario's figure, then asserts that nothing failed.
fn record_and_assert(scenario: &str, description: &str, figures: &Figures) {
    eprintln!("{scenario}: {}; {}", figures.summary(), figures.load);
    let target = format!("0 failed of {COUNT} at {RATE} req/s");
    reliability::record(&Outcome {
        scenario,
        description,
        target: &target,
        measured: figures.summary(),
        met: figures.load.failed == 0 && figures.load.sent == COUNT,
    });
    assert_eq!(figures.load.sent, COUNT);
    assert_eq!(figures.load.failed, 0, "{}", figures.load);
}

/// An image change of 3 replicas under load; records `scenario` and asserts.
async fn image_change(prefix: &str, retries: bool, scenario: &str, description: &str) {
    with_namespace(prefix, |ns| async move {
        let platform = setup(&ns, 3, retries).await;
        let before = pods_of(&ns, "echo").await;
        let load = Load::get(platform.listener, PATH, RATE, COUNT);
        let figures = rollout::under_load(
            &ns,
            "echo",
            platform.admin,
            load,
            LEAD_IN,
            Change::Image("registry.example/echo:2".to_owned()),
        )
        .await;
        record_and_assert(scenario, description, &figures);
        let after = pods_of(&ns, "echo").await;
        assert!(
            after.iter().all(|pod| !before.contains(pod)),
            "every pod was replaced: {before:?} then {after:?}"
        );
        if !retries {
            assert_eq!(figures.retries, 0, "a route without retries retried");
        }
    })
    .await;
}

#[tokio::test]
async fn an_image_change_under_load_fails_no_request_with_retries() {
    image_change(
        "e2e-rollout-retries",
        true,
        "rollout-image-retries-short",
        "3 replicas change image under 400 req/s for 20 s; route retries on",
    )
    .await;
}

#[tokio::test]
async fn an_image_change_under_load_fails_no_request_without_retries() {
    image_change(
        "e2e-rollout-no-retries",
        false,
        "rollout-image-no-retries-short",
        "3 replicas change image under 400 req/s for 20 s; route retries off",
    )
    .await;
}

/// 3 replicas scaled down to 1 and then up to 4, all under one load with retries off.
#[tokio::test]
async fn scaling_down_and_up_under_load_fails_no_request() {
    with_namespace("e2e-rollout-scale", |ns| async move {
        let platform = setup(&ns, 3, false).await;
        let load = Load::get(platform.listener, PATH, RATE, COUNT);
        let changes = [
            (LEAD_IN, Change::Scale(1)),
            (Duration::from_secs(12), Change::Scale(4)),
        ];
        let figures = rollout::changes_under_load(&ns, "echo", platform.admin, load, &changes).await;
        record_and_assert(
            "scale-down-3-to-1-then-up-to-4",
            "3 replicas scaled to 1, then to 4, under 400 req/s for 20 s; route retries off",
            &figures,
        );
        let pods = pods_of(&ns, "echo").await;
        assert_eq!(pods.len(), 4);
        for pod in &pods {
            assert!(
                figures.load.by_pod.contains_key(pod),
                "{pod} took traffic: {:?}",
                figures.load.by_pod
            );
        }
    })
    .await;
}

/// What the zero-failure rollouts rest on, seen directly: once a Pod is terminating, the gateway
/// sends it no new request and closes its idle connections to it, while the Pod still serves
/// (its drain delay); the requests already sent to it are answered.
#[tokio::test]
async fn a_terminating_pod_gets_no_new_requests_and_its_idle_connections_are_closed() {
    with_namespace("e2e-terminating", |ns| async move {
        let platform = Platform::start(&ns).await;
        platform
            .microservice_with(
                &ns,
                "echo",
                json!({"image": "registry.example/echo:1", "replicas": 3,
                       "termination": {"drainDelaySeconds": 4, "gracePeriodSeconds": 10}}),
            )
            .await;
        platform.gateway(&ns, route(false)).await;
        let victim = pods_of(&ns, "echo").await[0].clone();
        let backend = ns.backend(&victim).expect("the victim's backend");
        let load = background_load::start(Load::get(platform.listener, PATH, 200, 1_200));
        wait::until("the victim to carry traffic", WAIT, || async {
            match backend.requests() {
                0 => Probe::NotYet("no request yet".to_owned()),
                n => Probe::Done(n),
            }
        })
        .await
        .expect("traffic reaches every pod");
        assert!(
            backend.open_connections() > 0,
            "the gateway keeps connections to the victim"
        );

        ns.api::<Pod>()
            .delete(&victim, &DeleteParams::default())
            .await
            .expect("delete the victim");
        let key = ServiceKey::new(&ns.name, "echo");
        wait::until("the registry to take the victim out", WAIT, || async {
            let snapshot = platform.registry.snapshot(&key);
            let ready = snapshot
                .endpoints
                .iter()
                .any(|e| &*e.pod == victim.as_str() && e.ready);
            if ready {
                Probe::NotYet("still ready".to_owned())
            } else {
                Probe::Done(())
            }
        })
        .await
        .expect("a terminating pod is not ready");
        // The gateway recompiles on the registry's change: a moment for that and for the
        // requests already sent to finish.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let served = backend.requests();
        wait::until(
            "the gateway to close its idle connections to the victim",
            WAIT,
            || async {
                match backend.open_connections() {
                    0 => Probe::Done(()),
                    open => Probe::NotYet(format!("{open} open")),
                }
            },
        )
        .await
        .expect("idle connections to a terminating pod are closed");
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            backend.requests(),
            served,
            "no new request reached the terminating pod"
        );
        assert!(
            ns.backend(&victim).is_some(),
            "the victim was still in its drain delay, serving, all along"
        );
        let report = load.finish().await;
        assert_eq!(report.failed, 0, "{report}");
    })
    .await;
}
