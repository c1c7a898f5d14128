//! The operator's fault scenarios, sized by their callers: the e2e suite runs short versions on
//! every `make test`, the reliability suite the full ones. Each runs the controller in this
//! process (as `microgate controller` does) on the real control plane, breaks something for
//! real, and records what it measured (`microgate_test_support::reliability`) before asserting.

use std::{
    collections::BTreeMap,
    hash::{BuildHasher, Hasher},
    net::SocketAddr,
    time::{Duration, Instant},
};

use futures::StreamExt;
use k8s_openapi::api::{
    admissionregistration::v1::{ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding},
    apps::v1::Deployment,
    coordination::v1::Lease,
    core::v1::{Namespace, Service},
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams},
};
use microgate::{
    api::Microservice,
    controller::{self, Prometheus, Scope},
    discovery::Registry,
    leader,
};
use microgate_test_support::{
    TestNamespace, cluster,
    private_apiserver::PrivateApiServer,
    probe,
    proxy::CuttableProxy,
    reliability::{self, Outcome},
    wait::{self, Probe},
};
use serde_json::json;
use tokio::task::JoinHandle;

use super::fencing::{RecordWrites, WriteLog, closest_handover, recorded_client};

/// The label microgate puts on everything it creates.
const MANAGED: &str = "app.kubernetes.io/managed-by=microgate";

/// A controller running in this process, scoped to one namespace; [`Operator::kill`] (or a drop)
/// aborts it wherever it is, like a `kill -9`: nothing after the abort point runs.
pub struct Operator {
    task: JoinHandle<()>,
    admin: SocketAddr,
}

impl Operator {
    /// Starts a controller with a client, connections and watches of its own.
    pub async fn start(ns: &TestNamespace) -> Self {
        let client = cluster::client().await.expect("a client for the cluster");
        Self::start_with(client, ns).await
    }

    /// Starts a controller for `ns` that reaches the API server through `client`.
    pub async fn start_with(client: Client, ns: &TestNamespace) -> Self {
        let scope = Scope {
            namespace: Some(ns.name.clone()),
            label_selector: None,
        };
        let running = controller::start(
            client,
            scope,
            Registry::default(),
            Prometheus::default(),
            SocketAddr::from(([127, 0, 0, 1], 0)),
            None,
            std::future::pending(),
        )
        .await
        .expect("start the controller");
        Self {
            admin: running.admin_addr,
            task: tokio::spawn(running.serve),
        }
    }

    /// Aborts the controller and waits until its task is gone.
    pub async fn kill(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }

    /// The sum of the series of metric `name` whose labels contain `labels` (e.g.
    /// `error="apply"`), 0 when there is none.
    pub async fn metric(&self, name: &str, labels: &str) -> f64 {
        let answer = probe::get(self.admin, "/metrics")
            .await
            .unwrap_or_else(|e| panic!("the controller's /metrics: {e}"));
        answer
            .body
            .lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
            .filter(|l| l.contains(labels))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A number in `0..bound` that differs between runs: where a kill lands.
fn random_below(bound: u64) -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    hasher.finish() % bound.max(1)
}

fn microservice(name: &str, revision: u32) -> Microservice {
    serde_json::from_value(json!({
        "apiVersion": "microgate.dev/v1alpha1", "kind": "Microservice", "metadata": {"name": name},
        "spec": {"image": "registry.example/echo:1", "replicas": 1,
                 "env": [{"name": "REVISION", "value": revision.to_string()}]},
    }))
    .expect("a valid Microservice")
}

/// Whether the Microservice's status describes its current spec and says Ready.
fn ready_at_current_generation(ms: &Microservice) -> bool {
    let Some(status) = ms.status.as_ref() else {
        return false;
    };
    status.observed_generation.is_some()
        && status.observed_generation == ms.metadata.generation
        && status
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// What is wrong with the namespace as the API server has it now, if anything: every
/// Microservice Ready at its current generation with exactly its own Deployment and Service,
/// and nothing labelled as microgate's that no live Microservice owns.
async fn convergence_problem(ns: &TestNamespace, expected: usize) -> Option<String> {
    let listed = async {
        let all = ListParams::default();
        let managed = ListParams::default().labels(MANAGED);
        Ok::<_, kube::Error>((
            ns.api::<Microservice>().list(&all).await?.items,
            ns.api::<Deployment>().list(&managed).await?.items,
            ns.api::<Service>().list(&managed).await?.items,
        ))
    }
    .await;
    let (microservices, deployments, services) = match listed {
        Ok(lists) => lists,
        Err(error) => return Some(format!("list: {error}")),
    };
    if microservices.len() != expected {
        return Some(format!(
            "{} Microservices, expected {expected}",
            microservices.len()
        ));
    }
    let not_ready: Vec<_> = microservices
        .iter()
        .filter(|ms| !ready_at_current_generation(ms))
        .map(ResourceExt::name_any)
        .collect();
    if !not_ready.is_empty() {
        // Whether the first one waits for its rollout or for the operator to notice it ended.
        let rollout = deployments
            .iter()
            .find(|d| d.name_any() == not_ready[0])
            .and_then(|d| {
                let status = d.status.as_ref()?;
                Some(format!(
                    "its Deployment: generation {:?}, observed {:?}, ready {:?} of {:?}",
                    d.metadata.generation, status.observed_generation, status.ready_replicas, status.replicas
                ))
            })
            .unwrap_or_else(|| "no Deployment status".into());
        return Some(format!(
            "{} not Ready at their current generation, e.g. {:?} ({rollout})",
            not_ready.len(),
            &not_ready[..not_ready.len().min(5)]
        ));
    }
    let uids: BTreeMap<String, String> = microservices
        .iter()
        .map(|ms| (ms.uid().unwrap_or_default(), ms.name_any()))
        .collect();
    let owners = |kind: &str, owned: Vec<(String, Vec<String>)>| -> Result<(), String> {
        let mut per_owner: BTreeMap<&str, usize> = BTreeMap::new();
        for (name, owner_uids) in &owned {
            let live: Vec<_> = owner_uids.iter().filter_map(|uid| uids.get(uid)).collect();
            match live.as_slice() {
                [owner] => *per_owner.entry(owner.as_str()).or_default() += 1,
                _ => return Err(format!("{kind} {name} is an orphan (owners {owner_uids:?})")),
            }
        }
        let wrong: Vec<_> = uids
            .values()
            .filter(|ms| per_owner.get(ms.as_str()) != Some(&1))
            .collect();
        match wrong.first() {
            None => Ok(()),
            Some(ms) => Err(format!(
                "Microservice {ms} owns {} {kind}s",
                per_owner.get(ms.as_str()).unwrap_or(&0)
            )),
        }
    };
    let controllers = |refs: Option<&Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>>| {
        refs.map(|refs| {
            refs.iter()
                .filter(|r| r.kind == "Microservice" && r.controller == Some(true))
                .map(|r| r.uid.clone())
                .collect()
        })
        .unwrap_or_default()
    };
    let deployments = deployments
        .iter()
        .map(|d| (d.name_any(), controllers(d.meta().owner_references.as_ref())))
        .collect();
    let services = services
        .iter()
        .map(|s| (s.name_any(), controllers(s.meta().owner_references.as_ref())))
        .collect();
    owners("Deployment", deployments)
        .and_then(|()| owners("Service", services))
        .err()
}

/// How many Microservices are Ready at their current generation now.
async fn ready_count(ns: &TestNamespace) -> usize {
    ns.api::<Microservice>()
        .list(&ListParams::default())
        .await
        .map(|list| {
            list.items
                .iter()
                .filter(|ms| ready_at_current_generation(ms))
                .count()
        })
        .unwrap_or(0)
}

/// Waits until the namespace has converged (see [`convergence_problem`]); returns when it had.
async fn converged(ns: &TestNamespace, expected: usize, within: Duration) -> Result<Instant, String> {
    converged_with_writes(ns, expected, within)
        .await
        .map(|(at, _)| at)
}

/// [`converged`], and also when the operator had written all it had to: every Microservice's
/// status at its current generation, Ready or not (the rest is the Deployments' rollouts, the
/// controller manager's and the kubelet's work).
async fn converged_with_writes(
    ns: &TestNamespace,
    expected: usize,
    within: Duration,
) -> Result<(Instant, Instant), String> {
    let started = Instant::now();
    let reported = std::sync::Mutex::new(started);
    let written = std::sync::Mutex::new(None::<Instant>);
    let lock = || written.lock().unwrap_or_else(|p| p.into_inner());
    let note_written = || async {
        if lock().is_none() && all_at_current_generation(ns, expected).await {
            lock().get_or_insert_with(Instant::now);
        }
    };
    let done = wait::until("convergence", within, || async {
        note_written().await;
        match convergence_problem(ns, expected).await {
            None => Probe::Done(Instant::now()),
            Some(problem) => {
                // What a slow convergence waits for, every 10 s: the figure alone does not say.
                let mut last = reported.lock().unwrap_or_else(|p| p.into_inner());
                if last.elapsed() >= Duration::from_secs(10) {
                    *last = Instant::now();
                    eprintln!("not converged after {:?}: {problem}", started.elapsed());
                }
                Probe::NotYet(problem)
            }
        }
    })
    .await
    .map_err(|e| e.to_string())?;
    let written = lock().unwrap_or(done);
    Ok((done, written.min(done)))
}

/// Whether `expected` Microservices exist and each one's status describes its current spec.
async fn all_at_current_generation(ns: &TestNamespace, expected: usize) -> bool {
    ns.api::<Microservice>()
        .list(&ListParams::default())
        .await
        .is_ok_and(|list| {
            list.items.len() == expected
                && list.items.iter().all(|ms| {
                    let observed = ms.status.as_ref().and_then(|s| s.observed_generation);
                    observed.is_some() && observed == ms.metadata.generation
                })
        })
}

/// Sets every Microservice named in `names` to `revision` (a new env value: a rollout).
async fn set_revision(ns: &TestNamespace, names: &[String], revision: u32) {
    let api = ns.api::<Microservice>();
    let patch = json!({"spec": {"env": [{"name": "REVISION", "value": revision.to_string()}]}});
    for name in names {
        api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap_or_else(|e| panic!("update Microservice {name}: {e}"));
    }
}

/// The operator killed at random points while `count` Microservices reconcile, `kills` times.
///
/// Round 0 kills it while it creates everything; every later round changes every spec (a
/// rollout each), replaces one Microservice by a new one (so the garbage collector has children
/// to remove), and kills the operator at a random moment within `kill_window` of its start.
/// After each kill a fresh operator starts; the time until everything has converged is one
/// figure. Target: each within 30 s, exactly one Deployment and one Service per Microservice,
/// no orphans.
pub async fn killed_at_random_points(ns: &TestNamespace, scenario: &str, count: usize, kills: u32) {
    const TARGET: Duration = Duration::from_secs(30);
    let kill_window = Duration::from_millis(3000);
    cluster::install_crds(&ns.client, microgate::api::crds()).await;
    let api = ns.api::<Microservice>();
    let mut names: Vec<String> = (0..count).map(|i| format!("svc-{i:03}")).collect();
    for name in &names {
        api.create(&PostParams::default(), &microservice(name, 0))
            .await
            .unwrap_or_else(|e| panic!("create Microservice {name}: {e}"));
    }
    let mut operator = Operator::start(ns).await;
    let mut took = Vec::new();
    let mut unfinished_at_kill = Vec::new();
    let mut writes = Vec::new();
    let mut problems = Vec::new();
    for round in 0..kills {
        if round > 0 {
            set_revision(ns, &names, round).await;
            let gone = names.remove(random_below(names.len() as u64) as usize);
            api.delete(&gone, &DeleteParams::background())
                .await
                .unwrap_or_else(|e| panic!("delete Microservice {gone}: {e}"));
            let fresh = format!("svc-r{round:02}");
            api.create(&PostParams::default(), &microservice(&fresh, round))
                .await
                .unwrap_or_else(|e| panic!("create Microservice {fresh}: {e}"));
            names.push(fresh);
        }
        let kill_after = Duration::from_millis(random_below(kill_window.as_millis() as u64));
        tokio::time::sleep(kill_after).await;
        operator.kill().await;
        let done_at_kill = ready_count(ns).await;
        let restarted = Instant::now();
        operator = Operator::start(ns).await;
        match converged_with_writes(ns, names.len(), TARGET * 4).await {
            Ok((at, written)) => {
                let elapsed = at - restarted;
                writes.push(written - restarted);
                eprintln!(
                    "round {round}: killed {kill_after:?} in, {done_at_kill} of {} done; statuses current {:?} and converged {elapsed:?} after the restart",
                    names.len(),
                    written - restarted
                );
                took.push(elapsed);
                unfinished_at_kill.push(names.len() - done_at_kill);
            }
            Err(problem) => {
                eprintln!("round {round}: killed {kill_after:?} in; not converged: {problem}");
                problems.push(format!("round {round}: {problem}"));
                break;
            }
        }
    }
    drop(operator);
    let worst = took.iter().max().copied().unwrap_or_default();
    let mut sorted = took.clone();
    sorted.sort();
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or_default();
    let writes_worst = writes.iter().max().copied().unwrap_or_default();
    let met = problems.is_empty() && took.len() == kills as usize && worst <= TARGET;
    reliability::record(&Outcome {
        scenario,
        description: &format!(
            "the operator aborted at a random point (within {:.0} s of creating {count} Microservices, then of a spec change to each) while they reconcile, {kills} times; a fresh one started each time",
            kill_window.as_secs_f64()
        ),
        target: "each restart converged within 30 s (every Microservice Ready at its generation, exactly 1 Deployment + 1 Service each, no orphans)",
        measured: format!(
            "{} of {kills} restarts converged; time to converge median {:.1} s, worst {:.1} s (every status at its generation, the operator's part: worst {:.1} s; the rest is rollouts); Microservices unfinished at each kill {unfinished_at_kill:?}{}",
            took.len(),
            median.as_secs_f64(),
            worst.as_secs_f64(),
            writes_worst.as_secs_f64(),
            problems.first().map(|p| format!("; {p}")).unwrap_or_default()
        ),
        met,
    });
    assert!(problems.is_empty(), "not converged: {problems:?}");
    assert!(worst <= TARGET, "a restart took {worst:?} to converge: {took:?}");
}

/// The names this test makes cluster-wide: unique per namespace.
fn refusal_names(ns: &TestNamespace) -> String {
    format!("microgate-refuse-{}", ns.name)
}

/// A Deployment named `refused` in `ns` is refused by admission (a ValidatingAdmissionPolicy),
/// whatever asks: the real, permanent failure of an operator whose writes a cluster's policy
/// forbids. The policy and its binding are owned by the namespace, so they go with it.
async fn refuse_deployments_named_refused(ns: &TestNamespace) {
    let namespace = Api::<Namespace>::all(ns.client.clone())
        .get(&ns.name)
        .await
        .expect("read the test's namespace");
    let owner = json!([{"apiVersion": "v1", "kind": "Namespace", "name": ns.name,
                        "uid": namespace.uid().unwrap_or_default()}]);
    let name = refusal_names(ns);
    let policy: ValidatingAdmissionPolicy = serde_json::from_value(json!({
        "metadata": {"name": name, "ownerReferences": owner},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{"apiGroups": ["apps"], "apiVersions": ["v1"],
                "operations": ["CREATE", "UPDATE"], "resources": ["deployments"]}]},
            "validations": [{"expression": "object.metadata.name != 'refused'",
                             "message": "Deployments named refused are not admitted in this namespace"}],
        },
    }))
    .expect("a valid policy");
    let binding: ValidatingAdmissionPolicyBinding = serde_json::from_value(json!({
        "metadata": {"name": name, "ownerReferences": owner},
        "spec": {"policyName": name, "validationActions": ["Deny"],
                 "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns.name}}}},
    }))
    .expect("a valid binding");
    Api::<ValidatingAdmissionPolicy>::all(ns.client.clone())
        .create(&PostParams::default(), &policy)
        .await
        .expect("create the admission policy");
    Api::<ValidatingAdmissionPolicyBinding>::all(ns.client.clone())
        .create(&PostParams::default(), &binding)
        .await
        .expect("create the admission policy binding");
    // The API server loads policies asynchronously: wait until a dry run is refused.
    let probe: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "refused"},
        "spec": {"selector": {"matchLabels": {"app": "refused"}},
                 "template": {"metadata": {"labels": {"app": "refused"}},
                              "spec": {"containers": [{"name": "c", "image": "x:1"}]}}},
    }))
    .expect("a valid Deployment");
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    wait::until(
        "the admission policy to refuse",
        Duration::from_secs(30),
        || async {
            match ns.api::<Deployment>().create(&dry_run, &probe).await {
                Err(kube::Error::Api(status)) if status.message.contains("not admitted") => Probe::Done(()),
                other => Probe::NotYet(format!("{:?}", other.map(|d| d.name_any()))),
            }
        },
    )
    .await
    .expect("the policy is in force");
}

/// How many reconciliations exponential backoff from 1 s, doubling up to 5 min, allows in the
/// first `window` after the first failure: attempts at 0, 1, 3, 7, 15 ... s, plus the one a
/// status write triggers at once (the first failure writes the Degraded condition, and the
/// Microservice's own change is an event).
pub fn backoff_allows(window: Duration) -> u32 {
    let mut at = 0u64;
    let mut wait = 1u64;
    let mut attempts = 0;
    while at <= window.as_secs() {
        attempts += 1;
        at += wait;
        wait = (wait * 2).min(300);
    }
    attempts + 1
}

/// A Microservice whose Deployment admission always refuses backs off exponentially, and a
/// healthy one created `healthy_after` into the failure converges promptly. `window` is how long
/// the failing one is watched; `limit` the most reconciliations it may take in it.
pub async fn failing_object_backs_off(
    ns: &TestNamespace,
    scenario: &str,
    window: Duration,
    healthy_after: Duration,
    limit: u32,
) {
    const PROMPT: Duration = Duration::from_secs(30);
    cluster::install_crds(&ns.client, microgate::api::crds()).await;
    refuse_deployments_named_refused(ns).await;
    let operator = Operator::start(ns).await;
    let api = ns.api::<Microservice>();
    api.create(&PostParams::default(), &microservice("refused", 0))
        .await
        .expect("create the Microservice whose Deployment is refused");
    let created = Instant::now();
    let failures = || operator.metric("microgate_reconcile_failures_total", "error=\"apply\"");
    wait::until("the first refused apply", PROMPT, || async {
        if failures().await >= 1.0 {
            Probe::Done(())
        } else {
            Probe::NotYet("no failed apply yet".into())
        }
    })
    .await
    .expect("the refused Microservice fails to reconcile");

    tokio::time::sleep(healthy_after.saturating_sub(created.elapsed())).await;
    api.create(&PostParams::default(), &microservice("healthy", 0))
        .await
        .expect("create the healthy Microservice");
    let healthy_created = Instant::now();
    let healthy = wait::until("the healthy Microservice to be Ready", PROMPT * 2, || async {
        match api.get("healthy").await {
            Ok(ms) if ready_at_current_generation(&ms) => Probe::Done(healthy_created.elapsed()),
            Ok(ms) => Probe::NotYet(format!("{:?}", ms.status.map(|s| s.conditions))),
            Err(error) => Probe::NotYet(error.to_string()),
        }
    })
    .await;

    tokio::time::sleep(window.saturating_sub(created.elapsed())).await;
    let reconciles = failures().await as u32;
    let elapsed = created.elapsed();
    let allowed = backoff_allows(elapsed).min(limit);
    let degraded = api
        .get("refused")
        .await
        .ok()
        .and_then(|ms| ms.status)
        .and_then(|s| s.conditions.into_iter().find(|c| c.type_ == "Degraded"))
        .map(|c| format!("{} {}", c.status, c.reason))
        .unwrap_or_else(|| "none".into());
    let healthy_took = match &healthy {
        Ok(took) => format!("{:.1} s", took.as_secs_f64()),
        Err(error) => format!("never ({error})"),
    };
    let met = reconciles <= allowed && healthy.as_ref().is_ok_and(|d| *d <= PROMPT);
    reliability::record(&Outcome {
        scenario,
        description: &format!(
            "a Microservice whose Deployment admission always refuses, watched for {:.0} s; a healthy one created {:.0} s in",
            elapsed.as_secs_f64(),
            healthy_after.as_secs_f64()
        ),
        target: &format!(
            "≤ {allowed} reconciles of the failing object (exponential backoff from 1 s; ≤ 20 in 10 min); the healthy one Ready within 30 s"
        ),
        measured: format!(
            "{reconciles} reconciles in {:.0} s (Degraded {degraded}); the healthy one Ready after {}",
            elapsed.as_secs_f64(),
            healthy_took
        ),
        met,
    });
    assert!(
        degraded.starts_with("True"),
        "the failing Microservice says Degraded: {degraded}"
    );
    assert!(
        reconciles <= allowed,
        "{reconciles} reconciles in {elapsed:?}; backoff allows {allowed}"
    );
    let healthy = healthy.expect("the healthy Microservice converges");
    assert!(healthy <= PROMPT, "the healthy Microservice took {healthy:?}");
    drop(operator);
}

/// A watch expired for real: the operator, reaching a private API server without a watch cache
/// through a proxy, is cut off; Microservices change meanwhile (specs, one deleted, two
/// created) and etcd is compacted at its current revision, so the operator's watches can only
/// resume at a compacted revision. The test proves that such a watch gets 410 Gone, restores the
/// connection, and measures how long the same operator (no restart) takes to converge.
pub async fn watch_expired_by_compaction(ns: &TestNamespace, scenario: &str) {
    const TARGET: Duration = Duration::from_secs(30);
    const CUT: Duration = Duration::from_secs(3);
    microgate::telemetry::init_logging(false);
    cluster::install_crds(&ns.client, microgate::api::crds()).await;
    let server = PrivateApiServer::start()
        .await
        .expect("start a private API server");
    let proxy = CuttableProxy::start(server.addr())
        .await
        .expect("start the proxy");
    let config = PrivateApiServer::config_at(proxy.addr())
        .await
        .expect("a configuration through the proxy");
    let client = Client::try_from(config).expect("a client through the proxy");
    let api = ns.api::<Microservice>();
    let mut names: Vec<String> = (0..5).map(|i| format!("svc-{i}")).collect();
    for name in &names {
        api.create(&PostParams::default(), &microservice(name, 0))
            .await
            .unwrap_or_else(|e| panic!("create Microservice {name}: {e}"));
    }
    let operator = Operator::start_with(client, ns).await;
    converged(ns, names.len(), TARGET)
        .await
        .expect("the operator converges before the fault");
    let stale = api
        .list(&ListParams::default())
        .await
        .expect("list Microservices")
        .metadata
        .resource_version
        .expect("a list has a resourceVersion");

    proxy.cut();
    set_revision(ns, &names, 1).await;
    let gone = names.remove(0);
    api.delete(&gone, &DeleteParams::background())
        .await
        .expect("delete a Microservice");
    for fresh in ["svc-new-a", "svc-new-b"] {
        api.create(&PostParams::default(), &microservice(fresh, 1))
            .await
            .unwrap_or_else(|e| panic!("create Microservice {fresh}: {e}"));
        names.push(fresh.to_owned());
    }
    let compacted = cluster::compact_etcd().await.expect("compact etcd");
    // What any watch from before the cut now gets from an API server that asks etcd.
    let direct: Api<Microservice> =
        Api::namespaced(server.client().await.expect("a direct client"), &ns.name);
    let expired = match direct.watch(&WatchParams::default(), &stale).await {
        Ok(stream) => {
            let mut stream = std::pin::pin!(stream);
            match tokio::time::timeout(Duration::from_secs(10), stream.next()).await {
                Ok(Some(Ok(WatchEvent::Error(status)))) => status.code == 410,
                other => panic!("a watch from {stale} after compaction at {compacted}: {other:?}"),
            }
        }
        Err(kube::Error::Api(status)) => status.code == 410,
        Err(error) => panic!("a watch from {stale}: {error}"),
    };
    assert!(
        expired,
        "a watch from {stale} after compaction at {compacted} is not 410 Gone"
    );
    tokio::time::sleep(CUT.saturating_sub(Duration::from_millis(100))).await;

    let restored = Instant::now();
    proxy.restore();
    let outcome = converged(ns, names.len(), TARGET * 4)
        .await
        .map(|at| at - restored);
    let alive = !operator.task.is_finished();
    let measured = match &outcome {
        Ok(took) => format!(
            "converged {:.1} s after the connection came back, without a restart (a watch from the stale revision {stale} got 410 after compaction at {compacted})",
            took.as_secs_f64()
        ),
        Err(problem) => format!("not converged: {problem}"),
    };
    reliability::record(&Outcome {
        scenario,
        description: "the operator cut off from the API server (no watch cache) for 3 s while Microservices change; etcd compacted at its current revision, so its watches resume at a compacted revision (410 Gone)",
        target: "re-lists and converges without a restart (within 30 s of reconnecting)",
        measured,
        met: alive && outcome.as_ref().is_ok_and(|took| *took <= TARGET),
    });
    assert!(alive, "the operator's task ended");
    let took = outcome.expect("the operator converges after the watch expired");
    assert!(took <= TARGET, "converged after {took:?}");
    drop(operator);
    server.stop().await;
}

/// A controller replica with leader election, whose writes `log` records.
struct Replica {
    name: String,
    task: JoinHandle<()>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Replica {
    async fn start(ns: &TestNamespace, name: String, log: &WriteLog) -> Self {
        let layer = RecordWrites {
            replica: name.clone(),
            log: log.clone(),
        };
        let client = recorded_client(&layer).await;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let election = leader::Config {
            namespace: ns.name.clone(),
            lease_name: "microgate-controller".into(),
            identity: leader::identity(Some(&name)),
            lease_duration: Duration::from_secs(4),
            renew_deadline: Duration::from_millis(2500),
            retry_period: Duration::from_millis(500),
        };
        let running = controller::start(
            client,
            Scope {
                namespace: Some(ns.name.clone()),
                label_selector: None,
            },
            Registry::default(),
            Prometheus::default(),
            SocketAddr::from(([127, 0, 0, 1], 0)),
            Some(election),
            async {
                let _ = stopped.await;
            },
        )
        .await
        .expect("start a controller replica");
        Self {
            name,
            task: tokio::spawn(running.serve),
            stop: Some(stop),
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The replica whose identity holds the Lease, once one does.
async fn lease_holder(ns: &TestNamespace, replicas: &[Replica]) -> usize {
    wait::until("a replica to hold the Lease", Duration::from_secs(30), || async {
        let holder = ns
            .api::<Lease>()
            .get_opt("microgate-controller")
            .await
            .ok()
            .flatten()
            .and_then(|l| l.spec)
            .and_then(|s| s.holder_identity)
            .unwrap_or_default();
        match replicas.iter().position(|r| {
            holder
                .strip_prefix(&r.name)
                .is_some_and(|rest| rest.starts_with('_'))
        }) {
            Some(index) => Probe::Done(index),
            None => Probe::NotYet(format!("holder {holder:?}")),
        }
    })
    .await
    .expect("a replica leads")
}

/// Two replicas on one Lease; leadership is forced to move `changes` times, alternately by
/// killing the leader (its Lease expires) and by stopping it gracefully (it releases the Lease),
/// a fresh replica joining each time, while every Microservice's spec keeps changing. No two
/// replicas' writes may overlap in time.
pub async fn replicas_never_write_at_once(ns: &TestNamespace, scenario: &str, changes: u32) {
    cluster::install_crds(&ns.client, microgate::api::crds()).await;
    let log = WriteLog::default();
    let api = ns.api::<Microservice>();
    let names: Vec<String> = (0..10).map(|i| format!("svc-{i}")).collect();
    for name in &names {
        api.create(&PostParams::default(), &microservice(name, 0))
            .await
            .unwrap_or_else(|e| panic!("create Microservice {name}: {e}"));
    }
    let mut replicas = vec![
        Replica::start(ns, "replica-0".into(), &log).await,
        Replica::start(ns, "replica-1".into(), &log).await,
    ];
    converged(ns, names.len(), Duration::from_secs(60))
        .await
        .expect("the first leader converges");
    let mut handovers = Vec::new();
    for change in 0..changes {
        let leader = lease_holder(ns, &replicas).await;
        set_revision(ns, &names, change + 1).await;
        tokio::time::sleep(Duration::from_millis(random_below(1500))).await;
        let mut old = replicas.remove(leader);
        let how = if change % 2 == 0 {
            old.task.abort();
            let _ = (&mut old.task).await;
            "killed"
        } else {
            if let Some(stop) = old.stop.take() {
                let _ = stop.send(());
            }
            let _ = tokio::time::timeout(Duration::from_secs(30), &mut old.task).await;
            "stopped"
        };
        let left = Instant::now();
        replicas.push(Replica::start(ns, format!("replica-{}", change + 2), &log).await);
        let next = lease_holder(ns, &replicas).await;
        handovers.push(format!(
            "{} {how}, {} took over after {:.1} s",
            old.name,
            replicas[next].name,
            left.elapsed().as_secs_f64()
        ));
        converged(ns, names.len(), Duration::from_secs(60))
            .await
            .unwrap_or_else(|e| panic!("after {} was {how}: {e}", old.name));
    }
    drop(replicas);
    let writes = log.writes();
    let overlaps = log.overlaps();
    let writers: BTreeMap<String, usize> = writes.iter().fold(BTreeMap::new(), |mut counts, w| {
        *counts.entry(w.replica.clone()).or_default() += 1;
        counts
    });
    let closest = closest_handover(&writes);
    eprintln!("handovers: {handovers:#?}; writes per replica {writers:?}");
    reliability::record(&Outcome {
        scenario,
        description: &format!(
            "two controller replicas on one Lease (4 s), leadership moved {changes} times (the leader killed or stopped in turn, a fresh replica joining), Microservices changing throughout; every write of each recorded"
        ),
        target: "no two replicas' writes overlap in time",
        measured: format!(
            "{} overlapping pairs among {} writes by {} replicas; closest handover between two replicas' writes {:.2} s",
            overlaps.len(),
            writes.len(),
            writers.len(),
            closest.unwrap_or_default().as_secs_f64()
        ),
        met: overlaps.is_empty() && writers.len() > 2,
    });
    let shown: Vec<String> = overlaps
        .iter()
        .take(3)
        .map(|(a, b)| format!("{} {} overlaps {} {}", a.replica, a.what, b.replica, b.what))
        .collect();
    assert!(
        overlaps.is_empty(),
        "{} overlapping writes, e.g. {shown:?}",
        overlaps.len()
    );
    assert!(writers.len() > 2, "leadership moved: writes by {writers:?}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_allows_one_attempt_per_doubling_plus_the_status_echo() {
        // 0, 1, 3, 7, 15, 31 s (63 is past a minute) + 1.
        assert_eq!(backoff_allows(Duration::from_secs(60)), 7);
        // 0 ... 511 s: ten attempts + 1, well within 20.
        assert_eq!(backoff_allows(Duration::from_secs(600)), 11);
    }
}
