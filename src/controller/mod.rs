//! The operator half of microgate: reconcilers that turn the API's resources into running
//! Kubernetes objects, and report back in their status.
//!
//! [`start`] runs the Microservice controller (kube-runtime's `Controller`: a watch on
//! Microservices and on the Deployments and Services they own, feeding [`microservice::reconcile`]),
//! the Gateway controller and the endpoints publisher, the writers; and, throughout, discovery
//! and the admin endpoints. With leader election the writers run only in the process that holds
//! the Lease ([`crate::leader`]).

pub mod conditions;
pub mod context;
pub mod endpoints;
pub mod error;
pub mod gateway;
pub mod microservice;

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use futures::{
    FutureExt, StreamExt,
    future::{BoxFuture, Shared},
};
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Service};
use kube::{
    Api, Client, ResourceExt,
    core::DeserializeGuard,
    runtime::{Controller, controller, reflector::ObjectRef},
};
use prometheus_client::metrics::gauge::Gauge;
pub use prometheus_client::registry::Registry as Prometheus;
use tokio::sync::{oneshot, watch};

pub use context::{Context, Scope};

use crate::watch::{self as watches, OwnKinds, WatchBackoff};

use crate::{
    api::{Microservice, labels},
    discovery::{self, DiscoveryMetrics, Registry},
    leader::{self, Role},
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

/// A running controller: its admin endpoints and their address, and the future that runs it
/// until `shutdown` resolves.
pub struct Running<F> {
    pub admin_addr: SocketAddr,
    /// What `/readyz` waits for: [`CACHES_SYNCED`], and whatever else the caller adds before it
    /// awaits `serve`.
    pub admin: Admin,
    /// Whether the writers run now: always without leader election, else while the Lease is
    /// held (what else this process writes, such as its gateway's statuses, can follow it).
    pub leading: watch::Receiver<bool>,
    /// The watches of Microservices and Gateways, for the gateway of the same process to read
    /// too (one watch per kind).
    pub watches: OwnKinds,
    pub serve: F,
}

/// What the controller's readiness waits for: its caches synced, or knowing it is a standby.
pub const CACHES_SYNCED: &str = "caches synced";

/// The signal every part of a controller stops on.
type Shutdown = Shared<BoxFuture<'static, ()>>;

/// Prepares the controller for `scope` with its admin endpoints bound on `admin_addr` (serving
/// `prometheus`, to which the controller adds its own metrics); awaiting `serve` runs it until
/// `shutdown` completes.
///
/// Discovery and the admin endpoints run throughout. The writers (both reconcilers and the
/// endpoints publisher) run always when `election` is `None`; otherwise only while this process
/// holds the leader Lease, and on shutdown the Lease is released once they have stopped.
pub async fn start(
    client: Client,
    scope: Scope,
    registry: Registry,
    mut prometheus: Prometheus,
    admin_addr: SocketAddr,
    election: Option<leader::Config>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<Running<impl Future<Output = ()>>> {
    let metrics = ControllerMetrics::register(&mut prometheus);
    let discovery_metrics = DiscoveryMetrics::register(&mut prometheus);
    let leading = Leading {
        gauge: metrics.leader.clone(),
        now: watch::channel(false).0,
    };
    let leading_now = leading.now.subscribe();
    let admin = Admin::new(prometheus, &[CACHES_SYNCED]);
    let (admin_addr, serve_admin) = admin.bind(admin_addr).await?;
    let ctx = Context::new(client.clone(), registry.clone(), metrics);
    let shutdown: Shutdown = shutdown.boxed().shared();
    let discovery = discovery::run(
        client.clone(),
        scope.namespace.clone(),
        registry.clone(),
        discovery_metrics,
    );
    // Watched throughout, leader or not: the gateway of the same process reads them too.
    let watches = OwnKinds::start(
        &client,
        scope.namespace.as_deref(),
        scope.label_selector.as_deref(),
    );
    let election_client = client.clone();
    let running_admin = admin.clone();
    let writers = {
        let admin = admin.clone();
        let shutdown = shutdown.clone();
        let watches = watches.clone();
        move || {
            writers(
                &client,
                &scope,
                &watches,
                &registry,
                &ctx,
                &admin,
                shutdown.clone(),
            )
        }
    };
    let serve = async move {
        let controllers = async move {
            match election {
                None => {
                    leading.set(true);
                    writers().await;
                }
                Some(config) => {
                    let elector = leader::Elector::new(election_client, config);
                    lead(elector, writers, &admin, &leading, shutdown).await;
                }
            }
        };
        // Ends when the controllers have shut down gracefully (or the admin server failed).
        tokio::select! {
            () = controllers => {}
            () = serve_admin => {}
            () = discovery => {}
        }
    };
    Ok(Running {
        admin_addr,
        admin: running_admin,
        leading: leading_now,
        watches,
        serve,
    })
}

/// Runs the writers while `elector` holds the Lease, until `shutdown`; then releases the Lease.
/// A standby is ready (`/readyz`) as soon as it knows it is one: its gateway and discovery work.
async fn lead<W, F>(
    elector: leader::Elector,
    mut writers: W,
    admin: &Admin,
    leading: &Leading,
    shutdown: Shutdown,
) where
    W: FnMut() -> F,
    F: Future<Output = ()>,
{
    let (role, mut roles) = watch::channel(Role::Unknown);
    let (stop, stopped) = oneshot::channel::<()>();
    let election = elector.run(&role, async {
        let _ = stopped.await;
    });
    let supervise = async move {
        loop {
            let current = *roles.borrow_and_update();
            match current {
                Role::Leader => {
                    leading.set(true);
                    let term = writers();
                    let lost = tokio::select! {
                        // Only a graceful shutdown ends the writers.
                        () = term => false,
                        _ = roles.wait_for(|r| *r != Role::Leader) => true,
                    };
                    // Dropping the writers aborts their reconciliations in flight.
                    leading.set(false);
                    if !lost {
                        break;
                    }
                    tracing::warn!("stopped the controllers: no longer the leader");
                    continue;
                }
                Role::Standby => admin.done(CACHES_SYNCED),
                Role::Unknown => {}
            }
            tokio::select! {
                changed = roles.changed() => if changed.is_err() { break },
                () = shutdown.clone() => break,
            }
        }
        // The writers have stopped: let the elector release the Lease.
        let _ = stop.send(());
    };
    tokio::join!(election, supervise);
}

/// Whether the writers run: the leader gauge and the same for the rest of the process.
struct Leading {
    gauge: Gauge,
    now: watch::Sender<bool>,
}

impl Leading {
    fn set(&self, leading: bool) {
        self.gauge.set(i64::from(leading));
        self.now.send_replace(leading);
    }
}

/// The writers: the Microservice and Gateway reconcilers and the endpoints publisher. The
/// returned future ends when `shutdown` has stopped both reconcilers gracefully.
fn writers(
    client: &Client,
    scope: &Scope,
    watches: &OwnKinds,
    registry: &Registry,
    ctx: &Arc<Context>,
    admin: &Admin,
    shutdown: Shutdown,
) -> impl Future<Output = ()> + use<> {
    // Only what microgate made: the owned watches stay small in a big cluster.
    let owned = crate::watch::config().labels(&format!("{}=microgate", labels::MANAGED_BY));
    // A new term starts with every Microservice in the (already filled) store: each is
    // reconciled, as after a list.
    let controller =
        Controller::for_shared_stream(watches.microservices.subscribe(), watches.microservices.store())
            .owns(namespaced_or_all::<Deployment>(client, scope), owned.clone())
            .owns(namespaced_or_all::<Service>(client, scope), owned)
            .trigger_backoff(WatchBackoff::default())
            .with_config(controller::Config::default().concurrency(16));
    let controller =
        controller.graceful_shutdown_on(once_ready(shutdown.clone(), watches.microservices.clone()));
    let publish_endpoints = endpoints::publish(
        client.clone(),
        registry.clone(),
        watches.microservices.clone(),
        ctx.metrics.endpoint_status_writes.clone(),
    );

    let gateways = watches.gateways.store();
    // A Microservice appearing, going or changing readiness changes the status of every Gateway
    // of its namespace that routes to it.
    let gateway_controller = Controller::for_shared_stream(watches.gateways.subscribe(), gateways.clone())
        .watches_shared_stream(
            watches.microservices.subscribe(),
            move |ms: Arc<DeserializeGuard<Microservice>>| {
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
        .trigger_backoff(WatchBackoff::default())
        .with_config(controller::Config::default().concurrency(4))
        .graceful_shutdown_on(once_ready(shutdown.clone(), watches.gateways.clone()));

    let ctx = ctx.clone();
    let admin = admin.clone();
    let microservices = watches.microservices.clone();
    async move {
        let ready = async move {
            microservices.ready().await;
            admin.done(CACHES_SYNCED);
            tracing::info!("caches synced; reconciling");
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
        // Reconciliations in flight may finish after the signal, within a deadline.
        let abandon = async move {
            shutdown.await;
            tokio::time::sleep(SHUTDOWN_DEADLINE).await;
            tracing::warn!(deadline = ?SHUTDOWN_DEADLINE, "reconcilers still busy at the shutdown deadline; stopping them");
        };
        tokio::select! {
            () = reconcile => {}
            () = ready => {}
            () = publish_endpoints => {}
            () = abandon => {}
        }
    }
}

/// How long the reconcilers may take to finish their work in flight after the shutdown signal.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);

/// `shutdown`, but not before `watched` has been listed: kube-runtime's graceful shutdown stops
/// the controller's watches, and a controller whose store was not filled yet would wait for it
/// forever.
async fn once_ready<K>(shutdown: Shutdown, watched: watches::Shared<K>)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + std::hash::Hash + Eq + Clone + Send + Sync,
{
    shutdown.await;
    watched.ready().await;
}
