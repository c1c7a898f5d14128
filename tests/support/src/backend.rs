//! A real HTTP server standing in for one container port of a Pod.
//!
//! By default it answers every request `200` with the Pod's name as the body (and in the
//! `x-pod-name` header), so a client can tell which instance served it; `?delay-ms=N` answers N
//! ms late. A test scripts failures
//! through [`Backend`]: a fixed status, an added delay, failing the next K requests, closing
//! the connection in the middle of a response, answering in chunks, or closing keep-alive
//! connections left idle. Stopping it closes the listener and every open
//! connection, so the address refuses connections as a dead Pod's would; terminating it is what a
//! server does on SIGTERM: it stops accepting, finishes the requests in flight, closes its idle
//! keep-alive connections, and exits.
//!
//! For the fault scenarios it also plays worse deaths: [`RunningBackend::kill`] makes the
//! listener and every connection vanish at once with a reset (a container killed with SIGKILL),
//! [`Backend::reset_after_reading`] reads a request and then resets its connection without an
//! answer, and [`Backend::stop_accepting`] turns the address into a black hole that completes no
//! handshake. It remembers each request's [`REQUEST_ID_HEADER`] and how many times it executed
//! it, and counts the requests whose connection closed before their answer was ready
//! ([`Backend::cancelled`]).

use std::{
    collections::HashMap,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::{Request, Response, StatusCode, body::Frame, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpSocket, TcpStream},
    sync::{Notify, watch},
    task::{JoinError, JoinSet},
};

/// The header that carries the serving Pod's name in every response.
pub const POD_NAME_HEADER: &str = "x-pod-name";
/// The header that says which HTTP version the request arrived in (`HTTP/1.1`, `HTTP/2.0`).
pub const HTTP_VERSION_HEADER: &str = "x-http-version";
/// The header that says how many bytes of request body the backend received.
pub const BODY_BYTES_HEADER: &str = "x-body-bytes";
/// Response header: the authority of the request's URI (HTTP/2's `:authority`), if it had one.
pub const SEEN_AUTHORITY_HEADER: &str = "x-seen-authority";
/// Response header: the request's `Host` header, if it had one.
pub const SEEN_HOST_HEADER: &str = "x-seen-host";
/// Response header: the request's `X-Forwarded-Proto` header, if it had one.
pub const SEEN_FORWARDED_PROTO_HEADER: &str = "x-seen-forwarded-proto";
/// Response header: the request's path and query, as the backend received them.
pub const SEEN_PATH_HEADER: &str = "x-seen-path";
/// Response header: the request's `X-Forwarded-For` lines, joined with `, `, if it had any.
pub const SEEN_FORWARDED_FOR_HEADER: &str = "x-seen-forwarded-for";
/// Request headers whose names start with this come back with `x-seen-` before their names
/// (`x-identity-user` as `x-seen-x-identity-user`), so that a client can check what the gateway
/// passed on; so do `x-microgate-client` and the W3C trace headers (`traceparent`, `tracestate`).
pub const ECHOED_HEADER_PREFIX: &str = "x-identity-";
/// Request header: the client's id for the request; the backend counts how many times it
/// executed each id (see [`Backend::executions`]).
pub const REQUEST_ID_HEADER: &str = "x-request-id";

type Body = BoxBody<Bytes, std::io::Error>;

/// A handle to a running backend: script its behaviour, read its counters. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Backend {
    state: Arc<State>,
}

#[derive(Debug)]
struct State {
    pod: String,
    addr: SocketAddr,
    status: AtomicU16,
    delay_ms: AtomicU64,
    fail_next: AtomicU32,
    fail_status: AtomicU16,
    /// `Retry-After` seconds sent with the scripted failures (0: none).
    fail_retry_after: AtomicU64,
    close_mid_response: AtomicBool,
    /// Answer with a chunked body (no Content-Length).
    chunked: AtomicBool,
    /// Bytes of padding after the Pod's name in each body.
    padding: AtomicU64,
    /// Close a keep-alive connection idle this long (0: never), without saying so beforehand.
    idle_timeout_ms: AtomicU64,
    requests: AtomicU64,
    /// Connections accepted so far, and how many were open at once at most.
    connections: AtomicU64,
    open: AtomicU64,
    peak_open: AtomicU64,
    /// Read each request, then reset its connection without answering.
    reset_after_reading: AtomicBool,
    /// Killed: every connection closes with a reset as it goes.
    killed: AtomicBool,
    /// Requests whose handler is running now.
    in_flight: AtomicU64,
    /// Requests whose connection went away before their answer was ready.
    cancelled: AtomicU64,
    /// How many times each request id was executed.
    executions: Mutex<HashMap<String, u32>>,
    /// Asks the accept loop to stop completing handshakes; `dark` once it has.
    go_dark: Notify,
    dark: AtomicBool,
}

impl Backend {
    /// The address the backend listens on (pod IP and container port).
    pub fn addr(&self) -> SocketAddr {
        self.state.addr
    }

    /// The Pod this backend plays.
    pub fn pod_name(&self) -> &str {
        &self.state.pod
    }

    /// Connections open now.
    pub fn open_connections(&self) -> u64 {
        self.state.open.load(Ordering::Relaxed)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::Relaxed)
    }

    /// The most connections that were open at once.
    pub fn peak_connections(&self) -> u64 {
        self.state.peak_open.load(Ordering::Relaxed)
    }

    /// Requests received so far, including failed ones.
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::Relaxed)
    }

    /// Requests being handled now.
    pub fn in_flight(&self) -> u64 {
        self.state.in_flight.load(Ordering::Relaxed)
    }

    /// Requests whose connection closed while the backend was still working on them (a client
    /// or proxy that gave up and cancelled).
    pub fn cancelled(&self) -> u64 {
        self.state.cancelled.load(Ordering::Relaxed)
    }

    /// How many times each request id (the [`REQUEST_ID_HEADER`]) was executed.
    pub fn executions(&self) -> HashMap<String, u32> {
        lock(&self.state.executions).clone()
    }

    /// Read every request whole, then reset its connection without a word of answer: the
    /// request reached the service, and the client cannot know what became of it.
    pub fn reset_after_reading(&self, enabled: bool) {
        self.state.reset_after_reading.store(enabled, Ordering::Relaxed);
    }

    /// Becomes a black hole: connections already open get no answer any more, and new ones never
    /// complete their handshake (the listener is replaced by one whose backlog is full, so the
    /// kernel drops their SYNs). Returns once a new connection would hang.
    pub async fn stop_accepting(&self) {
        self.delay(Duration::from_secs(3600));
        self.state.go_dark.notify_one();
        for _ in 0..500 {
            if self.state.dark.load(Ordering::Acquire) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("backend {} did not stop accepting within 5 s", self.state.pod);
    }

    /// Answer every request with `status` (the body still names the Pod).
    pub fn respond_with_status(&self, status: StatusCode) {
        self.state.status.store(status.as_u16(), Ordering::Relaxed);
    }

    /// Wait this long before answering each request.
    pub fn delay(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.state.delay_ms.store(ms, Ordering::Relaxed);
    }

    /// Answer the next `count` requests with `status`, then go back to normal.
    pub fn fail_next(&self, count: u32, status: StatusCode) {
        self.state.fail_status.store(status.as_u16(), Ordering::Relaxed);
        self.state.fail_next.store(count, Ordering::Relaxed);
    }

    /// Like [`fail_next`](Self::fail_next), each failure saying `Retry-After: <seconds>`.
    pub fn fail_next_with_retry_after(&self, count: u32, status: StatusCode, seconds: u64) {
        self.state.fail_retry_after.store(seconds, Ordering::Relaxed);
        self.fail_next(count, status);
    }

    /// Send the status line, headers and half the body, then drop the connection.
    pub fn close_mid_response(&self, enabled: bool) {
        self.state.close_mid_response.store(enabled, Ordering::Relaxed);
    }

    /// Back to the default: `200`, no delay, no scripted failures.
    /// Answer with the body in several chunks, without a Content-Length.
    pub fn answer_in_chunks(&self, enabled: bool) {
        self.state.chunked.store(enabled, Ordering::Relaxed);
    }

    /// Close keep-alive connections that carry no request for `idle`, as many servers do; the
    /// client learns of it only when it next uses the connection. Applies to connections accepted
    /// from now on.
    pub fn close_idle_connections_after(&self, idle: Duration) {
        let ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX).max(1);
        self.state.idle_timeout_ms.store(ms, Ordering::Relaxed);
    }

    /// Pad every body with `bytes` more bytes after the Pod's name (a large response).
    pub fn pad_bodies(&self, bytes: u64) {
        self.state.padding.store(bytes, Ordering::Relaxed);
    }

    pub fn reset(&self) {
        self.respond_with_status(StatusCode::OK);
        self.delay(Duration::ZERO);
        self.fail_next_with_retry_after(0, StatusCode::SERVICE_UNAVAILABLE, 0);
        self.close_mid_response(false);
        self.answer_in_chunks(false);
        self.pad_bodies(0);
        self.state.idle_timeout_ms.store(0, Ordering::Relaxed);
        self.reset_after_reading(false);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A backend's server task; dropping it stops the server and closes all its connections.
#[derive(Debug)]
pub struct RunningBackend {
    handle: Backend,
    server: JoinSet<()>,
    /// Set to `true` on SIGTERM: stop accepting, let every connection finish what it carries.
    terminating: watch::Sender<bool>,
}

impl RunningBackend {
    /// Serves HTTP/1.1 and h2c on an already bound listener.
    pub fn serve(listener: TcpListener, pod: &str) -> std::io::Result<Self> {
        let state = Arc::new(State {
            pod: pod.to_owned(),
            addr: listener.local_addr()?,
            status: AtomicU16::new(StatusCode::OK.as_u16()),
            delay_ms: AtomicU64::new(0),
            fail_next: AtomicU32::new(0),
            fail_status: AtomicU16::new(StatusCode::SERVICE_UNAVAILABLE.as_u16()),
            fail_retry_after: AtomicU64::new(0),
            close_mid_response: AtomicBool::new(false),
            chunked: AtomicBool::new(false),
            padding: AtomicU64::new(0),
            idle_timeout_ms: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            open: AtomicU64::new(0),
            peak_open: AtomicU64::new(0),
            reset_after_reading: AtomicBool::new(false),
            killed: AtomicBool::new(false),
            in_flight: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            executions: Mutex::default(),
            go_dark: Notify::new(),
            dark: AtomicBool::new(false),
        });
        let (terminating, terminated) = watch::channel(false);
        let mut server = JoinSet::new();
        server.spawn(accept_loop(listener, state.clone(), terminated));
        Ok(Self {
            handle: Backend { state },
            server,
            terminating,
        })
    }

    pub fn handle(&self) -> &Backend {
        &self.handle
    }

    /// Stops accepting and closes every open connection.
    pub async fn stop(mut self) {
        self.server.shutdown().await;
    }

    /// What a server does on SIGTERM: it closes its listener (new connections are refused),
    /// closes idle keep-alive connections, answers the requests in flight (each with
    /// `Connection: close`), and exits. Whatever is still running after `grace` is killed.
    pub async fn terminate(mut self, grace: Duration) {
        let _ = self.terminating.send(true);
        let finished = async {
            while let Some(result) = self.server.join_next().await {
                log_panic(result);
            }
        };
        if tokio::time::timeout(grace, finished).await.is_err() {
            tracing::debug!(pod = %self.handle.state.pod, ?grace, "backend outlived its grace period; killed");
            self.server.shutdown().await;
        }
    }

    /// Dies as a process killed with SIGKILL does: the listener and every connection vanish
    /// at once, each connection with a reset, whatever it was doing.
    pub async fn kill(mut self) {
        self.handle.state.killed.store(true, Ordering::Relaxed);
        self.server.shutdown().await;
    }
}

/// An accepted connection that can end with a reset instead of a FIN: when it is dropped after
/// its backend was killed, or after a request asked for it.
struct Socket {
    stream: TcpStream,
    state: Arc<State>,
    reset: Arc<AtomicBool>,
}

impl Drop for Socket {
    fn drop(&mut self) {
        if self.reset.load(Ordering::Relaxed) || self.state.killed.load(Ordering::Relaxed) {
            // SO_LINGER 0: the close sends a RST and drops whatever is unsent.
            let _ = self.stream.set_zero_linger();
        }
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Socket {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// Replaces `listener` with one on the same address that never accepts and whose backlog is
/// full, so that the kernel drops new SYNs: a host that has fallen off the network. Returns
/// the new listener and the connections that fill its backlog; both must be kept.
async fn black_hole(listener: TcpListener) -> std::io::Result<(TcpListener, Vec<TcpStream>)> {
    let addr = listener.local_addr()?;
    drop(listener);
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    let silent = socket.listen(0)?;
    // Fillers connect from the Pod's own address, so that counting the gateway's sockets to it
    // can tell them apart.
    let mut fillers = Vec::new();
    for _ in 0..16 {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(addr.ip(), 0))?;
        match tokio::time::timeout(Duration::from_millis(200), socket.connect(addr)).await {
            Ok(Ok(stream)) => fillers.push(stream),
            Ok(Err(error)) => return Err(error),
            // The backlog is full: handshakes hang from now on.
            Err(_) => return Ok((silent, fillers)),
        }
    }
    Err(std::io::Error::other(format!(
        "{addr} kept accepting after 16 unaccepted connections"
    )))
}

/// Completes once the backend is told to terminate (or its handle is gone).
async fn terminating(terminated: &mut watch::Receiver<bool>) {
    let _ = terminated.wait_for(|terminating| *terminating).await;
}

fn log_panic(result: Result<(), JoinError>) {
    if let Err(error) = result
        && error.is_panic()
    {
        tracing::warn!(%error, "backend task panicked");
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<State>, mut terminated: watch::Receiver<bool>) {
    // Connections live in this set: when the accept loop is aborted, the set is dropped and every
    // connection with it, as when a container dies.
    let mut connections = JoinSet::new();
    loop {
        let (stream, _) = tokio::select! {
            () = terminating(&mut terminated) => break,
            () = state.go_dark.notified() => {
                match black_hole(listener).await {
                    Ok(kept) => {
                        state.dark.store(true, Ordering::Release);
                        // Holds the silent listener, its fillers and the open connections.
                        let _kept = kept;
                        std::future::pending::<()>().await;
                    }
                    Err(error) => tracing::warn!(%error, "could not turn the backend into a black hole"),
                }
                return;
            }
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::debug!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            // Reap finished connections so the set does not grow with every one served.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let mut terminated = terminated.clone();
        state.connections.fetch_add(1, Ordering::Relaxed);
        let open = state.open.fetch_add(1, Ordering::Relaxed) + 1;
        state.peak_open.fetch_max(open, Ordering::Relaxed);
        let reset = Arc::new(AtomicBool::new(false));
        let stream = Socket {
            stream,
            state: state.clone(),
            reset: reset.clone(),
        };
        connections.spawn(async move {
            let service = {
                let state = state.clone();
                service_fn(move |request| handle(state.clone(), reset.clone(), request))
            };
            let mut builder = auto::Builder::new(TokioExecutor::new());
            let idle_timeout = state.idle_timeout_ms.load(Ordering::Relaxed);
            if idle_timeout > 0 {
                // hyper's header-read timer runs while a kept-alive connection waits for its next
                // request: an idle timeout, closing without a word.
                builder
                    .http1()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_millis(idle_timeout));
            }
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            let served = tokio::select! {
                served = connection.as_mut() => served,
                () = terminating(&mut terminated) => {
                    // Idle: closed at once; mid-request: answered, then closed.
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = served {
                tracing::trace!(%error, "backend connection ended with an error");
            }
            state.open.fetch_sub(1, Ordering::Relaxed);
        });
    }
    // Terminating: the address refuses new connections from here on; the open ones finish.
    drop(listener);
    while let Some(result) = connections.join_next().await {
        log_panic(result);
    }
}

/// Counts a request in flight, and as cancelled if its handler is dropped before it answers.
struct Handling {
    state: Arc<State>,
    answered: bool,
}

impl Drop for Handling {
    fn drop(&mut self) {
        self.state.in_flight.fetch_sub(1, Ordering::Relaxed);
        if !self.answered {
            self.state.cancelled.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn handle(
    state: Arc<State>,
    reset: Arc<AtomicBool>,
    request: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, std::io::Error> {
    state.requests.fetch_add(1, Ordering::Relaxed);
    state.in_flight.fetch_add(1, Ordering::Relaxed);
    let mut handling = Handling {
        state: state.clone(),
        answered: false,
    };
    if let Some(id) = request
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
    {
        *lock(&state.executions).entry(id.to_owned()).or_default() += 1;
    }
    let answer = answer(&state, request).await;
    handling.answered = true;
    if state.reset_after_reading.load(Ordering::Relaxed) {
        reset.store(true, Ordering::Relaxed);
        return Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "reset after reading the request",
        ));
    }
    Ok(answer)
}

async fn answer(state: &Arc<State>, request: Request<hyper::body::Incoming>) -> Response<Body> {
    let requested_delay_ms = requested_delay_ms(request.uri());
    let version = format!("{:?}", request.version());
    let seen_authority = request.uri().authority().map(|a| a.to_string());
    let seen_host = request.headers().get(hyper::header::HOST).cloned();
    let seen_forwarded_proto = request.headers().get("x-forwarded-proto").cloned();
    let seen_path = request
        .uri()
        .path_and_query()
        .and_then(|p| hyper::header::HeaderValue::from_str(p.as_str()).ok());
    let seen_forwarded_for: Vec<&[u8]> = request
        .headers()
        .get_all("x-forwarded-for")
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    let seen_forwarded_for = (!seen_forwarded_for.is_empty())
        .then(|| hyper::header::HeaderValue::from_bytes(&seen_forwarded_for.join(&b", "[..])).ok())
        .flatten();
    let echoed: Vec<(hyper::header::HeaderName, hyper::header::HeaderValue)> = request
        .headers()
        .iter()
        .filter(|(name, _)| {
            name.as_str().starts_with(ECHOED_HEADER_PREFIX)
                || matches!(name.as_str(), "x-microgate-client" | "traceparent" | "tracestate")
        })
        .filter_map(|(name, value)| {
            let seen = hyper::header::HeaderName::try_from(format!("x-seen-{name}")).ok()?;
            Some((seen, value.clone()))
        })
        .collect();
    // Read the whole request body, so that a client can check what arrived (x-body-bytes).
    let received = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().len())
        .unwrap_or(0);
    let delay = state.delay_ms.load(Ordering::Relaxed) + requested_delay_ms;
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let mut body = format!("{}\n", state.pod).into_bytes();
    let padding = state.padding.load(Ordering::Relaxed);
    body.resize(body.len() + usize::try_from(padding).unwrap_or(0), b'.');
    let body = Bytes::from(body);

    if state.close_mid_response.load(Ordering::Relaxed) {
        // Promise the whole body, send half, then fail the stream: hyper aborts the connection.
        let half = body.slice(..body.len() / 2);
        let chunks = futures::stream::iter([
            Ok(Frame::data(half)),
            Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "closed mid-response",
            )),
        ]);
        return response(
            StatusCode::OK,
            &state.pod,
            &version,
            body.len(),
            received,
            BodyExt::boxed(StreamBody::new(chunks)),
        );
    }

    let failing = state
        .fail_next
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| left.checked_sub(1))
        .is_ok();
    let status = if failing {
        &state.fail_status
    } else {
        &state.status
    };
    let status =
        StatusCode::from_u16(status.load(Ordering::Relaxed)).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let length = body.len();
    let mut answer = if state.chunked.load(Ordering::Relaxed) {
        // One frame per byte, and no length: hyper sends it chunked.
        let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = (0..body.len())
            .map(|i| Ok(Frame::data(body.slice(i..=i))))
            .collect();
        let mut answer = response(
            status,
            &state.pod,
            &version,
            length,
            received,
            BodyExt::boxed(StreamBody::new(futures::stream::iter(frames))),
        );
        answer.headers_mut().remove(hyper::header::CONTENT_LENGTH);
        answer
    } else {
        response(
            status,
            &state.pod,
            &version,
            length,
            received,
            Full::new(body).map_err(|never| match never {}).boxed(),
        )
    };
    if let Some(value) = seen_authority.and_then(|a| a.parse().ok()) {
        answer.headers_mut().insert(SEEN_AUTHORITY_HEADER, value);
    }
    if let Some(value) = seen_host {
        answer.headers_mut().insert(SEEN_HOST_HEADER, value);
    }
    if let Some(value) = seen_forwarded_proto {
        answer.headers_mut().insert(SEEN_FORWARDED_PROTO_HEADER, value);
    }
    if let Some(value) = seen_path {
        answer.headers_mut().insert(SEEN_PATH_HEADER, value);
    }
    if let Some(value) = seen_forwarded_for {
        answer.headers_mut().insert(SEEN_FORWARDED_FOR_HEADER, value);
    }
    for (name, value) in echoed {
        answer.headers_mut().append(name, value);
    }
    let retry_after = state.fail_retry_after.load(Ordering::Relaxed);
    if failing && retry_after > 0 {
        answer
            .headers_mut()
            .insert(hyper::header::RETRY_AFTER, retry_after.into());
    }
    answer
}

/// The query parameter with which a request asks to be answered this many milliseconds late
/// (`/?delay-ms=20`), on top of any scripted delay: a service that takes time, so that requests
/// are in flight when something happens to it.
pub const DELAY_QUERY: &str = "delay-ms";

fn requested_delay_ms(uri: &hyper::Uri) -> u64 {
    uri.query()
        .into_iter()
        .flat_map(|query| query.split('&'))
        .filter_map(|pair| pair.split_once('='))
        .find(|(name, _)| *name == DELAY_QUERY)
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(0)
}

fn response(
    status: StatusCode,
    pod: &str,
    version: &str,
    length: usize,
    received: usize,
    body: Body,
) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    if let Ok(value) = version.parse() {
        headers.insert(HTTP_VERSION_HEADER, value);
    }
    headers.insert(BODY_BYTES_HEADER, received.into());
    if let Ok(value) = pod.parse() {
        headers.insert(POD_NAME_HEADER, value);
    }
    headers.insert(hyper::header::CONTENT_LENGTH, length.into());
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe;

    async fn backend() -> RunningBackend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        RunningBackend::serve(listener, "web-0").expect("serve")
    }

    #[tokio::test]
    async fn answers_with_its_pod_name_by_default() {
        let running = backend().await;
        let answer = probe::get(running.handle().addr(), "/anything")
            .await
            .expect("an answer");
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.body, "web-0\n");
        assert_eq!(answer.headers[POD_NAME_HEADER], "web-0");
        assert_eq!(running.handle().requests(), 1);
    }

    #[tokio::test]
    async fn fixed_status_and_failing_the_next_requests() {
        let running = backend().await;
        let (backend, addr) = (running.handle().clone(), running.handle().addr());
        backend.respond_with_status(StatusCode::IM_A_TEAPOT);
        assert_eq!(
            probe::get(addr, "/").await.expect("answer").status,
            StatusCode::IM_A_TEAPOT
        );
        backend.reset();
        backend.fail_next(2, StatusCode::SERVICE_UNAVAILABLE);
        let mut statuses = Vec::new();
        for _ in 0..3 {
            statuses.push(probe::get(addr, "/").await.expect("answer").status);
        }
        assert_eq!(
            statuses,
            [
                StatusCode::SERVICE_UNAVAILABLE,
                StatusCode::SERVICE_UNAVAILABLE,
                StatusCode::OK
            ]
        );
        assert_eq!(backend.requests(), 4);
    }

    #[tokio::test]
    async fn added_delay_holds_the_answer_back() {
        let running = backend().await;
        running.handle().delay(Duration::from_millis(200));
        let started = std::time::Instant::now();
        let answer = probe::get(running.handle().addr(), "/").await.expect("answer");
        assert_eq!(answer.status, StatusCode::OK);
        assert!(
            started.elapsed() >= Duration::from_millis(200),
            "answered after {:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn a_request_may_ask_to_be_answered_late() {
        let running = backend().await;
        let started = std::time::Instant::now();
        let answer = probe::get(running.handle().addr(), "/?x=1&delay-ms=150")
            .await
            .expect("answer");
        assert_eq!(answer.status, StatusCode::OK);
        assert!(
            started.elapsed() >= Duration::from_millis(150),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn closing_mid_response_cuts_the_body_short() {
        let running = backend().await;
        running.handle().close_mid_response(true);
        let error = probe::get(running.handle().addr(), "/")
            .await
            .expect_err("the body is cut short");
        assert!(matches!(error, probe::ProbeError::Http { .. }), "{error:?}");
    }

    #[tokio::test]
    async fn a_terminated_backend_answers_the_request_in_flight_and_then_refuses_connections() {
        let running = backend().await;
        let (backend, addr) = (running.handle().clone(), running.handle().addr());
        backend.delay(Duration::from_millis(300));
        let in_flight = tokio::spawn(probe::get(addr, "/"));
        tokio::time::sleep(Duration::from_millis(100)).await;
        running.terminate(Duration::from_secs(5)).await;
        let answer = in_flight.await.expect("the request task").expect("answered");
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.headers[hyper::header::CONNECTION], "close");
        let error = probe::get(addr, "/").await.expect_err("terminated");
        assert!(error.is_connection_refused(), "{error:?}");
        assert_eq!(backend.open_connections(), 0);
    }

    #[tokio::test]
    async fn a_stopped_backend_refuses_connections() {
        let running = backend().await;
        let addr = running.handle().addr();
        assert!(probe::get(addr, "/").await.is_ok());
        running.stop().await;
        let error = probe::get(addr, "/").await.expect_err("nothing listens any more");
        assert!(error.is_connection_refused(), "{error:?}");
    }
}
