//! An open-loop load generator for the fault scenarios: requests start on a fixed schedule
//! (`rate` per second, `count` in all) whether or not earlier ones have been answered, so a
//! stalled gateway meets the same traffic a real one would, and each request's latency is
//! counted from when it was due, not from when it got a connection (no coordinated omission).
//!
//! Requests go over a pool of keep-alive connections, as most clients' do. Each one carries
//! [`REQUEST_ID_HEADER`] (`<prefix>-<n>`), so a backend can tell whether it executed a request
//! more than once.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use tokio::sync::Semaphore;

use crate::backend::{POD_NAME_HEADER, REQUEST_ID_HEADER};

/// What to send, how fast and how much.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Requests started per second.
    pub rate: u32,
    /// Requests in all.
    pub count: usize,
    pub method: Method,
    pub path: String,
    /// Each request's `x-request-id` is `<id_prefix>-<n>`, `n` counting from 0.
    pub id_prefix: String,
    /// A request with no answer after this long counts as failed.
    pub timeout: Duration,
    /// The most requests in flight at once; a request due while this many wait starts late
    /// (and its latency shows it).
    pub max_in_flight: usize,
}

impl Plan {
    /// `count` GETs of `/` at `rate` per second.
    pub fn get(rate: u32, count: usize) -> Self {
        Self {
            rate,
            count,
            method: Method::GET,
            path: "/".to_owned(),
            id_prefix: "get".to_owned(),
            timeout: Duration::from_secs(10),
            max_in_flight: 512,
        }
    }

    /// `count` POSTs of `/orders` (a small body) at `rate` per second.
    pub fn post(rate: u32, count: usize) -> Self {
        Self {
            method: Method::POST,
            path: "/orders".to_owned(),
            id_prefix: "post".to_owned(),
            ..Self::get(rate, count)
        }
    }

    /// How long sending takes at this rate.
    pub fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.count as f64 / f64::from(self.rate.max(1)))
    }
}

/// What one request came to.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Its `x-request-id`.
    pub id: String,
    /// When it was due, from the start of the run.
    pub due: Duration,
    /// From when it was due to the end of its answer (or its failure).
    pub latency: Duration,
    /// The status, or why there was none.
    pub result: Result<Answered, String>,
}

#[derive(Clone, Debug)]
pub struct Answered {
    pub status: u16,
    /// The Pod that served it (the backends' `x-pod-name`), if one did.
    pub pod: Option<String>,
    /// The gateway's `x-microgate-reason`, on its own answers.
    pub reason: Option<String>,
}

impl Outcome {
    pub fn succeeded(&self) -> bool {
        self.result.as_ref().is_ok_and(|a| (200..300).contains(&a.status))
    }

    pub fn status(&self) -> Option<u16> {
        self.result.as_ref().ok().map(|a| a.status)
    }

    pub fn pod(&self) -> Option<&str> {
        self.result.as_ref().ok().and_then(|a| a.pod.as_deref())
    }

    /// `200`, `502 upstream-reset`, or `error: <why>`: how a report counts it.
    pub fn kind(&self) -> String {
        match &self.result {
            Ok(Answered {
                status,
                reason: Some(reason),
                ..
            }) => format!("{status} {reason}"),
            Ok(answered) => answered.status.to_string(),
            Err(error) => format!("error: {error}"),
        }
    }
}

/// Every request's outcome, in the order they were due.
#[derive(Clone, Debug)]
pub struct Report {
    pub outcomes: Vec<Outcome>,
    /// From the first request due to the last answer.
    pub took: Duration,
}

impl Report {
    pub fn total(&self) -> usize {
        self.outcomes.len()
    }

    pub fn failed(&self) -> usize {
        self.outcomes.iter().filter(|o| !o.succeeded()).count()
    }

    pub fn failures(&self) -> impl Iterator<Item = &Outcome> {
        self.outcomes.iter().filter(|o| !o.succeeded())
    }

    /// How many requests came to each [`Outcome::kind`].
    pub fn kinds(&self) -> BTreeMap<String, usize> {
        let mut kinds = BTreeMap::new();
        for outcome in &self.outcomes {
            *kinds.entry(outcome.kind()).or_default() += 1;
        }
        kinds
    }

    /// The latency below which the fraction `q` of requests were answered.
    pub fn latency_quantile(&self, q: f64) -> Duration {
        let mut latencies: Vec<_> = self.outcomes.iter().map(|o| o.latency).collect();
        latencies.sort();
        let index = ((latencies.len() as f64 * q).ceil() as usize).saturating_sub(1);
        latencies.get(index).copied().unwrap_or_default()
    }

    pub fn max_latency(&self) -> Duration {
        self.outcomes.iter().map(|o| o.latency).max().unwrap_or_default()
    }

    /// A one-line summary for a test's output and failure messages.
    pub fn summary(&self) -> String {
        format!(
            "{} requests in {:.1} s, {} failed, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms: {:?}",
            self.total(),
            self.took.as_secs_f64(),
            self.failed(),
            ms(self.latency_quantile(0.5)),
            ms(self.latency_quantile(0.99)),
            ms(self.max_latency()),
            self.kinds()
        )
    }
}

/// Milliseconds, for reports.
pub fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// Runs `plan` against `addr`, returning when every request is answered or has failed.
pub async fn run(addr: SocketAddr, plan: Plan) -> Report {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        // Well below the gateway's own idle timeout for clients, so that the client never sends
        // on a connection the gateway is closing (that race would be the client's, not a fault's).
        .pool_idle_timeout(Duration::from_secs(5))
        .build(connector);
    let plan = Arc::new(plan);
    let slots = Arc::new(Semaphore::new(plan.max_in_flight.max(1)));
    let interval = Duration::from_secs_f64(1.0 / f64::from(plan.rate.max(1)));
    let started = Instant::now();
    let mut requests = Vec::with_capacity(plan.count);
    for n in 0..plan.count {
        let due = interval.mul_f64(n as f64);
        tokio::time::sleep_until((started + due).into()).await;
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let (client, plan) = (client.clone(), plan.clone());
        requests.push(tokio::spawn(async move {
            let id = format!("{}-{n}", plan.id_prefix);
            let result = tokio::time::timeout(plan.timeout, send(&client, addr, &plan, &id))
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {:?}", plan.timeout)));
            drop(slot);
            Outcome {
                id,
                due,
                latency: started.elapsed().saturating_sub(due),
                result,
            }
        }));
    }
    let mut outcomes = Vec::with_capacity(requests.len());
    for request in requests {
        match request.await {
            Ok(outcome) => outcomes.push(outcome),
            Err(error) => panic!("a load request's task failed: {error}"),
        }
    }
    Report {
        outcomes,
        took: started.elapsed(),
    }
}

async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    addr: SocketAddr,
    plan: &Plan,
    id: &str,
) -> Result<Answered, String> {
    let body = if plan.method == Method::GET {
        Bytes::new()
    } else {
        Bytes::from(format!("{{\"order\":\"{id}\"}}"))
    };
    let request = Request::builder()
        .method(plan.method.clone())
        .uri(format!("http://{addr}{}", plan.path))
        .header(REQUEST_ID_HEADER, id)
        .body(Full::new(body))
        .map_err(|e| format!("cannot build the request: {e}"))?;
    let response = client.request(request).await.map_err(|e| format!("{e:?}"))?;
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (status, pod, reason) = (
        response.status().as_u16(),
        header(POD_NAME_HEADER),
        header("x-microgate-reason"),
    );
    response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("the body broke: {e}"))?;
    Ok(Answered { status, pod, reason })
}
