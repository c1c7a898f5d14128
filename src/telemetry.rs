//! What microgate tells its operators: structured logs (tracing), Prometheus metrics, and the
//! admin endpoints `/metrics`, `/healthz` (the process is alive) and `/readyz` (it is doing its
//! job: the controller's caches are synced, or with leader election it knows it is a standby,
//! whose discovery and gateway serve all the same; the gateway routes by its first route table).
//! `microgate run` waits for both halves. A gateway adds its registry and debug endpoints
//! ([`Admin::serve_also`]) once it exists.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, OnceLock},
};

use axum::{
    Router,
    extract::{Request, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use tokio::net::TcpListener;
use tracing_subscriber::{EnvFilter, fmt};

/// Installs the global tracing subscriber: text for people, JSON lines for log collectors.
/// Levels come from `RUST_LOG` (default `info`).
pub fn init_logging(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt().with_env_filter(filter).with_target(true);
    // A second init (tests start several controllers) keeps the first subscriber.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub kind: &'static str,
    pub error: &'static str,
}

/// The controller's metrics, registered in a registry of their own.
pub struct ControllerMetrics {
    pub reconciliations: Family<KindLabels, Counter>,
    /// Status writes that publish endpoints (coalesced per window).
    pub endpoint_status_writes: Counter,
    pub failures: Family<ErrorLabels, Counter>,
    pub duration: Family<KindLabels, Histogram>,
    /// 1 while this process runs the writers (it holds the leader Lease, or runs without leader
    /// election), else 0.
    pub leader: Gauge,
}

impl ControllerMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            reconciliations: Family::default(),
            endpoint_status_writes: Counter::default(),
            failures: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new([
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ])
            }),
            leader: Gauge::default(),
        };
        registry.register(
            "microgate_reconciliations",
            "Reconciliations run",
            metrics.reconciliations.clone(),
        );
        registry.register(
            "microgate_endpoint_status_writes",
            "Status writes publishing a Microservice's endpoints",
            metrics.endpoint_status_writes.clone(),
        );
        registry.register(
            "microgate_reconcile_failures",
            "Reconciliations that failed, by error",
            metrics.failures.clone(),
        );
        registry.register(
            "microgate_reconcile_duration_seconds",
            "Time one reconciliation took",
            metrics.duration.clone(),
        );
        registry.register(
            "microgate_leader",
            "1 while this process runs the reconcilers (it holds the leader Lease, or leader election is off), else 0",
            metrics.leader.clone(),
        );
        metrics
    }

    /// Counts one reconciliation and observes its duration when the returned guard drops.
    pub fn start(&self, kind: &'static str) -> ReconcileTimer<'_> {
        self.reconciliations.get_or_create(&KindLabels { kind }).inc();
        ReconcileTimer {
            metrics: self,
            kind,
            started: std::time::Instant::now(),
        }
    }
}

pub struct ReconcileTimer<'a> {
    metrics: &'a ControllerMetrics,
    kind: &'static str,
    started: std::time::Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        let seconds = self.started.elapsed().as_secs_f64();
        self.metrics
            .duration
            .get_or_create(&KindLabels { kind: self.kind })
            .observe(seconds);
    }
}

/// Shared state of the admin endpoints.
#[derive(Clone, Default)]
pub struct Admin {
    registry: Arc<Mutex<Registry>>,
    /// What `/readyz` still waits for: ready when nothing.
    waiting: Arc<Mutex<Vec<&'static str>>>,
    /// Routes added after the server started (see [`Admin::serve_also`]).
    more: Arc<OnceLock<Router>>,
    /// Edits each scrape's text before it is served (see [`Admin::annotate_metrics`]).
    annotate: Arc<OnceLock<Annotator>>,
}

type Annotator = Box<dyn Fn(&mut String) + Send + Sync>;

impl Admin {
    /// Serves `registry`; `/readyz` waits for each of `waiting_for` to be [`done`](Self::done).
    pub fn new(registry: Registry, waiting_for: &[&'static str]) -> Self {
        Self {
            registry: Arc::new(Mutex::new(registry)),
            waiting: Arc::new(Mutex::new(waiting_for.to_vec())),
            more: Arc::default(),
            annotate: Arc::default(),
        }
    }

    /// Has `annotate` edit the text of every scrape (once: a second call is ignored), e.g. to
    /// add the gateway's exemplars ([`crate::gateway::GatewayMetrics::add_exemplars`]).
    pub fn annotate_metrics(&self, annotate: impl Fn(&mut String) + Send + Sync + 'static) {
        if self.annotate.set(Box::new(annotate)).is_err() {
            tracing::warn!("metrics annotated twice; the first stays");
        }
    }

    /// Serves `routes` too, from now on (once: a second call is ignored). Requests no route of
    /// the admin's own takes go to them.
    pub fn serve_also(&self, routes: Router) {
        if self.more.set(routes).is_err() {
            tracing::warn!("admin routes were added twice; the first stay");
        }
    }

    /// `/readyz` also waits for `what`, until it is [`done`](Self::done).
    pub fn wait_for(&self, what: &'static str) {
        let mut waiting = self.waiting();
        if !waiting.contains(&what) {
            waiting.push(what);
        }
    }

    /// `what` no longer holds `/readyz` back.
    pub fn done(&self, what: &'static str) {
        self.waiting().retain(|w| *w != what);
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, Vec<&'static str>> {
        self.waiting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn router(&self) -> Router {
        let more = self.more.clone();
        Router::new()
            .route("/metrics", get(metrics))
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .fallback(move |request: Request| async move {
                match more.get() {
                    Some(routes) => {
                        let Ok(response) = tower::ServiceExt::oneshot(routes.clone(), request).await;
                        response
                    }
                    None => StatusCode::NOT_FOUND.into_response(),
                }
            })
            .with_state(self.clone())
    }

    /// Binds the admin address; the returned future serves until dropped.
    pub async fn bind(
        &self,
        addr: SocketAddr,
    ) -> std::io::Result<(SocketAddr, impl Future<Output = ()> + use<>)> {
        let listener = TcpListener::bind(addr).await?;
        let bound = listener.local_addr()?;
        let router = self.router();
        let serve = async move {
            // Peers' addresses, for the access rule of the registry and debug endpoints.
            let service = router.into_make_service_with_connect_info::<SocketAddr>();
            if let Err(error) = axum::serve(listener, service).await {
                tracing::error!(%error, "admin server stopped");
            }
        };
        Ok((bound, serve))
    }
}

async fn metrics(State(admin): State<Admin>) -> Response {
    let mut text = String::new();
    let encoded = {
        let registry = admin
            .registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        encode(&mut text, &registry)
    };
    if let (Ok(()), Some(annotate)) = (&encoded, admin.annotate.get()) {
        annotate(&mut text);
    }
    match encoded {
        // prometheus-client writes OpenMetrics (a counter family is named without `_total`,
        // the text ends in `# EOF`): say so, or a scraper that reads it as the older text
        // format loses the counters' types and help.
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics failed: {error}\n"),
        )
            .into_response(),
    }
}

async fn readyz(State(admin): State<Admin>) -> Response {
    let waiting = admin.waiting().join(", ");
    if waiting.is_empty() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("waiting for: {waiting}\n"),
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use tower::ServiceExt;

    async fn get_text(admin: &Admin, path: &str) -> (StatusCode, String) {
        let request = axum::http::Request::get(path)
            .body(Body::empty())
            .expect("request");
        let response = admin.router().oneshot(request).await.expect("infallible router");
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn readyz_turns_ready_once_all_it_waits_for_is_done_and_healthz_always_answers() {
        let admin = Admin::new(Registry::default(), &["caches synced"]);
        admin.wait_for("route table programmed");
        admin.wait_for("caches synced");
        assert_eq!(get_text(&admin, "/healthz").await.0, StatusCode::OK);
        assert_eq!(
            get_text(&admin, "/readyz").await,
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "waiting for: caches synced, route table programmed\n".to_owned()
            )
        );
        admin.done("caches synced");
        assert_eq!(
            get_text(&admin, "/readyz").await,
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "waiting for: route table programmed\n".to_owned()
            )
        );
        admin.done("route table programmed");
        admin.done("route table programmed");
        assert_eq!(get_text(&admin, "/readyz").await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn metrics_are_prometheus_text_with_kind_labels() {
        let mut registry = Registry::default();
        let metrics = ControllerMetrics::register(&mut registry);
        drop(metrics.start("Microservice"));
        metrics
            .failures
            .get_or_create(&ErrorLabels {
                kind: "Microservice",
                error: "apply",
            })
            .inc();
        let admin = Admin::new(registry, &[]);
        let (status, text) = get_text(&admin, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            text.contains("microgate_reconciliations_total{kind=\"Microservice\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("microgate_reconcile_failures_total{kind=\"Microservice\",error=\"apply\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("microgate_reconcile_duration_seconds_count{kind=\"Microservice\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("microgate_endpoint_status_writes_total 0"),
            "{text}"
        );
        assert!(text.contains("microgate_leader 0"), "{text}");
    }
}
