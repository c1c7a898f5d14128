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
