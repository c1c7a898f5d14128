//! Who is at the other end of one client connection, as each of its requests needs it.

use std::{net::SocketAddr, sync::Arc};

use http::HeaderValue;

/// The client end of one connection, as each of its requests needs it.
pub struct Client {
    /// The listener's address (an address and a port): which listeners' routes apply.
    pub local: SocketAddr,
    pub addr: SocketAddr,
    /// `addr`'s IP as an `X-Forwarded-For` value, made once per connection.
    pub(crate) forwarded_for: Option<HeaderValue>,
    /// On a TLS connection, the HTTPS listener its server name picked (`namespace/gateway/
    /// listener`): its requests take only that listener's routes.
    pub tls_listener: Option<Arc<str>>,
}

impl Client {
    /// A client of a plain-HTTP listener.
    pub fn new(local: SocketAddr, addr: SocketAddr) -> Self {
        Self {
            local,
            addr,
            forwarded_for: HeaderValue::try_from(addr.ip().to_string()).ok(),
            tls_listener: None,
        }
    }

    /// A client whose TLS handshake picked the HTTPS listener `listener`.
    pub fn over_tls(local: SocketAddr, addr: SocketAddr, listener: Arc<str>) -> Self {
        Self {
            tls_listener: Some(listener),
            ..Self::new(local, addr)
        }
    }

    /// The scheme the client used, as `X-Forwarded-Proto` tells it.
    pub fn scheme(&self) -> &'static str {
        if self.tls_listener.is_some() {
            "https"
        } else {
            "http"
        }
    }
}
