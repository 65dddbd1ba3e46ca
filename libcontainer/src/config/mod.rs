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

mod hypervisor;
mod legacy;
mod load;
pub mod show;

pub use hypervisor::{
    anchored, check_machine_type, Accel, Backend, FsCache, FsSandbox, HypervisorConfig,
    Hypervisors, MonitorKind, OtherHypervisor, SharedFs, VirtiofsdConfig, MIN_MEMORY_MIB,
};
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
    /// An error in a file of the old layout, at the key it wrote.
    #[error("parse config {path}: {at}{key}: {message}")]
    OldLayout {
        path: PathBuf,
        at: String,
        key: String,
        message: String,
    },
    #[error("config drop-in {path} is refused: {why} (it must be runvm's user's, and writable by no one else)")]
    Untrusted { path: PathBuf, why: String },
    #[error("merge config files {files:?}")]
    Merge {
        files: Vec<PathBuf>,
        source: Box<toml::de::Error>,
    },
}

/// `[runtime]`: which hypervisor, and how long to wait for it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    pub hypervisor: Backend,
    /// From QEMU's launch until the agent answers.
    pub boot_secs: u64,
    /// For one request to the agent or the shim.
    pub request_secs: u64,
    /// For the VM to stop before it is killed.
    pub stop_secs: u64,
    /// Every host process of the VM (shim, QEMU, virtiofsd) in the
    /// container's host cgroup, as Kata's default. Off: only QEMU's vCPU
    /// threads go there, the rest to `runvm_overhead/<id>`; cgroup v1 only.
    pub sandbox_cgroup_only: bool,
    /// MiB added to the VM's memory for the host cgroup's memory limit (of
    /// a container that has one): QEMU's own memory, virtiofsd, the shim.
    pub cgroup_memory_overhead: u32,
    /// CPUs added to the container's CFS quota for the host cgroup's quota
    /// (of a container that has one): QEMU's I/O and emulation threads.
    #[serde(deserialize_with = "cpu_fraction")]
    pub cgroup_cpu_overhead: f64,
    /// Once the container is created, confine the shim with a seccomp
    /// filter of its own (no new processes, mounts, namespaces, tracing).
    pub shim_seccomp: bool,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            hypervisor: Backend::Qemu,
            boot_secs: 120,
            request_secs: 60,
            stop_secs: 10,
            sandbox_cgroup_only: true,
            cgroup_memory_overhead: 256,
            cgroup_cpu_overhead: 0.5,
            shim_seccomp: true,
        }
    }
}

fn cpu_fraction<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let n = f64::deserialize(d)?;
    if !(0.0..=1024.0).contains(&n) {
        return Err(serde::de::Error::custom(format!(
            "{n} CPUs is not between 0 and 1024"
        )));
    }
    Ok(n)
}

impl RuntimeConfig {
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

/// `[agent]`: the guest agent.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// The agent logs each request it answers, with its outcome and time,
    /// to the guest console (`console.log` in the container's state
    /// directory). A different kernel command line: templates are made
    /// apart for it.
    pub enable_debug: bool,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub runtime: RuntimeConfig,
    pub hypervisor: Hypervisors,
    pub agent: AgentConfig,
    pub factory: FactoryConfig,
}

impl Config {
    /// The section of the hypervisor `[runtime] hypervisor` selects.
    pub fn vmm(&self) -> &HypervisorConfig {
        match self.runtime.hypervisor {
            Backend::Qemu => &self.hypervisor.qemu,
        }
    }

    pub fn vmm_mut(&mut self) -> &mut HypervisorConfig {
        match self.runtime.hypervisor {
            Backend::Qemu => &mut self.hypervisor.qemu,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_defaults_are_the_real_ones() {
        let doc = include_str!("../../../docs/config.md");
        let start = doc.find("```toml\n").expect("a toml block") + "```toml\n".len();
        let end = start + doc[start..].find("```").expect("end of the block");
        let documented: Config = toml::from_str(&doc[start..end]).unwrap();
        assert!(!legacy::has_old_keys(&doc[start..end].parse().unwrap()));
        assert_eq!(documented, Config::default());
    }

    /// Every key the code knows (with every optional one set, and the
    /// sections of the hypervisors without a backend as firecracker's), as
    /// `table.key`.
    fn keys_in_code() -> Vec<String> {
        let mut all = Config::default();
        all.hypervisor.qemu.kernel = Some("/k".into());
        all.hypervisor.qemu.initrd = Some("/i".into());
        all.hypervisor.qemu.extra_monitor_socket = Some(MonitorKind::Qmp);
        all.hypervisor.firecracker = Some(OtherHypervisor {
            path: Some("/p".into()),
            kernel: Some("/k".into()),
            initrd: Some("/i".into()),
            image: Some("/img".into()),
            default_vcpus: Some(1),
            default_memory: Some(256),
            kernel_params: Some(String::new()),
            virtio_fs_daemon: Some("/v".into()),
        });
        fn walk(prefix: &str, t: &toml::Table, keys: &mut Vec<String>) {
            for (k, v) in t {
                match v.as_table() {
                    Some(sub) => walk(&format!("{prefix}{k}."), sub, keys),
                    None => keys.push(format!("{prefix}{k}")),
                }
            }
        }
        let mut keys = Vec::new();
        walk("", &toml::Table::try_from(&all).unwrap(), &mut keys);
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
        assert_eq!(Config::from_toml("").unwrap(), Config::default());
    }

    #[test]
    fn keys_override_and_unknown_keys_are_errors() {
        let c = Config::from_toml("[hypervisor.qemu]\naccel = \"tcg\"\ndefault_memory = 512\n")
            .unwrap();
        assert_eq!(c.vmm().accel, Accel::Tcg);
        assert_eq!(c.vmm().default_memory, 512);
        assert_eq!(c.vmm().default_vcpus, 1);
        assert!(Config::from_toml("[hypervisor.qemu]\nmemroy = 512\n").is_err());
        let c = Config::from_toml(
            "[hypervisor.qemu]\nmachine_type = \"pc-q35-7.2\"\nshared_fs = \"none\"\n[agent]\nenable_debug = true\n",
        )
        .unwrap();
        assert_eq!(c.vmm().machine_type, "pc-q35-7.2");
        assert_eq!(c.vmm().shared_fs, SharedFs::None);
        assert!(c.agent.enable_debug);
        for bad in ["\"pc\"", "\"microvm\"", "\"pc-q35-x\""] {
            let e = Config::from_toml(&format!("[hypervisor.qemu]\nmachine_type = {bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("which only q35 has"), "{e}");
        }
        let e = Config::from_toml("[hypervisor.qemu]\nshared_fs = \"9p\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("virtio-fs"), "{e}");
        assert!(Config::from_toml("[agent]\ndebug = true\n").is_err());
        let c =
            Config::from_toml("[hypervisor.qemu]\njail = false\njail_uid_base = 100000\n").unwrap();
        assert!(!c.vmm().jail);
        assert_eq!(c.vmm().jail_uid_base, 100000);
        for bad in ["0", "999", "2147483647"] {
            let e = Config::from_toml(&format!("[hypervisor.qemu]\njail_uid_base = {bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("must stay between 1000 and 2147483647"), "{e}");
        }
        let c = Config::from_toml("[hypervisor.qemu]\nconsole_log_max_mib = 1\n").unwrap();
        assert_eq!(c.vmm().console_log_max_mib, 1);
        for bad in ["0", "4097"] {
            let e = Config::from_toml(&format!("[hypervisor.qemu]\nconsole_log_max_mib = {bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("is not between 1 and 4096"), "{e}");
        }
        assert!(Config::from_toml("[hypervisor]\nmemroy_mib = 512\n").is_err());
    }
}
