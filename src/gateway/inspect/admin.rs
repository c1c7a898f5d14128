//! The admin port's registry and debug endpoints, behind the [`AdminAccess`] rule:
//!
//! - `GET /registry`: the registry as JSON ([`registry::RegistryView`]); with
//!   `?version=N&wait=30s`, a blocking query: the answer comes as soon as the version differs
//!   from N, or when the wait is over (200 either way; the same version then means no change).
//!   The wait defaults to 5 minutes and is cut to 10.
//! - `GET /registry/events`: Server-Sent Events, `event: registry`, `id:` the version, `data:`
//!   the whole registry; the first at once, then one per new version (changes that land
//!   together come as one).
//! - `GET /debug/config`: the whole live route table ([`config::ConfigView`]).
//! - `GET /debug/explain?method=GET&url=https://shop.example.com/api/orders&header=x-user:42`:
//!   which listener and route take the request and why ([`explain::Explanation`]); `header`
//!   repeats; `format=text` answers in words instead of JSON.

use std::{convert::Infallible, net::SocketAddr, time::Duration};

use axum::{
    Router,
    extract::{ConnectInfo, Request, State},
    http::{StatusCode, Uri, header},
    middleware::{self, Next},
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
    routing::get,
};
use futures::Stream;

use super::{Live, access::AdminAccess, config, explain, registry};

/// The longest a blocking query waits, and how long it waits when it does not say.
pub const MAX_WAIT: Duration = Duration::from_secs(600);
pub const DEFAULT_WAIT: Duration = Duration::from_secs(300);

/// The header every registry answer names its version in, too.
pub const VERSION_HEADER: &str = "x-microgate-registry-version";

/// The registry and debug endpoints over `live`, for the clients `access` admits.
pub fn router(live: Live, access: AdminAccess) -> Router {
    Router::new()
        .route("/registry", get(registry))
        .route("/registry/events", get(events))
        .route("/debug/config", get(debug_config))
        .route("/debug/explain", get(debug_explain))
        .layer(middleware::from_fn_with_state(access, admit))
        .with_state(live)
}

async fn admit(State(access): State<AdminAccess>, request: Request, next: Next) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip());
    if access.admits(peer, request.headers()) {
        return next.run(request).await;
    }
    tracing::info!(peer = ?peer, path = %request.uri().path(), "admin request refused");
    (StatusCode::FORBIDDEN, access.refusal()).into_response()
}

/// A query's parameters, each name with all its values in order.
pub(super) fn parameters(uri: &Uri) -> Vec<(String, String)> {
    form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .map(|(name, value)| (name.into_owned(), value.into_owned()))
        .collect()
}

pub(super) fn bad_request(message: String) -> Response {
    (StatusCode::BAD_REQUEST, format!("{message}\n")).into_response()
}

pub(super) fn json(value: &impl serde::Serialize) -> Response {
    match serde_json::to_string_pretty(value) {
        Ok(mut text) => {
            text.push('\n');
            ([(header::CONTENT_TYPE, "application/json")], text).into_response()
        }
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("could not encode the answer: {error}\n"),
        )
            .into_response(),
    }
}

async fn registry(State(live): State<Live>, uri: Uri) -> Response {
    let mut known = None;
    let mut wait = DEFAULT_WAIT;
    for (name, value) in parameters(&uri) {
        match name.as_str() {
            "version" => match value.parse::<u64>() {
                Ok(version) => known = Some(version),
                Err(_) => return bad_request(format!("version={value}: not a version number")),
            },
            "wait" => match value.parse::<crate::api::duration::Duration>() {
                Ok(asked) => wait = asked.get().min(MAX_WAIT),
                Err(error) => return bad_request(format!("wait={value}: {error}")),
            },
            _ => {}
        }
    }
    let mut changes = live.subscribe();
    if let Some(known) = known {
        // Resolves at once when the version already differs.
        let _ = tokio::time::timeout(wait, changes.wait_for(|version| *version != known)).await;
    }
    let version = *changes.borrow_and_update();
    let mut response = json(&registry::view(&live, version));
    if let Ok(value) = version.to_string().parse() {
        response.headers_mut().insert(VERSION_HEADER, value);
    }
    response
}

async fn events(State(live): State<Live>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let changes = live.subscribe();
    let stream = futures::stream::unfold((live, changes, true), |(live, mut changes, first)| async move {
        if !first && changes.changed().await.is_err() {
            return None;
        }
        let version = *changes.borrow_and_update();
        let view = registry::view(&live, version);
        let event = Event::default()
            .event("registry")
            .id(version.to_string())
            .data(serde_json::to_string(&view).unwrap_or_default());
        Some((Ok(event), (live, changes, false)))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

async fn debug_config(State(live): State<Live>) -> Response {
    let version = live.version();
    json(&config::view(&live.table().load(), version))
}

async fn debug_explain(State(live): State<Live>, uri: Uri) -> Response {
    let mut method = "GET".to_owned();
    let mut url = None;
    let mut headers = Vec::new();
    let mut text = false;
    for (name, value) in parameters(&uri) {
        match name.as_str() {
            "method" => method = value,
            "url" => url = Some(value),
            "header" => headers.push(value),
            "format" => text = value == "text",
            _ => {}
        }
    }
    let Some(url) = url else {
        return bad_request("url=... is required: the absolute URL of the request to explain".to_owned());
    };
    let request = match explain::ExplainRequest::parse(&method, &url, &headers) {
        Ok(request) => request,
        Err(error) => return bad_request(error.to_string()),
    };
    let explanation = explain::explain(&live.table().load(), live.registry(), &request, true);
    if text {
        (
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            explanation.text(),
        )
            .into_response()
    } else {
        json(&explanation)
    }
}
