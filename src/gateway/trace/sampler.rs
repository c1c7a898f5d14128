//! Which requests are traced: the caller's decision when it sent one (parent-based), else a
//! ratio of new traces, decided by the trace id so that every hop that samples by ratio
//! agrees (OpenTelemetry's `ParentBased(TraceIdRatioBased)`).

use super::context::{TraceId, TraceParent};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sampler {
    /// A new trace is sampled when its id's low 64 bits are below this.
    threshold: u64,
    /// Ratio 1.0: every new trace, whatever its id.
    always: bool,
}

impl Sampler {
    /// `ratio`: the share of new traces sampled, clamped to 0.0–1.0.
    pub fn new(ratio: f64) -> Self {
        let ratio = if ratio.is_nan() {
            0.0
        } else {
            ratio.clamp(0.0, 1.0)
        };
        Self {
            // f64 to u64 saturates: 1.0 would be 2^64, which `always` covers.
            threshold: (ratio * u64::MAX as f64) as u64,
            always: ratio >= 1.0,
        }
    }

    /// Whether the trace of a request is recorded: `parent`, the caller's valid
    /// `traceparent` if it sent one; `trace_id`, the id of the trace the request is in.
    pub fn sample(&self, parent: Option<&TraceParent>, trace_id: &TraceId) -> bool {
        match parent {
            Some(parent) => parent.sampled(),
            None => self.always || trace_id.low_bits() < self.threshold,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::trace::context::SpanId;

    fn id(low: u64) -> TraceId {
        let mut bytes = [0u8; 16];
        bytes[0] = 1;
        bytes[8..].copy_from_slice(&low.to_be_bytes());
        TraceId(bytes)
    }

    #[test]
    fn a_callers_decision_is_kept_whatever_the_ratio() {
        let sampled = TraceParent {
            trace_id: id(u64::MAX),
            parent_id: SpanId([1; 8]),
            flags: 0x01,
        };
        let unsampled = TraceParent {
            flags: 0x00,
            ..sampled
        };
        for ratio in [0.0, 0.01, 1.0] {
            let sampler = Sampler::new(ratio);
            assert!(sampler.sample(Some(&sampled), &sampled.trace_id), "{ratio}");
            assert!(!sampler.sample(Some(&unsampled), &unsampled.trace_id), "{ratio}");
        }
    }

    #[test]
    fn new_traces_are_sampled_by_ratio_of_their_ids() {
        assert!(!Sampler::new(0.0).sample(None, &id(0)));
        assert!(Sampler::new(1.0).sample(None, &id(u64::MAX)));
        let half = Sampler::new(0.5);
        assert!(half.sample(None, &id(u64::MAX / 2 - 1)));
        assert!(!half.sample(None, &id(u64::MAX / 2 + 1)));
        // Out-of-range settings are clamped rather than refused here (the CLI refuses them).
        assert_eq!(Sampler::new(7.0), Sampler::new(1.0));
        assert_eq!(Sampler::new(-1.0), Sampler::new(0.0));
        assert_eq!(Sampler::new(f64::NAN), Sampler::new(0.0));
    }

    #[test]
    fn random_ids_are_sampled_near_the_ratio() {
        let sampler = Sampler::new(0.1);
        let sampled = (0..100_000)
            .filter(|_| sampler.sample(None, &TraceId::random()))
            .count();
        // 10 000 expected; the standard deviation is under 100.
        assert!((9_000..11_000).contains(&sampled), "{sampled}");
    }
}
