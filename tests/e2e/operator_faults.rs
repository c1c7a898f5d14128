//! The operator under control-plane faults, short versions (each under a minute): killed at
//! random points while Microservices reconcile, a permanently failing object that must back off
//! without starving the others, watches expired by an etcd compaction, and two replicas whose
//! writes never overlap across leader changes ([`fencing`] records them). The full-length runs are in the reliability suite, which
//! shares [`scenarios`] with this module.

pub mod fencing;
pub mod scenarios;

use std::time::Duration;

use microgate_test_support::with_namespace;

#[tokio::test]
async fn the_operator_killed_at_random_points_converges_after_every_restart() {
    with_namespace("faults-op-kill", |ns| async move {
        scenarios::killed_at_random_points(&ns, "operator-killed-short", 20, 3).await;
    })
    .await;
}

#[tokio::test]
async fn a_permanently_failing_microservice_backs_off_and_starves_no_other() {
    with_namespace("faults-op-backoff", |ns| async move {
        scenarios::failing_object_backs_off(
            &ns,
            "operator-failing-object-short",
            Duration::from_secs(60),
            Duration::from_secs(20),
            20,
        )
        .await;
    })
    .await;
}

#[tokio::test]
async fn a_watch_expired_by_an_etcd_compaction_relists_and_converges_without_a_restart() {
    with_namespace("faults-op-410", |ns| async move {
        scenarios::watch_expired_by_compaction(&ns, "operator-watch-expired").await;
    })
    .await;
}

#[tokio::test]
async fn two_replicas_never_write_at_once_across_leader_changes() {
    with_namespace("faults-op-fencing", |ns| async move {
        scenarios::replicas_never_write_at_once(&ns, "operator-replicas-fencing", 3).await;
    })
    .await;
}
