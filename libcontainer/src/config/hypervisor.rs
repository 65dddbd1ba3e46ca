//! The `[hypervisor.*]` sections, one per hypervisor as in Kata's
//! configuration.toml: `[hypervisor.qemu]`, the backend runvm has, and the
//! sections of the ones it has none for yet, which are parsed and checked
//! so that a file written for them is not silently wrong.

use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize};

/// The smallest VM runvm makes, MiB (the guest boots in it with ~110 MiB
/// free for the container).
pub const MIN_MEMORY_MIB: u32 = 128;

/// The hypervisors runvm has a backend for. `[runtime] hypervisor` names
/// one; a hypervisor with a section but no backend is refused when the
/// file is read, with what is missing.
#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    #[default]
    Qemu,
}

/// Hypervisors with a configuration section whose backend is not built.
const NOT_BUILT: &[&str] = &["cloud-hypervisor", "firecracker", "acrn", "dragonball"];

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Qemu => "qemu",
        }
    }
}

impl<'de> Deserialize<'de> for Backend {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        match name.as_str() {
            "qemu" => Ok(Backend::Qemu),
            n if NOT_BUILT.contains(&n) => Err(serde::de::Error::custom(format!(
                "hypervisor {n:?} is not built into this runvm: it has a configuration \
                 section, but no backend yet (built: qemu; {n} also needs a usable /dev/kvm)"
            ))),
            n => Err(serde::de::Error::custom(format!(
                "unknown hypervisor {n:?}: expected qemu (built), or one of {} (not built yet)",
                NOT_BUILT.join(", ")
            ))),
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

/// What the debug monitor speaks: QEMU's human monitor, or QMP (JSON,
/// `qmp-pretty`: indented).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum MonitorKind {
    Hmp,
    Qmp,
    QmpPretty,
}

/// virtiofsd's `--cache` values.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FsCache {
    Auto,
    Always,
    Never,
    Metadata,
}

/// virtiofsd's `--sandbox` values.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FsSandbox {
    Namespace,
    Chroot,
    None,
}

impl FsCache {
    pub fn as_str(self) -> &'static str {
        match self {
            FsCache::Auto => "auto",
            FsCache::Always => "always",
            FsCache::Never => "never",
            FsCache::Metadata => "metadata",
        }
    }
}

impl FsSandbox {
    pub fn as_str(self) -> &'static str {
        match self {
            FsSandbox::Namespace => "namespace",
            FsSandbox::Chroot => "chroot",
            FsSandbox::None => "none",
        }
    }
}

/// How the container's files reach the guest (`shared_fs`, Kata's key).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SharedFs {
    /// Served live by virtiofsd: the guest sees the host's files.
    #[default]
    VirtioFs,
    /// Copied at create into an ext4 image on a virtio-blk disk, for hosts
    /// without virtio-fs: later changes on either side stay on that side.
    None,
}

impl SharedFs {
    pub fn as_str(self) -> &'static str {
        match self {
            SharedFs::VirtioFs => "virtio-fs",
            SharedFs::None => "none",
        }
    }
}

/// `[hypervisor.*]`: QEMU's section, and the others'.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Hypervisors {
    pub qemu: HypervisorConfig,
    #[serde(rename = "cloud-hypervisor", skip_serializing_if = "Option::is_none")]
    pub cloud_hypervisor: Option<OtherHypervisor>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub firecracker: Option<OtherHypervisor>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acrn: Option<OtherHypervisor>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dragonball: Option<OtherHypervisor>,
}

/// `[hypervisor.qemu]`: the VM and the daemon that serves it the rootfs.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HypervisorConfig {
    /// QEMU binary; a bare name is looked up (`locate::find_binary`).
    pub path: PathBuf,
    /// Guest kernel; default: `vmlinux` in the first guest directory that has it.
    pub kernel: Option<PathBuf>,
    /// Guest initramfs; default: `initramfs.img` beside the kernel.
    pub initrd: Option<PathBuf>,
    pub accel: Accel,
    /// QEMU's `-machine` type: `q35`, or a versioned q35 (`pc-q35-7.2`)
    /// so that templates survive a QEMU upgrade. runvm's devices sit on
    /// PCIe root ports, which only q35 has.
    #[serde(deserialize_with = "machine_type")]
    pub machine_type: String,
    #[serde(deserialize_with = "vcpus")]
    pub default_vcpus: u32,
    /// MiB.
    #[serde(deserialize_with = "memory")]
    pub default_memory: u32,
    /// Slots for memory added while the VM runs (QEMU's `-m slots=`); 0:
    /// none. With them, `update` grows a VM whose container's new memory
    /// limit needs more than it has.
    #[serde(deserialize_with = "memory_slots")]
    pub memory_slots: u32,
    /// The most memory a VM may grow to, MiB; 0: the host's memory.
    pub default_maxmemory: u32,
    /// Appended to the guest kernel command line.
    pub kernel_params: String,
    /// Run QEMU with `-sandbox on` (seccomp) where the build supports it.
    pub seccomp_sandbox: bool,
    /// Run QEMU in a jail: a uid of its own, no capabilities, no_new_privs,
    /// and mount and IPC namespaces whose root holds only what it opens
    /// (docs/security.md).
    pub jail: bool,
    /// The jail's uids (and gids): this plus the pid of the process that
    /// launches QEMU, so each VM alive has its own.
    #[serde(deserialize_with = "jail_uid_base")]
    pub jail_uid_base: u32,
    /// How much of the guest's console output its log keeps, MiB (the
    /// first of it; the guest decides how much it writes).
    #[serde(deserialize_with = "console_log_max_mib")]
    pub console_log_max_mib: u32,
    /// `virtio-fs`, or `none`: the rootfs and bind sources copied into a
    /// disk image at create (docs/config.md, "shared_fs = none").
    pub shared_fs: SharedFs,
    /// With `shared_fs = "none"`: where the images are made (on disk, not
    /// tmpfs: an image is as large as the files). Each is unlinked once
    /// QEMU has it open, so nothing stays behind.
    pub disk_image_dir: PathBuf,
    /// With `shared_fs = "none"`: free space in each image for what the
    /// container writes, MiB (the image is sparse: unwritten space costs
    /// nothing).
    pub disk_image_free_mib: u32,
    /// virtiofsd binary; a bare name is looked up like `path`.
    pub virtio_fs_daemon: PathBuf,
    /// virtiofsd's --cache.
    pub virtio_fs_cache: FsCache,
    /// virtiofsd's --sandbox.
    pub virtio_fs_sandbox: FsSandbox,
    /// More arguments for virtiofsd, after runvm's.
    pub virtio_fs_extra_args: Vec<String>,
    /// The most vCPUs an annotation may ask for; 0: the host's CPUs.
    pub default_maxvcpus: u32,
    /// Debugging aids that make the VM untrusted; off in production.
    pub enable_debug: bool,
    /// With `enable_debug`: a second monitor on a unix socket in the
    /// container's state directory, for a person debugging the VM.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extra_monitor_socket: Option<MonitorKind>,
    /// Which `org.runvm.config.hypervisor.NAME` annotations a container may
    /// use: regular expressions, each matched against the whole NAME.
    #[serde(deserialize_with = "regexes")]
    pub enable_annotations: Vec<String>,
    /// Globs a path an annotation gives must match (none: no override).
    #[serde(deserialize_with = "globs")]
    pub valid_hypervisor_paths: Vec<String>,
    #[serde(deserialize_with = "globs")]
    pub valid_virtio_fs_daemon_paths: Vec<String>,
    #[serde(deserialize_with = "globs")]
    pub valid_kernel_paths: Vec<String>,
    #[serde(deserialize_with = "globs")]
    pub valid_initrd_paths: Vec<String>,
}

impl Default for HypervisorConfig {
    fn default() -> Self {
        HypervisorConfig {
            path: PathBuf::from("qemu-system-x86_64"),
            kernel: None,
            initrd: None,
            accel: Accel::Auto,
            machine_type: "q35".into(),
            default_vcpus: 1,
            default_memory: 256,
            memory_slots: 10,
            default_maxmemory: 0,
            kernel_params: String::new(),
            seccomp_sandbox: true,
            jail: true,
            jail_uid_base: 2_000_000_000,
            console_log_max_mib: 16,
            shared_fs: SharedFs::VirtioFs,
            disk_image_dir: PathBuf::from("/var/lib/runvm/disks"),
            disk_image_free_mib: 1024,
            virtio_fs_daemon: PathBuf::from("virtiofsd"),
            virtio_fs_cache: FsCache::Auto,
            virtio_fs_sandbox: FsSandbox::Namespace,
            virtio_fs_extra_args: Vec::new(),
            default_maxvcpus: 0,
            enable_debug: false,
            extra_monitor_socket: None,
            enable_annotations: Vec::new(),
            valid_hypervisor_paths: Vec::new(),
            valid_virtio_fs_daemon_paths: Vec::new(),
            valid_kernel_paths: Vec::new(),
            valid_initrd_paths: Vec::new(),
        }
    }
}

/// The section of a hypervisor runvm has no backend for: the keys such a
/// backend would read, checked, never used.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct OtherHypervisor {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initrd: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<PathBuf>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "some_vcpus"
    )]
    pub default_vcpus: Option<u32>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "some_memory"
    )]
    pub default_memory: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_params: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub virtio_fs_daemon: Option<PathBuf>,
}

fn vcpus<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let n = u32::deserialize(d)?;
    if n == 0 {
        return Err(serde::de::Error::custom("a VM needs at least 1 vCPU"));
    }
    Ok(n)
}

fn memory<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let n = u32::deserialize(d)?;
    if n < MIN_MEMORY_MIB {
        return Err(serde::de::Error::custom(format!(
            "{n} MiB is less than runvm's minimum VM of {MIN_MEMORY_MIB} MiB"
        )));
    }
    Ok(n)
}

/// Whether QEMU's machine type `name` is one runvm's VMs can use.
pub fn check_machine_type(name: &str) -> Result<(), String> {
    let versioned = name.strip_prefix("pc-q35-").is_some_and(|v| {
        !v.is_empty()
            && v.split('.')
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    });
    if name == "q35" || versioned {
        Ok(())
    } else {
        Err(format!(
            "machine type {name:?} is not one runvm can use: runvm's devices sit on PCIe root ports, which only q35 has (use \"q35\" or a versioned one such as \"pc-q35-7.2\")"
        ))
    }
}

fn machine_type<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let name = String::deserialize(d)?;
    check_machine_type(&name).map_err(serde::de::Error::custom)?;
    Ok(name)
}

/// QEMU takes up to 256 memory slots.
fn memory_slots<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let n = u32::deserialize(d)?;
    if n > 256 {
        return Err(serde::de::Error::custom(format!(
            "{n} memory slots is more than QEMU's 256"
        )));
    }
    Ok(n)
}

/// The most a pid can be (the kernel's PID_MAX_LIMIT on 64-bit).
pub const PID_MAX_LIMIT: u32 = 4 << 20;

/// The jail's uids are the base plus a pid: all of them ordinary uids,
/// above the system's and ordinary users' (1000), below 2^31.
fn jail_uid_base<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let n = u32::deserialize(d)?;
    if !(1000..=(i32::MAX as u32 - PID_MAX_LIMIT)).contains(&n) {
        return Err(serde::de::Error::custom(format!(
            "jail_uid_base {n}: QEMU's uid is it plus a pid (up to {PID_MAX_LIMIT}), which must stay between 1000 and {}",
            i32::MAX
        )));
    }
    Ok(n)
}

fn console_log_max_mib<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let n = u32::deserialize(d)?;
    if !(1..=4096).contains(&n) {
        return Err(serde::de::Error::custom(format!(
            "console_log_max_mib {n} is not between 1 and 4096"
        )));
    }
    Ok(n)
}

/// An annotation allowlist: each entry a regular expression, anchored.
pub fn anchored(pattern: &str) -> Result<regex::Regex, regex::Error> {
    regex::Regex::new(&format!("^(?:{pattern})$"))
}

fn regexes<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let list = Vec::<String>::deserialize(d)?;
    for p in &list {
        anchored(p).map_err(|e| {
            serde::de::Error::custom(format!("{p:?} is not a regular expression: {e}"))
        })?;
    }
    Ok(list)
}

fn globs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let list = Vec::<String>::deserialize(d)?;
    for p in &list {
        glob::Pattern::new(p)
            .map_err(|e| serde::de::Error::custom(format!("{p:?} is not a glob: {e}")))?;
    }
    Ok(list)
}

fn some_vcpus<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    vcpus(d).map(Some)
}

fn some_memory<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    memory(d).map(Some)
}

/// What starting virtiofsd takes, from `[hypervisor.qemu]`'s `virtio_fs_*`.
#[derive(Debug, Clone, PartialEq)]
pub struct VirtiofsdConfig {
    pub path: PathBuf,
    pub cache: FsCache,
    pub sandbox: FsSandbox,
    pub extra_args: Vec<String>,
}

impl HypervisorConfig {
    /// The debug monitor, if asked for and allowed (`enable_debug`).
    pub fn debug_monitor(&self) -> Option<MonitorKind> {
        self.extra_monitor_socket.filter(|_| self.enable_debug)
    }

    pub fn virtiofsd(&self) -> VirtiofsdConfig {
        VirtiofsdConfig {
            path: self.virtio_fs_daemon.clone(),
            cache: self.virtio_fs_cache,
            sandbox: self.virtio_fs_sandbox,
            extra_args: self.virtio_fs_extra_args.clone(),
        }
    }
}
