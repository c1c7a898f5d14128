//! The command line: `microgate --help` lists what the binary can do.

use std::net::SocketAddr;

use clap::{Args, Parser, Subcommand};

use crate::api::duration::Duration;

/// A Kubernetes operator and built-in L7 gateway for microservices.
///
/// microgate reconciles `Microservice` resources into Deployments and Services, discovers their
/// ready endpoints by watching Pods, and balances HTTP traffic over them as `Gateway` resources
/// declare.
#[derive(Debug, Parser)]
#[command(name = "microgate", version, about, long_about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the CustomResourceDefinitions of Microservice and Gateway as YAML.
    ///
    /// `microgate crd | kubectl apply -f -` installs them.
    Crd,
    /// Run the operator: reconcile Microservices into Deployments and Services.
    Controller(ControllerArgs),
    /// Run the gateway alone: it watches Gateways, Microservices and Pods itself.
    Gateway(GatewayArgs),
    /// Run the operator and the gateway in one process, sharing one endpoint registry.
    Run(RunArgs),
    /// Explain which Gateway, listener and route take a request, and why.
    ///
    /// Builds the route table from the cluster's resources (listed once) with the gateway's own
    /// compile code, and prints every route of the request's port in the order the gateway
    /// tries them: which takes the request, why each other refused it or lost to it, the
    /// backends, their endpoints, the retry and the timeout. Exits 0 when a route takes the
    /// request, 1 when none does, 2 when it cannot tell (bad arguments, an unreachable API).
    ///
    /// `microgate explain GET https://shop.example.com/api/orders -H 'x-user: 42'`
    Explain(ExplainArgs),
}

/// Options of `microgate explain`.
#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The request's method.
    pub method: String,
    /// The request's absolute URL: its port picks the gateway's listening port (80 or 443 when
    /// it names none), `https` the HTTPS listener by server name.
    pub url: String,
    /// A request header, `name: value`; repeat for more.
    #[arg(short = 'H', long = "header")]
    pub headers: Vec<String>,
    /// The kubeconfig to use (default: $KUBECONFIG, ~/.kube/config, or the Pod's service account).
    #[arg(long)]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// Only this namespace's resources, as a gateway run with --namespace (default: all).
    #[arg(long, short)]
    pub namespace: Option<String>,
    /// Include the Kubernetes Gateway API's resources, as a gateway run with --gateway-api.
    #[arg(long)]
    pub gateway_api: bool,
    /// The address the gateway's listeners bind (its --listen-address).
    #[arg(long, default_value = "0.0.0.0")]
    pub listen_address: std::net::IpAddr,
    /// How to print the explanation.
    #[arg(long, short, value_enum, default_value = "text")]
    pub output: ExplainOutput,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ExplainOutput {
    Text,
    Json,
}

/// Options of `microgate gateway`. Its leader election decides which replica writes the
/// statuses of what they all serve; every replica serves traffic.
#[derive(Debug, Args)]
#[command(
    mut_arg("leader_elect", |arg| arg.help(
        "Write the statuses of Gateways, HTTPRoutes and AccessPolicies only while holding the \
         leader Lease (for running several replicas; each serves traffic regardless)"
    )),
    mut_arg("leader_election_lease_name", |arg| arg
        .default_value(GATEWAY_LEASE)
        .env("MICROGATE_GATEWAY_LEASE_NAME")),
)]
pub struct GatewayArgs {
    /// Serve only this namespace's Gateways (default: all namespaces).
    #[arg(long, short, env = "MICROGATE_NAMESPACE")]
    pub namespace: Option<String>,
    #[command(flatten)]
    pub data_plane: DataPlaneArgs,
    /// Where /metrics, /healthz and /readyz are served.
    #[arg(long, env = "MICROGATE_ADMIN_ADDR", default_value = "0.0.0.0:9090")]
    pub admin_addr: SocketAddr,
    #[command(flatten)]
    pub admin_access: AdminAccessArgs,
    #[command(flatten)]
    pub leader_election: LeaderElectionArgs,
    #[command(flatten)]
    pub watch: WatchArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

/// The Lease `microgate gateway` replicas elect their status writer with: not the controller's,
/// which may live in the same namespace.
pub const GATEWAY_LEASE: &str = "microgate-gateway";

/// How the gateway serves traffic: options of `microgate gateway` and `microgate run` alike.
#[derive(Debug, Args)]
pub struct DataPlaneArgs {
    /// The address the Gateways' listeners bind (their ports come from the Gateway resources).
    #[arg(long, env = "MICROGATE_LISTEN_ADDRESS", default_value = "0.0.0.0")]
    pub listen_address: std::net::IpAddr,
    /// Log one line per request (target microgate::access; JSON with --log-json).
    #[arg(long, env = "MICROGATE_ACCESS_LOG")]
    pub access_log: bool,
    /// Give each Gateway API Gateway an address of its own from this range, so that Gateways
    /// may share a port (the addresses must be local to the machine, e.g. a range routed to
    /// it); without it, every Gateway listens on --listen-address.
    #[arg(long, env = "MICROGATE_GATEWAY_ADDRESSES")]
    pub gateway_addresses: Option<ipnet::IpNet>,
    /// The Service (`namespace/name`) clients reach the gateway through: Gateway API Gateways
    /// publish its load balancer's addresses (else its cluster IP) in `status.addresses`
    /// instead of the address they listen on. The chart sets it to the gateway's Service.
    #[arg(long, env = "MICROGATE_PUBLISH_SERVICE")]
    pub publish_service: Option<crate::gateway::PublishedService>,
    /// Serve the Kubernetes Gateway API (GatewayClasses whose controllerName is
    /// microgate.dev/gateway-controller, their Gateways and HTTPRoutes) beside microgate's own
    /// Gateways. Its CRDs must be installed.
    #[arg(long, env = "MICROGATE_GATEWAY_API")]
    pub gateway_api: bool,
    /// Where AccessPolicies' Global rate limits keep their buckets, shared by every gateway
    /// replica (`redis://host:6379`, `rediss://` for TLS, a password as `redis://:secret@host`).
    /// Without it, a policy with a Global limit cannot be enforced and its routes refuse.
    #[arg(long, env = "MICROGATE_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Threads serving traffic, each with its own listening sockets (default: one per CPU the
    /// process may use).
    #[arg(long, env = "MICROGATE_WORKERS", value_parser = clap::value_parser!(u16).range(1..))]
    pub workers: Option<u16>,
    /// How long a client may take to send a request's head, counted from when its connection is
    /// ready for one: so also how long an idle keep-alive connection stays open.
    #[arg(long, env = "MICROGATE_CLIENT_HEADER_TIMEOUT", default_value = "10s")]
    pub client_header_timeout: Duration,
    #[command(flatten)]
    pub tracing: TracingArgs,
}

/// Distributed tracing: W3C trace headers to the services, spans exported over OTLP.
#[derive(Debug, Args)]
pub struct TracingArgs {
    /// Export spans of sampled requests to this OTLP/HTTP (protobuf) collector, a base URL such
    /// as `http://otel-collector:4318` (`/v1/traces` is added). Tracing is off without it: the
    /// clients' trace headers then pass through untouched.
    #[arg(long, env = "MICROGATE_TRACING_OTLP_ENDPOINT")]
    pub tracing_otlp_endpoint: Option<String>,
    /// The share of requests without a caller's sampling decision that start a recorded trace
    /// (0.0 to 1.0). A request whose `traceparent` says sampled, or not, is traced as it says.
    #[arg(long, env = "MICROGATE_TRACING_SAMPLING_RATIO", default_value = "0.01", value_parser = sampling_ratio)]
    pub tracing_sampling_ratio: f64,
    /// The `service.name` of the gateway's spans.
    #[arg(long, env = "MICROGATE_TRACING_SERVICE_NAME", default_value = "microgate")]
    pub tracing_service_name: String,
}

impl TracingArgs {
    /// The tracing settings, if tracing is on.
    pub fn settings(&self) -> Option<crate::gateway::trace::Settings> {
        let endpoint = self.tracing_otlp_endpoint.as_deref().filter(|e| !e.is_empty())?;
        Some(crate::gateway::trace::Settings {
            otlp_endpoint: endpoint.to_owned(),
            sampling_ratio: self.tracing_sampling_ratio,
            service_name: self.tracing_service_name.clone(),
        })
    }
}

fn sampling_ratio(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(ratio) if (0.0..=1.0).contains(&ratio) => Ok(ratio),
        _ => Err(format!("{text:?} is not a ratio from 0.0 to 1.0")),
    }
}

/// Who may read the registry and debug endpoints of the admin port.
#[derive(Debug, Args)]
pub struct AdminAccessArgs {
    /// A file holding a bearer token: clients presenting it (`Authorization: Bearer <token>`)
    /// may read /registry and /debug/* from anywhere. Without it, only clients on the gateway's
    /// loopback (127.0.0.1, ::1; kubectl port-forward arrives there) may.
    #[arg(long, env = "MICROGATE_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<std::path::PathBuf>,
}

/// Options of `microgate run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub controller: ControllerArgs,
    #[command(flatten)]
    pub data_plane: DataPlaneArgs,
    #[command(flatten)]
    pub admin_access: AdminAccessArgs,
}

/// Options of `microgate controller`.
#[derive(Debug, Args)]
pub struct ControllerArgs {
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, short, env = "MICROGATE_NAMESPACE")]
    pub namespace: Option<String>,
    /// Reconcile only Microservices and Gateways whose labels match this selector (e.g.
    /// `shard=a`); in `microgate run`, its gateway serves only those too (both read one watch).
    #[arg(long, short = 'l', env = "MICROGATE_SELECTOR")]
    pub selector: Option<String>,
    /// Where /metrics, /healthz and /readyz are served.
    #[arg(long, env = "MICROGATE_ADMIN_ADDR", default_value = "0.0.0.0:9090")]
    pub admin_addr: SocketAddr,
    #[command(flatten)]
    pub leader_election: LeaderElectionArgs,
    #[command(flatten)]
    pub watch: WatchArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

/// Leader election: of several replicas, only the one holding a Lease reconciles.
#[derive(Debug, Args)]
pub struct LeaderElectionArgs {
    /// Reconcile only while holding the leader Lease (for running several replicas). Discovery
    /// and the gateway run in every replica regardless.
    #[arg(long, env = "MICROGATE_LEADER_ELECT")]
    pub leader_elect: bool,
    /// The namespace of the leader Lease (default: $POD_NAMESPACE; required with --leader-elect).
    #[arg(long, env = "POD_NAMESPACE")]
    pub leader_election_namespace: Option<String>,
    /// The name of the leader Lease.
    #[arg(
        long,
        env = "MICROGATE_LEADER_ELECTION_LEASE_NAME",
        default_value = "microgate-controller"
    )]
    pub leader_election_lease_name: String,
    /// How long a standby waits after the leader's last renewal before taking over (whole seconds).
    #[arg(long, env = "MICROGATE_LEADER_ELECTION_LEASE_DURATION", default_value = "15s")]
    pub leader_election_lease_duration: Duration,
    /// How long the leader keeps reconciling without renewing the Lease (less than the lease duration).
    #[arg(long, env = "MICROGATE_LEADER_ELECTION_RENEW_DEADLINE", default_value = "10s")]
    pub leader_election_renew_deadline: Duration,
    /// How often a standby tries to take the Lease, and the leader renews it.
    #[arg(long, env = "MICROGATE_LEADER_ELECTION_RETRY_PERIOD", default_value = "2s")]
    pub leader_election_retry_period: Duration,
}

/// How the long-running subcommands watch the API server.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// How long each watch stays open before it is opened again (whole seconds). A watch whose
    /// connection went silent without closing is noticed only then (and 5 s later): keep it
    /// below the idle timeout of every load balancer between microgate and the API server.
    #[arg(long, env = "MICROGATE_WATCH_TIMEOUT", default_value = "120s")]
    pub watch_timeout: Duration,
}

/// Logging options shared by the long-running subcommands.
#[derive(Debug, Args)]
pub struct LogArgs {
    /// Log as JSON lines (for log collectors) instead of text. Levels come from RUST_LOG.
    #[arg(long, env = "MICROGATE_LOG_JSON")]
    pub log_json: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn version_flag_reports_the_crate_version() {
        let err = Cli::try_parse_from(["microgate", "--version"]).expect_err("--version exits early");
        assert_eq!(err.kind(), clap::error::ErrorKind::DisplayVersion);
        assert_eq!(
            err.to_string().trim(),
            format!("microgate {}", env!("CARGO_PKG_VERSION"))
        );
    }

    #[test]
    fn controller_defaults_to_all_namespaces_and_the_admin_port() {
        let cli = Cli::try_parse_from(["microgate", "controller"]).expect("valid arguments");
        let Command::Controller(args) = cli.command else {
            panic!("parsed {:?}", cli.command)
        };
        assert_eq!(args.namespace, None);
        assert_eq!(args.admin_addr.port(), 9090);
    }

    #[test]
    fn the_published_service_is_a_namespace_and_a_name() {
        let cli = Cli::try_parse_from([
            "microgate",
            "gateway",
            "--publish-service",
            "edge/microgate-gateway",
        ])
        .expect("valid arguments");
        let Command::Gateway(args) = cli.command else {
            panic!("parsed {:?}", cli.command)
        };
        let published = args.data_plane.publish_service.expect("a published Service");
        assert_eq!(
            (published.namespace.as_str(), published.name.as_str()),
            ("edge", "microgate-gateway")
        );
        for bad in ["microgate-gateway", "/name", "ns/", "a/b/c"] {
            let error = Cli::try_parse_from(["microgate", "run", "--publish-service", bad])
                .expect_err("not namespace/name");
            assert!(error.to_string().contains("namespace/name"), "{bad}: {error}");
        }
    }

    #[test]
    fn explain_takes_a_method_a_url_and_repeated_headers() {
        let cli = Cli::try_parse_from([
            "microgate",
            "explain",
            "GET",
            "https://shop.example.com/api/orders",
            "-H",
            "x-user: 42",
            "-H",
            "x-canary: 1",
            "-o",
            "json",
        ])
        .expect("valid arguments");
        let Command::Explain(args) = cli.command else {
            panic!("parsed {:?}", cli.command)
        };
        assert_eq!(
            (args.method.as_str(), args.url.as_str()),
            ("GET", "https://shop.example.com/api/orders")
        );
        assert_eq!(args.headers, ["x-user: 42", "x-canary: 1"]);
        assert_eq!(args.output, ExplainOutput::Json);
        assert!(!args.gateway_api);
        assert!(
            Cli::try_parse_from(["microgate", "explain", "GET"]).is_err(),
            "a URL is required"
        );
    }

    #[test]
    fn leader_election_is_off_by_default_with_controller_runtime_timings() {
        let cli = Cli::try_parse_from(["microgate", "run"]).expect("valid arguments");
        let Command::Run(args) = cli.command else {
            panic!("parsed {:?}", cli.command)
        };
        let election = args.controller.leader_election;
        assert!(!election.leader_elect);
        assert_eq!(election.leader_election_lease_name, "microgate-controller");
        assert_eq!(election.leader_election_lease_duration, Duration::from_secs(15));
        assert_eq!(election.leader_election_renew_deadline, Duration::from_secs(10));
        assert_eq!(election.leader_election_retry_period, Duration::from_secs(2));
    }

    #[test]
    fn gateway_replicas_elect_their_status_writer_on_a_lease_of_their_own() {
        let parse = |extra: &[&str]| {
            let cli =
                Cli::try_parse_from(["microgate", "gateway"].iter().chain(extra)).expect("valid arguments");
            let Command::Gateway(args) = cli.command else {
                panic!("parsed {:?}", cli.command)
            };
            args.leader_election
        };
        let election = parse(&[]);
        assert!(!election.leader_elect);
        assert_eq!(election.leader_election_lease_name, GATEWAY_LEASE);
        let election = parse(&["--leader-elect", "--leader-election-lease-name", "edge-status"]);
        assert!(election.leader_elect);
        assert_eq!(election.leader_election_lease_name, "edge-status");
        let help = Cli::command()
            .find_subcommand_mut("gateway")
            .expect("the gateway subcommand")
            .render_long_help()
            .to_string();
        assert!(help.contains("Write the statuses"), "{help}");
        assert!(help.contains("MICROGATE_GATEWAY_LEASE_NAME"), "{help}");
    }

    #[test]
    fn tracing_is_off_without_an_endpoint_and_ratios_are_checked() {
        let cli = Cli::try_parse_from(["microgate", "gateway"]).expect("valid arguments");
        let Command::Gateway(args) = cli.command else {
            panic!("parsed {:?}", cli.command)
        };
        assert_eq!(args.data_plane.tracing.settings(), None);
        assert_eq!(args.data_plane.tracing.tracing_sampling_ratio, 0.01);
        let cli = Cli::try_parse_from([
            "microgate",
            "run",
            "--tracing-otlp-endpoint=http://collector:4318",
            "--tracing-sampling-ratio=1",
        ])
        .expect("valid arguments");
        let Command::Run(args) = cli.command else {
            panic!("parsed {:?}", cli.command)
        };
        let settings = args.data_plane.tracing.settings().expect("on");
        assert_eq!(
            (
                settings.otlp_endpoint.as_str(),
                settings.sampling_ratio,
                settings.service_name.as_str()
            ),
            ("http://collector:4318", 1.0, "microgate")
        );
        for bad in ["1.5", "-0.1", "often"] {
            assert!(
                Cli::try_parse_from(["microgate", "gateway", &format!("--tracing-sampling-ratio={bad}")])
                    .is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn leader_election_durations_parse_like_kubernetes_durations() {
        let cli = Cli::try_parse_from([
            "microgate",
            "controller",
            "--leader-elect",
            "--leader-election-namespace=ops",
            "--leader-election-lease-duration=4s",
            "--leader-election-renew-deadline=2500ms",
            "--leader-election-retry-period=500ms",
        ])
        .expect("valid arguments");
        let Command::Controller(args) = cli.command else {
            panic!("parsed {:?}", cli.command)
        };
        let election = args.leader_election;
        assert!(election.leader_elect);
        assert_eq!(election.leader_election_namespace.as_deref(), Some("ops"));
        assert_eq!(
            election.leader_election_renew_deadline,
            Duration::from_millis(2500)
        );
        assert!(
            Cli::try_parse_from(["microgate", "controller", "--leader-election-retry-period=soon"]).is_err()
        );
    }
}
