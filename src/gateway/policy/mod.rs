//! Policies compiled into the table and applied by the request path: which client address to
//! believe ([`client_ip`]) and what a request path may look like ([`path`]) (per listener),
//! cross-origin resource sharing ([`cors`], per route): pure functions over plain data; and rate
//! limits ([`rate_limit`], per route), whose buckets live in this process or in Redis.

pub mod client_ip;
pub mod cors;
pub mod path;
pub mod rate_limit;
