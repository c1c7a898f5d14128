//! What every watch of microgate shares: how long one may stay open, how long it waits
//! after an error before it is polled again, and the client it is made with (whose requests
//! give up on a silent connection: [`client`]). The controller, discovery and the gateway all
//! watch through these, so that an API server outage or a silent connection costs each of them
//! the same few seconds.
//!
//! **Timeout.** The API server ends a watch after the `timeoutSeconds` it was opened with, and
//! kube's watcher gives up on one that has sent nothing for that long and 5 s more, and opens
//! it again. That is the only way to notice a connection that went silent without closing (a
//! load balancer that forgot it, packets dropped on the way): no FIN, no reset, and nothing
//! else on the connection. kube's default is 290 s, longer than some load balancers keep an
//! idle flow (Azure's: 240 s); [`DEFAULT_TIMEOUT`] is shorter, and `--watch-timeout` sets it.
//! Reopening a watch resumes from its last resourceVersion: it costs one request, not a list.
//!
//! **Backoff.** kube-runtime pauses all of a controller's watches together (its own and those
//! of the objects it owns share one stream) after any error from any of them, by a backoff that
//! a success resets. Its default is client-go's, 0.8 s doubling to 30 s with jitter up to as
//! much again. Shared by several watches, that climbs fast: after a few seconds without the API
//! server, each watch fails in turn on its way back, and each then reports the 410 Gone of its
//! expired resourceVersion before re-listing, one paused step after the other. Measured with
//! the default: a controller cut off for about 5 s, whose watches then expired, took 91 s to
//! see the changes made meanwhile. Alone, a watch that had waited out a long outage would still
//! be up to 30 s late to see the API server back, while the gateway serves a stale table. With
//! the cap of [`WatchBackoff`] every watch is back within seconds; the price is one refused
//! connection per watch every 2 s while the API server is away.

use std::{
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use kube::{
    Resource,
    runtime::{utils::Backoff, watcher},
};

mod client;
mod shared;

pub use client::{client, client_with_head_timeout, head_timeout, head_timeout_for};
pub use shared::{OwnKinds, Shared};

/// How long a watch stays open unless `--watch-timeout` says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// Seconds; set once at start from the command line ([`set_timeout`]), read by every watch.
static TIMEOUT_SECS: AtomicU32 = AtomicU32::new(DEFAULT_TIMEOUT.as_secs() as u32);

/// Sets how long every watch opened from now on stays open (whole seconds, at least 1).
pub fn set_timeout(timeout: Duration) {
    let secs = u32::try_from(timeout.as_secs()).unwrap_or(u32::MAX).max(1);
    TIMEOUT_SECS.store(secs, Ordering::Relaxed);
}

/// How long every watch opened from now on stays open.
pub fn timeout() -> Duration {
    Duration::from_secs(TIMEOUT_SECS.load(Ordering::Relaxed).into())
}

/// The watcher configuration every watch starts from: the default one, with the timeout.
pub fn config() -> watcher::Config {
    watcher::Config::default().timeout(TIMEOUT_SECS.load(Ordering::Relaxed))
}

/// Logs an error of a watch of `kind` as what it is: a 410 Gone is the routine end of a watch
/// whose resourceVersion the API server no longer has (the watcher lists again), the rest are
/// failures the watcher retries after its backoff.
pub fn log_error(kind: &str, error: &watcher::Error) {
    match error {
        watcher::Error::WatchError(status) if status.code == 410 => {
            tracing::debug!(kind, "watch expired (410 Gone): listing again");
        }
        error => tracing::warn!(kind, %error, "watch failed; trying again after a backoff"),
    }
}

/// The annotation `kubectl apply` keeps a whole copy of the object in (a Secret's data too).
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Leaves out of a store what microgate never reads and what can outweigh the object itself:
/// the field managers' records and `kubectl apply`'s copy of the object.
pub fn trim<K: Resource>(object: &mut K) {
    let meta = object.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
    }
}

/// The first wait after an error.
const FIRST: Duration = Duration::from_millis(250);
/// The longest wait, however many errors in a row.
const CAP: Duration = Duration::from_secs(2);

/// Doubles from [`FIRST`] to [`CAP`]; starts over after a success.
#[derive(Debug, Clone)]
pub struct WatchBackoff {
    next: Duration,
}

impl Default for WatchBackoff {
    fn default() -> Self {
        Self { next: FIRST }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let wait = self.next;
        self.next = (wait * 2).min(CAP);
        Some(wait)
    }
}

impl Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = FIRST;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trimming_keeps_what_is_read_and_drops_the_copies() {
        let mut secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "keys",
                "annotations": {LAST_APPLIED: "{\"data\":{\"ci\":\"azE=\"}}", "team": "payments"},
                "managedFields": [{"manager": "kubectl", "operation": "Apply"}],
            },
            "data": {"ci": "azE="},
        }))
        .expect("a Secret");
        trim(&mut secret);
        assert_eq!(secret.metadata.managed_fields, None);
        let annotations = secret.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(annotations.keys().collect::<Vec<_>>(), ["team"]);
        assert!(secret.data.is_some_and(|d| d.contains_key("ci")));
    }

    #[test]
    fn the_default_timeout_is_the_one_watches_start_with() {
        assert_eq!(
            u64::from(TIMEOUT_SECS.load(Ordering::Relaxed)),
            DEFAULT_TIMEOUT.as_secs()
        );
        assert_eq!(config().timeout, Some(120));
    }

    #[test]
    fn doubles_up_to_two_seconds_and_starts_over_after_a_success() {
        let mut backoff = WatchBackoff::default();
        let waits: Vec<_> = backoff.by_ref().take(6).map(|d| d.as_millis()).collect();
        assert_eq!(waits, [250, 500, 1000, 2000, 2000, 2000]);
        backoff.reset();
        assert_eq!(backoff.next(), Some(Duration::from_millis(250)));
    }
}
