//! The route table a gateway would build from a cluster's resources, built once from one list
//! of each (no watches) with the compile code the gateway runs: what `microgate explain`
//! explains. It reads what a gateway reads: Gateways, Microservices and their Pods,
//! AccessPolicies with the Secrets and ConfigMaps they name, TLS Secrets; with the Gateway API,
//! its resources, Services and EndpointSlices.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    sync::Arc,
};

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::{Api, Client, Resource, ResourceExt, api::ListParams};
use serde::de::DeserializeOwned;

use crate::{
    api::{AccessPolicy, Gateway, Microservice, labels},
    discovery::{Endpoint, Registry, ServiceKey},
    gateway::{
        KubeSnapshot,
        compile::{self, ServiceSettings, TableBuilder},
        metrics::GatewayMetrics,
        table::RouteTable,
        tls::{CertificateStore, SecretKey},
    },
};

#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    #[error("cannot list {what}: {source}")]
    List {
        what: &'static str,
        #[source]
        source: kube::Error,
    },
}

/// What the table was built from.
pub struct Offline {
    pub table: RouteTable,
    /// The Microservices' endpoints, as their Pods say.
    pub registry: Registry,
    /// What could not be read, and what that leaves out of the table.
    pub notes: Vec<String>,
}

/// Lists, in `namespace` (or all), what a gateway with `--listen-address=listen_address` (and
/// `--gateway-api` when `gateway_api`) compiles, and compiles it.
pub async fn build(
    client: Client,
    namespace: Option<&str>,
    gateway_api: bool,
    listen_address: IpAddr,
) -> Result<Offline, OfflineError> {
    let mut notes = Vec::new();
    let gateways: Vec<Arc<Gateway>> = list(
        &client,
        namespace,
        "microgate.dev Gateways",
        &ListParams::default(),
    )
    .await?;
    let microservices: Vec<Arc<Microservice>> =
        list(&client, namespace, "Microservices", &ListParams::default()).await?;
    let services: HashMap<ServiceKey, ServiceSettings> = microservices
        .iter()
        .map(|ms| {
            let key = ServiceKey::new(&ms.namespace().unwrap_or_default(), &ms.name_any());
            (key, ServiceSettings::of(ms))
        })
        .collect();
    let registry = Registry::default();
    let pods: Vec<Arc<Pod>> = list(
        &client,
        namespace,
        "Pods",
        &ListParams::default().labels(labels::MICROSERVICE),
    )
    .await?;
    let mut endpoints: BTreeMap<ServiceKey, Vec<Endpoint>> = BTreeMap::new();
    for (key, endpoint) in pods.iter().filter_map(|pod| Endpoint::from_pod(pod)) {
        endpoints.entry(key).or_default().push(endpoint);
    }
    for (key, endpoints) in endpoints {
        registry.publish(&key, endpoints);
    }
    registry.mark_synced();

    let kube = if gateway_api {
        Some(list_gateway_api(&client, namespace).await?)
    } else {
        None
    };
    let addresses = kube
        .as_ref()
        .map(|k| k.addresses(None, listen_address))
        .unwrap_or_default();
    let resources = kube.as_ref().map(|k| k.resources(&addresses));

    let mut wanted = compile::microgate::certificate_refs(&gateways);
    if let Some(resources) = &resources {
        wanted.extend(compile::gateway_api::certificate_refs(resources));
    }
    let policies: Vec<Arc<AccessPolicy>> =
        list(&client, namespace, "AccessPolicies", &ListParams::default()).await?;
    // The Secrets the gateway reads: TLS certificates, and what AccessPolicies name (API keys,
    // htpasswd files).
    let mut secrets: HashMap<SecretKey, Arc<Secret>> = HashMap::new();
    let mut config_maps: HashMap<(String, String), Arc<ConfigMap>> = HashMap::new();
    if !wanted.is_empty() || !policies.is_empty() {
        let readable = ListParams::default().fields(crate::gateway::SECRET_TYPES_READ);
        match list::<Secret>(&client, namespace, "Secrets", &readable).await {
            Ok(listed) => {
                secrets = listed
                    .into_iter()
                    .map(|s| {
                        let key = SecretKey {
                            namespace: s.namespace().unwrap_or_default(),
                            name: s.name_any(),
                        };
                        (key, s)
                    })
                    .collect();
            }
            Err(error) => notes.push(format!(
                "{error}: HTTPS listeners are left out, and AccessPolicies that read Secrets show as not enforceable \
                 (a gateway reads them; this user may not)"
            )),
        }
    }
    // Key sets for AccessPolicies, CA bundles for Gateways that check client certificates.
    let checks_clients = resources
        .as_ref()
        .is_some_and(|r| r.gateways.iter().any(|g| g.spec.tls.is_some()));
    if !policies.is_empty() || checks_clients {
        match list::<ConfigMap>(&client, namespace, "ConfigMaps", &ListParams::default()).await {
            Ok(listed) => {
                config_maps = listed
                    .into_iter()
                    .map(|c| ((c.namespace().unwrap_or_default(), c.name_any()), c))
                    .collect();
            }
            Err(error) => notes.push(format!(
                "{error}: AccessPolicies that read key sets from ConfigMaps show as not enforceable, \
                 and HTTPS listeners that check client certificates are left out"
            )),
        }
    }
    let mut certificates = CertificateStore::default();
    certificates.refresh(
        wanted,
        |key| secrets.get(key).cloned(),
        std::time::SystemTime::now(),
    );
    let mut compiled_policies = compile::access::AccessPolicies::default();
    let secret = |namespace: &str, name: &str| {
        secrets
            .get(&SecretKey {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            })
            .cloned()
    };
    let config_map =
        |namespace: &str, name: &str| config_maps.get(&(namespace.to_owned(), name.to_owned())).cloned();
    compiled_policies.refresh(
        &policies,
        &compile::access::Lookups {
            secret: &secret,
            config_map: &config_map,
        },
    );

    let metrics = GatewayMetrics::register(&mut Default::default());
    let mut builder = TableBuilder::new(&services, &registry, &metrics, &certificates, None)
        .with_access_policies(&compiled_policies);
    compile::microgate::add(&mut builder, &gateways, listen_address);
    if let Some(resources) = &resources {
        compile::gateway_api::compile(&mut builder, resources, &config_map);
    }
    Ok(Offline {
        table: builder.finish(),
        registry,
        notes,
    })
}

async fn list<K>(
    client: &Client,
    namespace: Option<&str>,
    what: &'static str,
    params: &ListParams,
) -> Result<Vec<Arc<K>>, OfflineError>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope> + Clone + DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    };
    list_all(&api, what, params).await
}

async fn list_all<K>(
    api: &Api<K>,
    what: &'static str,
    params: &ListParams,
) -> Result<Vec<Arc<K>>, OfflineError>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let listed = api
        .list(params)
        .await
        .map_err(|source| OfflineError::List { what, source })?;
    Ok(listed.items.into_iter().map(Arc::new).collect())
}

/// The Gateway API's resources, listed once.
async fn list_gateway_api(client: &Client, namespace: Option<&str>) -> Result<KubeSnapshot, OfflineError> {
    let all = ListParams::default();
    Ok(KubeSnapshot {
        classes: list_all(&Api::all(client.clone()), "GatewayClasses", &all).await?,
        gateways: list(client, namespace, "Gateway API Gateways", &all).await?,
        // ListenerSets came with the Gateway API v1.5: older CRDs serve none.
        listener_sets: match list(client, namespace, "ListenerSets", &all).await {
            Err(OfflineError::List {
                source: kube::Error::Api(status),
                ..
            }) if status.code == 404 => Vec::new(),
            listed => listed?,
        },
        routes: list(client, namespace, "HTTPRoutes", &all).await?,
        grants: list(client, namespace, "ReferenceGrants", &all).await?,
        services: list(client, namespace, "Services", &all).await?,
        slices: list(client, namespace, "EndpointSlices", &all).await?,
        // As the gateway: Namespaces (for allowedRoutes selectors) only when it serves all.
        namespaces: match namespace {
            Some(_) => Vec::new(),
            None => list_all(&Api::all(client.clone()), "Namespaces", &all).await?,
        },
    })
}
