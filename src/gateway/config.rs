//! Compiles Gateway resources, Microservice traffic policies and the registry's endpoints into
//! one immutable [`RouteTable`]. The gateway swaps in a whole new table per change, so a request
//! always sees one consistent configuration.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, atomic::AtomicUsize},
    time::Duration,
};

use kube::ResourceExt;

use super::{
    balance::Pool,
    outlier::Ejection,
    retry::RetryBudget,
    router::{HostPattern, RequestMatch, method_of},
};
use crate::{
    api::{
        Gateway,
        policy::{LoadBalancerPolicy, RetryPolicy, TrafficPolicy},
    },
    discovery::{Registry, ServiceKey},
};

/// What a request's consistent-hash key is taken from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashOn {
    Header(http::HeaderName),
    Cookie(String),
    SourceIp,
}

/// One Microservice as routes send to it: its endpoints' pool and its hash key.
#[derive(Debug)]
pub struct Upstream {
    pub service: ServiceKey,
    pub pool: Pool,
    pub hash_on: Option<HashOn>,
    pub ejection: Ejection,
    /// `circuitBreaker.maxRequests`: more in flight at once are answered 503 at once.
    pub max_requests: usize,
    /// Requests in flight to this Microservice, shared with the upstreams that replace this one.
    pub in_flight: Arc<AtomicUsize>,
}

#[derive(Debug)]
pub struct Backend {
    pub upstream: Arc<Upstream>,
    pub weight: u32,
}

#[derive(Debug)]
pub struct Route {
    /// `namespace/gateway/route`, for logs and metrics.
    pub id: String,
    pub hostnames: Vec<HostPattern>,
    pub matches: Vec<RequestMatch>,
    pub backends: Vec<Backend>,
    pub total_weight: u32,
    pub timeout: Option<Duration>,
    pub retry: Option<RetryPolicy>,
    pub budget: Arc<RetryBudget>,
}

/// A route as one listener serves it: the listener's hostnames must match too.
#[derive(Debug)]
pub struct Attached {
    pub listener_hostnames: Vec<HostPattern>,
    pub route: Arc<Route>,
}

/// Everything the data plane needs, per listener port, routes in the order they are tried.
#[derive(Debug, Default)]
pub struct RouteTable {
    pub listeners: BTreeMap<u16, Vec<Attached>>,
    upstreams: HashMap<ServiceKey, Arc<Upstream>>,
    budgets: HashMap<String, Arc<RetryBudget>>,
}

impl RouteTable {
    pub fn upstream(&self, key: &ServiceKey) -> Option<&Arc<Upstream>> {
        self.upstreams.get(key)
    }
}

/// Builds the table. `policies` holds each known Microservice's traffic policy; `previous`
/// lends its endpoint state and retry budgets to what stays.
pub fn compile(
    gateways: &[Arc<Gateway>],
    policies: &HashMap<ServiceKey, TrafficPolicy>,
    registry: &Registry,
    previous: Option<&RouteTable>,
) -> RouteTable {
    let mut table = RouteTable::default();
    let mut gateways: Vec<_> = gateways.iter().collect();
    gateways.sort_by_key(|g| (g.namespace(), g.name_any()));
    for gateway in gateways {
        let namespace = gateway.namespace().unwrap_or_default();
        let spec = &gateway.spec;
        for route in &spec.routes {
            let id = format!("{namespace}/{}/{}", gateway.name_any(), route.name);
            let retry = route
                .retry
                .clone()
                .or_else(|| spec.defaults.as_ref().and_then(|d| d.retry.clone()));
            let budget = retry.as_ref().map(|r| {
                previous
                    .and_then(|p| p.budgets.get(&id))
                    .cloned()
                    .unwrap_or_else(|| {
                        let percent = u32::try_from(r.budget.percent).unwrap_or(0);
                        let floor = u32::try_from(r.budget.min_per_second).unwrap_or(0);
                        Arc::new(RetryBudget::new(percent, floor))
                    })
            });
            let budget = budget.unwrap_or_else(|| Arc::new(RetryBudget::new(0, 0)));
            table.budgets.insert(id.clone(), budget.clone());
            let backends: Vec<Backend> = route
                .backends
                .iter()
                .filter(|b| b.weight > 0)
                .map(|b| {
                    let key = ServiceKey::new(&namespace, &b.microservice);
                    let upstream = table
                        .upstreams
                        .entry(key.clone())
                        .or_insert_with(|| Arc::new(upstream(&key, policies.get(&key), registry, previous)))
                        .clone();
                    Backend {
                        upstream,
                        weight: u32::try_from(b.weight).unwrap_or(0),
                    }
                })
                .collect();
            let compiled = Arc::new(Route {
                id,
                hostnames: route.hostnames.iter().map(|h| HostPattern::parse(h)).collect(),
                matches: route.matches.iter().map(compile_match).collect(),
                total_weight: backends.iter().map(|b| b.weight).sum(),
                backends,
                timeout: route
                    .timeout
                    .or_else(|| spec.defaults.as_ref().and_then(|d| d.timeout))
                    .map(|d| d.get()),
                retry,
                budget,
            });
            for listener in &spec.listeners {
                if !route.listeners.is_empty() && !route.listeners.contains(&listener.name) {
                    continue;
                }
                let Ok(port) = u16::try_from(listener.port) else {
                    continue;
                };
                table.listeners.entry(port).or_default().push(Attached {
                    listener_hostnames: listener.hostnames.iter().map(|h| HostPattern::parse(h)).collect(),
                    route: compiled.clone(),
                });
            }
        }
        // A listener with no routes still listens (and answers 404).
        for listener in &spec.listeners {
            if let Ok(port) = u16::try_from(listener.port) {
                table.listeners.entry(port).or_default();
            }
        }
    }
    table
}

fn upstream(
    key: &ServiceKey,
    policy: Option<&TrafficPolicy>,
    registry: &Registry,
    previous: Option<&RouteTable>,
) -> Upstream {
    let default_policy = TrafficPolicy::default();
    let policy = policy.unwrap_or(&default_policy);
    let snapshot = registry.snapshot(key);
    let ready: Vec<_> = snapshot.ready().cloned().collect();
    let previous_pool = previous.and_then(|p| p.upstreams.get(key)).map(|u| &u.pool);
    let hash_on = match (
        &policy.load_balancer.policy,
        &policy.load_balancer.consistent_hash,
    ) {
        (LoadBalancerPolicy::ConsistentHash, Some(hash)) => {
            if let Some(header) = hash
                .header
                .as_deref()
                .and_then(|h| http::HeaderName::try_from(h).ok())
            {
                Some(HashOn::Header(header))
            } else if let Some(cookie) = &hash.cookie {
                Some(HashOn::Cookie(cookie.clone()))
            } else {
                Some(HashOn::SourceIp)
            }
        }
        _ => None,
    };
    let in_flight = previous
        .and_then(|p| p.upstreams.get(key))
        .map(|u| u.in_flight.clone())
        .unwrap_or_default();
    Upstream {
        service: key.clone(),
        pool: Pool::new(policy.load_balancer.policy, &ready, previous_pool),
        hash_on,
        ejection: Ejection::from(&policy.outlier_detection),
        max_requests: usize::try_from(policy.circuit_breaker.max_requests).unwrap_or(usize::MAX),
        in_flight,
    }
}

fn compile_match(m: &crate::api::gateway::RouteMatch) -> RequestMatch {
    RequestMatch {
        path: m.path.as_ref().map(|p| (p.kind, p.value.clone())),
        method: m.method.map(method_of),
        headers: m
            .headers
            .iter()
            .filter_map(|h| {
                Some((
                    http::HeaderName::try_from(h.name.to_ascii_lowercase()).ok()?,
                    h.value.clone(),
                ))
            })
            .collect(),
    }
}
