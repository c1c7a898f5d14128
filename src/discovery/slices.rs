//! The endpoints of one port of a Kubernetes Service, read off its EndpointSlices: how the
//! Gateway API's backends are found, selector-less Services (whose slices someone else writes)
//! included. Pure: the callers hold the watched Services and slices.

use std::{net::IpAddr, sync::Arc};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};

use super::Endpoint;

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// A Service port as a gateway sends to it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServicePort {
    /// The ready endpoints, at the port each slice names for this Service port.
    pub endpoints: Vec<Endpoint>,
    /// The port's `appProtocol`, if it names one.
    pub app_protocol: Option<String>,
}

/// Port `port` of `service`, with the endpoints `slices` (any slices: those of other Services
/// are skipped) give it; `None` when the Service has no such port.
pub fn service_port<'s>(
    service: &Service,
    port: i32,
    slices: impl IntoIterator<Item = &'s EndpointSlice>,
) -> Option<ServicePort> {
    let name = service.metadata.name.as_deref()?;
    let namespace = service.metadata.namespace.as_deref();
    let spec_port = service
        .spec
        .as_ref()?
        .ports
        .iter()
        .flatten()
        .find(|p| p.port == port)?;
    let port_name = spec_port.name.as_deref().unwrap_or("");
    let mut endpoints = Vec::new();
    for slice in slices {
        let own = slice.metadata.namespace.as_deref() == namespace
            && slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL))
                .is_some_and(|n| n == name);
        if !own {
            continue;
        }
        // The slice's port of the same name is the target port, resolved by whoever wrote it.
        let Some(target) = slice
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref().unwrap_or("") == port_name)
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
        else {
            continue;
        };
        for endpoint in slice.endpoints.iter().flatten() {
            let conditions = endpoint.conditions.as_ref();
            // An absent `ready` means ready (the API's own rule); a terminating one takes no
            // new requests.
            let ready = conditions.and_then(|c| c.ready).unwrap_or(true)
                && !conditions.and_then(|c| c.terminating).unwrap_or(false);
            if !ready {
                continue;
            }
            for address in &endpoint.addresses {
                let Ok(ip) = address.parse::<IpAddr>() else {
                    continue;
                };
                let pod = endpoint
                    .target_ref
                    .as_ref()
                    .and_then(|r| r.name.as_deref())
                    .unwrap_or(address);
                endpoints.push(Endpoint {
                    pod: Arc::from(pod),
                    ip,
                    port: target,
                    ready: true,
                    node: endpoint.node_name.as_deref().map(Arc::from),
                    zone: endpoint.zone.as_deref().map(Arc::from),
                });
            }
        }
    }
    endpoints.sort_by(|a, b| (&a.pod, a.ip, a.port).cmp(&(&b.pod, b.ip, b.port)));
    endpoints.dedup();
    Some(ServicePort {
        endpoints,
        app_protocol: spec_port.app_protocol.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service() -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "ns"},
            "spec": {"ports": [
                {"name": "http", "port": 8080, "targetPort": 3000},
                {"name": "h2c", "port": 8081, "targetPort": 3001, "appProtocol": "kubernetes.io/h2c"}
            ]}
        }))
        .expect("a Service")
    }

    fn slice(service: &str, endpoints: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("{service}-x"), "namespace": "ns",
                "labels": {SERVICE_NAME_LABEL: service}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 3000}, {"name": "h2c", "port": 3001}],
            "endpoints": endpoints,
        }))
        .expect("an EndpointSlice")
    }

    #[test]
    fn ready_endpoints_of_the_service_s_own_slices_at_the_named_target_port() {
        let slices = [
            slice(
                "web",
                serde_json::json!([
                    {"addresses": ["10.0.0.1"], "targetRef": {"kind": "Pod", "name": "web-1"}, "nodeName": "n1", "zone": "z1"},
                    {"addresses": ["10.0.0.2"], "conditions": {"ready": false}},
                    {"addresses": ["10.0.0.3"], "conditions": {"ready": true, "terminating": true}},
                    {"addresses": ["10.0.0.4"], "conditions": {"ready": true}},
                ]),
            ),
            slice("other", serde_json::json!([{"addresses": ["10.0.0.9"]}])),
        ];
        let http = service_port(&service(), 8080, &slices).expect("a port");
        let found: Vec<_> = http
            .endpoints
            .iter()
            .map(|e| (e.pod.to_string(), e.ip.to_string(), e.port))
            .collect();
        assert_eq!(
            found,
            [
                ("10.0.0.4".to_owned(), "10.0.0.4".to_owned(), 3000),
                ("web-1".to_owned(), "10.0.0.1".to_owned(), 3000),
            ]
        );
        assert_eq!(http.app_protocol, None);
        let web_1 = &http.endpoints[1];
        assert_eq!(
            (web_1.node.as_deref(), web_1.zone.as_deref()),
            (Some("n1"), Some("z1"))
        );
        let h2c = service_port(&service(), 8081, &slices).expect("a port");
        assert_eq!(h2c.endpoints[0].port, 3001);
        assert_eq!(h2c.app_protocol.as_deref(), Some("kubernetes.io/h2c"));
        assert_eq!(service_port(&service(), 9999, &slices), None);
    }
}
