//! When a failed attempt is tried again, how long to wait first, and the budget that keeps
//! retries from multiplying an outage.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use http::StatusCode;

use super::random::random_below;
use crate::api::policy::{RetryOn, RetryPolicy};

/// How an attempt failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// No connection: the request never reached the service.
    Connect,
    /// The connection broke after the request was (perhaps) sent, before a response.
    Reset,
    /// The per-try timeout passed without a response.
    Timeout,
    /// The service answered with this status.
    Status(StatusCode),
}

impl Failure {
    /// Whether the failure counts against the endpoint for outlier detection: every failed
    /// exchange does, an answer only when it is a 5xx (a listed 4xx is the request's fault).
    pub fn is_unhealthy(self) -> bool {
        match self {
            Failure::Status(status) => status.is_server_error(),
            _ => true,
        }
    }
}

/// Whether `failure` is one the policy retries. A request that may have reached the service is
/// retried only if its method is idempotent: a POST is never sent twice.
pub fn should_retry(policy: &RetryPolicy, failure: Failure, idempotent: bool) -> bool {
    if failure != Failure::Connect && !idempotent {
        return false;
    }
    let on = |condition| policy.retry_on.contains(&condition);
    match failure {
        Failure::Connect => on(RetryOn::ConnectFailure),
        Failure::Reset => on(RetryOn::Reset),
        Failure::Timeout => {
            on(RetryOn::PerTryTimeout) || on(RetryOn::ServerError) || on(RetryOn::GatewayError)
        }
        Failure::Status(status) => {
            (status.is_server_error() && on(RetryOn::ServerError))
                || (matches!(status.as_u16(), 502..=504) && on(RetryOn::GatewayError))
                || (on(RetryOn::RetriableStatusCodes)
                    && policy
                        .retriable_status_codes
                        .contains(&i32::from(status.as_u16())))
        }
    }
}

/// The wait before retry number `retry` (1 for the first retry): full jitter, a random time up
/// to `base × 2^(retry-1)`, capped at `max`.
pub fn backoff(policy: &RetryPolicy, retry: u32) -> Duration {
    let base = policy.backoff.base.get();
    let ceiling = base
        .saturating_mul(1u32 << retry.saturating_sub(1).min(20))
        .min(policy.backoff.max.get());
    let micros = u64::try_from(ceiling.as_micros()).unwrap_or(u64::MAX);
    if micros == 0 {
        return Duration::ZERO;
    }
    Duration::from_micros(random_below(usize::try_from(micros).unwrap_or(usize::MAX)) as u64)
}

/// The longest `Retry-After` honoured when the route sets no timeout.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// A `Retry-After` in seconds (the HTTP-date form is not honoured).
pub fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    retry_after_value(headers.get(http::header::RETRY_AFTER)?)
}

/// A `Retry-After` value in seconds (the HTTP-date form is not followed).
pub fn retry_after_value(value: &http::HeaderValue) -> Option<Duration> {
    let value = value.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// How long to wait before retry number `retry`: the upstream's `Retry-After` when it gave one,
/// else the jittered backoff. `None` when the wait would not end before the route's deadline
/// (`remaining`), or a `Retry-After` is longer than a minute with no deadline: then the answer
/// goes back to the client as it is.
pub fn wait_before_retry(
    policy: &RetryPolicy,
    retry: u32,
    retry_after: Option<Duration>,
    remaining: Option<Duration>,
) -> Option<Duration> {
    if remaining.is_some_and(|r| r.is_zero()) {
        return None;
    }
    match retry_after {
        Some(wait) if remaining.is_some_and(|r| wait >= r) || wait > MAX_RETRY_AFTER => None,
        Some(wait) => Some(wait),
        None => {
            let wait = backoff(policy, retry);
            Some(remaining.map_or(wait, |r| wait.min(r)))
        }
    }
}

/// Retries may be at most `percent` of requests over the last 10 seconds, plus `min_per_second`.
/// Lock-free: one-second slots of counters, reused as time moves on.
///
/// Slots are whole seconds, and a window of them never lines up with the last 10 seconds
/// exactly: retries are counted over the slots that cover at least the last 10 seconds (11, the
/// current one partly), requests only over those within them (10), so that no 10 seconds ever
/// see more retries than the budget allows. Counting both over 10 slots let the retries of the
/// oldest second drop out of the count up to a second early: an outage straddling the window's
/// edge got an extra second of allowance.
#[derive(Debug)]
pub struct RetryBudget {
    percent: u64,
    min_per_second: u64,
    epoch: Instant,
    slots: [Slot; SLOTS as usize],
}

const WINDOW_SECONDS: u64 = 10;
/// One slot more than the window, for the retries of the second partly in it.
const SLOTS: u64 = WINDOW_SECONDS + 1;

#[derive(Debug, Default)]
struct Slot {
    second: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

impl RetryBudget {
    pub fn new(percent: u32, min_per_second: u32) -> Self {
        Self {
            percent: u64::from(percent),
            min_per_second: u64::from(min_per_second),
            epoch: Instant::now(),
            slots: Default::default(),
        }
    }

    /// Counts a request (not a retry).
    pub fn deposit(&self) {
        self.deposit_at(self.now());
    }

    /// Takes one retry from the budget; `false` when the budget is spent.
    pub fn withdraw(&self) -> bool {
        self.withdraw_at(self.now())
    }

    fn deposit_at(&self, now: u64) {
        self.slot(now).requests.fetch_add(1, Ordering::Relaxed);
    }

    fn withdraw_at(&self, now: u64) -> bool {
        let (mut requests, mut retries) = (0, 0);
        for slot in &self.slots {
            let second = slot.second.load(Ordering::Relaxed);
            if second > now {
                continue;
            }
            if second + WINDOW_SECONDS > now {
                requests += slot.requests.load(Ordering::Relaxed);
            }
            if second + SLOTS > now {
                retries += slot.retries.load(Ordering::Relaxed);
            }
        }
        let allowed = self.min_per_second * WINDOW_SECONDS + requests * self.percent / 100;
        if retries >= allowed {
            return false;
        }
        self.slot(now).retries.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Seconds since the budget began, offset by one so slot 0 is never "current" by default.
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_secs() + 1
    }

    fn slot(&self, now: u64) -> &Slot {
        let slot = &self.slots[(now % SLOTS) as usize];
        let second = slot.second.load(Ordering::Relaxed);
        if second != now
            && slot
                .second
                .compare_exchange(second, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            // This slot last counted a second that has left the window: start it afresh.
            slot.requests.store(0, Ordering::Relaxed);
            slot.retries.store(0, Ordering::Relaxed);
        }
        slot
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(retry_on: Vec<RetryOn>, codes: Vec<i32>) -> RetryPolicy {
        RetryPolicy {
            retry_on,
            retriable_status_codes: codes,
            ..RetryPolicy::default()
        }
    }

    #[test]
    fn the_default_policy_retries_connect_failures_resets_and_gateway_errors() {
        let p = RetryPolicy::default();
        assert!(
            should_retry(&p, Failure::Connect, false),
            "never reached the service: always safe"
        );
        assert!(should_retry(&p, Failure::Reset, true));
        assert!(should_retry(
            &p,
            Failure::Status(StatusCode::SERVICE_UNAVAILABLE),
            true
        ));
        assert!(!should_retry(
            &p,
            Failure::Status(StatusCode::INTERNAL_SERVER_ERROR),
            true
        ));
        assert!(!should_retry(&p, Failure::Status(StatusCode::NOT_FOUND), true));
    }

    #[test]
    fn a_request_that_may_have_reached_the_service_is_retried_only_if_idempotent() {
        let p = policy(vec![RetryOn::Reset, RetryOn::ServerError], vec![]);
        assert!(!should_retry(&p, Failure::Reset, false));
        assert!(!should_retry(&p, Failure::Status(StatusCode::BAD_GATEWAY), false));
        assert!(should_retry(&p, Failure::Status(StatusCode::BAD_GATEWAY), true));
    }

    #[test]
    fn retriable_status_codes_and_timeouts() {
        let p = policy(vec![RetryOn::RetriableStatusCodes], vec![409]);
        assert!(should_retry(&p, Failure::Status(StatusCode::CONFLICT), true));
        assert!(!should_retry(
            &p,
            Failure::Status(StatusCode::SERVICE_UNAVAILABLE),
            true
        ));
        assert!(!should_retry(&p, Failure::Timeout, true));
        assert!(should_retry(
            &policy(vec![RetryOn::GatewayError], vec![]),
            Failure::Timeout,
            true
        ));
    }

    #[test]
    fn per_try_timeout_retries_a_timeout_and_no_answer() {
        let p = policy(vec![RetryOn::PerTryTimeout], vec![]);
        assert!(should_retry(&p, Failure::Timeout, true));
        assert!(
            !should_retry(&p, Failure::Timeout, false),
            "a POST may have reached the service"
        );
        assert!(!should_retry(
            &p,
            Failure::Status(StatusCode::GATEWAY_TIMEOUT),
            true
        ));
        assert!(!should_retry(&p, Failure::Reset, true));
    }

    #[test]
    fn backoff_is_jittered_under_an_exponential_cap() {
        let p = RetryPolicy::default(); // 25ms base, 250ms max
        for _ in 0..200 {
            assert!(backoff(&p, 1) <= Duration::from_millis(25));
            assert!(backoff(&p, 2) <= Duration::from_millis(50));
            assert!(backoff(&p, 10) <= Duration::from_millis(250));
        }
        let spread: std::collections::HashSet<_> = (0..50).map(|_| backoff(&p, 3)).collect();
        assert!(spread.len() > 10, "jittered, not fixed");
    }

    #[test]
    fn retry_after_is_honoured_when_it_fits_the_deadline() {
        let p = RetryPolicy::default();
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::RETRY_AFTER, "2".parse().expect("value"));
        let asked = retry_after(&headers);
        assert_eq!(asked, Some(Duration::from_secs(2)));
        assert_eq!(
            wait_before_retry(&p, 1, asked, None),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            wait_before_retry(&p, 1, asked, Some(Duration::from_secs(5))),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            wait_before_retry(&p, 1, asked, Some(Duration::from_secs(1))),
            None,
            "past the deadline"
        );
        assert_eq!(
            wait_before_retry(&p, 1, Some(Duration::from_secs(3600)), None),
            None,
            "too long"
        );
        let jittered = wait_before_retry(&p, 1, None, Some(Duration::from_millis(5))).expect("a wait");
        assert!(
            jittered <= Duration::from_millis(5),
            "the backoff is cut to the deadline"
        );
        assert_eq!(wait_before_retry(&p, 1, None, Some(Duration::ZERO)), None);
    }

    #[test]
    fn the_budget_allows_its_percentage_plus_the_floor() {
        let budget = RetryBudget::new(20, 0);
        for _ in 0..100 {
            budget.deposit();
        }
        let allowed = (0..100).filter(|_| budget.withdraw()).count();
        assert_eq!(allowed, 20);
        let floor = RetryBudget::new(0, 1);
        assert_eq!(
            (0..100).filter(|_| floor.withdraw()).count(),
            10,
            "1/s over a 10 s window"
        );
    }

    #[test]
    fn no_ten_seconds_see_more_retries_than_the_budget_allows() {
        // An outage from second 1: 100 requests a second, every one failing.
        let budget = RetryBudget::new(20, 1);
        let mut retries_by_second = Vec::new();
        for second in 1..=30 {
            let mut retried = 0;
            for _ in 0..100 {
                budget.deposit_at(second);
                if budget.withdraw_at(second) {
                    retried += 1;
                }
            }
            retries_by_second.push(retried);
        }
        // A second's slot stands for any instant in it: the last 10 seconds may begin anywhere
        // in the slot 10 back, so every run of 11 slots is held to one window's allowance.
        for run in retries_by_second.windows(11) {
            let retries: u64 = run.iter().sum();
            assert!(
                retries <= 10 + 20 * 100,
                "{retries} retries in 11 slots: {retries_by_second:?}"
            );
        }
        let total: u64 = retries_by_second.iter().sum();
        assert!(
            total >= 3 * 200 - 40,
            "the budget still allows its share: {total}"
        );
    }
}
