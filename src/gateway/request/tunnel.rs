//! WebSocket through the gateway. A client's `Upgrade: websocket` request to a backend whose
//! Service port declares `appProtocol: kubernetes.io/ws` goes to one endpoint over a connection
//! of its own; when the endpoint switches protocols (101), so does the client's connection, and
//! the two are spliced until either side closes.
//!
//! Nowhere else does an `Upgrade` header pass the gateway: an upgrade the gateway did not ask
//! for (h2c above all) would let a client speak past the routes to whatever the endpoint runs.
//! Only hyper's server gives a request the means to take over its connection: the gateway's own
//! HTTP/1.1 server hands such requests to it.
//!
//! Tunnels are bounded: at most [`MAX_TUNNELS`] at once in the process; past it, 503. A tunnel
//! that carries no byte either way for [`IDLE_TIMEOUT`] is closed (WebSocket clients ping to
//! stay open), and a stopping gateway gives its tunnels the drain deadline, then closes them
//! ([`Tunnels::drain`]), so clients see the connection end and reconnect elsewhere.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{
    HeaderValue, Method, Request, Response, StatusCode, Version, header, request::Parts, uri::PathAndQuery,
};
use http_body_util::{BodyExt, Either, Empty, Limited};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::TcpStream,
    sync::watch,
    time::Instant,
};

use super::respond::{ResponseBody, local};
use crate::gateway::{
    http::{
        body::Whole,
        client::Client,
        forwarding::{Forwarding, strip_hop_by_hop},
    },
    policy::client_ip::ClientIp,
    table::Upstream,
    upstream::CONNECT_TIMEOUT,
};

/// WebSocket tunnels open at once, over all routes.
pub const MAX_TUNNELS: usize = 4096;
/// How long a tunnel may carry nothing before it is closed (HAProxy's common `timeout tunnel`).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// How long closing tunnels may take to say goodbye to both sides.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long an endpoint has to answer the upgrade request.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// The most of a refusal's body (an endpoint that does not switch) passed on to the client.
const MAX_REFUSAL_BODY: usize = 64 * 1024;

static TUNNELS: AtomicUsize = AtomicUsize::new(0);

/// Whether a request asks to switch its connection to WebSocket (RFC 6455 §4.1): an HTTP/1.1
/// GET with `Upgrade: websocket` and `Connection: upgrade`.
pub(super) fn wants_websocket(parts: &Parts) -> bool {
    let token_in = |name: header::HeaderName, token: &str| {
        parts.headers.get_all(name).iter().any(|value| {
            value
                .as_bytes()
                .split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
        })
    };
    parts.method == Method::GET
        && parts.version == Version::HTTP_11
        && token_in(header::UPGRADE, "websocket")
        && token_in(header::CONNECTION, "upgrade")
}

/// Sends the upgrade request `parts` to an endpoint of `upstream`; on its 101, answers the
/// client with it and splices the two connections once the client's (`client_side`) is handed
/// over. Any other answer of the endpoint is the client's, and nothing is spliced.
pub(super) async fn open(
    tunnels: &Tunnels,
    upstream: &Upstream,
    parts: Parts,
    client: &Client,
    origin: ClientIp,
    host: Option<&str>,
    client_side: OnUpgrade,
) -> Response<ResponseBody> {
    let Some(slot) = Slot::take() else {
        return local(
            StatusCode::SERVICE_UNAVAILABLE,
            "tunnel-limit",
            &format!("{MAX_TUNNELS} WebSocket connections are open: no more for now"),
        );
    };
    let Some(endpoint) = upstream.pool.pick(None, None) else {
        return local(
            StatusCode::SERVICE_UNAVAILABLE,
            "no-endpoints",
            &format!("no ready endpoints for {}", upstream.service),
        );
    };
    let forwarding = Forwarding::for_peer(&parts.headers, client, host, origin.peer_trusted);
    let mut headers = parts.headers;
    forwarding.apply(&mut headers);
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    let mut request = Request::new(Empty::<Bytes>::new());
    *request.method_mut() = Method::GET;
    *request.uri_mut() = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"))
        .into();
    *request.headers_mut() = headers;

    let connect = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(endpoint.addr)).await;
    let Ok(Ok(stream)) = connect else {
        return local(
            StatusCode::BAD_GATEWAY,
            "connect-failure",
            "could not connect to the upstream",
        );
    };
    let _ = stream.set_nodelay(true);
    let exchange = async {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        // Driven until the endpoint's connection is handed over (or ends).
        tokio::spawn(connection.with_upgrades());
        sender.send_request(request).await
    };
    let response = match tokio::time::timeout(HANDSHAKE_TIMEOUT, exchange).await {
        Ok(Ok(response)) => response,
        Ok(Err(error)) => {
            tracing::debug!(%error, pod = %endpoint.pod, "WebSocket handshake with the endpoint failed");
            return local(
                StatusCode::BAD_GATEWAY,
                "upstream-reset",
                "the upstream connection broke",
            );
        }
        Err(_) => {
            return local(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream-timeout",
                "the upstream did not answer in time",
            );
        }
    };
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        // The endpoint said no: its answer, as any answer, without its hop-by-hop headers.
        let (mut head, body) = response.into_parts();
        strip_hop_by_hop(&mut head.headers);
        let Ok(body) = Limited::new(body, MAX_REFUSAL_BODY).collect().await else {
            return local(
                StatusCode::BAD_GATEWAY,
                "upstream-invalid",
                "the upstream's refusal of the upgrade could not be read",
            );
        };
        head.headers.remove(header::CONTENT_LENGTH);
        return Response::from_parts(head, Either::Right(Whole::new(body.to_bytes())));
    }
    let mut response = response;
    let upstream_side = hyper::upgrade::on(&mut response);
    let (head, _) = response.into_parts();
    let pod = endpoint.pod.clone();
    let open = tunnels.enter();
    tokio::spawn(async move {
        let _slot = slot;
        let (client_io, upstream_io) = match tokio::join!(client_side, upstream_side) {
            (Ok(client_io), Ok(upstream_io)) => (client_io, upstream_io),
            (Err(error), _) | (_, Err(error)) => {
                tracing::debug!(%error, %pod, "WebSocket connection not taken over");
                return;
            }
        };
        let ended = splice(
            TokioIo::new(client_io),
            TokioIo::new(upstream_io),
            IDLE_TIMEOUT,
            open,
        )
        .await;
        tracing::debug!(%pod, ?ended, "WebSocket connection closed");
    });
    // The endpoint's 101 as it is: Upgrade, Connection and Sec-WebSocket-Accept belong to it.
    Response::from_parts(head, Either::Right(Whole::empty()))
}

/// The WebSocket tunnels one gateway has open, and the signal that closes them at drain.
#[derive(Clone, Debug)]
pub struct Tunnels {
    open: Arc<AtomicUsize>,
    closing: watch::Sender<bool>,
}

impl Default for Tunnels {
    fn default() -> Self {
        Self {
            open: Arc::default(),
            closing: watch::Sender::new(false),
        }
    }
}

impl Tunnels {
    /// Tunnels open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Waits, up to `deadline`, for the open tunnels to end by themselves; then closes the rest
    /// and waits for them to have closed both their connections.
    pub async fn drain(&self, deadline: Duration) {
        let wait_for = |limit: Duration| async move {
            let until = Instant::now() + limit;
            while self.open() > 0 && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        wait_for(deadline).await;
        let left = self.open();
        if left > 0 {
            tracing::info!(
                tunnels = left,
                "closing the WebSocket connections still open at the drain deadline"
            );
            self.closing.send_replace(true);
            wait_for(CLOSE_TIMEOUT * 2).await;
        }
    }

    fn enter(&self) -> OpenTunnel {
        self.open.fetch_add(1, Ordering::AcqRel);
        OpenTunnel {
            open: self.open.clone(),
            closing: self.closing.subscribe(),
        }
    }
}

/// One open tunnel of [`Tunnels`]: counted until dropped, and told when to close.
struct OpenTunnel {
    open: Arc<AtomicUsize>,
    closing: watch::Receiver<bool>,
}

impl Drop for OpenTunnel {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why a tunnel ended.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// Either side closed (or broke) its connection.
    Closed,
    Idle,
    Drained,
}

/// Copies bytes both ways between `client` and `upstream` until either closes, nothing moves
/// for `idle_timeout`, or the gateway drains; then shuts both down, so each side sees the end.
async fn splice<C, U>(client: C, upstream: U, idle_timeout: Duration, mut tunnel: OpenTunnel) -> Ended
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let activity = Activity::new();
    let mut client = Watched {
        io: client,
        activity: &activity,
    };
    let mut upstream = Watched {
        io: upstream,
        activity: &activity,
    };
    let ended = tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => Ended::Closed,
        () = activity.idle_for(idle_timeout) => Ended::Idle,
        _ = tunnel.closing.wait_for(|closing| *closing) => Ended::Drained,
    };
    if ended != Ended::Closed {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            let _ = tokio::join!(client.io.shutdown(), upstream.io.shutdown());
        })
        .await;
    }
    ended
}

/// When bytes last moved through a tunnel, either way.
struct Activity {
    start: Instant,
    /// Milliseconds from `start`.
    last: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(now, Ordering::Relaxed);
    }

    /// Completes once nothing has moved for `timeout`.
    async fn idle_for(&self, timeout: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last.load(Ordering::Relaxed));
            if last.elapsed() >= timeout {
                return;
            }
            tokio::time::sleep_until(last + timeout).await;
        }
    }
}

/// `io`, noting in `activity` every read or write that moved bytes.
struct Watched<'a, T> {
    io: T,
    activity: &'a Activity,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<'_, T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<'_, T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// One of the [`MAX_TUNNELS`], given back when dropped.
struct Slot;

impl Slot {
    fn take() -> Option<Self> {
        TUNNELS
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_TUNNELS).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        TUNNELS.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, DuplexStream, duplex};

    use super::*;

    /// A tunnel between two in-memory connections: returns the client's and the endpoint's far
    /// ends and the running splice.
    fn tunnel(
        tunnels: &Tunnels,
        idle_timeout: Duration,
    ) -> (DuplexStream, DuplexStream, tokio::task::JoinHandle<Ended>) {
        let (client, client_far) = duplex(1024);
        let (upstream, upstream_far) = duplex(1024);
        let open = tunnels.enter();
        let splice = tokio::spawn(splice(client, upstream, idle_timeout, open));
        (client_far, upstream_far, splice)
    }

    /// Reads `far` to its end, which must come (the tunnel shut it down).
    async fn ends(far: &mut DuplexStream) {
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), far.read_to_end(&mut rest))
            .await
            .expect("the tunnel's side ends")
            .expect("read to the end");
    }

    #[tokio::test]
    async fn bytes_go_both_ways_and_either_side_closing_ends_the_tunnel() {
        let tunnels = Tunnels::default();
        let (mut client, mut upstream, splice) = tunnel(&tunnels, IDLE_TIMEOUT);
        assert_eq!(tunnels.open(), 1);
        client.write_all(b"ping").await.expect("write");
        let mut got = [0; 4];
        upstream.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"ping");
        upstream.write_all(b"pong").await.expect("write");
        client.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"pong");
        // The client's end reaches the endpoint; the endpoint closing in turn ends the tunnel.
        drop(client);
        ends(&mut upstream).await;
        drop(upstream);
        let ended = tokio::time::timeout(Duration::from_secs(5), splice)
            .await
            .expect("the tunnel ends once both sides closed");
        assert_eq!(ended.expect("the splice"), Ended::Closed);
        assert_eq!(tunnels.open(), 0);
    }

    #[tokio::test]
    async fn a_tunnel_idle_past_its_timeout_is_closed_on_both_sides_and_traffic_keeps_one_open() {
        let tunnels = Tunnels::default();
        let idle = Duration::from_millis(300);
        let (mut client, mut upstream, splice) = tunnel(&tunnels, idle);
        // Traffic every 100 ms for three idle timeouts keeps it open.
        for _ in 0..9 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            client.write_all(b"x").await.expect("write");
            let mut got = [0; 1];
            upstream.read_exact(&mut got).await.expect("read");
        }
        assert!(!splice.is_finished(), "closed while in use");
        ends(&mut client).await;
        ends(&mut upstream).await;
        assert_eq!(splice.await.expect("the splice"), Ended::Idle);
    }

    #[tokio::test]
    async fn draining_waits_for_tunnels_then_closes_those_left() {
        let tunnels = Tunnels::default();
        let (mut client, mut upstream, splice) = tunnel(&tunnels, IDLE_TIMEOUT);
        let drain = tokio::spawn({
            let tunnels = tunnels.clone();
            async move { tunnels.drain(Duration::from_millis(300)).await }
        });
        // Within the deadline the tunnel still carries traffic.
        client.write_all(b"still here").await.expect("write");
        let mut got = [0; 10];
        upstream.read_exact(&mut got).await.expect("read");
        ends(&mut client).await;
        ends(&mut upstream).await;
        assert_eq!(splice.await.expect("the splice"), Ended::Drained);
        drain.await.expect("the drain");
        assert_eq!(tunnels.open(), 0);
    }

    fn parts(method: Method, version: Version, headers: &[(&'static str, &'static str)]) -> Parts {
        let mut request = Request::new(());
        *request.method_mut() = method;
        *request.version_mut() = version;
        for (name, value) in headers {
            request
                .headers_mut()
                .append(*name, HeaderValue::from_static(value));
        }
        request.into_parts().0
    }

    #[test]
    fn only_a_websocket_upgrade_of_an_http11_get_is_one() {
        let ws = [("upgrade", "WebSocket"), ("connection", "keep-alive, Upgrade")];
        assert!(wants_websocket(&parts(Method::GET, Version::HTTP_11, &ws)));
        assert!(!wants_websocket(&parts(Method::POST, Version::HTTP_11, &ws)));
        assert!(!wants_websocket(&parts(Method::GET, Version::HTTP_10, &ws)));
        assert!(!wants_websocket(&parts(
            Method::GET,
            Version::HTTP_11,
            &[("upgrade", "h2c"), ("connection", "upgrade")]
        )));
        assert!(!wants_websocket(&parts(
            Method::GET,
            Version::HTTP_11,
            &[("upgrade", "websocket")]
        )));
    }
}
