//! The registry as the admin port shows it: per upstream (each Microservice, each Service port
//! the Gateway API routes to), its endpoints with where they run, their readiness, whether the
//! balancer has them in rotation or ejected (and until when), their requests in flight and the
//! latency estimate it balances by.

use std::{collections::BTreeMap, net::SocketAddr};

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde::Serialize;

use super::Live;
use crate::{
    api::policy::LoadBalancerPolicy,
    discovery::{Endpoint, Registry, ServiceKey, Snapshot},
    gateway::{
        balance::{EndpointState, clock_us},
        table::{RouteTable, Upstream, UpstreamKey},
    },
};

/// The whole registry at one version.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistryView {
    /// Changes whenever an upstream or an endpoint's readiness or ejection changes; requests in
    /// flight and latency are read when asked and do not change it.
    pub version: u64,
    pub upstreams: Vec<UpstreamView>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UpstreamView {
    /// `Microservice`, or `Service` (one port of a Kubernetes Service, a Gateway API backend).
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    /// The Service port (for a `Service`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Whether a route of the live table sends to it.
    pub routed: bool,
    /// How the gateway balances over it (when routed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancerPolicy>,
    pub endpoints: Vec<EndpointView>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointView {
    /// The Pod (for a Service's endpoint without a Pod reference: its address).
    pub pod: String,
    /// `ip:port`, where the gateway sends.
    pub address: SocketAddr,
    pub node: Option<String>,
    pub zone: Option<String>,
    /// Kubernetes says it is ready (and it is not terminating).
    pub ready: bool,
    /// The balancer's live table has it (ejected or not).
    pub in_rotation: bool,
    /// Outlier detection has it out of rotation now.
    pub ejected: bool,
    /// When the current ejection ends (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ejected_until: Option<String>,
    /// Times ejected so far (each ejection lasts longer).
    pub ejections: u32,
    pub consecutive_failures: u32,
    pub in_flight: usize,
    /// PeakEwma's latency estimate (`null`: nothing observed; only PeakEwma observes).
    pub latency_ms: Option<f64>,
}

impl EndpointView {
    /// An endpoint the registry knows but the live table does not balance over.
    fn known(endpoint: &Endpoint) -> Self {
        Self {
            pod: endpoint.pod.to_string(),
            address: SocketAddr::new(endpoint.ip, endpoint.port),
            node: endpoint.node.as_deref().map(str::to_owned),
            zone: endpoint.zone.as_deref().map(str::to_owned),
            ready: endpoint.ready,
            in_rotation: false,
            ejected: false,
            ejected_until: None,
            ejections: 0,
            consecutive_failures: 0,
            in_flight: 0,
            latency_ms: None,
        }
    }

    /// An endpoint of a pool, as the balancer sees it at `now` (microseconds of [`clock_us`]).
    pub fn balanced(state: &EndpointState, now: u64) -> Self {
        let until = state.ejected_until_us();
        let ejected = until > now;
        let ejected_until = ejected.then(|| {
            let left = SignedDuration::from_micros(i64::try_from(until - now).unwrap_or(i64::MAX));
            Timestamp::now()
                .checked_add(left)
                .map(|t| t.to_string())
                .unwrap_or_default()
        });
        Self {
            pod: state.pod.to_string(),
            address: state.addr,
            node: state.node.as_deref().map(str::to_owned),
            zone: state.zone.as_deref().map(str::to_owned),
            ready: true,
            in_rotation: true,
            ejected,
            ejected_until,
            ejections: state.ejections(),
            consecutive_failures: state.consecutive_failures(),
            in_flight: state.in_flight(),
            latency_ms: state.latency().map(|l| l.as_secs_f64() * 1000.0),
        }
    }
}

/// The registry at the version `version` (read before the state, so that a client that asks
/// again with it hears of any change after).
pub fn view(live: &Live, version: u64) -> RegistryView {
    let table = live.table().load();
    let mut upstreams = upstreams_of(&table);
    // The registry's readiness is newer than the table's (the table is rebuilt from it), and it
    // knows the endpoints that are not ready, which no pool holds.
    for (key, snapshot) in live.registry().snapshots() {
        let entry = upstreams
            .entry((0, key.clone(), 0))
            .or_insert_with(|| unrouted(&key));
        merge(&mut entry.endpoints, &snapshot);
    }
    let mut upstreams: Vec<UpstreamView> = upstreams
        .into_values()
        .filter(|u| u.routed || !u.endpoints.is_empty())
        .collect();
    for upstream in &mut upstreams {
        upstream
            .endpoints
            .sort_by(|a, b| (&a.pod, a.address).cmp(&(&b.pod, b.address)));
    }
    RegistryView { version, upstreams }
}

/// The upstreams of `table`, by kind (Microservices first), service and port.
fn upstreams_of(table: &RouteTable) -> BTreeMap<(u8, ServiceKey, u16), UpstreamView> {
    let now = clock_us();
    table
        .upstreams
        .iter()
        .map(|(key, upstream)| {
            let (kind, order, port) = match key {
                UpstreamKey::Microservice(_) => ("Microservice", 0, None),
                UpstreamKey::ServicePort(_, port) => ("Service", 1, Some(*port)),
            };
            let view = UpstreamView {
                kind,
                namespace: upstream.service.namespace.to_string(),
                name: upstream.service.name.to_string(),
                port,
                routed: true,
                load_balancer: Some(upstream.pool.policy()),
                endpoints: upstream
                    .pool
                    .endpoints()
                    .iter()
                    .map(|e| EndpointView::balanced(e, now))
                    .collect(),
            };
            ((order, upstream.service.clone(), port.unwrap_or(0)), view)
        })
        .collect()
}

fn unrouted(key: &ServiceKey) -> UpstreamView {
    UpstreamView {
        kind: "Microservice",
        namespace: key.namespace.to_string(),
        name: key.name.to_string(),
        port: None,
        routed: false,
        load_balancer: None,
        endpoints: Vec::new(),
    }
}

/// What the registry says of a Microservice's endpoints, merged into what its pool says: the
/// registry's readiness is newer than the table's (the table is rebuilt from it), and it knows
/// the endpoints that are not ready, which no pool holds.
fn merge(endpoints: &mut Vec<EndpointView>, snapshot: &Snapshot) {
    for endpoint in &snapshot.endpoints {
        let address = SocketAddr::new(endpoint.ip, endpoint.port);
        match endpoints
            .iter_mut()
            .find(|e| e.pod == *endpoint.pod && e.address == address)
        {
            Some(balanced) => {
                balanced.ready = endpoint.ready;
                balanced.node = endpoint.node.as_deref().map(str::to_owned);
            }
            None => endpoints.push(EndpointView::known(endpoint)),
        }
    }
}

/// The endpoints of `upstream` (keyed `key` in its table) as the balancer sees them now, with
/// the registry's word on a Microservice's.
pub fn endpoints_of(key: &UpstreamKey, upstream: &Upstream, registry: &Registry) -> Vec<EndpointView> {
    let now = clock_us();
    let mut endpoints: Vec<EndpointView> = upstream
        .pool
        .endpoints()
        .iter()
        .map(|e| EndpointView::balanced(e, now))
        .collect();
    if let UpstreamKey::Microservice(service) = key {
        merge(&mut endpoints, &registry.snapshot(service));
    }
    endpoints.sort_by(|a, b| (&a.pod, a.address).cmp(&(&b.pod, b.address)));
    endpoints
}
