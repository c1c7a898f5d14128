//! Sends the spans of sampled requests to an OTLP collector, from a thread of its own.
//!
//! The request path hands each finished trace to a bounded queue and never waits: when the
//! queue is full (the collector is down or slow) the trace is dropped and counted. The export
//! thread batches what it takes off the queue (up to [`MAX_BATCH`] spans, or what came in
//! [`BATCH_DELAY`]), turns it into the SDK's span data and exports it with the SDK's OTLP/HTTP
//! exporter. So the SDK never runs on a request's thread, and memory stays bounded by the
//! queue's length whatever the collector does.

use std::{borrow::Cow, net::IpAddr, net::SocketAddr, str::FromStr, time::Duration, time::SystemTime};

use opentelemetry::{
    InstrumentationScope, KeyValue,
    trace::{SpanContext, SpanKind, Status, TraceFlags, TraceState},
};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::{
    Resource,
    trace::{SpanData, SpanEvents, SpanExporter, SpanLinks},
};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;

use super::span::{Outcome, Recording};
use crate::gateway::retry::Failure;

/// Traces waiting for the export thread, at most.
pub const QUEUE_LEN: usize = 2048;
/// Spans per export request, at most.
const MAX_BATCH: usize = 512;
/// How long the first span of a batch waits for company.
const BATCH_DELAY: Duration = Duration::from_millis(500);
/// How long one export may take before it counts as failed.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why `start` could not set up the exporter.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("the OTLP endpoint {endpoint:?} is not an http:// URL")]
    Endpoint { endpoint: String },
    #[error("cannot build the OTLP exporter for {endpoint}: {source}")]
    Build {
        endpoint: String,
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
    #[error("cannot start the span export thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// The counters of the export.
#[derive(Clone, Debug, Default)]
pub struct ExportCounters {
    pub exported: Counter,
    /// Spans dropped because the queue was full.
    pub dropped_queue_full: Counter,
    /// Spans dropped because the collector refused them or could not be reached.
    pub dropped_export_failed: Counter,
}

/// A sampled request, answered.
pub(super) struct Finished {
    pub trace_id: super::context::TraceId,
    pub recording: Box<Recording>,
    pub end: SystemTime,
    pub route: String,
    pub status: u16,
    pub reason: String,
    pub client: IpAddr,
    pub peer: SocketAddr,
    pub host: Option<String>,
    pub scheme: &'static str,
}

impl Finished {
    fn span_count(&self) -> u64 {
        1 + self.recording.attempts.len() as u64
    }
}

/// The request path's end of the queue.
#[derive(Clone)]
pub(super) struct SpanQueue {
    sender: mpsc::Sender<Finished>,
    counters: ExportCounters,
}

impl SpanQueue {
    /// Queues `finished` for export, or drops and counts it if the queue is full.
    pub fn push(&self, finished: Finished) {
        if let Err(refused) = self.sender.try_send(finished) {
            let finished = match refused {
                mpsc::error::TrySendError::Full(f) | mpsc::error::TrySendError::Closed(f) => f,
            };
            self.counters.dropped_queue_full.inc_by(finished.span_count());
        }
    }
}

/// Starts the export thread, sending to the OTLP/HTTP collector at `endpoint` (a base URL such
/// as `http://collector:4318`; `/v1/traces` is added, as `OTEL_EXPORTER_OTLP_ENDPOINT` would).
/// The thread ends once every [`SpanQueue`] is dropped and the queue is sent.
pub(super) fn start(
    endpoint: &str,
    service_name: &str,
    counters: ExportCounters,
) -> Result<SpanQueue, ExportError> {
    let base = endpoint.trim_end_matches('/');
    if !base.starts_with("http://") {
        return Err(ExportError::Endpoint {
            endpoint: endpoint.to_owned(),
        });
    }
    let url = format!("{base}/v1/traces");
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(url.clone())
        .with_timeout(EXPORT_TIMEOUT)
        .with_http_client(opentelemetry_http::hyper::HyperClient::with_default_connector(
            EXPORT_TIMEOUT,
            None,
        ))
        // Retries would hold the queue while spans pile up behind them; the next batch is
        // the retry.
        .with_retry_policy(opentelemetry_otlp::RetryPolicy::disabled())
        .build()
        .map_err(|source| ExportError::Build {
            endpoint: url.clone(),
            source,
        })?;
    exporter.set_resource(
        &Resource::builder_empty()
            .with_service_name(service_name.to_owned())
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build(),
    );
    let (sender, receiver) = mpsc::channel(QUEUE_LEN);
    let thread_counters = counters.clone();
    std::thread::Builder::new()
        .name("microgate-otlp".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(error) => {
                    tracing::error!(%error, "cannot start the span export thread's runtime; no spans will be exported");
                    return;
                }
            };
            runtime.block_on(export_loop(receiver, exporter, url, thread_counters));
        })
        .map_err(ExportError::Thread)?;
    Ok(SpanQueue { sender, counters })
}

async fn export_loop(
    mut receiver: mpsc::Receiver<Finished>,
    exporter: opentelemetry_otlp::SpanExporter,
    url: String,
    counters: ExportCounters,
) {
    let scope = InstrumentationScope::builder("microgate")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build();
    let mut failing = false;
    let mut batch: Vec<SpanData> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = receiver.recv().await {
        append(&mut batch, first, &scope);
        let deadline = tokio::time::sleep(BATCH_DELAY);
        tokio::pin!(deadline);
        while batch.len() < MAX_BATCH {
            tokio::select! {
                next = receiver.recv() => match next {
                    Some(finished) => append(&mut batch, finished, &scope),
                    None => break,
                },
                () = &mut deadline => break,
            }
        }
        let spans = std::mem::replace(&mut batch, Vec::with_capacity(MAX_BATCH));
        let count = spans.len() as u64;
        match exporter.export(spans).await {
            Ok(()) => {
                counters.exported.inc_by(count);
                if std::mem::take(&mut failing) {
                    tracing::info!(collector = %url, "spans are exported again");
                }
            }
            Err(error) => {
                counters.dropped_export_failed.inc_by(count);
                // Once per outage, not once per batch.
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!(collector = %url, %error, "exporting spans failed; dropping them until the collector answers (microgate_gateway_spans_dropped_total)");
                }
            }
        }
    }
}

/// The spans of one request: its server span, and a client span per attempt.
fn append(batch: &mut Vec<SpanData>, finished: Finished, scope: &InstrumentationScope) {
    let recording = &finished.recording;
    let trace_id = opentelemetry::TraceId::from_bytes(finished.trace_id.0);
    let trace_state = recording
        .tracestate
        .as_ref()
        .and_then(|value| value.to_str().ok())
        .and_then(|value| TraceState::from_str(value).ok())
        .unwrap_or_default();
    let context = |span: &super::context::SpanId, remote: bool| {
        SpanContext::new(
            trace_id,
            opentelemetry::SpanId::from_bytes(span.0),
            TraceFlags::SAMPLED,
            remote,
            trace_state.clone(),
        )
    };
    let method = recording.method.as_str().to_owned();
    let mut server = vec![
        KeyValue::new("http.request.method", method.clone()),
        KeyValue::new("url.path", recording.uri.path().to_owned()),
        KeyValue::new("url.scheme", finished.scheme),
        KeyValue::new("http.response.status_code", i64::from(finished.status)),
        KeyValue::new("client.address", finished.client.to_string()),
        KeyValue::new("network.peer.address", finished.peer.ip().to_string()),
        KeyValue::new("network.peer.port", i64::from(finished.peer.port())),
        KeyValue::new("network.protocol.version", protocol_version(recording.version)),
        KeyValue::new("microgate.route", finished.route.clone()),
    ];
    if let Some(query) = recording.uri.query() {
        server.push(KeyValue::new("url.query", query.to_owned()));
    }
    if let Some(host) = &finished.host {
        server.push(KeyValue::new("server.address", host.clone()));
    }
    if !finished.reason.is_empty() {
        server.push(KeyValue::new("microgate.reason", finished.reason.clone()));
    }
    // Semantic conventions: a server span is an error for a 5xx only (a 4xx is the client's).
    let server_failed = finished.status >= 500;
    if server_failed {
        server.push(KeyValue::new("error.type", finished.status.to_string()));
    }
    batch.push(SpanData {
        span_context: context(&recording.span_id, false),
        parent_span_id: recording.parent.map_or(opentelemetry::SpanId::INVALID, |p| {
            opentelemetry::SpanId::from_bytes(p.0)
        }),
        parent_span_is_remote: recording.parent.is_some(),
        span_kind: SpanKind::Server,
        name: Cow::Owned(format!("{method} {}", finished.route)),
        start_time: recording.start,
        end_time: finished.end,
        attributes: server,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: if server_failed {
            Status::error("")
        } else {
            Status::Unset
        },
        instrumentation_scope: scope.clone(),
    });
    for attempt in &recording.attempts {
        let mut attributes = vec![
            KeyValue::new("http.request.method", method.clone()),
            KeyValue::new("server.address", attempt.endpoint.ip().to_string()),
            KeyValue::new("server.port", i64::from(attempt.endpoint.port())),
            KeyValue::new(
                "url.full",
                format!("http://{}{}", attempt.endpoint, recording.uri.path()),
            ),
            KeyValue::new("k8s.pod.name", attempt.pod.to_string()),
            KeyValue::new("microgate.attempt", i64::from(attempt.number)),
        ];
        if attempt.number > 1 {
            attributes.push(KeyValue::new(
                "http.request.resend_count",
                i64::from(attempt.number - 1),
            ));
        }
        if let Some(service) = &recording.service {
            attributes.push(KeyValue::new("microgate.microservice", service.clone()));
        }
        let failed = match attempt.outcome {
            Outcome::Status(status) => {
                attributes.push(KeyValue::new("http.response.status_code", i64::from(status)));
                // A client span is an error for a 4xx too (the request did not succeed).
                (status >= 400).then(|| status.to_string())
            }
            Outcome::Error(kind) => Some(kind.to_owned()),
        };
        if let Some(kind) = &failed {
            attributes.push(KeyValue::new("error.type", kind.clone()));
        }
        if let Some(failure) = attempt.retried {
            attributes.push(KeyValue::new("microgate.retry.reason", retry_reason(failure)));
        }
        batch.push(SpanData {
            span_context: context(&attempt.span_id, false),
            parent_span_id: opentelemetry::SpanId::from_bytes(recording.span_id.0),
            parent_span_is_remote: false,
            span_kind: SpanKind::Client,
            name: Cow::Owned(method.clone()),
            start_time: attempt.start,
            end_time: attempt.end,
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: if failed.is_some() {
                Status::error("")
            } else {
                Status::Unset
            },
            instrumentation_scope: scope.clone(),
        });
    }
}

/// Why an attempt was retried, in the words of the retry policy's `retryOn`.
pub(super) fn retry_reason(failure: Failure) -> String {
    match failure {
        Failure::Connect => "connect-failure".to_owned(),
        Failure::Reset => "reset".to_owned(),
        Failure::Timeout => "per-try-timeout".to_owned(),
        Failure::Status(status) => format!("status {}", status.as_u16()),
    }
}

fn protocol_version(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_09 => "0.9",
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_reasons_name_the_failure() {
        assert_eq!(retry_reason(Failure::Connect), "connect-failure");
        assert_eq!(
            retry_reason(Failure::Status(http::StatusCode::SERVICE_UNAVAILABLE)),
            "status 503"
        );
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let (sender, _receiver) = mpsc::channel(1);
        let queue = SpanQueue {
            sender,
            counters: ExportCounters::default(),
        };
        let finished = || Finished {
            trace_id: super::super::context::TraceId([1; 16]),
            recording: Box::new(Recording {
                span_id: super::super::context::SpanId([2; 8]),
                parent: None,
                tracestate: None,
                start: SystemTime::now(),
                method: http::Method::GET,
                uri: http::Uri::from_static("/"),
                version: http::Version::HTTP_11,
                service: None,
                attempts: Vec::new(),
            }),
            end: SystemTime::now(),
            route: "ns/gw/r".into(),
            status: 200,
            reason: String::new(),
            client: IpAddr::from([127, 0, 0, 1]),
            peer: SocketAddr::from(([127, 0, 0, 1], 1)),
            host: None,
            scheme: "http",
        };
        queue.push(finished());
        queue.push(finished());
        queue.push(finished());
        assert_eq!(queue.counters.dropped_queue_full.get(), 2);
    }
}
