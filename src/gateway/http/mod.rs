//! HTTP vocabulary both sides of the gateway share, with no gateway logic of its own: the
//! HTTP/1.1 wire format, the bodies the gateway sends, host names, path matching, the client of a
//! connection and the headers a message gains and loses as it is passed on. Of the rest of the gateway it
//! imports only `random`.

pub mod body;
pub mod client;
pub mod forwarding;
pub mod host;
pub mod path_match;
pub mod wire;
