//! The `RuntimeDefault` seccomp profile as an OCI runtime applies it to a container without
//! capabilities.
//!
//! The profile is the one CRI-O and Podman apply by default, from Debian's
//! `golang-github-containers-common` (the same lineage as containerd's and Docker's). It is
//! written for every architecture and capability set; this narrows it to x86-64 and no
//! capabilities, as the runtime does before handing it to the kernel, and drops the fields the
//! OCI runtime spec does not know.

use serde_json::{Value, json};

/// Where Debian's `golang-github-containers-common` installs the default profile.
pub const DEFAULT_PROFILE: &str = "/usr/share/containers/seccomp.json";

/// The profile's architecture names (Go's) this machine answers to.
const ARCHES: [&str; 2] = ["amd64", "x86_64"];

/// `linux.seccomp` for a container with no capabilities on x86-64, from the containers-common
/// profile `profile`.
pub fn runtime_default(profile: &Value) -> Value {
    let listed = |condition: &Value, key: &str| -> Vec<String> {
        condition[key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    };
    let architectures: Vec<Value> = profile["archMap"]
        .as_array()
        .expect("the profile maps architectures")
        .iter()
        .filter(|entry| entry["architecture"] == "SCMP_ARCH_X86_64")
        .flat_map(|entry| {
            std::iter::once(entry["architecture"].clone()).chain(
                entry["subArchitectures"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .cloned(),
            )
        })
        .collect();
    assert!(!architectures.is_empty(), "the profile knows x86-64");
    let syscalls: Vec<Value> = profile["syscalls"]
        .as_array()
        .expect("the profile lists syscalls")
        .iter()
        .filter(|rule| {
            let includes = &rule["includes"];
            let excludes = &rule["excludes"];
            // A rule that needs a capability does not apply: the container has none. One that
            // applies unless a capability is held does.
            let needs_capability = !listed(includes, "caps").is_empty();
            let other_arch = {
                let arches = listed(includes, "arches");
                !arches.is_empty() && !arches.iter().any(|a| ARCHES.contains(&a.as_str()))
            };
            let excluded_arch = listed(excludes, "arches")
                .iter()
                .any(|a| ARCHES.contains(&a.as_str()));
            assert!(
                includes.get("minKernel").is_none_or(Value::is_null),
                "a rule with a minimum kernel needs this conversion to learn it: {rule}"
            );
            !needs_capability && !other_arch && !excluded_arch
        })
        .map(|rule| {
            let mut oci = json!({"names": rule["names"], "action": rule["action"]});
            if let Some(errno) = rule.get("errnoRet").filter(|v| !v.is_null()) {
                oci["errnoRet"] = errno.clone();
            }
            let args: Vec<Value> = rule["args"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|a| json!({"index": a["index"], "value": a["value"], "valueTwo": a["valueTwo"], "op": a["op"]}))
                .collect();
            if !args.is_empty() {
                oci["args"] = Value::Array(args);
            }
            oci
        })
        .collect();
    let mut seccomp = json!({
        "defaultAction": profile["defaultAction"],
        "architectures": architectures,
        "syscalls": syscalls,
    });
    if let Some(errno) = profile.get("defaultErrnoRet").filter(|v| !v.is_null()) {
        seccomp["defaultErrnoRet"] = errno.clone();
    }
    seccomp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_and_foreign_architecture_rules_are_dropped_and_the_rest_kept() {
        let profile = json!({
            "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 38,
            "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86"]},
                        {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": []}],
            "syscalls": [
                {"names": ["read"], "action": "SCMP_ACT_ALLOW", "args": [], "includes": {}, "excludes": {}},
                {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["amd64", "x32"]}, "excludes": {}},
                {"names": ["sync_file_range2"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["ppc64le"]}, "excludes": {}},
                {"names": ["mount"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}, "excludes": {}},
                {"names": ["mount"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1, "includes": {},
                 "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
                {"names": ["personality"], "action": "SCMP_ACT_ALLOW", "includes": {},
                 "args": [{"index": 0, "value": 8, "valueTwo": 0, "op": "SCMP_CMP_EQ"}], "excludes": {}},
            ],
        });
        let seccomp = runtime_default(&profile);
        assert_eq!(
            seccomp["architectures"],
            json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"])
        );
        assert_eq!(seccomp["defaultErrnoRet"], 38);
        let names: Vec<&Value> = seccomp["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| &s["names"][0])
            .collect();
        assert_eq!(names, ["read", "arch_prctl", "mount", "personality"]);
        assert_eq!(
            seccomp["syscalls"][2],
            json!({"names": ["mount"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1})
        );
        assert_eq!(seccomp["syscalls"][3]["args"][0]["value"], 8);
    }
}
