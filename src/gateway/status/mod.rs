//! What the data plane reports on the resources it serves, once their table is in place and its
//! listeners are bound: [`microgate`] for microgate.dev Gateways, [`access_policy`] for
//! AccessPolicies, [`gateway_api`] for the Kubernetes Gateway API's GatewayClasses, Gateways and
//! HTTPRoutes. [`Writer`] says whether this process is the one that reports.

pub mod access_policy;
pub mod gateway_api;
pub mod microgate;

use std::sync::Arc;

use tokio::sync::watch;

/// Whether this process writes the statuses of what it serves, now. Every replica of a gateway
/// compiles the same table, but one reports it: replicas that see a little differently (one
/// could not bind a port, one has not seen a change yet) would otherwise overwrite each other's
/// statuses back and forth, and every change would cost a write per replica.
#[derive(Clone, Debug)]
pub struct Writer {
    writing: watch::Receiver<bool>,
    /// Keeps [`Writer::always`]'s channel open, so that waiting for a change waits for good.
    _always: Option<Arc<watch::Sender<bool>>>,
}

impl Writer {
    /// A process that always reports (the only replica).
    pub fn always() -> Self {
        let (always, writing) = watch::channel(true);
        Self {
            writing,
            _always: Some(Arc::new(always)),
        }
    }

    /// A process that reports while `writing` says so (while it holds a leader Lease).
    pub fn while_true(writing: watch::Receiver<bool>) -> Self {
        Self {
            writing,
            _always: None,
        }
    }

    pub fn writes(&self) -> bool {
        *self.writing.borrow()
    }

    /// Completes when this process starts or stops reporting (never, once nobody can say so
    /// any more).
    pub async fn changed(&mut self) {
        if self.writing.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
