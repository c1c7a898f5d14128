//! Request mirroring: a copy of a routed request goes to each of the route's mirror backends
//! that its share picks, and whatever comes back is read and dropped. The client's request
//! never waits for a copy, nor fails with one.
//!
//! Copies are bounded: at most [`MAX_IN_FLIGHT`] at once in the process (a copy beyond that is
//! not sent), each given [`MIRROR_TIMEOUT`] to be answered. Only a buffered body (up to
//! `MAX_BUFFERED_BODY`) can be copied: a request whose body is streamed is not mirrored. What
//! became of each copy is counted (`microgate_gateway_mirror_copies`).

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Uri, header, request::Parts, uri::PathAndQuery};
use http_body_util::{BodyExt, Either};

use crate::gateway::{
    http::{body::Whole, client::Client, forwarding::Forwarding},
    metrics::{GatewayMetrics, MirrorOutcome},
    policy::client_ip::ClientIp,
    random::random_below,
    table::{Mirror, Upstream},
    upstream::{self, RequestHead},
};

/// Copies in flight at once, over all routes; past it, copies are dropped rather than queued.
pub const MAX_IN_FLIGHT: usize = 512;
/// How long a mirror backend has to answer a copy (and send its whole answer).
pub const MIRROR_TIMEOUT: Duration = Duration::from_secs(10);

static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// Sends a copy of the request (`parts`, with `body` when it was buffered, `None` when it is
/// streamed) to each of `mirrors` whose share takes it, in tasks of their own.
pub(super) fn send_copies(
    mirrors: &[Mirror],
    parts: &Parts,
    body: Option<&Bytes>,
    client: &Client,
    origin: ClientIp,
    host: Option<&str>,
    metrics: &GatewayMetrics,
) {
    for mirror in mirrors {
        if !takes(mirror) {
            continue;
        }
        let service = &mirror.upstream.service;
        let Some(body) = body else {
            tracing::debug!(%service, "a streamed request body is not mirrored");
            metrics.mirror_copy(service, MirrorOutcome::Streamed);
            continue;
        };
        let Some(slot) = Slot::take() else {
            tracing::debug!(%service, "mirror copy dropped: {MAX_IN_FLIGHT} copies are in flight");
            metrics.mirror_copy(service, MirrorOutcome::Dropped);
            continue;
        };
        let copy = MirroredRequest {
            upstream: mirror.upstream.clone(),
            method: parts.method.clone(),
            path: parts
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
            headers: parts.headers.clone(),
            forwarding: Forwarding::for_peer(&parts.headers, client, host, origin.peer_trusted),
            body: body.clone(),
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = copy.upstream.service.clone();
            let outcome = match tokio::time::timeout(MIRROR_TIMEOUT, copy.send()).await {
                Ok(Ok(outcome)) => outcome,
                Ok(Err(error)) => {
                    tracing::debug!(%service, %error, "mirror copy failed");
                    MirrorOutcome::Failed
                }
                Err(_) => {
                    tracing::debug!(%service, "mirror copy timed out");
                    MirrorOutcome::TimedOut
                }
            };
            metrics.mirror_copy(&service, outcome);
        });
    }
}

/// Whether this request is in the mirror's share.
fn takes(mirror: &Mirror) -> bool {
    mirror.numerator >= mirror.denominator
        || (mirror.numerator > 0 && (random_below(mirror.denominator as usize) as u32) < mirror.numerator)
}

/// One copy on its way.
struct MirroredRequest {
    upstream: Arc<Upstream>,
    method: http::Method,
    path: PathAndQuery,
    headers: http::HeaderMap,
    forwarding: Forwarding,
    body: Bytes,
}

impl MirroredRequest {
    async fn send(mut self) -> Result<MirrorOutcome, upstream::UpstreamError> {
        let upstream = &self.upstream;
        let Some(endpoint) = upstream.pool.pick(None, None) else {
            return Ok(MirrorOutcome::NoEndpoint);
        };
        let body = Either::Left(Whole::new(self.body.clone()));
        let response = if upstream.http2 {
            let mut request = Request::new(body);
            *request.method_mut() = self.method.clone();
            let mut uri = http::uri::Parts::default();
            uri.scheme = Some(http::uri::Scheme::HTTP);
            uri.authority = self
                .headers
                .get(header::HOST)
                .and_then(|h| http::uri::Authority::try_from(h.as_bytes()).ok())
                .or_else(|| endpoint.authority.clone());
            uri.path_and_query = Some(self.path.clone());
            *request.uri_mut() = Uri::from_parts(uri).unwrap_or_default();
            *request.headers_mut() = std::mem::take(&mut self.headers);
            self.forwarding.apply(request.headers_mut());
            request.headers_mut().remove(header::HOST);
            upstream::send_http2(&*endpoint, upstream.breaker, request).await?
        } else {
            let head = RequestHead {
                method: &self.method,
                target: self.path.as_str(),
                headers: &self.headers,
                forwarding: &self.forwarding,
                // A copy is no part of the request's trace: its headers go as the client sent them.
                trace: None,
            };
            upstream::send_http1(&endpoint, upstream.pool.endpoints(), upstream.breaker, head, body).await?
        };
        // Read to the end, so that the connection can serve again; what was read is dropped.
        let mut body = response.into_body();
        while let Some(frame) = body.frame().await {
            if frame.is_err() {
                return Ok(MirrorOutcome::Failed);
            }
        }
        Ok(MirrorOutcome::Answered)
    }
}

/// One of the [`MAX_IN_FLIGHT`] copies, given back when dropped.
struct Slot;

impl Slot {
    fn take() -> Option<Self> {
        IN_FLIGHT
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_IN_FLIGHT).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_stop_at_the_bound_and_come_back() {
        let taken: Vec<Slot> = std::iter::from_fn(Slot::take).take(MAX_IN_FLIGHT + 1).collect();
        assert_eq!(taken.len(), MAX_IN_FLIGHT);
        assert!(Slot::take().is_none());
        drop(taken);
        assert!(Slot::take().is_some());
    }
}
