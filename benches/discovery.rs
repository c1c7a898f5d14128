//! `make bench-discovery`: how fast discovery sees Pod changes, and what it costs at scale, on
//! the local control plane. A benchmark, not a test: it reports figures and asserts nothing.
//!
//! 1. Propagation: Pods of many Microservices run with real backends; the bench flips their
//!    readiness one at a time (≥ 1000 transitions) and measures, per transition, the time from
//!    just before the status write leaves the bench to the moment the registry published the
//!    snapshot that has it.
//! 2. Scale: the release `microgate controller` runs as its own process while the bench creates
//!    1000 Microservices and 10 000 Pods (created directly, Ready with an IP, no backends), then
//!    churns readiness for a while; it reports the controller's RSS (steady and peak), CPU time,
//!    and endpoint status writes per second during the churn.
//!
//! Options (environment): BENCH_FLIPS (default 1000), BENCH_SERVICES (1000), BENCH_PODS_PER_SERVICE
//! (10), BENCH_CHURN_SECONDS (10), BENCH_SKIP_SCALE=1.

use std::{
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use futures::{StreamExt, stream};
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod};
use kube::{
    Api, ResourceExt,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use microgate::{
    api::Microservice,
    discovery::{self, DiscoveryMetrics, Registry, ServiceKey},
};
use microgate_test_support::{TestNamespace, cluster, probe};
use serde_json::json;

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let flips = env_number("BENCH_FLIPS", 1000);
    let services = env_number("BENCH_SERVICES", 1000);
    let pods_per_service = env_number("BENCH_PODS_PER_SERVICE", 10);
    let churn_seconds = env_number("BENCH_CHURN_SECONDS", 10);

    println!("## Discovery benchmark\n");
    println!(
        "Command: `make bench-discovery` (BENCH_FLIPS={flips}, BENCH_SERVICES={services}, BENCH_PODS_PER_SERVICE={pods_per_service}, BENCH_CHURN_SECONDS={churn_seconds})\n"
    );
    propagation(flips).await;
    if std::env::var("BENCH_SKIP_SCALE").is_ok_and(|v| v == "1") {
        return;
    }
    scale(services, pods_per_service, churn_seconds).await;
}

/// Part 1: readiness transitions → registry snapshots.
async fn propagation(flips: usize) {
    let ns = TestNamespace::create("bench-propagation")
        .await
        .expect("a namespace");
    let (services, replicas) = (20, 5);
    let registry = Registry::default();
    let metrics = DiscoveryMetrics::register(&mut Default::default());
    let watch = tokio::spawn({
        let (client, registry, namespace) = (ns.client.clone(), registry.clone(), ns.name.clone());
        async move { discovery::run(client, Some(namespace), registry, metrics).await }
    });

    let deployments = ns.api::<Deployment>();
    for i in 0..services {
        let name = format!("svc-{i}");
        let deployment: Deployment = serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"microgate.dev/microservice": name}},
                "template": {"metadata": {"labels": {"microgate.dev/microservice": name}},
                    "spec": {"containers": [{"name": "app", "image": "registry.example/app:1",
                        "ports": [{"name": "http", "containerPort": 8080}]}]}}},
        }))
        .expect("a valid Deployment");
        deployments
            .create(&PostParams::default(), &deployment)
            .await
            .expect("create a deployment");
    }
    let total = services * replicas;
    let pods = ns.api::<Pod>();
    let started = Instant::now();
    loop {
        let ready: usize = (0..services)
            .map(|i| {
                registry
                    .snapshot(&ServiceKey::new(&ns.name, &format!("svc-{i}")))
                    .ready_count()
            })
            .sum();
        if ready == total {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "pods did not become ready ({ready}/{total})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("### Propagation: Pod readiness change → registry snapshot\n");
    println!(
        "{services} Microservices × {replicas} Pods ({total}) on the local control plane; {total} Pods went Ready in {:.1} s from the Deployments' creation.\n",
        started.elapsed().as_secs_f64()
    );

    let all: Vec<(String, String)> = pods
        .list(&ListParams::default())
        .await
        .expect("list pods")
        .items
        .iter()
        .map(|p| (p.name_any(), p.labels()["microgate.dev/microservice"].clone()))
        .collect();
    let mut changes = registry.subscribe();
    let mut delays = Vec::with_capacity(flips);
    for i in 0..flips {
        let (pod, service) = &all[i % all.len()];
        // Each pod goes unready on its first visit, ready on its second, and so on.
        let ready = (i / all.len()) % 2 == 1;
        let key = ServiceKey::new(&ns.name, service);
        changes.borrow_and_update();
        let sent = Instant::now();
        ns.set_ready(pod, ready).await.expect("flip readiness");
        let published = loop {
            let snapshot = registry.snapshot(&key);
            if let Some(endpoint) = snapshot.endpoints.iter().find(|e| &*e.pod == pod)
                && endpoint.ready == ready
            {
                break snapshot.published.expect("a published snapshot");
            }
            tokio::time::timeout(Duration::from_secs(10), changes.changed())
                .await
                .expect("the registry sees the flip within 10 s")
                .expect("registry alive");
        };
        delays.push(published.saturating_duration_since(sent));
    }
    report("readiness flip → registry", &mut delays);
    watch.abort();
    ns.delete().await.expect("delete the namespace");
}

fn report(what: &str, delays: &mut [Duration]) {
    delays.sort();
    let at = |p: f64| {
        let index = ((delays.len() as f64 * p).ceil() as usize).clamp(1, delays.len()) - 1;
        delays[index].as_secs_f64() * 1000.0
    };
    println!("| {what} | n | p50 | p95 | p99 | max |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| ms | {} | {:.2} | {:.2} | {:.2} | {:.2} |\n",
        delays.len(),
        at(0.50),
        at(0.95),
        at(0.99),
        delays
            .last()
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or_default()
    );
}

/// The controller process and where its admin endpoints are.
struct ControllerProcess {
    child: Child,
    admin: std::net::SocketAddr,
}

impl ControllerProcess {
    fn start(namespace: &str) -> Self {
        let binary = cluster::repo_root().join("target/release/microgate");
        assert!(
            binary.exists(),
            "build it first: cargo build --release --bin microgate"
        );
        let admin = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
        let child = Command::new(binary)
            .args([
                "controller",
                "--namespace",
                namespace,
                "--admin-addr",
                &admin.to_string(),
            ])
            .env("KUBECONFIG", cluster::kubeconfig_path())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the controller");
        Self { child, admin }
    }

    /// (current RSS, peak RSS) in MiB, and CPU seconds so far.
    fn usage(&self) -> (f64, f64, f64) {
        let pid = self.child.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let kib = |field: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        let ticks: f64 = fields.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0)
            + fields.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
        (kib("VmRSS:") / 1024.0, kib("VmHWM:") / 1024.0, ticks / 100.0)
    }

    async fn metric(&self, name: &str) -> f64 {
        let text = probe::get(self.admin, "/metrics")
            .await
            .map(|a| a.body)
            .unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.trim().parse().ok()))
            .unwrap_or(0.0)
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(19_999)
}

/// Part 2: 1000 Microservices, 10 000 Pods, then churn.
async fn scale(services: usize, pods_per_service: usize, churn_seconds: usize) {
    let client = cluster::client().await.expect("cluster");
    // Its own namespace, without a kubelet: these Pods are never bound, so they delete at once.
    let namespace = format!("bench-scale-{}", std::process::id());
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let ns_object = serde_json::from_value(json!({"metadata": {"name": namespace}})).expect("namespace");
    namespaces
        .create(&PostParams::default(), &ns_object)
        .await
        .expect("create the namespace");

    let controller = ControllerProcess::start(&namespace);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = controller.usage();

    let microservices: Api<Microservice> = Api::namespaced(client.clone(), &namespace);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let started = Instant::now();
    stream::iter(0..services)
        .for_each_concurrent(16, |i| {
            let microservices = microservices.clone();
            async move {
                let ms: Microservice = serde_json::from_value(json!({
                    "apiVersion": "microgate.dev/v1alpha1", "kind": "Microservice",
                    "metadata": {"name": format!("svc-{i}")},
                    "spec": {"image": "registry.example/app:1", "replicas": 0},
                }))
                .expect("a valid Microservice");
                microservices
                    .create(&PostParams::default(), &ms)
                    .await
                    .expect("create a Microservice");
            }
        })
        .await;
    let total = services * pods_per_service;
    let client_ref = Arc::new(pods.clone());
    stream::iter(0..total)
        .for_each_concurrent(32, |n| {
            let pods = client_ref.clone();
            async move {
                let (service, replica) = (n / pods_per_service, n % pods_per_service);
                let name = format!("svc-{service}-{replica}");
                let pod: Pod = serde_json::from_value(json!({
                    "metadata": {"name": name, "labels": {"microgate.dev/microservice": format!("svc-{service}")}},
                    "spec": {"containers": [{"name": "app", "image": "registry.example/app:1",
                        "ports": [{"name": "http", "containerPort": 8080}]}]},
                }))
                .expect("a valid Pod");
                pods.create(&PostParams::default(), &pod).await.expect("create a Pod");
                set_pod_status(&pods, &name, n, true).await;
            }
        })
        .await;
    let created = started.elapsed();

    // Wait until every Microservice's status lists its endpoints.
    let published_at = loop {
        let list = microservices
            .list(&ListParams::default())
            .await
            .expect("list Microservices");
        let done = list
            .items
            .iter()
            .filter(|ms| {
                ms.status
                    .as_ref()
                    .is_some_and(|s| s.ready_endpoints as usize == pods_per_service)
            })
            .count();
        if done == services {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "only {done}/{services} statuses published"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    tokio::time::sleep(Duration::from_secs(5)).await;
    let steady = controller.usage();

    // Churn: flip random pods' readiness as fast as 16 writers go, for churn_seconds.
    let writes_before = controller.metric("microgate_endpoint_status_writes_total").await;
    let cpu_before = controller.usage().2;
    let churn_started = Instant::now();
    let deadline = churn_started + Duration::from_secs(churn_seconds as u64);
    let flips = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    stream::iter(0..16)
        .for_each_concurrent(16, |worker| {
            let (pods, flips) = (client_ref.clone(), flips.clone());
            async move {
                let mut n = worker;
                while Instant::now() < deadline {
                    let pod = (n * 7919) % total;
                    let (service, replica) = (pod / pods_per_service, pod % pods_per_service);
                    let ready = (n / total) % 2 == 1;
                    set_pod_status(&pods, &format!("svc-{service}-{replica}"), pod, ready).await;
                    flips.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    n += 16;
                }
            }
        })
        .await;
    let churn = churn_started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let writes = controller.metric("microgate_endpoint_status_writes_total").await - writes_before;
    let after = controller.usage();
    let flips = flips.load(std::sync::atomic::Ordering::Relaxed);

    println!("### Scale: {services} Microservices, {total} Pods, one controller process\n");
    println!("| figure | value |");
    println!("|---|---|");
    println!("| RSS idle (before any object) | {:.1} MiB |", idle.0);
    println!(
        "| objects created ({services} Microservices, {total} Pods Ready with IPs) | {:.1} s |",
        created.as_secs_f64()
    );
    println!(
        "| every status shows its endpoints | {:.1} s after the first create |",
        published_at.as_secs_f64()
    );
    println!("| RSS steady (5 s after) | {:.1} MiB |", steady.0);
    println!("| CPU time to get there | {:.1} s |", steady.2);
    println!(
        "| churn | {flips} readiness flips in {churn:.1} s ({:.0}/s) |",
        flips as f64 / churn
    );
    println!(
        "| endpoint status writes during churn | {writes:.0} ({:.1}/s; at most {services} Microservices × 2/s) |",
        writes / churn
    );
    println!("| CPU time during churn | {:.1} s |", after.2 - cpu_before);
    println!("| RSS after churn | {:.1} MiB |", after.0);
    println!("| peak RSS (VmHWM) | {:.1} MiB |\n", after.1);

    drop(controller);
    let _ = namespaces.delete(&namespace, &Default::default()).await;
}

async fn set_pod_status(pods: &Api<Pod>, name: &str, n: usize, ready: bool) {
    // Loopback addresses: nothing connects to them in this benchmark, and nothing may leave the machine.
    let ip = format!("127.{}.{}.{}", 200 + (n >> 16) % 50, (n >> 8) % 256, n % 256);
    let value = if ready { "True" } else { "False" };
    let status = json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
        "conditions": [{"type": "Ready", "status": value}, {"type": "ContainersReady", "status": value}]}});
    pods.patch_status(name, &PatchParams::default(), &Patch::Strategic(status))
        .await
        .expect("set pod status");
}
