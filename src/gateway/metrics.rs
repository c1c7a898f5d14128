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
    metrics::{MetricType, TypedMetric, counter::Counter, family::Family},
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
    spans: crate::gateway::trace::ExportCounters,
    spans_dropped: Family<DropLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    reason: &'static str,
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
            spans: Default::default(),
            spans_dropped: Family::default(),
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
            "microgate_gateway_accept_paused",
            "Times a listener stopped accepting for a moment because the process or the system was out of file descriptors",
            metrics.accept_paused.clone(),
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
        RouteMetrics {
            classes: [
                class("1xx"),
                class("2xx"),
                class("3xx"),
                class("4xx"),
                class("5xx"),
            ],
            latency: self.latency.get_or_create_owned(&labels),
            retries: self.retries.get_or_create_owned(&labels),
            budget_exhausted: self.budget_exhausted.get_or_create_owned(&labels),
        }
    }
}

impl GatewayMetrics {
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
    pub fn request(&self, status: http::StatusCode, took: std::time::Duration) {
        let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        self.classes[class].inc();
        self.latency.observe(took);
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
}

impl LatencyHistogram {
    pub fn observe(&self, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BOUNDS_US.partition_point(|&bound| bound < us);
        self.0.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.0.sum_us.fetch_add(us, Ordering::Relaxed);
    }
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
        route.request(http::StatusCode::OK, std::time::Duration::from_millis(3));
        route.request(
            http::StatusCode::SERVICE_UNAVAILABLE,
            std::time::Duration::from_millis(1),
        );
        route.retry();
        metrics
            .route("shop/gw/orders")
            .request(http::StatusCode::OK, std::time::Duration::ZERO);
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
}
