//! New connections per second: every connection a full handshake and one request.

use std::{
    collections::BTreeMap,
    io,
    sync::Arc,
    time::{Duration, Instant},
};

use rustls::{HandshakeKind, pki_types::ServerName};
use tokio_rustls::TlsConnector;

use crate::{
    Target,
    exchange::{self, CONNECTION_TIMEOUT, Ending, ExchangeError, Negotiated},
};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub target: Target,
    /// Connections in progress at any time (the equal of wrk's -c).
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// For how long new connections are started, in seconds.
    #[arg(long)]
    seconds: f64,
}

/// What one of the concurrent loops saw.
#[derive(Default)]
struct Tally {
    completed: u64,
    full: u64,
    full_after_retry: u64,
    resumed: u64,
    unclean_close: u64,
    failed: BTreeMap<&'static str, u64>,
    first_failure: Option<String>,
    negotiated: Option<Negotiated>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.completed += other.completed;
        self.full += other.full;
        self.full_after_retry += other.full_after_retry;
        self.resumed += other.resumed;
        self.unclean_close += other.unclean_close;
        for (label, count) in other.failed {
            *self.failed.entry(label).or_default() += count;
        }
        self.first_failure = self.first_failure.take().or(other.first_failure);
        self.negotiated = self.negotiated.take().or(other.negotiated);
    }

    fn fail(&mut self, error: ExchangeError) {
        *self.failed.entry(error.label()).or_default() += 1;
        self.first_failure.get_or_insert_with(|| error.to_string());
    }
}

pub async fn run(args: Args, connector: TlsConnector) -> io::Result<()> {
    let server_name = ServerName::try_from(args.target.server_name.clone()).map_err(io::Error::other)?;
    let context = Arc::new((connector, server_name, args.target.server_name.clone()));
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.seconds);
    let loops: Vec<_> = (0..args.connections)
        .map(|_| tokio::spawn(one_loop(context.clone(), args.target.address, deadline)))
        .collect();
    let mut total = Tally::default();
    for handle in loops {
        total.merge(handle.await.map_err(io::Error::other)?);
    }
    let seconds = started.elapsed().as_secs_f64();
    let negotiated = total.negotiated.unwrap_or(Negotiated {
        kind: None,
        cipher: None,
        group: None,
        alpn: None,
    });
    let line = serde_json::json!({
        "completed": total.completed,
        "seconds": seconds,
        "rate": total.completed as f64 / seconds,
        "full_handshakes": total.full,
        "full_handshakes_after_retry": total.full_after_retry,
        "resumed": total.resumed,
        "closed_without_close_notify": total.unclean_close,
        "failed": total.failed,
        "first_failure": total.first_failure,
        "cipher": negotiated.cipher,
        "group": negotiated.group,
        "alpn": negotiated.alpn,
    });
    println!("{line}");
    Ok(())
}

async fn one_loop(
    context: Arc<(TlsConnector, ServerName<'static>, String)>,
    address: std::net::SocketAddr,
    deadline: Instant,
) -> Tally {
    let (connector, server_name, host) = &*context;
    let mut tally = Tally::default();
    while Instant::now() < deadline {
        let exchange = async {
            let (mut stream, negotiated) = exchange::open(connector, address, server_name).await?;
            let ending = exchange::request(&mut stream, host, true).await?;
            Ok::<_, ExchangeError>((negotiated, ending))
        };
        match tokio::time::timeout(CONNECTION_TIMEOUT, exchange).await {
            Ok(Ok((negotiated, ending))) => {
                tally.completed += 1;
                match negotiated.kind {
                    Some(HandshakeKind::Full) => tally.full += 1,
                    Some(HandshakeKind::FullWithHelloRetryRequest) => tally.full_after_retry += 1,
                    Some(HandshakeKind::Resumed) => tally.resumed += 1,
                    None => {}
                }
                if ending == Some(Ending::Unclean) {
                    tally.unclean_close += 1;
                }
                tally.negotiated.get_or_insert(negotiated);
            }
            Ok(Err(error)) => {
                tally.fail(error);
                // A refusing server must not turn the loop into a busy spin.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err(_) => tally.fail(ExchangeError::Timeout(CONNECTION_TIMEOUT)),
        }
    }
    tally
}
