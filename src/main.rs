use std::process::ExitCode;

use clap::Parser;
use microgate::{
    cli::{Cli, Command, ControllerArgs},
    controller::{self, Scope},
    discovery::Registry,
    telemetry,
};
use tokio::signal::unix::{SignalKind, signal};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => match microgate::api::crds_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("microgate: could not serialize the CRDs: {error}");
                ExitCode::FAILURE
            }
        },
        Command::Controller(args) => run_async(controller(args)),
    }
}

fn run_async(task: impl Future<Output = Result<(), String>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("microgate: could not start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(task) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error}");
            eprintln!("microgate: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn controller(args: ControllerArgs) -> Result<(), String> {
    telemetry::init_logging(args.log.log_json);
    // As kubectl finds it: $KUBECONFIG or ~/.kube/config, else the in-cluster service account.
    let client = kube::Client::try_default()
        .await
        .map_err(|e| format!("cannot reach the Kubernetes API: {e}"))?;
    let scope = Scope {
        namespace: args.namespace,
        label_selector: args.selector,
    };
    let running = controller::start(
        client,
        scope,
        Registry::default(),
        args.admin_addr,
        shutdown_signal(),
    )
    .await
    .map_err(|e| format!("cannot serve the admin endpoints on {}: {e}", args.admin_addr))?;
    tracing::info!(admin = %running.admin_addr, "controller started");
    running.serve.await;
    tracing::info!("controller stopped");
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM (what Kubernetes sends a Pod that should stop).
async fn shutdown_signal() {
    let terminate = async {
        match signal(SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}
