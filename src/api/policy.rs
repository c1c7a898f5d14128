//! Policy types shared by the two kinds: how the gateway balances over a Microservice's
//! endpoints and judges their health (`Microservice.spec.trafficPolicy`), and how it retries and
//! times out a route's requests (`Gateway.spec.routes[].retry`, `Gateway.spec.defaults`).
//!
//! Every default lives in the schema, so the API server fills it in and `kubectl get -o yaml`
//! shows the policy in force.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::duration::Duration;

/// How the gateway treats this service's endpoints.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrafficPolicy {
    /// How a request picks one of the service's ready endpoints.
    #[serde(default)]
    pub load_balancer: LoadBalancer,
    /// When an endpoint is taken out of rotation for failing.
    #[serde(default)]
    pub outlier_detection: OutlierDetection,
    /// Limits that shed load before it piles up on the service.
    #[serde(default)]
    pub circuit_breaker: CircuitBreaker,
}

/// The load-balancing algorithm.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum LoadBalancerPolicy {
    /// Each endpoint in turn.
    #[default]
    RoundRobin,
    /// A uniformly random endpoint.
    Random,
    /// The better of two random endpoints by requests in flight (power of two choices).
    LeastRequest,
    /// The better of two random endpoints by a decaying peak of observed latency times load.
    PeakEwma,
    /// The same key always reaches the same endpoint while the set is stable (see `consistentHash`).
    ConsistentHash,
}

/// Load balancing: the policy and, for `ConsistentHash`, the key to hash.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.policy == 'ConsistentHash' ? has(self.consistentHash) : !has(self.consistentHash)")
    .message("consistentHash is required when policy is ConsistentHash, and allowed only then")
    .field_path(".consistentHash")
    .reason(Reason::FieldValueRequired))]
pub struct LoadBalancer {
    /// One of RoundRobin, Random, LeastRequest, PeakEwma, ConsistentHash.
    #[serde(default)]
    pub policy: LoadBalancerPolicy,
    /// What a `ConsistentHash` policy hashes: exactly one of header, cookie, sourceIp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistent_hash: Option<ConsistentHash>,
}

/// The request attribute whose value picks the endpoint.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.header), has(self.cookie), has(self.sourceIp) && self.sourceIp].filter(x, x).size() == 1")
    .message("consistentHash must name exactly one key: header, cookie, or sourceIp: true"))]
pub struct ConsistentHash {
    /// Hash the value of this request header (e.g. `x-user-id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256), pattern(super::gateway::HEADER_NAME))]
    pub header: Option<String>,
    /// Hash the value of this cookie.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub cookie: Option<String>,
    /// Hash the client's IP address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<bool>,
}

/// Ejection of endpoints that keep failing (passive health checking).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutlierDetection {
    /// Consecutive failures (5xx, resets, connect failures) that eject an endpoint; 0 disables ejection.
    #[serde(default = "default_consecutive_failures")]
    #[schemars(range(min = 0, max = 1000))]
    pub consecutive_failures: i32,
    /// How long a first ejection lasts; each repeat ejection lasts this times the number of ejections.
    #[serde(default = "default_base_ejection_time")]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s')").message("baseEjectionTime must be positive"))]
    pub base_ejection_time: Duration,
    /// At most this share of the service's endpoints is ejected at once, in percent.
    #[serde(default = "default_max_ejection_percent")]
    #[schemars(range(min = 0, max = 100))]
    pub max_ejection_percent: i32,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        Self {
            consecutive_failures: default_consecutive_failures(),
            base_ejection_time: default_base_ejection_time(),
            max_ejection_percent: default_max_ejection_percent(),
        }
    }
}

fn default_consecutive_failures() -> i32 {
    5
}
fn default_base_ejection_time() -> Duration {
    Duration::from_secs(30)
}
fn default_max_ejection_percent() -> i32 {
    50
}

/// Limits on what the gateway sends to the service at once.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CircuitBreaker {
    /// Open connections to all of the service's endpoints together.
    #[serde(default = "default_limit")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub max_connections: i32,
    /// Requests waiting for a connection; beyond this the gateway answers 503 at once.
    #[serde(default = "default_limit")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub max_pending_requests: i32,
    /// Requests in flight to the service.
    #[serde(default = "default_limit")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub max_requests: i32,
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        Self {
            max_connections: default_limit(),
            max_pending_requests: default_limit(),
            max_requests: default_limit(),
        }
    }
}

fn default_limit() -> i32 {
    1024
}

/// The most retries a route may ask for.
pub const MAX_RETRY_ATTEMPTS: i32 = 10;

/// When and how often a failed request is tried again.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.retryOn) || !self.retryOn.exists(c, c == 'retriable-status-codes') || (has(self.retriableStatusCodes) && size(self.retriableStatusCodes) > 0)")
    .message("retriableStatusCodes must list at least one code when retryOn has retriable-status-codes")
    .field_path(".retriableStatusCodes")
    .reason(Reason::FieldValueRequired))]
pub struct RetryPolicy {
    /// Retries after the first attempt (0 turns retrying off), at most 10.
    #[serde(default = "default_attempts")]
    #[schemars(range(min = 0, max = 10))]
    pub attempts: i32,
    /// Deadline of each attempt; the route's `timeout` still bounds them all together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s')").message("perTryTimeout must be positive"))]
    pub per_try_timeout: Option<Duration>,
    /// Which failures are retried: connect-failure, reset, 5xx, gateway-error (502, 503, 504),
    /// retriable-status-codes (the codes in retriableStatusCodes), per-try-timeout.
    #[serde(default = "default_retry_on")]
    #[schemars(length(max = 6))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub retry_on: Vec<RetryOn>,
    /// HTTP status codes retried when retryOn has retriable-status-codes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(range(min = 100, max = 599)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub retriable_status_codes: Vec<i32>,
    /// Wait between attempts: a random time up to base × 2^retry, capped at max (full jitter).
    #[serde(default)]
    pub backoff: Backoff,
    /// Retries may add at most this much to the traffic, so retries cannot multiply an outage.
    #[serde(default)]
    pub budget: RetryBudget,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: default_attempts(),
            per_try_timeout: None,
            retry_on: default_retry_on(),
            retriable_status_codes: Vec::new(),
            backoff: Backoff::default(),
            budget: RetryBudget::default(),
        }
    }
}

fn default_attempts() -> i32 {
    2
}
fn default_retry_on() -> Vec<RetryOn> {
    vec![RetryOn::ConnectFailure, RetryOn::Reset, RetryOn::GatewayError]
}

/// A class of failure that may be retried (Envoy's names, where Envoy has one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum RetryOn {
    /// The connection to the endpoint could not be made (never reached the service: always safe).
    #[serde(rename = "connect-failure")]
    ConnectFailure,
    /// The connection was reset or closed before a response arrived.
    #[serde(rename = "reset")]
    Reset,
    /// Any 5xx response.
    #[serde(rename = "5xx")]
    ServerError,
    /// 502, 503 or 504.
    #[serde(rename = "gateway-error")]
    GatewayError,
    /// A code listed in retriableStatusCodes.
    #[serde(rename = "retriable-status-codes")]
    RetriableStatusCodes,
    /// The attempt's perTryTimeout passed without a response (5xx and gateway-error retry it
    /// too, as the 504 it would be answered with; this retries it without retrying answers).
    #[serde(rename = "per-try-timeout")]
    PerTryTimeout,
}

/// Exponential backoff with full jitter between attempts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("duration(self.base) <= duration(self.max)")
    .message("backoff.base must not exceed backoff.max")
    .field_path(".base"))]
pub struct Backoff {
    /// The first retry waits up to this long.
    #[serde(default = "default_backoff_base")]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s')").message("backoff.base must be positive"))]
    pub base: Duration,
    /// No wait is longer than this.
    #[serde(default = "default_backoff_max")]
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: default_backoff_base(),
            max: default_backoff_max(),
        }
    }
}

fn default_backoff_base() -> Duration {
    Duration::from_millis(25)
}
fn default_backoff_max() -> Duration {
    Duration::from_millis(250)
}

/// The share of traffic retries may add, with a floor for quiet routes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryBudget {
    /// Retries per second may be at most this percentage of requests per second.
    #[serde(default = "default_budget_percent")]
    #[schemars(range(min = 0, max = 100))]
    pub percent: i32,
    /// Retries per second always allowed, whatever the traffic.
    #[serde(default = "default_budget_min_per_second")]
    #[schemars(range(min = 0, max = 100_000))]
    pub min_per_second: i32,
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self {
            percent: default_budget_percent(),
            min_per_second: default_budget_min_per_second(),
        }
    }
}

fn default_budget_percent() -> i32 {
    20
}
fn default_budget_min_per_second() -> i32 {
    10
}
