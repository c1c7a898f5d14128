//! One instance of a Microservice as the gateway sees it, read off its Pod.

use std::{net::IpAddr, sync::Arc};

use k8s_openapi::api::core::v1::Pod;

use crate::{api::labels, controller::microservice::build::PORT_NAME};

/// Which Microservice an endpoint belongs to: its namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
}

impl ServiceKey {
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl std::fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// An address the gateway can send a Microservice's traffic to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub pod: Arc<str>,
    pub ip: IpAddr,
    pub port: u16,
    /// The Pod passes its readiness check and is not terminating.
    pub ready: bool,
    /// The node the Pod runs on, when it is bound.
    pub node: Option<Arc<str>>,
    /// The zone it runs in, where an EndpointSlice says (`None` for a Microservice's Pods: a
    /// Pod does not carry its Node's zone, and Nodes are not watched).
    pub zone: Option<Arc<str>>,
}

impl Endpoint {
    /// The Microservice and endpoint a Pod stands for; `None` for a Pod that is not one of a
    /// Microservice's, or that has no address or port yet.
    pub fn from_pod(pod: &Pod) -> Option<(ServiceKey, Endpoint)> {
        let name = pod.metadata.name.as_deref()?;
        let namespace = pod.metadata.namespace.as_deref()?;
        let service = pod.metadata.labels.as_ref()?.get(labels::MICROSERVICE)?;
        let status = pod.status.as_ref()?;
        let ip: IpAddr = status.pod_ip.as_deref()?.parse().ok()?;
        let port = serving_port(pod)?;
        let terminal = matches!(status.phase.as_deref(), Some("Succeeded" | "Failed"));
        if terminal {
            return None;
        }
        let ready_condition = status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        let ready = ready_condition && pod.metadata.deletion_timestamp.is_none();
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .map(Arc::from);
        Some((
            ServiceKey::new(namespace, service),
            Endpoint {
                pod: name.into(),
                ip,
                port,
                ready,
                node,
                zone: None,
            },
        ))
    }
}

/// The container port named `http` (as the controller names it), else the first TCP port.
fn serving_port(pod: &Pod) -> Option<u16> {
    let ports: Vec<_> = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|p| p.protocol.as_deref().is_none_or(|protocol| protocol == "TCP"))
        .collect();
    let port = ports
        .iter()
        .find(|p| p.name.as_deref() == Some(PORT_NAME))
        .or(ports.first())?;
    u16::try_from(port.container_port).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(extra_status: serde_json::Value, deleting: bool) -> Pod {
        let mut status = json!({"phase": "Running", "podIP": "127.0.3.4",
            "conditions": [{"type": "Ready", "status": "True"}]});
        if let (Some(status), Some(extra)) = (status.as_object_mut(), extra_status.as_object()) {
            status.extend(extra.clone());
        }
        let mut metadata = json!({"name": "orders-abc", "namespace": "shop",
            "labels": {"microgate.dev/microservice": "orders"}});
        if deleting {
            metadata["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        }
        serde_json::from_value(json!({
            "metadata": metadata,
            "spec": {"nodeName": "n1", "containers": [{"name": "orders", "ports": [
                {"name": "metrics", "containerPort": 9100}, {"name": "http", "containerPort": 8080}]}]},
            "status": status,
        }))
        .expect("valid pod")
    }

    #[test]
    fn a_ready_pod_is_a_ready_endpoint_on_its_http_port() {
        let (key, endpoint) = Endpoint::from_pod(&pod(json!({}), false)).expect("an endpoint");
        assert_eq!(key, ServiceKey::new("shop", "orders"));
        assert_eq!(endpoint.ip.to_string(), "127.0.3.4");
        assert_eq!(endpoint.port, 8080);
        assert!(endpoint.ready);
        assert_eq!(endpoint.node.as_deref(), Some("n1"));
    }

    #[test]
    fn an_unready_or_terminating_pod_is_a_known_but_unready_endpoint() {
        let unready = pod(
            json!({"conditions": [{"type": "Ready", "status": "False"}]}),
            false,
        );
        assert!(!Endpoint::from_pod(&unready).expect("an endpoint").1.ready);
        assert!(
            !Endpoint::from_pod(&pod(json!({}), true))
                .expect("an endpoint")
                .1
                .ready
        );
    }

    #[test]
    fn pods_without_an_address_or_finished_are_not_endpoints() {
        assert!(Endpoint::from_pod(&pod(json!({"podIP": null}), false)).is_none());
        assert!(Endpoint::from_pod(&pod(json!({"phase": "Succeeded"}), false)).is_none());
        let mut unlabelled = pod(json!({}), false);
        unlabelled.metadata.labels = None;
        assert!(Endpoint::from_pod(&unlabelled).is_none());
    }
}
