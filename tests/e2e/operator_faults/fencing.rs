//! Two controller replicas with leader election on one Lease, and a recorder of every write each
//! one makes (every request but reads and the Lease's own): across leader changes, no two
//! replicas' writes may overlap in time.

use std::{
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use hyper::{Method, Request};
use kube::client::{Body, ClientBuilder};
use tower::{Layer, Service};

/// One write: which replica, what, from when it was sent until its answer (or until the replica
/// was killed with it in flight).
#[derive(Clone, Debug)]
pub struct Write {
    pub replica: String,
    pub what: String,
    pub start: Instant,
    pub end: Instant,
}

/// Every replica's writes.
#[derive(Clone, Default)]
pub struct WriteLog(Arc<Mutex<Vec<Write>>>);

impl WriteLog {
    pub fn writes(&self) -> Vec<Write> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Pairs of writes by different replicas whose times overlap.
    pub fn overlaps(&self) -> Vec<(Write, Write)> {
        let mut writes = self.writes();
        writes.sort_by_key(|w| w.start);
        let mut found = Vec::new();
        for (i, a) in writes.iter().enumerate() {
            for b in &writes[i + 1..] {
                if b.start >= a.end {
                    break;
                }
                if b.replica != a.replica {
                    found.push((a.clone(), b.clone()));
                }
            }
        }
        found
    }
}

/// The layer that records one replica's writes into a [`WriteLog`].
#[derive(Clone)]
pub struct RecordWrites {
    pub replica: String,
    pub log: WriteLog,
}

impl<S> Layer<S> for RecordWrites {
    type Service = Recorded<S>;

    fn layer(&self, inner: S) -> Recorded<S> {
        Recorded {
            inner,
            replica: self.replica.clone(),
            log: self.log.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Recorded<S> {
    inner: S,
    replica: String,
    log: WriteLog,
}

/// Ends a write's span when its request finishes or is dropped.
struct InFlight {
    write: Option<Write>,
    log: WriteLog,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(mut write) = self.write.take() {
            write.end = Instant::now();
            self.log.0.lock().unwrap_or_else(|p| p.into_inner()).push(write);
        }
    }
}

impl<S> Service<Request<Body>> for Recorded<S>
where
    S: Service<Request<Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let path = request.uri().path().to_owned();
        let write = request.method() != Method::GET && !path.contains("/leases");
        let in_flight = InFlight {
            write: write.then(|| Write {
                replica: self.replica.clone(),
                what: format!("{} {path}", request.method()),
                start: Instant::now(),
                end: Instant::now(),
            }),
            log: self.log.clone(),
        };
        let answer = self.inner.call(request);
        Box::pin(async move {
            let answer = answer.await;
            drop(in_flight);
            answer
        })
    }
}

/// A client for the local cluster whose writes `layer` records.
pub async fn recorded_client(layer: &RecordWrites) -> kube::Client {
    let config = microgate_test_support::cluster::config()
        .await
        .expect("the cluster's client configuration");
    ClientBuilder::try_from(config)
        .expect("a client builder")
        .with_layer(layer)
        .build()
}

/// How far apart two writes of different replicas were at the closest, over all handovers:
/// the gap between one replica's last write and the next one's first.
pub fn closest_handover(writes: &[Write]) -> Option<Duration> {
    let mut sorted = writes.to_vec();
    sorted.sort_by_key(|w| w.start);
    let mut last_end: Option<(String, Instant)> = None;
    let mut closest: Option<Duration> = None;
    for write in sorted {
        if let Some((replica, end)) = &last_end
            && *replica != write.replica
        {
            let gap = write.start.saturating_duration_since(*end);
            closest = Some(closest.map_or(gap, |c| c.min(gap)));
        }
        let keep_end = match &last_end {
            Some((replica, end)) if *replica == write.replica => (*end).max(write.end),
            _ => write.end,
        };
        last_end = Some((write.replica.clone(), keep_end));
    }
    closest
}
