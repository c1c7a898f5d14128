//! The platform of one end-to-end test: the controller and the gateway in this process (as
//! `microgate run` has them), sharing a registry, and the ways a test sets up Microservices and
//! Gateways on it. The fault scenarios of `make reliability` use it too.

use std::{net::SocketAddr, time::Duration};

use k8s_openapi::api::core::v1::Pod;
use kube::{
    ResourceExt,
    api::{ListParams, PostParams},
};
use microgate::{
    api::{Gateway, Microservice},
    controller::{self, Prometheus, Scope},
    discovery::{Registry, ServiceKey},
    gateway::{
        self, GatewayMetrics,
        inspect::{self, access::AdminAccess},
    },
};
use microgate_test_support::{
    TestNamespace, probe,
    wait::{self, Probe},
};
use serde_json::json;

pub(crate) const WAIT: Duration = Duration::from_secs(30);

/// The controller and the gateway of one test, sharing a registry.
pub(crate) struct Platform {
    pub(crate) registry: Registry,
    pub(crate) listener: SocketAddr,
    /// Where the metrics (the controller's and the gateway's) are served.
    pub(crate) admin: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Platform {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// How a test's gateway runs (the defaults: one worker, the default client timeouts, only
/// microgate's own Gateways).
pub(crate) struct Settings {
    pub(crate) workers: usize,
    pub(crate) client_timeouts: gateway::listen::ClientTimeouts,
    /// Serve the Kubernetes Gateway API too (installs its CRDs).
    pub(crate) gateway_api: bool,
    pub(crate) redis_url: Option<String>,
    pub(crate) publish_service: Option<gateway::PublishedService>,
    /// Trace requests (export to a collector) as these settings say.
    pub(crate) tracing: Option<gateway::trace::Settings>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            workers: 1,
            client_timeouts: Default::default(),
            gateway_api: false,
            redis_url: None,
            publish_service: None,
            tracing: None,
        }
    }
}

impl Settings {
    pub(crate) fn gateway_api() -> Self {
        Self {
            gateway_api: true,
            ..Self::default()
        }
    }
}

/// The bearer token that admits remote clients to every platform's registry and debug
/// endpoints.
pub(crate) const ADMIN_TOKEN: &str = "e2e-admin-token";

/// The access rule of every platform: loopback, and [`ADMIN_TOKEN`] from a token file.
pub(crate) fn admin_access() -> AdminAccess {
    static FILES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = FILES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let file = std::env::temp_dir().join(format!("microgate-e2e-admin-token-{}-{n}", std::process::id()));
    std::fs::write(&file, format!("{ADMIN_TOKEN}\n")).expect("write the admin token file");
    let access = AdminAccess::with_token_file(&file).expect("the admin token file");
    // Read once, at start: nothing needs the file afterwards.
    let _ = std::fs::remove_file(&file);
    access
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Platform {
    pub(crate) async fn start(ns: &TestNamespace) -> Self {
        Self::start_until(ns, std::future::pending()).await
    }

    /// A platform whose gateway stops (draining) when `shutdown` completes.
    pub(crate) async fn start_until(
        ns: &TestNamespace,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Self {
        Self::start_with(ns, shutdown, 1).await
    }

    /// A platform whose gateway serves traffic on `workers` threads.
    pub(crate) async fn start_with(
        ns: &TestNamespace,
        shutdown: impl Future<Output = ()> + Send + 'static,
        workers: usize,
    ) -> Self {
        Self::start_configured(
            ns,
            shutdown,
            Settings {
                workers,
                ..Settings::default()
            },
        )
        .await
    }

    /// A platform whose gateway also serves the Kubernetes Gateway API (its CRDs installed).
    pub(crate) async fn start_with_gateway_api(ns: &TestNamespace) -> Self {
        Self::start_configured(ns, std::future::pending(), Settings::gateway_api()).await
    }

    /// A platform whose gateway keeps Global rate limits in the Redis at `redis_url`, serving
    /// traffic on two threads (so that local limits are shared across workers).
    pub(crate) async fn start_with_redis(ns: &TestNamespace, redis_url: String) -> Self {
        let settings = Settings {
            workers: 2,
            redis_url: Some(redis_url),
            ..Settings::default()
        };
        Self::start_configured(ns, std::future::pending(), settings).await
    }

    /// A platform whose gateway runs as `settings` say.
    pub(crate) async fn start_configured(
        ns: &TestNamespace,
        shutdown: impl Future<Output = ()> + Send + 'static,
        settings: Settings,
    ) -> Self {
        let Settings {
            workers,
            client_timeouts,
            gateway_api,
            redis_url,
            publish_service,
            tracing,
        } = settings;
        if gateway_api {
            // The experimental channel: a superset of the standard one, with the rules' `retry`.
            microgate_test_support::gwapi_conformance::install_crds("experimental");
        }
        microgate_test_support::cluster::install_crds(&ns.client, microgate::api::crds()).await;
        let registry = Registry::default();
        let mut prometheus = Prometheus::default();
        let metrics = GatewayMetrics::register(&mut prometheus);
        let tracer = tracing.map(|settings| {
            std::sync::Arc::new(
                gateway::trace::Tracer::start(&settings, metrics.span_counters()).expect("start tracing"),
            )
        });
        let scope = Scope {
            namespace: Some(ns.name.clone()),
            label_selector: None,
        };
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let running = controller::start(
            ns.client.clone(),
            scope,
            registry.clone(),
            prometheus,
            any,
            None,
            std::future::pending(),
        )
        .await
        .expect("start the controller");
        let admin = running.admin_addr;
        let live = inspect::Live::new(registry.clone());
        let exemplars = metrics.clone();
        running
            .admin
            .annotate_metrics(move |text| exemplars.add_exemplars(text));
        running
            .admin
            .serve_also(inspect::admin::router(live.clone(), admin_access()));
        let gateway = gateway::run(
            ns.client.clone(),
            Some(ns.name.clone()),
            registry.clone(),
            gateway::Options {
                listen_address: [127, 0, 0, 1].into(),
                access_log: true,
                on_programmed: None,
                workers,
                client_timeouts,
                gateway_addresses: None,
                gateway_api,
                inspect: Some(live),
                redis_url,
                publish_service,
                tracer,
                // As in `microgate run`: the process that reconciles reports.
                status_writer: gateway::status::Writer::while_true(running.leading.clone()),
                watches: Some(running.watches.clone()),
            },
            metrics,
            shutdown,
        );
        let gateway = async { gateway.await.expect("the gateway's workers start") };
        let tasks = vec![tokio::spawn(running.serve), tokio::spawn(gateway)];
        Self {
            registry,
            listener: SocketAddr::from(([127, 0, 0, 1], free_port())),
            admin,
            tasks,
        }
    }

    pub(crate) async fn microservice(
        &self,
        ns: &TestNamespace,
        name: &str,
        replicas: i32,
        traffic_policy: serde_json::Value,
    ) {
        let spec = json!({"image": "registry.example/echo:1", "replicas": replicas, "trafficPolicy": traffic_policy});
        self.microservice_with(ns, name, spec).await;
    }

    /// Creates the Microservice `name` with `spec` and waits until all its replicas (1 unless
    /// `spec` says) are ready endpoints.
    pub(crate) async fn microservice_with(&self, ns: &TestNamespace, name: &str, spec: serde_json::Value) {
        let replicas = spec["replicas"].as_i64().unwrap_or(1);
        let ms: Microservice = serde_json::from_value(json!({
            "apiVersion": "microgate.dev/v1alpha1", "kind": "Microservice", "metadata": {"name": name},
            "spec": spec,
        }))
        .expect("a valid Microservice");
        ns.api::<Microservice>()
            .create(&PostParams::default(), &ms)
            .await
            .expect("create the Microservice");
        let key = ServiceKey::new(&ns.name, name);
        wait::until(format!("{replicas} ready endpoints of {name}"), WAIT, || async {
            let ready = self.registry.snapshot(&key).ready_count();
            if ready as i64 == replicas {
                Probe::Done(())
            } else {
                Probe::NotYet(format!("{ready} ready"))
            }
        })
        .await
        .expect("endpoints are ready");
    }

    /// Creates a Gateway with one listener (this test's port) and `routes`, and waits until it serves.
    pub(crate) async fn gateway(&self, ns: &TestNamespace, routes: serde_json::Value) {
        create_gateway(ns, self.listener.port(), routes).await;
        let listener = self.listener;
        wait::until("the gateway to listen", WAIT, || async {
            match probe::get(listener, "/__probe").await {
                Ok(answer) => Probe::Done(answer),
                Err(error) => Probe::NotYet(error.to_string()),
            }
        })
        .await
        .expect("the gateway listens");
    }
}

impl Platform {
    /// The common setup: a Microservice `echo` of `replicas` with `traffic_policy`, and a
    /// Gateway whose one route, `all`, sends everything to it.
    pub(crate) async fn with_echo(
        ns: &TestNamespace,
        replicas: i32,
        traffic_policy: serde_json::Value,
    ) -> Self {
        Self::with_echo_on(ns, replicas, traffic_policy, 1).await
    }

    /// [`Platform::with_echo`] with `workers` threads serving traffic.
    pub(crate) async fn with_echo_on(
        ns: &TestNamespace,
        replicas: i32,
        traffic_policy: serde_json::Value,
        workers: usize,
    ) -> Self {
        let platform = Platform::start_with(ns, std::future::pending(), workers).await;
        platform.microservice(ns, "echo", replicas, traffic_policy).await;
        platform
            .gateway(
                ns,
                json!([{"name": "all", "backends": [{"microservice": "echo"}]}]),
            )
            .await;
        platform
    }
}

/// Creates the Gateway `gw`: one listener, `http` on `port`, and `routes`.
pub(crate) async fn create_gateway(ns: &TestNamespace, port: u16, routes: serde_json::Value) {
    create_gateway_spec(
        ns,
        "gw",
        json!({"listeners": [{"name": "http", "port": port}], "routes": routes}),
    )
    .await;
}

/// Creates the Gateway `name` with `spec`.
pub(crate) async fn create_gateway_spec(ns: &TestNamespace, name: &str, spec: serde_json::Value) {
    let gateway: Gateway = serde_json::from_value(json!({
        "apiVersion": "microgate.dev/v1alpha1", "kind": "Gateway", "metadata": {"name": name},
        "spec": spec,
    }))
    .expect("a valid Gateway");
    ns.api::<Gateway>()
        .create(&PostParams::default(), &gateway)
        .await
        .expect("create the Gateway");
}

pub(crate) async fn pods_of(ns: &TestNamespace, service: &str) -> Vec<String> {
    let pods = ns
        .api::<Pod>()
        .list(&ListParams::default().labels(&format!("microgate.dev/microservice={service}")))
        .await;
    let mut names: Vec<_> = pods
        .expect("list pods")
        .items
        .iter()
        .map(|p| p.name_any())
        .collect();
    names.sort();
    names
}

/// The sum of the series of `name` with `labels` (e.g. `outcome="forbidden"`) on `admin`'s
/// /metrics (0 when there is none).
pub(crate) async fn metric(admin: SocketAddr, name: &str, labels: &str) -> f64 {
    let text = probe::get(admin, "/metrics").await.expect("/metrics").body;
    text.lines()
        .filter(|line| line.starts_with(name) && line.contains(labels))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The binary under test as `microgate <subcommand>` for `ns`, its admin endpoints on `admin`,
/// reaching the API server as `kubeconfig` says; warnings logged to the test's output, killed
/// when dropped. Callers add their flags and spawn it.
pub(crate) fn microgate_process(
    subcommand: &str,
    ns: &TestNamespace,
    admin: SocketAddr,
    kubeconfig: &std::path::Path,
) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_microgate"));
    command
        .arg(subcommand)
        .arg(format!("--namespace={}", ns.name))
        .arg(format!("--admin-addr={admin}"))
        .env("KUBECONFIG", kubeconfig)
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    command
}
