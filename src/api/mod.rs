//! The API microgate serves: `Microservice`, `Gateway` and `AccessPolicy` in
//! `microgate.dev/v1alpha1`, their shared policy types, and the names and labels microgate puts on what it creates.

pub mod access_policy;
pub mod duration;
pub mod gateway;
pub mod gateway_api;
pub mod microservice;
pub mod policy;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps,
};
use kube::CustomResourceExt;

pub use access_policy::{AccessPolicy, AccessPolicySpec, AccessPolicyStatus};
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

/// The CustomResourceDefinitions of the kinds, as `microgate crd` prints them.
pub fn crds() -> Vec<CustomResourceDefinition> {
    let mut microservice = Microservice::crd();
    restrict_name_to_dns_label(&mut microservice);
    vec![microservice, Gateway::crd(), AccessPolicy::crd()]
}

/// A Microservice's name also names its Service, which must be a DNS-1035 label: say so in the
/// schema (the one place a CRD may constrain `metadata`), so the API server refuses a bad name
/// naming `metadata.name`.
fn restrict_name_to_dns_label(crd: &mut CustomResourceDefinition) {
    for version in &mut crd.spec.versions {
        let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        else {
            continue;
        };
        let name = JSONSchemaProps {
            type_: Some("string".to_owned()),
            max_length: Some(63),
            pattern: Some("^[a-z]([-a-z0-9]*[a-z0-9])?$".to_owned()),
            description: Some(
                "A DNS label: it also names the Microservice's Deployment and Service.".to_owned(),
            ),
            ..JSONSchemaProps::default()
        };
        let metadata = JSONSchemaProps {
            type_: Some("object".to_owned()),
            properties: Some([("name".to_owned(), name)].into()),
            ..JSONSchemaProps::default()
        };
        schema
            .properties
            .get_or_insert_default()
            .insert("metadata".to_owned(), metadata);
    }
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
