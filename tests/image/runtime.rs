//! A container run by runc, the OCI runtime, from a bundle: started in the foreground like a
//! kubelet's runtime would, signalled through the runtime, and deleted when dropped.
//!
//! runc rather than crun: Debian 12's crun (1.8) refuses to run at all on a host whose cgroup v2
//! hierarchy holds a controller while v1 is mounted too ("cgroups in hybrid mode not
//! supported"), even with its cgroup manager disabled; runc runs there with its cgroupfs driver.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    time::Duration,
};

use serde_json::Value;

use crate::run;

/// A running container.
pub struct Container {
    pub id: String,
    child: tokio::process::Child,
    log: PathBuf,
}

impl Container {
    /// `runc run` of the bundle in `bundle`, its output into `log`.
    pub fn start(id: &str, bundle: &Path, log: &Path) -> Self {
        // A container of this name left by an earlier, killed run.
        let _ = Command::new("runc").args(["delete", "--force", id]).output();
        let output = File::create(log).expect("create the container's log");
        let child = tokio::process::Command::new("runc")
            .arg("run")
            .arg("--bundle")
            .arg(bundle)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(output.try_clone().expect("the log file"))
            .stderr(output)
            .kill_on_drop(true)
            .spawn()
            .expect("start runc");
        Self {
            id: id.to_owned(),
            child,
            log: log.to_owned(),
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fails with the log when the container has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("the container exited with {status}; its log:\n{}", self.log());
        }
    }

    /// The host PID of the container's process, from `runc state`.
    pub fn pid(&self) -> u32 {
        let state: Value = serde_json::from_str(&run(Command::new("runc").args(["state", &self.id])))
            .expect("runc state prints JSON");
        assert_eq!(state["status"], "running", "{state}");
        let pid = state["pid"].as_u64().expect("a pid");
        u32::try_from(pid).expect("a pid fits u32")
    }

    /// Sends SIGTERM through the runtime, as the kubelet does to stop a container, and waits
    /// `grace` at most for it to exit.
    pub async fn terminate(mut self, grace: Duration) -> (ExitStatus, Duration) {
        self.assert_running();
        let sent = tokio::time::Instant::now();
        run(Command::new("runc").args(["kill", &self.id, "TERM"]));
        let status = match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => status.expect("wait for runc"),
            Err(_) => panic!(
                "the container did not exit within the grace period of {grace:?}; its log:\n{}",
                self.log()
            ),
        };
        (status, sent.elapsed())
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("runc")
            .args(["delete", "--force", &self.id])
            .output();
    }
}

/// What the kernel says about a process: `/proc/<pid>/status` lines, its mounts and cgroups.
pub struct ProcessFacts {
    status: String,
    mountinfo: String,
    cgroups: String,
}

impl ProcessFacts {
    pub fn of(pid: u32) -> Self {
        let read = |file: &str| {
            std::fs::read_to_string(format!("/proc/{pid}/{file}"))
                .unwrap_or_else(|e| panic!("read /proc/{pid}/{file}: {e}"))
        };
        Self {
            status: read("status"),
            mountinfo: read("mountinfo"),
            cgroups: read("cgroup"),
        }
    }

    /// The value of a `/proc/<pid>/status` field, e.g. `Uid` → the real, effective, saved and
    /// filesystem UIDs.
    pub fn field(&self, name: &str) -> &str {
        self.status
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no {name} in /proc/<pid>/status:\n{}", self.status))
    }

    /// The mount options of the mount at `point` inside the container (`mountinfo` field 6).
    pub fn mount_options(&self, point: &str) -> Vec<String> {
        self.mountinfo
            .lines()
            .map(|line| line.split(' ').collect::<Vec<_>>())
            .rfind(|fields| fields.len() > 5 && fields[4] == point)
            .map(|fields| fields[5].split(',').map(str::to_owned).collect())
            .unwrap_or_else(|| panic!("no mount at {point}:\n{}", self.mountinfo))
    }

    /// The process's cgroup in the v1 hierarchy of `controller` (`/proc/<pid>/cgroup`).
    pub fn cgroup(&self, controller: &str) -> &str {
        self.cgroups
            .lines()
            .find_map(|line| {
                let mut fields = line.splitn(3, ':');
                let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
                controllers.split(',').any(|c| c == controller).then_some(path)
            })
            .unwrap_or_else(|| panic!("no {controller} cgroup in:\n{}", self.cgroups))
    }
}
