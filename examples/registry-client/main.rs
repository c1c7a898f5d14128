//! registry-client: balances requests over a Microservice's endpoints by itself, from the live
//! registry of a microgate gateway (as a gRPC client or a batch job might), without sending
//! them through the gateway.
//!
//! ```text
//! cargo run --example registry-client -- --admin 127.0.0.1:9090 --service shop/orders \
//!     --requests 20 --path /api/orders [--token-file FILE]
//! ```
//! It follows `GET /registry` with blocking queries (see `follow.rs`), sends each request to
//! the next ready endpoint in turn, and prints which Pod answered.

mod follow;

use std::{collections::BTreeMap, net::SocketAddr, process::ExitCode, time::Duration};

use bytes::Bytes;
use clap::Parser;
use http_body_util::Empty;
use hyper::{Request, header};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpStream, sync::watch};

#[derive(Parser)]
struct Args {
    /// The gateway's admin address.
    #[arg(long, default_value = "127.0.0.1:9090")]
    admin: SocketAddr,
    /// The Microservice, as namespace/name.
    #[arg(long)]
    service: String,
    /// How many requests to send.
    #[arg(long, default_value_t = 20)]
    requests: usize,
    /// The path each request asks for.
    #[arg(long, default_value = "/")]
    path: String,
    /// A file with the admin port's bearer token (needed from outside the gateway's loopback).
    #[arg(long)]
    token_file: Option<std::path::PathBuf>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    let Some((namespace, name)) = args.service.split_once('/') else {
        eprintln!("registry-client: --service must be namespace/name");
        return ExitCode::FAILURE;
    };
    let token = match &args.token_file {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(token) => Some(token.trim().to_owned()),
            Err(error) => {
                eprintln!("registry-client: cannot read {}: {error}", path.display());
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    let source = follow::Source {
        admin: args.admin,
        token,
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    };
    let (publish, endpoints) = watch::channel(follow::Endpoints::default());
    tokio::spawn(follow::follow(source, publish));
    let mut balancer = follow::RoundRobin::new(endpoints);
    while balancer.pick().is_none() {
        if !balancer.changed().await {
            return ExitCode::FAILURE;
        }
    }
    let endpoints = balancer.endpoints();
    println!(
        "registry version {}: {} usable endpoints of {}: {:?}",
        endpoints.version,
        endpoints.usable.len(),
        args.service,
        endpoints.usable
    );
    let mut answered: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..args.requests {
        let Some(endpoint) = balancer.pick() else {
            eprintln!("registry-client: no usable endpoint left");
            return ExitCode::FAILURE;
        };
        let who = match send(endpoint, &args.path).await {
            Ok((status, pod)) => format!("{status} from {pod} ({endpoint})"),
            Err(error) => format!("failed at {endpoint}: {error}"),
        };
        *answered.entry(who).or_default() += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for (who, count) in answered {
        println!("  {count:4} × {who}");
    }
    ExitCode::SUCCESS
}

/// One GET straight to an endpoint: its status and the Pod that says it answered.
async fn send(endpoint: SocketAddr, path: &str) -> Result<(u16, String), Box<dyn std::error::Error>> {
    let stream = TcpStream::connect(endpoint).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let connection = tokio::spawn(connection);
    let request = Request::get(path)
        .header(header::HOST, endpoint.to_string())
        .body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await?;
    connection.abort();
    let pod = response
        .headers()
        .get("x-pod-name")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("?")
        .to_owned();
    Ok((response.status().as_u16(), pod))
}
