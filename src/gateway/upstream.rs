//! Connections to the endpoints, and the Microservice's circuit-breaker limits on them.
//!
//! HTTP/1.1 connections are kept alive between requests in a lock-free idle queue per endpoint: a
//! request takes one, and its response body puts it back when the body ends. An HTTP2 or GRPC
//! Microservice gets one multiplexed connection per endpoint. New connections open only while the
//! Microservice has fewer than `circuitBreaker.maxConnections`; beyond that, up to
//! `maxPendingRequests` requests wait for one to be freed, and the rest are refused at once.

use std::{
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use crossbeam_queue::ArrayQueue;
use http::{Request, Response};
use hyper::{
    body::{Body as HttpBody, Frame, Incoming, SizeHint},
    client::conn::{http1, http2},
};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::{net::TcpStream, sync::Notify};

use super::{balance::EndpointState, body::OutgoingBody};

/// How long opening a connection to an endpoint may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Idle HTTP/1.1 connections kept per endpoint; one freed beyond that is closed.
const IDLE_PER_ENDPOINT: usize = 256;

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
    /// Made on the first connection: most endpoints in a registry never get one.
    idle: OnceLock<ArrayQueue<http1::SendRequest<OutgoingBody>>>,
    http2: ArcSwapOption<http2::SendRequest<OutgoingBody>>,
}

impl Connections {
    pub fn new(limits: Arc<Limits>) -> Self {
        Self {
            limits,
            idle: OnceLock::new(),
            http2: ArcSwapOption::empty(),
        }
    }

    fn take_idle(&self) -> Option<http1::SendRequest<OutgoingBody>> {
        self.idle.get()?.pop()
    }

    fn put_idle(&self, sender: http1::SendRequest<OutgoingBody>) {
        let idle = self.idle.get_or_init(|| ArrayQueue::new(IDLE_PER_ENDPOINT));
        // A full queue drops (closes) the connection.
        let _ = idle.push(sender);
        self.limits.notify_if_waited_for();
    }

    /// Closes one idle connection, to make room under `maxConnections` for another endpoint.
    fn close_one_idle(&self) -> bool {
        self.take_idle().is_some()
    }
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
    /// The request was (at least partly) sent, and the exchange failed.
    #[error("{0}")]
    Exchange(#[source] hyper::Error),
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

/// Sends `request` to `endpoint` over HTTP/1.1, on an idle connection when there is one.
/// `siblings` are the Microservice's other endpoints, whose idle connections may be closed to
/// make room under `maxConnections`.
pub async fn send_http1(
    endpoint: &Arc<EndpointState>,
    siblings: &[Arc<EndpointState>],
    breaker: CircuitBreaker,
    mut request: Request<OutgoingBody>,
) -> Result<Response<UpstreamBody>, UpstreamError> {
    let connections = &endpoint.connections;
    let limits = &connections.limits;
    loop {
        while let Some(mut sender) = connections.take_idle() {
            // A connection that just delivered a response is ready a moment later; a closed one
            // fails here and is dropped.
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(request).await {
                Ok(response) => return Ok(UpstreamBody::wrap(response, sender, endpoint)),
                // Never written (the connection closed under it): safe to send on another.
                Err(mut error) => match error.take_message() {
                    Some(unsent) => request = unsent,
                    None => return Err(UpstreamError::Exchange(error.into_error())),
                },
            }
        }
        // Registered before the limit is checked, so that a slot freed in between is not missed.
        let freed = limits.freed.notified();
        tokio::pin!(freed);
        freed.as_mut().enable();
        if let Some(slot) = limits.open_slot(breaker.max_connections) {
            let mut sender = connect_http1(endpoint.addr, slot).await?;
            return match sender.try_send_request(request).await {
                Ok(response) => Ok(UpstreamBody::wrap(response, sender, endpoint)),
                Err(error) => Err(UpstreamError::Exchange(error.into_error())),
            };
        }
        let waiting = limits.pending.fetch_add(1, Ordering::AcqRel);
        let _waiting = Waiting(limits);
        if waiting >= breaker.max_pending_requests {
            return Err(UpstreamError::PendingOverflow { waiting });
        }
        // Every slot is taken: an idle connection elsewhere gives its slot up.
        let _ = siblings
            .iter()
            .any(|e| !Arc::ptr_eq(e, endpoint) && e.connections.close_one_idle());
        freed.await;
    }
}

/// Sends `request` to `endpoint` over its HTTP/2 connection, opened on first use.
pub async fn send_http2(
    endpoint: &EndpointState,
    breaker: CircuitBreaker,
    request: Request<OutgoingBody>,
) -> Result<Response<UpstreamBody>, UpstreamError> {
    let connections = &endpoint.connections;
    let limits = &connections.limits;
    let mut sender = loop {
        if let Some(shared) = connections.http2.load().as_ref()
            && !shared.is_closed()
        {
            break http2::SendRequest::clone(shared);
        }
        let freed = limits.freed.notified();
        tokio::pin!(freed);
        freed.as_mut().enable();
        if let Some(slot) = limits.open_slot(breaker.max_connections) {
            let sender = connect_http2(endpoint.addr, slot).await?;
            connections.http2.store(Some(Arc::new(sender.clone())));
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
        Ok(response) => Ok(response.map(|body| UpstreamBody { body, reuse: None })),
        Err(error) => Err(UpstreamError::Exchange(error)),
    }
}

async fn connect(addr: SocketAddr) -> Result<TokioIo<TcpStream>, UpstreamError> {
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(source)) => return Err(UpstreamError::Connect { addr, source }),
        Err(_) => return Err(UpstreamError::ConnectTimeout { addr }),
    };
    // Requests are small and latency matters more than packet count.
    let _ = stream.set_nodelay(true);
    Ok(TokioIo::new(stream))
}

async fn connect_http1(
    addr: SocketAddr,
    slot: ConnectionSlot,
) -> Result<http1::SendRequest<OutgoingBody>, UpstreamError> {
    let io = connect(addr).await?;
    // An HTTP/1.1 handshake exchanges nothing: it cannot fail but for a bug.
    let (sender, connection) = http1::handshake(io)
        .await
        .map_err(|source| UpstreamError::Handshake { addr, source })?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%addr, %error, "upstream connection ended with an error");
        }
        drop(slot);
    });
    Ok(sender)
}

async fn connect_http2(
    addr: SocketAddr,
    slot: ConnectionSlot,
) -> Result<http2::SendRequest<OutgoingBody>, UpstreamError> {
    let io = connect(addr).await?;
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
pub struct UpstreamBody {
    body: Incoming,
    reuse: Option<(http1::SendRequest<OutgoingBody>, Arc<EndpointState>)>,
}

impl UpstreamBody {
    fn wrap(
        response: Response<Incoming>,
        sender: http1::SendRequest<OutgoingBody>,
        endpoint: &Arc<EndpointState>,
    ) -> Response<Self> {
        response.map(|body| {
            let mut body = Self {
                body,
                reuse: Some((sender, endpoint.clone())),
            };
            // An empty body (204, 304, HEAD, Content-Length: 0) has already ended.
            body.release_if_ended();
            body
        })
    }

    fn release_if_ended(&mut self) {
        if self.body.is_end_stream()
            && let Some((sender, endpoint)) = self.reuse.take()
        {
            endpoint.connections.put_idle(sender);
        }
    }
}

impl HttpBody for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(frame) = &polled {
            match frame {
                Some(Ok(_)) => self.release_if_ended(),
                // Read to the end: the connection is free.
                None => {
                    if let Some((sender, endpoint)) = self.reuse.take() {
                        endpoint.connections.put_idle(sender);
                    }
                }
                // A broken body breaks its connection too.
                Some(Err(_)) => self.reuse = None,
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        self.release_if_ended();
    }
}
