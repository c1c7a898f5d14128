//! `/debug/explain` and `/debug/config` on a running gateway, and `microgate explain` on the
//! demo's resources: the route they name is the one the gateway takes.

use std::net::SocketAddr;

use microgate_test_support::{backend::POD_NAME_HEADER, probe, with_namespace};
use serde_json::{Value, json};

use super::{Platform, pods_of};

async fn admin_json(admin: SocketAddr, path: &str) -> Value {
    let answer = probe::get(admin, path).await.expect("an answer");
    assert_eq!(answer.status, 200, "{path}: {answer:?}");
    serde_json::from_str(&answer.body).expect("JSON")
}

#[tokio::test]
async fn debug_explain_names_the_route_the_gateway_takes_and_debug_config_shows_the_table() {
    with_namespace("e2e-debug-explain", |ns| async move {
        let platform = Platform::start(&ns).await;
        platform.microservice(&ns, "api", 1, json!({})).await;
        platform
            .microservice(&ns, "web", 2, json!({"loadBalancer": {"policy": "LeastRequest"}}))
            .await;
        platform
            .gateway(
                &ns,
                json!([
                    {"name": "web", "backends": [{"microservice": "web"}]},
                    {"name": "api", "matches": [{"path": {"type": "PathPrefix", "value": "/api"}}],
                     "backends": [{"microservice": "api"}], "timeout": "3s",
                     "retry": {"attempts": 2, "retryOn": ["connect-failure"]}},
                ]),
            )
            .await;
        let api_pod = &pods_of(&ns, "api").await[0];
        let answer = probe::get(platform.listener, "/api/orders")
            .await
            .expect("an answer");
        assert_eq!(answer.status, 200);
        assert_eq!(answer.headers[POD_NAME_HEADER], api_pod.as_str());

        let port = platform.listener.port();
        let explained = admin_json(
            platform.admin,
            &format!("/debug/explain?method=GET&url=http://127.0.0.1:{port}/api/orders&header=x-user:42"),
        )
        .await;
        assert_eq!(explained["routed"], true, "{explained:#}");
        assert_eq!(explained["live"], true);
        let at = &explained["addresses"][0];
        assert_eq!(at["address"], platform.listener.to_string());
        let route = &at["route"];
        assert_eq!(route["route"], format!("{}/gw/api", ns.name), "{route:#}");
        assert_eq!(route["timeout"], "3s");
        assert_eq!(route["retry"]["attempts"], 2);
        let backend = &route["backends"][0];
        assert_eq!(backend["upstream"], format!("Microservice {}/api", ns.name));
        assert_eq!(backend["weight"], 1);
        let endpoints = backend["endpoints"].as_array().expect("endpoints");
        assert_eq!(endpoints.len(), 1, "{backend:#}");
        assert_eq!(endpoints[0]["pod"], api_pod.as_str());
        assert_eq!(endpoints[0]["ready"], true);
        let verdicts: Vec<(&str, &str)> = at["candidates"]
            .as_array()
            .expect("candidates")
            .iter()
            .map(|c| {
                (
                    c["route"].as_str().unwrap_or(""),
                    c["verdict"].as_str().unwrap_or(""),
                )
            })
            .collect();
        let (api, web) = (format!("{}/gw/api", ns.name), format!("{}/gw/web", ns.name));
        assert_eq!(verdicts, [(api.as_str(), "takes"), (web.as_str(), "lost")]);
        assert!(
            at["candidates"][1]["reasons"][0]
                .as_str()
                .is_some_and(|r| r.contains("a PathPrefix is more specific than no path match")),
            "{at:#}"
        );

        // The same in words; and a path only the catch-all takes.
        let text = probe::get(
            platform.admin,
            &format!("/debug/explain?url=http://127.0.0.1:{port}/api/orders&format=text"),
        )
        .await
        .expect("an answer");
        assert!(
            text.body.contains(&format!("route     {}/gw/api", ns.name)),
            "{}",
            text.body
        );
        assert!(text.body.contains(api_pod.as_str()), "{}", text.body);
        assert!(
            text.body.contains("up to 2 retries, on connect-failure"),
            "{}",
            text.body
        );
        let web_only = admin_json(
            platform.admin,
            &format!("/debug/explain?url=http://127.0.0.1:{port}/shop"),
        )
        .await;
        assert_eq!(web_only["addresses"][0]["route"]["route"], web.as_str());
        assert_eq!(
            web_only["addresses"][0]["candidates"][0]["reasons"][0],
            "path /shop does not match PathPrefix /api"
        );
        let bad = probe::get(platform.admin, "/debug/explain?url=/relative")
            .await
            .expect("an answer");
        assert_eq!(bad.status, 400, "{bad:?}");

        let config = admin_json(platform.admin, "/debug/config").await;
        let routes = config["routes"].as_array().expect("routes");
        let api_route = routes
            .iter()
            .find(|r| r["id"] == api.as_str())
            .expect("the api route");
        assert_eq!(api_route["matches"][0]["path"], "PathPrefix /api");
        assert_eq!(api_route["backends"][0]["share"], 100.0);
        assert!(routes.iter().any(|r| r["id"] == web.as_str()));
        let port_view = &config["ports"][0];
        assert_eq!(port_view["address"], platform.listener.to_string());
        assert_eq!(port_view["tls"], false);
        assert_eq!(port_view["entries"].as_array().map(Vec::len), Some(2));
        let web_upstream = config["upstreams"]
            .as_array()
            .expect("upstreams")
            .iter()
            .find(|u| u["upstream"] == format!("Microservice {}/web", ns.name))
            .expect("the web upstream");
        assert_eq!(web_upstream["loadBalancer"], "LeastRequest");
        assert_eq!(web_upstream["endpoints"], 2);
    })
    .await;
}

/// Applies every document of the example file `name` (`examples/<name>`) to the namespace.
async fn apply_example(ns: &microgate_test_support::TestNamespace, name: &str) {
    use kube::{
        Api, ResourceExt,
        api::{ApiResource, DynamicObject, Patch, PatchParams},
    };
    use microgate::api::{Gateway, Microservice};
    let path = format!("{}/examples/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("read the example");
    let documents: Vec<DynamicObject> = serde_saphyr::from_multiple(&text).expect("the example is YAML");
    for document in &documents {
        let kind = document
            .types
            .as_ref()
            .map(|t| t.kind.as_str())
            .unwrap_or_default();
        let resource = match kind {
            "Microservice" => ApiResource::erase::<Microservice>(&()),
            "Gateway" => ApiResource::erase::<Gateway>(&()),
            other => panic!("unexpected kind {other} in {name}"),
        };
        let api: Api<DynamicObject> = Api::namespaced_with(ns.client.clone(), &ns.name, &resource);
        api.patch(
            &document.name_any(),
            &PatchParams::apply("microgate-tests"),
            &Patch::Apply(document),
        )
        .await
        .unwrap_or_else(|e| panic!("apply {kind} {}: {e}", document.name_any()));
    }
}

/// `microgate explain` with `args`, against the test cluster: its exit code and output.
async fn microgate_explain(
    ns: &microgate_test_support::TestNamespace,
    args: &[&str],
) -> (i32, String, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_microgate"))
        .arg("explain")
        .args(args)
        .arg("--kubeconfig")
        .arg(microgate_test_support::cluster::kubeconfig_path())
        .arg(format!("--namespace={}", ns.name))
        .output()
        .await
        .expect("run microgate explain");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn microgate_explain_on_the_demo_s_resources() {
    with_namespace("e2e-explain-cli", |ns| async move {
        microgate_test_support::cluster::install_crds(&ns.client, microgate::api::crds()).await;
        // Only the controller (which runs the Microservices' Pods): no gateway binds the
        // example's ports here; explain compiles the table from the resources alone.
        let registry = microgate::discovery::Registry::default();
        let running = microgate::controller::start(
            ns.client.clone(),
            microgate::controller::Scope {
                namespace: Some(ns.name.clone()),
                label_selector: None,
            },
            registry.clone(),
            Default::default(),
            SocketAddr::from(([127, 0, 0, 1], 0)),
            None,
            std::future::pending(),
        )
        .await
        .expect("start the controller");
        let controller = tokio::spawn(running.serve);
        apply_example(&ns, "shop.yaml").await;
        let orders = microgate::discovery::ServiceKey::new(&ns.name, "orders");
        microgate_test_support::wait::until("three ready orders endpoints", super::WAIT, || async {
            let ready = registry.snapshot(&orders).ready_count();
            if ready == 3 {
                microgate_test_support::wait::Probe::Done(())
            } else {
                microgate_test_support::wait::Probe::NotYet(format!("{ready} ready"))
            }
        })
        .await
        .expect("the orders Pods are ready");
        let pods = pods_of(&ns, "orders").await;

        let (code, text, errors) = microgate_explain(
            &ns,
            &["GET", "http://shop.example.com:8080/api/orders", "-H", "x-user: 42"],
        )
        .await;
        assert_eq!(code, 0, "a routed request exits 0: {text}{errors}");
        let gateway = format!("{}/shop", ns.name);
        assert!(text.contains(&format!("listener  {gateway}/http")), "{text}");
        assert!(
            text.contains(&format!("route     {gateway}/orders  match #0: PathPrefix /api/orders")),
            "{text}"
        );
        assert!(text.contains("timeout   5s"), "{text}");
        assert!(
            text.contains("retry     up to 3 retries, 1s per try, on connect-failure, reset, retriable-status-codes [503]; budget 20 % (at least 10/s)"),
            "{text}"
        );
        assert!(
            text.contains(&format!("backend   Microservice {}/orders  weight 90 (90 %), LeastRequest", ns.name)),
            "{text}"
        );
        assert!(
            text.contains(&format!("backend   Microservice {}/orders-canary  weight 10 (10 %)", ns.name)),
            "{text}"
        );
        for pod in &pods {
            assert!(text.contains(pod.as_str()), "every orders Pod is listed: {text}");
        }
        assert!(
            text.contains("would take it too, but") && text.contains("its path prefix is longer (11 characters against 0)"),
            "the storefront route lost by precedence: {text}"
        );
        let (code, json, errors) = microgate_explain(
            &ns,
            &["GET", "http://shop.example.com:8080/api/orders", "-o", "json"],
        )
        .await;
        assert_eq!(code, 0, "{errors}");
        let explained: Value = serde_json::from_str(&json).expect("-o json is JSON");
        assert_eq!(explained["routed"], true);
        assert_eq!(explained["live"], false);
        assert_eq!(explained["addresses"][0]["route"]["route"], format!("{gateway}/orders"));

        // A host the listener does not take: no route, and why, non-zero.
        let (code, text, errors) =
            microgate_explain(&ns, &["GET", "http://elsewhere.example.org:8080/api/orders"]).await;
        assert_eq!(code, 1, "a request no route takes exits 1: {text}{errors}");
        assert!(text.contains("no route: none of the 2 entries"), "{text}");
        assert!(text.contains("nearest candidates"), "{text}");
        assert!(
            text.contains(&format!(
                "host elsewhere.example.org is not one of listener {gateway}/http's hostnames (shop.example.com, *.shop.example.com)"
            )),
            "{text}"
        );
        // A port no listener has.
        let (code, text, _) = microgate_explain(&ns, &["GET", "http://shop.example.com:9999/"]).await;
        assert_eq!(code, 1);
        assert!(text.contains("no route: no listener on port 9999 (ports served: 8080)"), "{text}");
        // HTTPS (examples/shop-https.yaml, with its certificate Secret): the server name picks
        // the listener, whose routes alone are candidates.
        let certificate = microgate_test_support::tls::TestCa::new().issue(&["shop.example.com"]);
        ns.api::<k8s_openapi::api::core::v1::Secret>()
            .create(&Default::default(), &certificate.secret("shop-tls"))
            .await
            .expect("create the certificate Secret");
        apply_example(&ns, "shop-https.yaml").await;
        let (code, text, errors) =
            microgate_explain(&ns, &["GET", "https://shop.example.com:8443/api/orders"]).await;
        assert_eq!(code, 0, "{text}{errors}");
        let https = format!("{}/shop-https", ns.name);
        assert!(
            text.contains(&format!("(TLS: the server name picks listener {https}/https)")),
            "{text}"
        );
        assert!(text.contains(&format!("route     {https}/orders")), "{text}");
        let (code, text, _) = microgate_explain(&ns, &["GET", "http://shop.example.com:8081/api/orders"]).await;
        assert_eq!(code, 0, "{text}");
        assert!(text.contains(&format!("route     {https}/to-https")), "{text}");
        assert!(text.contains("redirect  301 to scheme https, port 8443"), "{text}");
        let (code, text, _) = microgate_explain(&ns, &["GET", "http://shop.example.com:8443/"]).await;
        assert_eq!(code, 1, "{text}");
        assert!(text.contains("port 8443 terminates TLS"), "{text}");

        // A route behind an AccessPolicy: explain names the policy and how it authenticates,
        // never a key.
        let keys = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "api-keys"},
            "type": "Opaque", "stringData": {"billing": "k-123-secret"}});
        ns.api::<k8s_openapi::api::core::v1::Secret>()
            .create(&Default::default(), &serde_json::from_value(keys).expect("a Secret"))
            .await
            .expect("create the keys Secret");
        let policy: microgate::api::AccessPolicy = serde_json::from_value(json!({
            "apiVersion": "microgate.dev/v1alpha1", "kind": "AccessPolicy", "metadata": {"name": "keys"},
            "spec": {"authentication": {"apiKeys": {"secretRef": {"name": "api-keys"}, "header": "x-api-key"}}},
        }))
        .expect("an AccessPolicy");
        ns.api::<microgate::api::AccessPolicy>()
            .create(&Default::default(), &policy)
            .await
            .expect("create the AccessPolicy");
        let internal: microgate::api::Gateway = serde_json::from_value(json!({
            "apiVersion": "microgate.dev/v1alpha1", "kind": "Gateway", "metadata": {"name": "internal"},
            "spec": {"listeners": [{"name": "http", "port": 8090}],
                     "routes": [{"name": "billing", "backends": [{"microservice": "orders"}], "accessPolicy": "keys"}]},
        }))
        .expect("a Gateway");
        ns.api::<microgate::api::Gateway>()
            .create(&Default::default(), &internal)
            .await
            .expect("create the Gateway");
        let (code, text, errors) = microgate_explain(&ns, &["GET", "http://billing.internal:8090/"]).await;
        assert_eq!(code, 0, "{text}{errors}");
        assert!(
            text.contains(&format!("policy    AccessPolicy {}/keys: ApiKeys in header x-api-key", ns.name)),
            "{text}"
        );
        let (_, json, _) = microgate_explain(&ns, &["GET", "http://billing.internal:8090/", "-o", "json"]).await;
        assert!(!text.contains("k-123") && !json.contains("k-123"), "no key is shown: {json}");

        // Arguments it cannot use: exit 2.
        let (code, _, errors) = microgate_explain(&ns, &["GET", "/relative"]).await;
        assert_eq!(code, 2, "{errors}");
        controller.abort();
    })
    .await;
}
