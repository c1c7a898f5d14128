//! microgate: a Kubernetes operator and a built-in L7 gateway, in one binary.
//!
//! Data flows one way: watches → registry → gateway. The controller reconciles `Microservice`
//! resources into Deployments and Services, discovery turns Pod watches into a registry of ready
//! endpoints, and the gateway balances traffic over that registry.

pub mod api;
pub mod cli;
