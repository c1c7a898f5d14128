//! `make hostile`: runs the hostile-input corpus through several proxies (microgate, nginx,
//! HAProxy), all in front of one recording backend that this tool serves, and writes the
//! side-by-side verdict table (markdown).
//!
//! ```text
//! hostile-report --backend 127.0.0.9:18480 --proxy microgate=127.0.0.1:18481 \
//!   --proxy nginx=127.0.0.1:18482 --proxy haproxy=127.0.0.1:18483 --out target/hostile/report.md
//! ```

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use clap::Parser;
use microgate_test_support::hostile::{
    self, Case, Outcome, RunningRecorder, Verdict,
    client::converse,
    corpus::{self, Expect},
    parse_proxy,
};

#[derive(Parser)]
#[command(about = "Runs the hostile-input corpus through proxies to a recording backend")]
struct Args {
    /// Where the recording backend listens (the proxies' upstream).
    #[arg(long)]
    backend: SocketAddr,
    /// A proxy to run the corpus through, as NAME=ADDRESS; in the table's column order.
    #[arg(long = "proxy", value_parser = parse_proxy, required = true)]
    proxies: Vec<(String, SocketAddr)>,
    /// Free text about each proxy (its version), as NAME=TEXT.
    #[arg(long = "about")]
    about: Vec<String>,
    /// The markdown report to write.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Debug, thiserror::Error)]
enum ReportError {
    #[error(transparent)]
    Corpus(#[from] corpus::CorpusError),
    #[error("cannot serve the recording backend on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{name} at {addr} did not pass a request to the recording backend within 60 s")]
    NotReady { name: String, addr: SocketAddr },
    #[error("{name} at {addr}: {source}")]
    Connect {
        name: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

#[tokio::main]
async fn main() -> Result<(), ReportError> {
    let args = Args::parse();
    let cases = corpus::cases()?;
    let recorder = RunningRecorder::bind(args.backend)
        .await
        .map_err(|source| ReportError::Bind {
            addr: args.backend,
            source,
        })?;
    let recorder = recorder.handle().clone();
    for (name, addr) in &args.proxies {
        wait_ready(name, *addr).await?;
    }
    let mut results: Vec<Vec<Outcome>> = Vec::new();
    for (name, addr) in &args.proxies {
        let started = Instant::now();
        let mut outcomes = Vec::with_capacity(cases.len());
        for (index, case) in cases.iter().enumerate() {
            let outcome = hostile::run_case(*addr, &recorder, index, case)
                .await
                .map_err(|source| ReportError::Connect {
                    name: name.clone(),
                    addr: *addr,
                    source,
                })?;
            outcomes.push(outcome);
        }
        let lenient = outcomes.iter().filter(|o| o.verdict.is_lenient()).count();
        eprintln!(
            "hostile: {name}: {} cases in {:.0?}, {lenient} lenient",
            cases.len(),
            started.elapsed()
        );
        results.push(outcomes);
    }
    let names: Vec<&str> = args.proxies.iter().map(|(n, _)| n.as_str()).collect();
    let report = render(&cases, &names, &results, &args.about);
    if let Some(parent) = args.out.parent() {
        std::fs::create_dir_all(parent).map_err(|source| ReportError::Write {
            path: args.out.clone(),
            source,
        })?;
    }
    std::fs::write(&args.out, &report).map_err(|source| ReportError::Write {
        path: args.out.clone(),
        source,
    })?;
    println!("{}", summary(&cases, &names, &results));
    eprintln!("hostile: wrote {}", args.out.display());
    Ok(())
}

/// Waits until a request through the proxy comes back from the recording backend.
async fn wait_ready(name: &str, addr: SocketAddr) -> Result<(), ReportError> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let probe = b"GET /__ready HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n";
    loop {
        if let Ok(talk) = converse(addr, probe, Duration::from_secs(2), |a| !a.is_empty()).await
            && talk.answers.iter().any(|a| a.recorded.is_some())
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(ReportError::NotReady {
                name: name.to_owned(),
                addr,
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn counts(outcomes: &[Outcome]) -> BTreeMap<Verdict, usize> {
    let mut counts = BTreeMap::new();
    for outcome in outcomes {
        *counts.entry(outcome.verdict).or_default() += 1;
    }
    counts
}

/// The per-proxy totals, for the terminal.
fn summary(cases: &[Case], names: &[&str], results: &[Vec<Outcome>]) -> String {
    let mut out = format!("{} cases\n", cases.len());
    for (name, outcomes) in names.iter().zip(results) {
        let counts = counts(outcomes);
        let lenient: usize = counts
            .iter()
            .filter(|(v, _)| v.is_lenient())
            .map(|(_, n)| n)
            .sum();
        let line: Vec<String> = Verdict::ALL
            .iter()
            .map(|v| format!("{v} {}", counts.get(v).copied().unwrap_or(0)))
            .collect();
        let _ = writeln!(out, "{name}: {} — lenient {lenient}", line.join(", "));
    }
    out
}

fn render(cases: &[Case], names: &[&str], results: &[Vec<Outcome>], about: &[String]) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Hostile HTTP/1.1 requests: verdicts side by side\n");
    let _ = writeln!(
        md,
        "Written by `make hostile` from the {} cases of `tests/hostile/requests.corpus`, each sent raw \
         (followed by a canary request on the same connection) through each proxy to one strict recording \
         backend. Verdicts: **refused** (an error of the proxy's own, nothing of the message forwarded), \
         **clean** (forwarded as strictly readable requests, exactly those sent), **leaked** (a header that \
         must be dropped reached the backend), **guessed** (the backend could not read what was forwarded, \
         or the proxy forwarded a message a strict server refuses, or took another framing), **desync** \
         (the proxy and the backend, or the client, disagree where a message ended). Leaked, guessed and \
         desync are the lenient verdicts.\n",
        cases.len()
    );
    for line in about {
        let _ = writeln!(md, "- {line}");
    }
    if !about.is_empty() {
        md.push('\n');
    }
    let _ = writeln!(md, "## Counts\n");
    let _ = write!(md, "| proxy |");
    for v in Verdict::ALL {
        let _ = write!(md, " {v} |");
    }
    let _ = writeln!(md, " lenient | as expected |");
    let _ = writeln!(md, "|---|{}---:|---:|", "---:|".repeat(Verdict::ALL.len()));
    for (name, outcomes) in names.iter().zip(results) {
        let counts = counts(outcomes);
        let _ = write!(md, "| {name} |");
        for v in Verdict::ALL {
            let _ = write!(md, " {} |", counts.get(&v).copied().unwrap_or(0));
        }
        let lenient: usize = counts
            .iter()
            .filter(|(v, _)| v.is_lenient())
            .map(|(_, n)| n)
            .sum();
        let met = cases
            .iter()
            .zip(outcomes)
            .filter(|(c, o)| o.verdict.meets(c.expect))
            .count();
        let _ = writeln!(md, " {lenient} | {met} |");
    }

    let _ = writeln!(md, "\n## Verdicts per class\n");
    let mut classes: Vec<&str> = Vec::new();
    for case in cases {
        if !classes.contains(&case.class.as_str()) {
            classes.push(&case.class);
        }
    }
    let _ = writeln!(md, "| class | cases | {} |", names.join(" | "));
    let _ = writeln!(md, "|---|---:|{}", "---|".repeat(names.len()));
    for class in &classes {
        let in_class: Vec<usize> = (0..cases.len()).filter(|i| cases[*i].class == *class).collect();
        let _ = write!(md, "| {class} | {} |", in_class.len());
        for outcomes in results {
            let mut per: BTreeMap<Verdict, usize> = BTreeMap::new();
            for i in &in_class {
                *per.entry(outcomes[*i].verdict).or_default() += 1;
            }
            let cell: Vec<String> = per.iter().map(|(v, n)| format!("{v} {n}")).collect();
            let _ = write!(md, " {} |", cell.join(", "));
        }
        md.push('\n');
    }

    let _ = writeln!(md, "\n## Every case\n");
    let _ = writeln!(md, "| case | class | expect | {} |", names.join(" | "));
    let _ = writeln!(md, "|---|---|---|{}", "---|".repeat(names.len()));
    for (i, case) in cases.iter().enumerate() {
        let _ = write!(md, "| `{}` | {} | {} |", case.id, case.class, case.expect);
        for outcomes in results {
            let v = outcomes[i].verdict;
            let mark = if v.is_lenient() {
                format!("**{v}**")
            } else if !v.meets(case.expect) && case.expect != Expect::Either {
                format!("{v} (≠)")
            } else {
                v.to_string()
            };
            let _ = write!(md, " {mark} |");
        }
        md.push('\n');
    }

    let _ = writeln!(md, "\n## Why each lenient verdict\n");
    for (name, outcomes) in names.iter().zip(results) {
        let lenient: Vec<(usize, &Outcome)> = outcomes
            .iter()
            .enumerate()
            .filter(|(_, o)| o.verdict.is_lenient())
            .collect();
        let _ = writeln!(md, "### {name} ({})\n", lenient.len());
        for (i, outcome) in lenient {
            let _ = writeln!(
                md,
                "- `{}` ({}): {}: {}",
                cases[i].id,
                cases[i].class,
                outcome.verdict,
                outcome.detail.replace('|', "\\|")
            );
        }
        md.push('\n');
    }
    md
}
