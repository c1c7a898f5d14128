//! Publishes the registry's endpoints into each Microservice's status (`endpoints`,
//! `readyEndpoints`): the same view the gateway balances over, for people and tools.
//!
//! Writes are coalesced: each pass publishes every Microservice whose endpoints changed since
//! the last one, and passes are at least a window apart, so status writes per Microservice stay
//! below one per window however fast its Pods churn.

use std::{collections::HashMap, time::Duration};

use futures::{StreamExt, stream};
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
    core::DeserializeGuard,
    runtime::reflector::ObjectRef,
};
use prometheus_client::metrics::counter::Counter;
use serde_json::json;
use tokio::time::Instant;

use crate::{
    api::{Microservice, microservice::EndpointStatus},
    discovery::{Registry, ServiceKey, Snapshot},
    watch::Shared,
};

/// The shortest time between two status writes for one Microservice.
pub const WINDOW: Duration = Duration::from_millis(500);

/// How long a snapshot skipped for want of its Microservice waits for another pass.
const RETRY_SKIPPED: Duration = Duration::from_secs(10);

/// How many status writes one pass makes at once.
const CONCURRENT_WRITES: usize = 16;

pub async fn publish(
    client: Client,
    registry: Registry,
    watched: Shared<DeserializeGuard<Microservice>>,
    writes: Counter,
) {
    let mut changes = registry.subscribe();
    let mut published: HashMap<ServiceKey, u64> = HashMap::new();
    // Until the Microservices are known, every snapshot would be skipped as out of scope.
    watched.ready().await;
    let microservices = watched.store();
    loop {
        let pass = Instant::now();
        let mut due = Vec::new();
        for (key, snapshot) in registry.snapshots() {
            if published.get(&key) == Some(&snapshot.version) {
                continue;
            }
            let reference =
                ObjectRef::<DeserializeGuard<Microservice>>::new(&key.name).within(&key.namespace);
            // A Microservice outside this controller's scope, or not seen yet: the next change retries.
            let Some(current) = microservices.get(&reference) else {
                continue;
            };
            let Ok(ms) = &current.0 else { continue };
            let status = as_status(&snapshot);
            let shown = ms.status.as_ref().map(|s| (s.ready_endpoints, &s.endpoints));
            if shown == Some((status.0, &status.1)) {
                published.insert(key, snapshot.version);
            } else {
                due.push((key, snapshot.version, status));
            }
        }
        let done: Vec<_> = stream::iter(due)
            .map(|(key, version, (ready, endpoints))| {
                let api: Api<Microservice> = Api::namespaced(client.clone(), &key.namespace);
                async move {
                    let patch = json!({"status": {"readyEndpoints": ready, "endpoints": endpoints}});
                    match api.patch_status(&key.name, &PatchParams::default(), &Patch::Merge(patch)).await {
                        Ok(_) => Some((key, version)),
                        Err(error) => {
                            tracing::warn!(microservice = %key, %error, "could not publish endpoints to status");
                            None
                        }
                    }
                }
            })
            .buffer_unordered(CONCURRENT_WRITES)
            .collect()
            .await;
        for (key, version) in done.into_iter().flatten() {
            writes.inc();
            published.insert(key, version);
        }
        tokio::time::sleep_until(pass + WINDOW).await;
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            // Snapshots skipped because their Microservice was not known yet get another look.
            () = tokio::time::sleep(RETRY_SKIPPED) => {}
        }
    }
}

fn as_status(snapshot: &Snapshot) -> (i32, Vec<EndpointStatus>) {
    let endpoints: Vec<_> = snapshot
        .endpoints
        .iter()
        .map(|e| EndpointStatus {
            pod: e.pod.to_string(),
            ip: e.ip.to_string(),
            port: i32::from(e.port),
            ready: e.ready,
        })
        .collect();
    let ready = i32::try_from(snapshot.ready_count()).unwrap_or(i32::MAX);
    (ready, endpoints)
}
