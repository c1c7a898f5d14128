//! HTTP/1.1 connections, plain and TLS, idle between requests: held by their listener outside
//! any task.
//!
//! An idle keep-alive connection waiting in a task of its own costs the task's state, tokio's
//! task and I/O registration, and a timer: about 2.5 KiB, where nginx spends 0.7 KiB. A
//! connection idle for [`PARK_AFTER`] leaves its task instead: its socket joins an epoll set
//! of the listener's own (a `mio::Poll`, itself registered with the worker's runtime) and waits
//! there with its client's address and its connection slot, about a hundred bytes. When bytes
//! (or the client's close) arrive, it goes back to the runtime in a new task; one still idle at
//! its keep-alive deadline is closed here. The deadline is the same for all of a listener's
//! connections, so a queue in the order they came finds the next to close.
//!
//! Moving a socket from tokio's epoll set to this one and back costs four system calls, so
//! only connections idle for a while move: a busy keep-alive connection never does.
//!
//! A TLS connection parks the same way: its socket leaves the session, a [`SessionSocket`]
//! empty meanwhile, and the session (rustls's state: keys, its 4 KiB receive buffer) waits
//! boxed with the parked socket until the socket goes back under it.

use std::{
    collections::VecDeque,
    io::{self, IoSlice},
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use mio::{Events, Interest, Token};
use prometheus_client::metrics::gauge::Gauge;
use slab::Slab;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf, unix::AsyncFd},
    net::TcpStream,
    time::{Instant, Sleep},
};

/// How long an HTTP/1.1 connection waits for its next request in its own task before it is
/// parked: long enough that a connection carrying a steady load (its next request within
/// milliseconds) stays put, short enough that idle ones leave soon. Few tasks are then alive at
/// once even while thousands of clients connect, make one request and fall silent: memory freed
/// by ended tasks is memory the allocator keeps for the next ones, so the peak of live tasks is
/// what the process holds on to.
pub const PARK_AFTER: Duration = Duration::from_millis(100);

/// Readiness events taken from the epoll set at once.
const EVENTS: usize = 256;

/// A listener's parked connections on one worker, each with its `T` (what its next task needs).
pub struct IdleConnections<T> {
    epoll: AsyncFd<mio::Poll>,
    events: Events,
    parked: Slab<Parked<T>>,
    /// Parked connections in the order they came, with their deadlines: ascending, since every
    /// connection of the listener waits as long. Entries of connections woken since stay until
    /// they reach the front (or the queue is compacted).
    expiry: VecDeque<Expiry>,
    /// Armed to the front of `expiry`.
    timer: Pin<Box<Sleep>>,
    /// How long a connection stays parked before it is closed.
    timeout: Duration,
    /// Woken connections not yet taken.
    woken: VecDeque<(TcpStream, T)>,
    /// Tells a slot's connections apart from the ones it held before.
    next_generation: u32,
    gauge: Gauge,
}

struct Parked<T> {
    stream: mio::net::TcpStream,
    generation: u32,
    with: T,
}

struct Expiry {
    deadline: Instant,
    key: usize,
    generation: u32,
}

impl<T> IdleConnections<T> {
    /// An empty set whose connections are closed after `timeout` parked, counted in `gauge`.
    pub fn new(timeout: Duration, gauge: Gauge) -> io::Result<Self> {
        // `AsyncFd::new` is deprecated because its safety rests on the caller: the descriptor
        // must stay open and the same while registered. A `mio::Poll` owns its epoll descriptor
        // for its whole life, and it is never swapped out of the `AsyncFd` here.
        #[allow(deprecated)]
        let epoll = AsyncFd::new(mio::Poll::new()?)?;
        Ok(Self {
            epoll,
            events: Events::with_capacity(EVENTS),
            parked: Slab::new(),
            expiry: VecDeque::new(),
            timer: Box::pin(tokio::time::sleep(timeout)),
            timeout,
            woken: VecDeque::new(),
            next_generation: 0,
            gauge,
        })
    }

    /// How many connections are parked.
    pub fn len(&self) -> usize {
        self.parked.len()
    }

    /// Parks `stream` until it is readable or its time is up. A connection that cannot be
    /// parked is closed (the error says why).
    pub fn park(&mut self, stream: TcpStream, with: T) -> io::Result<()> {
        // Leaves tokio's epoll set; the socket stays non-blocking.
        let mut stream = mio::net::TcpStream::from_std(stream.into_std()?);
        let entry = self.parked.vacant_entry();
        let key = entry.key();
        // Bytes that came before this are reported at once: epoll checks on adding.
        self.epoll
            .get_ref()
            .registry()
            .register(&mut stream, Token(key), Interest::READABLE)?;
        let generation = self.next_generation;
        self.next_generation = generation.wrapping_add(1);
        entry.insert(Parked {
            stream,
            generation,
            with,
        });
        self.expiry.push_back(Expiry {
            deadline: Instant::now() + self.timeout,
            key,
            generation,
        });
        self.gauge.inc();
        // Woken connections leave their entries behind: keep the queue within a small multiple
        // of what is parked, however often connections come and go.
        if self.expiry.len() > 2 * self.parked.len() + EVENTS {
            let parked = &self.parked;
            self.expiry.retain(|entry| is_live(parked, entry));
        }
        Ok(())
    }

    /// The next parked connection that became readable (or was closed by its client), back in
    /// the runtime, with its `T`. Closes the connections whose time is up meanwhile.
    /// Cancel-safe: what it found is kept for the next call.
    pub fn poll_woken(&mut self, cx: &mut Context<'_>) -> Poll<(TcpStream, T)> {
        loop {
            if let Some(woken) = self.woken.pop_front() {
                return Poll::Ready(woken);
            }
            if self.close_expired(cx) {
                continue;
            }
            let mut ready = match self.epoll.poll_read_ready_mut(cx) {
                Poll::Ready(Ok(ready)) => ready,
                Poll::Ready(Err(error)) => {
                    tracing::warn!(%error, "the idle connections' epoll set failed");
                    return Poll::Pending;
                }
                Poll::Pending => return Poll::Pending,
            };
            match ready.get_inner_mut().poll(&mut self.events, Some(Duration::ZERO)) {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    tracing::warn!(%error, "waiting on the idle connections failed");
                    return Poll::Pending;
                }
            }
            if self.events.is_empty() {
                // Drained: wait for the next edge.
                ready.clear_ready();
                continue;
            }
            for event in self.events.iter() {
                let Some(Parked { mut stream, with, .. }) = self.parked.try_remove(event.token().0) else {
                    continue;
                };
                self.gauge.dec();
                let registry = self.epoll.get_ref().registry();
                // A socket that cannot move back is closed: its client sees the connection end
                // as if it had timed out.
                let back = registry
                    .deregister(&mut stream)
                    .and_then(|()| TcpStream::from_std(std::net::TcpStream::from(stream)));
                match back {
                    Ok(stream) => self.woken.push_back((stream, with)),
                    Err(error) => tracing::debug!(%error, "an idle connection could not be resumed"),
                }
            }
        }
    }

    /// Closes the parked connections whose time is up and arms the timer for the next; whether
    /// the timer fired (so the caller looks again).
    fn close_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let now = Instant::now();
        while let Some(front) = self.expiry.front() {
            if is_live(&self.parked, front) {
                if front.deadline > now {
                    break;
                }
                self.parked.remove(front.key);
                self.gauge.dec();
            }
            self.expiry.pop_front();
        }
        let Some(front) = self.expiry.front() else {
            return false;
        };
        if self.timer.deadline() != front.deadline {
            self.timer.as_mut().reset(front.deadline);
        }
        self.timer.as_mut().poll(cx).is_ready()
    }
}

fn is_live<T>(parked: &Slab<Parked<T>>, entry: &Expiry) -> bool {
    parked
        .get(entry.key)
        .is_some_and(|parked| parked.generation == entry.generation)
}

impl<T> Drop for IdleConnections<T> {
    fn drop(&mut self) {
        self.gauge.dec_by(self.parked.len() as i64);
    }
}

/// The socket under a TLS session, which it leaves while the connection is parked (and the
/// session with it waits, socketless, beside the parked socket).
pub struct SessionSocket(Option<TcpStream>);

impl SessionSocket {
    pub fn new(stream: TcpStream) -> Self {
        Self(Some(stream))
    }

    /// The socket, taken out to be parked.
    pub fn take(&mut self) -> Option<TcpStream> {
        self.0.take()
    }

    /// Puts the socket of a woken connection back.
    pub fn put(&mut self, stream: TcpStream) {
        self.0 = Some(stream);
    }

    /// Polls the socket with `poll`, or fails as a session without one does: only a parked
    /// session has none, and nothing reads or writes a parked session.
    fn poll_socket<R>(
        self: Pin<&mut Self>,
        poll: impl FnOnce(Pin<&mut TcpStream>) -> Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        match self.get_mut().0.as_mut() {
            Some(socket) => poll(Pin::new(socket)),
            None => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the session's socket is parked",
            ))),
        }
    }
}

impl AsyncRead for SessionSocket {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.poll_socket(|socket| socket.poll_read(cx, buf))
    }
}

impl AsyncWrite for SessionSocket {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_socket(|socket| socket.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_socket(|socket| socket.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_socket(|socket| socket.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_socket(|socket| socket.poll_shutdown(cx))
    }
}

#[cfg(test)]
mod tests {
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    use super::*;

    /// A connected pair: the client's end and the server's.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("address"))
            .await
            .expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        (client, server)
    }

    async fn woken<T>(idle: &mut IdleConnections<T>) -> (TcpStream, T) {
        std::future::poll_fn(|cx| idle.poll_woken(cx)).await
    }

    #[tokio::test]
    async fn a_parked_connection_comes_back_with_its_bytes_when_its_client_writes() {
        let gauge = Gauge::default();
        let mut idle = IdleConnections::new(Duration::from_secs(60), gauge.clone()).expect("epoll");
        let (mut first, server) = pair().await;
        idle.park(server, "first").expect("park");
        let (_second, server) = pair().await;
        idle.park(server, "second").expect("park");
        assert_eq!((idle.len(), gauge.get()), (2, 2));

        first.write_all(b"GET / HTTP/1.1\r\n").await.expect("write");
        let (mut server, with) = woken(&mut idle).await;
        assert_eq!(with, "first");
        assert_eq!((idle.len(), gauge.get()), (1, 1));
        let mut read = [0u8; 16];
        server.read_exact(&mut read).await.expect("the bytes are there");
        assert_eq!(&read, b"GET / HTTP/1.1\r\n");
        // Back in the runtime: it writes and reads as any connection does.
        server.write_all(b"ok").await.expect("write back");
        let mut answer = [0u8; 2];
        first.read_exact(&mut answer).await.expect("read");
        assert_eq!(&answer, b"ok");
    }

    #[tokio::test]
    async fn bytes_sent_before_parking_wake_the_connection_at_once() {
        let mut idle = IdleConnections::new(Duration::from_secs(60), Gauge::default()).expect("epoll");
        let (mut client, server) = pair().await;
        client.write_all(b"x").await.expect("write");
        // Let the byte arrive before the socket is parked.
        server.readable().await.expect("readable");
        idle.park(server, ()).expect("park");
        let (mut server, ()) = woken(&mut idle).await;
        let mut read = [0u8; 1];
        server.read_exact(&mut read).await.expect("read");
        assert_eq!(&read, b"x");
    }

    #[tokio::test]
    async fn a_connection_that_stays_idle_is_closed_at_its_deadline_and_a_closed_one_wakes() {
        let gauge = Gauge::default();
        let mut idle = IdleConnections::new(Duration::from_millis(50), gauge.clone()).expect("epoll");
        let (mut quiet, server) = pair().await;
        idle.park(server, "quiet").expect("park");
        let (leaving, server) = pair().await;
        idle.park(server, "leaving").expect("park");
        drop(leaving);
        // The client that closed is handed back (its task reads the end and finishes).
        let (mut server, with) = woken(&mut idle).await;
        assert_eq!(with, "leaving");
        let mut read = [0u8; 1];
        assert_eq!(server.read(&mut read).await.expect("read"), 0);

        // The quiet one is closed once its time is up, while the set is being waited on.
        let waiting = tokio::time::timeout(Duration::from_millis(500), woken(&mut idle)).await;
        assert!(waiting.is_err(), "nothing else wakes");
        assert_eq!((idle.len(), gauge.get()), (0, 0));
        assert_eq!(quiet.read(&mut read).await.expect("the close"), 0);
    }

    #[tokio::test]
    async fn the_expiry_queue_stays_small_when_connections_come_and_go() {
        let mut idle = IdleConnections::new(Duration::from_secs(60), Gauge::default()).expect("epoll");
        let (mut client, server) = pair().await;
        let mut server = Some(server);
        for _ in 0..2000 {
            idle.park(server.take().expect("the connection"), ())
                .expect("park");
            client.write_all(b"x").await.expect("write");
            let (mut back, ()) = woken(&mut idle).await;
            let mut read = [0u8; 1];
            back.read_exact(&mut read).await.expect("read");
            server = Some(back);
        }
        assert!(
            idle.expiry.len() <= 2 * idle.len() + EVENTS + 1,
            "{} entries",
            idle.expiry.len()
        );
    }
}
