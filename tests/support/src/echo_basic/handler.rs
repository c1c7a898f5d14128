//! What echo-basic answers, independent of the wire: its ServeMux (`/health`, `/status/`,
//! `/retry/`, `/ws`, echo for the rest, behind `preserveSlashes`) and its handlers. The
//! [`http1`](super::http1) and [`h2`](super::h2) servers turn an [`Answer`] into bytes the way
//! Go's net/http does.

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc};

use super::{EchoContext, PodLog, go_compat};

/// A request as net/http hands it to a handler.
#[derive(Debug)]
pub struct EchoRequest {
    pub method: String,
    /// `r.RequestURI`: the request target exactly as received (HTTP/2: `:path`).
    pub request_uri: String,
    /// `r.Host`.
    pub host: String,
    /// `r.Proto`: `HTTP/1.1`, `HTTP/1.0` or `HTTP/2.0`.
    pub proto: &'static str,
    /// `r.Header`: canonical names, in arrival order, without Host.
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    pub remote_addr: SocketAddr,
    pub tls: Option<TlsInfo>,
}

/// `r.TLS`, as echo-basic reports it.
#[derive(Clone, Debug)]
pub struct TlsInfo {
    pub version: &'static str,
    /// The client's certificates, PEM, as Go's `pem.Encode` writes them.
    pub peer_certificates: Vec<String>,
    pub server_name: String,
    pub negotiated_protocol: String,
    pub cipher_suite: String,
}

impl EchoRequest {
    /// `r.Header.Get`: the first value.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n == name.as_bytes())
            .map(|(_, v)| v.as_slice())
    }

    fn raw_query(&self) -> &str {
        self.request_uri.split_once('?').map_or("", |(_, q)| q)
    }
}

/// A handler's response: status, the header map it set (sorted, as Go writes it) and body.
#[derive(Debug, Default)]
pub struct Response {
    pub status: u16,
    pub headers: BTreeMap<Vec<u8>, Vec<Vec<u8>>>,
    pub body: Vec<u8>,
}

impl Response {
    fn new(status: u16) -> Self {
        Self {
            status,
            ..Self::default()
        }
    }

    fn set(&mut self, name: &str, value: &str) {
        self.headers
            .insert(name.as_bytes().to_vec(), vec![value.as_bytes().to_vec()]);
    }
}

/// What the server does with a request.
#[derive(Debug)]
pub enum Answer {
    Respond(Response),
    /// `/retry/` without `responseCode`: the connection is hijacked and closed (a TCP RST on a
    /// plain connection; a TLS connection is closed politely, as Go's `*tls.Conn` has no linger).
    Abort,
    /// `/ws`: the WebSocket handshake's raw answer; `echo` when frames are echoed afterwards.
    WebSocket {
        head: Vec<u8>,
        echo: bool,
    },
}

/// Which of echo-basic's servers took the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    /// `:3000` (and `:8443`): the ServeMux.
    Mux,
    /// `:3001`: h2c only; anything else is refused with 400.
    H2c,
}

/// State shared by a Pod's listeners: who it is, its log, and `/retry/`'s attempt counts.
pub struct Handler {
    pub context: EchoContext,
    pub log: Arc<PodLog>,
    retries: tokio::sync::Mutex<std::collections::HashMap<String, i64>>,
}

impl Handler {
    pub fn new(context: EchoContext, log: Arc<PodLog>) -> Self {
        Self {
            context,
            log,
            retries: tokio::sync::Mutex::default(),
        }
    }

    pub async fn answer(&self, listener: Listener, request: &EchoRequest) -> Answer {
        if listener == Listener::H2c {
            let upgrade = request.header("Upgrade") == Some(b"h2c".as_slice());
            if request.proto != "HTTP/2.0" && !upgrade {
                let mut response = Response::new(400);
                response.body = b"Expected h2c request".to_vec();
                return Answer::Respond(response);
            }
            return Answer::Respond(self.echo(request).await);
        }
        self.route(request).await
    }

    /// `preserveSlashes` then Go's ServeMux: unclean paths and subtree roots are redirected.
    async fn route(&self, request: &EchoRequest) -> Answer {
        let target = request.request_uri.as_str();
        let raw_path = match target.find("://") {
            // Absolute form: the path starts after the authority.
            Some(scheme_end) if !target.starts_with('/') => {
                let after = &target[scheme_end + 3..];
                let start = after.find(['/', '?']).unwrap_or(after.len());
                &after[start..]
            }
            _ => target,
        };
        let raw_path = raw_path.split('?').next().unwrap_or("");
        let decoded = go_compat::percent_decode(raw_path.as_bytes(), false).unwrap_or_default();
        let path = replace_double_slashes(&decoded);
        let escaped = if path == decoded {
            raw_path.to_owned()
        } else {
            go_compat::escape_path(&path)
        };
        let clean = go_compat::clean_path(&escaped);
        let route = if clean == "/health" || clean == "/ws" {
            clean.clone()
        } else if clean.starts_with("/status/") {
            "/status/".to_owned()
        } else if clean.starts_with("/retry/") {
            "/retry/".to_owned()
        } else if clean == "/status" || clean == "/retry" {
            let location = with_query(&format!("{clean}/"), request.raw_query());
            return Answer::Respond(redirect(request, &location));
        } else {
            "/".to_owned()
        };
        if clean != escaped && request.method != "CONNECT" {
            let location = with_query(&clean, request.raw_query());
            return Answer::Respond(redirect(request, &location));
        }
        match route.as_str() {
            "/health" => {
                let mut response = Response::new(200);
                response.body = b"OK".to_vec();
                Answer::Respond(response)
            }
            "/status/" => Answer::Respond(status(request)),
            "/retry/" => self.retry(request).await,
            "/ws" => self.websocket(request),
            _ => Answer::Respond(self.echo(request).await),
        }
    }

    /// echoHandler: log, `?delay=`, then the request as indented JSON.
    pub async fn echo(&self, request: &EchoRequest) -> Response {
        self.log.line(format!(
            "Echoing back request made to {} to client ({})",
            request.request_uri, request.remote_addr
        ));
        if let Err(message) = delay(request, "delay").await {
            return error_response(&message);
        }
        let mut response = Response::new(200);
        response.body = self.assertions_json(request).into_bytes();
        set_echo_headers(&mut response, request);
        response.set("Content-Type", "application/json");
        response.set("X-Content-Type-Options", "nosniff");
        response
    }

    /// `json.MarshalIndent(RequestAssertions, "", " ")`.
    fn assertions_json(&self, request: &EchoRequest) -> String {
        let mut out = String::from("{\n");
        let field = |out: &mut String, name: &str, value: &[u8]| {
            out.push_str(" \"");
            out.push_str(name);
            out.push_str("\": ");
            go_compat::json_string(out, value);
            out.push_str(",\n");
        };
        field(&mut out, "path", request.request_uri.as_bytes());
        field(&mut out, "host", request.host.as_bytes());
        field(&mut out, "method", request.method.as_bytes());
        field(&mut out, "proto", request.proto.as_bytes());
        let mut headers: BTreeMap<&[u8], Vec<&[u8]>> = BTreeMap::new();
        for (name, value) in &request.headers {
            headers.entry(name.as_slice()).or_default().push(value.as_slice());
        }
        if headers.is_empty() {
            out.push_str(" \"headers\": {},\n");
        } else {
            out.push_str(" \"headers\": {\n");
            let count = headers.len();
            for (i, (name, values)) in headers.into_iter().enumerate() {
                out.push_str("  ");
                go_compat::json_string(&mut out, name);
                out.push_str(": [\n");
                for (j, value) in values.iter().enumerate() {
                    out.push_str("   ");
                    go_compat::json_string(&mut out, value);
                    out.push_str(if j + 1 < values.len() { ",\n" } else { "\n" });
                }
                out.push_str(if i + 1 < count { "  ],\n" } else { "  ]\n" });
            }
            out.push_str(" },\n");
        }
        let context = &self.context;
        field(&mut out, "httpPort", context.http_port.as_bytes());
        field(&mut out, "namespace", context.namespace.as_bytes());
        field(&mut out, "ingress", context.ingress.as_bytes());
        field(&mut out, "service", context.service.as_bytes());
        match &request.tls {
            None => {
                out.push_str(" \"pod\": ");
                go_compat::json_string(&mut out, context.pod.as_bytes());
                out.push_str("\n}");
            }
            Some(tls) => {
                field(&mut out, "pod", context.pod.as_bytes());
                out.push_str(" \"tls\": {\n  \"version\": ");
                go_compat::json_string(&mut out, tls.version.as_bytes());
                if !tls.peer_certificates.is_empty() {
                    out.push_str(",\n  \"peerCertificates\": [\n");
                    for (i, pem) in tls.peer_certificates.iter().enumerate() {
                        out.push_str("   ");
                        go_compat::json_string(&mut out, pem.as_bytes());
                        out.push_str(if i + 1 < tls.peer_certificates.len() {
                            ",\n"
                        } else {
                            "\n"
                        });
                    }
                    out.push_str("  ]");
                }
                out.push_str(",\n  \"serverName\": ");
                go_compat::json_string(&mut out, tls.server_name.as_bytes());
                if !tls.negotiated_protocol.is_empty() {
                    out.push_str(",\n  \"negotiatedProtocol\": ");
                    go_compat::json_string(&mut out, tls.negotiated_protocol.as_bytes());
                }
                out.push_str(",\n  \"cipherSuite\": ");
                go_compat::json_string(&mut out, tls.cipher_suite.as_bytes());
                out.push_str("\n }\n}");
            }
        }
        out
    }

    /// retrySimulationHandler: fail the first `succeedAfter` attempts of each uuid.
    async fn retry(&self, request: &EchoRequest) -> Answer {
        let query = request.raw_query();
        let uuid = go_compat::query_get(query, "uuid").unwrap_or_default();
        if uuid.is_empty() {
            let mut response = Response::new(400);
            response.body = b"uuid is required".to_vec();
            return Answer::Respond(response);
        }
        let Some(succeed_after) = go_compat::query_get(query, "succeedAfter").and_then(|v| go_atoi(&v))
        else {
            let mut response = Response::new(400);
            response.body = b"succeedAfter is required".to_vec();
            return Answer::Respond(response);
        };
        let response_code = go_compat::query_get(query, "responseCode").and_then(|v| go_atoi(&v));
        // The attempt count is locked for the whole attempt, delay included, as in echo-basic.
        let mut attempts = self.retries.lock().await;
        let seen = attempts.entry(uuid).or_insert(0);
        if *seen < succeed_after {
            *seen += 1;
            if let Err(message) = delay(request, "delayRetry").await {
                return Answer::Respond(error_response(&message));
            }
            return match response_code {
                Some(code) => Answer::Respond(Response::new(u16::try_from(code).unwrap_or(500))),
                None if request.proto == "HTTP/2.0" => {
                    Answer::Respond(error_response("response writer does not support hijacking"))
                }
                None => Answer::Abort,
            };
        }
        drop(attempts);
        Answer::Respond(self.echo(request).await)
    }

    /// golang.org/x/net/websocket's server handshake, with its Origin check.
    fn websocket(&self, request: &EchoRequest) -> Answer {
        let refuse = |code: u16, extra: &str, message: &str| Answer::WebSocket {
            head: format!(
                "HTTP/1.1 {code:03} {}\r\n{extra}\r\n{message}",
                go_compat::status_text(code)
            )
            .into_bytes(),
            echo: false,
        };
        if request.proto == "HTTP/2.0" {
            // Hijacking is impossible on HTTP/2: net/http's handler panics, the stream is reset.
            return Answer::Abort;
        }
        if request.method != "GET" {
            return refuse(405, "", "bad method");
        }
        let header =
            |name: &str| String::from_utf8_lossy(request.header(name).unwrap_or_default()).into_owned();
        if header("Upgrade").to_lowercase() != "websocket"
            || !header("Connection").to_lowercase().contains("upgrade")
        {
            return refuse(400, "", "not websocket protocol");
        }
        let key = header("Sec-Websocket-Key");
        if key.is_empty() {
            return refuse(400, "", "mismatch challenge/response");
        }
        if header("Sec-Websocket-Version") != "13" {
            return refuse(
                400,
                "Sec-WebSocket-Version: 13\r\n",
                "missing or bad WebSocket Version",
            );
        }
        let protocols: Vec<String> = {
            let protocol = header("Sec-Websocket-Protocol");
            let protocol = protocol.trim();
            if protocol.is_empty() {
                Vec::new()
            } else {
                protocol.split(',').map(|p| p.trim().to_owned()).collect()
            }
        };
        let origin = header("Origin");
        if origin.is_empty() || !(origin.starts_with('/') || origin.contains(':')) {
            return refuse(403, "", "");
        }
        if protocols.len() > 1 {
            return refuse(400, "", "");
        }
        // The Conn's RemoteAddr on the server side is the client's Origin.
        self.log
            .line(format!("established websocket connection {origin}"));
        let mut head = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n",
            super::websocket::accept_key(&key)
        );
        if let Some(protocol) = protocols.first() {
            head.push_str(&format!("Sec-WebSocket-Protocol: {protocol}\r\n"));
        }
        head.push_str("\r\n");
        Answer::WebSocket {
            head: head.into_bytes(),
            echo: true,
        }
    }
}

/// statusHandler: `/status/NNN` exactly (no query), else 400.
fn status(request: &EchoRequest) -> Response {
    let code = request
        .request_uri
        .strip_prefix("/status/")
        .filter(|rest| rest.len() == 3 && rest.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|rest| rest.parse::<u16>().ok())
        .unwrap_or(400);
    Response::new(code)
}

/// writeEchoResponseHeaders: `X-Echo-Set-Header: "Name:value,Other:value"`.
fn set_echo_headers(response: &mut Response, request: &EchoRequest) {
    for (name, list) in &request.headers {
        if name != b"X-Echo-Set-Header" {
            continue;
        }
        for pair in list.split(|&b| b == b',') {
            let pair = trim(pair);
            let (name, value) = match pair.iter().position(|&b| b == b':') {
                Some(colon) => (&pair[..colon], &pair[colon + 1..]),
                None => (pair, &b""[..]),
            };
            // Go adds straight to the map (keeping the name's case): the first value as given,
            // later ones appended to it with a comma.
            let values = response.headers.entry(name.to_vec()).or_default();
            match values.first_mut() {
                None => values.push(value.to_vec()),
                Some(first) => {
                    first.push(b',');
                    first.extend_from_slice(trim(value));
                }
            }
        }
    }
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &bytes[start..end]
}

/// processError: `{"message": ...}` with status 500.
fn error_response(message: &str) -> Response {
    let mut response = Response::new(500);
    response.set("Content-Type", "application/json");
    response.set("X-Content-Type-Options", "nosniff");
    let mut body = String::from("{\"message\":");
    go_compat::json_string(&mut body, message.as_bytes());
    body.push('}');
    response.body = body.into_bytes();
    response
}

/// `http.Redirect` with 307, as the ServeMux sends it.
fn redirect(request: &EchoRequest, location: &str) -> Response {
    let mut response = Response::new(307);
    response.set("Location", location);
    if request.method == "GET" || request.method == "HEAD" {
        response.set("Content-Type", "text/html; charset=utf-8");
    }
    if request.method == "GET" {
        let escaped = location
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&#34;")
            .replace('\'', "&#39;");
        response.body = format!("<a href=\"{escaped}\">Temporary Redirect</a>.\n\n").into_bytes();
    }
    response
}

fn with_query(path: &str, query: &str) -> String {
    if query.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{query}")
    }
}

/// `strings.ReplaceAll(path, "//", "/")`.
fn replace_double_slashes(path: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        if path[i..].starts_with(b"//") {
            out.push(b'/');
            i += 2;
        } else {
            out.push(path[i]);
            i += 1;
        }
    }
    out
}

/// `strconv.Atoi`: optional sign, decimal digits.
fn go_atoi(text: &str) -> Option<i64> {
    let digits = text.strip_prefix(['+', '-']).unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// `delayResponse`: sleep for the query's duration; a bad one is the error to report.
async fn delay(request: &EchoRequest, key: &str) -> Result<(), String> {
    let Some(value) = go_compat::query_get(request.raw_query(), key).filter(|v| !v.is_empty()) else {
        return Ok(());
    };
    let duration = go_compat::parse_duration(&value)?;
    tokio::time::sleep(duration).await;
    Ok(())
}
