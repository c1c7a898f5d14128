//! The gateway's API server down for five minutes under load.

// Shared with the e2e suite, which runs the short outage and the silent watch itself.
#[allow(dead_code)]
#[path = "../e2e/api_server_faults/scenarios.rs"]
mod scenarios;

use std::time::Duration;

use microgate_test_support::with_namespace;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_serves_its_last_table_through_five_minutes_without_the_api_server() {
    with_namespace("rel-api-down", |ns| async move {
        scenarios::api_server_down(&ns, Duration::from_secs(300), 200, "api-server-down").await;
    })
    .await;
}
