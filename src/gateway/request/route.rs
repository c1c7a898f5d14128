//! The route phase: check the request's target (one host, a normal path), then find the table
//! entry that takes it.

use std::{borrow::Cow, net::SocketAddr};

use bytes::Bytes;
use http::{
    HeaderValue, Request, Response, StatusCode, Uri, header,
    uri::{Authority, PathAndQuery},
};
use http_body_util::Either;

use super::respond::{ResponseBody, local};
use crate::gateway::{
    http::body::Whole,
    policy::path::{self, PathPolicy},
    table::{Attached, RouteTable, select::Candidates},
};

/// The route entry `request` takes at `local`; on a TLS connection (`listener` set), only among
/// the routes of the listener its handshake picked; on plain HTTP where listeners of different
/// hostnames share the address, only among those of the listeners that take its host best.
pub(super) fn find_route<'t, B>(
    table: &'t RouteTable,
    local: SocketAddr,
    listener: Option<&str>,
    host: Option<&str>,
    request: &Request<B>,
) -> Option<&'t Attached> {
    let candidates = Candidates::at(table, local, listener, host)?;
    // Entries are sorted most specific first: the first that fits wins.
    candidates
        .entries
        .iter()
        .find(|entry| candidates.takes(entry, request.method(), request.uri(), request.headers()))
}

/// Whether a request on a TLS connection (`listener`: the HTTPS listener its server name
/// picked) names a host its listener does not take: the listener the host would have picked as
/// a server name is another one, or there is none.
pub(super) fn misdirected(
    table: &RouteTable,
    local: SocketAddr,
    listener: Option<&str>,
    host: Option<&str>,
) -> bool {
    let (Some(listener), Some(host)) = (listener, host) else {
        return false;
    };
    let picked = table
        .tls
        .get(&local)
        .and_then(|port| port.select(Some(host)))
        .map(|l| &*l.id);
    picked != Some(listener)
}

/// Whether a request target's authority and its `Host` header name the same host and port.
pub(super) fn same_host(authority: &Authority, host_header: &HeaderValue) -> bool {
    Authority::try_from(host_header.as_bytes()).is_ok_and(|host| {
        host.host().eq_ignore_ascii_case(authority.host()) && host.port_u16() == authority.port_u16()
    })
}

/// Normalizes the path of `uri` in place (see [`path`]); the answer to give instead when
/// the path is refused, or redirected to its normal form.
pub(super) fn normalize_target(uri: &mut Uri, policy: &PathPolicy) -> Option<Response<ResponseBody>> {
    let normalized = match path::normalize(uri.path(), policy) {
        Ok(Cow::Borrowed(_)) => return None,
        Ok(Cow::Owned(normalized)) => normalized,
        Err(refusal) => return Some(local(StatusCode::BAD_REQUEST, refusal.code(), refusal.reason())),
    };
    let target = match uri.query() {
        Some(query) => format!("{normalized}?{query}"),
        None => normalized,
    };
    if policy.redirect_changed {
        let mut response = Response::new(Either::Right(Whole::new(Bytes::new())));
        *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
        if let Ok(location) = HeaderValue::try_from(target) {
            response.headers_mut().insert(header::LOCATION, location);
        }
        return Some(response);
    }
    let mut parts = std::mem::take(uri).into_parts();
    // Only unreserved characters were decoded: the normalized target is as valid as the original.
    parts.path_and_query = PathAndQuery::try_from(target).ok();
    match Uri::from_parts(parts) {
        Ok(normalized) => {
            *uri = normalized;
            None
        }
        Err(_) => Some(local(
            StatusCode::BAD_REQUEST,
            "bad-path",
            "the normalized path is not a valid URI",
        )),
    }
}
