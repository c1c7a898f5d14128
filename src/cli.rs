//! The command line: `microgate --help` lists what the binary can do.

use std::net::SocketAddr;

use clap::{Args, Parser, Subcommand};

/// A Kubernetes operator and built-in L7 gateway for microservices.
///
/// microgate reconciles `Microservice` resources into Deployments and Services, discovers their
/// ready endpoints by watching Pods, and balances HTTP traffic over them as `Gateway` resources
/// declare.
#[derive(Debug, Parser)]
#[command(name = "microgate", version, about, long_about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the CustomResourceDefinitions of Microservice and Gateway as YAML.
    ///
    /// `microgate crd | kubectl apply -f -` installs them.
    Crd,
    /// Run the operator: reconcile Microservices into Deployments and Services.
    Controller(ControllerArgs),
    /// Run the gateway alone: it watches Gateways, Microservices and Pods itself.
    Gateway(GatewayArgs),
    /// Run the operator and the gateway in one process, sharing one endpoint registry.
    Run(RunArgs),
}

/// Options of `microgate gateway`.
#[derive(Debug, Args)]
pub struct GatewayArgs {
    /// Serve only this namespace's Gateways (default: all namespaces).
    #[arg(long, short, env = "MICROGATE_NAMESPACE")]
    pub namespace: Option<String>,
    /// The address the Gateways' listeners bind (their ports come from the Gateway resources).
    #[arg(long, env = "MICROGATE_LISTEN_ADDRESS", default_value = "0.0.0.0")]
    pub listen_address: std::net::IpAddr,
    /// Log one line per request (target microgate::access; JSON with --log-json).
    #[arg(long, env = "MICROGATE_ACCESS_LOG")]
    pub access_log: bool,
    /// Where /metrics, /healthz and /readyz are served.
    #[arg(long, env = "MICROGATE_ADMIN_ADDR", default_value = "0.0.0.0:9090")]
    pub admin_addr: SocketAddr,
    #[command(flatten)]
    pub log: LogArgs,
}

/// Options of `microgate run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub controller: ControllerArgs,
    /// The address the Gateways' listeners bind (their ports come from the Gateway resources).
    #[arg(long, env = "MICROGATE_LISTEN_ADDRESS", default_value = "0.0.0.0")]
    pub listen_address: std::net::IpAddr,
    /// Log one line per request (target microgate::access; JSON with --log-json).
    #[arg(long, env = "MICROGATE_ACCESS_LOG")]
    pub access_log: bool,
}

/// Options of `microgate controller`.
#[derive(Debug, Args)]
pub struct ControllerArgs {
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, short, env = "MICROGATE_NAMESPACE")]
    pub namespace: Option<String>,
    /// Reconcile only Microservices whose labels match this selector (e.g. `shard=a`).
    #[arg(long, short = 'l', env = "MICROGATE_SELECTOR")]
    pub selector: Option<String>,
    /// Where /metrics, /healthz and /readyz are served.
    #[arg(long, env = "MICROGATE_ADMIN_ADDR", default_value = "0.0.0.0:9090")]
    pub admin_addr: SocketAddr,
    #[command(flatten)]
    pub log: LogArgs,
}

/// Logging options shared by the long-running subcommands.
#[derive(Debug, Args)]
pub struct LogArgs {
    /// Log as JSON lines (for log collectors) instead of text. Levels come from RUST_LOG.
    #[arg(long, env = "MICROGATE_LOG_JSON")]
    pub log_json: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn version_flag_reports_the_crate_version() {
        let err = Cli::try_parse_from(["microgate", "--version"]).expect_err("--version exits early");
        assert_eq!(err.kind(), clap::error::ErrorKind::DisplayVersion);
        assert_eq!(
            err.to_string().trim(),
            format!("microgate {}", env!("CARGO_PKG_VERSION"))
        );
    }

    #[test]
    fn controller_defaults_to_all_namespaces_and_the_admin_port() {
        let cli = Cli::try_parse_from(["microgate", "controller"]).expect("valid arguments");
        let Command::Controller(args) = cli.command else {
            panic!("parsed {:?}", cli.command)
        };
        assert_eq!(args.namespace, None);
        assert_eq!(args.admin_addr.port(), 9090);
    }
}
