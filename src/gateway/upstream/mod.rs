//! Connections to the endpoints, and the Microservice's circuit-breaker limits on them.
//!
//! HTTP/1.1 connections are kept alive between requests in an idle stack per endpoint and worker:
//! a request takes the one used last, and its response body puts it back when the body ends (see
//! [`http1`]); one idle for [`IDLE_TIMEOUT`] is closed. An HTTP2 or GRPC Microservice gets one
//! multiplexed connection per endpoint and worker. New connections open only while the
//! Microservice has fewer than `circuitBreaker.maxConnections`; beyond that, an HTTP/2 request
//! shares another worker's connection, and up to `maxPendingRequests` requests wait for one to be
//! freed, and the rest are refused at once.
//!
//! An endpoint may close a kept-alive connection at the moment a request is sent on it. A
//! request that can be sent twice finds out and is sent again; one that cannot (a POST) would
//! fail, so it is sent only on connections younger than the endpoint's own idle timeout, as the
//! gateway learns it (see [`IdleTimeout`]).

mod http1;

use std::{
    collections::VecDeque,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::Method;
use http::{Request, Response};
use http_body_util::Either;
use hyper::{
    body::{Body as HttpBody, Frame, Incoming, SizeHint},
    client::conn::http2,
};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::{net::TcpStream, sync::Notify};

use super::{
    http::{body::OutgoingBody, wire::WireHeaders},
    workers,
};

/// How long opening a connection to an endpoint may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Idle HTTP/1.1 connections kept per endpoint and worker; beyond that the oldest is closed.
const IDLE_PER_ENDPOINT: usize = 256;

/// How long a connection may have been idle and still carry a request that cannot be sent twice,
/// to an endpoint whose idle timeout the gateway has not seen yet: below any server's default
/// (Node's 5 s, Apache's 5 s, gunicorn's 2 s), so that a pause in traffic costs a new connection,
/// never a POST answered 502.
const UNPROVEN_IDLE: Duration = Duration::from_millis(50);

/// An idle HTTP/1.1 connection not used for this long is closed (nginx's upstream
/// `keepalive_timeout` default): a burst's extra connections do not stay open for good.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// A Microservice's `circuitBreaker`, in the units the data plane uses.
#[derive(Clone, Copy, Debug)]
pub struct CircuitBreaker {
    pub max_connections: usize,
    pub max_pending_requests: usize,
    pub max_requests: usize,
}

impl From<&crate::api::policy::CircuitBreaker> for CircuitBreaker {
    fn from(policy: &crate::api::policy::CircuitBreaker) -> Self {
        let limit = |value: i32| usize::try_from(value).unwrap_or(0);
        Self {
            max_connections: limit(policy.max_connections),
            max_pending_requests: limit(policy.max_pending_requests),
            max_requests: limit(policy.max_requests),
        }
    }
}

/// What one Microservice has open and waiting, shared by the route tables that replace each other
/// (a new table must not reset what is in use).
#[derive(Debug, Default)]
pub struct Limits {
    /// Requests in flight (admitted against `maxRequests`).
    pub in_flight: AtomicUsize,
    /// Connections open to all of the Microservice's endpoints.
    connections: AtomicUsize,
    /// Requests waiting for a connection.
    pending: AtomicUsize,
    /// Woken when a connection closes or goes back to idle while requests wait.
    freed: Notify,
}

impl Limits {
    fn notify_if_waited_for(&self) {
        if self.pending.load(Ordering::Acquire) > 0 {
            self.freed.notify_waiters();
        }
    }

    /// A connection slot, if fewer than `max` are open.
    fn open_slot(self: &Arc<Self>, max: usize) -> Option<ConnectionSlot> {
        self.connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < max).then_some(open + 1)
            })
            .ok()
            .map(|_| ConnectionSlot(self.clone()))
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }
}

/// One open connection, counted against `maxConnections` until it closes.
struct ConnectionSlot(Arc<Limits>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
        self.0.notify_if_waited_for();
    }
}

/// A request waiting for a connection, counted against `maxPendingRequests`.
struct Waiting<'a>(&'a Limits);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The connections kept open to one endpoint.
#[derive(Debug)]
pub struct Connections {
    limits: Arc<Limits>,
    /// Idle HTTP/1.1 connections, one stack per worker: a connection is driven by the runtime of
    /// the worker that opened it, and only that worker's requests take it (see `super::workers`).
    /// Made on the first connection: most endpoints in a registry never get one.
    idle: OnceLock<Box<[IdleStack<Box<http1::Connection>>]>>,
    /// The HTTP/2 connection of each worker (made on first use, like `idle`): its task runs on
    /// that worker, so that its requests need no other thread.
    http2: OnceLock<Box<[ArcSwapOption<http2::SendRequest<OutgoingBody>>]>>,
    /// How long the endpoint keeps an idle connection open, as far as the gateway has seen.
    idle_timeout: IdleTimeout,
}

impl Connections {
    pub fn new(limits: Arc<Limits>) -> Self {
        Self {
            limits,
            idle: OnceLock::new(),
            http2: OnceLock::new(),
            idle_timeout: IdleTimeout::default(),
        }
    }

    /// This worker's idle connection used last, and how long it has been idle.
    fn take_idle(&self) -> Option<(Box<http1::Connection>, Duration)> {
        let (since, connection) = self.idle.get()?.get(workers::current())?.take()?;
        Some((connection, since.elapsed()))
    }

    fn put_idle(&self, connection: Box<http1::Connection>) {
        let idle = self
            .idle
            .get_or_init(|| (0..workers::count()).map(|_| IdleStack::default()).collect());
        if let Some(stack) = idle.get(workers::current()) {
            // Closed here, after the stack is unlocked.
            let _closed = stack.put(connection, Instant::now());
        }
        self.limits.notify_if_waited_for();
    }

    /// Closes this worker's connections that have been idle for [`IDLE_TIMEOUT`] at `now`.
    pub fn close_expired(&self, now: Instant) {
        if let Some(stack) = self.idle.get().and_then(|stacks| stacks.get(workers::current())) {
            drop(stack.take_expired(now));
        }
    }

    /// Closes one idle connection (any worker's), to make room under `maxConnections` for
    /// another endpoint.
    fn close_one_idle(&self) -> bool {
        self.idle
            .get()
            .is_some_and(|stacks| stacks.iter().any(|stack| stack.take_oldest().is_some()))
    }
}

/// One worker's idle connections to one endpoint, the one used last on top.
///
/// Last in, first out: under steady load the same few connections carry the requests and stay
/// warm in the caches of both ends, and the ones a burst opened sink to the bottom, where
/// [`IDLE_TIMEOUT`] closes them. (First in, first out would keep every connection a burst ever
/// opened in use, round after round.) The lock is only contended when another worker takes a
/// connection to close it.
struct IdleStack<C>(Mutex<VecDeque<(Instant, C)>>);

impl<C> Default for IdleStack<C> {
    fn default() -> Self {
        Self(Mutex::new(VecDeque::new()))
    }
}

impl<C> std::fmt::Debug for IdleStack<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdleStack")
            .field("idle", &self.lock().len())
            .finish()
    }
}

impl<C> IdleStack<C> {
    /// The connection used last, with when it went idle.
    fn take(&self) -> Option<(Instant, C)> {
        self.lock().pop_back()
    }

    /// Puts `connection` on top; returns one to close: the oldest, if it has been idle for
    /// [`IDLE_TIMEOUT`] or the stack is full.
    fn put(&self, connection: C, now: Instant) -> Option<C> {
        let mut stack = self.lock();
        let expired = stack
            .front()
            .is_some_and(|(since, _)| now.saturating_duration_since(*since) >= IDLE_TIMEOUT);
        let closed = if expired || stack.len() >= IDLE_PER_ENDPOINT {
            stack.pop_front().map(|(_, oldest)| oldest)
        } else {
            None
        };
        stack.push_back((now, connection));
        closed
    }

    fn take_oldest(&self) -> Option<C> {
        self.lock().pop_front().map(|(_, connection)| connection)
    }

    /// Takes out the connections idle for [`IDLE_TIMEOUT`] at `now` (all at the bottom).
    fn take_expired(&self, now: Instant) -> Vec<C> {
        let mut stack = self.lock();
        let expired = stack
            .iter()
            .take_while(|(since, _)| now.saturating_duration_since(*since) >= IDLE_TIMEOUT)
            .count();
        stack.drain(..expired).map(|(_, connection)| connection).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(Instant, C)>> {
        // Nothing is left half-done under the lock: a panic elsewhere does not spoil the stack.
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// How long an endpoint keeps a kept-alive connection open while it is idle, learned from what
/// the gateway sees: an idle connection found closed at age `a` says the timeout is at most
/// `a`; one that carried a request at age `b` well beyond what was known (half as long again)
/// says it has grown, as when a restarted endpoint closed every connection at once. (Only well
/// beyond: an endpoint's timer fires a little late now and then, and creeping up with it would
/// let a POST meet the close the margin is there to avoid.) Requests that cannot be
/// sent twice skip connections within a fifth of the timeout of their end, so that the endpoint
/// does not close one under them (a POST on a connection the endpoint is closing cannot be
/// told apart from one the endpoint received and died on: it would be answered 502). While no
/// close has been seen, any moment may be the end: they take only connections idle for less
/// than [`UNPROVEN_IDLE`] (under steady traffic, all of them).
#[derive(Debug, Default)]
struct IdleTimeout {
    /// Microseconds; 0 while unknown.
    micros: AtomicU64,
}

impl IdleTimeout {
    fn closed_at(&self, idle: Duration) {
        let idle = micros(idle).max(1);
        let _ = self
            .micros
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |known| {
                (known == 0 || idle < known).then_some(idle)
            });
    }

    fn open_at(&self, idle: Duration) {
        let idle = micros(idle);
        let known = self.micros.load(Ordering::Relaxed);
        // Only a known timeout is corrected: an endpoint that never closed one has none to learn.
        if known != 0 && idle.saturating_mul(2) > known.saturating_mul(3) {
            self.micros.fetch_max(idle, Ordering::Relaxed);
        }
    }

    /// Whether a connection idle this long may be closed by the endpoint any moment now.
    fn nearly_over(&self, idle: Duration) -> bool {
        match self.micros.load(Ordering::Relaxed) {
            0 => idle >= UNPROVEN_IDLE,
            known => micros(idle).saturating_mul(5) >= known.saturating_mul(4),
        }
    }
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// Why a request could not be sent to an endpoint.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("could not connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("connecting to {addr} took longer than {CONNECT_TIMEOUT:?}")]
    ConnectTimeout { addr: SocketAddr },
    #[error("the HTTP/2 handshake with {addr} failed: {source}")]
    Handshake { addr: SocketAddr, source: hyper::Error },
    /// The request was (at least partly) sent, and the HTTP/2 exchange failed.
    #[error("{0}")]
    Exchange(#[source] hyper::Error),
    /// The request was (at least partly) sent, and the HTTP/1.1 exchange failed.
    #[error("HTTP/1.1 exchange with {addr} failed: {source}")]
    Http1 {
        addr: SocketAddr,
        source: http1::ExchangeError,
    },
    #[error("{waiting} requests already wait for a connection (circuitBreaker.maxPendingRequests)")]
    PendingOverflow { waiting: usize },
}

impl UpstreamError {
    /// Whether nothing of the request reached the endpoint (so any request may be retried).
    pub fn is_connect(&self) -> bool {
        matches!(
            self,
            Self::Connect { .. } | Self::ConnectTimeout { .. } | Self::Handshake { .. }
        )
    }
}

impl UpstreamError {
    /// Whether the endpoint answered with something that is no valid HTTP/1.1 response.
    pub fn is_invalid_response(&self) -> bool {
        matches!(
            self,
            Self::Http1 {
                source: http1::ExchangeError::Invalid(_) | http1::ExchangeError::Parse(_),
                ..
            }
        )
    }
}

pub use http1::RequestHead;

/// What sending needs of an endpoint: where it is and the connections kept open to it. The
/// balancer's endpoint state provides it, so that this side knows nothing of balancing.
pub trait Destination: Send + Sync + 'static {
    fn addr(&self) -> SocketAddr;
    fn connections(&self) -> &Connections;
}
pub(super) use http1::{fuzz_chunked, fuzz_response};

/// Sends a request to `endpoint` over HTTP/1.1, on an idle connection when there is one.
/// `siblings` are the Microservice's other endpoints, whose idle connections may be closed to
/// make room under `maxConnections`.
pub async fn send_http1<D: Destination>(
    endpoint: &Arc<D>,
    siblings: &[Arc<D>],
    breaker: CircuitBreaker,
    head: RequestHead<'_>,
    mut body: OutgoingBody,
) -> Result<Response<UpstreamBody>, UpstreamError> {
    // An idle connection may have been closed by the endpoint a moment ago. A request that can be
    // sent twice finds out by trying, and is sent again on another connection; any other asks
    // the socket first.
    let replayable = matches!(body, Either::Left(_))
        && matches!(
            *head.method,
            Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
        );
    let idle_timeout = &endpoint.connections().idle_timeout;
    loop {
        let (mut connection, idle) = acquire_http1(endpoint, siblings, breaker, !replayable).await?;
        let reused = connection.reused;
        match connection.exchange(&head, &mut body).await {
            Ok(head) => {
                if reused {
                    idle_timeout.open_at(idle);
                }
                return Ok(UpstreamBody::http1(head, connection, endpoint));
            }
            Err(error) if reused && replayable && error.is_stale_connection() => {
                idle_timeout.closed_at(idle);
                continue;
            }
            Err(source) => {
                return Err(UpstreamError::Http1 {
                    addr: endpoint.addr(),
                    source,
                });
            }
        }
    }
}

/// An HTTP/1.1 connection to `endpoint` for one exchange, and how long it was idle: an idle
/// one, else a new one if `maxConnections` allows, else one freed while waiting (within
/// `maxPendingRequests`). `probe`: skip idle connections the endpoint has closed or may close
/// any moment (they are closed).
async fn acquire_http1<D: Destination>(
    endpoint: &Arc<D>,
    siblings: &[Arc<D>],
    breaker: CircuitBreaker,
    probe: bool,
) -> Result<(Box<http1::Connection>, Duration), UpstreamError> {
    let connections = endpoint.connections();
    let limits = &connections.limits;
    loop {
        while let Some((connection, idle)) = connections.take_idle() {
            if probe {
                if !connection.is_open() {
                    connections.idle_timeout.closed_at(idle);
                    continue;
                }
                if connections.idle_timeout.nearly_over(idle) {
                    continue;
                }
            }
            return Ok((connection, idle));
        }
        // Registered before the limit is checked, so that a slot freed in between is not missed.
        let freed = limits.freed.notified();
        tokio::pin!(freed);
        freed.as_mut().enable();
        if let Some(slot) = limits.open_slot(breaker.max_connections) {
            let stream = connect(endpoint.addr()).await?;
            return Ok((Box::new(http1::Connection::new(stream, slot)), Duration::ZERO));
        }
        let waiting = limits.pending.fetch_add(1, Ordering::AcqRel);
        let _waiting = Waiting(limits);
        if waiting >= breaker.max_pending_requests {
            return Err(UpstreamError::PendingOverflow { waiting });
        }
        // Every slot is taken: an idle connection elsewhere gives its slot up, first one to this
        // endpoint kept by another worker, else one to another endpoint.
        let _ = connections.close_one_idle()
            || siblings
                .iter()
                .any(|e| !Arc::ptr_eq(e, endpoint) && e.connections().close_one_idle());
        freed.await;
    }
}

/// Sends `request` to `endpoint` over its HTTP/2 connection, opened on first use.
pub async fn send_http2(
    endpoint: &impl Destination,
    breaker: CircuitBreaker,
    request: Request<OutgoingBody>,
) -> Result<Response<UpstreamBody>, UpstreamError> {
    let connections = endpoint.connections();
    let limits = &connections.limits;
    let per_worker = connections
        .http2
        .get_or_init(|| (0..workers::count()).map(|_| ArcSwapOption::empty()).collect());
    let open = |slot: &ArcSwapOption<http2::SendRequest<OutgoingBody>>| {
        slot.load()
            .as_ref()
            .filter(|sender| !sender.is_closed())
            .map(|sender| http2::SendRequest::clone(sender))
    };
    let own = per_worker.get(workers::current());
    let mut sender = loop {
        if let Some(sender) = own.and_then(open) {
            break sender;
        }
        let freed = limits.freed.notified();
        tokio::pin!(freed);
        freed.as_mut().enable();
        if let Some(slot) = limits.open_slot(breaker.max_connections) {
            let sender = connect_http2(endpoint.addr(), slot).await?;
            if let Some(own) = own {
                own.store(Some(Arc::new(sender.clone())));
            }
            break sender;
        }
        // At maxConnections: another worker's connection carries this request too.
        if let Some(sender) = per_worker.iter().find_map(open) {
            break sender;
        }
        let waiting = limits.pending.fetch_add(1, Ordering::AcqRel);
        let _waiting = Waiting(limits);
        if waiting >= breaker.max_pending_requests {
            return Err(UpstreamError::PendingOverflow { waiting });
        }
        freed.await;
    };
    match sender.send_request(request).await {
        Ok(response) => Ok(response.map(|body| UpstreamBody(Kind::Http2(body)))),
        Err(error) => Err(UpstreamError::Exchange(error)),
    }
}

async fn connect(addr: SocketAddr) -> Result<TcpStream, UpstreamError> {
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(source)) => return Err(UpstreamError::Connect { addr, source }),
        Err(_) => return Err(UpstreamError::ConnectTimeout { addr }),
    };
    // Requests are small and latency matters more than packet count.
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

async fn connect_http2(
    addr: SocketAddr,
    slot: ConnectionSlot,
) -> Result<http2::SendRequest<OutgoingBody>, UpstreamError> {
    let io = TokioIo::new(connect(addr).await?);
    let (sender, connection) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake(io)
        .await
        .map_err(|source| UpstreamError::Handshake { addr, source })?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%addr, %error, "upstream HTTP/2 connection ended with an error");
        }
        drop(slot);
    });
    Ok(sender)
}

/// A response body from an endpoint. An HTTP/1.1 connection goes back to its endpoint's idle
/// queue when the body has been read to its end; one dropped earlier is closed, since the rest of
/// the body would still be on it.
pub struct UpstreamBody(Kind);

enum Kind {
    Http1 {
        /// The response's headers, until the server writing the response takes them.
        headers: Option<WireHeaders>,
        /// `None` once the body has ended (or broken) and the connection is gone.
        connection: Option<Box<http1::Connection>>,
        framing: http1::Framing,
        keep_alive: bool,
        endpoint: Arc<dyn Destination>,
    },
    Http2(Incoming),
}

impl UpstreamBody {
    fn http1<D: Destination>(
        head: http1::Head,
        connection: Box<http1::Connection>,
        endpoint: &Arc<D>,
    ) -> Response<Self> {
        let mut body = Self(Kind::Http1 {
            headers: Some(head.headers),
            connection: Some(connection),
            framing: head.framing,
            keep_alive: head.keep_alive,
            endpoint: endpoint.clone() as Arc<dyn Destination>,
        });
        // An empty body (204, 304, HEAD, Content-Length: 0) has already ended.
        body.release_if_ended();
        let mut response = Response::new(body);
        *response.status_mut() = head.status;
        response
    }

    /// The headers of an HTTP/1.1 endpoint's response, which travel with its body (see
    /// [`WireHeaders`]); `None` for HTTP/2, whose headers are in the response's map.
    pub fn wire_headers(&self) -> Option<&WireHeaders> {
        match &self.0 {
            Kind::Http1 { headers, .. } => headers.as_ref(),
            Kind::Http2(_) => None,
        }
    }

    /// Takes the wire headers, to write them or to move them into the response's map.
    pub fn take_wire_headers(&mut self) -> Option<WireHeaders> {
        match &mut self.0 {
            Kind::Http1 { headers, .. } => headers.take(),
            Kind::Http2(_) => None,
        }
    }

    /// Gives the connection back once the body has been read to its end.
    fn release_if_ended(&mut self) {
        if let Kind::Http1 {
            connection,
            framing: http1::Framing::Length(0),
            keep_alive,
            endpoint,
            ..
        } = &mut self.0
            && let Some(connection) = connection.take()
            && *keep_alive
            && connection.is_clean()
        {
            endpoint.connections().put_idle(connection);
        }
    }
}

impl HttpBody for UpstreamBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        match &mut this.0 {
            Kind::Http2(body) => Pin::new(body).poll_frame(cx).map_err(io::Error::other),
            Kind::Http1 {
                connection, framing, ..
            } => {
                let Some(open) = connection.as_mut() else {
                    return Poll::Ready(None);
                };
                match std::task::ready!(http1::poll_body(open, framing, cx)) {
                    Ok(read) => {
                        let frame = http1::frame(read);
                        if frame.is_none() {
                            // The end, however the body was delimited: nothing more to read.
                            *framing = http1::Framing::Length(0);
                        }
                        this.release_if_ended();
                        Poll::Ready(frame.map(Ok))
                    }
                    // A broken body breaks its connection too.
                    Err(error) => {
                        *connection = None;
                        Poll::Ready(Some(Err(error)))
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Kind::Http2(body) => body.is_end_stream(),
            Kind::Http1 {
                connection, framing, ..
            } => connection.is_none() || *framing == http1::Framing::Length(0),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Http2(body) => body.size_hint(),
            Kind::Http1 { framing, .. } => http1::size_hint(framing),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_used_last_is_taken_first_and_the_oldest_is_closed_first() {
        let stack = IdleStack::default();
        let start = Instant::now();
        for (n, at) in [(1, 0), (2, 1), (3, 2)] {
            assert_eq!(stack.put(n, start + Duration::from_secs(at)), None);
        }
        assert_eq!(stack.take().map(|(_, c)| c), Some(3));
        assert_eq!(stack.take_oldest(), Some(1));
        assert_eq!(stack.take().map(|(_, c)| c), Some(2));
        assert_eq!(stack.take().map(|(_, c)| c), None);
        assert_eq!(stack.take_oldest(), None);
    }

    #[test]
    fn a_connection_idle_for_the_timeout_is_closed_when_another_comes_back() {
        let stack = IdleStack::default();
        let start = Instant::now();
        assert_eq!(stack.put("burst", start), None);
        assert_eq!(stack.put("hot", start), None);
        // The hot one is taken and put back again and again; the burst's one stays below it.
        for s in 1..IDLE_TIMEOUT.as_secs() {
            assert_eq!(stack.take().map(|(_, c)| c), Some("hot"));
            assert_eq!(stack.put("hot", start + Duration::from_secs(s)), None);
        }
        assert_eq!(stack.take().map(|(_, c)| c), Some("hot"));
        assert_eq!(stack.put("hot", start + IDLE_TIMEOUT), Some("burst"));
        assert_eq!(stack.take().map(|(_, c)| c), Some("hot"));
        assert_eq!(stack.take().map(|(_, c)| c), None);
    }

    #[test]
    fn a_sweep_takes_out_only_the_connections_idle_for_the_timeout() {
        let stack = IdleStack::default();
        let start = Instant::now();
        for (n, at) in [(1, 0), (2, 5), (3, 10)] {
            assert_eq!(stack.put(n, start + Duration::from_secs(at)), None);
        }
        assert!(
            stack
                .take_expired(start + IDLE_TIMEOUT - Duration::from_secs(1))
                .is_empty()
        );
        assert_eq!(
            stack.take_expired(start + IDLE_TIMEOUT + Duration::from_secs(5)),
            vec![1, 2]
        );
        assert_eq!(stack.take().map(|(_, c)| c), Some(3));
        assert_eq!(stack.take().map(|(_, c)| c), None);
    }

    #[test]
    fn the_idle_timeout_is_learned_from_closed_and_reused_connections() {
        let timeout = IdleTimeout::default();
        let ms = Duration::from_millis;
        assert!(
            !timeout.nearly_over(ms(49)) && timeout.nearly_over(UNPROVEN_IDLE),
            "unknown: only connections idle for a moment may be used"
        );
        timeout.open_at(ms(500));
        assert!(
            timeout.nearly_over(ms(100)),
            "carrying requests teaches nothing alone"
        );
        timeout.closed_at(ms(1_050));
        assert!(timeout.nearly_over(ms(900)) && !timeout.nearly_over(ms(800)));
        timeout.closed_at(ms(1_010));
        assert!(timeout.nearly_over(ms(808)), "the earliest close counts");
        // A timer that fired a little late does not move it.
        timeout.open_at(ms(1_030));
        assert!(timeout.nearly_over(ms(808)));
        // A restarted endpoint closed everything at once; the timeout it really has comes back.
        timeout.closed_at(ms(5));
        assert!(timeout.nearly_over(ms(4)));
        timeout.open_at(ms(950));
        assert!(!timeout.nearly_over(ms(700)) && timeout.nearly_over(ms(800)));
    }

    #[test]
    fn a_full_stack_closes_its_oldest() {
        let stack = IdleStack::default();
        let now = Instant::now();
        for n in 0..IDLE_PER_ENDPOINT {
            assert_eq!(stack.put(n, now), None);
        }
        assert_eq!(stack.put(IDLE_PER_ENDPOINT, now), Some(0));
        assert_eq!(stack.take().map(|(_, c)| c), Some(IDLE_PER_ENDPOINT));
        assert_eq!(stack.take_oldest(), Some(1));
    }
}
