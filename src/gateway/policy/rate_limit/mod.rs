//! Rate limits: a token bucket per key (a client address, a header, a claim), kept in this
//! process ([`local`]) or in Redis and shared by every gateway replica ([`global`]), and the
//! answer a request gets: allowed or not, and the IETF `RateLimit-Policy` / `RateLimit` header
//! fields (draft-ietf-httpapi-ratelimit-headers-11) with `Retry-After` when refused.
//!
//! Both kinds keep a bucket as one number, its theoretical arrival time (the generic cell rate
//! algorithm, GCRA): the moment the bucket would be full again. A request adds one emission
//! interval (`per / requests`) to it and is allowed while the debt (that time minus now) stays
//! within `burst` intervals. That is exactly a token bucket of `burst` tokens refilled at
//! `requests` per `per`, with no timer and no counter to reset, and a bucket whose time has
//! passed is full: it carries no information and may be forgotten, which is what bounds the
//! memory of local limits and lets Redis expire idle keys.

use std::time::Duration;

use http::{HeaderName, HeaderValue};

pub mod global;
pub mod keyed;
pub mod local;

pub use global::{GlobalRateLimit, RedisLimiter, RedisLimiterError, WhenUnreachable};
pub use keyed::{Buckets, KeyedLimit, LimitKey};
pub use local::{Clock, LocalRateLimit, ManualClock, MonotonicClock};

/// `RateLimit-Policy`: the quota policy (draft-ietf-httpapi-ratelimit-headers-11 §3).
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit`: what is left of it for this client (§4).
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// A token bucket: `requests` per `per`, holding up to `burst` (>= 1).
///
/// A zero `requests`, `per` or `burst` is read as the smallest workable value (1, 1 ns, 1): the
/// resource's validation refuses them, and a limit must not divide by zero if one slips through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    pub requests: u32,
    pub per: Duration,
    pub burst: u32,
}

/// The answer to one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// What the bucket holds when full (the limit's `burst`).
    pub limit: u32,
    /// Requests the bucket still allows right now, after this one.
    pub remaining: u32,
    /// How long until the bucket holds one token more than `remaining`: until then no more than
    /// `remaining` requests are allowed (the draft's effective window). One emission interval when
    /// the bucket is full; `retry_after` when refused.
    pub reset: Duration,
    /// How long until a request would be allowed; set only when this one was refused.
    pub retry_after: Option<Duration>,
}

impl Decision {
    /// The response header fields for this decision under the policy named `policy_name`:
    /// `RateLimit-Policy: "name";q=<requests>;w=<seconds>`, `RateLimit: "name";r=<remaining>;t=<seconds>`
    /// and, when refused, `Retry-After: <seconds>`. Seconds are whole and rounded up, so a client
    /// that waits them is never early; `t` then equals `Retry-After`, as the draft asks (§6).
    ///
    /// The draft's window has whole seconds only: a `per` that is not a whole number of seconds is
    /// advertised over the next whole second with the quota scaled down to fit (5 per 500 ms is
    /// `q=10;w=1`). Characters a structured-field string cannot hold are left out of the name.
    pub fn headers(
        &self,
        policy_name: &str,
        limit: &Limit,
    ) -> impl Iterator<Item = (HeaderName, HeaderValue)> {
        let name = sf_string(policy_name);
        let (quota, window) = advertised_quota(limit);
        let policy = HeaderValue::try_from(format!("{name};q={quota};w={window}"));
        let state = HeaderValue::try_from(format!(
            "{name};r={};t={}",
            self.remaining,
            ceil_seconds(self.reset)
        ));
        let retry_after = self
            .retry_after
            .filter(|_| !self.allowed)
            .map(|wait| HeaderValue::from(ceil_seconds(wait)));
        [
            policy.ok().map(|value| (RATELIMIT_POLICY, value)),
            state.ok().map(|value| (RATELIMIT, value)),
            retry_after.map(|value| (http::header::RETRY_AFTER, value)),
        ]
        .into_iter()
        .flatten()
    }
}

/// `q` and `w` of `RateLimit-Policy`: the configured rate over a whole number of seconds.
pub(crate) fn advertised_quota(limit: &Limit) -> (u64, u64) {
    let per = limit.per.max(Duration::from_nanos(1));
    let requests = u64::from(limit.requests.max(1));
    if per.subsec_nanos() == 0 {
        return (requests, per.as_secs());
    }
    let window = ceil_seconds(per);
    let quota = u128::from(requests) * u128::from(window) * 1_000_000_000 / per.as_nanos();
    (u64::try_from(quota).unwrap_or(u64::MAX), window)
}

/// Whole seconds, rounded up.
pub(crate) fn ceil_seconds(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

/// `name` as a structured-field string (RFC 8941 §3.3.3): quoted, with `"` and `\` escaped and
/// anything but printable ASCII left out.
pub(crate) fn sf_string(name: &str) -> String {
    let mut quoted = String::with_capacity(name.len() + 2);
    quoted.push('"');
    for c in name.chars().filter(|c| (' '..='~').contains(c)) {
        if c == '"' || c == '\\' {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('"');
    quoted
}

/// The bucket arithmetic shared by local and global limits, in nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Gcra {
    /// The emission interval: how long one token takes to come back.
    interval: u64,
    /// `burst` intervals: the most debt a bucket may hold.
    capacity: u64,
    burst: u32,
}

impl Gcra {
    /// The arithmetic of `limit`, its interval rounded down to a multiple of `granule` nanoseconds
    /// (at least one), so that a store counting in coarser units (Redis: microseconds) computes
    /// the same answers.
    fn new(limit: &Limit, granule: u64) -> Self {
        let granule = granule.max(1);
        let per = u64::try_from(limit.per.as_nanos()).unwrap_or(u64::MAX);
        let interval = (per / u64::from(limit.requests.max(1)) / granule * granule).max(granule);
        let burst = limit.burst.max(1);
        Gcra {
            interval,
            capacity: interval.saturating_mul(u64::from(burst)),
            burst,
        }
    }

    /// One request at `now` against a bucket whose theoretical arrival time is `tat` (a time at
    /// or before `now`: a full bucket): the bucket's new time if it is allowed, and the decision.
    fn take(&self, tat: u64, now: u64) -> (Option<u64>, Decision) {
        let tat = tat.max(now);
        let debt = tat - now;
        let after = debt.saturating_add(self.interval);
        if after <= self.capacity {
            (Some(now + after), self.decision(true, after))
        } else {
            (None, self.decision(false, debt))
        }
    }

    /// The decision for a bucket that holds `debt` nanoseconds of debt after the request (allowed)
    /// or before it (refused).
    fn decision(&self, allowed: bool, debt: u64) -> Decision {
        if !allowed {
            let wait = Duration::from_nanos(debt.saturating_add(self.interval).saturating_sub(self.capacity));
            return Decision {
                allowed,
                limit: self.burst,
                remaining: 0,
                reset: wait,
                retry_after: Some(wait),
            };
        }
        // Tokens owed, rounded up: a token partly refilled cannot be spent yet.
        let owed = debt.div_ceil(self.interval);
        let reset = if owed == 0 {
            self.interval
        } else {
            debt - (owed - 1) * self.interval
        };
        Decision {
            allowed,
            limit: self.burst,
            remaining: u32::try_from(u64::from(self.burst).saturating_sub(owed)).unwrap_or(0),
            reset: Duration::from_nanos(reset),
            retry_after: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    fn limit(requests: u32, per: Duration, burst: u32) -> Limit {
        Limit { requests, per, burst }
    }

    fn header_map(decision: &Decision, name: &str, limit: &Limit) -> Vec<(String, String)> {
        decision
            .headers(name, limit)
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("<opaque>").to_string()))
            .collect()
    }

    #[test]
    fn a_bucket_allows_its_burst_at_once_then_one_request_per_interval() {
        let gcra = Gcra::new(&limit(10, Duration::from_secs(1), 3), 1);
        assert_eq!(gcra.interval, SECOND / 10);
        let mut tat = 0;
        let now = 5 * SECOND;
        let mut remaining = vec![];
        for _ in 0..3 {
            let (next, decision) = gcra.take(tat, now);
            assert!(decision.allowed);
            tat = next.expect("allowed requests move the bucket");
            remaining.push(decision.remaining);
        }
        assert_eq!(remaining, [2, 1, 0]);
        let (next, refused) = gcra.take(tat, now);
        assert_eq!(next, None, "a refused request leaves the bucket as it was");
        assert_eq!(refused.retry_after, Some(Duration::from_millis(100)));
        assert_eq!(refused.reset, Duration::from_millis(100));
        // 40 ms short of the interval: still refused, and told to wait the rest.
        let (_, early) = gcra.take(tat, now + 60_000_000);
        assert_eq!(early.retry_after, Some(Duration::from_millis(40)));
        let (_, on_time) = gcra.take(tat, now + SECOND / 10);
        assert!(on_time.allowed);
        assert_eq!(on_time.remaining, 0);
    }

    #[test]
    fn reset_is_the_time_until_the_next_token() {
        let gcra = Gcra::new(&limit(10, Duration::from_secs(1), 5), 1);
        let (tat, first) = gcra.take(0, SECOND);
        assert_eq!((first.remaining, first.reset), (4, Duration::from_millis(100)));
        // 30 ms later the spent token is 30 % back: a second request leaves 3, the next token
        // comes in 70 ms.
        let (_, second) = gcra.take(tat.expect("allowed"), SECOND + 30_000_000);
        assert_eq!((second.remaining, second.reset), (3, Duration::from_millis(70)));
    }

    #[test]
    fn a_coarser_granule_rounds_the_interval_down_to_it() {
        let gcra = Gcra::new(&limit(3, Duration::from_secs(1), 1), 1_000);
        assert_eq!(gcra.interval, 333_333_000);
        let fast = Gcra::new(&limit(u32::MAX, Duration::from_secs(1), 1), 1_000);
        assert_eq!(fast.interval, 1_000, "never below one granule");
    }

    #[test]
    fn zero_values_are_read_as_the_smallest_workable_limit() {
        let gcra = Gcra::new(&limit(0, Duration::ZERO, 0), 1);
        assert_eq!((gcra.interval, gcra.burst, gcra.capacity), (1, 1, 1));
    }

    #[test]
    fn allowed_requests_carry_both_fields_and_no_retry_after() {
        let policy = limit(100, Duration::from_secs(60), 20);
        let decision = Decision {
            allowed: true,
            limit: 20,
            remaining: 19,
            reset: Duration::from_millis(600),
            retry_after: None,
        };
        assert_eq!(
            header_map(&decision, "per-client", &policy),
            [
                (
                    "ratelimit-policy".to_string(),
                    "\"per-client\";q=100;w=60".to_string()
                ),
                ("ratelimit".to_string(), "\"per-client\";r=19;t=1".to_string()),
            ]
        );
    }

    #[test]
    fn refused_requests_say_when_to_come_back_in_whole_seconds_rounded_up() {
        let policy = limit(1, Duration::from_secs(10), 1);
        let decision = Decision {
            allowed: false,
            limit: 1,
            remaining: 0,
            reset: Duration::from_millis(2_100),
            retry_after: Some(Duration::from_millis(2_100)),
        };
        assert_eq!(
            header_map(&decision, "orders", &policy),
            [
                ("ratelimit-policy".to_string(), "\"orders\";q=1;w=10".to_string()),
                ("ratelimit".to_string(), "\"orders\";r=0;t=3".to_string()),
                ("retry-after".to_string(), "3".to_string()),
            ]
        );
    }

    #[test]
    fn a_window_shorter_than_a_second_is_advertised_over_one_second() {
        assert_eq!(
            advertised_quota(&limit(5, Duration::from_millis(500), 5)),
            (10, 1)
        );
        assert_eq!(
            advertised_quota(&limit(5, Duration::from_millis(1_500), 5)),
            (6, 2)
        );
        assert_eq!(
            advertised_quota(&limit(7, Duration::from_secs(3600), 5)),
            (7, 3600)
        );
    }

    #[test]
    fn policy_names_are_quoted_structured_field_strings() {
        assert_eq!(sf_string(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(sf_string("héllo\r\nx"), "\"hllox\"");
        let decision = Gcra::new(&limit(1, Duration::from_secs(1), 1), 1).decision(true, SECOND);
        let names: Vec<_> = decision
            .headers("\u{7f}\"\n", &limit(1, Duration::from_secs(1), 1))
            .map(|(name, _)| name)
            .collect();
        assert_eq!(
            names,
            [RATELIMIT_POLICY, RATELIMIT],
            "hostile names still make valid fields"
        );
    }
}
