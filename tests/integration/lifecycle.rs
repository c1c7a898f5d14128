//! Starting and stopping the controller.

use std::{net::SocketAddr, time::Duration};

use microgate::{
    controller::{self, Scope},
    discovery::Registry,
};
use microgate_test_support::with_namespace;

use crate::install_crds;

#[tokio::test]
async fn a_controller_told_to_stop_before_its_caches_fill_still_stops_at_once() {
    with_namespace("ctl-stop-early", |ns| async move {
        install_crds(&ns.client).await;
        // kube-runtime's graceful shutdown stops the watches; a controller whose store had not
        // been filled by then used to wait for it forever. The shutdown here is due at once.
        for _ in 0..3 {
            let running = controller::start(
                ns.client.clone(),
                Scope {
                    namespace: Some(ns.name.clone()),
                    label_selector: None,
                },
                Registry::default(),
                Default::default(),
                SocketAddr::from(([127, 0, 0, 1], 0)),
                None,
                std::future::ready(()),
            )
            .await
            .expect("bind the admin endpoints");
            tokio::time::timeout(Duration::from_secs(5), running.serve)
                .await
                .expect("the controller stops within 5 s");
        }
    })
    .await;
}
