//! Outlier detection: an endpoint that fails `consecutiveFailures` times in a row is taken out of
//! rotation for `baseEjectionTime` × the number of times it has been ejected, but never more than
//! `maxEjectionPercent` of a Microservice's endpoints at once.

use std::{sync::atomic::Ordering, time::Duration};

use super::{EndpointState, Pool, clock_us};
use crate::api::policy::OutlierDetection;

/// The policy in the units the data plane uses.
#[derive(Clone, Copy, Debug)]
pub struct Ejection {
    /// 0: never eject.
    pub consecutive_failures: u32,
    pub base: Duration,
    pub max_percent: u32,
}

impl From<&OutlierDetection> for Ejection {
    fn from(policy: &OutlierDetection) -> Self {
        Self {
            consecutive_failures: u32::try_from(policy.consecutive_failures).unwrap_or(0),
            base: policy.base_ejection_time.get(),
            max_percent: u32::try_from(policy.max_ejection_percent).unwrap_or(0),
        }
    }
}

/// Records one attempt's outcome for `endpoint`; returns whether this ejected it.
pub fn record(pool: &Pool, endpoint: &EndpointState, success: bool, policy: Ejection) -> bool {
    if success {
        endpoint.consecutive_failures.store(0, Ordering::Relaxed);
        return false;
    }
    if policy.consecutive_failures == 0 {
        return false;
    }
    let failures = endpoint.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
    let now = clock_us();
    if failures < policy.consecutive_failures || endpoint.is_ejected(now) {
        return false;
    }
    let total = pool.endpoints().len();
    let ejected = pool.endpoints().iter().filter(|e| e.is_ejected(now)).count();
    // At least one endpoint may always be ejected when there are several.
    let allowed = (total * policy.max_percent as usize / 100).max(usize::from(total > 1));
    if ejected >= allowed {
        return false;
    }
    let times = endpoint.ejections.fetch_add(1, Ordering::Relaxed) + 1;
    let duration = policy.base.saturating_mul(times);
    let until = now.saturating_add(u64::try_from(duration.as_micros()).unwrap_or(u64::MAX));
    endpoint.ejected_until_us.store(until, Ordering::Relaxed);
    endpoint.consecutive_failures.store(0, Ordering::Relaxed);
    pool.ejected();
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{api::policy::LoadBalancerPolicy, discovery::Endpoint};

    fn pool(n: usize) -> Pool {
        let endpoints: Vec<_> = (0..n)
            .map(|i| Endpoint {
                pod: format!("pod-{i}").into(),
                ip: format!("127.0.9.{}", i + 2).parse().expect("ip"),
                port: 80,
                ready: true,
                node: None,
                zone: None,
            })
            .collect();
        Pool::new(
            LoadBalancerPolicy::RoundRobin,
            &endpoints,
            None,
            &Default::default(),
        )
    }

    const POLICY: Ejection = Ejection {
        consecutive_failures: 3,
        base: Duration::from_secs(30),
        max_percent: 50,
    };

    #[test]
    fn consecutive_failures_eject_and_a_success_resets_the_count() {
        let pool = pool(3);
        let bad = pool.endpoints()[0].clone();
        assert!(!record(&pool, &bad, false, POLICY));
        assert!(!record(&pool, &bad, false, POLICY));
        assert!(!record(&pool, &bad, true, POLICY), "a success in between");
        assert!(!record(&pool, &bad, false, POLICY));
        assert!(!record(&pool, &bad, false, POLICY));
        assert!(record(&pool, &bad, false, POLICY), "three in a row");
        assert!(bad.is_ejected(clock_us()));
        for _ in 0..30 {
            let picked = pool.pick(None, None).expect("an endpoint");
            assert!(
                !std::ptr::eq(picked.as_ref(), bad.as_ref()),
                "an ejected endpoint gets no traffic"
            );
        }
    }

    #[test]
    fn no_more_than_the_max_percent_is_ejected() {
        let pool = pool(4);
        let mut ejected = 0;
        for endpoint in pool.endpoints() {
            for _ in 0..3 {
                if record(&pool, endpoint, false, POLICY) {
                    ejected += 1;
                }
            }
        }
        assert_eq!(ejected, 2, "50 % of 4");
    }

    #[test]
    fn zero_consecutive_failures_turns_ejection_off() {
        let pool = pool(2);
        let off = Ejection {
            consecutive_failures: 0,
            ..POLICY
        };
        let bad = pool.endpoints()[0].clone();
        assert!((0..100).all(|_| !record(&pool, &bad, false, off)));
    }

    #[test]
    fn an_ejection_ends_after_its_time_and_lasts_longer_each_time() {
        let pool = pool(2);
        let short = Ejection {
            base: Duration::from_millis(20),
            ..POLICY
        };
        let bad = pool.endpoints()[0].clone();
        (0..3).for_each(|_| {
            record(&pool, &bad, false, short);
        });
        assert!(bad.is_ejected(clock_us()));
        std::thread::sleep(Duration::from_millis(30));
        assert!(!bad.is_ejected(clock_us()), "back in rotation");
        (0..3).for_each(|_| {
            record(&pool, &bad, false, short);
        });
        let until = bad.ejected_until_us.load(Ordering::Relaxed);
        assert!(until >= clock_us() + 30_000, "the second ejection lasts 2 × base");
    }
}
