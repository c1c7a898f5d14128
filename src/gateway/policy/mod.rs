//! Policies compiled into the table and applied by the request path: which client address to
//! believe ([`client_ip`]), what a request path may look like ([`path`]) (per listener),
//! cross-origin resource sharing ([`cors`], per route), and who may call a route
//! ([`access`]: [`credentials`] and [`authorize`]).
//! Plain data and pure checks; the only waiting is a bcrypt check off the worker thread.

pub mod access;
pub mod authorize;
pub mod client_ip;
pub mod cors;
pub mod credentials;
pub mod path;
