//! The chart as files: it lints, the plain install is exactly its rendering, its CRDs are ours,
//! and its values do what they say.

use serde_json::Value;

use crate::{documents, helm, kinds, object, read, render, repo};

/// The objects of the plain install's generated files in `dir`, as the chart would render them.
fn committed(file: &str) -> Vec<Value> {
    documents(&read(&repo(file)))
}

#[test]
fn the_chart_passes_helm_lint_in_every_mode() {
    for values in [
        &[][..],
        &["--set", "gateway.mode=dedicated"],
        &[
            "--set",
            "watchNamespace=apps,leaderElection.enabled=true,replicas=2",
        ],
    ] {
        let mut args = vec!["lint", "helm/microgate", "--strict"];
        args.extend_from_slice(values);
        let output = helm(&args);
        assert!(
            output.status.success(),
            "helm lint {values:?}:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn the_plain_install_is_the_chart_rendered_with_default_values() {
    let stale = "manifests/ is stale: run `make manifests` and commit the result";
    let rendered = render("microgate", "microgate-system", &[]);
    assert_eq!(committed("manifests/microgate.yaml"), rendered, "{stale}");
    let dedicated = render(
        "microgate",
        "microgate-system",
        &["--set", "gateway.mode=dedicated"],
    );
    assert_eq!(
        committed("manifests/dedicated-gateway/microgate.yaml"),
        dedicated,
        "{stale}"
    );
    assert_eq!(
        read(&repo("manifests/00-namespace.yaml")),
        read(&repo("manifests/dedicated-gateway/00-namespace.yaml")),
        "{stale}"
    );
    // The one object the chart does not render: the namespace, enforcing the restricted standard.
    let namespace = &committed("manifests/00-namespace.yaml")[0];
    assert_eq!(namespace["kind"], "Namespace");
    assert_eq!(namespace["metadata"]["name"], "microgate-system");
    assert_eq!(
        namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "restricted"
    );
    for object in &rendered {
        let namespaced = !matches!(
            object["kind"].as_str(),
            Some("ClusterRole" | "ClusterRoleBinding")
        );
        if namespaced {
            assert_eq!(object["metadata"]["namespace"], "microgate-system", "{object}");
        }
    }
}

#[test]
fn the_charts_crds_are_the_generated_crds() {
    assert!(
        read(&repo("crds/microgate.dev.yaml")) == read(&repo("helm/microgate/crds/microgate.dev.yaml")),
        "helm/microgate/crds/ differs from crds/: run `make crds` and commit the result"
    );
}

#[test]
fn no_label_of_the_plain_install_claims_helm_manages_it() {
    for object in committed("manifests/microgate.yaml") {
        let text = object.to_string();
        assert!(!text.contains("Helm"), "{text}");
        assert!(!text.contains("helm.sh/"), "{text}");
    }
}

/// Every container of every Deployment meets the restricted Pod Security Standard, with probes
/// on the admin port and resources.
#[test]
fn pods_are_restricted_with_probes_and_resources_in_every_mode() {
    for values in [&[][..], &["--set", "gateway.mode=dedicated"]] {
        let objects = render("microgate", "microgate-system", values);
        let deployments: Vec<_> = objects.iter().filter(|o| o["kind"] == "Deployment").collect();
        assert!(!deployments.is_empty(), "{}", kinds(&objects));
        for deployment in deployments {
            let pod = &deployment["spec"]["template"]["spec"];
            let security = &pod["securityContext"];
            assert_eq!(security["runAsNonRoot"], true, "{deployment}");
            assert_eq!(security["runAsUser"], 65532, "{deployment}");
            assert_eq!(
                security["seccompProfile"]["type"], "RuntimeDefault",
                "{deployment}"
            );
            for container in pod["containers"].as_array().expect("containers") {
                let security = &container["securityContext"];
                assert_eq!(security["allowPrivilegeEscalation"], false, "{container}");
                assert_eq!(security["readOnlyRootFilesystem"], true, "{container}");
                assert_eq!(security["capabilities"]["drop"], serde_json::json!(["ALL"]));
                assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
                assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
                assert_eq!(container["livenessProbe"]["httpGet"]["port"], "admin");
                assert!(
                    container["resources"]["requests"]["memory"].is_string(),
                    "{container}"
                );
                assert!(
                    container["resources"]["limits"]["memory"].is_string(),
                    "{container}"
                );
            }
        }
    }
}

fn args(deployment: &Value) -> Vec<&str> {
    deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect()
}

#[test]
fn values_choose_the_mode_the_scope_and_leader_election() {
    let embedded = render("microgate", "microgate-system", &[]);
    assert_eq!(
        args(object(&embedded, "Deployment", "microgate")),
        ["run", "--leader-elect"]
    );
    assert_eq!(
        object(&embedded, "Role", "microgate-leader-election")["metadata"]["namespace"],
        "microgate-system"
    );
    let alone = render(
        "microgate",
        "microgate-system",
        &["--set", "leaderElection.enabled=false"],
    );
    assert_eq!(args(object(&alone, "Deployment", "microgate")), ["run"]);
    assert!(
        !alone.iter().any(|o| o["kind"] == "Role"),
        "no leader-election Role without leader election: {}",
        kinds(&alone)
    );

    let dedicated = render(
        "microgate",
        "microgate-system",
        &["--set", "gateway.mode=dedicated"],
    );
    assert_eq!(
        args(object(&dedicated, "Deployment", "microgate")),
        ["controller", "--leader-elect"]
    );
    // Its replicas elect the one that writes statuses.
    assert_eq!(
        args(object(&dedicated, "Deployment", "microgate-gateway")),
        ["gateway", "--leader-elect"]
    );
    let selector = &object(&dedicated, "Service", "microgate-gateway")["spec"]["selector"];
    assert_eq!(selector["app.kubernetes.io/component"], "gateway");
    // The dedicated gateway's service account may only read, and report Programmed and Ready.
    let rules = &object(&dedicated, "ClusterRole", "microgate-gateway")["rules"];
    for rule in rules.as_array().expect("rules") {
        for verb in rule["verbs"].as_array().expect("verbs") {
            let status = rule["resources"] == serde_json::json!(["gateways/status", "accesspolicies/status"]);
            assert!(
                verb == "list" || verb == "watch" || (status && verb == "patch"),
                "{rule}"
            );
        }
    }

    let scoped = render(
        "microgate",
        "microgate-system",
        &[
            "--set",
            "watchNamespace=shop,leaderElection.enabled=true,replicas=2",
        ],
    );
    let all = kinds(&scoped);
    assert!(
        !all.contains("ClusterRole"),
        "namespaced mode is cluster-wide nowhere: {all}"
    );
    let role = object(&scoped, "Role", "microgate");
    assert_eq!(role["metadata"]["namespace"], "shop");
    assert_eq!(
        object(&scoped, "RoleBinding", "microgate")["metadata"]["namespace"],
        "shop"
    );
    let operator = object(&scoped, "Deployment", "microgate");
    assert_eq!(args(operator), ["run", "--namespace=shop", "--leader-elect"]);
    assert_eq!(operator["spec"]["replicas"], 2);
    let lease = object(&scoped, "Role", "microgate-leader-election");
    assert_eq!(lease["metadata"]["namespace"], "microgate-system");
    assert_eq!(
        lease["rules"],
        serde_json::json!([
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
             "resourceNames": ["microgate-controller"], "verbs": ["get", "update"]},
        ])
    );
    let env = &operator["spec"]["template"]["spec"]["containers"][0]["env"];
    assert!(
        env.as_array()
            .expect("env")
            .iter()
            .any(|e| e["name"] == "POD_NAMESPACE"
                && e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"),
        "{env}"
    );

    let refused = helm(&[
        "template",
        "microgate",
        "helm/microgate",
        "--set",
        "replicas=2,leaderElection.enabled=false",
    ]);
    assert!(
        !refused.status.success(),
        "two controllers without leader election must be refused"
    );
}

#[test]
fn an_admin_token_secret_reaches_whichever_process_runs_the_gateway() {
    let token_file = |deployment: &Value| -> Option<String> {
        let pod = &deployment["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        let env = container["env"].as_array().expect("env");
        let file = env.iter().find(|e| e["name"] == "MICROGATE_ADMIN_TOKEN_FILE")?["value"]
            .as_str()?
            .to_owned();
        let mount = container["volumeMounts"]
            .as_array()
            .expect("the token's volume is mounted")
            .iter()
            .find(|m| m["name"] == "admin-token")
            .expect("the admin-token mount");
        assert_eq!(mount["readOnly"], true);
        let volume = pod["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .find(|v| v["name"] == "admin-token")
            .expect("the admin-token volume");
        assert_eq!(volume["secret"]["secretName"], "registry-readers");
        let key = &volume["secret"]["items"][0];
        let path = format!(
            "{}/{}",
            mount["mountPath"].as_str().expect("a path"),
            key["path"].as_str().expect("a path")
        );
        assert_eq!(
            (key["key"].as_str(), path.as_str()),
            (Some("token"), file.as_str())
        );
        Some(file)
    };
    let secret = "metrics.adminTokenSecret=registry-readers";
    let embedded = render("microgate", "microgate-system", &["--set", secret]);
    assert!(token_file(object(&embedded, "Deployment", "microgate")).is_some());
    let dedicated = render(
        "microgate",
        "microgate-system",
        &["--set", &format!("{secret},gateway.mode=dedicated")],
    );
    assert!(token_file(object(&dedicated, "Deployment", "microgate-gateway")).is_some());
    let controller = object(&dedicated, "Deployment", "microgate");
    assert!(
        controller["spec"]["template"]["spec"]["volumes"].is_null(),
        "the controller alone serves no registry: {controller}"
    );
    // Without it, no token: only loopback clients read the registry.
    let plain = render("microgate", "microgate-system", &[]);
    assert_eq!(token_file(object(&plain, "Deployment", "microgate")), None);
}

#[test]
fn the_values_schema_refuses_typos_and_privileged_listener_ports() {
    for (values, why) in [
        ("gateway.mod=dedicated", "additional properties 'mod' not allowed"),
        ("gateway.mode=sidecar", "gateway/mode"),
        ("image.digest=0.1.0", "image/digest"),
        (
            "gateway.ports[0].name=http,gateway.ports[0].port=80,gateway.ports[0].containerPort=80",
            "containerPort",
        ),
    ] {
        let output = helm(&["template", "microgate", "helm/microgate", "--set", values]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "--set {values} was accepted");
        assert!(stderr.contains(why), "--set {values}: {stderr}");
    }
}

#[test]
fn image_digest_pins_the_image_of_every_deployment() {
    let digest = format!("sha256:{}", "0123456789abcdef".repeat(4));
    let values =
        format!("gateway.mode=dedicated,image.repository=registry.example/microgate,image.digest={digest}");
    let objects = render("microgate", "microgate-system", &["--set", &values]);
    for name in ["microgate", "microgate-gateway"] {
        let deployment = object(&objects, "Deployment", name);
        assert_eq!(
            deployment["spec"]["template"]["spec"]["containers"][0]["image"],
            format!("registry.example/microgate@{digest}"),
            "{name}"
        );
    }
}

#[test]
fn a_redis_url_secret_reaches_every_gateway_container() {
    let values = "gateway.redisURLSecret.name=microgate-redis,gateway.redisURLSecret.key=url";
    for (mode, name) in [("embedded", "microgate"), ("dedicated", "microgate-gateway")] {
        let set = format!("gateway.mode={mode},{values}");
        let objects = render("microgate", "microgate-system", &["--set", &set]);
        let env = &object(&objects, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]["env"];
        let redis = env
            .as_array()
            .and_then(|env| env.iter().find(|e| e["name"] == "MICROGATE_REDIS_URL"))
            .unwrap_or_else(|| panic!("{mode}: no MICROGATE_REDIS_URL in {env}"));
        assert_eq!(
            redis["valueFrom"]["secretKeyRef"],
            serde_json::json!({"name": "microgate-redis", "key": "url"}),
            "{mode}"
        );
    }
    let plain = render("microgate", "microgate-system", &[]);
    let env = &object(&plain, "Deployment", "microgate")["spec"]["template"]["spec"]["containers"][0]["env"];
    assert!(!env.to_string().contains("MICROGATE_REDIS_URL"), "{env}");
}

#[test]
fn monitoring_values_ship_the_checked_rules_and_dashboard_as_they_are() {
    let plain = render("microgate", "microgate-system", &[]);
    for kind in ["ServiceMonitor", "PrometheusRule", "ConfigMap"] {
        assert!(
            !plain.iter().any(|o| o["kind"] == kind),
            "the default rendering has a {kind}: {}",
            kinds(&plain)
        );
    }

    let values = "metrics.serviceMonitor.enabled=true,metrics.serviceMonitor.labels.release=prom,\
                  metrics.prometheusRule.enabled=true,metrics.dashboard.enabled=true,\
                  metrics.dashboard.namespace=grafana";
    let objects = render("microgate", "microgate-system", &["--set", values]);

    // The PrometheusRule is files/alerts.yaml, the file promtool checks and tests.
    let rules: Value =
        serde_saphyr::from_str(&read(&repo("helm/microgate/files/alerts.yaml"))).expect("the rules are YAML");
    let rule = object(&objects, "PrometheusRule", "microgate");
    assert_eq!(rule["spec"], rules);
    assert!(
        rules["groups"].as_array().is_some_and(|g| !g.is_empty()),
        "{rules}"
    );

    let dashboard: Value = serde_json::from_str(&read(&repo("helm/microgate/files/dashboard.json")))
        .expect("the dashboard is JSON");
    let config_map = object(&objects, "ConfigMap", "microgate-dashboard");
    assert_eq!(config_map["metadata"]["namespace"], "grafana");
    assert_eq!(config_map["metadata"]["labels"]["grafana_dashboard"], "1");
    let shipped = config_map["data"]["microgate.json"]
        .as_str()
        .unwrap_or_else(|| panic!("no microgate.json in {config_map}"));
    assert_eq!(
        serde_json::from_str::<Value>(shipped).expect("the shipped dashboard is JSON"),
        dashboard
    );

    // The ServiceMonitor scrapes the metrics Service's admin port, keeping microgate's labels.
    let monitor = object(&objects, "ServiceMonitor", "microgate");
    assert_eq!(monitor["metadata"]["labels"]["release"], "prom");
    let service = object(&objects, "Service", "microgate-metrics");
    let selector = monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap_or_else(|| panic!("no selector in {monitor}"));
    for (label, value) in selector {
        assert_eq!(&service["metadata"]["labels"][label], value, "{label}");
    }
    assert_eq!(
        monitor["spec"]["endpoints"][0]["port"],
        service["spec"]["ports"][0]["name"]
    );
    assert_eq!(monitor["spec"]["endpoints"][0]["honorLabels"], true);

    let output = helm(&[
        "template",
        "microgate",
        "helm/microgate",
        "--set",
        "metrics.serviceMonitor.enabled=true,metrics.service.enabled=false",
    ]);
    assert!(
        !output.status.success(),
        "a ServiceMonitor without its Service was rendered"
    );
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("needs metrics.service.enabled"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
