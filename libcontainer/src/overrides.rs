//! Per-container overrides of hypervisor settings through OCI annotations
//! (`org.runvm.config.hypervisor.NAME`), as Kata's `io.katacontainers.
//! config.hypervisor.*`: only those the operator enabled one by one
//! (`[hypervisor.qemu] enable_annotations`), paths only inside the
//! operator's globs, sizes within bounds, kernel parameters appended and
//! never replacing the ones the guest needs. Anything else fails create.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use crate::config::{anchored, Config, FsCache, HypervisorConfig, MIN_MEMORY_MIB};

/// `*` does not cross a `/`, as in a shell (and Go's filepath.Match).
const SEPARATOR_LITERAL: glob::MatchOptions = glob::MatchOptions {
    case_sensitive: true,
    require_literal_separator: true,
    require_literal_leading_dot: false,
};

/// The prefix of every runvm configuration annotation.
pub const PREFIX: &str = "org.runvm.config.";
const HYPERVISOR: &str = "org.runvm.config.hypervisor.";

/// Kernel parameters the guest's boot depends on; an override may not set
/// them (a later one on the command line would win).
const RESERVED_PARAMS: &[&str] = &[
    "console",
    "panic",
    "init",
    "rdinit",
    "root",
    "initrd",
    "noinitrd",
    "8250.nr_uarts",
];

/// What a setting's value is.
#[derive(Clone, Copy)]
enum Kind {
    Vcpus,
    Memory,
    KernelParams,
    Path(PathSetting),
    Args,
    Cache,
    MachineType,
}

/// A path setting, and the `[hypervisor.qemu]` glob list it must match.
#[derive(Clone, Copy)]
enum PathSetting {
    Hypervisor,
    Kernel,
    Initrd,
    VirtiofsDaemon,
}

impl PathSetting {
    fn list(self) -> &'static str {
        match self {
            PathSetting::Hypervisor => "valid_hypervisor_paths",
            PathSetting::Kernel => "valid_kernel_paths",
            PathSetting::Initrd => "valid_initrd_paths",
            PathSetting::VirtiofsDaemon => "valid_virtio_fs_daemon_paths",
        }
    }

    fn globs(self, hv: &HypervisorConfig) -> &[String] {
        match self {
            PathSetting::Hypervisor => &hv.valid_hypervisor_paths,
            PathSetting::Kernel => &hv.valid_kernel_paths,
            PathSetting::Initrd => &hv.valid_initrd_paths,
            PathSetting::VirtiofsDaemon => &hv.valid_virtio_fs_daemon_paths,
        }
    }

    fn set(self, hv: &mut HypervisorConfig, path: PathBuf) {
        match self {
            PathSetting::Hypervisor => hv.path = path,
            PathSetting::Kernel => hv.kernel = Some(path),
            PathSetting::Initrd => hv.initrd = Some(path),
            PathSetting::VirtiofsDaemon => hv.virtio_fs_daemon = path,
        }
    }
}

/// The settings an annotation can override, by NAME.
const SETTINGS: &[(&str, Kind)] = &[
    ("default_vcpus", Kind::Vcpus),
    ("default_memory", Kind::Memory),
    ("kernel_params", Kind::KernelParams),
    ("path", Kind::Path(PathSetting::Hypervisor)),
    ("kernel", Kind::Path(PathSetting::Kernel)),
    ("initrd", Kind::Path(PathSetting::Initrd)),
    ("virtio_fs_daemon", Kind::Path(PathSetting::VirtiofsDaemon)),
    ("virtio_fs_extra_args", Kind::Args),
    ("virtio_fs_cache", Kind::Cache),
    ("machine_type", Kind::MachineType),
];

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum OverrideError {
    #[error(
        "annotation {annotation} is not a setting runvm lets a container override (it can: {known})"
    )]
    Unknown { annotation: String, known: String },
    #[error(
        "annotation {annotation} is not enabled: the operator allows it with a pattern matching {name:?} in [hypervisor.qemu] enable_annotations"
    )]
    NotEnabled { annotation: String, name: String },
    #[error("annotation {annotation}: {value:?} is not {expected}")]
    BadValue {
        annotation: String,
        value: String,
        expected: String,
    },
    #[error(
        "annotation {annotation}: {path} is not allowed: it matches none of [hypervisor.qemu] {list} ({globs:?})"
    )]
    PathNotAllowed {
        annotation: String,
        path: String,
        list: &'static str,
        globs: Vec<String>,
    },
    #[error("annotation {annotation}: kernel parameter {param:?} is runvm's own and cannot be overridden")]
    ReservedParam { annotation: String, param: String },
}

/// The host's size, which bounds a VM.
#[derive(Debug, Clone, Copy)]
pub struct Host {
    pub cpus: u32,
    pub mib: u64,
}

/// The overrides applied: annotation → value, for the state file.
pub type Applied = BTreeMap<String, String>;

/// `config` with the container's annotations applied, and which were.
/// Annotations outside [`PREFIX`] are the caller's and ignored.
pub fn apply(
    config: &Config,
    annotations: &HashMap<String, String>,
    host: Host,
) -> Result<(Config, Applied), OverrideError> {
    let mut out = config.clone();
    let mut applied = Applied::new();
    let mut ours: Vec<(&String, &String)> = annotations
        .iter()
        .filter(|(k, _)| k.starts_with(PREFIX))
        .collect();
    ours.sort();
    for (annotation, value) in ours {
        let unknown = || OverrideError::Unknown {
            annotation: annotation.clone(),
            known: SETTINGS
                .iter()
                .map(|(n, _)| format!("{HYPERVISOR}{n}"))
                .collect::<Vec<_>>()
                .join(", "),
        };
        let name = annotation.strip_prefix(HYPERVISOR).ok_or_else(unknown)?;
        let kind = SETTINGS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, k)| *k)
            .ok_or_else(unknown)?;
        let enabled = config
            .vmm()
            .enable_annotations
            .iter()
            .filter_map(|p| anchored(p).ok())
            .any(|re| re.is_match(name));
        if !enabled {
            return Err(OverrideError::NotEnabled {
                annotation: annotation.clone(),
                name: name.to_string(),
            });
        }
        set(out.vmm_mut(), config.vmm(), annotation, kind, value, host)?;
        applied.insert(annotation.clone(), value.clone());
    }
    Ok((out, applied))
}

fn set(
    hv: &mut HypervisorConfig,
    operator: &HypervisorConfig,
    annotation: &str,
    kind: Kind,
    value: &str,
    host: Host,
) -> Result<(), OverrideError> {
    let bad = |expected: String| OverrideError::BadValue {
        annotation: annotation.to_string(),
        value: value.to_string(),
        expected,
    };
    match kind {
        Kind::Vcpus => {
            let max = match operator.default_maxvcpus {
                0 => host.cpus,
                n => n.min(host.cpus),
            };
            let expected = || format!("a number of vCPUs from 1 to {max}");
            let n: u32 = value.parse().map_err(|_| bad(expected()))?;
            if n == 0 || n > max {
                return Err(bad(expected()));
            }
            hv.default_vcpus = n;
        }
        Kind::Memory => {
            let expected = || format!("a memory size in MiB from {MIN_MEMORY_MIB} to {}", host.mib);
            let n: u32 = value.parse().map_err(|_| bad(expected()))?;
            if n < MIN_MEMORY_MIB || u64::from(n) > host.mib {
                return Err(bad(expected()));
            }
            hv.default_memory = n;
        }
        Kind::KernelParams => {
            for param in value.split_whitespace() {
                let key = param.split('=').next().unwrap_or(param);
                if RESERVED_PARAMS.contains(&key) {
                    return Err(OverrideError::ReservedParam {
                        annotation: annotation.to_string(),
                        param: param.to_string(),
                    });
                }
            }
            hv.kernel_params = [hv.kernel_params.trim(), value.trim()]
                .iter()
                .filter(|p| !p.is_empty())
                .copied()
                .collect::<Vec<_>>()
                .join(" ");
        }
        Kind::Path(setting) => {
            let globs = setting.globs(operator);
            let path = PathBuf::from(value);
            let inside = path.is_absolute()
                && !value.split('/').any(|c| c == "..")
                && globs
                    .iter()
                    .filter_map(|g| glob::Pattern::new(g).ok())
                    .any(|g| g.matches_path_with(&path, SEPARATOR_LITERAL));
            if !inside {
                return Err(OverrideError::PathNotAllowed {
                    annotation: annotation.to_string(),
                    path: value.to_string(),
                    list: setting.list(),
                    globs: globs.to_vec(),
                });
            }
            setting.set(hv, path);
        }
        Kind::Args => {
            hv.virtio_fs_extra_args =
                serde_json::from_str(value).map_err(|_| bad("a JSON array of strings".into()))?;
        }
        Kind::Cache => {
            hv.virtio_fs_cache = serde_json::from_value::<FsCache>(value.into())
                .map_err(|_| bad("auto, always, never or metadata".into()))?;
        }
        Kind::MachineType => {
            crate::config::check_machine_type(value)
                .map_err(|_| bad("q35 or a versioned q35 such as pc-q35-7.2".into()))?;
            hv.machine_type = value.to_string();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: Host = Host { cpus: 4, mib: 8192 };

    fn operator(enable: &[&str]) -> Config {
        let mut c = Config::default();
        c.hypervisor.qemu.enable_annotations = enable.iter().map(|s| s.to_string()).collect();
        c.hypervisor.qemu.kernel_params = "quiet.runvm=1".into();
        c.hypervisor.qemu.valid_kernel_paths = vec!["/opt/kernels/*".into()];
        c
    }

    fn with(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn err(config: &Config, pairs: &[(&str, &str)]) -> String {
        crate::error_chain(&apply(config, &with(pairs), HOST).unwrap_err())
    }

    #[test]
    fn enabled_overrides_apply_and_are_recorded() {
        let c = operator(&[
            "default_(vcpus|memory)",
            "kernel_params",
            "kernel",
            "machine_type",
        ]);
        let a = with(&[
            ("org.runvm.config.hypervisor.machine_type", "pc-q35-7.2"),
            ("org.runvm.config.hypervisor.default_vcpus", "2"),
            ("org.runvm.config.hypervisor.default_memory", "512"),
            ("org.runvm.config.hypervisor.kernel_params", "runvm.test=1"),
            (
                "org.runvm.config.hypervisor.kernel",
                "/opt/kernels/vmlinux-2",
            ),
            ("io.kubernetes.cri.container-type", "container"),
        ]);
        let (out, applied) = apply(&c, &a, HOST).unwrap();
        let hv = out.vmm();
        assert_eq!((hv.default_vcpus, hv.default_memory), (2, 512));
        assert_eq!(hv.kernel_params, "quiet.runvm=1 runvm.test=1");
        assert_eq!(hv.kernel, Some(PathBuf::from("/opt/kernels/vmlinux-2")));
        assert_eq!(hv.machine_type, "pc-q35-7.2");
        assert_eq!(applied.len(), 5);
        assert_eq!(applied["org.runvm.config.hypervisor.default_vcpus"], "2");
        // The operator's settings are untouched.
        assert_eq!(c.vmm().default_vcpus, 1);
    }

    #[test]
    fn nothing_is_enabled_by_default() {
        let msg = err(
            &Config::default(),
            &[("org.runvm.config.hypervisor.default_vcpus", "2")],
        );
        assert_eq!(msg, "annotation org.runvm.config.hypervisor.default_vcpus is not enabled: the operator allows it with a pattern matching \"default_vcpus\" in [hypervisor.qemu] enable_annotations");
    }

    #[test]
    fn patterns_are_anchored() {
        // "vcpus" does not match "default_vcpus"; "default_vcpus" does not
        // let "default_vcpus_x" through either.
        let c = operator(&["vcpus"]);
        assert!(
            err(&c, &[("org.runvm.config.hypervisor.default_vcpus", "2")])
                .contains("is not enabled")
        );
    }

    #[test]
    fn unknown_settings_are_refused_with_the_ones_there_are() {
        let c = operator(&[".*"]);
        for a in [
            "org.runvm.config.hypervisor.memory_slots",
            "org.runvm.config.runtime.hypervisor",
            "org.runvm.config.agent.debug",
        ] {
            let msg = err(&c, &[(a, "x")]);
            assert!(
                msg.starts_with(&format!("annotation {a} is not a setting")),
                "{msg}"
            );
            assert!(
                msg.contains("org.runvm.config.hypervisor.default_vcpus"),
                "{msg}"
            );
        }
    }

    #[test]
    fn bad_values_and_out_of_bounds_sizes_are_refused() {
        let mut c = operator(&[".*"]);
        for (name, value, says) in [
            ("default_vcpus", "lots", "a number of vCPUs from 1 to 4"),
            ("default_vcpus", "0", "from 1 to 4"),
            ("default_vcpus", "5", "from 1 to 4"),
            ("default_memory", "64", "from 128 to 8192"),
            ("default_memory", "9000", "from 128 to 8192"),
            ("virtio_fs_extra_args", "--foo", "a JSON array of strings"),
            (
                "virtio_fs_cache",
                "sometimes",
                "auto, always, never or metadata",
            ),
            ("machine_type", "pc", "q35 or a versioned q35"),
            ("machine_type", "pc-q35-", "q35 or a versioned q35"),
            ("machine_type", "microvm", "q35 or a versioned q35"),
        ] {
            let msg = err(&c, &[(&format!("{HYPERVISOR}{name}"), value)]);
            assert!(
                msg.contains(&format!("{value:?} is not ")) && msg.contains(says),
                "{msg}"
            );
        }
        c.hypervisor.qemu.default_maxvcpus = 2;
        assert!(
            err(&c, &[("org.runvm.config.hypervisor.default_vcpus", "3")]).contains("from 1 to 2")
        );
    }

    #[test]
    fn paths_must_match_the_operators_globs() {
        let c = operator(&[".*"]);
        for (name, path, list) in [
            ("kernel", "/tmp/vmlinux", "valid_kernel_paths"),
            (
                "kernel",
                "/opt/kernels/../../tmp/vmlinux",
                "valid_kernel_paths",
            ),
            ("kernel", "opt/kernels/vmlinux", "valid_kernel_paths"),
            (
                "path",
                "/usr/bin/qemu-system-x86_64",
                "valid_hypervisor_paths",
            ),
            (
                "virtio_fs_daemon",
                "/usr/libexec/virtiofsd",
                "valid_virtio_fs_daemon_paths",
            ),
        ] {
            let msg = err(&c, &[(&format!("{HYPERVISOR}{name}"), path)]);
            assert!(
                msg.contains(&format!(
                    "{path} is not allowed: it matches none of [hypervisor.qemu] {list}"
                )),
                "{msg}"
            );
        }
    }

    #[test]
    fn kernel_params_cannot_replace_the_guests_own() {
        let c = operator(&["kernel_params"]);
        for p in ["rdinit=/bin/sh", "console=tty0", "init=/x", "panic=0"] {
            let msg = err(
                &c,
                &[(
                    "org.runvm.config.hypervisor.kernel_params",
                    &format!("a=1 {p}"),
                )],
            );
            assert!(
                msg.contains(&format!("kernel parameter {p:?} is runvm's own")),
                "{msg}"
            );
        }
    }
}
