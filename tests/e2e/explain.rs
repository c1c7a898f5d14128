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
