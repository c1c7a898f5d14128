//! The operator half of microgate: reconcilers that turn the API's resources into running
//! Kubernetes objects, and report back in their status.
//!
//! [`run`] starts the Microservice controller (kube-runtime's `Controller`: a watch on
//! Microservices and on the Deployments and Services they own, feeding [`microservice::reconcile`])
//! and serves the admin endpoints.

pub mod conditions;
pub mod context;
pub mod endpoints;
pub mod error;
pub mod gateway;
pub mod microservice;

use std::{future::Future, net::SocketAddr};

use futures::StreamExt;
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Service};
use kube::{
    Api, Client, ResourceExt,
    core::DeserializeGuard,
    runtime::{Controller, controller, reflector::ObjectRef, watcher},
};
pub use prometheus_client::registry::Registry as Prometheus;

pub use context::{Context, Scope};

use crate::{
    api::{Gateway, Microservice, labels},
    discovery::{self, DiscoveryMetrics, Registry},
    telemetry::{Admin, ControllerMetrics},
};

fn namespaced_or_all<K>(client: &Client, scope: &Scope) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match &scope.namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

/// A running controller: its admin address, and the future that runs it until `shutdown` resolves.
pub struct Running<F> {
    pub admin_addr: SocketAddr,
    pub serve: F,
}

/// Prepares the controller for `scope` with its admin endpoints bound on `admin_addr` (serving
/// `prometheus`, to which the controller adds its own metrics); awaiting `serve` runs it until
/// `shutdown` completes.
pub async fn start(
    client: Client,
    scope: Scope,
    registry: Registry,
    mut prometheus: Prometheus,
    admin_addr: SocketAddr,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<Running<impl Future<Output = ()>>> {
    let metrics = ControllerMetrics::register(&mut prometheus);
    let discovery_metrics = DiscoveryMetrics::register(&mut prometheus);
    let admin = Admin::new(prometheus);
    let (admin_addr, serve_admin) = admin.bind(admin_addr).await?;
    let ctx = Context::new(client.clone(), registry.clone(), metrics);
    // Both controllers stop on the same signal.
    let shutdown = futures::FutureExt::shared(Box::pin(shutdown));
    let shutdown_gateways = shutdown.clone();

    let mut microservices = watcher::Config::default().any_semantic();
    if let Some(selector) = &scope.label_selector {
        microservices = microservices.labels(selector);
    }
    // Only what microgate made: the owned watches stay small in a big cluster.
    let owned = watcher::Config::default().labels(&format!("{}=microgate", labels::MANAGED_BY));
    let controller = Controller::new(
        namespaced_or_all::<DeserializeGuard<Microservice>>(&client, &scope),
        microservices,
    )
    .owns(namespaced_or_all::<Deployment>(&client, &scope), owned.clone())
    .owns(namespaced_or_all::<Service>(&client, &scope), owned)
    .with_config(controller::Config::default().concurrency(16))
    .graceful_shutdown_on(shutdown);
    let store = controller.store();
    let discovery = discovery::run(
        client.clone(),
        scope.namespace.clone(),
        registry.clone(),
        discovery_metrics,
    );
    let publish_endpoints = endpoints::publish(
        client.clone(),
        registry,
        store.clone(),
        ctx.metrics.endpoint_status_writes.clone(),
    );

    let mut gateways_config = watcher::Config::default().any_semantic();
    if let Some(selector) = &scope.label_selector {
        gateways_config = gateways_config.labels(selector);
    }
    let gateway_controller = Controller::new(
        namespaced_or_all::<Gateway>(&client, &scope),
        gateways_config.clone(),
    );
    let gateways = gateway_controller.store();
    // A Microservice appearing, going or changing readiness changes the status of every Gateway
    // of its namespace that routes to it.
    let gateway_controller = gateway_controller
        .watches(
            namespaced_or_all::<Microservice>(&client, &scope),
            gateways_config,
            move |ms: Microservice| {
                let namespace = ms.namespace();
                let name = ms.name_any();
                gateways
                    .state()
                    .into_iter()
                    .filter(|gw| gw.namespace() == namespace)
                    .filter(|gw| {
                        gw.spec
                            .routes
                            .iter()
                            .any(|r| r.backends.iter().any(|b| b.microservice == name))
                    })
                    .map(|gw| ObjectRef::from_obj(gw.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .with_config(controller::Config::default().concurrency(4))
        .graceful_shutdown_on(shutdown_gateways);

    let serve = async move {
        let ready = async move {
            if store.wait_until_ready().await.is_ok() {
                admin.set_ready();
                tracing::info!("caches synced; reconciling");
            }
            std::future::pending::<()>().await
        };
        let microservices = controller
            .run(microservice::reconcile, microservice::error_policy, ctx.clone())
            .map(|result| result.map(|_| ()).map_err(|e| e.to_string()));
        let gateways = gateway_controller
            .run(gateway::reconcile, gateway::error_policy, ctx)
            .map(|result| result.map(|_| ()).map_err(|e| e.to_string()));
        let reconcile = futures::stream::select(microservices, gateways).for_each(|result| async {
            if let Err(error) = result {
                tracing::debug!(%error, "controller event");
            }
        });
        // Ends when the controllers have shut down gracefully (or the admin server failed).
        tokio::select! {
            () = reconcile => {}
            () = serve_admin => {}
            () = ready => {}
            () = discovery => {}
            () = publish_endpoints => {}
        }
    };
    Ok(Running { admin_addr, serve })
}
