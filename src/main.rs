use std::process::ExitCode;

use clap::Parser;
use microgate::{
    cli::{
        AdminAccessArgs, Cli, Command, ControllerArgs, DataPlaneArgs, ExplainArgs, ExplainOutput,
        GatewayArgs, LeaderElectionArgs, RunArgs, TracingArgs,
    },
    controller::{self, Prometheus, Scope},
    discovery::{self, DiscoveryMetrics, Registry},
    gateway::{
        self, GatewayMetrics,
        inspect::{self, access::AdminAccess},
    },
    leader, telemetry,
};
use std::sync::Arc;

use tokio::signal::unix::{SignalKind, signal};

// glibc's allocator took about a tenth of the instructions of a proxied request (and musl's, in
// a static build, is slower still); mimalloc's fast path is a few dozen instructions.
#[global_allocator]
static ALLOCATOR: microgate_allocator::MiMalloc = microgate_allocator::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => match microgate::api::crds_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("microgate: could not serialize the CRDs: {error}");
                ExitCode::FAILURE
            }
        },
        Command::Controller(args) => run_async(controller(args)),
        Command::Gateway(args) => run_async(gateway(args)),
        Command::Run(args) => run_async(run(args)),
        Command::Explain(args) => explain(args),
    }
}

/// `microgate explain`: 0 when a route takes the request, 1 when none does, 2 when it cannot
/// tell.
fn explain(args: ExplainArgs) -> ExitCode {
    let cannot = |error: String| {
        eprintln!("microgate explain: {error}");
        ExitCode::from(2)
    };
    let request = match inspect::explain::ExplainRequest::parse(&args.method, &args.url, &args.headers) {
        Ok(request) => request,
        Err(error) => return cannot(error.to_string()),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => return cannot(format!("could not start the async runtime: {error}")),
    };
    let built = runtime.block_on(async {
        let client = match &args.kubeconfig {
            Some(path) => client_from(path).await?,
            None => kube_client().await?,
        };
        inspect::offline::build(
            client,
            args.namespace.as_deref(),
            args.gateway_api,
            args.listen_address,
        )
        .await
        .map_err(|e| e.to_string())
    });
    let offline = match built {
        Ok(offline) => offline,
        Err(error) => return cannot(error),
    };
    for note in &offline.notes {
        eprintln!("microgate explain: {note}");
    }
    let explanation = inspect::explain::explain(&offline.table, &offline.registry, &request, false);
    match args.output {
        ExplainOutput::Text => print!("{}", explanation.text()),
        ExplainOutput::Json => match serde_json::to_string_pretty(&explanation) {
            Ok(json) => println!("{json}"),
            Err(error) => return cannot(format!("could not encode the explanation: {error}")),
        },
    }
    if explanation.routed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// A client from the kubeconfig at `path` (its current context).
async fn client_from(path: &std::path::Path) -> Result<kube::Client, String> {
    let kubeconfig = kube::config::Kubeconfig::read_from(path)
        .map_err(|e| format!("cannot read the kubeconfig {}: {e}", path.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .map_err(|e| format!("cannot use the kubeconfig {}: {e}", path.display()))?;
    microgate::watch::client(config).map_err(|e| format!("cannot reach the Kubernetes API: {e}"))
}

fn run_async(task: impl Future<Output = Result<(), String>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("microgate: could not start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(task) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error}");
            eprintln!("microgate: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn kube_client() -> Result<kube::Client, String> {
    // As kubectl finds it: $KUBECONFIG or ~/.kube/config, else the in-cluster service account.
    let config = kube::Config::infer()
        .await
        .map_err(|e| format!("cannot reach the Kubernetes API: {e}"))?;
    microgate::watch::client(config).map_err(|e| format!("cannot reach the Kubernetes API: {e}"))
}

/// The leader election settings, if `--leader-elect` asks for it.
fn leader_election(args: &LeaderElectionArgs) -> Result<Option<leader::Config>, String> {
    if !args.leader_elect {
        return Ok(None);
    }
    let namespace = args
        .leader_election_namespace
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            "--leader-elect needs the namespace of the leader Lease: pass --leader-election-namespace \
             or set POD_NAMESPACE (from the Downward API's metadata.namespace)"
                .to_owned()
        })?;
    let config = leader::Config {
        namespace,
        lease_name: args.leader_election_lease_name.clone(),
        identity: leader::identity(std::env::var("POD_NAME").ok().as_deref()),
        lease_duration: args.leader_election_lease_duration.get(),
        renew_deadline: args.leader_election_renew_deadline.get(),
        retry_period: args.leader_election_retry_period.get(),
    };
    config
        .validate()
        .map_err(|e| format!("invalid leader election settings: {e}"))?;
    tracing::info!(
        lease = %format!("{}/{}", config.namespace, config.lease_name),
        identity = %config.identity,
        "leader election on: writing only while holding the Lease"
    );
    Ok(Some(config))
}

async fn controller(args: ControllerArgs) -> Result<(), String> {
    telemetry::init_logging(args.log.log_json);
    microgate::watch::set_timeout(args.watch.watch_timeout.into());
    let election = leader_election(&args.leader_election)?;
    let client = kube_client().await?;
    let scope = Scope {
        namespace: args.namespace,
        label_selector: args.selector,
    };
    let admin = args.admin_addr;
    let running = controller::start(
        client,
        scope,
        Registry::default(),
        Prometheus::default(),
        admin,
        election,
        shutdown_signal(),
    )
    .await
    .map_err(|e| format!("cannot serve the admin endpoints on {admin}: {e}"))?;
    tracing::info!(admin = %running.admin_addr, "controller started");
    running.serve.await;
    tracing::info!("controller stopped");
    Ok(())
}

async fn run(args: RunArgs) -> Result<(), String> {
    let controller_args = args.controller;
    telemetry::init_logging(controller_args.log.log_json);
    microgate::watch::set_timeout(controller_args.watch.watch_timeout.into());
    let election = leader_election(&controller_args.leader_election)?;
    let access = admin_access(&args.admin_access)?;
    let client = kube_client().await?;
    let registry = Registry::default();
    let live = inspect::Live::new(registry.clone());
    let mut prometheus = Prometheus::default();
    let gateway_metrics = GatewayMetrics::register(&mut prometheus);
    let tracer = tracer(&args.data_plane.tracing, &gateway_metrics)?;
    let namespace = controller_args.namespace.clone();
    let scope = Scope {
        namespace: controller_args.namespace,
        label_selector: controller_args.selector,
    };
    let admin = controller_args.admin_addr;
    let running = controller::start(
        client.clone(),
        scope,
        registry.clone(),
        prometheus,
        admin,
        election,
        shutdown_signal(),
    )
    .await
    .map_err(|e| format!("cannot serve the admin endpoints on {admin}: {e}"))?;
    tracing::info!(admin = %running.admin_addr, "controller and gateway started");
    // Ready when both halves are: a Pod that is Ready before its gateway can route would take
    // traffic only to answer 404.
    running.admin.wait_for(gateway::ROUTES_PROGRAMMED);
    let exemplars = gateway_metrics.clone();
    running
        .admin
        .annotate_metrics(move |text| exemplars.add_exemplars(text));
    running
        .admin
        .serve_also(inspect::admin::router(live.clone(), access));
    let ready = running.admin.clone();
    let on_programmed = Box::new(move || {
        ready.done(gateway::ROUTES_PROGRAMMED);
        tracing::info!("route table programmed");
    });
    // Both halves stop on the signal; the gateway drains its requests in flight first.
    let gateway = gateway::run(
        client,
        namespace,
        registry,
        gateway_options(
            args.data_plane,
            on_programmed,
            live,
            tracer,
            // The process that reconciles reports what its gateway serves.
            gateway::status::Writer::while_true(running.leading.clone()),
            // One watch per kind: the gateway reads the controller's.
            Some(running.watches.clone()),
        ),
        gateway_metrics,
        shutdown_signal(),
    );
    let serve = running.serve;
    tokio::pin!(gateway, serve);
    let gateway_failed = |e: std::io::Error| format!("cannot start the gateway's worker threads: {e}");
    tokio::select! {
        result = &mut gateway => {
            result.map_err(gateway_failed)?;
            serve.await;
        }
        () = &mut serve => gateway.await.map_err(gateway_failed)?,
    }
    tracing::info!("stopped");
    Ok(())
}

async fn gateway(args: GatewayArgs) -> Result<(), String> {
    telemetry::init_logging(args.log.log_json);
    microgate::watch::set_timeout(args.watch.watch_timeout.into());
    let election = leader_election(&args.leader_election)?;
    let access = admin_access(&args.admin_access)?;
    let client = kube_client().await?;
    let registry = Registry::default();
    let mut prometheus = Prometheus::default();
    let gateway_metrics = GatewayMetrics::register(&mut prometheus);
    let discovery_metrics = DiscoveryMetrics::register(&mut prometheus);
    let tracer = tracer(&args.data_plane.tracing, &gateway_metrics)?;
    let admin = telemetry::Admin::new(prometheus, &[gateway::ROUTES_PROGRAMMED]);
    let exemplars = gateway_metrics.clone();
    admin.annotate_metrics(move |text| exemplars.add_exemplars(text));
    let live = inspect::Live::new(registry.clone());
    admin.serve_also(inspect::admin::router(live.clone(), access));
    let (admin_addr, serve_admin) = admin
        .bind(args.admin_addr)
        .await
        .map_err(|e| format!("cannot serve the admin endpoints on {}: {e}", args.admin_addr))?;
    tracing::info!(admin = %admin_addr, "gateway started");
    let namespace = args.namespace.clone();
    let ready = admin.clone();
    let on_programmed = Box::new(move || {
        ready.done(gateway::ROUTES_PROGRAMMED);
        tracing::info!("route table programmed; ready");
    });
    // Every replica serves; one writes the statuses (see gateway::status::Writer). The election
    // runs beside the gateway and, on the shutdown signal, lets the Lease go.
    let (status_writer, election) = match election {
        None => (gateway::status::Writer::always(), None),
        Some(config) => {
            let (writing, written) = tokio::sync::watch::channel(false);
            let elector = leader::Elector::new(client.clone(), config);
            (
                gateway::status::Writer::while_true(written),
                Some(tokio::spawn(elect_status_writer(elector, writing))),
            )
        }
    };
    let options = gateway_options(args.data_plane, on_programmed, live, tracer, status_writer, None);
    tokio::select! {
        () = discovery::run(client.clone(), namespace, registry.clone(), discovery_metrics) => {}
        result = gateway::run(client, args.namespace, registry, options, gateway_metrics, shutdown_signal()) => {
            result.map_err(|e| format!("cannot start the gateway's worker threads: {e}"))?;
        }
        () = serve_admin => {}
    }
    // Another replica writes the statuses as soon as the Lease is released.
    if let Some(election) = election {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), election).await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Runs `elector` until the shutdown signal (then it releases the Lease), telling `writing`
/// whether this replica holds the Lease.
async fn elect_status_writer(elector: leader::Elector, writing: tokio::sync::watch::Sender<bool>) {
    let (role, mut roles) = tokio::sync::watch::channel(leader::Role::Unknown);
    let follow = async move {
        while roles.changed().await.is_ok() {
            let leading = *roles.borrow_and_update() == leader::Role::Leader;
            writing.send_replace(leading);
        }
    };
    tokio::join!(elector.run(&role, shutdown_signal()), follow);
}

/// The gateway's options as the flags say; `on_programmed` turns the process ready, `live`
/// shares the table with the admin endpoints, `tracer` (see [`tracer`]) records spans,
/// `status_writer` says when this process writes statuses, `watches` are the controller's of
/// the same process (`None`: the gateway watches on its own).
fn gateway_options(
    args: DataPlaneArgs,
    on_programmed: Box<dyn FnOnce() + Send>,
    live: inspect::Live,
    tracer: Option<Arc<gateway::trace::Tracer>>,
    status_writer: gateway::status::Writer,
    watches: Option<microgate::watch::OwnKinds>,
) -> gateway::Options {
    gateway::Options {
        listen_address: args.listen_address,
        access_log: args.access_log,
        on_programmed: Some(on_programmed),
        workers: args
            .workers
            .map_or_else(gateway::workers::default_count, usize::from),
        client_timeouts: gateway::listen::ClientTimeouts {
            header_read: args.client_header_timeout.get(),
            ..Default::default()
        },
        gateway_addresses: args.gateway_addresses,
        gateway_api: args.gateway_api,
        inspect: Some(live),
        redis_url: args.redis_url,
        publish_service: args.publish_service,
        tracer,
        status_writer,
        watches,
    }
}

/// The tracer the flags ask for, with its export thread started; `None` when tracing is off.
fn tracer(
    args: &TracingArgs,
    metrics: &GatewayMetrics,
) -> Result<Option<Arc<gateway::trace::Tracer>>, String> {
    let Some(settings) = args.settings() else {
        return Ok(None);
    };
    let tracer = gateway::trace::Tracer::start(&settings, metrics.span_counters())
        .map_err(|e| format!("cannot start tracing: {e}"))?;
    tracing::info!(
        collector = %settings.otlp_endpoint,
        sampling_ratio = settings.sampling_ratio,
        service = %settings.service_name,
        "tracing on: spans of sampled requests are exported over OTLP"
    );
    Ok(Some(Arc::new(tracer)))
}

/// Who may read the registry and debug endpoints, as the flags say.
fn admin_access(args: &AdminAccessArgs) -> Result<AdminAccess, String> {
    match &args.admin_token_file {
        Some(path) => {
            let access = AdminAccess::with_token_file(path).map_err(|e| e.to_string())?;
            tracing::info!(file = %path.display(), "registry and debug endpoints: loopback, and remote clients with the token");
            Ok(access)
        }
        None => Ok(AdminAccess::loopback_only()),
    }
}

/// Resolves on Ctrl-C or SIGTERM (what Kubernetes sends a Pod that should stop).
async fn shutdown_signal() {
    let terminate = async {
        match signal(SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}
