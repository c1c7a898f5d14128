//! Least privilege, proven: the `microgate` binary runs on the host as the chart's service
//! account (a kubeconfig that impersonates it, with the RBAC objects of the install applied) and
//! a whole scenario goes through it. Any forbidden call fails the scenario or shows in its log or
//! in the API server's audit log; and every verb the rules grant must show up in that audit log
//! as used.
//!
//! The control plane audits (at Metadata level) the requests of one admin certificate only, the
//! impersonator's (tests/cluster/cluster.sh); its events name the impersonated user.

use std::{
    collections::BTreeSet,
    io::{Read, Seek, SeekFrom},
    net::SocketAddr,
    path::PathBuf,
    process::Stdio,
    time::Duration,
};

use k8s_openapi::api::{apps::v1::Deployment, core::v1::Service, events::v1::Event as KubeEvent};
use kube::{
    Api,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use microgate::api::{
    AccessPolicy, Gateway, Microservice,
    gateway_api::{GatewayClass, HTTPRoute, KubeGateway, ListenerSet},
};
use microgate_test_support::{
    TestNamespace,
    backend::POD_NAME_HEADER,
    cluster::{self, kubectl},
    probe,
    wait::{self, Probe},
    with_namespace,
};
use serde_json::{Value, json};

use crate::{PLAIN_INSTALL, WAIT, documents, free_port, kinds, object, read, render, repo};

/// An API permission as RBAC and the audit log both name it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Permission {
    group: String,
    resource: String,
    subresource: String,
    verb: String,
}

impl std::fmt::Display for Permission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let group = if self.group.is_empty() {
            "core"
        } else {
            &self.group
        };
        let sub = if self.subresource.is_empty() {
            String::new()
        } else {
            format!("/{}", self.subresource)
        };
        write!(f, "{} {group}/{}{sub}", self.verb, self.resource)
    }
}

/// The rules of every Role and ClusterRole among `objects` that a binding among them grants the
/// service account `namespace/name`.
fn bound_rules(objects: &[Value], namespace: &str, name: &str) -> Vec<Value> {
    let mut rules = Vec::new();
    for binding in objects
        .iter()
        .filter(|o| matches!(o["kind"].as_str(), Some("RoleBinding" | "ClusterRoleBinding")))
    {
        let names_it = binding["subjects"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| s["kind"] == "ServiceAccount" && s["name"] == name && s["namespace"] == namespace);
        if !names_it {
            continue;
        }
        let role = objects
            .iter()
            .find(|o| {
                o["kind"] == binding["roleRef"]["kind"]
                    && o["metadata"]["name"] == binding["roleRef"]["name"]
                    && (o["kind"] == "ClusterRole"
                        || o["metadata"]["namespace"] == binding["metadata"]["namespace"])
            })
            .unwrap_or_else(|| panic!("the role of {binding} is among the objects"));
        rules.extend(role["rules"].as_array().expect("rules").iter().cloned());
    }
    assert!(!rules.is_empty(), "no binding grants {namespace}/{name} anything");
    rules
}

/// Every (group, resource, subresource, verb) the `rules` of Roles and ClusterRoles grant.
fn granted(rules: &[Value]) -> BTreeSet<Permission> {
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .expect("a list")
            .iter()
            .map(|s| s.as_str().expect("a string").to_owned())
            .collect()
    };
    let mut granted = BTreeSet::new();
    for rule in rules {
        // resourceNames narrow a rule to some objects; the verbs are what this check is about.
        assert!(rule.get("nonResourceURLs").is_none(), "{rule}");
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                for verb in strings(&rule["verbs"]) {
                    assert!(
                        group != "*" && resource != "*" && verb != "*",
                        "no wildcards: {rule}"
                    );
                    let (resource, subresource) = resource.split_once('/').unwrap_or((&resource, ""));
                    granted.insert(Permission {
                        group: group.clone(),
                        resource: resource.to_owned(),
                        subresource: subresource.to_owned(),
                        verb: verb.clone(),
                    });
                }
            }
        }
    }
    granted
}

/// The audit log from a point on.
struct Audit {
    path: PathBuf,
    offset: u64,
}

impl Audit {
    fn from_now() -> Self {
        let path = cluster::cluster_dir().join("logs/audit.log");
        let offset = std::fs::metadata(&path)
            .unwrap_or_else(|e| {
                panic!(
                    "{} ({e}): the control plane runs without the audit log; `make cluster-down` and run again",
                    path.display()
                )
            })
            .len();
        Self { path, offset }
    }

    /// The audit events (one per request, or two for a watch) of `user` since [`Audit::from_now`].
    fn events_of(&self, user: &str) -> Vec<Value> {
        let mut file = std::fs::File::open(&self.path).expect("open the audit log");
        file.seek(SeekFrom::Start(self.offset))
            .expect("seek the audit log");
        let mut text = String::new();
        file.read_to_string(&mut text).expect("read the audit log");
        text.lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|event| event["impersonatedUser"]["username"] == user)
            .collect()
    }
}

/// `microgate`, started on the host as a Deployment of the install would start it, but as
/// `user` through impersonation.
struct HostOperator {
    child: tokio::process::Child,
    log: PathBuf,
}

/// A kubeconfig for the local cluster that authenticates as the impersonator and acts as `user`.
fn impersonating_kubeconfig(user: &str, file: &str) -> PathBuf {
    let mut config: Value =
        serde_saphyr::from_str(&read(&cluster::kubeconfig_path())).expect("the kubeconfig is YAML");
    let certs = cluster::cluster_dir().join("certs");
    config["users"] = json!([{"name": "impersonator", "user": {
        "client-certificate": certs.join("impersonator.crt"),
        "client-key": certs.join("impersonator.key"),
        "as": user,
    }}]);
    config["contexts"][0]["context"]["user"] = json!("impersonator");
    let path = cluster::cluster_dir().join(file);
    std::fs::write(&path, serde_json::to_string_pretty(&config).expect("JSON"))
        .expect("write the kubeconfig");
    path
}

impl HostOperator {
    /// Runs the first container of `deployment` (its args and env) as the service account
    /// `namespace/name`, with the admin endpoints and listeners on loopback.
    async fn start(deployment: &Value, namespace: &str, name: &str) -> Self {
        let user = format!("system:serviceaccount:{namespace}:{name}");
        let kubeconfig = impersonating_kubeconfig(&user, &format!("kubeconfig-as-{namespace}-{name}"));
        let log = cluster::cluster_dir().join(format!("logs/microgate-as-{namespace}-{name}.log"));
        let output = std::fs::File::create(&log).expect("create the operator's log");
        let container = &deployment["spec"]["template"]["spec"]["containers"][0];
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_microgate"));
        let args = container["args"].as_array().expect("args");
        if args.iter().any(|a| a == "--leader-elect") {
            // A Lease left by an earlier run on this cluster would leave `create` unused.
            let lease = if args.first().is_some_and(|a| a == "gateway") {
                microgate::cli::GATEWAY_LEASE
            } else {
                "microgate-controller"
            };
            kubectl(&["delete", "lease", lease, "-n", namespace, "--ignore-not-found"]);
        }
        for arg in args {
            command.arg(arg.as_str().expect("a string"));
        }
        for var in ["RUST_LOG", "MICROGATE_NAMESPACE", "MICROGATE_SELECTOR"] {
            command.env_remove(var);
        }
        for env in container["env"].as_array().expect("env") {
            let key = env["name"].as_str().expect("a name");
            let value = match (&env["value"], &env["valueFrom"]["fieldRef"]["fieldPath"]) {
                (Value::String(value), _) => value.clone(),
                (_, Value::String(path)) if path == "metadata.name" => "microgate-on-the-host".into(),
                (_, Value::String(path)) if path == "metadata.namespace" => namespace.into(),
                other => panic!("unexpected env {key}: {other:?}"),
            };
            command.env(key, value);
        }
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        command
            .env("KUBECONFIG", &kubeconfig)
            .env("MICROGATE_ADMIN_ADDR", admin.to_string())
            .env("MICROGATE_LISTEN_ADDRESS", "127.0.0.1")
            .stdin(Stdio::null())
            .stdout(output.try_clone().expect("the log file"))
            .stderr(output)
            .kill_on_drop(true);
        let mut operator = Self {
            child: command.spawn().expect("start microgate"),
            log,
        };
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Ok(Some(status)) = operator.child.try_wait() {
                panic!("microgate exited with {status}; its log:\n{}", operator.log());
            }
            match probe::get(admin, "/readyz").await {
                Ok(answer) if answer.status == 200 => return operator,
                other if tokio::time::Instant::now() > deadline => {
                    panic!(
                        "microgate not ready within {WAIT:?} ({other:?}); its log:\n{}",
                        operator.log()
                    )
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    fn log(&self) -> String {
        read(&self.log)
    }

    /// Stops it as Kubernetes would (SIGTERM) and checks that it exits cleanly; returns its log.
    async fn stop(mut self) -> String {
        assert!(
            self.child.try_wait().expect("the process").is_none(),
            "microgate exited during the scenario; its log:\n{}",
            self.log()
        );
        let pid = self.child.id().expect("a running process").to_string();
        let killed = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(killed.success());
        let status = tokio::time::timeout(Duration::from_secs(40), self.child.wait())
            .await
            .expect("microgate stops within 40 s of SIGTERM")
            .expect("wait for microgate");
        assert!(
            status.success(),
            "microgate exited with {status}; its log:\n{}",
            self.log()
        );
        self.log()
    }
}

fn condition(
    conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    type_: &str,
) -> String {
    conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| format!("{}/{}", c.status, c.reason))
        .unwrap_or_default()
}

/// An HTTPRoute to the scenario's Microservice through a Gateway of class `class` and a
/// ListenerSet that adds a listener to it: the GatewayClass Accepted, the Gateway and the
/// ListenerSet Programmed, the route Accepted under both, and a request answered on each.
async fn gateway_api_scenario(ns: &TestNamespace, class: &str) {
    let apply = PatchParams::apply("least-privilege").force();
    let classes: Api<GatewayClass> = Api::all(ns.client.clone());
    classes
        .patch(
            class,
            &apply,
            &Patch::Apply(json!({
                "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
                "metadata": {"name": class},
                "spec": {"controllerName": "microgate.dev/gateway-controller"},
            })),
        )
        .await
        .expect("create the GatewayClass");
    let listener = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let added_listener = SocketAddr::from(([127, 0, 0, 1], free_port()));
    ns.api::<KubeGateway>()
        .patch(
            "web",
            &apply,
            &Patch::Apply(json!({
                "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                "metadata": {"name": "web"},
                "spec": {"gatewayClassName": class,
                         "allowedListeners": {"namespaces": {"from": "Same"}},
                         "listeners": [{"name": "http", "port": listener.port(), "protocol": "HTTP"}]},
            })),
        )
        .await
        .expect("create the Gateway");
    ns.api::<ListenerSet>()
        .patch(
            "more",
            &apply,
            &Patch::Apply(json!({
                "apiVersion": "gateway.networking.k8s.io/v1", "kind": "ListenerSet",
                "metadata": {"name": "more"},
                "spec": {"parentRef": {"name": "web"},
                         "listeners": [{"name": "http", "port": added_listener.port(), "protocol": "HTTP"}]},
            })),
        )
        .await
        .expect("create the ListenerSet");
    ns.api::<HTTPRoute>()
        .patch(
            "web",
            &apply,
            &Patch::Apply(json!({
                "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                "metadata": {"name": "web"},
                "spec": {"parentRefs": [{"name": "web"}, {"kind": "ListenerSet", "name": "more"}],
                         "rules": [{"backendRefs": [{"group": "microgate.dev", "kind": "Microservice", "name": "echo"}]}]},
            })),
        )
        .await
        .expect("create the HTTPRoute");
    wait::until(
        "the GatewayClass, Gateway, ListenerSet and HTTPRoute statuses",
        WAIT,
        || async {
            let class = classes
                .get(class)
                .await
                .map(|c| c.status.map(|s| s.conditions).unwrap_or_default());
            let gateway = ns
                .api::<KubeGateway>()
                .get("web")
                .await
                .map(|g| g.status.map(|s| s.conditions).unwrap_or_default());
            let set = ns
                .api::<ListenerSet>()
                .get("more")
                .await
                .map(|l| l.status.map(|s| s.conditions).unwrap_or_default());
            let route = ns.api::<HTTPRoute>().get("web").await.map(|r| {
                r.status
                    .map(|s| s.parents.into_iter().map(|p| p.conditions).collect::<Vec<_>>())
                    .unwrap_or_default()
            });
            match (class, gateway, set, route) {
                (Ok(class), Ok(gateway), Ok(set), Ok(route)) => {
                    let seen = (
                        condition(&class, "Accepted"),
                        condition(&gateway, "Programmed"),
                        condition(&set, "Programmed"),
                        route.iter().map(|c| condition(c, "Accepted")).collect::<Vec<_>>(),
                    );
                    if seen.0.starts_with("True/")
                        && seen.1.starts_with("True/")
                        && seen.2.starts_with("True/")
                        && seen.3.len() == 2
                        && seen.3.iter().all(|c| c.starts_with("True/"))
                    {
                        Probe::Done(())
                    } else {
                        Probe::NotYet(format!("{seen:?}"))
                    }
                }
                other => Probe::NotYet(format!("{other:?}")),
            }
        },
    )
    .await
    .expect("the Gateway API resources are served");
    for listener in [listener, added_listener] {
        wait::until("a request through the HTTPRoute", WAIT, || async {
            match probe::get(listener, "/hello").await {
                Ok(answer) if answer.status == 200 => Probe::Done(()),
                other => Probe::NotYet(format!("{other:?}")),
            }
        })
        .await
        .expect("the HTTPRoute reaches the Microservice on the Gateway's and the ListenerSet's listeners");
    }
    classes
        .delete(class, &DeleteParams::default())
        .await
        .expect("delete the GatewayClass");
}

/// Events in `ns` about the object `name`, by the controller.
async fn events_about(ns: &TestNamespace, name: &str) -> Result<Vec<KubeEvent>, String> {
    let list = ns
        .api::<KubeEvent>()
        .list(&ListParams::default())
        .await
        .map_err(|e| e.to_string())?;
    Ok(list
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .filter(|e| e.reporting_controller.as_deref() == Some("microgate"))
        .collect())
}

/// Everything microgate does, driven through the API server: a Microservice becomes a
/// Deployment and a Service with its endpoints in status, a Gateway is accepted and programmed
/// and routes a request to a backend, drift is corrected, a repeated failure becomes an event
/// series, and deletion cleans up. With `gateway_class`, an HTTPRoute routes to the Microservice
/// too (see [`gateway_api_scenario`]).
async fn scenario(ns: &TestNamespace, gateway_class: Option<&str>) {
    let microservices = ns.api::<Microservice>();
    let deployments = ns.api::<Deployment>();
    let services = ns.api::<Service>();
    let ms: Microservice = serde_json::from_value(json!({
        "apiVersion": "microgate.dev/v1alpha1", "kind": "Microservice", "metadata": {"name": "echo"},
        "spec": {"image": "registry.example/echo:1", "replicas": 2},
    }))
    .expect("a Microservice");
    microservices
        .create(&PostParams::default(), &ms)
        .await
        .expect("create the Microservice");
    wait::until(
        "echo's Service and two ready endpoints in its status",
        WAIT,
        || async {
            let service = services.get_opt("echo").await.map(|s| s.is_some());
            let status = microservices
                .get("echo")
                .await
                .map(|ms| ms.status.unwrap_or_default());
            match (service, status) {
                (Ok(true), Ok(status)) if status.ready_endpoints == 2 && status.endpoints.len() == 2 => {
                    Probe::Done(())
                }
                other => Probe::NotYet(format!("{other:?}")),
            }
        },
    )
    .await
    .expect("the Microservice runs");

    // An AccessPolicy the route names: the gateway reports it Ready.
    let policy: AccessPolicy = serde_json::from_value(json!({
        "apiVersion": "microgate.dev/v1alpha1", "kind": "AccessPolicy", "metadata": {"name": "open"},
        "spec": {"cors": {"allowOrigins": ["https://shop.example.com"]}},
    }))
    .expect("an AccessPolicy");
    let policies = ns.api::<AccessPolicy>();
    policies
        .create(&PostParams::default(), &policy)
        .await
        .expect("create the AccessPolicy");
    let listener = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let gateway: Gateway = serde_json::from_value(json!({
        "apiVersion": "microgate.dev/v1alpha1", "kind": "Gateway", "metadata": {"name": "gw"},
        "spec": {"listeners": [{"name": "http", "port": listener.port()}],
                 "routes": [{"name": "all", "backends": [{"microservice": "echo"}], "accessPolicy": "open"}]},
    }))
    .expect("a Gateway");
    let gateways = ns.api::<Gateway>();
    gateways
        .create(&PostParams::default(), &gateway)
        .await
        .expect("create the Gateway");
    wait::until("the Gateway to be Accepted and Programmed", WAIT, || async {
        let conditions = match gateways.get("gw").await {
            Ok(gw) => gw.status.map(|s| s.conditions).unwrap_or_default(),
            Err(error) => return Probe::NotYet(error.to_string()),
        };
        let seen = (
            condition(&conditions, "Accepted"),
            condition(&conditions, "Programmed"),
        );
        if seen.0.starts_with("True/") && seen.1.starts_with("True/") {
            Probe::Done(())
        } else {
            Probe::NotYet(format!("{seen:?}"))
        }
    })
    .await
    .expect("the Gateway is programmed");
    wait::until("the AccessPolicy to be Ready", WAIT, || async {
        let conditions = match policies.get("open").await {
            Ok(policy) => policy.status.map(|s| s.conditions).unwrap_or_default(),
            Err(error) => return Probe::NotYet(error.to_string()),
        };
        let ready = condition(&conditions, "Ready");
        if ready.starts_with("True/") {
            Probe::Done(())
        } else {
            Probe::NotYet(ready)
        }
    })
    .await
    .expect("the AccessPolicy is ready");
    let served_by = wait::until("a request through the gateway", WAIT, || async {
        match probe::get(listener, "/hello").await {
            Ok(answer) if answer.status == 200 => Probe::Done(answer.headers.get(POD_NAME_HEADER).cloned()),
            other => Probe::NotYet(format!("{other:?}")),
        }
    })
    .await
    .expect("the gateway routes to a backend")
    .expect("the backend names its Pod");
    assert!(
        served_by.to_str().unwrap_or_default().starts_with("echo-"),
        "{served_by:?}"
    );

    // Drift: someone scales the Deployment by hand; microgate puts it back.
    deployments
        .patch(
            "echo",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 5}})),
        )
        .await
        .expect("scale the Deployment by hand");
    wait::until("the drift to be corrected", WAIT, || async {
        let replicas = deployments
            .get("echo")
            .await
            .map(|d| d.spec.and_then(|s| s.replicas));
        let events = events_about(ns, "echo").await;
        let corrected = events.as_ref().is_ok_and(|events| {
            events
                .iter()
                .any(|e| e.reason.as_deref() == Some("DriftCorrected"))
        });
        match replicas {
            Ok(Some(2)) if corrected => Probe::Done(()),
            other => Probe::NotYet(format!("replicas {other:?}, DriftCorrected event: {corrected}")),
        }
    })
    .await
    .expect("drift is corrected");

    // A failure that repeats: a Deployment of the same name whose selector (immutable) is not
    // microgate's. The repeated Warning is folded into one Event whose series is patched.
    let taken: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "taken"},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "taken"}},
                 "template": {"metadata": {"labels": {"app": "taken"}},
                              "spec": {"containers": [{"name": "c", "image": "registry.example/any:1"}]}}},
    }))
    .expect("a Deployment");
    deployments
        .create(&PostParams::default(), &taken)
        .await
        .expect("create the Deployment");
    let clash: Microservice = serde_json::from_value(json!({
        "apiVersion": "microgate.dev/v1alpha1", "kind": "Microservice", "metadata": {"name": "taken"},
        "spec": {"image": "registry.example/taken:1", "replicas": 1},
    }))
    .expect("a Microservice");
    microservices
        .create(&PostParams::default(), &clash)
        .await
        .expect("create the Microservice");
    wait::until("a Warning event series about taken", WAIT, || async {
        match events_about(ns, "taken").await {
            Ok(events) => {
                let series = events
                    .iter()
                    .filter(|e| e.type_.as_deref() == Some("Warning"))
                    .filter_map(|e| e.series.as_ref().map(|s| s.count))
                    .max();
                match series {
                    Some(count) if count >= 2 => Probe::Done(()),
                    _ => Probe::NotYet(format!(
                        "{:?}",
                        events.iter().map(|e| (&e.reason, &e.series)).collect::<Vec<_>>()
                    )),
                }
            }
            Err(error) => Probe::NotYet(error),
        }
    })
    .await
    .expect("the repeated failure is one event series");
    microservices
        .delete("taken", &DeleteParams::default())
        .await
        .expect("delete the Microservice");
    if let Some(class) = gateway_class {
        gateway_api_scenario(ns, class).await;
    }

    // Deletion: the owned Deployment and Service go with the Microservice; the listener closes
    // with the Gateway.
    microservices
        .delete("echo", &DeleteParams::background())
        .await
        .expect("delete the Microservice");
    gateways
        .delete("gw", &DeleteParams::default())
        .await
        .expect("delete the Gateway");
    wait::until(
        "echo's Deployment and Service and the listener to be gone",
        WAIT,
        || async {
            let deployment = deployments.get_opt("echo").await.map(|d| d.is_some());
            let service = services.get_opt("echo").await.map(|s| s.is_some());
            let listening = probe::get(listener, "/").await.map(|a| a.status);
            let closed = matches!(&listening, Err(e) if e.is_connection_refused());
            match (deployment, service) {
                (Ok(false), Ok(false)) if closed => Probe::Done(()),
                other => Probe::NotYet(format!("{other:?}, listener: {listening:?}")),
            }
        },
    )
    .await
    .expect("deletion cleans up");
}

/// One microgate process of an install: the Deployment that runs it, its service account
/// (`namespace/name`), and the install's objects (whose bindings grant that account its rules).
struct Process<'a> {
    deployment: &'a Value,
    namespace: &'a str,
    name: &'a str,
    objects: &'a [Value],
}

/// Runs the scenario through `processes` (each as its own service account), then checks their
/// logs, and that the audit log shows for each exactly the permissions its rules grant: all
/// used, nothing refused.
/// `gateway_class`: also route through the Kubernetes Gateway API, with a GatewayClass of that
/// name.
/// Returns the audit log of the run, for more checks.
async fn prove_least_privilege(
    ns: &TestNamespace,
    processes: &[Process<'_>],
    gateway_class: Option<&str>,
) -> Audit {
    let audit = Audit::from_now();
    let mut running = Vec::new();
    for process in processes {
        running.push(HostOperator::start(process.deployment, process.namespace, process.name).await);
    }
    scenario(ns, gateway_class).await;
    for (process, operator) in processes.iter().zip(running) {
        let log = operator.stop().await;
        // How the API server words an RBAC refusal (the audit log below is the exhaustive check).
        assert!(
            !log.contains("is forbidden: User"),
            "a call of {} was refused:\n{log}",
            process.name
        );
        audit.check(
            &format!("system:serviceaccount:{}:{}", process.namespace, process.name),
            &bound_rules(process.objects, process.namespace, process.name),
        );
    }
    audit
}

impl Audit {
    /// How many watches of `group`/`resource` `user` opened since [`Audit::from_now`].
    fn watches_opened(&self, user: &str, group: &str, resource: &str) -> usize {
        self.events_of(user)
            .iter()
            .filter(|e| e["verb"] == "watch" && e["objectRef"]["apiGroup"] == group)
            .filter(|e| e["objectRef"]["resource"] == resource)
            .filter_map(|e| e["auditID"].as_str())
            .collect::<BTreeSet<_>>()
            .len()
    }

    /// What `user` did since [`Audit::from_now`] is exactly what `rules` grant, and nothing was refused.
    fn check(&self, user: &str, rules: &[Value]) {
        let events = self.events_of(user);
        assert!(!events.is_empty(), "no audited request of {user}");
        // Refused by the authorizer (RBAC). Other 403s are not about permissions: a cluster-wide
        // operator may still reconcile in a namespace that is being deleted (NamespaceTerminating).
        let refused: Vec<&Value> = events
            .iter()
            .filter(|e| e["annotations"]["authorization.k8s.io/decision"] != "allow")
            .collect();
        assert!(refused.is_empty(), "requests RBAC refused: {refused:#?}");
        let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        let mut used = BTreeSet::new();
        for event in events.iter().filter(|e| e["objectRef"].is_object()) {
            let permission = Permission {
                group: text(&event["objectRef"]["apiGroup"]),
                resource: text(&event["objectRef"]["resource"]),
                subresource: text(&event["objectRef"]["subresource"]),
                verb: text(&event["verb"]),
            };
            // A server-side apply that creates its object is authorized as a patch and as a create;
            // the audit log shows it as a patch answered 201 Created.
            if permission.verb == "patch" && event["responseStatus"]["code"] == 201 {
                used.insert(Permission {
                    verb: "create".into(),
                    ..permission.clone()
                });
            }
            used.insert(permission);
        }
        let granted = granted(rules);
        let show = |set: BTreeSet<&Permission>| set.iter().map(|p| p.to_string()).collect::<Vec<_>>();
        let unused = show(granted.difference(&used).collect());
        let ungranted = show(used.difference(&granted).collect());
        assert!(
            unused.is_empty(),
            "granted but never used: {unused:?} (used: {:?})",
            show(used.iter().collect())
        );
        assert!(ungranted.is_empty(), "used but not granted: {ungranted:?}");
        eprintln!(
            "{user}: {} audited requests, every granted permission used: {:?}",
            events.len(),
            show(used.iter().collect())
        );
    }
}

/// Applies the ServiceAccounts, Roles and RoleBindings among `objects` (`count` of them), and
/// checks that no ClusterRoleBinding names a service account of `namespace`.
fn apply_rbac(objects: &[Value], namespace: &str, count: usize) {
    let rbac: Vec<String> = objects
        .iter()
        .filter(|o| {
            matches!(
                o["kind"].as_str(),
                Some("ServiceAccount" | "Role" | "RoleBinding")
            )
        })
        .map(|o| serde_json::to_string(o).expect("JSON"))
        .collect();
    assert_eq!(
        rbac.len(),
        count,
        "service accounts, Roles and RoleBindings: {}",
        kinds(objects)
    );
    let file = cluster::cluster_dir().join(format!("rbac-{namespace}.yaml"));
    std::fs::write(&file, rbac.join("\n---\n")).expect("write the RBAC objects");
    kubectl(&["apply", "-f", &file.display().to_string()]);
    let _ = std::fs::remove_file(&file);
    // Nothing cluster-wide may help.
    let bindings: Value = serde_json::from_str(&kubectl(&["get", "clusterrolebindings", "-o", "json"]))
        .expect("kubectl prints JSON");
    for binding in bindings["items"].as_array().expect("items") {
        for subject in binding["subjects"].as_array().into_iter().flatten() {
            assert!(subject["namespace"] != namespace, "{binding}");
        }
    }
}

#[tokio::test]
async fn the_plain_installs_service_account_can_do_everything_microgate_does_and_no_more() {
    let _turn = PLAIN_INSTALL.lock().await;
    let manifests = repo("manifests");
    kubectl(&[
        "apply",
        "-f",
        &repo("crds").display().to_string(),
        "-f",
        &manifests.display().to_string(),
    ]);
    let objects = documents(&read(&manifests.join("microgate.yaml")));
    let objects = &objects;
    let deployment = object(objects, "Deployment", "microgate");
    with_namespace("least-privilege", |ns| async move {
        let operator = Process {
            deployment,
            namespace: "microgate-system",
            name: "microgate",
            objects,
        };
        let audit = prove_least_privilege(&ns, &[operator], None).await;
        // `microgate run` (the plain install's mode): its controller and its gateway read
        // Microservices and Gateways through one watch of each. The scenario is shorter than a
        // watch's timeout (120 s), so none was opened twice.
        let user = "system:serviceaccount:microgate-system:microgate";
        for resource in ["microservices", "gateways"] {
            assert_eq!(
                audit.watches_opened(user, "microgate.dev", resource),
                1,
                "watches of {resource} opened by microgate run"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn namespaced_only_mode_needs_only_a_role_in_its_namespace() {
    // Another operator watching every namespace would serve this test's Gateway too.
    let _turn = PLAIN_INSTALL.lock().await;
    with_namespace("namespaced-only", |ns| async move {
        // The release lives in the namespace it watches; its RBAC is namespaced only.
        let watch = format!("watchNamespace={}", ns.name);
        let objects = render("mg-scoped", &ns.name, &["--set", &watch]);
        let kinds: Vec<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
        assert!(!kinds.iter().any(|k| k.starts_with("Cluster")), "{kinds:?}");
        // The operator's account, Role and RoleBinding; the leader election's Role and RoleBinding.
        apply_rbac(&objects, &ns.name, 5);
        let deployment = object(&objects, "Deployment", "mg-scoped");
        let operator = Process {
            deployment,
            namespace: &ns.name,
            name: "mg-scoped",
            objects: &objects,
        };
        prove_least_privilege(&ns, &[operator], None).await;
    })
    .await;
}

#[tokio::test]
async fn a_dedicated_gateway_needs_only_to_read_and_report_programmed() {
    let _turn = PLAIN_INSTALL.lock().await;
    with_namespace("dedicated-gateway", |ns| async move {
        let values = format!("gateway.mode=dedicated,watchNamespace={}", ns.name);
        let objects = render("mg-split", &ns.name, &["--set", &values]);
        // Each account, Role and RoleBinding of the controller and the gateway; each one's leader
        // election Role and RoleBinding.
        apply_rbac(&objects, &ns.name, 10);
        let controller = Process {
            deployment: object(&objects, "Deployment", "mg-split"),
            namespace: &ns.name,
            name: "mg-split",
            objects: &objects,
        };
        let gateway = Process {
            deployment: object(&objects, "Deployment", "mg-split-gateway"),
            namespace: &ns.name,
            name: "mg-split-gateway",
            objects: &objects,
        };
        prove_least_privilege(&ns, &[controller, gateway], None).await;
    })
    .await;
}

#[tokio::test]
async fn the_gateway_api_in_one_namespace_needs_a_role_and_to_read_gateway_classes() {
    let _turn = PLAIN_INSTALL.lock().await;
    microgate_test_support::gwapi_conformance::install_crds("standard");
    with_namespace("gateway-api-rbac", |ns| async move {
        let values = format!(
            "gateway.mode=dedicated,watchNamespace={},gatewayAPI.enabled=true,gatewayAPI.gatewayClassName=",
            ns.name
        );
        let objects = render("mg-gwapi", &ns.name, &["--set", &values]);
        // Each account, Role and RoleBinding of the controller and the gateway; each one's leader
        // election Role and RoleBinding.
        apply_rbac(&objects, &ns.name, 10);
        // The one cluster-wide grant: GatewayClasses, to the gateway's account.
        let cluster_wide: Vec<&Value> = objects
            .iter()
            .filter(|o| o["kind"].as_str().is_some_and(|k| k.starts_with("Cluster")))
            .collect();
        assert_eq!(cluster_wide.len(), 2, "{}", kinds(&objects));
        let binding = object(
            &objects,
            "ClusterRoleBinding",
            &format!("{}-mg-gwapi-gateway-classes", ns.name),
        );
        assert_eq!(binding["subjects"][0]["name"], "mg-gwapi-gateway", "{binding}");
        let file = cluster::cluster_dir().join(format!("rbac-cluster-{}.yaml", ns.name));
        let yaml: Vec<String> = cluster_wide
            .iter()
            .map(|o| serde_json::to_string(o).expect("JSON"))
            .collect();
        std::fs::write(&file, yaml.join("\n---\n")).expect("write the cluster-wide RBAC objects");
        let path = file.display().to_string();
        kubectl(&["apply", "-f", &path]);
        let controller = Process {
            deployment: object(&objects, "Deployment", "mg-gwapi"),
            namespace: &ns.name,
            name: "mg-gwapi",
            objects: &objects,
        };
        let gateway = Process {
            deployment: object(&objects, "Deployment", "mg-gwapi-gateway"),
            namespace: &ns.name,
            name: "mg-gwapi-gateway",
            objects: &objects,
        };
        let class = format!("microgate-{}", ns.name);
        prove_least_privilege(&ns, &[controller, gateway], Some(&class)).await;
        // Cluster-wide objects outlive the namespace.
        kubectl(&["delete", "-f", &path]);
        let _ = std::fs::remove_file(&file);
    })
    .await;
}
