//! One request's trace as the request path keeps it: the ids every request gets (so that the
//! endpoint can be told its parent), and, for a sampled request only, the record of its server
//! span and of one client span per upstream attempt, exported when the request is answered.

use std::{net::SocketAddr, sync::Arc, time::SystemTime};

use http::{HeaderMap, HeaderValue, Method, Uri, Version};

use super::{
    context::{SpanId, TRACEPARENT, TRACEPARENT_LEN, TraceId, TraceParent, format_traceparent},
    sampler::Sampler,
};
use crate::gateway::retry::Failure;

/// The trace a request is in, and its record when it is sampled.
pub struct RequestTrace {
    pub(super) trace_id: TraceId,
    sampled: bool,
    /// Whether the client's `tracestate` goes on: only with a valid `traceparent` (§3.3.1: a
    /// new trace starts with no state).
    keep_tracestate: bool,
    pub(super) recording: Option<Box<Recording>>,
}

/// What a sampled request records.
pub(super) struct Recording {
    pub span_id: SpanId,
    /// The client's span, when it sent a valid `traceparent`.
    pub parent: Option<SpanId>,
    pub tracestate: Option<HeaderValue>,
    pub start: SystemTime,
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    /// The Microservice the attempts went to.
    pub service: Option<String>,
    pub attempts: Vec<AttemptSpan>,
}

/// One attempt to send the request to an endpoint.
pub(super) struct AttemptSpan {
    pub span_id: SpanId,
    /// 1 for the first.
    pub number: u32,
    pub start: SystemTime,
    pub end: SystemTime,
    pub endpoint: SocketAddr,
    pub pod: Arc<str>,
    pub outcome: Outcome,
    /// Why another attempt followed this one.
    pub retried: Option<Failure>,
}

/// How an attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The endpoint answered with this status.
    Status(u16),
    /// No answer: `connect-failure`, `reset`, `upstream-invalid`, `timeout`, or `pending`
    /// (the attempt was abandoned, as when the client went away).
    Error(&'static str),
}

/// The `traceparent` one attempt sends (the attempt's span as the parent), and whether the
/// client's `tracestate` goes with it.
pub struct UpstreamTrace {
    pub traceparent: [u8; TRACEPARENT_LEN],
    pub keep_tracestate: bool,
}

impl UpstreamTrace {
    /// Whether a client's header `name` gives way to this trace: its `traceparent` always, its
    /// `tracestate` when the trace is not the client's.
    pub fn replaces(&self, name: &str) -> bool {
        match name.len() {
            11 => name == "traceparent",
            10 => !self.keep_tracestate && name == "tracestate",
            _ => false,
        }
    }

    /// For an HTTP/2 upstream: sets the trace headers in the request's header map.
    pub fn apply(&self, headers: &mut HeaderMap) {
        if let Ok(value) = HeaderValue::from_bytes(&self.traceparent) {
            headers.insert(&TRACEPARENT, value);
        }
        if !self.keep_tracestate {
            headers.remove(&super::context::TRACESTATE);
        }
    }
}

/// What the server span says about the answer, known once the request is answered.
pub struct Answered<'a> {
    pub route: &'a str,
    pub status: u16,
    /// The gateway's reason for its own answers (`x-microgate-reason`).
    pub reason: &'a str,
    pub client: std::net::IpAddr,
    pub peer: SocketAddr,
    pub host: Option<&'a str>,
    pub scheme: &'static str,
}

impl RequestTrace {
    /// The trace of a request with these headers: the client's, when its `traceparent` is
    /// valid (a malformed one counts as none), else a new one.
    pub fn begin<B>(sampler: &Sampler, request: &http::Request<B>) -> Self {
        let headers = request.headers();
        // A repeated traceparent is as malformed as a bad one (§3.2.1).
        let mut values = headers.get_all(&TRACEPARENT).iter();
        let parent = match (values.next(), values.next()) {
            (Some(value), None) => TraceParent::parse(value.as_bytes()),
            _ => None,
        };
        let trace_id = parent.map_or_else(TraceId::random, |p| p.trace_id);
        let sampled = sampler.sample(parent.as_ref(), &trace_id);
        let recording = sampled.then(|| {
            Box::new(Recording {
                span_id: SpanId::random(),
                parent: parent.map(|p| p.parent_id),
                tracestate: parent
                    .and_then(|_| headers.get(&super::context::TRACESTATE))
                    .cloned(),
                start: SystemTime::now(),
                method: request.method().clone(),
                uri: request.uri().clone(),
                version: request.version(),
                service: None,
                attempts: Vec::new(),
            })
        });
        Self {
            trace_id,
            sampled,
            keep_tracestate: parent.is_some(),
            recording,
        }
    }

    pub fn trace_id(&self) -> &TraceId {
        &self.trace_id
    }

    pub fn sampled(&self) -> bool {
        self.sampled
    }

    /// Attempt number `number` starts, to `endpoint` (`pod`) of `service`: the trace headers
    /// it sends.
    pub fn attempt(
        &mut self,
        number: u32,
        endpoint: SocketAddr,
        pod: &Arc<str>,
        service: &dyn std::fmt::Display,
    ) -> UpstreamTrace {
        let span_id = SpanId::random();
        if let Some(recording) = &mut self.recording {
            if recording.service.is_none() {
                recording.service = Some(service.to_string());
            }
            let now = SystemTime::now();
            recording.attempts.push(AttemptSpan {
                span_id,
                number,
                start: now,
                end: now,
                endpoint,
                pod: pod.clone(),
                outcome: Outcome::Error("pending"),
                retried: None,
            });
        }
        UpstreamTrace {
            traceparent: format_traceparent(&self.trace_id, &span_id, self.sampled),
            keep_tracestate: self.keep_tracestate,
        }
    }

    /// The last attempt ended so.
    pub fn attempt_ended(&mut self, outcome: Outcome) {
        if let Some(last) = self.recording.as_mut().and_then(|r| r.attempts.last_mut()) {
            last.end = SystemTime::now();
            last.outcome = outcome;
        }
    }

    /// The last attempt is retried, because it failed so.
    pub fn retrying(&mut self, failure: Failure) {
        if let Some(last) = self.recording.as_mut().and_then(|r| r.attempts.last_mut()) {
            last.retried = Some(failure);
        }
    }
}

impl Outcome {
    pub fn error_type(&self) -> Option<&'static str> {
        match self {
            Outcome::Error(kind) => Some(kind),
            Outcome::Status(_) => None,
        }
    }
}
