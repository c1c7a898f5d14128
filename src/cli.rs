//! The command line: `microgate --help` lists what the binary can do.
//!
//! Subcommands (`crd`, `controller`, `gateway`, `run`) join as they are implemented.

use clap::Parser;

/// A Kubernetes operator and built-in L7 gateway for microservices.
///
/// microgate reconciles `Microservice` resources into Deployments and Services, discovers their
/// ready endpoints by watching Pods, and balances HTTP traffic over them as `Gateway` resources
/// declare.
#[derive(Debug, Parser)]
#[command(name = "microgate", version, about, long_about, arg_required_else_help = true)]
pub struct Cli {}

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
}
