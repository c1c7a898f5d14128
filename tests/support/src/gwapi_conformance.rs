//! The Gateway API conformance suite and its echo-basic backend, built from the Go module pinned
//! in `tests/gwapi-conformance/` (its `build.sh` caches both binaries under $HOME, so a warm run
//! builds nothing).

use std::{path::PathBuf, process::Stdio};

use tokio::process::Command;

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
    let script = repo_root().join("tests/gwapi-conformance/build.sh");
    let output = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| BuildError(e.to_string()))?;
    if !output.status.success() {
        return Err(BuildError(format!(
            "{} exited with {}: {}",
            script.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
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

/// Installs the pinned Gateway API's CRDs of `channel` on the test control plane (server-side
/// apply, so that a cluster that has them already is left as it is) and waits until they are
/// served; panics saying why not (a test helper).
pub fn install_crds(channel: &str) {
    let dir = crd_dir(channel).unwrap_or_else(|e| panic!("{e}"));
    let dir = dir.to_string_lossy().into_owned();
    crate::cluster::kubectl(&["apply", "--server-side", "--force-conflicts", "-f", &dir]);
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
