//! The operator's fault scenarios at full length: killed ten times while 100 Microservices
//! reconcile, and a permanently failing object watched for its first ten minutes.

// Shared with the e2e suite, which runs the short scenarios (the expired watch, the replicas'
// fencing) itself.
#[allow(dead_code)]
#[path = "../e2e/operator_faults/fencing.rs"]
mod fencing;
#[allow(dead_code)]
#[path = "../e2e/operator_faults/scenarios.rs"]
mod scenarios;

use std::time::Duration;

use microgate_test_support::with_namespace;

#[tokio::test]
async fn the_operator_killed_ten_times_while_100_microservices_reconcile() {
    with_namespace("rel-op-kill", |ns| async move {
        scenarios::killed_at_random_points(&ns, "operator-killed", 100, 10).await;
    })
    .await;
}

#[tokio::test]
async fn a_permanently_failing_microservice_in_its_first_ten_minutes() {
    with_namespace("rel-op-backoff", |ns| async move {
        scenarios::failing_object_backs_off(
            &ns,
            "operator-failing-object",
            Duration::from_secs(600),
            Duration::from_secs(300),
            20,
        )
        .await;
    })
    .await;
}
