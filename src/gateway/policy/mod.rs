//! Per-listener policies, compiled into the table and applied by the request path: which
//! client address to believe ([`client_ip`]) and what a request path may look like ([`path`]).
//! Pure functions over plain data.

pub mod client_ip;
pub mod path;
