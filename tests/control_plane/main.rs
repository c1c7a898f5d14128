//! Proof that the ground the rest of microgate is tested on is real: a Kubernetes control plane
//! whose controllers turn Deployments into Pods, a fake kubelet that makes those Pods real HTTP
//! servers, and namespaces that really go away.

use std::{net::SocketAddr, time::Duration};

use k8s_openapi::api::{
    apps::v1::{Deployment, ReplicaSet},
    core::v1::{Namespace, Pod},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use microgate_test_support::{
    TestNamespace,
    cluster::kubectl,
    kubelet::NODE_NAME,
    pod_ips::PodIpPool,
    probe,
    wait::{self, Probe},
    with_namespace,
};
use serde_json::json;

const PORT: u16 = 8080;
const APP: &str = "echo";
/// Pods of a Deployment are bound, started and reported Ready in well under this.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

fn deployment(name: &str, replicas: i32) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{
                    "name": "echo",
                    "image": "registry.example/echo:1",
                    "ports": [{"containerPort": PORT}],
                }]},
            },
        },
    }))
    .expect("a valid Deployment")
}

async fn create_deployment(ns: &TestNamespace, name: &str, replicas: i32) {
    ns.api::<Deployment>()
        .create(&PostParams::default(), &deployment(name, replicas))
        .await
        .expect("create the deployment");
}

/// Waits until the Deployment reports `replicas` ready and exactly that many Pods exist.
async fn await_ready_pods(ns: &TestNamespace, name: &str, replicas: usize) -> Vec<Pod> {
    let deployments = ns.api::<Deployment>();
    let pods = ns.api::<Pod>();
    let selector = ListParams::default().labels(&format!("app={name}"));
    wait::until(
        format!("{replicas} ready pods of deployment {name}"),
        READY_TIMEOUT,
        || async {
            let ready = deployments
                .get(name)
                .await
                .ok()
                .and_then(|d| d.status)
                .and_then(|s| s.ready_replicas)
                .unwrap_or(0);
            let listed = match pods.list(&selector).await {
                Ok(list) => list.items,
                Err(error) => return Probe::NotYet(error.to_string()),
            };
            let live: Vec<_> = listed
                .into_iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .collect();
            if usize::try_from(ready).ok() == Some(replicas)
                && live.len() == replicas
                && live.iter().all(is_ready)
            {
                Probe::Done(live)
            } else {
                Probe::NotYet(format!(
                    "deployment readyReplicas={ready}, {} live pods",
                    live.len()
                ))
            }
        },
    )
    .await
    .expect("pods become ready")
}

fn is_ready(pod: &Pod) -> bool {
    let conditions = pod.status.as_ref().and_then(|s| s.conditions.as_ref());
    conditions.is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn pod_addr(pod: &Pod) -> SocketAddr {
    let ip = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.as_deref())
        .expect("a running pod has an IP");
    SocketAddr::new(ip.parse().expect("pod IP is an IP address"), PORT)
}

async fn scale(ns: &TestNamespace, name: &str, replicas: i32) {
    let patch = json!({"spec": {"replicas": replicas}});
    ns.api::<Deployment>()
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("scale the deployment");
}

#[tokio::test]
async fn deployment_pods_become_ready_on_the_fake_node_and_each_answers_with_its_own_name() {
    with_namespace("ready", |ns| async move {
        let pod_ip_range = PodIpPool::from_env().expect("a valid pod IP range");
        let started = std::time::Instant::now();
        create_deployment(&ns, APP, 3).await;
        let pods = await_ready_pods(&ns, APP, 3).await;
        eprintln!(
            "3 pods ready {:?} after the deployment was created",
            started.elapsed()
        );

        for pod in &pods {
            let name = pod.name_any();
            let spec = pod.spec.as_ref().expect("pod spec");
            assert_eq!(
                spec.node_name.as_deref(),
                Some(NODE_NAME),
                "{name} is bound to the fake node"
            );
            let status = pod.status.as_ref().expect("pod status");
            assert_eq!(status.phase.as_deref(), Some("Running"));
            let addr = pod_addr(pod);
            assert_eq!(
                ns.pod_ip(&name).map(std::net::IpAddr::V4),
                Some(addr.ip()),
                "the kubelet's record"
            );
            assert_eq!(status.pod_ips.as_ref().map(|ips| ips.len()), Some(1));
            let std::net::IpAddr::V4(ip) = addr.ip() else {
                panic!("{addr} is not IPv4")
            };
            assert!(
                pod_ip_range.contains(ip),
                "{ip} lies in the configured pod IP range"
            );

            let answer = probe::get(addr, "/").await.expect("the pod answers HTTP");
            assert_eq!(answer.status, 200);
            assert_eq!(answer.body.trim(), name, "{addr} answers with its own pod name");
        }
        let mut addrs: Vec<_> = pods.iter().map(pod_addr).collect();
        addrs.sort();
        addrs.dedup();
        assert_eq!(addrs.len(), 3, "every pod has its own address");
    })
    .await;
}

#[tokio::test]
async fn scaling_down_removes_pods_and_their_addresses_refuse_connections() {
    with_namespace("scale", |ns| async move {
        create_deployment(&ns, APP, 3).await;
        let before = await_ready_pods(&ns, APP, 3).await;

        scale(&ns, APP, 1).await;
        let after = await_ready_pods(&ns, APP, 1).await;
        let survivor = after[0].name_any();
        let gone: Vec<_> = before.iter().filter(|pod| pod.name_any() != survivor).collect();
        assert_eq!(gone.len(), 2);

        let pods = ns.api::<Pod>();
        for pod in gone {
            let name = pod.name_any();
            // The kubelet's termination sequence (not Ready, SIGTERM, then the final delete)
            // takes a few API calls after the ReplicaSet stopped counting the pod.
            wait::until(format!("{name} to be deleted"), READY_TIMEOUT, || async {
                match pods.get_opt(&name).await {
                    Ok(None) => Probe::Done(()),
                    Ok(Some(_)) => Probe::NotYet("still there".to_owned()),
                    Err(error) => Probe::NotYet(error.to_string()),
                }
            })
            .await
            .expect("deleted, not left terminating");
            let error = probe::get(pod_addr(pod), "/")
                .await
                .expect_err("a deleted pod's address is dead");
            assert!(error.is_connection_refused(), "{name}: {error}");
        }
        let answer = probe::get(pod_addr(&after[0]), "/")
            .await
            .expect("the survivor answers");
        assert_eq!(answer.body.trim(), survivor);
        assert_eq!(ns.kubelet.running_pods(&ns.name), vec![survivor]);
    })
    .await;
}

#[tokio::test]
async fn deleting_a_deployment_garbage_collects_its_replicaset_and_pods() {
    with_namespace("gc", |ns| async move {
        create_deployment(&ns, APP, 2).await;
        let pods = await_ready_pods(&ns, APP, 2).await;
        let replicasets = ns.api::<ReplicaSet>();
        let owned = replicasets
            .list(&ListParams::default())
            .await
            .expect("list replicasets");
        assert_eq!(
            owned.items.len(),
            1,
            "the deployment controller made one ReplicaSet"
        );

        ns.api::<Deployment>()
            .delete(APP, &DeleteParams::background())
            .await
            .expect("delete the deployment");

        let pod_api = ns.api::<Pod>();
        wait::until(
            "the garbage collector to remove the ReplicaSet and Pods",
            READY_TIMEOUT,
            || async {
                let sets = replicasets
                    .list(&ListParams::default())
                    .await
                    .map(|l| l.items.len());
                let left = pod_api.list(&ListParams::default()).await.map(|l| l.items.len());
                match (sets, left) {
                    (Ok(0), Ok(0)) => Probe::Done(()),
                    other => Probe::NotYet(format!("(replicasets, pods) = {other:?}")),
                }
            },
        )
        .await
        .expect("garbage collection");
        assert!(
            ns.kubelet.running_pods(&ns.name).is_empty(),
            "no backend outlives its pod"
        );
        for pod in &pods {
            let error = probe::get(pod_addr(pod), "/")
                .await
                .expect_err("collected pods are dead");
            assert!(error.is_connection_refused(), "{error}");
        }
    })
    .await;
}

#[tokio::test]
async fn a_readiness_flip_is_seen_by_the_deployment_controller() {
    with_namespace("ready-flip", |ns| async move {
        create_deployment(&ns, APP, 2).await;
        let pods = await_ready_pods(&ns, APP, 2).await;
        let flipped = pods[0].name_any();
        let deployments = ns.api::<Deployment>();
        let ready_replicas = || async {
            deployments
                .get(APP)
                .await
                .ok()
                .and_then(|d| d.status)
                .and_then(|s| s.ready_replicas)
                .unwrap_or(0)
        };

        ns.set_ready(&flipped, false)
            .await
            .expect("fail the readiness probe");
        wait::until("readyReplicas to drop to 1", READY_TIMEOUT, || async {
            match ready_replicas().await {
                1 => Probe::Done(()),
                n => Probe::NotYet(format!("readyReplicas={n}")),
            }
        })
        .await
        .expect("the deployment sees the unready pod");
        let pod = ns.api::<Pod>().get(&flipped).await.expect("get pod");
        assert!(!is_ready(&pod));
        let answer = probe::get(pod_addr(&pod), "/")
            .await
            .expect("an unready pod still runs");
        assert_eq!(answer.body.trim(), flipped);

        ns.set_ready(&flipped, true)
            .await
            .expect("pass the readiness probe");
        wait::until("readyReplicas to return to 2", READY_TIMEOUT, || async {
            match ready_replicas().await {
                2 => Probe::Done(()),
                n => Probe::NotYet(format!("readyReplicas={n}")),
            }
        })
        .await
        .expect("the deployment sees the pod ready again");
    })
    .await;
}

#[tokio::test]
async fn a_deleted_test_namespace_is_really_gone() {
    let ns = TestNamespace::create("gone")
        .await
        .expect("create a test namespace");
    create_deployment(&ns, APP, 2).await;
    await_ready_pods(&ns, APP, 2).await;
    let (client, name) = (ns.client.clone(), ns.name.clone());

    ns.delete_and_wait()
        .await
        .expect("delete the namespace and wait until it is gone");

    let namespaces: Api<Namespace> = Api::all(client.clone());
    assert!(
        namespaces.get_opt(&name).await.expect("get namespace").is_none(),
        "{name} still exists"
    );
    let pods: Api<Pod> = Api::namespaced(client, &name);
    assert!(
        pods.list(&ListParams::default())
            .await
            .expect("list pods")
            .items
            .is_empty()
    );
}

#[tokio::test]
async fn kubectl_sees_the_fake_node_and_a_v1_36_server() {
    with_namespace("kubectl", |_ns| async move {
        let nodes = kubectl(&["get", "nodes", "-o", "name"]);
        assert!(
            nodes.lines().any(|line| line == format!("node/{NODE_NAME}")),
            "{nodes}"
        );
        let version = kubectl(&["version", "-o", "json"]);
        let version: serde_json::Value = serde_json::from_str(&version).expect("kubectl version JSON");
        let server = version["serverVersion"]["gitVersion"]
            .as_str()
            .unwrap_or_default();
        assert!(server.starts_with("v1.36."), "server version {server}");
    })
    .await;
}

/// The API server validates Pod IPs for syntax only, but refuses loopback addresses in
/// EndpointSlices; inside a private network namespace (10.200.0.0/16) both are accepted. This is
/// why microgate reads endpoints from Pods, not EndpointSlices.
#[tokio::test]
async fn endpoint_slices_refuse_loopback_pod_ips_and_accept_private_ones() {
    with_namespace("slices", |ns| async move {
        create_deployment(&ns, APP, 1).await;
        let pods = await_ready_pods(&ns, APP, 1).await;
        let ip = pod_addr(&pods[0]).ip();
        let slice: EndpointSlice = serde_json::from_value(json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {"name": "by-hand"},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [ip.to_string()], "conditions": {"ready": true}}],
            "ports": [{"name": "http", "port": PORT, "protocol": "TCP"}],
        }))
        .expect("a valid EndpointSlice");
        let created = ns
            .api::<EndpointSlice>()
            .create(&PostParams::default(), &slice)
            .await;
        if ip.is_loopback() {
            let error = created.expect_err("a loopback endpoint is refused");
            assert!(error.to_string().contains("loopback"), "{error}");
        } else {
            created.expect("a private-namespace pod IP is a valid endpoint");
        }
    })
    .await;
}

/// A person or a script outside the test process scripts a backend through Pod annotations.
#[tokio::test]
async fn pod_annotations_script_the_backend() {
    with_namespace("annotations", |ns| async move {
        create_deployment(&ns, APP, 1).await;
        let pods = await_ready_pods(&ns, APP, 1).await;
        let (name, addr) = (pods[0].name_any(), pod_addr(&pods[0]));
        let annotate = |value: serde_json::Value| {
            let pods = ns.api::<Pod>();
            let name = name.clone();
            async move {
                let patch = json!({"metadata": {"annotations": value}});
                pods.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .expect("annotate the pod");
            }
        };
        annotate(json!({"fake.microgate.dev/status": "503"})).await;
        wait::until("the backend to answer 503", READY_TIMEOUT, || async {
            match probe::get(addr, "/").await {
                Ok(answer) if answer.status == 503 => Probe::Done(()),
                other => Probe::NotYet(format!("{other:?}")),
            }
        })
        .await
        .expect("the annotation scripts the backend");
        annotate(json!({"fake.microgate.dev/status": null})).await;
        wait::until("the backend to answer 200 again", READY_TIMEOUT, || async {
            match probe::get(addr, "/").await {
                Ok(answer) if answer.status == 200 => Probe::Done(()),
                other => Probe::NotYet(format!("{other:?}")),
            }
        })
        .await
        .expect("removing the annotation restores the default");
    })
    .await;
}
