//! Plays kubelet for the local cluster outside `cargo test` (the demo and `make conformance` use
//! it): binds Pods to the fake Node, starts a real HTTP backend on each Pod's IP and container
//! ports (echo-basic's emulation for the Gateway API suite's Pods), and reports the Pods Running
//! and Ready; with `--serve-logs`, `kubectl logs` reads their logs from it. Stops on Ctrl-C or
//! SIGTERM, taking its backends down with it.

use clap::Parser;
use microgate_test_support::{
    cluster,
    kubelet::{Kubelet, KubeletConfig},
    pod_ips::POD_CIDR_ENV,
};
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::EnvFilter;

/// A fake kubelet for the local control plane of microgate's tests and demo.
#[derive(Debug, Parser)]
#[command(version, about, after_help = format!(
    "Pod IPs come from ${POD_CIDR_ENV} (default 127.0.0.0/8). The cluster is started if it is not running."
))]
struct Args {
    /// Only play kubelet for Pods in this namespace (default: all namespaces).
    #[arg(long, short)]
    namespace: Option<String>,
    /// Serve the Pods' logs at the Node's address (the API server's `pods/log` reads them).
    #[arg(long)]
    serve_logs: bool,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .init();
    let client = cluster::client().await?;
    let kubelet = Kubelet::start(
        client,
        KubeletConfig {
            namespace: args.namespace.clone(),
            serve_logs: args.serve_logs,
        },
    )
    .await?;
    tracing::info!(
        namespace = args.namespace.as_deref().unwrap_or("<all>"),
        "playing kubelet"
    );

    let mut terminate = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    kubelet.stop().await;
    Ok(())
}
