//! Distributed tracing of proxied requests: W3C Trace Context in and out, and OpenTelemetry
//! spans exported over OTLP.
//!
//! Every request, sampled or not, is in a trace: the client's when it sent a valid
//! `traceparent` ([`context`]), else a new one. Each attempt sends the endpoint a `traceparent`
//! naming the attempt's span as parent (and the client's `tracestate`, when the trace is the
//! client's). Whether the trace is recorded follows the client's sampled flag, else a ratio of
//! new traces ([`sampler`]). An unsampled request costs its ids and the header: nothing is
//! recorded and no OpenTelemetry code runs. A sampled one records a server span and a client
//! span per attempt ([`span`]), handed when it is answered to the export thread ([`export`]).
//!
//! Off (no OTLP endpoint set), the gateway leaves the client's trace headers as they came.

pub mod context;
mod export;
pub mod sampler;
pub mod span;

use std::time::SystemTime;

pub use export::{ExportCounters, ExportError, QUEUE_LEN};
pub use span::{Answered, Outcome, RequestTrace, UpstreamTrace};

/// How spans are sampled and where they go.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// The OTLP/HTTP collector's base URL (`http://collector:4318`).
    pub otlp_endpoint: String,
    /// The share of new traces (requests without a client's sampled flag) recorded, 0.0–1.0.
    pub sampling_ratio: f64,
    /// The `service.name` of the spans.
    pub service_name: String,
}

/// Starts and ends the traces of requests.
pub struct Tracer {
    sampler: sampler::Sampler,
    queue: export::SpanQueue,
}

impl Tracer {
    /// Starts the export thread (see [`export`]).
    pub fn start(settings: &Settings, counters: ExportCounters) -> Result<Self, ExportError> {
        let queue = export::start(&settings.otlp_endpoint, &settings.service_name, counters)?;
        Ok(Self {
            sampler: sampler::Sampler::new(settings.sampling_ratio),
            queue,
        })
    }

    /// The trace `request` is in.
    pub fn begin<B>(&self, request: &http::Request<B>) -> RequestTrace {
        RequestTrace::begin(&self.sampler, request)
    }

    /// `trace`'s request is answered: a sampled one's spans go to the export queue.
    pub fn finish(&self, trace: RequestTrace, answered: Answered<'_>) {
        let Some(recording) = trace.recording else {
            return;
        };
        self.queue.push(export::Finished {
            trace_id: trace.trace_id,
            recording,
            end: SystemTime::now(),
            route: answered.route.to_owned(),
            status: answered.status,
            reason: answered.reason.to_owned(),
            client: answered.client,
            peer: answered.peer,
            host: answered.host.map(str::to_owned),
            scheme: answered.scheme,
        });
    }
}
