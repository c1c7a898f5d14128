//! The API server failing microgate, short versions (each under a minute): stopped for 20 s
//! under the gateway, and every connection gone silent under the gateway's watches and under
//! the operator's. The reliability suite runs the outage for 5 minutes.

pub(crate) mod scenarios;

use std::time::Duration;

use microgate_test_support::with_namespace;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_serves_its_last_table_while_the_api_server_is_down_and_catches_up_after() {
    with_namespace("faults-api-down", |ns| async move {
        scenarios::api_server_down(&ns, Duration::from_secs(20), 200, "api-server-down-20s").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_gone_silent_is_opened_again_within_the_watch_timeout() {
    with_namespace("faults-silent-watch", |ns| async move {
        scenarios::silent_watch(&ns, Duration::from_secs(10), "silent-watch").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_carries_out_a_change_after_its_connections_went_silent() {
    with_namespace("faults-silent-operator", |ns| async move {
        scenarios::silent_controller(&ns, Duration::from_secs(10), "silent-operator").await;
    })
    .await;
}
