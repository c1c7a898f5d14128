//! The recording backend: a raw TCP server that keeps the exact bytes of every connection, reads
//! them with the [strict](super::strict) reader, and answers each request it reads with `200` and
//! a Content-Length; a request it cannot read strictly gets a `400` and the connection closes.
//!
//! Each answer says which request it answers (`x-recorded: <serial> <target>`), so a client can
//! tell whether the answers it got through a proxy are the answers to its own requests.
//!
//! A test can script the answers instead ([`Recorder::answer_with`]): raw bytes, to play an
//! upstream that breaks the protocol.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinSet,
};

use super::strict::{self, StrictRequest};

/// The header of each answer that names the request answered: `<serial> <target>`.
pub const RECORDED_HEADER: &str = "x-recorded";
/// The `x-recorded` value of the answer to a request the backend could not read.
pub const UNREADABLE: &str = "unreadable";

/// What the recorder saw, in order.
#[derive(Clone, Debug)]
pub enum Event {
    /// A request read strictly, with its serial number (counted over the recorder's life).
    Request {
        connection: usize,
        serial: u64,
        request: StrictRequest,
    },
    /// Bytes no strict reader takes; the connection was answered 400 and closed.
    Unreadable {
        connection: usize,
        reason: String,
        bytes: Vec<u8>,
    },
    /// The connection closed in the middle of a message.
    CutShort { connection: usize, bytes: Vec<u8> },
}

impl Event {
    pub fn connection(&self) -> usize {
        match self {
            Event::Request { connection, .. }
            | Event::Unreadable { connection, .. }
            | Event::CutShort { connection, .. } => *connection,
        }
    }
}

/// How the recorder answers a request it has read.
#[derive(Clone, Debug, Default)]
pub enum Answer {
    /// `200`, the target as the body.
    #[default]
    Recorded,
    /// These bytes, as they are; then closes the connection if `close`.
    Raw { bytes: Vec<u8>, close: bool },
    /// These bytes again and again until the peer stops reading or goes (an endless stream of
    /// interim answers).
    Endless(Vec<u8>),
}

#[derive(Default)]
struct State {
    events: Vec<Event>,
    /// Every connection's bytes, by connection number.
    raw: Vec<Vec<u8>>,
    /// Connections holding a message not yet complete.
    pending: usize,
    serial: u64,
    answer: Answer,
}

/// A handle to a running recorder. Cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder").field("addr", &self.addr).finish()
    }
}

impl Recorder {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes the events seen since the last call.
    pub fn take_events(&self) -> Vec<Event> {
        std::mem::take(&mut self.lock().events)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.lock().raw.len()
    }

    /// The bytes connection `connection` has carried so far.
    pub fn raw(&self, connection: usize) -> Vec<u8> {
        self.lock().raw.get(connection).cloned().unwrap_or_default()
    }

    /// Whether some connection holds a message not yet complete.
    pub fn has_pending(&self) -> bool {
        self.lock().pending > 0
    }

    /// Answers the requests read from now on this way.
    pub fn answer_with(&self, answer: Answer) {
        self.lock().answer = answer;
    }

    /// Waits until no event has come for `quiet`, or `limit` passed; no connection may be left
    /// holding half a message unless `limit` passes.
    pub async fn settle(&self, quiet: Duration, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        let mut seen = usize::MAX;
        loop {
            let (count, pending) = {
                let state = self.lock();
                (state.events.len(), state.pending)
            };
            if count == seen && pending == 0 {
                return;
            }
            seen = count;
            if tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(quiet).await;
        }
    }
}

/// A recorder's server task; dropping it (or [`RunningRecorder::stop`]) closes everything.
pub struct RunningRecorder {
    handle: Recorder,
    server: JoinSet<()>,
}

impl RunningRecorder {
    pub fn serve(listener: TcpListener) -> std::io::Result<Self> {
        let handle = Recorder {
            addr: listener.local_addr()?,
            state: Arc::default(),
        };
        let mut server = JoinSet::new();
        server.spawn(accept_loop(listener, handle.clone()));
        Ok(Self { handle, server })
    }

    pub async fn bind(addr: SocketAddr) -> std::io::Result<Self> {
        Self::serve(TcpListener::bind(addr).await?)
    }

    pub fn handle(&self) -> &Recorder {
        &self.handle
    }

    pub async fn stop(mut self) {
        self.server.shutdown().await;
    }
}

async fn accept_loop(listener: TcpListener, recorder: Recorder) {
    let mut connections = JoinSet::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let _ = stream.set_nodelay(true);
        let number = {
            let mut state = recorder.lock();
            state.raw.push(Vec::new());
            state.raw.len() - 1
        };
        connections.spawn(serve_connection(stream, number, recorder.clone()));
    }
}

async fn serve_connection(mut stream: TcpStream, connection: usize, recorder: Recorder) {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    let mut was_pending = false;
    let set_pending = |was: &mut bool, now: bool| {
        if *was != now {
            let mut state = recorder.lock();
            if now {
                state.pending += 1;
            } else {
                state.pending -= 1;
            }
            *was = now;
        }
    };
    loop {
        // A reset ends the connection as a close does.
        let read: usize = stream.read(&mut chunk).await.unwrap_or_default();
        if read == 0 {
            if !buf.is_empty() {
                recorder.lock().events.push(Event::CutShort {
                    connection,
                    bytes: std::mem::take(&mut buf),
                });
            }
            set_pending(&mut was_pending, false);
            return;
        }
        recorder.lock().raw[connection].extend_from_slice(&chunk[..read]);
        buf.extend_from_slice(&chunk[..read]);
        loop {
            match strict::read_request(&buf) {
                strict::Read::Incomplete => break,
                strict::Read::Invalid(reason) => {
                    recorder.lock().events.push(Event::Unreadable {
                        connection,
                        reason,
                        bytes: std::mem::take(&mut buf),
                    });
                    set_pending(&mut was_pending, false);
                    let body = b"unreadable\n";
                    let answer = format!(
                        "HTTP/1.1 400 Bad Request\r\ncontent-length: {}\r\n{RECORDED_HEADER}: {UNREADABLE}\r\nconnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = stream.write_all(answer.as_bytes()).await;
                    let _ = stream.write_all(body).await;
                    let _ = stream.shutdown().await;
                    return;
                }
                strict::Read::Request(request, len) => {
                    buf.drain(..len);
                    let (serial, answer) = {
                        let mut state = recorder.lock();
                        state.serial += 1;
                        let serial = state.serial;
                        state.events.push(Event::Request {
                            connection,
                            serial,
                            request: request.clone(),
                        });
                        (serial, state.answer.clone())
                    };
                    match answer {
                        Answer::Recorded => {
                            let body = format!("{}\n", request.target);
                            let head = format!(
                                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n{RECORDED_HEADER}: {serial} {}\r\n\r\n",
                                body.len(),
                                request.target
                            );
                            let mut out = head.into_bytes();
                            if request.method != "HEAD" {
                                out.extend_from_slice(body.as_bytes());
                            }
                            if stream.write_all(&out).await.is_err() {
                                set_pending(&mut was_pending, false);
                                return;
                            }
                        }
                        Answer::Raw { bytes, close } => {
                            let written = stream.write_all(&bytes).await;
                            if close || written.is_err() {
                                let _ = stream.shutdown().await;
                                set_pending(&mut was_pending, false);
                                return;
                            }
                        }
                        Answer::Endless(bytes) => {
                            // Bounded all the same, so that a test that fails cannot run forever.
                            for _ in 0..(64 * 1024 * 1024 / bytes.len().max(1)) {
                                if stream.write_all(&bytes).await.is_err() {
                                    break;
                                }
                            }
                            set_pending(&mut was_pending, false);
                            return;
                        }
                    }
                }
            }
        }
        set_pending(&mut was_pending, !buf.is_empty());
    }
}
