//! Policies compiled into the table and applied by the request path: which client address to
//! believe ([`client_ip`]), what a request path may look like ([`path`]) (per listener),
//! cross-origin resource sharing ([`cors`], per route), and JWT authentication ([`jwt`], with
//! its key sets in [`jwks`]).
//! Pure functions over plain data, except the background fetch of remote key sets.

pub mod client_ip;
pub mod cors;
pub mod jwks;
pub mod jwt;
pub mod path;
