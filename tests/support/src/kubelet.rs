//! A fake kubelet: it does what the scheduler and the kubelet would do for the Pods it watches.
//!
//! For each new Pod it binds the Pod to one fake Node (as the scheduler would, through
//! `pods/<name>/binding`), starts a real HTTP [backend](crate::backend) on
//! `<pod IP>:<containerPort>` for every declared port, and then sets the Pod's status: phase
//! Running, `podIP`/`podIPs`, and the PodScheduled, Initialized, ContainersReady and Ready
//! conditions. The backend is listening before the Pod is reported Ready, so whoever sees Ready
//! can connect at once.
//!
//! Bound Pods wait forever for a kubelet to confirm deletion. When a Pod gets a deletion
//! timestamp (scale-down, rollout, garbage collection) this kubelet plays a kubelet's termination
//! sequence: it reports the Pod not Ready, runs its `preStop` sleep (the container keeps serving
//! meanwhile), then "sends SIGTERM": the backend stops accepting, answers the requests in flight,
//! closes its idle connections and exits, killed if it outlives the Pod's grace period. Then it
//! deletes the Pod with grace period 0. A Pod deleted with grace period 0 (`kubectl delete
//! --force`) vanishes at once, and its backend dies with it, as a killed process would. A test
//! namespace being deleted stops its kubelet first (see [`crate::namespace`]), so cleanup does
//! not wait for any of this.
//!
//! Tests flip readiness with [`Kubelet::set_ready`] (a failing probe) and script backends through
//! [`Kubelet::backend`]; from outside the process (the demo, a person with kubectl) the Pod
//! annotations [`STATUS_ANNOTATION`] and [`DELAY_ANNOTATION`] do the same.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex, MutexGuard, OnceLock},
    time::{Duration, Instant},
};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::{
    api::core::v1::{Binding, ContainerStatus, Node, ObjectReference, Pod},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
    jiff::Timestamp,
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions},
    runtime::{WatchStreamExt, watcher},
};
use serde_json::json;
use tokio::{net::TcpListener, task::JoinHandle};

use crate::{
    backend::{Backend, RunningBackend},
    echo_basic::{ECHO_BASIC_IMAGE, EchoConfig, EchoError, PodLog, RunningEcho},
    hostile::{Recorder, RunningRecorder},
    kubelet_logs::{KubeletLogServer, LogServerError},
    pod_env::{self, PodEnvError},
    pod_ips::{PodIpError, PodIpPool},
};

/// A Pod whose (first) container has this image is served by a recording backend
/// ([`crate::hostile::recorder`]) instead of the usual HTTP server.
pub const RECORDER_IMAGE: &str = "microgate.test/recorder:1";

/// The fake Node every Pod is bound to.
pub const NODE_NAME: &str = "microgate-fake-node";
/// The environment variable naming the node's address (and the API server's advertise address).
pub const NODE_IP_ENV: &str = "MICROGATE_ADVERTISE_ADDRESS";

#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    #[error("kubernetes API call failed: {context}: {source}")]
    Kube {
        context: String,
        #[source]
        source: kube::Error,
    },
    #[error(transparent)]
    PodIp(#[from] PodIpError),
    #[error("{NODE_IP_ENV}={0:?} is not an IPv4 address")]
    NodeIp(String),
    #[error("pod {0} is not running on this kubelet")]
    UnknownPod(String),
    #[error("pod {pod} cannot start yet: {source}")]
    Waiting {
        pod: String,
        #[source]
        source: Box<PodEnvError>,
    },
    #[error("pod {pod}'s echo-basic: {source}")]
    Echo {
        pod: String,
        #[source]
        source: EchoError,
    },
    #[error(transparent)]
    LogServer(#[from] LogServerError),
}

fn kube_error(context: impl Into<String>) -> impl FnOnce(kube::Error) -> KubeletError {
    let context = context.into();
    move |source| KubeletError::Kube { context, source }
}

/// Which Pods a kubelet plays: those of one namespace (a test's), or all of them (the demo).
#[derive(Clone, Debug, Default)]
pub struct KubeletConfig {
    pub namespace: Option<String>,
    /// Serve the Pods' logs over HTTPS at the Node's address, as a kubelet's
    /// `/containerLogs/...` (so `kubectl logs` works), and publish that port in the Node's
    /// status. One kubelet per cluster may do it: the Node has one port.
    pub serve_logs: bool,
}

/// A running fake kubelet. Cheap to clone; [`Kubelet::stop`] ends it.
#[derive(Clone)]
pub struct Kubelet {
    shared: Arc<Shared>,
    watch: Arc<Mutex<Option<JoinHandle<()>>>>,
    log_server: Arc<Mutex<Option<KubeletLogServer>>>,
}

pub(crate) struct Shared {
    client: Client,
    node_ip: Ipv4Addr,
    pods: Mutex<HashMap<PodKey, RunningPod>>,
    /// The termination sequences under way, by Pod (and its uid).
    terminating: Mutex<HashMap<PodKey, (String, JoinHandle<()>)>>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub(crate) struct PodKey {
    pub(crate) namespace: String,
    pub(crate) name: String,
}

struct RunningPod {
    uid: String,
    ip: Ipv4Addr,
    backends: Vec<RunningBackend>,
    /// Recording backends, for a Pod whose image is [`RECORDER_IMAGE`] (instead of `backends`).
    recorders: Vec<RunningRecorder>,
    /// The scripting annotations last applied (status, delay).
    scripted: Option<(Option<String>, Option<String>)>,
    /// The echo-basic emulation, for a Pod whose image is [`ECHO_BASIC_IMAGE`].
    echo: Option<RunningEcho>,
    /// What the Pod's container wrote to stdout (echo-basic's lines; empty for other Pods).
    log: Arc<PodLog>,
}

impl RunningPod {
    async fn stop(self) {
        for backend in self.backends {
            backend.stop().await;
        }
        for recorder in self.recorders {
            recorder.stop().await;
        }
        if let Some(echo) = self.echo {
            echo.stop().await;
        }
    }

    /// SIGTERM: the backends finish what they carry within `grace`; the recording and
    /// echo-basic servers, which tests never drain, stop at once.
    async fn terminate(self, grace: Duration) {
        futures::future::join_all(self.backends.into_iter().map(|backend| backend.terminate(grace))).await;
        for recorder in self.recorders {
            recorder.stop().await;
        }
        if let Some(echo) = self.echo {
            echo.stop().await;
        }
    }
}

/// One pool per process, so that kubelets of concurrent tests never hand out the same address.
fn pod_ips() -> Result<&'static PodIpPool, PodIpError> {
    static POOL: OnceLock<Result<PodIpPool, PodIpError>> = OnceLock::new();
    POOL.get_or_init(PodIpPool::from_env)
        .as_ref()
        .map_err(Clone::clone)
}

impl Kubelet {
    /// Registers the fake Node (idempotently) and starts playing kubelet for the configured Pods.
    pub async fn start(client: Client, config: KubeletConfig) -> Result<Self, KubeletError> {
        pod_ips()?;
        let node_ip = match std::env::var(NODE_IP_ENV) {
            Ok(value) => value.parse().map_err(|_| KubeletError::NodeIp(value))?,
            Err(_) => Ipv4Addr::LOCALHOST,
        };
        ensure_node(&client, node_ip).await?;

        let shared = Arc::new(Shared {
            client: client.clone(),
            node_ip,
            pods: Mutex::default(),
            terminating: Mutex::default(),
        });
        let pods: Api<Pod> = match &config.namespace {
            Some(namespace) => Api::namespaced(client, namespace),
            None => Api::all(client),
        };
        let log_server = if config.serve_logs {
            let server = KubeletLogServer::start(node_ip, shared.clone()).await?;
            publish_kubelet_port(&shared.client, server.port()).await?;
            Some(server)
        } else {
            None
        };
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let watch = tokio::spawn(watch_pods(shared.clone(), pods, ready_tx));
        // Only return once the initial list is in, so no Pod created after `start` is missed.
        let _ = ready_rx.await;
        Ok(Self {
            shared,
            watch: Arc::new(Mutex::new(Some(watch))),
            log_server: Arc::new(Mutex::new(log_server)),
        })
    }

    /// What `pod`'s container has written so far (echo-basic's log lines), once the Pod runs.
    pub fn pod_log(&self, namespace: &str, pod: &str) -> Option<Arc<PodLog>> {
        self.shared.pod_log(namespace, pod)
    }

    /// The backend serving `pod`'s first container port, once the Pod runs.
    pub fn backend(&self, namespace: &str, pod: &str) -> Option<Backend> {
        self.backends(namespace, pod).into_iter().next()
    }

    /// The backends serving each of `pod`'s container ports, in declaration order.
    pub fn backends(&self, namespace: &str, pod: &str) -> Vec<Backend> {
        let pods = lock(&self.shared.pods);
        pods.get(&key(namespace, pod))
            .map(|running| running.backends.iter().map(|b| b.handle().clone()).collect())
            .unwrap_or_default()
    }

    /// The recording backend serving `pod`'s first container port, once the Pod runs (a Pod
    /// whose image is [`RECORDER_IMAGE`]).
    pub fn recorder(&self, namespace: &str, pod: &str) -> Option<Recorder> {
        let pods = lock(&self.shared.pods);
        pods.get(&key(namespace, pod))
            .and_then(|running| running.recorders.first())
            .map(|r| r.handle().clone())
    }

    /// The IP this kubelet gave `pod`.
    pub fn pod_ip(&self, namespace: &str, pod: &str) -> Option<Ipv4Addr> {
        lock(&self.shared.pods)
            .get(&key(namespace, pod))
            .map(|running| running.ip)
    }

    /// Names of the Pods whose backends run now, sorted.
    pub fn running_pods(&self, namespace: &str) -> Vec<String> {
        let mut names: Vec<_> = lock(&self.shared.pods)
            .keys()
            .filter(|k| k.namespace == namespace)
            .map(|k| k.name.clone())
            .collect();
        names.sort();
        names
    }

    /// Kills `pod`'s backends as SIGKILL kills a container: listeners and connections vanish at
    /// once, with resets. The Pod itself stays as it is (Ready, until someone says otherwise),
    /// as it does until a real kubelet's probe notices. Returns the killed backends' handles,
    /// whose counters stay readable.
    pub async fn kill(&self, namespace: &str, pod: &str) -> Result<Vec<Backend>, KubeletError> {
        let killed = {
            let mut pods = lock(&self.shared.pods);
            let running = pods
                .get_mut(&key(namespace, pod))
                .ok_or_else(|| KubeletError::UnknownPod(format!("{namespace}/{pod}")))?;
            std::mem::take(&mut running.backends)
        };
        let handles = killed.iter().map(|b| b.handle().clone()).collect();
        for backend in killed {
            backend.kill().await;
        }
        Ok(handles)
    }

    /// Reports the Pod's readiness as a readiness probe would; the backend keeps running.
    pub async fn set_ready(&self, namespace: &str, pod: &str, ready: bool) -> Result<(), KubeletError> {
        if !lock(&self.shared.pods).contains_key(&key(namespace, pod)) {
            return Err(KubeletError::UnknownPod(format!("{namespace}/{pod}")));
        }
        let api: Api<Pod> = Api::namespaced(self.shared.client.clone(), namespace);
        let current = api
            .get_status(pod)
            .await
            .map_err(kube_error(format!("get pod {namespace}/{pod}")))?;
        let patch = readiness_patch(&current, ready, Timestamp::now());
        api.patch_status(pod, &PatchParams::default(), &Patch::Strategic(patch))
            .await
            .map_err(kube_error(format!("set readiness of pod {namespace}/{pod}")))?;
        Ok(())
    }

    /// Stops watching and stops every backend this kubelet runs, terminating or not.
    pub async fn stop(&self) {
        let watch = lock(&self.watch).take();
        if let Some(watch) = watch {
            watch.abort();
            let _ = watch.await;
        }
        let terminations: Vec<_> = lock(&self.shared.terminating)
            .drain()
            .map(|(_, (_, task))| task)
            .collect();
        for task in terminations {
            task.abort();
            let _ = task.await;
        }
        let log_server = lock(&self.log_server).take();
        if let Some(server) = log_server {
            server.stop().await;
        }
        let pods: Vec<_> = lock(&self.shared.pods)
            .drain()
            .map(|(_, running)| running)
            .collect();
        for running in pods {
            running.stop().await;
        }
    }
}

pub(crate) fn key(namespace: &str, name: &str) -> PodKey {
    PodKey {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking test must not wedge the kubelet of the others: the map stays consistent.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn ensure_node(client: &Client, node_ip: Ipv4Addr) -> Result<(), KubeletError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node = Node {
        metadata: ObjectMeta {
            name: Some(NODE_NAME.to_owned()),
            labels: Some([("kubernetes.io/hostname".to_owned(), NODE_NAME.to_owned())].into()),
            ..ObjectMeta::default()
        },
        ..Node::default()
    };
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(error) => return Err(kube_error("create the fake node")(error)),
    }
    let now = Timestamp::now().to_string();
    let status = json!({"status": {
        "addresses": [{"type": "InternalIP", "address": node_ip.to_string()},
                      {"type": "Hostname", "address": NODE_NAME}],
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                        "message": "fake kubelet of the microgate test harness",
                        "lastHeartbeatTime": now, "lastTransitionTime": now}],
        "capacity": {"cpu": "64", "memory": "256Gi", "pods": "10000"},
        "allocatable": {"cpu": "64", "memory": "256Gi", "pods": "10000"},
    }});
    nodes
        .patch_status(NODE_NAME, &PatchParams::default(), &Patch::Strategic(status))
        .await
        .map_err(kube_error("set the fake node's status"))?;
    Ok(())
}

/// Tells the API server where this kubelet serves (`pods/log` is proxied there).
async fn publish_kubelet_port(client: &Client, port: u16) -> Result<(), KubeletError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let status = json!({"status": {"daemonEndpoints": {"kubeletEndpoint": {"Port": port}}}});
    nodes
        .patch_status(NODE_NAME, &PatchParams::default(), &Patch::Strategic(status))
        .await
        .map_err(kube_error("publish the fake node's kubelet port"))?;
    Ok(())
}

/// How long a Pod waiting for something (a Secret to mount) waits before the next try.
const RETRY_WAITING_POD: std::time::Duration = std::time::Duration::from_millis(500);

async fn watch_pods(shared: Arc<Shared>, pods: Api<Pod>, ready: tokio::sync::oneshot::Sender<()>) {
    let mut ready = Some(ready);
    let mut events = watcher(pods.clone(), watcher::Config::default())
        .default_backoff()
        .boxed();
    loop {
        let event = match events.try_next().await {
            Ok(Some(event)) => event,
            Ok(None) => return,
            Err(error) => {
                tracing::warn!(%error, "pod watch failed; retrying");
                continue;
            }
        };
        match event {
            watcher::Event::Apply(pod) | watcher::Event::InitApply(pod) => {
                match shared.sync_pod(&pod).await {
                    Ok(()) => {}
                    Err(KubeletError::Waiting { .. }) => {
                        tokio::spawn(shared.clone().retry_waiting(pod));
                    }
                    Err(error) => {
                        tracing::warn!(pod = %pod.name_any(), %error, "could not play kubelet for the pod");
                    }
                }
            }
            watcher::Event::Delete(pod) => shared.forget(&pod).await,
            watcher::Event::InitDone => {
                if let Some(ready) = ready.take() {
                    let _ = ready.send(());
                }
            }
            watcher::Event::Init => {}
        }
    }
}

impl Shared {
    pub(crate) fn pod_log(&self, namespace: &str, pod: &str) -> Option<Arc<PodLog>> {
        lock(&self.pods)
            .get(&key(namespace, pod))
            .map(|running| running.log.clone())
    }

    /// Tries a waiting Pod again (a kubelet retries mounting a missing Secret) until it runs, is
    /// gone, or fails for another reason. The Pod is read afresh each time.
    async fn retry_waiting(self: Arc<Self>, pod: Pod) {
        let namespace = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        loop {
            tokio::time::sleep(RETRY_WAITING_POD).await;
            let current = match api.get_opt(&name).await {
                Ok(Some(current)) if current.uid() == pod.uid() => current,
                Ok(_) => return,
                Err(error) => {
                    tracing::debug!(pod = %name, %error, "could not read a waiting pod; retrying");
                    continue;
                }
            };
            match self.sync_pod(&current).await {
                Ok(()) => return,
                Err(KubeletError::Waiting { source, .. }) => {
                    tracing::debug!(pod = %name, error = %source, "pod still waiting");
                }
                Err(error) => {
                    tracing::warn!(pod = %name, %error, "could not play kubelet for the pod");
                    return;
                }
            }
        }
    }

    /// Moves one Pod one step towards what a kubelet would have made of it. Every step is
    /// idempotent: the watch may deliver the same Pod again (relists, our own status writes).
    async fn sync_pod(self: &Arc<Self>, pod: &Pod) -> Result<(), KubeletError> {
        let namespace = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);

        if pod.metadata.deletion_timestamp.is_some() {
            return self.begin_termination(&api, pod).await;
        }

        let spec = pod.spec.as_ref();
        match spec.and_then(|spec| spec.node_name.as_deref()) {
            None => return self.bind(&api, pod).await,
            Some(NODE_NAME) => {}
            Some(_) => return Ok(()), // another node's Pod: not ours to run
        }
        let phase = pod.status.as_ref().and_then(|status| status.phase.as_deref());
        if matches!(phase, Some("Succeeded" | "Failed")) {
            return Ok(());
        }
        let pod_key = key(&namespace, &name);
        if let Some(running) = lock(&self.pods).get_mut(&pod_key)
            && Some(&running.uid) == pod.metadata.uid.as_ref()
        {
            running.apply_annotations(pod);
            return Ok(());
        }

        let mut running = self.run(pod).await?;
        running.apply_annotations(pod);
        let ip = running.ip;
        let patch = running_status_patch(pod, self.node_ip, ip, Timestamp::now());
        let replaced = lock(&self.pods).insert(pod_key, running);
        if let Some(replaced) = replaced {
            // A Pod of the same name but another uid (a StatefulSet-like recreate): the old one is gone.
            replaced.stop().await;
        }
        api.patch_status(&name, &PatchParams::default(), &Patch::Strategic(patch))
            .await
            .map_err(kube_error(format!("set status of pod {namespace}/{name}")))?;
        tracing::debug!(pod = %name, %ip, "pod running");
        Ok(())
    }

    async fn bind(&self, api: &Api<Pod>, pod: &Pod) -> Result<(), KubeletError> {
        let name = pod.name_any();
        let binding = Binding {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                uid: pod.metadata.uid.clone(),
                ..ObjectMeta::default()
            },
            target: ObjectReference {
                api_version: Some("v1".to_owned()),
                kind: Some("Node".to_owned()),
                name: Some(NODE_NAME.to_owned()),
                ..ObjectReference::default()
            },
        };
        match api
            .create_subresource::<_, serde_json::Value>("binding", &name, &PostParams::default(), &binding)
            .await
        {
            Ok(_) => Ok(()),
            // Already bound (a repeated event) or already gone: nothing to do.
            Err(kube::Error::Api(status)) if matches!(status.code, 404 | 409) => Ok(()),
            Err(error) => Err(kube_error(format!("bind pod {name}"))(error)),
        }
    }

    /// Gives the Pod an address and starts a backend on each of its container ports (or, for
    /// echo-basic, the emulation on its ports).
    async fn run(&self, pod: &Pod) -> Result<RunningPod, KubeletError> {
        let name = pod.name_any();
        let echo = self.echo_config(pod).await?;
        let ports = match &echo {
            Some(config) => config.ports(),
            None if is_echo_basic(pod) => Vec::new(),
            None => container_ports(pod),
        };
        let previous_ip = pod
            .status
            .as_ref()
            .and_then(|status| status.pod_ip.as_deref())
            .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
            .filter(|ip| pod_ips().is_ok_and(|pool| pool.contains(*ip)));
        // A Pod that already has an IP (this kubelet restarted) keeps it if it is still free.
        if let Some(ip) = previous_ip
            && let Ok(listeners) = bind_all(ip, &ports).await
        {
            return self.serve(pod, ip, listeners, echo);
        }
        let pool = pod_ips()?;
        loop {
            let ip = pool.allocate()?;
            match bind_all(ip, &ports).await {
                Ok(listeners) => return self.serve(pod, ip, listeners, echo),
                // Taken by another process's kubelet: try the next address.
                Err(error) => tracing::debug!(pod = %name, %ip, %error, "address in use; trying the next"),
            }
        }
    }

    /// What echo-basic would read from its environment and mounted Secret, for a Pod of its
    /// image that runs the HTTP server (not its gRPC, TCP or UDP modes, which only have to be
    /// Ready for the HTTP tests).
    async fn echo_config(&self, pod: &Pod) -> Result<Option<EchoConfig>, KubeletError> {
        let Some(container) = pod.spec.iter().flat_map(|spec| spec.containers.first()).next() else {
            return Ok(None);
        };
        if !is_echo_basic(pod) {
            return Ok(None);
        }
        let env = pod_env::environment(pod, container, "", &self.node_ip.to_string());
        let other_mode = ["GRPC_ECHO_SERVER", "TCP_ECHO_SERVER", "UDP_ECHO_SERVER"]
            .iter()
            .any(|mode| env.get(*mode).is_some_and(|v| !v.is_empty()));
        if other_mode {
            return Ok(None);
        }
        let pod_name = || format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any());
        let files = pod_env::volume_files(&self.client, pod, container)
            .await
            .map_err(|source| KubeletError::Waiting {
                pod: pod_name(),
                source: Box::new(source),
            })?;
        let config = EchoConfig::from_env(&env, |path| files.get(path).cloned()).map_err(|source| {
            KubeletError::Echo {
                pod: pod_name(),
                source,
            }
        })?;
        Ok(Some(config))
    }

    fn serve(
        &self,
        pod: &Pod,
        ip: Ipv4Addr,
        listeners: Vec<TcpListener>,
        echo: Option<EchoConfig>,
    ) -> Result<RunningPod, KubeletError> {
        let name = pod.name_any();
        let log = Arc::new(PodLog::default());
        if let Some(config) = echo {
            let echo =
                RunningEcho::serve(listeners, config, log.clone()).map_err(|source| KubeletError::Echo {
                    pod: format!("{}/{name}", pod.namespace().unwrap_or_default()),
                    source,
                })?;
            return Ok(RunningPod {
                uid: pod.uid().unwrap_or_default(),
                ip,
                backends: Vec::new(),
                recorders: Vec::new(),
                scripted: None,
                echo: Some(echo),
                log,
            });
        }
        let recording = pod
            .spec
            .iter()
            .flat_map(|spec| spec.containers.first())
            .any(|container| container.image.as_deref() == Some(RECORDER_IMAGE));
        let (backends, recorders) = if recording {
            let recorders = listeners
                .into_iter()
                .filter_map(|listener| RunningRecorder::serve(listener).ok())
                .collect();
            (Vec::new(), recorders)
        } else {
            let backends = listeners
                .into_iter()
                .filter_map(|listener| RunningBackend::serve(listener, &name).ok())
                .collect();
            (backends, Vec::new())
        };
        Ok(RunningPod {
            uid: pod.uid().unwrap_or_default(),
            ip,
            backends,
            recorders,
            scripted: None,
            echo: None,
            log,
        })
    }

    /// Starts the termination sequence of a Pod that got a deletion timestamp (once; the watch
    /// delivers the Pod again for every change). A Pod this kubelet does not run is deleted at once.
    async fn begin_termination(self: &Arc<Self>, api: &Api<Pod>, pod: &Pod) -> Result<(), KubeletError> {
        let pod_key = key(&pod.namespace().unwrap_or_default(), &pod.name_any());
        let uid = pod.uid().unwrap_or_default();
        // Under way already (its backend may be past the map, finishing what it carries).
        if lock(&self.terminating)
            .get(&pod_key)
            .is_some_and(|(of, _)| *of == uid)
        {
            return Ok(());
        }
        let running = lock(&self.pods)
            .get(&pod_key)
            .is_some_and(|running| running.uid == uid);
        if !running {
            return delete_now(api, pod).await;
        }
        let mut terminating = lock(&self.terminating);
        if terminating.get(&pod_key).is_some_and(|(of, _)| *of == uid) {
            return Ok(());
        }
        let task = tokio::spawn(self.clone().terminate(api.clone(), pod.clone()));
        if let Some((_, replaced)) = terminating.insert(pod_key, (uid, task)) {
            replaced.abort();
        }
        Ok(())
    }

    /// A kubelet's termination sequence for one Pod (see the module's documentation).
    async fn terminate(self: Arc<Self>, api: Api<Pod>, pod: Pod) {
        let started = Instant::now();
        let name = pod.name_any();
        let pod_key = key(&pod.namespace().unwrap_or_default(), &name);
        let grace = pod
            .metadata
            .deletion_grace_period_seconds
            .and_then(|seconds| u64::try_from(seconds).ok())
            .map_or(DEFAULT_GRACE_PERIOD, Duration::from_secs);
        let patch = readiness_patch(&pod, false, Timestamp::now());
        if let Err(error) = api
            .patch_status(&name, &PatchParams::default(), &Patch::Strategic(patch))
            .await
        {
            tracing::debug!(pod = %name, %error, "could not report a terminating pod unready");
        }
        let pre_stop = pre_stop_sleep(&pod).min(grace);
        tracing::debug!(pod = %name, ?pre_stop, ?grace, "terminating: preStop");
        tokio::time::sleep(pre_stop).await;
        // What is left of the grace period; a kubelet grants 2 s more when preStop used it all.
        let left = grace
            .saturating_sub(started.elapsed())
            .max(PRE_STOP_OVERRUN_GRACE);
        let running = {
            let mut pods = lock(&self.pods);
            match pods.get(&pod_key) {
                Some(running) if Some(&running.uid) == pod.metadata.uid.as_ref() => pods.remove(&pod_key),
                _ => None,
            }
        };
        if let Some(running) = running {
            running.terminate(left).await;
        }
        // Off the list before the delete, whose watch event would otherwise find this task
        // still running and kill it.
        {
            let mut terminating = lock(&self.terminating);
            if terminating
                .get(&pod_key)
                .is_some_and(|(uid, _)| Some(uid) == pod.metadata.uid.as_ref())
            {
                terminating.remove(&pod_key);
            }
        }
        if let Err(error) = delete_now(&api, &pod).await {
            tracing::warn!(pod = %name, %error, "could not delete a terminated pod");
        }
        tracing::debug!(pod = %name, took = ?started.elapsed(), "terminated");
    }

    /// Stops the Pod's backends at once, if this kubelet runs it: the Pod is gone (deleted with
    /// grace period 0, or its termination ended).
    async fn forget(&self, pod: &Pod) {
        let pod_key = key(&pod.namespace().unwrap_or_default(), &pod.name_any());
        let termination = {
            let mut terminating = lock(&self.terminating);
            match terminating.get(&pod_key) {
                Some((uid, _)) if Some(uid) == pod.metadata.uid.as_ref() => terminating.remove(&pod_key),
                _ => None,
            }
        };
        if let Some((_, task)) = termination
            && !task.is_finished()
        {
            // Deleted under the sequence's feet (grace period 0): the process is killed.
            task.abort();
        }
        let removed = {
            let mut pods = lock(&self.pods);
            match pods.get(&pod_key) {
                Some(running) if Some(&running.uid) == pod.metadata.uid.as_ref() => pods.remove(&pod_key),
                _ => None,
            }
        };
        if let Some(running) = removed {
            running.stop().await;
        }
    }
}

/// Annotations that script a running Pod's backends from outside the process (the demo, a
/// person with kubectl): `fake.microgate.dev/status: "503"` answers that status,
/// `fake.microgate.dev/delay-ms: "200"` waits first. Removing an annotation restores the default.
pub const STATUS_ANNOTATION: &str = "fake.microgate.dev/status";
pub const DELAY_ANNOTATION: &str = "fake.microgate.dev/delay-ms";

impl RunningPod {
    /// Scripts the backends from the annotations when they changed (so a test's own scripting
    /// through [`Kubelet::backend`] survives unrelated Pod events).
    fn apply_annotations(&mut self, pod: &Pod) {
        let annotation = |name: &str| {
            pod.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(name))
                .cloned()
        };
        let scripted = (annotation(STATUS_ANNOTATION), annotation(DELAY_ANNOTATION));
        if self.scripted.as_ref() == Some(&scripted) {
            return;
        }
        let status = scripted
            .0
            .as_deref()
            .and_then(|s| s.parse::<u16>().ok())
            .and_then(|s| hyper::StatusCode::from_u16(s).ok())
            .unwrap_or(hyper::StatusCode::OK);
        let delay = scripted
            .1
            .as_deref()
            .and_then(|d| d.parse::<u64>().ok())
            .unwrap_or(0);
        for backend in &self.backends {
            backend.handle().respond_with_status(status);
            backend.handle().delay(std::time::Duration::from_millis(delay));
        }
        self.scripted = Some(scripted);
    }
}

/// Deletes `pod` with grace period 0, if it is still the same Pod: what a kubelet does once the
/// containers have stopped.
async fn delete_now(api: &Api<Pod>, pod: &Pod) -> Result<(), KubeletError> {
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: pod.uid(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    let name = pod.name_any();
    match api.delete(&name, &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => Ok(()),
        Err(error) => Err(kube_error(format!(
            "force-delete pod {}/{name}",
            pod.namespace().unwrap_or_default()
        ))(error)),
    }
}

/// The grace period of a Pod deleted without one (Kubernetes' default).
const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(30);
/// What a kubelet adds after a `preStop` hook that used the whole grace period.
const PRE_STOP_OVERRUN_GRACE: Duration = Duration::from_secs(2);

/// How long the Pod's `preStop` hooks sleep: the longest `sleep` action of its containers (a
/// kubelet runs them side by side). Other hook kinds (exec, httpGet) are not played.
fn pre_stop_sleep(pod: &Pod) -> Duration {
    pod.spec
        .iter()
        .flat_map(|spec| spec.containers.iter())
        .filter_map(|container| container.lifecycle.as_ref()?.pre_stop.as_ref()?.sleep.as_ref())
        .filter_map(|sleep| u64::try_from(sleep.seconds).ok())
        .max()
        .map_or(Duration::ZERO, Duration::from_secs)
}

/// Whether the Pod's first container runs the Gateway API suite's echo-basic image.
fn is_echo_basic(pod: &Pod) -> bool {
    pod.spec
        .iter()
        .flat_map(|spec| spec.containers.first())
        .any(|container| {
            container
                .image
                .as_deref()
                .is_some_and(|image| image.contains(ECHO_BASIC_IMAGE))
        })
}

fn container_ports(pod: &Pod) -> Vec<u16> {
    let containers = pod.spec.iter().flat_map(|spec| spec.containers.iter());
    containers
        .flat_map(|container| container.ports.iter().flatten())
        .filter(|port| port.protocol.as_deref().is_none_or(|protocol| protocol == "TCP"))
        .filter_map(|port| u16::try_from(port.container_port).ok())
        .collect()
}

async fn bind_all(ip: Ipv4Addr, ports: &[u16]) -> std::io::Result<Vec<TcpListener>> {
    let mut listeners = Vec::with_capacity(ports.len());
    for &port in ports {
        listeners.push(TcpListener::bind(SocketAddr::new(IpAddr::V4(ip), port)).await?);
    }
    Ok(listeners)
}

/// The status a kubelet reports once every container runs and passes its readiness probe.
fn running_status_patch(pod: &Pod, node_ip: Ipv4Addr, pod_ip: Ipv4Addr, now: Timestamp) -> serde_json::Value {
    let now = now.to_string();
    let uid = pod.uid().unwrap_or_default();
    let containers: Vec<_> = pod
        .spec
        .iter()
        .flat_map(|spec| spec.containers.iter())
        .map(|container| {
            json!({
                "name": container.name,
                "image": container.image.clone().unwrap_or_default(),
                "imageID": "",
                "containerID": format!("fake://{uid}/{}", container.name),
                "ready": true,
                "started": true,
                "restartCount": 0,
                "state": {"running": {"startedAt": now}},
            })
        })
        .collect();
    let condition = |type_: &str| json!({"type": type_, "status": "True", "lastTransitionTime": now});
    json!({"status": {
        "phase": "Running",
        "hostIP": node_ip.to_string(),
        "hostIPs": [{"ip": node_ip.to_string()}],
        "podIP": pod_ip.to_string(),
        "podIPs": [{"ip": pod_ip.to_string()}],
        "startTime": now,
        "conditions": [condition("PodScheduled"), condition("Initialized"),
                       condition("ContainersReady"), condition("Ready")],
        "containerStatuses": containers,
    }})
}

/// Ready and ContainersReady (and each container's `ready`) as a readiness probe would set them.
fn readiness_patch(pod: &Pod, ready: bool, now: Timestamp) -> serde_json::Value {
    let value = if ready { "True" } else { "False" };
    let reason = if ready { None } else { Some("ContainersNotReady") };
    let condition = |type_: &str| json!({"type": type_, "status": value, "reason": reason, "lastTransitionTime": now.to_string()});
    // The list is replaced whole by a patch, so each entry is sent complete.
    let containers: Vec<_> = pod
        .status
        .iter()
        .flat_map(|status| status.container_statuses.iter().flatten())
        .map(|container| ContainerStatus {
            ready,
            ..container.clone()
        })
        .collect();
    json!({"status": {
        "conditions": [condition("ContainersReady"), condition("Ready")],
        "containerStatuses": containers,
    }})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web-1", "namespace": "t", "uid": "u-1"},
            "spec": {"containers": [
                {"name": "web", "image": "example/web:1", "ports": [
                    {"containerPort": 8080}, {"containerPort": 9000, "protocol": "UDP"}, {"containerPort": 9090}]},
                {"name": "sidecar", "image": "example/sidecar:1"}]},
        }))
        .expect("valid pod")
    }

    #[test]
    fn only_tcp_container_ports_get_backends() {
        assert_eq!(container_ports(&pod()), vec![8080, 9090]);
    }

    #[test]
    fn running_status_reports_every_container_ready_with_the_pod_ip() {
        let now = Timestamp::from_second(1_700_000_000).expect("valid time");
        let patch = running_status_patch(&pod(), Ipv4Addr::LOCALHOST, Ipv4Addr::new(127, 0, 9, 2), now);
        let status = &patch["status"];
        assert_eq!(status["phase"], "Running");
        assert_eq!(status["podIP"], "127.0.9.2");
        assert_eq!(status["podIPs"][0]["ip"], "127.0.9.2");
        let conditions = status["conditions"].as_array().expect("conditions");
        let types: Vec<_> = conditions
            .iter()
            .map(|c| c["type"].as_str().unwrap_or_default())
            .collect();
        assert_eq!(types, ["PodScheduled", "Initialized", "ContainersReady", "Ready"]);
        assert!(conditions.iter().all(|c| c["status"] == "True"));
        let containers = status["containerStatuses"]
            .as_array()
            .expect("container statuses");
        assert_eq!(containers.len(), 2);
        assert!(containers.iter().all(|c| c["ready"] == true));
    }

    #[test]
    fn the_pre_stop_sleep_is_the_longest_of_the_containers() {
        let mut pod = pod();
        assert_eq!(pre_stop_sleep(&pod), Duration::ZERO);
        let spec = pod.spec.as_mut().expect("spec");
        for (container, seconds) in spec.containers.iter_mut().zip([3, 7]) {
            container.lifecycle = serde_json::from_value(json!({"preStop": {"sleep": {"seconds": seconds}}}))
                .expect("valid lifecycle");
        }
        assert_eq!(pre_stop_sleep(&pod), Duration::from_secs(7));
    }

    #[test]
    fn readiness_patch_flips_ready_and_containers_ready_only() {
        let mut pod = pod();
        let now = Timestamp::from_second(1_700_000_000).expect("valid time");
        let running = running_status_patch(&pod, Ipv4Addr::LOCALHOST, Ipv4Addr::new(127, 0, 9, 2), now);
        pod.status = serde_json::from_value(running["status"].clone()).expect("valid status");
        let patch = readiness_patch(&pod, false, now);
        let conditions = patch["status"]["conditions"].as_array().expect("conditions");
        assert_eq!(conditions.len(), 2);
        assert!(
            conditions
                .iter()
                .all(|c| c["status"] == "False" && c["reason"] == "ContainersNotReady")
        );
        let containers = patch["status"]["containerStatuses"]
            .as_array()
            .expect("container statuses");
        assert_eq!(containers.len(), 2);
        assert!(containers.iter().all(|c| c["ready"] == false));
    }
}
