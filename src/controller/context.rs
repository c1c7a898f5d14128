//! What every reconciliation shares: the client, the Event recorder, metrics, and how the
//! controller was asked to run.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use kube::{
    Client, Resource, ResourceExt,
    runtime::events::{Recorder, Reporter},
};

use crate::{discovery::Registry, telemetry::ControllerMetrics};

/// Which objects a controller takes care of.
#[derive(Clone, Debug, Default)]
pub struct Scope {
    /// One namespace, or all of them.
    pub namespace: Option<String>,
    /// Only Microservices whose labels match this selector (e.g. to shard, or in tests).
    pub label_selector: Option<String>,
}

pub struct Context {
    pub client: Client,
    /// Every Microservice's endpoints, as discovery sees them.
    pub registry: Registry,
    pub recorder: Recorder,
    pub metrics: ControllerMetrics,
    /// Consecutive failures per object (`Kind/namespace/name`), for exponential backoff.
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    pub fn new(client: Client, registry: Registry, metrics: ControllerMetrics) -> Arc<Self> {
        let reporter = Reporter {
            controller: "microgate".into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Arc::new(Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            registry,
            metrics,
            failures: Mutex::default(),
        })
    }

    /// The wait before retrying `object` after one more failure: 1 s, 2 s, 4 s ... up to 5 min.
    pub fn backoff_after_failure(&self, object: String) -> Duration {
        let mut failures = self
            .failures
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = failures.entry(object).or_insert(0);
        *count = count.saturating_add(1);
        backoff(*count)
    }

    /// Forgets `object`'s failures after a success.
    pub fn succeeded(&self, object: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(object);
    }
}

/// The key under which an object's failures are counted.
pub fn failure_key<K: Resource<DynamicType = ()>>(object: &K) -> String {
    format!(
        "{}/{}/{}",
        K::kind(&()),
        object.namespace().unwrap_or_default(),
        object.name_any()
    )
}

fn backoff(failures: u32) -> Duration {
    const MAX: Duration = Duration::from_secs(300);
    let exponent = failures.saturating_sub(1).min(16);
    Duration::from_secs(1u64 << exponent).min(MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_one_second_up_to_five_minutes() {
        let waits: Vec<_> = (1..=10).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300]);
        assert_eq!(backoff(u32::MAX), Duration::from_secs(300));
    }
}
