//! The policy phase: a route's AccessPolicy decides whether a request goes on (authentication,
//! authorization, rate limits), counted per route and outcome.

use std::{net::IpAddr, sync::Arc};

use http::{HeaderValue, Request, Response};

use super::{ResponseBody, local};
use crate::gateway::{
    policy::access::{Granted, Outcome},
    table::RouteAccess,
};

/// What the access log says of the decision: who called, or why the request was refused.
pub(super) type AccessNote = Option<Arc<str>>;

/// Lets `request` go on, or answers it (401, 403, 429, or 500 for a policy that cannot be
/// enforced).
pub(super) async fn admit<B>(
    access: &RouteAccess,
    request: &mut Request<B>,
    client_ip: IpAddr,
) -> Result<Granted, (Response<ResponseBody>, AccessNote)> {
    // Clones of reference-counted parts: the check reads them while it edits the headers.
    let (method, uri) = (request.method().clone(), request.uri().clone());
    match access
        .control
        .check(&method, uri.path(), request.headers_mut(), client_ip)
        .await
    {
        Ok(granted) => {
            access.metrics.count(Outcome::Allowed);
            Ok(granted)
        }
        Err(denial) => {
            access.metrics.count(denial.outcome);
            let mut response = local(denial.status, denial.code, &denial.message);
            let headers = response.headers_mut();
            for (name, value) in denial.headers {
                headers.append(name, value);
            }
            let note = denial
                .detail
                .map(|detail| Arc::from(format!("{}: {detail}", denial.outcome.label())))
                .or_else(|| Some(Arc::from(denial.outcome.label())));
            Err((response, note))
        }
    }
}

/// Adds the headers a granted request's answer carries (rate-limit state).
pub(super) fn mark_answer(response: &mut Response<ResponseBody>, granted: &Granted) {
    for (name, value) in &granted.response_headers {
        response
            .headers_mut()
            .insert(name.clone(), HeaderValue::clone(value));
    }
}
