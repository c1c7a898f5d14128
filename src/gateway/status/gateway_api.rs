//! Publishes what the Gateway API front end decided (see `compile::gateway_api::Report`): each
//! GatewayClass's Accepted and supported features, each Gateway's addresses, conditions and
//! listeners, each ListenerSet's conditions and listeners, and each HTTPRoute's parents. Written
//! after the table is in place and the listeners are bound, so that Programmed and Accepted never
//! run ahead of the data plane; and only when something changed.

use k8s_openapi::{api::core::v1::Service, jiff::Timestamp};
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams},
};
use serde::Serialize;

use crate::{
    api::gateway_api::{
        CONTROLLER_NAME, GatewayAddress, GatewayClass, GatewayClassStatus, HTTPRoute, KubeGateway,
        KubeGatewayStatus, ListenerSet, ListenerSetStatus, ListenerStatus, ParentReference,
        RouteParentStatus, SupportedFeature,
    },
    controller::conditions::{Desired, merge},
    gateway::{
        compile::gateway_api::{
            GatewayReport, ListenerReport, ListenerSetReport, Report, SUPPORTED_FEATURES, reason,
        },
        listen::Listeners,
    },
};

/// Writes every status in `report` that differs from what its object shows. `published`: the
/// addresses of the Service clients reach the gateway through, which every Gateway publishes
/// instead of the address it listens on (`None`: no such Service; each publishes its own).
pub async fn report(
    client: &Client,
    report: &Report,
    listeners: &Listeners,
    published: Option<&[GatewayAddress]>,
) {
    let now = Timestamp::now();
    for class in &report.classes {
        write_class(client, class, now).await;
    }
    for gateway in &report.gateways {
        write_gateway(client, gateway, listeners, published, now).await;
    }
    for set in &report.listener_sets {
        write_listener_set(client, set, listeners, now).await;
    }
    for route in &report.routes {
        write_route(client, &route.route, &route.parents, now).await;
    }
}

async fn write_class(client: &Client, class: &GatewayClass, now: Timestamp) {
    let current = class.status.clone().unwrap_or_default();
    let status = GatewayClassStatus {
        conditions: merge(
            &current.conditions,
            vec![Desired::new(
                reason::ACCEPTED,
                true,
                reason::ACCEPTED,
                format!("served by {CONTROLLER_NAME}"),
            )],
            class.metadata.generation,
            now,
        ),
        supported_features: SUPPORTED_FEATURES
            .iter()
            .map(|name| SupportedFeature {
                name: (*name).to_owned(),
            })
            .collect(),
    };
    let api: Api<GatewayClass> = Api::all(client.clone());
    patch_if_changed(&api, &class.name_any(), &current, &status).await;
}

/// Where clients reach `service`: its load balancer's ingress points once it has them, else
/// its cluster IPs (none for a headless Service).
pub fn service_addresses(service: &Service) -> Vec<GatewayAddress> {
    let ingress = service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .map(|ingress| {
            ingress
                .iter()
                .filter_map(|point| match (&point.ip, &point.hostname) {
                    (Some(ip), _) => Some(address("IPAddress", ip)),
                    (None, Some(hostname)) => Some(address("Hostname", hostname)),
                    (None, None) => None,
                })
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    if !ingress.is_empty() {
        return ingress;
    }
    let spec = service.spec.as_ref();
    let cluster_ips = spec
        .and_then(|s| s.cluster_ips.clone())
        .or_else(|| spec.and_then(|s| s.cluster_ip.clone()).map(|ip| vec![ip]))
        .unwrap_or_default();
    cluster_ips
        .iter()
        .filter(|ip| ip.parse::<std::net::IpAddr>().is_ok())
        .map(|ip| address("IPAddress", ip))
        .collect()
}

fn address(type_: &str, value: &str) -> GatewayAddress {
    GatewayAddress {
        type_: Some(type_.to_owned()),
        value: value.to_owned(),
    }
}

/// The status of each listener in `reports`, Programmed where its address is bound; and how
/// many are.
fn listener_statuses(
    reports: &[ListenerReport],
    current: &[ListenerStatus],
    listeners: &Listeners,
    generation: Option<i64>,
    now: Timestamp,
) -> (Vec<ListenerStatus>, usize) {
    let mut statuses = Vec::with_capacity(reports.len());
    let mut bound = 0;
    for listener in reports {
        let failure = listener.local.and_then(|local| listeners.failure(local));
        let not_programmed = |message: String| {
            Desired::new(reason::PROGRAMMED, false, listener.not_programmed_reason, message)
        };
        let programmed = match (listener.local, failure, &listener.not_served) {
            (Some(_), None, _) => {
                bound += 1;
                Desired::new(reason::PROGRAMMED, true, reason::PROGRAMMED, "serving")
            }
            (_, Some(failure), _) => Desired::new(reason::PROGRAMMED, false, reason::INVALID, failure),
            (None, None, Some(why)) => not_programmed(why.clone()),
            (None, None, None) => not_programmed("not served".to_owned()),
        };
        let mut desired: Vec<Desired> = listener
            .conditions
            .iter()
            .map(|d| Desired::new(d.type_, d.status, d.reason, d.message.clone()))
            .collect();
        desired.push(programmed);
        let previous = current
            .iter()
            .find(|l| l.name == listener.name)
            .map(|l| l.conditions.as_slice())
            .unwrap_or_default();
        statuses.push(ListenerStatus {
            name: listener.name.clone(),
            supported_kinds: listener.supported_kinds.clone(),
            attached_routes: listener.attached_routes,
            conditions: merge(previous, desired, generation, now),
        });
    }
    (statuses, bound)
}

async fn write_gateway(
    client: &Client,
    report: &GatewayReport,
    listeners: &Listeners,
    published: Option<&[GatewayAddress]>,
    now: Timestamp,
) {
    let gateway: &KubeGateway = &report.gateway;
    let generation = gateway.metadata.generation;
    let current = gateway.status.clone().unwrap_or_default();
    let (listener_statuses, bound) =
        listener_statuses(&report.listeners, &current.listeners, listeners, generation, now);
    let programmed = match (report.accepted.status, report.address) {
        (false, _) => Desired::new(
            reason::PROGRAMMED,
            false,
            reason::INVALID,
            "the Gateway is not accepted",
        ),
        (true, None) => match &report.address_not_usable {
            Some(why) => Desired::new(reason::PROGRAMMED, false, reason::ADDRESS_NOT_USABLE, why.clone()),
            None => Desired::new(
                reason::PROGRAMMED,
                false,
                reason::ADDRESS_NOT_ASSIGNED,
                "no address is free for this Gateway",
            ),
        },
        (true, Some(address)) if bound == 0 && !report.listeners.is_empty() => Desired::new(
            reason::PROGRAMMED,
            false,
            reason::INVALID,
            format!("no listener is served on {address}"),
        ),
        (true, Some(address)) => Desired::new(
            reason::PROGRAMMED,
            true,
            reason::PROGRAMMED,
            format!("serving on {address}"),
        ),
    };
    let accepted = Desired::new(
        report.accepted.type_,
        report.accepted.status,
        report.accepted.reason,
        report.accepted.message.clone(),
    );
    let addresses = match published {
        Some(published) => published.to_vec(),
        None => report
            .address
            .map(|listening| address("IPAddress", &listening.to_string()))
            .into_iter()
            .collect(),
    };
    let mut conditions = vec![accepted, programmed];
    // Present only while the Gateway lets clients in without a valid certificate.
    if let Some(why) = &report.insecure_frontend_validation {
        conditions.push(Desired::new(
            reason::INSECURE_FRONTEND_VALIDATION_MODE,
            true,
            reason::CONFIGURATION_CHANGED,
            why.clone(),
        ));
    }
    let status = KubeGatewayStatus {
        addresses,
        conditions: merge(&current.conditions, conditions, generation, now),
        listeners: listener_statuses,
        attached_listener_sets: Some(report.attached_listener_sets),
    };
    let api: Api<KubeGateway> = Api::namespaced(client.clone(), &gateway.namespace().unwrap_or_default());
    patch_if_changed(&api, &gateway.name_any(), &current, &status).await;
}

async fn write_listener_set(
    client: &Client,
    report: &ListenerSetReport,
    listeners: &Listeners,
    now: Timestamp,
) {
    let set: &ListenerSet = &report.set;
    let generation = set.metadata.generation;
    let current = set.status.clone().unwrap_or_default();
    let (listener_statuses, bound) =
        listener_statuses(&report.listeners, &current.listeners, listeners, generation, now);
    let accepted = &report.accepted;
    let programmed = if !accepted.status {
        Desired::new(
            reason::PROGRAMMED,
            false,
            accepted.reason,
            accepted.message.clone(),
        )
    } else if bound == 0 {
        Desired::new(
            reason::PROGRAMMED,
            false,
            reason::PENDING,
            match report.address {
                Some(address) => format!("no listener is served on {address}"),
                None => "the Gateway has no address yet".to_owned(),
            },
        )
    } else {
        Desired::new(
            reason::PROGRAMMED,
            true,
            reason::PROGRAMMED,
            format!("{bound} of {} listeners served", report.listeners.len()),
        )
    };
    let accepted = Desired::new(
        accepted.type_,
        accepted.status,
        accepted.reason,
        accepted.message.clone(),
    );
    let status = ListenerSetStatus {
        conditions: merge(&current.conditions, vec![accepted, programmed], generation, now),
        listeners: listener_statuses,
    };
    let api: Api<ListenerSet> = Api::namespaced(client.clone(), &set.namespace().unwrap_or_default());
    patch_if_changed(&api, &set.name_any(), &current, &status).await;
}

async fn write_route(
    client: &Client,
    route: &HTTPRoute,
    parents: &[(ParentReference, Vec<Desired>)],
    now: Timestamp,
) {
    let generation = route.metadata.generation;
    let current = route.status.clone().unwrap_or_default();
    // Other controllers' entries stay as they are.
    let mut statuses: Vec<RouteParentStatus> = current
        .parents
        .iter()
        .filter(|p| p.controller_name != CONTROLLER_NAME)
        .cloned()
        .collect();
    for (parent, conditions) in parents {
        let previous = current
            .parents
            .iter()
            .find(|p| p.controller_name == CONTROLLER_NAME && p.parent_ref == *parent)
            .map(|p| p.conditions.as_slice())
            .unwrap_or_default();
        let desired = conditions
            .iter()
            .map(|d| Desired::new(d.type_, d.status, d.reason, d.message.clone()))
            .collect();
        statuses.push(RouteParentStatus {
            parent_ref: parent.clone(),
            controller_name: CONTROLLER_NAME.to_owned(),
            conditions: merge(previous, desired, generation, now),
        });
    }
    let status = crate::api::gateway_api::HttpRouteStatus { parents: statuses };
    let api: Api<HTTPRoute> = Api::namespaced(client.clone(), &route.namespace().unwrap_or_default());
    patch_if_changed(&api, &route.name_any(), &current, &status).await;
}

/// Patches `name`'s status to `desired` unless it already says that (transition times come
/// from the current conditions, so an unchanged status compares equal).
async fn patch_if_changed<K, S>(api: &Api<K>, name: &str, current: &S, desired: &S)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    S: Serialize,
{
    let (Ok(current), Ok(desired)) = (serde_json::to_value(current), serde_json::to_value(desired)) else {
        return;
    };
    if current == desired {
        return;
    }
    let patch = serde_json::json!({ "status": desired });
    if let Err(error) = api
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        tracing::warn!(%name, %error, "could not write a Gateway API status");
    }
}
