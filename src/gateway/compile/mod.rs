//! Front ends: resources in, one [`RouteTable`] out. Each front end (today the `microgate.dev`
//! Gateway, in [`microgate`]) reads its own resources and speaks to the table through a
//! [`TableBuilder`], which owns what every front end shares: placing listeners on ports and TLS,
//! building each backend's upstream from the registry, and carrying live state over from the
//! previous table. The request path never sees a front end, only the table.

pub mod access;
pub mod addresses;
pub mod gateway_api;
pub mod microgate;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::SocketAddr,
    sync::Arc,
};

use rustls::server::ServerSessionMemoryCache;

use super::{
    balance::{Pool, outlier::Ejection},
    metrics::{GatewayMetrics, RouteMetrics},
    policy::{
        access::{AccessControl, AccessMetrics},
        client_ip::TrustedProxies,
        cors::Cors,
        path::PathPolicy,
    },
    retry::RetryBudget,
    table::{
        Attached, DEFAULT_MAX_CONNECTIONS, HashOn, HostPattern, RouteAccess, RouteTable, Upstream,
        UpstreamKey,
    },
    tls::{self, CertificateStore, ClientAuth, SecretKey, TlsListener, TlsPort},
    upstream::CircuitBreaker,
};
use crate::{
    api::{
        gateway::TlsVersion,
        microservice::Protocol,
        policy::{LoadBalancerPolicy, RetryPolicy, TrafficPolicy},
    },
    discovery::{Endpoint, Registry, ServiceKey},
};

/// TLS sessions each HTTPS listener remembers for resumption.
const TLS_SESSIONS_PER_LISTENER: usize = 1024;

/// What the gateway needs of a Microservice's spec.
#[derive(Clone, Debug, Default)]
pub struct ServiceSettings {
    pub traffic: TrafficPolicy,
    pub protocol: Protocol,
    /// The endpoints take WebSocket upgrades.
    pub websocket: bool,
}

impl ServiceSettings {
    /// What the gateway takes from `microservice`'s spec.
    pub fn of(microservice: &crate::api::Microservice) -> Self {
        Self {
            traffic: microservice.spec.traffic_policy.clone(),
            protocol: microservice.spec.protocol,
            websocket: false,
        }
    }
}

/// One listener as a front end declares it, in the table's terms.
pub struct ListenerSettings {
    /// How the table, connections and status name the listener (unique per table).
    pub id: Arc<str>,
    /// Where it listens: an address and a port.
    pub local: SocketAddr,
    pub hostnames: Vec<HostPattern>,
    /// Set for an HTTPS listener: its certificates and lowest TLS version.
    pub tls: Option<ListenerTls>,
    pub trusted_proxies: Option<TrustedProxies>,
    pub path_policy: PathPolicy,
    /// `None`: [`DEFAULT_MAX_CONNECTIONS`].
    pub max_connections: Option<usize>,
}

/// The TLS side of an HTTPS listener.
pub struct ListenerTls {
    pub certificates: Vec<SecretKey>,
    pub min_version: TlsVersion,
    /// Set when the listener checks its clients' certificates.
    pub client_auth: Option<ClientAuth>,
}

/// The ports of a table being compiled, by protocol.
#[derive(Default)]
struct Ports {
    plain: BTreeSet<SocketAddr>,
    /// The hostnames of each plain-HTTP listener, by address.
    plain_hostnames: BTreeMap<SocketAddr, Vec<Vec<HostPattern>>>,
    tls: BTreeMap<SocketAddr, TlsPort>,
}

/// Builds one table from any front end's listeners and routes; see the module's documentation.
pub struct TableBuilder<'a> {
    table: RouteTable,
    ports: Ports,
    services: &'a HashMap<ServiceKey, ServiceSettings>,
    registry: &'a Registry,
    metrics: &'a GatewayMetrics,
    certificates: &'a CertificateStore,
    previous: Option<&'a RouteTable>,
    ejections: Option<Arc<tokio::sync::Notify>>,
    access_policies: Option<&'a access::AccessPolicies>,
}

impl<'a> TableBuilder<'a> {
    /// `services` holds what each known Microservice's spec says; `previous` lends its endpoint
    /// state, retry budgets and TLS sessions to what stays.
    pub fn new(
        services: &'a HashMap<ServiceKey, ServiceSettings>,
        registry: &'a Registry,
        metrics: &'a GatewayMetrics,
        certificates: &'a CertificateStore,
        previous: Option<&'a RouteTable>,
    ) -> Self {
        Self {
            table: RouteTable::default(),
            ports: Ports::default(),
            services,
            registry,
            metrics,
            certificates,
            previous,
            ejections: None,
            access_policies: None,
        }
    }

    /// Every upstream's pool tells `notify` of its ejections (see [`Pool::signal_ejections`]).
    pub fn signal_ejections(&mut self, notify: Arc<tokio::sync::Notify>) {
        self.ejections = Some(notify);
    }

    /// The AccessPolicies routes may name (without them, a route naming one refuses every
    /// request).
    pub fn with_access_policies(mut self, policies: &'a access::AccessPolicies) -> Self {
        self.access_policies = Some(policies);
        self
    }

    /// What route `route` gets of the AccessPolicy `namespace/name` it names: its checks, and
    /// its CORS policy if it has one. A policy that does not exist refuses every request.
    pub fn access_policy(&mut self, route: &str, namespace: &str, name: &str) -> (RouteAccess, Option<Cors>) {
        let id = format!("{namespace}/{name}");
        self.table
            .access_policies
            .entry(id.clone())
            .or_default()
            .push(route.to_owned());
        let found = self.access_policies.and_then(|p| p.get(namespace, name));
        let (control, cors) = match found {
            Some(policy) => (policy.control.clone(), policy.cors()),
            None => {
                let why = format!("AccessPolicy {id} does not exist");
                (Arc::new(AccessControl::refusing(id.into(), why)), None)
            }
        };
        let metrics = AccessMetrics::new(self.metrics, route);
        (RouteAccess { control, metrics }, cors)
    }

    /// Whether the AccessPolicy `namespace/name` exists; a route naming one that does not
    /// refuses its requests (see [`Self::access_policy`]).
    pub fn access_policy_exists(&self, namespace: &str, name: &str) -> bool {
        self.access_policies
            .is_some_and(|p| p.get(namespace, name).is_some())
    }

    /// An access check for route `route` that refuses every request, saying `why`.
    pub fn refusing_access(&mut self, route: &str, why: String) -> (RouteAccess, Option<Cors>) {
        let control = Arc::new(AccessControl::refusing(route.into(), why));
        let metrics = AccessMetrics::new(self.metrics, route);
        (RouteAccess { control, metrics }, None)
    }

    /// Serves `listener` on its port, or records why it cannot be served (a port another
    /// protocol holds, hostnames another HTTPS listener of the port holds, no valid certificate)
    /// and returns that reason. Listeners placed earlier keep a contested port.
    pub fn listener(&mut self, listener: ListenerSettings) -> Result<(), String> {
        let placed = self.place(&listener);
        if let Err(why) = &placed {
            tracing::warn!(listener = %listener.id, %why, "listener not served");
            self.table.not_served.insert(listener.id.to_string(), why.clone());
            return placed;
        }
        let (id, local) = (listener.id, listener.local);
        // A listener with no routes still listens (and answers 404).
        self.table.listeners.entry(local).or_default();
        let limit = listener
            .max_connections
            .filter(|n| *n > 0)
            .unwrap_or(DEFAULT_MAX_CONNECTIONS);
        *self.table.max_connections.entry(local).or_default() += limit;
        if let Some(trusted) = listener.trusted_proxies {
            self.table
                .trusted_proxies
                .entry(local)
                .or_default()
                .push((id.clone(), trusted));
        }
        if listener.path_policy != PathPolicy::default() {
            self.table
                .path_policies
                .entry(local)
                .or_default()
                .push((id, listener.path_policy));
        }
        Ok(())
    }

    /// Records a listener the front end itself refused, and why.
    pub fn not_served(&mut self, id: &str, why: String) {
        tracing::warn!(listener = %id, %why, "listener not served");
        self.table.not_served.insert(id.to_owned(), why);
    }

    /// Places the listener on its port: a plain-HTTP port, or one HTTPS listener among those of
    /// its port. Fails with the reason the listener cannot be served.
    fn place(&mut self, listener: &ListenerSettings) -> Result<(), String> {
        let (id, local) = (&listener.id, listener.local);
        let port = local.port();
        let Some(tls) = &listener.tls else {
            if self.ports.tls.contains_key(&local) {
                return Err(format!("port {port} already serves HTTPS for another listener"));
            }
            self.ports.plain.insert(local);
            self.ports
                .plain_hostnames
                .entry(local)
                .or_default()
                .push(listener.hostnames.clone());
            return Ok(());
        };
        if self.ports.plain.contains(&local) {
            return Err(format!(
                "port {port} already serves plain HTTP for another listener"
            ));
        }
        let keys: Vec<_> = tls
            .certificates
            .iter()
            .filter_map(|secret| self.certificates.certificate(secret))
            .collect();
        if keys.is_empty() {
            return Err("none of its certificate Secrets has held a valid certificate".to_owned());
        }
        let hostnames = listener.hostnames.clone();
        let port_listeners = self.ports.tls.entry(local).or_default();
        if let Some(taken) = port_listeners.listeners.iter().find(|other| {
            (other.hostnames.is_empty() && hostnames.is_empty())
                || other.hostnames.iter().any(|h| hostnames.contains(h))
        }) {
            return Err(format!(
                "listener {} already serves these hostnames on port {port}",
                taken.id
            ));
        }
        let previous_listener = self.previous.and_then(|p| p.tls_listener(id));
        // A resumed session skips the client certificate check: once the listener checks its
        // clients differently, the sessions from before are forgotten.
        let sessions_kept = previous_listener.is_none_or(|old| old.client_auth == tls.client_auth);
        let session_cache = self
            .previous
            .filter(|_| sessions_kept)
            .and_then(|p| p.tls_sessions.get(id))
            .cloned()
            .unwrap_or_else(|| ServerSessionMemoryCache::new(TLS_SESSIONS_PER_LISTENER));
        self.table.tls_sessions.insert(id.clone(), session_cache.clone());
        // An unchanged listener keeps its configuration.
        let reused = previous_listener
            .filter(|old| {
                old.min_version == tls.min_version
                    && old.client_auth == tls.client_auth
                    && old.certificates.len() == keys.len()
                    && old.certificates.iter().zip(&keys).all(|(a, b)| Arc::ptr_eq(a, b))
            })
            .map(|old| old.config.clone());
        let config = match reused {
            Some(config) => config,
            None => tls::server_config(
                keys.clone(),
                tls.min_version,
                tls.client_auth.as_ref(),
                session_cache,
            )
            .map_err(|error| format!("TLS configuration refused: {error}"))?,
        };
        port_listeners.listeners.push(TlsListener {
            id: id.clone(),
            hostnames,
            config,
            certificates: keys,
            min_version: tls.min_version,
            client_auth: tls.client_auth.clone(),
        });
        Ok(())
    }

    /// The retry budget of route `id`: the previous table's while the route keeps retrying, so
    /// that a change does not refill it.
    pub fn budget(&mut self, id: &str, retry: Option<&RetryPolicy>) -> Arc<RetryBudget> {
        let budget = retry.map(|r| {
            self.previous
                .and_then(|p| p.budgets.get(id))
                .cloned()
                .unwrap_or_else(|| {
                    let percent = u32::try_from(r.budget.percent).unwrap_or(0);
                    let floor = u32::try_from(r.budget.min_per_second).unwrap_or(0);
                    Arc::new(RetryBudget::new(percent, floor))
                })
        });
        let budget = budget.unwrap_or_else(|| Arc::new(RetryBudget::new(0, 0)));
        self.table.budgets.insert(id.to_owned(), budget.clone());
        budget
    }

    /// The certificates the listeners may use.
    pub fn certificates(&self) -> &CertificateStore {
        self.certificates
    }

    /// The metrics of route `id`.
    pub fn route_metrics(&self, id: &str) -> RouteMetrics {
        self.metrics.route(id)
    }

    /// Whether the Microservice `key` exists (its spec is known).
    pub fn knows_microservice(&self, key: &ServiceKey) -> bool {
        self.services.contains_key(key)
    }

    /// The upstream of the Microservice `key`, one per table however many routes send to it.
    pub fn upstream(&mut self, key: &ServiceKey) -> Arc<Upstream> {
        let upstream_key = UpstreamKey::Microservice(key.clone());
        if let Some(upstream) = self.table.upstreams.get(&upstream_key) {
            return upstream.clone();
        }
        let defaults = ServiceSettings::default();
        let settings = self.services.get(key).unwrap_or(&defaults).clone();
        let snapshot = self.registry.snapshot(key);
        let ready: Vec<_> = snapshot.ready().cloned().collect();
        self.insert_upstream(upstream_key, key, &settings, &ready)
    }

    /// The upstream of port `port` of the Kubernetes Service `key`, over `endpoints` (read off
    /// its EndpointSlices), with the default traffic policy and no outlier detection.
    /// `websocket`: the port takes WebSocket upgrades.
    pub fn service_upstream(
        &mut self,
        key: &ServiceKey,
        port: u16,
        endpoints: &[Endpoint],
        protocol: Protocol,
        websocket: bool,
    ) -> Arc<Upstream> {
        let upstream_key = UpstreamKey::ServicePort(key.clone(), port);
        if let Some(upstream) = self.table.upstreams.get(&upstream_key) {
            return upstream.clone();
        }
        let mut settings = ServiceSettings {
            protocol,
            websocket,
            ..ServiceSettings::default()
        };
        // A Service declares no outlier detection (the Gateway API has no such policy yet):
        // its endpoints are never ejected, so that a backend's own errors reach the client as
        // it sent them.
        settings.traffic.outlier_detection.consecutive_failures = 0;
        self.insert_upstream(upstream_key, key, &settings, endpoints)
    }

    fn insert_upstream(
        &mut self,
        upstream_key: UpstreamKey,
        service: &ServiceKey,
        settings: &ServiceSettings,
        ready: &[Endpoint],
    ) -> Arc<Upstream> {
        let upstream = Arc::new(self.build_upstream(&upstream_key, service, settings, ready));
        self.table.upstreams.insert(upstream_key, upstream.clone());
        upstream
    }

    fn build_upstream(
        &self,
        key: &UpstreamKey,
        service: &ServiceKey,
        settings: &ServiceSettings,
        ready: &[Endpoint],
    ) -> Upstream {
        let policy = &settings.traffic;
        let http2 = matches!(settings.protocol, Protocol::Http2 | Protocol::Grpc);
        let previous = self.previous.and_then(|p| p.upstreams.get(key));
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
        let limits = previous.map(|u| u.limits.clone()).unwrap_or_default();
        Upstream {
            service: service.clone(),
            pool: Pool::new(
                policy.load_balancer.policy,
                ready,
                previous.map(|u| &u.pool),
                &limits,
            )
            .signal_ejections(self.ejections.clone()),
            hash_on,
            http2,
            websocket: settings.websocket,
            ejection: Ejection::from(&policy.outlier_detection),
            breaker: CircuitBreaker::from(&policy.circuit_breaker),
            limits,
        }
    }

    /// Adds an entry to the routes tried at `local`, where a listener was placed before.
    pub fn attach(&mut self, local: SocketAddr, entry: Attached) {
        self.table.listeners.entry(local).or_default().push(entry);
    }

    /// The table, each port's entries ordered most specific first.
    pub fn finish(mut self) -> RouteTable {
        self.table.isolated = std::mem::take(&mut self.ports.plain_hostnames)
            .into_iter()
            .filter(|(_, hostnames)| hostnames.iter().any(|h| *h != hostnames[0]))
            .collect();
        self.table.tls = self
            .ports
            .tls
            .into_iter()
            .map(|(local, listeners)| (local, Arc::new(listeners)))
            .collect();
        for entries in self.table.listeners.values_mut() {
            // A stable sort: equally specific entries keep the front end's order.
            entries.sort_by_key(|entry| std::cmp::Reverse(entry.specificity()));
        }
        self.table
    }
}
