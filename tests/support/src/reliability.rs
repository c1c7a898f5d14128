//! Figures of the fault and rollout scenarios, kept for the reliability report.
//!
//! A scenario test measures, asserts its target, and records what it measured with [`record`]
//! before asserting, so a missed target still leaves its figure behind. Each scenario owns one
//! file under `target/reliability/`, overwritten by its latest run; `reliability-report`
//! assembles them into RELIABILITY.md, so the report always shows the last run of each
//! scenario and never a figure typed by hand.

use std::path::PathBuf;

use serde_json::json;

use crate::cluster::repo_root;

/// Where the scenarios' figures are kept between a run and its report.
pub fn results_dir() -> PathBuf {
    repo_root().join("target/reliability")
}

/// One scenario's outcome.
#[derive(Debug, Clone)]
pub struct Outcome<'a> {
    /// A stable identifier, also the file name: `backend-killed-get`.
    pub scenario: &'a str,
    /// What the scenario does, in one line for the report.
    pub description: &'a str,
    /// The target, as the report should state it: `0 failed of ≥ 30 000 GETs`.
    pub target: &'a str,
    /// What this run measured: `0 failed of 31 250 (retries 12, ejections 1)`.
    pub measured: String,
    /// Whether the measured figure meets the target.
    pub met: bool,
}

/// Writes `outcome` for the report. Failing to write is a test failure: a run whose figures
/// are lost would leave a stale report behind.
pub fn record(outcome: &Outcome<'_>) {
    let dir = results_dir();
    if let Err(error) = std::fs::create_dir_all(&dir) {
        panic!("cannot create {}: {error}", dir.display());
    }
    let body = json!({
        "scenario": outcome.scenario,
        "description": outcome.description,
        "target": outcome.target,
        "measured": outcome.measured,
        "met": outcome.met,
        "recorded": httpdate::fmt_http_date(std::time::SystemTime::now()),
    });
    let path = dir.join(format!("{}.json", outcome.scenario));
    if let Err(error) = std::fs::write(&path, format!("{body:#}\n")) {
        panic!("cannot write {}: {error}", path.display());
    }
}
