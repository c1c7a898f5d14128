//! Integration tests on the real control plane: the CRDs as the API server sees them, and the
//! controller reconciling Microservices into Deployments and Services.

mod api_client;
mod api_validation;
mod discovery;
mod examples;
mod gateway;
mod lifecycle;
mod microservice;

use std::{net::SocketAddr, time::Duration};

use kube::Client;
use microgate::{
    controller::{self, Scope},
    discovery::Registry,
};
use microgate_test_support::{
    TestNamespace, probe,
    wait::{self, Probe},
};

/// Installs microgate's CRDs from the API types and waits until they are served.
pub async fn install_crds(client: &Client) {
    microgate_test_support::cluster::install_crds(client, microgate::api::crds()).await;
}

pub use microgate_test_support::cluster::kubectl;

/// The controller running in this test process, as `microgate controller` would run it.
pub struct ControllerUnderTest {
    /// The registry the controller's discovery keeps.
    pub registry: Registry,
    admin: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl ControllerUnderTest {
    /// A controller for the test's namespace only.
    pub async fn start(ns: &TestNamespace) -> Self {
        Self::start_scoped(
            ns,
            Scope {
                namespace: Some(ns.name.clone()),
                label_selector: None,
            },
        )
        .await
    }

    /// A controller for all namespaces, limited to Microservices matching `selector`.
    pub async fn start_all_namespaces(ns: &TestNamespace, selector: &str) -> Self {
        Self::start_scoped(
            ns,
            Scope {
                namespace: None,
                label_selector: Some(selector.to_owned()),
            },
        )
        .await
    }

    async fn start_scoped(ns: &TestNamespace, scope: Scope) -> Self {
        install_crds(&ns.client).await;
        let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
        let registry = Registry::default();
        let running = controller::start(
            ns.client.clone(),
            scope,
            registry.clone(),
            Default::default(),
            any_port,
            None,
            std::future::pending(),
        )
        .await
        .expect("bind the admin endpoints");
        let admin = running.admin_addr;
        let task = tokio::spawn(running.serve);
        wait::until("the controller's /readyz", Duration::from_secs(30), || async {
            match probe::get(admin, "/readyz").await {
                Ok(answer) if answer.status == 200 => Probe::Done(()),
                other => Probe::NotYet(format!("{other:?}")),
            }
        })
        .await
        .expect("the controller gets ready");
        Self {
            registry,
            admin,
            task,
        }
    }

    /// Reconciliations of Microservices finished so far (from `/metrics`).
    pub async fn completed_reconciliations(&self) -> u64 {
        self.metric("microgate_reconcile_duration_seconds_count{kind=\"Microservice\"}")
            .await
    }

    /// The value of one sample of `/metrics`, by its name and labels (0 when absent).
    pub async fn metric(&self, sample: &str) -> u64 {
        let metrics = probe::get(self.admin, "/metrics")
            .await
            .expect("GET /metrics")
            .body;
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(sample).and_then(|rest| rest.strip_prefix(' ')))
            .and_then(|count| count.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for ControllerUnderTest {
    fn drop(&mut self) {
        self.task.abort();
    }
}
