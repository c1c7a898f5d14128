//! The gateway's metrics: requests by route and status class, retries, and retries refused by
//! the budget.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    class: &'static str,
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
    latency: Family<RouteLabels, Histogram>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    namespace: String,
    microservice: String,
}

impl GatewayMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            requests: Family::default(),
            retries: Family::default(),
            budget_exhausted: Family::default(),
            ejections: Family::default(),
            latency: Family::new_with_constructor(|| {
                Histogram::new([
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ])
            }),
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
            "microgate_gateway_ejections",
            "Endpoints taken out of rotation by outlier detection",
            metrics.ejections.clone(),
        );
        metrics
    }

    pub fn ejection(&self, service: &crate::discovery::ServiceKey) {
        let labels = ServiceLabels {
            namespace: service.namespace.to_string(),
            microservice: service.name.to_string(),
        };
        self.ejections.get_or_create(&labels).inc();
    }

    pub fn request(&self, route: &str, status: http::StatusCode, took: std::time::Duration) {
        self.latency
            .get_or_create(&RouteLabels {
                route: route.to_owned(),
            })
            .observe(took.as_secs_f64());
        let class = match status.as_u16() {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.requests
            .get_or_create(&RequestLabels {
                route: route.to_owned(),
                class,
            })
            .inc();
    }

    pub fn retry(&self, route: &str) {
        self.retries
            .get_or_create(&RouteLabels {
                route: route.to_owned(),
            })
            .inc();
    }

    pub fn budget_exhausted(&self, route: &str) {
        self.budget_exhausted
            .get_or_create(&RouteLabels {
                route: route.to_owned(),
            })
            .inc();
    }
}
