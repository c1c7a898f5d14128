//! Where each Gateway API Gateway listens. With an address range (`--gateway-addresses`), each
//! Gateway gets an address of its own, so that two Gateways may both listen on :80: the one its
//! status already publishes while that is still in the range and not taken (an address survives
//! restarts and other Gateways coming and going), else the lowest free one. Without a range,
//! every Gateway listens on the gateway's listen address.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Arc,
};

use ipnet::IpNet;
use kube::ResourceExt;

use super::gateway_api::ObjectKey;
use crate::api::gateway_api::KubeGateway;

/// The address of each of `gateways` (those of microgate's classes, oldest first).
pub fn allocate(
    gateways: &[&Arc<KubeGateway>],
    range: Option<IpNet>,
    listen_address: IpAddr,
) -> BTreeMap<ObjectKey, IpAddr> {
    let key = |g: &KubeGateway| (g.namespace().unwrap_or_default(), g.name_any());
    let Some(range) = range else {
        return gateways.iter().map(|g| (key(g), listen_address)).collect();
    };
    let mut taken = BTreeSet::new();
    let mut given = BTreeMap::new();
    // First, each Gateway keeps the address it has, oldest first.
    for gateway in gateways {
        let kept = gateway
            .status
            .as_ref()
            .and_then(|s| s.addresses.first())
            .and_then(|a| a.value.parse::<IpAddr>().ok())
            .filter(|a| range.contains(a) && !taken.contains(a));
        if let Some(address) = kept {
            taken.insert(address);
            given.insert(key(gateway), address);
        }
    }
    // Then the others get the lowest free host addresses of the range.
    let mut free = range.hosts().filter(|a| !taken.contains(a));
    for gateway in gateways {
        if given.contains_key(&key(gateway)) {
            continue;
        }
        match free.next() {
            Some(address) => {
                given.insert(key(gateway), address);
            }
            None => {
                tracing::warn!(gateway = %gateway.name_any(), %range, "no address left in the Gateway address range");
            }
        }
    }
    given
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gateway(name: &str, address: Option<&str>) -> Arc<KubeGateway> {
        let mut gateway: KubeGateway = serde_json::from_value(serde_json::json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"gatewayClassName": "microgate", "listeners": []},
        }))
        .expect("a Gateway");
        if let Some(address) = address {
            gateway.status = Some(
                serde_json::from_value(serde_json::json!({
                    "addresses": [{"type": "IPAddress", "value": address}]
                }))
                .expect("a status"),
            );
        }
        Arc::new(gateway)
    }

    #[test]
    fn gateways_keep_their_address_and_new_ones_get_the_lowest_free() {
        let range: IpNet = "10.200.255.0/29".parse().expect("a range");
        let a = gateway("a", Some("10.200.255.3"));
        let b = gateway("b", None);
        let c = gateway("c", Some("192.168.0.1"));
        let d = gateway("d", Some("10.200.255.3"));
        let given = allocate(
            &[&a, &b, &c, &d],
            Some(range),
            "0.0.0.0".parse().expect("an address"),
        );
        let at = |name: &str| given[&("ns".to_owned(), name.to_owned())].to_string();
        assert_eq!(at("a"), "10.200.255.3");
        assert_eq!(at("b"), "10.200.255.1");
        // Outside the range, or taken by an older Gateway: a new one.
        assert_eq!(at("c"), "10.200.255.2");
        assert_eq!(at("d"), "10.200.255.4");
        let shared = allocate(&[&a, &b], None, "127.0.0.1".parse().expect("an address"));
        assert!(shared.values().all(|a| a.to_string() == "127.0.0.1"));
    }
}
