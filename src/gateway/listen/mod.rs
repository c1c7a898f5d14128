//! The listeners: one TCP socket per port the route table names, serving HTTP/1.1 and h2c, or
//! on an HTTPS port TLS (see [`tls`]) and then HTTP/1.1 or HTTP/2 as ALPN settles; each
//! request handed to the [`Proxy`]. HTTP/1.1 is served by [`http1`]; hyper's server takes the
//! connections it hands over.

mod cancellations;
pub(super) mod http1;
mod idle;

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use hyper::service::service_fn;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpSocket, TcpStream},
    runtime::Handle,
    sync::{oneshot, watch},
    task::JoinSet,
};
use tokio_rustls::{LazyConfigAcceptor, server::TlsStream};

use self::{
    cancellations::Cancellations,
    idle::{IdleConnections, SessionSocket},
};
use super::{
    GatewayMetrics,
    http::client::Client,
    request::{Proxy, take_wire_headers},
    tls::{self, TlsPort},
};

/// Connections waiting to be accepted, per socket.
const BACKLOG: u32 = 1024;

/// The longest a listener stops accepting when no file descriptor is left: it resumes sooner
/// once one of its connections closes.
const ACCEPT_PAUSE: Duration = Duration::from_millis(500);

/// How long clients may keep the gateway waiting.
#[derive(Clone, Copy, Debug)]
pub struct ClientTimeouts {
    /// For a request's head, counted from when the connection is ready for it: so also how
    /// long a kept-alive HTTP/1.1 connection may sit idle (slowloris, idle keep-alive).
    pub header_read: Duration,
    /// For the client to accept a batch of its response (a client that does not read).
    pub write: Duration,
}

impl Default for ClientTimeouts {
    fn default() -> Self {
        Self {
            header_read: http1::HEADER_READ_TIMEOUT,
            write: http1::WRITE_TIMEOUT,
        }
    }
}

/// What a client over its port's connection limit reads before the gateway closes.
const OVER_THE_LIMIT: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\nx-microgate-reason: connection-limit\r\ncontent-length: 57\r\nconnection: close\r\n\r\nthe listener holds its most connections (maxConnections)\n";

/// How long a refused connection stays, half-closed, for its client to read the refusal: a
/// socket closed with the client's request unread is reset, and the reset can overtake the 503.
const REFUSAL_LINGER: Duration = Duration::from_millis(250);

/// One open client connection, counted against its port's limit until dropped.
struct ConnectionSlot(Arc<AtomicUsize>);

impl ConnectionSlot {
    /// A slot if fewer than `limit` connections of the port are open.
    fn take(open: &Arc<AtomicUsize>, limit: usize) -> Option<Self> {
        open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < limit).then_some(n + 1)
        })
        .ok()
        .map(|_| Self(open.clone()))
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Turns away a connection over its port's limit: on plain HTTP with a 503 that says why (in
/// one non-blocking write: a refusal must cost next to nothing), on TLS by closing (a
/// handshake is what the limit saves).
async fn refuse(mut stream: TcpStream, tls: bool) {
    if tls {
        return;
    }
    let _ = stream.try_write(OVER_THE_LIMIT);
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 1024];
    let _ = tokio::time::timeout(REFUSAL_LINGER, async {
        while let Ok(1..) = stream.read(&mut sink).await {}
    })
    .await;
}

/// The listeners running now, by local address (an address and a port).
pub struct Listeners {
    proxy: Arc<Proxy>,
    /// The workers' runtimes: each accepts on its own socket per port (see `super::workers`).
    workers: Vec<Handle>,
    running: BTreeMap<SocketAddr, JoinSet<()>>,
    timeouts: ClientTimeouts,
    /// Why an address could not be bound, until it is.
    failed: BTreeMap<SocketAddr, String>,
    /// Turns true when the gateway stops: every listener drains.
    draining: watch::Sender<bool>,
    metrics: GatewayMetrics,
}

impl Listeners {
    pub fn new(
        proxy: Arc<Proxy>,
        workers: Vec<Handle>,
        timeouts: ClientTimeouts,
        metrics: GatewayMetrics,
    ) -> Self {
        Self {
            proxy,
            metrics,
            workers,
            running: BTreeMap::new(),
            timeouts,
            failed: BTreeMap::new(),
            draining: watch::Sender::new(false),
        }
    }

    /// Listens on exactly `addresses`: new ones are bound, gone ones closed.
    pub async fn set_addresses(&mut self, addresses: impl Iterator<Item = SocketAddr>) {
        let wanted: Vec<SocketAddr> = addresses.collect();
        self.running.retain(|addr, _| wanted.contains(addr));
        self.failed.clear();
        for addr in wanted {
            if self.running.contains_key(&addr) {
                continue;
            }
            // Several workers share the port; one alone binds it as its only user.
            let shared = self.workers.len() > 1;
            let mut tasks = JoinSet::new();
            let mut bound = Ok(());
            // The port's open connections, over all workers.
            let open = Arc::new(AtomicUsize::new(0));
            let timeouts = self.timeouts;
            for worker in &self.workers {
                // The socket is made on the worker, so that its own runtime drives it.
                let (told, result) = oneshot::channel();
                let (proxy, draining, open) = (self.proxy.clone(), self.draining.subscribe(), open.clone());
                let metrics = self.metrics.clone();
                tasks.spawn_on(
                    async move {
                        match bind(addr, shared) {
                            Ok(listener) => {
                                let _ = told.send(Ok(()));
                                let limits = AcceptLimits {
                                    open,
                                    timeouts,
                                    metrics,
                                };
                                accept(listener, addr, proxy, draining, limits).await;
                            }
                            Err(error) => {
                                let _ = told.send(Err(error));
                            }
                        }
                    },
                    worker,
                );
                bound = result
                    .await
                    .unwrap_or_else(|_| Err(std::io::Error::other("the worker stopped")));
                if bound.is_err() {
                    break;
                }
            }
            match bound {
                Ok(()) => {
                    tracing::info!(%addr, workers = self.workers.len(), "listening");
                    self.running.insert(addr, tasks);
                }
                // The next configuration change tries again.
                Err(error) => {
                    tracing::error!(%addr, %error, "cannot listen");
                    self.failed
                        .insert(addr, format!("cannot listen on {addr}: {error}"));
                }
            }
        }
    }
}

impl Listeners {
    /// Stops accepting on every port and waits, up to `deadline`, for the requests in flight.
    pub async fn drain(self, deadline: Duration) {
        self.draining.send_replace(true);
        let mut running = self.running;
        let all_done = async {
            for task in running.values_mut() {
                while task.join_next().await.is_some() {}
            }
        };
        if tokio::time::timeout(deadline, all_done).await.is_err() {
            tracing::warn!(
                ?deadline,
                "requests still in flight at the drain deadline were cut"
            );
        }
    }

    /// Why `addr` is not being served, if it is not.
    pub fn failure(&self, addr: SocketAddr) -> Option<&str> {
        self.failed.get(&addr).map(String::as_str)
    }
}

/// Completes the TLS handshake of a new connection on an HTTPS port: the listener whose
/// hostnames take the ClientHello's server name serves it; none, and the handshake is refused.
async fn handshake(stream: TcpStream, port: &TlsPort) -> Option<TlsSession> {
    let handshake = async {
        let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), SessionSocket::new(stream))
            .await
            .map_err(|error| tracing::debug!(%error, "no TLS ClientHello"))
            .ok()?;
        let server_name = start.client_hello().server_name().map(str::to_owned);
        let Some(listener) = port.select(server_name.as_deref()) else {
            tracing::debug!(
                ?server_name,
                "TLS handshake refused: no listener serves this name"
            );
            // Answered with an alert rather than a silent close.
            let _ = start.into_stream(tls::refusing_config()).await;
            return None;
        };
        let id = listener.id.clone();
        match start.into_stream(listener.config.clone()).await {
            Ok(stream) => Some(TlsSession { stream, listener: id }),
            Err(error) => {
                tracing::debug!(%error, ?server_name, "TLS handshake failed");
                None
            }
        }
    };
    tokio::time::timeout(tls::HANDSHAKE_TIMEOUT, handshake)
        .await
        .unwrap_or_else(|_| {
            tracing::debug!("TLS handshake timed out");
            None
        })
}

/// hyper's servers for a listener's connections, configured alike.
struct Builders {
    /// Tells HTTP/2 (the preface) from HTTP/1.1 by the first bytes.
    detecting: auto::Builder<TokioExecutor>,
    /// For connections that settled on h2 by ALPN: whatever they send is HTTP/2, and bytes that
    /// are not its preface are an HTTP/2 error, not an HTTP/1.1 request.
    http2: auto::Builder<TokioExecutor>,
}

/// Serves HTTP on one connection, plain or decrypted: the gateway's own HTTP/1.1 first, hyper
/// for what it hands over (HTTP/2, chunked or large bodies, `Expect`). A TLS connection that
/// settled on `h2` by ALPN goes to hyper at once. Returns the connection if it `parks` and went
/// idle (see [`http1::Served::Idle`]).
async fn serve_connection<S>(
    stream: S,
    client: Arc<Client>,
    proxy: Arc<Proxy>,
    builders: Arc<Builders>,
    mut draining: watch::Receiver<bool>,
    timeouts: ClientTimeouts,
    parks: bool,
) -> Option<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static + NegotiatedProtocol,
{
    let (stream, h2) = if stream.is_h2() {
        (http1::Rewind::fresh(stream), true)
    } else {
        match http1::serve(stream, &client, &proxy, &mut draining, timeouts, parks).await {
            http1::Served::Closed => return None,
            http1::Served::Idle(stream) => return Some(stream),
            http1::Served::HandOver(rewind) => (rewind, false),
        }
    };
    // Boxed: hyper's connection state is large, and only connections it serves should carry it
    // (an async function's state is as large as its largest await).
    Box::pin(serve_with_hyper(stream, h2, client, proxy, builders, draining)).await;
    None
}

/// Serves the rest of a connection with hyper's server: HTTP/2 (`h2`: settled by ALPN), or what
/// the gateway's own HTTP/1.1 handed over.
async fn serve_with_hyper<S>(
    stream: http1::Rewind<S>,
    h2: bool,
    client: Arc<Client>,
    proxy: Arc<Proxy>,
    builders: Arc<Builders>,
    mut draining: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let builder = if h2 { &builders.http2 } else { &builders.detecting };
    let peer = client.addr;
    let cancellations = Arc::new(Cancellations::default());
    let tracked = cancellations.clone();
    let service = service_fn(move |request| {
        let (proxy, client, request_tracked) = (proxy.clone(), client.clone(), tracked.track());
        async move {
            let mut response = proxy.handle(&client, request).await;
            request_tracked.answered();
            // hyper's server writes only the response's map.
            if let Some(wire) = take_wire_headers(response.body_mut()) {
                wire.append_to(response.headers_mut());
            }
            Ok::<_, Infallible>(response)
        }
    });
    // The same for either kind of connection hyper serves (their types differ).
    macro_rules! serve {
        ($connection:expr) => {{
            let connection = $connection;
            tokio::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => result,
                _ = draining.changed() => {
                    // Finish what is in flight, refuse more (HTTP/1.1: close after; h2: GOAWAY).
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
                () = cancellations.too_many() => {
                    let (requests, cancelled) = cancellations.counts();
                    tracing::warn!(%peer, requests, cancelled, "closing a connection whose client cancels most of its requests");
                    return;
                }
            }
        }};
    }
    let io = TokioIo::new(stream);
    let result = if h2 {
        // HTTP/2 only: bytes that are not its preface are an HTTP/2 error (hyper's upgradeable
        // connection would take them for HTTP/1.1).
        serve!(builder.serve_connection(io, service))
    } else {
        // A WebSocket request may take its connection over (see `request::tunnel`).
        serve!(builder.serve_connection_with_upgrades(io, service))
    };
    if let Err(error) = result {
        tracing::debug!(%error, "client connection ended with an error");
    }
}

/// Whether a connection's protocol was settled as HTTP/2 before its first byte (ALPN).
trait NegotiatedProtocol {
    fn is_h2(&self) -> bool;
}

impl NegotiatedProtocol for TcpStream {
    fn is_h2(&self) -> bool {
        false
    }
}

impl NegotiatedProtocol for TlsStream<SessionSocket> {
    fn is_h2(&self) -> bool {
        self.get_ref().1.alpn_protocol() == Some(b"h2")
    }
}

/// A listening socket on `addr`, in the current runtime. `shared`: other sockets of this process
/// listen on the same port (`SO_REUSEPORT`), and the kernel spreads connections over them.
fn bind(addr: SocketAddr, shared: bool) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // As std and tokio do when they bind: a restarted gateway need not wait out TIME_WAIT.
    socket.set_reuseaddr(true)?;
    if shared {
        socket.set_reuseport(true)?;
    }
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Limits of the HTTP/2 server every listener runs, so that no client can make one connection
/// cost unbounded memory or CPU (Rapid Reset, MadeYouReset, CONTINUATION floods, HPACK bombs)
/// and a peer that went away is noticed. SETTINGS and PING floods need no knob: h2 answers one
/// at a time and stops reading while the answer cannot be written.
fn http2_settings<E>(http2: &mut auto::Http2Builder<'_, E>) {
    http2
        .timer(TokioTimer::new())
        // A client's parallelism, as most servers allow (hyper's default is 200).
        .max_concurrent_streams(100)
        // Decoded header fields per request, as much as an HTTP/1.1 request head may carry.
        .max_header_list_size(http1::MAX_HEAD as u32)
        // Streams the client resets before they are served (Rapid Reset): past 20, GOAWAY.
        .max_pending_accept_reset_streams(20)
        // Streams the server had to reset for the client's errors (MadeYouReset): past 1024,
        // GOAWAY (h2 itself also goes away past 50 such resets within a second).
        .max_local_error_reset_streams(1024)
        // Response bytes buffered per stream for a client that does not read.
        .max_send_buf_size(400 * 1024)
        // A PING after 30 s without a frame; no answer within 10 s closes the connection.
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10));
}

/// What bounds a listener's connections.
struct AcceptLimits {
    /// The port's open connections over all workers: past the port's limit a new one is refused
    /// at once.
    open: Arc<AtomicUsize>,
    timeouts: ClientTimeouts,
    /// Counts the pauses for want of file descriptors.
    metrics: GatewayMetrics,
}

/// Whether accepting failed for want of a file descriptor (the process's or the system's), or of
/// the memory a socket needs: a condition that lasts until connections close, so the listener
/// pauses rather than trying again at once.
fn out_of_descriptors(error: &std::io::Error) -> bool {
    const ENFILE: i32 = 23;
    const EMFILE: i32 = 24;
    const ENOBUFS: i32 = 105;
    const ENOMEM: i32 = 12;
    matches!(error.raw_os_error(), Some(ENFILE | EMFILE | ENOBUFS | ENOMEM))
}

/// A connection that went idle, handed back by its task to be parked: its socket, and what its
/// next task needs.
type Idle = (TcpStream, Parked);

/// A TLS connection after its handshake: the encrypted stream, and the HTTPS listener its
/// server name picked.
struct TlsSession {
    stream: TlsStream<SessionSocket>,
    listener: Arc<str>,
}

/// What a parked connection keeps for its next task: its client's address, its slot and, over
/// TLS, its session (without its socket, which is parked). The session is boxed so that a plain
/// connection's entry stays small.
struct Parked {
    peer: SocketAddr,
    slot: ConnectionSlot,
    session: Option<Box<TlsSession>>,
}

/// What one listener's connections on one worker share: each connection's task has a copy.
#[derive(Clone)]
struct Listener {
    local: SocketAddr,
    proxy: Arc<Proxy>,
    builders: Arc<Builders>,
    draining: watch::Receiver<bool>,
    timeouts: ClientTimeouts,
    /// Whether idle connections are handed back to be parked: not if the listener has no epoll
    /// set for them.
    parks: bool,
}

impl Listener {
    /// Serves a plain connection in a task of its own; an idle one comes back from the task.
    fn serve_plain(
        &self,
        connections: &mut JoinSet<Option<Idle>>,
        stream: TcpStream,
        peer: SocketAddr,
        slot: ConnectionSlot,
    ) {
        connections.spawn(self.clone().plain(stream, peer, slot));
    }

    /// Serves a TLS connection in a task of its own, from its handshake on; an idle one comes
    /// back from the task.
    fn serve_tls(
        &self,
        connections: &mut JoinSet<Option<Idle>>,
        stream: TcpStream,
        peer: SocketAddr,
        slot: ConnectionSlot,
        port: Arc<TlsPort>,
    ) {
        let this = self.clone();
        connections.spawn(async move {
            let session = handshake(stream, &port).await?;
            this.tls(session, peer, slot).await
        });
    }

    /// Serves a connection woken from parking in a task of its own, its TLS session (if it has
    /// one) with its socket again.
    fn resume(&self, connections: &mut JoinSet<Option<Idle>>, stream: TcpStream, parked: Parked) {
        let Parked { peer, slot, session } = parked;
        match session {
            None => self.serve_plain(connections, stream, peer, slot),
            Some(mut session) => {
                session.stream.get_mut().0.put(stream);
                connections.spawn(self.clone().tls(*session, peer, slot));
            }
        }
    }

    /// Serves a plain connection until it closes, or goes idle and is handed back to be parked.
    async fn plain(self, stream: TcpStream, peer: SocketAddr, slot: ConnectionSlot) -> Option<Idle> {
        let client = Arc::new(Client::new(self.local, peer));
        let stream = self.serve(stream, client).await?;
        Some((
            stream,
            Parked {
                peer,
                slot,
                session: None,
            },
        ))
    }

    /// [`Listener::plain`] for a TLS connection after its handshake.
    async fn tls(self, session: TlsSession, peer: SocketAddr, slot: ConnectionSlot) -> Option<Idle> {
        let TlsSession { stream, listener } = session;
        let client = Arc::new(Client::over_tls(self.local, peer, listener.clone()));
        let mut stream = self.serve(stream, client).await?;
        // The socket leaves the session to be parked (it is always there after serving).
        let socket = stream.get_mut().0.take()?;
        let session = Some(Box::new(TlsSession { stream, listener }));
        Some((socket, Parked { peer, slot, session }))
    }

    async fn serve<S>(self, stream: S, client: Arc<Client>) -> Option<S>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static + NegotiatedProtocol,
    {
        let Self {
            proxy,
            builders,
            draining,
            timeouts,
            parks,
            ..
        } = self;
        serve_connection(stream, client, proxy, builders, draining, timeouts, parks).await
    }
}

/// Parks a connection its task handed back; one that cannot be parked is closed.
fn park(idle: &mut Option<IdleConnections<Parked>>, finished: Option<Idle>) {
    let (Some(idle), Some((stream, parked))) = (idle.as_mut(), finished) else {
        return;
    };
    let peer = parked.peer;
    if let Err(error) = idle.park(stream, parked) {
        tracing::debug!(%peer, %error, "an idle connection could not be parked: closed");
    }
}

/// The next parked connection that became readable (never, without parking).
async fn woken(idle: &mut Option<IdleConnections<Parked>>) -> (TcpStream, Parked) {
    match idle {
        Some(idle) => std::future::poll_fn(|cx| idle.poll_woken(cx)).await,
        None => std::future::pending().await,
    }
}

/// Accepts connections on `listener` until `draining` turns true; then stops accepting, asks every
/// open connection to finish its in-flight requests and close, and returns when they have.
/// Connections idle for a while wait in `idle` between requests (see [`idle`]).
async fn accept(
    listener: TcpListener,
    local: SocketAddr,
    proxy: Arc<Proxy>,
    mut draining: watch::Receiver<bool>,
    limits: AcceptLimits,
) {
    let AcceptLimits {
        open,
        timeouts,
        metrics,
    } = limits;
    let mut connections: JoinSet<Option<Idle>> = JoinSet::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.header_read)
        .max_buf_size(64 * 1024);
    http2_settings(&mut builder.http2());
    let builders = Arc::new(Builders {
        http2: builder.clone().http2_only(),
        detecting: builder,
    });
    // A parked connection waits out what is left of its keep-alive after the wait in its task.
    let parked_for = timeouts.header_read.saturating_sub(idle::PARK_AFTER);
    let mut idle = match IdleConnections::new(parked_for, metrics.parked_connections()) {
        Ok(idle) => Some(idle),
        Err(error) => {
            tracing::warn!(%local, %error, "idle connections stay in their tasks: no epoll set for them");
            None
        }
    };
    let this = Listener {
        local,
        proxy,
        builders,
        draining: draining.clone(),
        timeouts,
        parks: idle.is_some(),
    };
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            Some(finished) = connections.join_next(), if !connections.is_empty() => {
                park(&mut idle, finished.ok().flatten());
                continue;
            }
            (stream, parked) = woken(&mut idle) => {
                this.resume(&mut connections, stream, parked);
                continue;
            }
            _ = draining.changed() => break,
        };
        let (stream, client) = match accepted {
            Ok(accepted) => accepted,
            // The connection waits in the kernel's queue meanwhile; retrying at once would spin,
            // since the socket stays readable.
            Err(error) if out_of_descriptors(&error) => {
                metrics.accept_paused();
                tracing::warn!(%local, %error, pause = ?ACCEPT_PAUSE, open = connections.len(),
                    parked = idle.as_ref().map_or(0, IdleConnections::len),
                    "out of file descriptors: accepting paused until a connection closes");
                tokio::select! {
                    Some(finished) = connections.join_next(), if !connections.is_empty() => {
                        park(&mut idle, finished.ok().flatten());
                    }
                    () = tokio::time::sleep(ACCEPT_PAUSE) => {}
                    _ = draining.changed() => break,
                }
                continue;
            }
            Err(error) => {
                tracing::warn!(%local, %error, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let tls_port = this.proxy.tls_port(local);
        let Some(slot) = ConnectionSlot::take(&open, this.proxy.max_connections(local)) else {
            tracing::debug!(%client, %local, "connection refused: the listener holds its most connections");
            connections.spawn(async move {
                refuse(stream, tls_port.is_some()).await;
                None
            });
            continue;
        };
        // Two kinds of task, so that a plain connection's is not sized for a TLS session.
        match tls_port {
            None => this.serve_plain(&mut connections, stream, client, slot),
            Some(port) => this.serve_tls(&mut connections, stream, client, slot, port),
        }
    }
    drop(listener);
    // Idle connections close now; the others once their requests are answered.
    drop(idle);
    while connections.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_is_one_whole_http_answer() {
        let mut headers = [httparse::EMPTY_HEADER; 8];
        let mut response = httparse::Response::new(&mut headers);
        let Ok(httparse::Status::Complete(head)) = response.parse(OVER_THE_LIMIT) else {
            panic!("a complete response head")
        };
        assert_eq!(response.code, Some(503));
        let header = |name: &str| {
            response
                .headers
                .iter()
                .find(|h| h.name == name)
                .map(|h| String::from_utf8_lossy(h.value).into_owned())
        };
        assert_eq!(header("x-microgate-reason").as_deref(), Some("connection-limit"));
        assert_eq!(header("connection").as_deref(), Some("close"));
        assert_eq!(
            header("content-length"),
            Some((OVER_THE_LIMIT.len() - head).to_string())
        );
    }

    #[test]
    fn slots_stop_at_the_limit_and_come_back_when_dropped() {
        let open = Arc::new(AtomicUsize::new(0));
        let first = ConnectionSlot::take(&open, 2);
        let second = ConnectionSlot::take(&open, 2);
        assert!(first.is_some() && second.is_some());
        assert!(ConnectionSlot::take(&open, 2).is_none());
        drop(first);
        assert!(ConnectionSlot::take(&open, 2).is_some());
        assert_eq!(open.load(Ordering::Acquire), 1);
    }
}
