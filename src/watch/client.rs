//! The client microgate talks to the API server with: kube's, with a deadline on the start of
//! every response.
//!
//! A connection can go silent without closing (a load balancer that forgot the flow, packets
//! dropped on the way). kube's watcher notices it on a watch's stream, which then carries nothing
//! for the watch timeout and 5 s more, and opens the watch again; but that request goes out over
//! a connection from the client's pool, and the pooled connections went silent with the rest.
//! kube sets no read timeout (one long enough for a quiet watch would be minutes), so such a
//! request waited for ever: the gateway's watches of Gateways and Microservices were seen to
//! reopen over two silenced pooled connections and never hear back, while the watches that drew
//! new connections recovered.
//!
//! The API server starts its answer to a watch at once and to any other request within seconds,
//! so a request whose response has not started within [`head_timeout`] is given up. The caller
//! sees an error (a watch backs off and tries again) and the connection is closed rather than
//! pooled, so the next request does not meet the same silence. A response that has started
//! (a watch's stream, a long list's body) is not bounded by it.

use std::time::Duration;

use kube::client::ClientBuilder;
use tower::timeout::TimeoutLayer;

/// The longest a response may take to start, whatever the watch timeout.
const MAX_HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a request waits for its response to start: the watch timeout, which is how long an
/// operator lets a silent connection go unnoticed, and at most [`MAX_HEAD_TIMEOUT`].
pub fn head_timeout() -> Duration {
    head_timeout_for(super::timeout())
}

/// How long a request waits for its response to start when watches stay open `watch_timeout`.
pub fn head_timeout_for(watch_timeout: Duration) -> Duration {
    watch_timeout.min(MAX_HEAD_TIMEOUT)
}

/// A client for `config` whose requests give up on a response that has not started within
/// [`head_timeout`].
pub fn client(config: kube::Config) -> Result<kube::Client, kube::Error> {
    client_with_head_timeout(config, head_timeout())
}

/// A client for `config` whose requests give up on a response that has not started within
/// `head_timeout`.
pub fn client_with_head_timeout(
    config: kube::Config,
    head_timeout: Duration,
) -> Result<kube::Client, kube::Error> {
    Ok(ClientBuilder::try_from(config)?
        .with_layer(&TimeoutLayer::new(head_timeout))
        .build())
}
