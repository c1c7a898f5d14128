//! What the data plane reports on each Gateway it serves: `Programmed` for the Gateway, and for
//! each listener `ResolvedRefs` (its certificate Secrets are valid) and `Programmed` (it is
//! being served), as the Gateway API reports them. Written with server-side apply under the
//! data plane's own field manager, and only when something changed.

use std::net::{IpAddr, SocketAddr};

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Condition, jiff::Timestamp};
use kube::{Api, Client, ResourceExt};

use crate::gateway::{
    STATUS_FIELD_MANAGER,
    compile::microgate::listener_id,
    listen::Listeners,
    table::RouteTable,
    tls::{CertificateStore, SecretKey},
};
use crate::{
    api::{
        Gateway,
        gateway::{Listener, ListenerProtocol, ListenerStatus},
    },
    controller::conditions::{Desired, merge},
};

pub const PROGRAMMED: &str = "Programmed";
pub const RESOLVED_REFS: &str = "ResolvedRefs";

/// Writes `gateway`'s data-plane status if it differs from what the Gateway shows.
/// `address`: where its listeners listen.
pub async fn report(
    client: &Client,
    gateway: &Gateway,
    address: IpAddr,
    listeners: &Listeners,
    table: &RouteTable,
    certificates: &CertificateStore,
) {
    let namespace = gateway.namespace().unwrap_or_default();
    let generation = gateway.metadata.generation;
    let now = Timestamp::now();
    let current = gateway.status.clone().unwrap_or_default();
    let listener_statuses: Vec<ListenerStatus> = gateway
        .spec
        .listeners
        .iter()
        .map(|listener| {
            let id = listener_id(gateway, listener);
            let previous = current
                .listener_statuses
                .iter()
                .find(|s| s.name == listener.name)
                .map(|s| s.conditions.as_slice())
                .unwrap_or_default();
            let desired =
                listener_conditions(listener, &id, &namespace, address, listeners, table, certificates);
            ListenerStatus {
                name: listener.name.clone(),
                conditions: merge(previous, desired, generation, now),
            }
        })
        .collect();
    let not_programmed: Vec<String> = listener_statuses
        .iter()
        .flat_map(|s| &s.conditions)
        .filter(|c| c.type_ == PROGRAMMED && c.status != "True")
        .map(|c| c.message.clone())
        .collect();
    let bind_failures = gateway.spec.listeners.iter().any(|l| {
        u16::try_from(l.port).is_ok_and(|port| listeners.failure(SocketAddr::new(address, port)).is_some())
    });
    let programmed = if not_programmed.is_empty() {
        let ports: Vec<String> = gateway
            .spec
            .listeners
            .iter()
            .map(|l| l.port.to_string())
            .collect();
        Desired::new(
            PROGRAMMED,
            true,
            "Programmed",
            format!(
                "serving {} routes on port {}",
                gateway.spec.routes.len(),
                ports.join(", ")
            ),
        )
    } else {
        let reason = if bind_failures {
            "ListenerNotBound"
        } else {
            "Invalid"
        };
        Desired::new(PROGRAMMED, false, reason, not_programmed.join("; "))
    };
    let conditions = merge(&current.conditions, vec![programmed], generation, now);
    let unchanged = conditions.iter().all(|c| same_condition(&current.conditions, c))
        && listener_statuses.len() == current.listener_statuses.len()
        && listener_statuses.iter().all(|s| {
            current
                .listener_statuses
                .iter()
                .find(|c| c.name == s.name)
                .is_some_and(|c| {
                    s.conditions
                        .iter()
                        .all(|cond| same_condition(&c.conditions, cond))
                })
        });
    if unchanged {
        return;
    }
    let patch = serde_json::json!({
        "apiVersion": "microgate.dev/v1alpha1", "kind": "Gateway",
        "status": {"conditions": conditions, "listenerStatuses": listener_statuses},
    });
    let api: Api<Gateway> = Api::namespaced(client.clone(), &namespace);
    let params = kube::api::PatchParams::apply(STATUS_FIELD_MANAGER).force();
    if let Err(error) = api
        .patch_status(&gateway.name_any(), &params, &kube::api::Patch::Apply(patch))
        .await
    {
        tracing::warn!(gateway = %gateway.name_any(), %error, "could not report the gateway's status");
    }
}

/// Whether `conditions` holds `condition` as it is (transition time aside: it only moves when
/// the status does).
pub(super) fn same_condition(conditions: &[Condition], condition: &Condition) -> bool {
    conditions.iter().any(|c| {
        c.type_ == condition.type_
            && c.status == condition.status
            && c.reason == condition.reason
            && c.message == condition.message
            && c.observed_generation == condition.observed_generation
    })
}

/// The `ResolvedRefs` and `Programmed` conditions of one listener.
fn listener_conditions(
    listener: &Listener,
    id: &str,
    namespace: &str,
    address: IpAddr,
    listeners: &Listeners,
    table: &RouteTable,
    certificates: &CertificateStore,
) -> Vec<Desired> {
    let problems: Vec<String> = listener
        .tls
        .iter()
        .flat_map(|tls| &tls.certificate_refs)
        .filter_map(|r| {
            let key = SecretKey {
                namespace: namespace.to_owned(),
                name: r.name.clone(),
            };
            certificates
                .problem(&key)
                .map(|problem| format!("Secret {namespace}/{} {problem}", r.name))
        })
        .collect();
    let resolved = if problems.is_empty() {
        Desired::new(RESOLVED_REFS, true, "ResolvedRefs", "every reference resolved")
    } else {
        Desired::new(RESOLVED_REFS, false, "InvalidCertificateRef", problems.join("; "))
    };
    let local = u16::try_from(listener.port)
        .ok()
        .map(|port| SocketAddr::new(address, port));
    let programmed = if let Some(why) = table.not_served.get(id) {
        Desired::new(
            PROGRAMMED,
            false,
            "Invalid",
            format!("listener {}: {why}", listener.name),
        )
    } else if let Some(failure) = local.and_then(|l| listeners.failure(l)) {
        Desired::new(
            PROGRAMMED,
            false,
            "Pending",
            format!("listener {}: {failure}", listener.name),
        )
    } else {
        let on_last_good = listener.protocol == ListenerProtocol::Https && !problems.is_empty();
        let message = if on_last_good {
            format!(
                "serving on port {} with the last valid certificate",
                listener.port
            )
        } else {
            format!("serving on port {}", listener.port)
        };
        Desired::new(PROGRAMMED, true, "Programmed", message)
    };
    vec![resolved, programmed]
}
