//! A second kube-apiserver on the local cluster's etcd, for one test: it serves the same objects
//! as the shared one, can be stopped without disturbing other tests, and runs without a watch
//! cache, so that its watches are served by etcd itself (a watch resuming from a compacted
//! revision then gets 410 Gone, as it would from any API server whose cache has moved on).
//!
//! It reuses the cluster's certificates (their SANs cover 127.0.0.1), so the cluster's admin
//! credentials work against it; it is killed when dropped.

use std::{net::SocketAddr, process::Stdio, time::Duration};

use kube::{Client, Config};
use tokio::process::{Child, Command};

use crate::{
    cluster::{self, ClusterError},
    wait::{self, Probe},
};

#[derive(Debug, thiserror::Error)]
pub enum PrivateApiServerError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("could not start {binary}: {source}")]
    Spawn {
        binary: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the private API server on port {port} never became ready: {reason}; its log: {log}")]
    NotReady { port: u16, reason: String, log: String },
    #[error("could not build a client for the private API server: {0}")]
    Client(String),
}

/// A running private API server; dropping it kills it.
pub struct PrivateApiServer {
    child: Child,
    addr: SocketAddr,
}

impl PrivateApiServer {
    /// Starts it on a free loopback port with `--watch-cache=false` and waits until `/readyz`
    /// answers ok (with the admin's client certificate).
    pub async fn start() -> Result<Self, PrivateApiServerError> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(|source| PrivateApiServerError::Spawn {
                binary: "a free port".into(),
                source,
            })?;
        Self::start_on(port).await
    }

    /// Starts it on `port` (e.g. again, where a stopped one listened), as [`Self::start`] does.
    pub async fn start_on(port: u16) -> Result<Self, PrivateApiServerError> {
        let state = cluster::state().await?;
        let certs = cluster::cluster_dir().join("certs");
        let scratch = std::env::temp_dir().join(format!("microgate-apiserver-{}-{port}", std::process::id()));
        let log = cluster::cluster_dir().join(format!("logs/kube-apiserver-private-{port}.log"));
        // Appended to: a server started again on the same port adds to its predecessor's log.
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|source| PrivateApiServerError::Spawn {
                binary: log.display().to_string(),
                source,
            })?;
        let stderr = log_file
            .try_clone()
            .map_err(|source| PrivateApiServerError::Spawn {
                binary: log.display().to_string(),
                source,
            })?;
        let cert = |name: &str| certs.join(name).display().to_string();
        let binary = cluster::bin_dir().join("kube-apiserver");
        // The shared API server's flags (tests/cluster/cluster.sh) minus its audit log, plus
        // --watch-cache=false; the service-account issuer stays the shared one's.
        let child = Command::new(&binary)
            .arg(format!("--etcd-servers=http://127.0.0.1:{}", state.etcd_port))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--secure-port={port}"))
            .arg(format!("--advertise-address={}", state.advertise))
            .arg("--endpoint-reconciler-type=none")
            .arg(format!("--cert-dir={}", scratch.display()))
            .arg(format!("--tls-cert-file={}", cert("apiserver.crt")))
            .arg(format!("--tls-private-key-file={}", cert("apiserver.key")))
            .arg(format!("--client-ca-file={}", cert("ca.crt")))
            .arg(format!(
                "--service-account-issuer=https://127.0.0.1:{}/",
                state.api_port
            ))
            .arg(format!("--service-account-key-file={}", cert("sa.pub")))
            .arg(format!("--service-account-signing-key-file={}", cert("sa.key")))
            .arg("--service-cluster-ip-range=10.0.0.0/24")
            .arg("--authorization-mode=RBAC")
            .arg("--disable-admission-plugins=ServiceAccount")
            .arg("--enable-admission-plugins=OwnerReferencesPermissionEnforcement")
            .arg("--allow-privileged=true")
            .arg("--watch-cache=false")
            .arg("--v=1")
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| PrivateApiServerError::Spawn {
                binary: binary.display().to_string(),
                source,
            })?;
        let server = Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        let client = server.client().await?;
        let ready = wait::until(
            "the private API server's /readyz",
            Duration::from_secs(90),
            || async {
                let request = hyper::http::Request::get("/readyz").body(Vec::new());
                match request {
                    Ok(request) => match client.request_text(request).await {
                        Ok(body) if body.trim() == "ok" => Probe::Done(()),
                        Ok(body) => Probe::NotYet(body),
                        Err(error) => Probe::NotYet(error.to_string()),
                    },
                    Err(error) => Probe::NotYet(error.to_string()),
                }
            },
        )
        .await;
        match ready {
            Ok(()) => Ok(server),
            Err(error) => {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<_> = text.lines().rev().take(15).collect();
                Err(PrivateApiServerError::NotReady {
                    port,
                    reason: error.to_string(),
                    log: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
                })
            }
        }
    }

    /// Where it listens (HTTPS).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The cluster's admin configuration, pointed at `addr` (this server, or a proxy before it).
    pub async fn config_at(addr: SocketAddr) -> Result<Config, PrivateApiServerError> {
        let mut config = cluster::config().await?;
        config.cluster_url = format!("https://{addr}")
            .parse()
            .map_err(|e: hyper::http::uri::InvalidUri| PrivateApiServerError::Client(e.to_string()))?;
        Ok(config)
    }

    /// An admin client of this server.
    pub async fn client(&self) -> Result<Client, PrivateApiServerError> {
        let config = Self::config_at(self.addr).await?;
        Client::try_from(config).map_err(|e| PrivateApiServerError::Client(e.to_string()))
    }

    /// Kills it and waits until it has exited.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}
