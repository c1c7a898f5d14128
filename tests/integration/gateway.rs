//! The control-plane half of a Gateway: its status says whether its backends exist and how
//! many of each route's backends are ready.

use std::time::Duration;

use kube::api::PostParams;
use microgate::api::{Gateway, Microservice};
use microgate_test_support::{
    wait::{self, Probe},
    with_namespace,
};
use serde_json::json;

use crate::{ControllerUnderTest, kubectl};

fn accepted(gateway: &Gateway) -> Option<(String, String, String)> {
    let condition = gateway
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Accepted")?;
    Some((
        condition.status.clone(),
        condition.reason.clone(),
        condition.message.clone(),
    ))
}

#[tokio::test]
async fn a_gateway_is_accepted_once_its_backends_exist_and_counts_ready_ones() {
    with_namespace("gateway-status", |ns| async move {
        let _controller = ControllerUnderTest::start(&ns).await;
        let gateway: Gateway = serde_json::from_value(json!({
            "apiVersion": "microgate.dev/v1alpha1", "kind": "Gateway",
            "metadata": {"name": "shop"},
            "spec": {
                "listeners": [{"name": "http", "port": 8080}, {"name": "admin", "port": 8081}],
                "routes": [{"name": "orders", "backends": [{"microservice": "orders"}]}],
            },
        }))
        .expect("a valid Gateway");
        let gateways = ns.api::<Gateway>();
        gateways
            .create(&PostParams::default(), &gateway)
            .await
            .expect("create the Gateway");

        let wait_for = |what: &'static str, want: fn(&Gateway) -> bool| {
            let gateways = gateways.clone();
            async move {
                wait::until(what, Duration::from_secs(30), || async {
                    match gateways.get("shop").await {
                        Ok(gw) if want(&gw) => Probe::Done(gw),
                        Ok(gw) => Probe::NotYet(format!("{:?}", gw.status)),
                        Err(error) => Probe::NotYet(error.to_string()),
                    }
                })
                .await
                .expect(what)
            }
        };
        let missing = wait_for("Accepted=False", |gw| {
            accepted(gw).is_some_and(|c| c.0 == "False")
        })
        .await;
        let (_, reason, message) = accepted(&missing).expect("Accepted condition");
        assert_eq!(reason, "BackendNotFound");
        assert_eq!(message, "route orders: Microservice orders does not exist");

        let ms: Microservice = serde_json::from_value(json!({
            "apiVersion": "microgate.dev/v1alpha1", "kind": "Microservice",
            "metadata": {"name": "orders"}, "spec": {"image": "registry.example/orders:1.4.2", "replicas": 2},
        }))
        .expect("a valid Microservice");
        ns.api::<Microservice>()
            .create(&PostParams::default(), &ms)
            .await
            .expect("create the Microservice");
        let ready = wait_for("Accepted=True with a ready backend", |gw| {
            accepted(gw).is_some_and(|c| c.0 == "True")
                && gw
                    .status
                    .as_ref()
                    .is_some_and(|s| s.routes.first().is_some_and(|r| r.ready_backends == 1))
        })
        .await;
        let status = ready.status.expect("status");
        assert_eq!(status.listeners, "http:8080/HTTP,admin:8081/HTTP");
        assert_eq!(status.route_count, 1);

        let table = kubectl(&["get", "mgw", "-n", &ns.name]);
        let mut lines = table.lines();
        let header: Vec<_> = lines.next().expect("header").split_whitespace().collect();
        assert_eq!(
            header,
            ["NAME", "LISTENERS", "ROUTES", "ACCEPTED", "PROGRAMMED", "AGE"]
        );
        let row: Vec<_> = lines.next().expect("row").split_whitespace().collect();
        assert_eq!(&row[..4], ["shop", "http:8080/HTTP,admin:8081/HTTP", "1", "True"]);
    })
    .await;
}
