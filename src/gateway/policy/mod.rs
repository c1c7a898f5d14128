//! Policies compiled into the table and applied by the request path: which client address to
//! believe ([`client_ip`]), what a request path may look like ([`path`]) (per listener), and
//! cross-origin resource sharing ([`cors`], per route).
//! Pure functions over plain data.

pub mod client_ip;
pub mod cors;
pub mod path;
