//! Global limits: buckets kept in Redis, so every gateway replica draws from the same ones.
//!
//! A check is one round trip: `EVALSHA` of a Lua script that reads the bucket, decides, writes it
//! back and returns the decision atomically (`EVAL` once, when Redis does not know the script
//! yet, after a restart). The script takes the time from Redis (`TIME`), so replicas' clocks do
//! not matter, and sets the key to expire when its bucket would be full again: an idle key costs
//! Redis nothing for long.
//!
//! Each process keeps one multiplexed connection ([`RedisLimiter`]) for all its limits and
//! worker threads. A check waits at most its limit's timeout; past that, or when Redis cannot be
//! reached, the limit's declared [`WhenUnreachable`] answers. Once a failure has shown Redis down,
//! checks stop trying it: they answer at once while one check at a time probes, after a backoff
//! that doubles from 50 ms up to 1 s (with jitter, so replicas do not probe in step), reconnecting
//! if the connection was lost. The first probe that succeeds brings every limit back.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use arc_swap::ArcSwapOption;
use redis::{AsyncConnectionConfig, ErrorKind, RedisError, ServerErrorKind, aio::MultiplexedConnection};
use tracing::{info, warn};

use super::{Decision, Gcra, Limit};
use crate::gateway::random::random_below;

/// Redis counts the script's time in microseconds.
const MICROSECOND: u64 = 1_000;

/// The first wait before probing a Redis that failed; it doubles per failed probe.
const BACKOFF_FIRST: Duration = Duration::from_millis(50);
/// The longest wait between probes.
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// KEYS[1]: the bucket. ARGV[1]: the emission interval, ARGV[2]: `burst` intervals (microseconds).
/// Returns {1, debt after} when allowed and {0, debt before} when refused (microseconds), the
/// debt being the bucket's theoretical arrival time minus now, as the parent module computes it.
/// Times are below 2^53, exact in Lua's doubles; `%.0f` writes them whole.
const SCRIPT: &str = r#"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local interval = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then
  tat = now
end
local debt = tat - now + interval
if debt > capacity then
  return {0, tat - now}
end
redis.call('SET', KEYS[1], string.format('%.0f', now + debt), 'PX', math.ceil(debt / 1000))
return {1, debt}
"#;

#[derive(Debug, thiserror::Error)]
pub enum RedisLimiterError {
    /// The URL itself is not logged: it may hold a password.
    #[error("the Redis URL of global rate limits is not usable: {0}")]
    Url(#[source] RedisError),
}

/// What a global limit answers when Redis cannot: let requests through (fail open) or refuse
/// them (fail closed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhenUnreachable {
    Allow,
    Deny,
}

/// This process's connection to the Redis that holds global buckets: one multiplexed connection
/// for every limit and worker, connected on first use and again after a failure.
///
/// The connection's tasks run on the runtime that made it (a worker's): if that runtime stops,
/// the connection fails, and the next probe reconnects on the runtime of the check that makes it.
pub struct RedisLimiter {
    client: redis::Client,
    script_sha: String,
    connection: ArcSwapOption<MultiplexedConnection>,
    /// Held while connecting: when Redis is believed up, checks wait for one connection rather
    /// than each opening its own.
    connecting: tokio::sync::Mutex<()>,
    health: Health,
}

impl std::fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLimiter")
            .field("down", &self.is_down())
            .finish_non_exhaustive()
    }
}

impl RedisLimiter {
    /// A limiter for the Redis at `url` (`redis://[user:password@]host:port/db`). Nothing is
    /// connected until the first check.
    pub fn new(url: &str) -> Result<Self, RedisLimiterError> {
        let client = redis::Client::open(url).map_err(RedisLimiterError::Url)?;
        Ok(RedisLimiter {
            client,
            script_sha: redis::Script::new(SCRIPT).get_hash().to_string(),
            connection: ArcSwapOption::empty(),
            connecting: tokio::sync::Mutex::new(()),
            health: Health::new(),
        })
    }

    /// Whether the last attempt to reach Redis failed (checks answer without it meanwhile).
    pub fn is_down(&self) -> bool {
        self.health.failures.load(Ordering::Relaxed) > 0
    }

    /// Runs the script for `key` and returns (allowed, debt in microseconds). `timeout` bounds
    /// each connection attempt and reply.
    async fn take(&self, key: &[u8], gcra: &Gcra, timeout: Duration) -> Result<(bool, u64), Failure> {
        let probe = match self.health.gate() {
            Gate::Open => None,
            Gate::Probe(probe) => Some(probe),
            Gate::Closed => return Err(Failure::KnownDown),
        };
        let result = self.run_script(key, gcra, timeout, probe.is_some()).await;
        match &result {
            Ok(_) => self.health.succeeded(),
            Err(Failure::Transport(error)) => self.lost(error),
            Err(Failure::Answer(_) | Failure::KnownDown) => {}
        }
        drop(probe);
        result
    }

    async fn run_script(
        &self,
        key: &[u8],
        gcra: &Gcra,
        timeout: Duration,
        probing: bool,
    ) -> Result<(bool, u64), Failure> {
        let mut connection = self.connection(timeout, probing).await?;
        let interval = gcra.interval / MICROSECOND;
        let capacity = gcra.capacity / MICROSECOND;
        let reply = redis::cmd("EVALSHA")
            .arg(&self.script_sha)
            .arg(1)
            .arg(key)
            .arg(interval)
            .arg(capacity)
            .query_async::<(i64, i64)>(&mut connection)
            .await;
        let reply = match reply {
            Err(error) if error.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                redis::cmd("EVAL")
                    .arg(SCRIPT)
                    .arg(1)
                    .arg(key)
                    .arg(interval)
                    .arg(capacity)
                    .query_async::<(i64, i64)>(&mut connection)
                    .await
            }
            reply => reply,
        };
        match reply {
            Ok((allowed, debt)) => Ok((allowed == 1, u64::try_from(debt).unwrap_or(0))),
            Err(error) => Err(Failure::from(error)),
        }
    }

    /// The current connection, or a new one. Checks that waited for another's attempt to connect
    /// give up if it failed: only probes connect to a Redis known down.
    async fn connection(&self, timeout: Duration, probing: bool) -> Result<MultiplexedConnection, Failure> {
        if let Some(connection) = self.connection.load_full() {
            return Ok((*connection).clone());
        }
        let _connecting = self.connecting.lock().await;
        if let Some(connection) = self.connection.load_full() {
            return Ok((*connection).clone());
        }
        if !probing && self.is_down() {
            return Err(Failure::KnownDown);
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        let connection = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(Failure::from)?;
        self.connection.store(Some(Arc::new(connection.clone())));
        Ok(connection)
    }

    /// Forgets the connection after a transport failure or a timeout (a connection whose peer
    /// vanished may never fail by itself), and backs off.
    fn lost(&self, error: &str) {
        self.connection.store(None);
        self.health.failed(error);
    }
}

/// A global limit: its buckets are keys `<key_prefix><key>` in Redis.
pub struct GlobalRateLimit {
    redis: Arc<RedisLimiter>,
    key_prefix: Vec<u8>,
    gcra: Gcra,
    when_unreachable: WhenUnreachable,
    timeout: Duration,
    unreachable: AtomicU64,
}

impl std::fmt::Debug for GlobalRateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GlobalRateLimit")
            .field("gcra", &self.gcra)
            .field("when_unreachable", &self.when_unreachable)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl GlobalRateLimit {
    /// A limit whose checks wait at most `timeout` for Redis. Its emission interval is rounded
    /// down to whole microseconds (Redis's time), so a limit faster than a million requests a
    /// second per key is held at that.
    pub fn new(
        redis: Arc<RedisLimiter>,
        key_prefix: String,
        limit: Limit,
        when_unreachable: WhenUnreachable,
        timeout: Duration,
    ) -> Self {
        GlobalRateLimit {
            redis,
            key_prefix: key_prefix.into_bytes(),
            gcra: Gcra::new(&limit, MICROSECOND),
            when_unreachable,
            timeout,
            unreachable: AtomicU64::new(0),
        }
    }

    /// Takes a token from `key`'s bucket in Redis, or answers as declared when Redis cannot.
    pub async fn check(&self, key: &[u8]) -> Decision {
        let mut bucket = Vec::with_capacity(self.key_prefix.len() + key.len());
        bucket.extend_from_slice(&self.key_prefix);
        bucket.extend_from_slice(key);
        let outcome =
            tokio::time::timeout(self.timeout, self.redis.take(&bucket, &self.gcra, self.timeout)).await;
        match outcome {
            Ok(Ok((allowed, debt))) => self.gcra.decision(allowed, debt.saturating_mul(MICROSECOND)),
            Ok(Err(failure)) => {
                if let Failure::Answer(error) = &failure {
                    warn!(%error, "Redis refused a global rate limit check");
                }
                self.unreachable()
            }
            Err(_elapsed) => {
                self.redis.lost("no answer within the rate limit's timeout");
                self.unreachable()
            }
        }
    }

    /// How many checks were answered without Redis, as declared by [`WhenUnreachable`].
    pub fn unreachable_count(&self) -> u64 {
        self.unreachable.load(Ordering::Relaxed)
    }

    /// The declared answer: allowed with a full bucket, or refused until Redis may be back.
    fn unreachable(&self) -> Decision {
        self.unreachable.fetch_add(1, Ordering::Relaxed);
        match self.when_unreachable {
            WhenUnreachable::Allow => self.gcra.decision(true, self.gcra.interval),
            WhenUnreachable::Deny => Decision {
                allowed: false,
                limit: self.gcra.burst,
                remaining: 0,
                reset: BACKOFF_MAX,
                retry_after: Some(BACKOFF_MAX),
            },
        }
    }
}

/// Why a check got no answer from Redis.
#[derive(Debug)]
enum Failure {
    /// Redis could not be reached or the connection broke: back off.
    Transport(String),
    /// Redis answered with an error (out of memory, a read-only replica, a key of another
    /// type): this check fails, the connection is fine.
    Answer(String),
    /// Redis is known down and it is not this check's turn to probe.
    KnownDown,
}

impl From<RedisError> for Failure {
    fn from(error: RedisError) -> Self {
        if error.is_io_error() || error.is_unrecoverable_error() {
            Failure::Transport(error.to_string())
        } else {
            Failure::Answer(error.to_string())
        }
    }
}

/// Whether Redis is believed up, and when to try it again if not.
struct Health {
    origin: Instant,
    /// Failures in a row; 0 while Redis answers.
    failures: AtomicU32,
    /// While down: when (nanoseconds after `origin`) the next probe may go.
    retry_at: AtomicU64,
    /// A probe is under way.
    probing: AtomicBool,
}

enum Gate<'a> {
    /// Redis is up: go.
    Open,
    /// Redis is down and this check probes it; the guard ends the probe however the check ends.
    Probe(ProbeGuard<'a>),
    /// Redis is down: answer without it.
    Closed,
}

struct ProbeGuard<'a>(&'a AtomicBool);

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl Health {
    fn new() -> Self {
        Health {
            origin: Instant::now(),
            failures: AtomicU32::new(0),
            retry_at: AtomicU64::new(0),
            probing: AtomicBool::new(false),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn gate(&self) -> Gate<'_> {
        if self.failures.load(Ordering::Acquire) == 0 {
            return Gate::Open;
        }
        if self.now() < self.retry_at.load(Ordering::Acquire) {
            return Gate::Closed;
        }
        match self
            .probing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
        {
            Ok(_) => Gate::Probe(ProbeGuard(&self.probing)),
            Err(_) => Gate::Closed,
        }
    }

    fn succeeded(&self) {
        let failures = self.failures.swap(0, Ordering::AcqRel);
        if failures > 0 {
            info!(failures, "Redis of global rate limits reachable again");
        }
    }

    /// Notes a failure and sets the next probe's time. Checks that were in flight when Redis went
    /// away fail together: only the first of them, and later the probes, count, so that a burst
    /// of them does not stretch the backoff to its ceiling at once.
    fn failed(&self, error: &str) {
        if self.failures.load(Ordering::Acquire) > 0 && self.now() < self.retry_at.load(Ordering::Acquire) {
            return;
        }
        let failures = self.failures.fetch_add(1, Ordering::AcqRel).saturating_add(1);
        let doubled = BACKOFF_FIRST.saturating_mul(1 << failures.min(16).saturating_sub(1));
        let ceiling = u64::try_from(doubled.min(BACKOFF_MAX).as_nanos()).unwrap_or(u64::MAX);
        // Full jitter over the upper half: never sooner than half the backoff.
        let wait = ceiling / 2 + random_below(usize::try_from(ceiling / 2).unwrap_or(usize::MAX)) as u64;
        self.retry_at
            .store(self.now().saturating_add(wait), Ordering::Release);
        if failures == 1 {
            warn!(%error, "Redis of global rate limits unreachable; limits answer as declared until it is back");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_first_wait_to_the_ceiling() {
        let health = Health::new();
        let mut waits = vec![];
        for _ in 0..8 {
            // Each failure is a probe's, made once the previous backoff has passed.
            health.retry_at.store(0, Ordering::Relaxed);
            let before = health.now();
            health.failed("test");
            waits.push(Duration::from_nanos(
                health.retry_at.load(Ordering::Relaxed) - before,
            ));
        }
        for (failure, wait) in waits.iter().enumerate() {
            let ceiling = BACKOFF_FIRST.saturating_mul(1 << failure).min(BACKOFF_MAX);
            assert!(
                *wait >= ceiling / 2 && *wait <= ceiling + Duration::from_millis(5),
                "{wait:?} after failure {} (ceiling {ceiling:?})",
                failure + 1
            );
        }
    }

    #[test]
    fn checks_failing_together_count_as_one_failure() {
        let health = Health::new();
        health.failed("test");
        let retry_at = health.retry_at.load(Ordering::Relaxed);
        health.failed("test");
        health.failed("test");
        assert_eq!(health.failures.load(Ordering::Relaxed), 1);
        assert_eq!(health.retry_at.load(Ordering::Relaxed), retry_at);
    }

    #[test]
    fn one_check_at_a_time_probes_a_redis_known_down() {
        let health = Health::new();
        assert!(matches!(health.gate(), Gate::Open));
        health.failed("test");
        assert!(matches!(health.gate(), Gate::Closed), "closed during the backoff");
        health.retry_at.store(0, Ordering::Relaxed);
        let probe = health.gate();
        assert!(matches!(probe, Gate::Probe(_)));
        assert!(
            matches!(health.gate(), Gate::Closed),
            "a second check does not probe too"
        );
        drop(probe);
        assert!(
            matches!(health.gate(), Gate::Probe(_)),
            "an abandoned probe frees the turn"
        );
        health.succeeded();
        assert!(matches!(health.gate(), Gate::Open));
    }

    #[test]
    fn a_bad_url_is_refused_without_connecting() {
        assert!(RedisLimiter::new("http://not-redis").is_err());
        assert!(RedisLimiter::new("redis://127.0.0.1:1/0").is_ok());
    }
}
