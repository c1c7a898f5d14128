//! Backend faults under load, each a scenario with a target and a measured figure for
//! RELIABILITY.md (see `scenarios`): sized to run in well under a minute each here; the
//! reliability suite (`make reliability`) runs the long ones at full size.

pub(crate) mod scenarios;

use microgate_test_support::with_namespace;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_killed_mid_load_fails_no_get_and_executes_no_post_twice() {
    with_namespace("faults-kill", |ns| async move {
        scenarios::backend_killed(&ns, 3_000, 1_500, 500, "-short").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_with_its_port_closed_costs_no_request() {
    with_namespace("faults-refused", |ns| async move {
        scenarios::connection_refused(&ns, 500, 250).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_after_the_request_was_read_retries_a_get_and_answers_a_post_502() {
    with_namespace("faults-reset", |ns| async move {
        scenarios::reset_after_read(&ns, 300, 150).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_backend_is_left_at_the_per_try_timeout_and_the_route_deadline() {
    with_namespace("faults-slow", |ns| async move {
        scenarios::slow_backend(&ns, 30).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_hole_costs_no_request_its_route_timeout_nor_unbounded_sockets() {
    with_namespace("faults-hole", |ns| async move {
        scenarios::black_hole(&ns, 100, 3).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_churn_for_ten_seconds_costs_no_request() {
    with_namespace("faults-churn", |ns| async move {
        scenarios::endpoint_churn(&ns, 500, 10, "endpoint-churn-10s").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_connections_closed_by_the_backend_as_requests_come_cost_no_request() {
    with_namespace("faults-idle", |ns| async move {
        let idle = std::time::Duration::from_millis(100);
        scenarios::idle_close_race(&ns, 4, 60, idle, "idle-close-race-short").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_backend_failing_for_ten_seconds_keeps_retries_within_the_budget() {
    with_namespace("faults-storm", |ns| async move {
        let outage = std::time::Duration::from_secs(10);
        scenarios::retry_storm(&ns, 50, outage, "retry-storm-10s").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_edited_under_load_costs_no_request_and_lets_requests_finish_on_the_old_table() {
    with_namespace("faults-edit", |ns| async move {
        scenarios::route_edited(&ns, 100, 6).await;
    })
    .await;
}
