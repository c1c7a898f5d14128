//! `AccessPolicy`: who may call a route and how often. Authentication (JWT, API keys, basic
//! auth), authorization rules, rate limits and CORS, declared once and named by routes: a
//! `microgate.dev` Gateway's `routes[].accessPolicy` (or `defaults.accessPolicy` for all of its
//! routes), or an HTTPRoute rule's `ExtensionRef` filter (`group: microgate.dev, kind:
//! AccessPolicy`). A policy applies to routes of its own namespace.
//!
//! The phases run in this order for every request a route takes: a CORS preflight is answered;
//! then authentication (401), authorization (403), rate limits (429); then the request goes on.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{
    duration::Duration,
    gateway::{HEADER_NAME, HttpMethod, PathMatch},
};

/// A DNS label: what names a provider or a rate limit.
const DNS_LABEL: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// A Kubernetes object's name (a DNS subdomain).
const OBJECT_NAME: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

// Each printcolumn(...) repeats the same keys, which clippy mistakes for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "microgate.dev",
    version = "v1alpha1",
    kind = "AccessPolicy",
    cel,
    plural = "accesspolicies",
    namespaced,
    status = "AccessPolicyStatus",
    shortname = "apol",
    category = "microgate",
    doc = "An AccessPolicy says who may call the routes that name it and how often: authentication (JWT, API keys, basic auth), authorization rules, rate limits and CORS. Gateway routes name it in `accessPolicy` (or `defaults.accessPolicy`); HTTPRoute rules in an `ExtensionRef` filter.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.authentication) || has(self.authorization) || (has(self.rateLimits) && size(self.rateLimits) > 0) || has(self.cors)")
    .message("an AccessPolicy declares at least one of authentication, authorization, rateLimits and cors"))]
#[x_kube(validation = Rule::new("!has(self.rateLimits) || self.rateLimits.all(l, !has(l.key) || !has(l.key.claim) || (has(self.authentication) && has(self.authentication.jwt) && size(self.authentication.jwt) > 0))")
    .message("a rate limit keyed by a claim needs authentication.jwt")
    .field_path(".rateLimits"))]
#[x_kube(validation = Rule::new("!has(self.authorization) || !has(self.authorization.rules) || self.authorization.rules.all(r, !has(r.claims) || size(r.claims) == 0 || (has(self.authentication) && has(self.authentication.jwt) && size(self.authentication.jwt) > 0))")
    .message("an authorization rule on claims needs authentication.jwt")
    .field_path(".authorization.rules"))]
pub struct AccessPolicySpec {
    /// Who the caller is. A request must prove it with one of the methods here, or is answered
    /// 401 with a `WWW-Authenticate` challenge for each.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication: Option<Authentication>,
    /// What the caller may do: rules tried in order, the first that matches decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization: Option<Authorization>,
    /// How often a caller may call: every limit must have a token for the request, or it is
    /// answered 429 with `Retry-After` and the IETF `RateLimit` headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub rate_limits: Vec<RateLimit>,
    /// Cross-origin resource sharing: preflights answered by the gateway, answers to allowed
    /// origins marked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<CorsPolicy>,
}

/// The ways a caller may prove who it is; a request uses one.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.jwt) && size(self.jwt) > 0) || has(self.apiKeys) || has(self.basicAuth)")
    .message("authentication names at least one of jwt, apiKeys and basicAuth"))]
pub struct Authentication {
    /// JSON Web Token issuers whose tokens are accepted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub jwt: Vec<JwtProvider>,
    /// Keys held in a Secret, sent in a header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_keys: Option<ApiKeys>,
    /// User names and bcrypt password hashes from an htpasswd file in a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_auth: Option<BasicAuth>,
}

/// An issuer of JSON Web Tokens and how its tokens are checked.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct JwtProvider {
    /// The provider's name, unique in the policy (a DNS label).
    #[schemars(length(min = 1, max = 63), pattern(DNS_LABEL))]
    pub name: String,
    /// The `iss` a token must carry, exactly.
    #[schemars(length(min = 1, max = 1024))]
    pub issuer: String,
    /// A token's `aud` must name one of these. Empty: the audience is not checked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 1024)))]
    pub audiences: Vec<String>,
    /// The signature algorithms accepted. `none` and the HMAC algorithms are never accepted:
    /// a public key must never serve as a shared secret.
    #[serde(default = "default_algorithms")]
    #[schemars(length(min = 1, max = 7))]
    #[x_kube(validation = Rule::new("self.all(a, self.exists_one(b, a == b))").message("algorithms must not repeat"))]
    pub algorithms: Vec<JwtAlgorithm>,
    /// How far `exp` and `nbf` may be off, for clocks that differ.
    #[serde(default = "default_clock_skew")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('0s') && duration(self) <= duration('5m')").message("clockSkew must be between 0s and 5m"))]
    pub clock_skew: Duration,
    /// Where the token is. Unset: `Authorization: Bearer <token>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_from: Option<TokenFrom>,
    /// The provider's public keys.
    pub jwks: JwksSource,
    /// Claims copied into request headers for the service; the client's own copies of these
    /// headers are removed first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub claims_to_headers: Vec<ClaimToHeader>,
}

fn default_algorithms() -> Vec<JwtAlgorithm> {
    vec![JwtAlgorithm::RS256, JwtAlgorithm::ES256, JwtAlgorithm::EdDSA]
}

fn default_clock_skew() -> Duration {
    Duration::from_secs(30)
}

/// An asymmetric signature algorithm (RFC 7518, RFC 8037).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum JwtAlgorithm {
    RS256,
    RS384,
    RS512,
    PS256,
    ES256,
    ES384,
    EdDSA,
}

/// Where a request carries its token: a header (the whole value, or after `Bearer `), or a
/// cookie.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.header) != has(self.cookie)")
    .message("tokenFrom names exactly one of header and cookie"))]
pub struct TokenFrom {
    /// A request header; a `Bearer ` prefix is taken off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256), pattern(HEADER_NAME))]
    pub header: Option<String>,
    /// A cookie.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub cookie: Option<String>,
}

/// Where a provider's JSON Web Key Set is: in a Secret or ConfigMap of the policy's namespace
/// (reloaded when it changes), or at a URL (fetched in the background; the last good set keeps
/// serving while the URL is down).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.secretRef), has(self.configMapRef), has(self.remote)].filter(x, x).size() == 1")
    .message("jwks names exactly one of secretRef, configMapRef and remote"))]
pub struct JwksSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<KeyRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_ref: Option<KeyRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<RemoteJwks>,
}

/// One key of a Secret's or ConfigMap's data, in the policy's namespace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyRef {
    #[schemars(length(min = 1, max = 253), pattern(OBJECT_NAME))]
    pub name: String,
    /// The data key holding the JSON Web Key Set.
    #[serde(default = "default_jwks_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_jwks_key() -> String {
    "jwks.json".to_owned()
}

/// A JSON Web Key Set served at a URL.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("duration(self.minRefetchInterval) <= duration(self.refreshInterval)")
    .message("minRefetchInterval must not exceed refreshInterval")
    .field_path(".minRefetchInterval"))]
pub struct RemoteJwks {
    /// `https://` (or `http://`, for a key server inside the cluster).
    #[schemars(length(min = 1, max = 2048), pattern("^https?://[^/?#]+(/[^#]*)?$"))]
    pub url: String,
    /// How often the set is fetched again.
    #[serde(default = "default_refresh_interval")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s')").message("refreshInterval must be at least 1s"))]
    pub refresh_interval: Duration,
    /// A token whose `kid` is not in the set makes the gateway fetch the set again, at most this
    /// often (a flood of made-up `kid`s must not become a flood of fetches).
    #[serde(default = "default_min_refetch_interval")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s')").message("minRefetchInterval must be at least 1s"))]
    pub min_refetch_interval: Duration,
}

fn default_refresh_interval() -> Duration {
    Duration::from_secs(300)
}

fn default_min_refetch_interval() -> Duration {
    Duration::from_secs(10)
}

/// A claim copied into a request header.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClaimToHeader {
    /// The claim's name; a dotted path reaches into objects (`realm_access.roles`).
    #[schemars(length(min = 1, max = 256))]
    pub claim: String,
    #[schemars(length(min = 1, max = 256), pattern(HEADER_NAME))]
    pub header: String,
}

/// API keys: each data entry of the Secret is one client's key, named by its data key (the
/// name goes to the service in `x-microgate-client`, and into rate-limit keys; the key itself
/// never leaves the gateway). Editing the Secret rotates keys without a restart.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeys {
    /// The Secret, in the policy's namespace.
    pub secret_ref: ObjectRef,
    /// The request header that carries the key.
    #[serde(default = "default_api_key_header")]
    #[schemars(length(min = 1, max = 256), pattern(HEADER_NAME))]
    pub header: String,
}

fn default_api_key_header() -> String {
    "x-api-key".to_owned()
}

/// Basic authentication against an htpasswd file (bcrypt hashes only: `$2y$`, `$2b$`, `$2a$`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct BasicAuth {
    /// The Secret, in the policy's namespace, holding the htpasswd file.
    pub secret_ref: ObjectRef,
    /// The data key of the htpasswd file.
    #[serde(default = "default_htpasswd_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
    /// The realm named in the `WWW-Authenticate` challenge.
    #[serde(default = "default_realm")]
    #[schemars(length(min = 1, max = 128), pattern("^[^\"\\\\]+$"))]
    pub realm: String,
}

fn default_htpasswd_key() -> String {
    ".htpasswd".to_owned()
}

fn default_realm() -> String {
    "microgate".to_owned()
}

/// An object of the policy's namespace, by name.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
pub struct ObjectRef {
    #[schemars(length(min = 1, max = 253), pattern(OBJECT_NAME))]
    pub name: String,
}

/// Rules tried in order; the first whose conditions all hold decides. No rule matching:
/// `defaultAction`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Authorization {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub rules: Vec<AuthorizationRule>,
    /// What happens to a request no rule matches.
    #[serde(default)]
    pub default_action: AuthorizationAction,
}

/// Allow or deny (403).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum AuthorizationAction {
    Allow,
    #[default]
    Deny,
}

/// A rule: its conditions all hold (an unset condition always holds), then its action applies.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationRule {
    /// For the access log and metrics: the rule that decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), pattern(DNS_LABEL))]
    pub name: Option<String>,
    pub action: AuthorizationAction,
    /// The client's IP (as the listener's `clientIPDetection` trusts it) is in one of these.
    #[serde(default, rename = "clientCIDRs", skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 64)))]
    #[x_kube(validation = Rule::new("self.all(c, isCIDR(c))")
        .message("every entry of clientCIDRs must be a CIDR such as 10.0.0.0/8 or 2001:db8::/32"))]
    pub client_cidrs: Vec<String>,
    /// The request's method is one of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 9))]
    pub methods: Vec<HttpMethod>,
    /// The request's path matches one of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub paths: Vec<PathMatch>,
    /// Each of these claims of the caller's token holds one of its values (a claim that is a
    /// list, or a space-separated `scope`, holds each of its items).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub claims: Vec<ClaimMatch>,
}

/// A claim and the values that satisfy it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClaimMatch {
    #[schemars(length(min = 1, max = 256))]
    pub name: String,
    #[schemars(length(min = 1, max = 16), inner(length(min = 1, max = 1024)))]
    pub values: Vec<String>,
}

/// A token bucket: `requests` per `per`, holding up to `burst`, one bucket per key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.burst) || self.burst >= 1")
    .message("burst must be at least 1")
    .field_path(".burst"))]
pub struct RateLimit {
    /// The limit's name, unique in the policy (a DNS label); it names the limit in the
    /// `RateLimit-Policy` header.
    #[schemars(length(min = 1, max = 63), pattern(DNS_LABEL))]
    pub name: String,
    #[schemars(range(min = 1, max = 1_000_000_000))]
    pub requests: i64,
    #[x_kube(validation = Rule::new("duration(self) >= duration('1ms') && duration(self) <= duration('24h')").message("per must be between 1ms and 24h"))]
    pub per: Duration,
    /// Requests a quiet key may send at once. Unset: `requests`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1_000_000_000))]
    pub burst: Option<i64>,
    /// What a bucket belongs to. Unset: the client's IP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<RateLimitKey>,
    /// `Local`: each gateway replica counts on its own. `Global`: all replicas share the
    /// buckets, kept in Redis (the gateway's `--redis-url`).
    #[serde(default)]
    pub scope: RateLimitScope,
    /// For a `Global` limit, what happens while Redis cannot be reached: `Allow` (the limit is
    /// off) or `Deny` (every request is answered 429).
    #[serde(default)]
    pub when_unreachable: WhenUnreachable,
}

/// What a request's bucket is keyed by: exactly one of these.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.clientIP) && self.clientIP, has(self.header), has(self.claim)].filter(x, x).size() == 1")
    .message("key names exactly one of clientIP: true, header and claim"))]
pub struct RateLimitKey {
    /// The client's IP, as the listener's `clientIPDetection` trusts it.
    #[serde(default, rename = "clientIP", skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<bool>,
    /// A request header's value (a request without it shares one bucket with the others
    /// without it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256), pattern(HEADER_NAME))]
    pub header: Option<String>,
    /// A claim of the caller's token (`sub`, for one bucket per user); a caller without it
    /// is keyed by its client IP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub claim: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RateLimitScope {
    #[default]
    Local,
    Global,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum WhenUnreachable {
    #[default]
    Allow,
    Deny,
}

/// Cross-origin resource sharing, in the Gateway API CORS filter's terms.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.allowCredentials) && self.allowCredentials) || !self.allowOrigins.exists(o, o == '*')")
    .message("allowOrigins must not be '*' when allowCredentials is true")
    .field_path(".allowOrigins"))]
pub struct CorsPolicy {
    /// `scheme://host[:port]`, the host maybe `*.` and a suffix (any number of labels); or `*`
    /// alone: any origin.
    #[schemars(
        length(min = 1, max = 64),
        inner(
            length(min = 1, max = 253),
            pattern(r"^(\*|https?://(\*\.)?[A-Za-z0-9.-]+(:[0-9]{1,5})?)$")
        )
    )]
    pub allow_origins: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_credentials: Option<bool>,
    /// Methods a preflight allows; `*`: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 32), pattern("^([A-Z]+|\\*)$")))]
    pub allow_methods: Vec<String>,
    /// Request headers a preflight allows; `*`: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 64),
        inner(length(min = 1, max = 256), pattern("^([A-Za-z0-9-]+|\\*)$"))
    )]
    pub allow_headers: Vec<String>,
    /// Response headers the page's script may read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 64),
        inner(length(min = 1, max = 256), pattern("^([A-Za-z0-9-]+|\\*)$"))
    )]
    pub expose_headers: Vec<String>,
    /// Seconds a preflight's answer may be cached.
    #[serde(default = "default_max_age")]
    #[schemars(range(min = 1, max = 86400))]
    pub max_age: i32,
}

fn default_max_age() -> i32 {
    5
}

/// What the gateway makes of a policy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccessPolicyStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`: every reference resolves (Secrets, ConfigMaps, key sets fetched, Redis when a
    /// limit is `Global`) and routes naming the policy enforce it. When not, routes naming it
    /// answer 500 to every request (they fail closed) and the message says why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// Routes that name the policy, as `gateway/route` (microgate.dev) or `httproute/rule index`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<String>,
}
