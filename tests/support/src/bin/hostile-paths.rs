//! `make hostile`, paths: runs the hostile path corpus through proxies that each route an exact
//! `/admin` to one backend and everything else to another (each by its own matching: microgate's
//! routes, nginx's `location = /admin`), and writes a side-by-side table of where each path went
//! and what the backend received (markdown).
//!
//! ```text
//! hostile-paths --admin 127.0.0.10:18480 --other 127.0.0.11:18480 \
//!   --proxy microgate=127.0.0.1:18485 --proxy nginx=127.0.0.1:18486 --out target/hostile/paths.md
//! ```

use std::{fmt::Write as _, net::SocketAddr, path::PathBuf, time::Duration};

use clap::Parser;
use microgate_test_support::{
    backend::{POD_NAME_HEADER, RunningBackend, SEEN_PATH_HEADER},
    hostile::{
        parse_proxy,
        paths::{PATHS, PathVerdict, expand, get_raw},
    },
};
use tokio::net::TcpListener;

/// The pod names the two backends answer with.
const ADMIN: &str = "admin-paths";
const OTHER: &str = "other-paths";

#[derive(Parser)]
#[command(about = "Runs the hostile path corpus through proxies routing /admin and the rest apart")]
struct Args {
    /// Where the backend of the exact `/admin` route listens.
    #[arg(long)]
    admin: SocketAddr,
    /// Where the backend of every other path listens.
    #[arg(long)]
    other: SocketAddr,
    /// A proxy to run the corpus through, as NAME=ADDRESS; in the table's column order.
    #[arg(long = "proxy", value_parser = parse_proxy, required = true)]
    proxies: Vec<(String, SocketAddr)>,
    /// The markdown report to write.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Debug, thiserror::Error)]
enum PathsError {
    #[error("cannot serve a backend on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{name} at {addr} did not route /admin to its backend within 60 s")]
    NotReady { name: String, addr: SocketAddr },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// One answer: its status, which backend gave it (if one did), and the path that backend got.
struct Answer {
    status: u16,
    admin: Option<bool>,
    seen: String,
}

#[tokio::main]
async fn main() -> Result<(), PathsError> {
    let args = Args::parse();
    let mut backends = Vec::new();
    for (addr, pod) in [(args.admin, ADMIN), (args.other, OTHER)] {
        let bind = |source| PathsError::Bind { addr, source };
        let listener = TcpListener::bind(addr).await.map_err(bind)?;
        backends.push(RunningBackend::serve(listener, pod).map_err(bind)?);
    }
    for (name, addr) in &args.proxies {
        wait_ready(name, *addr).await?;
    }
    let mut verdicts: Vec<Vec<(PathVerdict, String)>> = Vec::new();
    for (name, addr) in &args.proxies {
        let mut column = Vec::with_capacity(PATHS.len());
        for path in PATHS {
            let target = expand(path);
            let answer = get(*addr, &target).await;
            let verdict = PathVerdict::judge(&target, answer.status, answer.admin, &answer.seen);
            column.push((verdict, answer.seen));
        }
        let bypasses = column
            .iter()
            .filter(|(v, _)| *v == PathVerdict::OtherAsAdmin)
            .count();
        eprintln!(
            "hostile paths: {name}: {} paths, {bypasses} reached the other service as /admin",
            PATHS.len()
        );
        verdicts.push(column);
    }
    let names: Vec<&str> = args.proxies.iter().map(|(n, _)| n.as_str()).collect();
    let report = render(&names, &verdicts);
    if let Some(parent) = args.out.parent() {
        std::fs::create_dir_all(parent).map_err(|source| PathsError::Write {
            path: args.out.clone(),
            source,
        })?;
    }
    std::fs::write(&args.out, &report).map_err(|source| PathsError::Write {
        path: args.out.clone(),
        source,
    })?;
    eprintln!("hostile paths: wrote {}", args.out.display());
    drop(backends);
    Ok(())
}

/// Where `GET target` went through the proxy at `addr`.
async fn get(addr: SocketAddr, target: &str) -> Answer {
    match get_raw(addr, target).await {
        Ok(answer) => Answer {
            status: answer.status,
            admin: answer.headers.get(POD_NAME_HEADER).map(|pod| pod == ADMIN),
            seen: answer.headers.get(SEEN_PATH_HEADER).cloned().unwrap_or_default(),
        },
        Err(_) => Answer {
            status: 0,
            admin: None,
            seen: String::new(),
        },
    }
}

async fn wait_ready(name: &str, addr: SocketAddr) -> Result<(), PathsError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if get(addr, "/admin").await.admin == Some(true) {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(PathsError::NotReady {
                name: name.to_owned(),
                addr,
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

const ORDER: [PathVerdict; 7] = [
    PathVerdict::Refused,
    PathVerdict::Redirected,
    PathVerdict::AdminNormalized,
    PathVerdict::AdminRaw,
    PathVerdict::OtherNotAdmin,
    PathVerdict::OtherAsAdmin,
    PathVerdict::Unexpected,
];

fn render(names: &[&str], verdicts: &[Vec<(PathVerdict, String)>]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## Hostile paths: an exact `/admin` route and a catch-all, {} paths\n",
        PATHS.len()
    );
    let _ = writeln!(
        out,
        "\"other, AS ADMIN\": the catch-all's backend received a path that a lenient server (one \
         that decodes every escape, drops bytes that are not UTF-8, takes `\\` for `/`, drops `;` \
         parameters and resolves dot segments) takes for `/admin`, so a rule on the `/admin` \
         route would not have held. \"admin, raw path\": the right backend, but given the path \
         as sent, which it may read otherwise.\n"
    );
    let _ = writeln!(out, "| verdict | {} |", names.join(" | "));
    let _ = writeln!(out, "|---|{}", "---:|".repeat(names.len()));
    for verdict in ORDER {
        let row: Vec<String> = verdicts
            .iter()
            .map(|column| column.iter().filter(|(v, _)| *v == verdict).count().to_string())
            .collect();
        let _ = writeln!(out, "| {} | {} |", verdict.name(), row.join(" | "));
    }
    let _ = writeln!(out, "\n| path | {} |", names.join(" | "));
    let _ = writeln!(out, "|---|{}", "---|".repeat(names.len()));
    for (i, path) in PATHS.iter().enumerate() {
        let cells: Vec<String> = verdicts
            .iter()
            .map(|column| {
                let (verdict, seen) = &column[i];
                if seen.is_empty() || seen.len() > 60 {
                    verdict.name().to_owned()
                } else {
                    format!("{} `{}`", verdict.name(), seen.replace('|', "\\|"))
                }
            })
            .collect();
        let shown = if path.len() > 60 {
            format!("{}…", &path[..40])
        } else {
            (*path).to_owned()
        };
        let _ = writeln!(out, "| `{}` | {} |", shown.replace('|', "\\|"), cells.join(" | "));
    }
    out
}
