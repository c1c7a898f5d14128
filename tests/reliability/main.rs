//! The long fault and rollout scenarios: each runs for a minute or more under steady load, on
//! the real control plane with real sockets, and records its figure for RELIABILITY.md
//! (`microgate_test_support::reliability`). `make reliability` runs them, with the short
//! scenarios of the e2e suite (`faults::` and `rollouts::`), and writes the report; a plain
//! `cargo test` leaves them out, so `make test` stays short.

// The e2e suite's platform and fault scenarios, at full size here; not every helper is used.
#[allow(dead_code)]
#[path = "../e2e/platform.rs"]
mod platform;
#[allow(dead_code)]
#[path = "../e2e/faults/scenarios.rs"]
mod scenarios;

mod api_server_faults;
mod faults;
mod operator_faults;
mod rollout;
