//! `make bench-rate-limit`: what rate limits cost. A benchmark, not a test: it reports figures
//! and asserts nothing.
//!
//! 1. Local limits: nanoseconds per check on one thread and on two (one hot key, and keys spread
//!    over 10 000 clients), and under a flood of a million new keys into a table of 100 000.
//! 2. Global limits against a real `redis-server` on loopback: the round trip of one check
//!    (sequential: median, p99), checks per second with 64 checks in flight on one connection,
//!    and how close two limiters with connections of their own hold a shared limit.
//!
//! Options (environment): BENCH_LOCAL_CHECKS (default 10 000 000), BENCH_GLOBAL_CHECKS (20 000).

use std::{
    hint::black_box,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use microgate::gateway::policy::rate_limit::{
    GlobalRateLimit, Limit, LocalRateLimit, RedisLimiter, WhenUnreachable,
};
use microgate_test_support::{redis_server::RedisServer, usage};

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A limit that is never reached in these runs: every check takes the allowed path.
fn generous() -> Limit {
    Limit {
        requests: u32::MAX,
        per: Duration::from_secs(1),
        burst: u32::MAX,
    }
}

fn client_keys(count: u32) -> Vec<[u8; 4]> {
    (0..count).map(|i| (0x0a00_0000 + i).to_be_bytes()).collect()
}

/// Nanoseconds per check with `threads` threads each making `checks` checks over `keys`: of
/// wall time, and of each thread's own CPU time (what the checks cost when other processes
/// share the cores).
fn local_ns_per_check(
    limiter: &LocalRateLimit,
    threads: usize,
    checks: usize,
    keys: &[[u8; 4]],
) -> (f64, f64) {
    let started = Instant::now();
    let cpu: Duration = thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    let before = usage::thread_cpu().unwrap_or_default();
                    for i in 0..checks {
                        let key = &keys[(i + t * 7919) % keys.len()];
                        black_box(limiter.check(black_box(key)));
                    }
                    usage::thread_cpu().unwrap_or_default().saturating_sub(before)
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap_or_default()).sum()
    });
    let wall = started.elapsed().as_nanos() as f64 / checks as f64;
    (wall, cpu.as_nanos() as f64 / (threads * checks) as f64)
}

fn local(checks: usize) {
    println!(
        "## Local limits ({} hardware threads)\n",
        thread::available_parallelism().map_or(1, usize::from)
    );
    println!("ns per check, of wall time per thread, and of CPU time per check (in parentheses).\n");
    println!("| case | 1 thread | 2 threads |");
    println!("|---|---|---|");
    let hot = client_keys(1);
    let spread = client_keys(10_000);
    for (name, keys) in [("one hot key", &hot), ("10 000 clients", &spread)] {
        let one = local_ns_per_check(&LocalRateLimit::new(generous(), 100_000), 1, checks, keys);
        let two = local_ns_per_check(&LocalRateLimit::new(generous(), 100_000), 2, checks, keys);
        println!(
            "| {name} | {:.1} ({:.1}) | {:.1} ({:.1}) |",
            one.0, one.1, two.0, two.1
        );
    }
    let flood = client_keys(1_000_000);
    let limiter = LocalRateLimit::new(
        Limit {
            requests: 1,
            per: Duration::from_secs(60),
            burst: 5,
        },
        100_000,
    );
    let (wall, cpu) = local_ns_per_check(&limiter, 1, flood.len(), &flood);
    println!(
        "| a million new keys into 100 000 (evicting) | {wall:.1} ({cpu:.1}) | — |\n\nAfter the flood: {} buckets held, {} forgotten in debt.\n",
        limiter.len(),
        limiter.forgotten_in_debt()
    );
}

async fn global(checks: usize) {
    let redis = RedisServer::start()
        .await
        .expect("a redis-server for the benchmark");
    let connect = || Arc::new(RedisLimiter::new(&redis.url()).expect("the harness's URL is valid"));
    let limit = Arc::new(GlobalRateLimit::new(
        connect(),
        "bench:".into(),
        generous(),
        WhenUnreachable::Allow,
        Duration::from_secs(1),
    ));
    let keys = client_keys(10_000);
    // The first check loads the script.
    limit.check(&keys[0]).await;

    let mut latencies = Vec::with_capacity(checks);
    for i in 0..checks {
        let started = Instant::now();
        black_box(limit.check(&keys[i % keys.len()]).await);
        latencies.push(started.elapsed());
    }
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    println!("## Global limits (redis-server on loopback)\n");
    println!(
        "One check at a time: median {:?}, p99 {:?} per round trip ({checks} checks).",
        at(0.5),
        at(0.99)
    );

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..64)
        .map(|t| {
            let (limit, stop, done, keys) = (limit.clone(), stop.clone(), done.clone(), keys.clone());
            tokio::spawn(async move {
                let mut i = t;
                while !stop.load(Ordering::Relaxed) {
                    black_box(limit.check(&keys[i % keys.len()]).await);
                    done.fetch_add(1, Ordering::Relaxed);
                    i += 64;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    let rate = done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    println!("64 checks in flight on one connection: {rate:.0} checks/s.");

    // Two limiters with connections of their own share one key, 8 callers each, 3 s.
    let shared = Limit {
        requests: 1_000,
        per: Duration::from_secs(1),
        burst: 100,
    };
    let pair: Vec<_> = (0..2)
        .map(|_| {
            Arc::new(GlobalRateLimit::new(
                connect(),
                "shared:".into(),
                shared,
                WhenUnreachable::Deny,
                Duration::from_secs(1),
            ))
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let allowed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..16)
        .map(|t| {
            let (limit, stop, allowed) = (pair[t % 2].clone(), stop.clone(), allowed.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if limit.check(b"one client").await.allowed {
                        allowed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let expected = f64::from(shared.burst) + f64::from(shared.requests) * elapsed;
    let got = allowed.load(Ordering::Relaxed) as f64;
    println!(
        "Two limiters sharing 1000/s (burst 100) for {elapsed:.2} s: {got} allowed of {expected:.0} the bucket allows ({:.2} %).",
        100.0 * got / expected
    );
}

fn main() {
    let local_checks = env_number("BENCH_LOCAL_CHECKS", 10_000_000);
    let global_checks = env_number("BENCH_GLOBAL_CHECKS", 20_000);
    local(local_checks);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a Tokio runtime");
    runtime.block_on(global(global_checks));
}
