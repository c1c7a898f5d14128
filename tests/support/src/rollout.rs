//! A change to a Microservice under steady load, measured: the rollout scenarios of the e2e
//! suite and of `make reliability` share it.
//!
//! [`under_load`] starts open-loop [load](crate::background_load) through a gateway, changes the
//! Microservice (a new image, or a replica count) once a share of the load has been sent (or
//! several times: [`changes_under_load`]), waits for each change to be complete (every Pod of the new template Ready and every old one gone),
//! and lets the load run to its end. The Microservice is patched as plain JSON: this crate does
//! not depend on microgate's types.

use std::{net::SocketAddr, time::Duration};

use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod};
use kube::{
    Api,
    api::{ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams},
};
use serde_json::json;
use tokio::time::Instant;

use crate::{
    TestNamespace,
    background_load::{self, Load, LoadReport},
    probe,
    wait::{self, Probe},
};

/// How long a change may take to complete.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(60);

/// What changes in the Microservice.
#[derive(Clone, Debug)]
pub enum Change {
    /// A new image: every Pod is replaced.
    Image(String),
    /// A new replica count.
    Scale(i32),
}

/// What changes under load cost.
#[derive(Debug)]
pub struct Figures {
    pub load: LoadReport,
    /// For each change, from the patch to the last old Pod gone and every new one Ready.
    pub changes: Vec<Duration>,
    /// Retries the gateway sent during the run.
    pub retries: u64,
}

impl Figures {
    /// One line for the reliability report.
    pub fn summary(&self) -> String {
        let changes: Vec<_> = self
            .changes
            .iter()
            .map(|took| format!("{:.1} s", took.as_secs_f64()))
            .collect();
        format!(
            "{} failed of {} ({} retries; {} done in {}; {:.0} req/s sent)",
            self.load.failed,
            self.load.sent,
            self.retries,
            if changes.len() == 1 { "change" } else { "changes" },
            changes.join(", "),
            self.load.achieved_rate()
        )
    }
}

/// Runs `load` and applies `change` to the Microservice `name` once `lead_in` of the load has
/// passed; `admin` serves the gateway's `/metrics` (for the retries).
pub async fn under_load(
    ns: &TestNamespace,
    name: &str,
    admin: SocketAddr,
    load: Load,
    lead_in: Duration,
    change: Change,
) -> Figures {
    changes_under_load(ns, name, admin, load, &[(lead_in, change)]).await
}

/// Runs `load` and applies each change at its time into the load (or once the one before is
/// complete, if that is later).
pub async fn changes_under_load(
    ns: &TestNamespace,
    name: &str,
    admin: SocketAddr,
    load: Load,
    changes: &[(Duration, Change)],
) -> Figures {
    let retries_before = gateway_retries(admin).await;
    let started = Instant::now();
    let running = background_load::start(load);
    let mut took = Vec::with_capacity(changes.len());
    for (at, change) in changes {
        tokio::time::sleep_until(started + *at).await;
        let changed = Instant::now();
        apply(ns, name, change).await;
        await_complete(ns, name, change).await;
        took.push(changed.elapsed());
    }
    let report = running.finish().await;
    let retries = gateway_retries(admin).await.saturating_sub(retries_before);
    Figures {
        load: report,
        changes: took,
        retries,
    }
}

fn microservices(ns: &TestNamespace) -> Api<DynamicObject> {
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("microgate.dev", "v1alpha1", "Microservice"),
        "microservices",
    );
    Api::namespaced_with(ns.client.clone(), &ns.name, &resource)
}

async fn apply(ns: &TestNamespace, name: &str, change: &Change) {
    let spec = match change {
        Change::Image(image) => json!({"image": image}),
        Change::Scale(replicas) => json!({"replicas": replicas}),
    };
    microservices(ns)
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": spec})),
        )
        .await
        .unwrap_or_else(|error| panic!("change Microservice {name} ({change:?}): {error}"));
}

/// Waits until the Deployment has the change, every one of its Pods runs the wanted image and is
/// Ready, there are as many as wanted, and none is left terminating.
async fn await_complete(ns: &TestNamespace, name: &str, change: &Change) {
    let deployments = ns.api::<Deployment>();
    let pods = ns.api::<Pod>();
    let selector = ListParams::default().labels(&format!("microgate.dev/microservice={name}"));
    wait::until(
        format!("{change:?} of {name} to complete"),
        CHANGE_TIMEOUT,
        || async {
            let deployment = match deployments.get(name).await {
                Ok(deployment) => deployment,
                Err(error) => return Probe::NotYet(error.to_string()),
            };
            let spec = deployment.spec.as_ref();
            let replicas = spec.and_then(|s| s.replicas).unwrap_or(1);
            let image = spec
                .and_then(|s| s.template.spec.as_ref())
                .and_then(|s| s.containers.first())
                .and_then(|c| c.image.clone())
                .unwrap_or_default();
            let applied = match change {
                Change::Image(wanted) => *wanted == image,
                Change::Scale(wanted) => *wanted == replicas,
            };
            if !applied {
                return Probe::NotYet(format!("the Deployment has replicas {replicas}, image {image}"));
            }
            let listed = match pods.list(&selector).await {
                Ok(list) => list.items,
                Err(error) => return Probe::NotYet(error.to_string()),
            };
            let done = listed.len() == usize::try_from(replicas).unwrap_or(0)
                && listed.iter().all(|pod| {
                    pod.metadata.deletion_timestamp.is_none() && pod_image(pod) == image && is_ready(pod)
                });
            if done {
                Probe::Done(())
            } else {
                let states: Vec<_> = listed
                    .iter()
                    .map(|pod| {
                        format!(
                            "{} {}{}{}",
                            pod.metadata.name.as_deref().unwrap_or("?"),
                            pod_image(pod),
                            if is_ready(pod) { " ready" } else { "" },
                            if pod.metadata.deletion_timestamp.is_some() {
                                " terminating"
                            } else {
                                ""
                            }
                        )
                    })
                    .collect();
                Probe::NotYet(format!("pods {states:?}"))
            }
        },
    )
    .await
    .unwrap_or_else(|error| panic!("{error}"));
}

fn pod_image(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
}

/// The retries the gateway serving `admin` has sent so far, all routes together.
pub async fn gateway_retries(admin: SocketAddr) -> u64 {
    let metrics = match probe::get(admin, "/metrics").await {
        Ok(answer) if answer.status == 200 => answer.body,
        other => panic!("cannot read the gateway's metrics at {admin}: {other:?}"),
    };
    metrics
        .lines()
        .filter(|line| line.starts_with("microgate_gateway_retries_total"))
        .filter_map(|line| line.rsplit(' ').next())
        .filter_map(|value| value.parse::<f64>().ok())
        .sum::<f64>() as u64
}
