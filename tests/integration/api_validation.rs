//! The API server itself refuses invalid Microservices and Gateways, and says which field is
//! wrong: every rule lives in the CRD schema (OpenAPI ranges, patterns, enums, required fields,
//! list-map keys, and CEL `x-kubernetes-validations`), so `kubectl apply` fails at admission
//! instead of the controller discovering the problem later. Valid objects come back with the
//! schema's defaults filled in.
//!
//! The objects are sent as raw JSON through `DynamicObject`: most invalid ones (an unknown enum
//! value, a malformed duration, a missing field) cannot even be built as the Rust types. Rows
//! whose rule is a CEL rule are also checked offline with the types' client-side
//! `validate_cel()`.

use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, PostParams},
};
use microgate::api::{AccessPolicy, Gateway, Microservice};
use microgate_test_support::with_namespace;
use serde_json::{Map, Value, json};

const API_VERSION: &str = "microgate.dev/v1alpha1";
const IMAGE: &str = "registry.example/orders:1.4.2";

/// Which of the two kinds an object is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Microservice,
    Gateway,
    AccessPolicy,
}

impl Kind {
    fn of(object: &Value) -> Self {
        match object["kind"].as_str() {
            Some("Microservice") => Self::Microservice,
            Some("Gateway") => Self::Gateway,
            Some("AccessPolicy") => Self::AccessPolicy,
            other => panic!("not a microgate object: kind {other:?}"),
        }
    }

    fn resource(self) -> ApiResource {
        match self {
            Self::Microservice => ApiResource::erase::<Microservice>(&()),
            Self::Gateway => ApiResource::erase::<Gateway>(&()),
            Self::AccessPolicy => ApiResource::erase::<AccessPolicy>(&()),
        }
    }

    /// Client-side CEL validation of `object`: `Err` when it does not deserialize into the Rust
    /// type at all, otherwise what `validate_cel()` says.
    fn validate_cel_offline(self, object: &Value) -> Result<Result<(), String>, String> {
        let verdict = match self {
            Self::Microservice => serde_json::from_value::<Microservice>(object.clone())
                .map_err(|e| format!("does not deserialize into Microservice: {e}"))?
                .validate_cel(),
            Self::Gateway => serde_json::from_value::<Gateway>(object.clone())
                .map_err(|e| format!("does not deserialize into Gateway: {e}"))?
                .validate_cel(),
            Self::AccessPolicy => serde_json::from_value::<AccessPolicy>(object.clone())
                .map_err(|e| format!("does not deserialize into AccessPolicy: {e}"))?
                .validate_cel(),
        };
        Ok(verdict.map_err(|errors| errors.to_string()))
    }
}

/// RFC 7386 JSON merge patch: objects merge key by key, `null` removes a key, anything else
/// (arrays included) replaces.
fn merge(base: &mut Value, patch: Value) {
    let Value::Object(patch) = patch else {
        *base = patch;
        return;
    };
    if !base.is_object() {
        *base = Value::Object(Map::new());
    }
    let base = base.as_object_mut().expect("made an object above");
    for (key, value) in patch {
        if value.is_null() {
            base.remove(&key);
        } else {
            merge(base.entry(key).or_insert(Value::Null), value);
        }
    }
}

/// A valid Microservice (`spec: {image}`), with `spec` merged over it; no name yet.
fn microservice(spec: Value) -> Value {
    let mut object = json!({
        "apiVersion": API_VERSION,
        "kind": "Microservice",
        "metadata": {},
        "spec": {"image": IMAGE},
    });
    merge(&mut object["spec"], spec);
    object
}

/// A valid Microservice whose `trafficPolicy.loadBalancer` is `load_balancer`.
fn microservice_balanced(load_balancer: Value) -> Value {
    microservice(json!({"trafficPolicy": {"loadBalancer": load_balancer}}))
}

/// A valid route (`orders`, one backend), with `overrides` merged over it.
fn route(overrides: Value) -> Value {
    let mut route = json!({"name": "orders", "backends": [{"microservice": "orders"}]});
    merge(&mut route, overrides);
    route
}

/// A valid Gateway (listener `web` on 8080, route `orders`), with `spec` merged over it; no name yet.
fn gateway(spec: Value) -> Value {
    let mut object = json!({
        "apiVersion": API_VERSION,
        "kind": "Gateway",
        "metadata": {},
        "spec": {
            "listeners": [{"name": "web", "port": 8080}],
            "routes": [route(json!({}))],
        },
    });
    merge(&mut object["spec"], spec);
    object
}

/// An HTTPS listener serving the certificate of Secret `cert`.
fn https_listener(name: &str, port: u16, hostnames: &[&str]) -> Value {
    json!({"name": name, "port": port, "protocol": "HTTPS", "hostnames": hostnames,
        "tls": {"certificateRefs": [{"name": "cert"}]}})
}

/// A valid Gateway whose one route has `overrides` merged over it.
fn gateway_with_route(overrides: Value) -> Value {
    gateway(json!({"routes": [route(overrides)]}))
}

/// A valid Gateway whose one route has this `retry` policy.
fn gateway_with_retry(retry: Value) -> Value {
    gateway_with_route(json!({"retry": retry}))
}

/// A valid AccessPolicy (`spec: {authentication: apiKeys}`), with `spec` merged over it.
fn access_policy(spec: Value) -> Value {
    let mut object = json!({
        "apiVersion": API_VERSION,
        "kind": "AccessPolicy",
        "metadata": {},
        "spec": {"authentication": {"apiKeys": {"secretRef": {"name": "keys"}}}},
    });
    merge(&mut object["spec"], spec);
    object
}

/// A valid JWT provider named `name`, with `overrides` merged over it.
fn jwt_provider(overrides: Value) -> Value {
    let mut provider = json!({"name": "idp", "issuer": "https://idp.example",
        "jwks": {"remote": {"url": "https://idp.example/jwks.json"}}});
    merge(&mut provider, overrides);
    provider
}

/// One object the API server must refuse.
struct Invalid {
    what: &'static str,
    object: Value,
    /// The field path the error must report, e.g. `spec.routes[0].retry.perTryTimeout`.
    field: &'static str,
    /// A substring of the error message, e.g. the rule's message.
    message: Option<&'static str>,
    /// The rule is a CEL rule, so the client-side `validate_cel()` must refuse it too.
    cel: bool,
}

/// A row rejected by an OpenAPI check (range, pattern, enum, required, list-map key).
fn openapi(what: &'static str, object: Value, field: &'static str, message: &'static str) -> Invalid {
    Invalid {
        what,
        object,
        field,
        message: Some(message),
        cel: false,
    }
}

/// A row rejected by a CEL rule (`x-kubernetes-validations`).
fn cel(what: &'static str, object: Value, field: &'static str, message: &'static str) -> Invalid {
    Invalid {
        what,
        object,
        field,
        message: Some(message),
        cel: true,
    }
}

fn invalid_objects() -> Vec<Invalid> {
    vec![
        // Microservice
        openapi(
            "replicas below zero",
            microservice(json!({"replicas": -1})),
            "spec.replicas",
            "greater than or equal to 0",
        ),
        openapi(
            "port 0",
            microservice(json!({"port": 0})),
            "spec.port",
            "greater than or equal to 1",
        ),
        openapi(
            "port 70000",
            microservice(json!({"port": 70000})),
            "spec.port",
            "less than or equal to 65535",
        ),
        openapi(
            "unknown protocol",
            microservice(json!({"protocol": "HTTP3"})),
            "spec.protocol",
            "Unsupported value",
        ),
        openapi(
            "empty image",
            microservice(json!({"image": ""})),
            "spec.image",
            "at least 1 chars long",
        ),
        cel(
            "image with a space",
            microservice(json!({"image": "registry.example/orders 1.4.2"})),
            "spec.image",
            "image must not contain spaces",
        ),
        openapi(
            "no image",
            microservice(json!({"image": null})),
            "spec.image",
            "Required value",
        ),
        openapi(
            "name that is not a DNS label for a Service",
            {
                let mut object = microservice(json!({}));
                object["metadata"]["name"] = json!("1orders");
                object
            },
            "metadata.name",
            "should match",
        ),
        cel(
            "healthCheck.path not starting with '/'",
            microservice(json!({"healthCheck": {"path": "healthz"}})),
            "spec.healthCheck.path",
            "healthCheck.path must start with '/'",
        ),
        openapi(
            "unknown load-balancer policy",
            microservice_balanced(json!({"policy": "Fastest"})),
            "spec.trafficPolicy.loadBalancer.policy",
            "Unsupported value: \"Fastest\"",
        ),
        cel(
            "ConsistentHash policy without consistentHash",
            microservice_balanced(json!({"policy": "ConsistentHash"})),
            "spec.trafficPolicy.loadBalancer.consistentHash",
            "consistentHash is required when policy is ConsistentHash",
        ),
        cel(
            "consistentHash with policy RoundRobin",
            microservice_balanced(json!({"policy": "RoundRobin", "consistentHash": {"header": "x-user-id"}})),
            "spec.trafficPolicy.loadBalancer.consistentHash",
            "allowed only then",
        ),
        cel(
            "consistentHash naming two keys",
            microservice_balanced(json!({
                "policy": "ConsistentHash",
                "consistentHash": {"header": "x-user-id", "cookie": "session"},
            })),
            "spec.trafficPolicy.loadBalancer.consistentHash",
            "consistentHash must name exactly one key",
        ),
        cel(
            "consistentHash naming no key (sourceIp: false)",
            microservice_balanced(json!({"policy": "ConsistentHash", "consistentHash": {"sourceIp": false}})),
            "spec.trafficPolicy.loadBalancer.consistentHash",
            "consistentHash must name exactly one key",
        ),
        openapi(
            "consistentHash header with a space",
            microservice_balanced(
                json!({"policy": "ConsistentHash", "consistentHash": {"header": "x user"}}),
            ),
            "spec.trafficPolicy.loadBalancer.consistentHash.header",
            "should match",
        ),
        cel(
            "zero baseEjectionTime",
            microservice(json!({"trafficPolicy": {"outlierDetection": {"baseEjectionTime": "0s"}}})),
            "spec.trafficPolicy.outlierDetection.baseEjectionTime",
            "baseEjectionTime must be positive",
        ),
        cel(
            "termination grace period not longer than the drain delay",
            microservice(json!({"termination": {"drainDelaySeconds": 30, "gracePeriodSeconds": 30}})),
            "spec.termination.gracePeriodSeconds",
            "termination.gracePeriodSeconds must be greater than drainDelaySeconds",
        ),
        cel(
            "drain delay longer than the default grace period",
            microservice(json!({"termination": {"drainDelaySeconds": 45}})),
            "spec.termination.gracePeriodSeconds",
            "termination.gracePeriodSeconds must be greater than drainDelaySeconds",
        ),
        openapi(
            "negative drain delay",
            microservice(json!({"termination": {"drainDelaySeconds": -1}})),
            "spec.termination.drainDelaySeconds",
            "greater than or equal to 0",
        ),
        openapi(
            "circuit breaker allowing no connections",
            microservice(json!({"trafficPolicy": {"circuitBreaker": {"maxConnections": 0}}})),
            "spec.trafficPolicy.circuitBreaker.maxConnections",
            "greater than or equal to 1",
        ),
        // Gateway: listeners
        openapi(
            "Gateway without listeners",
            gateway(json!({"listeners": null})),
            "spec.listeners",
            "Required value",
        ),
        openapi(
            "Gateway with an empty listener list",
            gateway(json!({"listeners": []})),
            "spec.listeners",
            "at least 1 items",
        ),
        openapi(
            "duplicate listener names",
            gateway(json!({"listeners": [{"name": "web", "port": 8080}, {"name": "web", "port": 8081}]})),
            "spec.listeners[1]",
            "Duplicate value",
        ),
        cel(
            "duplicate listener ports",
            gateway(json!({"listeners": [{"name": "web", "port": 8080}, {"name": "admin", "port": 8080}]})),
            "spec.listeners",
            "listeners on one port must all be HTTPS",
        ),
        cel(
            "two HTTPS listeners on one port sharing a hostname",
            gateway(json!({"listeners": [
                https_listener("a", 8443, &["a.example.com", "shop.example.com"]),
                https_listener("b", 8443, &["shop.example.com"]),
            ]})),
            "spec.listeners",
            "no hostname in common",
        ),
        cel(
            "two HTTPS listeners on one port, neither with hostnames",
            gateway(json!({"listeners": [https_listener("a", 8443, &[]), https_listener("b", 8443, &[])]})),
            "spec.listeners",
            "at most one of them without hostnames",
        ),
        cel(
            "an HTTPS listener without tls",
            gateway(json!({"listeners": [{"name": "web", "port": 8443, "protocol": "HTTPS"}]})),
            "spec.listeners[0].tls",
            "tls is required when protocol is HTTPS, and only then",
        ),
        cel(
            "an HTTP listener with tls",
            gateway(
                json!({"listeners": [{"name": "web", "port": 8080, "tls": {"certificateRefs": [{"name": "cert"}]}}]}),
            ),
            "spec.listeners[0].tls",
            "tls is required when protocol is HTTPS, and only then",
        ),
        openapi(
            "an HTTPS listener with no certificateRefs",
            gateway(
                json!({"listeners": [{"name": "web", "port": 8443, "protocol": "HTTPS", "tls": {"certificateRefs": []}}]}),
            ),
            "spec.listeners[0].tls.certificateRefs",
            "at least 1 items",
        ),
        cel(
            "a certificateRef to a ConfigMap",
            gateway(
                json!({"listeners": [{"name": "web", "port": 8443, "protocol": "HTTPS",
                "tls": {"certificateRefs": [{"name": "cert", "kind": "ConfigMap"}]}}]}),
            ),
            "spec.listeners[0].tls.certificateRefs[0]",
            "only core Secrets can be referenced",
        ),
        openapi(
            "an unknown path normalization action",
            gateway(json!({"listeners": [{"name": "web", "port": 8080,
                "pathNormalization": {"escapedSlashes": "Decode"}}]})),
            "spec.listeners[0].pathNormalization.escapedSlashes",
            "Unsupported value: \"Decode\"",
        ),
        openapi(
            "TLS minVersion 1.1",
            gateway(
                json!({"listeners": [{"name": "web", "port": 8443, "protocol": "HTTPS",
                "tls": {"certificateRefs": [{"name": "cert"}], "minVersion": "1.1"}}]}),
            ),
            "spec.listeners[0].tls.minVersion",
            "Unsupported value: \"1.1\"",
        ),
        openapi(
            "listener name with uppercase",
            gateway(json!({"listeners": [{"name": "Web", "port": 8080}]})),
            "spec.listeners[0].name",
            "should match",
        ),
        openapi(
            "listener hostname with uppercase",
            gateway(json!({"listeners": [{"name": "web", "port": 8080, "hostnames": ["Shop.example.com"]}]})),
            "spec.listeners[0].hostnames[0]",
            "should match",
        ),
        openapi(
            "listener port 70000",
            gateway(json!({"listeners": [{"name": "web", "port": 70000}]})),
            "spec.listeners[0].port",
            "less than or equal to 65535",
        ),
        cel(
            "a trustedCIDRs entry that is an address, not a CIDR",
            gateway(json!({"listeners": [{"name": "web", "port": 8080,
                "clientIPDetection": {"xForwardedFor": {"trustedCIDRs": ["10.0.0.0/8", "10.0.0.1"]}}}]})),
            "spec.listeners[0].clientIPDetection.xForwardedFor.trustedCIDRs",
            "every entry of trustedCIDRs must be a CIDR",
        ),
        cel(
            "a trustedCIDRs entry that is no address at all",
            gateway(json!({"listeners": [{"name": "web", "port": 8080,
                "clientIPDetection": {"xForwardedFor": {"trustedCIDRs": ["proxies/8"]}}}]})),
            "spec.listeners[0].clientIPDetection.xForwardedFor.trustedCIDRs",
            "every entry of trustedCIDRs must be a CIDR",
        ),
        cel(
            "xForwardedFor with both numTrustedHops and trustedCIDRs",
            gateway(json!({"listeners": [{"name": "web", "port": 8080,
                "clientIPDetection": {"xForwardedFor": {"numTrustedHops": 1, "trustedCIDRs": ["10.0.0.0/8"]}}}]})),
            "spec.listeners[0].clientIPDetection.xForwardedFor",
            "xForwardedFor needs exactly one of numTrustedHops and trustedCIDRs",
        ),
        cel(
            "xForwardedFor with neither numTrustedHops nor trustedCIDRs",
            gateway(json!({"listeners": [{"name": "web", "port": 8080,
                "clientIPDetection": {"xForwardedFor": {"trustedCIDRs": []}}}]})),
            "spec.listeners[0].clientIPDetection.xForwardedFor",
            "xForwardedFor needs exactly one of numTrustedHops and trustedCIDRs",
        ),
        openapi(
            "numTrustedHops 0",
            gateway(json!({"listeners": [{"name": "web", "port": 8080,
                "clientIPDetection": {"xForwardedFor": {"numTrustedHops": 0}}}]})),
            "spec.listeners[0].clientIPDetection.xForwardedFor.numTrustedHops",
            "greater than or equal to 1",
        ),
        openapi(
            "maxConnections 0",
            gateway(json!({"listeners": [{"name": "web", "port": 8080, "maxConnections": 0}]})),
            "spec.listeners[0].maxConnections",
            "greater than or equal to 1",
        ),
        // Gateway: routes
        openapi(
            "duplicate route names",
            gateway(json!({"routes": [route(json!({})), route(json!({}))]})),
            "spec.routes[1]",
            "Duplicate value",
        ),
        cel(
            "route naming a listener that does not exist",
            gateway_with_route(json!({"listeners": ["admin"]})),
            "spec.routes",
            "must be the name of one of this Gateway's listeners",
        ),
        openapi(
            "route hostname with uppercase",
            gateway_with_route(json!({"hostnames": ["API.example.com"]})),
            "spec.routes[0].hostnames[0]",
            "should match",
        ),
        cel(
            "path match value not starting with '/'",
            gateway_with_route(json!({"matches": [{"path": {"type": "PathPrefix", "value": "api"}}]})),
            "spec.routes[0].matches[0].path.value",
            "path value must start with '/'",
        ),
        openapi(
            "header match name with a space",
            gateway_with_route(json!({"matches": [{"headers": [{"name": "x user", "value": "1"}]}]})),
            "spec.routes[0].matches[0].headers[0].name",
            "should match",
        ),
        openapi(
            "unknown method",
            gateway_with_route(json!({"matches": [{"method": "FETCH"}]})),
            "spec.routes[0].matches[0].method",
            "Unsupported value",
        ),
        openapi(
            "route without backends",
            gateway_with_route(json!({"backends": []})),
            "spec.routes[0].backends",
            "set exactly one of backends and redirect",
        ),
        cel(
            "a route with both backends and a redirect",
            gateway_with_route(json!({"redirect": {"scheme": "https"}})),
            "spec.routes[0].backends",
            "set exactly one of backends and redirect",
        ),
        cel(
            "a redirect with status 304",
            gateway_with_route(json!({"backends": null, "redirect": {"statusCode": 304}})),
            "spec.routes[0].redirect.statusCode",
            "statusCode must be one of 301, 302, 303, 307, 308",
        ),
        openapi(
            "a redirect to scheme ftp",
            gateway_with_route(json!({"backends": null, "redirect": {"scheme": "ftp"}})),
            "spec.routes[0].redirect.scheme",
            "Unsupported value: \"ftp\"",
        ),
        openapi(
            "a redirect to a wildcard hostname",
            gateway_with_route(json!({"backends": null, "redirect": {"hostname": "*.example.com"}})),
            "spec.routes[0].redirect.hostname",
            "should match",
        ),
        openapi(
            "the same Microservice twice in one route's backends",
            gateway_with_route(json!({"backends": [
                {"microservice": "orders", "weight": 1},
                {"microservice": "orders", "weight": 2},
            ]})),
            "spec.routes[0].backends[1]",
            "Duplicate value",
        ),
        cel(
            "all backend weights zero",
            gateway_with_route(json!({"backends": [
                {"microservice": "orders", "weight": 0},
                {"microservice": "payments", "weight": 0},
            ]})),
            "spec.routes[0].backends",
            "at least one backend must have a positive weight",
        ),
        openapi(
            "malformed timeout",
            gateway_with_route(json!({"timeout": "soon"})),
            "spec.routes[0].timeout",
            "should match",
        ),
        openapi(
            "negative timeout",
            gateway_with_route(json!({"timeout": "-1s"})),
            "spec.routes[0].timeout",
            "should match",
        ),
        cel(
            "zero timeout",
            gateway_with_route(json!({"timeout": "0s"})),
            "spec.routes[0].timeout",
            "timeout must be positive",
        ),
        cel(
            "zero perTryTimeout",
            gateway_with_retry(json!({"perTryTimeout": "0s"})),
            "spec.routes[0].retry.perTryTimeout",
            "perTryTimeout must be positive",
        ),
        cel(
            "perTryTimeout longer than the route's timeout",
            gateway_with_route(json!({"timeout": "1s", "retry": {"perTryTimeout": "2s"}})),
            "spec.routes[0].retry.perTryTimeout",
            "retry.perTryTimeout must not exceed timeout",
        ),
        cel(
            "perTryTimeout longer than the timeout in defaults",
            gateway(json!({"defaults": {"timeout": "1s", "retry": {"perTryTimeout": "1500ms"}}})),
            "spec.defaults.retry.perTryTimeout",
            "retry.perTryTimeout must not exceed timeout",
        ),
        openapi(
            "retry attempts over the cap",
            gateway_with_retry(json!({"attempts": 11})),
            "spec.routes[0].retry.attempts",
            "less than or equal to 10",
        ),
        cel(
            "backoff base longer than max",
            gateway_with_retry(json!({"backoff": {"base": "1s", "max": "100ms"}})),
            "spec.routes[0].retry.backoff.base",
            "backoff.base must not exceed backoff.max",
        ),
        cel(
            "zero backoff base",
            gateway_with_retry(json!({"backoff": {"base": "0s"}})),
            "spec.routes[0].retry.backoff.base",
            "backoff.base must be positive",
        ),
        openapi(
            "retry budget of 101 percent",
            gateway_with_retry(json!({"budget": {"percent": 101}})),
            "spec.routes[0].retry.budget.percent",
            "less than or equal to 100",
        ),
        openapi(
            "unknown retryOn value",
            gateway_with_retry(json!({"retryOn": ["5xx", "timeout"]})),
            "spec.routes[0].retry.retryOn[1]",
            "Unsupported value: \"timeout\"",
        ),
        cel(
            "retriable-status-codes in retryOn without retriableStatusCodes",
            gateway_with_retry(json!({"retryOn": ["retriable-status-codes"]})),
            "spec.routes[0].retry.retriableStatusCodes",
            "retriableStatusCodes must list at least one code",
        ),
        openapi(
            "retriable status code 600",
            gateway_with_retry(json!({"retryOn": ["retriable-status-codes"], "retriableStatusCodes": [600]})),
            "spec.routes[0].retry.retriableStatusCodes[0]",
            "less than or equal to 599",
        ),
        // AccessPolicy
        cel(
            "an empty AccessPolicy",
            access_policy(json!({"authentication": null})),
            "spec",
            "declares at least one of authentication, authorization, rateLimits and cors",
        ),
        cel(
            "authentication with no method",
            access_policy(json!({"authentication": {"apiKeys": null}})),
            "spec.authentication",
            "at least one of jwt, apiKeys and basicAuth",
        ),
        openapi(
            "a JWT algorithm of none",
            access_policy(
                json!({"authentication": {"jwt": [jwt_provider(json!({"algorithms": ["none"]}))]}}),
            ),
            "spec.authentication.jwt[0].algorithms[0]",
            "Unsupported value: \"none\"",
        ),
        openapi(
            "an HMAC JWT algorithm",
            access_policy(
                json!({"authentication": {"jwt": [jwt_provider(json!({"algorithms": ["HS256"]}))]}}),
            ),
            "spec.authentication.jwt[0].algorithms[0]",
            "Unsupported value: \"HS256\"",
        ),
        cel(
            "a key set from two places",
            access_policy(
                json!({"authentication": {"jwt": [jwt_provider(json!({"jwks": {"secretRef": {"name": "k"}}}))]}}),
            ),
            "spec.authentication.jwt[0].jwks",
            "jwks names exactly one of secretRef, configMapRef and remote",
        ),
        openapi(
            "a key set URL that is not http(s)",
            access_policy(
                json!({"authentication": {"jwt": [jwt_provider(json!({"jwks": {"remote": {"url": "ftp://idp/jwks"}}}))]}}),
            ),
            "spec.authentication.jwt[0].jwks.remote.url",
            "should match",
        ),
        cel(
            "a clock skew of an hour",
            access_policy(json!({"authentication": {"jwt": [jwt_provider(json!({"clockSkew": "1h"}))]}})),
            "spec.authentication.jwt[0].clockSkew",
            "clockSkew must be between 0s and 5m",
        ),
        cel(
            "an authorization rule with a bad CIDR",
            access_policy(
                json!({"authorization": {"rules": [{"action": "Deny", "clientCIDRs": ["10.0.0.0/33"]}]}}),
            ),
            "spec.authorization.rules[0].clientCIDRs",
            "every entry of clientCIDRs must be a CIDR",
        ),
        cel(
            "a claim rule without JWT",
            access_policy(
                json!({"authorization": {"rules": [{"action": "Allow", "claims": [{"name": "scope", "values": ["a"]}]}]}}),
            ),
            "spec.authorization.rules",
            "an authorization rule on claims needs authentication.jwt",
        ),
        openapi(
            "a rate limit of zero requests",
            access_policy(json!({"rateLimits": [{"name": "r", "requests": 0, "per": "1s"}]})),
            "spec.rateLimits[0].requests",
            "greater than or equal to 1",
        ),
        cel(
            "a rate limit keyed by two things",
            access_policy(
                json!({"rateLimits": [{"name": "r", "requests": 5, "per": "1s", "key": {"clientIP": true, "header": "x-user"}}]}),
            ),
            "spec.rateLimits[0].key",
            "key names exactly one of clientIP: true, header and claim",
        ),
        cel(
            "a rate limit keyed by a claim without JWT",
            access_policy(
                json!({"rateLimits": [{"name": "r", "requests": 5, "per": "1s", "key": {"claim": "sub"}}]}),
            ),
            "spec.rateLimits",
            "a rate limit keyed by a claim needs authentication.jwt",
        ),
        cel(
            "CORS with any origin and credentials",
            access_policy(json!({"cors": {"allowOrigins": ["*"], "allowCredentials": true}})),
            "spec.cors.allowOrigins",
            "allowOrigins must not be '*' when allowCredentials is true",
        ),
    ]
}

/// Creates `object` as it is, without going through the Rust types.
async fn create_raw(client: &Client, namespace: &str, object: &Value) -> Result<DynamicObject, kube::Error> {
    let api = Api::<DynamicObject>::namespaced_with(client.clone(), namespace, &Kind::of(object).resource());
    let object: DynamicObject = serde_json::from_value(object.clone()).expect("a DynamicObject");
    api.create(&PostParams::default(), &object).await
}

/// Every way `case` was not refused as it should be, as readable lines.
async fn check(client: &Client, namespace: &str, case: &Invalid) -> Vec<String> {
    let Invalid {
        what,
        object,
        field,
        message,
        cel,
    } = case;
    let kind = Kind::of(object);
    let mut problems = Vec::new();
    match create_raw(client, namespace, object).await {
        Ok(created) => problems.push(format!(
            "{what}: ACCEPTED by the API server (expected a rejection naming {field}); stored spec: {}",
            created.data["spec"]
        )),
        Err(kube::Error::Api(status)) if status.code == 422 => {
            eprintln!("refused  {what}: {}", status.message);
            // Field errors read `<path>: <type>: <detail>`; the path must be the offending field's.
            if !status.message.contains(&format!("{field}: ")) {
                problems.push(format!(
                    "{what}: the error does not name {field}: {}",
                    status.message
                ));
            }
            if let Some(message) = message
                && !status.message.contains(message)
            {
                problems.push(format!(
                    "{what}: the error does not say {message:?}: {}",
                    status.message
                ));
            }
        }
        Err(other) => problems.push(format!("{what}: expected HTTP 422 Invalid, got {other}")),
    }
    if *cel {
        match kind.validate_cel_offline(object) {
            Ok(Ok(())) => problems.push(format!("{what}: client-side validate_cel() accepts it")),
            Ok(Err(errors)) => eprintln!("         offline: {}", errors.replace('\n', " ")),
            Err(error) => problems.push(format!("{what}: marked as a CEL row but {error}")),
        }
    }
    problems
}

#[tokio::test]
async fn invalid_objects_are_rejected_at_admission_naming_the_field() {
    with_namespace("validation", |ns| async move {
        crate::install_crds(&ns.client).await;
        let cases = invalid_objects();
        let mut failures = Vec::new();
        for (index, case) in cases.iter().enumerate() {
            let mut case_named = Invalid {
                object: case.object.clone(),
                ..*case
            };
            if case_named.object["metadata"]["name"].is_null() {
                // Distinct names, so one wrongly accepted object cannot make the next row a 409.
                case_named.object["metadata"]["name"] = json!(format!("case-{index:02}"));
            }
            failures.extend(check(&ns.client, &ns.name, &case_named).await);
        }
        assert!(
            failures.is_empty(),
            "{} of {} invalid objects were not refused as expected:\n  {}",
            failures.len(),
            cases.len(),
            failures.join("\n  ")
        );
    })
    .await;
}

/// `object`'s value at a `/`-separated JSON pointer, as the API server stored it.
fn at<'a>(object: &'a Value, pointer: &str) -> &'a Value {
    object.pointer(pointer).unwrap_or(&Value::Null)
}

#[tokio::test]
async fn valid_objects_are_accepted_with_the_schema_defaults_filled_in() {
    with_namespace("validation", |ns| async move {
        crate::install_crds(&ns.client).await;

        let mut orders = microservice(json!({}));
        orders["metadata"]["name"] = json!("orders");
        let mut edge = gateway_with_route(json!({"retry": {}}));
        edge["metadata"]["name"] = json!("edge");
        // HTTPS listeners sharing a port by hostname (one default), and an http → https redirect.
        let mut secure = gateway(json!({
            "listeners": [
                {"name": "web", "port": 8080},
                https_listener("shop", 8443, &["shop.example.com"]),
                https_listener("any", 8443, &[]),
            ],
            "routes": [
                route(json!({"listeners": ["shop", "any"], "retry": {"retryOn": ["per-try-timeout"]}})),
                {"name": "to-https", "listeners": ["web"], "redirect": {"scheme": "https"}},
            ],
        }));
        secure["metadata"]["name"] = json!("secure");
        // Behind proxies, by address and by count; a connection limit.
        let mut proxied = gateway(json!({
            "listeners": [
                {"name": "web", "port": 8080, "maxConnections": 1000, "clientIPDetection":
                    {"xForwardedFor": {"trustedCIDRs": ["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32"]}}},
                {"name": "lb", "port": 8081, "clientIPDetection": {"xForwardedFor": {"numTrustedHops": 2}}},
            ],
        }));
        proxied["metadata"]["name"] = json!("proxied");

        // Every part of an AccessPolicy at once.
        let mut policy = access_policy(json!({
            "authentication": {
                "jwt": [jwt_provider(json!({"audiences": ["shop"], "tokenFrom": {"cookie": "session"},
                    "claimsToHeaders": [{"claim": "sub", "header": "x-user"}]}))],
                "basicAuth": {"secretRef": {"name": "users"}},
            },
            "authorization": {"rules": [
                {"action": "Deny", "clientCIDRs": ["192.0.2.0/24"]},
                {"name": "writers", "action": "Allow", "methods": ["POST"], "paths": [{"type": "PathPrefix", "value": "/api"}],
                 "claims": [{"name": "scope", "values": ["orders:write"]}]},
            ]},
            "rateLimits": [{"name": "per-user", "requests": 100, "per": "1m", "key": {"claim": "sub"}, "scope": "Global"}],
            "cors": {"allowOrigins": ["https://*.example.com"], "allowCredentials": true},
        }));
        policy["metadata"]["name"] = json!("everything");

        for object in [&orders, &edge, &secure, &proxied, &policy] {
            let kind = Kind::of(object);
            assert_eq!(
                kind.validate_cel_offline(object)
                    .expect("a valid object deserializes"),
                Ok(()),
                "client-side CEL refuses the valid {kind:?}"
            );
            create_raw(&ns.client, &ns.name, object)
                .await
                .unwrap_or_else(|e| panic!("the valid {kind:?} is refused: {e}"));
        }

        // Read back as raw JSON: the Rust types' serde defaults would hide a missing schema default.
        let microservices = Api::<DynamicObject>::namespaced_with(
            ns.client.clone(),
            &ns.name,
            &Kind::Microservice.resource(),
        );
        let stored = serde_json::to_value(
            microservices
                .get("orders")
                .await
                .expect("read the Microservice back"),
        )
        .expect("serialize");
        let expected = [
            ("/spec/image", json!(IMAGE)),
            ("/spec/replicas", json!(1)),
            ("/spec/port", json!(8080)),
            ("/spec/protocol", json!("HTTP")),
            ("/spec/trafficPolicy/loadBalancer/policy", json!("RoundRobin")),
            (
                "/spec/trafficPolicy/outlierDetection/consecutiveFailures",
                json!(5),
            ),
            (
                "/spec/trafficPolicy/outlierDetection/baseEjectionTime",
                json!("30s"),
            ),
            (
                "/spec/trafficPolicy/outlierDetection/maxEjectionPercent",
                json!(50),
            ),
            ("/spec/trafficPolicy/circuitBreaker/maxConnections", json!(1024)),
            ("/spec/termination/drainDelaySeconds", json!(5)),
            ("/spec/termination/gracePeriodSeconds", json!(30)),
        ];
        for (pointer, value) in &expected {
            assert_eq!(at(&stored, pointer), value, "Microservice {pointer} in {stored}");
        }
        assert!(at(&stored, "/spec/trafficPolicy/loadBalancer/consistentHash").is_null());
        let typed: Microservice =
            serde_json::from_value(stored).expect("the stored Microservice deserializes");
        typed
            .validate_cel()
            .expect("client-side CEL accepts the stored Microservice");

        let gateways =
            Api::<DynamicObject>::namespaced_with(ns.client.clone(), &ns.name, &Kind::Gateway.resource());
        let stored = serde_json::to_value(gateways.get("edge").await.expect("read the Gateway back"))
            .expect("serialize");
        let expected = [
            ("/spec/listeners/0/protocol", json!("HTTP")),
            ("/spec/routes/0/backends/0/weight", json!(1)),
            ("/spec/routes/0/retry/attempts", json!(2)),
            (
                "/spec/routes/0/retry/retryOn",
                json!(["connect-failure", "reset", "gateway-error"]),
            ),
            ("/spec/routes/0/retry/backoff/base", json!("25ms")),
            ("/spec/routes/0/retry/backoff/max", json!("250ms")),
            ("/spec/routes/0/retry/budget/percent", json!(20)),
            ("/spec/routes/0/retry/budget/minPerSecond", json!(10)),
        ];
        for (pointer, value) in &expected {
            assert_eq!(at(&stored, pointer), value, "Gateway {pointer} in {stored}");
        }
        assert!(at(&stored, "/spec/routes/0/retry/perTryTimeout").is_null());
        let typed: Gateway = serde_json::from_value(stored).expect("the stored Gateway deserializes");
        typed
            .validate_cel()
            .expect("client-side CEL accepts the stored Gateway");

        let stored = serde_json::to_value(gateways.get("secure").await.expect("read the Gateway back"))
            .expect("serialize");
        for (pointer, value) in [
            ("/spec/listeners/1/tls/minVersion", json!("1.2")),
            ("/spec/routes/0/retry/retryOn", json!(["per-try-timeout"])),
            ("/spec/routes/1/redirect/statusCode", json!(302)),
        ] {
            assert_eq!(at(&stored, pointer), &value, "Gateway {pointer} in {stored}");
        }

        let policies =
            Api::<DynamicObject>::namespaced_with(ns.client.clone(), &ns.name, &Kind::AccessPolicy.resource());
        let stored = serde_json::to_value(policies.get("everything").await.expect("read the AccessPolicy back"))
            .expect("serialize");
        for (pointer, value) in [
            ("/spec/authentication/jwt/0/algorithms", json!(["RS256", "ES256", "EdDSA"])),
            ("/spec/authentication/jwt/0/clockSkew", json!("30s")),
            ("/spec/authentication/jwt/0/jwks/remote/refreshInterval", json!("300s")),
            ("/spec/authentication/jwt/0/jwks/remote/minRefetchInterval", json!("10s")),
            ("/spec/authentication/basicAuth/key", json!(".htpasswd")),
            ("/spec/authentication/basicAuth/realm", json!("microgate")),
            ("/spec/authorization/defaultAction", json!("Deny")),
            ("/spec/rateLimits/0/whenUnreachable", json!("Allow")),
            ("/spec/cors/maxAge", json!(5)),
        ] {
            assert_eq!(at(&stored, pointer), &value, "AccessPolicy {pointer} in {stored}");
        }
        let typed: AccessPolicy = serde_json::from_value(stored).expect("the stored AccessPolicy deserializes");
        typed
            .validate_cel()
            .expect("client-side CEL accepts the stored AccessPolicy");
    })
    .await;
}
