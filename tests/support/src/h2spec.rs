//! h2spec, the HTTP/2 conformance suite: built from the Go module pinned in `tests/h2spec/` (its
//! `build.sh` caches the binary, so a warm run builds nothing), run against a listener, and its
//! JUnit report read case by case.

use std::{path::PathBuf, process::Stdio, time::Duration};

use tokio::process::Command;

/// How long one whole run may take (146 cases, each given `CASE_TIMEOUT_SECONDS`).
const RUN_TIMEOUT: Duration = Duration::from_secs(300);
/// h2spec's `-o`: how long a case waits for the server's answer.
const CASE_TIMEOUT_SECONDS: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum H2specError {
    #[error("build h2spec with tests/h2spec/build.sh: {0}")]
    Build(String),
    #[error("run h2spec: {0}")]
    Run(#[source] std::io::Error),
    #[error("h2spec did not finish within {0:?}")]
    Timeout(Duration),
    #[error("h2spec wrote no readable JUnit report ({reason}); its output:\n{output}")]
    Report { reason: String, output: String },
}

/// Where h2spec connects.
#[derive(Clone, Debug)]
pub struct Target {
    /// A name or address; over TLS it is also the SNI h2spec sends.
    pub host: String,
    pub port: u16,
    /// Speak TLS (ALPN h2), accepting any certificate (`-t -k`); otherwise h2c with prior knowledge.
    pub tls: bool,
}

/// How one case ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    Skipped,
    /// What h2spec expected and what it saw.
    Failed(String),
}

/// One case: its section (`http2/5.1.2`) and what it checks.
#[derive(Clone, Debug)]
pub struct Case {
    pub section: String,
    pub description: String,
    pub outcome: Outcome,
}

/// Every case of one run, and h2spec's own summary line.
#[derive(Clone, Debug)]
pub struct Report {
    pub cases: Vec<Case>,
    pub summary: String,
}

impl Report {
    pub fn passed(&self) -> usize {
        self.cases.iter().filter(|c| c.outcome == Outcome::Passed).count()
    }

    /// Every case that did not pass, one per line, with what h2spec saw.
    pub fn not_passed(&self) -> Vec<String> {
        self.cases
            .iter()
            .filter(|c| c.outcome != Outcome::Passed)
            .map(|c| match &c.outcome {
                Outcome::Failed(why) => {
                    format!("{} {}: {}", c.section, c.description, why.replace('\n', " "))
                }
                _ => format!("{} {}: skipped", c.section, c.description),
            })
            .collect()
    }
}

/// The h2spec binary, built first if this machine has none of the pinned version.
pub async fn binary() -> Result<PathBuf, H2specError> {
    crate::pinned_tool::build_binary("h2spec")
        .await
        .map_err(H2specError::Build)
}

/// Runs every case (not `--strict`) against `target` and reads the JUnit report.
pub async fn run(target: &Target) -> Result<Report, H2specError> {
    let binary = binary().await?;
    let dir = std::env::temp_dir().join(format!("microgate-h2spec-{}-{}", std::process::id(), target.port));
    std::fs::create_dir_all(&dir).map_err(H2specError::Run)?;
    let report_path = dir.join("report.xml");
    let _ = std::fs::remove_file(&report_path);
    let mut command = Command::new(&binary);
    command
        .arg("-h")
        .arg(&target.host)
        .arg("-p")
        .arg(target.port.to_string())
        .arg("-o")
        .arg(CASE_TIMEOUT_SECONDS.to_string())
        .arg("-j")
        .arg(&report_path);
    if target.tls {
        command.args(["-t", "-k"]);
    }
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let output = tokio::time::timeout(RUN_TIMEOUT, command.output())
        .await
        .map_err(|_| H2specError::Timeout(RUN_TIMEOUT))?
        .map_err(H2specError::Run)?;
    // h2spec exits non-zero when a case fails: the report says which, so it is read either way.
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let xml = std::fs::read_to_string(&report_path).map_err(|e| H2specError::Report {
        reason: e.to_string(),
        output: text.clone(),
    })?;
    let _ = std::fs::remove_dir_all(&dir);
    let cases = parse_junit(&xml);
    if cases.is_empty() {
        return Err(H2specError::Report {
            reason: "no test case in it".to_owned(),
            output: text,
        });
    }
    let summary = text
        .lines()
        .find(|l| l.contains(" tests, ") && l.contains(" passed"))
        .unwrap_or("")
        .trim()
        .to_owned();
    Ok(Report { cases, summary })
}

/// The cases of an h2spec JUnit report: `<testcase package=".." classname="..">` elements, each
/// empty (passed) or holding a `<failure>`, `<error>` or `<skipped>`.
pub fn parse_junit(xml: &str) -> Vec<Case> {
    let mut cases = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find("<testcase ") {
        rest = &rest[start..];
        let Some(open_end) = rest.find('>') else { break };
        let open = &rest[..open_end];
        let (body, next) = if open.ends_with('/') {
            ("", &rest[open_end + 1..])
        } else {
            match rest.find("</testcase>") {
                Some(close) => (&rest[open_end + 1..close], &rest[close + "</testcase>".len()..]),
                None => (&rest[open_end + 1..], ""),
            }
        };
        let outcome =
            if let Some(text) = element_text(body, "failure").or_else(|| element_text(body, "error")) {
                Outcome::Failed(text)
            } else if body.contains("<skipped") {
                Outcome::Skipped
            } else {
                Outcome::Passed
            };
        cases.push(Case {
            section: attribute(open, "package").unwrap_or_default(),
            description: attribute(open, "classname").unwrap_or_default(),
            outcome,
        });
        rest = next;
    }
    cases
}

fn attribute(tag: &str, name: &str) -> Option<String> {
    let key = format!(" {name}=\"");
    let start = tag.find(&key)? + key.len();
    let end = tag[start..].find('"')?;
    Some(unescape(&tag[start..start + end]))
}

/// The text of `<name>…</name>` (or an empty `<name/>`), if `body` has that element.
fn element_text(body: &str, name: &str) -> Option<String> {
    let start = body.find(&format!("<{name}"))?;
    let after = &body[start..];
    let open_end = after.find('>')?;
    if after[..open_end].ends_with('/') {
        return Some(String::new());
    }
    let close = after.find(&format!("</{name}>")).unwrap_or(after.len());
    Some(unescape(&after[open_end + 1..close]))
}

fn unescape(text: &str) -> String {
    text.replace("&#xA;", "\n")
        .replace("&#x9;", "\t")
        .replace("&#34;", "\"")
        .replace("&#39;", "'")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_junit_report_is_read_case_by_case() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<testsuites>
  <testsuite name="3.5. HTTP/2 Connection Preface" package="http2/3.5" id="3.5" tests="2" skipped="0" failures="1" errors="0">
    <testcase package="http2/3.5" classname="Sends client connection preface" time="0.0010"></testcase>
    <testcase package="http2/3.5" classname="Sends invalid connection preface" time="2.0010">
      <failure>Expect:&#xA;GOAWAY Frame (Error Code: PROTOCOL_ERROR)&#xA;Actual:&#xA;Timeout</failure>
    </testcase>
    <testcase package="hpack/2.3" classname="Sends &#34;x&#34;" time="0.0001"><skipped></skipped></testcase>
  </testsuite>
</testsuites>"#;
        let cases = parse_junit(xml);
        assert_eq!(cases.len(), 3, "{cases:?}");
        assert_eq!(cases[0].outcome, Outcome::Passed);
        assert_eq!(cases[0].section, "http2/3.5");
        assert_eq!(
            cases[1].outcome,
            Outcome::Failed(
                "Expect:\nGOAWAY Frame (Error Code: PROTOCOL_ERROR)\nActual:\nTimeout".to_owned()
            )
        );
        assert_eq!(cases[2].outcome, Outcome::Skipped);
        assert_eq!(cases[2].description, "Sends \"x\"");
        let report = Report {
            cases,
            summary: String::new(),
        };
        assert_eq!(report.passed(), 1);
        assert_eq!(report.not_passed().len(), 2);
    }
}
