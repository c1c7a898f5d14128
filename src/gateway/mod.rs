//! The data plane: an L7 HTTP gateway configured by Gateway resources, balancing over the
//! registry's endpoints.
//!
//! [`run`] watches Gateways, Microservices and AccessPolicies, compiles them ([`compile`]) with the registry's
//! snapshots into a [`table::RouteTable`] on every change, swaps it in atomically, and keeps one
//! listener per port the table names ([`listen`]). Requests flow through [`request::Proxy`]:
//! route → forward (pick, send, judge, retry) → respond, over [`balance`] and [`upstream`].
//!
//! The modules are layers, listed here in the order data flows through them; each imports only
//! those before it:
//!
//! 1. plumbing: [`random`], [`http`] (HTTP vocabulary), [`buffers`], [`workers`], [`limits`],
//!    [`metrics`];
//! 2. sending to endpoints and choosing them: [`upstream`], [`balance`], [`retry`], and tracing
//!    the attempts ([`trace`]);
//! 3. policies and TLS: [`policy`], [`tls`];
//! 4. the compiled route table and what builds it: [`table`], [`compile`], [`watches`];
//! 5. serving and reporting: [`request`], [`listen`], [`status`], [`inspect`] (what the admin
//!    port shows: the registry API, `/debug/config`, `/debug/explain`).

pub mod balance;
pub mod buffers;
pub mod compile;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod inspect;
pub mod limits;
pub mod listen;
pub mod metrics;
pub mod policy;
pub mod random;
pub mod request;
pub mod retry;
pub mod status;
pub mod table;
pub mod tls;
pub mod trace;
pub mod upstream;
pub mod watches;
pub mod workers;

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use arc_swap::ArcSwap;
use futures::FutureExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use kube::{Api, Client, ResourceExt, runtime::reflector::ObjectRef};
use tokio::sync::Notify;

pub use metrics::GatewayMetrics;

use crate::{
    api::{self, AccessPolicy},
    discovery::{Registry, ServiceKey},
    watch,
};

/// How the data plane runs.
pub struct Options {
    /// The address every listener binds (ports come from the Gateways).
    pub listen_address: IpAddr,
    /// Log one structured event per request (target `microgate::access`).
    pub access_log: bool,
    /// Called once the first route table is in place and its listeners are bound (e.g. to turn
    /// `/readyz` ready: before that, every request would get a 404).
    pub on_programmed: Option<Box<dyn FnOnce() + Send>>,
    /// Threads serving traffic (see [`workers`]); [`workers::default_count`] is one per CPU.
    pub workers: usize,
    /// How long clients may take to send a request's head and to read a response.
    pub client_timeouts: listen::ClientTimeouts,
    /// Serve the Kubernetes Gateway API too (its CRDs must be installed, and the gateway allowed
    /// to read its resources).
    pub gateway_api: bool,
    /// The range Gateway API Gateways take an address each from (see
    /// [`compile::addresses`]); `None`: they all listen on `listen_address`.
    pub gateway_addresses: Option<ipnet::IpNet>,
    /// Shares the live table and its changes with the admin endpoints ([`inspect`]); `None`:
    /// with nobody.
    pub inspect: Option<inspect::Live>,
    /// Where Global rate limits keep their buckets (`redis://…`); `None`: policies with one
    /// cannot be enforced.
    pub redis_url: Option<String>,
    /// The Service clients reach the gateway through (in a cluster, the chart's): Gateway API
    /// Gateways publish its addresses in their status instead of the address they listen on.
    pub publish_service: Option<PublishedService>,
    /// Traces requests (see [`trace`]); `None`: tracing is off.
    pub tracer: Option<Arc<trace::Tracer>>,
    /// Whether this replica writes the statuses of what it serves (see [`status::Writer`]).
    pub status_writer: status::Writer,
    /// The watches of Microservices and microgate.dev Gateways, when the process has them
    /// already (the controller's, in `microgate run`); `None`: the gateway starts its own.
    pub watches: Option<watch::OwnKinds>,
}

/// A Service named as `namespace/name` (see [`Options::publish_service`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishedService {
    pub namespace: String,
    pub name: String,
}

impl std::str::FromStr for PublishedService {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value.split_once('/') {
            Some((namespace, name)) if !namespace.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(Self {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                })
            }
            _ => Err(format!("{value:?} is not a Service as namespace/name")),
        }
    }
}

/// What a gateway's readiness waits for (see [`Options::on_programmed`]).
pub const ROUTES_PROGRAMMED: &str = "route table programmed";

/// How long a stopping gateway waits for the requests in flight.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(25);

/// Runs the gateway for `namespace` (or all), as `options` say, until `shutdown`
/// completes; then it stops accepting and finishes the requests in flight (up to
/// [`DRAIN_DEADLINE`]). Fails only if its worker threads cannot be started.
pub async fn run(
    client: Client,
    namespace: Option<String>,
    registry: Registry,
    mut options: Options,
    metrics: GatewayMetrics,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let changed = Arc::new(Notify::new());
    let status_client = client.clone();
    // The Gateway API is a second front end, watched only when asked for and where its CRDs
    // are installed.
    let (kube_stores, watch_gateway_api) = if options.gateway_api && watches::installed(&client).await {
        let listener_sets = watches::listener_sets_installed(&client, namespace.as_deref()).await;
        let (stores, run) = watches::GatewayApiWatches::start(
            client.clone(),
            namespace.as_deref(),
            listener_sets,
            changed.clone(),
        );
        (Some(stores), run)
    } else {
        (None, futures::future::pending().boxed())
    };
    let (published_service, watch_published_service) = match &options.publish_service {
        Some(service) => {
            let (store, run) = watches::watch_filtered(
                Api::<Service>::namespaced(client.clone(), &service.namespace),
                watch::config().fields(&format!("metadata.name={}", service.name)),
                watches::Changes::Any,
                changed.clone(),
            );
            (Some(store), run)
        }
        None => (None, futures::future::pending().boxed()),
    };
    let every = watch::config;
    // In `microgate run`, the controller's watches of microgate's own kinds; alone, its own.
    let own_kinds = options
        .watches
        .take()
        .unwrap_or_else(|| watch::OwnKinds::start(&client, namespace.as_deref(), None));
    let (gateways, watch_gateways) =
        watches::follow(&own_kinds.gateways, watches::Changes::Any, changed.clone());
    // Only spec changes matter here (the traffic policy); status churns with every Pod.
    let (microservices, watch_microservices) =
        watches::follow(&own_kinds.microservices, watches::Changes::Spec, changed.clone());
    // Status is the gateway's own writing: only spec changes matter.
    let (access_policies, watch_access_policies) = watches::watch_filtered(
        watches::scoped::<AccessPolicy>(&client, namespace.as_deref()),
        every(),
        watches::Changes::Spec,
        changed.clone(),
    );
    // JSON Web Key Sets that AccessPolicies read from ConfigMaps, and the CA bundles Gateway API
    // Gateways check client certificates against.
    let (config_maps, watch_config_maps) = watches::watch_filtered(
        watches::scoped::<ConfigMap>(&client, namespace.as_deref()),
        every(),
        watches::Changes::Any,
        changed.clone(),
    );
    // Secrets of the kinds listeners (certificates) and access policies (API keys, htpasswd
    // files, key sets) read. Helm's release records and service-account tokens are never read
    // into memory.
    let (secrets, watch_secrets) = watches::watch_filtered(
        watches::scoped::<Secret>(&client, namespace.as_deref()),
        every().fields(SECRET_TYPES_READ),
        watches::Changes::Any,
        changed.clone(),
    );
    let mut certificates = tls::CertificateStore::default();
    let redis = options.redis_url.as_deref().and_then(|url| {
        policy::rate_limit::RedisLimiter::new(url)
            .inspect_err(|error| tracing::error!(%error, "--redis-url is not usable: Global rate limits cannot be enforced"))
            .ok()
            .map(Arc::new)
    });
    let mut compiled_policies = compile::access::AccessPolicies::new(redis);

    let live = options
        .inspect
        .take()
        .unwrap_or_else(|| inspect::Live::new(registry.clone()));
    let table = live.table().clone();
    let proxy = Arc::new(
        request::Proxy::new(table.clone(), metrics.clone(), options.access_log)
            .with_tracer(options.tracer.take()),
    );
    let tunnels = proxy.tunnels().clone();
    limits::raise_open_files();
    let workers = workers::Workers::start(options.workers)?;
    metrics.count_buffers(workers.buffer_counts());
    for worker in workers.handles() {
        worker.spawn(close_expired_idle_connections(table.clone()));
    }
    let mut listeners = listen::Listeners::new(
        proxy,
        workers.handles().to_vec(),
        options.client_timeouts,
        metrics.clone(),
    );
    let mut registry_changes = registry.subscribe();
    let mut on_programmed = options.on_programmed;
    let mut status_writer = options.status_writer.clone();
    let program = async {
        tokio::pin!(shutdown);
        tokio::select! {
            _ = async {
                let _ = tokio::join!(
                    own_kinds.gateways.ready(),
                    own_kinds.microservices.ready(),
                    secrets.wait_until_ready(),
                    access_policies.wait_until_ready(),
                    config_maps.wait_until_ready(),
                );
                if let Some(stores) = &kube_stores {
                    stores.wait_until_ready().await;
                }
            } => {}
            () = &mut shutdown => return,
        }
        loop {
            // A Microservice that does not deserialize has no settings to apply (the controller
            // reports it in its status).
            let services: HashMap<ServiceKey, _> = microservices
                .state()
                .iter()
                .filter_map(|guarded| {
                    let ms = guarded.0.as_ref().ok()?;
                    let key = ServiceKey::new(&ms.namespace().unwrap_or_default(), &ms.name_any());
                    Some((key, compile::ServiceSettings::of(ms)))
                })
                .collect();
            let previous = table.load_full();
            let all_gateways = gateways.state();
            let kube = kube_stores.as_ref().map(KubeSnapshot::take);
            let kube_addresses = kube
                .as_ref()
                .map(|k| k.addresses(options.gateway_addresses, options.listen_address))
                .unwrap_or_default();
            let kube_resources = kube.as_ref().map(|k| k.resources(&kube_addresses));
            let mut wanted = compile::microgate::certificate_refs(&all_gateways);
            if let Some(resources) = &kube_resources {
                wanted.extend(compile::gateway_api::certificate_refs(resources));
            }
            certificates.refresh(
                wanted,
                |key| secrets.get(&ObjectRef::new(&key.name).within(&key.namespace)),
                std::time::SystemTime::now(),
            );
            let all_policies = access_policies.state();
            compiled_policies.refresh(
                &all_policies,
                &compile::access::Lookups {
                    secret: &|namespace, name| secrets.get(&ObjectRef::new(name).within(namespace)),
                    config_map: &|namespace, name| config_maps.get(&ObjectRef::new(name).within(namespace)),
                },
            );
            let mut builder =
                compile::TableBuilder::new(&services, &registry, &metrics, &certificates, Some(&previous))
                    .with_access_policies(&compiled_policies);
            builder.signal_ejections(live.ejections());
            compile::microgate::add(&mut builder, &all_gateways, options.listen_address);
            let config_map =
                |namespace: &str, name: &str| config_maps.get(&ObjectRef::new(name).within(namespace));
            let kube_report = kube_resources
                .as_ref()
                .map(|resources| compile::gateway_api::compile(&mut builder, resources, &config_map));
            let compiled = builder.finish();
            let addresses: Vec<SocketAddr> = compiled.listeners.keys().copied().collect();
            table.store(Arc::new(compiled));
            live.swapped();
            listeners.set_addresses(addresses.into_iter()).await;
            // Ready once the table was compiled from complete endpoint lists, not before.
            if registry.synced().now_or_never().is_some()
                && let Some(programmed) = on_programmed.take()
            {
                programmed();
            }
            let served = table.load();
            if status_writer.writes() {
                for gateway in &all_gateways {
                    status::microgate::report(
                        &status_client,
                        gateway,
                        options.listen_address,
                        &listeners,
                        &served,
                        &certificates,
                    )
                    .await;
                }
                for policy in &all_policies {
                    status::access_policy::report(&status_client, policy, &compiled_policies, &served).await;
                }
                if let Some(report) = &kube_report {
                    let published = published_service.as_ref().map(|store| {
                        store
                            .state()
                            .first()
                            .map(|service| status::gateway_api::service_addresses(service))
                            .unwrap_or_default()
                    });
                    status::gateway_api::report(&status_client, report, &listeners, published.as_deref())
                        .await;
                }
            }
            tokio::select! {
                () = changed.notified() => {}
                // A replica that starts reporting reports at once.
                () = status_writer.changed() => {}
                result = registry_changes.changed() => if result.is_err() { break },
                // A listener that could not bind is tried again.
                () = tokio::time::sleep(Duration::from_secs(30)) => {}
                () = &mut shutdown => break,
            }
        }
        tracing::info!("draining: no new connections; finishing the requests in flight");
        // WebSocket tunnels outlive the requests that opened them: they get the same deadline.
        tokio::join!(listeners.drain(DRAIN_DEADLINE), tunnels.drain(DRAIN_DEADLINE));
    };
    tokio::select! {
        () = watch_gateways => {}
        () = watch_microservices => {}
        () = watch_secrets => {}
        () = watch_access_policies => {}
        () = watch_config_maps => {}
        () = watch_gateway_api => {}
        () = watch_published_service => {}
        () = live.follow() => {}
        () = program => {}
    }
    Ok(())
}

/// Closes, every few seconds, this worker's idle connections to endpoints that have gone unused
/// for [`upstream::IDLE_TIMEOUT`]. Runs on each worker: a worker's connections are its own.
async fn close_expired_idle_connections(table: Arc<ArcSwap<table::RouteTable>>) {
    let mut every = tokio::time::interval(upstream::IDLE_TIMEOUT / 6);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let now = std::time::Instant::now();
        for endpoint in table.load().endpoints() {
            endpoint.connections.close_expired(now);
        }
    }
}

/// The Secrets the gateway reads (a field selector): all but Helm's release records and
/// service-account tokens, which are large or sensitive and never named by a listener or policy.
pub const SECRET_TYPES_READ: &str = "type!=helm.sh/release.v1,type!=kubernetes.io/service-account-token";

/// The field manager of the data plane's status writes (the controller's is `microgate`).
pub const STATUS_FIELD_MANAGER: &str = "microgate-gateway";

/// The Gateway API's resources at one compile: as the stores hold them, or as `microgate
/// explain` listed them once.
pub(crate) struct KubeSnapshot {
    pub(crate) classes: Vec<Arc<api::gateway_api::GatewayClass>>,
    pub(crate) gateways: Vec<Arc<api::gateway_api::KubeGateway>>,
    pub(crate) listener_sets: Vec<Arc<api::gateway_api::ListenerSet>>,
    pub(crate) routes: Vec<Arc<api::gateway_api::HTTPRoute>>,
    pub(crate) grants: Vec<Arc<api::gateway_api::ReferenceGrant>>,
    pub(crate) services: Vec<Arc<Service>>,
    pub(crate) slices: Vec<Arc<k8s_openapi::api::discovery::v1::EndpointSlice>>,
    pub(crate) namespaces: Vec<Arc<k8s_openapi::api::core::v1::Namespace>>,
}

impl KubeSnapshot {
    fn take(stores: &watches::GatewayApiWatches) -> Self {
        Self {
            classes: stores.classes.state(),
            gateways: stores.gateways.state(),
            listener_sets: stores
                .listener_sets
                .as_ref()
                .map(|store| store.state())
                .unwrap_or_default(),
            routes: stores.routes.state(),
            grants: stores.grants.state(),
            services: stores.services.state(),
            slices: stores.slices.state(),
            namespaces: stores.namespaces.state(),
        }
    }

    /// Where each of microgate's Gateways listens.
    pub(crate) fn addresses(
        &self,
        range: Option<ipnet::IpNet>,
        listen_address: IpAddr,
    ) -> compile::addresses::Addresses {
        let gateways = compile::gateway_api::served_gateways(&self.classes, &self.gateways);
        compile::addresses::allocate(&gateways, range, listen_address)
    }

    pub(crate) fn resources<'a>(
        &'a self,
        addresses: &'a compile::addresses::Addresses,
    ) -> compile::gateway_api::Resources<'a> {
        compile::gateway_api::Resources {
            classes: &self.classes,
            gateways: &self.gateways,
            listener_sets: &self.listener_sets,
            routes: &self.routes,
            grants: &self.grants,
            services: &self.services,
            slices: &self.slices,
            namespaces: &self.namespaces,
            addresses,
        }
    }
}
