//! The Gateway API conformance suite and its echo-basic backend, built from the Go module pinned
//! in `tests/gwapi-conformance/` (its `build.sh` caches both binaries under $HOME, so a warm run
//! builds nothing).

use std::{path::PathBuf, process::Stdio};

use crate::cluster::repo_root;

#[derive(Debug, thiserror::Error)]
#[error("build the Gateway API conformance suite with tests/gwapi-conformance/build.sh: {0}")]
pub struct BuildError(String);

/// The built binaries of the pinned version.
#[derive(Clone, Debug)]
pub struct Binaries {
    /// The suite, compiled as a Go test binary (`go test -c`).
    pub suite: PathBuf,
    /// The suite's own backend program, `conformance/echo-basic`.
    pub echo_basic: PathBuf,
}

/// Builds the binaries unless this machine has them for the pinned version; fails saying why
/// when either is missing afterwards.
pub async fn build() -> Result<Binaries, BuildError> {
    let dir = crate::pinned_tool::build("gwapi-conformance")
        .await
        .map_err(BuildError)?;
    let binaries = Binaries {
        suite: dir.join("gwapi-conformance.test"),
        echo_basic: dir.join("echo-basic"),
    };
    for path in [&binaries.suite, &binaries.echo_basic] {
        if !path.is_file() {
            return Err(BuildError(format!(
                "{} is missing after the build",
                path.display()
            )));
        }
    }
    Ok(binaries)
}

/// The folder of the pinned Gateway API version's CRDs of `channel` (`standard` or
/// `experimental`), from the Go module cache (which `build.sh` fills; no network is needed).
pub fn crd_dir(channel: &str) -> Result<PathBuf, BuildError> {
    let module = repo_root().join("tests/gwapi-conformance");
    let output = std::process::Command::new(go())
        .args(["list", "-m", "-f", "{{.Dir}}", "sigs.k8s.io/gateway-api"])
        .current_dir(&module)
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-mod=readonly")
        .env("GOPROXY", "off")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| BuildError(format!("run go list: {e}")))?;
    if !output.status.success() {
        return Err(BuildError(format!(
            "go list -m sigs.k8s.io/gateway-api (run tests/gwapi-conformance/build.sh first): {}",
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
        .join("config/crd")
        .join(channel);
    if !dir.is_dir() {
        return Err(BuildError(format!("{} is not a folder", dir.display())));
    }
    Ok(dir)
}

/// The admission policy the Gateway API installs beside its CRDs, which refuses experimental CRDs
/// over standard ones "unless it is uninstalled", as its message says.
const SAFE_UPGRADES: &str = "safe-upgrades.gateway.networking.k8s.io";

/// Installs the pinned Gateway API's CRDs of `channel` on the test control plane (server-side
/// apply, so that a cluster that has them already is left as it is) and waits until they are
/// served; panics saying why not (a test helper). The experimental channel replaces a standard
/// one the cluster may have from another test: without the safe-upgrades policy, which forbids
/// exactly that.
pub fn install_crds(channel: &str) {
    let dir = crd_dir(channel).unwrap_or_else(|e| panic!("{e}"));
    let experimental = channel == "experimental";
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            name.ends_with(".yaml")
                && name != "kustomization.yaml"
                && !(experimental && name.contains("vap_safeupgrades"))
        })
        .map(|path| path.to_string_lossy().into_owned())
        .collect();
    files.sort();
    if experimental {
        crate::cluster::kubectl(&[
            "delete",
            "--ignore-not-found",
            &format!("validatingadmissionpolicybinding/{SAFE_UPGRADES}"),
            &format!("validatingadmissionpolicy/{SAFE_UPGRADES}"),
        ]);
    }
    let mut apply = vec!["apply", "--server-side", "--force-conflicts"];
    for file in &files {
        apply.extend(["-f", file.as_str()]);
    }
    // The API server's admission learns of the deleted policy through a watch: a moment later.
    let mut attempts = 0;
    loop {
        let output = std::process::Command::new(crate::cluster::bin_dir().join("kubectl"))
            .arg("--kubeconfig")
            .arg(crate::cluster::kubeconfig_path())
            .args(&apply)
            .output()
            .expect("run kubectl");
        let stderr = String::from_utf8_lossy(&output.stderr);
        if output.status.success() {
            break;
        }
        attempts += 1;
        assert!(
            experimental && stderr.contains(SAFE_UPGRADES) && attempts < 50,
            "kubectl {apply:?}: {stderr}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    crate::cluster::kubectl(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/gatewayclasses.gateway.networking.k8s.io",
        "crd/gateways.gateway.networking.k8s.io",
        "crd/httproutes.gateway.networking.k8s.io",
        "crd/referencegrants.gateway.networking.k8s.io",
    ]);
}

/// The `go` command: on PATH, else where this kind of machine installs it.
fn go() -> PathBuf {
    let installed = PathBuf::from("/usr/local/go/bin/go");
    if std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("go").is_file()))
        || !installed.is_file()
    {
        PathBuf::from("go")
    } else {
        installed
    }
}
