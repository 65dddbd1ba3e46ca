//! `runvm check`: what runvm found on this host and would use, item by
//! item, with what to install for each that is missing.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::config::{Config, ConfigError, Loaded};
use crate::factory::Factory;
use crate::hypervisor::resolve_accel;
use crate::locate::{self, LocateError};

/// How one item came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Found and usable.
    Pass,
    /// A container cannot run without it.
    Fail,
    /// Worth knowing, not required (the template, the accelerator's reason).
    Info,
}

/// One line of the report.
#[derive(Debug, Clone)]
pub struct Item {
    pub name: &'static str,
    pub outcome: Outcome,
    /// The path found, or why not.
    pub detail: String,
    /// What to do about a failure.
    pub fix: Option<&'static str>,
}

/// The report: its items, and the JSON `runvm check --format json` prints.
#[derive(Debug)]
pub struct Report {
    pub items: Vec<Item>,
    pub json: Value,
}

impl Report {
    /// Whether a container can run here.
    pub fn ok(&self) -> bool {
        self.items.iter().all(|i| i.outcome != Outcome::Fail)
    }

    /// One line per item: ✔, ✘ (with what to install) or -.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for i in &self.items {
            let mark = match i.outcome {
                Outcome::Pass => "✔",
                Outcome::Fail => "✘",
                Outcome::Info => "-",
            };
            out.push_str(&format!("{mark} {}: {}\n", i.name, i.detail));
            if let (Outcome::Fail, Some(fix)) = (i.outcome, i.fix) {
                out.push_str(&format!("  to fix: {fix}\n"));
            }
        }
        out.push_str(if self.ok() {
            "runvm can run containers on this host\n"
        } else {
            "runvm cannot run containers on this host\n"
        });
        out
    }
}

const FIX_QEMU: &str = "install QEMU: apt-get install -t bookworm-backports qemu-system-x86 (or set [hypervisor.qemu] path)";
const FIX_VIRTIOFSD: &str =
    "install the runvm package, which has one, or cargo install virtiofsd (or set [hypervisor.qemu] virtio_fs_daemon)";
const FIX_MKE2FS: &str = "install e2fsprogs: apt-get install e2fsprogs (or set [hypervisor.qemu] shared_fs = \"virtio-fs\")";
const FIX_GUEST: &str =
    "install the runvm package, or build the guest with `make guest` (or fix [hypervisor.qemu] kernel/initrd)";
const FIX_CGROUPS: &str = "run runvm as root with cgroupfs mounted at /sys/fs/cgroup, as runc needs (on cgroup v2, set [runtime] sandbox_cgroup_only = true)";
const FIX_SHIM_SECCOMP: &str =
    "install libseccomp 2.5 or later (Debian: libseccomp2), or set [runtime] shim_seccomp = false";
const FIX_JAIL: &str = "run runvm as root on Linux 5.2 or later (or, to debug only, set [hypervisor.qemu] jail = false)";
const FIX_CONFIG: &str = "fix or remove the file (docs/config.md lists every key)";

/// Check the configuration `load` gave and, if it loaded, what it names.
pub fn check(load: Result<Loaded, ConfigError>) -> Report {
    let loaded = match load {
        Ok(l) => l,
        Err(e) => {
            let error = crate::error_chain(&e);
            return Report {
                items: vec![Item {
                    name: "configuration",
                    outcome: Outcome::Fail,
                    detail: error.clone(),
                    fix: Some(FIX_CONFIG),
                }],
                json: json!({"config": {"ok": false, "error": error}}),
            };
        }
    };
    let config = loaded.config;
    let mut items = vec![Item {
        name: "configuration",
        outcome: Outcome::Pass,
        detail: if loaded.files.is_empty() {
            "no file (the defaults)".into()
        } else {
            let files: Vec<String> = loaded
                .files
                .iter()
                .map(|f| f.display().to_string())
                .collect();
            files.join(", ")
        },
        fix: None,
    }];
    for w in loaded.warnings {
        items.push(Item {
            name: "configuration",
            outcome: Outcome::Info,
            detail: format!("warning: {w}"),
            fix: None,
        });
    }
    let hv = config.vmm();
    let backend = config.runtime.hypervisor.as_str();
    let mut found = |name: &'static str, fix, r: Result<PathBuf, LocateError>| {
        let (outcome, detail, j) = match r {
            Ok(p) if p.exists() => (
                Outcome::Pass,
                p.display().to_string(),
                json!({"path": p, "ok": true}),
            ),
            Ok(p) => (
                Outcome::Fail,
                format!("{} does not exist", p.display()),
                json!({"path": p, "ok": false}),
            ),
            Err(e) => {
                let error = crate::error_chain(&e);
                (
                    Outcome::Fail,
                    error.clone(),
                    json!({"ok": false, "error": error}),
                )
            }
        };
        items.push(Item {
            name,
            outcome,
            detail,
            fix: Some(fix),
        });
        j
    };
    let hypervisor = found(backend, FIX_QEMU, crate::hypervisor::binary(&config));
    // What serves the container's files: virtiofsd, or with shared_fs =
    // "none" mke2fs, which copies them into a disk image.
    let share = match hv.shared_fs {
        crate::config::SharedFs::VirtioFs => found(
            "virtiofsd",
            FIX_VIRTIOFSD,
            locate::find_binary(&hv.virtio_fs_daemon),
        ),
        crate::config::SharedFs::None => found(
            "mke2fs (shared_fs = none)",
            FIX_MKE2FS,
            locate::find_binary(Path::new("mke2fs")),
        ),
    };
    let kernel = found("guest kernel", FIX_GUEST, locate::kernel(hv));
    let initrd = found("guest initramfs", FIX_GUEST, locate::initrd(hv));
    let (accel, reason) = resolve_accel(hv.accel);
    items.push(Item {
        name: "accelerator",
        outcome: Outcome::Pass,
        detail: format!("{} ({reason})", accel.as_str()),
        fix: None,
    });
    let jail = match (hv.jail, crate::hypervisor::qemu::jail_usable()) {
        (false, _) => (Outcome::Info, "off (jail = false): QEMU runs as root".to_string()),
        (true, Ok(())) => (
            Outcome::Pass,
            format!(
                "QEMU runs as uid {} + the pid of its starter, without capabilities, in a root of its own",
                hv.jail_uid_base
            ),
        ),
        (true, Err(why)) => (Outcome::Fail, why),
    };
    items.push(Item {
        name: "QEMU's jail",
        outcome: jail.0,
        detail: jail.1.clone(),
        fix: Some(FIX_JAIL),
    });
    let shim_seccomp = match config.runtime.shim_seccomp {
        false => (
            Outcome::Info,
            "off (shim_seccomp = false): the shim runs without a filter of its own".to_string(),
        ),
        true => match crate::seccomp::shim_filter(true) {
            Ok(_) => (Outcome::Pass, crate::seccomp::describe()),
            Err(e) => (Outcome::Fail, crate::error_chain(&e)),
        },
    };
    items.push(Item {
        name: "the shim's filter",
        outcome: shim_seccomp.0,
        detail: shim_seccomp.1.clone(),
        fix: Some(FIX_SHIM_SECCOMP),
    });
    let cgroups = crate::host_cgroup::describe(&config.runtime);
    items.push(Item {
        name: "host cgroups",
        outcome: if cgroups.is_ok() {
            Outcome::Pass
        } else {
            Outcome::Fail
        },
        detail: cgroups.clone().unwrap_or_else(|e| e),
        fix: Some(FIX_CGROUPS),
    });
    let status = Factory::new(&config).status(&config);
    items.push(Item {
        name: "template",
        outcome: Outcome::Info,
        detail: template_line(
            &config,
            status.usable,
            status.reason.as_deref(),
            &status.path,
        ),
        fix: None,
    });
    let mut report = json!({
        "backend": backend,
        "sharedFs": hv.shared_fs,
        share_key(hv.shared_fs): share,
        "kernel": kernel,
        "initrd": initrd,
        "accel": {"use": accel.as_str(), "configured": hv.accel, "reason": reason},
        "hostCgroups": match &cgroups {
            Ok(detail) => json!({"ok": true, "detail": detail}),
            Err(error) => json!({"ok": false, "error": error}),
        },
        "vm": {"vcpus": hv.default_vcpus, "memoryMib": hv.default_memory},
        "jail": {"enabled": hv.jail, "uidBase": hv.jail_uid_base,
            "ok": jail.0 != Outcome::Fail, "detail": jail.1},
        "shimSeccomp": {"enabled": config.runtime.shim_seccomp,
            "ok": shim_seccomp.0 != Outcome::Fail, "detail": shim_seccomp.1},
        "template": {
            "enabled": config.factory.enable_template,
            "autoBuild": config.factory.auto_build,
            "status": status,
        },
    });
    report[backend] = hypervisor;
    Report {
        items,
        json: report,
    }
}

/// The JSON key of what serves the container's files.
fn share_key(shared_fs: crate::config::SharedFs) -> &'static str {
    match shared_fs {
        crate::config::SharedFs::VirtioFs => "virtiofsd",
        crate::config::SharedFs::None => "mke2fs",
    }
}

fn template_line(config: &Config, usable: bool, reason: Option<&str>, path: &Path) -> String {
    let f = &config.factory;
    match (f.enable_template, usable) {
        (false, _) => "off ([factory] enable_template = false): every container boots cold".into(),
        (true, true) => format!("{}: creates clone it", path.display()),
        (true, false) => format!(
            "none usable at {} ({}): creates boot cold{}",
            path.display(),
            reason.unwrap_or("missing"),
            if f.auto_build {
                ", and the first builds one"
            } else {
                " until `runvm factory init`"
            }
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_that_does_not_load_fails_the_check_with_its_error() {
        let err = toml::from_str::<Config>("[hypervisor]\nvcpu = 2\n").unwrap_err();
        let r = check(Err(ConfigError::Parse {
            path: "/etc/runvm/config.toml".into(),
            source: err,
        }));
        assert!(!r.ok());
        let text = r.text();
        assert!(text.starts_with("✘ configuration: "), "{text}");
        assert!(text.contains("vcpu"), "{text}");
        assert!(
            text.ends_with("runvm cannot run containers on this host\n"),
            "{text}"
        );
    }

    #[test]
    fn a_missing_kernel_is_a_failure_that_says_what_to_install() {
        let mut config = Config::default();
        config.hypervisor.qemu.kernel = Some("/nonexistent/vmlinux".into());
        let r = check(Ok(Loaded {
            config,
            files: Vec::new(),
            sources: Default::default(),
            warnings: Vec::new(),
        }));
        assert!(!r.ok());
        let text = r.text();
        assert!(
            text.contains("✘ guest kernel: /nonexistent/vmlinux does not exist\n  to fix: install the runvm package"),
            "{text}"
        );
        assert_eq!(r.json["kernel"]["ok"], false);
    }
}
