//! Where each Gateway API Gateway listens. With an address range (`--gateway-addresses`), each
//! Gateway gets an address of its own, so that two Gateways may both listen on :80: the one it
//! asks for in `spec.addresses`, if that is in the range and no older Gateway asked for it;
//! else the one its status already publishes while that is still in the range and not taken
//! (an address survives restarts and other Gateways coming and going); else the lowest free one.
//! Without a range, every Gateway listens on the gateway's listen address, and may ask for that
//! one only.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Arc,
};

use ipnet::IpNet;
use kube::ResourceExt;

use super::gateway_api::ObjectKey;
use crate::api::gateway_api::KubeGateway;

/// Each Gateway's address, or why it has none.
#[derive(Debug, Default)]
pub struct Addresses {
    pub given: BTreeMap<ObjectKey, IpAddr>,
    pub refused: BTreeMap<ObjectKey, Refused>,
}

/// Why a Gateway's `spec.addresses` cannot be served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refused {
    /// A type other than IPAddress, or a value that is not an IP address: not accepted.
    Unsupported(String),
    /// An IP address this gateway cannot listen on: accepted, not programmed.
    NotUsable(String),
}

/// What a Gateway asks for in `spec.addresses`: nothing (or only `type: IPAddress` without a
/// value: any address), one IP address, or something that cannot be served.
fn requested(gateway: &KubeGateway) -> Result<Option<IpAddr>, Refused> {
    let mut wanted = None;
    for address in &gateway.spec.addresses {
        let type_ = address.type_.as_deref().unwrap_or("IPAddress");
        if type_ != "IPAddress" {
            return Err(Refused::Unsupported(format!(
                "address type {type_} is not supported: IPAddress is"
            )));
        }
        if address.value.is_empty() {
            continue;
        }
        let ip: IpAddr = address
            .value
            .parse()
            .map_err(|_| Refused::Unsupported(format!("{:?} is not an IP address", address.value)))?;
        match wanted {
            Some(first) if first != ip => {
                return Err(Refused::NotUsable(format!(
                    "a Gateway listens on one address: {first} and {ip} were asked for"
                )));
            }
            _ => wanted = Some(ip),
        }
    }
    Ok(wanted)
}

/// The address of each of `gateways` (those of microgate's classes, oldest first).
pub fn allocate(gateways: &[&Arc<KubeGateway>], range: Option<IpNet>, listen_address: IpAddr) -> Addresses {
    let key = |g: &KubeGateway| (g.namespace().unwrap_or_default(), g.name_any());
    let mut addresses = Addresses::default();
    let mut taken = BTreeSet::new();
    // First, the addresses asked for, oldest Gateway first.
    for gateway in gateways {
        let wanted = match requested(gateway) {
            Ok(Some(wanted)) => wanted,
            Ok(None) => continue,
            Err(refused) => {
                addresses.refused.insert(key(gateway), refused);
                continue;
            }
        };
        let usable = match range {
            Some(range) if !range.contains(&wanted) => Err(format!("{wanted} is outside {range}")),
            Some(_) if taken.contains(&wanted) => Err(format!("{wanted} is an older Gateway's")),
            Some(_) => Ok(()),
            None if wanted == listen_address => Ok(()),
            None => Err(format!("Gateways listen on {listen_address} only")),
        };
        match usable {
            Ok(()) => {
                taken.insert(wanted);
                addresses.given.insert(key(gateway), wanted);
            }
            Err(why) => {
                addresses.refused.insert(key(gateway), Refused::NotUsable(why));
            }
        }
    }
    let unplaced: Vec<&&Arc<KubeGateway>> = gateways
        .iter()
        .filter(|g| !addresses.given.contains_key(&key(g)) && !addresses.refused.contains_key(&key(g)))
        .collect();
    let Some(range) = range else {
        for gateway in unplaced {
            addresses.given.insert(key(gateway), listen_address);
        }
        return addresses;
    };
    // Then each Gateway keeps the address it has, oldest first.
    for gateway in &unplaced {
        let kept = gateway
            .status
            .as_ref()
            .and_then(|s| s.addresses.first())
            .and_then(|a| a.value.parse::<IpAddr>().ok())
            .filter(|a| range.contains(a) && !taken.contains(a));
        if let Some(address) = kept {
            taken.insert(address);
            addresses.given.insert(key(gateway), address);
        }
    }
    // Then the others get the lowest free host addresses of the range.
    let mut free = range.hosts().filter(|a| !taken.contains(a));
    for gateway in unplaced {
        if addresses.given.contains_key(&key(gateway)) {
            continue;
        }
        match free.next() {
            Some(address) => {
                addresses.given.insert(key(gateway), address);
            }
            None => {
                tracing::warn!(gateway = %gateway.name_any(), %range, "no address left in the Gateway address range");
            }
        }
    }
    addresses
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
        let at = |name: &str| given.given[&("ns".to_owned(), name.to_owned())].to_string();
        assert_eq!(at("a"), "10.200.255.3");
        assert_eq!(at("b"), "10.200.255.1");
        // Outside the range, or taken by an older Gateway: a new one.
        assert_eq!(at("c"), "10.200.255.2");
        assert_eq!(at("d"), "10.200.255.4");
        let shared = allocate(&[&a, &b], None, "127.0.0.1".parse().expect("an address"));
        assert!(shared.given.values().all(|a| a.to_string() == "127.0.0.1"));
    }

    fn asking(name: &str, addresses: serde_json::Value, status: Option<&str>) -> Arc<KubeGateway> {
        let mut gateway = Arc::unwrap_or_clone(gateway(name, status));
        gateway.spec.addresses = serde_json::from_value(addresses).expect("addresses");
        Arc::new(gateway)
    }

    #[test]
    fn an_address_asked_for_is_given_when_the_range_holds_it_and_no_older_gateway_asked_first() {
        let range: IpNet = "10.200.255.0/29".parse().expect("a range");
        let listen: IpAddr = "0.0.0.0".parse().expect("an address");
        // Holds .1 from an earlier allocation; a newer Gateway asks for .1 and takes it.
        let keeper = gateway("keeper", Some("10.200.255.1"));
        let wants_one = asking(
            "wants-one",
            serde_json::json!([{"type": "IPAddress", "value": "10.200.255.1"}]),
            None,
        );
        let wants_one_too = asking("too", serde_json::json!([{"value": "10.200.255.1"}]), None);
        let outside = asking("outside", serde_json::json!([{"value": "10.0.0.1"}]), None);
        let any = asking("any", serde_json::json!([{"type": "IPAddress"}]), None);
        let hostname = asking(
            "hostname",
            serde_json::json!([{"type": "Hostname", "value": "gw.example"}]),
            None,
        );
        let two = asking(
            "two",
            serde_json::json!([{"value": "10.200.255.5"}, {"value": "10.200.255.6"}]),
            None,
        );
        let given = allocate(
            &[
                &keeper,
                &wants_one,
                &wants_one_too,
                &outside,
                &any,
                &hostname,
                &two,
            ],
            Some(range),
            listen,
        );
        let at = |name: &str| {
            given
                .given
                .get(&("ns".to_owned(), name.to_owned()))
                .map(ToString::to_string)
        };
        let refused = |name: &str| given.refused.get(&("ns".to_owned(), name.to_owned())).cloned();
        assert_eq!(at("wants-one").as_deref(), Some("10.200.255.1"));
        assert_eq!(at("keeper").as_deref(), Some("10.200.255.2"));
        assert_eq!(at("any").as_deref(), Some("10.200.255.3"));
        assert!(matches!(refused("too"), Some(Refused::NotUsable(_))));
        assert!(matches!(refused("outside"), Some(Refused::NotUsable(_))));
        assert!(matches!(refused("two"), Some(Refused::NotUsable(_))));
        assert!(matches!(refused("hostname"), Some(Refused::Unsupported(_))));
        for name in ["too", "outside", "two", "hostname"] {
            assert_eq!(at(name), None, "{name} has no address");
        }
        // Without a range, the listen address is the only one to ask for.
        let local: IpAddr = "127.0.0.1".parse().expect("an address");
        let mine = asking("mine", serde_json::json!([{"value": "127.0.0.1"}]), None);
        let other = asking("other", serde_json::json!([{"value": "127.0.0.2"}]), None);
        let shared = allocate(&[&mine, &other], None, local);
        assert_eq!(
            shared.given.get(&("ns".to_owned(), "mine".to_owned())),
            Some(&local)
        );
        assert!(matches!(
            shared.refused.get(&("ns".to_owned(), "other".to_owned())),
            Some(Refused::NotUsable(_))
        ));
    }
}
