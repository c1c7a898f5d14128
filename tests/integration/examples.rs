//! The examples the README points people to are valid, and run.

use std::time::Duration;

use kube::{
    Api, ResourceExt,
    api::{ApiResource, DynamicObject, Patch, PatchParams},
};
use microgate::api::{Gateway, Microservice};
use microgate_test_support::{
    wait::{self, Probe},
    with_namespace,
};

use crate::ControllerUnderTest;

#[tokio::test]
async fn the_shop_example_applies_and_its_microservices_become_ready() {
    with_namespace("examples", |ns| async move {
        let _controller = ControllerUnderTest::start(&ns).await;
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/shop.yaml");
        let text = std::fs::read_to_string(path).expect("read examples/shop.yaml");
        let documents: Vec<DynamicObject> =
            serde_saphyr::from_multiple(&text).expect("examples/shop.yaml is YAML");
        assert_eq!(documents.len(), 4, "three Microservices and a Gateway");

        let params = PatchParams::apply("microgate-tests");
        for document in &documents {
            let kind = document
                .types
                .as_ref()
                .map(|t| t.kind.as_str())
                .unwrap_or_default();
            let resource = match kind {
                "Microservice" => ApiResource::erase::<Microservice>(&()),
                "Gateway" => ApiResource::erase::<Gateway>(&()),
                other => panic!("unexpected kind {other} in the example"),
            };
            let api: Api<DynamicObject> = Api::namespaced_with(ns.client.clone(), &ns.name, &resource);
            api.patch(&document.name_any(), &params, &Patch::Apply(document))
                .await
                .unwrap_or_else(|e| panic!("apply {kind} {}: {e}", document.name_any()));
        }

        let microservices = ns.api::<Microservice>();
        let expected = [("orders", "3/3"), ("orders-canary", "1/1"), ("storefront", "2/2")];
        wait::until(
            "every example Microservice to be ready",
            Duration::from_secs(30),
            || async {
                let mut seen: Vec<_> = match microservices.list(&Default::default()).await {
                    Ok(list) => list
                        .items
                        .into_iter()
                        .map(|ms| (ms.name_any(), ms.status.map(|s| s.ready).unwrap_or_default()))
                        .collect(),
                    Err(error) => return Probe::NotYet(error.to_string()),
                };
                seen.sort();
                let want: Vec<_> = expected
                    .iter()
                    .map(|(n, r)| (n.to_string(), r.to_string()))
                    .collect();
                if seen == want {
                    Probe::Done(())
                } else {
                    Probe::NotYet(format!("{seen:?}"))
                }
            },
        )
        .await
        .expect("the example runs");

        let gateway = ns
            .api::<Gateway>()
            .get("shop")
            .await
            .expect("the Gateway is stored");
        assert_eq!(gateway.spec.routes.len(), 2);
        assert_eq!(gateway.spec.routes[0].backends[1].weight, 10);

        // The HTTPS variant is valid too, and its backends are the example's.
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/shop-https.yaml");
        let text = std::fs::read_to_string(path).expect("read examples/shop-https.yaml");
        let https: Gateway = serde_saphyr::from_str(&text).expect("examples/shop-https.yaml is one Gateway");
        ns.api::<Gateway>()
            .patch("shop-https", &params, &Patch::Apply(&https))
            .await
            .expect("the API server accepts examples/shop-https.yaml");
        wait::until("shop-https to be Accepted", Duration::from_secs(30), || async {
            let accepted = ns.api::<Gateway>().get("shop-https").await.ok().and_then(|g| {
                g.status?
                    .conditions
                    .into_iter()
                    .find(|c| c.type_ == "Accepted")
                    .map(|c| c.status)
            });
            match accepted.as_deref() {
                Some("True") => Probe::Done(()),
                other => Probe::NotYet(format!("Accepted: {other:?}")),
            }
        })
        .await
        .expect("shop-https is Accepted");
    })
    .await;
}
