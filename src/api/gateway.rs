//! `Gateway`: where traffic enters (listeners) and which Microservice it goes to (routes).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{duration::Duration, policy::RetryPolicy};

/// A DNS label: what names a listener, a route or a Microservice.
const DNS_LABEL: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// A host name, optionally with a leading `*.` wildcard label.
const HOSTNAME: &str = r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// A host name without wildcards.
const HOSTNAME_NO_WILDCARD: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// An HTTP header name as routes use them.
pub(crate) const HEADER_NAME: &str = "^[A-Za-z0-9-]+$";

/// Listeners on which the built-in gateway accepts HTTP, and routes that send each request to
/// one of a set of weighted Microservices, with timeouts and retries.
// Each printcolumn(...) repeats the same keys, which clippy mistakes for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "microgate.dev",
    version = "v1alpha1",
    kind = "Gateway",
    cel,
    plural = "gateways",
    namespaced,
    status = "GatewayStatus",
    shortname = "mgw",
    category = "microgate",
    doc = "A Gateway declares the listeners on which microgate's built-in gateway accepts HTTP traffic and the routes that send each request to weighted Microservices, with timeouts and retries. `kubectl get mgw` lists them (plain `gateways` may mean the Kubernetes Gateway API).",
    printcolumn(
        name = "Listeners",
        type_ = "string",
        json_path = ".status.listeners",
        description = "Listeners as name:port/protocol"
    ),
    printcolumn(
        name = "Routes",
        type_ = "integer",
        json_path = ".status.routeCount",
        description = "Number of routes"
    ),
    printcolumn(
        name = "Accepted",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Accepted\")].status"
    ),
    printcolumn(
        name = "Programmed",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Programmed\")].status"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.routes.all(r, !has(r.listeners) || r.listeners.all(l, self.listeners.exists(x, x.name == l)))")
    .message("every name in routes[].listeners must be the name of one of this Gateway's listeners")
    .field_path(".routes"))]
pub struct GatewaySpec {
    /// Where the gateway accepts connections. Names are unique; a port is one listener's, except
    /// that HTTPS listeners may share one when their hostnames differ (the client's SNI picks
    /// the listener, and at most one of them has no hostnames: the default certificate).
    #[schemars(length(min = 1, max = 16))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    #[x_kube(validation = Rule::new("self.all(a, self.all(b, a.name == b.name || a.port != b.port || (a.protocol == 'HTTPS' && b.protocol == 'HTTPS' && (has(a.hostnames) && size(a.hostnames) > 0 || has(b.hostnames) && size(b.hostnames) > 0) && !(has(a.hostnames) && has(b.hostnames) && a.hostnames.exists(h, h in b.hostnames)))))")
        .message("listeners on one port must all be HTTPS with no hostname in common, and at most one of them without hostnames"))]
    pub listeners: Vec<Listener>,
    /// Rules sending requests to Microservices. Names are unique. A request takes the most
    /// specific route that fits it (listeners, hostnames, one of its matches), as in the Gateway
    /// API: an exact hostname before a wildcard, an exact path before a prefix, a longer prefix
    /// before a shorter, a method before none, more header matches before fewer; among equals,
    /// the earlier route.
    #[serde(default)]
    #[schemars(length(max = 64))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub routes: Vec<Route>,
    /// Timeout, retry and access policy of routes that do not set their own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defaults: Option<RoutePolicy>,
}

/// A port on which the gateway accepts HTTP or HTTPS.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.protocol == 'HTTPS' ? has(self.tls) : !has(self.tls)")
    .message("tls is required when protocol is HTTPS, and only then")
    .field_path(".tls"))]
pub struct Listener {
    /// The listener's name, unique in the Gateway (a DNS label).
    #[schemars(length(min = 1, max = 63), pattern(DNS_LABEL))]
    pub name: String,
    /// The TCP port.
    #[schemars(range(min = 1, max = 65_535))]
    pub port: i32,
    /// HTTP: HTTP/1.1, and HTTP/2 without TLS for clients that ask for it. HTTPS: TLS
    /// terminated here (certificates from `tls`), then HTTP/1.1 or HTTP/2 as ALPN settles.
    #[serde(default)]
    pub protocol: ListenerProtocol,
    /// Host names this listener serves (`Host` header, port ignored; for HTTPS also the TLS
    /// server name, SNI); `*.example.com` matches any one label in front. Empty: any host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 253), pattern(HOSTNAME)))]
    pub hostnames: Vec<String>,
    /// TLS termination: required for HTTPS listeners, refused on others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTls>,
    /// Who the client is. Unset: the TCP peer, and an `X-Forwarded-For` a client sends is not
    /// believed nor passed on. Set, it names the proxies in front of this listener whose
    /// `X-Forwarded-For` is believed, as Envoy Gateway's `clientIPDetection` does.
    #[serde(
        default,
        rename = "clientIPDetection",
        skip_serializing_if = "Option::is_none"
    )]
    pub client_ip_detection: Option<ClientIpDetection>,
    /// The most client connections open at once on this listener's port (default 16384);
    /// listeners sharing a port share one count, the sum of their limits. A connection over the
    /// limit is refused at once (on plain HTTP with a 503 saying so), never queued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub max_connections: Option<i32>,
    /// How request paths are normalized before routing, and which forms that services read in
    /// different ways are refused. Unset: every ambiguous form refused, slashes merged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_normalization: Option<PathNormalization>,
}

/// How a listener normalizes request paths (RFC 3986 §6.2.2: unreserved escapes decoded, other
/// escapes in uppercase hex, dot segments removed) and treats the forms services disagree on.
/// The service receives the normalized path.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PathNormalization {
    /// `%2F`, `%5C` and a raw `\` in the path. Reject (400, the default) or Keep: passed on
    /// escaped, never taken for a separator.
    #[serde(default)]
    pub escaped_slashes: AmbiguousPath,
    /// `%2E` in a `.` or `..` segment. Reject (the default) or Keep: resolved as a dot segment.
    #[serde(default)]
    pub encoded_dot_segments: AmbiguousPath,
    /// A `;` in the path (`/admin;x=1` is `/admin` to some servers). Reject (the default) or
    /// Keep: part of its segment.
    #[serde(default)]
    pub path_parameters: AmbiguousPath,
    /// Merge repeated slashes (`//a` → `/a`); the default.
    #[serde(default = "default_true")]
    pub merge_slashes: bool,
    /// What a path normalization changed gets: Forward (the default) sends the normalized path
    /// on; Redirect answers 308 with the normalized path, so the client learns it.
    #[serde(default)]
    pub changed_path: ChangedPath,
}

fn default_true() -> bool {
    true
}

/// What happens to a path form that services read in different ways.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum AmbiguousPath {
    #[default]
    Reject,
    Keep,
}

/// What happens to a request whose path normalization changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ChangedPath {
    #[default]
    Forward,
    Redirect,
}

/// How a listener tells who the client is.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
pub struct ClientIpDetection {
    /// Believe `X-Forwarded-For` from trusted proxies.
    #[serde(default, rename = "xForwardedFor", skip_serializing_if = "Option::is_none")]
    pub x_forwarded_for: Option<XForwardedFor>,
}

/// Which proxies' `X-Forwarded-For` is believed: by address, or by how many stand in front.
/// The client IP (for `sourceIp` hashing and the access log) is the trusted one; the
/// endpoint gets the client's `X-Forwarded-For` only from a trusted peer, with the peer added.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.numTrustedHops) != (has(self.trustedCIDRs) && size(self.trustedCIDRs) > 0)")
    .message("xForwardedFor needs exactly one of numTrustedHops and trustedCIDRs"))]
pub struct XForwardedFor {
    /// The proxies, one behind the other, in front of the gateway: the client is the Nth
    /// address from the right of `X-Forwarded-For` (the TCP peer if the list is shorter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 32))]
    pub num_trusted_hops: Option<i32>,
    /// The proxies' addresses (e.g. `10.0.0.0/8`, `2001:db8::/32`). The peer must be in one for
    /// its `X-Forwarded-For` to be read; the client is then the right-most address in it that is
    /// in none of them (the left-most if all are).
    #[serde(default, rename = "trustedCIDRs", skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 64)))]
    #[x_kube(validation = Rule::new("self.all(c, isCIDR(c))")
        .message("every entry of trustedCIDRs must be a CIDR such as 10.0.0.0/8 or 2001:db8::/32"))]
    pub trusted_cidrs: Vec<String>,
}

/// The protocol a listener speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ListenerProtocol {
    /// HTTP/1.1, and HTTP/2 cleartext (h2c) with prior knowledge.
    #[default]
    #[serde(rename = "HTTP")]
    Http,
    /// TLS, then HTTP/1.1 or HTTP/2 (ALPN `h2`, `http/1.1`).
    #[serde(rename = "HTTPS")]
    Https,
}

impl ListenerProtocol {
    /// The name the API uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "HTTP",
            Self::Https => "HTTPS",
        }
    }
}

/// How an HTTPS listener terminates TLS.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ListenerTls {
    /// Secrets of type `kubernetes.io/tls` in the Gateway's namespace (`tls.crt`: the
    /// certificate chain, leaf first; `tls.key`: its private key, PEM). With several (say an
    /// ECDSA and an RSA certificate), each client gets the first whose key it can verify.
    /// A Secret that changes is served to new connections within a second; one that turns
    /// invalid or is deleted leaves the listener on the last good certificate, and the
    /// listener's `ResolvedRefs` condition says what is wrong.
    #[schemars(length(min = 1, max = 4))]
    pub certificate_refs: Vec<SecretRef>,
    /// The oldest TLS version accepted: `"1.2"` (the default) or `"1.3"`.
    #[serde(default)]
    pub min_version: TlsVersion,
}

/// A Secret in the Gateway's namespace, named as the Gateway API names it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(!has(self.group) || self.group == '') && (!has(self.kind) || self.kind == 'Secret')")
    .message("only core Secrets can be referenced (group \"\" and kind Secret)"))]
pub struct SecretRef {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The referent's API group; only `""` (core) is supported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The referent's kind; only `Secret` is supported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

/// A TLS protocol version.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum TlsVersion {
    #[default]
    #[serde(rename = "1.2")]
    Tls12,
    #[serde(rename = "1.3")]
    Tls13,
}

/// Where matching requests go, and how they are timed out and retried.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.timeout) || !has(self.retry) || !has(self.retry.perTryTimeout) || duration(self.retry.perTryTimeout) <= duration(self.timeout)")
    .message("retry.perTryTimeout must not exceed timeout")
    .field_path(".retry.perTryTimeout"))]
#[x_kube(validation = Rule::new("has(self.redirect) != (has(self.backends) && size(self.backends) > 0)")
    .message("a route either forwards to backends or redirects: set exactly one of backends and redirect")
    .field_path(".backends"))]
pub struct Route {
    /// The route's name, unique in the Gateway (a DNS label).
    #[schemars(length(min = 1, max = 63), pattern(DNS_LABEL))]
    pub name: String,
    /// The listeners this route serves, by name. Empty: all of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 63), pattern(DNS_LABEL)))]
    pub listeners: Vec<String>,
    /// Host names this route serves, as in listeners. Empty: any host its listeners take.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 253), pattern(HOSTNAME)))]
    pub hostnames: Vec<String>,
    /// The route takes a request that fits any one of these (each one's conditions all hold).
    /// Empty: every request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub matches: Vec<RouteMatch>,
    /// Where requests go: each backend (a distinct Microservice) receives a share of requests
    /// proportional to its weight.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["microservice".into()]))]
    #[x_kube(validation = Rule::new("self.exists(b, b.weight > 0)").message("at least one backend must have a positive weight"))]
    pub backends: Vec<Backend>,
    /// Answer with a redirect instead of forwarding (e.g. `{scheme: https}` sends plain HTTP
    /// clients to the HTTPS listener). The path and query are kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<Redirect>,
    /// Deadline for the whole request, retries included; the gateway answers 504 past it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s')").message("timeout must be positive"))]
    pub timeout: Option<Duration>,
    /// Retry policy; without it the Gateway's `defaults.retry` applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// The AccessPolicy (in the Gateway's namespace) that says who may call this route and how
    /// often; without it the Gateway's `defaults.accessPolicy` applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub access_policy: Option<String>,
}

/// A redirect answered by the gateway itself: the request's URL with the parts given here
/// replaced, as the Gateway API's `RequestRedirect` filter does.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Redirect {
    /// The scheme of the new URL; unset keeps the request's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<RedirectScheme>,
    /// The host of the new URL; unset keeps the request's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), pattern(HOSTNAME_NO_WILDCARD))]
    pub hostname: Option<String>,
    /// The port of the new URL. Unset: the scheme's well-known port when `scheme` changes it
    /// (left out of the URL), else the port the request named in its `Host`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65_535))]
    pub port: Option<i32>,
    /// 301, 302 (the default), 303, 307 or 308.
    #[serde(default = "default_redirect_status")]
    #[x_kube(validation = Rule::new("self in [301, 302, 303, 307, 308]").message("statusCode must be one of 301, 302, 303, 307, 308"))]
    pub status_code: i32,
}

fn default_redirect_status() -> i32 {
    302
}

/// A URL scheme a redirect may name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RedirectScheme {
    Http,
    Https,
}

/// Conditions on a request, all of which must hold.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteMatch {
    /// The request path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    /// The request method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<HttpMethod>,
    /// Request headers that must be present with exactly these values (names are case-insensitive).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub headers: Vec<HeaderMatch>,
    /// Query parameters that must be present with exactly these values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub query_params: Vec<QueryParamMatch>,
}

/// How a path is compared.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.type == 'RegularExpression' || self.value.startsWith('/')")
    .message("path value must start with '/'")
    .field_path(".value"))]
pub struct PathMatch {
    /// Exact: the whole path. PathPrefix: the path starts with `value` at a `/` boundary
    /// (`/api` takes `/api` and `/api/x`, not `/apix`). RegularExpression: the whole path
    /// matches `value` (RE2 syntax, linear time; an invalid one makes the Gateway not Accepted).
    #[serde(rename = "type", default)]
    pub kind: PathMatchType,
    /// The path, prefix or regular expression.
    #[schemars(length(min = 1, max = 1024))]
    pub value: String,
}

/// A query parameter that must be present with an exact value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueryParamMatch {
    /// The parameter's name (exact, case-sensitive).
    #[schemars(length(min = 1, max = 256))]
    pub name: String,
    /// The exact value (as sent, without percent-decoding).
    #[schemars(length(max = 1024))]
    pub value: String,
}

/// The path comparisons a route can make.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum PathMatchType {
    Exact,
    #[default]
    PathPrefix,
    RegularExpression,
}

/// An HTTP method.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Connect,
    Options,
    Trace,
    Patch,
}

/// A header that must be present with an exact value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeaderMatch {
    /// The header's name.
    #[schemars(length(min = 1, max = 256), pattern(HEADER_NAME))]
    pub name: String,
    /// The exact value.
    #[schemars(length(max = 4096))]
    pub value: String,
}

/// A Microservice in the Gateway's namespace, with its share of the route's traffic.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Backend {
    /// The Microservice's name.
    #[schemars(length(min = 1, max = 63), pattern(DNS_LABEL))]
    pub microservice: String,
    /// Relative share of requests; 0 sends none (a drained backend).
    #[serde(default = "default_weight")]
    #[schemars(range(min = 0, max = 1_000_000))]
    pub weight: i32,
}

fn default_weight() -> i32 {
    1
}

/// Timeout, retry and access policy, as a Gateway's defaults set them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.timeout) || !has(self.retry) || !has(self.retry.perTryTimeout) || duration(self.retry.perTryTimeout) <= duration(self.timeout)")
    .message("retry.perTryTimeout must not exceed timeout")
    .field_path(".retry.perTryTimeout"))]
pub struct RoutePolicy {
    /// Deadline for the whole request, retries included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s')").message("timeout must be positive"))]
    pub timeout: Option<Duration>,
    /// Retry policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// The AccessPolicy (in the Gateway's namespace) of routes that name none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub access_policy: Option<String>,
}

/// What microgate last observed of a Gateway.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The listeners as `name:port/PROTOCOL`, comma-separated, as `kubectl get` shows them.
    #[serde(default)]
    pub listeners: String,
    /// Each listener as the gateway serves it: `ResolvedRefs` (its certificates are valid) and
    /// `Programmed` (it is being served), as the Gateway API reports listeners.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub listener_statuses: Vec<ListenerStatus>,
    /// How many routes the Gateway has.
    #[serde(default)]
    pub route_count: i32,
    /// Accepted (the spec is valid and its backends exist) and Programmed (the gateway serves it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// Each route's ready backends.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub routes: Vec<RouteStatus>,
}

/// A listener's state in the gateway.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ListenerStatus {
    /// The listener's name.
    pub name: String,
    /// `ResolvedRefs` (reason `InvalidCertificateRef` naming the Secret and what is wrong with
    /// it) and `Programmed`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

/// A route's state in the gateway.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteStatus {
    /// The route's name.
    pub name: String,
    /// Backends with at least one ready endpoint.
    pub ready_backends: i32,
}
