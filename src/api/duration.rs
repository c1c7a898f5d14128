//! Durations as Kubernetes users write them: `250ms`, `2s`, `1m30s` (Go's `time.ParseDuration`).
//!
//! The schema carries a pattern, so a malformed value is rejected at admission with the field's
//! name; rules that compare durations use CEL's `duration()` on the same strings.

use std::{borrow::Cow, fmt, str::FromStr, time};

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// The shape of a Go duration: one or more `<number><unit>` terms, no sign, no spaces.
pub const PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$";

/// A non-negative duration, serialized as a Go duration string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(time::Duration);

impl Duration {
    pub const fn from_millis(ms: u64) -> Self {
        Self(time::Duration::from_millis(ms))
    }

    pub const fn from_secs(secs: u64) -> Self {
        Self(time::Duration::from_secs(secs))
    }

    pub const fn get(self) -> time::Duration {
        self.0
    }
}

impl From<time::Duration> for Duration {
    fn from(duration: time::Duration) -> Self {
        Self(duration)
    }
}

impl From<Duration> for time::Duration {
    fn from(duration: Duration) -> Self {
        duration.0
    }
}

/// Why a duration string was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DurationError {
    #[error("invalid duration {0:?}: {1}")]
    Invalid(String, kube::core::duration::ParseError),
    #[error("invalid duration {0:?}: expected a number and a unit, like 250ms, 2s or 1m30s")]
    Shape(String),
}

impl FromStr for Duration {
    type Err = DurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Go accepts a bare "0" and kube's parser an empty string; the schema's PATTERN does not.
        // Starting with a digit also rules out a sign: durations here are never negative.
        if s.is_empty() || s.starts_with(|c: char| !c.is_ascii_digit()) {
            return Err(DurationError::Shape(s.to_owned()));
        }
        let parsed: kube::core::Duration = s.parse().map_err(|e| DurationError::Invalid(s.to_owned(), e))?;
        Ok(Self(parsed.into()))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&kube::core::Duration::from(self.0), f)
    }
}

impl Serialize for Duration {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = Cow::<str>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": PATTERN,
            "maxLength": 32,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_go_durations() {
        let cases = [
            ("250ms", 250),
            ("2s", 2_000),
            ("1m30s", 90_000),
            ("1.5s", 1_500),
            ("1h", 3_600_000),
        ];
        for (text, ms) in cases {
            let parsed: Duration = text.parse().expect(text);
            assert_eq!(parsed.get(), time::Duration::from_millis(ms), "{text}");
            let again: Duration = parsed.to_string().parse().expect("printed form parses");
            assert_eq!(again, parsed);
        }
    }

    #[test]
    fn refuses_malformed_and_negative_durations() {
        for text in ["", "10", "ms", "1d", "-1s", " 1s", "1s "] {
            assert!(text.parse::<Duration>().is_err(), "{text:?} should be refused");
        }
    }

    #[test]
    fn serde_round_trip_uses_the_string_form() {
        let value = serde_json::to_value(Duration::from_millis(1500)).expect("serialize");
        assert_eq!(value, "1.5s");
        let back: Duration = serde_json::from_value(value).expect("deserialize");
        assert_eq!(back, Duration::from_millis(1500));
        assert!(serde_json::from_value::<Duration>(serde_json::json!("soon")).is_err());
    }
}
