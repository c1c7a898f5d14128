//! The Microservice controller on the real control plane: what it creates, what it reports, and
//! what it puts right.

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{Pod, Service},
    events::v1::Event,
};
use kube::{
    ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use microgate::api::{Microservice, labels};
use microgate_test_support::{
    TestNamespace,
    wait::{self, Probe},
    with_namespace,
};
use serde_json::json;

use crate::{ControllerUnderTest, kubectl};

const WAIT: Duration = Duration::from_secs(30);

fn microservice(name: &str, spec: serde_json::Value) -> Microservice {
    serde_json::from_value(json!({
        "apiVersion": "microgate.dev/v1alpha1",
        "kind": "Microservice",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .expect("a valid Microservice")
}

async fn create(ns: &TestNamespace, ms: &Microservice) -> Microservice {
    ns.api::<Microservice>()
        .create(&PostParams::default(), ms)
        .await
        .expect("create the Microservice")
}

fn condition(ms: &Microservice, type_: &str) -> Option<(String, String, String)> {
    let conditions = &ms.status.as_ref()?.conditions;
    let c = conditions.iter().find(|c| c.type_ == type_)?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Waits until the Microservice's status says `ready` (e.g. "2/2") with Ready=True, and
/// discovery has published as many ready endpoints.
async fn await_ready(ns: &TestNamespace, name: &str, ready: &str) -> Microservice {
    let api = ns.api::<Microservice>();
    let ready_count: i32 = ready
        .split('/')
        .next()
        .and_then(|n| n.parse().ok())
        .expect("ready as n/m");
    wait::until(
        format!("Microservice {name} to be {ready} and Ready"),
        WAIT,
        || async {
            match api.get(name).await {
                Ok(ms) => {
                    let status = ms.status.clone().unwrap_or_default();
                    let ready_condition = condition(&ms, "Ready");
                    if status.ready == ready
                        && status.ready_endpoints == ready_count
                        && ready_condition.as_ref().is_some_and(|c| c.0 == "True")
                    {
                        Probe::Done(ms)
                    } else {
                        Probe::NotYet(format!(
                            "ready {:?}, readyEndpoints {}, condition {ready_condition:?}",
                            status.ready, status.ready_endpoints
                        ))
                    }
                }
                Err(error) => Probe::NotYet(error.to_string()),
            }
        },
    )
    .await
    .expect("the Microservice becomes ready")
}

/// Creates the Microservice `orders` (an image and `replicas`) and waits until it is ready.
async fn create_orders(ns: &TestNamespace, replicas: i32) -> Microservice {
    let spec = json!({"image": "registry.example/orders:1.4.2", "replicas": replicas});
    create(ns, &microservice("orders", spec)).await;
    await_ready(ns, "orders", &format!("{replicas}/{replicas}")).await
}

async fn events_for(ns: &TestNamespace, name: &str) -> Vec<(String, String)> {
    let events = ns
        .api::<Event>()
        .list(&ListParams::default())
        .await
        .expect("list events");
    events
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .map(|e| (e.type_.unwrap_or_default(), e.reason.unwrap_or_default()))
        .collect()
}

async fn await_event(ns: &TestNamespace, name: &str, reason: &str) {
    wait::until(format!("a {reason} event for {name}"), WAIT, || async {
        let events = events_for(ns, name).await;
        if events.iter().any(|(_, r)| r == reason) {
            Probe::Done(())
        } else {
            Probe::NotYet(format!("{events:?}"))
        }
    })
    .await
    .expect("the event is recorded");
}

#[tokio::test]
async fn a_microservice_runs_as_an_owned_deployment_and_service_with_labels_and_probe() {
    with_namespace("msvc-create", |ns| async move {
        let _controller = ControllerUnderTest::start(&ns).await;
        let created = create(
            &ns,
            &microservice(
                "orders",
                json!({
                    "image": "registry.example/orders:1.4.2", "replicas": 2, "port": 8080,
                    "healthCheck": {"path": "/ready", "periodSeconds": 2},
                    "env": [{"name": "MODE", "value": "test"}],
                }),
            ),
        )
        .await;
        let ms = await_ready(&ns, "orders", "2/2").await;

        let deployment = ns
            .api::<Deployment>()
            .get("orders")
            .await
            .expect("the Deployment exists");
        let service = ns
            .api::<Service>()
            .get("orders")
            .await
            .expect("the Service exists");
        let expected_labels = BTreeMap::from([
            (labels::NAME.to_owned(), "orders".to_owned()),
            (labels::MANAGED_BY.to_owned(), "microgate".to_owned()),
            (labels::MICROSERVICE.to_owned(), "orders".to_owned()),
        ]);
        for (kind, meta) in [
            ("Deployment", &deployment.metadata),
            ("Service", &service.metadata),
        ] {
            let owner = &meta.owner_references.as_ref().expect("owner references")[0];
            assert_eq!(
                (owner.kind.as_str(), owner.name.as_str()),
                ("Microservice", "orders"),
                "{kind}"
            );
            assert_eq!(
                Some(&owner.uid),
                created.metadata.uid.as_ref(),
                "{kind} owned by this Microservice"
            );
            assert_eq!(owner.controller, Some(true));
            assert_eq!(meta.labels.as_ref(), Some(&expected_labels), "{kind} labels");
        }
        let pod_spec = deployment
            .spec
            .and_then(|s| s.template.spec)
            .expect("pod template");
        let container = &pod_spec.containers[0];
        assert_eq!(container.image.as_deref(), Some("registry.example/orders:1.4.2"));
        let probe = container
            .readiness_probe
            .as_ref()
            .expect("a readiness probe from healthCheck");
        assert_eq!(
            probe.http_get.as_ref().and_then(|h| h.path.as_deref()),
            Some("/ready")
        );
        assert_eq!(probe.period_seconds, Some(2));
        assert_eq!(container.env.as_ref().map(|e| e[0].name.as_str()), Some("MODE"));
        let ports = service.spec.and_then(|s| s.ports).expect("service ports");
        assert_eq!(ports[0].port, 8080);

        let status = ms.status.as_ref().expect("status");
        assert_eq!(status.observed_generation, ms.metadata.generation);
        assert_eq!((status.replicas, status.ready_replicas), (2, 2));
        assert_eq!(
            status.selector.as_deref(),
            Some("microgate.dev/microservice=orders")
        );
        assert_eq!(
            condition(&ms, "Progressing").map(|c| c.1),
            Some("RolloutComplete".into())
        );
        assert_eq!(condition(&ms, "Degraded").map(|c| c.0), Some("False".into()));
        await_event(&ns, "orders", "Created").await;
    })
    .await;
}

#[tokio::test]
async fn kubectl_shows_the_columns_and_scales_through_the_scale_subresource() {
    with_namespace("msvc-kubectl", |ns| async move {
        let _controller = ControllerUnderTest::start(&ns).await;
        create_orders(&ns, 1).await;

        let table = kubectl(&["get", "msvc", "-o", "wide", "-n", &ns.name]);
        let mut lines = table.lines();
        let header: Vec<_> = lines.next().expect("a header").split_whitespace().collect();
        assert_eq!(
            header,
            [
                "NAME",
                "READY",
                "ENDPOINTS",
                "IMAGE",
                "POLICY",
                "PORT",
                "PROTOCOL",
                "REASON",
                "AGE"
            ]
        );
        let row: Vec<_> = lines.next().expect("a row").split_whitespace().collect();
        assert_eq!(
            &row[..8],
            [
                "orders",
                "1/1",
                "1",
                "registry.example/orders:1.4.2",
                "RoundRobin",
                "8080",
                "HTTP",
                "AllReplicasReady"
            ]
        );
        let by_category = kubectl(&["get", "microgate", "-n", &ns.name, "-o", "name"]);
        assert!(
            by_category
                .lines()
                .any(|l| l == "microservice.microgate.dev/orders"),
            "{by_category}"
        );

        kubectl(&["scale", "msvc", "orders", "--replicas=3", "-n", &ns.name]);
        let ms = await_ready(&ns, "orders", "3/3").await;
        assert_eq!(ms.spec.replicas, 3);
        let deployment = ns.api::<Deployment>().get("orders").await.expect("deployment");
        assert_eq!(deployment.spec.and_then(|s| s.replicas), Some(3));
        let scale = kubectl(&[
            "get",
            "--raw",
            &format!(
                "/apis/microgate.dev/v1alpha1/namespaces/{}/microservices/orders/scale",
                ns.name
            ),
        ]);
        let scale: serde_json::Value = serde_json::from_str(&scale).expect("scale JSON");
        assert_eq!(scale["status"]["replicas"], 3);
        assert_eq!(scale["status"]["selector"], "microgate.dev/microservice=orders");
    })
    .await;
}

#[tokio::test]
async fn edits_to_the_owned_deployment_are_reverted() {
    with_namespace("msvc-drift", |ns| async move {
        let _controller = ControllerUnderTest::start(&ns).await;
        create_orders(&ns, 2).await;

        // What `kubectl edit` or `kubectl set image` would do: an update by another manager.
        let deployments = ns.api::<Deployment>();
        let edit = json!({"spec": {"replicas": 5, "template": {"spec": {"containers": [
            {"name": "orders", "image": "registry.example/orders:evil"}]}}}});
        deployments
            .patch("orders", &PatchParams::default(), &Patch::Strategic(&edit))
            .await
            .expect("edit the deployment");

        wait::until(
            "the Deployment's image and replicas to be restored",
            WAIT,
            || async {
                let d = match deployments.get("orders").await {
                    Ok(d) => d,
                    Err(e) => return Probe::NotYet(e.to_string()),
                };
                let spec = d.spec.expect("spec");
                let image = spec
                    .template
                    .spec
                    .as_ref()
                    .and_then(|p| p.containers[0].image.clone());
                if spec.replicas == Some(2) && image.as_deref() == Some("registry.example/orders:1.4.2") {
                    Probe::Done(())
                } else {
                    Probe::NotYet(format!("replicas {:?}, image {image:?}", spec.replicas))
                }
            },
        )
        .await
        .expect("drift is corrected");
        await_event(&ns, "orders", "DriftCorrected").await;
    })
    .await;
}

#[tokio::test]
async fn reconciling_an_unchanged_microservice_writes_nothing() {
    with_namespace("msvc-noop", |ns| async move {
        let controller = ControllerUnderTest::start(&ns).await;
        create_orders(&ns, 2).await;
        // Let the Deployment controller's last status writes settle before taking the picture.
        wait::until("a settled Deployment", WAIT, || async {
            let before = ns
                .api::<Deployment>()
                .get("orders")
                .await
                .map(|d| d.resource_version());
            tokio::time::sleep(Duration::from_millis(500)).await;
            let after = ns
                .api::<Deployment>()
                .get("orders")
                .await
                .map(|d| d.resource_version());
            match (before, after) {
                (Ok(a), Ok(b)) if a == b => Probe::Done(()),
                other => Probe::NotYet(format!("{other:?}")),
            }
        })
        .await
        .expect("the Deployment settles");

        let deployment_rv = ns
            .api::<Deployment>()
            .get("orders")
            .await
            .expect("deployment")
            .resource_version();
        let service_rv = ns
            .api::<Service>()
            .get("orders")
            .await
            .expect("service")
            .resource_version();
        let completed_before = controller.completed_reconciliations().await;
        // An annotation changes the Microservice (so the controller reconciles it) but not its spec.
        let touched = ns
            .api::<Microservice>()
            .patch(
                "orders",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": {"touched": "1"}}})),
            )
            .await
            .expect("annotate");
        wait::until(
            "the controller to reconcile the annotated Microservice",
            WAIT,
            || async {
                let completed = controller.completed_reconciliations().await;
                if completed > completed_before {
                    Probe::Done(())
                } else {
                    Probe::NotYet(format!("{completed} reconciliations"))
                }
            },
        )
        .await
        .expect("a reconciliation");

        let after = ns
            .api::<Microservice>()
            .get("orders")
            .await
            .expect("microservice");
        assert_eq!(
            after.resource_version(),
            touched.resource_version(),
            "no status write"
        );
        let deployment = ns.api::<Deployment>().get("orders").await.expect("deployment");
        assert_eq!(
            deployment.resource_version(),
            deployment_rv,
            "no Deployment write"
        );
        let service = ns.api::<Service>().get("orders").await.expect("service");
        assert_eq!(service.resource_version(), service_rv, "no Service write");
    })
    .await;
}

#[tokio::test]
async fn status_conditions_follow_pod_readiness() {
    with_namespace("msvc-ready", |ns| async move {
        let _controller = ControllerUnderTest::start(&ns).await;
        create_orders(&ns, 2).await;
        let pods = ns
            .api::<Pod>()
            .list(&ListParams::default().labels("microgate.dev/microservice=orders"))
            .await;
        let pod = pods.expect("list pods").items[0].name_any();

        ns.set_ready(&pod, false).await.expect("fail the pod's readiness");
        let api = ns.api::<Microservice>();
        let not_ready = wait::until("Ready=False with 1 of 2 ready", WAIT, || async {
            match api
                .get("orders")
                .await
                .ok()
                .and_then(|ms| condition(&ms, "Ready"))
            {
                Some(c) if c.0 == "False" => Probe::Done(c),
                other => Probe::NotYet(format!("{other:?}")),
            }
        })
        .await
        .expect("the Microservice reports the unready pod");
        assert_eq!(not_ready.1, "ReplicasNotReady");
        assert_eq!(not_ready.2, "1 of 2 replicas are ready");

        ns.set_ready(&pod, true).await.expect("pass the pod's readiness");
        await_ready(&ns, "orders", "2/2").await;
    })
    .await;
}

#[tokio::test]
async fn deleting_a_microservice_removes_its_deployment_service_and_pods() {
    with_namespace("msvc-delete", |ns| async move {
        let _controller = ControllerUnderTest::start(&ns).await;
        create_orders(&ns, 2).await;

        ns.api::<Microservice>()
            .delete("orders", &DeleteParams::background())
            .await
            .expect("delete");
        let selector = ListParams::default().labels("microgate.dev/microservice=orders");
        wait::until(
            "the garbage collector to remove everything orders owned",
            WAIT,
            || async {
                let deployment = ns
                    .api::<Deployment>()
                    .get_opt("orders")
                    .await
                    .map(|d| d.is_some());
                let service = ns.api::<Service>().get_opt("orders").await.map(|s| s.is_some());
                let pods = ns.api::<Pod>().list(&selector).await.map(|l| l.items.len());
                match (deployment, service, pods) {
                    (Ok(false), Ok(false), Ok(0)) => Probe::Done(()),
                    other => Probe::NotYet(format!("(deployment, service, pods) = {other:?}")),
                }
            },
        )
        .await
        .expect("cascading deletion");
    })
    .await;
}

#[tokio::test]
async fn a_microservice_that_cannot_be_applied_is_degraded_and_the_others_still_run() {
    with_namespace("msvc-bad", |bad_ns| async move {
        with_namespace("msvc-good", |good_ns| async move {
            // One controller for both namespaces, limited to this test's objects by a label.
            let selector = format!("test={}", bad_ns.name);
            let _controller = ControllerUnderTest::start_all_namespaces(&bad_ns, &selector).await;
            let labelled = |mut ms: Microservice| {
                ms.metadata.labels = Some([("test".to_owned(), bad_ns.name.clone())].into());
                ms
            };
            // The CRD accepts any quantity string; the Deployment's validation does not.
            let bad = labelled(microservice(
                "orders",
                json!({
                    "image": "registry.example/orders:1.4.2",
                    "resources": {"requests": {"cpu": "lots"}},
                }),
            ));
            create(&bad_ns, &bad).await;
            create(
                &good_ns,
                &labelled(microservice(
                    "orders",
                    json!({"image": "registry.example/orders:1.4.2"}),
                )),
            )
            .await;

            await_ready(&good_ns, "orders", "1/1").await;
            let api = bad_ns.api::<Microservice>();
            let degraded = wait::until("the bad Microservice to be Degraded", WAIT, || async {
                match api
                    .get("orders")
                    .await
                    .ok()
                    .and_then(|ms| condition(&ms, "Degraded"))
                {
                    Some(c) if c.0 == "True" => Probe::Done(c),
                    other => Probe::NotYet(format!("{other:?}")),
                }
            })
            .await
            .expect("the failure is reported in status");
            assert_eq!(degraded.1, "ApplyFailed");
            assert!(
                degraded.2.contains("quantities must match"),
                "the API server's reason: {}",
                degraded.2
            );
            await_event(&bad_ns, "orders", "ApplyFailed").await;
            let warnings = events_for(&bad_ns, "orders").await;
            assert!(
                warnings.iter().any(|(t, r)| t == "Warning" && r == "ApplyFailed"),
                "{warnings:?}"
            );
        })
        .await;
    })
    .await;
}
