//! The tools the tests build from Go modules pinned under `tests/<tool>/`: each `build.sh`
//! builds unless this machine has the pinned version already, then prints where it is.

use std::{path::PathBuf, process::Stdio};

use tokio::process::Command;

use crate::cluster::repo_root;

/// Runs `tests/<tool>/build.sh` and returns the path it printed; the error says why not.
pub async fn build(tool: &str) -> Result<PathBuf, String> {
    let script = repo_root().join("tests").join(tool).join("build.sh");
    let output = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| e.to_string())?;
    if !output.status.success() {
        return Err(format!(
            "{} exited with {}: {}",
            script.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()))
}

/// [`build`] for a script that prints the path of one binary, which must be there.
pub async fn build_binary(tool: &str) -> Result<PathBuf, String> {
    let path = build(tool).await?;
    if !path.is_file() {
        return Err(format!("it printed {path:?}, which is no file"));
    }
    Ok(path)
}
