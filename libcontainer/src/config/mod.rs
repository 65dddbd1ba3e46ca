//! runvm's own configuration: which hypervisor, kernel and initramfs, how
//! large a VM, which timeouts. Read from the TOML file named by
//! `$RUNVM_CONFIG` (`runvm --config FILE`), else `/etc/runvm/config.toml` if
//! it exists, then the drop-ins beside it (`load`); every key is optional
//! (docs/config.md lists them with their defaults). This module only
//! parses: what the values mean is up to `hypervisor`, `locate` and the
//! others that use them.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod load;
pub mod show;

pub use load::{load_files, Loaded, DROPIN_DIR};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/runvm/config.toml";
pub const CONFIG_ENV: &str = "RUNVM_CONFIG";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("read config {path}")]
    Read { path: PathBuf, source: io::Error },
    #[error("parse config {path}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("merge config files {files:?}")]
    Merge {
        files: Vec<PathBuf>,
        source: Box<toml::de::Error>,
    },
}

/// Which hypervisor runs the VMs. Only QEMU is built; another name is a
/// parse error that lists the ones there are.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    #[default]
    Qemu,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Qemu => "qemu",
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// KVM when /dev/kvm can run a normal guest kernel, else TCG.
    #[default]
    Auto,
    Kvm,
    Tcg,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HypervisorConfig {
    pub backend: Backend,
    /// QEMU binary; a bare name is looked up in PATH.
    pub qemu: PathBuf,
    /// Guest kernel; default: `vmlinux` in the first guest directory that has it.
    pub kernel: Option<PathBuf>,
    /// Guest initramfs; default: `initramfs.img` beside the kernel.
    pub initrd: Option<PathBuf>,
    pub accel: Accel,
    pub vcpus: u32,
    pub memory_mib: u32,
    /// Appended to the guest kernel command line.
    pub kernel_params: String,
    /// Run QEMU with `-sandbox on` (seccomp) where the build supports it.
    pub seccomp_sandbox: bool,
}

impl Default for HypervisorConfig {
    fn default() -> Self {
        HypervisorConfig {
            backend: Backend::Qemu,
            qemu: PathBuf::from("qemu-system-x86_64"),
            kernel: None,
            initrd: None,
            accel: Accel::Auto,
            vcpus: 1,
            memory_mib: 256,
            kernel_params: String::new(),
            seccomp_sandbox: true,
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct VirtiofsdConfig {
    /// virtiofsd binary; a bare name is looked up in PATH.
    pub path: PathBuf,
    /// virtiofsd's --cache: auto, always, never or metadata.
    pub cache: String,
    /// virtiofsd's --sandbox: namespace, chroot or none.
    pub sandbox: String,
}

impl Default for VirtiofsdConfig {
    fn default() -> Self {
        VirtiofsdConfig {
            path: PathBuf::from("virtiofsd"),
            cache: "auto".into(),
            sandbox: "namespace".into(),
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Timeouts {
    /// From QEMU's launch until the agent answers.
    pub boot_secs: u64,
    /// For one request to the agent or the shim.
    pub request_secs: u64,
    /// For the VM to stop before it is killed.
    pub stop_secs: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            boot_secs: 120,
            request_secs: 60,
            stop_secs: 10,
        }
    }
}

impl Timeouts {
    pub fn boot(&self) -> Duration {
        Duration::from_secs(self.boot_secs)
    }
    pub fn request(&self) -> Duration {
        Duration::from_secs(self.request_secs)
    }
    pub fn stop(&self) -> Duration {
        Duration::from_secs(self.stop_secs)
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct FactoryConfig {
    /// Create containers by cloning a template VM instead of booting one.
    pub enable_template: bool,
    /// When a create finds no usable template (none yet, or made from
    /// another QEMU, kernel, initramfs or runvm), build one in the
    /// background for the creates after it. Off: only `runvm factory init`
    /// builds one.
    pub auto_build: bool,
    /// Where the template lives. Its memory is a file here, so this must be
    /// on tmpfs; clones copy it next to it.
    pub template_path: PathBuf,
    /// Clones of the template kept restored, warmed up (a throwaway
    /// container created and removed in each) and paused, for creates to
    /// take; 0: none (each create restores its own clone).
    pub pool_size: u32,
}

impl Default for FactoryConfig {
    fn default() -> Self {
        FactoryConfig {
            enable_template: true,
            auto_build: true,
            template_path: PathBuf::from("/dev/shm/runvm/template"),
            pool_size: 2,
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub hypervisor: HypervisorConfig,
    pub virtiofsd: VirtiofsdConfig,
    pub timeouts: Timeouts,
    pub factory: FactoryConfig,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn the_documented_defaults_are_the_real_ones() {
        let doc = include_str!("../../../docs/config.md");
        let start = doc.find("```toml\n").expect("a toml block") + "```toml\n".len();
        let end = start + doc[start..].find("```").expect("end of the block");
        let documented: Config = toml::from_str(&doc[start..end]).unwrap();
        assert_eq!(documented, Config::default());
    }

    /// Every key the code knows (with every optional one set), as
    /// `table.key`.
    fn keys_in_code() -> Vec<String> {
        let mut all = Config::default();
        all.hypervisor.kernel = Some("/k".into());
        all.hypervisor.initrd = Some("/i".into());
        let value = toml::Value::try_from(&all).unwrap();
        let mut keys = Vec::new();
        for (table, entries) in value.as_table().unwrap() {
            for key in entries.as_table().unwrap().keys() {
                keys.push(format!("{table}.{key}"));
            }
        }
        keys
    }

    #[test]
    fn every_key_in_the_code_is_documented() {
        let doc = include_str!("../../../docs/config.md");
        let start = doc.find("```toml\n").expect("a toml block");
        let block = &doc[start..start + doc[start..][3..].find("```").unwrap() + 3];
        let mut table = String::new();
        let mut documented = Vec::new();
        for line in block.lines() {
            let line = line.trim_start_matches("# ").trim();
            if let Some(t) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                table = t.to_string();
            } else if let Some((key, _)) = line.split_once(" = ") {
                if !key.contains(' ') {
                    documented.push(format!("{table}.{key}"));
                }
            }
        }
        for key in keys_in_code() {
            assert!(
                documented.contains(&key),
                "{key} is not in docs/config.md (documented: {documented:?})"
            );
        }
    }

    #[test]
    fn empty_file_gives_the_defaults() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("config.toml");
        fs::write(&path, "").unwrap();
        assert_eq!(Config::from_file(&path).unwrap(), Config::default());
    }

    #[test]
    fn keys_override_and_unknown_keys_are_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("config.toml");
        fs::write(&path, "[hypervisor]\naccel = \"tcg\"\nmemory_mib = 512\n").unwrap();
        let c = Config::from_file(&path).unwrap();
        assert_eq!(c.hypervisor.accel, Accel::Tcg);
        assert_eq!(c.hypervisor.memory_mib, 512);
        assert_eq!(c.hypervisor.vcpus, 1);
        fs::write(&path, "[hypervisor]\nmemroy_mib = 512\n").unwrap();
        assert!(matches!(
            Config::from_file(&path),
            Err(ConfigError::Parse { .. })
        ));
    }
}
