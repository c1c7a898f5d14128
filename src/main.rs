use clap::Parser;
use microgate::cli::Cli;

fn main() {
    let Cli {} = Cli::parse();
}
