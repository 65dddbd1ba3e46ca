//! The hypervisor boundary: one trait every backend implements, a
//! backend-neutral description of the VM ([`VmSpec`]), and [`new`], which
//! picks the backend the configuration names. QEMU is the first backend;
//! Cloud Hypervisor or Firecracker would be further modules here and a
//! `Backend` value in the configuration, and nothing else would change
//! (docs/design.md, "Adding a hypervisor").

pub mod accel;
mod builder;
pub mod console;
#[cfg(test)]
pub mod fake;
pub mod qemu;

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::child::ExitWatch;
use crate::config::{Backend, Config};
use crate::locate::LocateError;
pub use accel::{resolve_accel, ResolvedAccel};
pub use builder::{clone_vm, container_vm, max_memory_mib, template_vm, SPARE_SLOTS};

#[derive(Debug, thiserror::Error)]
pub enum HypervisorError {
    #[error(transparent)]
    Locate(#[from] LocateError),
    #[error("start {binary}")]
    Spawn { binary: PathBuf, source: io::Error },
    #[error("create {path}")]
    Log { path: PathBuf, source: io::Error },
    #[error("open the VM directory {path}")]
    Dir { path: PathBuf, source: io::Error },
    #[error("the VM exited during start-up ({status}){log}")]
    DiedAtStart { status: String, log: String },
    #[error("the VM is not running")]
    NotRunning,
    /// The hypervisor refused or failed a control command.
    #[error("{backend}")]
    Control {
        backend: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{what} ended as {status}{detail}")]
    Snapshot {
        what: &'static str,
        status: String,
        detail: String,
    },
    #[error("{backend} {version}")]
    Version {
        backend: &'static str,
        version: String,
        #[source]
        source: io::Error,
    },
    #[error("create the tap {name}")]
    Tap { name: String, source: io::Error },
    /// A file or socket the VM is handed as a descriptor.
    #[error("open {path} for the VM")]
    Open { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Jail(#[from] qemu::JailError),
    #[error("the VM cannot grow by {asked} MiB: {why}")]
    NoMemoryRoom { asked: u32, why: String },
    #[error("{backend} does not support {what}")]
    Unsupported {
        backend: &'static str,
        what: &'static str,
    },
}

/// Socket and log names inside the VM's directory. The hypervisor runs with
/// that directory as its working directory and is given relative names, so
/// they fit in `sun_path` however long the directory's path is.
pub const CONSOLE_LOG: &str = "console.log";
pub const VMM_LOG: &str = "vmm.log";
/// The debug monitor's socket in the VM's directory (`[hypervisor.qemu]
/// enable_debug` and `extra_monitor_socket`), mode 0600.
pub const DEBUG_MONITOR_SOCKET: &str = "extra-monitor.sock";

/// A device of the VM, at boot or hotplugged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Device {
    /// The channel to the guest agent, a port the guest finds by `name`.
    AgentPort { name: String },
    /// A virtio-fs share served by a vhost-user daemon.
    Fs(FsDevice),
    /// A disk image (`shared_fs = "none"`: the share, copied).
    Disk(DiskDevice),
    /// A network interface.
    Net(NetDevice),
}

impl Device {
    pub fn kind(&self) -> &'static str {
        match self {
            Device::AgentPort { .. } => "an agent port",
            Device::Fs(_) => "a virtio-fs share",
            Device::Disk(_) => "a disk",
            Device::Net(_) => "a network interface",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsDevice {
    /// The tag the guest mounts.
    pub tag: String,
    /// The daemon's vhost-user socket, a name in the VM's directory.
    pub socket: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskDevice {
    /// The image file, raw, read and written by the VM; an absolute path
    /// (the VM may run in another directory: a pool VM).
    pub path: PathBuf,
    /// What the guest finds it by (`/sys/block/*/serial`).
    pub serial: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetDevice {
    pub backend: NetBackend,
    /// The guest interface's MAC address, `52:54:00:..`.
    pub mac: String,
    /// Offered to the guest's driver, where the device can say it.
    pub mtu: Option<u32>,
}

/// Where a NIC's frames go on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetBackend {
    /// A tap device of this name in the hypervisor's network namespace,
    /// created by the hypervisor (and gone with it).
    Tap { name: String },
    /// The hypervisor's own user-mode network stack: outbound connections
    /// only, for a container that asked for the host's network.
    User,
}

/// Bring the VM back from a snapshot instead of booting it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restore {
    /// The device state that `snapshot` saved, or the whole VM that
    /// `checkpoint` saved.
    pub state: PathBuf,
    /// A private copy of the snapshot's memory file: the VM takes it over
    /// (the backend unlinks its name once it has it mapped). `None`: the
    /// memory is in the state too (a checkpoint).
    pub memory: Option<PathBuf>,
}

/// What to run, whatever runs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSpec {
    pub name: String,
    /// The VM's directory (the container's state dir): sockets and logs.
    pub dir: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Appended to the kernel command line the backend needs.
    pub kernel_params: String,
    pub vcpus: u32,
    /// vCPUs the VM may grow to (equal to `vcpus`: no CPU hotplug).
    pub max_vcpus: u32,
    pub memory_mib: u32,
    /// Memory the VM may grow to (equal to `memory_mib`: no memory hotplug).
    pub max_memory_mib: u32,
    /// Memory hotplugged before a checkpoint, present at boot in the VM it
    /// is restored into: the size of each DIMM, in MiB.
    #[serde(default)]
    pub dimms_mib: Vec<u32>,
    /// Slots for memory hotplugged up to `max_memory_mib`.
    pub memory_slots: u32,
    /// Free slots for devices hotplugged after boot.
    pub hotplug_slots: usize,
    /// Devices present at boot.
    pub devices: Vec<Device>,
    /// Keep guest RAM in this file (on tmpfs), so the VM can be saved and
    /// cloned; `None`: anonymous memory.
    pub memory_file: Option<PathBuf>,
    pub restore: Option<Restore>,
}

/// How the host reaches the guest agent's port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentEndpoint {
    /// A unix socket behind a serial port (QEMU's virtio-serial chardev); a
    /// path valid in this process.
    Serial { socket: PathBuf },
    /// A unix socket that multiplexes the guest's vsock ports: the host
    /// writes `CONNECT <port>\n` and reads `OK <n>\n` (Firecracker's and
    /// Cloud Hypervisor's hybrid vsock).
    HybridVsock { socket: PathBuf, port: u32 },
}

/// An optional operation, as [`Hypervisor::supports`] checks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Pause,
    Snapshot,
    Restore,
    HotplugFs,
    HotplugDisk,
    HotplugNet,
    HotplugMemory,
}

impl Operation {
    fn what(self) -> &'static str {
        match self {
            Operation::Pause => "pausing a VM",
            Operation::Snapshot => "snapshots",
            Operation::Restore => "restoring a snapshot",
            Operation::HotplugFs => "hotplugging a virtio-fs share",
            Operation::HotplugDisk => "hotplugging a disk",
            Operation::HotplugMemory => "hotplugging memory",
            Operation::HotplugNet => "hotplugging a network interface",
        }
    }
}

/// What a backend can do beyond booting and stopping a VM.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub pause: bool,
    /// Snapshot and restore (of a VM whose memory is a file).
    pub snapshot: bool,
    pub hotplug_fs: bool,
    pub hotplug_disk: bool,
    pub hotplug_net: bool,
    pub hotplug_memory: bool,
}

impl Capabilities {
    pub fn has(&self, op: Operation) -> bool {
        match op {
            Operation::Pause => self.pause,
            Operation::Snapshot | Operation::Restore => self.snapshot,
            Operation::HotplugFs => self.hotplug_fs,
            Operation::HotplugDisk => self.hotplug_disk,
            Operation::HotplugNet => self.hotplug_net,
            Operation::HotplugMemory => self.hotplug_memory,
        }
    }
}

/// How the VM's vCPUs run, and why that way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accelerator {
    /// "kvm", "tcg"...
    pub name: &'static str,
    pub reason: String,
}

/// The configured backend's binary.
pub fn binary(config: &Config) -> Result<PathBuf, LocateError> {
    match config.runtime.hypervisor {
        Backend::Qemu => crate::locate::find_binary(&config.hypervisor.qemu.path),
    }
}

/// What the configured backend says of itself, before any VM exists (the
/// same as [`Hypervisor::describe`]).
pub fn describe(
    config: &Config,
) -> Result<serde_json::Map<String, serde_json::Value>, HypervisorError> {
    match config.runtime.hypervisor {
        Backend::Qemu => qemu::describe(&binary(config)?),
    }
}

/// The configured backend's name, as [`Hypervisor::backend`] says it.
pub fn backend_name(config: &Config) -> &'static str {
    match config.runtime.hypervisor {
        Backend::Qemu => "qemu",
    }
}

/// Whether the configured backend can do `op`, before any VM exists; the
/// same answer as [`Hypervisor::supports`].
pub fn supports(config: &Config, op: Operation) -> Result<(), HypervisorError> {
    let (backend, caps) = match config.runtime.hypervisor {
        Backend::Qemu => ("qemu", qemu::CAPABILITIES),
    };
    if caps.has(op) {
        Ok(())
    } else {
        Err(HypervisorError::Unsupported {
            backend,
            what: op.what(),
        })
    }
}

/// One VM. Its methods block; the caller's thread must outlive the VM (the
/// hypervisor process is killed when the thread that launched it exits).
pub trait Hypervisor: Send {
    /// The backend's name, as the configuration spells it.
    fn backend(&self) -> &'static str;
    fn capabilities(&self) -> Capabilities;
    /// `Ok` if the backend can do `op`; a clear error naming it if not.
    /// Callers ask before every optional operation.
    fn supports(&self, op: Operation) -> Result<(), HypervisorError> {
        if self.capabilities().has(op) {
            Ok(())
        } else {
            Err(HypervisorError::Unsupported {
                backend: self.backend(),
                what: op.what(),
            })
        }
    }
    fn accel(&self) -> Accelerator;
    /// The hypervisor's binary, which a template must be restored with.
    fn binary(&self) -> &Path;
    /// What the backend says of itself for `factory status`, e.g.
    /// `{"qemuVersion": "QEMU emulator version 10.0.2 ..."}`.
    fn describe(&self) -> Result<serde_json::Map<String, serde_json::Value>, HypervisorError>;
    /// What a snapshot of this VM fits: VMs of the same layout restore each
    /// other's snapshots. Paths of the VM's own directory and memory file
    /// do not count.
    fn layout(&self) -> String;
    /// Start the hypervisor process and wait until it can be controlled.
    /// Without `restore` in the spec the guest boots; with it, the VM waits
    /// for [`restore`](Self::restore).
    fn launch(&mut self) -> Result<(), HypervisorError>;
    /// Take control of a VM of this spec that another process launched
    /// and [released](Self::release) (a pool VM): `pid` runs it, in the
    /// spec's directory. Instead of [`launch`](Self::launch).
    fn adopt(&mut self, pid: i32) -> Result<(), HypervisorError>;
    /// Stop controlling the VM, which goes on running, so that another
    /// process can adopt it.
    fn release(&mut self);
    fn pid(&self) -> Option<i32>;
    fn agent_endpoint(&self) -> AgentEndpoint;
    /// Becomes `Some(description)` when the hypervisor process exits.
    fn exit_watch(&self) -> ExitWatch;
    /// Stop the vCPUs (the device state stays as it is).
    /// The host threads that run the vCPUs (for the container's host
    /// cgroup when the VMM's other threads are accounted apart).
    fn vcpu_threads(&mut self) -> Result<Vec<i32>, HypervisorError>;
    fn pause(&mut self) -> Result<(), HypervisorError>;
    fn resume(&mut self) -> Result<(), HypervisorError>;
    fn hotplug(&mut self, device: &Device) -> Result<(), HypervisorError>;
    /// Add `mib` of memory to the running VM (the guest onlines it by
    /// itself); refused beyond the spec's slots or `max_memory_mib`.
    fn hotplug_memory(&mut self, mib: u32) -> Result<(), HypervisorError>;
    /// Save the device state of a paused VM whose memory is a file to
    /// `state`; the memory stays in its file.
    fn snapshot(&mut self, state: &Path) -> Result<(), HypervisorError>;
    /// Save a paused VM whole, device state and memory, to `image` (a new
    /// file, 0600): a checkpoint. Pages that are zero take no room.
    fn checkpoint(&mut self, image: &Path) -> Result<(), HypervisorError>;
    /// The spec of a VM a checkpoint of this one restores into: the
    /// devices and memory hotplugged since boot are there at boot, in the
    /// same slots.
    fn restorable(&self) -> VmSpec;
    /// Load the spec's `restore` state; the VM is paused afterwards.
    fn restore(&mut self) -> Result<(), HypervisorError>;
    /// Stop the VM: ask politely, kill after `timeout`; remove its sockets.
    fn stop(&mut self, timeout: Duration) -> Result<(), HypervisorError>;
}

/// The hypervisor the configuration names, for `spec` (not launched yet).
pub fn new(config: &Config, spec: VmSpec) -> Result<Box<dyn Hypervisor>, HypervisorError> {
    match config.runtime.hypervisor {
        Backend::Qemu => Ok(Box::new(qemu::Qemu::new(&config.hypervisor.qemu, spec)?)),
    }
}
