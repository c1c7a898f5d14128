//! `helm install`, `helm upgrade` and `helm uninstall` of the chart on the local control plane.
//! There is no kubelet for the release's own Pods to run on, so nothing waits for them to be
//! Ready: that the ReplicaSet could create them proves PodSecurity admission let them in.

use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        core::v1::{Pod, Service, ServiceAccount},
        rbac::v1::{ClusterRole, ClusterRoleBinding},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{Api, api::PostParams};
use microgate_test_support::{
    cluster::kubectl,
    wait::{self, Probe},
    with_namespace,
};
use serde_json::json;

use crate::{WAIT, helm_ok, wait_for_pod};

/// Makes `namespace` enforce the restricted Pod Security Standard, as `microgate-system` does.
pub fn restrict(namespace: &str) {
    kubectl(&[
        "label",
        "namespace",
        namespace,
        "--overwrite",
        "pod-security.kubernetes.io/enforce=restricted",
    ]);
}

fn env_of(deployment: &Deployment, name: &str) -> Option<String> {
    deployment.spec.as_ref()?.template.spec.as_ref()?.containers[0]
        .env
        .as_ref()?
        .iter()
        .find(|e| e.name == name)?
        .value
        .clone()
}

/// Deletes a release's cluster-wide objects, which outlive its namespace when a test fails
/// before `helm uninstall`.
struct ClusterScoped(String);

impl Drop for ClusterScoped {
    fn drop(&mut self) {
        let names = [self.0.clone(), format!("{}-gateway", self.0)];
        for kind in ["clusterrole", "clusterrolebinding"] {
            let _ = std::process::Command::new(microgate_test_support::cluster::bin_dir().join("kubectl"))
                .arg("--kubeconfig")
                .arg(microgate_test_support::cluster::kubeconfig_path())
                .args(["delete", kind, "--ignore-not-found"])
                .args(&names)
                .output();
        }
    }
}

#[tokio::test]
async fn helm_installs_upgrades_and_uninstalls_the_chart() {
    with_namespace("install-helm", |ns| async move {
        restrict(&ns.name);
        // The check is real: a Pod that is not restricted is refused in this namespace.
        let unrestricted: Pod = serde_json::from_value(json!({
            "metadata": {"name": "unrestricted"},
            "spec": {"containers": [{"name": "c", "image": "registry.example/any:1"}]},
        }))
        .expect("a Pod");
        let refused = ns
            .api::<Pod>()
            .create(&PostParams::default(), &unrestricted)
            .await
            .expect_err("PodSecurity admission refuses an unrestricted Pod");
        assert!(refused.to_string().contains("violates PodSecurity"), "{refused}");

        let release = ns.name.clone();
        let _cleanup = ClusterScoped(release.clone());
        let operator = format!("app.kubernetes.io/instance={release},app.kubernetes.io/component=operator");
        helm_ok(&["install", &release, "helm/microgate", "--namespace", &ns.name]);
        let deployments = ns.api::<Deployment>();
        let installed = deployments.get(&release).await.expect("the operator Deployment");
        assert_eq!(env_of(&installed, "RUST_LOG").as_deref(), Some("info"));
        wait_for_pod(&ns.client, &ns.name, &operator).await;
        let cluster_roles: Api<ClusterRole> = Api::all(ns.client.clone());
        let bindings: Api<ClusterRoleBinding> = Api::all(ns.client.clone());
        cluster_roles.get(&release).await.expect("the ClusterRole");
        bindings.get(&release).await.expect("the ClusterRoleBinding");

        helm_ok(&[
            "upgrade",
            &release,
            "helm/microgate",
            "--namespace",
            &ns.name,
            "--set",
            "logLevel=debug,gateway.mode=dedicated",
        ]);
        let upgraded = deployments.get(&release).await.expect("the operator Deployment");
        assert_eq!(env_of(&upgraded, "RUST_LOG").as_deref(), Some("debug"));
        assert!(upgraded.metadata.generation > installed.metadata.generation);
        let args = |d: &Deployment| {
            d.spec
                .as_ref()
                .and_then(|s| s.template.spec.as_ref())
                .map(|s| s.containers[0].args.clone())
        };
        assert_eq!(
            args(&upgraded),
            Some(Some(vec!["controller".to_owned(), "--leader-elect".to_owned()]))
        );
        // The dedicated gateway's Pods are admitted as well.
        let gateway = deployments
            .get(&format!("{release}-gateway"))
            .await
            .expect("the gateway Deployment");
        assert_eq!(
            args(&gateway),
            Some(Some(vec!["gateway".to_owned(), "--leader-elect".to_owned()]))
        );
        wait_for_pod(
            &ns.client,
            &ns.name,
            &format!("app.kubernetes.io/instance={release},app.kubernetes.io/component=gateway"),
        )
        .await;
        // The rollout's new Pod is admitted too.
        let pods = ns.api::<Pod>();
        wait::until("a Pod of the upgraded template", WAIT, || async {
            let list = match pods
                .list(&kube::api::ListParams::default().labels(&operator))
                .await
            {
                Ok(list) => list,
                Err(error) => return Probe::NotYet(error.to_string()),
            };
            let upgraded = list.items.iter().any(|pod| {
                pod.spec.as_ref().is_some_and(|spec| {
                    spec.containers[0]
                        .env
                        .iter()
                        .flatten()
                        .any(|e| e.name == "RUST_LOG" && e.value.as_deref() == Some("debug"))
                })
            });
            if upgraded {
                Probe::Done(())
            } else {
                Probe::NotYet(format!("{} Pods, none with RUST_LOG=debug", list.items.len()))
            }
        })
        .await
        .expect("the upgraded Pod is created");

        helm_ok(&["uninstall", &release, "--namespace", &ns.name]);
        let services = ns.api::<Service>();
        let accounts = ns.api::<ServiceAccount>();
        wait::until("the release's objects to be gone", WAIT, || async {
            let left = [
                deployments.get_opt(&release).await.map(|o| o.is_some()),
                deployments
                    .get_opt(&format!("{release}-gateway"))
                    .await
                    .map(|o| o.is_some()),
                accounts
                    .get_opt(&format!("{release}-gateway"))
                    .await
                    .map(|o| o.is_some()),
                cluster_roles
                    .get_opt(&format!("{release}-gateway"))
                    .await
                    .map(|o| o.is_some()),
                services
                    .get_opt(&format!("{release}-gateway"))
                    .await
                    .map(|o| o.is_some()),
                services
                    .get_opt(&format!("{release}-metrics"))
                    .await
                    .map(|o| o.is_some()),
                accounts.get_opt(&release).await.map(|o| o.is_some()),
                cluster_roles.get_opt(&release).await.map(|o| o.is_some()),
                bindings.get_opt(&release).await.map(|o| o.is_some()),
            ];
            if left.iter().all(|l| matches!(l, Ok(false))) {
                Probe::Done(())
            } else {
                Probe::NotYet(format!("{left:?}"))
            }
        })
        .await
        .expect("helm uninstall removes the release");
        // CRDs outlive the release (helm never deletes what a chart's crds/ installed): the
        // users' Microservices and Gateways are not deleted with it.
        let crds: Api<CustomResourceDefinition> = Api::all(ns.client.clone());
        for crd in ["microservices.microgate.dev", "gateways.microgate.dev"] {
            crds.get(crd).await.expect("the CRD is kept");
        }
    })
    .await;
}
