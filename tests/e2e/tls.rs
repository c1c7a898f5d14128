//! HTTPS listeners end to end: certificates from Secrets chosen by SNI, refused handshakes for
//! names no listener serves, HTTP/2 by ALPN, minimum versions, certificate rotation without a
//! dropped connection, invalid Secrets that leave the last good certificate in service, and
//! the redirect that sends plain HTTP to HTTPS.

use std::net::SocketAddr;

use hyper::{Method, StatusCode, Version};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use microgate::api::Gateway;
use microgate_test_support::{
    TestNamespace,
    backend::{POD_NAME_HEADER, SEEN_FORWARDED_PROTO_HEADER},
    probe,
    tls::{ServerCert, TestCa, tls_secret},
    wait::{self, Probe},
    with_namespace,
};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{Platform, WAIT, condition, create_gateway_spec, free_port};

pub(crate) async fn create_secret(ns: &TestNamespace, secret: &Secret) {
    ns.api::<Secret>()
        .create(&PostParams::default(), secret)
        .await
        .expect("create the Secret");
}

async fn replace_secret(ns: &TestNamespace, secret: &Secret) {
    let name = secret.metadata.name.as_deref().expect("a named Secret");
    let patch = json!({"apiVersion": "v1", "kind": "Secret", "type": secret.type_, "data": secret.data});
    ns.api::<Secret>()
        .patch(name, &PatchParams::apply("test").force(), &Patch::Apply(patch))
        .await
        .expect("update the Secret");
}

pub(crate) fn https(name: &str, port: u16, hostnames: &[&str], secret: &str) -> serde_json::Value {
    json!({"name": name, "port": port, "protocol": "HTTPS", "hostnames": hostnames,
        "tls": {"certificateRefs": [{"name": secret}]}})
}

/// Waits until a handshake naming `server_name` at `addr` presents `expected`.
async fn await_certificate(ca: &TestCa, addr: SocketAddr, server_name: &str, expected: &ServerCert) {
    let client = ca.http1_client();
    wait::until(
        format!("{server_name} to be served its certificate"),
        WAIT,
        || async {
            match client.connect(addr, server_name).await {
                Ok(connected) if connected.certificate == expected.der => Probe::Done(()),
                Ok(_) => Probe::NotYet("another certificate".to_owned()),
                Err(error) => Probe::NotYet(error.to_string()),
            }
        },
    )
    .await
    .expect("the certificate is served");
}

/// The listener `listener`'s condition `type_` as (status, reason, message).
async fn listener_condition(
    ns: &TestNamespace,
    gateway: &str,
    listener: &str,
    type_: &str,
) -> Option<(String, String, String)> {
    let gateway = ns.api::<Gateway>().get(gateway).await.ok()?;
    let status = gateway.status?;
    let listener = status
        .listener_statuses
        .into_iter()
        .find(|l| l.name == listener)?;
    let c = listener.conditions.into_iter().find(|c| c.type_ == type_)?;
    Some((c.status, c.reason, c.message))
}

async fn await_listener_condition(
    ns: &TestNamespace,
    gateway: &str,
    listener: &str,
    type_: &str,
    status: &str,
    reason: &str,
) -> String {
    await_listener_message(ns, gateway, listener, (type_, status, reason), "").await
}

/// Waits for the listener's condition `(type, status, reason)` with a message containing `says`.
async fn await_listener_message(
    ns: &TestNamespace,
    gateway: &str,
    listener: &str,
    (type_, status, reason): (&str, &str, &str),
    says: &str,
) -> String {
    wait::until(
        format!("{listener}'s {type_} to be {status} ({reason}: {says})"),
        WAIT,
        || async {
            match listener_condition(ns, gateway, listener, type_).await {
                Some((s, r, message)) if s == status && r == reason && message.contains(says) => {
                    Probe::Done(message)
                }
                other => Probe::NotYet(format!("{other:?}")),
            }
        },
    )
    .await
    .expect("the listener's condition")
}

#[tokio::test]
async fn https_listeners_share_a_port_by_sni_and_refuse_names_none_serves() {
    with_namespace("e2e-tls-sni", |ns| async move {
        let platform = Platform::start(&ns).await;
        platform.microservice(&ns, "shop", 1, json!({})).await;
        platform.microservice(&ns, "api", 1, json!({})).await;
        let ca = TestCa::new();
        let shop = ca.issue(&["shop.example.com"]);
        let api = ca.issue(&["*.api.example.com"]);
        create_secret(&ns, &shop.secret("shop-tls")).await;
        create_secret(&ns, &api.secret("api-tls")).await;
        let port = free_port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        create_gateway_spec(
            &ns,
            "edge",
            json!({
                "listeners": [
                    https("shop", port, &["shop.example.com"], "shop-tls"),
                    https("api", port, &["*.api.example.com"], "api-tls"),
                ],
                "routes": [
                    {"name": "shop", "listeners": ["shop"], "backends": [{"microservice": "shop"}]},
                    {"name": "api", "listeners": ["api"], "backends": [{"microservice": "api"}]},
                ],
            }),
        )
        .await;
        await_certificate(&ca, addr, "shop.example.com", &shop).await;
        await_certificate(&ca, addr, "v1.api.example.com", &api).await;

        // Each listener's requests go to its own routes, and the service learns the scheme.
        let client = ca.http1_client();
        let answer = client
            .get(addr, "shop.example.com", "/")
            .await
            .expect("an answer");
        assert_eq!(answer.status, StatusCode::OK);
        assert!(
            answer.headers[POD_NAME_HEADER]
                .to_str()
                .expect("ascii")
                .starts_with("shop-")
        );
        assert_eq!(answer.headers[SEEN_FORWARDED_PROTO_HEADER], "https");
        let answer = client
            .get(addr, "v1.api.example.com", "/")
            .await
            .expect("an answer");
        assert!(
            answer.headers[POD_NAME_HEADER]
                .to_str()
                .expect("ascii")
                .starts_with("api-")
        );

        // A request for the other listener's host on this connection: 421, not the other service.
        let connected = client
            .connect(addr, "shop.example.com")
            .await
            .expect("a handshake");
        let mut session = microgate_test_support::tls::Session::start(connected)
            .await
            .expect("HTTP");
        let answer = session
            .send(Method::GET, "v1.api.example.com", "/")
            .await
            .expect("an answer");
        assert_eq!(answer.status, StatusCode::MISDIRECTED_REQUEST, "{answer:?}");

        // No listener takes this name, and none is a default: the handshake is refused.
        let refused = client.connect(addr, "other.example.com").await;
        assert!(
            refused.is_err(),
            "a handshake for a name no listener serves must fail"
        );

        // A listener without hostnames becomes the default.
        let fallback = ca.issue(&["fallback.example.com", "other.example.com"]);
        create_secret(&ns, &fallback.secret("fallback-tls")).await;
        let patch = json!({"spec": {"listeners": [
            https("shop", port, &["shop.example.com"], "shop-tls"),
            https("api", port, &["*.api.example.com"], "api-tls"),
            https("fallback", port, &[], "fallback-tls"),
        ]}});
        ns.api::<Gateway>()
            .patch("edge", &PatchParams::default(), &Patch::Merge(patch))
            .await
            .expect("add the default listener");
        await_certificate(&ca, addr, "other.example.com", &fallback).await;
        // The exact and wildcard names keep theirs.
        await_certificate(&ca, addr, "shop.example.com", &shop).await;
        await_certificate(&ca, addr, "v2.api.example.com", &api).await;
        await_listener_condition(&ns, "edge", "fallback", "Programmed", "True", "Programmed").await;
        await_listener_condition(&ns, "edge", "shop", "ResolvedRefs", "True", "ResolvedRefs").await;
    })
    .await;
}

#[tokio::test]
async fn http2_is_negotiated_by_alpn_and_tls_versions_follow_min_version() {
    with_namespace("e2e-tls-alpn", |ns| async move {
        let platform = Platform::start(&ns).await;
        platform.microservice(&ns, "web", 1, json!({})).await;
        let ca = TestCa::new();
        let cert = ca.issue(&["web.example.com"]);
        create_secret(&ns, &cert.secret("web-tls")).await;
        let (port12, port13) = (free_port(), free_port());
        let mut strict = https("strict", port13, &[], "web-tls");
        strict["tls"]["minVersion"] = json!("1.3");
        create_gateway_spec(
            &ns,
            "edge",
            json!({
                "listeners": [https("any", port12, &[], "web-tls"), strict],
                "routes": [{"name": "web", "backends": [{"microservice": "web"}]}],
            }),
        )
        .await;
        let (addr12, addr13) = (
            SocketAddr::from(([127, 0, 0, 1], port12)),
            SocketAddr::from(([127, 0, 0, 1], port13)),
        );
        await_certificate(&ca, addr12, "web.example.com", &cert).await;
        await_certificate(&ca, addr13, "web.example.com", &cert).await;

        let h2 = ca.client(&[b"h2", b"http/1.1"], rustls::DEFAULT_VERSIONS);
        let answer = h2
            .get(addr12, "web.example.com", "/")
            .await
            .expect("an HTTP/2 answer");
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.version, Version::HTTP_2);
        let http1 = ca
            .http1_client()
            .get(addr12, "web.example.com", "/")
            .await
            .expect("an HTTP/1.1 answer");
        assert_eq!(http1.version, Version::HTTP_11);
        assert_eq!(http1.status, StatusCode::OK);

        let tls12_only = ca.client(&[b"http/1.1"], &[&rustls::version::TLS12]);
        let connected = tls12_only
            .connect(addr12, "web.example.com")
            .await
            .expect("TLS 1.2 from minVersion 1.2");
        assert_eq!(connected.version, rustls::ProtocolVersion::TLSv1_2);
        assert!(
            tls12_only.connect(addr13, "web.example.com").await.is_err(),
            "a listener with minVersion 1.3 must refuse a TLS 1.2-only client"
        );
        let connected = ca
            .http1_client()
            .connect(addr13, "web.example.com")
            .await
            .expect("TLS 1.3");
        assert_eq!(connected.version, rustls::ProtocolVersion::TLSv1_3);

        // An answer that ends the connection ends it with close_notify: the client reads to a
        // clean end, not to a truncation (rustls reports an EOF without it as an error).
        let mut stream = connected.stream;
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: web.example.com\r\nConnection: close\r\n\r\n")
            .await
            .expect("send");
        let mut answer = Vec::new();
        tokio::time::timeout(std::time::Duration::from_secs(5), stream.read_to_end(&mut answer))
            .await
            .expect("the connection ends")
            .expect("a clean end, after close_notify");
        assert!(
            answer.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
    })
    .await;
}

#[tokio::test]
async fn a_changed_secret_reaches_new_handshakes_and_open_connections_keep_going() {
    with_namespace("e2e-tls-rotate", |ns| async move {
        let platform = Platform::start(&ns).await;
        platform.microservice(&ns, "web", 1, json!({})).await;
        let ca = TestCa::new();
        let first = ca.issue(&["web.example.com"]);
        create_secret(&ns, &first.secret("web-tls")).await;
        let port = free_port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        create_gateway_spec(
            &ns,
            "edge",
            json!({
                "listeners": [https("web", port, &["web.example.com"], "web-tls")],
                "routes": [{"name": "web", "backends": [{"microservice": "web"}]}],
            }),
        )
        .await;
        await_certificate(&ca, addr, "web.example.com", &first).await;
        let client = ca.http1_client();
        let mut open = microgate_test_support::tls::Session::start(
            client
                .connect(addr, "web.example.com")
                .await
                .expect("a handshake"),
        )
        .await
        .expect("HTTP");
        assert_eq!(
            open.send(Method::GET, "web.example.com", "/")
                .await
                .expect("an answer")
                .status,
            StatusCode::OK
        );

        let second = ca.issue(&["web.example.com"]);
        let changed = std::time::Instant::now();
        replace_secret(&ns, &second.secret("web-tls")).await;
        await_certificate(&ca, addr, "web.example.com", &second).await;
        eprintln!(
            "a rotated certificate reached new handshakes after {:?}",
            changed.elapsed()
        );
        // The connection opened before the change was neither dropped nor reset.
        assert_eq!(open.certificate, first.der);
        for _ in 0..3 {
            let answer = open
                .send(Method::GET, "web.example.com", "/")
                .await
                .expect("the old connection still serves");
            assert_eq!(answer.status, StatusCode::OK);
        }
    })
    .await;
}

#[tokio::test]
async fn an_invalid_or_deleted_secret_leaves_the_last_good_certificate_and_says_so() {
    with_namespace("e2e-tls-invalid", |ns| async move {
        let platform = Platform::start(&ns).await;
        platform.microservice(&ns, "web", 1, json!({})).await;
        let ca = TestCa::new();
        let good = ca.issue(&["web.example.com"]);
        create_secret(&ns, &good.secret("web-tls")).await;
        let port = free_port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        create_gateway_spec(
            &ns,
            "edge",
            json!({
                "listeners": [
                    https("web", port, &["web.example.com"], "web-tls"),
                    https("never", port, &["never.example.com"], "missing-tls"),
                ],
                "routes": [{"name": "web", "backends": [{"microservice": "web"}]}],
            }),
        )
        .await;
        await_certificate(&ca, addr, "web.example.com", &good).await;

        // A Secret that never held a certificate: not programmed, and its handshakes refused.
        let message = await_listener_condition(
            &ns,
            "edge",
            "never",
            "ResolvedRefs",
            "False",
            "InvalidCertificateRef",
        )
        .await;
        assert!(
            message.contains("missing-tls") && message.contains("does not exist"),
            "{message}"
        );
        await_listener_condition(&ns, "edge", "never", "Programmed", "False", "Invalid").await;
        assert!(
            ca.http1_client()
                .connect(addr, "never.example.com")
                .await
                .is_err()
        );

        let other = ca.issue(&["web.example.com"]);
        let expired = ca.issue_valid(&["web.example.com"], (2001, 1, 1), (2002, 1, 1));
        for (what, secret, expected) in [
            (
                "a key that is not the certificate's",
                tls_secret("web-tls", &good.cert_pem, &other.key_pem),
                "not the key of the certificate",
            ),
            (
                "bad PEM",
                tls_secret(
                    "web-tls",
                    "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
                    &good.key_pem,
                ),
                "not valid PEM",
            ),
            ("an expired certificate", expired.secret("web-tls"), "expired"),
        ] {
            replace_secret(&ns, &secret).await;
            let message = await_listener_message(
                &ns,
                "edge",
                "web",
                ("ResolvedRefs", "False", "InvalidCertificateRef"),
                expected,
            )
            .await;
            assert!(message.contains("/web-tls "), "{what}: {message}");
            let programmed =
                await_listener_condition(&ns, "edge", "web", "Programmed", "True", "Programmed").await;
            assert!(
                programmed.contains("last valid certificate"),
                "{what}: {programmed}"
            );
            let connected = ca
                .http1_client()
                .connect(addr, "web.example.com")
                .await
                .expect("still served");
            assert_eq!(
                connected.certificate, good.der,
                "{what}: the last good certificate stays"
            );
        }

        ns.api::<Secret>()
            .delete("web-tls", &DeleteParams::default())
            .await
            .expect("delete the Secret");
        await_listener_message(
            &ns,
            "edge",
            "web",
            ("ResolvedRefs", "False", "InvalidCertificateRef"),
            "web-tls does not exist",
        )
        .await;
        let connected = ca
            .http1_client()
            .connect(addr, "web.example.com")
            .await
            .expect("still served");
        assert_eq!(connected.certificate, good.der);
        let answer = ca
            .http1_client()
            .get(addr, "web.example.com", "/")
            .await
            .expect("an answer");
        assert_eq!(answer.status, StatusCode::OK);

        // Fixed again: resolved.
        create_secret(&ns, &good.secret("web-tls")).await;
        await_listener_condition(&ns, "edge", "web", "ResolvedRefs", "True", "ResolvedRefs").await;
        let gateway = ns.api::<Gateway>().get("edge").await.expect("the Gateway");
        assert_eq!(
            condition(&gateway, "Programmed").map(|c| c.0),
            Some("False".to_owned()),
            "the Gateway is not Programmed while one of its listeners is not"
        );
    })
    .await;
}

#[tokio::test]
async fn a_redirect_route_sends_plain_http_to_https() {
    with_namespace("e2e-tls-redirect", |ns| async move {
        let platform = Platform::start(&ns).await;
        let port = free_port();
        create_gateway_spec(
            &ns,
            "edge",
            json!({
                "listeners": [{"name": "http", "port": port}],
                "routes": [
                    {"name": "to-https", "redirect": {"scheme": "https"}},
                    {"name": "moved", "matches": [{"path": {"value": "/old"}}],
                        "redirect": {"hostname": "new.example.com", "port": 8443, "statusCode": 301}},
                ],
            }),
        )
        .await;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let answer = wait::until("the redirect", WAIT, || async {
            match probe::get(addr, "/shop/cart?item=3").await {
                Ok(answer) if answer.status == StatusCode::FOUND => Probe::Done(answer),
                Ok(answer) => Probe::NotYet(format!("{}", answer.status)),
                Err(error) => Probe::NotYet(error.to_string()),
            }
        })
        .await
        .expect("a redirect");
        // The probe names the listener's address as Host; the scheme changes, so its port goes.
        assert_eq!(answer.headers["location"], "https://127.0.0.1/shop/cart?item=3");
        let answer = probe::get(addr, "/old/page").await.expect("an answer");
        assert_eq!(answer.status, StatusCode::MOVED_PERMANENTLY);
        assert_eq!(answer.headers["location"], "http://new.example.com:8443/old/page");
        drop(platform);
    })
    .await;
}
