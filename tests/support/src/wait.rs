//! Waiting for the cluster to get somewhere, with a deadline on every wait.

use std::{fmt::Display, future::Future, time::Duration};

use tokio::time::{Instant, sleep};

/// How long a wait lasted before giving up, and what it last saw.
#[derive(Debug, thiserror::Error)]
#[error("timed out after {after:?} waiting for {what}; last seen: {last}")]
pub struct WaitError {
    pub what: String,
    pub after: Duration,
    pub last: String,
}

/// What one look at the world found: done with a value, or not yet (and why, for the error).
pub enum Probe<T> {
    Done(T),
    NotYet(String),
}

/// Polls `probe` every 25 ms until it is done or `timeout` passes.
pub async fn until<T, F, Fut>(what: impl Display, timeout: Duration, mut probe: F) -> Result<T, WaitError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Probe<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match probe().await {
            Probe::Done(value) => return Ok(value),
            Probe::NotYet(last) => last,
        };
        if Instant::now() >= deadline {
            return Err(WaitError {
                what: what.to_string(),
                after: timeout,
                last,
            });
        }
        sleep(Duration::from_millis(25)).await;
    }
}
