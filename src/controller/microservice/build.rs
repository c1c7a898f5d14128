//! The desired Deployment and Service of a Microservice: pure functions of its spec.
//!
//! Both carry only the fields microgate decides; server-side apply leaves the rest (defaults,
//! other managers' fields) alone, and takes ours back when someone edits them.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment},
        core::v1::{
            Container, ContainerPort, HTTPGetAction, Lifecycle, LifecycleHandler, PodSpec, PodTemplateSpec,
            Probe, Service, ServicePort, ServiceSpec, SleepAction,
        },
    },
    apimachinery::pkg::{
        apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference},
        util::intstr::IntOrString,
    },
};

use crate::api::{
    Microservice, labels,
    microservice::{HealthCheck, Protocol, Termination},
};

/// The name of the container port, used by the Service and the readiness probe.
pub const PORT_NAME: &str = "http";

/// The labels of everything made for the Microservice `name`.
pub fn labels_for(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (labels::NAME.to_owned(), name.to_owned()),
        (labels::MANAGED_BY.to_owned(), "microgate".to_owned()),
        (labels::MICROSERVICE.to_owned(), name.to_owned()),
    ])
}

/// The label selector of the Microservice's Pods; it never changes (Deployment selectors are immutable).
pub fn selector_for(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(labels::MICROSERVICE.to_owned(), name.to_owned())])
}

/// The same selector as a string, as `status.selector` publishes it for the scale subresource.
pub fn selector_string(name: &str) -> String {
    selector_for(name)
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn metadata(ms: &Microservice, name: &str, owner: &OwnerReference) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: ms.metadata.namespace.clone(),
        labels: Some(labels_for(name)),
        owner_references: Some(vec![owner.clone()]),
        ..ObjectMeta::default()
    }
}

pub fn deployment(ms: &Microservice, name: &str, owner: &OwnerReference) -> Deployment {
    let spec = &ms.spec;
    let container = Container {
        name: name.to_owned(),
        image: Some(spec.image.clone()),
        ports: Some(vec![ContainerPort {
            name: Some(PORT_NAME.to_owned()),
            container_port: spec.port,
            protocol: Some("TCP".to_owned()),
            ..ContainerPort::default()
        }]),
        env: (!spec.env.is_empty()).then(|| spec.env.clone()),
        resources: spec.resources.clone(),
        readiness_probe: spec.health_check.as_ref().map(readiness_probe),
        lifecycle: drain_before_stopping(&spec.termination),
        ..Container::default()
    };
    Deployment {
        metadata: metadata(ms, name, owner),
        spec: Some(DeploymentSpec {
            replicas: Some(spec.replicas),
            selector: LabelSelector {
                match_labels: Some(selector_for(name)),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels_for(name)),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    termination_grace_period_seconds: Some(i64::from(spec.termination.grace_period_seconds)),
                    ..PodSpec::default()
                }),
            },
            strategy: Some(never_below_ready_capacity()),
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

/// A rolling update that starts a new instance before it stops an old one, and stops one only
/// once another is ready: ready capacity never drops below `replicas` (Kubernetes' default, 25 %
/// unavailable, would take a quarter of a large service out at once). Surge rounds up, so at
/// least one new instance starts at a time.
fn never_below_ready_capacity() -> DeploymentStrategy {
    DeploymentStrategy {
        type_: Some("RollingUpdate".to_owned()),
        rolling_update: Some(RollingUpdateDeployment {
            max_unavailable: Some(IntOrString::Int(0)),
            max_surge: Some(IntOrString::String("25%".to_owned())),
        }),
    }
}

/// The drain delay as a `preStop` sleep: the container keeps serving while the gateways take the
/// terminating Pod out of rotation, and gets SIGTERM only afterwards. The sleep action needs no
/// shell in the image.
fn drain_before_stopping(termination: &Termination) -> Option<Lifecycle> {
    (termination.drain_delay_seconds > 0).then(|| Lifecycle {
        pre_stop: Some(LifecycleHandler {
            sleep: Some(SleepAction {
                seconds: i64::from(termination.drain_delay_seconds),
            }),
            ..LifecycleHandler::default()
        }),
        ..Lifecycle::default()
    })
}

fn readiness_probe(check: &HealthCheck) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(check.path.clone()),
            port: IntOrString::String(PORT_NAME.to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(check.period_seconds),
        timeout_seconds: Some(check.timeout_seconds),
        failure_threshold: Some(check.failure_threshold),
        ..Probe::default()
    }
}

pub fn service(ms: &Microservice, name: &str, owner: &OwnerReference) -> Service {
    let app_protocol = match ms.spec.protocol {
        Protocol::Http => "http",
        Protocol::Http2 | Protocol::Grpc => "kubernetes.io/h2c",
    };
    Service {
        metadata: metadata(ms, name, owner),
        spec: Some(ServiceSpec {
            selector: Some(selector_for(name)),
            ports: Some(vec![ServicePort {
                name: Some(PORT_NAME.to_owned()),
                port: ms.spec.port,
                target_port: Some(IntOrString::String(PORT_NAME.to_owned())),
                protocol: Some("TCP".to_owned()),
                app_protocol: Some(app_protocol.to_owned()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::MicroserviceSpec;

    fn orders() -> Microservice {
        let spec: MicroserviceSpec = serde_json::from_value(serde_json::json!({
            "image": "registry.example/orders:1.4.2",
            "replicas": 3,
            "port": 9000,
            "protocol": "GRPC",
            "healthCheck": {"path": "/ready"},
        }))
        .expect("valid spec");
        let mut ms = Microservice::new("orders", spec);
        ms.metadata.namespace = Some("shop".into());
        ms
    }

    fn owner() -> OwnerReference {
        OwnerReference {
            name: "orders".into(),
            uid: "u-1".into(),
            controller: Some(true),
            ..OwnerReference::default()
        }
    }

    #[test]
    fn deployment_runs_the_image_with_the_port_probe_labels_and_owner() {
        let deployment = deployment(&orders(), "orders", &owner());
        assert_eq!(deployment.metadata.namespace.as_deref(), Some("shop"));
        assert_eq!(deployment.metadata.owner_references, Some(vec![owner()]));
        let labels = deployment.metadata.labels.expect("labels");
        assert_eq!(labels[labels::MANAGED_BY], "microgate");
        assert_eq!(labels[labels::MICROSERVICE], "orders");
        let spec = deployment.spec.expect("spec");
        assert_eq!(spec.replicas, Some(3));
        assert_eq!(spec.selector.match_labels, Some(selector_for("orders")));
        let template_labels = spec.template.metadata.and_then(|m| m.labels).expect("pod labels");
        assert_eq!(template_labels, labels_for("orders"), "pods carry every label");
        let container = &spec.template.spec.expect("pod spec").containers[0];
        assert_eq!(container.image.as_deref(), Some("registry.example/orders:1.4.2"));
        assert_eq!(container.ports.as_ref().expect("ports")[0].container_port, 9000);
        let probe = container
            .readiness_probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .expect("probe");
        assert_eq!(probe.path.as_deref(), Some("/ready"));
        assert_eq!(probe.port, IntOrString::String(PORT_NAME.into()));
    }

    #[test]
    fn a_rollout_never_lowers_ready_capacity() {
        let spec = deployment(&orders(), "orders", &owner()).spec.expect("spec");
        let strategy = spec.strategy.expect("an explicit strategy");
        assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
        let rolling = strategy.rolling_update.expect("rolling update parameters");
        assert_eq!(rolling.max_unavailable, Some(IntOrString::Int(0)));
        assert_eq!(rolling.max_surge, Some(IntOrString::String("25%".into())));
    }

    #[test]
    fn a_terminating_pod_sleeps_its_drain_delay_within_its_grace_period() {
        let mut ms = orders();
        ms.spec.termination = Termination {
            drain_delay_seconds: 7,
            grace_period_seconds: 40,
        };
        let pod = deployment(&ms, "orders", &owner())
            .spec
            .and_then(|s| s.template.spec)
            .expect("pod spec");
        assert_eq!(pod.termination_grace_period_seconds, Some(40));
        let sleep = pod.containers[0]
            .lifecycle
            .as_ref()
            .and_then(|l| l.pre_stop.as_ref())
            .and_then(|h| h.sleep.as_ref())
            .expect("a preStop sleep");
        assert_eq!(sleep.seconds, 7);
    }

    #[test]
    fn a_zero_drain_delay_has_no_pre_stop_hook() {
        let mut ms = orders();
        ms.spec.termination.drain_delay_seconds = 0;
        let pod = deployment(&ms, "orders", &owner())
            .spec
            .and_then(|s| s.template.spec)
            .expect("pod spec");
        assert!(pod.containers[0].lifecycle.is_none());
        assert_eq!(pod.termination_grace_period_seconds, Some(30));
    }

    #[test]
    fn without_a_health_check_there_is_no_probe() {
        let mut ms = orders();
        ms.spec.health_check = None;
        let spec = deployment(&ms, "orders", &owner()).spec.expect("spec");
        assert!(
            spec.template.spec.expect("pod spec").containers[0]
                .readiness_probe
                .is_none()
        );
    }

    #[test]
    fn service_selects_the_pods_on_the_named_port_with_the_protocol() {
        let service = service(&orders(), "orders", &owner());
        let spec = service.spec.expect("spec");
        assert_eq!(spec.selector, Some(selector_for("orders")));
        let port = &spec.ports.expect("ports")[0];
        assert_eq!(port.port, 9000);
        assert_eq!(port.target_port, Some(IntOrString::String(PORT_NAME.into())));
        assert_eq!(port.app_protocol.as_deref(), Some("kubernetes.io/h2c"));
    }
}
