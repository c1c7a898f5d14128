//! WebSocket through the gateway. A client's `Upgrade: websocket` request to a backend whose
//! Service port declares `appProtocol: kubernetes.io/ws` goes to one endpoint over a connection
//! of its own; when the endpoint switches protocols (101), so does the client's connection, and
//! the two are spliced until either side closes.
//!
//! Nowhere else does an `Upgrade` header pass the gateway: an upgrade the gateway did not ask
//! for (h2c above all) would let a client speak past the routes to whatever the endpoint runs.
//! Only hyper's server gives a request the means to take over its connection: the gateway's own
//! HTTP/1.1 server hands such requests to it.
//!
//! Tunnels are bounded: at most [`MAX_TUNNELS`] at once in the process; past it, 503.

use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{
    HeaderValue, Method, Request, Response, StatusCode, Version, header, request::Parts, uri::PathAndQuery,
};
use http_body_util::{BodyExt, Either, Empty, Limited};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::respond::{ResponseBody, local};
use crate::gateway::{
    http::{
        body::Whole,
        client::Client,
        forwarding::{Forwarding, strip_hop_by_hop},
    },
    policy::client_ip::ClientIp,
    table::Upstream,
    upstream::CONNECT_TIMEOUT,
};

/// WebSocket tunnels open at once, over all routes.
pub const MAX_TUNNELS: usize = 4096;
/// How long an endpoint has to answer the upgrade request.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// The most of a refusal's body (an endpoint that does not switch) passed on to the client.
const MAX_REFUSAL_BODY: usize = 64 * 1024;

static TUNNELS: AtomicUsize = AtomicUsize::new(0);

/// Whether a request asks to switch its connection to WebSocket (RFC 6455 §4.1): an HTTP/1.1
/// GET with `Upgrade: websocket` and `Connection: upgrade`.
pub(super) fn wants_websocket(parts: &Parts) -> bool {
    let token_in = |name: header::HeaderName, token: &str| {
        parts.headers.get_all(name).iter().any(|value| {
            value
                .as_bytes()
                .split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
        })
    };
    parts.method == Method::GET
        && parts.version == Version::HTTP_11
        && token_in(header::UPGRADE, "websocket")
        && token_in(header::CONNECTION, "upgrade")
}

/// Sends the upgrade request `parts` to an endpoint of `upstream`; on its 101, answers the
/// client with it and splices the two connections once the client's (`client_side`) is handed
/// over. Any other answer of the endpoint is the client's, and nothing is spliced.
pub(super) async fn open(
    upstream: &Upstream,
    parts: Parts,
    client: &Client,
    origin: ClientIp,
    host: Option<&str>,
    client_side: OnUpgrade,
) -> Response<ResponseBody> {
    let Some(slot) = Slot::take() else {
        return local(
            StatusCode::SERVICE_UNAVAILABLE,
            "tunnel-limit",
            &format!("{MAX_TUNNELS} WebSocket connections are open: no more for now"),
        );
    };
    let Some(endpoint) = upstream.pool.pick(None, None) else {
        return local(
            StatusCode::SERVICE_UNAVAILABLE,
            "no-endpoints",
            &format!("no ready endpoints for {}", upstream.service),
        );
    };
    let forwarding = Forwarding::for_peer(&parts.headers, client, host, origin.peer_trusted);
    let mut headers = parts.headers;
    forwarding.apply(&mut headers);
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    let mut request = Request::new(Empty::<Bytes>::new());
    *request.method_mut() = Method::GET;
    *request.uri_mut() = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"))
        .into();
    *request.headers_mut() = headers;

    let connect = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(endpoint.addr)).await;
    let Ok(Ok(stream)) = connect else {
        return local(
            StatusCode::BAD_GATEWAY,
            "connect-failure",
            "could not connect to the upstream",
        );
    };
    let _ = stream.set_nodelay(true);
    let exchange = async {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        // Driven until the endpoint's connection is handed over (or ends).
        tokio::spawn(connection.with_upgrades());
        sender.send_request(request).await
    };
    let response = match tokio::time::timeout(HANDSHAKE_TIMEOUT, exchange).await {
        Ok(Ok(response)) => response,
        Ok(Err(error)) => {
            tracing::debug!(%error, pod = %endpoint.pod, "WebSocket handshake with the endpoint failed");
            return local(
                StatusCode::BAD_GATEWAY,
                "upstream-reset",
                "the upstream connection broke",
            );
        }
        Err(_) => {
            return local(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream-timeout",
                "the upstream did not answer in time",
            );
        }
    };
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        // The endpoint said no: its answer, as any answer, without its hop-by-hop headers.
        let (mut head, body) = response.into_parts();
        strip_hop_by_hop(&mut head.headers);
        let Ok(body) = Limited::new(body, MAX_REFUSAL_BODY).collect().await else {
            return local(
                StatusCode::BAD_GATEWAY,
                "upstream-invalid",
                "the upstream's refusal of the upgrade could not be read",
            );
        };
        head.headers.remove(header::CONTENT_LENGTH);
        return Response::from_parts(head, Either::Right(Whole::new(body.to_bytes())));
    }
    let mut response = response;
    let upstream_side = hyper::upgrade::on(&mut response);
    let (head, _) = response.into_parts();
    let pod = endpoint.pod.clone();
    tokio::spawn(async move {
        let _slot = slot;
        let (client_io, upstream_io) = match tokio::join!(client_side, upstream_side) {
            (Ok(client_io), Ok(upstream_io)) => (client_io, upstream_io),
            (Err(error), _) | (_, Err(error)) => {
                tracing::debug!(%error, %pod, "WebSocket connection not taken over");
                return;
            }
        };
        let (mut client_io, mut upstream_io) = (TokioIo::new(client_io), TokioIo::new(upstream_io));
        if let Err(error) = tokio::io::copy_bidirectional(&mut client_io, &mut upstream_io).await {
            tracing::debug!(%error, %pod, "WebSocket connection ended with an error");
        }
    });
    // The endpoint's 101 as it is: Upgrade, Connection and Sec-WebSocket-Accept belong to it.
    Response::from_parts(head, Either::Right(Whole::empty()))
}

/// One of the [`MAX_TUNNELS`], given back when dropped.
struct Slot;

impl Slot {
    fn take() -> Option<Self> {
        TUNNELS
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_TUNNELS).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        TUNNELS.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(method: Method, version: Version, headers: &[(&'static str, &'static str)]) -> Parts {
        let mut request = Request::new(());
        *request.method_mut() = method;
        *request.version_mut() = version;
        for (name, value) in headers {
            request
                .headers_mut()
                .append(*name, HeaderValue::from_static(value));
        }
        request.into_parts().0
    }

    #[test]
    fn only_a_websocket_upgrade_of_an_http11_get_is_one() {
        let ws = [("upgrade", "WebSocket"), ("connection", "keep-alive, Upgrade")];
        assert!(wants_websocket(&parts(Method::GET, Version::HTTP_11, &ws)));
        assert!(!wants_websocket(&parts(Method::POST, Version::HTTP_11, &ws)));
        assert!(!wants_websocket(&parts(Method::GET, Version::HTTP_10, &ws)));
        assert!(!wants_websocket(&parts(
            Method::GET,
            Version::HTTP_11,
            &[("upgrade", "h2c"), ("connection", "upgrade")]
        )));
        assert!(!wants_websocket(&parts(
            Method::GET,
            Version::HTTP_11,
            &[("upgrade", "websocket")]
        )));
    }
}
