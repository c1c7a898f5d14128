//! Hostile HTTP/1.1 on both sides of the gateway, through its real listener to a Pod whose
//! backend is the strict recording backend (`tests/support/src/hostile`).
//!
//! Requests: every case of `tests/hostile/requests.corpus` gets the verdict its expectation
//! allows (refused, or forwarded cleanly), and none is lenient: no desync, no header that must
//! have been dropped, no framing the backend had to guess. Answers: an endpoint that breaks
//! HTTP/1.1 gets the client a 502 that says why, and its connection is never used again.

use std::{collections::BTreeMap, time::Duration};

use microgate_test_support::{
    hostile::{
        self, Verdict,
        client::{converse, read_answers},
        recorder::{Answer, Event, Recorder},
    },
    kubelet::RECORDER_IMAGE,
    with_namespace,
};
use serde_json::json;

use super::{Platform, TestNamespace, pods_of};

/// A gateway whose one route sends everything to one Pod served by a recording backend.
async fn platform_with_recorder(ns: &TestNamespace) -> (Platform, Recorder) {
    let platform = Platform::start(ns).await;
    platform
        .microservice_with(ns, "recorder", json!({"image": RECORDER_IMAGE, "replicas": 1}))
        .await;
    platform
        .gateway(
            ns,
            json!([{"name": "all", "backends": [{"microservice": "recorder"}]}]),
        )
        .await;
    let pod = &pods_of(ns, "recorder").await[0];
    let recorder = ns
        .kubelet
        .recorder(&ns.name, pod)
        .expect("the recorder Pod runs a recording backend");
    (platform, recorder)
}

#[tokio::test]
async fn hostile_requests_get_the_strict_verdict() {
    with_namespace("e2e-hostile-requests", |ns| async move {
        let (platform, recorder) = platform_with_recorder(&ns).await;
        let cases = hostile::corpus::cases().expect("the corpus reads");
        assert!(cases.len() >= 150, "{} cases", cases.len());
        let mut counts: BTreeMap<(String, Verdict), usize> = BTreeMap::new();
        let mut wrong = Vec::new();
        for (index, case) in cases.iter().enumerate() {
            let outcome = hostile::run_case(platform.listener, &recorder, index, case)
                .await
                .expect("the gateway accepts connections");
            *counts.entry((case.class.clone(), outcome.verdict)).or_default() += 1;
            if !outcome.verdict.meets(case.expect) {
                wrong.push(format!(
                    "{} ({}, expected {}): {} — {}",
                    case.id, case.class, case.expect, outcome.verdict, outcome.detail
                ));
            }
        }
        let mut table = String::new();
        for ((class, verdict), n) in &counts {
            table.push_str(&format!("{class}: {verdict} {n}\n"));
        }
        println!("verdicts per class:\n{table}");
        let lenient: usize = counts
            .iter()
            .filter(|((_, v), _)| v.is_lenient())
            .map(|(_, n)| n)
            .sum();
        assert!(
            wrong.is_empty(),
            "{} of {} cases got a verdict their expectation does not allow ({lenient} lenient):\n{}",
            wrong.len(),
            cases.len(),
            wrong.join("\n")
        );
        assert_eq!(lenient, 0);
    })
    .await;
}

/// An answer an endpoint must not get through, and why.
struct BadAnswer {
    what: &'static str,
    answer: Answer,
}

fn raw(what: &'static str, bytes: &[u8]) -> BadAnswer {
    BadAnswer {
        what,
        answer: Answer::Raw {
            bytes: bytes.to_vec(),
            close: false,
        },
    }
}

fn bad_answers() -> Vec<BadAnswer> {
    let mut big = b"HTTP/1.1 200 OK\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 70 * 1024));
    big.extend_from_slice(b"\r\nContent-Length: 2\r\n\r\nok");
    vec![
        raw(
            "Content-Length and Transfer-Encoding",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
        raw(
            "Transfer-Encoding and Content-Length",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
        raw(
            "two different Content-Lengths",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        ),
        raw("a signed Content-Length", b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello"),
        raw(
            "Content-Length named by Connection",
            b"HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: x\r\n\r\nhello",
        ),
        raw(
            "a coding other than chunked",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
        raw(
            "chunks from an HTTP/1.0 endpoint",
            b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
        raw(
            "a bad chunk size",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        ),
        raw(
            "a chunk size with a sign",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n+5\r\nhello\r\n0\r\n\r\n",
        ),
        raw(
            "a LF in a chunk extension",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;a\nb\r\nhello\r\n0\r\n\r\n",
        ),
        raw(
            "a CR in a header value",
            b"HTTP/1.1 200 OK\r\nX-A: a\rSet-Cookie: evil\r\nContent-Length: 2\r\n\r\nok",
        ),
        raw(
            "a LF in a header value",
            b"HTTP/1.1 200 OK\r\nX-A: a\nSet-Cookie: evil\r\nContent-Length: 2\r\n\r\nok",
        ),
        raw(
            "a NUL in a header value",
            b"HTTP/1.1 200 OK\r\nX-A: a\0b\r\nContent-Length: 2\r\n\r\nok",
        ),
        raw(
            "obs-fold",
            b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 2\r\n\r\nok",
        ),
        raw(
            "whitespace before a colon",
            b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nok",
        ),
        raw("an oversize head", &big),
        BadAnswer {
            what: "an endless stream of 1xx",
            answer: Answer::Endless(b"HTTP/1.1 100 Continue\r\n\r\n".to_vec()),
        },
        BadAnswer {
            what: "HTTP/0.9 (a body without a head)",
            answer: Answer::Raw {
                bytes: b"<html>hello</html>\r\n".to_vec(),
                close: true,
            },
        },
        raw("an unknown version", b"HTTP/2.0 200 OK\r\nContent-Length: 2\r\n\r\nok"),
        raw(
            "an unrequested protocol switch",
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n",
        ),
    ]
}

/// The connection of the only request among `events`.
fn connection_of(events: &[Event], what: &str) -> usize {
    let requests: Vec<&Event> = events
        .iter()
        .filter(|e| matches!(e, Event::Request { .. }))
        .collect();
    assert_eq!(
        requests.len(),
        1,
        "{what}: one request reached the endpoint: {events:?}"
    );
    requests[0].connection()
}

#[tokio::test]
async fn an_upstream_that_breaks_http_gets_the_client_a_502_and_loses_its_connection() {
    with_namespace("e2e-hostile-answers", |ns| async move {
        let (platform, recorder) = platform_with_recorder(&ns).await;
        let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: h\r\n\r\n").into_bytes();
        let silence = Duration::from_secs(5);
        for (n, bad) in bad_answers().into_iter().enumerate() {
            recorder
                .settle(Duration::from_millis(20), Duration::from_secs(2))
                .await;
            recorder.take_events();
            recorder.answer_with(bad.answer);
            let talk = converse(platform.listener, &get(&format!("/bad/{n}")), silence, |a| {
                !a.is_empty()
            })
            .await
            .expect("the gateway accepts connections");
            let answer = talk.answers.first().unwrap_or_else(|| {
                panic!(
                    "{}: no answer, got {:?}",
                    bad.what,
                    String::from_utf8_lossy(&talk.raw)
                )
            });
            assert_eq!(answer.status, 502, "{}: {answer:?}", bad.what);
            assert_eq!(answer.reason.as_deref(), Some("upstream-invalid"), "{}", bad.what);
            recorder
                .settle(Duration::from_millis(20), Duration::from_secs(2))
                .await;
            let bad_connection = connection_of(&recorder.take_events(), bad.what);

            // The next request goes over another connection: the broken one is never reused.
            recorder.answer_with(Answer::Recorded);
            let talk = converse(platform.listener, &get(&format!("/after/{n}")), silence, |a| {
                !a.is_empty()
            })
            .await
            .expect("the gateway accepts connections");
            assert_eq!(
                talk.answers.first().map(|a| a.status),
                Some(200),
                "after {}: {:?}",
                bad.what,
                String::from_utf8_lossy(&talk.raw)
            );
            recorder
                .settle(Duration::from_millis(20), Duration::from_secs(2))
                .await;
            let next_connection = connection_of(&recorder.take_events(), bad.what);
            assert_ne!(
                next_connection, bad_connection,
                "after {}, the endpoint's connection was used again",
                bad.what
            );
        }

        // A chunk that breaks after the answer has begun cannot become a 502: the client's
        // answer is cut short (no last chunk) and its connection closed, and the endpoint's
        // connection is dropped all the same.
        recorder.take_events();
        recorder.answer_with(Answer::Raw {
            bytes:
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nmore\r\n0\r\n\r\n"
                    .to_vec(),
            close: false,
        });
        let talk = converse(platform.listener, &get("/mid-body"), silence, |_| false)
            .await
            .expect("the gateway accepts connections");
        let (answers, _) = read_answers(&talk.raw);
        assert!(
            answers.is_empty() && talk.closed,
            "a body broken midway is not passed off as whole: {:?}",
            String::from_utf8_lossy(&talk.raw)
        );
        recorder
            .settle(Duration::from_millis(20), Duration::from_secs(2))
            .await;
        let bad_connection = connection_of(&recorder.take_events(), "a chunk broken midway");
        recorder.answer_with(Answer::Recorded);
        let talk = converse(platform.listener, &get("/after-mid-body"), silence, |a| {
            !a.is_empty()
        })
        .await
        .expect("the gateway accepts connections");
        assert_eq!(talk.answers.first().map(|a| a.status), Some(200));
        recorder
            .settle(Duration::from_millis(20), Duration::from_secs(2))
            .await;
        assert_ne!(
            connection_of(&recorder.take_events(), "after a chunk broken midway"),
            bad_connection
        );
    })
    .await;
}
