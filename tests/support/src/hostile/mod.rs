//! The hostile-input suite's harness: the [corpus] of raw requests, the [recorder] backend with
//! its [strict] reader, the [client] side, and the [verdicts](classify). The e2e test and the
//! `hostile-report` tool both run cases through [`run_case`].

pub mod classify;
pub mod client;
pub mod corpus;
pub mod paths;
pub mod recorder;
pub mod strict;

use std::{net::SocketAddr, time::Duration};

pub use classify::{Outcome, Verdict, classify};
pub use corpus::{Case, Expect};
pub use recorder::{Recorder, RunningRecorder};

/// A proxy named on a report tool's command line, `NAME=ADDRESS`.
pub fn parse_proxy(value: &str) -> Result<(String, SocketAddr), String> {
    let (name, addr) = value.split_once('=').ok_or("NAME=ADDRESS")?;
    Ok((name.to_owned(), addr.parse().map_err(|e| format!("{addr}: {e}"))?))
}

/// How long the client waits for more once nothing arrives: an answer on loopback comes in
/// milliseconds, so only a proxy that is waiting for more of a message takes this long.
pub const SILENCE: Duration = Duration::from_millis(1500);

/// The request sent after case number `index`, on the same connection: it must come back
/// answered by the backend as a request of its own, unless the proxy closed the connection.
pub fn canary(index: usize) -> String {
    format!("/__canary/{index}")
}

/// Runs `case` (number `index` of the corpus) through the proxy at `proxy`, whose upstream is
/// `recorder`, and judges it.
pub async fn run_case(
    proxy: SocketAddr,
    recorder: &Recorder,
    index: usize,
    case: &Case,
) -> std::io::Result<Outcome> {
    // Whatever an earlier case left behind is not this case's.
    recorder
        .settle(Duration::from_millis(20), Duration::from_secs(2))
        .await;
    recorder.take_events();
    let canary = case.canary.then(|| canary(index));
    let mut bytes = case.bytes.clone();
    if let Some(target) = &canary {
        bytes.extend_from_slice(format!("GET {target} HTTP/1.1\r\nHost: canary\r\n\r\n").as_bytes());
    }
    let suffix = canary.as_ref().map(|c| format!(" {c}"));
    let wanted = case.requests;
    let conversation = client::converse(proxy, &bytes, SILENCE, |answers| match &suffix {
        Some(suffix) => answers.iter().any(|a| {
            a.recorded
                .as_deref()
                .is_some_and(|r| r.ends_with(suffix.as_str()))
        }),
        None => answers.len() >= wanted,
    })
    .await?;
    recorder
        .settle(Duration::from_millis(50), Duration::from_secs(3))
        .await;
    let events = recorder.take_events();
    Ok(classify(case, canary.as_deref(), &conversation, &events))
}
