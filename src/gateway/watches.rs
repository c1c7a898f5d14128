//! The Gateway API resources the gateway compiles from, each kind watched once into a store:
//! GatewayClasses, Gateways, ListenerSets, HTTPRoutes, ReferenceGrants, and the Services,
//! EndpointSlices and Namespaces their references and rules read. Watched only with
//! `--gateway-api`, and where the Gateway API's CRDs are installed (checked at start: install
//! them, then restart the gateway). ListenerSets are watched where their CRD is installed too
//! (the Gateway API's v1.5 and later).

use std::{collections::HashMap, sync::Arc};

use futures::{FutureExt, StreamExt, TryStreamExt, future::BoxFuture};
use k8s_openapi::api::{
    core::v1::{Namespace, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client, Resource,
    api::ListParams,
    runtime::{
        WatchStreamExt, predicates, reflector,
        reflector::{ObjectRef, Store},
        watcher,
    },
};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

use crate::{
    api::gateway_api::{GatewayClass, HTTPRoute, KubeGateway, ListenerSet, ReferenceGrant},
    watch::{self, Shared, WatchBackoff},
};

/// The stores, filled by the watches [`GatewayApiWatches::start`] returns.
pub struct GatewayApiWatches {
    pub classes: Store<GatewayClass>,
    pub gateways: Store<KubeGateway>,
    /// None where the installed CRDs have no ListenerSet.
    pub listener_sets: Option<Store<ListenerSet>>,
    pub routes: Store<HTTPRoute>,
    pub grants: Store<ReferenceGrant>,
    pub services: Store<Service>,
    pub slices: Store<EndpointSlice>,
    /// For `allowedRoutes` selectors: every Namespace, or the gateway's own when it serves one.
    pub namespaces: Store<Namespace>,
}

/// Whether the Gateway API's CRDs are installed (a GatewayClass list answers).
pub async fn installed(client: &Client) -> bool {
    let api: Api<GatewayClass> = Api::all(client.clone());
    match api.list_metadata(&ListParams::default().limit(1)).await {
        Ok(_) => true,
        Err(error) => {
            tracing::error!(%error, "Gateway API resources not served: their CRDs are not installed (or not readable)");
            false
        }
    }
}

/// Whether the installed Gateway API has ListenerSets (its CRDs before v1.5 do not).
pub async fn listener_sets_installed(client: &Client, namespace: Option<&str>) -> bool {
    let api: Api<ListenerSet> = scoped(client, namespace);
    match api.list_metadata(&ListParams::default().limit(1)).await {
        Ok(_) => true,
        Err(error) => {
            tracing::warn!(%error, "ListenerSets not served: the installed Gateway API CRDs have none (or they are not readable)");
            false
        }
    }
}

impl GatewayApiWatches {
    /// Starts watching, in `namespace` (or all); each change notifies `changed`. Returns the
    /// stores and the future that runs the watches.
    /// `listener_sets`: whether to watch ListenerSets (see [`listener_sets_installed`]).
    pub fn start(
        client: Client,
        namespace: Option<&str>,
        listener_sets: bool,
        changed: Arc<Notify>,
    ) -> (Self, BoxFuture<'static, ()>) {
        let (classes, classes_watch) = watch(Api::all(client.clone()), changed.clone());
        let (gateways, gateways_watch) = watch(scoped(&client, namespace), changed.clone());
        let (listener_sets, listener_sets_watch) = if listener_sets {
            let (store, run) = watch(scoped(&client, namespace), changed.clone());
            (Some(store), run)
        } else {
            (None, futures::future::ready(()).boxed())
        };
        let (routes, routes_watch) = watch(scoped(&client, namespace), changed.clone());
        let (grants, grants_watch) = watch(scoped(&client, namespace), changed.clone());
        let (services, services_watch) = watch(scoped(&client, namespace), changed.clone());
        let (slices, slices_watch) = watch(scoped(&client, namespace), changed.clone());
        // A gateway of one namespace takes routes of that namespace only: its own Namespace is
        // all an `allowedRoutes` selector can match (and all its RBAC lets it read).
        let (namespaces, namespaces_watch) = match namespace {
            None => watch(Api::all(client), changed),
            Some(namespace) => watch_filtered(
                Api::all(client),
                watch::config().fields(&format!("metadata.name={namespace}")),
                Changes::Any,
                changed,
            ),
        };
        let run = async move {
            tokio::join!(
                classes_watch,
                gateways_watch,
                listener_sets_watch,
                routes_watch,
                grants_watch,
                services_watch,
                slices_watch,
                namespaces_watch
            );
        };
        let watches = Self {
            classes,
            gateways,
            listener_sets,
            routes,
            grants,
            services,
            slices,
            namespaces,
        };
        (watches, run.boxed())
    }

    /// Waits until every store holds its first complete list.
    pub async fn wait_until_ready(&self) {
        let listener_sets = async {
            if let Some(store) = &self.listener_sets {
                let _ = store.wait_until_ready().await;
            }
        };
        let _ = tokio::join!(
            self.classes.wait_until_ready(),
            self.gateways.wait_until_ready(),
            listener_sets,
            self.routes.wait_until_ready(),
            self.grants.wait_until_ready(),
            self.services.wait_until_ready(),
            self.slices.wait_until_ready(),
        );
    }
}

/// `K`s of `namespace`, or of every namespace.
pub(super) fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Which changes to a watched object call for a new table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Changes {
    Any,
    /// Only changes of its spec (a new generation): its status is someone's report, not an input.
    Spec,
}

/// The store of a watch the process shares (see [`Shared`]), and the future that notifies
/// `changed` of the `changes` that matter among the objects it touches.
pub(super) fn follow<K>(
    shared: &Shared<K>,
    changes: Changes,
    changed: Arc<Notify>,
) -> (Store<K>, BoxFuture<'static, ()>)
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let store = shared.store();
    let present = store.clone();
    let mut generations: HashMap<ObjectRef<K>, Option<i64>> = HashMap::new();
    let run = shared
        .subscribe()
        .for_each(move |object| {
            let matters = match changes {
                Changes::Any => true,
                Changes::Spec => {
                    let key = ObjectRef::from_obj(&*object);
                    if present.get(&key).is_none() {
                        // Deleted (the store forgets an object before its deletion is fed).
                        generations.remove(&key);
                        true
                    } else {
                        let generation = object.meta().generation;
                        generations.insert(key, generation) != Some(generation)
                    }
                }
            };
            if matters {
                changed.notify_one();
            }
            async {}
        })
        .boxed();
    (store, run)
}

/// A store of `api`'s objects and the watch that fills it, notifying `changed` on each change.
pub(super) fn watch<K>(api: Api<K>, changed: Arc<Notify>) -> (Store<K>, BoxFuture<'static, ()>)
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    watch_filtered(api, watch::config(), Changes::Any, changed)
}

/// [`watch`], of the objects `config` selects, notifying `changed` of the `changes` that matter.
pub(super) fn watch_filtered<K>(
    api: Api<K>,
    config: watcher::Config,
    changes: Changes,
    changed: Arc<Notify>,
) -> (Store<K>, BoxFuture<'static, ()>)
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (store, writer) = reflector::store();
    let kind = K::kind(&Default::default()).into_owned();
    let touched = reflector(writer, watcher(api, config).modify(watch::trim))
        .backoff(WatchBackoff::default())
        .touched_objects()
        .inspect_err(move |error| watch::log_error(&kind, error));
    let notify = move |_| {
        changed.notify_one();
        async {}
    };
    let run = match changes {
        Changes::Any => touched.for_each(notify).boxed(),
        Changes::Spec => touched
            .predicate_filter(predicates::generation, Default::default())
            .for_each(notify)
            .boxed(),
    };
    (store, run)
}
