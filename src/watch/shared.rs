//! One watch of a kind for the whole process. `microgate run` holds the controller and the
//! gateway in one process; both read Microservices and microgate.dev Gateways, and each used
//! to watch them on its own. A [`Shared`] watch fills one store and feeds each object it
//! touches (applied or deleted) to whoever subscribes, at any time: the gateway for as long as
//! the process runs, the reconcilers for as long as this replica leads.
//!
//! kube-runtime's shared reflector (`store_shared`) does not fit the second: its subscribers
//! exist from the start, and one that is not read (a standby's controller, not running) holds
//! the watch back once its buffer is full. Here a subscriber that falls behind is not waited
//! for; it is given every object in the store again, which a reconciler takes as a re-list.

use std::{collections::VecDeque, fmt::Debug, hash::Hash, sync::Arc};

use futures::{Stream, StreamExt, stream};
use kube::{
    Api, Client, Resource,
    core::DeserializeGuard,
    runtime::{
        WatchStreamExt, reflector,
        reflector::Store,
        watcher::{self, Event},
    },
};
use serde::de::DeserializeOwned;
use tokio::{
    sync::{
        broadcast::{self, error::RecvError},
        watch,
    },
    task::AbortHandle,
};

use super::WatchBackoff;
use crate::api::{Gateway, Microservice};

/// How many changes a subscriber may fall behind by before it is given every object again.
const FEED_CAPACITY: usize = 256;

/// A store kept by one watch, and a feed of the objects that watch touches.
pub struct Shared<K>
where
    K: Resource + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    store: Store<K>,
    /// Whether the store holds its first complete list. kube's `Store::wait_until_ready` wakes
    /// only the task that polled it last; the parts of a process that wait for a shared store
    /// run in several tasks, so they wait on this instead.
    ready: watch::Receiver<bool>,
    feed: broadcast::Sender<Arc<K>>,
    _watch: Arc<StopOnDrop>,
}

impl<K> Clone for Shared<K>
where
    K: Resource + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            ready: self.ready.clone(),
            feed: self.feed.clone(),
            _watch: self._watch.clone(),
        }
    }
}

/// Stops the watch once the last [`Shared`] of it is gone.
struct StopOnDrop(AbortHandle);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<K> Shared<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
{
    /// Starts watching `api`'s objects that `config` selects (on the current tokio runtime,
    /// until the last clone is dropped), with microgate's backoff and trimmed objects.
    pub fn start(api: Api<K>, config: watcher::Config) -> Self {
        let (store, writer) = reflector::store();
        let (feed, _) = broadcast::channel(FEED_CAPACITY);
        let (listed, ready) = watch::channel(false);
        let sender = feed.clone();
        let kind = K::kind(&Default::default()).into_owned();
        let watch = reflector(writer, watcher::watcher(api, config).modify(super::trim))
            .backoff(WatchBackoff::default())
            .for_each(move |event| {
                match event {
                    // Nobody subscribed is no error: the store is kept all the same.
                    Ok(Event::Apply(object) | Event::InitApply(object) | Event::Delete(object)) => {
                        drop(sender.send(Arc::new(object)));
                    }
                    Ok(Event::InitDone) => {
                        listed.send_replace(true);
                    }
                    Ok(Event::Init) => {}
                    Err(error) => super::log_error(&kind, &error),
                }
                async {}
            });
        let task = tokio::spawn(watch);
        Self {
            store,
            ready,
            feed,
            _watch: Arc::new(StopOnDrop(task.abort_handle())),
        }
    }

    /// The store the watch keeps.
    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    /// Waits until the store holds its first complete list (for ever if the watch was stopped
    /// before).
    pub async fn ready(&self) {
        let mut ready = self.ready.clone();
        if ready.wait_for(|ready| *ready).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Every object in the store once its first list is complete, then each object the watch
    /// touches; after falling more than [`FEED_CAPACITY`] changes behind, every object again.
    pub fn subscribe(&self) -> impl Stream<Item = Arc<K>> + Send + 'static {
        // Subscribed before the store is read: a change in between comes twice, never not at all.
        let feed = self.feed.subscribe();
        let shared = self.clone();
        stream::unfold(
            (feed, shared, VecDeque::new(), false),
            |(mut feed, shared, mut pending, mut started)| async move {
                loop {
                    if let Some(object) = pending.pop_front() {
                        return Some((object, (feed, shared, pending, started)));
                    }
                    if !started {
                        shared.ready().await;
                        pending.extend(shared.store.state());
                        started = true;
                        continue;
                    }
                    match feed.recv().await {
                        Ok(object) => return Some((object, (feed, shared, pending, started))),
                        Err(RecvError::Lagged(missed)) => {
                            tracing::debug!(missed, "a subscriber fell behind its watch: every object again");
                            pending.extend(shared.store.state());
                        }
                        Err(RecvError::Closed) => return None,
                    }
                }
            },
        )
    }
}

/// The watches of microgate's own kinds, which the controller and the gateway both read. Their
/// Microservices are guarded: one that does not deserialize is held as the error it is (the
/// controller reports it; the gateway skips it), and never fails the list of the others.
#[derive(Clone)]
pub struct OwnKinds {
    pub microservices: Shared<DeserializeGuard<Microservice>>,
    pub gateways: Shared<Gateway>,
}

impl OwnKinds {
    /// Watches in `namespace` (or all), the objects with `label_selector` (or all).
    pub fn start(client: &Client, namespace: Option<&str>, label_selector: Option<&str>) -> Self {
        let mut config = super::config().any_semantic();
        if let Some(selector) = label_selector {
            config = config.labels(selector);
        }
        Self {
            microservices: Shared::start(scoped(client, namespace), config.clone()),
            gateways: Shared::start(scoped(client, namespace), config),
        }
    }
}

fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}
