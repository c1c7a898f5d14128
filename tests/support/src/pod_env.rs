//! What a container would see of its Pod spec: its environment (literal values and the
//! `fieldRef`s a kubelet resolves) and the files of the Secret and ConfigMap volumes it mounts. The fake
//! kubelet gives both to the programs it emulates (echo-basic reads its certificate from a
//! mounted Secret, and the CA for client certificates from a mounted ConfigMap).

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use kube::{Api, Client, ResourceExt};

/// Why a container cannot start yet, as a kubelet would report it.
#[derive(Debug, thiserror::Error)]
pub enum PodEnvError {
    /// The Secret or ConfigMap a volume names does not exist (yet): a kubelet keeps the Pod
    /// waiting.
    #[error("{kind} {namespace}/{name} is missing")]
    Missing {
        kind: &'static str,
        namespace: String,
        name: String,
    },
    #[error("read {kind} {namespace}/{name}: {source}")]
    Kube {
        kind: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// The environment of `container`: literal values and the `fieldRef`s a kubelet resolves
/// (`metadata.name`, `metadata.namespace`, `metadata.uid`, `spec.nodeName`,
/// `spec.serviceAccountName`, `status.podIP`, `status.hostIP`). Other sources are left out.
pub fn environment(pod: &Pod, container: &Container, pod_ip: &str, host_ip: &str) -> HashMap<String, String> {
    let mut env = HashMap::new();
    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (Some(value), _) => Some(value.clone()),
            (None, Some(source)) => {
                source
                    .field_ref
                    .as_ref()
                    .and_then(|field| match field.field_path.as_str() {
                        "metadata.name" => Some(pod.name_any()),
                        "metadata.namespace" => pod.namespace(),
                        "metadata.uid" => pod.uid(),
                        "spec.nodeName" => pod.spec.as_ref().and_then(|s| s.node_name.clone()),
                        "spec.serviceAccountName" => {
                            pod.spec.as_ref().and_then(|s| s.service_account_name.clone())
                        }
                        "status.podIP" => Some(pod_ip.to_owned()),
                        "status.hostIP" => Some(host_ip.to_owned()),
                        _ => None,
                    })
            }
            (None, None) => Some(String::new()),
        };
        if let Some(value) = value {
            env.insert(var.name.clone(), value);
        }
    }
    env
}

/// The files `container` sees under the Secret and ConfigMap volumes it mounts: path →
/// content. A volume with `items` maps each key to its path; without, every key is a file of its
/// own name.
pub async fn volume_files(
    client: &Client,
    pod: &Pod,
    container: &Container,
) -> Result<BTreeMap<String, Vec<u8>>, PodEnvError> {
    let namespace = pod.namespace().unwrap_or_default();
    let volumes: Vec<_> = pod
        .spec
        .iter()
        .flat_map(|spec| spec.volumes.iter().flatten())
        .collect();
    let mut files = BTreeMap::new();
    for mount in container.volume_mounts.iter().flatten() {
        let Some(volume) = volumes.iter().find(|volume| volume.name == mount.name) else {
            continue;
        };
        let (data, items) = if let Some(source) = &volume.secret {
            let Some(name) = source.secret_name.clone() else {
                continue;
            };
            let api: Api<Secret> = Api::namespaced(client.clone(), &namespace);
            let found = fetch(api, "secret", &namespace, name, source.optional).await?;
            let data: BTreeMap<String, Vec<u8>> = found
                .and_then(|secret| secret.data)
                .unwrap_or_default()
                .into_iter()
                .map(|(key, value)| (key, value.0))
                .collect();
            (data, &source.items)
        } else if let Some(source) = &volume.config_map {
            let api: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
            let found = fetch(api, "configmap", &namespace, source.name.clone(), source.optional).await?;
            let mut data: BTreeMap<String, Vec<u8>> = BTreeMap::new();
            if let Some(config_map) = found {
                for (key, value) in config_map.data.unwrap_or_default() {
                    data.insert(key, value.into_bytes());
                }
                for (key, value) in config_map.binary_data.unwrap_or_default() {
                    data.insert(key, value.0);
                }
            }
            (data, &source.items)
        } else {
            continue;
        };
        let dir = mount.mount_path.trim_end_matches('/');
        match items {
            Some(items) => {
                for item in items {
                    if let Some(value) = data.get(&item.key) {
                        files.insert(format!("{dir}/{}", item.path), value.clone());
                    }
                }
            }
            None => {
                for (key, value) in data {
                    files.insert(format!("{dir}/{key}"), value);
                }
            }
        }
    }
    Ok(files)
}

/// The object a volume names: `None` if it is missing and optional, an error if it is missing
/// and required.
async fn fetch<K>(
    api: Api<K>,
    kind: &'static str,
    namespace: &str,
    name: String,
    optional: Option<bool>,
) -> Result<Option<K>, PodEnvError>
where
    K: kube::Resource + Clone + k8s_openapi::serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.get_opt(&name).await {
        Ok(Some(object)) => Ok(Some(object)),
        Ok(None) if optional == Some(true) => Ok(None),
        Ok(None) => Err(PodEnvError::Missing {
            kind,
            namespace: namespace.to_owned(),
            name,
        }),
        Err(source) => Err(PodEnvError::Kube {
            kind,
            namespace: namespace.to_owned(),
            name,
            source,
        }),
    }
}
