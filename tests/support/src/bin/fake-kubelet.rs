//! Plays kubelet for the local cluster outside `cargo test` (the demo uses it): binds Pods to the
//! fake Node, starts a real HTTP backend on each Pod's IP and container ports, and reports the
//! Pods Running and Ready. Stops on Ctrl-C or SIGTERM, taking its backends down with it.

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
