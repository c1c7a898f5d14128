//! The fake kubelet with the Gateway API suite's Pods, on the real control plane: a Pod of the
//! echo-basic image gets the emulation on its IP (HTTP, h2c, and HTTPS from a Secret it mounts,
//! with a client CA from a ConfigMap, waiting until both exist, as a kubelet would), and its log reaches the API server's
//! `pods/log` through the kubelet's log endpoint.

use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::{LogParams, PostParams};
use microgate_test_support::{
    TestNamespace,
    kubelet::{Kubelet, KubeletConfig},
    probe,
    tls::TestCa,
    wait::{self, Probe},
    with_namespace,
};
use serde_json::json;
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(30);

fn echo_pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "tls-backend"}},
        "spec": {
            "containers": [{
                "name": "tls-backend",
                "image": "registry.k8s.io/gateway-api/echo-basic:v1.5.1",
                "volumeMounts": [
                    {"name": "secret-volume", "mountPath": "/etc/secret-volume"},
                    {"name": "configmap-volume", "mountPath": "/etc/configmap-volume"},
                ],
                "env": [
                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                    {"name": "SERVICE_NAME", "value": "tls-backend"},
                    {"name": "TLS_SERVER_CERT", "value": "/etc/secret-volume/crt"},
                    {"name": "TLS_SERVER_PRIVKEY", "value": "/etc/secret-volume/key"},
                    {"name": "TLS_CLIENT_CACERTS", "value": "/etc/configmap-volume/ca"},
                ],
            }],
            "volumes": [
                {"name": "secret-volume", "secret": {
                    "secretName": "echo-certificate",
                    "items": [{"key": "tls.crt", "path": "crt"}, {"key": "tls.key", "path": "key"}],
                }},
                {"name": "configmap-volume", "configMap": {
                    "name": "echo-client-ca",
                    "items": [{"key": "ca.crt", "path": "ca"}],
                }},
            ],
        },
    }))
    .expect("a valid pod")
}

async fn ready_ip(ns: &TestNamespace, name: &str) -> std::net::IpAddr {
    let pods = ns.api::<Pod>();
    wait::until(format!("pod {name} ready"), WAIT, || {
        let pods = pods.clone();
        async move {
            let Ok(pod) = pods.get(name).await else {
                return Probe::NotYet("no pod".into());
            };
            let status = pod.status.unwrap_or_default();
            let ready = status
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            match status.pod_ip.and_then(|ip| ip.parse().ok()) {
                Some(ip) if ready => Probe::Done(ip),
                _ => Probe::NotYet(format!("phase {:?}, ready {ready}", status.phase)),
            }
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test]
async fn echo_basic_pods_answer_on_their_ip_and_log_to_the_api_server() {
    with_namespace("echo-pod", |ns| async move {
        let pods = ns.api::<Pod>();
        pods.create(&PostParams::default(), &echo_pod("echo-0"))
            .await
            .expect("create the pod");
        // Its Secret and ConfigMap do not exist yet: a kubelet keeps such a Pod waiting.
        tokio::time::sleep(Duration::from_millis(800)).await;
        let waiting = pods.get("echo-0").await.expect("the pod");
        assert!(
            waiting.status.as_ref().and_then(|s| s.pod_ip.as_ref()).is_none(),
            "the pod ran before its Secret existed: {:?}",
            waiting.status
        );
        let ca = TestCa::new();
        let cert = ca.issue(&["abc.example.com"]);
        ns.api::<Secret>()
            .create(&PostParams::default(), &cert.secret("echo-certificate"))
            .await
            .expect("create the secret");
        // The CA that client certificates are checked against (echo-basic fails to start on an
        // unreadable one, so a Ready Pod proves the ConfigMap's file reached it).
        let client_ca: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": "echo-client-ca"},
            "data": {"ca.crt": TestCa::new().cert_pem()},
        }))
        .expect("a valid config map");
        tokio::time::sleep(Duration::from_millis(800)).await;
        let still_waiting = pods.get("echo-0").await.expect("the pod");
        assert!(
            still_waiting
                .status
                .as_ref()
                .and_then(|s| s.pod_ip.as_ref())
                .is_none(),
            "the pod ran before its ConfigMap existed"
        );
        ns.api::<ConfigMap>()
            .create(&PostParams::default(), &client_ca)
            .await
            .expect("create the config map");
        let ip = ready_ip(&ns, "echo-0").await;

        let answer = probe::get(SocketAddr::new(ip, 3000), "/hello?x=1")
            .await
            .expect("echo-basic answers on :3000");
        assert_eq!(answer.status, 200);
        assert_eq!(answer.headers["content-type"], "application/json");
        let echoed: serde_json::Value = serde_json::from_str(&answer.body).expect("echo JSON");
        assert_eq!(echoed["path"], "/hello?x=1");
        assert_eq!(echoed["pod"], "echo-0");
        assert_eq!(echoed["namespace"], ns.name.as_str());
        assert_eq!(echoed["service"], "tls-backend");

        // h2c with prior knowledge on :3001.
        let stream = TcpStream::connect(SocketAddr::new(ip, 3001))
            .await
            .expect("connect :3001");
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .expect("an h2c handshake");
        tokio::spawn(connection);
        let request = Request::get("http://abc.example.com/h2c")
            .body(Empty::<Bytes>::new())
            .expect("a request");
        let response = sender.send_request(request).await.expect("an h2c answer");
        let body = response.into_body().collect().await.expect("a body").to_bytes();
        let echoed: serde_json::Value = serde_json::from_slice(&body).expect("echo JSON");
        assert_eq!(echoed["proto"], "HTTP/2.0");

        // HTTPS on :8443 with the Secret's certificate.
        let connected = ca
            .http1_client()
            .get(SocketAddr::new(ip, 8443), "abc.example.com", "/tls")
            .await
            .expect("echo-basic answers on :8443 with the mounted certificate");
        let echoed: serde_json::Value = serde_json::from_str(&connected.body).expect("echo JSON");
        assert_eq!(echoed["tls"]["serverName"], "abc.example.com");

        // pods/log: the API server asks the kubelet at the Node's address and published port.
        ns.kubelet.stop().await;
        let logging = Kubelet::start(
            ns.client.clone(),
            KubeletConfig {
                namespace: Some(ns.name.clone()),
                serve_logs: true,
            },
        )
        .await
        .expect("a kubelet serving logs");
        wait::until("echo-0 served again", WAIT, || {
            let addr = SocketAddr::new(ip, 3000);
            async move {
                match probe::get(addr, "/after-restart").await {
                    Ok(answer) if answer.status == 200 => Probe::Done(()),
                    other => Probe::NotYet(format!("{other:?}")),
                }
            }
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        let params = LogParams {
            container: Some("tls-backend".into()),
            ..LogParams::default()
        };
        let log = wait::until("the pod's log through the API server", WAIT, || {
            let pods = pods.clone();
            let params = params.clone();
            async move {
                match pods.logs("echo-0", &params).await {
                    Ok(log) if log.contains("Echoing back request made to /after-restart to client (") => {
                        Probe::Done(log)
                    }
                    other => Probe::NotYet(format!("{other:?}")),
                }
            }
        })
        .await;
        logging.stop().await;
        let log = log.unwrap_or_else(|e| panic!("{e}"));
        assert!(log.starts_with("Starting server, listening on port"), "{log}");
    })
    .await;
}
