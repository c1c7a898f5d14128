//! One proxied request, in phases: route, buffer, pick, forward (with retries and timeouts),
//! respond. The route table is loaded once per request, without a lock.

use std::{
    borrow::Cow,
    io::Write as _,
    net::{IpAddr, SocketAddr},
    sync::{Arc, atomic::Ordering},
    time::Instant,
};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{
    HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, header,
    uri::{Authority, PathAndQuery, Scheme},
};
use http_body_util::{BodyExt, Either, StreamBody};
use hyper::body::Frame;

use super::{
    balance::{hash_key, random_below},
    body::{BoxError, OutgoingBody, ResponseBody, Streamed, Whole},
    client_ip::{self, ClientIp},
    config::{Attached, HashOn, Redirect, Route, RouteTable, Upstream},
    forwarding::{Forwarding, strip_hop_by_hop},
    metrics::{GatewayMetrics, RouteMetrics},
    outlier,
    path::{self, PathPolicy},
    retry::{self, Failure},
    router::request_host,
    upstream::{self, Limits, UpstreamBody, UpstreamError},
};
use crate::api::gateway::RedirectScheme;

/// Request bodies up to this size are buffered so that they can be retried; larger ones are
/// streamed to a single attempt.
pub const MAX_BUFFERED_BODY: usize = 1 << 20;

/// The client end of one connection, as each of its requests needs it.
pub struct Client {
    /// The listener's port.
    pub port: u16,
    pub addr: SocketAddr,
    /// `addr`'s IP as an `X-Forwarded-For` value, made once per connection.
    pub(super) forwarded_for: Option<HeaderValue>,
    /// On a TLS connection, the HTTPS listener its server name picked (`namespace/gateway/
    /// listener`): its requests take only that listener's routes.
    pub tls_listener: Option<Arc<str>>,
}

impl Client {
    /// A client of a plain-HTTP listener.
    pub fn new(port: u16, addr: SocketAddr) -> Self {
        Self {
            port,
            addr,
            forwarded_for: HeaderValue::try_from(addr.ip().to_string()).ok(),
            tls_listener: None,
        }
    }

    /// A client whose TLS handshake picked the HTTPS listener `listener`.
    pub fn over_tls(port: u16, addr: SocketAddr, listener: Arc<str>) -> Self {
        Self {
            tls_listener: Some(listener),
            ..Self::new(port, addr)
        }
    }

    /// The scheme the client used, as `X-Forwarded-Proto` tells it.
    pub fn scheme(&self) -> &'static str {
        if self.tls_listener.is_some() {
            "https"
        } else {
            "http"
        }
    }
}

pub struct Proxy {
    table: Arc<ArcSwap<RouteTable>>,
    access_log: bool,
    /// The metrics of requests no route takes.
    unrouted: RouteMetrics,
    metrics: GatewayMetrics,
}

impl Proxy {
    /// `access_log`: one structured log event per request (target `microgate::access`).
    pub fn new(table: Arc<ArcSwap<RouteTable>>, metrics: GatewayMetrics, access_log: bool) -> Self {
        let unrouted = metrics.route("<none>");
        Self {
            table,
            metrics,
            unrouted,
            access_log,
        }
    }

    /// The most client connections `port` holds open at once.
    pub fn max_connections(&self, port: u16) -> usize {
        self.table
            .load()
            .max_connections
            .get(&port)
            .copied()
            .unwrap_or(super::config::DEFAULT_MAX_CONNECTIONS)
    }

    /// The HTTPS listeners of `port`, if it terminates TLS.
    pub fn tls_port(&self, port: u16) -> Option<Arc<super::tls::TlsPort>> {
        self.table.load().tls.get(&port).cloned()
    }

    /// Answers one request from a client. `B`: its body, as hyper's server or the gateway's own
    /// HTTP/1.1 server gives it.
    pub async fn handle<B: ClientBody>(
        &self,
        client: &Client,
        mut request: Request<B>,
    ) -> Response<ResponseBody> {
        let (port, client_addr) = (client.port, client.addr);
        let started = Instant::now();
        let table = self.table.load_full();
        // Owned handles (reference counts, no copies), so that the request itself can move on.
        let authority = request.uri().authority().cloned();
        let host_header = request.headers().get(header::HOST).cloned();
        let host = request_host(authority.as_ref(), host_header.as_ref());
        let listener = client.tls_listener.as_deref();
        // Before anything looks at the path: routing, the access log, the service.
        let refused = match (&authority, &host_header) {
            // An absolute-form target (or HTTP/2's :authority) and a Host that name different
            // hosts: which one the service would believe is anyone's guess.
            (Some(authority), Some(host_header)) if !same_host(authority, host_header) => Some(local(
                StatusCode::BAD_REQUEST,
                "host-mismatch",
                "the request target's authority and the Host header disagree",
            )),
            _ => normalize_target(request.uri_mut(), &table.path_policy(port, listener)),
        };
        // Kept for the access log only when it is on.
        let logged = self
            .access_log
            .then(|| (request.method().clone(), request.uri().clone()));
        let origin = client_ip::resolve(
            table.trusted_proxies(port, listener),
            client_addr.ip(),
            request.headers(),
        );
        let (route_id, metrics, response) = match refused {
            Some(refused) => ("<none>", &self.unrouted, refused),
            None => match find_route(&table, port, listener, host.as_deref(), &request) {
                Some(attached) => {
                    let route = &attached.route;
                    let response = match &route.redirect {
                        Some(redirect) => {
                            let named_port = authority.as_ref().and_then(Authority::port_u16).or_else(|| {
                                host_header
                                    .as_ref()
                                    .and_then(|h| Authority::try_from(h.as_bytes()).ok())
                                    .and_then(|a| a.port_u16())
                            });
                            redirect_response(redirect, client, host.as_deref(), named_port, request.uri())
                        }
                        None => {
                            self.forward(route, client, origin, host.as_deref(), started, request)
                                .await
                        }
                    };
                    (route.id.as_str(), &route.metrics, response)
                }
                // A host another HTTPS listener of this port serves: this connection's certificate
                // was not chosen for it (RFC 9110 §15.5.20).
                None if listener.is_some()
                    && find_route(&table, port, None, host.as_deref(), &request).is_some() =>
                {
                    (
                        "<none>",
                        &self.unrouted,
                        local(
                            StatusCode::MISDIRECTED_REQUEST,
                            "misdirected",
                            "this connection's TLS server name is not for this host",
                        ),
                    )
                }
                None => (
                    "<none>",
                    &self.unrouted,
                    local(StatusCode::NOT_FOUND, "no-route", "no route matches this request"),
                ),
            },
        };
        let took = started.elapsed();
        metrics.request(response.status(), took);
        if let Some((method, uri)) = logged {
            let reason = response
                .headers()
                .get("x-microgate-reason")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            tracing::info!(
                target: "microgate::access",
                client = %origin.ip, peer = %client_addr, %method, %uri, host = host.as_deref().unwrap_or(""),
                route = route_id, status = response.status().as_u16(), reason, ms = took.as_secs_f64() * 1000.0,
                "request"
            );
        }
        response
    }

    async fn forward<B: ClientBody>(
        &self,
        route: &Route,
        client: &Client,
        origin: ClientIp,
        host: Option<&str>,
        started: Instant,
        request: Request<B>,
    ) -> Response<ResponseBody> {
        let deadline = route.timeout.map(|t| started + t);
        let (mut parts, body) = request.into_parts();
        let mut body = match RequestBody::read(body).await {
            Ok(body) => body,
            Err(_) => {
                return local(
                    StatusCode::BAD_REQUEST,
                    "bad-body",
                    "could not read the request body",
                );
            }
        };
        let idempotent = matches!(
            parts.method,
            Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
        );
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
        // Only routes that retry spend from a budget; the others need not count their requests.
        if policy.is_some() {
            route.budget.deposit();
        }

        let Some(upstream) = pick_backend(route) else {
            return local(
                StatusCode::SERVICE_UNAVAILABLE,
                "no-backend",
                "the route has no backend with weight",
            );
        };
        let hash = upstream
            .hash_on
            .as_ref()
            .and_then(|on| request_hash(on, &parts.headers, origin.ip));
        let Some(_admitted) = Admission::enter(&upstream.limits, upstream.breaker.max_requests) else {
            let message = format!(
                "circuit open: {} requests in flight to {} (circuitBreaker.maxRequests)",
                upstream.breaker.max_requests, upstream.service
            );
            return local(StatusCode::SERVICE_UNAVAILABLE, "circuit-open", &message);
        };
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
        let mut failed: Option<Arc<super::balance::EndpointState>> = None;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let Some(endpoint) = upstream.pool.pick(hash, failed.as_deref()) else {
                return local(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no-endpoints",
                    &format!("no ready endpoints for {}", upstream.service),
                );
            };
            // HTTP/1.1 writes the client's headers as they are, filtered; HTTP/2 needs a
            // request of its own, with the scheme and authority as well.
            let outgoing = if upstream.http2 {
                let mut request = Request::new(body.for_attempt());
                *request.method_mut() = parts.method.clone();
                let mut uri = http::uri::Parts::default();
                uri.scheme = Some(Scheme::HTTP);
                uri.authority = http2_authority.clone().or_else(|| endpoint.authority.clone());
                uri.path_and_query = Some(path.clone());
                *request.uri_mut() = Uri::from_parts(uri).unwrap_or_default();
                // The last possible attempt takes the headers; earlier ones keep them for a retry.
                *request.headers_mut() = if attempt == attempts {
                    std::mem::take(&mut parts.headers)
                } else {
                    parts.headers.clone()
                };
                forwarding.apply(request.headers_mut());
                request.headers_mut().remove(header::HOST);
                Either::Right(request)
            } else {
                Either::Left(body.for_attempt())
            };
            let per_try = policy.and_then(|p| p.per_try_timeout).map(|d| d.get());
            let limit = match (per_try, deadline) {
                (Some(t), Some(d)) => Some(t.min(d.saturating_duration_since(Instant::now()))),
                (t, d) => t.or(d.map(|d| d.saturating_duration_since(Instant::now()))),
            };
            let in_flight = endpoint.begin();
            // Only a latency-aware balancer needs the time of each exchange.
            let sent = upstream.pool.learns_latency().then(Instant::now);
            let exchange = async {
                match outgoing {
                    Either::Right(request) => {
                        upstream::send_http2(&endpoint, upstream.breaker, request).await
                    }
                    Either::Left(body) => {
                        let head = upstream::RequestHead {
                            method: &parts.method,
                            target: path.as_str(),
                            headers: &parts.headers,
                            forwarding: &forwarding,
                        };
                        upstream::send_http1(
                            &endpoint,
                            upstream.pool.endpoints(),
                            upstream.breaker,
                            head,
                            body,
                        )
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
            drop(in_flight);
            if let Attempt::Failed(UpstreamError::PendingOverflow { waiting }) = result {
                let message = format!(
                    "circuit open: {waiting} requests wait for a connection to {} (circuitBreaker.maxPendingRequests)",
                    upstream.service
                );
                return local(StatusCode::SERVICE_UNAVAILABLE, "pending-overflow", &message);
            }
            let failure = match &result {
                Attempt::Answered(response) => {
                    if let Some(sent) = sent {
                        endpoint.observe(sent.elapsed());
                    }
                    let status = response.status();
                    let listed = policy
                        .is_some_and(|p| p.retriable_status_codes.contains(&i32::from(status.as_u16())));
                    (status.is_server_error() || listed).then_some(Failure::Status(status))
                }
                Attempt::Failed(error) if error.is_connect() => Some(Failure::Connect),
                Attempt::Failed(_) => Some(Failure::Reset),
                Attempt::TimedOut => Some(Failure::Timeout),
            };
            let unhealthy = match failure {
                Some(Failure::Status(status)) => status.is_server_error(),
                Some(_) => true,
                None => false,
            };
            if outlier::record(&upstream.pool, &endpoint, !unhealthy, upstream.ejection) {
                self.metrics.ejection(&upstream.service);
                tracing::info!(microservice = %upstream.service, pod = %endpoint.pod, "endpoint ejected after consecutive failures");
            }
            let retry_after = match &result {
                // Only a failure's answer is asked when to come back.
                Attempt::Answered(response) if failure.is_some() => retry::retry_after(response.headers())
                    .or_else(|| {
                        let wire = response.body().wire_headers()?;
                        retry::retry_after_value(&wire.get("retry-after")?)
                    }),
                _ => None,
            };
            let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            // The wait before the retry, if one should and can be made in time.
            let wait = failure.zip(policy).and_then(|(f, p)| {
                let wanted = attempt < attempts && retry::should_retry(p, f, idempotent);
                wanted
                    .then(|| retry::wait_before_retry(p, attempt, retry_after, remaining))
                    .flatten()
            });
            let retry = wait.is_some();
            if let Some(wait) = wait
                && route.budget.withdraw()
            {
                route.metrics.retry();
                failed = Some(endpoint.clone());
                tokio::time::sleep(wait).await;
                continue;
            } else if retry {
                route.metrics.budget_exhausted();
            }
            return match result {
                Attempt::Answered(response) => downstream(response),
                Attempt::TimedOut if deadline.is_some_and(|d| Instant::now() >= d) => local(
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
            };
        }
    }
}

/// A client's request body, as either server reads it.
pub trait ClientBody:
    hyper::body::Body<Data = Bytes, Error: Into<BoxError>> + Send + Sync + Unpin + 'static
{
}

impl<B> ClientBody for B where
    B: hyper::body::Body<Data = Bytes, Error: Into<BoxError>> + Send + Sync + Unpin + 'static
{
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

impl From<Result<Response<UpstreamBody>, UpstreamError>> for Attempt {
    fn from(result: Result<Response<UpstreamBody>, UpstreamError>) -> Self {
        match result {
            Ok(response) => Attempt::Answered(response),
            Err(error) => Attempt::Failed(error),
        }
    }
}

/// The route entry `request` takes on `port`; on a TLS connection (`listener` set), only among
/// the routes of the listener its handshake picked.
fn find_route<'t, B>(
    table: &'t RouteTable,
    port: u16,
    listener: Option<&str>,
    host: Option<&str>,
    request: &Request<B>,
) -> Option<&'t Attached> {
    let routes = table.listeners.get(&port)?;
    let host_ok = |patterns: &[super::router::HostPattern]| {
        patterns.is_empty() || host.is_some_and(|h| patterns.iter().any(|p| p.matches(h)))
    };
    // Entries are sorted most specific first: the first that fits wins.
    routes.iter().find(|attached| {
        listener.is_none_or(|id| *attached.listener == *id)
            && host_ok(&attached.listener_hostnames)
            && host_ok(&attached.route.hostnames)
            && attached
                .request_match()
                .is_none_or(|m| m.matches(request.method(), request.uri(), request.headers()))
    })
}

/// Whether a request target's authority and its `Host` header name the same host and port.
fn same_host(authority: &Authority, host_header: &HeaderValue) -> bool {
    Authority::try_from(host_header.as_bytes()).is_ok_and(|host| {
        host.host().eq_ignore_ascii_case(authority.host()) && host.port_u16() == authority.port_u16()
    })
}

/// Normalizes the path of `uri` in place (see [`super::path`]); the answer to give instead when
/// the path is refused, or redirected to its normal form.
fn normalize_target(uri: &mut Uri, policy: &PathPolicy) -> Option<Response<ResponseBody>> {
    let normalized = match path::normalize(uri.path(), policy) {
        Ok(Cow::Borrowed(_)) => return None,
        Ok(Cow::Owned(normalized)) => normalized,
        Err(refusal) => return Some(local(StatusCode::BAD_REQUEST, refusal.code(), refusal.reason())),
    };
    let target = match uri.query() {
        Some(query) => format!("{normalized}?{query}"),
        None => normalized,
    };
    if policy.redirect_changed {
        let mut response = Response::new(Either::Right(Whole::new(Bytes::new())));
        *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
        if let Ok(location) = HeaderValue::try_from(target) {
            response.headers_mut().insert(header::LOCATION, location);
        }
        return Some(response);
    }
    let mut parts = std::mem::take(uri).into_parts();
    // Only unreserved characters were decoded: the normalized target is as valid as the original.
    parts.path_and_query = PathAndQuery::try_from(target).ok();
    match Uri::from_parts(parts) {
        Ok(normalized) => {
            *uri = normalized;
            None
        }
        Err(_) => Some(local(
            StatusCode::BAD_REQUEST,
            "bad-path",
            "the normalized path is not a valid URI",
        )),
    }
}

/// The answer of a redirecting route: the request's URL with the parts the route names replaced.
/// `named_port`: the port the request's authority or `Host` named.
fn redirect_response(
    redirect: &Redirect,
    client: &Client,
    host: Option<&str>,
    named_port: Option<u16>,
    uri: &Uri,
) -> Response<ResponseBody> {
    let scheme = match redirect.scheme {
        Some(RedirectScheme::Https) => "https",
        Some(RedirectScheme::Http) => "http",
        None => client.scheme(),
    };
    let Some(hostname) = redirect.hostname.as_deref().or(host) else {
        return local(
            StatusCode::BAD_REQUEST,
            "no-host",
            "a redirect keeps the request's host, and this request names none",
        );
    };
    // The port: the route's; else none when the scheme changes (its well-known port); else the
    // one the client named.
    let scheme_changed = scheme != client.scheme();
    let port = match redirect.port {
        Some(port) => Some(port),
        None if scheme_changed => None,
        None => named_port,
    };
    let port = port.filter(|p| !matches!((scheme, p), ("http", 80) | ("https", 443)));
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let location = match port {
        Some(port) => format!("{scheme}://{hostname}:{port}{path}"),
        None => format!("{scheme}://{hostname}{path}"),
    };
    let Ok(location) = HeaderValue::try_from(location) else {
        return local(
            StatusCode::BAD_REQUEST,
            "bad-redirect",
            "the redirect URL is not a valid header value",
        );
    };
    let mut response = Response::new(Either::Right(Whole::new(Bytes::new())));
    *response.status_mut() = redirect.status;
    response.headers_mut().insert(header::LOCATION, location);
    response
}

fn pick_backend(route: &Route) -> Option<&Arc<Upstream>> {
    if route.total_weight == 0 {
        return None;
    }
    let mut ticket = random_below(route.total_weight as usize) as u32;
    for backend in &route.backends {
        if ticket < backend.weight {
            return Some(&backend.upstream);
        }
        ticket -= backend.weight;
    }
    route.backends.last().map(|b| &b.upstream)
}

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

fn downstream(response: Response<UpstreamBody>) -> Response<ResponseBody> {
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, Either::Left(body))
}

/// An answer of the gateway's own: a one-line reason, and its code in `x-microgate-reason`.
pub fn local(status: StatusCode, code: &'static str, reason: &str) -> Response<ResponseBody> {
    let mut response = Response::new(Either::Right(Whole::new(Bytes::from(format!("{reason}\n")))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
        .headers_mut()
        .insert("x-microgate-reason", HeaderValue::from_static(code));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redirect(scheme: Option<RedirectScheme>, hostname: Option<&str>, port: Option<u16>) -> Redirect {
        Redirect {
            scheme,
            hostname: hostname.map(str::to_owned),
            port,
            status: StatusCode::MOVED_PERMANENTLY,
        }
    }

    fn location(
        redirect: &Redirect,
        client: &Client,
        host: Option<&str>,
        named_port: Option<u16>,
    ) -> (StatusCode, String) {
        let uri: Uri = "/a/b?c=1".parse().expect("a path");
        let response = redirect_response(redirect, client, host, named_port, &uri);
        let location = response
            .headers()
            .get(header::LOCATION)
            .map(|v| v.to_str().expect("ascii").to_owned())
            .unwrap_or_default();
        (response.status(), location)
    }

    #[test]
    fn redirects_keep_what_the_route_does_not_replace() {
        let addr: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let plain = Client::new(8080, addr);
        let tls = Client::over_tls(8443, addr, "ns/gw/https".into());
        let https = Some(RedirectScheme::Https);
        // A changed scheme drops the port the client named: the new scheme's own is meant.
        assert_eq!(
            location(&redirect(https, None, None), &plain, Some("shop"), Some(8080)),
            (StatusCode::MOVED_PERMANENTLY, "https://shop/a/b?c=1".to_owned())
        );
        assert_eq!(
            location(&redirect(https, None, Some(8443)), &plain, Some("shop"), None).1,
            "https://shop:8443/a/b?c=1"
        );
        // The scheme's well-known port is left out.
        assert_eq!(
            location(&redirect(https, None, Some(443)), &plain, Some("shop"), None).1,
            "https://shop/a/b?c=1"
        );
        // Unchanged scheme: the host and port the client named stay, unless replaced.
        assert_eq!(
            location(
                &redirect(None, Some("new.example"), None),
                &tls,
                Some("shop"),
                Some(8443)
            )
            .1,
            "https://new.example:8443/a/b?c=1"
        );
        assert_eq!(
            location(
                &redirect(Some(RedirectScheme::Http), None, Some(80)),
                &tls,
                Some("shop"),
                None
            )
            .1,
            "http://shop/a/b?c=1"
        );
        // Nothing to keep: refused rather than a Location without a host.
        assert_eq!(
            location(&redirect(https, None, None), &plain, None, None).0,
            StatusCode::BAD_REQUEST
        );
    }

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
