//! The image archive unpacked into an OCI runtime bundle, configured as the chart's Pod spec
//! asks.
//!
//! umoci unpacks the archive and writes the runtime config from the image's own (user,
//! entrypoint, environment). Onto that go the Pod's security context (UID and GID, read-only
//! root filesystem, every capability dropped, no new privileges, the `RuntimeDefault` seccomp
//! profile), the container's args, env, memory limit and CPU request, and a kubeconfig mounted
//! read-only. The container
//! shares the network namespace of the test, as a Pod with `hostNetwork` would: the control
//! plane and the harness's Pods live on its loopback addresses.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::{Value, json};

use crate::{run, seccomp};

/// Where the kubeconfig is mounted in the container.
pub const KUBECONFIG_IN_CONTAINER: &str = "/etc/microgate/kubeconfig";

/// An unpacked bundle: `config.json` and `rootfs/` in `dir`.
pub struct Bundle {
    pub dir: PathBuf,
    /// The image's own config (`config` of the OCI image configuration).
    pub image_config: Value,
}

impl Bundle {
    /// Unpacks the image `tag` of the OCI archive `archive` into `dir` (emptied first).
    pub fn unpack(archive: &Path, tag: &str, dir: &Path) -> Self {
        let _ = std::fs::remove_dir_all(dir);
        let layout = dir.join("layout");
        std::fs::create_dir_all(&layout).expect("create the layout folder");
        run(Command::new("tar")
            .arg("--extract")
            .arg("--file")
            .arg(archive)
            .arg("--directory")
            .arg(&layout));
        let bundle = dir.join("bundle");
        run(Command::new("umoci")
            .arg("unpack")
            .arg("--image")
            .arg(format!("{}:{tag}", layout.display()))
            .arg(&bundle));
        let image_config = image_config(&layout);
        Self {
            dir: bundle,
            image_config,
        }
    }

    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join("config.json")
    }

    pub fn config(&self) -> Value {
        let text = std::fs::read_to_string(self.config_path()).expect("read config.json");
        serde_json::from_str(&text).expect("config.json is JSON")
    }

    /// Applies the Pod spec `pod` and its container `container` (as the chart renders them, with
    /// `env` the values of the container's env, field references resolved) and mounts
    /// `kubeconfig` read-only.
    pub fn configure(&self, pod: &Value, container: &Value, env: &[(String, String)], kubeconfig: &Path) {
        let mut config = self.config();
        let pod_context = &pod["securityContext"];
        let context = &container["securityContext"];
        let process = &mut config["process"];

        process["terminal"] = json!(false);
        process["user"] = json!({
            "uid": pod_context["runAsUser"].as_u64().expect("the chart sets runAsUser"),
            "gid": pod_context["runAsGroup"].as_u64().expect("the chart sets runAsGroup"),
        });
        assert_eq!(
            context["allowPrivilegeEscalation"], false,
            "the chart forbids privilege escalation"
        );
        process["noNewPrivileges"] = json!(true);
        assert_eq!(
            context["capabilities"]["drop"],
            json!(["ALL"]),
            "the chart drops every capability"
        );
        assert!(
            context["capabilities"].get("add").is_none(),
            "the chart adds no capability"
        );
        process["capabilities"] = json!({
            "bounding": [], "effective": [], "inheritable": [], "permitted": [], "ambient": [],
        });
        // Kubernetes: `args` replaces the image's Cmd and keeps its Entrypoint.
        let mut args: Vec<Value> = self.image_config["Entrypoint"]
            .as_array()
            .expect("the image has an entrypoint")
            .clone();
        args.extend(
            container["args"]
                .as_array()
                .expect("the chart sets args")
                .iter()
                .cloned(),
        );
        process["args"] = Value::Array(args);
        let env_list = process["env"].as_array_mut().expect("the image's env");
        env_list.retain(|e| e.as_str().is_some_and(|e| !e.starts_with("TERM=")));
        for (key, value) in env {
            env_list.push(json!(format!("{key}={value}")));
        }
        env_list.push(json!(format!("KUBECONFIG={KUBECONFIG_IN_CONTAINER}")));

        assert_eq!(
            context["readOnlyRootFilesystem"], true,
            "the chart asks for a read-only root"
        );
        config["root"]["readonly"] = json!(true);
        assert_eq!(pod_context["seccompProfile"]["type"], "RuntimeDefault");
        let profile: Value = serde_json::from_str(
            &std::fs::read_to_string(seccomp::DEFAULT_PROFILE).unwrap_or_else(|e| {
                panic!("{} ({e}): make image-test installs it", seccomp::DEFAULT_PROFILE)
            }),
        )
        .expect("the profile is JSON");
        config["linux"]["seccomp"] = seccomp::runtime_default(&profile);
        // The container's memory limit and CPU request, as the kubelet turns them into cgroup
        // settings (shares: 1024 per CPU).
        let resources = &container["resources"];
        let memory = quantity_bytes(
            resources["limits"]["memory"]
                .as_str()
                .expect("the chart limits memory"),
        );
        let cpu = resources["requests"]["cpu"]
            .as_str()
            .expect("the chart requests CPU");
        let millicpu: u64 = match cpu.strip_suffix('m') {
            Some(milli) => milli.parse().expect("millicores"),
            None => cpu.parse::<u64>().expect("cores") * 1000,
        };
        config["linux"]["resources"]["memory"] = json!({"limit": memory});
        config["linux"]["resources"]["cpu"] = json!({"shares": (millicpu * 1024 / 1000).max(2)});
        // The test's network namespace, as hostNetwork: the control plane and the Pods are there.
        config["linux"]["namespaces"]
            .as_array_mut()
            .expect("namespaces")
            .retain(|ns| ns["type"] != "network");
        config["mounts"].as_array_mut().expect("mounts").push(json!({
            "destination": KUBECONFIG_IN_CONTAINER,
            "type": "bind",
            "source": kubeconfig,
            "options": ["bind", "ro", "nosuid", "nodev", "noexec"],
        }));

        std::fs::write(
            self.config_path(),
            serde_json::to_string_pretty(&config).expect("JSON"),
        )
        .expect("write config.json");
    }
}

/// Bytes in a Kubernetes memory quantity with a binary suffix or none (`256Mi`).
pub fn quantity_bytes(quantity: &str) -> u64 {
    let (number, factor) = [("Ki", 1u64 << 10), ("Mi", 1 << 20), ("Gi", 1 << 30)]
        .into_iter()
        .find_map(|(suffix, factor)| quantity.strip_suffix(suffix).map(|n| (n, factor)))
        .unwrap_or((quantity, 1));
    number
        .parse::<u64>()
        .unwrap_or_else(|e| panic!("memory quantity {quantity}: {e}"))
        * factor
}

/// The `config` object of the one image in the OCI layout `layout`.
fn image_config(layout: &Path) -> Value {
    let read = |path: PathBuf| -> Value {
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
    };
    let blob = |digest: &Value| -> PathBuf {
        let digest = digest.as_str().expect("a digest");
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        layout.join("blobs/sha256").join(hex)
    };
    let index = read(layout.join("index.json"));
    let manifest = read(blob(&index["manifests"][0]["digest"]));
    let config = read(blob(&manifest["config"]["digest"]));
    config["config"].clone()
}
