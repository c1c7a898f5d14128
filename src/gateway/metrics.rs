//! The gateway's metrics: requests by route and status class, retries, and retries refused by
//! the budget.

use crate::discovery::ServiceLabels;
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

/// One route's metrics, ready to count.
#[derive(Clone, Debug)]
pub struct RouteMetrics {
    classes: [Counter; 5],
    latency: Histogram,
    retries: Counter,
    budget_exhausted: Counter,
}

impl RouteMetrics {
    pub fn request(&self, status: http::StatusCode, took: std::time::Duration) {
        let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        self.classes[class].inc();
        self.latency.observe(took.as_secs_f64());
    }

    pub fn retry(&self) {
        self.retries.inc();
    }

    pub fn budget_exhausted(&self) {
        self.budget_exhausted.inc();
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
    }
}
