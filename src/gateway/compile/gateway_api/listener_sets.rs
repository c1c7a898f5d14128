//! ListenerSets: listeners added to a Gateway from outside it. The Gateway's `allowedListeners`
//! says which namespaces may add them; those allowed join the Gateway's own listeners on its
//! address, after them and after older sets (creation time, then namespace and name). A listener
//! that conflicts with one that comes first is not accepted; the one first keeps the port.

use std::sync::Arc;

use kube::ResourceExt;

use super::{
    Conflict, FrontendValidation, GatewayReport, ListenerReport, ListenerSetReport, Owner, Resources,
    add_listener, conflict_between, reason, selector_matches,
};
use crate::{
    api::gateway_api::{GROUP, KubeGateway, Listener, ListenerSet},
    controller::conditions::Desired,
    gateway::compile::TableBuilder,
};

/// Whether `set` names `gateway` as its parent.
pub(super) fn parent_is(set: &ListenerSet, gateway: &KubeGateway) -> bool {
    let parent = &set.spec.parent_ref;
    let namespace = parent.namespace.clone().or_else(|| set.namespace());
    parent.group.as_deref().unwrap_or(GROUP) == GROUP
        && parent.kind.as_deref().unwrap_or("Gateway") == "Gateway"
        && parent.name == gateway.name_any()
        && namespace == gateway.namespace()
}

/// Adds the listeners of the ListenerSets whose parent is `gateway` (already added with its own
/// listeners) and says what became of each set; counts the attached ones on the Gateway. The
/// sets' listeners check clients as the Gateway's `frontend` TLS says.
pub(super) fn add(
    builder: &mut TableBuilder<'_>,
    gateway: &mut GatewayReport,
    frontend: &FrontendValidation,
    resources: &Resources<'_>,
) -> Vec<ListenerSetReport> {
    let mut sets: Vec<&Arc<ListenerSet>> = resources
        .listener_sets
        .iter()
        .filter(|set| parent_is(set, &gateway.gateway))
        .collect();
    sets.sort_by_key(|s| (s.creation_timestamp(), s.namespace(), s.name_any()));
    // The listeners served so far on the Gateway's address: its own, then the sets' in order.
    let mut taken: Vec<&Listener> = gateway
        .gateway
        .spec
        .listeners
        .iter()
        .zip(&gateway.listeners)
        .filter(|(_, report)| report.condition(reason::ACCEPTED) && !report.condition(reason::CONFLICTED))
        .map(|(listener, _)| listener)
        .collect();
    let mut reports = Vec::with_capacity(sets.len());
    for set in sets {
        let report = add_set(builder, set, gateway, frontend, &mut taken, resources);
        if report.accepted.status {
            gateway.attached_listener_sets += 1;
        }
        reports.push(report);
    }
    reports
}

fn add_set<'s>(
    builder: &mut TableBuilder<'_>,
    set: &'s Arc<ListenerSet>,
    gateway: &GatewayReport,
    frontend: &FrontendValidation,
    taken: &mut Vec<&'s Listener>,
    resources: &Resources<'_>,
) -> ListenerSetReport {
    let namespace = set.namespace().unwrap_or_default();
    let mut report = ListenerSetReport {
        set: set.clone(),
        address: gateway.address,
        accepted: Desired::new(reason::ACCEPTED, true, reason::ACCEPTED, "accepted"),
        listeners: Vec::new(),
    };
    if !allowed(&gateway.gateway, &namespace, resources) {
        report.accepted = Desired::new(
            reason::ACCEPTED,
            false,
            reason::NOT_ALLOWED,
            "the Gateway's allowedListeners do not take ListenerSets of this namespace",
        );
        return report;
    }
    if !gateway.accepted.status {
        report.accepted = Desired::new(
            reason::ACCEPTED,
            false,
            reason::PARENT_NOT_ACCEPTED,
            "the Gateway is not accepted",
        );
        return report;
    }
    let owner = Owner {
        kind: "ListenerSet",
        namespace: &namespace,
        address: gateway.address,
        frontend,
    };
    for listener in &set.spec.listeners {
        let conflict = taken
            .iter()
            .find_map(|first| conflict_between(listener, first))
            .map_or(Conflict::None, Conflict::Outranked);
        let listener_report = add_listener(
            builder,
            listener,
            listener_id(set, listener),
            &owner,
            conflict,
            resources,
        );
        if listener_report.condition(reason::ACCEPTED) {
            taken.push(listener);
        }
        report.listeners.push(listener_report);
    }
    if !report.listeners.iter().any(ListenerReport::valid) {
        report.accepted = Desired::new(
            reason::ACCEPTED,
            false,
            reason::LISTENERS_NOT_VALID,
            "no listener of the set is valid",
        );
    }
    report
}

/// Whether the Gateway's `allowedListeners` takes ListenerSets of `namespace` (by default, none).
fn allowed(gateway: &KubeGateway, namespace: &str, resources: &Resources<'_>) -> bool {
    let from = gateway
        .spec
        .allowed_listeners
        .as_ref()
        .and_then(|a| a.namespaces.as_ref());
    match from.and_then(|n| n.from.as_deref()).unwrap_or("None") {
        "All" => true,
        "Same" => gateway.namespace().as_deref() == Some(namespace),
        "Selector" => {
            let Some(selector) = from.and_then(|n| n.selector.as_ref()) else {
                return false;
            };
            let labels = resources
                .namespaces
                .iter()
                .find(|n| n.name_any() == namespace)
                .map(|n| n.labels().clone())
                .unwrap_or_default();
            selector_matches(selector, &labels)
        }
        _ => false,
    }
}

/// How the table names a ListenerSet's listener (its name is unique in the set only).
fn listener_id(set: &ListenerSet, listener: &Listener) -> Arc<str> {
    format!(
        "{GROUP}/{}/listenersets/{}/{}",
        set.namespace().unwrap_or_default(),
        set.name_any(),
        listener.name
    )
    .into()
}
