//! Leader election between real `microgate` processes (the binary under test), sharing one Lease
//! in the test's namespace: one writes, a `kill -9` or a SIGTERM hands over to the other, and a
//! standby's gateway keeps serving throughout.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use k8s_openapi::api::{apps::v1::Deployment, coordination::v1::Lease};
use kube::{api::PostParams, config::Kubeconfig};
use microgate::api::Microservice;
use microgate_test_support::{
    TestNamespace, cluster, probe,
    proxy::CuttableProxy,
    wait::{self, Probe},
    with_namespace,
};
use serde_json::json;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

use super::{create_gateway, free_port};

const LEASE: &str = "microgate-controller";

/// Short timings, so that a takeover after `kill -9` happens within seconds.
const SHORT_LEASE: Duration = Duration::from_secs(4);
const SHORT: [&str; 3] = [
    "--leader-election-lease-duration=4s",
    "--leader-election-renew-deadline=2500ms",
    "--leader-election-retry-period=500ms",
];

/// A long lease with a quick retry: a takeover well before 15 s can only come from a release.
const LONG_LEASE: Duration = Duration::from_secs(15);
const LONG: [&str; 3] = [
    "--leader-election-lease-duration=15s",
    "--leader-election-renew-deadline=10s",
    "--leader-election-retry-period=500ms",
];

/// What a takeover may take beyond the lease duration on a loaded machine: a bound for
/// correctness (the standby does take over), not a performance target.
const SLACK: Duration = Duration::from_secs(8);

const WAIT: Duration = Duration::from_secs(60);

/// One `microgate` process of a test, killed when dropped.
struct Microgate {
    name: &'static str,
    child: Child,
    admin: SocketAddr,
}

enum Mode {
    Controller,
    /// `microgate run`, its gateway listening on this address.
    Run(IpAddr),
}

impl Microgate {
    /// Starts `microgate controller|run --leader-elect` for `ns`, as Pod `name`; its output goes
    /// to the test's, prefixed with the name.
    fn start(ns: &TestNamespace, name: &'static str, mode: Mode, timings: &[&str]) -> Self {
        Self::start_with(ns, name, mode, timings, &cluster::kubeconfig_path())
    }

    /// [`start`](Self::start), reaching the API server as `kubeconfig` says.
    fn start_with(
        ns: &TestNamespace,
        name: &'static str,
        mode: Mode,
        timings: &[&str],
        kubeconfig: &Path,
    ) -> Self {
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut command = Command::new(env!("CARGO_BIN_EXE_microgate"));
        match mode {
            Mode::Controller => command.arg("controller"),
            Mode::Run(listen) => command.arg("run").arg(format!("--listen-address={listen}")),
        };
        command
            .arg(format!("--namespace={}", ns.name))
            .arg(format!("--admin-addr={admin}"))
            .arg("--leader-elect")
            .arg(format!("--leader-election-namespace={}", ns.name))
            .args(timings)
            .env("KUBECONFIG", kubeconfig)
            .env("POD_NAME", name)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().expect("start the microgate binary");
        if let Some(stdout) = child.stdout.take() {
            tokio::spawn(forward_lines(name, stdout));
        }
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(forward_lines(name, stderr));
        }
        Self { name, child, admin }
    }

    /// The sum of the series of metric `name` on /metrics, if it has any.
    async fn metric(&self, name: &str) -> Result<Option<f64>, String> {
        let answer = probe::get(self.admin, "/metrics")
            .await
            .map_err(|e| format!("{}: {e}", self.name))?;
        let values: Vec<f64> = answer
            .body
            .lines()
            .filter(|l| l.starts_with(&format!("{name} ")) || l.starts_with(&format!("{name}{{")))
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect();
        Ok((!values.is_empty()).then(|| values.iter().sum()))
    }

    /// Whether this process's `microgate_leader` gauge says it leads.
    async fn leads(&self) -> Result<bool, String> {
        Ok(self.metric("microgate_leader").await? == Some(1.0))
    }

    /// How many reconciliations this process ran.
    async fn reconciliations(&self) -> f64 {
        self.metric("microgate_reconciliations_total")
            .await
            .unwrap_or_else(|e| panic!("metrics of {}: {e}", self.name))
            .unwrap_or(0.0)
    }

    fn pid(&self) -> u32 {
        self.child.id().expect("the process has not been reaped")
    }

    async fn kill_9(&mut self) {
        self.child.start_kill().expect("SIGKILL microgate");
        self.child.wait().await.expect("reap microgate");
    }

    async fn sigterm(&mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .await
            .expect("run kill");
        assert!(status.success(), "kill -TERM {}", self.pid());
        tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("microgate exits after SIGTERM")
            .expect("reap microgate")
    }
}

/// Copies a process's output to the test's, line by line, prefixed with its name.
async fn forward_lines(name: &'static str, output: impl tokio::io::AsyncRead + Unpin) {
    let mut lines = BufReader::new(output).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        eprintln!("[{name}] {line}");
    }
}

/// The Lease's holder, if it has one.
async fn holder(ns: &TestNamespace) -> Result<Option<String>, String> {
    let lease = ns
        .api::<Lease>()
        .get_opt(LEASE)
        .await
        .map_err(|e| e.to_string())?;
    Ok(lease
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
        .filter(|h| !h.is_empty()))
}

/// Whether `identity` is the Lease identity of process `name` (`<POD_NAME>_<random>`).
fn is_identity_of(identity: &str, name: &str) -> bool {
    identity
        .strip_prefix(name)
        .is_some_and(|rest| rest.starts_with('_'))
}

/// Waits until exactly one of `processes` holds the Lease and says so on /metrics, while the
/// others say they do not; returns its index.
async fn one_leader(ns: &TestNamespace, processes: &[&Microgate]) -> usize {
    wait::until("exactly one leader", WAIT, || async {
        let holder = match holder(ns).await {
            Ok(Some(holder)) => holder,
            Ok(None) => return Probe::NotYet("no holder".into()),
            Err(error) => return Probe::NotYet(error),
        };
        let Some(leader) = processes.iter().position(|p| is_identity_of(&holder, p.name)) else {
            return Probe::NotYet(format!("held by {holder}, none of ours"));
        };
        let mut leading = Vec::new();
        for process in processes {
            match process.leads().await {
                Ok(leads) => leading.push(leads),
                Err(error) => return Probe::NotYet(error),
            }
        }
        let expected: Vec<bool> = (0..processes.len()).map(|i| i == leader).collect();
        if leading == expected {
            Probe::Done(leader)
        } else {
            Probe::NotYet(format!("held by {holder}; microgate_leader says {leading:?}"))
        }
    })
    .await
    .expect("one process leads")
}

/// Waits until process `name` holds the Lease; returns when it was first seen to.
async fn held_by(ns: &TestNamespace, name: &str, timeout: Duration) -> Instant {
    wait::until(format!("{name} to hold the Lease"), timeout, || async {
        match holder(ns).await {
            Ok(Some(holder)) if is_identity_of(&holder, name) => Probe::Done(Instant::now()),
            Ok(other) => Probe::NotYet(format!("holder {other:?}")),
            Err(error) => Probe::NotYet(error),
        }
    })
    .await
    .expect("the Lease changes hands")
}

async fn create_microservice(ns: &TestNamespace, name: &str, replicas: i32) {
    let ms: Microservice = serde_json::from_value(json!({
        "apiVersion": "microgate.dev/v1alpha1", "kind": "Microservice", "metadata": {"name": name},
        "spec": {"image": "registry.example/echo:1", "replicas": replicas},
    }))
    .expect("a valid Microservice");
    ns.api::<Microservice>()
        .create(&PostParams::default(), &ms)
        .await
        .expect("create the Microservice");
}

/// Waits until Microservice `name` has been reconciled into its Deployment; returns when.
async fn reconciled(ns: &TestNamespace, name: &str) -> Instant {
    wait::until(format!("the Deployment of {name}"), WAIT, || async {
        match ns.api::<Deployment>().get_opt(name).await {
            Ok(Some(_)) => Probe::Done(Instant::now()),
            Ok(None) => Probe::NotYet("no Deployment".into()),
            Err(error) => Probe::NotYet(error.to_string()),
        }
    })
    .await
    .expect("the Microservice is reconciled")
}

/// Two controllers, one leader: only it reconciles, and the standby's /metrics says so.
async fn two_controllers(ns: &TestNamespace, timings: &[&str]) -> (Microgate, Microgate) {
    cluster::install_crds(&ns.client, microgate::api::crds()).await;
    let alpha = Microgate::start(ns, "alpha", Mode::Controller, timings);
    let beta = Microgate::start(ns, "beta", Mode::Controller, timings);
    let (leader, standby) = match one_leader(ns, &[&alpha, &beta]).await {
        0 => (alpha, beta),
        _ => (beta, alpha),
    };
    create_microservice(ns, "first", 1).await;
    reconciled(ns, "first").await;
    assert!(leader.reconciliations().await >= 1.0, "the leader reconciled");
    assert_eq!(
        standby.reconciliations().await,
        0.0,
        "the standby reconciled nothing"
    );
    assert!(!standby.leads().await.expect("standby metrics"));
    (leader, standby)
}

#[tokio::test]
async fn two_controllers_elect_one_writer_and_a_kill_9_hands_over_within_the_lease() {
    with_namespace("leader-kill", |ns| async move {
        let (mut leader, standby) = two_controllers(&ns, &SHORT).await;
        let killed = Instant::now();
        leader.kill_9().await;
        create_microservice(&ns, "second", 1).await;
        let took_over = held_by(&ns, standby.name, SHORT_LEASE + SLACK).await - killed;
        let reconciled = reconciled(&ns, "second").await - killed;
        eprintln!(
            "failover after kill -9 (lease {SHORT_LEASE:?}): the standby held the Lease after \
             {took_over:?} and reconciled a new Microservice after {reconciled:?}"
        );
        assert!(took_over <= SHORT_LEASE + SLACK, "took over after {took_over:?}");
        assert!(standby.leads().await.expect("the new leader's metrics"));
    })
    .await;
}

#[tokio::test]
async fn a_leader_stopped_by_sigterm_releases_the_lease_and_the_standby_takes_over_at_once() {
    with_namespace("leader-term", |ns| async move {
        let (mut leader, standby) = two_controllers(&ns, &LONG).await;
        let stopped = Instant::now();
        let status = leader.sigterm().await;
        assert!(status.success(), "a clean shutdown exits 0, not {status}");
        let took_over = held_by(&ns, standby.name, LONG_LEASE).await - stopped;
        create_microservice(&ns, "second", 1).await;
        reconciled(&ns, "second").await;
        eprintln!(
            "failover after SIGTERM (lease {LONG_LEASE:?}): the standby held the Lease after {took_over:?}"
        );
        // Without the release the standby would wait out the lease (15 s).
        assert!(took_over < LONG_LEASE / 3, "took over after {took_over:?}");
    })
    .await;
}

#[tokio::test]
async fn a_standby_gateway_serves_throughout_a_failover() {
    with_namespace("leader-gateway", |ns| async move {
        cluster::install_crds(&ns.client, microgate::api::crds()).await;
        let listeners = [IpAddr::from([127, 0, 0, 1]), IpAddr::from([127, 0, 0, 2])];
        let alpha = Microgate::start(&ns, "alpha", Mode::Run(listeners[0]), &SHORT);
        let beta = Microgate::start(&ns, "beta", Mode::Run(listeners[1]), &SHORT);
        let leader = one_leader(&ns, &[&alpha, &beta]).await;
        let standby_listener = listeners[1 - leader];
        let (mut leader, standby) = match leader {
            0 => (alpha, beta),
            _ => (beta, alpha),
        };
        create_microservice(&ns, "echo", 2).await;
        let port = free_port();
        create_gateway(
            &ns,
            port,
            json!([{"name": "all", "backends": [{"microservice": "echo"}]}]),
        )
        .await;
        let through_standby = SocketAddr::new(standby_listener, port);
        wait::until("the standby's gateway to serve", WAIT, || async {
            match probe::get(through_standby, "/").await {
                Ok(answer) if answer.status.is_success() => Probe::Done(()),
                Ok(answer) => Probe::NotYet(format!("{} {}", answer.status, answer.body)),
                Err(error) => Probe::NotYet(error.to_string()),
            }
        })
        .await
        .expect("the standby's gateway serves");

        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let traffic = tokio::spawn({
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            async move {
                let mut failures = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match probe::get(through_standby, "/").await {
                        Ok(answer) if answer.status.is_success() => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        outcome => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            failures.push(format!("{outcome:?}"));
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                failures
            }
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before_kill = ok.load(Ordering::Relaxed);
        let killed = Instant::now();
        leader.kill_9().await;
        create_microservice(&ns, "after", 1).await;
        let took_over = held_by(&ns, standby.name, SHORT_LEASE + SLACK).await - killed;
        reconciled(&ns, "after").await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.store(true, Ordering::Relaxed);
        let failures = traffic.await.expect("the traffic task");
        let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
        eprintln!(
            "through the standby's gateway during the failover: {ok} requests succeeded, {failed} failed; \
             it took over after {took_over:?}"
        );
        assert_eq!(failed, 0, "failed requests: {failures:?}");
        assert!(
            ok > before_kill + 50,
            "traffic flowed throughout: {before_kill} before the kill, {ok} in all"
        );
        assert!(standby.leads().await.expect("the new leader's metrics"));
    })
    .await;
}

/// A kubeconfig like the cluster's whose API server is at `server`; removed when dropped.
struct KubeconfigFile(PathBuf);

impl KubeconfigFile {
    fn pointing_at(server: SocketAddr, ns: &TestNamespace) -> Self {
        let mut kubeconfig = Kubeconfig::read_from(cluster::kubeconfig_path()).expect("read the kubeconfig");
        for named in &mut kubeconfig.clusters {
            if let Some(cluster) = named.cluster.as_mut() {
                cluster.server = Some(format!("https://{server}"));
            }
        }
        // JSON is YAML: kube reads it back as it is.
        let text = serde_json::to_string(&kubeconfig).expect("serialize the kubeconfig");
        let path = std::env::temp_dir().join(format!("microgate-{}-kubeconfig.json", ns.name));
        std::fs::write(&path, text).expect("write the kubeconfig");
        Self(path)
    }
}

impl Drop for KubeconfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Waits until `process`'s metrics say it no longer leads; returns when.
async fn stopped_leading(process: &Microgate, timeout: Duration) -> Instant {
    wait::until(format!("{} to stop leading", process.name), timeout, || async {
        match process.leads().await {
            Ok(false) => Probe::Done(Instant::now()),
            Ok(true) => Probe::NotYet("microgate_leader 1".into()),
            Err(error) => Probe::NotYet(error),
        }
    })
    .await
    .expect("the leader steps down")
}

#[tokio::test]
async fn a_leader_cut_off_from_the_api_server_stops_reconciling_before_the_standby_takes_over() {
    with_namespace("leader-partition", |ns| async move {
        cluster::install_crds(&ns.client, microgate::api::crds()).await;
        let config = cluster::config().await.expect("the cluster's client configuration");
        let api_port = config.cluster_url.port_u16().expect("the API server URL has a port");
        let proxy = CuttableProxy::start(([127, 0, 0, 1], api_port).into())
            .await
            .expect("start the proxy");
        let kubeconfig = KubeconfigFile::pointing_at(proxy.addr(), &ns);
        // alpha first, through the proxy, so that it leads.
        let alpha = Microgate::start_with(&ns, "alpha", Mode::Controller, &SHORT, &kubeconfig.0);
        held_by(&ns, "alpha", WAIT).await;
        let beta = Microgate::start(&ns, "beta", Mode::Controller, &SHORT);
        assert_eq!(one_leader(&ns, &[&alpha, &beta]).await, 0, "alpha leads");

        let cut = Instant::now();
        proxy.cut();
        let stepped_down = stopped_leading(&alpha, SHORT_LEASE + SLACK).await - cut;
        let took_over = held_by(&ns, "beta", SHORT_LEASE + SLACK).await - cut;
        eprintln!(
            "after the cut: alpha stopped reconciling after {stepped_down:?}, beta took over after {took_over:?}"
        );
        assert!(
            stepped_down < took_over,
            "alpha still reconciled when beta took over ({stepped_down:?} ≥ {took_over:?})"
        );

        // Back online, alpha finds the Lease taken and stays a standby.
        proxy.restore();
        let before = alpha.reconciliations().await;
        create_microservice(&ns, "after", 1).await;
        reconciled(&ns, "after").await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(one_leader(&ns, &[&alpha, &beta]).await, 1, "beta leads");
        assert_eq!(alpha.reconciliations().await, before, "alpha reconciled nothing once back");
    })
    .await;
}
