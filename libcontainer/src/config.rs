//! runvm's own configuration: which hypervisor, kernel and initramfs, how
//! large a VM, which timeouts. Read from the TOML file named by
//! `$RUNVM_CONFIG`, else `/etc/runvm/config.toml` if it exists; every key is
//! optional (docs/config.md lists them with their defaults).

use std::env;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/runvm/config.toml";
pub const CONFIG_ENV: &str = "RUNVM_CONFIG";
pub const KERNEL_FILE: &str = "vmlinux";
pub const INITRD_FILE: &str = "initramfs.img";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("read config {path}")]
    Read { path: PathBuf, source: io::Error },
    #[error("parse config {path}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("guest {what} not found (looked in {looked}); build it with `make guest`")]
    GuestMissing { what: &'static str, looked: String },
    #[error("{name} not found in PATH or {looked}")]
    BinaryMissing { name: String, looked: String },
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
    /// Create containers by cloning a template VM (`runvm factory init`)
    /// instead of booting one.
    pub enable_template: bool,
    /// Where the template lives. Its memory is a file here, so this must be
    /// on tmpfs; clones copy it next to it.
    pub template_path: PathBuf,
}

impl Default for FactoryConfig {
    fn default() -> Self {
        FactoryConfig {
            enable_template: false,
            template_path: PathBuf::from("/dev/shm/runvm/template"),
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

impl Config {
    /// Load from `$RUNVM_CONFIG` (must exist) or the default path (optional).
    pub fn load() -> Result<Self, ConfigError> {
        match env::var_os(CONFIG_ENV) {
            Some(path) => Self::from_file(Path::new(&path)),
            None if Path::new(DEFAULT_CONFIG_PATH).exists() => {
                Self::from_file(Path::new(DEFAULT_CONFIG_PATH))
            }
            None => Ok(Config::default()),
        }
    }

    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    pub fn kernel(&self) -> Result<PathBuf, ConfigError> {
        match &self.hypervisor.kernel {
            Some(p) => Ok(p.clone()),
            None => find_guest_file(KERNEL_FILE, "kernel"),
        }
    }

    pub fn initrd(&self) -> Result<PathBuf, ConfigError> {
        match (&self.hypervisor.initrd, &self.hypervisor.kernel) {
            (Some(p), _) => Ok(p.clone()),
            (None, Some(kernel)) => Ok(kernel.with_file_name(INITRD_FILE)),
            (None, None) => find_guest_file(INITRD_FILE, "initramfs"),
        }
    }

    /// The VM to run for a container (or a template) named `name`, with its
    /// sockets and logs in `dir`.
    pub fn vm_config(
        &self,
        name: String,
        dir: &Path,
        memory: crate::hypervisor::GuestMemory,
        fs_shares: Vec<crate::hypervisor::FsShare>,
    ) -> Result<crate::hypervisor::VmConfig, ConfigError> {
        let hv = &self.hypervisor;
        Ok(crate::hypervisor::VmConfig {
            name,
            dir: dir.to_path_buf(),
            kernel: self.kernel()?,
            initrd: self.initrd()?,
            kernel_params: hv.kernel_params.clone(),
            vcpus: hv.vcpus,
            memory_mib: hv.memory_mib,
            accel: crate::hypervisor::resolve_accel(hv.accel).0,
            fs_shares,
            seccomp_sandbox: hv.seccomp_sandbox,
            memory,
            incoming: false,
        })
    }

    pub fn qemu(&self) -> Result<PathBuf, ConfigError> {
        find_binary(&self.hypervisor.qemu)
    }

    pub fn virtiofsd(&self) -> Result<PathBuf, ConfigError> {
        find_binary(&self.virtiofsd.path)
    }
}

/// Where `make guest` and `make install` put the guest kernel and initramfs:
/// `share/runvm` beside the binary's directory (so `target/release/runvm`
/// finds `target/share/runvm`), then the usual prefixes.
pub fn guest_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Ok(exe) = env::current_exe() {
        if let Some(prefix) = exe.parent().and_then(Path::parent) {
            dirs.push(prefix.join("share/runvm"));
        }
    }
    dirs.push(PathBuf::from("/usr/local/share/runvm"));
    dirs.push(PathBuf::from("/usr/share/runvm"));
    dirs
}

fn find_guest_file(file: &str, what: &'static str) -> Result<PathBuf, ConfigError> {
    let dirs = guest_dirs();
    dirs.iter()
        .map(|d| d.join(file))
        .find(|p| p.is_file())
        .ok_or_else(|| ConfigError::GuestMissing {
            what,
            looked: dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// Directories searched after PATH: containerd and conmon may run runvm with
/// a short PATH.
const EXTRA_BIN_DIRS: &[&str] = &[
    "/usr/local/bin",
    "/usr/bin",
    "/usr/libexec",
    "/usr/lib/qemu",
];

/// Resolve a binary: a path with a slash is taken as is; a bare name is looked
/// up in PATH, then in a few standard directories.
pub fn find_binary(name: &Path) -> Result<PathBuf, ConfigError> {
    if name.components().count() > 1 || name.is_absolute() {
        return Ok(name.to_path_buf());
    }
    let path_dirs = env::var_os("PATH")
        .map(|p| env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    path_dirs
        .iter()
        .cloned()
        .chain(EXTRA_BIN_DIRS.iter().map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
        .ok_or_else(|| ConfigError::BinaryMissing {
            name: name.display().to_string(),
            looked: EXTRA_BIN_DIRS.join(", "),
        })
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_defaults_are_the_real_ones() {
        let doc = include_str!("../../docs/config.md");
        let start = doc.find("```toml\n").expect("a toml block") + "```toml\n".len();
        let end = start + doc[start..].find("```").expect("end of the block");
        let documented: Config = toml::from_str(&doc[start..end]).unwrap();
        assert_eq!(documented, Config::default());
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

    #[test]
    fn initrd_defaults_to_beside_a_configured_kernel() {
        let mut c = Config::default();
        c.hypervisor.kernel = Some("/opt/guest/vmlinux".into());
        assert_eq!(
            c.initrd().unwrap(),
            PathBuf::from("/opt/guest/initramfs.img")
        );
    }

    #[test]
    fn binaries_resolve_through_path() {
        assert!(find_binary(Path::new("sh")).unwrap().is_absolute());
        assert!(matches!(
            find_binary(Path::new("no-such-binary-runvm")),
            Err(ConfigError::BinaryMissing { .. })
        ));
    }
}
