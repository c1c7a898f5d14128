//! `Microservice`: one service of an application, how to run it and how the gateway treats it.
//!
//! The controller turns it into a Deployment and a Service of the same name, and reports back
//! replicas, endpoints and conditions in its status.

use k8s_openapi::{
    api::core::v1::{EnvVar, ResourceRequirements},
    apimachinery::pkg::apis::meta::v1::Condition,
};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::policy::TrafficPolicy;

/// One service of an application: the image to run, how many instances, the HTTP port they
/// serve, and how the gateway balances over them and judges their health.
// Each printcolumn(...) repeats the same keys, which clippy mistakes for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "microgate.dev",
    version = "v1alpha1",
    kind = "Microservice",
    cel,
    plural = "microservices",
    namespaced,
    status = "MicroserviceStatus",
    shortname = "msvc",
    category = "microgate",
    doc = "A Microservice is one service of an application: microgate runs it as a Deployment and a Service of the same name, discovers its ready endpoints, and balances gateway traffic over them.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.ready",
        description = "Ready replicas of desired replicas"
    ),
    printcolumn(
        name = "Endpoints",
        type_ = "integer",
        json_path = ".status.readyEndpoints",
        description = "Ready endpoints the gateway balances over"
    ),
    printcolumn(name = "Image", type_ = "string", json_path = ".spec.image"),
    printcolumn(
        name = "Policy",
        type_ = "string",
        json_path = ".spec.trafficPolicy.loadBalancer.policy",
        description = "Load-balancing policy"
    ),
    printcolumn(name = "Port", type_ = "integer", json_path = ".spec.port", priority = 1),
    printcolumn(
        name = "Protocol",
        type_ = "string",
        json_path = ".spec.protocol",
        priority = 1
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        priority = 1
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct MicroserviceSpec {
    /// The container image each instance runs, e.g. `registry.example/orders:1.4.2`.
    #[schemars(length(min = 1, max = 512))]
    #[x_kube(validation = Rule::new("!self.contains(' ')").message("image must not contain spaces"))]
    pub image: String,
    /// How many instances run.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 10_000))]
    pub replicas: i32,
    /// The TCP port on which each instance serves HTTP.
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65_535))]
    pub port: i32,
    /// The protocol the instances speak on `port`: HTTP (HTTP/1.1), HTTP2 (cleartext h2), or GRPC.
    #[serde(default)]
    pub protocol: Protocol,
    /// Environment variables of the container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub env: Vec<EnvVar>,
    /// CPU and memory requests and limits of the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// The readiness check: an instance receives traffic only while it passes. Without one, an
    /// instance is ready as soon as it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// How the gateway balances over this service's endpoints, ejects failing ones, and limits load.
    #[serde(default)]
    pub traffic_policy: TrafficPolicy,
    /// How an instance stops (scale-down, rollout, eviction) without failing a request: it keeps
    /// serving while gateways stop sending to it, then gets SIGTERM and time to finish.
    #[serde(default)]
    pub termination: Termination,
}

fn default_replicas() -> i32 {
    1
}
fn default_port() -> i32 {
    8080
}

/// The protocol a Microservice's instances speak.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum Protocol {
    /// HTTP/1.1.
    #[default]
    #[serde(rename = "HTTP")]
    Http,
    /// HTTP/2 without TLS (h2c, prior knowledge).
    #[serde(rename = "HTTP2")]
    Http2,
    /// gRPC (HTTP/2).
    #[serde(rename = "GRPC")]
    Grpc,
}

/// An HTTP readiness check, run by the kubelet on each instance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    /// The path requested on `port`; any 2xx or 3xx answer passes.
    #[serde(default = "default_health_path")]
    #[schemars(length(min = 1, max = 1024))]
    #[x_kube(validation = Rule::new("self.startsWith('/')").message("healthCheck.path must start with '/'"))]
    pub path: String,
    /// Seconds between checks.
    #[serde(default = "default_period_seconds")]
    #[schemars(range(min = 1, max = 3600))]
    pub period_seconds: i32,
    /// Seconds a check may take.
    #[serde(default = "default_timeout_seconds")]
    #[schemars(range(min = 1, max = 3600))]
    pub timeout_seconds: i32,
    /// Consecutive failed checks that mark an instance unready.
    #[serde(default = "default_failure_threshold")]
    #[schemars(range(min = 1, max = 100))]
    pub failure_threshold: i32,
}

fn default_health_path() -> String {
    "/healthz".to_owned()
}
fn default_period_seconds() -> i32 {
    5
}
fn default_timeout_seconds() -> i32 {
    1
}
fn default_failure_threshold() -> i32 {
    3
}

/// How an instance stops. A terminating instance leaves the gateway's rotation at once, but every
/// gateway learns of it through a watch: for `drainDelaySeconds` it keeps serving (a `preStop`
/// sleep), so that requests sent in the meantime still find it; then it gets SIGTERM and the rest
/// of `gracePeriodSeconds` to finish the requests in flight before it is killed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.gracePeriodSeconds > self.drainDelaySeconds")
    .message("termination.gracePeriodSeconds must be greater than drainDelaySeconds: the instance needs time to stop after the drain")
    .field_path(".gracePeriodSeconds"))]
pub struct Termination {
    /// Seconds a terminating instance keeps serving before it is told to stop, longer than its
    /// removal takes to reach every gateway. 0: it is told at once (requests sent to it in that
    /// moment fail, or are retried).
    #[serde(default = "default_drain_delay_seconds")]
    #[schemars(range(min = 0, max = 300))]
    pub drain_delay_seconds: i32,
    /// Seconds from the start of termination until the instance is killed (the Pod's
    /// `terminationGracePeriodSeconds`): the drain delay, then SIGTERM and the time to finish.
    #[serde(default = "default_grace_period_seconds")]
    #[schemars(range(min = 1, max = 3600))]
    pub grace_period_seconds: i32,
}

impl Default for Termination {
    fn default() -> Self {
        Self {
            drain_delay_seconds: default_drain_delay_seconds(),
            grace_period_seconds: default_grace_period_seconds(),
        }
    }
}

/// Endpoint removal reaches a gateway in tens of milliseconds; a busy API server's watches can
/// lag by seconds, hence the margin.
fn default_drain_delay_seconds() -> i32 {
    5
}
/// Kubernetes' own default.
fn default_grace_period_seconds() -> i32 {
    30
}

/// What microgate last observed of a Microservice.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct MicroserviceStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Instances that exist (ready or not).
    #[serde(default)]
    pub replicas: i32,
    /// Instances that pass their readiness check.
    #[serde(default)]
    pub ready_replicas: i32,
    /// `readyReplicas/desired`, as `kubectl get` shows it.
    #[serde(default)]
    pub ready: String,
    /// Endpoints the gateway balances over now.
    #[serde(default)]
    pub ready_endpoints: i32,
    /// Every known endpoint, ready or not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<EndpointStatus>,
    /// The label selector of the instances (for the scale subresource and autoscalers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Ready, Progressing and Degraded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

/// One instance's address as the gateway sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointStatus {
    /// The Pod's name.
    pub pod: String,
    /// The Pod's IP.
    pub ip: String,
    /// The port the gateway connects to.
    pub port: i32,
    /// Whether the Pod passes its readiness check.
    pub ready: bool,
}
