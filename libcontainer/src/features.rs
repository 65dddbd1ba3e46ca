//! `features`: what runvm supports, in the runtime-spec features format
//! (containerd 1.7 and later ask for it).

use std::collections::HashMap;

use oci_spec::runtime::{
    ApparmorBuilder, Arch, CgroupBuilder, Features, FeaturesBuilder, LinuxFeatureBuilder,
    LinuxNamespaceType, LinuxSeccompAction, SeccompBuilder, SelinuxBuilder,
};
use serde_json::Value;

use crate::config::Config;
use crate::hypervisor::resolve_accel;

/// Capabilities of the guest kernel (all of Linux 6.12's).
const CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// Mount options youki understands in the guest.
const MOUNT_OPTIONS: &[&str] = &[
    "async",
    "atime",
    "bind",
    "defaults",
    "dev",
    "diratime",
    "dirsync",
    "exec",
    "iversion",
    "lazytime",
    "loud",
    "mand",
    "noatime",
    "nodev",
    "nodiratime",
    "noexec",
    "noiversion",
    "nolazytime",
    "nomand",
    "norelatime",
    "nostrictatime",
    "nosuid",
    "nosymfollow",
    "private",
    "rbind",
    "relatime",
    "remount",
    "ro",
    "rprivate",
    "rshared",
    "rslave",
    "runbindable",
    "rw",
    "shared",
    "silent",
    "slave",
    "strictatime",
    "suid",
    "symfollow",
    "sync",
    "unbindable",
];

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// What runvm supports. The container's namespaces, cgroups and seccomp are
/// the guest's (youki's in a cgroup v2 guest).
pub fn describe(config: &Config) -> Features {
    let (accel, _) = resolve_accel(config.vmm().accel);
    use LinuxNamespaceType::*;
    use LinuxSeccompAction::*;
    let seccomp = SeccompBuilder::default()
        .enabled(true)
        .actions(vec![
            ScmpActAllow,
            ScmpActErrno,
            ScmpActKill,
            ScmpActKillProcess,
            ScmpActKillThread,
            ScmpActLog,
            ScmpActTrace,
            ScmpActTrap,
        ])
        .operators(strings(&[
            "SCMP_CMP_EQ",
            "SCMP_CMP_GE",
            "SCMP_CMP_GT",
            "SCMP_CMP_LE",
            "SCMP_CMP_LT",
            "SCMP_CMP_MASKED_EQ",
            "SCMP_CMP_NE",
        ]))
        .archs(vec![
            Arch::ScmpArchX86,
            Arch::ScmpArchX86_64,
            Arch::ScmpArchX32,
        ])
        .build()
        .expect("complete");
    let cgroup = CgroupBuilder::default()
        .v1(false)
        .v2(true)
        .systemd(false)
        .systemd_user(false)
        .build()
        .expect("complete");
    let linux = LinuxFeatureBuilder::default()
        .namespaces(vec![Cgroup, Ipc, Mount, Network, Pid, Uts])
        .capabilities(strings(CAPABILITIES))
        .cgroup(cgroup)
        .seccomp(seccomp)
        .apparmor(
            ApparmorBuilder::default()
                .enabled(false)
                .build()
                .expect("complete"),
        )
        .selinux(
            SelinuxBuilder::default()
                .enabled(false)
                .build()
                .expect("complete"),
        )
        .build()
        .expect("complete");
    let annotations: HashMap<String, String> = [
        ("io.github.runvm.version", env!("CARGO_PKG_VERSION")),
        (
            "io.github.runvm.hypervisor",
            config.runtime.hypervisor.as_str(),
        ),
        ("io.github.runvm.accel", accel.as_str()),
        ("io.github.runvm.guest.cgroup", "v2"),
        // runc says this when it was built with CRIU support; runvm's
        // checkpoints are VM snapshots (docs/checkpoint.md), which say how.
        ("org.opencontainers.runc.checkpoint.enabled", "true"),
        ("io.github.runvm.checkpoint", "vm-snapshot"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    FeaturesBuilder::default()
        .oci_version_min("1.0.0")
        .oci_version_max(crate::OCI_VERSION)
        // Every kind; createContainer and startContainer only when found in
        // the rootfs (docs/hooks.md).
        .hooks(strings(&[
            "prestart",
            "createRuntime",
            "createContainer",
            "startContainer",
            "poststart",
            "poststop",
        ]))
        .mount_options(strings(MOUNT_OPTIONS))
        .linux(linux)
        .annotations(annotations)
        .build()
        .expect("complete")
}

/// The features JSON as runc prints it: fields runvm says nothing about are
/// left out, not null.
pub fn features(config: &Config) -> Value {
    let mut v = serde_json::to_value(describe(config)).expect("features serialize");
    drop_nulls(&mut v);
    v
}

fn drop_nulls(v: &mut Value) {
    if let Value::Object(map) = v {
        map.retain(|_, x| !x.is_null());
        map.values_mut().for_each(drop_nulls);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_in_runc_shape() {
        let v = features(&Config::default());
        assert_eq!(v["ociVersionMin"], "1.0.0");
        assert_eq!(v["hooks"][0], "prestart");
        assert_eq!(v["hooks"][5], "poststop");
        assert_eq!(v["linux"]["namespaces"][3], "network");
        assert_eq!(v["linux"]["cgroup"]["v2"], true);
        assert_eq!(v["linux"]["seccomp"]["actions"][0], "SCMP_ACT_ALLOW");
        assert_eq!(v["linux"]["seccomp"]["archs"][1], "SCMP_ARCH_X86_64");
        assert_eq!(v["annotations"]["io.github.runvm.hypervisor"], "qemu");
        assert_eq!(
            v["annotations"]["org.opencontainers.runc.checkpoint.enabled"],
            "true"
        );
        assert_eq!(
            v["annotations"]["io.github.runvm.checkpoint"],
            "vm-snapshot"
        );
        assert!(v["linux"].get("intelRdt").is_none(), "{v}");
    }
}
