//! The respond phase: what the client gets back, whether an endpoint answered or the gateway
//! answers itself (an error, a redirect).

use std::borrow::Cow;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, Uri, header};
use http_body_util::Either;

use crate::{
    api::gateway::RedirectScheme,
    gateway::{
        http::{body::Whole, client::Client, forwarding::strip_hop_by_hop, wire::WireHeaders},
        policy::cors::Cors,
        table::{HeaderEdit, Redirect},
        upstream::UpstreamBody,
    },
};

/// An answer's body: an endpoint's, passed through as it arrives, or the gateway's own.
pub type ResponseBody = Either<UpstreamBody, Whole>;

/// Takes the HTTP/1.1 endpoint's headers that travel with `body` (see [`WireHeaders`]).
pub fn take_wire_headers(body: &mut ResponseBody) -> Option<WireHeaders> {
    match body {
        Either::Left(upstream) => upstream.take_wire_headers(),
        Either::Right(_) => None,
    }
}

/// The answer of a redirecting route: the request's URL with the parts the route names replaced.
/// `named_port`: the port the request's authority or `Host` named.
pub(super) fn redirect_response(
    redirect: &Redirect,
    client: &Client,
    host: Option<&str>,
    named_port: Option<u16>,
    uri: &Uri,
    matched_prefix: Option<&str>,
) -> Response<ResponseBody> {
    let scheme = match redirect.scheme {
        Some(RedirectScheme::Https) => "https",
        Some(RedirectScheme::Http) => "http",
        None => client.scheme(),
    };
    let Some(hostname) = redirect.hostname.as_deref().or(host) else {
        return local(
            StatusCode::BAD_REQUEST,
            "no-host",
            "a redirect keeps the request's host, and this request names none",
        );
    };
    // The port: the route's; else none when the scheme changes (its well-known port); else the
    // one the client named.
    let scheme_changed = scheme != client.scheme();
    let port = match redirect.port {
        Some(port) => Some(port),
        None if scheme_changed => None,
        None => named_port,
    };
    let port = port.filter(|p| !matches!((scheme, p), ("http", 80) | ("https", 443)));
    let path = match &redirect.path {
        Some(rewrite) => {
            let path = rewrite.apply(uri.path(), matched_prefix);
            match uri.query() {
                Some(query) => Cow::Owned(format!("{path}?{query}")),
                None => Cow::Owned(path),
            }
        }
        None => Cow::Borrowed(uri.path_and_query().map_or("/", |p| p.as_str())),
    };
    let location = match port {
        Some(port) => format!("{scheme}://{hostname}:{port}{path}"),
        None => format!("{scheme}://{hostname}{path}"),
    };
    let Ok(location) = HeaderValue::try_from(location) else {
        return local(
            StatusCode::BAD_REQUEST,
            "bad-redirect",
            "the redirect URL is not a valid header value",
        );
    };
    let mut response = Response::new(Either::Right(Whole::new(Bytes::new())));
    *response.status_mut() = redirect.status;
    response.headers_mut().insert(header::LOCATION, location);
    response
}

/// Applies a route's response header filter. An HTTP/1.1 endpoint's headers travel in wire
/// form beside the body (see [`WireHeaders`]); they move into the map first, so that the edit
/// sees them all.
pub(super) fn edit_response_headers(response: &mut Response<ResponseBody>, edit: &HeaderEdit) {
    if let Some(wire) = take_wire_headers(response.body_mut()) {
        wire.append_to(response.headers_mut());
    }
    edit.apply(response.headers_mut());
}

/// The gateway's answer to a CORS preflight: 204, with the CORS headers when its origin is
/// allowed (without them the browser refuses the request it asked about).
pub(super) fn preflight_response(cors: &Cors, request: &HeaderMap) -> Response<ResponseBody> {
    let mut response = Response::new(Either::Right(Whole::empty()));
    *response.status_mut() = StatusCode::NO_CONTENT;
    *response.headers_mut() = cors.preflight(request);
    response
}

/// Adds the CORS headers for the allowed `origin` to an answer, replacing any the endpoint sent
/// (an HTTP/1.1 endpoint's travel in wire form: they move into the map first).
pub(super) fn mark_cors_answer(response: &mut Response<ResponseBody>, cors: &Cors, origin: HeaderValue) {
    if let Some(wire) = take_wire_headers(response.body_mut()) {
        wire.append_to(response.headers_mut());
    }
    cors.add_to_answer(origin, response.headers_mut());
}

/// An endpoint's answer as the client gets it: without the endpoint's hop-by-hop headers.
pub(super) fn downstream(response: Response<UpstreamBody>) -> Response<ResponseBody> {
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, Either::Left(body))
}

/// An answer of the gateway's own: a one-line reason, and its code in `x-microgate-reason`.
pub fn local(status: StatusCode, code: &'static str, reason: &str) -> Response<ResponseBody> {
    let mut response = Response::new(Either::Right(Whole::new(Bytes::from(format!("{reason}\n")))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
        .headers_mut()
        .insert("x-microgate-reason", HeaderValue::from_static(code));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redirect(scheme: Option<RedirectScheme>, hostname: Option<&str>, port: Option<u16>) -> Redirect {
        Redirect {
            scheme,
            hostname: hostname.map(str::to_owned),
            port,
            path: None,
            status: StatusCode::MOVED_PERMANENTLY,
        }
    }

    fn location(
        redirect: &Redirect,
        client: &Client,
        host: Option<&str>,
        named_port: Option<u16>,
    ) -> (StatusCode, String) {
        let uri: Uri = "/a/b?c=1".parse().expect("a path");
        let response = redirect_response(redirect, client, host, named_port, &uri, None);
        let location = response
            .headers()
            .get(header::LOCATION)
            .map(|v| v.to_str().expect("ascii").to_owned())
            .unwrap_or_default();
        (response.status(), location)
    }

    #[test]
    fn redirects_keep_what_the_route_does_not_replace() {
        let addr: std::net::SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let plain = Client::new("0.0.0.0:8080".parse().expect("addr"), addr);
        let tls = Client::over_tls("0.0.0.0:8443".parse().expect("addr"), addr, "ns/gw/https".into());
        let https = Some(RedirectScheme::Https);
        // A changed scheme drops the port the client named: the new scheme's own is meant.
        assert_eq!(
            location(&redirect(https, None, None), &plain, Some("shop"), Some(8080)),
            (StatusCode::MOVED_PERMANENTLY, "https://shop/a/b?c=1".to_owned())
        );
        assert_eq!(
            location(&redirect(https, None, Some(8443)), &plain, Some("shop"), None).1,
            "https://shop:8443/a/b?c=1"
        );
        // The scheme's well-known port is left out.
        assert_eq!(
            location(&redirect(https, None, Some(443)), &plain, Some("shop"), None).1,
            "https://shop/a/b?c=1"
        );
        // Unchanged scheme: the host and port the client named stay, unless replaced.
        assert_eq!(
            location(
                &redirect(None, Some("new.example"), None),
                &tls,
                Some("shop"),
                Some(8443)
            )
            .1,
            "https://new.example:8443/a/b?c=1"
        );
        assert_eq!(
            location(
                &redirect(Some(RedirectScheme::Http), None, Some(80)),
                &tls,
                Some("shop"),
                None
            )
            .1,
            "http://shop/a/b?c=1"
        );
        // Nothing to keep: refused rather than a Location without a host.
        assert_eq!(
            location(&redirect(https, None, None), &plain, None, None).0,
            StatusCode::BAD_REQUEST
        );
    }
}
