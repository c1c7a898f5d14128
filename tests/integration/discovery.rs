//! Discovery on the real control plane: the registry (and the status that publishes it) follows
//! Pods as they come, go and flip readiness, stays exact across a restart and a broken watch,
//! and keeps Microservices of the same name in different namespaces apart.

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use microgate::{
    api::Microservice,
    discovery::{self, DiscoveryMetrics, Registry, ServiceKey},
};
use microgate_test_support::{
    TestNamespace, cluster,
    proxy::CuttableProxy,
    wait::{self, Probe},
    with_namespace,
};
use serde_json::json;

use crate::ControllerUnderTest;

const WAIT: Duration = Duration::from_secs(30);

/// Each live Pod of `service` as (pod, ip, ready), from the API server: the truth.
async fn live_pods(api: &Api<Pod>, service: &str) -> BTreeMap<String, (String, bool)> {
    let pods = api
        .list(&ListParams::default().labels(&format!("microgate.dev/microservice={service}")))
        .await;
    pods.expect("list pods")
        .items
        .into_iter()
        .filter_map(|pod| {
            let status = pod.status.as_ref()?;
            let ip = status.pod_ip.clone()?;
            let ready = pod.metadata.deletion_timestamp.is_none()
                && status
                    .conditions
                    .iter()
                    .flatten()
                    .any(|c| c.type_ == "Ready" && c.status == "True");
            Some((pod.name_any(), (ip, ready)))
        })
        .collect()
}

/// The registry's view of `key`, in the same shape.
fn registered(registry: &Registry, key: &ServiceKey) -> BTreeMap<String, (String, bool)> {
    let snapshot = registry.snapshot(key);
    snapshot
        .endpoints
        .iter()
        .map(|e| (e.pod.to_string(), (e.ip.to_string(), e.ready)))
        .collect()
}

/// Waits until the registry holds exactly the live Pods of `service`, with `ready` of them ready.
async fn await_registry_matches(
    registry: &Registry,
    pods: &Api<Pod>,
    namespace: &str,
    service: &str,
    ready: usize,
) {
    let key = ServiceKey::new(namespace, service);
    wait::until(
        format!("the registry to hold exactly the live pods of {key} ({ready} ready)"),
        WAIT,
        || async {
            let live = live_pods(pods, service).await;
            let seen = registered(registry, &key);
            let ready_seen = seen.values().filter(|(_, r)| *r).count();
            if seen == live && ready_seen == ready {
                Probe::Done(())
            } else {
                Probe::NotYet(format!("live {live:?}, registry {seen:?}"))
            }
        },
    )
    .await
    .expect("the registry converges");
}

/// Checks that the deleted `pod` is not ready (it may still be registered while it terminates:
/// its drain delay), then waits until it has left the registry.
async fn await_terminated(registry: &Registry, key: &ServiceKey, pod: &str) {
    if let Some((_, ready)) = registered(registry, key).get(pod) {
        assert!(!ready, "the terminating pod {pod} is not ready");
    }
    wait::until(
        format!("the deleted pod {pod} to leave the registry"),
        WAIT,
        || async {
            if registered(registry, key).contains_key(pod) {
                Probe::NotYet("still registered".to_owned())
            } else {
                Probe::Done(())
            }
        },
    )
    .await
    .expect("a terminated pod leaves the registry");
}

/// Waits until the Microservice's status lists `ready` ready endpoints out of `total`.
async fn await_status_endpoints(ns: &TestNamespace, name: &str, ready: i32, total: usize) -> Microservice {
    let api = ns.api::<Microservice>();
    wait::until(
        format!("status.endpoints of {name}: {ready} of {total} ready"),
        WAIT,
        || async {
            match api.get(name).await {
                Ok(ms) => {
                    let status = ms.status.clone().unwrap_or_default();
                    if status.ready_endpoints == ready && status.endpoints.len() == total {
                        Probe::Done(ms)
                    } else {
                        Probe::NotYet(format!(
                            "readyEndpoints {}, endpoints {:?}",
                            status.ready_endpoints, status.endpoints
                        ))
                    }
                }
                Err(error) => Probe::NotYet(error.to_string()),
            }
        },
    )
    .await
    .expect("the status shows the endpoints")
}

async fn create_microservice(ns: &TestNamespace, name: &str, replicas: i32, labels: serde_json::Value) {
    let ms: Microservice = serde_json::from_value(json!({
        "apiVersion": "microgate.dev/v1alpha1", "kind": "Microservice",
        "metadata": {"name": name, "labels": labels},
        "spec": {"image": "registry.example/orders:1.4.2", "replicas": replicas},
    }))
    .expect("a valid Microservice");
    ns.api::<Microservice>()
        .create(&PostParams::default(), &ms)
        .await
        .expect("create the Microservice");
}

async fn scale(ns: &TestNamespace, name: &str, replicas: i32) {
    let patch = json!({"spec": {"replicas": replicas}});
    ns.api::<Microservice>()
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("scale");
}

#[tokio::test]
async fn endpoints_follow_scaling_readiness_and_deletion_into_registry_and_status() {
    with_namespace("disc-follow", |ns| async move {
        let controller = ControllerUnderTest::start(&ns).await;
        let pods = ns.api::<Pod>();
        create_microservice(&ns, "orders", 2, json!({})).await;
        await_registry_matches(&controller.registry, &pods, &ns.name, "orders", 2).await;
        let ms = await_status_endpoints(&ns, "orders", 2, 2).await;
        let live = live_pods(&pods, "orders").await;
        for endpoint in &ms.status.expect("status").endpoints {
            assert_eq!(
                live.get(&endpoint.pod).map(|(ip, _)| ip),
                Some(&endpoint.ip),
                "status shows the pod IP"
            );
            assert_eq!(endpoint.port, 8080);
        }

        scale(&ns, "orders", 3).await;
        await_registry_matches(&controller.registry, &pods, &ns.name, "orders", 3).await;

        let flipped = live_pods(&pods, "orders")
            .await
            .into_keys()
            .next()
            .expect("a pod");
        ns.set_ready(&flipped, false).await.expect("fail readiness");
        await_registry_matches(&controller.registry, &pods, &ns.name, "orders", 2).await;
        let ms = await_status_endpoints(&ns, "orders", 2, 3).await;
        let shown = ms
            .status
            .expect("status")
            .endpoints
            .into_iter()
            .find(|e| e.pod == flipped)
            .expect("listed");
        assert!(!shown.ready, "the unready pod is listed as not ready");

        // A deleted pod is out of the ready set at once, and leaves once its termination (the
        // drain delay) ends; its ReplicaSet makes a new one.
        let deleted = live_pods(&pods, "orders")
            .await
            .into_keys()
            .find(|p| *p != flipped)
            .expect("another pod");
        pods.delete(&deleted, &DeleteParams::default())
            .await
            .expect("delete a pod");
        await_registry_matches(&controller.registry, &pods, &ns.name, "orders", 2).await;
        await_terminated(
            &controller.registry,
            &ServiceKey::new(&ns.name, "orders"),
            &deleted,
        )
        .await;

        scale(&ns, "orders", 1).await;
        ns.set_ready(&flipped, true).await.ok(); // it may already be scaled away
        await_registry_matches(&controller.registry, &pods, &ns.name, "orders", 1).await;
        await_status_endpoints(&ns, "orders", 1, 1).await;
    })
    .await;
}

#[tokio::test]
async fn same_named_microservices_in_two_namespaces_stay_apart() {
    with_namespace("disc-a", |a| async move {
        with_namespace("disc-b", |b| async move {
            let selector = format!("test={}", a.name);
            let controller = ControllerUnderTest::start_all_namespaces(&a, &selector).await;
            create_microservice(&a, "orders", 1, json!({"test": a.name})).await;
            create_microservice(&b, "orders", 2, json!({"test": a.name})).await;
            await_registry_matches(&controller.registry, &a.api::<Pod>(), &a.name, "orders", 1).await;
            await_registry_matches(&controller.registry, &b.api::<Pod>(), &b.name, "orders", 2).await;
            await_status_endpoints(&a, "orders", 1, 1).await;
            await_status_endpoints(&b, "orders", 2, 2).await;
        })
        .await;
    })
    .await;
}

#[tokio::test]
async fn a_restarted_controller_rebuilds_the_registry_from_the_live_pods() {
    with_namespace("disc-restart", |ns| async move {
        let pods = ns.api::<Pod>();
        {
            let first = ControllerUnderTest::start(&ns).await;
            create_microservice(&ns, "orders", 3, json!({})).await;
            await_registry_matches(&first.registry, &pods, &ns.name, "orders", 3).await;
        }
        // While no controller runs: one pod turns unready, another is deleted (and replaced).
        let names: Vec<_> = live_pods(&pods, "orders").await.into_keys().collect();
        ns.set_ready(&names[0], false).await.expect("fail readiness");
        pods.delete(&names[1], &DeleteParams::default())
            .await
            .expect("delete a pod");

        let second = ControllerUnderTest::start(&ns).await;
        await_registry_matches(&second.registry, &pods, &ns.name, "orders", 2).await;
        await_terminated(&second.registry, &ServiceKey::new(&ns.name, "orders"), &names[1]).await;
    })
    .await;
}

#[tokio::test]
async fn a_broken_watch_ends_with_exactly_the_live_pods() {
    with_namespace("disc-partition", |ns| async move {
        // Discovery alone, reaching the API server through a proxy the test can cut.
        let mut config = cluster::config().await.expect("cluster config");
        let api_port = config
            .cluster_url
            .port_u16()
            .expect("the API server URL has a port");
        let proxy = CuttableProxy::start(([127, 0, 0, 1], api_port).into())
            .await
            .expect("start the proxy");
        config.cluster_url = format!("https://{}", proxy.addr()).parse().expect("proxy URL");
        let client = Client::try_from(config).expect("client through the proxy");
        let registry = Registry::default();
        let metrics = DiscoveryMetrics::register(&mut Default::default());
        let watch = tokio::spawn({
            let (registry, namespace) = (registry.clone(), ns.name.clone());
            async move { discovery::run(client, Some(namespace), registry, metrics).await }
        });

        // A plain Deployment whose pods carry the label, as the controller's would.
        let deployment: Deployment = serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "orders"},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"microgate.dev/microservice": "orders"}},
                "template": {"metadata": {"labels": {"microgate.dev/microservice": "orders"}},
                    "spec": {"containers": [{"name": "orders", "image": "registry.example/orders:1",
                        "ports": [{"name": "http", "containerPort": 8080}]}]}}},
        }))
        .expect("a valid Deployment");
        let deployments = ns.api::<Deployment>();
        deployments
            .create(&PostParams::default(), &deployment)
            .await
            .expect("create the deployment");
        let pods = ns.api::<Pod>();
        await_registry_matches(&registry, &pods, &ns.name, "orders", 2).await;

        proxy.cut();
        let before: Vec<_> = live_pods(&pods, "orders").await.into_keys().collect();
        let patch = json!({"spec": {"replicas": 4}});
        deployments
            .patch("orders", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("scale");
        pods.delete(&before[0], &DeleteParams::default())
            .await
            .expect("delete a pod");
        ns.set_ready(&before[1], false).await.expect("fail readiness");
        // Let the world settle while discovery is blind: 4 pods, 3 ready, the deleted one gone.
        wait::until("4 live pods, 3 ready", WAIT, || async {
            let live = live_pods(&pods, "orders").await;
            let ready = live.values().filter(|(_, r)| *r).count();
            if live.len() == 4 && ready == 3 && !live.contains_key(&before[0]) {
                Probe::Done(())
            } else {
                Probe::NotYet(format!("{live:?}"))
            }
        })
        .await
        .expect("the cluster settles");
        let key = ServiceKey::new(&ns.name, "orders");
        assert_eq!(
            registered(&registry, &key).len(),
            2,
            "discovery saw nothing while cut off"
        );

        proxy.restore();
        await_registry_matches(&registry, &pods, &ns.name, "orders", 3).await;
        assert!(
            !registered(&registry, &key).contains_key(&before[0]),
            "no ghost of the deleted pod"
        );
        watch.abort();
    })
    .await;
}

#[tokio::test]
async fn a_deleted_and_recreated_microservice_starts_clean() {
    with_namespace("disc-recreate", |ns| async move {
        let controller = ControllerUnderTest::start(&ns).await;
        let pods = ns.api::<Pod>();
        create_microservice(&ns, "orders", 2, json!({})).await;
        await_registry_matches(&controller.registry, &pods, &ns.name, "orders", 2).await;
        let old: Vec<_> = live_pods(&pods, "orders").await.into_keys().collect();

        ns.api::<Microservice>()
            .delete("orders", &DeleteParams::background())
            .await
            .expect("delete");
        let key = ServiceKey::new(&ns.name, "orders");
        wait::until("the old pods to leave the registry", WAIT, || async {
            let seen = registered(&controller.registry, &key);
            if seen.is_empty() {
                Probe::Done(())
            } else {
                Probe::NotYet(format!("{seen:?}"))
            }
        })
        .await
        .expect("the registry empties");

        create_microservice(&ns, "orders", 1, json!({})).await;
        await_registry_matches(&controller.registry, &pods, &ns.name, "orders", 1).await;
        let now = registered(&controller.registry, &ServiceKey::new(&ns.name, "orders"));
        assert!(
            now.keys().all(|pod| !old.contains(pod)),
            "only the new pod: {now:?}"
        );
        await_status_endpoints(&ns, "orders", 1, 1).await;
    })
    .await;
}

#[tokio::test]
async fn endpoint_status_writes_are_coalesced_under_churn() {
    with_namespace("disc-churn", |ns| async move {
        let controller = ControllerUnderTest::start(&ns).await;
        let pods = ns.api::<Pod>();
        create_microservice(&ns, "orders", 2, json!({})).await;
        await_status_endpoints(&ns, "orders", 2, 2).await;
        let pod = live_pods(&pods, "orders")
            .await
            .into_keys()
            .next()
            .expect("a pod");

        let writes_before = controller.metric("microgate_endpoint_status_writes_total").await;
        let started = std::time::Instant::now();
        let flips = 41;
        for i in 0..flips {
            ns.set_ready(&pod, i % 2 == 1).await.expect("flip readiness");
        }
        // An odd number of flips ends unready: the status must settle on 1 of 2.
        await_status_endpoints(&ns, "orders", 1, 2).await;
        let elapsed = started.elapsed();
        let writes = controller.metric("microgate_endpoint_status_writes_total").await - writes_before;
        // Passes are at least a window apart, and each writes this Microservice at most once.
        let bound = (elapsed.as_secs_f64() / microgate::controller::endpoints::WINDOW.as_secs_f64()).ceil()
            as u64
            + 1;
        assert!(
            writes <= bound,
            "{writes} status writes for {flips} flips in {elapsed:?} (at most {bound})"
        );
    })
    .await;
}
