use std::process::ExitCode;

use clap::Parser;
use microgate::cli::{Cli, Command};

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
        Command::Controller(_args) => ExitCode::FAILURE,
    }
}
