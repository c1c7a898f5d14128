//! The local control plane, as tests and tools reach it.
//!
//! [`ensure_running`] starts it with `tests/cluster/cluster.sh up` (which reuses a healthy one
//! within a second) once per process; [`client`] connects kube-rs to it with the admin
//! kubeconfig the script writes. A start that fails is an error carrying the script's reason: no
//! test quietly skips because the cluster is missing.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

use kube::{
    Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
};

/// Overrides where the cluster keeps its state (the network-namespace run uses its own).
pub const CLUSTER_DIR_ENV: &str = "MICROGATE_CLUSTER_DIR";

#[derive(Clone, Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("could not start the local control plane (`{script} up`): {reason}")]
    Start { script: String, reason: String },
    #[error("could not read the kubeconfig {path}: {reason}")]
    Kubeconfig { path: String, reason: String },
    #[error("could not build a client from {path}: {reason}")]
    Client { path: String, reason: String },
    #[error("could not read the cluster's state {path}: {reason}")]
    State { path: String, reason: String },
    #[error("etcd at {addr} did not {action}: {reason}")]
    Etcd {
        addr: SocketAddr,
        action: &'static str,
        reason: String,
    },
}

/// Where the running control plane's parts listen (`state.env`, written by `cluster.sh up`).
#[derive(Clone, Debug)]
pub struct State {
    pub api_port: u16,
    /// etcd's client port: plain HTTP on loopback, with etcd's JSON gateway (`/v3/...`).
    pub etcd_port: u16,
    /// The address the API server advertises (loopback, or the private namespace's).
    pub advertise: String,
}

/// The running control plane's ports, starting it if needed.
pub async fn state() -> Result<State, ClusterError> {
    config().await?;
    let path = cluster_dir().join("state.env");
    let error = |reason: String| ClusterError::State {
        path: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(&path).map_err(|e| error(e.to_string()))?;
    let value = |key: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
            .map(str::to_owned)
            .ok_or_else(|| error(format!("no {key}")))
    };
    let port = |key: &str| {
        value(key)?
            .parse::<u16>()
            .map_err(|e| error(format!("{key}: {e}")))
    };
    Ok(State {
        api_port: port("API_PORT")?,
        etcd_port: port("ETCD_PORT")?,
        advertise: value("ADVERTISE")?,
    })
}

/// Compacts etcd's history at its current revision (physically: the old revisions are gone),
/// as the API server does every five minutes, and returns that revision. A watch that resumes
/// from an earlier revision and is served by etcd rather than a watch cache gets 410 Gone.
pub async fn compact_etcd() -> Result<i64, ClusterError> {
    let addr = SocketAddr::from(([127, 0, 0, 1], state().await?.etcd_port));
    let call = |action: &'static str, path: &'static str, body: String| async move {
        let failed = |reason: String| ClusterError::Etcd { addr, action, reason };
        let answer = crate::probe::request(addr, hyper::Method::POST, path, &body)
            .await
            .map_err(|e| failed(e.to_string()))?;
        if !answer.status.is_success() {
            return Err(failed(format!("{}: {}", answer.status, answer.body)));
        }
        serde_json::from_str::<serde_json::Value>(&answer.body).map_err(|e| failed(e.to_string()))
    };
    // Any read answers with the store's current revision in its header.
    let read = call("read", "/v3/kv/range", r#"{"key":"AA==","limit":1}"#.to_owned()).await?;
    let revision = read["header"]["revision"]
        .as_str()
        .and_then(|r| r.parse::<i64>().ok())
        .ok_or_else(|| ClusterError::Etcd {
            addr,
            action: "report its revision",
            reason: read.to_string(),
        })?;
    call(
        "compact",
        "/v3/kv/compaction",
        serde_json::json!({"revision": revision.to_string(), "physical": true}).to_string(),
    )
    .await?;
    Ok(revision)
}

/// The repository root: this crate lives in `tests/support`.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
}

/// Where the cluster's kubeconfig, certificates and logs live.
pub fn cluster_dir() -> PathBuf {
    std::env::var_os(CLUSTER_DIR_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/cluster"))
}

/// The admin kubeconfig of the local cluster.
pub fn kubeconfig_path() -> PathBuf {
    cluster_dir().join("kubeconfig")
}

/// A copy of the admin kubeconfig that reaches the API server at `server` instead (a private
/// API server, or a proxy in front of one; the certificates' names cover every loopback port).
pub fn kubeconfig_for(server: SocketAddr) -> Result<PathBuf, ClusterError> {
    let original = kubeconfig_path();
    let text = std::fs::read_to_string(&original).map_err(|e| ClusterError::Kubeconfig {
        path: original.display().to_string(),
        reason: e.to_string(),
    })?;
    let rewritten: Vec<String> = text
        .lines()
        .map(|line| match line.split_once("server: ") {
            Some((indent, _)) => format!("{indent}server: https://{server}"),
            None => line.to_owned(),
        })
        .collect();
    let path = cluster_dir().join(format!("kubeconfig-{}", server.port()));
    std::fs::write(&path, rewritten.join("\n") + "\n").map_err(|e| ClusterError::Kubeconfig {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    Ok(path)
}

/// The pinned binaries (`kubectl`, `helm`, ...) built for the cluster.
pub fn bin_dir() -> PathBuf {
    repo_root().join("target/cluster/bin")
}

/// Starts the control plane unless a healthy one runs; once per process. Blocks.
pub fn ensure_running() -> Result<PathBuf, ClusterError> {
    static STARTED: OnceLock<Result<PathBuf, ClusterError>> = OnceLock::new();
    STARTED
        .get_or_init(|| {
            let script = repo_root().join("tests/cluster/cluster.sh");
            let start_error = |reason: String| ClusterError::Start {
                script: script.display().to_string(),
                reason,
            };
            // The script's progress and failure reasons go straight to the terminal.
            let status = Command::new("bash")
                .arg(&script)
                .arg("up")
                .env(CLUSTER_DIR_ENV, cluster_dir())
                .status()
                .map_err(|e| start_error(e.to_string()))?;
            if !status.success() {
                return Err(start_error(format!(
                    "it exited with {status}; its output above says why"
                )));
            }
            Ok(kubeconfig_path())
        })
        .clone()
}

/// A kube client for the local cluster, starting the cluster if needed.
pub async fn client() -> Result<Client, ClusterError> {
    let config = config().await?;
    Client::try_from(config).map_err(|e| ClusterError::Client {
        path: kubeconfig_path().display().to_string(),
        reason: e.to_string(),
    })
}

/// The client configuration for the local cluster (e.g. to reach it through a proxy), starting
/// the cluster if needed.
pub async fn config() -> Result<Config, ClusterError> {
    let path = tokio::task::spawn_blocking(ensure_running)
        .await
        .map_err(|e| ClusterError::Start {
            script: "cluster.sh".into(),
            reason: e.to_string(),
        })??;
    let shown = path.display().to_string();
    let kubeconfig = Kubeconfig::read_from(&path).map_err(|e| ClusterError::Kubeconfig {
        path: shown.clone(),
        reason: e.to_string(),
    })?;
    Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|e| ClusterError::Kubeconfig {
            path: shown,
            reason: e.to_string(),
        })
}

/// Runs the pinned kubectl against the local cluster and returns its output; panics with its
/// stderr when it fails (a test helper).
pub fn kubectl(args: &[&str]) -> String {
    let output = Command::new(bin_dir().join("kubectl"))
        .arg("--kubeconfig")
        .arg(kubeconfig_path())
        .args(args)
        .output()
        .expect("run kubectl");
    assert!(
        output.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Installs (or updates) `crds` with server-side apply and waits until each is served; panics
/// saying which failed (a test helper). Tests install the CRDs of the code under test, not the
/// ones a cluster started by an older checkout may hold.
pub async fn install_crds(
    client: &Client,
    crds: Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>,
) {
    use kube::{
        Api, ResourceExt,
        api::{Patch, PatchParams},
        runtime::{conditions, wait::await_condition},
    };
    let api: Api<
        k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    > = Api::all(client.clone());
    let params = PatchParams::apply("microgate-tests").force();
    for crd in crds {
        let name = crd.name_any();
        api.patch(&name, &params, &Patch::Apply(&crd))
            .await
            .unwrap_or_else(|e| panic!("apply CRD {name}: {e}"));
        tokio::time::timeout(
            std::time::Duration::from_secs(30),
            await_condition(api.clone(), &name, conditions::is_crd_established()),
        )
        .await
        .unwrap_or_else(|_| panic!("CRD {name} not established within 30 s"))
        .unwrap_or_else(|e| panic!("watch CRD {name}: {e}"));
    }
}
