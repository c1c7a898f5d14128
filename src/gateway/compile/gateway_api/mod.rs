//! The Kubernetes Gateway API front end: GatewayClasses whose controller is microgate's, their
//! Gateways, the HTTPRoutes attached to them and the ReferenceGrants that let references cross
//! namespaces, with Services (through their EndpointSlices) as backends. Besides adding to the
//! table, it decides every condition the specification defines, in a [`Report`] the status
//! writer publishes.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use http::{HeaderName, HeaderValue, StatusCode};
use k8s_openapi::api::{
    core::v1::{Namespace, Service},
    discovery::v1::EndpointSlice,
};
use kube::ResourceExt;

use super::{
    ListenerSettings, ListenerTls, TableBuilder,
    addresses::{Addresses, Refused},
};
use crate::{
    api::{
        gateway::{PathMatchType, TlsVersion},
        gateway_api::{
            CONTROLLER_NAME, GROUP, GatewayClass, HTTPRoute, HeaderModifier, HttpRouteFilter, HttpRouteMatch,
            HttpRouteRule, KubeGateway, Listener, ListenerSet, ObjectReference, ParentReference,
            PathModifier, ReferenceGrant, RequestMirror, RouteGroupKind,
        },
        microservice::Protocol,
        policy::{Backoff, RetryOn, RetryPolicy},
    },
    controller::conditions::Desired,
    discovery::{ServiceKey, slices},
    gateway::{
        policy::{cors::Cors, path::PathPolicy},
        table::{
            Attached, Backend, HeaderEdit, HostPattern, Mirror, PathRewrite, Redirect, Rewrite, Route,
            matching::{PathMatcher, RequestMatch},
        },
        tls::SecretKey,
    },
};

/// The features microgate claims in each GatewayClass's `status.supportedFeatures`: those whose
/// conformance tests pass. The same list, one per line, is what `make conformance` claims
/// (tests/gwapi-conformance/supported-features.txt; a unit test holds the two together).
pub const SUPPORTED_FEATURES: &[&str] = &[
    "Gateway",
    "HTTPRoute",
    "ReferenceGrant",
    "GatewayPort8080",
    "GatewayHTTPListenerIsolation",
    "HTTPRouteQueryParamMatching",
    "HTTPRouteMethodMatching",
    "HTTPRouteResponseHeaderModification",
    "HTTPRouteBackendRequestHeaderModification",
    "HTTPRoutePortRedirect",
    "HTTPRouteSchemeRedirect",
    "HTTPRoutePathRedirect",
    "HTTPRoute303RedirectStatusCode",
    "HTTPRoute307RedirectStatusCode",
    "HTTPRoute308RedirectStatusCode",
    "HTTPRouteHostRewrite",
    "HTTPRoutePathRewrite",
    "HTTPRouteRequestTimeout",
    "HTTPRouteBackendTimeout",
    "HTTPRouteBackendProtocolH2C",
    "HTTPRouteNamedRouteRule",
    "HTTPRouteParentRefPort",
    "GatewayHTTPSListenerDetectMisdirectedRequests",
    "HTTPRouteDestinationPortMatching",
    "HTTPRouteRetry",
    // No conformance test in v1.6.3: tests/e2e/gateway_api.rs proves these two.
    "HTTPRouteRetryConnectionError",
    "HTTPRouteRetryBackendTimeout",
    "HTTPRouteRequestMirror",
    "HTTPRouteRequestMultipleMirrors",
    "HTTPRouteRequestPercentageMirror",
    "HTTPRouteCORS",
    "HTTPRouteBackendProtocolWebSocket",
    "ListenerSet",
    "GatewayStaticAddresses",
    "GatewayAddressEmpty",
    "GatewayFrontendClientCertificateValidation",
    "GatewayFrontendClientCertificateValidationInsecureFallback",
];

mod frontend_tls;
mod listener_sets;

pub use frontend_tls::ConfigMaps;
use frontend_tls::FrontendValidation;

/// Condition types and reasons, as the Gateway API spells them.
pub mod reason {
    pub const ACCEPTED: &str = "Accepted";
    pub const PROGRAMMED: &str = "Programmed";
    pub const RESOLVED_REFS: &str = "ResolvedRefs";
    pub const CONFLICTED: &str = "Conflicted";
    pub const INVALID_PARAMETERS: &str = "InvalidParameters";
    pub const LISTENERS_NOT_VALID: &str = "ListenersNotValid";
    pub const UNSUPPORTED_PROTOCOL: &str = "UnsupportedProtocol";
    pub const INVALID_ROUTE_KINDS: &str = "InvalidRouteKinds";
    pub const INVALID_CERTIFICATE_REF: &str = "InvalidCertificateRef";
    pub const REF_NOT_PERMITTED: &str = "RefNotPermitted";
    pub const PROTOCOL_CONFLICT: &str = "ProtocolConflict";
    pub const HOSTNAME_CONFLICT: &str = "HostnameConflict";
    pub const NO_CONFLICTS: &str = "NoConflicts";
    pub const INVALID: &str = "Invalid";
    pub const NOT_ALLOWED_BY_LISTENERS: &str = "NotAllowedByListeners";
    pub const NO_MATCHING_LISTENER_HOSTNAME: &str = "NoMatchingListenerHostname";
    pub const NO_MATCHING_PARENT: &str = "NoMatchingParent";
    pub const INVALID_KIND: &str = "InvalidKind";
    pub const BACKEND_NOT_FOUND: &str = "BackendNotFound";
    pub const UNSUPPORTED_VALUE: &str = "UnsupportedValue";
    pub const ADDRESS_NOT_ASSIGNED: &str = "AddressNotAssigned";
    pub const ADDRESS_NOT_USABLE: &str = "AddressNotUsable";
    pub const UNSUPPORTED_ADDRESS: &str = "UnsupportedAddress";
    pub const NOT_ALLOWED: &str = "NotAllowed";
    pub const PARENT_NOT_ACCEPTED: &str = "ParentNotAccepted";
    pub const PENDING: &str = "Pending";
    pub const NO_VALID_CA_CERTIFICATE: &str = "NoValidCACertificate";
    pub const INVALID_CA_CERTIFICATE_REF: &str = "InvalidCACertificateRef";
    pub const INVALID_CA_CERTIFICATE_KIND: &str = "InvalidCACertificateKind";
    pub const INSECURE_FRONTEND_VALIDATION_MODE: &str = "InsecureFrontendValidationMode";
    pub const CONFIGURATION_CHANGED: &str = "ConfigurationChanged";
}

/// A namespaced object's namespace and name.
pub type ObjectKey = (String, String);

/// The Gateway API's resources as the watches hold them, and each Gateway's address.
pub struct Resources<'a> {
    pub classes: &'a [Arc<GatewayClass>],
    pub gateways: &'a [Arc<KubeGateway>],
    pub listener_sets: &'a [Arc<ListenerSet>],
    pub routes: &'a [Arc<HTTPRoute>],
    pub grants: &'a [Arc<ReferenceGrant>],
    pub services: &'a [Arc<Service>],
    pub slices: &'a [Arc<EndpointSlice>],
    pub namespaces: &'a [Arc<Namespace>],
    /// Where each Gateway listens (see `compile::addresses`); one without is not programmed.
    pub addresses: &'a Addresses,
}

/// Every condition the front end decided, for the status writer.
#[derive(Debug, Default)]
pub struct Report {
    /// The GatewayClasses microgate serves.
    pub classes: Vec<Arc<GatewayClass>>,
    pub gateways: Vec<GatewayReport>,
    pub listener_sets: Vec<ListenerSetReport>,
    pub routes: Vec<RouteReport>,
}

#[derive(Debug)]
pub struct GatewayReport {
    pub gateway: Arc<KubeGateway>,
    pub address: Option<IpAddr>,
    /// Why the Gateway has no address, when it asked for one it cannot have.
    pub address_not_usable: Option<String>,
    pub accepted: Desired,
    pub listeners: Vec<ListenerReport>,
    /// ListenerSets allowed to add listeners, and Accepted.
    pub attached_listener_sets: i32,
    /// Why clients without a valid certificate are let in, where the Gateway says they are.
    pub insecure_frontend_validation: Option<String>,
}

/// A ListenerSet whose parent is one of microgate's Gateways.
#[derive(Debug)]
pub struct ListenerSetReport {
    pub set: Arc<ListenerSet>,
    /// Its Gateway's, where its listeners listen.
    pub address: Option<IpAddr>,
    /// Its Programmed condition, when not Accepted, takes the same reason.
    pub accepted: Desired,
    /// One per listener of its spec, in order; none when the set is not attached.
    pub listeners: Vec<ListenerReport>,
}

#[derive(Debug)]
pub struct ListenerReport {
    pub name: String,
    /// How the table names it.
    pub id: Arc<str>,
    /// Where it listens, when it is served.
    pub local: Option<SocketAddr>,
    pub supported_kinds: Vec<RouteGroupKind>,
    pub attached_routes: i32,
    /// Accepted, ResolvedRefs and Conflicted; the writer adds Programmed once it knows whether
    /// the address was bound.
    pub conditions: Vec<Desired>,
    /// Why the table does not serve it, if it does not.
    pub not_served: Option<String>,
    /// The reason of its Programmed condition when it is not served.
    pub not_programmed_reason: &'static str,
}

impl ListenerReport {
    fn condition(&self, type_: &str) -> bool {
        self.conditions.iter().any(|c| c.type_ == type_ && c.status)
    }

    /// Accepted, and every reference resolved.
    fn valid(&self) -> bool {
        self.condition(reason::ACCEPTED) && self.condition(reason::RESOLVED_REFS)
    }
}

#[derive(Debug)]
pub struct RouteReport {
    pub route: Arc<HTTPRoute>,
    /// Per parent of microgate's that the route names: its conditions.
    pub parents: Vec<(ParentReference, Vec<Desired>)>,
}

/// The Secrets the served Gateways' HTTPS listeners, and those of the ListenerSets attached to
/// them, may use (those a ReferenceGrant lets them).
pub fn certificate_refs(resources: &Resources<'_>) -> Vec<SecretKey> {
    let mut refs = Vec::new();
    let mut add = |listeners: &[Listener], namespace: &str, kind: &str| {
        for listener in listeners {
            for reference in listener.tls.iter().flat_map(|t| &t.certificate_refs) {
                if let Ok(key) = secret_key(reference, namespace, kind, resources.grants) {
                    refs.push(key);
                }
            }
        }
    };
    let served = served_gateways(resources.classes, resources.gateways);
    for gateway in &served {
        add(
            &gateway.spec.listeners,
            &gateway.namespace().unwrap_or_default(),
            "Gateway",
        );
    }
    for set in resources.listener_sets {
        if served.iter().any(|g| listener_sets::parent_is(set, g)) {
            add(
                &set.spec.listeners,
                &set.namespace().unwrap_or_default(),
                "ListenerSet",
            );
        }
    }
    refs
}

/// How the table names a Gateway's listener: apart from microgate.dev's by the group.
pub fn listener_id(gateway: &KubeGateway, listener: &Listener) -> Arc<str> {
    format!(
        "{GROUP}/{}/{}/{}",
        gateway.namespace().unwrap_or_default(),
        gateway.name_any(),
        listener.name
    )
    .into()
}

/// The Gateways of microgate's classes, oldest first (the order addresses and contested ports
/// are given in).
pub fn served_gateways<'g>(
    classes: &[Arc<GatewayClass>],
    gateways: &'g [Arc<KubeGateway>],
) -> Vec<&'g Arc<KubeGateway>> {
    let ours = our_classes(classes);
    let mut served: Vec<_> = gateways
        .iter()
        .filter(|g| ours.contains(g.spec.gateway_class_name.as_str()))
        .collect();
    served.sort_by_key(|g| (g.creation_timestamp(), g.namespace(), g.name_any()));
    served
}

fn our_classes(classes: &[Arc<GatewayClass>]) -> BTreeSet<String> {
    classes
        .iter()
        .filter(|c| c.spec.controller_name == CONTROLLER_NAME)
        .map(|c| c.name_any())
        .collect()
}

/// Adds the Gateway API's Gateways, their ListenerSets and the routes to `builder`, and says
/// what became of each. `config_maps` holds the CA bundles Gateways check client certificates
/// against.
pub fn compile(
    builder: &mut TableBuilder<'_>,
    resources: &Resources<'_>,
    config_maps: ConfigMaps<'_>,
) -> Report {
    let classes = our_classes(resources.classes);
    let mut report = Report {
        classes: resources
            .classes
            .iter()
            .filter(|c| classes.contains(&c.name_any()))
            .cloned()
            .collect(),
        ..Report::default()
    };
    for gateway in served_gateways(resources.classes, resources.gateways) {
        let frontend = FrontendValidation::resolve(gateway, resources.grants, config_maps);
        let mut gateway_report = add_gateway(builder, gateway, &frontend, resources);
        // A Gateway's own listeners come first, then its ListenerSets'.
        report.listener_sets.extend(listener_sets::add(
            builder,
            &mut gateway_report,
            &frontend,
            resources,
        ));
        report.gateways.push(gateway_report);
    }
    let mut routes: Vec<&Arc<HTTPRoute>> = resources.routes.iter().collect();
    // The Gateway API's tie-break between equally specific rules: the oldest route, then by
    // namespace and name.
    routes.sort_by_key(|r| (r.creation_timestamp(), r.namespace(), r.name_any()));
    for route in routes {
        if let Some(route_report) = add_route(builder, route, resources, &mut report) {
            report.routes.push(route_report);
        }
    }
    report
}

fn add_gateway(
    builder: &mut TableBuilder<'_>,
    gateway: &Arc<KubeGateway>,
    frontend: &FrontendValidation,
    resources: &Resources<'_>,
) -> GatewayReport {
    let namespace = gateway.namespace().unwrap_or_default();
    let name = gateway.name_any();
    let key = (namespace.clone(), name);
    let address = resources.addresses.given.get(&key).copied();
    let mut report = GatewayReport {
        gateway: gateway.clone(),
        address,
        address_not_usable: None,
        accepted: Desired::new(reason::ACCEPTED, true, reason::ACCEPTED, "accepted"),
        listeners: Vec::new(),
        attached_listener_sets: 0,
        insecure_frontend_validation: frontend_tls::insecure_fallback(gateway),
    };
    match resources.addresses.refused.get(&key) {
        Some(Refused::Unsupported(why)) => {
            report.accepted = Desired::new(reason::ACCEPTED, false, reason::UNSUPPORTED_ADDRESS, why.clone());
            return report;
        }
        Some(Refused::NotUsable(why)) => report.address_not_usable = Some(why.clone()),
        None => {}
    }
    if let Some(parameters) = gateway
        .spec
        .infrastructure
        .as_ref()
        .and_then(|i| i.parameters_ref.as_ref())
    {
        report.accepted = Desired::new(
            reason::ACCEPTED,
            false,
            reason::INVALID_PARAMETERS,
            format!(
                "infrastructure.parametersRef {}/{} {}: microgate takes no parameters",
                parameters.group, parameters.kind, parameters.name
            ),
        );
        return report;
    }
    let conflicts = conflicts(&gateway.spec.listeners);
    let owner = Owner {
        kind: "Gateway",
        namespace: &namespace,
        address,
        frontend,
    };
    for listener in &gateway.spec.listeners {
        let conflict = match conflicts.get(listener.name.as_str()) {
            Some(why) => Conflict::Shared(why),
            None => Conflict::None,
        };
        let id = listener_id(gateway, listener);
        report
            .listeners
            .push(add_listener(builder, listener, id, &owner, conflict, resources));
    }
    let valid = report
        .listeners
        .iter()
        .filter(|l| l.condition(reason::ACCEPTED))
        .count();
    if valid < report.listeners.len() {
        report.accepted = Desired::new(
            reason::ACCEPTED,
            valid > 0,
            reason::LISTENERS_NOT_VALID,
            format!(
                "{} of {} listeners are not valid",
                report.listeners.len() - valid,
                report.listeners.len()
            ),
        );
    }
    report
}

/// Whose listener it is: a Gateway's or a ListenerSet's, of `namespace` (where its certificate
/// references start), listening on `address`, checking clients as the Gateway's `frontend` TLS
/// says.
struct Owner<'a> {
    kind: &'static str,
    namespace: &'a str,
    address: Option<IpAddr>,
    frontend: &'a FrontendValidation,
}

/// A listener's conflict with others on its port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Conflict {
    None,
    /// With a listener of the same Gateway: neither is served.
    Shared(&'static str),
    /// With a listener that comes first (the Gateway's own, or an older ListenerSet's): that
    /// one is served, this one is not accepted.
    Outranked(&'static str),
}

/// Decides one listener's conditions and, where it can be served, adds it to the table.
fn add_listener(
    builder: &mut TableBuilder<'_>,
    listener: &Listener,
    id: Arc<str>,
    owner: &Owner<'_>,
    conflict: Conflict,
    resources: &Resources<'_>,
) -> ListenerReport {
    let (kinds, invalid_kinds) = route_kinds(listener);
    let mut report = ListenerReport {
        name: listener.name.clone(),
        id: id.clone(),
        local: None,
        supported_kinds: kinds,
        attached_routes: 0,
        conditions: Vec::new(),
        not_served: None,
        not_programmed_reason: reason::INVALID,
    };
    let mut resolved = if invalid_kinds.is_empty() {
        Desired::new(
            reason::RESOLVED_REFS,
            true,
            reason::RESOLVED_REFS,
            "every reference resolved",
        )
    } else {
        Desired::new(
            reason::RESOLVED_REFS,
            false,
            reason::INVALID_ROUTE_KINDS,
            format!("route kinds not supported: {}", invalid_kinds.join(", ")),
        )
    };
    if let Conflict::Outranked(why) = conflict {
        let message = "a listener that comes first holds the port";
        report
            .conditions
            .push(Desired::new(reason::ACCEPTED, false, why, message));
        report.conditions.push(resolved);
        report
            .conditions
            .push(Desired::new(reason::CONFLICTED, true, why, message));
        report.not_served = Some(message.to_owned());
        report.not_programmed_reason = why;
        return report;
    }
    let https = match listener.protocol.as_str() {
        "HTTP" => false,
        "HTTPS" => true,
        other => {
            report.conditions.push(Desired::new(
                reason::ACCEPTED,
                false,
                reason::UNSUPPORTED_PROTOCOL,
                format!("protocol {other} is not supported: HTTP and HTTPS are"),
            ));
            report.conditions.push(resolved);
            report.not_served = Some(format!("protocol {other} is not supported"));
            return report;
        }
    };
    let mut tls = None;
    let mut accepted = Desired::new(reason::ACCEPTED, true, reason::ACCEPTED, "accepted");
    if https {
        match listener_certificates(listener, owner, resources.grants, builder) {
            Ok(certificates) => {
                tls = Some(ListenerTls {
                    certificates,
                    min_version: TlsVersion::default(),
                    client_auth: None,
                })
            }
            Err((why_reason, message)) => {
                resolved = Desired::new(reason::RESOLVED_REFS, false, why_reason, message.clone());
                report.not_served = Some(message);
            }
        }
        if let Some(validation) = owner.frontend.for_port(listener.port) {
            if let Some((why_reason, message)) = &validation.unresolved
                && resolved.status
            {
                resolved = Desired::new(reason::RESOLVED_REFS, false, why_reason, message.clone());
            }
            match (&validation.auth, &mut tls) {
                (Some(auth), Some(tls)) => tls.client_auth = Some(auth.clone()),
                (Some(_), None) => {}
                (None, _) => {
                    let message =
                        "none of the CA certificates spec.tls.frontend names for this port resolved";
                    accepted =
                        Desired::new(reason::ACCEPTED, false, reason::NO_VALID_CA_CERTIFICATE, message);
                    report.not_served.get_or_insert_with(|| message.to_owned());
                }
            }
        }
    }
    report.conditions.push(accepted);
    report.conditions.push(resolved);
    report.conditions.push(match conflict {
        Conflict::Shared(why) => {
            report.not_served = Some("conflicts with another listener".to_owned());
            Desired::new(
                reason::CONFLICTED,
                true,
                why,
                "another listener of this Gateway holds the port",
            )
        }
        Conflict::None | Conflict::Outranked(_) => {
            Desired::new(reason::CONFLICTED, false, reason::NO_CONFLICTS, "no conflicts")
        }
    });
    let (Some(address), None, Ok(port)) = (owner.address, &report.not_served, u16::try_from(listener.port))
    else {
        if owner.address.is_none() && report.not_served.is_none() {
            report.not_served = Some("the Gateway has no address yet".to_owned());
        }
        return report;
    };
    if https && tls.is_none() {
        return report;
    }
    let local = SocketAddr::new(address, port);
    let settings = ListenerSettings {
        id,
        local,
        hostnames: listener
            .hostname
            .iter()
            .map(|h| HostPattern::parse_any_depth(h))
            .collect(),
        tls,
        trusted_proxies: None,
        path_policy: PathPolicy::default(),
        max_connections: None,
    };
    match builder.listener(settings) {
        Ok(()) => report.local = Some(local),
        Err(why) => report.not_served = Some(why),
    }
    report
}

/// The listeners of one Gateway that conflict, by name, with the reason: two protocols on one
/// port, or one port, protocol and hostname twice.
fn conflicts(listeners: &[Listener]) -> HashMap<&str, &'static str> {
    let mut found = HashMap::new();
    for (i, a) in listeners.iter().enumerate() {
        for (j, b) in listeners.iter().enumerate() {
            if i == j {
                continue;
            }
            if let Some(why) = conflict_between(a, b) {
                let entry = found.entry(a.name.as_str()).or_insert(why);
                // Two protocols on one port is the graver conflict.
                if why == reason::PROTOCOL_CONFLICT {
                    *entry = why;
                }
            }
        }
    }
    found
}

/// Whether two listeners cannot both be served, and why.
fn conflict_between(a: &Listener, b: &Listener) -> Option<&'static str> {
    if a.port != b.port {
        None
    } else if a.protocol != b.protocol {
        Some(reason::PROTOCOL_CONFLICT)
    } else if a.hostname == b.hostname {
        Some(reason::HOSTNAME_CONFLICT)
    } else {
        None
    }
}

/// The route kinds a listener takes (only HTTPRoute, on HTTP and HTTPS listeners), and those it
/// names that are not supported.
fn route_kinds(listener: &Listener) -> (Vec<RouteGroupKind>, Vec<String>) {
    let http_route = RouteGroupKind {
        group: Some(GROUP.to_owned()),
        kind: "HTTPRoute".to_owned(),
    };
    let serves_http = matches!(listener.protocol.as_str(), "HTTP" | "HTTPS");
    let Some(kinds) = listener.allowed_routes.as_ref().and_then(|a| a.kinds.as_ref()) else {
        return (
            if serves_http { vec![http_route] } else { Vec::new() },
            Vec::new(),
        );
    };
    let mut supported = Vec::new();
    let mut invalid = Vec::new();
    for kind in kinds {
        let group = kind.group.as_deref().unwrap_or(GROUP);
        if serves_http && group == GROUP && kind.kind == "HTTPRoute" {
            if !supported.contains(&http_route) {
                supported.push(http_route.clone());
            }
        } else {
            invalid.push(format!("{group}/{}", kind.kind));
        }
    }
    (supported, invalid)
}

/// The Secret a certificate reference of a `from_kind` in `from_namespace` names, if the
/// reference may be followed.
fn secret_key(
    reference: &ObjectReference,
    from_namespace: &str,
    from_kind: &str,
    grants: &[Arc<ReferenceGrant>],
) -> Result<SecretKey, (&'static str, String)> {
    let group = reference.group.as_deref().unwrap_or("");
    let kind = reference.kind.as_deref().unwrap_or("Secret");
    if !group.is_empty() || kind != "Secret" {
        return Err((
            reason::INVALID_CERTIFICATE_REF,
            format!("certificateRefs name a {group}/{kind}: only core Secrets hold certificates"),
        ));
    }
    let namespace = reference.namespace.as_deref().unwrap_or(from_namespace);
    if namespace != from_namespace
        && !permitted(
            grants,
            GROUP,
            from_kind,
            from_namespace,
            "",
            "Secret",
            namespace,
            &reference.name,
        )
    {
        return Err((
            reason::REF_NOT_PERMITTED,
            format!(
                "no ReferenceGrant in {namespace} lets {from_kind}s of {from_namespace} use Secret {}",
                reference.name
            ),
        ));
    }
    Ok(SecretKey {
        namespace: namespace.to_owned(),
        name: reference.name.clone(),
    })
}

/// The certificate Secrets of an HTTPS listener, each valid, or why the listener's references
/// do not resolve.
fn listener_certificates(
    listener: &Listener,
    owner: &Owner<'_>,
    grants: &[Arc<ReferenceGrant>],
    builder: &TableBuilder<'_>,
) -> Result<Vec<SecretKey>, (&'static str, String)> {
    let tls = listener.tls.as_ref().ok_or((
        reason::INVALID_CERTIFICATE_REF,
        "an HTTPS listener needs tls.certificateRefs".to_owned(),
    ))?;
    if tls.mode.as_deref().is_some_and(|m| m != "Terminate") {
        return Err((
            reason::INVALID_CERTIFICATE_REF,
            "tls.mode Passthrough is not supported".to_owned(),
        ));
    }
    if tls.certificate_refs.is_empty() {
        return Err((
            reason::INVALID_CERTIFICATE_REF,
            "an HTTPS listener needs tls.certificateRefs".to_owned(),
        ));
    }
    let mut keys = Vec::new();
    for reference in &tls.certificate_refs {
        let key = secret_key(reference, owner.namespace, owner.kind, grants)?;
        if let Some(problem) = builder.certificates().problem(&key) {
            return Err((
                reason::INVALID_CERTIFICATE_REF,
                format!("Secret {}/{} {problem}", key.namespace, key.name),
            ));
        }
        if builder.certificates().certificate(&key).is_none() {
            return Err((
                reason::INVALID_CERTIFICATE_REF,
                format!("Secret {}/{} holds no valid certificate", key.namespace, key.name),
            ));
        }
        keys.push(key);
    }
    Ok(keys)
}

/// Whether a ReferenceGrant in `to_namespace` lets `from_kind`s of `from_namespace` refer to
/// the `to_kind` `to_name`.
#[allow(clippy::too_many_arguments)]
fn permitted(
    grants: &[Arc<ReferenceGrant>],
    from_group: &str,
    from_kind: &str,
    from_namespace: &str,
    to_group: &str,
    to_kind: &str,
    to_namespace: &str,
    to_name: &str,
) -> bool {
    grants.iter().any(|grant| {
        grant.namespace().as_deref() == Some(to_namespace)
            && grant
                .spec
                .from
                .iter()
                .any(|f| f.group == from_group && f.kind == from_kind && f.namespace == from_namespace)
            && grant.spec.to.iter().any(|t| {
                t.group == to_group && t.kind == to_kind && t.name.as_deref().is_none_or(|n| n == to_name)
            })
    })
}

fn add_route(
    builder: &mut TableBuilder<'_>,
    route: &Arc<HTTPRoute>,
    resources: &Resources<'_>,
    report: &mut Report,
) -> Option<RouteReport> {
    let namespace = route.namespace().unwrap_or_default();
    let mut route_report = RouteReport {
        route: route.clone(),
        parents: Vec::new(),
    };
    // Compiled once, attached under each parent that accepts the route.
    let (rules, resolved) = compile_rules(builder, route, resources);
    for parent in &route.spec.parent_refs {
        let group = parent.group.as_deref().unwrap_or(GROUP);
        let kind = parent.kind.as_deref().unwrap_or("Gateway");
        let parent_namespace = parent.namespace.clone().unwrap_or_else(|| namespace.clone());
        let named = |object_namespace: Option<String>, name: String| {
            object_namespace.as_deref() == Some(parent_namespace.as_str()) && name == parent.name
        };
        // Not one of microgate's: its own controller reports.
        let (parent_accepted, listeners, specs, owner_namespace) = match (group, kind) {
            (GROUP, "Gateway") => {
                let Some(gateway) = report
                    .gateways
                    .iter_mut()
                    .find(|g| named(g.gateway.namespace(), g.gateway.name_any()))
                else {
                    continue;
                };
                (
                    gateway.accepted.status,
                    &mut gateway.listeners,
                    &gateway.gateway.spec.listeners,
                    gateway.gateway.namespace().unwrap_or_default(),
                )
            }
            (GROUP, "ListenerSet") => {
                let Some(set) = report
                    .listener_sets
                    .iter_mut()
                    .find(|s| named(s.set.namespace(), s.set.name_any()))
                else {
                    continue;
                };
                (
                    set.accepted.status,
                    &mut set.listeners,
                    &set.set.spec.listeners,
                    set.set.namespace().unwrap_or_default(),
                )
            }
            _ => continue,
        };
        let accepted = if parent_accepted {
            attach(
                builder,
                route,
                &namespace,
                parent,
                Parent {
                    namespace: &owner_namespace,
                    specs,
                    listeners,
                },
                resources.namespaces,
                &rules,
            )
        } else {
            Desired::new(
                reason::ACCEPTED,
                false,
                reason::NO_MATCHING_PARENT,
                format!("the {kind} is not accepted"),
            )
        };
        route_report
            .parents
            .push((parent.clone(), vec![accepted, resolved.clone()]));
    }
    (!route_report.parents.is_empty()).then_some(route_report)
}

/// The listeners a route may attach to under one parentRef: a Gateway's own, or a ListenerSet's.
struct Parent<'p> {
    /// Where `allowedRoutes.namespaces: Same` points.
    namespace: &'p str,
    specs: &'p [Listener],
    /// One per spec, in order.
    listeners: &'p mut [ListenerReport],
}

/// Attaches the route's compiled rules to the listeners of `parent` that `parent_ref` names and
/// that take the route; its Accepted condition under that parent.
fn attach(
    builder: &mut TableBuilder<'_>,
    route: &HTTPRoute,
    route_namespace: &str,
    parent_ref: &ParentReference,
    parent: Parent<'_>,
    namespaces: &[Arc<Namespace>],
    rules: &[Arc<Route>],
) -> Desired {
    let named: Vec<usize> = parent
        .specs
        .iter()
        .enumerate()
        .filter(|(_, l)| parent_ref.section_name.as_ref().is_none_or(|s| *s == l.name))
        .filter(|(_, l)| parent_ref.port.is_none_or(|p| p == l.port))
        .map(|(i, _)| i)
        .collect();
    if named.is_empty() {
        return Desired::new(
            reason::ACCEPTED,
            false,
            reason::NO_MATCHING_PARENT,
            "no listener of the parent has the sectionName and port the parentRef names",
        );
    }
    let allowed: Vec<usize> = named
        .into_iter()
        .filter(|i| {
            let kinds_ok = parent
                .listeners
                .get(*i)
                .is_some_and(|l| l.supported_kinds.iter().any(|k| k.kind == "HTTPRoute"));
            kinds_ok && namespace_allowed(&parent.specs[*i], parent.namespace, route_namespace, namespaces)
        })
        .collect();
    if allowed.is_empty() {
        return Desired::new(
            reason::ACCEPTED,
            false,
            reason::NOT_ALLOWED_BY_LISTENERS,
            "the listeners' allowedRoutes do not take this route",
        );
    }
    let matching: Vec<usize> = allowed
        .into_iter()
        .filter(|i| hostnames_intersect(parent.specs[*i].hostname.as_deref(), &route.spec.hostnames))
        .collect();
    if matching.is_empty() {
        return Desired::new(
            reason::ACCEPTED,
            false,
            reason::NO_MATCHING_LISTENER_HOSTNAME,
            "no listener's hostname intersects the route's hostnames",
        );
    }
    for i in matching {
        let listener_report = &mut parent.listeners[i];
        listener_report.attached_routes += 1;
        let Some(local) = listener_report.local else {
            continue;
        };
        let listener_hostnames: Vec<HostPattern> = parent.specs[i]
            .hostname
            .iter()
            .map(|h| HostPattern::parse_any_depth(h))
            .collect();
        for rule in rules {
            let matchers: Vec<Option<usize>> = if rule.matches.is_empty() {
                vec![None]
            } else {
                (0..rule.matches.len()).map(Some).collect()
            };
            for matcher in matchers {
                builder.attach(
                    local,
                    Attached {
                        listener: listener_report.id.clone(),
                        listener_hostnames: listener_hostnames.clone(),
                        route: rule.clone(),
                        matcher,
                    },
                );
            }
        }
    }
    Desired::new(reason::ACCEPTED, true, reason::ACCEPTED, "accepted")
}

/// Whether a listener's `allowedRoutes.namespaces` takes routes of `route_namespace`.
fn namespace_allowed(
    listener: &Listener,
    owner_namespace: &str,
    route_namespace: &str,
    namespaces: &[Arc<Namespace>],
) -> bool {
    let from = listener
        .allowed_routes
        .as_ref()
        .and_then(|a| a.namespaces.as_ref());
    match from.and_then(|n| n.from.as_deref()).unwrap_or("Same") {
        "All" => true,
        "Selector" => {
            let Some(selector) = from.and_then(|n| n.selector.as_ref()) else {
                return false;
            };
            let labels = namespaces
                .iter()
                .find(|n| n.name_any() == route_namespace)
                .map(|n| n.labels().clone())
                .unwrap_or_default();
            selector_matches(selector, &labels)
        }
        _ => route_namespace == owner_namespace,
    }
}

fn selector_matches(
    selector: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    labels: &BTreeMap<String, String>,
) -> bool {
    let labels_ok = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let expressions_ok = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        let value = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    labels_ok && expressions_ok
}

/// Whether a listener's hostname and a route's hostnames have a host in common (no hostname on
/// either side: any host).
fn hostnames_intersect(listener: Option<&str>, route: &[String]) -> bool {
    let Some(listener) = listener else {
        return true;
    };
    if route.is_empty() {
        return true;
    }
    let listener = listener.to_ascii_lowercase();
    route.iter().any(|hostname| {
        let hostname = hostname.to_ascii_lowercase();
        hostname == listener
            || HostPattern::parse_any_depth(&listener).matches(&hostname)
            || HostPattern::parse_any_depth(&hostname).matches(&listener)
            || (listener.starts_with("*.") && hostname.starts_with("*.") && {
                let (a, b) = (&listener[1..], &hostname[1..]);
                a.ends_with(b) || b.ends_with(a)
            })
    })
}

/// The route's rules in the table's terms (one table route per rule), and its ResolvedRefs
/// condition: the first reference that does not resolve decides it.
fn compile_rules(
    builder: &mut TableBuilder<'_>,
    route: &HTTPRoute,
    resources: &Resources<'_>,
) -> (Vec<Arc<Route>>, Desired) {
    let namespace = route.namespace().unwrap_or_default();
    let name = route.name_any();
    let mut resolved = Desired::new(
        reason::RESOLVED_REFS,
        true,
        reason::RESOLVED_REFS,
        "every reference resolved",
    );
    let mut compiled = Vec::with_capacity(route.spec.rules.len());
    for (index, rule) in route.spec.rules.iter().enumerate() {
        let id = format!("gateway.networking.k8s.io/{namespace}/{name}/{index}");
        let Some(matches) = rule_matches(rule) else {
            tracing::warn!(route = %id, "rule not served: a match does not compile");
            continue;
        };
        let mut backends = Vec::with_capacity(rule.backend_refs.len());
        for backend in &rule.backend_refs {
            let weight = u32::try_from(backend.weight.unwrap_or(1)).unwrap_or(0);
            let upstream = match resolve_backend(builder, &backend.target, &namespace, resources) {
                Ok(upstream) => Some(upstream),
                Err((why, message)) => {
                    if resolved.status {
                        resolved = Desired::new(reason::RESOLVED_REFS, false, why, message);
                    }
                    None
                }
            };
            let request_headers = backend
                .filters
                .iter()
                .find(|f| f.type_ == "RequestHeaderModifier")
                .and_then(|f| f.request_header_modifier.as_ref())
                .map(header_edit);
            if weight > 0 {
                backends.push(Backend {
                    upstream,
                    weight,
                    request_headers,
                });
            }
        }
        let retry = retry_policy(rule);
        let mut compiled_rule = Route {
            metrics: builder.route_metrics(&id),
            budget: builder.budget(&id, retry.as_ref()),
            id,
            redirect: None,
            hostnames: route
                .spec
                .hostnames
                .iter()
                .map(|h| HostPattern::parse_any_depth(h))
                .collect(),
            matches,
            total_weight: backends.iter().map(|b| b.weight).sum(),
            backends,
            // A zero timeout is no timeout, as the Gateway API says.
            timeout: rule
                .timeouts
                .as_ref()
                .and_then(|t| t.request)
                .map(|d| d.get())
                .filter(|d| !d.is_zero()),
            retry,
            no_backend: StatusCode::INTERNAL_SERVER_ERROR,
            request_headers: None,
            response_headers: None,
            rewrite: None,
            mirrors: Vec::new(),
            cors: None,
            access: None,
        };
        for filter in &rule.filters {
            apply_filter(&mut compiled_rule, filter);
        }
        if let Some(extension) = rule.filters.iter().find_map(|f| f.extension_ref.as_ref()) {
            let (access, cors) = if extension.group == crate::api::GROUP && extension.kind == "AccessPolicy" {
                if !builder.access_policy_exists(&namespace, &extension.name) && resolved.status {
                    // The rule refuses its requests until the policy appears (see
                    // access_policy); its status must say why rather than claim resolution.
                    let why = format!(
                        "extensionRef names AccessPolicy {namespace}/{}, which does not exist",
                        extension.name
                    );
                    resolved = Desired::new(reason::RESOLVED_REFS, false, reason::BACKEND_NOT_FOUND, why);
                }
                builder.access_policy(&compiled_rule.id, &namespace, &extension.name)
            } else {
                // A filter microgate cannot apply must not be skipped: the rule's requests
                // are refused instead (as the Gateway API asks of unresolved extensions).
                let why = format!(
                    "extensionRef names a {}/{}: microgate's only extension is microgate.dev/AccessPolicy",
                    extension.group, extension.kind
                );
                if resolved.status {
                    resolved = Desired::new(reason::RESOLVED_REFS, false, reason::INVALID_KIND, why.clone());
                }
                builder.refusing_access(&compiled_rule.id, why)
            };
            compiled_rule.access = Some(access);
            compiled_rule.cors = compiled_rule.cors.take().or(cors);
        }
        for mirror in rule.filters.iter().filter_map(|f| f.request_mirror.as_ref()) {
            // A mirror that does not resolve is left out, and says so, like a backendRef.
            match resolve_backend(builder, &mirror.backend_ref, &namespace, resources) {
                Ok(upstream) => {
                    let (numerator, denominator) = mirror_share(mirror);
                    compiled_rule.mirrors.push(Mirror {
                        upstream,
                        numerator,
                        denominator,
                    });
                }
                Err((why, message)) => {
                    if resolved.status {
                        resolved = Desired::new(reason::RESOLVED_REFS, false, why, message);
                    }
                }
            }
        }
        compiled.push(Arc::new(compiled_rule));
    }
    (compiled, resolved)
}

/// A rule's `retry` (experimental channel) and `timeouts.backendRequest` as a retry policy: the
/// listed status codes are retried `attempts` times, each attempt within `backendRequest`. So
/// are the failures with no answer, which the Gateway API retries whenever `retry` is there,
/// codes or not: a connection that failed or broke (HTTPRouteRetryConnectionError), and an
/// attempt that outlived `backendRequest` (HTTPRouteRetryBackendTimeout). A request that may
/// have reached the backend is tried again only if its method is idempotent.
fn retry_policy(rule: &HttpRouteRule) -> Option<RetryPolicy> {
    let per_try_timeout = rule
        .timeouts
        .as_ref()
        .and_then(|t| t.backend_request)
        .filter(|d| !d.get().is_zero());
    let Some(retry) = &rule.retry else {
        return per_try_timeout.map(|per_try| RetryPolicy {
            attempts: 0,
            per_try_timeout: Some(per_try),
            ..RetryPolicy::default()
        });
    };
    let mut backoff = Backoff::default();
    if let Some(base) = retry.backoff.filter(|d| !d.get().is_zero()) {
        backoff.base = base;
        backoff.max = backoff.max.max(base);
    }
    Some(RetryPolicy {
        attempts: retry.attempts.unwrap_or(1).clamp(0, 10),
        per_try_timeout,
        retry_on: vec![
            RetryOn::ConnectFailure,
            RetryOn::Reset,
            RetryOn::PerTryTimeout,
            RetryOn::RetriableStatusCodes,
        ],
        retriable_status_codes: retry.codes.clone(),
        backoff,
        ..RetryPolicy::default()
    })
}

/// A rule's matches in the table's terms; an empty list is one match of every path.
fn rule_matches(rule: &HttpRouteRule) -> Option<Vec<RequestMatch>> {
    if rule.matches.is_empty() {
        return Some(vec![RequestMatch {
            path: Some(PathMatcher::Prefix("/".to_owned())),
            ..RequestMatch::default()
        }]);
    }
    rule.matches.iter().map(request_match).collect()
}

fn request_match(m: &HttpRouteMatch) -> Option<RequestMatch> {
    let path = match &m.path {
        None => PathMatcher::Prefix("/".to_owned()),
        Some(p) => {
            let kind = match p.type_.as_deref().unwrap_or("PathPrefix") {
                "Exact" => PathMatchType::Exact,
                "RegularExpression" => PathMatchType::RegularExpression,
                _ => PathMatchType::PathPrefix,
            };
            PathMatcher::compile(kind, p.value.as_deref().unwrap_or("/")).ok()?
        }
    };
    Some(RequestMatch {
        path: Some(path),
        query: m
            .query_params
            .iter()
            .filter(|q| q.type_.as_deref().unwrap_or("Exact") == "Exact")
            .map(|q| (q.name.clone(), q.value.clone()))
            .collect(),
        method: m
            .method
            .as_deref()
            .and_then(|v| http::Method::from_bytes(v.as_bytes()).ok()),
        headers: m
            .headers
            .iter()
            .filter(|h| h.type_.as_deref().unwrap_or("Exact") == "Exact")
            .filter_map(|h| {
                Some((
                    HeaderName::try_from(h.name.to_ascii_lowercase()).ok()?,
                    h.value.clone(),
                ))
            })
            .collect(),
    })
}

/// A Microservice as a backendRef (`group: microgate.dev`): its endpoints from the registry and
/// its own traffic policy (balancer, outlier detection, circuit breaker), as a microgate.dev
/// Gateway's route would send to it.
fn resolve_microservice(
    builder: &mut TableBuilder<'_>,
    target: &ObjectReference,
    route_namespace: &str,
    resources: &Resources<'_>,
) -> Result<Arc<crate::gateway::table::Upstream>, (&'static str, String)> {
    let namespace = target.namespace.as_deref().unwrap_or(route_namespace);
    if namespace != route_namespace
        && !permitted(
            resources.grants,
            GROUP,
            "HTTPRoute",
            route_namespace,
            crate::api::GROUP,
            "Microservice",
            namespace,
            &target.name,
        )
    {
        return Err((
            reason::REF_NOT_PERMITTED,
            format!(
                "no ReferenceGrant in {namespace} lets HTTPRoutes of {route_namespace} use Microservice {}",
                target.name
            ),
        ));
    }
    let key = ServiceKey::new(namespace, &target.name);
    if !builder.knows_microservice(&key) {
        return Err((reason::BACKEND_NOT_FOUND, format!("Microservice {key} not found")));
    }
    Ok(builder.upstream(&key))
}

/// The upstream of a backendRef, or why it does not resolve.
fn resolve_backend(
    builder: &mut TableBuilder<'_>,
    target: &ObjectReference,
    route_namespace: &str,
    resources: &Resources<'_>,
) -> Result<Arc<crate::gateway::table::Upstream>, (&'static str, String)> {
    let group = target.group.as_deref().unwrap_or("");
    let kind = target.kind.as_deref().unwrap_or("Service");
    if group == crate::api::GROUP && kind == "Microservice" {
        return resolve_microservice(builder, target, route_namespace, resources);
    }
    if !group.is_empty() || kind != "Service" {
        return Err((
            reason::INVALID_KIND,
            format!(
                "backendRef {group}/{kind} {}: only Services are supported",
                target.name
            ),
        ));
    }
    let namespace = target.namespace.as_deref().unwrap_or(route_namespace);
    if namespace != route_namespace
        && !permitted(
            resources.grants,
            GROUP,
            "HTTPRoute",
            route_namespace,
            "",
            "Service",
            namespace,
            &target.name,
        )
    {
        return Err((
            reason::REF_NOT_PERMITTED,
            format!(
                "no ReferenceGrant in {namespace} lets HTTPRoutes of {route_namespace} use Service {}",
                target.name
            ),
        ));
    }
    let Some(service) = resources
        .services
        .iter()
        .find(|s| s.namespace().as_deref() == Some(namespace) && s.name_any() == target.name)
    else {
        return Err((
            reason::BACKEND_NOT_FOUND,
            format!("Service {namespace}/{} not found", target.name),
        ));
    };
    let Some(port) = target.port else {
        return Err((
            reason::UNSUPPORTED_VALUE,
            format!("backendRef Service {namespace}/{} names no port", target.name),
        ));
    };
    let Some(service_port) = slices::service_port(service, port, resources.slices.iter().map(|s| &**s))
    else {
        return Err((
            reason::BACKEND_NOT_FOUND,
            format!("Service {namespace}/{} has no port {port}", target.name),
        ));
    };
    let protocol = match service_port.app_protocol.as_deref() {
        Some("kubernetes.io/h2c") => Protocol::Http2,
        _ => Protocol::Http,
    };
    let websocket = service_port.app_protocol.as_deref() == Some("kubernetes.io/ws");
    let port = u16::try_from(port).unwrap_or(0);
    Ok(builder.service_upstream(
        &ServiceKey::new(namespace, &target.name),
        port,
        &service_port.endpoints,
        protocol,
        websocket,
    ))
}

/// Applies one of a rule's filters to its table route; filters microgate does not implement
/// leave the route as it is.
fn apply_filter(route: &mut Route, filter: &HttpRouteFilter) {
    match filter.type_.as_str() {
        "RequestHeaderModifier" => {
            route.request_headers = filter.request_header_modifier.as_ref().map(header_edit)
        }
        "ResponseHeaderModifier" => {
            route.response_headers = filter.response_header_modifier.as_ref().map(header_edit)
        }
        "RequestRedirect" => {
            if let Some(redirect) = &filter.request_redirect {
                route.redirect = Some(Redirect {
                    scheme: match redirect.scheme.as_deref() {
                        Some("https") => Some(crate::api::gateway::RedirectScheme::Https),
                        Some("http") => Some(crate::api::gateway::RedirectScheme::Http),
                        _ => None,
                    },
                    hostname: redirect.hostname.clone(),
                    port: redirect.port.and_then(|p| u16::try_from(p).ok()),
                    path: redirect.path.as_ref().and_then(path_rewrite),
                    status: redirect
                        .status_code
                        .and_then(|c| u16::try_from(c).ok())
                        .and_then(|c| StatusCode::from_u16(c).ok())
                        .filter(StatusCode::is_redirection)
                        .unwrap_or(StatusCode::FOUND),
                });
            }
        }
        "CORS" => {
            if let Some(cors) = &filter.cors {
                route.cors = Some(Cors::new(
                    &cors.allow_origins,
                    cors.allow_credentials.unwrap_or(false),
                    &cors.allow_methods,
                    &cors.allow_headers,
                    &cors.expose_headers,
                    cors.max_age,
                ));
            }
        }
        "URLRewrite" => {
            if let Some(rewrite) = &filter.url_rewrite {
                route.rewrite = Some(Rewrite {
                    hostname: rewrite
                        .hostname
                        .as_deref()
                        .and_then(|h| HeaderValue::try_from(h).ok()),
                    path: rewrite.path.as_ref().and_then(path_rewrite),
                });
            }
        }
        _ => {}
    }
}

/// The share of requests a mirror takes, as numerator and (non-zero) denominator: `percent`,
/// else `fraction`, else all of them.
fn mirror_share(mirror: &RequestMirror) -> (u32, u32) {
    let clamp = |n: i32| u32::try_from(n).unwrap_or(0);
    match (mirror.percent, &mirror.fraction) {
        (Some(percent), _) => (clamp(percent).min(100), 100),
        (None, Some(fraction)) => {
            let denominator = fraction.denominator.map_or(100, clamp).max(1);
            (clamp(fraction.numerator).min(denominator), denominator)
        }
        (None, None) => (1, 1),
    }
}

fn header_edit(modifier: &HeaderModifier) -> HeaderEdit {
    let pairs = |values: &[crate::api::gateway_api::HeaderValue]| {
        values
            .iter()
            .filter_map(|h| {
                Some((
                    HeaderName::try_from(h.name.to_ascii_lowercase()).ok()?,
                    HeaderValue::try_from(h.value.as_str()).ok()?,
                ))
            })
            .collect()
    };
    HeaderEdit {
        set: pairs(&modifier.set),
        add: pairs(&modifier.add),
        remove: modifier
            .remove
            .iter()
            .filter_map(|n| HeaderName::try_from(n.to_ascii_lowercase()).ok())
            .collect(),
    }
}

fn path_rewrite(modifier: &PathModifier) -> Option<PathRewrite> {
    match modifier.type_.as_str() {
        "ReplaceFullPath" => modifier.replace_full_path.clone().map(PathRewrite::Full),
        "ReplacePrefixMatch" => modifier.replace_prefix_match.clone().map(PathRewrite::Prefix),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gateway_class_claims_exactly_what_make_conformance_claims() {
        let claimed: Vec<&str> = include_str!("../../../../tests/gwapi-conformance/supported-features.txt")
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        assert_eq!(claimed, SUPPORTED_FEATURES);
    }

    #[test]
    fn a_mirror_takes_its_percent_else_its_fraction_else_everything() {
        let mirror = |percent: Option<i32>, fraction: Option<(i32, Option<i32>)>| RequestMirror {
            percent,
            fraction: fraction.map(|(numerator, denominator)| crate::api::gateway_api::Fraction {
                numerator,
                denominator,
            }),
            ..RequestMirror::default()
        };
        assert_eq!(mirror_share(&mirror(None, None)), (1, 1));
        assert_eq!(mirror_share(&mirror(Some(20), None)), (20, 100));
        assert_eq!(mirror_share(&mirror(Some(150), None)), (100, 100));
        assert_eq!(mirror_share(&mirror(None, Some((25, Some(50))))), (25, 50));
        assert_eq!(mirror_share(&mirror(None, Some((7, None)))), (7, 100));
        // Nonsense the CRD refuses still makes a share: never a zero denominator.
        assert_eq!(mirror_share(&mirror(None, Some((3, Some(0))))), (1, 1));
        assert_eq!(mirror_share(&mirror(Some(-5), None)), (0, 100));
    }

    fn rule(value: serde_json::Value) -> HttpRouteRule {
        serde_json::from_value(value).expect("an HTTPRoute rule")
    }

    #[test]
    fn a_retry_stanza_retries_its_codes_and_every_failure_without_an_answer() {
        use crate::gateway::retry::{Failure, should_retry};
        let policy = retry_policy(&rule(serde_json::json!({
            "retry": {"codes": [500], "attempts": 3, "backoff": "100ms"},
            "timeouts": {"backendRequest": "200ms"},
        })))
        .expect("a policy");
        assert_eq!(policy.attempts, 3);
        assert_eq!(
            policy.per_try_timeout.map(|d| d.get()),
            Some(std::time::Duration::from_millis(200))
        );
        assert_eq!(policy.backoff.base.get(), std::time::Duration::from_millis(100));
        let retried = |failure| should_retry(&policy, failure, true);
        assert!(retried(Failure::Status(StatusCode::INTERNAL_SERVER_ERROR)));
        assert!(
            !retried(Failure::Status(StatusCode::SERVICE_UNAVAILABLE)),
            "not a listed code"
        );
        assert!(retried(Failure::Connect), "HTTPRouteRetryConnectionError");
        assert!(retried(Failure::Reset), "HTTPRouteRetryConnectionError");
        assert!(retried(Failure::Timeout), "HTTPRouteRetryBackendTimeout");

        // No codes: only the failures without an answer are retried.
        let bare = retry_policy(&rule(serde_json::json!({"retry": {"attempts": 2}}))).expect("a policy");
        assert!(should_retry(&bare, Failure::Timeout, true));
        assert!(should_retry(&bare, Failure::Reset, true));
        assert!(!should_retry(
            &bare,
            Failure::Status(StatusCode::GATEWAY_TIMEOUT),
            true
        ));
    }

    #[test]
    fn a_backend_request_timeout_without_retry_bounds_the_one_attempt() {
        let policy =
            retry_policy(&rule(serde_json::json!({"timeouts": {"backendRequest": "1s"}}))).expect("a policy");
        assert_eq!(policy.attempts, 0, "no retry stanza: never retried");
        assert_eq!(
            policy.per_try_timeout.map(|d| d.get()),
            Some(std::time::Duration::from_secs(1))
        );
        assert!(retry_policy(&rule(serde_json::json!({"timeouts": {"backendRequest": "0s"}}))).is_none());
        assert!(retry_policy(&rule(serde_json::json!({}))).is_none());
    }

    #[test]
    fn hostnames_intersect_as_the_gateway_api_says() {
        let route = |hosts: &[&str]| hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>();
        assert!(hostnames_intersect(None, &route(&["a.example.com"])));
        assert!(hostnames_intersect(Some("*.example.com"), &[]));
        assert!(hostnames_intersect(
            Some("*.example.com"),
            &route(&["a.b.example.com"])
        ));
        assert!(hostnames_intersect(
            Some("a.example.com"),
            &route(&["*.example.com"])
        ));
        assert!(hostnames_intersect(
            Some("*.example.com"),
            &route(&["*.b.example.com"])
        ));
        assert!(!hostnames_intersect(
            Some("*.example.com"),
            &route(&["example.com"])
        ));
        assert!(!hostnames_intersect(
            Some("a.example.com"),
            &route(&["b.example.com"])
        ));
    }
}
