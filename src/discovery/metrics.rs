//! Discovery's metrics: endpoints per Microservice, registry updates, and how long a Pod that
//! turned Ready took to reach the registry.

use k8s_openapi::jiff::Timestamp;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use super::ServiceKey;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    namespace: String,
    microservice: String,
}

impl From<&ServiceKey> for ServiceLabels {
    fn from(service: &ServiceKey) -> Self {
        Self {
            namespace: service.namespace.to_string(),
            microservice: service.name.to_string(),
        }
    }
}

/// Cheap to clone: the metrics are shared handles.
#[derive(Clone)]
pub struct DiscoveryMetrics {
    endpoints: Family<ServiceLabels, Gauge>,
    ready_endpoints: Family<ServiceLabels, Gauge>,
    updates: Counter,
    propagation: Histogram,
}

impl DiscoveryMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            endpoints: Family::default(),
            ready_endpoints: Family::default(),
            updates: Counter::default(),
            // The API server keeps condition times in whole seconds: finer buckets would lie.
            propagation: Histogram::new([0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0]),
        };
        registry.register(
            "microgate_endpoints",
            "Known endpoints per Microservice",
            metrics.endpoints.clone(),
        );
        registry.register(
            "microgate_ready_endpoints",
            "Ready endpoints per Microservice",
            metrics.ready_endpoints.clone(),
        );
        registry.register(
            "microgate_registry_updates",
            "Endpoint snapshots published",
            metrics.updates.clone(),
        );
        registry.register(
            "microgate_endpoint_propagation_seconds",
            "From a Pod's Ready transition (as the API server stamps it) to the registry snapshot that has it",
            metrics.propagation.clone(),
        );
        metrics
    }

    pub(super) fn published(&self, service: &ServiceKey, ready: usize, total: usize) {
        self.updates.inc();
        let labels = ServiceLabels::from(service);
        if total == 0 {
            self.endpoints.remove(&labels);
            self.ready_endpoints.remove(&labels);
            return;
        }
        self.endpoints
            .get_or_create(&labels)
            .set(i64::try_from(total).unwrap_or(i64::MAX));
        self.ready_endpoints
            .get_or_create(&labels)
            .set(i64::try_from(ready).unwrap_or(i64::MAX));
    }

    pub(super) fn observe_propagation(&self, ready_since: Option<Timestamp>) {
        if let Some(since) = ready_since {
            let seconds = Timestamp::now().duration_since(since).as_secs_f64().max(0.0);
            self.propagation.observe(seconds);
        }
    }
}
