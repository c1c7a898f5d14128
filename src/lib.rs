//! microgate: a Kubernetes operator and a built-in L7 gateway, in one binary.
//!
//! Data flows one way: watches → registry → gateway.
//!
//! - [`api`]: the `Microservice` and `Gateway` resources (`microgate.dev/v1alpha1`).
//! - [`controller`]: reconcilers that turn them into Deployments, Services and status.
//! - [`discovery`]: the Pod watch that keeps the registry of each Microservice's endpoints.
//! - [`leader`]: leader election on a Lease, so that one of several processes runs the writers.
//! - [`telemetry`]: logs, metrics and the admin endpoints.
//! - [`watch`]: what every watch of the API server shares (its timeout, its backoff, the client).
//! - [`cli`]: the command line.

pub mod api;
pub mod cli;
pub mod controller;
pub mod discovery;
pub mod gateway;
pub mod leader;
pub mod telemetry;
pub mod watch;
