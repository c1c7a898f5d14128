//! The echo-basic emulation against the real echo-basic, built from the pinned Gateway API
//! module: both get the same requests (the kinds the conformance suite sends through a gateway,
//! plus the edges of net/http that a gateway may provoke) and must answer with the same bytes,
//! apart from the `Date` header. Their logs must say the same, apart from client ports.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr},
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use microgate_test_support::{
    echo_basic::{EchoConfig, PodLog, RunningEcho},
    gwapi_conformance,
    tls::{ServerCert, TestCa},
};
use rustls::{
    ClientConfig,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject},
};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
    process::{Child, Command},
};
use tokio_rustls::TlsConnector;

const HOST: &str = "echo.example";

/// The real program and the emulation, each on its own ports of 127.0.0.1.
struct Pair {
    real: [SocketAddr; 3],
    emulated: [SocketAddr; 3],
    real_log: Arc<Mutex<Vec<String>>>,
    emulated_log: Arc<PodLog>,
    ca: TestCa,
    _real: Child,
    _emulated: RunningEcho,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

async fn start() -> Pair {
    let binaries = gwapi_conformance::build()
        .await
        .unwrap_or_else(|e| panic!("the real echo-basic is needed for the comparison: {e}"));
    let ca = TestCa::new();
    let cert = ca.issue(&[HOST]);
    let dir = TempDir(std::env::temp_dir().join(format!("microgate-echo-basic-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).expect("a temporary folder");
    let (cert_path, key_path, ca_path) = (dir.0.join("crt"), dir.0.join("key"), dir.0.join("ca"));
    std::fs::write(&cert_path, &cert.cert_pem).expect("write the certificate");
    std::fs::write(&key_path, &cert.key_pem).expect("write the key");
    std::fs::write(&ca_path, ca.cert_pem()).expect("write the CA");

    let ports = [free_port(), free_port(), free_port()];
    let mut env: HashMap<String, String> = [
        ("POD_NAME", "infra-backend-v1-6d4b9c7f5-x2x8q"),
        ("NAMESPACE", "gateway-conformance-infra"),
        ("TLS_SERVER_CERT", cert_path.to_str().unwrap_or_default()),
        ("TLS_SERVER_PRIVKEY", key_path.to_str().unwrap_or_default()),
        ("TLS_CLIENT_CACERTS", ca_path.to_str().unwrap_or_default()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    env.insert("HTTP_PORT".into(), ports[0].to_string());
    env.insert("H2C_PORT".into(), ports[1].to_string());
    env.insert("HTTPS_PORT".into(), ports[2].to_string());

    let mut real = Command::new(&binaries.echo_basic)
        .env_clear()
        .envs(&env)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start the real echo-basic");
    let real_log = Arc::new(Mutex::new(Vec::new()));
    let stdout = real.stdout.take().expect("echo-basic's stdout");
    let sink = real_log.clone();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            sink.lock().expect("log lock").push(line);
        }
    });

    // The emulation reads the same environment; only its ports differ.
    let config = EchoConfig::from_env(&env, |path| std::fs::read(path).ok()).expect("a valid configuration");
    let emulated_log = Arc::new(PodLog::default());
    let mut listeners = Vec::new();
    for _ in 0..3 {
        listeners.push(
            tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .await
                .expect("bind a loopback port"),
        );
    }
    let emulated = RunningEcho::serve(listeners, config, emulated_log.clone()).expect("start the emulation");
    let emulated_addrs: [SocketAddr; 3] = emulated.addrs().try_into().expect("three listeners");
    let real_addrs = ports.map(|p| SocketAddr::from((Ipv4Addr::LOCALHOST, p)));
    for addr in real_addrs {
        let mut tries = 0;
        while TcpStream::connect(addr).await.is_err() {
            tries += 1;
            assert!(tries < 200, "the real echo-basic never listened on {addr}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
    Pair {
        real: real_addrs,
        emulated: emulated_addrs,
        real_log,
        emulated_log,
        ca,
        _real: real,
        _emulated: emulated,
        _dir: dir,
    }
}

/// How an exchange ended, with the volatile parts (the Date value) masked.
#[derive(Debug, PartialEq, Eq)]
enum Exchange {
    Answer(String),
    Reset(String),
}

fn mask_date(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    // Split on \n only: the \r of each line is part of what is compared.
    text.split('\n')
        .map(|line| {
            if line.starts_with("Date: ") {
                "Date: <date>\r"
            } else {
                line
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Sends raw bytes, reads until the server closes (or resets) the connection.
async fn raw<S>(mut stream: S, request: &[u8]) -> Exchange
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    stream.write_all(request).await.expect("send the request");
    let mut answer = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk)).await {
            Ok(Ok(0)) => return Exchange::Answer(mask_date(&answer)),
            Ok(Ok(n)) => answer.extend_from_slice(&chunk[..n]),
            Ok(Err(error)) if error.kind() == std::io::ErrorKind::ConnectionReset => {
                return Exchange::Reset(mask_date(&answer));
            }
            Ok(Err(error)) => {
                return Exchange::Answer(format!("{}<error {:?}>", mask_date(&answer), error.kind()));
            }
            Err(_) => return Exchange::Answer(format!("{}<no end within 5 s>", mask_date(&answer))),
        }
    }
}

async fn plain(addr: SocketAddr, request: &[u8]) -> Exchange {
    raw(TcpStream::connect(addr).await.expect("connect"), request).await
}

fn tls_connector(ca: &TestCa, alpn: &[u8]) -> TlsConnector {
    tls_connector_with(ca, alpn, None)
}

/// A client that presents `client` (a certificate of the test CA) when asked.
fn tls_connector_with(ca: &TestCa, alpn: &[u8], client: Option<&ServerCert>) -> TlsConnector {
    // One cipher suite, so that both servers must pick the same one.
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .retain(|s| s.suite() == rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    let builder = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(ca.roots());
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some(cert) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from(cert.der.clone())],
                PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).expect("the client key"),
            )
            .expect("a client certificate"),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    TlsConnector::from(Arc::new(config))
}

async fn over_tls(ca: &TestCa, client: Option<&ServerCert>, addr: SocketAddr, request: &[u8]) -> Exchange {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from(HOST).expect("a server name");
    let stream = tls_connector_with(ca, b"http/1.1", client)
        .connect(name, stream)
        .await
        .expect("a TLS handshake");
    raw(stream, request).await
}

/// Status, every header but `date` in the order sent, and the body, over h2 (h2c or TLS).
async fn h2<S>(stream: S, method: &str, path: &str, headers: &[(&str, &str)], scheme: &str) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("an h2 handshake");
    tokio::spawn(connection);
    let mut request = Request::builder()
        .method(method)
        .uri(format!("{scheme}://{HOST}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Empty::<Bytes>::new()).expect("a request");
    match sender.send_request(request).await {
        Ok(response) => {
            let mut out = format!("{}\n", response.status());
            for (name, value) in response.headers() {
                if name != "date" {
                    out.push_str(&format!(
                        "{name}: {}\n",
                        String::from_utf8_lossy(value.as_bytes())
                    ));
                }
            }
            let body = response.into_body().collect().await.map(|b| b.to_bytes());
            match body {
                Ok(body) => out.push_str(&String::from_utf8_lossy(&body)),
                Err(error) => out.push_str(&format!("<body error {error}>")),
            }
            out
        }
        Err(error) => format!(
            "<stream error {}>",
            error.is_canceled() || error.to_string().contains("reset")
        ),
    }
}

/// An HTTP/2 case: name, method, path, headers.
type H2Case = (
    &'static str,
    &'static str,
    &'static str,
    Vec<(&'static str, &'static str)>,
);

/// The requests to the HTTP port, as a gateway forwards what the suite sends.
fn http_requests() -> Vec<(&'static str, Vec<u8>)> {
    let suite_like = |path: &str, extra: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: {HOST}\r\nUser-Agent: Go-http-client/1.1\r\nX-Echo-Set-Header: \r\n{extra}Accept-Encoding: gzip\r\nConnection: close\r\n\r\n"
        )
        .into_bytes()
    };
    let long_header = format!("X-Long: {}\r\n", "v".repeat(2100));
    vec![
        ("plain GET", suite_like("/", "")),
        ("path and query kept raw", suite_like("/foo/bar?b=2&a=1&a=%20x", "")),
        (
            "repeated and odd headers",
            suite_like(
                "/headers",
                "x-multi: a\r\nX-MULTI: b\r\nX-Html: <a href=\"x\">&amp;</a>\r\nX_Underscore: u\r\nX-Empty:\r\n",
            ),
        ),
        (
            "response headers from X-Echo-Set-Header",
            suite_like("/set", "X-Echo-Set-Header: X-Foo: bar, x-lower:baz,X-Foo:again\r\n"),
        ),
        (
            "header values with obs-text, tabs and padding",
            [
                suite_like("/bytes", "X-Bytes: caf\u{e9} \r\nX-Tab: a\tb  \r\n").as_slice(),
            ]
            .concat()
            .replacen("caf\u{e9}".as_bytes(), b"caf\xe9", 1),
        ),
        ("set header overriding Content-Type", suite_like("/", "X-Echo-Set-Header: Content-Type:text/html\r\n")),
        ("status 404", suite_like("/status/404", "")),
        ("status 204", suite_like("/status/204", "")),
        ("status 599", suite_like("/status/599", "")),
        ("status with query", suite_like("/status/500?x=1", "")),
        ("status not a number", suite_like("/status/abc", "")),
        ("health", suite_like("/health", "")),
        ("delay", suite_like("/?delay=20ms", "")),
        ("bad delay", suite_like("/?delay=soon", "")),
        ("retry without uuid", suite_like("/retry/?succeedAfter=1", "")),
        ("retry without succeedAfter", suite_like("/retry/?uuid=a", "")),
        ("retry with status, first", suite_like("/retry/?uuid=s1&succeedAfter=1&responseCode=503", "")),
        ("retry with status, second", suite_like("/retry/?uuid=s1&succeedAfter=1&responseCode=503", "")),
        ("retry with reset, first", suite_like("/retry/?uuid=r1&succeedAfter=1", "")),
        ("retry with reset, second", suite_like("/retry/?uuid=r1&succeedAfter=1", "")),
        ("a body over 2048 bytes is chunked", suite_like("/big", &long_header)),
        ("HEAD", b"HEAD / HTTP/1.1\r\nHost: echo.example\r\nConnection: close\r\n\r\n".to_vec()),
        ("HTTP/1.0 without Host", b"GET /old HTTP/1.0\r\nUser-Agent: old\r\n\r\n".to_vec()),
        ("HTTP/1.1 without Host", b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n".to_vec()),
        (
            "two requests on one connection",
            [suite_like("/first", "").as_slice(), suite_like("/second", "").as_slice()]
                .concat()
                .replacen(b"Connection: close\r\n", b"", 1),
        ),
        (
            "POST with a body",
            b"POST /post HTTP/1.1\r\nHost: echo.example\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello".to_vec(),
        ),
        (
            "chunked request body",
            b"POST /chunked HTTP/1.1\r\nHost: echo.example\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec(),
        ),
        ("absolute-form target", suite_like("http://other.example/abs?q=1", "")),
        ("unclean path is redirected", suite_like("/a/../b", "")),
        ("subtree root is redirected", suite_like("/status", "")),
        ("double slashes are kept", suite_like("//double//slash/", "")),
        ("escaped path", suite_like("/with%20space/%41", "")),
        ("health is exact", suite_like("/health/", "")),
        (
            "websocket without Origin",
            b"GET /ws HTTP/1.1\r\nHost: echo.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".to_vec(),
        ),
        (
            "websocket with a bad version",
            b"GET /ws HTTP/1.1\r\nHost: echo.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\nOrigin: http://echo.example\r\n\r\n".to_vec(),
        ),
        (
            "websocket echo",
            [
                b"GET /ws HTTP/1.1\r\nHost: echo.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nOrigin: http://echo.example/\r\n\r\n".as_slice(),
                // A masked text frame "hello", a masked binary frame, a ping, then a close.
                &masked(0x1, b"hello"),
                &masked(0x2, b"\x00\x01binary"),
                &masked(0x9, b"ping"),
                &masked(0x8, &1000u16.to_be_bytes()),
            ]
            .concat(),
        ),
    ]
}

trait ReplaceN {
    fn replacen(&self, from: &[u8], to: &[u8], count: usize) -> Vec<u8>;
}

impl ReplaceN for Vec<u8> {
    fn replacen(&self, from: &[u8], to: &[u8], count: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut done = 0;
        let mut i = 0;
        while i < self.len() {
            if done < count && self[i..].starts_with(from) {
                out.extend_from_slice(to);
                i += from.len();
                done += 1;
            } else {
                out.push(self[i]);
                i += 1;
            }
        }
        out
    }
}

fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let key = [0x12, 0x34, 0x56, 0x78];
    let mut frame = vec![
        0x80 | opcode,
        0x80 | u8::try_from(payload.len()).expect("a short payload"),
    ];
    frame.extend_from_slice(&key);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    frame
}

fn differences(cases: &[(String, Exchange, Exchange)]) -> Vec<String> {
    cases
        .iter()
        .filter(|(_, real, emulated)| real != emulated)
        .map(|(name, real, emulated)| format!("{name}:\n  echo-basic: {real:?}\n  emulation:  {emulated:?}"))
        .collect()
}

#[tokio::test]
async fn emulation_answers_as_the_real_echo_basic_does() {
    let pair = start().await;
    let mut cases = Vec::new();

    for (name, request) in http_requests() {
        let real = plain(pair.real[0], &request).await;
        let emulated = plain(pair.emulated[0], &request).await;
        cases.push((format!("http: {name}"), real, emulated));
    }

    let h2c_port_requests: Vec<(&str, Vec<u8>)> = vec![
        (
            "HTTP/1.1 to the h2c port",
            format!("GET /status/200 HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n").into_bytes(),
        ),
        (
            "Upgrade: h2c to the h2c port",
            format!("GET /up HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\nConnection: Upgrade, HTTP2-Settings, close\r\n\r\n").into_bytes(),
        ),
    ];
    for (name, request) in h2c_port_requests {
        let real = plain(pair.real[1], &request).await;
        let emulated = plain(pair.emulated[1], &request).await;
        cases.push((format!("h2c port: {name}"), real, emulated));
    }

    let tls_requests: Vec<(&str, Vec<u8>)> = vec![
        (
            "GET over TLS",
            format!(
                "GET /tls?x=1 HTTP/1.1\r\nHost: {HOST}\r\nX-Echo-Set-Header: \r\nConnection: close\r\n\r\n"
            )
            .into_bytes(),
        ),
        (
            "status over TLS",
            format!("GET /status/503 HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n").into_bytes(),
        ),
    ];
    for (name, request) in &tls_requests {
        let real = over_tls(&pair.ca, None, pair.real[2], request).await;
        let emulated = over_tls(&pair.ca, None, pair.emulated[2], request).await;
        cases.push((format!("https: {name}"), real, emulated));
    }
    // With a client certificate, echo-basic reports it (peerCertificates, PEM).
    let client = pair.ca.issue(&["client.example"]);
    for (name, request) in &tls_requests {
        let real = over_tls(&pair.ca, Some(&client), pair.real[2], request).await;
        let emulated = over_tls(&pair.ca, Some(&client), pair.emulated[2], request).await;
        cases.push((format!("https with a client certificate: {name}"), real, emulated));
    }

    // HTTP/2: h2c with prior knowledge, and h2 over TLS.
    let h2_requests: Vec<H2Case> = vec![
        (
            "echo",
            "GET",
            "/h2?q=1",
            vec![("x-echo-set-header", ""), ("x-multi", "a"), ("x-multi", "b")],
        ),
        (
            "set headers",
            "GET",
            "/",
            vec![("x-echo-set-header", "X-Foo:bar,x-low:v")],
        ),
        ("status is echoed on the h2c port", "GET", "/status/418", vec![]),
        (
            "cookies are joined",
            "GET",
            "/c",
            vec![("cookie", "a=1"), ("cookie", "b=2")],
        ),
        ("HEAD", "HEAD", "/", vec![]),
    ];
    for (name, method, path, headers) in &h2_requests {
        let real = h2(
            TcpStream::connect(pair.real[1]).await.expect("connect"),
            method,
            path,
            headers,
            "http",
        )
        .await;
        let emulated = h2(
            TcpStream::connect(pair.emulated[1]).await.expect("connect"),
            method,
            path,
            headers,
            "http",
        )
        .await;
        cases.push((
            format!("h2c: {name}"),
            Exchange::Answer(real),
            Exchange::Answer(emulated),
        ));
    }
    for (name, method, path, headers) in &h2_requests {
        let mut answers = Vec::new();
        for addr in [pair.real[2], pair.emulated[2]] {
            let stream = TcpStream::connect(addr).await.expect("connect");
            let name = ServerName::try_from(HOST).expect("a server name");
            let stream = tls_connector(&pair.ca, b"h2")
                .connect(name, stream)
                .await
                .expect("a TLS handshake");
            answers.push(h2(stream, method, path, headers, "https").await);
        }
        let emulated = answers.pop().unwrap_or_default();
        let real = answers.pop().unwrap_or_default();
        cases.push((
            format!("h2 over TLS: {name}"),
            Exchange::Answer(real),
            Exchange::Answer(emulated),
        ));
    }

    // The comparison is only worth something if the answers are the real thing.
    let answer = |name: &str| -> &Exchange {
        &cases
            .iter()
            .find(|(case, _, _)| case == name)
            .unwrap_or_else(|| panic!("no case {name}"))
            .1
    };
    let Exchange::Answer(plain_get) = answer("http: plain GET") else {
        panic!("echo-basic reset a plain GET");
    };
    assert!(
        plain_get.starts_with("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
            && plain_get.contains("\"pod\": \"infra-backend-v1-6d4b9c7f5-x2x8q\""),
        "echo-basic answered: {plain_get}"
    );
    assert!(
        matches!(answer("http: retry with reset, first"), Exchange::Reset(_)),
        "the first failing attempt must be a reset: {:?}",
        answer("http: retry with reset, first")
    );
    let Exchange::Answer(websocket) = answer("http: websocket echo") else {
        panic!("echo-basic reset the WebSocket");
    };
    assert!(
        websocket.contains("101 Switching Protocols") && websocket.contains("hello"),
        "{websocket}"
    );
    let Exchange::Answer(with_client_cert) = answer("https with a client certificate: GET over TLS") else {
        panic!("echo-basic reset a TLS request with a client certificate");
    };
    assert!(
        with_client_cert.contains("\"peerCertificates\": [\n   \"-----BEGIN CERTIFICATE-----\\n"),
        "{with_client_cert}"
    );

    let differences = differences(&cases);
    assert!(
        differences.is_empty(),
        "{} of {} exchanges differ:\n{}",
        differences.len(),
        cases.len(),
        differences.join("\n")
    );

    // The logs: the same lines in the same order, client ports aside.
    let normalize = |line: &str| {
        let line = match line.find("(127.0.0.1:") {
            Some(at) => format!("{}(127.0.0.1:<port>)", &line[..at]),
            None => line.to_owned(),
        };
        line.replace(&pair.real[0].port().to_string(), "<port>")
            .replace(&pair.real[1].port().to_string(), "<port>")
            .replace(&pair.real[2].port().to_string(), "<port>")
            .replace(&pair.emulated[0].port().to_string(), "<port>")
            .replace(&pair.emulated[1].port().to_string(), "<port>")
            .replace(&pair.emulated[2].port().to_string(), "<port>")
    };
    let echoed = |lines: Vec<String>| -> Vec<String> {
        lines
            .iter()
            .filter(|l| !l.starts_with("Starting server"))
            .map(|l| normalize(l))
            .collect()
    };
    let real_log = echoed(pair.real_log.lock().expect("log lock").clone());
    let emulated_log = echoed(
        pair.emulated_log
            .lines_since(None)
            .into_iter()
            .map(|(_, l)| l)
            .collect(),
    );
    assert!(
        real_log
            .iter()
            .any(|l| l.starts_with("Echoing back request made to /foo/bar?b=2&a=1&a=%20x to client (")),
        "the real echo-basic logged: {real_log:#?}"
    );
    assert_eq!(real_log, emulated_log, "the logs differ");
}
