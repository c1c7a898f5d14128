//! JWT authentication through the gateway, with keys generated and tokens signed here: valid
//! tokens reach the service with their claims as headers (the client's copies dropped); expired,
//! foreign-audience, `alg: none` and HS256-with-the-public-key tokens are refused with RFC 6750
//! challenges; a scope decides a rule; a limit keyed by the subject; and a key set fetched from
//! a URL, rotated there, picked up on an unknown `kid`, and kept while the URL is down.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{SystemTime, UNIX_EPOCH},
};

use base64::Engine;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{HeaderMap, Method, Request, Response, StatusCode, header::HeaderValue};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use microgate::api::AccessPolicy;
use microgate_test_support::{
    probe,
    wait::{self, Probe},
    with_namespace,
};
use ring::{
    rand::SystemRandom,
    signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair},
};
use serde_json::{Value, json};

use crate::{
    Platform, WAIT,
    access::{create_policy, header},
};

const ISSUER: &str = "https://idp.shop.test";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A signing key of the test's own.
enum Key {
    Ec(String, EcdsaKeyPair),
    Ed(String, Ed25519KeyPair),
}

impl Key {
    fn ec(kid: &str) -> Self {
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).expect("a P-256 key");
        Key::Ec(
            kid.into(),
            EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).expect("a P-256 key"),
        )
    }

    fn ed(kid: &str) -> Self {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("an Ed25519 key");
        Key::Ed(
            kid.into(),
            Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("an Ed25519 key"),
        )
    }

    fn jwk(&self) -> Value {
        match self {
            Key::Ec(kid, pair) => {
                let point = pair.public_key().as_ref();
                json!({"kty": "EC", "kid": kid, "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..65])})
            }
            Key::Ed(kid, pair) => {
                json!({"kty": "OKP", "kid": kid, "crv": "Ed25519", "x": b64(pair.public_key().as_ref())})
            }
        }
    }

    fn header(&self) -> Value {
        match self {
            Key::Ec(kid, _) => json!({"alg": "ES256", "typ": "JWT", "kid": kid}),
            Key::Ed(kid, _) => json!({"alg": "EdDSA", "typ": "JWT", "kid": kid}),
        }
    }

    fn token(&self, claims: &Value) -> String {
        let signed = format!(
            "{}.{}",
            b64(self.header().to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let signature = match self {
            Key::Ec(_, pair) => pair
                .sign(&SystemRandom::new(), signed.as_bytes())
                .expect("an ECDSA signature")
                .as_ref()
                .to_vec(),
            Key::Ed(_, pair) => pair.sign(signed.as_bytes()).as_ref().to_vec(),
        };
        format!("{signed}.{}", b64(&signature))
    }
}

fn jwks(keys: &[&Key]) -> String {
    json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()}).to_string()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

/// Claims of `sub`, valid for an hour, for audience `shop`, with `scope`.
fn claims(sub: &str, scope: &str) -> Value {
    json!({"iss": ISSUER, "sub": sub, "aud": "shop", "scope": scope, "iat": now(), "exp": now() + 3600})
}

fn bearer(token: &str) -> (&'static str, String) {
    ("authorization", format!("Bearer {token}"))
}

async fn send(addr: SocketAddr, method: Method, path: &str, pairs: &[(&str, String)]) -> probe::Answer {
    let mut headers = HeaderMap::new();
    for (name, value) in pairs {
        headers.append(
            hyper::header::HeaderName::try_from(*name).expect("a header name"),
            HeaderValue::from_str(value).expect("a header value"),
        );
    }
    probe::request_with(addr, method, path, headers, "")
        .await
        .expect("an answer")
}

#[tokio::test]
async fn tokens_are_verified_their_claims_reach_the_service_and_decide_rules_and_limits() {
    with_namespace("e2e-jwt", |ns| async move {
        let platform = Platform::start(&ns).await;
        platform.microservice(&ns, "echo", 1, json!({})).await;
        let (ec, ed) = (Key::ec("ec-1"), Key::ed("ed-1"));
        ns.api::<Secret>()
            .patch(
                "idp-keys",
                &PatchParams::apply("test").force(),
                &Patch::Apply(
                    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "idp-keys"},
                    "stringData": {"jwks.json": jwks(&[&ec, &ed])}}),
                ),
            )
            .await
            .expect("the key set's Secret");
        create_policy(
            &ns,
            "users",
            json!({
                "authentication": {"jwt": [{
                    "name": "idp", "issuer": ISSUER, "audiences": ["shop"],
                    "jwks": {"secretRef": {"name": "idp-keys"}},
                    "claimsToHeaders": [{"claim": "sub", "header": "x-identity-user"}],
                }]},
                "authorization": {"defaultAction": "Allow", "rules": [
                    {"name": "writers", "action": "Allow", "methods": ["POST"],
                     "claims": [{"name": "scope", "values": ["orders:write"]}]},
                    {"name": "no-other-writes", "action": "Deny", "methods": ["POST"]},
                ]},
                "rateLimits": [{"name": "per-user", "requests": 4, "per": "1m", "key": {"claim": "sub"}}],
            }),
        )
        .await;
        platform
            .gateway(
                &ns,
                json!([{"name": "all", "backends": [{"microservice": "echo"}], "accessPolicy": "users"}]),
            )
            .await;
        let addr = platform.listener;
        let ada = ec.token(&claims("ada", "openid orders:write"));
        let answer = wait::until("a valid token to be let through", WAIT, || async {
            let answer = send(addr, Method::GET, "/orders", &[bearer(&ada)]).await;
            if answer.status == StatusCode::OK {
                Probe::Done(answer)
            } else {
                Probe::NotYet(format!("{}: {}", answer.status, answer.body.trim()))
            }
        })
        .await
        .expect("the token is accepted");
        assert_eq!(header(&answer, "x-seen-x-identity-user"), "ada");
        assert_eq!(header(&answer, "x-seen-x-microgate-client"), "ada");
        // The client's own claim header is replaced, whatever it says.
        let forged = send(
            addr,
            Method::GET,
            "/orders",
            &[bearer(&ada), ("x-identity-user", "root".to_owned())],
        )
        .await;
        assert_eq!(header(&forged, "x-seen-x-identity-user"), "ada");

        // Refused tokens: 401 with an RFC 6750 challenge that never repeats the token.
        let expired = ec.token(&json!({"iss": ISSUER, "sub": "ada", "aud": "shop", "exp": now() - 600}));
        let foreign = ed.token(&json!({"iss": ISSUER, "sub": "ada", "aud": "billing", "exp": now() + 600}));
        let payload = b64(claims("ada", "").to_string().as_bytes());
        let none = format!("{}.{payload}.", b64(br#"{"alg":"none","typ":"JWT"}"#));
        let hs256 = {
            let signed = format!(
                "{}.{payload}",
                b64(br#"{"alg":"HS256","typ":"JWT","kid":"ec-1"}"#)
            );
            let secret = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, ec.jwk().to_string().as_bytes());
            format!(
                "{signed}.{}",
                b64(ring::hmac::sign(&secret, signed.as_bytes()).as_ref())
            )
        };
        let unknown_kid = Key::ec("not-in-the-set").token(&claims("ada", ""));
        for (what, token, reason) in [
            ("expired", &expired, "jwt-expired"),
            ("another audience", &foreign, "jwt-wrong-audience"),
            ("alg none", &none, "jwt-alg-none"),
            ("HS256 with the public key", &hs256, "jwt-alg-hmac"),
            ("an unknown kid", &unknown_kid, "jwt-unknown-kid"),
        ] {
            let answer = send(addr, Method::GET, "/orders", &[bearer(token)]).await;
            assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{what}: {}", answer.body);
            assert_eq!(header(&answer, "x-microgate-reason"), reason, "{what}");
            let challenge = header(&answer, "www-authenticate");
            assert!(
                challenge.starts_with("Bearer") && challenge.contains("invalid_token"),
                "{what}: {challenge}"
            );
            assert!(
                !challenge.contains(token.as_str()),
                "{what}: the challenge repeats the token"
            );
        }
        let missing = send(addr, Method::GET, "/orders", &[]).await;
        assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
        assert!(
            header(&missing, "www-authenticate").starts_with("Bearer"),
            "{missing:?}"
        );

        // A scope decides: an EdDSA token without orders:write may read, not write.
        let bob = ed.token(&claims("bob", "openid orders:read"));
        assert_eq!(
            send(addr, Method::GET, "/orders", &[bearer(&bob)]).await.status,
            StatusCode::OK
        );
        let denied = send(addr, Method::POST, "/orders", &[bearer(&bob)]).await;
        assert_eq!(denied.status, StatusCode::FORBIDDEN, "{}", denied.body);
        assert_eq!(
            send(addr, Method::POST, "/orders", &[bearer(&ada)]).await.status,
            StatusCode::OK
        );

        // The limit is per subject: ada has used 3 of 4 (the forged-header request included),
        // bob 1 (his refused POST took none: authorization comes first).
        assert_eq!(
            send(addr, Method::GET, "/orders", &[bearer(&ada)]).await.status,
            StatusCode::OK
        );
        let limited = send(addr, Method::GET, "/orders", &[bearer(&ada)]).await;
        assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS, "{}", limited.body);
        assert_eq!(
            send(addr, Method::GET, "/orders", &[bearer(&bob)]).await.status,
            StatusCode::OK
        );
    })
    .await;
}

/// A JWKS server on a loopback port: serves what `document` holds, counts fetches, and can stop.
struct KeyServer {
    addr: SocketAddr,
    document: Arc<Mutex<String>>,
    fetches: Arc<Mutex<u32>>,
    task: tokio::task::JoinHandle<()>,
}

impl KeyServer {
    async fn start(document: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port");
        let addr = listener.local_addr().expect("its address");
        let document = Arc::new(Mutex::new(document));
        let fetches = Arc::new(Mutex::new(0));
        let (served, counted) = (document.clone(), fetches.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (served, counted) = (served.clone(), counted.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |_: Request<hyper::body::Incoming>| {
                        *counted.lock().expect("count") += 1;
                        let body = served.lock().expect("document").clone();
                        async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body)))) }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                });
            }
        });
        Self {
            addr,
            document,
            fetches,
            task,
        }
    }

    fn fetches(&self) -> u32 {
        *self.fetches.lock().expect("count")
    }
}

#[tokio::test]
async fn a_remote_key_set_is_rotated_on_an_unknown_kid_and_outlives_its_server() {
    with_namespace("e2e-jwt-remote", |ns| async move {
        let platform = Platform::start(&ns).await;
        platform.microservice(&ns, "echo", 1, json!({})).await;
        let (old, new) = (Key::ec("2026-11"), Key::ec("2026-12"));
        let server = KeyServer::start(jwks(&[&old])).await;
        create_policy(
            &ns,
            "remote",
            json!({"authentication": {"jwt": [{
                "name": "idp", "issuer": ISSUER,
                "jwks": {"remote": {"url": format!("http://{}/.well-known/jwks.json", server.addr),
                                    "refreshInterval": "10m", "minRefetchInterval": "1s"}},
            }]}}),
        )
        .await;
        platform
            .gateway(
                &ns,
                json!([{"name": "all", "backends": [{"microservice": "echo"}], "accessPolicy": "remote"}]),
            )
            .await;
        let addr = platform.listener;
        let await_ok = |token: String, what: &'static str| async move {
            wait::until(what, WAIT, || async {
                let answer = send(addr, Method::GET, "/", &[bearer(&token)]).await;
                if answer.status == StatusCode::OK {
                    Probe::Done(())
                } else {
                    Probe::NotYet(format!(
                        "{} {}",
                        answer.status,
                        header(&answer, "x-microgate-reason")
                    ))
                }
            })
            .await
            .expect(what)
        };
        await_ok(
            old.token(&claims("ada", "")),
            "a token of the served key to be accepted",
        )
        .await;
        let fetched = server.fetches();

        // The issuer rotates: the new kid is unknown until one refetch brings it.
        *server.document.lock().expect("document") = jwks(&[&old, &new]);
        await_ok(
            new.token(&claims("ada", "")),
            "a token of the rotated key to be accepted",
        )
        .await;
        let refetches = server.fetches() - fetched;
        assert!(
            (1..=3).contains(&refetches),
            "{refetches} fetches for one rotation"
        );

        // A flood of made-up kids within the interval costs no fetch per request.
        let before = server.fetches();
        for i in 0..50 {
            let forged = Key::ec(&format!("forged-{i}")).token(&claims("ada", ""));
            assert_eq!(
                send(addr, Method::GET, "/", &[bearer(&forged)]).await.status,
                StatusCode::UNAUTHORIZED
            );
        }
        let flood = server.fetches() - before;
        assert!(flood <= 2, "{flood} fetches for 50 unknown kids");

        // The key server goes away, and an unknown kid makes the gateway try it: the keys it
        // served keep working.
        server.task.abort();
        let _ = server.task.await;
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        let stray = Key::ec("stray").token(&claims("ada", ""));
        assert_eq!(
            send(addr, Method::GET, "/", &[bearer(&stray)]).await.status,
            StatusCode::UNAUTHORIZED
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let answer = send(addr, Method::GET, "/", &[bearer(&new.token(&claims("ada", "")))]).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    })
    .await;
}

#[tokio::test]
async fn a_key_set_that_never_loads_refuses_tokens_and_says_so_in_status() {
    with_namespace("e2e-jwt-unreachable", |ns| async move {
        let platform = Platform::start(&ns).await;
        platform.microservice(&ns, "echo", 1, json!({})).await;
        // A port nothing listens on.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        create_policy(
            &ns,
            "unreachable",
            json!({"authentication": {"jwt": [{
                "name": "idp", "issuer": ISSUER,
                "jwks": {"remote": {"url": format!("http://{closed}/jwks.json")}},
            }]}}),
        )
        .await;
        platform
            .gateway(&ns, json!([{"name": "all", "backends": [{"microservice": "echo"}], "accessPolicy": "unreachable"}]))
            .await;
        let token = Key::ec("k").token(&claims("ada", ""));
        let answer = wait::until("a token to be refused for want of keys", WAIT, || async {
            let answer = send(platform.listener, Method::GET, "/", &[bearer(&token)]).await;
            if answer.status == StatusCode::SERVICE_UNAVAILABLE {
                Probe::Done(answer)
            } else {
                Probe::NotYet(format!("{} {}", answer.status, header(&answer, "x-microgate-reason")))
            }
        })
        .await
        .expect("fails closed");
        assert_eq!(header(&answer, "x-microgate-reason"), "jwt-keys-unavailable");
        let ready = wait::until("the policy to say why", WAIT, || async {
            let policy = ns.api::<AccessPolicy>().get("unreachable").await;
            let ready = policy
                .ok()
                .and_then(|p| p.status)
                .and_then(|s| s.conditions.into_iter().find(|c| c.type_ == "Ready"));
            match ready {
                Some(ready) if ready.status == "False" => Probe::Done(ready),
                other => Probe::NotYet(format!("{other:?}")),
            }
        })
        .await
        .expect("a Ready condition");
        assert_eq!(ready.reason, "KeysNotLoaded");
        assert!(ready.message.contains("jwt provider idp"), "{}", ready.message);
    })
    .await;
}
