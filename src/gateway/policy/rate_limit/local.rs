//! Local limits: the buckets of one limit in this process, shared by every worker thread.
//!
//! The table is split into shards, each behind its own mutex, and a key's shard comes from its
//! hash: threads checking different keys rarely meet, and a lock is held for one lookup and a
//! few arithmetic operations. A bucket is one `u64` (see the parent module) under a 64-bit keyed
//! hash of the key (SipHash with a random key, so clients cannot pick colliding keys); two keys
//! share a bucket only if their hashes collide, about once in 10^7 tables of a million keys.
//!
//! Memory is bounded by `max_keys`, split evenly over the shards, however many distinct keys
//! arrive. When a new key finds its shard full, an eighth of the shard is freed at once (so a
//! flood of new keys pays for one sweep per eighth, not one per key):
//! 1. every full bucket is dropped: a full bucket is what an unknown key gets anyway, so
//!    forgetting it changes no answer;
//! 2. if that frees too little, because more distinct keys than `max_keys` are spending at
//!    once, the buckets closest to full are dropped too. Each such key gets a full bucket back,
//!    so the limit errs in the client's favour by the least debt there is to forget, and the
//!    heaviest spenders, whose buckets are emptiest, are the last to be forgotten.
//!    [`LocalRateLimit::forgotten_in_debt`] counts those buckets: a limit that forgets often
//!    needs a larger `max_keys`.

use std::{
    collections::{HashMap, hash_map::RandomState},
    hash::{BuildHasher, BuildHasherDefault, Hasher},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use super::{Decision, Gcra, Limit};

/// Most shards a limit has: beyond this, more shards only spread the same few threads thinner.
const MAX_SHARDS: usize = 64;

/// Where a limit reads the time.
pub trait Clock: Send + Sync {
    /// Nanoseconds since an origin of the clock's choosing; never going backwards.
    fn now(&self) -> u64;
}

/// The monotonic clock of the operating system.
#[derive(Clone, Copy, Debug)]
pub struct MonotonicClock {
    origin: Instant,
}

impl Default for MonotonicClock {
    fn default() -> Self {
        MonotonicClock {
            origin: Instant::now(),
        }
    }
}

impl Clock for MonotonicClock {
    fn now(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// A clock that moves only when told to, for tests. Clones share the time.
#[derive(Clone, Debug, Default)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    pub fn advance(&self, by: Duration) {
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.0.fetch_add(nanos, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// A rate limit's buckets, one per key, in this process.
pub struct LocalRateLimit<C = MonotonicClock> {
    gcra: Gcra,
    shards: Box<[CacheLine<Mutex<Shard>>]>,
    hasher: RandomState,
    clock: C,
    forgotten_in_debt: AtomicU64,
}

impl<C> std::fmt::Debug for LocalRateLimit<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalRateLimit")
            .field("gcra", &self.gcra)
            .field("shards", &self.shards.len())
            .finish_non_exhaustive()
    }
}

/// Keeps each shard's lock on a cache line of its own, so that threads working on neighbouring
/// shards do not slow each other down.
#[repr(align(128))]
struct CacheLine<T>(T);

/// One shard: buckets (theoretical arrival times) by key hash.
struct Shard {
    buckets: HashMap<u64, u64, BuildHasherDefault<Prehashed>>,
    capacity: usize,
}

impl LocalRateLimit {
    /// A limit that keeps at most `max_keys` buckets (at least one).
    pub fn new(limit: Limit, max_keys: usize) -> Self {
        Self::with_clock(limit, max_keys, MonotonicClock::default())
    }
}

impl<C: Clock> LocalRateLimit<C> {
    /// A limit reading the time from `clock`.
    pub fn with_clock(limit: Limit, max_keys: usize, clock: C) -> Self {
        let max_keys = max_keys.max(1);
        let threads = thread::available_parallelism().map_or(1, usize::from);
        // A power of two, so a shard is picked with a mask; never more shards than keys, so
        // each holds at least one and all of them together no more than `max_keys`.
        let mut shards = (threads * 4).next_power_of_two().min(MAX_SHARDS);
        while shards > max_keys {
            shards /= 2;
        }
        let capacity = max_keys / shards;
        LocalRateLimit {
            gcra: Gcra::new(&limit, 1),
            shards: (0..shards)
                .map(|_| {
                    CacheLine(Mutex::new(Shard {
                        buckets: HashMap::default(),
                        capacity,
                    }))
                })
                .collect(),
            hasher: RandomState::new(),
            clock,
            forgotten_in_debt: AtomicU64::new(0),
        }
    }

    /// Takes a token from `key`'s bucket if it has one.
    pub fn check(&self, key: &[u8]) -> Decision {
        let hash = self.hasher.hash_one(key);
        let now = self.clock.now();
        let mut shard = self.shard(hash).lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(tat) = shard.buckets.get_mut(&hash) {
            let (next, decision) = self.gcra.take(*tat, now);
            if let Some(next) = next {
                *tat = next;
            }
            return decision;
        }
        // An unknown key has a full bucket, and a full bucket always has a token.
        let (next, decision) = self.gcra.take(now, now);
        if let Some(next) = next {
            let forgotten = shard.insert(hash, next, now);
            drop(shard);
            if forgotten > 0 {
                self.forgotten_in_debt.fetch_add(forgotten, Ordering::Relaxed);
            }
        }
        decision
    }

    /// How many buckets the limit holds now (it takes every shard's lock: for tests and metrics,
    /// not for the request path).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| {
                shard
                    .0
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .buckets
                    .len()
            })
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many buckets were dropped while not full, to make room for new keys (their keys
    /// got a full bucket back; see the module documentation).
    pub fn forgotten_in_debt(&self) -> u64 {
        self.forgotten_in_debt.load(Ordering::Relaxed)
    }

    fn shard(&self, hash: u64) -> &Mutex<Shard> {
        // Bits the shard's own table does not use: it indexes with the low bits and filters with
        // the top seven, and a shard picked with either would crowd its keys together.
        let index = (hash >> 32) as usize & (self.shards.len() - 1);
        &self.shards[index].0
    }
}

impl Shard {
    /// Adds a bucket, making room first if the shard is full; returns how many buckets in debt
    /// were forgotten for it.
    fn insert(&mut self, hash: u64, tat: u64, now: u64) -> u64 {
        let forgotten = if self.buckets.len() >= self.capacity {
            self.make_room(now)
        } else {
            0
        };
        self.buckets.insert(hash, tat);
        forgotten
    }

    /// Frees an eighth of the shard: the full buckets, then as many of those closest to full
    /// as it takes. Returns how many of the latter it dropped.
    fn make_room(&mut self, now: u64) -> u64 {
        let wanted = (self.capacity / 8).max(1);
        self.buckets.retain(|_, tat| *tat > now);
        let free = self.capacity.saturating_sub(self.buckets.len());
        if free >= wanted {
            return 0;
        }
        let evict = wanted - free;
        let mut by_debt: Vec<(u64, u64)> = self.buckets.iter().map(|(&hash, &tat)| (tat, hash)).collect();
        by_debt.select_nth_unstable(evict - 1);
        for (_, hash) in &by_debt[..evict] {
            self.buckets.remove(hash);
        }
        evict as u64
    }
}

/// The hasher of a table whose keys are already hashes.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys reach this table; fold anything else in rather than lose it.
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, hash: u64) {
        self.0 = hash;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use super::*;

    fn manual(
        requests: u32,
        per: Duration,
        burst: u32,
        max_keys: usize,
    ) -> (LocalRateLimit<ManualClock>, ManualClock) {
        let clock = ManualClock::default();
        let limit = Limit { requests, per, burst };
        (LocalRateLimit::with_clock(limit, max_keys, clock.clone()), clock)
    }

    fn allowed(limiter: &LocalRateLimit<impl Clock>, key: &[u8], times: usize) -> usize {
        (0..times).filter(|_| limiter.check(key).allowed).count()
    }

    #[test]
    fn a_key_gets_its_burst_then_tokens_at_the_configured_rate() {
        let (limiter, clock) = manual(2, Duration::from_secs(1), 4, 100);
        let first = limiter.check(b"10.0.0.1");
        assert_eq!(
            first,
            Decision {
                allowed: true,
                limit: 4,
                remaining: 3,
                reset: Duration::from_millis(500),
                retry_after: None,
            }
        );
        assert_eq!(allowed(&limiter, b"10.0.0.1", 3), 3);
        let refused = limiter.check(b"10.0.0.1");
        assert!(!refused.allowed);
        assert_eq!(refused.remaining, 0);
        assert_eq!(refused.retry_after, Some(Duration::from_millis(500)));

        clock.advance(Duration::from_millis(300));
        assert_eq!(
            limiter.check(b"10.0.0.1").retry_after,
            Some(Duration::from_millis(200))
        );
        clock.advance(Duration::from_millis(200));
        assert!(
            limiter.check(b"10.0.0.1").allowed,
            "one token back after one interval"
        );
        assert!(!limiter.check(b"10.0.0.1").allowed);

        // Ten seconds idle refill the bucket to its burst, not beyond.
        clock.advance(Duration::from_secs(10));
        assert_eq!(allowed(&limiter, b"10.0.0.1", 10), 4);
    }

    #[test]
    fn keys_have_buckets_of_their_own() {
        let (limiter, _clock) = manual(1, Duration::from_secs(60), 2, 100);
        assert_eq!(allowed(&limiter, b"alice", 5), 2);
        assert_eq!(allowed(&limiter, b"bob", 5), 2);
        assert_eq!(limiter.len(), 2);
    }

    #[test]
    fn headers_of_a_refused_request_name_the_wait_in_whole_seconds() {
        let (limiter, clock) = manual(1, Duration::from_secs(10), 1, 10);
        let limit = Limit {
            requests: 1,
            per: Duration::from_secs(10),
            burst: 1,
        };
        assert!(limiter.check(b"k").allowed);
        clock.advance(Duration::from_millis(2_500));
        let refused = limiter.check(b"k");
        let headers: Vec<_> = refused
            .headers("slow", &limit)
            .map(|(name, value)| format!("{name}: {}", value.to_str().unwrap_or_default()))
            .collect();
        assert_eq!(
            headers,
            [
                "ratelimit-policy: \"slow\";q=1;w=10",
                "ratelimit: \"slow\";r=0;t=8",
                "retry-after: 8",
            ]
        );
    }

    /// Several threads hammer one key for a second: the limit lets through no more than the
    /// bucket allows over that time, and, since the callers never stopped asking, no less than
    /// 95 % of it. The burst (100 ms of tokens) absorbs a scheduler that pauses every caller for
    /// a while, so the lower bound does not depend on how busy the machine is.
    #[test]
    fn concurrent_callers_get_the_configured_rate_within_five_percent() {
        const RATE: f64 = 20_000.0;
        let limit = Limit {
            requests: 20_000,
            per: Duration::from_secs(1),
            burst: 2_000,
        };
        let limiter = LocalRateLimit::new(limit, 1_000);
        let stop = AtomicBool::new(false);
        let start = Instant::now();
        let allowed_total: usize = thread::scope(|scope| {
            let callers: Vec<_> = (0..4)
                .map(|_| {
                    scope.spawn(|| {
                        let mut allowed = 0;
                        while !stop.load(Ordering::Relaxed) {
                            allowed += usize::from(limiter.check(b"one key").allowed);
                        }
                        allowed
                    })
                })
                .collect();
            thread::sleep(Duration::from_secs(1));
            stop.store(true, Ordering::Relaxed);
            callers.into_iter().map(|caller| caller.join().unwrap_or(0)).sum()
        });
        let elapsed = start.elapsed().as_secs_f64();
        let expected = f64::from(limit.burst) + RATE * elapsed;
        let allowed = allowed_total as f64;
        eprintln!(
            "4 threads, one key: {allowed} allowed in {elapsed:.3} s; the bucket allows {expected:.1} ({:.2} %)",
            100.0 * allowed / expected
        );
        assert!(
            allowed <= expected.ceil(),
            "allowed {allowed} > {expected:.0} in {elapsed:.3} s"
        );
        assert!(
            allowed >= 0.95 * expected,
            "allowed {allowed} < 95 % of {expected:.0} in {elapsed:.3} s"
        );
    }

    #[test]
    fn a_million_distinct_keys_never_grow_the_table_beyond_max_keys() {
        const MAX_KEYS: usize = 10_000;
        let (limiter, _clock) = manual(1, Duration::from_secs(60), 5, MAX_KEYS);
        // A heavy client spends its whole burst before the flood: its bucket is the emptiest.
        assert_eq!(allowed(&limiter, b"heavy", 10), 5);
        for i in 0..1_000_000u32 {
            assert!(
                limiter.check(&i.to_be_bytes()).allowed,
                "a new key has a full bucket"
            );
            if i % 10_000 == 0 {
                assert!(
                    limiter.len() <= MAX_KEYS,
                    "{} buckets after {i} keys",
                    limiter.len()
                );
                assert!(
                    !limiter.check(b"heavy").allowed,
                    "the heaviest spender was forgotten"
                );
            }
        }
        assert!(limiter.len() <= MAX_KEYS);
        let slots: usize = limiter
            .shards
            .iter()
            .map(|shard| shard.0.lock().map_or(0, |shard| shard.buckets.capacity()))
            .sum();
        assert!(
            slots <= 4 * MAX_KEYS,
            "{slots} slots allocated for {MAX_KEYS} keys"
        );
        // Nothing was full (the clock stood still), so keys in debt had to be forgotten.
        assert!(limiter.forgotten_in_debt() > 900_000);
    }

    #[test]
    fn full_buckets_make_room_before_any_bucket_in_debt() {
        let (limiter, clock) = manual(10, Duration::from_secs(1), 1, 64);
        for i in 0..10_000u32 {
            assert!(limiter.check(&i.to_be_bytes()).allowed);
            // Each key's single token is back before the next key arrives.
            clock.advance(Duration::from_millis(100));
        }
        assert!(limiter.len() <= 64);
        assert_eq!(limiter.forgotten_in_debt(), 0);
    }
}
