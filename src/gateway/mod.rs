//! The data plane: an L7 HTTP gateway configured by Gateway resources, balancing over the
//! registry's endpoints.
//!
//! [`run`] watches Gateways and Microservices, compiles them with the registry's snapshots into
//! a [`config::RouteTable`] on every change, swaps it in atomically, and keeps one listener per
//! port the table names. Requests flow through [`proxy::Proxy`]: route → pick → forward with
//! retries and timeouts.

pub mod balance;
pub mod body;
pub mod config;
pub mod forwarding;
pub mod metrics;
pub mod outlier;
pub mod proxy;
pub mod retry;
pub mod router;
pub mod server;
pub mod upstream;
pub mod wire;
pub mod workers;

use std::{collections::HashMap, net::IpAddr, sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use futures::{FutureExt, StreamExt};
use kube::{
    Api, Client, ResourceExt,
    runtime::{WatchStreamExt, predicates, reflector, watcher},
};
use tokio::sync::Notify;

pub use metrics::GatewayMetrics;

use crate::{
    api::{Gateway, Microservice},
    discovery::{Registry, ServiceKey},
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
    options: Options,
    metrics: GatewayMetrics,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let (gateways, gateways_writer) = reflector::store::<Gateway>();
    let (microservices, microservices_writer) = reflector::store::<Microservice>();
    let changed = Arc::new(Notify::new());
    let api = |client: Client| match &namespace {
        Some(ns) => (
            Api::<Gateway>::namespaced(client.clone(), ns),
            Api::<Microservice>::namespaced(client, ns),
        ),
        None => (Api::all(client.clone()), Api::all(client)),
    };
    let status_client = client.clone();
    let (gateway_api, microservice_api) = api(client);
    let watch_gateways = {
        let changed = changed.clone();
        reflector(gateways_writer, watcher(gateway_api, watcher::Config::default()))
            .default_backoff()
            .touched_objects()
            .for_each(move |_| {
                changed.notify_one();
                async {}
            })
    };
    let watch_microservices = {
        let changed = changed.clone();
        reflector(
            microservices_writer,
            watcher(microservice_api, watcher::Config::default()),
        )
        .default_backoff()
        .touched_objects()
        // Only spec changes matter here (the traffic policy); status churns with every Pod.
        .predicate_filter(predicates::generation, Default::default())
        .for_each(move |_| {
            changed.notify_one();
            async {}
        })
    };

    let table = Arc::new(ArcSwap::from_pointee(config::RouteTable::default()));
    let proxy = Arc::new(proxy::Proxy::new(
        table.clone(),
        metrics.clone(),
        options.access_log,
    ));
    let workers = workers::Workers::start(options.workers)?;
    for worker in workers.handles() {
        worker.spawn(close_expired_idle_connections(table.clone()));
    }
    let mut listeners = server::Listeners::new(options.listen_address, proxy, workers.handles().to_vec());
    let mut registry_changes = registry.subscribe();
    let mut on_programmed = options.on_programmed;
    let program = async {
        tokio::pin!(shutdown);
        tokio::select! {
            _ = gateways.wait_until_ready() => {}
            () = &mut shutdown => return,
        }
        loop {
            let services: HashMap<ServiceKey, _> = microservices
                .state()
                .iter()
                .map(|ms| {
                    let key = ServiceKey::new(&ms.namespace().unwrap_or_default(), &ms.name_any());
                    let settings = config::ServiceSettings {
                        traffic: ms.spec.traffic_policy.clone(),
                        protocol: ms.spec.protocol,
                    };
                    (key, settings)
                })
                .collect();
            let previous = table.load_full();
            let compiled =
                config::compile(&gateways.state(), &services, &registry, &metrics, Some(&previous));
            let ports: Vec<u16> = compiled.listeners.keys().copied().collect();
            table.store(Arc::new(compiled));
            listeners.set_ports(ports.into_iter()).await;
            // Ready once the table was compiled from complete endpoint lists, not before.
            if registry.synced().now_or_never().is_some()
                && let Some(programmed) = on_programmed.take()
            {
                programmed();
            }
            for gateway in gateways.state() {
                report_programmed(&status_client, &gateway, &listeners).await;
            }
            tokio::select! {
                () = changed.notified() => {}
                result = registry_changes.changed() => if result.is_err() { break },
                // A listener that could not bind is tried again.
                () = tokio::time::sleep(Duration::from_secs(30)) => {}
                () = &mut shutdown => break,
            }
        }
        tracing::info!("draining: no new connections; finishing the requests in flight");
        listeners.drain(DRAIN_DEADLINE).await;
    };
    tokio::select! {
        () = watch_gateways => {}
        () = watch_microservices => {}
        () = program => {}
    }
    Ok(())
}

/// Closes, every few seconds, this worker's idle connections to endpoints that have gone unused
/// for [`upstream::IDLE_TIMEOUT`]. Runs on each worker: a worker's connections are its own.
async fn close_expired_idle_connections(table: Arc<ArcSwap<config::RouteTable>>) {
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

/// The field manager of the data plane's status writes (the controller's is `microgate`).
pub const STATUS_FIELD_MANAGER: &str = "microgate-gateway";

/// Tells, in the Gateway's `Programmed` condition, whether every one of its listeners is served.
async fn report_programmed(client: &Client, gateway: &Gateway, listeners: &server::Listeners) {
    let failures: Vec<&str> = gateway
        .spec
        .listeners
        .iter()
        .filter_map(|l| {
            u16::try_from(l.port)
                .ok()
                .and_then(|port| listeners.failure(port))
        })
        .collect();
    let (status, reason, message) = if failures.is_empty() {
        let ports: Vec<String> = gateway
            .spec
            .listeners
            .iter()
            .map(|l| l.port.to_string())
            .collect();
        (
            "True",
            "Programmed",
            format!(
                "serving {} routes on port {}",
                gateway.spec.routes.len(),
                ports.join(", ")
            ),
        )
    } else {
        ("False", "ListenerNotBound", failures.join("; "))
    };
    let generation = gateway.metadata.generation;
    let current = gateway
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Programmed"));
    if current.is_some_and(|c| {
        c.status == status
            && c.reason == reason
            && c.message == message
            && c.observed_generation == generation
    }) {
        return;
    }
    let since = current
        .filter(|c| c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::now(),
        ));
    let patch = serde_json::json!({
        "apiVersion": "microgate.dev/v1alpha1", "kind": "Gateway",
        "status": {"conditions": [{"type": "Programmed", "status": status, "reason": reason, "message": message,
            "observedGeneration": generation, "lastTransitionTime": since}]},
    });
    let api: Api<Gateway> = Api::namespaced(client.clone(), &gateway.namespace().unwrap_or_default());
    let params = kube::api::PatchParams::apply(STATUS_FIELD_MANAGER).force();
    if let Err(error) = api
        .patch_status(&gateway.name_any(), &params, &kube::api::Patch::Apply(patch))
        .await
    {
        tracing::warn!(gateway = %gateway.name_any(), %error, "could not report the Programmed condition");
    }
}
