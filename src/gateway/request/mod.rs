//! The phases of one proxied request, in the order they run (Cloudflare's pingora is the model):
//!
//! 1. [`route`]: check the target (one host, a normal path) and find the table entry that takes it;
//! 2. a CORS preflight is answered; otherwise the route's AccessPolicy, if it has one, lets the
//!    request go on or answers it ([`admit`]);
//! 3. the route's own answer, if it has one (a redirect), else [`forward`]:
//!    read the body, send copies to the route's [`mirror`]s, pick a backend and an endpoint, send,
//!    judge the answer, retry within policy and budget; or, for a WebSocket upgrade, splice the
//!    connection to one endpoint's ([`tunnel`]);
//! 4. [`respond`]: the client's answer, an endpoint's or the gateway's own;
//! 5. account: metrics, the access log, and the request's spans ([`trace`](super::trace)).
//!
//! The route table is loaded once per request, without a lock.

mod admit;
mod forward;
mod mirror;
mod respond;
mod route;
mod tunnel;

pub use tunnel::Tunnels;

use std::{net::SocketAddr, sync::Arc, time::Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, Response, StatusCode, header, uri::Authority};

use admit::{AccessNote, admit, mark_answer};
pub use respond::{ResponseBody, local, take_wire_headers};
use respond::{edit_response_headers, mark_cors_answer, preflight_response, redirect_response};
use route::{find_route, misdirected, normalize_target, same_host};

use super::{
    http::{body::BoxError, client::Client, host::request_host},
    metrics::{GatewayMetrics, RouteMetrics},
    policy::{client_ip, cors::Cors},
    table::{DEFAULT_MAX_CONNECTIONS, RouteTable},
    tls::TlsPort,
    trace::{Answered, Tracer},
};

/// Request bodies up to this size are buffered so that they can be retried; larger ones are
/// streamed to a single attempt.
pub const MAX_BUFFERED_BODY: usize = 1 << 20;

pub struct Proxy {
    table: Arc<ArcSwap<RouteTable>>,
    access_log: bool,
    /// The metrics of requests no route takes.
    unrouted: RouteMetrics,
    metrics: GatewayMetrics,
    tunnels: Tunnels,
    /// Traces requests, when tracing is on.
    tracer: Option<Arc<Tracer>>,
}

impl Proxy {
    /// `access_log`: one structured log event per request (target `microgate::access`).
    pub fn new(table: Arc<ArcSwap<RouteTable>>, metrics: GatewayMetrics, access_log: bool) -> Self {
        let unrouted = metrics.route("<none>");
        Self {
            table,
            metrics,
            unrouted,
            access_log,
            tunnels: Tunnels::default(),
            tracer: None,
        }
    }

    /// The WebSocket tunnels this proxy has opened (for the drain: they outlive their requests).
    pub fn tunnels(&self) -> &Tunnels {
        &self.tunnels
    }

    /// Traces requests with `tracer` (W3C trace headers to the endpoints, spans exported).
    pub fn with_tracer(mut self, tracer: Option<Arc<Tracer>>) -> Self {
        self.tracer = tracer;
        self
    }

    /// The most client connections the listener at `local` holds open at once.
    pub fn max_connections(&self, local: SocketAddr) -> usize {
        self.table
            .load()
            .max_connections
            .get(&local)
            .copied()
            .unwrap_or(DEFAULT_MAX_CONNECTIONS)
    }

    /// The HTTPS listeners at `local`, if it terminates TLS.
    pub fn tls_port(&self, local: SocketAddr) -> Option<Arc<TlsPort>> {
        self.table.load().tls.get(&local).cloned()
    }

    /// Answers one request from a client. `B`: its body, as hyper's server or the gateway's own
    /// HTTP/1.1 server gives it.
    pub async fn handle<B: ClientBody>(
        &self,
        client: &Client,
        mut request: Request<B>,
    ) -> Response<ResponseBody> {
        let (listen_at, client_addr) = (client.local, client.addr);
        let started = Instant::now();
        let mut trace = self.tracer.as_ref().map(|tracer| tracer.begin(&request));
        let table = self.table.load_full();
        // Owned handles (reference counts, no copies), so that the request itself can move on.
        let authority = request.uri().authority().cloned();
        let host_header = request.headers().get(header::HOST).cloned();
        let host = request_host(authority.as_ref(), host_header.as_ref());
        let listener = client.tls_listener.as_deref();
        // Before anything looks at the path: routing, the access log, the service.
        let refused = match (&authority, &host_header) {
            // An absolute-form target (or HTTP/2's :authority) and a Host that name different
            // hosts: which one the service would believe is anyone's guess.
            (Some(authority), Some(host_header)) if !same_host(authority, host_header) => Some(local(
                StatusCode::BAD_REQUEST,
                "host-mismatch",
                "the request target's authority and the Host header disagree",
            )),
            // A host another HTTPS listener of this address serves, or none does: this
            // connection's certificate was not chosen for it (RFC 9110 §15.5.20).
            _ if misdirected(&table, listen_at, listener, host.as_deref()) => Some(local(
                StatusCode::MISDIRECTED_REQUEST,
                "misdirected",
                "this connection's TLS server name is not for this host",
            )),
            _ => normalize_target(request.uri_mut(), &table.path_policy(listen_at, listener)),
        };
        // Kept for the access log only when it is on.
        let logged = self
            .access_log
            .then(|| (request.method().clone(), request.uri().clone()));
        let origin = client_ip::resolve(
            table.trusted_proxies(listen_at, listener),
            client_addr.ip(),
            request.headers(),
        );
        let mut access_note: AccessNote = None;
        let mut granted = None;
        let (route_id, metrics, response) = match refused {
            Some(refused) => ("<none>", &self.unrouted, refused),
            None => match find_route(&table, listen_at, listener, host.as_deref(), &request) {
                Some(attached) => {
                    let route = &attached.route;
                    let preflight = route
                        .cors
                        .as_ref()
                        .filter(|_| Cors::is_preflight(request.method(), request.headers()));
                    // Before the request moves on: the origin its answer is marked for.
                    let cors_origin = route
                        .cors
                        .as_ref()
                        .and_then(|cors| Some((cors, cors.allowed_origin(request.headers())?.clone())));
                    let admitted = match (preflight, &route.access) {
                        // Boxed: the checks' state (a bcrypt wait, a Redis call) stays out of
                        // the future of every request, most of which have no policy.
                        (None, Some(access)) => Some(Box::pin(admit(access, &mut request, origin.ip)).await),
                        _ => None,
                    };
                    let mut response = match (preflight, &route.redirect, admitted) {
                        (Some(cors), _, _) => preflight_response(cors, request.headers()),
                        (None, _, Some(Err((denied, note)))) => {
                            access_note = note;
                            denied
                        }
                        (None, Some(redirect), admitted) => {
                            granted = admitted.and_then(Result::ok);
                            let named_port = authority.as_ref().and_then(Authority::port_u16).or_else(|| {
                                host_header
                                    .as_ref()
                                    .and_then(|h| Authority::try_from(h.as_bytes()).ok())
                                    .and_then(|a| a.port_u16())
                            });
                            redirect_response(
                                redirect,
                                client,
                                host.as_deref(),
                                named_port,
                                request.uri(),
                                attached
                                    .request_match()
                                    .and_then(|m| m.path.as_ref())
                                    .and_then(|p| p.prefix()),
                            )
                        }
                        (None, None, admitted) => {
                            granted = admitted.and_then(Result::ok);
                            let prefix = attached
                                .request_match()
                                .and_then(|m| m.path.as_ref())
                                .and_then(|p| p.prefix());
                            let mut response = self
                                .forward(
                                    route,
                                    prefix,
                                    client,
                                    origin,
                                    host.as_deref(),
                                    started,
                                    request,
                                    trace.as_mut(),
                                )
                                .await;
                            if let Some(edit) = &route.response_headers {
                                edit_response_headers(&mut response, edit);
                            }
                            response
                        }
                    };
                    if let Some(granted) = &granted {
                        mark_answer(&mut response, granted);
                        access_note = granted.caller.clone();
                    }
                    if let (None, Some((cors, origin))) = (preflight, cors_origin) {
                        mark_cors_answer(&mut response, cors, origin);
                    }
                    (route.id.as_str(), &route.metrics, response)
                }
                None => (
                    "<none>",
                    &self.unrouted,
                    local(StatusCode::NOT_FOUND, "no-route", "no route matches this request"),
                ),
            },
        };
        let took = started.elapsed();
        let sampled = trace.as_ref().filter(|t| t.sampled()).map(|t| t.trace_id().hex());
        metrics.request(response.status(), took, sampled.as_ref());
        let reason = || {
            response
                .headers()
                .get("x-microgate-reason")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
        };
        if let Some((method, uri)) = logged {
            let trace_id = trace.as_ref().map(|t| t.trace_id().hex());
            // Fields without a value (no Host, no reason, no policy, tracing off) are left out.
            let reason = Some(reason()).filter(|r| !r.is_empty());
            tracing::info!(
                target: "microgate::access",
                client = %origin.ip, peer = %client_addr, %method, %uri, host = host.as_deref(),
                route = route_id, status = response.status().as_u16(), reason,
                access = access_note.as_deref(), ms = took.as_secs_f64() * 1000.0,
                trace_id = trace_id.as_ref().and_then(|id| std::str::from_utf8(id).ok()),
                "request"
            );
        }
        if let (Some(tracer), Some(trace)) = (&self.tracer, trace) {
            tracer.finish(
                trace,
                Answered {
                    route: route_id,
                    status: response.status().as_u16(),
                    reason: reason(),
                    client: origin.ip,
                    peer: client_addr,
                    host: host.as_deref(),
                    scheme: client.scheme(),
                },
            );
        }
        response
    }
}

/// A client's request body, as either server reads it.
pub trait ClientBody:
    hyper::body::Body<Data = Bytes, Error: Into<BoxError>> + Send + Sync + Unpin + 'static
{
}

impl<B> ClientBody for B where
    B: hyper::body::Body<Data = Bytes, Error: Into<BoxError>> + Send + Sync + Unpin + 'static
{
}
