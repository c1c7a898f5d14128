//! What the data plane reports on each AccessPolicy: `Ready` (every reference resolved, so
//! routes naming it enforce it; or why not, in which case they refuse every request) and the
//! routes that name it. Written with server-side apply under the data plane's field manager,
//! and only when something changed.

use k8s_openapi::jiff::Timestamp;
use kube::{Api, Client, ResourceExt};

use super::microgate::same_condition;
use crate::{
    api::AccessPolicy,
    controller::conditions::{Desired, merge},
    gateway::{STATUS_FIELD_MANAGER, compile::access::AccessPolicies, table::RouteTable},
};

pub const READY: &str = "Ready";

/// Writes `policy`'s status if it differs from what the policy shows.
pub async fn report(client: &Client, policy: &AccessPolicy, compiled: &AccessPolicies, table: &RouteTable) {
    let namespace = policy.namespace().unwrap_or_default();
    let name = policy.name_any();
    let Some(found) = compiled.get(&namespace, &name) else {
        return;
    };
    let generation = found.generation;
    let current = policy.status.clone().unwrap_or_default();
    let routes = table
        .access_policies
        .get(&format!("{namespace}/{name}"))
        .cloned()
        .unwrap_or_default();
    let problems = found.control.problems();
    let ready = match &found.control.unenforceable {
        None if problems.is_empty() => Desired::new(
            READY,
            true,
            "Enforced",
            format!("enforced on {} routes", routes.len()),
        ),
        None => Desired::new(
            READY,
            false,
            "KeysNotLoaded",
            format!("{}: its tokens are refused (503) until then", problems.join("; ")),
        ),
        Some(why) => Desired::new(
            READY,
            false,
            "Unenforceable",
            format!("{why}: routes naming this policy refuse every request"),
        ),
    };
    let conditions = merge(&current.conditions, vec![ready], generation, Timestamp::now());
    let unchanged = conditions.iter().all(|c| same_condition(&current.conditions, c))
        && current.routes == routes
        && current.observed_generation == generation;
    if unchanged {
        return;
    }
    let patch = serde_json::json!({
        "apiVersion": "microgate.dev/v1alpha1", "kind": "AccessPolicy",
        "status": {"observedGeneration": generation, "conditions": conditions, "routes": routes},
    });
    let api: Api<AccessPolicy> = Api::namespaced(client.clone(), &namespace);
    let params = kube::api::PatchParams::apply(STATUS_FIELD_MANAGER).force();
    if let Err(error) = api
        .patch_status(&name, &params, &kube::api::Patch::Apply(patch))
        .await
    {
        tracing::warn!(policy = %name, %namespace, %error, "could not report the access policy's status");
    }
}
