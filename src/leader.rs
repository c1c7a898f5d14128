//! Leader election on a `coordination.k8s.io/v1` Lease: of several microgate processes sharing a
//! Lease, exactly one runs the writers (the reconcilers and the endpoints publisher); the others
//! stand by, and every process keeps discovering endpoints and serving gateway traffic.
//!
//! The protocol is client-go's (`k8s.io/client-go/tools/leaderelection`), with optimistic
//! concurrency on the Lease's `resourceVersion`:
//!
//! - Every [`Config::retry_period`], a candidate reads the Lease. It takes a Lease that has no
//!   holder at once, and one held by another process only when the holder's record has not
//!   changed for `leaseDurationSeconds` **as measured on the candidate's own clock** since it first
//!   saw that record (so clock skew between machines does not matter). It writes with the
//!   `resourceVersion` it read: of two candidates racing, one gets a conflict.
//! - The leader renews every retry period. If it has not renewed for [`Config::renew_deadline`]
//!   (shorter than the lease duration), it steps down: its writers stop before any standby may
//!   take over.
//! - On a clean shutdown the leader clears the holder, and a standby takes over at its next try
//!   instead of waiting for the lease to expire.
//!
//! API verbs used on `leases`: `get`, `create`, `update`.
//!
//! Why not the `kube-lease-manager` crate (0.13, which does support kube 5): its standby sleeps
//! until the expiry it last saw, so a released Lease is only taken when the old term would have
//! ended; and its leader has no renew deadline (a leader that cannot reach the API server keeps
//! reporting that it leads), so it cannot promise to stop writing before another takes over.

use std::{
    collections::hash_map::RandomState,
    hash::{BuildHasher, Hasher},
    time::Duration,
};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{Api, Client, api::PostParams};
use tokio::{sync::watch, time::Instant};

/// How one process takes part in the election.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where the Lease lives.
    pub namespace: String,
    pub lease_name: String,
    /// Unique per process: see [`identity`].
    pub identity: String,
    /// How long a standby waits, after the holder's last renewal it saw, before taking over.
    pub lease_duration: Duration,
    /// How long the leader keeps leading without a successful renewal.
    pub renew_deadline: Duration,
    /// How often candidates try to acquire, and the leader renews.
    pub retry_period: Duration,
}

/// Why a leader election configuration cannot work.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("the lease duration must be a whole number of seconds, at least 1s (got {0:?})")]
    LeaseDuration(Duration),
    #[error(
        "the renew deadline ({renew_deadline:?}) must be shorter than the lease duration ({lease_duration:?}), \
         so that a leader that cannot renew stops before another may take over"
    )]
    RenewDeadline {
        renew_deadline: Duration,
        lease_duration: Duration,
    },
    #[error(
        "the retry period ({retry_period:?}) must be positive and shorter than the renew deadline ({renew_deadline:?})"
    )]
    RetryPeriod {
        retry_period: Duration,
        renew_deadline: Duration,
    },
    #[error("the Lease needs a namespace and a name")]
    LeaseName,
}

impl Config {
    /// Checks that the durations leave a leader time to renew and to step down in time.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.namespace.is_empty() || self.lease_name.is_empty() {
            return Err(ConfigError::LeaseName);
        }
        let seconds = self.lease_duration.as_secs();
        if seconds == 0 || self.lease_duration.subsec_nanos() != 0 || i32::try_from(seconds).is_err() {
            return Err(ConfigError::LeaseDuration(self.lease_duration));
        }
        if self.renew_deadline >= self.lease_duration {
            return Err(ConfigError::RenewDeadline {
                renew_deadline: self.renew_deadline,
                lease_duration: self.lease_duration,
            });
        }
        if self.retry_period.is_zero() || self.retry_period >= self.renew_deadline {
            return Err(ConfigError::RetryPeriod {
                retry_period: self.retry_period,
                renew_deadline: self.renew_deadline,
            });
        }
        Ok(())
    }

    fn lease_duration_seconds(&self) -> i32 {
        i32::try_from(self.lease_duration.as_secs()).unwrap_or(i32::MAX)
    }
}

/// A process's identity in the Lease: `<name>_<random>`, where the name is the Pod's (`POD_NAME`)
/// or the host's. The random part tells two processes of one Pod or host apart, and a restarted
/// process from its dead predecessor.
pub fn identity(pod_name: Option<&str>) -> String {
    let name = pod_name
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| "microgate".to_owned());
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    format!("{name}_{:08x}", hasher.finish() & 0xffff_ffff)
}

/// Where this process stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// It has not read the Lease yet.
    Unknown,
    /// Another process leads (or nobody could be elected yet): only discovery and the gateway run.
    Standby,
    /// It holds the Lease: the writers run.
    Leader,
}

/// Why the Lease could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("could not {action} Lease {namespace}/{name}: {source}")]
    Api {
        action: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("no answer about Lease {namespace}/{name} within {after:?}")]
    Timeout {
        namespace: String,
        name: String,
        after: Duration,
    },
}

/// The Lease's record as this process last saw it, and when it first saw that record.
#[derive(Debug, Default)]
struct Seen {
    last: Option<(LeaseSpec, Instant)>,
}

impl Seen {
    /// Remembers `spec`; a record unlike the last one restarts its clock. Returns whether the
    /// holder changed.
    fn observe(&mut self, spec: LeaseSpec, now: Instant) -> bool {
        if self.last.as_ref().is_some_and(|(last, _)| *last == spec) {
            return false;
        }
        let changed_hands = self.holder() != holder(&spec);
        self.last = Some((spec, now));
        changed_hands
    }

    /// The holder last seen, if any.
    fn holder(&self) -> Option<&str> {
        self.last.as_ref().and_then(|(spec, _)| holder(spec))
    }

    /// Whether the record last seen has gone unrenewed for its term (`fallback` when it names
    /// none), by this process's clock.
    fn expired(&self, now: Instant, fallback: Duration) -> bool {
        self.last.as_ref().is_none_or(|(spec, since)| {
            let term = spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map_or(fallback, Duration::from_secs);
            now >= *since + term
        })
    }
}

/// Takes part in the election for one Lease: see the module documentation.
pub struct Elector {
    api: Api<Lease>,
    config: Config,
    seen: Seen,
}

impl Elector {
    pub fn new(client: Client, config: Config) -> Self {
        Self {
            api: Api::namespaced(client, &config.namespace),
            config,
            seen: Seen::default(),
        }
    }

    /// Runs the election, publishing this process's [`Role`] on `role`, until `stop` completes;
    /// then, if it leads, it releases the Lease (so stop the writers first).
    pub async fn run(mut self, role: &watch::Sender<Role>, stop: impl Future<Output = ()>) {
        let config = self.config.clone();
        let lease = format!("{}/{}", config.namespace, config.lease_name);
        tokio::pin!(stop);
        loop {
            // A candidate: try until the Lease is ours.
            let mut renewed = loop {
                let started = Instant::now();
                let attempt = tokio::select! {
                    attempt = self.try_acquire_or_renew(started + config.renew_deadline) => attempt,
                    () = &mut stop => return,
                };
                match attempt {
                    Ok(true) => break started,
                    Ok(false) => {
                        role.send_if_modified(|r| std::mem::replace(r, Role::Standby) != Role::Standby);
                    }
                    Err(error) => tracing::warn!(%error, "could not try to acquire the leader Lease"),
                }
                tokio::select! {
                    () = tokio::time::sleep(config.retry_period) => {}
                    () = &mut stop => return,
                }
            };
            tracing::info!(%lease, identity = %config.identity, "acquired the leader Lease: leading");
            role.send_replace(Role::Leader);
            // The leader: renew every retry period; step down when another holds the Lease or
            // the renew deadline passes without a renewal (the last try is cut short at it).
            let mut last_error = None;
            let reason = loop {
                let deadline = renewed + config.renew_deadline;
                tokio::select! {
                    () = tokio::time::sleep_until(deadline.min(Instant::now() + config.retry_period)) => {}
                    () = &mut stop => {
                        self.step_down(role, &lease).await;
                        return;
                    }
                }
                let started = Instant::now();
                let attempt = if started >= deadline {
                    Err(LeaseError::Timeout {
                        namespace: config.namespace.clone(),
                        name: config.lease_name.clone(),
                        after: config.renew_deadline,
                    })
                } else {
                    tokio::select! {
                        attempt = self.try_acquire_or_renew(deadline) => attempt,
                        () = &mut stop => {
                            self.step_down(role, &lease).await;
                            return;
                        }
                    }
                };
                match attempt {
                    Ok(true) => {
                        renewed = started;
                        last_error = None;
                    }
                    Ok(false) => {
                        break format!("{} holds it now", self.seen.holder().unwrap_or("another process"));
                    }
                    Err(error) if Instant::now() >= deadline => {
                        let error = last_error.unwrap_or(error);
                        break format!(
                            "no renewal within the renew deadline ({:?}); last error: {error}",
                            config.renew_deadline
                        );
                    }
                    Err(error) => {
                        tracing::warn!(%error, "could not renew the leader Lease; retrying");
                        last_error = Some(error);
                    }
                }
            };
            role.send_replace(Role::Standby);
            tracing::warn!(%lease, %reason, "lost the leader Lease: standing by");
        }
    }

    /// Leaves leadership on shutdown: the role goes first (the writers have stopped already),
    /// then the Lease is released so that a standby need not wait for it to expire.
    async fn step_down(&mut self, role: &watch::Sender<Role>, lease: &str) {
        role.send_replace(Role::Standby);
        let deadline = Instant::now() + self.config.renew_deadline;
        match self.release(deadline).await {
            Ok(true) => tracing::info!(%lease, "released the leader Lease"),
            Ok(false) => tracing::info!(%lease, "the leader Lease was no longer ours to release"),
            Err(error) => {
                tracing::warn!(%lease, %error, "could not release the leader Lease; it expires on its own")
            }
        }
    }

    /// One round: reads the Lease and takes or renews it if it may. `Ok(true)`: it holds the
    /// Lease now; `Ok(false)`: another does (or won a race).
    async fn try_acquire_or_renew(&mut self, deadline: Instant) -> Result<bool, LeaseError> {
        let params = PostParams::default();
        let read = self
            .call(deadline, "get", self.api.get_opt(&self.config.lease_name))
            .await?;
        // When the answer came, not when the question left: a slow answer may show a renewal
        // made after the question, and its holder's term runs from that renewal.
        let now = Instant::now();
        let Some(current) = read else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.lease_name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(claim(
                    &LeaseSpec::default(),
                    &self.config.identity,
                    Timestamp::now(),
                    self.config.lease_duration_seconds(),
                )),
            };
            let created = self.api.create(&params, &lease);
            return match self.call(deadline, "create", created).await {
                Ok(stored) => {
                    self.observe(stored.spec.unwrap_or_default(), now);
                    Ok(true)
                }
                Err(error) if is_conflict(&error) => Ok(false),
                Err(error) => Err(error),
            };
        };
        let spec = current.spec.clone().unwrap_or_default();
        self.observe(spec.clone(), now);
        if let Some(other) = holder(&spec).filter(|h| *h != self.config.identity)
            && !self.seen.expired(now, self.config.lease_duration)
        {
            let other = other.to_owned();
            tracing::debug!(holder = %other, "the leader Lease is held by another process");
            return Ok(false);
        }
        let mut next = current;
        next.spec = Some(claim(
            &spec,
            &self.config.identity,
            Timestamp::now(),
            self.config.lease_duration_seconds(),
        ));
        // `next` keeps the resourceVersion read above: a write in between makes this a conflict.
        let replaced = self.api.replace(&self.config.lease_name, &params, &next);
        match self.call(deadline, "update", replaced).await {
            Ok(stored) => {
                self.observe(stored.spec.unwrap_or_default(), now);
                Ok(true)
            }
            Err(error) if is_conflict(&error) => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Clears the holder if it is this process. `Ok(true)` when it released the Lease.
    async fn release(&mut self, deadline: Instant) -> Result<bool, LeaseError> {
        let params = PostParams::default();
        let Some(current) = self
            .call(deadline, "get", self.api.get_opt(&self.config.lease_name))
            .await?
        else {
            return Ok(false);
        };
        let spec = current.spec.clone().unwrap_or_default();
        if holder(&spec) != Some(self.config.identity.as_str()) {
            return Ok(false);
        }
        let mut next = current;
        next.spec = Some(released(&spec, Timestamp::now()));
        let replaced = self.api.replace(&self.config.lease_name, &params, &next);
        match self.call(deadline, "update", replaced).await {
            Ok(_) => Ok(true),
            Err(error) if is_conflict(&error) => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Awaits one API call, no later than `deadline` (the client has no timeout of its own).
    async fn call<T>(
        &self,
        deadline: Instant,
        action: &'static str,
        call: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, LeaseError> {
        match tokio::time::timeout_at(deadline, call).await {
            Ok(result) => result.map_err(|source| LeaseError::Api {
                action,
                namespace: self.config.namespace.clone(),
                name: self.config.lease_name.clone(),
                source,
            }),
            Err(_) => Err(LeaseError::Timeout {
                namespace: self.config.namespace.clone(),
                name: self.config.lease_name.clone(),
                after: self.config.renew_deadline,
            }),
        }
    }

    /// Remembers `spec`, logging a change of hands.
    fn observe(&mut self, spec: LeaseSpec, now: Instant) {
        if self.seen.observe(spec, now) {
            let holder = self.seen.holder().unwrap_or("none");
            if holder != self.config.identity {
                tracing::info!(%holder, "the leader Lease changed hands");
            }
        }
    }
}

fn is_conflict(error: &LeaseError) -> bool {
    matches!(error, LeaseError::Api { source: kube::Error::Api(status), .. } if status.code == 409)
}

/// The Lease's holder, if it has one (an empty identity is none: a released Lease).
fn holder(spec: &LeaseSpec) -> Option<&str> {
    spec.holder_identity.as_deref().filter(|h| !h.is_empty())
}

/// The record `identity` writes to take or renew the Lease whose record is `current`.
fn claim(current: &LeaseSpec, identity: &str, now: Timestamp, lease_duration_seconds: i32) -> LeaseSpec {
    let renewing = holder(current) == Some(identity);
    LeaseSpec {
        holder_identity: Some(identity.to_owned()),
        lease_duration_seconds: Some(lease_duration_seconds),
        renew_time: Some(MicroTime(now)),
        acquire_time: if renewing {
            current.acquire_time.clone().or(Some(MicroTime(now)))
        } else {
            Some(MicroTime(now))
        },
        lease_transitions: if renewing {
            current.lease_transitions
        } else {
            Some(current.lease_transitions.unwrap_or(0).saturating_add(1))
        },
        ..current.clone()
    }
}

/// The record a leader writes to leave: no holder, and a term of one second for any elector
/// that does not treat an empty holder as free.
fn released(current: &LeaseSpec, now: Timestamp) -> LeaseSpec {
    LeaseSpec {
        holder_identity: None,
        lease_duration_seconds: Some(1),
        renew_time: Some(MicroTime(now)),
        acquire_time: Some(MicroTime(now)),
        ..current.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config {
            namespace: "ns".into(),
            lease_name: "microgate-controller".into(),
            identity: "a_1".into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    fn held_by(identity: &str, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(identity.into()),
            lease_duration_seconds: Some(15),
            acquire_time: Some(MicroTime(Timestamp::UNIX_EPOCH)),
            renew_time: Some(MicroTime(Timestamp::UNIX_EPOCH)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn the_defaults_validate_and_unsafe_durations_do_not() {
        assert_eq!(config().validate(), Ok(()));
        let fractional = Config {
            lease_duration: Duration::from_millis(3500),
            ..config()
        };
        assert!(matches!(
            fractional.validate(),
            Err(ConfigError::LeaseDuration(_))
        ));
        let late = Config {
            renew_deadline: Duration::from_secs(15),
            ..config()
        };
        assert!(matches!(late.validate(), Err(ConfigError::RenewDeadline { .. })));
        let slow = Config {
            retry_period: Duration::from_secs(10),
            ..config()
        };
        assert!(matches!(slow.validate(), Err(ConfigError::RetryPeriod { .. })));
        let nowhere = Config {
            namespace: String::new(),
            ..config()
        };
        assert_eq!(nowhere.validate(), Err(ConfigError::LeaseName));
    }

    #[test]
    fn taking_over_counts_a_transition_and_renewing_keeps_the_term() {
        let now = Timestamp::from_second(100).expect("a valid timestamp");
        let taken = claim(&held_by("b_2", 3), "a_1", now, 15);
        assert_eq!(taken.holder_identity.as_deref(), Some("a_1"));
        assert_eq!(taken.lease_transitions, Some(4));
        assert_eq!(taken.acquire_time, Some(MicroTime(now)));
        assert_eq!(taken.renew_time, Some(MicroTime(now)));

        let renewed = claim(&held_by("a_1", 3), "a_1", now, 15);
        assert_eq!(renewed.lease_transitions, Some(3));
        assert_eq!(renewed.acquire_time, Some(MicroTime(Timestamp::UNIX_EPOCH)));
        assert_eq!(renewed.renew_time, Some(MicroTime(now)));

        let first = claim(&LeaseSpec::default(), "a_1", now, 15);
        assert_eq!(first.lease_transitions, Some(1));
        assert_eq!(first.lease_duration_seconds, Some(15));
    }

    #[test]
    fn a_released_lease_has_no_holder_and_keeps_its_transitions() {
        let now = Timestamp::from_second(100).expect("a valid timestamp");
        let released = released(&held_by("a_1", 3), now);
        assert_eq!(holder(&released), None);
        assert_eq!(released.lease_transitions, Some(3));
        assert_eq!(released.lease_duration_seconds, Some(1));
        assert_eq!(
            holder(&LeaseSpec {
                holder_identity: Some(String::new()),
                ..released
            }),
            None
        );
    }

    #[test]
    fn another_holder_expires_a_lease_duration_after_its_record_last_changed() {
        let fallback = Duration::from_secs(30);
        let mut seen = Seen::default();
        let start = Instant::now();
        assert!(
            seen.expired(start, fallback),
            "nothing seen yet: nothing to wait for"
        );
        assert!(seen.observe(held_by("b_2", 1), start));
        assert!(!seen.expired(start + Duration::from_secs(14), fallback));
        // The same record seen again does not restart the clock; a renewal does.
        assert!(!seen.observe(held_by("b_2", 1), start + Duration::from_secs(10)));
        assert!(seen.expired(start + Duration::from_secs(15), fallback));
        let renewed = LeaseSpec {
            renew_time: Some(MicroTime(Timestamp::from_second(1).expect("a valid timestamp"))),
            ..held_by("b_2", 1)
        };
        assert!(
            !seen.observe(renewed, start + Duration::from_secs(10)),
            "same holder"
        );
        assert!(!seen.expired(start + Duration::from_secs(24), fallback));
        assert!(seen.expired(start + Duration::from_secs(25), fallback));
        assert_eq!(seen.holder(), Some("b_2"));
        assert!(seen.observe(held_by("c_3", 2), start + Duration::from_secs(26)));
    }

    #[test]
    fn identities_differ_between_processes_of_one_pod() {
        let a = identity(Some("microgate-7d9f"));
        let b = identity(Some("microgate-7d9f"));
        assert!(a.starts_with("microgate-7d9f_"), "{a}");
        assert_ne!(a, b);
        assert!(!identity(None).is_empty());
    }
}
