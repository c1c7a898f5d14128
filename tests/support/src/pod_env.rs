//! What a container would see of its Pod spec: its environment (literal values and the
//! `fieldRef`s a kubelet resolves) and the files of the Secret volumes it mounts. The fake
//! kubelet gives both to the programs it emulates (echo-basic reads its certificate from a
//! mounted Secret).

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{Container, Pod, Secret};
use kube::{Api, Client, ResourceExt};

/// Why a container cannot start yet, as a kubelet would report it.
#[derive(Debug, thiserror::Error)]
pub enum PodEnvError {
    /// The Secret a volume names does not exist (yet): a kubelet keeps the Pod waiting.
    #[error("secret {namespace}/{name} is missing")]
    SecretMissing { namespace: String, name: String },
    #[error("read secret {namespace}/{name}: {source}")]
    Kube {
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

/// The files `container` sees under the Secret volumes it mounts: path → content. A volume
/// with `items` maps each key to its path; without, every key is a file of its own name.
pub async fn secret_files(
    client: &Client,
    pod: &Pod,
    container: &Container,
) -> Result<BTreeMap<String, Vec<u8>>, PodEnvError> {
    let namespace = pod.namespace().unwrap_or_default();
    let volumes = pod.spec.iter().flat_map(|spec| spec.volumes.iter().flatten());
    let mut files = BTreeMap::new();
    for mount in container.volume_mounts.iter().flatten() {
        let Some(secret_volume) = volumes
            .clone()
            .find(|volume| volume.name == mount.name)
            .and_then(|volume| volume.secret.as_ref())
        else {
            continue;
        };
        let Some(name) = secret_volume.secret_name.clone() else {
            continue;
        };
        let api: Api<Secret> = Api::namespaced(client.clone(), &namespace);
        let secret = match api.get_opt(&name).await {
            Ok(Some(secret)) => secret,
            Ok(None) if secret_volume.optional == Some(true) => continue,
            Ok(None) => {
                return Err(PodEnvError::SecretMissing {
                    namespace: namespace.clone(),
                    name,
                });
            }
            Err(source) => {
                return Err(PodEnvError::Kube {
                    namespace: namespace.clone(),
                    name,
                    source,
                });
            }
        };
        let data = secret.data.unwrap_or_default();
        let dir = mount.mount_path.trim_end_matches('/');
        match &secret_volume.items {
            Some(items) => {
                for item in items {
                    if let Some(value) = data.get(&item.key) {
                        files.insert(format!("{dir}/{}", item.path), value.0.clone());
                    }
                }
            }
            None => {
                for (key, value) in data {
                    files.insert(format!("{dir}/{key}"), value.0);
                }
            }
        }
    }
    Ok(files)
}
