//! A loopback TCP proxy that a test can cut: every open connection is dropped and new ones are
//! refused until it is restored. Put between a client and the API server, it breaks watches the
//! way a network partition would. It can also silence the open connections instead: they stay
//! open and carry nothing more, with no FIN and no reset, as when a load balancer forgets a flow
//! or packets are dropped on the way; new connections work.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinSet,
};

/// A running proxy; dropping it stops it.
pub struct CuttableProxy {
    addr: SocketAddr,
    open: Arc<AtomicBool>,
    cut: watch::Sender<u64>,
    silence: watch::Sender<u64>,
    _accept: JoinSet<()>,
}

impl CuttableProxy {
    /// Forwards a loopback port of its own to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let open = Arc::new(AtomicBool::new(true));
        let (cut, cuts) = watch::channel(0u64);
        let (silence, silences) = watch::channel(0u64);
        let mut accept = JoinSet::new();
        let accepting = open.clone();
        accept.spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                if !accepting.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let mut cuts = cuts.clone();
                let mut silences = silences.clone();
                // Only cuts and silences from now on touch this connection.
                cuts.borrow_and_update();
                silences.borrow_and_update();
                connections.spawn(async move {
                    let Ok(mut server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let mut client = client;
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cuts.changed() => {}
                        _ = silences.changed() => {
                            // Both sockets stay open, unread and unwritten, until a cut or the
                            // proxy's end.
                            let _ = cuts.changed().await;
                            drop((client, server));
                        }
                    }
                });
                while connections.try_join_next().is_some() {}
            }
        });
        Ok(Self {
            addr,
            open,
            cut,
            silence,
            _accept: accept,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops every connection and refuses new ones.
    pub fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
    }

    /// Stops every open connection from carrying anything more, without closing it; new
    /// connections work.
    pub fn silence(&self) {
        self.silence.send_modify(|n| *n += 1);
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}
