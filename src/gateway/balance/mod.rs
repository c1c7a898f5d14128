//! Load balancing over one Microservice's ready endpoints.
//!
//! A [`Pool`] is built per configuration change from a registry snapshot and the Microservice's
//! `trafficPolicy.loadBalancer`; picking is lock-free (atomics only). Endpoint state (requests in
//! flight, latency) lives in [`EndpointState`], carried over from the previous pool for Pods that
//! stay, so a rebuild does not reset what the balancer learned.

use std::{
    hash::{Hash, Hasher},
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

pub mod outlier;

use tokio::sync::Notify;

use super::{
    random::random_below,
    upstream::{Connections, Destination, Limits},
};
use crate::{api::policy::LoadBalancerPolicy, discovery::Endpoint};

/// One endpoint as the balancer tracks it.
#[derive(Debug)]
pub struct EndpointState {
    pub pod: Arc<str>,
    pub addr: SocketAddr,
    /// Where it runs, as discovery knows it (for the registry API).
    pub node: Option<Arc<str>>,
    pub zone: Option<Arc<str>>,
    /// `addr` as an HTTP/2 request's `:authority` (always present: a socket address is one).
    pub authority: Option<http::uri::Authority>,
    in_flight: AtomicUsize,
    /// Peak-sensitive moving average of response latency, in microseconds (0: unknown).
    latency_us: AtomicU64,
    /// Outlier detection's bookkeeping (see `outlier`).
    pub(super) consecutive_failures: AtomicU32,
    pub(super) ejections: AtomicU32,
    /// Out of rotation until this instant (microseconds of [`clock_us`]).
    pub(super) ejected_until_us: AtomicU64,
    /// The connections kept open to it.
    pub(super) connections: Connections,
}

impl Destination for EndpointState {
    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn connections(&self) -> &Connections {
        &self.connections
    }
}

impl EndpointState {
    /// `limits`: those of the Microservice the endpoint serves.
    pub fn new(endpoint: &Endpoint, limits: Arc<Limits>) -> Self {
        let addr = SocketAddr::new(endpoint.ip, endpoint.port);
        Self {
            pod: endpoint.pod.clone(),
            addr,
            node: endpoint.node.clone(),
            zone: endpoint.zone.clone(),
            authority: http::uri::Authority::try_from(addr.to_string()).ok(),
            in_flight: AtomicUsize::new(0),
            latency_us: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until_us: AtomicU64::new(0),
            connections: Connections::new(limits),
        }
    }

    /// Whether outlier detection has this endpoint out of rotation at `now` (see [`clock_us`]).
    pub fn is_ejected(&self, now: u64) -> bool {
        self.ejected_until_us.load(Ordering::Relaxed) > now
    }

    /// Counts a request in flight until the guard drops.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            endpoint: self.clone(),
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The latency estimate PeakEwma balances by (`None`: nothing observed yet; only a PeakEwma
    /// pool observes).
    pub fn latency(&self) -> Option<Duration> {
        match self.latency_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    /// Until when outlier detection keeps it out of rotation, in [`clock_us`] (in the past, or 0:
    /// it is in rotation).
    pub fn ejected_until_us(&self) -> u64 {
        self.ejected_until_us.load(Ordering::Relaxed)
    }

    /// Failures in a row since its last success or ejection.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Ordering::Relaxed)
    }

    /// How many times outlier detection has ejected it.
    pub fn ejections(&self) -> u32 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// Records one response time: a slower one counts at once, a faster one only decays the average.
    pub fn observe(&self, latency: Duration) {
        let sample = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX).max(1);
        let _ = self
            .latency_us
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                Some(if sample >= old || old == 0 {
                    sample
                } else {
                    old - (old - sample) / 8
                })
            });
    }

    /// The PeakEwma cost: expected latency times the queue it would join.
    fn cost(&self) -> u64 {
        let latency = self.latency_us.load(Ordering::Relaxed).max(1);
        latency.saturating_mul(self.in_flight() as u64 + 1)
    }
}

/// A request in flight to an endpoint.
#[derive(Debug)]
pub struct InFlight {
    endpoint: Arc<EndpointState>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.endpoint.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The ready endpoints of one Microservice and how to choose among them.
#[derive(Debug)]
pub struct Pool {
    policy: LoadBalancerPolicy,
    endpoints: Vec<Arc<EndpointState>>,
    /// The round-robin position, shared with the pools that replace this one: a request still
    /// holding an older table keeps the rotation in step with the newer.
    next: Arc<AtomicUsize>,
    /// Told when outlier detection ejects one of the endpoints (see [`Pool::signal_ejections`]).
    ejections: Option<Arc<Notify>>,
}

impl Pool {
    /// A pool of the `ready` endpoints, reusing the state of those `previous` already had; `limits`
    /// are the Microservice's.
    pub fn new(
        policy: LoadBalancerPolicy,
        ready: &[Endpoint],
        previous: Option<&Pool>,
        limits: &Arc<Limits>,
    ) -> Self {
        let endpoints = ready
            .iter()
            .map(|endpoint| {
                let addr = SocketAddr::new(endpoint.ip, endpoint.port);
                previous
                    .and_then(|p| {
                        p.endpoints
                            .iter()
                            .find(|e| e.pod == endpoint.pod && e.addr == addr)
                    })
                    .cloned()
                    .unwrap_or_else(|| Arc::new(EndpointState::new(endpoint, limits.clone())))
            })
            .collect();
        let next = previous.map(|p| p.next.clone()).unwrap_or_default();
        Self {
            policy,
            endpoints,
            next,
            ejections: None,
        }
    }

    /// Tells `notify` of every ejection in this pool: the registry API's followers learn of it
    /// at once, rather than by asking again and again.
    pub fn signal_ejections(mut self, notify: Option<Arc<Notify>>) -> Self {
        self.ejections = notify;
        self
    }

    /// The balancer's policy.
    pub fn policy(&self) -> LoadBalancerPolicy {
        self.policy
    }

    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    /// Whether picks depend on response times (see [`EndpointState::observe`]).
    pub fn learns_latency(&self) -> bool {
        self.policy == LoadBalancerPolicy::PeakEwma
    }

    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    /// Chooses an endpoint, avoiding ejected ones and `avoid` (the one that just failed) while
    /// there are others. `hash` is the request's consistent-hash key, for ConsistentHash.
    pub fn pick(&self, hash: Option<u64>, avoid: Option<&EndpointState>) -> Option<Arc<EndpointState>> {
        let now = clock_us();
        let first = self.pick_once(hash, avoid, now)?;
        if !first.is_ejected(now) {
            return Some(first);
        }
        for _ in 0..self.endpoints.len() {
            let next = self.pick_once(hash, avoid, now)?;
            if !next.is_ejected(now) {
                return Some(next);
            }
        }
        // Every draw was ejected: any endpoint still in rotation, else (all ejected) the first draw.
        self.endpoints
            .iter()
            .find(|e| !e.is_ejected(now))
            .cloned()
            .or(Some(first))
    }

    fn pick_once(
        &self,
        hash: Option<u64>,
        avoid: Option<&EndpointState>,
        now: u64,
    ) -> Option<Arc<EndpointState>> {
        let n = self.endpoints.len();
        if n == 0 {
            return None;
        }
        let avoided = |e: &Arc<EndpointState>| {
            avoid.is_some_and(|a| std::ptr::eq(Arc::as_ptr(e), a)) || e.is_ejected(now)
        };
        if n == 1 {
            return Some(self.endpoints[0].clone());
        }
        let chosen = match self.policy {
            LoadBalancerPolicy::RoundRobin => {
                // An avoided endpoint's turn goes to the next turn's holder, not always to its
                // neighbour (which would then take twice its share while the other is ejected).
                let mut e = &self.endpoints[self.next.fetch_add(1, Ordering::Relaxed) % n];
                for _ in 1..n {
                    if !avoided(e) {
                        break;
                    }
                    e = &self.endpoints[self.next.fetch_add(1, Ordering::Relaxed) % n];
                }
                e
            }
            LoadBalancerPolicy::Random => {
                let e = &self.endpoints[random_below(n)];
                if avoided(e) {
                    &self.endpoints[(random_below(n - 1) + 1 + self.index_of(e)) % n]
                } else {
                    e
                }
            }
            LoadBalancerPolicy::LeastRequest => self.two_choices(&avoided, |e| e.in_flight() as u64),
            LoadBalancerPolicy::PeakEwma => self.two_choices(&avoided, EndpointState::cost),
            LoadBalancerPolicy::ConsistentHash => {
                let key = hash.unwrap_or_else(|| random_below(usize::MAX) as u64);
                // Rendezvous hashing: the endpoint with the highest score for this key wins, so
                // a change of endpoints moves only the keys of the endpoints that changed.
                let best = self
                    .endpoints
                    .iter()
                    .filter(|e| !avoided(e))
                    .max_by_key(|e| score(key, &e.pod));
                best.unwrap_or(&self.endpoints[0])
            }
        };
        Some(chosen.clone())
    }

    fn index_of(&self, endpoint: &Arc<EndpointState>) -> usize {
        self.endpoints
            .iter()
            .position(|e| Arc::ptr_eq(e, endpoint))
            .unwrap_or(0)
    }

    /// Power of two choices: two distinct random endpoints, the cheaper wins.
    fn two_choices(
        &self,
        avoided: &dyn Fn(&Arc<EndpointState>) -> bool,
        cost: impl Fn(&EndpointState) -> u64,
    ) -> &Arc<EndpointState> {
        let n = self.endpoints.len();
        let a = random_below(n);
        let b = (a + 1 + random_below(n - 1)) % n;
        let (ea, eb) = (&self.endpoints[a], &self.endpoints[b]);
        match (avoided(ea), avoided(eb)) {
            (true, false) => eb,
            (false, true) => ea,
            _ => {
                if cost(eb) < cost(ea) {
                    eb
                } else {
                    ea
                }
            }
        }
    }
}

/// Microseconds since the first call: the gateway's clock for ejections.
pub fn clock_us() -> u64 {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    u64::try_from(EPOCH.get_or_init(std::time::Instant::now).elapsed().as_micros()).unwrap_or(u64::MAX)
}

impl Pool {
    /// The endpoints in rotation (ejected ones included): the ready endpoints of the snapshot
    /// the pool was built from.
    pub fn endpoints(&self) -> &[Arc<EndpointState>] {
        &self.endpoints
    }

    pub(super) fn ejected(&self) {
        if let Some(notify) = &self.ejections {
            notify.notify_one();
        }
    }
}

fn score(key: u64, pod: &str) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut hasher);
    pod.hash(&mut hasher);
    hasher.finish()
}

/// The hash of a consistent-hash key (a header or cookie value, a client address).
pub fn hash_key(value: &[u8]) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(n: usize) -> Vec<Endpoint> {
        (0..n)
            .map(|i| Endpoint {
                pod: format!("pod-{i}").into(),
                ip: format!("127.0.9.{}", i + 2).parse().expect("ip"),
                port: 8080,
                ready: true,
                node: None,
                zone: None,
            })
            .collect()
    }

    fn counts(pool: &Pool, picks: usize, hash: impl Fn(usize) -> Option<u64>) -> Vec<usize> {
        let mut counts = vec![0; pool.len()];
        for i in 0..picks {
            let e = pool.pick(hash(i), None).expect("an endpoint");
            counts[pool.index_of(&e)] += 1;
        }
        counts
    }

    #[test]
    fn round_robin_spreads_an_ejected_endpoints_turns_over_the_others() {
        let pool = Pool::new(
            LoadBalancerPolicy::RoundRobin,
            &endpoints(3),
            None,
            &Arc::default(),
        );
        let ejected = pool.endpoints[0].clone();
        ejected.ejected_until_us.store(u64::MAX, Ordering::Relaxed);
        let mut counts = std::collections::HashMap::new();
        for _ in 0..3000 {
            let picked = pool.pick(None, None).expect("an endpoint");
            *counts.entry(picked.pod.to_string()).or_insert(0) += 1;
        }
        assert!(!counts.contains_key(ejected.pod.as_ref()), "{counts:?}");
        assert!(counts.values().all(|&n| (1400..=1600).contains(&n)), "{counts:?}");
    }

    #[test]
    fn round_robin_spreads_exactly() {
        let pool = Pool::new(
            LoadBalancerPolicy::RoundRobin,
            &endpoints(3),
            None,
            &Arc::default(),
        );
        assert_eq!(counts(&pool, 300, |_| None), [100, 100, 100]);
    }

    #[test]
    fn random_reaches_every_endpoint_roughly_evenly() {
        let pool = Pool::new(LoadBalancerPolicy::Random, &endpoints(4), None, &Arc::default());
        let counts = counts(&pool, 4000, |_| None);
        assert!(counts.iter().all(|&c| (800..1200).contains(&c)), "{counts:?}");
    }

    #[test]
    fn least_request_avoids_the_busy_endpoint() {
        let pool = Pool::new(
            LoadBalancerPolicy::LeastRequest,
            &endpoints(3),
            None,
            &Arc::default(),
        );
        let busy = pool.endpoints[0].clone();
        let _held: Vec<_> = (0..10).map(|_| busy.begin()).collect();
        let counts = counts(&pool, 300, |_| None);
        // The busy one wins only a two-choice draw against itself, which cannot happen.
        assert_eq!(counts[0], 0, "{counts:?}");
    }

    #[test]
    fn peak_ewma_prefers_the_fast_endpoint() {
        let pool = Pool::new(LoadBalancerPolicy::PeakEwma, &endpoints(2), None, &Arc::default());
        pool.endpoints[0].observe(Duration::from_millis(50));
        pool.endpoints[1].observe(Duration::from_millis(1));
        assert_eq!(counts(&pool, 100, |_| None), [0, 100]);
    }

    #[test]
    fn consistent_hash_sticks_and_moves_few_keys_when_an_endpoint_goes() {
        let ten = Pool::new(
            LoadBalancerPolicy::ConsistentHash,
            &endpoints(10),
            None,
            &Arc::default(),
        );
        let nine = Pool::new(
            LoadBalancerPolicy::ConsistentHash,
            &endpoints(9),
            Some(&ten),
            &Arc::default(),
        );
        let keys = 10_000u64;
        let mut moved = 0;
        for key in 0..keys {
            let before = ten.pick(Some(key), None).expect("endpoint");
            assert!(
                Arc::ptr_eq(&before, &ten.pick(Some(key), None).expect("endpoint")),
                "sticky"
            );
            let after = nine.pick(Some(key), None).expect("endpoint");
            if before.pod != after.pod {
                moved += 1;
                assert_eq!(&*before.pod, "pod-9", "only the removed endpoint's keys move");
            }
        }
        assert!(moved as f64 / keys as f64 <= 0.15, "{moved} of {keys} keys moved");
    }

    #[test]
    fn a_failed_endpoint_is_avoided_on_retry_and_state_survives_rebuilds() {
        let pool = Pool::new(
            LoadBalancerPolicy::RoundRobin,
            &endpoints(2),
            None,
            &Arc::default(),
        );
        let failed = pool.pick(None, None).expect("endpoint");
        for _ in 0..10 {
            let next = pool.pick(None, Some(&failed)).expect("endpoint");
            assert!(!Arc::ptr_eq(&next, &failed));
        }
        let _guard = failed.begin();
        let rebuilt = Pool::new(
            LoadBalancerPolicy::RoundRobin,
            &endpoints(3),
            Some(&pool),
            &Arc::default(),
        );
        assert_eq!(
            rebuilt.endpoints.iter().map(|e| e.in_flight()).sum::<usize>(),
            1,
            "in-flight kept"
        );
        assert!(
            Arc::ptr_eq(&rebuilt.next, &pool.next),
            "one rotation across rebuilds"
        );
    }
}
