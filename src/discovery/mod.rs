//! Service discovery: one Pod watch, for every Microservice at once, feeding the [`Registry`].
//!
//! Pods are matched to Microservices by the `microgate.dev/microservice` label the controller
//! puts on them; their address, port and readiness become [`Endpoint`]s. A Pod that starts
//! terminating leaves the ready set at once. After a watch error the watcher lists again, and the
//! list replaces what was known, so no endpoint is lost or left behind.

pub mod endpoint;
pub mod metrics;
pub mod registry;
pub mod slices;

use std::collections::{BTreeMap, HashMap, HashSet};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::{api::core::v1::Pod, jiff::Timestamp};
use kube::{
    Api, Client,
    runtime::{WatchStreamExt, watcher},
};

pub use endpoint::{Endpoint, ServiceKey};
pub use metrics::{DiscoveryMetrics, ServiceLabels};
pub use registry::{Registry, ServiceEndpoints, Snapshot};

use crate::{api::labels, watch::WatchBackoff};

/// Watches the Pods of every Microservice (in `namespace`, or all) and keeps `registry` up to
/// date until the watch stream ends (it retries errors with backoff, so: forever).
pub async fn run(client: Client, namespace: Option<String>, registry: Registry, metrics: DiscoveryMetrics) {
    let pods: Api<Pod> = match namespace.as_deref() {
        Some(namespace) => Api::namespaced(client, namespace),
        None => Api::all(client),
    };
    let config = crate::watch::config().labels(labels::MICROSERVICE);
    let mut events = watcher(pods, config).backoff(WatchBackoff::default()).boxed();
    let mut index = PodIndex::new(registry, metrics);
    loop {
        match events.try_next().await {
            Ok(Some(event)) => index.handle(event),
            Ok(None) => return,
            Err(error) => crate::watch::log_error("Pod", &error),
        }
    }
}

type PodKey = (String, String);

/// What the watch has told so far: each Pod's endpoint, and each Microservice's endpoints.
struct PodIndex {
    registry: Registry,
    metrics: DiscoveryMetrics,
    pods: HashMap<PodKey, (ServiceKey, Endpoint)>,
    services: HashMap<ServiceKey, BTreeMap<PodKey, Endpoint>>,
    /// Pods listed since the current (re)list began; replaces `pods` when it is done.
    relist: Option<HashMap<PodKey, (ServiceKey, Endpoint)>>,
}

impl PodIndex {
    fn new(registry: Registry, metrics: DiscoveryMetrics) -> Self {
        Self {
            registry,
            metrics,
            pods: HashMap::new(),
            services: HashMap::new(),
            relist: None,
        }
    }

    fn handle(&mut self, event: watcher::Event<Pod>) {
        match event {
            watcher::Event::Init => self.relist = Some(HashMap::new()),
            watcher::Event::InitApply(pod) => {
                if let (Some(relist), Some(key), Some(entry)) =
                    (self.relist.as_mut(), pod_key(&pod), Endpoint::from_pod(&pod))
                {
                    relist.insert(key, entry);
                }
            }
            watcher::Event::InitDone => {
                let listed = self.relist.take().unwrap_or_default();
                self.replace_all(listed);
                self.registry.mark_synced();
            }
            watcher::Event::Apply(pod) => {
                let Some(key) = pod_key(&pod) else { return };
                let entry = Endpoint::from_pod(&pod);
                if let Some((_, endpoint)) = &entry
                    && endpoint.ready
                    && !self.pods.get(&key).is_some_and(|(_, old)| old.ready)
                {
                    self.metrics.observe_propagation(ready_since(&pod));
                }
                self.set(key, entry);
            }
            watcher::Event::Delete(pod) => {
                if let Some(key) = pod_key(&pod) {
                    self.set(key, None);
                }
            }
        }
    }

    /// Records one Pod's new state (`None`: gone, or no longer an endpoint) and publishes the
    /// Microservices it left or joined.
    fn set(&mut self, key: PodKey, entry: Option<(ServiceKey, Endpoint)>) {
        let old = match &entry {
            Some(new) => self.pods.insert(key.clone(), new.clone()),
            None => self.pods.remove(&key),
        };
        if old == entry {
            return;
        }
        let mut touched = Vec::with_capacity(2);
        if let Some((service, _)) = old {
            if let Some(endpoints) = self.services.get_mut(&service) {
                endpoints.remove(&key);
            }
            touched.push(service);
        }
        if let Some((service, endpoint)) = entry {
            self.services
                .entry(service.clone())
                .or_default()
                .insert(key, endpoint);
            if !touched.contains(&service) {
                touched.push(service);
            }
        }
        for service in touched {
            self.publish(&service);
        }
    }

    /// After a (re)list: the listed Pods are the truth; everything else is gone.
    fn replace_all(&mut self, listed: HashMap<PodKey, (ServiceKey, Endpoint)>) {
        let mut touched: HashSet<ServiceKey> = self.services.keys().cloned().collect();
        self.services.clear();
        for (key, (service, endpoint)) in &listed {
            self.services
                .entry(service.clone())
                .or_default()
                .insert(key.clone(), endpoint.clone());
            touched.insert(service.clone());
        }
        self.pods = listed;
        for service in touched {
            self.publish(&service);
        }
    }

    fn publish(&mut self, service: &ServiceKey) {
        let endpoints: Vec<Endpoint> = self
            .services
            .get(service)
            .map(|e| e.values().cloned().collect())
            .unwrap_or_default();
        if endpoints.is_empty() {
            self.services.remove(service);
        }
        let ready = endpoints.iter().filter(|e| e.ready).count();
        let total = endpoints.len();
        if self.registry.publish(service, endpoints).is_some() {
            self.metrics.published(service, ready, total);
        }
    }
}

fn pod_key(pod: &Pod) -> Option<PodKey> {
    Some((pod.metadata.namespace.clone()?, pod.metadata.name.clone()?))
}

/// When the Pod's Ready condition last turned true (the API server keeps whole seconds).
fn ready_since(pod: &Pod) -> Option<Timestamp> {
    let conditions = pod.status.as_ref()?.conditions.as_ref()?;
    let ready = conditions
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == "True")?;
    ready.last_transition_time.as_ref().map(|t| t.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry as Prometheus;
    use serde_json::json;

    fn pod(name: &str, service: &str, ip: &str, ready: bool) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "shop", "labels": {"microgate.dev/microservice": service}},
            "spec": {"containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"phase": "Running", "podIP": ip,
                       "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]},
        }))
        .expect("valid pod")
    }

    fn index() -> (PodIndex, Registry) {
        let registry = Registry::default();
        let metrics = DiscoveryMetrics::register(&mut Prometheus::default());
        (PodIndex::new(registry.clone(), metrics), registry)
    }

    fn ready_pods(registry: &Registry, service: &str) -> Vec<String> {
        let snapshot = registry.snapshot(&ServiceKey::new("shop", service));
        snapshot.ready().map(|e| e.pod.to_string()).collect()
    }

    #[test]
    fn pods_join_flip_and_leave_their_microservice() {
        let (mut index, registry) = index();
        index.handle(watcher::Event::Init);
        index.handle(watcher::Event::InitDone);
        index.handle(watcher::Event::Apply(pod("a", "orders", "127.0.0.2", true)));
        index.handle(watcher::Event::Apply(pod("b", "orders", "127.0.0.3", false)));
        assert_eq!(ready_pods(&registry, "orders"), ["a"]);
        index.handle(watcher::Event::Apply(pod("b", "orders", "127.0.0.3", true)));
        assert_eq!(ready_pods(&registry, "orders"), ["a", "b"]);
        index.handle(watcher::Event::Delete(pod("a", "orders", "127.0.0.2", true)));
        assert_eq!(ready_pods(&registry, "orders"), ["b"]);
    }

    #[test]
    fn a_relist_replaces_everything_known_with_exactly_the_live_set() {
        let (mut index, registry) = index();
        index.handle(watcher::Event::Apply(pod("a", "orders", "127.0.0.2", true)));
        index.handle(watcher::Event::Apply(pod("b", "orders", "127.0.0.3", true)));
        index.handle(watcher::Event::Apply(pod("c", "payments", "127.0.0.4", true)));
        // The watch broke; meanwhile a and all of payments went away, and d appeared.
        index.handle(watcher::Event::Init);
        index.handle(watcher::Event::InitApply(pod("b", "orders", "127.0.0.3", true)));
        index.handle(watcher::Event::InitApply(pod("d", "orders", "127.0.0.5", true)));
        assert_eq!(
            ready_pods(&registry, "orders"),
            ["a", "b"],
            "nothing changes until the list is complete"
        );
        index.handle(watcher::Event::InitDone);
        assert_eq!(ready_pods(&registry, "orders"), ["b", "d"]);
        assert!(
            registry
                .snapshot(&ServiceKey::new("shop", "payments"))
                .endpoints
                .is_empty(),
            "no ghosts"
        );
    }

    #[test]
    fn a_pod_relabelled_to_another_microservice_moves_with_its_label() {
        let (mut index, registry) = index();
        index.handle(watcher::Event::Apply(pod("a", "orders", "127.0.0.2", true)));
        index.handle(watcher::Event::Apply(pod("a", "payments", "127.0.0.2", true)));
        assert!(ready_pods(&registry, "orders").is_empty());
        assert_eq!(ready_pods(&registry, "payments"), ["a"]);
    }

    #[test]
    fn a_repeated_event_publishes_nothing_new() {
        let (mut index, registry) = index();
        index.handle(watcher::Event::Apply(pod("a", "orders", "127.0.0.2", true)));
        let version = registry.snapshot(&ServiceKey::new("shop", "orders")).version;
        index.handle(watcher::Event::Apply(pod("a", "orders", "127.0.0.2", true)));
        assert_eq!(
            registry.snapshot(&ServiceKey::new("shop", "orders")).version,
            version
        );
    }
}
