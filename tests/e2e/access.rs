//! AccessPolicies end to end: API keys and basic auth from Secrets (rotated by editing the
//! Secret), CORS preflights answered by the gateway, authorization rules, the identity the service is told, a policy that cannot be
//! enforced failing closed and saying why in its status, and the decisions in /metrics.

use std::net::SocketAddr;

use base64::Engine;
use hyper::{HeaderMap, Method, StatusCode, header::HeaderValue};
use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::api::{Patch, PatchParams};
use microgate::api::AccessPolicy;
use microgate_test_support::{
    TestNamespace, probe,
    wait::{self, Probe},
    with_namespace,
};
use serde_json::json;

use crate::{Platform, WAIT, metric};

pub(crate) use shared::{create_policy, header};

async fn apply_secret(ns: &TestNamespace, name: &str, data: &[(&str, &str)]) {
    let data: std::collections::BTreeMap<String, ByteString> = data
        .iter()
        .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
        .collect();
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
        "type": "Opaque", "data": data});
    ns.api::<Secret>()
        .patch(name, &PatchParams::apply("test").force(), &Patch::Apply(secret))
        .await
        .expect("apply the Secret");
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in pairs {
        headers.append(
            hyper::header::HeaderName::try_from(*name).expect("a header name"),
            HeaderValue::from_str(value).expect("a header value"),
        );
    }
    headers
}

fn basic(user: &str, password: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}

async fn send(addr: SocketAddr, method: Method, pairs: &[(&str, &str)]) -> probe::Answer {
    probe::request_with(addr, method, "/orders", headers(pairs), "")
        .await
        .expect("an answer")
}

/// Waits until a request with `pairs` gets `status`.
async fn await_status(addr: SocketAddr, pairs: &[(&str, &str)], status: StatusCode) -> probe::Answer {
    wait::until(
        format!("a request with {pairs:?} to get {status}"),
        WAIT,
        || async {
            match probe::request_with(addr, Method::GET, "/orders", headers(pairs), "").await {
                Ok(answer) if answer.status == status => Probe::Done(answer),
                Ok(answer) => Probe::NotYet(format!("{}: {}", answer.status, answer.body.trim())),
                Err(error) => Probe::NotYet(error.to_string()),
            }
        },
    )
    .await
    .expect("the expected answer")
}

/// The `Ready` condition of AccessPolicy `name` once it is `status`: its reason and message.
async fn await_ready(ns: &TestNamespace, name: &str, status: &str) -> (String, String, Vec<String>) {
    wait::until(format!("AccessPolicy {name} Ready={status}"), WAIT, || async {
        let policy = match ns.api::<AccessPolicy>().get(name).await {
            Ok(policy) => policy,
            Err(error) => return Probe::NotYet(error.to_string()),
        };
        let found = policy.status.as_ref().and_then(|s| {
            let ready = s.conditions.iter().find(|c| c.type_ == "Ready")?;
            Some((ready.clone(), s.routes.clone()))
        });
        match found {
            Some((ready, routes)) if ready.status == status => {
                Probe::Done((ready.reason, ready.message, routes))
            }
            Some((ready, _)) => Probe::NotYet(format!("{}: {}", ready.status, ready.message)),
            None => Probe::NotYet("no Ready condition".to_owned()),
        }
    })
    .await
    .expect("the policy's status")
}

#[tokio::test]
async fn api_keys_basic_auth_and_rules_decide_who_reaches_the_service() {
    with_namespace("e2e-access-creds", |ns| async move {
        let platform = Platform::start(&ns).await;
        platform.microservice(&ns, "echo", 1, json!({})).await;
        apply_secret(&ns, "api-keys", &[("billing", "k-123"), ("reports", "k-777")]).await;
        let hash = bcrypt::hash("s3cret", 4).expect("a bcrypt hash");
        apply_secret(&ns, "users", &[(".htpasswd", &format!("alice:{hash}\n"))]).await;
        create_policy(
            &ns,
            "shop",
            json!({
                "authentication": {
                    "apiKeys": {"secretRef": {"name": "api-keys"}},
                    "basicAuth": {"secretRef": {"name": "users"}, "realm": "shop"},
                },
                "cors": {"allowOrigins": ["https://*.shop.example"], "allowMethods": ["GET", "POST"],
                         "allowHeaders": ["x-api-key"], "maxAge": 600},
                "authorization": {
                    "rules": [
                        {"name": "no-deletes", "action": "Deny", "methods": ["DELETE"]},
                        {"name": "reports-read-only", "action": "Allow", "methods": ["GET"]},
                    ],
                    "defaultAction": "Allow",
                },
            }),
        )
        .await;
        platform
            .gateway(
                &ns,
                json!([{"name": "all", "backends": [{"microservice": "echo"}], "accessPolicy": "shop"}]),
            )
            .await;
        let addr = platform.listener;

        // No credentials: 401, with a challenge for each method.
        let answer = await_status(addr, &[], StatusCode::UNAUTHORIZED).await;
        let challenges: Vec<&str> = answer
            .headers
            .get_all("www-authenticate")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        assert_eq!(
            challenges,
            [
                "ApiKey header=\"x-api-key\"",
                "Basic realm=\"shop\", charset=\"UTF-8\""
            ]
        );
        assert_eq!(header(&answer, "x-microgate-reason"), "credentials-missing");

        // A CORS preflight is answered by the gateway, without credentials, never reaching the
        // service; the answers to an allowed origin are marked, the refusals too.
        let preflight = probe::request_with(
            addr,
            Method::OPTIONS,
            "/orders",
            headers(&[
                ("origin", "https://app.shop.example"),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", "x-api-key"),
            ]),
            "",
        )
        .await
        .expect("an answer");
        assert!(
            preflight.status.is_success(),
            "{}: {}",
            preflight.status,
            preflight.body
        );
        assert_eq!(
            header(&preflight, "access-control-allow-origin"),
            "https://app.shop.example"
        );
        assert_eq!(header(&preflight, "access-control-max-age"), "600");
        assert!(
            preflight.headers.get("x-pod-name").is_none(),
            "the preflight reached the service"
        );
        let refused = send(addr, Method::GET, &[("origin", "https://app.shop.example")]).await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            header(&refused, "access-control-allow-origin"),
            "https://app.shop.example"
        );
        let other = send(
            addr,
            Method::GET,
            &[("origin", "https://evil.example"), ("x-api-key", "k-123")],
        )
        .await;
        assert_eq!(other.status, StatusCode::OK);
        assert!(other.headers.get("access-control-allow-origin").is_none());

        // A valid key: the service is told which client called, whatever the client claimed.
        let answer = send(
            addr,
            Method::GET,
            &[("x-api-key", "k-123"), ("x-microgate-client", "admin")],
        )
        .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        assert_eq!(header(&answer, "x-seen-x-microgate-client"), "billing");
        let answer = send(addr, Method::GET, &[("x-api-key", "k-124")]).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
        assert_eq!(header(&answer, "x-microgate-reason"), "api-key-unknown");

        // Basic auth.
        let answer = send(
            addr,
            Method::POST,
            &[("authorization", &basic("alice", "s3cret"))],
        )
        .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        assert_eq!(header(&answer, "x-seen-x-microgate-client"), "alice");
        let answer = send(addr, Method::GET, &[("authorization", &basic("alice", "guess"))]).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);

        // Rules: the first that holds decides.
        let answer = send(addr, Method::DELETE, &[("x-api-key", "k-123")]).await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{}", answer.body);
        assert_eq!(header(&answer, "x-microgate-reason"), "forbidden");
        let answer = send(addr, Method::PUT, &[("x-api-key", "k-777")]).await;
        assert_eq!(answer.status, StatusCode::OK, "no rule holds: the default allows");

        // Rotation: the Secret edited, the old key stops working and the new one works, with
        // no restart.
        apply_secret(&ns, "api-keys", &[("billing", "k-456")]).await;
        await_status(addr, &[("x-api-key", "k-123")], StatusCode::UNAUTHORIZED).await;
        let answer = await_status(addr, &[("x-api-key", "k-456")], StatusCode::OK).await;
        assert_eq!(header(&answer, "x-seen-x-microgate-client"), "billing");

        // Basic auth rotated the same way: a new password file, no restart.
        let hash = bcrypt::hash("n3w-secret", 4).expect("a bcrypt hash");
        apply_secret(&ns, "users", &[(".htpasswd", &format!("alice:{hash}\n"))]).await;
        await_status(
            addr,
            &[("authorization", &basic("alice", "s3cret"))],
            StatusCode::UNAUTHORIZED,
        )
        .await;
        await_status(
            addr,
            &[("authorization", &basic("alice", "n3w-secret"))],
            StatusCode::OK,
        )
        .await;

        let (reason, message, routes) = await_ready(&ns, "shop", "True").await;
        assert_eq!(reason, "Enforced", "{message}");
        assert_eq!(routes, [format!("{}/gw/all", ns.name)]);
        let route = format!("route=\"{}/gw/all\"", ns.name);
        for (outcome, at_least) in [("allowed", 4.0), ("unauthenticated", 4.0), ("forbidden", 1.0)] {
            let counted = metric(
                platform.admin,
                "microgate_gateway_access_decisions_total",
                &format!("outcome=\"{outcome}\""),
            )
            .await;
            assert!(counted >= at_least, "{outcome}: {counted} < {at_least} ({route})");
        }
    })
    .await;
}

#[tokio::test]
async fn a_policy_that_cannot_be_enforced_refuses_every_request_and_says_why() {
    with_namespace("e2e-access-closed", |ns| async move {
        let platform = Platform::start(&ns).await;
        platform.microservice(&ns, "echo", 1, json!({})).await;
        create_policy(
            &ns,
            "keys",
            json!({"authentication": {"apiKeys": {"secretRef": {"name": "not-yet"}, "header": "x-key"}}}),
        )
        .await;
        platform
            .gateway(
                &ns,
                json!([
                    {"name": "keyed", "matches": [{"path": {"type": "PathPrefix", "value": "/orders"}}],
                     "backends": [{"microservice": "echo"}], "accessPolicy": "keys"},
                    {"name": "missing", "matches": [{"path": {"type": "PathPrefix", "value": "/other"}}],
                     "backends": [{"microservice": "echo"}], "accessPolicy": "nowhere"},
                ]),
            )
            .await;
        let addr = platform.listener;
        let answer = await_status(addr, &[("x-key", "anything")], StatusCode::INTERNAL_SERVER_ERROR).await;
        assert_eq!(
            header(&answer, "x-microgate-reason"),
            "access-policy-unenforceable"
        );
        let (reason, message, _) = await_ready(&ns, "keys", "False").await;
        assert_eq!(reason, "Unenforceable");
        assert!(
            message.contains("Secret") && message.contains("not-yet"),
            "{message}"
        );
        let other = probe::request_with(addr, Method::GET, "/other", HeaderMap::new(), "")
            .await
            .expect("an answer");
        assert_eq!(
            other.status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "a policy that does not exist refuses too"
        );

        apply_secret(&ns, "not-yet", &[("ci", "token-1")]).await;
        await_status(addr, &[("x-key", "token-1")], StatusCode::OK).await;
        let answer = send(addr, Method::GET, &[("x-key", "token-2")]).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
        await_ready(&ns, "keys", "True").await;
    })
    .await;
}

/// What the AccessPolicy tests share.
pub(crate) mod shared {
    use kube::api::PostParams;
    use microgate::api::AccessPolicy;
    use microgate_test_support::{TestNamespace, probe};
    use serde_json::json;

    /// Creates the AccessPolicy `name` with `spec`.
    pub(crate) async fn create_policy(ns: &TestNamespace, name: &str, spec: serde_json::Value) {
        let policy: AccessPolicy = serde_json::from_value(json!({
            "apiVersion": "microgate.dev/v1alpha1", "kind": "AccessPolicy", "metadata": {"name": name},
            "spec": spec,
        }))
        .expect("a valid AccessPolicy");
        ns.api::<AccessPolicy>()
            .create(&PostParams::default(), &policy)
            .await
            .expect("create the AccessPolicy");
    }

    /// The value of header `name` of `answer`, or "".
    pub(crate) fn header<'a>(answer: &'a probe::Answer, name: &str) -> &'a str {
        answer
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}
