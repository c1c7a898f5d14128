//! `kubectl apply -f crds/ -f manifests/`: it installs, and is safe to run twice.

use std::collections::BTreeMap;

use microgate_test_support::cluster::{self, kubectl};
use serde_json::Value;

use crate::{PLAIN_INSTALL, repo, wait_for_pod};

fn apply() -> String {
    let crds = repo("crds");
    let manifests = repo("manifests");
    kubectl(&[
        "apply",
        "-f",
        &crds.display().to_string(),
        "-f",
        &manifests.display().to_string(),
    ])
}

/// `kind/namespace/name` → resourceVersion of everything the plain install holds.
fn versions() -> BTreeMap<String, String> {
    let mut versions = BTreeMap::new();
    for dir in ["crds", "manifests"] {
        let json = kubectl(&["get", "-f", &repo(dir).display().to_string(), "-o", "json"]);
        let list: Value = serde_json::from_str(&json).expect("kubectl prints JSON");
        let items = match list["items"].as_array() {
            Some(items) => items.clone(),
            None => vec![list],
        };
        for item in items {
            let metadata = &item["metadata"];
            versions.insert(
                format!("{}/{}/{}", item["kind"], metadata["namespace"], metadata["name"]),
                metadata["resourceVersion"].to_string(),
            );
        }
    }
    versions
}

#[tokio::test]
async fn the_plain_install_applies_and_a_second_apply_changes_nothing() {
    let _turn = PLAIN_INSTALL.lock().await;
    let client = cluster::client().await.expect("the local control plane");
    // From nothing (an earlier run leaves the install in place): the CRDs stay, the rest goes.
    kubectl(&[
        "delete",
        "-f",
        &repo("manifests").display().to_string(),
        "--ignore-not-found",
        "--wait=true",
        "--timeout=120s",
    ]);

    let first = apply();
    for created in [
        "namespace/microgate-system created",
        "serviceaccount/microgate created",
        "clusterrole.rbac.authorization.k8s.io/microgate created",
        "clusterrolebinding.rbac.authorization.k8s.io/microgate created",
        "service/microgate-gateway created",
        "service/microgate-metrics created",
        "deployment.apps/microgate created",
    ] {
        assert!(first.contains(created), "expected {created:?} in:\n{first}");
    }
    // The ReplicaSet controller created the operator's Pod: PodSecurity admission, enforcing
    // the restricted standard in microgate-system, accepted it.
    let pod = wait_for_pod(
        &client,
        "microgate-system",
        "app.kubernetes.io/instance=microgate,app.kubernetes.io/component=operator",
    )
    .await;
    assert_eq!(
        pod.spec.and_then(|s| s.service_account_name).as_deref(),
        Some("microgate")
    );

    let before = versions();
    let second = apply();
    let lines: Vec<&str> = second.lines().collect();
    assert_eq!(lines.len(), before.len(), "one line per object:\n{second}");
    for line in lines {
        assert!(
            line.ends_with(" unchanged"),
            "the second apply changed something: {line}"
        );
    }
    assert_eq!(versions(), before, "no object was written by the second apply");
}
