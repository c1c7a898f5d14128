//! One path, one meaning: a corpus of hostile paths against two routes, an exact `/admin` to one
//! Microservice and `/` to another. Each request must reach the `/admin` service with the
//! normalized path, or be refused, or be redirected; none may reach the other service with a
//! path that a lenient server would take for `/admin`.

use std::{collections::BTreeMap, net::SocketAddr};

use microgate_test_support::{
    backend::{POD_NAME_HEADER, SEEN_PATH_HEADER},
    hostile::paths::{self, PATHS as CORPUS, expand, lenient},
    with_namespace,
};
use serde_json::json;

use crate::Platform;

/// Sends `GET target` raw and returns the status, and the header fields, of the answer.
async fn get_raw(addr: SocketAddr, target: &str) -> (u16, BTreeMap<String, String>) {
    let answer = paths::get_raw(addr, target)
        .await
        .expect("an exchange with the gateway");
    (answer.status, answer.headers)
}

#[tokio::test]
async fn hostile_paths_never_reach_another_service_as_admin() {
    with_namespace("e2e-paths", |ns| async move {
        let platform = Platform::start(&ns).await;
        platform.microservice(&ns, "admin", 1, json!({})).await;
        platform.microservice(&ns, "other", 1, json!({})).await;
        platform
            .gateway(
                &ns,
                json!([
                    {"name": "admin", "matches": [{"path": {"type": "Exact", "value": "/admin"}}],
                        "backends": [{"microservice": "admin"}]},
                    {"name": "rest", "backends": [{"microservice": "other"}]},
                ]),
            )
            .await;
        assert!(CORPUS.len() >= 60, "the corpus has {} paths", CORPUS.len());
        let mut verdicts: BTreeMap<&str, usize> = BTreeMap::new();
        let mut failures = Vec::new();
        for &case in CORPUS {
            let target = expand(case);
            let (status, headers) = get_raw(platform.listener, &target).await;
            let pod = headers.get(POD_NAME_HEADER).map(String::as_str).unwrap_or("");
            let seen = headers.get(SEEN_PATH_HEADER).map(String::as_str).unwrap_or("");
            let means_admin = lenient(&target) == "/admin";
            let verdict = match status {
                400..=499 => "refused",
                300..=399 => "redirected",
                200 if pod.starts_with("admin-") => {
                    if seen.split('?').next() != Some("/admin") {
                        failures.push(format!("{case}: reached admin as {seen:?}"));
                    }
                    "admin, normalized"
                }
                200 if pod.starts_with("other-") => {
                    if means_admin {
                        failures.push(format!("{case}: reached the other service as {seen:?}"));
                    }
                    // What the other service received is normal: normalizing it again changes nothing.
                    if lenient(seen) != lenient(&target) && !seen.contains('%') {
                        failures.push(format!("{case}: the other service saw {seen:?}"));
                    }
                    "other, not admin"
                }
                _ => {
                    failures.push(format!("{case}: answered {status} {headers:?}"));
                    "unexpected"
                }
            };
            eprintln!(
                "{verdict:>18}  {status}  {}  {case}",
                headers.get("x-microgate-reason").map_or("", String::as_str)
            );
            *verdicts.entry(verdict).or_default() += 1;
        }
        eprintln!("verdicts over {} paths: {verdicts:?}", CORPUS.len());

        // An absolute-form target whose authority is not the Host: refused, whichever names /admin.
        let (status, headers) = get_raw(platform.listener, "http://admin.internal/admin").await;
        assert_eq!(status, 400, "{headers:?}");
        assert_eq!(
            headers.get("x-microgate-reason").map(String::as_str),
            Some("host-mismatch")
        );
        let (status, headers) = get_raw(platform.listener, "http://shop/x/../admin").await;
        assert_eq!(
            status, 200,
            "an absolute-form target naming the Host's host: {headers:?}"
        );
        assert!(headers[POD_NAME_HEADER].starts_with("admin-"), "{headers:?}");
        assert!(failures.is_empty(), "{failures:#?}");
        assert!(
            verdicts.get("admin, normalized").copied().unwrap_or(0) >= 5,
            "{verdicts:?}"
        );
        assert!(
            verdicts.get("refused").copied().unwrap_or(0) >= 20,
            "{verdicts:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn a_listener_may_keep_ambiguous_forms_and_redirect_to_normalized_paths() {
    with_namespace("e2e-path-policy", |ns| async move {
        let platform = Platform::start(&ns).await;
        platform.microservice(&ns, "web", 1, json!({})).await;
        crate::create_gateway_spec(
            &ns,
            "gw",
            json!({
                "listeners": [{"name": "http", "port": platform.listener.port(), "pathNormalization": {
                    "escapedSlashes": "Keep", "pathParameters": "Keep", "changedPath": "Redirect"}}],
                "routes": [{"name": "all", "backends": [{"microservice": "web"}]}],
            }),
        )
        .await;
        microgate_test_support::wait::until("the gateway to route", crate::WAIT, || async {
            match microgate_test_support::probe::get(platform.listener, "/ready").await {
                Ok(answer) if answer.status == 200 => microgate_test_support::wait::Probe::Done(()),
                Ok(answer) => microgate_test_support::wait::Probe::NotYet(answer.status.to_string()),
                Err(error) => microgate_test_support::wait::Probe::NotYet(error.to_string()),
            }
        })
        .await
        .expect("the gateway routes");

        // Kept: an encoded slash passes escaped, a path parameter stays in its segment.
        let (status, headers) = get_raw(platform.listener, "/files/a%2Fb;v=1").await;
        assert_eq!(status, 200, "{headers:?}");
        assert_eq!(headers[SEEN_PATH_HEADER], "/files/a%2Fb;v=1");
        // Changed: the client is sent to the normal form instead.
        let (status, headers) = get_raw(platform.listener, "//files/./x/../%61?q=1").await;
        assert_eq!(status, 308, "{headers:?}");
        assert_eq!(headers["location"], "/files/a?q=1");
        // Still refused whatever the listener says: a climb above the root.
        let (status, headers) = get_raw(platform.listener, "/../etc").await;
        assert_eq!(status, 400, "{headers:?}");
    })
    .await;
}
