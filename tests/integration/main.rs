//! Integration tests on the real control plane: the CRDs as the API server sees them, and the
//! controller reconciling Microservices into Deployments and Services.

mod api_validation;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{conditions, wait::await_condition},
};
use std::time::Duration;

/// Installs (or updates) microgate's CRDs from the API types and waits until they are served.
///
/// The cluster may have been started by an older checkout, so tests never rely on the CRDs the
/// cluster script applied at start.
pub async fn install_crds(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply("microgate-tests").force();
    for crd in microgate::api::crds() {
        let name = crd.name_any();
        crds.patch(&name, &params, &Patch::Apply(&crd))
            .await
            .unwrap_or_else(|e| panic!("apply CRD {name}: {e}"));
        tokio::time::timeout(
            Duration::from_secs(30),
            await_condition(crds.clone(), &name, conditions::is_crd_established()),
        )
        .await
        .unwrap_or_else(|_| panic!("CRD {name} not established within 30 s"))
        .unwrap_or_else(|e| panic!("watch CRD {name}: {e}"));
    }
}
