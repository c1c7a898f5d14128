//! The test harness for microgate: a real local control plane, a namespace per test, and a fake
//! kubelet whose Pods are real HTTP servers on loopback addresses.
//!
//! - [`cluster`]: start or reuse the control plane of `tests/cluster/`; a kube client for it.
//! - [`namespace`]: [`with_namespace`] gives each test its own namespace and kubelet.
//! - [`kubelet`]: binds Pods to a fake Node, runs their backends, reports their status.
//! - [`kubelet_logs`]: the kubelet's HTTPS log endpoint, behind `kubectl logs`.
//! - [`backend`]: the HTTP server behind each Pod, scriptable (status, delay, failures).
//! - [`echo_basic`]: the Gateway API conformance suite's backend, emulated byte for byte.
//! - [`pod_env`]: a container's environment and Secret files, as a kubelet resolves them.
//! - [`pod_ips`]: where Pod addresses come from (`127.0.0.0/8`, or a private namespace's range).
//! - [`background_load`]: open-loop load at a fixed rate, sent while a test changes something.
//! - [`rollout`]: a Microservice changed (image, replicas) under load, and what that cost.
//! - [`probe`] and [`wait`]: ask an address what it answers; wait with a deadline.
//! - [`private_apiserver`]: a second API server on the cluster's etcd, without a watch cache,
//!   that one test may stop or cut off.
//! - [`load`]: an open-loop load generator (a fixed rate, a bounded count) and its report.
//! - [`sockets`]: the TCP sockets open to an address, from `/proc/net/tcp`.
//! - [`proxy`]: a TCP proxy a test can cut, to break connections like a partition.
//! - [`tls`]: a test certificate authority, `kubernetes.io/tls` Secrets, and TLS clients.
//! - [`h2wire`]: raw HTTP/2 frames and HPACK, for tests that play a hostile client.
//! - [`h2spec`]: the HTTP/2 conformance suite, built from a pinned module and run on a listener.
//! - [`gwapi_conformance`]: the Gateway API conformance suite and echo-basic, built from a pinned module.
//! - [`jaeger`]: a real Jaeger (all-in-one, in memory) for the tracing tests: OTLP in, query API
//!   out, built from a pinned module.
//! - [`pinned_tool`]: runs a pinned tool's `build.sh` (h2spec, Jaeger, the Gateway API suite).
//! - [`usage`]: CPU time and memory of a process or a thread, from `/proc`.
//! - [`redis_server`]: a real `redis-server` on a loopback port, for global rate limits; it can
//!   be stopped, restarted and frozen mid-test.
//! - [`hostile`]: the hostile-input suite: raw-byte cases, a strict recording backend (what a
//!   Pod whose image is [`kubelet::RECORDER_IMAGE`] serves), and the verdicts.
//!
//! The `fake-kubelet` binary runs the same kubelet outside `cargo test`, for the demo.

pub mod backend;
pub mod background_load;
pub mod cluster;
pub mod echo_basic;
pub mod gwapi_conformance;
pub mod h2spec;
pub mod h2wire;
pub mod hostile;
pub mod jaeger;
pub mod kubelet;
pub mod kubelet_logs;
pub mod load;
pub mod namespace;
pub mod pinned_tool;
pub mod pod_env;
pub mod pod_ips;
pub mod private_apiserver;
pub mod probe;
pub mod proxy;
pub mod redis_server;
pub mod reliability;
pub mod rollout;
pub mod sockets;
pub mod tls;
pub mod usage;
pub mod wait;

pub use namespace::{HarnessError, TestNamespace, with_namespace};
