//! The install story on the real control plane: the Helm chart (lint, render, install, upgrade,
//! uninstall), the plain manifests rendered from it, and least privilege proven by running the
//! `microgate` binary as the chart's service account.

mod chart;
mod helm;
mod least_privilege;
mod plain;

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use k8s_openapi::api::core::v1::{Event, Pod};
use kube::{Api, Client, api::ListParams};
use microgate_test_support::{
    cluster,
    wait::{self, Probe},
};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);

/// Tests that use the plain install's fixed names (namespace `microgate-system`, the cluster-wide
/// objects named `microgate`) or run a cluster-wide operator take turns.
static PLAIN_INSTALL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A path in the repository.
fn repo(path: &str) -> PathBuf {
    cluster::repo_root().join(path)
}

/// Runs the pinned helm against the local cluster (after starting it).
fn helm(args: &[&str]) -> Output {
    cluster::ensure_running().expect("the local control plane runs");
    Command::new(cluster::bin_dir().join("helm"))
        .arg("--kubeconfig")
        .arg(cluster::kubeconfig_path())
        .args(args)
        .current_dir(cluster::repo_root())
        .output()
        .expect("run helm")
}

/// [`helm`], panicking with its output when it fails; returns stdout.
fn helm_ok(args: &[&str]) -> String {
    let output = helm(args);
    assert!(
        output.status.success(),
        "helm {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The chart rendered as `helm template <release> helm/microgate -n <namespace> <extra>`.
fn render(release: &str, namespace: &str, extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["template", release, "helm/microgate", "--namespace", namespace];
    args.extend_from_slice(extra);
    documents(&helm_ok(&args))
}

/// The objects of a multi-document YAML stream (comment-only documents dropped).
fn documents(yaml: &str) -> Vec<Value> {
    let documents: Vec<Value> = serde_saphyr::from_multiple(yaml).expect("valid YAML");
    documents.into_iter().filter(|d| !d.is_null()).collect()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The one object of `kind` (and `name`) among `objects`.
fn object<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} among {}", kinds(objects)))
}

/// `Kind/name` of each object, for messages.
fn kinds(objects: &[Value]) -> String {
    objects
        .iter()
        .map(|o| {
            format!(
                "{}/{}",
                o["kind"].as_str().unwrap_or("?"),
                o["metadata"]["name"].as_str().unwrap_or("?")
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Waits until a Pod with `selector` exists in `namespace` (the ReplicaSet controller created it,
/// so PodSecurity admission accepted it); fails early with the ReplicaSet's FailedCreate events.
async fn wait_for_pod(client: &Client, namespace: &str, selector: &str) -> Pod {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    wait::until(format!("a Pod {selector} in {namespace}"), WAIT, || async {
        let refused: Vec<String> = match events.list(&ListParams::default()).await {
            Ok(list) => list
                .items
                .into_iter()
                .filter(|e| e.reason.as_deref() == Some("FailedCreate"))
                .map(|e| e.message.unwrap_or_default())
                .collect(),
            Err(error) => return Probe::NotYet(error.to_string()),
        };
        assert!(
            refused.is_empty(),
            "the ReplicaSet could not create its Pod: {refused:?}"
        );
        match pods.list(&ListParams::default().labels(selector)).await {
            Ok(list) if !list.items.is_empty() => Probe::Done(list.items[0].clone()),
            Ok(_) => Probe::NotYet("no Pod yet".into()),
            Err(error) => Probe::NotYet(error.to_string()),
        }
    })
    .await
    .expect("the Pod is created")
}

/// A free loopback port.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
