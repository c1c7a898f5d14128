//! The image `make image` builds, run under a real OCI runtime as the chart's Pod spec asks: it
//! starts as UID and GID 65532 on a read-only root filesystem with no capabilities, no new
//! privileges and the default seccomp profile, connects to the local control plane with a
//! kubeconfig mounted read-only, turns ready on the chart's probe port, serves a request
//! through a Gateway to a Pod the harness plays, and on SIGTERM exits 0 within the chart's
//! termination grace period.
//!
//! Needs the archive (`make image`), umoci, runc and the default seccomp profile (`make
//! image-test` installs them and runs this in a private network namespace, where the chart's
//! ports 8080 and 9090 are free). It fails, never skips, when any of them is missing.

mod bundle;
mod runtime;
mod seccomp;

use std::{
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use bundle::{Bundle, KUBECONFIG_IN_CONTAINER};
use kube::api::PostParams;
use microgate::api::{Gateway, Microservice};
use microgate_test_support::{
    backend::POD_NAME_HEADER,
    cluster, probe,
    wait::{self, Probe},
    with_namespace,
};
use runtime::{Container, ProcessFacts};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Runs `command`, panicking with its output when it fails; returns stdout.
fn run(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?} could not start ({e}): make image-test installs it"));
    assert!(
        output.status.success(),
        "{command:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn archive() -> PathBuf {
    let archive = cluster::repo_root().join(format!("target/image/microgate-{VERSION}.oci.tar"));
    assert!(
        archive.is_file(),
        "{} is missing: build it with `make image`",
        archive.display()
    );
    archive
}

/// The chart rendered with default values, watching only `namespace` (where the test's objects
/// live), and its one Deployment.
fn chart_deployment(namespace: &str) -> Value {
    cluster::ensure_running().expect("the local control plane runs");
    let watch = format!("watchNamespace={namespace}");
    let rendered = run(Command::new(cluster::bin_dir().join("helm"))
        .args([
            "template",
            "microgate",
            "helm/microgate",
            "--namespace",
            namespace,
            "--set",
            &watch,
        ])
        .current_dir(cluster::repo_root()));
    let documents: Vec<Value> = serde_saphyr::from_multiple(&rendered).expect("the chart renders YAML");
    documents
        .into_iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("the chart renders a Deployment")
}

/// The container's env with field references resolved as the kubelet would for `pod`/`namespace`.
fn container_env(container: &Value, pod: &str, namespace: &str) -> Vec<(String, String)> {
    container["env"]
        .as_array()
        .expect("the chart sets env")
        .iter()
        .map(|env| {
            let key = env["name"].as_str().expect("a name").to_owned();
            let value = match (&env["value"], &env["valueFrom"]["fieldRef"]["fieldPath"]) {
                (Value::String(value), _) => value.clone(),
                (_, Value::String(path)) if path == "metadata.name" => pod.to_owned(),
                (_, Value::String(path)) if path == "metadata.namespace" => namespace.to_owned(),
                other => panic!("unexpected env {key}: {other:?}"),
            };
            (key, value)
        })
        .collect()
}

/// The container port a probe of the chart names (`port: admin`).
fn probe_port(container: &Value, probe: &str) -> (String, u16) {
    let get = &container[probe]["httpGet"];
    let path = get["path"].as_str().expect("an HTTP probe path").to_owned();
    let port = match &get["port"] {
        Value::String(name) => container["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .find(|p| &p["name"] == name)
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("no container port named {name}")),
        number => number.as_u64().expect("a port"),
    };
    (path, u16::try_from(port).expect("a port"))
}

/// Fails unless `port` is free on every address: the container binds it on 0.0.0.0.
fn assert_free(port: u16) {
    if let Err(error) = TcpListener::bind(("0.0.0.0", port)) {
        panic!(
            "port {port} is taken here ({error}); `make image-test` runs this test in a private network namespace"
        );
    }
}

/// A copy of the cluster's admin kubeconfig that UID 65532 can read, for the bind mount.
fn readable_kubeconfig(dir: &Path) -> PathBuf {
    let path = dir.join("kubeconfig");
    std::fs::copy(cluster::kubeconfig_path(), &path).expect("copy the kubeconfig");
    let mut permissions = std::fs::metadata(&path).expect("the kubeconfig").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o444);
    std::fs::set_permissions(&path, permissions).expect("make the kubeconfig readable");
    path
}

async fn http_ok(addr: SocketAddr, path: &str, container: &mut Container) -> probe::Answer {
    wait::until(format!("200 from http://{addr}{path}"), WAIT, || {
        container.assert_running();
        async move {
            match probe::get(addr, path).await {
                Ok(answer) if answer.status == 200 => Probe::Done(answer),
                other => Probe::NotYet(format!("{other:?}")),
            }
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}; the container's log:\n{}", container.log()))
}

#[tokio::test]
async fn the_image_runs_as_the_charts_pod_spec_asks_serves_a_gateway_and_stops_on_sigterm() {
    let archive = archive();
    with_namespace("image", |ns| async move {
        let deployment = chart_deployment(&ns.name);
        let pod = &deployment["spec"]["template"]["spec"];
        let container_spec = &pod["containers"][0];
        let (ready_path, admin_port) = probe_port(container_spec, "readinessProbe");
        let (live_path, live_port) = probe_port(container_spec, "livenessProbe");
        let listener_port = container_spec["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .find(|p| p["name"] == "http")
            .and_then(|p| p["containerPort"].as_u64())
            .and_then(|p| u16::try_from(p).ok())
            .expect("the chart's gateway listener port");
        for port in [admin_port, listener_port] {
            assert_free(port);
        }

        let work = cluster::repo_root().join(format!("target/image/run-{}", ns.name));
        let bundle = Bundle::unpack(&archive, VERSION, &work);
        assert_eq!(
            bundle.image_config["User"],
            format!(
                "{}:{}",
                pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]
            ),
            "the image's user is the one the chart runs as"
        );
        let certificates = std::fs::read_to_string(bundle.rootfs().join("etc/ssl/certs/ca-certificates.crt"))
            .expect("the CA bundle");
        assert!(
            certificates.matches("BEGIN CERTIFICATE").count() > 100,
            "the image carries the CA certificates"
        );
        let kubeconfig = readable_kubeconfig(&work);
        let env = container_env(container_spec, "microgate-in-runc", &ns.name);
        bundle.configure(pod, container_spec, &env, &kubeconfig);

        let id = format!("microgate-image-{}", ns.name);
        let mut container = Container::start(&id, &bundle.dir, &work.join("container.log"));
        let admin = SocketAddr::from(([127, 0, 0, 1], admin_port));
        http_ok(admin, &ready_path, &mut container).await;
        http_ok(
            SocketAddr::from(([127, 0, 0, 1], live_port)),
            &live_path,
            &mut container,
        )
        .await;

        // What the kernel says about the process the runtime started.
        let facts = ProcessFacts::of(container.pid());
        for field in ["Uid", "Gid"] {
            let ids: Vec<&str> = facts.field(field).split_whitespace().collect();
            assert_eq!(ids, ["65532"; 4], "{field}");
        }
        assert_eq!(facts.field("Groups"), "", "no supplementary groups");
        for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            assert_eq!(facts.field(set), "0000000000000000", "{set}");
        }
        assert_eq!(facts.field("NoNewPrivs"), "1");
        assert_eq!(facts.field("Seccomp"), "2", "a seccomp filter is installed");
        assert!(
            facts.mount_options("/").contains(&"ro".to_owned()),
            "read-only root"
        );
        let limit = std::fs::read_to_string(format!(
            "/sys/fs/cgroup/memory/{}/memory.limit_in_bytes",
            facts.cgroup("memory")
        ))
        .expect("the container's memory cgroup");
        let chart_limit = container_spec["resources"]["limits"]["memory"]
            .as_str()
            .expect("the chart limits memory");
        assert_eq!(
            limit.trim(),
            bundle::quantity_bytes(chart_limit).to_string(),
            "the chart's memory limit"
        );
        assert!(
            facts
                .mount_options(KUBECONFIG_IN_CONTAINER)
                .contains(&"ro".to_owned()),
            "read-only kubeconfig"
        );

        // A Microservice whose Pod the harness plays, and a Gateway on the chart's listener port.
        // The Pod's backend shares this network namespace with the container, so it serves on
        // another port than the listener's (the default, 8080, is the listener's).
        let microservice: Microservice = serde_json::from_value(json!({
            "apiVersion": "microgate.dev/v1alpha1", "kind": "Microservice", "metadata": {"name": "echo"},
            "spec": {"image": "registry.example/echo:1", "replicas": 1, "port": 3000},
        }))
        .expect("a Microservice");
        ns.api::<Microservice>()
            .create(&PostParams::default(), &microservice)
            .await
            .expect("create the Microservice");
        let gateway: Gateway = serde_json::from_value(json!({
            "apiVersion": "microgate.dev/v1alpha1", "kind": "Gateway", "metadata": {"name": "gw"},
            "spec": {"listeners": [{"name": "http", "port": listener_port}],
                     "routes": [{"name": "all", "backends": [{"microservice": "echo"}]}]},
        }))
        .expect("a Gateway");
        ns.api::<Gateway>()
            .create(&PostParams::default(), &gateway)
            .await
            .expect("create the Gateway");
        let answer = http_ok(
            SocketAddr::from(([127, 0, 0, 1], listener_port)),
            "/hello",
            &mut container,
        )
        .await;
        let served_by = answer
            .headers
            .get(POD_NAME_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert!(
            served_by.starts_with("echo-"),
            "served by a Pod of echo: {answer:?}"
        );

        let grace = Duration::from_secs(
            pod["terminationGracePeriodSeconds"]
                .as_u64()
                .expect("the chart sets a grace period"),
        );
        let (status, took) = container.terminate(grace).await;
        let log = std::fs::read_to_string(work.join("container.log")).unwrap_or_default();
        assert!(
            status.success(),
            "the container exited with {status}; its log:\n{log}"
        );
        // The chart logs JSON lines; any error (a refused write, a port it could not bind, a
        // call the API server refused) fails the test.
        assert!(
            !log.contains(r#""level":"ERROR""#) && !log.contains("Read-only file system"),
            "the container logged errors:\n{log}"
        );
        eprintln!("the container exited 0, {took:?} after SIGTERM (grace period {grace:?})");
        let _ = std::fs::remove_dir_all(&work);
    })
    .await;
}
