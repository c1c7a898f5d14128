//! The gateway's metrics: requests by route and status class, retries, and retries refused by
//! the budget.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
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

#[derive(Clone, Default)]
pub struct GatewayMetrics {
    requests: Family<RequestLabels, Counter>,
    retries: Family<RouteLabels, Counter>,
    budget_exhausted: Family<RouteLabels, Counter>,
    ejections: Family<ServiceLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    namespace: String,
    microservice: String,
}

impl GatewayMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
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

    pub fn request(&self, route: &str, status: http::StatusCode) {
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
