//! The API microgate serves: `Microservice` and `Gateway` in `microgate.dev/v1alpha1`, their
//! shared policy types, and the names and labels microgate puts on what it creates.

pub mod duration;
pub mod gateway;
pub mod microservice;
pub mod policy;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

pub use gateway::{Gateway, GatewaySpec, GatewayStatus};
pub use microservice::{Microservice, MicroserviceSpec, MicroserviceStatus};

/// The API group of both kinds.
pub const GROUP: &str = "microgate.dev";
/// The field manager of every server-side apply microgate makes.
pub const FIELD_MANAGER: &str = "microgate";

/// Labels microgate sets on the objects it creates.
pub mod labels {
    pub const NAME: &str = "app.kubernetes.io/name";
    pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
    /// Which Microservice an object (a Pod, through its template) belongs to.
    pub const MICROSERVICE: &str = "microgate.dev/microservice";
}

/// The CustomResourceDefinitions of both kinds, as `microgate crd` prints them.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![Microservice::crd(), Gateway::crd()]
}

/// The CRDs as one multi-document YAML stream.
pub fn crds_yaml() -> Result<String, serde_saphyr::ser::Error> {
    let mut out = String::new();
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&crd)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_crds_match_the_api_types() {
        let committed = include_str!("../../crds/microgate.dev.yaml");
        let generated = crds_yaml().expect("CRDs serialize");
        assert!(
            committed == generated,
            "crds/ is stale: run `make crds` and commit the result"
        );
    }

    #[test]
    fn both_kinds_are_in_the_microgate_group_and_category() {
        for crd in crds() {
            assert_eq!(crd.spec.group, GROUP);
            assert_eq!(
                crd.spec.names.categories.as_deref(),
                Some(&["microgate".to_owned()][..])
            );
            let version = &crd.spec.versions[0];
            assert!(
                version
                    .subresources
                    .as_ref()
                    .and_then(|s| s.status.as_ref())
                    .is_some()
            );
        }
    }
}
