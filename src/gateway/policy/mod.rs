//! Policies compiled into the table and applied by the request path: which client address to
//! believe ([`client_ip`]) and what a request path may look like ([`path`]) (per listener);
//! per route, cross-origin resource sharing ([`cors`]), who may call it ([`access`]:
//! [`credentials`], JWTs ([`jwt`], verified with the key sets of [`jwks`]) and [`authorize`])
//! and how often ([`rate_limit`], buckets in this process or in Redis). Plain data and checks;
//! the only waiting is a bcrypt check off the worker thread, one Redis call for a global limit,
//! and the background fetch of remote JWT key sets.

pub mod access;
pub mod authorize;
pub mod client_ip;
pub mod cors;
pub mod credentials;
pub mod jwks;
pub mod jwt;
pub mod path;
pub mod rate_limit;
