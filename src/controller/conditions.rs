//! Status conditions the Kubernetes way: a transition time that moves only when the status
//! does, so an unchanged object gets an unchanged status (and no write).

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};

/// A condition as a reconciliation computes it, before timestamps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    pub type_: &'static str,
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
}

impl Desired {
    pub fn new(type_: &'static str, status: bool, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            type_,
            status,
            reason,
            message: message.into(),
        }
    }
}

/// Builds the condition list, keeping each condition's `lastTransitionTime` from `previous`
/// unless its status flipped.
pub fn merge(
    previous: &[Condition],
    desired: Vec<Desired>,
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    desired
        .into_iter()
        .map(|d| {
            let status = if d.status { "True" } else { "False" }.to_owned();
            let last_transition_time = previous
                .iter()
                .find(|p| p.type_ == d.type_ && p.status == status)
                .map(|p| p.last_transition_time.clone())
                .unwrap_or(Time(now));
            Condition {
                type_: d.type_.to_owned(),
                status,
                reason: d.reason.to_owned(),
                message: d.message,
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(second).expect("valid time")
    }

    #[test]
    fn transition_time_moves_only_when_the_status_flips() {
        let first = merge(
            &[],
            vec![Desired::new("Ready", false, "ReplicasNotReady", "0 of 1")],
            Some(1),
            at(10),
        );
        let same = merge(
            &first,
            vec![Desired::new("Ready", false, "ReplicasNotReady", "0 of 1")],
            Some(1),
            at(20),
        );
        assert_eq!(first, same, "an unchanged status is the same status");
        let flipped = merge(
            &same,
            vec![Desired::new("Ready", true, "AllReplicasReady", "1 of 1")],
            Some(1),
            at(30),
        );
        assert_eq!(flipped[0].last_transition_time, Time(at(30)));
        assert_eq!(flipped[0].status, "True");
        assert_eq!(flipped[0].reason, "AllReplicasReady");
    }

    #[test]
    fn a_new_message_with_the_same_status_keeps_the_transition_time() {
        let first = merge(
            &[],
            vec![Desired::new("Ready", false, "ReplicasNotReady", "0 of 3")],
            Some(1),
            at(10),
        );
        let later = merge(
            &first,
            vec![Desired::new("Ready", false, "ReplicasNotReady", "1 of 3")],
            Some(2),
            at(20),
        );
        assert_eq!(later[0].last_transition_time, Time(at(10)));
        assert_eq!(later[0].message, "1 of 3");
        assert_eq!(later[0].observed_generation, Some(2));
    }
}
