//! The gateway's metrics: requests by route and status class, retries, and retries refused by
//! the budget; access policies' decisions by route and outcome; client connections' buffers, and accepting paused for want of descriptors.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use crate::{discovery::ServiceLabels, gateway::buffers::BufferCounts};
use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet},
    metrics::{MetricType, TypedMetric, counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AccessLabels {
    route: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Clone)]
pub struct GatewayMetrics {
    requests: Family<RequestLabels, Counter>,
    retries: Family<RouteLabels, Counter>,
    budget_exhausted: Family<RouteLabels, Counter>,
    ejections: Family<ServiceLabels, Counter>,
    latency: Family<RouteLabels, LatencyHistogram>,
    access: Family<AccessLabels, Counter>,
    buffers: WorkerBuffers,
    accept_paused: Counter,
    parked_connections: Gauge,
    spans: crate::gateway::trace::ExportCounters,
    spans_dropped: Family<DropLabels, Counter>,
    mirror_copies: Family<MirrorLabels, Counter>,
    /// Every route's latency histogram by its label, for the exemplars (see [`Self::add_exemplars`]).
    latency_by_route: Arc<Mutex<std::collections::HashMap<String, LatencyHistogram>>>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MirrorLabels {
    namespace: String,
    service: String,
    outcome: &'static str,
}

/// What became of one request's copy for a mirror backend (see [`crate::gateway::request`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MirrorOutcome {
    /// The mirror answered, and its answer was read to the end.
    Answered,
    /// Sending failed (no connection, a broken one, an invalid answer).
    Failed,
    /// No answer within the mirror timeout.
    TimedOut,
    /// The mirror had no ready endpoint.
    NoEndpoint,
    /// Not sent: as many copies as the gateway allows were in flight.
    Dropped,
    /// Not sent: the request's body was streamed, not buffered, so there was nothing to copy.
    Streamed,
}

impl MirrorOutcome {
    fn label(self) -> &'static str {
        match self {
            Self::Answered => "answered",
            Self::Failed => "failed",
            Self::TimedOut => "timed-out",
            Self::NoEndpoint => "no-endpoint",
            Self::Dropped => "dropped",
            Self::Streamed => "streamed",
        }
    }
}

impl GatewayMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            requests: Family::default(),
            retries: Family::default(),
            budget_exhausted: Family::default(),
            ejections: Family::default(),
            latency: Family::default(),
            access: Family::default(),
            buffers: WorkerBuffers::default(),
            accept_paused: Counter::default(),
            parked_connections: Gauge::default(),
            spans: Default::default(),
            spans_dropped: Family::default(),
            mirror_copies: Family::default(),
            latency_by_route: Arc::default(),
        };
        let metrics = Self {
            spans: crate::gateway::trace::ExportCounters {
                exported: Counter::default(),
                dropped_queue_full: metrics
                    .spans_dropped
                    .get_or_create_owned(&DropLabels { reason: "queue-full" }),
                dropped_export_failed: metrics.spans_dropped.get_or_create_owned(&DropLabels {
                    reason: "export-failed",
                }),
            },
            ..metrics
        };
        registry.register(
            "microgate_gateway_request_duration_seconds",
            "Time from a request's arrival to its answer's headers, by route",
            metrics.latency.clone(),
        );
        registry.register(
            "microgate_gateway_requests",
            "Requests answered, by route and status class",
            metrics.requests.clone(),
        );
        registry.register(
            "microgate_gateway_retries",
            "Retries sent, by route",
            metrics.retries.clone(),
        );
        registry.register(
            "microgate_gateway_retry_budget_exhausted",
            "Retries not sent because the route's retry budget was spent",
            metrics.budget_exhausted.clone(),
        );
        registry.register(
            "microgate_gateway_access_decisions",
            "Requests checked by a route's access policy, by route and outcome (allowed, unauthenticated, forbidden, limited, unenforceable)",
            metrics.access.clone(),
        );
        registry.register(
            "microgate_gateway_ejections",
            "Endpoints taken out of rotation by outlier detection",
            metrics.ejections.clone(),
        );
        registry.register(
            "microgate_gateway_client_buffers_lent",
            "Buffers held by client connections now, each while bytes are in flight (an idle connection holds none)",
            BufferGauge {
                workers: metrics.buffers.clone(),
                read: BufferCounts::lent,
            },
        );
        registry.register(
            "microgate_gateway_client_buffers_pooled",
            "Free client connection buffers the workers keep for reuse",
            BufferGauge {
                workers: metrics.buffers.clone(),
                read: BufferCounts::pooled,
            },
        );
        registry.register(
            "microgate_gateway_spans_exported",
            "Spans of sampled requests the OTLP collector accepted",
            metrics.spans.exported.clone(),
        );
        registry.register(
            "microgate_gateway_spans_dropped",
            "Spans of sampled requests not exported, by reason: queue-full (the export queue was full: the collector is slow or down) or export-failed (the collector refused them or could not be reached)",
            metrics.spans_dropped.clone(),
        );
        registry.register(
            "microgate_gateway_mirror_copies",
            "Copies of requests for mirror backends, by mirror and outcome: answered, failed, timed-out, no-endpoint; or not sent: dropped (too many copies in flight) or streamed (the request's body was not buffered)",
            metrics.mirror_copies.clone(),
        );
        registry.register(
            "microgate_gateway_accept_paused",
            "Times a listener stopped accepting for a moment because the process or the system was out of file descriptors",
            metrics.accept_paused.clone(),
        );
        registry.register(
            "microgate_gateway_client_connections_parked",
            "Idle HTTP/1.1 client connections, plain and TLS, held outside any task until their next request or their keep-alive deadline",
            metrics.parked_connections.clone(),
        );
        metrics
    }

    /// Counts the buffers of these workers (the gateway's, once started).
    pub fn count_buffers(&self, workers: impl IntoIterator<Item = Arc<BufferCounts>>) {
        if let Ok(mut counted) = self.buffers.0.lock() {
            counted.extend(workers);
        }
    }

    /// The counters the span exporter keeps (see [`crate::gateway::trace`]).
    pub fn span_counters(&self) -> crate::gateway::trace::ExportCounters {
        self.spans.clone()
    }

    /// A listener paused accepting: no file descriptor was left for a new connection.
    pub fn accept_paused(&self) {
        self.accept_paused.inc();
    }

    /// The gauge of parked idle connections, which the listeners keep.
    pub(crate) fn parked_connections(&self) -> Gauge {
        self.parked_connections.clone()
    }

    /// Counts one request's copy for the mirror `service`.
    pub fn mirror_copy(&self, service: &crate::discovery::ServiceKey, outcome: MirrorOutcome) {
        self.mirror_copies
            .get_or_create(&MirrorLabels {
                namespace: service.namespace.to_string(),
                service: service.name.to_string(),
                outcome: outcome.label(),
            })
            .inc();
    }

    pub fn ejection(&self, service: &crate::discovery::ServiceKey) {
        self.ejections.get_or_create(&ServiceLabels::from(service)).inc();
    }

    /// The metrics of `route`, resolved once (per route table) so that counting a request
    /// allocates nothing.
    pub fn route(&self, route: &str) -> RouteMetrics {
        let labels = RouteLabels {
            route: route.to_owned(),
        };
        let class = |class| {
            self.requests.get_or_create_owned(&RequestLabels {
                route: route.to_owned(),
                class,
            })
        };
        let latency = self.latency.get_or_create_owned(&labels);
        if let Ok(mut routes) = self.latency_by_route.lock() {
            routes.insert(route.to_owned(), latency.clone());
        }
        RouteMetrics {
            classes: [
                class("1xx"),
                class("2xx"),
                class("3xx"),
                class("4xx"),
                class("5xx"),
            ],
            latency,
            retries: self.retries.get_or_create_owned(&labels),
            budget_exhausted: self.budget_exhausted.get_or_create_owned(&labels),
        }
    }
}

impl GatewayMetrics {
    /// Adds to the OpenMetrics `text` of a scrape the exemplars of the request latency
    /// histogram: on each bucket line, the trace id of the last sampled request counted there,
    /// its latency and when it was answered (`# {trace_id="…"} 0.0031 1764633600.123`).
    ///
    /// Done on the text because prometheus-client 0.26 makes exemplars only inside its own
    /// histogram, which takes a lock per observation; the gateway's histogram counts with
    /// atomics, and keeps exemplars aside for sampled requests only.
    pub fn add_exemplars(&self, text: &mut String) {
        const BUCKET: &str = "microgate_gateway_request_duration_seconds_bucket{";
        let Ok(routes) = self.latency_by_route.lock() else {
            return;
        };
        if !text.contains(BUCKET) || routes.values().all(|h| !h.has_exemplars()) {
            return;
        }
        let mut out = String::with_capacity(text.len() + 1024);
        for line in text.split_inclusive('\n') {
            let exemplar = line
                .strip_prefix(BUCKET)
                .and_then(|rest| {
                    let le = label_value(rest, "le")?;
                    let route = label_value(rest, "route")?;
                    Some((bucket_index(le)?, routes.get(route)?))
                })
                .and_then(|(bucket, histogram)| histogram.exemplar(bucket));
            match exemplar {
                Some(exemplar) => {
                    out.push_str(line.trim_end_matches('\n'));
                    exemplar.write(&mut out);
                    out.push('\n');
                }
                None => out.push_str(line),
            }
        }
        *text = out;
    }

    /// The counter of `route`'s access decisions that ended in `outcome`.
    pub fn access_decisions(&self, route: &str, outcome: &'static str) -> Counter {
        self.access.get_or_create_owned(&AccessLabels {
            route: route.to_owned(),
            outcome,
        })
    }
}

/// One route's metrics, ready to count.
#[derive(Clone, Debug)]
pub struct RouteMetrics {
    classes: [Counter; 5],
    latency: LatencyHistogram,
    retries: Counter,
    budget_exhausted: Counter,
}

impl RouteMetrics {
    /// Counts a request answered with `status` after `took`; `trace_id` (hex): the trace of a
    /// sampled request, kept as the exemplar of its latency bucket.
    pub fn request(&self, status: http::StatusCode, took: std::time::Duration, trace_id: Option<&[u8; 32]>) {
        let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        self.classes[class].inc();
        let bucket = self.latency.observe(took);
        if let Some(trace_id) = trace_id {
            self.latency.keep_exemplar(bucket, took, trace_id);
        }
    }

    pub fn retry(&self) {
        self.retries.inc();
    }

    pub fn budget_exhausted(&self) {
        self.budget_exhausted.inc();
    }
}

/// The buffer counts of the gateway's workers.
#[derive(Clone, Debug, Default)]
struct WorkerBuffers(Arc<Mutex<Vec<Arc<BufferCounts>>>>);

/// One figure of the workers' buffers, summed over them when scraped.
#[derive(Debug)]
struct BufferGauge {
    workers: WorkerBuffers,
    read: fn(&BufferCounts) -> usize,
}

impl TypedMetric for BufferGauge {
    const TYPE: MetricType = MetricType::Gauge;
}

impl EncodeMetric for BufferGauge {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let total: usize = self
            .workers
            .0
            .lock()
            .map(|workers| workers.iter().map(|w| (self.read)(w)).sum())
            .unwrap_or(0);
        encoder.encode_gauge(&(total as i64))
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// The upper bounds of the latency buckets, in microseconds (500 µs to 10 s).
const LATENCY_BOUNDS_US: [u64; 14] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    5_000_000, 10_000_000,
];

/// A latency histogram counted with atomics alone: prometheus-client's takes a mutex per
/// observation, on every proxied request.
#[derive(Clone, Debug, Default)]
pub struct LatencyHistogram(Arc<LatencyCounts>);

#[derive(Debug, Default)]
struct LatencyCounts {
    /// Per bucket (not cumulative); the last one is +Inf.
    buckets: [AtomicU64; LATENCY_BOUNDS_US.len() + 1],
    sum_us: AtomicU64,
    /// The last sampled request of each bucket; written only for sampled requests.
    exemplars: Mutex<[Option<Exemplar>; LATENCY_BOUNDS_US.len() + 1]>,
    has_exemplars: std::sync::atomic::AtomicBool,
}

/// A sampled request's trace, as an example of its latency bucket.
#[derive(Clone, Copy, Debug)]
struct Exemplar {
    trace_id: [u8; 32],
    seconds: f64,
    at: std::time::SystemTime,
}

impl Exemplar {
    fn write(&self, out: &mut String) {
        use std::fmt::Write as _;
        let at = self
            .at
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let trace_id = std::str::from_utf8(&self.trace_id).unwrap_or("");
        let _ = write!(out, " # {{trace_id=\"{trace_id}\"}} {} {at:.3}", self.seconds);
    }
}

impl LatencyHistogram {
    /// Counts `took`; its bucket's index.
    pub fn observe(&self, took: Duration) -> usize {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BOUNDS_US.partition_point(|&bound| bound < us);
        self.0.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.0.sum_us.fetch_add(us, Ordering::Relaxed);
        bucket
    }

    /// Keeps `trace_id` as `bucket`'s exemplar. Never waits: while a scrape or another worker
    /// holds the exemplars, this one is skipped (an exemplar is an example, not a count).
    fn keep_exemplar(&self, bucket: usize, took: Duration, trace_id: &[u8; 32]) {
        if let Ok(mut exemplars) = self.0.exemplars.try_lock()
            && let Some(slot) = exemplars.get_mut(bucket)
        {
            *slot = Some(Exemplar {
                trace_id: *trace_id,
                // The observed value, in the bucket's own resolution (microseconds).
                seconds: took.as_micros() as f64 / 1e6,
                at: std::time::SystemTime::now(),
            });
            self.0.has_exemplars.store(true, Ordering::Relaxed);
        }
    }

    fn has_exemplars(&self) -> bool {
        self.0.has_exemplars.load(Ordering::Relaxed)
    }

    fn exemplar(&self, bucket: usize) -> Option<Exemplar> {
        self.0.exemplars.lock().ok()?.get(bucket).copied().flatten()
    }
}

/// The value of label `name` in a series' label list (`le="0.005",route="a/b/c"} 3`).
fn label_value<'t>(labels: &'t str, name: &str) -> Option<&'t str> {
    let start = labels
        .match_indices(name)
        .find(|(i, _)| {
            labels[i + name.len()..].starts_with("=\"") && (*i == 0 || labels[..*i].ends_with(','))
        })?
        .0
        + name.len()
        + 2;
    let end = start + labels[start..].find('"')?;
    Some(&labels[start..end])
}

/// The index of the latency bucket whose upper bound `le` names.
fn bucket_index(le: &str) -> Option<usize> {
    if le == "+Inf" {
        return Some(LATENCY_BOUNDS_US.len());
    }
    let seconds: f64 = le.parse().ok()?;
    LATENCY_BOUNDS_US
        .iter()
        .position(|&us| ((us as f64 / 1e6) - seconds).abs() < 1e-9)
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let counts: Vec<u64> = self.0.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect();
        let buckets: Vec<(f64, u64)> = LATENCY_BOUNDS_US
            .iter()
            .map(|&us| us as f64 / 1e6)
            .chain([f64::INFINITY])
            .zip(counts.iter().copied())
            .collect();
        let sum = self.0.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        encoder.encode_histogram::<NoLabelSet>(sum, counts.iter().sum(), &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    #[test]
    fn a_routes_metrics_count_by_status_class_with_its_labels() {
        let mut registry = Registry::default();
        let metrics = GatewayMetrics::register(&mut registry);
        let route = metrics.route("shop/gw/orders");
        route.request(http::StatusCode::OK, std::time::Duration::from_millis(3), None);
        route.request(
            http::StatusCode::SERVICE_UNAVAILABLE,
            std::time::Duration::from_millis(1),
            None,
        );
        route.retry();
        metrics
            .route("shop/gw/orders")
            .request(http::StatusCode::OK, std::time::Duration::ZERO, None);
        let mut text = String::new();
        encode(&mut text, &registry).expect("encode");
        assert!(
            text.contains(r#"microgate_gateway_requests_total{route="shop/gw/orders",class="2xx"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"microgate_gateway_requests_total{route="shop/gw/orders",class="5xx"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"microgate_gateway_retries_total{route="shop/gw/orders"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"microgate_gateway_request_duration_seconds_count{route="shop/gw/orders"} 3"#),
            "{text}"
        );
        // Cumulative buckets: 0 s and 1 ms are ≤ 1 ms; 3 ms is only in the 5 ms bucket and above.
        for (le, count) in [
            ("0.0005", 1),
            ("0.001", 2),
            ("0.0025", 2),
            ("0.005", 3),
            ("+Inf", 3),
        ] {
            let line = format!(
                r#"microgate_gateway_request_duration_seconds_bucket{{le="{le}",route="shop/gw/orders"}} {count}"#
            );
            assert!(text.contains(&line), "{line} in {text}");
        }
        assert!(
            text.contains(r#"microgate_gateway_request_duration_seconds_sum{route="shop/gw/orders"} 0.004"#),
            "{text}"
        );
    }

    #[test]
    fn a_sampled_requests_trace_id_is_its_latency_buckets_exemplar() {
        let mut registry = Registry::default();
        let metrics = GatewayMetrics::register(&mut registry);
        let route = metrics.route("shop/gw/orders");
        let untraced = metrics.route("shop/gw/other");
        let trace_id = *b"0af7651916cd43dd8448eb211c80319c";
        route.request(
            http::StatusCode::OK,
            Duration::from_micros(3_100),
            Some(&trace_id),
        );
        route.request(http::StatusCode::OK, Duration::from_micros(200), None);
        untraced.request(http::StatusCode::OK, Duration::from_micros(3_100), None);
        let mut text = String::new();
        encode(&mut text, &registry).expect("encode");
        metrics.add_exemplars(&mut text);
        let with_exemplar: Vec<&str> = text.lines().filter(|l| l.contains(" # {")).collect();
        assert_eq!(with_exemplar.len(), 1, "{text}");
        let line = with_exemplar[0];
        assert!(
            line.starts_with(
                r#"microgate_gateway_request_duration_seconds_bucket{le="0.005",route="shop/gw/orders"} 2 # {trace_id="0af7651916cd43dd8448eb211c80319c"} 0.0031 "#
            ),
            "{line}"
        );
        let at: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|t| t.parse().ok())
            .expect("a timestamp");
        assert!(at > 1.7e9, "{line}");
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert_eq!(bucket_index("+Inf"), Some(LATENCY_BOUNDS_US.len()));
        assert_eq!(bucket_index("0.0005"), Some(0));
        assert_eq!(label_value(r#"le="1.0",route="a/b""#, "route"), Some("a/b"));
        assert_eq!(label_value(r#"le="1.0",xroute="a/b""#, "route"), None);
    }
}
