//! The TLS load generator of `make bench`.
//!
//! wrk and h2load keep the session of a connection and resume it on the next one, so with
//! `Connection: close` most of their connections skip the certificate and the signature: they
//! measure resumption, not new clients. This client never resumes (and says, per run, how many
//! handshakes the server completed in full), and it can hold a hundred thousand idle connections
//! open (TLS or plain, HTTP/1.1 or HTTP/2, from many source addresses) for the memory measurement.

mod connect;
mod exchange;
mod hold;
mod tls;

use clap::Parser;

#[derive(Parser)]
#[command(about = "TLS load for make bench: new connections per second, and idle connections held open")]
enum Command {
    /// Connections in a loop for a while: each makes a full TLS 1.3 handshake, sends one request
    /// with `Connection: close`, reads the answer to the end and closes. Prints one JSON line.
    Connect(connect::Args),
    /// Opens connections (TLS or plain, HTTP/1.1 or HTTP/2), one request each, and keeps them open
    /// and idle: prints one JSON line when all are open, then waits for a line on stdin, checks
    /// how many the server has kept and prints a second line.
    Hold(hold::Args),
}

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("runtime: {0}")]
    Runtime(#[from] std::io::Error),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

fn main() -> std::process::ExitCode {
    match run(Command::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tls-client: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<(), Error> {
    let threads = match &command {
        Command::Connect(args) => args.target.threads,
        Command::Hold(args) => args.target.threads,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?;
    let alpn: &[u8] = match &command {
        Command::Hold(args) if args.h2() => b"h2",
        _ => b"http/1.1",
    };
    let connector = tls::connector(alpn)?;
    runtime.block_on(async move {
        match command {
            Command::Connect(args) => connect::run(args, connector).await,
            Command::Hold(args) => hold::run(args, connector).await,
        }
    })?;
    Ok(())
}

/// Where to connect, shared by both commands.
#[derive(clap::Args)]
struct Target {
    /// The server's address, e.g. 127.0.0.1:8443.
    #[arg(long)]
    address: std::net::SocketAddr,
    /// The name sent as SNI and as Host.
    #[arg(long, default_value = "bench.microgate.test")]
    server_name: String,
    /// Runtime threads (the equal of wrk's -t).
    #[arg(long, default_value_t = 2)]
    threads: usize,
}
