//! A Microservice's status, computed from what its Deployment reports: a pure function, so an
//! unchanged world yields an equal status and the reconciler writes nothing.

use k8s_openapi::{api::apps::v1::Deployment, jiff::Timestamp};

use super::build::selector_string;
use crate::{
    api::{Microservice, MicroserviceStatus},
    controller::conditions::{self, Desired},
};

pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";

/// The status of `ms`, given its Deployment as last seen (if any) and the error of this
/// reconciliation's apply (if it failed).
pub fn compute(
    ms: &Microservice,
    deployment: Option<&Deployment>,
    apply_error: Option<&str>,
    now: Timestamp,
) -> MicroserviceStatus {
    let name = ms.metadata.name.as_deref().unwrap_or_default();
    let previous = ms.status.clone().unwrap_or_default();
    let desired = ms.spec.replicas;
    let observed = deployment.and_then(|d| d.status.as_ref());
    let replicas = observed.and_then(|s| s.replicas).unwrap_or(0);
    let ready = observed.and_then(|s| s.ready_replicas).unwrap_or(0);
    let updated = observed.and_then(|s| s.updated_replicas).unwrap_or(0);
    let caught_up = deployment.is_some_and(|d| {
        d.metadata.generation.is_some()
            && observed.and_then(|s| s.observed_generation) >= d.metadata.generation
    });

    let ready_condition = if desired == 0 {
        Desired::new(READY, true, "ScaledToZero", "no replicas are desired")
    } else if ready >= desired && caught_up {
        Desired::new(
            READY,
            true,
            "AllReplicasReady",
            format!("{ready} of {desired} replicas are ready"),
        )
    } else {
        Desired::new(
            READY,
            false,
            "ReplicasNotReady",
            format!("{ready} of {desired} replicas are ready"),
        )
    };

    let rolling = !caught_up || updated < desired || replicas > updated;
    let progressing = if rolling {
        Desired::new(
            PROGRESSING,
            true,
            "RollingOut",
            format!("{updated} of {desired} replicas run the current spec"),
        )
    } else {
        Desired::new(
            PROGRESSING,
            false,
            "RolloutComplete",
            "every replica runs the current spec",
        )
    };

    let deployment_condition = |type_: &str| {
        observed
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == type_))
    };
    let degraded = if let Some(error) = apply_error {
        Desired::new(
            DEGRADED,
            true,
            "ApplyFailed",
            format!("the Deployment or Service could not be applied: {error}"),
        )
    } else if let Some(stalled) = deployment_condition("Progressing")
        .filter(|c| c.reason.as_deref() == Some("ProgressDeadlineExceeded"))
    {
        Desired::new(
            DEGRADED,
            true,
            "ProgressDeadlineExceeded",
            stalled.message.clone().unwrap_or_default(),
        )
    } else if let Some(failure) = deployment_condition("ReplicaFailure").filter(|c| c.status == "True") {
        Desired::new(
            DEGRADED,
            true,
            "ReplicaFailure",
            failure.message.clone().unwrap_or_default(),
        )
    } else {
        Desired::new(DEGRADED, false, "AsExpected", "")
    };

    MicroserviceStatus {
        observed_generation: ms.metadata.generation,
        replicas,
        ready_replicas: ready,
        ready: format!("{ready}/{desired}"),
        selector: Some(selector_string(name)),
        conditions: conditions::merge(
            &previous.conditions,
            vec![ready_condition, progressing, degraded],
            ms.metadata.generation,
            now,
        ),
        // Endpoints are discovery's to report; keep what it last wrote.
        ready_endpoints: previous.ready_endpoints,
        endpoints: previous.endpoints,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::MicroserviceSpec;

    fn ms(replicas: i32) -> Microservice {
        let spec: MicroserviceSpec =
            serde_json::from_value(serde_json::json!({"image": "x:1", "replicas": replicas}))
                .expect("valid spec");
        let mut ms = Microservice::new("orders", spec);
        ms.metadata.generation = Some(2);
        ms
    }

    fn deployment(ready: i32, updated: i32, replicas: i32, observed_generation: i64) -> Deployment {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "orders", "generation": 5},
            "status": {"replicas": replicas, "readyReplicas": ready, "updatedReplicas": updated,
                       "observedGeneration": observed_generation},
        }))
        .expect("valid deployment")
    }

    fn condition<'a>(
        status: &'a MicroserviceStatus,
        type_: &str,
    ) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
            .expect("condition present")
    }

    fn now() -> Timestamp {
        Timestamp::from_second(1_700_000_000).expect("valid time")
    }

    #[test]
    fn all_replicas_ready_and_rolled_out() {
        let status = compute(&ms(3), Some(&deployment(3, 3, 3, 5)), None, now());
        assert_eq!(
            (status.replicas, status.ready_replicas, status.ready.as_str()),
            (3, 3, "3/3")
        );
        assert_eq!(status.observed_generation, Some(2));
        assert_eq!(
            status.selector.as_deref(),
            Some(selector_string("orders").as_str())
        );
        assert_eq!(condition(&status, READY).status, "True");
        assert_eq!(condition(&status, PROGRESSING).reason, "RolloutComplete");
        assert_eq!(condition(&status, DEGRADED).status, "False");
    }

    #[test]
    fn a_rollout_in_progress_is_progressing_and_not_ready() {
        let status = compute(&ms(3), Some(&deployment(2, 1, 4, 5)), None, now());
        assert_eq!(status.ready, "2/3");
        let ready = condition(&status, READY);
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "ReplicasNotReady")
        );
        assert_eq!(ready.message, "2 of 3 replicas are ready");
        assert_eq!(condition(&status, PROGRESSING).status, "True");
    }

    #[test]
    fn a_deployment_behind_its_spec_is_not_ready_even_with_enough_ready_pods() {
        let status = compute(&ms(3), Some(&deployment(3, 3, 3, 4)), None, now());
        assert_eq!(condition(&status, READY).status, "False");
        assert_eq!(condition(&status, PROGRESSING).reason, "RollingOut");
    }

    #[test]
    fn a_failed_apply_is_degraded_with_the_api_servers_words() {
        let status = compute(&ms(1), None, Some("spec.template: quantities must match"), now());
        let degraded = condition(&status, DEGRADED);
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", "ApplyFailed")
        );
        assert!(degraded.message.contains("quantities must match"));
        assert_eq!(status.ready, "0/1");
    }

    #[test]
    fn zero_replicas_is_ready() {
        let status = compute(&ms(0), Some(&deployment(0, 0, 0, 5)), None, now());
        assert_eq!(condition(&status, READY).reason, "ScaledToZero");
        assert_eq!(status.ready, "0/0");
    }

    #[test]
    fn computing_twice_gives_an_equal_status() {
        let mut ms = ms(3);
        let first = compute(&ms, Some(&deployment(1, 3, 3, 5)), None, now());
        ms.status = Some(first.clone());
        let later = Timestamp::from_second(1_700_000_100).expect("valid time");
        assert_eq!(compute(&ms, Some(&deployment(1, 3, 3, 5)), None, later), first);
    }
}
