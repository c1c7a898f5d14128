//! A Gateway's frontend TLS (`spec.tls.frontend`): how the HTTPS listeners of each port check
//! their clients' certificates, with the CA bundles it names read from ConfigMaps (key
//! `ca.crt`), followed across namespaces only where a ReferenceGrant lets them. The listeners a
//! ListenerSet adds share their Gateway's: the port is the Gateway's.

use std::{collections::BTreeMap, sync::Arc};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use rustls::pki_types::CertificateDer;

use super::{permitted, reason};
use crate::{
    api::gateway_api::{
        FrontendTlsConfig, FrontendTlsValidation, GROUP, KubeGateway, ObjectReference, ReferenceGrant,
    },
    gateway::tls::{ClientAuth, read_ca_bundle},
};

/// The key of a ConfigMap that holds a CA bundle, as the Gateway API names it.
const CA_CERTIFICATE_KEY: &str = "ca.crt";

/// The mode that lets clients in without a valid certificate.
const INSECURE_FALLBACK: &str = "AllowInsecureFallback";

/// How a compile reads a ConfigMap, by namespace and name.
pub type ConfigMaps<'a> = &'a dyn Fn(&str, &str) -> Option<Arc<ConfigMap>>;

/// The client certificate validation of the HTTPS listeners of a port.
#[derive(Debug)]
pub struct PortValidation {
    /// How the listeners check clients; `None` when no CA reference resolved, and then the
    /// listeners are not accepted (they would let no client in, or every one).
    pub auth: Option<ClientAuth>,
    /// The first CA reference that did not resolve: the reason and message of the listeners'
    /// `ResolvedRefs` condition.
    pub unresolved: Option<(&'static str, String)>,
}

/// A Gateway's frontend TLS, its references resolved.
#[derive(Debug, Default)]
pub struct FrontendValidation {
    default: Option<PortValidation>,
    /// A port's own setting, which replaces the default even when it validates nothing.
    per_port: BTreeMap<i32, Option<PortValidation>>,
}

impl FrontendValidation {
    /// Resolves `gateway`'s frontend TLS against the ReferenceGrants and ConfigMaps there are.
    pub fn resolve(
        gateway: &KubeGateway,
        grants: &[Arc<ReferenceGrant>],
        config_maps: ConfigMaps<'_>,
    ) -> Self {
        let Some(frontend) = frontend(gateway) else {
            return Self::default();
        };
        let namespace = gateway.namespace().unwrap_or_default();
        let resolve = |validation: &Option<FrontendTlsValidation>| {
            validation
                .as_ref()
                .map(|v| resolve_validation(v, &namespace, grants, config_maps))
        };
        Self {
            default: resolve(&frontend.default.validation),
            per_port: frontend
                .per_port
                .iter()
                .map(|p| (p.port, resolve(&p.tls.validation)))
                .collect(),
        }
    }

    /// The validation of the HTTPS listeners on `port`, if they check clients.
    pub fn for_port(&self, port: i32) -> Option<&PortValidation> {
        match self.per_port.get(&port) {
            Some(own) => own.as_ref(),
            None => self.default.as_ref(),
        }
    }
}

/// Why `gateway` lets clients in without a valid certificate, where its frontend TLS says so:
/// the message of its `InsecureFrontendValidationMode` condition.
pub fn insecure_fallback(gateway: &KubeGateway) -> Option<String> {
    let frontend = frontend(gateway)?;
    let insecure = |validation: &Option<FrontendTlsValidation>| {
        validation
            .as_ref()
            .is_some_and(|v| v.mode.as_deref() == Some(INSECURE_FALLBACK))
    };
    let mut scopes = Vec::new();
    if insecure(&frontend.default.validation) {
        scopes.push("by default".to_owned());
    }
    scopes.extend(
        frontend
            .per_port
            .iter()
            .filter(|p| insecure(&p.tls.validation))
            .map(|p| format!("on port {}", p.port)),
    );
    (!scopes.is_empty()).then(|| {
        format!(
            "{INSECURE_FALLBACK} {}: clients without a valid certificate are let in",
            scopes.join(", ")
        )
    })
}

fn frontend(gateway: &KubeGateway) -> Option<&FrontendTlsConfig> {
    gateway.spec.tls.as_ref()?.frontend.as_ref()
}

fn resolve_validation(
    validation: &FrontendTlsValidation,
    namespace: &str,
    grants: &[Arc<ReferenceGrant>],
    config_maps: ConfigMaps<'_>,
) -> PortValidation {
    let mut roots = Vec::new();
    let mut unresolved = None;
    for reference in &validation.ca_certificate_refs {
        match ca_bundle(reference, namespace, grants, config_maps) {
            Ok(certificates) => roots.extend(certificates),
            Err(why) => {
                unresolved.get_or_insert(why);
            }
        }
    }
    if validation.ca_certificate_refs.is_empty() {
        unresolved = Some((
            reason::INVALID_CA_CERTIFICATE_REF,
            "the validation names no caCertificateRefs".to_owned(),
        ));
    }
    PortValidation {
        auth: (!roots.is_empty()).then(|| ClientAuth {
            roots: roots.into(),
            // An unknown mode (the CRD allows none) is read as the safe one.
            insecure_fallback: validation.mode.as_deref() == Some(INSECURE_FALLBACK),
        }),
        unresolved,
    }
}

/// The CA certificates `reference`, from a Gateway of `from_namespace`, names; or the reason
/// and message of the listeners' `ResolvedRefs` condition.
fn ca_bundle(
    reference: &ObjectReference,
    from_namespace: &str,
    grants: &[Arc<ReferenceGrant>],
    config_maps: ConfigMaps<'_>,
) -> Result<Vec<CertificateDer<'static>>, (&'static str, String)> {
    let group = reference.group.as_deref().unwrap_or("");
    let kind = reference.kind.as_deref().unwrap_or("ConfigMap");
    if !group.is_empty() || kind != "ConfigMap" {
        let named = if group.is_empty() {
            kind.to_owned()
        } else {
            format!("{group}/{kind}")
        };
        return Err((
            reason::INVALID_CA_CERTIFICATE_KIND,
            format!(
                "caCertificateRefs name the {named} {}: only ConfigMaps (key {CA_CERTIFICATE_KEY}) hold CA certificates",
                reference.name
            ),
        ));
    }
    let namespace = reference.namespace.as_deref().unwrap_or(from_namespace);
    if namespace != from_namespace
        && !permitted(
            grants,
            GROUP,
            "Gateway",
            from_namespace,
            "",
            "ConfigMap",
            namespace,
            &reference.name,
        )
    {
        return Err((
            reason::REF_NOT_PERMITTED,
            format!(
                "no ReferenceGrant in {namespace} lets Gateways of {from_namespace} use ConfigMap {}",
                reference.name
            ),
        ));
    }
    let named = format!("ConfigMap {namespace}/{}", reference.name);
    let invalid = |message: String| (reason::INVALID_CA_CERTIFICATE_REF, message);
    let config_map =
        config_maps(namespace, &reference.name).ok_or_else(|| invalid(format!("{named} does not exist")))?;
    let pem = config_map
        .data
        .as_ref()
        .and_then(|data| data.get(CA_CERTIFICATE_KEY))
        .map(String::as_bytes)
        .or_else(|| {
            config_map
                .binary_data
                .as_ref()
                .and_then(|data| data.get(CA_CERTIFICATE_KEY))
                .map(|bytes| bytes.0.as_slice())
        })
        .ok_or_else(|| invalid(format!("{named} has no {CA_CERTIFICATE_KEY} key")))?;
    read_ca_bundle(pem).map_err(|problem| invalid(format!("{CA_CERTIFICATE_KEY} of {named} {problem}")))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::gateway::tls::ca_pem;

    fn gateway(frontend: serde_json::Value) -> KubeGateway {
        serde_json::from_value(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": "edge", "namespace": "shop"},
            "spec": {"gatewayClassName": "microgate", "listeners": [], "tls": {"frontend": frontend}},
        }))
        .expect("a Gateway")
    }

    fn config_map(namespace: &str, name: &str, data: serde_json::Value) -> Arc<ConfigMap> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": namespace}, "data": data,
            }))
            .expect("a ConfigMap"),
        )
    }

    fn validation(refs: serde_json::Value) -> serde_json::Value {
        json!({"validation": {"caCertificateRefs": refs}})
    }

    fn config_map_ref(name: &str) -> serde_json::Value {
        json!({"group": "", "kind": "ConfigMap", "name": name})
    }

    #[test]
    fn a_port_of_its_own_replaces_the_default_and_bad_references_say_why() {
        let ca = ca_pem();
        let maps = [
            config_map("shop", "ca", json!({"ca.crt": ca})),
            config_map("shop", "no-key", json!({"other": ca})),
            config_map("shop", "garbage", json!({"ca.crt": "not a certificate"})),
            config_map("other", "elsewhere", json!({"ca.crt": ca})),
        ];
        let lookup = |namespace: &str, name: &str| {
            maps.iter()
                .find(|m| m.namespace().as_deref() == Some(namespace) && m.name_any() == name)
                .cloned()
        };
        let elsewhere = json!({"group": "", "kind": "ConfigMap", "name": "elsewhere", "namespace": "other"});
        let gateway = gateway(json!({
            "default": validation(json!([config_map_ref("ca")])),
            "perPort": [
                {"port": 8443, "tls": {}},
                {"port": 7443, "tls": validation(json!([config_map_ref("missing"), config_map_ref("ca")]))},
                {"port": 6443, "tls": validation(json!([{"group": "", "kind": "Secret", "name": "ca"}]))},
                {"port": 5443, "tls": validation(json!([elsewhere]))},
                {"port": 4443, "tls": validation(json!([config_map_ref("no-key")]))},
                {"port": 3443, "tls": validation(json!([config_map_ref("garbage")]))},
            ],
        }));
        let frontend = FrontendValidation::resolve(&gateway, &[], &lookup);
        let default = frontend.for_port(443).expect("the default applies");
        assert!(default.unresolved.is_none());
        let auth = default.auth.as_ref().expect("clients are checked");
        assert_eq!(auth.roots.len(), 1);
        assert!(!auth.insecure_fallback);
        assert!(
            frontend.for_port(8443).is_none(),
            "a port of its own without validation"
        );

        let partly = frontend.for_port(7443).expect("validation on 7443");
        assert!(partly.auth.is_some(), "the reference that resolves is used");
        assert_eq!(
            partly.unresolved.as_ref().map(|(r, m)| (*r, m.as_str())),
            Some((
                reason::INVALID_CA_CERTIFICATE_REF,
                "ConfigMap shop/missing does not exist"
            ))
        );
        let reason_of = |port: i32| {
            let validation = frontend.for_port(port).expect("validation");
            assert!(validation.auth.is_none(), "port {port}: nothing resolved");
            validation.unresolved.as_ref().map(|(r, _)| *r)
        };
        assert_eq!(reason_of(6443), Some(reason::INVALID_CA_CERTIFICATE_KIND));
        assert_eq!(reason_of(5443), Some(reason::REF_NOT_PERMITTED));
        assert_eq!(reason_of(4443), Some(reason::INVALID_CA_CERTIFICATE_REF));
        assert_eq!(reason_of(3443), Some(reason::INVALID_CA_CERTIFICATE_REF));
        assert!(insecure_fallback(&gateway).is_none());
    }

    #[test]
    fn a_reference_grant_lets_a_gateway_use_a_ca_bundle_of_another_namespace() {
        let maps = [config_map("other", "elsewhere", json!({"ca.crt": ca_pem()}))];
        let lookup = |_: &str, _: &str| maps.first().cloned();
        let grant: ReferenceGrant = serde_json::from_value(json!({
            "apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
            "metadata": {"name": "let-shop", "namespace": "other"},
            "spec": {
                "from": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": "shop"}],
                "to": [{"group": "", "kind": "ConfigMap"}],
            },
        }))
        .expect("a ReferenceGrant");
        let gateway = gateway(json!({"default": validation(json!([
            {"group": "", "kind": "ConfigMap", "name": "elsewhere", "namespace": "other"},
        ]))}));
        let frontend = FrontendValidation::resolve(&gateway, &[Arc::new(grant)], &lookup);
        let validation = frontend.for_port(443).expect("validation");
        assert!(validation.unresolved.is_none(), "{:?}", validation.unresolved);
        assert!(validation.auth.is_some());
    }

    #[test]
    fn the_insecure_fallback_is_named_where_it_is_set() {
        let ca = ca_pem();
        let maps = [config_map("shop", "ca", json!({"ca.crt": ca}))];
        let lookup = |_: &str, _: &str| maps.first().cloned();
        let insecure = json!({"validation": {"mode": "AllowInsecureFallback",
            "caCertificateRefs": [config_map_ref("ca")]}});
        let gateway = gateway(json!({
            "default": validation(json!([config_map_ref("ca")])),
            "perPort": [{"port": 8443, "tls": insecure}],
        }));
        let frontend = FrontendValidation::resolve(&gateway, &[], &lookup);
        let fallback = |port| {
            frontend
                .for_port(port)
                .and_then(|v| v.auth.as_ref())
                .map(|a| a.insecure_fallback)
        };
        assert_eq!(fallback(443), Some(false));
        assert_eq!(fallback(8443), Some(true));
        assert_eq!(
            insecure_fallback(&gateway).as_deref(),
            Some("AllowInsecureFallback on port 8443: clients without a valid certificate are let in")
        );
    }
}
