//! Idle connections held open: what each costs a server in memory.

use std::{
    collections::BTreeMap,
    io,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::StreamExt;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncBufReadExt, AsyncReadExt};
use tokio_rustls::TlsConnector;

use crate::{
    Target,
    exchange::{self, CONNECTION_TIMEOUT, ExchangeError, Stream},
};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub target: Target,
    /// Connections to open and hold.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Connections being opened at any time.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
}

/// How long the check waits for a held connection to say it has been closed.
const CHECK_WAIT: Duration = Duration::from_millis(500);

pub async fn run(args: Args, connector: TlsConnector) -> io::Result<()> {
    let server_name = ServerName::try_from(args.target.server_name.clone()).map_err(io::Error::other)?;
    let context = Arc::new((connector, server_name, args.target.server_name.clone()));
    let address = args.target.address;
    let started = Instant::now();
    let opened: Vec<_> = futures::stream::iter(0..args.connections)
        .map(|_| tokio::spawn(open_one(context.clone(), address)))
        .buffer_unordered(args.concurrency.max(1))
        .collect()
        .await;
    let mut streams = Vec::with_capacity(opened.len());
    let mut failed: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut first_failure = None;
    for result in opened {
        match result.map_err(io::Error::other)? {
            Ok(stream) => streams.push(stream),
            Err(error) => {
                *failed.entry(error.label()).or_default() += 1;
                first_failure.get_or_insert_with(|| error.to_string());
            }
        }
    }
    let line = serde_json::json!({
        "open": streams.len(),
        "seconds": started.elapsed().as_secs_f64(),
        "failed": failed,
        "first_failure": first_failure,
    });
    println!("{line}");

    // The caller measures the server now, then asks how many connections it kept.
    let mut go = String::new();
    tokio::io::BufReader::new(tokio::io::stdin())
        .read_line(&mut go)
        .await?;
    let open = futures::future::join_all(streams.iter_mut().map(still_open)).await;
    let kept = open.iter().filter(|open| **open).count();
    let line = serde_json::json!({"still_open": kept, "closed": streams.len() - kept});
    println!("{line}");
    Ok(())
}

async fn open_one(
    context: Arc<(TlsConnector, ServerName<'static>, String)>,
    address: std::net::SocketAddr,
) -> Result<Stream, ExchangeError> {
    let (connector, server_name, host) = &*context;
    let exchange = async {
        let (mut stream, _) = exchange::open(connector, address, server_name).await?;
        exchange::request(&mut stream, host, false).await?;
        Ok(stream)
    };
    tokio::time::timeout(CONNECTION_TIMEOUT, exchange)
        .await
        .unwrap_or(Err(ExchangeError::Timeout(CONNECTION_TIMEOUT)))
}

/// Whether the server still holds the connection: nothing to read within a moment means open;
/// an end or an error means the server closed it.
async fn still_open(stream: &mut Stream) -> bool {
    let mut buffer = [0u8; 256];
    match tokio::time::timeout(CHECK_WAIT, stream.read(&mut buffer)).await {
        Err(_) => true,
        Ok(Ok(n)) => n > 0,
        Ok(Err(_)) => false,
    }
}
