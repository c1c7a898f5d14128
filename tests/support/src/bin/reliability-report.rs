//! Writes RELIABILITY.md from the figures the fault and rollout scenarios recorded under
//! `target/reliability/` (see `microgate_test_support::reliability`).
//!
//! ```text
//! reliability-report --out RELIABILITY.md
//! ```

use std::{fmt::Write as _, path::PathBuf, process::ExitCode};

use clap::Parser;
use microgate_test_support::reliability::results_dir;
use serde_json::Value;

#[derive(Parser)]
#[command(about = "Assembles the recorded fault and rollout figures into a markdown report")]
struct Args {
    /// The markdown report to write.
    #[arg(long)]
    out: PathBuf,
}

struct Row {
    scenario: String,
    description: String,
    target: String,
    measured: String,
    met: bool,
    recorded: String,
}

fn field(value: &Value, name: &str) -> String {
    value.get(name).and_then(Value::as_str).unwrap_or("").to_owned()
}

fn read_rows() -> Result<Vec<Row>, String> {
    let dir = results_dir();
    let entries = std::fs::read_dir(&dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    let mut rows = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|e| format!("cannot list {}: {e}", dir.display()))?
            .path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let value: Value =
            serde_json::from_str(&text).map_err(|e| format!("{} is not JSON: {e}", path.display()))?;
        rows.push(Row {
            scenario: field(&value, "scenario"),
            description: field(&value, "description"),
            target: field(&value, "target"),
            measured: field(&value, "measured"),
            met: value.get("met").and_then(Value::as_bool).unwrap_or(false),
            recorded: field(&value, "recorded"),
        });
    }
    rows.sort_by(|a, b| a.scenario.cmp(&b.scenario));
    Ok(rows)
}

fn render(rows: &[Row]) -> String {
    let mut out = String::new();
    out.push_str("# Reliability\n\n");
    out.push_str(
        "What microgate costs its clients while things change or break. Each row is an automated \
         test on a real control plane with real sockets; the figure is the one its last run \
         recorded (`make test` runs the scenarios under a minute, `make reliability` all of them \
         and rewrites this file). Nothing here is typed by hand.\n\n",
    );
    out.push_str("| scenario | what happens | target | measured | met | run |\n|---|---|---|---|---|---|\n");
    for row in rows {
        let _ = writeln!(
            out,
            "| `{}` | {} | {} | {} | {} | {} |",
            row.scenario,
            row.description,
            row.target,
            row.measured,
            if row.met { "yes" } else { "**no**" },
            row.recorded
        );
    }
    out
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rows = match read_rows() {
        Ok(rows) => rows,
        Err(message) => {
            eprintln!("reliability-report: {message}");
            return ExitCode::FAILURE;
        }
    };
    if rows.is_empty() {
        eprintln!(
            "reliability-report: no scenario recorded a figure under {}",
            results_dir().display()
        );
        return ExitCode::FAILURE;
    }
    if let Err(error) = std::fs::write(&args.out, render(&rows)) {
        eprintln!("reliability-report: cannot write {}: {error}", args.out.display());
        return ExitCode::FAILURE;
    }
    let missed = rows.iter().filter(|row| !row.met).count();
    println!(
        "reliability-report: {} scenarios, {missed} targets missed, written to {}",
        rows.len(),
        args.out.display()
    );
    ExitCode::SUCCESS
}
