//! The forward phase of a routed request: read the body, pick a backend and an endpoint, send,
//! judge the answer (outlier detection, retry policy and budget), and retry or answer.

use std::{
    io::Write as _,
    net::IpAddr,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{
    HeaderMap, Method, Request, Response, StatusCode, Uri, header,
    request::Parts,
    uri::{Authority, PathAndQuery, Scheme},
};
use http_body_util::{BodyExt, Either, StreamBody};
use hyper::body::Frame;

use super::{
    ClientBody, MAX_BUFFERED_BODY, Proxy, mirror,
    respond::{ResponseBody, downstream, local},
    tunnel,
};
use crate::{
    api::policy::RetryPolicy,
    gateway::{
        balance::{EndpointState, hash_key, outlier},
        http::{
            body::{BoxError, OutgoingBody, Streamed, Whole},
            client::Client,
            forwarding::Forwarding,
        },
        policy::client_ip::ClientIp,
        random::random_below,
        retry::{self, Failure},
        table::{Backend, HashOn, Rewrite, Route, Upstream},
        trace::{Outcome, RequestTrace},
        upstream::{self, Limits, UpstreamBody, UpstreamError},
    },
};

impl Proxy {
    /// Forwards `request` along `route` (which has backends), within the route's timeout
    /// counted from `started`, retrying as its policy and budget allow. `matched_prefix`: what
    /// the entry's `PathPrefix` match matched, for a rewrite that replaces it.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn forward<B: ClientBody>(
        &self,
        route: &Route,
        matched_prefix: Option<&str>,
        client: &Client,
        origin: ClientIp,
        host: Option<&str>,
        started: Instant,
        request: Request<B>,
        trace: Option<&mut RequestTrace>,
    ) -> Response<ResponseBody> {
        let (mut parts, body) = request.into_parts();
        if let Some(edit) = &route.request_headers {
            edit.apply(&mut parts.headers);
        }
        if let Some(rewrite) = &route.rewrite
            && let Some(refused) = apply_rewrite(rewrite, matched_prefix, &mut parts)
        {
            return refused;
        }
        let Ok(body) = RequestBody::read(body).await else {
            return local(
                StatusCode::BAD_REQUEST,
                "bad-body",
                "could not read the request body",
            );
        };
        if !route.mirrors.is_empty() {
            let buffered = match &body {
                RequestBody::Buffered(bytes) => Some(bytes),
                RequestBody::Streaming(_) => None,
            };
            mirror::send_copies(
                &route.mirrors,
                &parts,
                buffered,
                client,
                origin,
                host,
                &self.metrics,
            );
        }
        let policy = route.retry.as_ref();
        // Only routes that retry spend from a budget; the others need not count their requests.
        if policy.is_some() {
            route.budget.deposit();
        }
        let Some(backend) = pick_backend(route) else {
            return local(
                route.no_backend,
                "no-backend",
                "the route has no backend with weight",
            );
        };
        if let Some(edit) = &backend.request_headers {
            edit.apply(&mut parts.headers);
        }
        let Some(upstream) = &backend.upstream else {
            return local(
                StatusCode::INTERNAL_SERVER_ERROR,
                "backend-not-found",
                "the backend the route picked does not resolve (see the route's status)",
            );
        };
        let Some(_admitted) = Admission::enter(&upstream.limits, upstream.breaker.max_requests) else {
            let message = format!(
                "circuit open: {} requests in flight to {} (circuitBreaker.maxRequests)",
                upstream.breaker.max_requests, upstream.service
            );
            return local(StatusCode::SERVICE_UNAVAILABLE, "circuit-open", &message);
        };
        if upstream.websocket
            && tunnel::wants_websocket(&parts)
            && let Some(client_side) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>()
        {
            return tunnel::open(&self.tunnels, upstream, parts, client, origin, host, client_side).await;
        }
        let mut exchange = Exchange::new(route, upstream, client, origin, host, started, parts, body);
        exchange.trace = trace;
        let mut failed: Option<Arc<EndpointState>> = None;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let Some(endpoint) = upstream.pool.pick(exchange.hash, failed.as_deref()) else {
                return local(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no-endpoints",
                    &format!("no ready endpoints for {}", upstream.service),
                );
            };
            let result = exchange.send(&endpoint, attempt).await;
            if let Attempt::Failed(UpstreamError::PendingOverflow { waiting }) = result {
                let message = format!(
                    "circuit open: {waiting} requests wait for a connection to {} (circuitBreaker.maxPendingRequests)",
                    upstream.service
                );
                return local(StatusCode::SERVICE_UNAVAILABLE, "pending-overflow", &message);
            }
            let failure = exchange.judge(&result);
            if outlier::record(
                &upstream.pool,
                &endpoint,
                !failure.is_some_and(Failure::is_unhealthy),
                upstream.ejection,
            ) {
                self.metrics.ejection(&upstream.service);
                tracing::info!(microservice = %upstream.service, pod = %endpoint.pod, "endpoint ejected after consecutive failures");
            }
            if let Some(failure) = failure
                && let Some(wait) = exchange.retry_wait(failure, &result, attempt)
            {
                if route.budget.withdraw() {
                    route.metrics.retry();
                    if let Some(trace) = exchange.trace.as_deref_mut() {
                        trace.retrying(failure);
                    }
                    failed = Some(endpoint);
                    tokio::time::sleep(wait).await;
                    continue;
                }
                route.metrics.budget_exhausted();
            }
            return exchange.answer(result);
        }
    }
}

/// One request on its way to one upstream, across its attempts.
struct Exchange<'r> {
    upstream: &'r Upstream,
    policy: Option<&'r RetryPolicy>,
    parts: Parts,
    body: RequestBody,
    forwarding: Forwarding,
    /// The request target as every attempt sends it.
    path: PathAndQuery,
    /// For an HTTP/2 upstream: the `:authority` to send (see [`Exchange::new`]).
    http2_authority: Option<Authority>,
    hash: Option<u64>,
    deadline: Option<Instant>,
    /// The most attempts this request may take.
    attempts: u32,
    idempotent: bool,
    /// The request's trace, when tracing is on.
    trace: Option<&'r mut RequestTrace>,
}

impl<'r> Exchange<'r> {
    #[allow(clippy::too_many_arguments)]
    fn new(
        route: &'r Route,
        upstream: &'r Upstream,
        client: &Client,
        origin: ClientIp,
        host: Option<&str>,
        started: Instant,
        parts: Parts,
        body: RequestBody,
    ) -> Self {
        let policy = route.retry.as_ref();
        // A body too large to keep is streamed to one attempt, never retried.
        let attempts = match body {
            RequestBody::Buffered(_) => {
                1 + policy
                    .map(|p| u32::try_from(p.attempts).unwrap_or(0))
                    .unwrap_or(0)
            }
            RequestBody::Streaming(_) => 1,
        };
        let idempotent = matches!(
            parts.method,
            Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
        );
        let hash = upstream
            .hash_on
            .as_ref()
            .and_then(|on| request_hash(on, &parts.headers, origin.ip));
        let forwarding = Forwarding::for_peer(&parts.headers, client, host, origin.peer_trusted);
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        // HTTP/2 names the host in `:authority`, and a Host header beside it would have to name
        // the same (RFC 9113, 8.3.1; nginx refuses a request where they differ): the client's
        // host goes there, or the endpoint's address when the client named none.
        let http2_authority = if upstream.http2 {
            parts.uri.authority().cloned().or_else(|| {
                let host = parts.headers.get(header::HOST)?;
                Authority::try_from(host.as_bytes()).ok()
            })
        } else {
            None
        };
        Self {
            upstream,
            policy,
            parts,
            body,
            forwarding,
            path,
            http2_authority,
            hash,
            deadline: route.timeout.map(|t| started + t),
            attempts,
            idempotent,
            trace: None,
        }
    }

    /// Sends attempt number `attempt` to `endpoint`, within the per-try and route timeouts.
    async fn send(&mut self, endpoint: &Arc<EndpointState>, attempt: u32) -> Attempt {
        let upstream = self.upstream;
        let trace = self
            .trace
            .as_deref_mut()
            .map(|trace| trace.attempt(attempt, endpoint.addr, &endpoint.pod, &upstream.service));
        // HTTP/1.1 writes the client's headers as they are, filtered; HTTP/2 needs a request of
        // its own, with the scheme and authority as well.
        let outgoing = if upstream.http2 {
            let mut request = Request::new(self.body.for_attempt());
            *request.method_mut() = self.parts.method.clone();
            let mut uri = http::uri::Parts::default();
            uri.scheme = Some(Scheme::HTTP);
            uri.authority = self
                .http2_authority
                .clone()
                .or_else(|| endpoint.authority.clone());
            uri.path_and_query = Some(self.path.clone());
            *request.uri_mut() = Uri::from_parts(uri).unwrap_or_default();
            // The last possible attempt takes the headers; earlier ones keep them for a retry.
            *request.headers_mut() = if attempt == self.attempts {
                std::mem::take(&mut self.parts.headers)
            } else {
                self.parts.headers.clone()
            };
            self.forwarding.apply(request.headers_mut());
            request.headers_mut().remove(header::HOST);
            if let Some(trace) = &trace {
                trace.apply(request.headers_mut());
            }
            Either::Right(request)
        } else {
            Either::Left(self.body.for_attempt())
        };
        let per_try = self.policy.and_then(|p| p.per_try_timeout).map(|d| d.get());
        let limit = match (per_try, self.deadline) {
            (Some(t), Some(d)) => Some(t.min(d.saturating_duration_since(Instant::now()))),
            (t, d) => t.or(d.map(|d| d.saturating_duration_since(Instant::now()))),
        };
        let _in_flight = endpoint.begin();
        // Only a latency-aware balancer needs the time of each exchange.
        let sent = upstream.pool.learns_latency().then(Instant::now);
        let exchange = async {
            match outgoing {
                Either::Right(request) => upstream::send_http2(&**endpoint, upstream.breaker, request).await,
                Either::Left(body) => {
                    let head = upstream::RequestHead {
                        method: &self.parts.method,
                        target: self.path.as_str(),
                        headers: &self.parts.headers,
                        forwarding: &self.forwarding,
                        trace: trace.as_ref(),
                    };
                    upstream::send_http1(endpoint, upstream.pool.endpoints(), upstream.breaker, head, body)
                        .await
                }
            }
        };
        let result = match limit {
            Some(limit) => match tokio::time::timeout(limit, exchange).await {
                Ok(result) => Attempt::from(result),
                Err(_) => Attempt::TimedOut,
            },
            None => Attempt::from(exchange.await),
        };
        if let (Some(sent), Attempt::Answered(_)) = (sent, &result) {
            endpoint.observe(sent.elapsed());
        }
        if let Some(trace) = self.trace.as_deref_mut() {
            trace.attempt_ended(result.outcome());
        }
        result
    }

    /// What went wrong with an attempt, if anything did: a failed exchange, or an answer the
    /// retry policy counts as a failure (any 5xx, or a status it lists).
    fn judge(&self, result: &Attempt) -> Option<Failure> {
        match result {
            Attempt::Answered(response) => {
                let status = response.status();
                let listed = self
                    .policy
                    .is_some_and(|p| p.retriable_status_codes.contains(&i32::from(status.as_u16())));
                (status.is_server_error() || listed).then_some(Failure::Status(status))
            }
            Attempt::Failed(error) if error.is_connect() => Some(Failure::Connect),
            Attempt::Failed(_) => Some(Failure::Reset),
            Attempt::TimedOut => Some(Failure::Timeout),
        }
    }

    /// The wait before retrying after attempt number `attempt` failed with `failure`, if the
    /// policy retries it and a retry can still be made before the route's deadline.
    fn retry_wait(&self, failure: Failure, result: &Attempt, attempt: u32) -> Option<Duration> {
        let policy = self.policy?;
        if attempt >= self.attempts || !retry::should_retry(policy, failure, self.idempotent) {
            return None;
        }
        let retry_after = match result {
            Attempt::Answered(response) => retry::retry_after(response.headers()).or_else(|| {
                let wire = response.body().wire_headers()?;
                retry::retry_after_value(&wire.get("retry-after")?)
            }),
            _ => None,
        };
        let remaining = self.deadline.map(|d| d.saturating_duration_since(Instant::now()));
        retry::wait_before_retry(policy, attempt, retry_after, remaining)
    }

    /// The client's answer to the last attempt.
    fn answer(&self, result: Attempt) -> Response<ResponseBody> {
        match result {
            Attempt::Answered(response) => downstream(response),
            Attempt::TimedOut if self.deadline.is_some_and(|d| Instant::now() >= d) => local(
                StatusCode::GATEWAY_TIMEOUT,
                "route-timeout",
                "the route's timeout passed",
            ),
            Attempt::TimedOut => local(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream-timeout",
                "the upstream did not answer in time",
            ),
            Attempt::Failed(error) if error.is_connect() => local(
                StatusCode::BAD_GATEWAY,
                "connect-failure",
                "could not connect to the upstream",
            ),
            // The connection it came on is gone with the error: never used again.
            Attempt::Failed(error) if error.is_invalid_response() => local(
                StatusCode::BAD_GATEWAY,
                "upstream-invalid",
                &format!("the upstream's answer was not valid HTTP/1.1: {error}"),
            ),
            Attempt::Failed(_) => local(
                StatusCode::BAD_GATEWAY,
                "upstream-reset",
                "the upstream connection broke",
            ),
        }
    }
}

/// A request's body: kept whole (so that it can be sent again) up to [`MAX_BUFFERED_BODY`],
/// streamed through otherwise.
enum RequestBody {
    Buffered(Bytes),
    /// What was read before the limit, then the rest of the client's body; `None` once sent.
    Streaming(Option<Streamed>),
}

impl RequestBody {
    async fn read<B: ClientBody>(mut body: B) -> Result<Self, BoxError> {
        // A body of one frame (the usual) is kept as it came; only more are copied together.
        let mut only: Option<Bytes> = None;
        let mut read = bytes::BytesMut::new();
        let mut total = 0;
        while let Some(frame) = body.frame().await {
            // Trailers are not forwarded.
            let Ok(data) = frame.map_err(Into::into)?.into_data() else {
                continue;
            };
            total += data.len();
            match only.take() {
                None if read.is_empty() => only = Some(data),
                previous => {
                    if let Some(previous) = previous {
                        read.extend_from_slice(&previous);
                    }
                    read.extend_from_slice(&data);
                }
            }
            if total > MAX_BUFFERED_BODY {
                let so_far = only.take().unwrap_or_else(|| read.split().freeze());
                let head = futures::stream::once(std::future::ready(Ok(Frame::data(so_far))));
                let rest = futures::StreamExt::map(http_body_util::BodyStream::new(body), |frame| {
                    frame.map_err(|error| std::io::Error::other(error.into()))
                });
                let stream = StreamBody::new(futures::StreamExt::chain(head, rest));
                return Ok(RequestBody::Streaming(Some(BodyExt::boxed(stream))));
            }
        }
        Ok(RequestBody::Buffered(only.unwrap_or_else(|| read.freeze())))
    }

    /// The body of the next attempt (a streamed body goes to the first attempt only).
    fn for_attempt(&mut self) -> OutgoingBody {
        match self {
            RequestBody::Buffered(bytes) => Either::Left(Whole::new(bytes.clone())),
            RequestBody::Streaming(body) => body.take().map_or(Either::Left(Whole::empty()), Either::Right),
        }
    }
}

/// A request counted against its upstream's `maxRequests` until it is answered.
struct Admission<'a>(&'a Limits);

impl<'a> Admission<'a> {
    fn enter(limits: &'a Limits, max_requests: usize) -> Option<Self> {
        let before = limits.in_flight.fetch_add(1, Ordering::Relaxed);
        let admission = Admission(limits);
        (before < max_requests).then_some(admission)
    }
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What one attempt came to.
enum Attempt {
    Answered(Response<UpstreamBody>),
    Failed(UpstreamError),
    TimedOut,
}

impl Attempt {
    /// The attempt's end, as its span tells it.
    fn outcome(&self) -> Outcome {
        match self {
            Attempt::Answered(response) => Outcome::Status(response.status().as_u16()),
            Attempt::Failed(error) if error.is_connect() => Outcome::Error("connect-failure"),
            Attempt::Failed(error) if error.is_invalid_response() => Outcome::Error("upstream-invalid"),
            Attempt::Failed(UpstreamError::PendingOverflow { .. }) => Outcome::Error("pending-overflow"),
            Attempt::Failed(_) => Outcome::Error("reset"),
            Attempt::TimedOut => Outcome::Error("timeout"),
        }
    }
}

impl From<Result<Response<UpstreamBody>, UpstreamError>> for Attempt {
    fn from(result: Result<Response<UpstreamBody>, UpstreamError>) -> Self {
        match result {
            Ok(response) => Attempt::Answered(response),
            Err(error) => Attempt::Failed(error),
        }
    }
}

/// One of the route's backends, chosen by weight.
fn pick_backend(route: &Route) -> Option<&Backend> {
    if route.total_weight == 0 {
        return None;
    }
    let mut ticket = random_below(route.total_weight as usize) as u32;
    for backend in &route.backends {
        if ticket < backend.weight {
            return Some(backend);
        }
        ticket -= backend.weight;
    }
    route.backends.last()
}

/// Applies a route's URL rewrite: the Host header, and the path (the query stays). The answer
/// to give instead, if the rewritten path is not a valid URI.
fn apply_rewrite(
    rewrite: &Rewrite,
    matched_prefix: Option<&str>,
    parts: &mut Parts,
) -> Option<Response<ResponseBody>> {
    if let Some(hostname) = &rewrite.hostname {
        parts.headers.insert(header::HOST, hostname.clone());
        if parts.uri.authority().is_some() {
            let mut uri = std::mem::take(&mut parts.uri).into_parts();
            uri.scheme = None;
            uri.authority = None;
            parts.uri = Uri::from_parts(uri).unwrap_or_default();
        }
    }
    if let Some(path) = &rewrite.path {
        let rewritten = path.apply(parts.uri.path(), matched_prefix);
        let target = match parts.uri.query() {
            Some(query) => format!("{rewritten}?{query}"),
            None => rewritten,
        };
        let Ok(target) = PathAndQuery::try_from(target) else {
            return Some(local(
                StatusCode::INTERNAL_SERVER_ERROR,
                "bad-rewrite",
                "the rewritten path is not a valid URI",
            ));
        };
        let mut uri = std::mem::take(&mut parts.uri).into_parts();
        uri.path_and_query = Some(target);
        parts.uri = Uri::from_parts(uri).unwrap_or_default();
    }
    None
}

/// The consistent-hash key of a request, as the upstream's policy takes it.
fn request_hash(on: &HashOn, headers: &HeaderMap, client: IpAddr) -> Option<u64> {
    match on {
        HashOn::Header(name) => headers.get(name).map(|v| hash_key(v.as_bytes())),
        HashOn::Cookie(name) => headers.get_all(header::COOKIE).iter().find_map(|value| {
            value.to_str().ok()?.split(';').find_map(|pair| {
                let (k, v) = pair.trim().split_once('=')?;
                (k == name).then(|| hash_key(v.as_bytes()))
            })
        }),
        // The address's text, written on the stack: no allocation per request.
        HashOn::SourceIp => {
            let mut text = [0u8; 48];
            let mut cursor = std::io::Cursor::new(&mut text[..]);
            let _ = write!(cursor, "{client}");
            let len = cursor.position() as usize;
            Some(hash_key(&text[..len]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_and_header_hash_keys() {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, "a=1; session=abc".parse().expect("value"));
        let client: IpAddr = "127.0.0.1".parse().expect("addr");
        assert_eq!(
            request_hash(&HashOn::Cookie("session".into()), &headers, client),
            Some(hash_key(b"abc"))
        );
        assert_eq!(
            request_hash(&HashOn::Cookie("missing".into()), &headers, client),
            None
        );
        assert_eq!(
            request_hash(&HashOn::SourceIp, &headers, client),
            Some(hash_key(b"127.0.0.1"))
        );
        let longest: IpAddr = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().expect("addr");
        assert_eq!(
            request_hash(&HashOn::SourceIp, &headers, longest),
            Some(hash_key(longest.to_string().as_bytes()))
        );
    }
}
