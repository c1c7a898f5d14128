//! How long a controller's watches wait after an error before they are polled again.
//!
//! kube-runtime pauses all of a controller's watches together (its own and those of the objects
//! it owns share one stream) after any error from any of them, by a backoff that a success
//! resets. Its default is client-go's, 0.8 s doubling to 30 s with jitter up to as much again.
//! Shared by several watches, that climbs fast: after a few seconds without the API server, each
//! watch fails in turn on its way back, and each then reports the 410 Gone of its expired
//! resourceVersion before re-listing, one paused step after the other. Measured with the
//! default: a controller cut off for about 5 s, whose watches then expired, took 91 s to see the
//! changes made meanwhile. With the cap below it is back within seconds; the price is one retry
//! per watch every few seconds while the API server is away.

use std::time::Duration;

use kube::runtime::utils::Backoff;

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
    fn doubles_up_to_two_seconds_and_starts_over_after_a_success() {
        let mut backoff = WatchBackoff::default();
        let waits: Vec<_> = backoff.by_ref().take(6).map(|d| d.as_millis()).collect();
        assert_eq!(waits, [250, 500, 1000, 2000, 2000, 2000]);
        backoff.reset();
        assert_eq!(backoff.next(), Some(Duration::from_millis(250)));
    }
}
