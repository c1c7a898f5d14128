//! Open-loop load at a fixed rate, for a bounded count of requests, sent in the background while
//! a test changes something (a rollout, a scale change) and then collected.
//!
//! Request `i` leaves at `start + i / rate` whether or not earlier ones were answered (open loop:
//! a slow or stuck server does not slow the load down, so its failures are not hidden by fewer
//! requests). Requests go over a pool of keep-alive connections, as a client behind a gateway
//! would send them. Any answer other than 2xx, and any transport error or timeout, is a failure.
//!
//! ```text
//! let load = background_load::start(Load::get(gateway, "/", 500, 10_000));
//! // ... change something ...
//! let report = load.finish().await;
//! assert_eq!(report.failed, 0, "{report}");
//! ```

use std::{
    collections::BTreeMap,
    fmt,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use tokio::{task::JoinSet, time::Instant};

use crate::backend::POD_NAME_HEADER;

/// How many failures a report keeps the details of (the rest are only counted).
const FAILURES_KEPT: usize = 20;

/// What to send: `count` GETs of `path` to `addr`, `rate` per second.
#[derive(Clone, Debug)]
pub struct Load {
    pub addr: SocketAddr,
    pub path: String,
    /// Requests per second.
    pub rate: u32,
    /// Requests in all.
    pub count: u64,
    /// How long one request may take before it counts as failed.
    pub timeout: Duration,
}

impl Load {
    /// `count` GETs of `path` at `rate` per second, each allowed 10 s.
    pub fn get(addr: SocketAddr, path: &str, rate: u32, count: u64) -> Self {
        Self {
            addr,
            path: path.to_owned(),
            rate,
            count,
            timeout: Duration::from_secs(10),
        }
    }

    /// How long sending takes at the planned rate.
    pub fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.count as f64 / f64::from(self.rate.max(1)))
    }
}

/// What a load run saw.
#[derive(Clone, Debug, Default)]
pub struct LoadReport {
    /// Requests sent.
    pub sent: u64,
    /// Requests answered 2xx.
    pub succeeded: u64,
    /// Requests answered otherwise, or not at all.
    pub failed: u64,
    /// Failures by kind: `status 503`, `timeout`, `error: ...`.
    pub failures: BTreeMap<String, u64>,
    /// The first failures, each with when it was sent (since the start).
    pub first_failures: Vec<(Duration, String)>,
    /// Successful answers by the Pod that gave them (`x-pod-name`).
    pub by_pod: BTreeMap<String, u64>,
    /// From the first request sent to the last answer.
    pub elapsed: Duration,
    /// How far behind its schedule the sender fell at worst (a loaded machine): the rate held
    /// if this stays small against the run.
    pub worst_lag: Duration,
}

impl LoadReport {
    /// The rate actually sent, requests per second.
    pub fn achieved_rate(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} failed of {} sent ({} succeeded) in {:.1} s ({:.0} req/s, worst lag {} ms); failures {:?}; first {:?}; by pod {:?}",
            self.failed,
            self.sent,
            self.succeeded,
            self.elapsed.as_secs_f64(),
            self.achieved_rate(),
            self.worst_lag.as_millis(),
            self.failures,
            self.first_failures,
            self.by_pod
        )
    }
}

/// A load run under way.
pub struct RunningLoad {
    sent: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<LoadReport>,
}

impl RunningLoad {
    /// Requests sent so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Waits until every request has been sent and answered (or timed out).
    pub async fn finish(self) -> LoadReport {
        match self.task.await {
            Ok(report) => report,
            Err(error) => panic!("the load generator failed: {error}"),
        }
    }
}

/// Starts sending `load` in the background.
pub fn start(load: Load) -> RunningLoad {
    let sent = Arc::new(AtomicU64::new(0));
    let task = tokio::spawn(run(load, sent.clone()));
    RunningLoad { sent, task }
}

#[derive(Default)]
struct Tally {
    report: LoadReport,
}

async fn run(load: Load, sent: Arc<AtomicU64>) -> LoadReport {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    // Idle connections are dropped well before the gateway's own idle timeout would close them
    // under a request (a client-side race that would look like a gateway failure).
    let client: Client<HttpConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(2))
        .build(connector);
    let uri: hyper::Uri = match format!("http://{}{}", load.addr, load.path).parse() {
        Ok(uri) => uri,
        Err(error) => panic!("{}{} is no URI: {error}", load.addr, load.path),
    };
    let tally = Arc::new(Mutex::new(Tally::default()));
    let period = Duration::from_secs_f64(1.0 / f64::from(load.rate.max(1)));
    let start = Instant::now();
    let mut requests = JoinSet::new();
    let mut worst_lag = Duration::ZERO;
    for i in 0..load.count {
        let due = start + period.mul_f64(i as f64);
        tokio::time::sleep_until(due).await;
        worst_lag = worst_lag.max(Instant::now().saturating_duration_since(due));
        let (client, uri, tally) = (client.clone(), uri.clone(), tally.clone());
        let sent_at = start.elapsed();
        let timeout = load.timeout;
        requests.spawn(async move {
            let outcome = tokio::time::timeout(timeout, send(&client, uri)).await;
            let mut tally = tally.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let report = &mut tally.report;
            let failure = match outcome {
                Ok(Ok((status, pod))) if status.is_success() => {
                    report.succeeded += 1;
                    *report.by_pod.entry(pod).or_default() += 1;
                    return;
                }
                Ok(Ok((status, pod))) => format!("status {} from {pod}", status.as_u16()),
                Ok(Err(error)) => format!("error: {error}"),
                Err(_) => "timeout".to_owned(),
            };
            report.failed += 1;
            let kind = failure.split(" from ").next().unwrap_or(&failure).to_owned();
            *report.failures.entry(kind).or_default() += 1;
            if report.first_failures.len() < FAILURES_KEPT {
                report.first_failures.push((sent_at, failure));
            }
        });
        sent.fetch_add(1, Ordering::Relaxed);
        // Reap the answered ones now and then, so the set stays the size of what is in flight.
        while let Some(Some(_)) = futures::FutureExt::now_or_never(requests.join_next()) {}
    }
    while requests.join_next().await.is_some() {}
    let mut report = std::mem::take(
        &mut tally
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .report,
    );
    report.sent = load.count;
    report.elapsed = start.elapsed();
    report.worst_lag = worst_lag;
    report
}

async fn send(
    client: &Client<HttpConnector, Empty<Bytes>>,
    uri: hyper::Uri,
) -> Result<(hyper::StatusCode, String), String> {
    let request = Request::get(uri)
        .body(Empty::new())
        .map_err(|error| error.to_string())?;
    let response = client.request(request).await.map_err(|error| {
        // The legacy client's error says little; its source says what broke.
        match std::error::Error::source(&error) {
            Some(source) => format!("{error}: {source}"),
            None => error.to_string(),
        }
    })?;
    let status = response.status();
    let pod = response
        .headers()
        .get(POD_NAME_HEADER)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    // The whole body: a response cut short is a failure too.
    response
        .into_body()
        .collect()
        .await
        .map_err(|error| format!("body: {error}"))?;
    Ok((status, pod))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::RunningBackend;

    #[tokio::test]
    async fn sends_the_count_at_the_rate_and_counts_failures_by_kind() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let running = RunningBackend::serve(listener, "web-0").expect("serve");
        let backend = running.handle().clone();
        backend.fail_next(3, hyper::StatusCode::SERVICE_UNAVAILABLE);
        let report = start(Load::get(backend.addr(), "/", 200, 100)).finish().await;
        assert_eq!(report.sent, 100);
        assert_eq!((report.succeeded, report.failed), (97, 3), "{report}");
        assert_eq!(report.failures.get("status 503"), Some(&3), "{report}");
        assert_eq!(report.by_pod.get("web-0"), Some(&97));
        // 100 requests at 200 per second take half a second, not less.
        assert!(report.elapsed >= Duration::from_millis(495), "{report}");
        assert_eq!(backend.requests(), 100);
    }
}
