//! Requests a client cancels before their answer, counted per connection served by hyper.
//!
//! HTTP/2 lets a client reset a stream at any time, which frees its slot under the concurrency
//! limit while the request it started may already be on its way to a backend. h2 bounds the
//! resets of streams not yet accepted (Rapid Reset in one burst), but a client that waits a
//! moment before each reset gets every request forwarded, and keeps the backends busy with work
//! nobody will read, at any concurrency. A connection whose client has cancelled at least
//! [`MIN_CANCELLED`] requests, and at least half of all it sent, is closed: as Envoy does for
//! "premature resets", a client that cancels most of what it asks for is not a client.

use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicU32, Ordering},
};

use tokio::sync::Notify;

/// Cancelled requests a connection may have before its cancel ratio is judged.
pub const MIN_CANCELLED: u32 = 50;

/// The requests of one connection: how many started, how many the client cancelled.
#[derive(Debug, Default)]
pub struct Cancellations {
    started: AtomicU32,
    cancelled: AtomicU32,
    exceeded: AtomicBool,
    /// Woken once, when the limit is first exceeded (a stored permit: no wake-up is lost).
    tripped: Notify,
}

impl Cancellations {
    /// Starts counting one request: unless [`Tracked::answered`] is called, dropping the
    /// returned guard counts it cancelled.
    pub fn track(self: &Arc<Self>) -> Tracked {
        self.started.fetch_add(1, Ordering::Relaxed);
        Tracked {
            owner: Some(self.clone()),
        }
    }

    /// Completes when the client has cancelled too many of its requests.
    pub async fn too_many(&self) {
        self.tripped.notified().await;
    }

    /// (requests started, requests cancelled) so far.
    pub fn counts(&self) -> (u32, u32) {
        (
            self.started.load(Ordering::Relaxed),
            self.cancelled.load(Ordering::Relaxed),
        )
    }

    fn cancel(&self) {
        let cancelled = self.cancelled.fetch_add(1, Ordering::Relaxed) + 1;
        let started = self.started.load(Ordering::Relaxed);
        if cancelled >= MIN_CANCELLED
            && u64::from(cancelled) * 2 >= u64::from(started)
            && !self.exceeded.swap(true, Ordering::Relaxed)
        {
            self.tripped.notify_one();
        }
    }
}

/// One request being served; counted cancelled if dropped before it is answered.
#[derive(Debug)]
pub struct Tracked {
    owner: Option<Arc<Cancellations>>,
}

impl Tracked {
    /// The request has its answer: it no longer counts as cancelled.
    pub fn answered(mut self) {
        self.owner = None;
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if let Some(owner) = self.owner.take() {
            owner.cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    async fn tripped(cancellations: &Cancellations) -> bool {
        tokio::time::timeout(Duration::from_millis(10), cancellations.too_many())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn a_connection_that_cancels_most_of_its_requests_trips_once_it_has_cancelled_enough() {
        let cancellations = Arc::new(Cancellations::default());
        for _ in 0..MIN_CANCELLED - 1 {
            drop(cancellations.track());
        }
        assert!(!tripped(&cancellations).await, "{:?}", cancellations.counts());
        drop(cancellations.track());
        assert!(tripped(&cancellations).await, "{:?}", cancellations.counts());
    }

    #[tokio::test]
    async fn cancellations_among_many_answered_requests_are_tolerated() {
        let cancellations = Arc::new(Cancellations::default());
        for i in 0..10 * MIN_CANCELLED {
            let request = cancellations.track();
            // One in three cancelled: under half.
            if i % 3 != 0 {
                request.answered();
            }
        }
        assert_eq!(cancellations.counts().1, 10 * MIN_CANCELLED / 3 + 1);
        assert!(!tripped(&cancellations).await, "{:?}", cancellations.counts());
    }
}
