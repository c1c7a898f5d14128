//! HTTP/2 from hostile clients. h2spec's conformance cases run against an h2c listener; the known
//! attacks on HTTP/2 servers (Rapid Reset, MadeYouReset, CONTINUATION flood, HPACK bomb, SETTINGS
//! and PING floods) are played with raw frames against a `microgate gateway` process of their own
//! with one worker, so the attacker and the client that must keep being served meanwhile share
//! it. Each test asserts how the attack ends (a GOAWAY, or answers at a bounded cost) and prints
//! what it cost the gateway's process (CPU time, peak RSS) and the attacker's thread.

use std::{
    net::SocketAddr,
    process::Stdio,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::core::v1::Secret;
use kube::api::PostParams;
use microgate_test_support::{
    TestNamespace,
    backend::Backend,
    cluster,
    h2spec::{self, Target},
    h2wire::{Frame, Observed, RawClient, flag, hpack, reason, setting},
    probe,
    tls::TestCa,
    usage::{self, ProcessUsage},
    wait::{self, Probe},
    with_namespace,
};
use serde_json::json;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    process::Command,
    sync::watch,
};

use super::{Platform, free_port, gateway_process::wait_ready, pods_of};

/// Where the gateway processes of these tests listen (other tests use 127.0.0.1 to .3).
const LISTEN_ADDRESS: [u8; 4] = [127, 0, 0, 4];
/// How long an attacker waits for the server to close once it has sent everything.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn h2spec_passes_every_case_on_an_h2c_listener() {
    with_namespace("e2e-h2spec", |ns| async move {
        let platform = Platform::with_echo(&ns, 1, json!({})).await;
        let target = Target {
            host: platform.listener.ip().to_string(),
            port: platform.listener.port(),
            tls: false,
        };
        assert_h2spec_passes(&target, "h2c").await;
    })
    .await;
}

#[tokio::test]
async fn h2spec_passes_every_case_on_an_https_listener_with_alpn_h2() {
    with_namespace("e2e-h2spec-tls", |ns| async move {
        let platform = Platform::start(&ns).await;
        platform.microservice(&ns, "echo", 1, json!({})).await;
        let ca = TestCa::new();
        let cert = ca.issue(&["h2spec.example.com"]);
        ns.api::<Secret>()
            .create(&PostParams::default(), &cert.secret("h2spec-tls"))
            .await
            .expect("create the Secret");
        // No hostnames: h2spec connects by IP address and sends no server name.
        let port = free_port();
        crate::create_gateway_spec(
            &ns,
            "gw",
            json!({
                "listeners": [{"name": "https", "port": port, "protocol": "HTTPS",
                    "tls": {"certificateRefs": [{"name": "h2spec-tls"}]}}],
                "routes": [{"name": "all", "backends": [{"microservice": "echo"}]}],
            }),
        )
        .await;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let h2 = ca.client(&[b"h2"], rustls::DEFAULT_VERSIONS);
        wait::until("an HTTP/2 answer over TLS", Duration::from_secs(30), || async {
            match h2.get(addr, "h2spec.example.com", "/").await {
                Ok(answer) if answer.status == StatusCode::OK => Probe::Done(()),
                other => Probe::NotYet(format!("{other:?}")),
            }
        })
        .await
        .expect("the HTTPS listener serves HTTP/2");
        let target = Target {
            host: addr.ip().to_string(),
            port,
            tls: true,
        };
        assert_h2spec_passes(&target, "TLS (ALPN h2)").await;
    })
    .await;
}

/// Runs h2spec against `target` and asserts that every one of its cases passed.
async fn assert_h2spec_passes(target: &Target, what: &str) {
    let report = h2spec::run(target).await.expect("h2spec runs");
    let failing = report.not_passed();
    println!(
        "h2spec on {what}: {}/{} passed ({})",
        report.passed(),
        report.cases.len(),
        report.summary
    );
    assert!(
        failing.is_empty(),
        "h2spec on {what}: {} of {} cases did not pass:\n{}",
        failing.len(),
        report.cases.len(),
        failing.join("\n")
    );
    // h2spec 2.2.1 has 145 cases outside --strict (`h2spec --dryrun` lists them): a run that saw
    // fewer did not run them all.
    assert_eq!(report.cases.len(), 145, "h2spec on {what}: {}", report.summary);
}

#[tokio::test]
async fn a_client_that_never_finishes_the_http2_preface_is_cut_at_the_header_deadline() {
    with_namespace("e2e-h2-slow-preface", |ns| async move {
        let platform = Platform::with_echo(&ns, 1, json!({})).await;
        let mut stream = tokio::net::TcpStream::connect(platform.listener)
            .await
            .expect("connect");
        stream
            .write_all(b"PRI * HTTP/2.0\r\n")
            .await
            .expect("half a preface");
        // The header-read deadline is 10 s; the connection must be closed well before 30 s.
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut rest)).await;
        assert!(
            closed.is_ok(),
            "a connection that sent half a preface was still open after 30 s"
        );
        assert!(
            rest.is_empty() || rest.starts_with(b"HTTP/1.1 408"),
            "{:?}",
            String::from_utf8_lossy(&rest)
        );
    })
    .await;
}

/// A `microgate gateway` process with one worker, serving the Gateway of a platform whose one
/// route sends everything to a single Pod.
struct Gateway {
    // Holds the controller and the Pods.
    _platform: Platform,
    process: tokio::process::Child,
    pid: u32,
    addr: SocketAddr,
    backend: Backend,
}

impl Gateway {
    async fn start(ns: &TestNamespace) -> Self {
        let platform = Platform::with_echo(ns, 1, json!({})).await;
        let pod = pods_of(ns, "echo")
            .await
            .into_iter()
            .next()
            .expect("the echo Pod");
        let backend = ns.backend(&pod).expect("the echo Pod's backend");
        let admin = SocketAddr::from((LISTEN_ADDRESS, free_port()));
        let process = Command::new(env!("CARGO_BIN_EXE_microgate"))
            .args(["gateway", "--workers=1"])
            .arg(format!("--listen-address={}", admin.ip()))
            .arg(format!("--namespace={}", ns.name))
            .arg(format!("--admin-addr={admin}"))
            .env("KUBECONFIG", cluster::kubeconfig_path())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start microgate gateway");
        let pid = process.id().expect("the gateway process's pid");
        wait_ready(admin, Duration::from_millis(20)).await;
        let addr = SocketAddr::from((LISTEN_ADDRESS, platform.listener.port()));
        // Ready may come a moment before the Pod's endpoint is known: wait for the first 200.
        wait::until(
            "a plain HTTP/2 request answered 200",
            Duration::from_secs(30),
            || async {
                match h2_get(addr, "/warm-up").await {
                    Ok(StatusCode::OK) => Probe::Done(()),
                    other => Probe::NotYet(format!("{other:?}")),
                }
            },
        )
        .await
        .expect("the gateway process serves HTTP/2");
        Self {
            _platform: platform,
            process,
            pid,
            addr,
            backend,
        }
    }

    fn usage(&self) -> ProcessUsage {
        usage::process(self.pid).expect("the gateway process's /proc")
    }

    /// Runs `attack` on a thread of its own while another client keeps asking the gateway for a
    /// page; checks that client was served throughout and that a fresh HTTP/2 connection is
    /// served afterwards; prints the costs.
    async fn attack<F>(&self, name: &str, attack: F) -> Attacked
    where
        F: FnOnce(SocketAddr) -> Observed + Send + 'static,
    {
        let before = self.usage();
        let requests_before = self.backend.requests();
        let (stop, stopped) = watch::channel(false);
        let bystander = tokio::spawn(keep_asking(self.addr, stopped));
        let addr = self.addr;
        let (observed, attacker_cpu) = tokio::task::spawn_blocking(move || {
            // The blocking pool reuses its threads: count only this attack's time.
            let start = usage::thread_cpu().unwrap_or_default();
            let observed = attack(addr);
            let cpu = usage::thread_cpu().unwrap_or_default().saturating_sub(start) + observed.reader_cpu;
            (observed, cpu)
        })
        .await
        .expect("the attack's thread");
        let _ = stop.send(true);
        let (served, failures) = bystander.await.expect("the bystander");
        let after = self.usage();
        let reached_backend = self.backend.requests().saturating_sub(requests_before + served);
        let attacked = Attacked {
            observed,
            reached_backend,
            gateway_cpu: after.threads_cpu.saturating_sub(before.threads_cpu),
            attacker_cpu,
            peak_rss_growth_kib: after.peak_rss_kib.saturating_sub(before.peak_rss_kib),
        };
        println!(
            "{name}: goaway={:?} resets={:?} heads={} statuses={:?} acks(settings/ping)={}/{} frames={} bytes={} | \
             reached backend {} | gateway CPU {:?}, attacker CPU {:?}, gateway RSS {} KiB -> {} KiB (peak {} -> {} KiB, +{} KiB) | bystander served {served}",
            attacked
                .observed
                .goaway
                .as_ref()
                .map(|(last, code, debug)| (last, reason::name(*code), debug)),
            attacked
                .observed
                .resets
                .iter()
                .map(|(code, n)| (reason::name(*code), n))
                .collect::<Vec<_>>(),
            attacked.observed.response_heads,
            attacked.observed.statuses,
            attacked.observed.settings_acks,
            attacked.observed.ping_acks,
            attacked.observed.frames,
            attacked.observed.bytes,
            attacked.reached_backend,
            attacked.gateway_cpu,
            attacked.attacker_cpu,
            before.rss_kib,
            after.rss_kib,
            before.peak_rss_kib,
            after.peak_rss_kib,
            attacked.peak_rss_growth_kib,
        );
        assert!(
            failures.is_empty(),
            "{name}: another client went unserved meanwhile: {failures:?}"
        );
        assert!(served >= 1, "{name}: another client got no answer meanwhile");
        assert_eq!(
            h2_get(self.addr, "/after").await,
            Ok(StatusCode::OK),
            "{name}: a fresh HTTP/2 connection afterwards"
        );
        attacked
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.process.start_kill();
    }
}

/// What an attack got from the server and cost.
struct Attacked {
    observed: Observed,
    /// Requests the Pod received from the attacker (the bystander's are not counted).
    reached_backend: u64,
    /// CPU time of the gateway process's threads (the bystander's requests included).
    gateway_cpu: Duration,
    attacker_cpu: Duration,
    peak_rss_growth_kib: u64,
}

impl Attacked {
    fn goaway_code(&self) -> Option<u32> {
        self.observed.goaway.as_ref().map(|(_, code, _)| *code)
    }
}

/// GETs `addr` every 20 ms over HTTP/1.1 until `stop` turns true: how many were answered 200,
/// and what went wrong with the others.
async fn keep_asking(addr: SocketAddr, mut stop: watch::Receiver<bool>) -> (u64, Vec<String>) {
    let (mut served, mut failures) = (0, Vec::new());
    loop {
        match probe::get(addr, "/bystander").await {
            Ok(answer) if answer.status == StatusCode::OK => served += 1,
            Ok(answer) => failures.push(format!("{}: {}", answer.status, answer.body)),
            Err(error) => failures.push(error.to_string()),
        }
        if *stop.borrow() {
            return (served, failures);
        }
        let _ = tokio::time::timeout(Duration::from_millis(20), stop.changed()).await;
    }
}

/// One GET over a new HTTP/2 connection (prior knowledge), with hyper's client.
async fn h2_get(addr: SocketAddr, path: &str) -> Result<StatusCode, String> {
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        let request = Request::get(format!("http://{addr}{path}"))
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
        let status = response.status();
        response.into_body().collect().await.map_err(|e| e.to_string())?;
        Ok(status)
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .unwrap_or_else(|_| Err("no answer within 5 s".to_owned()))
}

/// A connection whose HPACK tables the server may not use (so every `:status` reads plainly).
fn connect(addr: SocketAddr) -> RawClient {
    RawClient::connect(
        addr,
        &[(setting::HEADER_TABLE_SIZE, 0), (setting::ENABLE_PUSH, 0)],
    )
    .expect("an HTTP/2 connection to the gateway")
}

/// How an attacker spreads its frames over writes.
#[derive(Clone, Copy, Debug)]
enum Pacing {
    /// The frames of this many streams in each write: the server reads them together.
    Streams(u32),
    /// Every frame its own write (TCP_NODELAY), so that the server may act on one before it
    /// reads the next.
    EachFrame,
    /// Every frame its own write, this long apart: the server has accepted a stream and
    /// started its request before the next frame comes.
    Paced(Duration),
}

/// Sends `frames(stream_id)` for streams 1, 3, 5, ..., at most `streams` of them, written as
/// `pacing` says, until the server sends a GOAWAY or closes; then waits for it to close.
fn per_stream(
    addr: SocketAddr,
    streams: u32,
    pacing: Pacing,
    frames: impl Fn(u32) -> Vec<Frame>,
) -> Observed {
    let mut client = connect(addr);
    let mut out = Vec::new();
    let mut sent = 0;
    while sent < streams {
        let observed = client.observed();
        if observed.goaway.is_some() || observed.closed {
            break;
        }
        let written = match pacing {
            Pacing::Streams(batch) => {
                out.clear();
                for _ in 0..batch.min(streams - sent) {
                    for frame in frames(1 + 2 * sent) {
                        frame.encode_into(&mut out);
                    }
                    sent += 1;
                }
                client.send(&out)
            }
            Pacing::EachFrame | Pacing::Paced(_) => {
                let frames = frames(1 + 2 * sent);
                sent += 1;
                frames.iter().try_for_each(|frame| {
                    if let Pacing::Paced(gap) = pacing {
                        std::thread::sleep(gap);
                    }
                    client.send(&frame.encode())
                })
            }
        };
        if written.is_err() {
            break;
        }
    }
    client.finish(CLOSE_WAIT)
}

/// HEADERS of a GET for `path`.
fn request(stream: u32, flags: u8, path: &str) -> Frame {
    Frame::headers(stream, flags, hpack::request("GET", path, "attack.example"))
}

#[tokio::test]
async fn rapid_reset_is_cut_before_the_backend_sees_100_requests() {
    with_namespace("e2e-h2-rapid-reset", |ns| async move {
        let gateway = Gateway::start(&ns).await;
        // 100 pairs per write: the server reads each stream's reset before it accepts it.
        // Each frame its own write: it may accept a stream, start its request, then read the reset.
        gateway.backend.delay(Duration::from_millis(500));
        for (streams, pacing) in [
            (100_000, Pacing::Streams(100)),
            (20_000, Pacing::EachFrame),
            (2_000, Pacing::Paced(Duration::from_millis(1))),
        ] {
            let name = format!("Rapid Reset (HEADERS + RST_STREAM x {streams}, {pacing:?})");
            let attacked = gateway
                .attack(&name, move |addr| {
                    per_stream(addr, streams, pacing, |stream| {
                        vec![
                            request(stream, flag::END_HEADERS | flag::END_STREAM, "/rapid-reset"),
                            Frame::rst_stream(stream, reason::CANCEL),
                        ]
                    })
                })
                .await;
            // A burst is met with h2's GOAWAY; paced resets by the gateway closing the connection.
            assert!(
                attacked.goaway_code() == Some(reason::ENHANCE_YOUR_CALM)
                    || attacked.observed.closed_by_server,
                "{name}: the connection was neither refused nor closed: {:?}",
                attacked.observed
            );
            assert!(
                attacked.reached_backend <= 100,
                "{name}: {} requests reached the backend",
                attacked.reached_backend
            );
        }
    })
    .await;
}

#[tokio::test]
async fn made_you_reset_is_cut_after_at_most_1024_resets_and_100_backend_requests() {
    with_namespace("e2e-h2-made-you-reset", |ns| async move {
        let gateway = Gateway::start(&ns).await;
        // Frames that are stream errors: the server must reset a stream it may have accepted
        // (its request on its way to the backend), freeing a concurrency slot.
        gateway.backend.delay(Duration::from_millis(500));
        for (streams, pacing) in [
            (10_000, Pacing::Streams(50)),
            (10_000, Pacing::EachFrame),
            (2_000, Pacing::Paced(Duration::from_millis(1))),
        ] {
            let name =
                format!("MadeYouReset (PRIORITY on itself / WINDOW_UPDATE overflow x {streams}, {pacing:?})");
            let attacked = gateway
                .attack(&name, move |addr| {
                    per_stream(addr, streams, pacing, |stream| {
                        let offender = if stream % 4 == 1 {
                            Frame::priority(stream, stream, 16)
                        } else {
                            Frame::window_update(stream, 0x7fff_ffff)
                        };
                        vec![
                            request(stream, flag::END_HEADERS | flag::END_STREAM, "/made-you-reset"),
                            offender,
                        ]
                    })
                })
                .await;
            // h2's GOAWAY, or the gateway closing a connection whose requests were mostly cut.
            assert!(
                attacked.goaway_code() == Some(reason::ENHANCE_YOUR_CALM)
                    || attacked.observed.closed_by_server,
                "{name}: the connection was neither refused nor closed: {:?}",
                attacked.observed
            );
            // REFUSED_STREAM answers streams past the concurrency limit; the others are the
            // server's own error resets, which h2 bounds.
            let refused = attacked
                .observed
                .resets
                .get(&reason::REFUSED_STREAM)
                .copied()
                .unwrap_or(0);
            let error_resets = attacked.observed.resets_total() - refused;
            assert!(
                error_resets <= 1024,
                "{name}: {error_resets} streams reset for errors before the GOAWAY"
            );
            assert!(
                attacked.reached_backend <= 100,
                "{name}: {} requests reached the backend",
                attacked.reached_backend
            );
        }
        // Frames RFC 9113 makes stream errors but h2 treats as connection errors: the first one
        // ends the connection.
        for (name, offender) in [
            ("WINDOW_UPDATE 0", Frame::window_update as fn(u32, u32) -> Frame),
            ("DATA after END_STREAM", |stream, _| {
                Frame::data(stream, 0, b"x".to_vec())
            }),
        ] {
            let attacked = gateway
                .attack(&format!("MadeYouReset ({name} x 10 000)"), move |addr| {
                    per_stream(addr, 10_000, Pacing::Streams(50), |stream| {
                        vec![
                            request(stream, flag::END_HEADERS | flag::END_STREAM, "/made-you-reset"),
                            offender(stream, 0),
                        ]
                    })
                })
                .await;
            assert_eq!(
                attacked.goaway_code(),
                Some(reason::PROTOCOL_ERROR),
                "{name}: {:?}",
                attacked.observed
            );
        }
    })
    .await;
}

#[tokio::test]
async fn a_continuation_flood_ends_in_goaway() {
    with_namespace("e2e-h2-continuation", |ns| async move {
        let gateway = Gateway::start(&ns).await;
        // Endless empty CONTINUATION frames: nothing to decode, only frames to count.
        let empty = gateway
            .attack("CONTINUATION flood (empty frames x 100 000)", |addr| {
                continuation_flood(addr, 100_000, Vec::new())
            })
            .await;
        assert_eq!(
            empty.goaway_code(),
            Some(reason::ENHANCE_YOUR_CALM),
            "{:?}",
            empty.observed
        );
        // Full frames of header fields: the decoded list outgrows the limit.
        let mut field = Vec::new();
        hpack::literal(&mut field, b"x-flood", &[b'a'; 100]);
        let fields = field.repeat(16 * 1024 / field.len());
        let full = gateway
            .attack(
                "CONTINUATION flood (16 KiB frames of fields x 10 000)",
                move |addr| continuation_flood(addr, 10_000, fields),
            )
            .await;
        assert!(
            matches!(
                full.goaway_code(),
                Some(reason::ENHANCE_YOUR_CALM | reason::COMPRESSION_ERROR)
            ),
            "{:?}",
            full.observed
        );
        assert!(
            full.reached_backend == 0 && empty.reached_backend == 0,
            "an unfinished head reached the backend"
        );
    })
    .await;
}

/// HEADERS without END_HEADERS, then up to `frames` CONTINUATION frames carrying `fragment`.
fn continuation_flood(addr: SocketAddr, frames: u32, fragment: Vec<u8>) -> Observed {
    let mut client = connect(addr);
    let mut out = Vec::new();
    request(1, flag::END_STREAM, "/continuation").encode_into(&mut out);
    let mut sent = 0;
    while sent < frames {
        let observed = client.observed();
        if observed.goaway.is_some() || observed.closed {
            break;
        }
        for _ in 0..100 {
            Frame::continuation(1, 0, fragment.clone()).encode_into(&mut out);
        }
        sent += 100;
        if client.send(&out).is_err() {
            break;
        }
        out.clear();
    }
    client.finish(CLOSE_WAIT)
}

#[tokio::test]
async fn an_hpack_bomb_is_refused_at_the_header_list_limit_for_little_memory() {
    with_namespace("e2e-h2-hpack-bomb", |ns| async move {
        let gateway = Gateway::start(&ns).await;
        // One 4000-byte field put in the dynamic table, then referenced by its one-byte index:
        // 20 references decode to 80 KB (over the 64 KiB limit), on each of 500 streams.
        let over_limit = gateway
            .attack("HPACK bomb (80 KB decoded per request x 500 streams)", |addr| {
                hpack_bomb(addr, 500, 20)
            })
            .await;
        assert_eq!(
            over_limit.observed.statuses.get("431"),
            Some(&500),
            "{:?}",
            over_limit.observed
        );
        assert_eq!(
            over_limit.reached_backend, 0,
            "an oversize head reached the backend"
        );
        // 10 000 references (40 MB decoded from 10 KB): the connection is cut.
        let bomb = gateway
            .attack("HPACK bomb (10 000 references, 40 MB decoded)", |addr| {
                hpack_bomb(addr, 1, 10_000)
            })
            .await;
        assert_eq!(
            bomb.goaway_code(),
            Some(reason::ENHANCE_YOUR_CALM),
            "{:?}",
            bomb.observed
        );
        for attacked in [&over_limit, &bomb] {
            assert!(
                attacked.peak_rss_growth_kib < 10 * 1024,
                "the gateway's peak RSS grew by {} KiB",
                attacked.peak_rss_growth_kib
            );
        }
    })
    .await;
}

/// On `streams` streams, a request whose head references a 4000-byte dynamic-table entry
/// `references` times; 50 streams at a time (under the concurrency limit), each batch answered
/// before the next is sent.
fn hpack_bomb(addr: SocketAddr, streams: u32, references: usize) -> Observed {
    let mut client = connect(addr);
    let mut out = Vec::new();
    let answered = |observed: &Observed| observed.response_heads + observed.resets_total();
    for i in 0..streams {
        let stream = 1 + 2 * i;
        let mut block = hpack::request("GET", "/hpack-bomb", "attack.example");
        if i == 0 {
            hpack::literal_indexed(&mut block, b"x-bomb", &[b'b'; 4000]);
        }
        for _ in 0..references {
            hpack::indexed(&mut block, 62);
        }
        let mut fragments = block.chunks(16 * 1024).peekable();
        let first = fragments.next().unwrap_or_default().to_vec();
        let end_headers = if fragments.peek().is_none() {
            flag::END_HEADERS
        } else {
            0
        };
        Frame::headers(stream, flag::END_STREAM | end_headers, first).encode_into(&mut out);
        while let Some(fragment) = fragments.next() {
            let end_headers = if fragments.peek().is_none() {
                flag::END_HEADERS
            } else {
                0
            };
            Frame::continuation(stream, end_headers, fragment.to_vec()).encode_into(&mut out);
        }
        if (i + 1) % 50 == 0 || i + 1 == streams {
            if client.send(&out).is_err() {
                break;
            }
            out.clear();
            // Every stream of the batch answered, or the connection ended.
            let deadline = Instant::now() + CLOSE_WAIT;
            loop {
                let observed = client.observed();
                if observed.goaway.is_some() || observed.closed || answered(&observed) > u64::from(i) {
                    break;
                }
                if Instant::now() > deadline {
                    return client.finish(Duration::ZERO);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
    client.finish(Duration::ZERO)
}

#[tokio::test]
async fn settings_and_ping_floods_cost_a_bounded_amount() {
    with_namespace("e2e-h2-floods", |ns| async move {
        let gateway = Gateway::start(&ns).await;
        const FRAMES: u64 = 200_000;
        let settings = gateway
            .attack("SETTINGS flood (200 000 frames, read)", |addr| {
                flood(addr, FRAMES, Frame::settings(&[(setting::INITIAL_WINDOW_SIZE, 65_535)]))
            })
            .await;
        let pings = gateway
            .attack("PING flood (200 000 frames, read)", |addr| flood(addr, FRAMES, Frame::ping(*b"flooding")))
            .await;
        // Either every frame was answered, or the server gave up on the connection.
        assert!(
            settings.observed.settings_acks >= FRAMES || settings.goaway_code().is_some(),
            "{:?}",
            settings.observed
        );
        assert!(pings.observed.ping_acks >= FRAMES || pings.goaway_code().is_some(), "{:?}", pings.observed);
        // A client that never reads what it asked for: the server stops reading rather than
        // queueing answers, so the attacker's writes stall.
        let unread = gateway
            .attack("PING flood (never read)", |addr| {
                let mut client = RawClient::connect_without_reading(addr, &[]).expect("a connection");
                let (written, stalled) = client.write_until_stalled(&Frame::ping(*b"unreadpg").encode(), 64 * 1024 * 1024);
                println!("PING flood (never read): {written} bytes written before the server stopped reading: {stalled}");
                assert!(stalled, "the server read {written} bytes of PINGs whose answers nobody read");
                client.finish(Duration::ZERO)
            })
            .await;
        for attacked in [&settings, &pings, &unread] {
            assert!(attacked.peak_rss_growth_kib < 16 * 1024, "the gateway's peak RSS grew by {} KiB", attacked.peak_rss_growth_kib);
        }
    })
    .await;
}

/// Sends `count` copies of `frame` on one connection, whose answers a thread reads meanwhile.
fn flood(addr: SocketAddr, count: u64, frame: Frame) -> Observed {
    let mut client = connect(addr);
    let batch: Vec<u8> = (0..1000).flat_map(|_| frame.encode()).collect();
    let mut sent = 0;
    while sent < count {
        if client.send(&batch).is_err() {
            break;
        }
        sent += 1000;
    }
    // Wait for the answers to arrive.
    let deadline = Instant::now() + CLOSE_WAIT;
    while Instant::now() < deadline {
        let observed = client.observed();
        if observed.closed || observed.settings_acks >= sent || observed.ping_acks >= sent {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    client.finish(Duration::ZERO)
}
