//! The Registry: for each Microservice, its endpoints right now, as immutable versioned
//! snapshots.
//!
//! Writers (the Pod watch) publish a whole new snapshot per change; readers on the request path
//! load the current one without taking a lock (arc-swap) and keep it as long as they like.
//! [`Registry::subscribe`] wakes whoever wants to hear that something changed; they compare
//! versions to find out what.

use std::{
    collections::HashMap,
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use super::endpoint::{Endpoint, ServiceKey};

/// One Microservice's endpoints at one moment.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Increases with every change to any Microservice (0: never published).
    pub version: u64,
    /// Every known endpoint, sorted by pod name.
    pub endpoints: Vec<Endpoint>,
    /// When this snapshot was published.
    pub published: Option<Instant>,
}

impl Snapshot {
    pub fn ready(&self) -> impl Iterator<Item = &Endpoint> {
        self.endpoints.iter().filter(|e| e.ready)
    }

    pub fn ready_count(&self) -> usize {
        self.ready().count()
    }
}

/// The live endpoints of one Microservice: a cell readers load from without locking.
#[derive(Debug, Default)]
pub struct ServiceEndpoints {
    current: ArcSwap<Snapshot>,
}

impl ServiceEndpoints {
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }
}

/// Every Microservice's endpoints. Cheap to clone; clones share the same state.
#[derive(Clone, Debug)]
pub struct Registry {
    services: Arc<RwLock<HashMap<ServiceKey, Arc<ServiceEndpoints>>>>,
    version: Arc<AtomicU64>,
    changed: Arc<watch::Sender<u64>>,
    /// True once the first full list of Pods has been published.
    synced: Arc<watch::Sender<bool>>,
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            services: Arc::default(),
            version: Arc::default(),
            changed: Arc::new(watch::Sender::new(0)),
            synced: Arc::new(watch::Sender::new(false)),
        }
    }
}

impl Registry {
    /// Says that every Pod of the first full list is published (discovery calls it).
    pub fn mark_synced(&self) {
        if !self.synced.send_replace(true) {
            // Subscribers wake even when the list published nothing (no Pods at all).
            self.changed.send_modify(|_| ());
        }
    }

    /// Resolves once the first full list of Pods is published: before that, a Microservice
    /// without endpoints may only not be known yet.
    pub async fn synced(&self) {
        let mut synced = self.synced.subscribe();
        // The sender lives as long as this registry, so waiting cannot fail.
        let _ = synced.wait_for(|synced| *synced).await;
    }

    /// The cell of `key`'s endpoints, created empty if nothing is known of it yet. Hold it to
    /// read the service's snapshots without touching the registry again.
    pub fn service(&self, key: &ServiceKey) -> Arc<ServiceEndpoints> {
        if let Some(cell) = self.read().get(key) {
            return cell.clone();
        }
        self.write().entry(key.clone()).or_default().clone()
    }

    /// `key`'s current snapshot (empty if unknown).
    pub fn snapshot(&self, key: &ServiceKey) -> Arc<Snapshot> {
        self.read().get(key).map(|cell| cell.load()).unwrap_or_default()
    }

    /// Every known Microservice and its current snapshot.
    pub fn snapshots(&self) -> Vec<(ServiceKey, Arc<Snapshot>)> {
        self.read()
            .iter()
            .map(|(key, cell)| (key.clone(), cell.load()))
            .collect()
    }

    /// Wakes on every published change; the value is the newest version.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Publishes `endpoints` as `key`'s new snapshot, unless they are what it already has.
    /// Returns the new version, or `None` when nothing changed.
    pub fn publish(&self, key: &ServiceKey, mut endpoints: Vec<Endpoint>) -> Option<u64> {
        endpoints.sort_by(|a, b| a.pod.cmp(&b.pod));
        let cell = self.service(key);
        if cell.load().endpoints == endpoints {
            return None;
        }
        let version = self.version.fetch_add(1, Ordering::Relaxed) + 1;
        cell.current.store(Arc::new(Snapshot {
            version,
            endpoints,
            published: Some(Instant::now()),
        }));
        self.changed.send_replace(version);
        Some(version)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<ServiceKey, Arc<ServiceEndpoints>>> {
        self.services
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<ServiceKey, Arc<ServiceEndpoints>>> {
        self.services
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    #[tokio::test]
    async fn synced_resolves_once_marked_and_wakes_subscribers_even_without_endpoints() {
        let registry = Registry::default();
        let mut changes = registry.subscribe();
        assert!(registry.synced().now_or_never().is_none());
        registry.mark_synced();
        assert!(registry.synced().now_or_never().is_some());
        assert!(changes.has_changed().expect("sender alive"));
        changes.mark_unchanged();
        registry.mark_synced();
        assert!(
            !changes.has_changed().expect("sender alive"),
            "only the first mark wakes"
        );
    }

    fn endpoint(pod: &str, ready: bool) -> Endpoint {
        Endpoint {
            pod: pod.into(),
            ip: "127.0.0.9".parse().expect("ip"),
            port: 80,
            ready,
            node: None,
            zone: None,
        }
    }

    #[test]
    fn publishing_versions_snapshots_and_wakes_subscribers() {
        let registry = Registry::default();
        let key = ServiceKey::new("shop", "orders");
        let cell = registry.service(&key);
        let mut changes = registry.subscribe();
        assert_eq!(cell.load().version, 0);

        let v1 = registry
            .publish(&key, vec![endpoint("b", true), endpoint("a", false)])
            .expect("a change");
        assert!(changes.has_changed().expect("registry alive"));
        assert_eq!(*changes.borrow_and_update(), v1);
        let snapshot = cell.load();
        assert_eq!(snapshot.version, v1);
        let pods: Vec<_> = snapshot.endpoints.iter().map(|e| &*e.pod).collect();
        assert_eq!(pods, ["a", "b"], "sorted by pod");
        assert_eq!(snapshot.ready_count(), 1);

        assert_eq!(
            registry.publish(&key, vec![endpoint("a", false), endpoint("b", true)]),
            None,
            "no change"
        );
        assert!(!changes.has_changed().expect("registry alive"));

        let v2 = registry
            .publish(&key, vec![endpoint("a", true), endpoint("b", true)])
            .expect("a change");
        assert!(v2 > v1);
        assert_eq!(registry.snapshot(&key).ready_count(), 2);
    }

    #[test]
    fn a_reader_keeps_its_snapshot_while_a_new_one_is_published() {
        let registry = Registry::default();
        let key = ServiceKey::new("shop", "orders");
        registry.publish(&key, vec![endpoint("a", true)]);
        let held = registry.snapshot(&key);
        registry.publish(&key, vec![]);
        assert_eq!(
            held.endpoints.len(),
            1,
            "a snapshot never changes under its reader"
        );
        assert!(registry.snapshot(&key).endpoints.is_empty());
    }

    #[test]
    fn services_are_kept_apart_by_namespace() {
        let registry = Registry::default();
        registry.publish(&ServiceKey::new("a", "orders"), vec![endpoint("x", true)]);
        assert!(
            registry
                .snapshot(&ServiceKey::new("b", "orders"))
                .endpoints
                .is_empty()
        );
        assert_eq!(registry.snapshots().len(), 1);
    }
}
