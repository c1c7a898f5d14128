//! A real trace store for the tracing tests: Jaeger all-in-one, built from the Go module pinned
//! in `tests/jaeger/` (its `build.sh` caches the binary), run with in-memory storage on free
//! loopback ports: OTLP/HTTP in, the query API out. Dropping it kills the process and removes
//! its directory.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpListener},
    path::PathBuf,
    process::Stdio,
    time::Duration,
};

use tokio::{
    process::{Child, Command},
    time::{Instant, sleep},
};

use crate::probe;

/// How long a starting Jaeger may take to answer its query API.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum JaegerError {
    #[error("build jaeger with tests/jaeger/build.sh: {0}")]
    Build(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("jaeger did not answer on {query} within {after:?}; its log:\n{log}")]
    NotReady {
        query: SocketAddr,
        after: Duration,
        log: String,
    },
    #[error("jaeger's query API: {0}")]
    Query(String),
    #[error("jaeger holds no trace {trace_id} with {spans} spans after {after:?}; last answer: {last}")]
    NoTrace {
        trace_id: String,
        spans: usize,
        after: Duration,
        last: String,
    },
}

fn io_error(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> JaegerError {
    let context = context.into();
    move |source| JaegerError::Io { context, source }
}

/// The Jaeger binary, built first if this machine has none of the pinned version.
pub async fn binary() -> Result<PathBuf, JaegerError> {
    crate::pinned_tool::build_binary("jaeger")
        .await
        .map_err(JaegerError::Build)
}

/// A running Jaeger.
pub struct Jaeger {
    child: Child,
    otlp: SocketAddr,
    query: SocketAddr,
    dir: PathBuf,
}

impl Drop for Jaeger {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One span as Jaeger's query API gives it.
#[derive(Clone, Debug)]
pub struct Span {
    pub span_id: String,
    /// The span it is a child of, if any.
    pub parent: Option<String>,
    pub operation: String,
    /// Its attributes (and `span.kind`, `otel.status_code`), as strings.
    pub tags: BTreeMap<String, String>,
    pub start_us: u64,
}

impl Span {
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags.get(key).map(String::as_str)
    }
}

impl Jaeger {
    /// Starts Jaeger on free loopback ports and waits until its query API answers.
    pub async fn start() -> Result<Self, JaegerError> {
        let binary = binary().await?;
        let (otlp, query, query_grpc) = (free_port()?, free_port()?, free_port()?);
        let dir = std::env::temp_dir().join(format!("microgate-jaeger-{}-{otlp}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(io_error(format!("create {}", dir.display())))?;
        let config = dir.join("config.yaml");
        std::fs::write(&config, config_yaml(otlp, query, query_grpc))
            .map_err(io_error(format!("write {}", config.display())))?;
        let log_path = dir.join("jaeger.log");
        let log =
            std::fs::File::create(&log_path).map_err(io_error(format!("create {}", log_path.display())))?;
        let log_err = log.try_clone().map_err(io_error("clone the log file"))?;
        let child = Command::new(&binary)
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .kill_on_drop(true)
            .spawn()
            .map_err(io_error(format!("start {}", binary.display())))?;
        let mut jaeger = Jaeger {
            child,
            otlp: SocketAddr::from(([127, 0, 0, 1], otlp)),
            query: SocketAddr::from(([127, 0, 0, 1], query)),
            dir,
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let query_ready = probe::get(jaeger.query, "/api/services")
                .await
                .is_ok_and(|a| a.status.is_success());
            if query_ready && tokio::net::TcpStream::connect(jaeger.otlp).await.is_ok() {
                return Ok(jaeger);
            }
            let exited = jaeger.child.try_wait().ok().flatten().is_some();
            if exited || Instant::now() >= deadline {
                return Err(JaegerError::NotReady {
                    query: jaeger.query,
                    after: READY_TIMEOUT,
                    log: std::fs::read_to_string(&log_path).unwrap_or_default(),
                });
            }
            sleep(Duration::from_millis(100)).await;
        }
    }

    /// The base URL of its OTLP/HTTP receiver (`http://127.0.0.1:<port>`).
    pub fn otlp_endpoint(&self) -> String {
        format!("http://{}", self.otlp)
    }

    /// The spans of trace `trace_id` (32 hex digits), as the query API has them now.
    pub async fn trace(&self, trace_id: &str) -> Result<Vec<Span>, JaegerError> {
        let answer = probe::get(self.query, &format!("/api/traces/{trace_id}"))
            .await
            .map_err(|e| JaegerError::Query(e.to_string()))?;
        if answer.status == 404 {
            return Ok(Vec::new());
        }
        if !answer.status.is_success() {
            return Err(JaegerError::Query(format!("{}: {}", answer.status, answer.body)));
        }
        parse_trace(&answer.body).map_err(JaegerError::Query)
    }

    /// The services that sent spans.
    pub async fn services(&self) -> Result<Vec<String>, JaegerError> {
        let answer = probe::get(self.query, "/api/services")
            .await
            .map_err(|e| JaegerError::Query(e.to_string()))?;
        let json: serde_json::Value = serde_json::from_str(&answer.body)
            .map_err(|e| JaegerError::Query(format!("{e}: {}", answer.body)))?;
        Ok(json["data"]
            .as_array()
            .map(|names| {
                names
                    .iter()
                    .filter_map(|n| n.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Waits until trace `trace_id` has at least `spans` spans (export is batched), up to
    /// `within`.
    pub async fn wait_for_trace(
        &self,
        trace_id: &str,
        spans: usize,
        within: Duration,
    ) -> Result<Vec<Span>, JaegerError> {
        let deadline = Instant::now() + within;
        loop {
            let found = self.trace(trace_id).await?;
            if found.len() >= spans {
                return Ok(found);
            }
            if Instant::now() >= deadline {
                return Err(JaegerError::NoTrace {
                    trace_id: trace_id.to_owned(),
                    spans,
                    after: within,
                    last: format!("{found:?}"),
                });
            }
            sleep(Duration::from_millis(200)).await;
        }
    }
}

/// All-in-one: the OTLP/HTTP receiver into in-memory storage, and the query API over it; nothing
/// else listens (no gRPC receiver, no sampling or health endpoints, no metrics port).
fn config_yaml(otlp: u16, query: u16, query_grpc: u16) -> String {
    format!(
        r#"service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: warn
extensions:
  jaeger_query:
    storage:
      traces: memstore
    http:
      endpoint: 127.0.0.1:{query}
    grpc:
      endpoint: 127.0.0.1:{query_grpc}
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 100000
receivers:
  otlp:
    protocols:
      http:
        endpoint: 127.0.0.1:{otlp}
exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
"#
    )
}

/// The spans of the query API's `{"data": [{"spans": [...]}]}`.
fn parse_trace(body: &str) -> Result<Vec<Span>, String> {
    let json: serde_json::Value = serde_json::from_str(body).map_err(|e| format!("{e}: {body}"))?;
    let mut spans = Vec::new();
    for trace in json["data"].as_array().into_iter().flatten() {
        for span in trace["spans"].as_array().into_iter().flatten() {
            let text = |v: &serde_json::Value| match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let tags = span["tags"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|tag| Some((tag["key"].as_str()?.to_owned(), text(&tag["value"]))))
                .collect();
            let parent = span["references"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|r| r["refType"] == "CHILD_OF")
                .and_then(|r| r["spanID"].as_str().map(str::to_owned));
            spans.push(Span {
                span_id: span["spanID"].as_str().unwrap_or_default().to_owned(),
                parent,
                operation: span["operationName"].as_str().unwrap_or_default().to_owned(),
                tags,
                start_us: span["startTime"].as_u64().unwrap_or_default(),
            });
        }
    }
    spans.sort_by_key(|s| s.start_us);
    Ok(spans)
}

fn free_port() -> Result<u16, JaegerError> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(io_error("find a free port"))
}
