//! Hypervisor backends behind one trait. QEMU is the first; Cloud Hypervisor
//! or Firecracker would slot in beside it as further modules.

pub mod qemu;
pub mod qmp;

use std::fs::OpenOptions;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::watch;

use crate::config::Accel;

#[derive(Debug, thiserror::Error)]
pub enum HypervisorError {
    #[error("start {binary}")]
    Spawn { binary: PathBuf, source: io::Error },
    #[error("create {path}")]
    Log { path: PathBuf, source: io::Error },
    #[error("open the VM directory {path}")]
    Dir { path: PathBuf, source: io::Error },
    #[error("the VM exited during start-up ({status}){log}")]
    DiedAtStart { status: String, log: String },
    #[error("QMP")]
    Qmp(#[from] qmp::QmpError),
    #[error("the VM is not running")]
    NotRunning,
    #[error("migration {what} ended as {status}{detail}")]
    Migration {
        what: &'static str,
        status: String,
        detail: String,
    },
    #[error("{backend} does not support {what}")]
    Unsupported {
        backend: &'static str,
        what: &'static str,
    },
}

/// How the VM's vCPUs run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResolvedAccel {
    Kvm,
    Tcg,
}

impl ResolvedAccel {
    pub fn as_str(self) -> &'static str {
        match self {
            ResolvedAccel::Kvm => "kvm",
            ResolvedAccel::Tcg => "tcg",
        }
    }
}

/// Turn the configured accelerator into the one to use, with the reason.
/// `auto` takes KVM only when /dev/kvm can run a normal guest kernel: a PVM
/// host's /dev/kvm (module kvm_pvm) runs only PVM-built guests, and a normal
/// kernel dies early with "KVM internal error".
pub fn resolve_accel(accel: Accel) -> (ResolvedAccel, String) {
    match accel {
        Accel::Kvm => (ResolvedAccel::Kvm, "configured".into()),
        Accel::Tcg => (ResolvedAccel::Tcg, "configured".into()),
        Accel::Auto => match kvm_usable(Path::new("/dev/kvm"), Path::new("/sys/module")) {
            Ok(()) => (ResolvedAccel::Kvm, "/dev/kvm is usable".into()),
            Err(why) => (ResolvedAccel::Tcg, why),
        },
    }
}

fn kvm_usable(dev: &Path, modules: &Path) -> Result<(), String> {
    if let Err(e) = OpenOptions::new().read(true).write(true).open(dev) {
        return Err(format!("{} is not usable: {e}", dev.display()));
    }
    if modules.join("kvm_pvm").exists() {
        return Err(format!(
            "{} is PVM (kvm_pvm is loaded), which runs only PVM guest kernels",
            dev.display()
        ));
    }
    Ok(())
}

/// A virtio-fs share served by a vhost-user daemon.
#[derive(Debug, Clone)]
pub struct FsShare {
    /// QEMU id of the share's chardev and device.
    pub id: String,
    /// The tag the guest mounts.
    pub tag: String,
    /// The daemon's vhost-user socket, a file name in the VM's directory.
    pub socket: String,
}

/// Socket names inside the VM's directory. The hypervisor runs with that
/// directory as its working directory and is given these relative names, so
/// they fit in `sun_path` however long the directory's path is.
pub const AGENT_SOCKET: &str = "agent.sock";
pub const QMP_SOCKET: &str = "qmp.sock";

/// Where guest RAM lives. Either way it is shared, as vhost-user needs.
#[derive(Debug, Clone, PartialEq)]
pub enum GuestMemory {
    /// Anonymous memory (a memfd): a VM booted from scratch.
    Memfd,
    /// A file on tmpfs: a template's memory, or a clone's copy of it.
    File(PathBuf),
}

/// What to boot.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub name: String,
    /// Directory for the VM's sockets and logs (the container's state dir).
    pub dir: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub kernel_params: String,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub accel: ResolvedAccel,
    /// Shares attached at boot. More can be hotplugged later.
    pub fs_shares: Vec<FsShare>,
    pub seccomp_sandbox: bool,
    pub memory: GuestMemory,
    /// Start paused, waiting for `restore` (QEMU's `-incoming defer`).
    pub incoming: bool,
}

impl VmConfig {
    pub fn console_log(&self) -> PathBuf {
        self.dir.join("console.log")
    }
    pub fn log_file(&self) -> PathBuf {
        self.dir.join("vmm.log")
    }
}

/// What a backend can do.
#[derive(Debug, Clone, Copy, Default)]
pub struct Capabilities {
    pub pause: bool,
    pub snapshot: bool,
    pub fs_hotplug: bool,
}

/// How the hypervisor process ended, once it has.
pub type ExitWatch = watch::Receiver<Option<String>>;

pub trait Hypervisor: Send {
    /// Start the hypervisor process and wait until it can be controlled.
    /// The process gets SIGKILL when the calling thread exits: call this from
    /// a thread that lives as long as the VM should.
    fn launch(&mut self) -> Result<(), HypervisorError>;
    fn pid(&self) -> Option<i32>;
    /// The unix socket behind the guest agent's port (a path valid in this
    /// process only).
    fn agent_socket(&self) -> PathBuf;
    /// Becomes `Some(description)` when the hypervisor process exits.
    fn exit_watch(&self) -> ExitWatch;
    fn pause(&mut self) -> Result<(), HypervisorError>;
    fn resume(&mut self) -> Result<(), HypervisorError>;
    fn hotplug_fs(&mut self, share: &FsShare) -> Result<(), HypervisorError>;
    /// Stop the vCPUs and save the device state to `state`; the memory stays
    /// in its file (the VM must use `GuestMemory::File`).
    fn snapshot(&mut self, state: &Path) -> Result<(), HypervisorError>;
    /// Load the device state saved by `snapshot` into a VM launched with
    /// `incoming`, over a copy of the snapshot's memory, and run it.
    fn restore(&mut self, state: &Path) -> Result<(), HypervisorError>;
    /// Stop the VM: ask politely, kill after `timeout`.
    fn stop(&mut self, timeout: Duration) -> Result<(), HypervisorError>;
    fn capabilities(&self) -> Capabilities;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvm_host_falls_back_to_tcg() {
        let tmp = tempfile::tempdir().unwrap();
        let dev = tmp.path().join("kvm");
        std::fs::write(&dev, b"").unwrap();
        let modules = tmp.path().join("module");
        std::fs::create_dir_all(modules.join("kvm_pvm")).unwrap();
        let err = kvm_usable(&dev, &modules).unwrap_err();
        assert!(err.contains("PVM"), "{err}");
        std::fs::remove_dir(modules.join("kvm_pvm")).unwrap();
        assert_eq!(kvm_usable(&dev, &modules), Ok(()));
        assert!(kvm_usable(&tmp.path().join("missing"), &modules).is_err());
    }

    #[test]
    fn configured_accel_is_taken_as_is() {
        assert_eq!(resolve_accel(Accel::Tcg).0, ResolvedAccel::Tcg);
        assert_eq!(resolve_accel(Accel::Kvm).0, ResolvedAccel::Kvm);
    }
}
