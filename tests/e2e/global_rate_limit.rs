//! Global rate limits against a real `redis-server` (no control plane): two limiters with
//! connections of their own play two gateway processes sharing a limit; Redis is stopped, frozen
//! and restarted under them.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use microgate::gateway::policy::rate_limit::{GlobalRateLimit, Limit, RedisLimiter, WhenUnreachable};
use microgate_test_support::{
    redis_server::RedisServer,
    wait::{self, Probe},
};

const TIMEOUT: Duration = Duration::from_millis(250);

async fn redis() -> RedisServer {
    RedisServer::start().await.expect("a redis-server for the test")
}

fn limiter(redis: &RedisServer) -> Arc<RedisLimiter> {
    Arc::new(RedisLimiter::new(&redis.url()).expect("the harness's URL is valid"))
}

fn limit(requests: u32, per: Duration, burst: u32) -> Limit {
    Limit { requests, per, burst }
}

/// Eval and EVALSHA executions Redis counted, failed ones included.
async fn script_calls(redis: &RedisServer) -> u64 {
    let client = redis::Client::open(redis.url()).expect("the harness's URL is valid");
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect to the test's Redis");
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut connection)
        .await
        .expect("INFO commandstats");
    // cmdstat_evalsha:calls=3,usec=..,rejected_calls=0,failed_calls=1
    stats
        .lines()
        .filter(|line| line.starts_with("cmdstat_eval:") || line.starts_with("cmdstat_evalsha:"))
        .flat_map(|line| line.split([':', ',']))
        .filter_map(|field| field.split_once('='))
        .filter(|(name, _)| *name == "calls" || *name == "rejected_calls")
        .filter_map(|(_, value)| value.parse::<u64>().ok())
        .sum()
}

async fn pttl(redis: &RedisServer, key: &str) -> i64 {
    let client = redis::Client::open(redis.url()).expect("the harness's URL is valid");
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect to the test's Redis");
    redis::cmd("PTTL")
        .arg(key)
        .query_async(&mut connection)
        .await
        .expect("PTTL")
}

#[tokio::test]
async fn a_check_is_one_round_trip_and_idle_buckets_expire() {
    let redis = redis().await;
    let connection = limiter(&redis);
    let slow = GlobalRateLimit::new(
        connection.clone(),
        "slow:".into(),
        limit(1, Duration::from_secs(60), 3),
        WhenUnreachable::Deny,
        TIMEOUT,
    );
    let mut answers = vec![];
    for _ in 0..100 {
        answers.push(slow.check(b"client").await.allowed);
    }
    assert_eq!(
        answers.iter().filter(|allowed| **allowed).count(),
        3,
        "{answers:?}"
    );
    assert_eq!(slow.unreachable_count(), 0);
    // One EVALSHA per check, and one EVAL after the first found the script unknown.
    assert_eq!(script_calls(&redis).await, 101);
    // The key lives as long as its bucket takes to fill up again: 3 tokens of 60 s.
    let ttl = pttl(&redis, "slow:client").await;
    assert!((170_000..=180_000).contains(&ttl), "PTTL {ttl} ms");

    let fast = GlobalRateLimit::new(
        connection,
        "fast:".into(),
        limit(10, Duration::from_secs(1), 3),
        WhenUnreachable::Deny,
        TIMEOUT,
    );
    assert!(fast.check(b"client").await.allowed);
    let ttl = pttl(&redis, "fast:client").await;
    assert!((1..=100).contains(&ttl), "PTTL {ttl} ms: one token of 100 ms");
    wait::until(
        "the full bucket's key to expire",
        Duration::from_secs(5),
        || async {
            match pttl(&redis, "fast:client").await {
                -2 => Probe::Done(()),
                ttl => Probe::NotYet(format!("PTTL {ttl}")),
            }
        },
    )
    .await
    .expect("an idle key vanishes");
}

/// Two limiters with connections of their own (two gateway processes) draw from one key for two
/// seconds, each with several callers that never stop asking: together they get no more than
/// the bucket allows over that time, and at least 90 % of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_sharing_a_key_hold_the_limit_within_ten_percent() {
    const RATE: f64 = 400.0;
    const BURST: u32 = 40;
    let redis = redis().await;
    let gateways: Vec<_> = (0..2)
        .map(|_| {
            Arc::new(GlobalRateLimit::new(
                limiter(&redis),
                "shared:".into(),
                limit(400, Duration::from_secs(1), BURST),
                WhenUnreachable::Deny,
                Duration::from_secs(1),
            ))
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let allowed: Vec<_> = gateways.iter().map(|_| Arc::new(AtomicU64::new(0))).collect();
    let checks = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut callers = vec![];
    for (gateway, allowed) in gateways.iter().zip(&allowed) {
        for _ in 0..8 {
            let (gateway, allowed, stop, checks) =
                (gateway.clone(), allowed.clone(), stop.clone(), checks.clone());
            callers.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if gateway.check(b"one client").await.allowed {
                        allowed.fetch_add(1, Ordering::Relaxed);
                    }
                    checks.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for caller in callers {
        caller.await.expect("a caller finishes");
    }
    let elapsed = start.elapsed().as_secs_f64();
    let per_gateway: Vec<u64> = allowed
        .iter()
        .map(|count| count.load(Ordering::Relaxed))
        .collect();
    let total = per_gateway.iter().sum::<u64>() as f64;
    let expected = f64::from(BURST) + RATE * elapsed;
    let checks = checks.load(Ordering::Relaxed);
    eprintln!(
        "two gateways: {per_gateway:?} allowed of {checks} checks in {elapsed:.3} s; \
         the bucket allows {expected:.1} ({:.2} %)",
        100.0 * total / expected
    );
    assert!(total <= expected.ceil(), "{total} allowed > {expected:.1}");
    assert!(total >= 0.9 * expected, "{total} allowed < 90 % of {expected:.1}");
    assert!(
        per_gateway.iter().all(|count| *count > 0),
        "both gateways drew: {per_gateway:?}"
    );
    for gateway in &gateways {
        assert_eq!(gateway.unreachable_count(), 0);
    }
}

/// Asks `limit` until Redis answers again (the answer did not come from the declared fallback)
/// and returns that answer's `allowed`.
async fn until_redis_answers(limit: &GlobalRateLimit) -> bool {
    wait::until(
        "the limit to reach Redis again",
        Duration::from_secs(10),
        || async {
            let before = limit.unreachable_count();
            let decision = limit.check(b"client").await;
            if limit.unreachable_count() == before {
                Probe::Done(decision.allowed)
            } else {
                Probe::NotYet(format!("answered as declared: {decision:?}"))
            }
        },
    )
    .await
    .expect("the limit uses Redis again")
}

#[tokio::test]
async fn redis_stopped_mid_test_answers_as_declared_then_limits_apply_again() {
    let mut redis = redis().await;
    let connection = limiter(&redis);
    let rule = limit(1, Duration::from_secs(60), 2);
    let open = GlobalRateLimit::new(
        connection.clone(),
        "open:".into(),
        rule,
        WhenUnreachable::Allow,
        TIMEOUT,
    );
    let closed = GlobalRateLimit::new(
        connection.clone(),
        "closed:".into(),
        rule,
        WhenUnreachable::Deny,
        TIMEOUT,
    );
    for limit in [&open, &closed] {
        let answers = [
            limit.check(b"client").await.allowed,
            limit.check(b"client").await.allowed,
            limit.check(b"client").await.allowed,
        ];
        assert_eq!(answers, [true, true, false], "the burst of 2, then refused");
    }

    redis.stop();
    for _ in 0..20 {
        let started = Instant::now();
        let fail_open = open.check(b"client").await;
        let fail_closed = closed.check(b"client").await;
        assert!(
            started.elapsed() < 2 * TIMEOUT,
            "two checks took {:?}",
            started.elapsed()
        );
        assert!(fail_open.allowed, "Allow lets requests through: {fail_open:?}");
        assert!(!fail_closed.allowed, "Deny refuses them: {fail_closed:?}");
        assert!(fail_closed.retry_after.is_some());
    }
    assert_eq!((open.unreachable_count(), closed.unreachable_count()), (20, 20));
    assert!(connection.is_down());

    // Restarted empty: the buckets are full again, and they empty as before.
    redis.restart().await.expect("redis-server starts again");
    assert!(until_redis_answers(&closed).await, "a fresh bucket allows");
    assert!(closed.check(b"client").await.allowed);
    assert!(!closed.check(b"client").await.allowed, "the limit applies again");
    assert!(until_redis_answers(&open).await);
    assert!(open.check(b"client").await.allowed);
    assert!(!open.check(b"client").await.allowed, "the limit applies again");
    assert!(!connection.is_down());
}

/// A frozen Redis keeps its connections and answers nothing: the first check waits the timeout,
/// later ones answer at once (without the backoff, 100 checks would take 100 timeouts).
#[tokio::test]
async fn a_frozen_redis_costs_one_timeout_not_one_per_check() {
    let redis = redis().await;
    let connection = limiter(&redis);
    let closed = GlobalRateLimit::new(
        connection.clone(),
        "frozen:".into(),
        limit(1, Duration::from_secs(60), 1),
        WhenUnreachable::Deny,
        TIMEOUT,
    );
    assert!(closed.check(b"client").await.allowed);

    redis.pause().expect("freeze redis-server");
    let started = Instant::now();
    assert!(!closed.check(b"client").await.allowed);
    let first = started.elapsed();
    assert!(first >= TIMEOUT, "the first check waited for Redis: {first:?}");
    let started = Instant::now();
    for _ in 0..100 {
        assert!(!closed.check(b"client").await.allowed);
    }
    let rest = started.elapsed();
    assert!(
        rest < 4 * TIMEOUT,
        "100 checks of a Redis known down took {rest:?}"
    );
    assert_eq!(closed.unreachable_count(), 101);

    redis.resume().expect("thaw redis-server");
    // The bucket survived the freeze: still empty.
    assert!(!until_redis_answers(&closed).await, "the limit applies again");
}
