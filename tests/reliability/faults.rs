//! The backend fault scenarios at the sizes of their targets (see `scenarios`).

use std::time::Duration;

use microgate_test_support::with_namespace;

use crate::scenarios;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_killed_mid_load_fails_none_of_30_000_gets() {
    with_namespace("rel-kill", |ns| async move {
        scenarios::backend_killed(&ns, 30_000, 10_000, 500, "").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_churn_for_sixty_seconds_at_500_requests_a_second_costs_no_request() {
    with_namespace("rel-churn", |ns| async move {
        scenarios::endpoint_churn(&ns, 500, 60, "endpoint-churn").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_requests_meeting_closing_keep_alive_connections_cost_none() {
    with_namespace("rel-idle", |ns| async move {
        scenarios::idle_close_race(&ns, 8, 1_250, Duration::from_millis(100), "idle-close-race").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_backend_failing_for_thirty_seconds_keeps_retries_within_the_budget() {
    with_namespace("rel-storm", |ns| async move {
        scenarios::retry_storm(&ns, 200, Duration::from_secs(30), "retry-storm").await;
    })
    .await;
}
