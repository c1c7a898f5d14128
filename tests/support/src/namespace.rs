//! One namespace per test, with a fake kubelet playing its Pods, deleted afterwards.
//!
//! ```text
//! with_namespace("scale", |ns| async move {
//!     let deployments: Api<Deployment> = ns.api();
//!     // ...
//! })
//! .await;
//! ```
//! The namespace is deleted even when the test panics (set `MICROGATE_KEEP_NAMESPACES=1` to keep
//! a failed test's namespace for a look with kubectl). The namespace controller finishes the
//! deletion in the background; [`TestNamespace::delete_and_wait`] waits for it.

use std::{
    collections::hash_map::RandomState,
    future::Future,
    hash::{BuildHasher, Hasher},
    net::{Ipv4Addr, SocketAddr},
    panic::AssertUnwindSafe,
    time::Duration,
};

use futures::FutureExt;
use k8s_openapi::{
    NamespaceResourceScope,
    api::core::v1::{Namespace, Pod},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api, Client, Resource,
    api::{DeleteParams, ListParams, PostParams},
};

use crate::{
    backend::Backend,
    cluster::{self, ClusterError},
    kubelet::{Kubelet, KubeletConfig, KubeletError},
    wait::{self, Probe, WaitError},
};

/// Keeps the namespaces of failed tests when set to `1`.
pub const KEEP_NAMESPACES_ENV: &str = "MICROGATE_KEEP_NAMESPACES";

/// How long a namespace may take to disappear after deletion.
const DELETION_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Kubelet(#[from] KubeletError),
    #[error("{context}: {source}")]
    Kube {
        context: String,
        #[source]
        source: kube::Error,
    },
    #[error(transparent)]
    Wait(#[from] WaitError),
}

/// A test's namespace on the local cluster, and the kubelet that runs its Pods. Cheap to clone.
#[derive(Clone)]
pub struct TestNamespace {
    pub client: Client,
    pub name: String,
    pub kubelet: Kubelet,
}

impl TestNamespace {
    /// Creates `<prefix>-<random>` and starts a kubelet for it.
    pub async fn create(prefix: &str) -> Result<Self, HarnessError> {
        let client = cluster::client().await?;
        let name = unique_name(prefix);
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(
                    [(
                        "app.kubernetes.io/part-of".to_owned(),
                        "microgate-tests".to_owned(),
                    )]
                    .into(),
                ),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .map_err(|source| HarnessError::Kube {
                context: format!("create namespace {name}"),
                source,
            })?;
        let kubelet = Kubelet::start(
            client.clone(),
            KubeletConfig {
                namespace: Some(name.clone()),
                serve_logs: false,
            },
        )
        .await?;
        Ok(Self {
            client,
            name,
            kubelet,
        })
    }

    /// An API handle for a namespaced kind in this namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope>,
        <K as Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// The backend playing `pod`'s first container port.
    pub fn backend(&self, pod: &str) -> Option<Backend> {
        self.kubelet.backend(&self.name, pod)
    }

    /// The address the kubelet gave `pod`.
    pub fn pod_ip(&self, pod: &str) -> Option<Ipv4Addr> {
        self.kubelet.pod_ip(&self.name, pod)
    }

    /// `pod`'s IP and `port`, for connecting to it.
    pub fn pod_addr(&self, pod: &str, port: u16) -> Option<SocketAddr> {
        self.pod_ip(pod).map(|ip| SocketAddr::from((ip, port)))
    }

    /// Kills `pod`'s backend abruptly (see [`Kubelet::kill`]); returns its handle.
    pub async fn kill(&self, pod: &str) -> Result<Backend, HarnessError> {
        let killed = self.kubelet.kill(&self.name, pod).await?;
        killed.into_iter().next().ok_or_else(|| {
            HarnessError::Kubelet(KubeletError::UnknownPod(format!(
                "{}/{pod} has no backend",
                self.name
            )))
        })
    }

    /// Flips `pod`'s readiness, as a passing or failing readiness probe would.
    pub async fn set_ready(&self, pod: &str, ready: bool) -> Result<(), HarnessError> {
        Ok(self.kubelet.set_ready(&self.name, pod, ready).await?)
    }

    /// Deletes the namespace without waiting for the namespace controller to finish.
    ///
    /// Once the namespace is terminating nothing new can be created in it, so the kubelet stops
    /// and every Pod left is deleted with grace period 0: bound Pods would otherwise wait for a
    /// kubelet forever and hold the namespace in `Terminating`.
    pub async fn delete(self) -> Result<(), HarnessError> {
        let namespaces = Api::<Namespace>::all(self.client.clone());
        let marked = match namespaces.delete(&self.name, &DeleteParams::background()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(source) => Err(HarnessError::Kube {
                context: format!("delete namespace {}", self.name),
                source,
            }),
        };
        self.kubelet.stop().await;
        marked?;
        let force = DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::background()
        };
        match self
            .api::<Pod>()
            .delete_collection(&force, &ListParams::default())
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(source) => Err(HarnessError::Kube {
                context: format!("force-delete the pods of {}", self.name),
                source,
            }),
        }
    }

    /// [`delete`](Self::delete), then waits until the API server no longer has the namespace.
    pub async fn delete_and_wait(self) -> Result<(), HarnessError> {
        let namespaces = Api::<Namespace>::all(self.client.clone());
        let name = self.name.clone();
        self.delete().await?;
        wait::until(
            format!("namespace {name} to be gone"),
            DELETION_TIMEOUT,
            || async {
                match namespaces.get_opt(&name).await {
                    Ok(None) => Probe::Done(()),
                    Ok(Some(namespace)) => Probe::NotYet(format!(
                        "phase {:?}, conditions {:?}",
                        namespace.status.as_ref().and_then(|s| s.phase.clone()),
                        namespace.status.as_ref().and_then(|s| s.conditions.clone())
                    )),
                    Err(error) => Probe::NotYet(error.to_string()),
                }
            },
        )
        .await?;
        Ok(())
    }
}

/// Runs `test` in a fresh namespace and deletes the namespace afterwards, even if `test` panics.
pub async fn with_namespace<F, Fut>(prefix: &str, test: F)
where
    F: FnOnce(TestNamespace) -> Fut,
    Fut: Future<Output = ()>,
{
    let namespace = match TestNamespace::create(prefix).await {
        Ok(namespace) => namespace,
        Err(error) => panic!("could not set up the test namespace: {error}"),
    };
    let outcome = AssertUnwindSafe(test(namespace.clone())).catch_unwind().await;
    let keep = outcome.is_err() && std::env::var(KEEP_NAMESPACES_ENV).is_ok_and(|v| v == "1");
    if keep {
        eprintln!(
            "keeping namespace {} of the failed test ({KEEP_NAMESPACES_ENV}=1)",
            namespace.name
        );
        namespace.kubelet.stop().await;
    } else if let Err(error) = namespace.clone().delete().await {
        // A failed test's own panic says more than the cleanup's; report cleanup failures of passing tests.
        if outcome.is_ok() {
            panic!("could not delete test namespace {}: {error}", namespace.name);
        }
        eprintln!("could not delete test namespace {}: {error}", namespace.name);
    }
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// `<prefix>-<6 hex digits>`: unique across concurrent tests and earlier runs.
fn unique_name(prefix: &str) -> String {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    let suffix = hasher.finish() & 0xff_ffff;
    let prefix: String = prefix.chars().take(50).collect();
    format!("{prefix}-{suffix:06x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_names_are_valid_distinct_dns_labels() {
        let a = unique_name("scale");
        let b = unique_name("scale");
        assert_ne!(a, b);
        assert!(a.starts_with("scale-") && a.len() == "scale-".len() + 6, "{a}");
        assert!(unique_name(&"x".repeat(80)).len() <= 63);
    }
}
