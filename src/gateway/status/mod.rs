//! What the data plane reports on the resources it serves, once their table is in place and its
//! listeners are bound: [`microgate`] for microgate.dev Gateways, [`access_policy`] for
//! AccessPolicies, [`gateway_api`] for the Kubernetes Gateway API's GatewayClasses, Gateways and
//! HTTPRoutes.

pub mod access_policy;
pub mod gateway_api;
pub mod microgate;
