//! Following a microgate gateway's registry (`GET /registry` on its admin port) with blocking
//! queries, and balancing round-robin over one upstream's ready endpoints without the gateway.
//!
//! The loop: ask once; then ask again with the version the last answer had and a wait, and the
//! gateway answers as soon as anything changes (or the wait ends, with the same version).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::{net::TcpStream, sync::watch};

/// How long one blocking query may wait for a change.
pub const WAIT: &str = "30s";

#[derive(Debug)]
pub enum FollowError {
    Connect(std::io::Error),
    Http(hyper::Error),
    Status(StatusCode, String),
    Json(serde_json::Error),
}

impl std::fmt::Display for FollowError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FollowError::Connect(e) => write!(f, "cannot connect to the admin port: {e}"),
            FollowError::Http(e) => write!(f, "HTTP exchange with the admin port: {e}"),
            FollowError::Status(status, body) => {
                write!(f, "the admin port answered {status}: {}", body.trim())
            }
            FollowError::Json(e) => write!(f, "the registry is not the JSON expected: {e}"),
        }
    }
}

impl std::error::Error for FollowError {}

/// Where the registry is, and which upstream to follow.
#[derive(Clone, Debug)]
pub struct Source {
    pub admin: SocketAddr,
    /// Sent as `Authorization: Bearer <token>` (needed unless on the gateway's loopback).
    pub token: Option<String>,
    pub namespace: String,
    pub name: String,
}

/// One upstream's endpoints to send to, at a registry version.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Endpoints {
    pub version: u64,
    /// Ready and not ejected.
    pub usable: Vec<SocketAddr>,
}

/// `GET /registry`, with `?version=V&wait=...` when `known` is `Some(V)`.
pub async fn fetch(source: &Source, known: Option<u64>) -> Result<Value, FollowError> {
    let path = match known {
        Some(version) => format!("/registry?version={version}&wait={WAIT}"),
        None => "/registry".to_owned(),
    };
    let stream = TcpStream::connect(source.admin)
        .await
        .map_err(FollowError::Connect)?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(FollowError::Http)?;
    let connection = tokio::spawn(connection);
    let mut request = Request::get(path).header(header::HOST, source.admin.to_string());
    if let Some(token) = &source.token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request
        .body(Empty::<Bytes>::new())
        .map_err(|e| FollowError::Status(StatusCode::BAD_REQUEST, e.to_string()))?;
    let response = sender.send_request(request).await.map_err(FollowError::Http)?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(FollowError::Http)?
        .to_bytes();
    connection.abort();
    if status != StatusCode::OK {
        return Err(FollowError::Status(
            status,
            String::from_utf8_lossy(&body).into_owned(),
        ));
    }
    serde_json::from_slice(&body).map_err(FollowError::Json)
}

/// The endpoints of `source`'s upstream in `registry` that a client should send to: ready,
/// and not ejected by the gateway's outlier detection.
pub fn usable(registry: &Value, source: &Source) -> Endpoints {
    let version = registry["version"].as_u64().unwrap_or(0);
    let upstream = registry["upstreams"].as_array().into_iter().flatten().find(|u| {
        u["namespace"] == source.namespace.as_str()
            && u["name"] == source.name.as_str()
            && u["port"].is_null()
    });
    let usable = upstream
        .and_then(|u| u["endpoints"].as_array())
        .into_iter()
        .flatten()
        .filter(|e| e["ready"] == true && e["ejected"] != true)
        .filter_map(|e| e["address"].as_str()?.parse().ok())
        .collect();
    Endpoints { version, usable }
}

/// Follows the registry for ever, publishing each new set of usable endpoints to `current`.
/// A failed query is tried again after a second.
pub async fn follow(source: Source, current: watch::Sender<Endpoints>) {
    let mut known = None;
    loop {
        match fetch(&source, known).await {
            Ok(registry) => {
                let endpoints = usable(&registry, &source);
                known = Some(endpoints.version);
                current.send_if_modified(|old| {
                    let changed = old.usable != endpoints.usable;
                    *old = endpoints;
                    changed
                });
            }
            Err(error) => {
                eprintln!("registry-client: {error}; asking again in 1 s");
                known = None;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Round-robin over whatever the follower last published.
#[derive(Clone)]
pub struct RoundRobin {
    endpoints: watch::Receiver<Endpoints>,
    next: Arc<AtomicUsize>,
}

impl RoundRobin {
    pub fn new(endpoints: watch::Receiver<Endpoints>) -> Self {
        Self {
            endpoints,
            next: Arc::default(),
        }
    }

    /// The next endpoint in turn; `None` while there is none.
    pub fn pick(&self) -> Option<SocketAddr> {
        let endpoints = self.endpoints.borrow();
        let n = endpoints.usable.len();
        (n > 0).then(|| endpoints.usable[self.next.fetch_add(1, Ordering::Relaxed) % n])
    }

    /// The endpoints as last published.
    pub fn endpoints(&self) -> Endpoints {
        self.endpoints.borrow().clone()
    }

    /// Waits for the follower's next publication.
    pub async fn changed(&mut self) -> bool {
        self.endpoints.changed().await.is_ok()
    }
}
