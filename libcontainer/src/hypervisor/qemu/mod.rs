//! The QEMU backend: the command line of `cmdline`, control over QMP, and
//! snapshots as migrations to a file with the memory left in its own file
//! (x-ignore-shared).

mod cmdline;
mod jail;
mod qmp;
mod tap;

use std::fs::{self, File, OpenOptions};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use self::cmdline::{
    boot_fds, command_line, memory_path, root_ports, BootFd, Options, AGENT_SOCKET, FD_AGENT,
    FD_CONSOLE, FD_DEBUG_MONITOR, FD_QMP, QMP_SOCKET,
};
pub use self::jail::{usable as jail_usable, JailError};
use self::qmp::{
    AddFd, BlockdevAdd, ChardevAdd, ChardevBackend, Cont, DeviceAdd, GetFd, Migrate,
    MigrateIncoming, MigrateSetCapabilities, MigrationCapability, NetdevAdd, ObjectAdd, Qmp,
    QmpError, QueryCpusFast, QueryMigrate, Quit, SocketAddress, Stop,
};
use super::{
    resolve_accel, Accelerator, AgentEndpoint, Capabilities, Device, ExitWatch, Hypervisor,
    HypervisorError, NetBackend, ResolvedAccel, VmSpec, CONSOLE_LOG, DEBUG_MONITOR_SOCKET, VMM_LOG,
};
use crate::child::Supervised;
use crate::config::HypervisorConfig;
use crate::hypervisor::console::Drain;
use crate::sockdir::SocketDir;

const BACKEND: &str = "qemu";
pub const CAPABILITIES: Capabilities = Capabilities {
    pause: true,
    snapshot: true,
    hotplug_fs: true,
    hotplug_disk: true,
    hotplug_net: true,
    hotplug_memory: true,
};
const QMP_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const QMP_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The name QEMU knows a snapshot's stream by (`getfd`).
const MIGRATION_FD: &str = "migration";
/// A template's device state is well under a megabyte.
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(60);

impl From<QmpError> for HypervisorError {
    fn from(e: QmpError) -> Self {
        HypervisorError::Control {
            backend: BACKEND,
            source: Box::new(e),
        }
    }
}

pub struct Qemu {
    binary: PathBuf,
    opts: Options,
    accel_reason: String,
    spec: VmSpec,
    child: Option<Supervised>,
    qmp: Option<Qmp>,
    sockets: Option<SocketDir>,
    /// Root ports taken so far (boot devices take the first ones).
    ports_used: usize,
    /// Virtio-fs shares, disks and NICs so far, for the ids of hotplugged
    /// ones.
    shares: usize,
    disks: usize,
    nics: usize,
    /// Memory hotplugged so far: DIMMs, and MiB.
    dimms: u32,
    added_mib: u32,
    /// What was hotplugged, in order, for the spec a checkpoint restores
    /// into.
    hotplugged: Vec<Device>,
    hotplugged_dimms_mib: Vec<u32>,
    /// Launched by another process (see [`Hypervisor::adopt`]).
    adopted: bool,
    /// `jail_uid_base`, when QEMU runs jailed (`jail.rs`).
    jail_uid_base: Option<u32>,
    /// The copy of its console into the log, when this process launched
    /// it, and how much of it the log keeps.
    console: Option<Drain>,
    console_max: u64,
}

impl Qemu {
    pub fn new(config: &HypervisorConfig, spec: VmSpec) -> Result<Self, HypervisorError> {
        let binary = crate::locate::find_binary(&config.path)?;
        let (accel, accel_reason) = resolve_accel(config.accel);
        let count = |f: fn(&Device) -> bool| spec.devices.iter().filter(|d| f(d)).count();
        let shares = count(|d| matches!(d, Device::Fs(_)));
        let nics = count(|d| matches!(d, Device::Net(_)));
        let disks = count(|d| matches!(d, Device::Disk(_)));
        Ok(Qemu {
            binary,
            opts: Options {
                accel,
                seccomp_sandbox: config.seccomp_sandbox,
                debug_monitor: config.debug_monitor(),
                machine_type: config.machine_type.clone(),
            },
            accel_reason,
            ports_used: shares + nics + disks,
            shares,
            disks,
            nics,
            dimms: spec.dimms_mib.len() as u32,
            added_mib: spec.dimms_mib.iter().sum(),
            hotplugged: Vec::new(),
            hotplugged_dimms_mib: Vec::new(),
            adopted: false,
            jail_uid_base: config.jail.then_some(config.jail_uid_base),
            console: None,
            console_max: u64::from(config.console_log_max_mib) << 20,
            spec,
            child: None,
            qmp: None,
            sockets: None,
        })
    }

    fn log_file(&self) -> PathBuf {
        self.spec.dir.join(VMM_LOG)
    }

    fn qmp(&mut self) -> Result<&mut Qmp, HypervisorError> {
        if self.child.as_ref().is_none_or(|c| c.exited().is_some()) {
            return Err(HypervisorError::NotRunning);
        }
        self.qmp.as_mut().ok_or(HypervisorError::NotRunning)
    }

    fn log_tail(&self) -> String {
        let text = crate::read_tail(&self.log_file(), 64 << 10);
        let last: Vec<&str> = text.lines().rev().take(5).collect();
        if last.is_empty() {
            String::new()
        } else {
            let lines: Vec<&str> = last.into_iter().rev().collect();
            format!(": {}", lines.join("; "))
        }
    }

    /// The next free root port, or a clear error when there is none.
    fn take_port(&mut self) -> Result<String, HypervisorError> {
        if self.ports_used >= root_ports(&self.spec) {
            return Err(HypervisorError::Unsupported {
                backend: BACKEND,
                what: "more hotplugged devices than the VM has free slots",
            });
        }
        self.ports_used += 1;
        Ok(format!("rp{}", self.ports_used - 1))
    }

    /// The debug monitor's socket: its owner's only (the state directory
    /// is already 0700).
    fn restrict_debug_monitor(&self) -> Result<(), HypervisorError> {
        if self.opts.debug_monitor.is_none() {
            return Ok(());
        }
        use std::os::unix::fs::PermissionsExt;
        let path = self.spec.dir.join(crate::hypervisor::DEBUG_MONITOR_SOCKET);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
            .map_err(|source| HypervisorError::Dir { path, source })
    }

    /// What QEMU gets as descriptors instead of names (cmdline.rs): its
    /// console, its listening sockets and its boot devices'.
    fn descriptors(&mut self, sockets: &SocketDir) -> Result<Vec<(i32, OwnedFd)>, HypervisorError> {
        let open_err = |path: PathBuf| move |source| HypervisorError::Open { path, source };
        let dir = &self.spec.dir;
        let console = dir.join(CONSOLE_LOG);
        let (console_pipe, drain) = crate::hypervisor::console::start(&console, self.console_max)
            .map_err(open_err(console))?;
        self.console = Some(drain);
        let mut fds: Vec<(i32, OwnedFd)> = vec![(FD_CONSOLE, console_pipe)];
        let mut listen = |n: i32, name: &str| -> Result<(), HypervisorError> {
            let _ = fs::remove_file(dir.join(name));
            let listener =
                UnixListener::bind(sockets.path(name)).map_err(open_err(dir.join(name)))?;
            fds.push((n, listener.into()));
            Ok(())
        };
        listen(FD_QMP, QMP_SOCKET)?;
        if self
            .spec
            .devices
            .iter()
            .any(|d| matches!(d, Device::AgentPort { .. }))
        {
            listen(FD_AGENT, AGENT_SOCKET)?;
        }
        if self.opts.debug_monitor.is_some() {
            listen(FD_DEBUG_MONITOR, DEBUG_MONITOR_SOCKET)?;
        }
        for (n, need) in boot_fds(&self.spec) {
            fds.push((n, open_device_fd(&need, sockets, dir)?));
        }
        Ok(fds)
    }

    /// The jail QEMU enters, unless `jail = false`.
    fn jail(&self) -> Result<Option<jail::Jail>, HypervisorError> {
        let Some(base) = self.jail_uid_base else {
            return Ok(None);
        };
        let uid = jail::uid_for(base)?;
        let read_only: [&Path; 3] = [&self.spec.kernel, &self.spec.initrd, &self.binary];
        // QEMU maps its memory file by name: a clone's own copy, or the
        // template being made. A template's state comes as a descriptor.
        let writable: Vec<&Path> = memory_path(&self.spec).into_iter().collect();
        for path in &writable {
            // QEMU could not create it in the jail (a template's, new).
            use std::os::unix::fs::OpenOptionsExt;
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(path)
                .map_err(|source| HypervisorError::Open {
                    path: path.to_path_buf(),
                    source,
                })?;
        }
        // With KVM: its device, and its group (as libvirt's QEMU has it).
        let devices: Vec<&Path> = (self.opts.accel == ResolvedAccel::Kvm)
            .then_some(Path::new("/dev/kvm"))
            .into_iter()
            .collect();
        let mut groups = Vec::new();
        for dev in &devices {
            use std::os::unix::fs::MetadataExt;
            let meta = fs::metadata(dev).map_err(|source| HypervisorError::Open {
                path: dev.to_path_buf(),
                source,
            })?;
            groups.push(meta.gid());
        }
        let jail = jail::Jail::new(uid, groups, &self.spec.dir, &read_only, &writable, &devices)?;
        Ok(Some(jail))
    }

    /// Hand QEMU `fd` in a new fd set; returns the name it opens it by.
    fn add_fd(&mut self, fd: &OwnedFd, what: &str) -> Result<String, HypervisorError> {
        let added = self.qmp()?.execute_with_fd(
            &AddFd {
                opaque: what.to_string(),
            },
            fd.as_fd(),
        )?;
        Ok(format!("/dev/fdset/{}", added.fdset_id))
    }

    /// What a hotplugged device needs QEMU to hold, opened here.
    fn device_fd(&self, need: &BootFd) -> Result<OwnedFd, HypervisorError> {
        let sockets = self.sockets.as_ref().ok_or(HypervisorError::NotRunning)?;
        open_device_fd(need, sockets, &self.spec.dir)
    }

    fn connect_qmp(&mut self, path: &Path) -> Result<(), HypervisorError> {
        let exit = self.exit_watch();
        let qmp = Qmp::connect(path, QMP_CONNECT_TIMEOUT, || exit.borrow().is_none())?;
        qmp.set_timeout(QMP_REQUEST_TIMEOUT)?;
        self.qmp = Some(qmp);
        Ok(())
    }
}

/// Whether a migration leaves out the memory in files (a template's
/// snapshot) or carries it all (a checkpoint).
fn ignore_shared(qmp: &mut Qmp, on: bool) -> Result<(), HypervisorError> {
    qmp.execute(&MigrateSetCapabilities {
        capabilities: vec![MigrationCapability {
            capability: "x-ignore-shared",
            state: on,
        }],
    })?;
    Ok(())
}

/// Migrate the paused VM into `to`, a new file of mode 0600.
fn migrate_to_file(qmp: &mut Qmp, to: &Path, what: &'static str) -> Result<(), HypervisorError> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(to)
        .map_err(|source| HypervisorError::Open {
            path: to.to_path_buf(),
            source,
        })?;
    qmp.execute_with_fd(
        &GetFd {
            fdname: MIGRATION_FD.into(),
        },
        file.as_fd(),
    )?;
    qmp.execute(&Migrate {
        uri: format!("fd:{MIGRATION_FD}"),
    })?;
    wait_migration(qmp, what)
}

/// Poll `query-migrate` until the migration has completed or failed.
fn wait_migration(qmp: &mut Qmp, what: &'static str) -> Result<(), HypervisorError> {
    let deadline = Instant::now() + MIGRATION_TIMEOUT;
    loop {
        let info = qmp.execute(&QueryMigrate {})?;
        let status = info.status.unwrap_or_default();
        match status.as_str() {
            "completed" => return Ok(()),
            "failed" | "cancelled" => {
                let detail = info
                    .error_desc
                    .map(|d| format!(": {d}"))
                    .unwrap_or_default();
                return Err(HypervisorError::Snapshot {
                    what,
                    status,
                    detail,
                });
            }
            _ if Instant::now() >= deadline => {
                return Err(HypervisorError::Snapshot {
                    what,
                    status,
                    detail: format!(" after {MIGRATION_TIMEOUT:?}"),
                })
            }
            _ => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

/// What QEMU says of itself: the first line of `qemu --version`, e.g.
/// "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)".
pub fn describe(
    binary: &Path,
) -> Result<serde_json::Map<String, serde_json::Value>, HypervisorError> {
    let out = Command::new(binary)
        .arg("--version")
        .output()
        .map_err(|source| HypervisorError::Version {
            backend: BACKEND,
            version: "--version".into(),
            source,
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.lines().next().unwrap_or_default().trim().to_string();
    let mut info = serde_json::Map::new();
    info.insert("qemuVersion".into(), version.into());
    Ok(info)
}

impl Hypervisor for Qemu {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        CAPABILITIES
    }

    fn accel(&self) -> Accelerator {
        Accelerator {
            name: self.opts.accel.as_str(),
            reason: self.accel_reason.clone(),
        }
    }

    fn binary(&self) -> &Path {
        &self.binary
    }

    fn describe(&self) -> Result<serde_json::Map<String, serde_json::Value>, HypervisorError> {
        describe(&self.binary)
    }

    fn layout(&self) -> String {
        cmdline::layout(&self.spec, &self.opts)
    }

    fn launch(&mut self) -> Result<(), HypervisorError> {
        let log_path = self.log_file();
        let log_err = |source| HypervisorError::Log {
            path: log_path.clone(),
            source,
        };
        let log = File::create(&log_path).map_err(log_err)?;
        let sockets = SocketDir::open(&self.spec.dir).map_err(|source| HypervisorError::Dir {
            path: self.spec.dir.clone(),
            source,
        })?;
        let qmp_path = sockets.path(QMP_SOCKET);
        let fds = self.descriptors(&sockets)?;
        self.sockets = Some(sockets);
        let jail = self.jail()?;
        let mut cmd = Command::new(&self.binary);
        cmd.args(command_line(&self.spec, &self.opts))
            .current_dir(&self.spec.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(log_err)?)
            .stderr(log);
        let raw: Vec<(i32, i32)> = fds.iter().map(|(n, fd)| (*n, fd.as_raw_fd())).collect();
        let spawned = Supervised::spawn_then(cmd, &[], move || {
            if let Some(jail) = &jail {
                // SAFETY: between fork and exec, in the child.
                unsafe { jail.enter()? };
            }
            // SAFETY: dup/fcntl on descriptors this process holds.
            unsafe { place_fds(&raw) }
        });
        drop(fds);
        let connected = match spawned {
            Ok(child) => {
                self.child = Some(child);
                // QEMU has made its sockets once QMP answers.
                self.connect_qmp(&qmp_path)
                    .and_then(|()| self.restrict_debug_monitor())
            }
            Err(source) => Err(HypervisorError::Spawn {
                binary: self.binary.clone(),
                source,
            }),
        };
        if let Some(copy) = self.spec.restore.as_ref().and_then(|r| r.memory.as_ref()) {
            // QEMU has it mapped now (or never will): the name can go.
            let _ = fs::remove_file(copy);
        }
        if let Err(e) = connected {
            let Some(child) = &self.child else {
                return Err(e);
            };
            // Give a dying QEMU a moment to say why in its log.
            child.wait_exit(Duration::from_millis(500));
            let status = child.exited();
            let _ = self.stop(Duration::from_secs(1));
            return Err(match status {
                Some(status) => HypervisorError::DiedAtStart {
                    status,
                    log: self.log_tail(),
                },
                None => e,
            });
        }
        Ok(())
    }

    fn adopt(&mut self, pid: i32) -> Result<(), HypervisorError> {
        let dir_err = |source| HypervisorError::Dir {
            path: self.spec.dir.clone(),
            source,
        };
        let sockets = SocketDir::open(&self.spec.dir).map_err(dir_err)?;
        let qmp_path = sockets.path(QMP_SOCKET);
        self.sockets = Some(sockets);
        self.child = Some(Supervised::adopt(pid).map_err(dir_err)?);
        self.adopted = true;
        self.connect_qmp(&qmp_path)
    }

    fn release(&mut self) {
        // QEMU's monitor takes the next client once this one has gone.
        self.qmp = None;
    }

    fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(Supervised::pid)
    }

    fn agent_endpoint(&self) -> AgentEndpoint {
        AgentEndpoint::Serial {
            socket: match &self.sockets {
                Some(s) => s.path(AGENT_SOCKET),
                None => self.spec.dir.join(AGENT_SOCKET),
            },
        }
    }

    fn exit_watch(&self) -> ExitWatch {
        match &self.child {
            Some(child) => child.exit_watch(),
            None => watch::channel(Some("was never launched".to_string())).1,
        }
    }

    fn vcpu_threads(&mut self) -> Result<Vec<i32>, HypervisorError> {
        let cpus = self.qmp()?.execute(&QueryCpusFast {})?;
        Ok(cpus.into_iter().map(|c| c.thread_id).collect())
    }

    fn pause(&mut self) -> Result<(), HypervisorError> {
        self.qmp()?.execute(&Stop {})?;
        Ok(())
    }

    fn resume(&mut self) -> Result<(), HypervisorError> {
        self.qmp()?.execute(&Cont {})?;
        Ok(())
    }

    fn hotplug(&mut self, device: &Device) -> Result<(), HypervisorError> {
        self.qmp()?;
        match device {
            Device::Fs(share) => {
                let bus = self.take_port()?;
                let id = format!("fs{}", self.shares);
                let conn = self.device_fd(&BootFd::Share(share.socket.clone()))?;
                let fdname = format!("{id}-fd");
                let qmp = self.qmp()?;
                qmp.execute_with_fd(
                    &GetFd {
                        fdname: fdname.clone(),
                    },
                    conn.as_fd(),
                )?;
                qmp.execute(&ChardevAdd {
                    id: id.clone(),
                    backend: ChardevBackend::Socket {
                        addr: SocketAddress::Fd { str: fdname },
                        server: false,
                    },
                })?;
                qmp.execute(&DeviceAdd::VhostUserFs {
                    id: format!("{id}-dev"),
                    chardev: id,
                    tag: share.tag.clone(),
                    bus,
                })?;
                self.shares += 1;
            }
            Device::Disk(disk) => {
                let bus = self.take_port()?;
                let id = format!("disk{}", self.disks);
                let image = self.device_fd(&BootFd::Disk(disk.path.clone()))?;
                let filename = self.add_fd(&image, &id)?;
                let qmp = self.qmp()?;
                qmp.execute(&BlockdevAdd::raw_file(id.clone(), filename))?;
                qmp.execute(&DeviceAdd::VirtioBlk {
                    id: format!("{id}-dev"),
                    drive: id,
                    serial: disk.serial.clone(),
                    bus,
                })?;
                self.disks += 1;
            }
            Device::Net(nic) => {
                let bus = self.take_port()?;
                let id = format!("net{}", self.nics);
                match &nic.backend {
                    // Made here, in this thread's network namespace (an
                    // adopted QEMU runs in another: the pool's), and handed
                    // over.
                    NetBackend::Tap { name } => {
                        let tap = self.device_fd(&BootFd::Tap(name.clone()))?;
                        let fdname = format!("tapfd-{id}");
                        let qmp = self.qmp()?;
                        qmp.execute_with_fd(
                            &GetFd {
                                fdname: fdname.clone(),
                            },
                            tap.as_fd(),
                        )?;
                        qmp.execute(&NetdevAdd::TapFd {
                            id: id.clone(),
                            fd: fdname,
                            vhost: false,
                        })?;
                    }
                    NetBackend::User => {
                        self.qmp()?.execute(&NetdevAdd::User { id: id.clone() })?;
                    }
                }
                self.qmp()?.execute(&DeviceAdd::VirtioNet {
                    id: format!("{id}-dev"),
                    netdev: id,
                    mac: nic.mac.clone(),
                    host_mtu: nic.mtu,
                    bus,
                })?;
                self.nics += 1;
            }
            Device::AgentPort { .. } => {
                return Err(HypervisorError::Unsupported {
                    backend: BACKEND,
                    what: "hotplugging an agent port",
                })
            }
        }
        self.hotplugged.push(device.clone());
        Ok(())
    }

    fn hotplug_memory(&mut self, mib: u32) -> Result<(), HypervisorError> {
        let spec = &self.spec;
        let room = |why: String| HypervisorError::NoMemoryRoom { asked: mib, why };
        if self.dimms >= spec.memory_slots {
            return Err(room(format!(
                "its {} memory slots are taken ([hypervisor.qemu] memory_slots)",
                spec.memory_slots
            )));
        }
        let now = spec.memory_mib + self.added_mib;
        if u64::from(now) + u64::from(mib) > u64::from(spec.max_memory_mib) {
            return Err(room(format!(
                "it has {now} MiB and may grow to {} MiB ([hypervisor.qemu] default_maxmemory)",
                spec.max_memory_mib
            )));
        }
        let id = format!("dimm{}", self.dimms);
        let qmp = self.qmp()?;
        // Shared, as the boot memory is: vhost-user (virtio-fs) maps it.
        qmp.execute(&ObjectAdd::MemoryBackendMemfd {
            id: format!("{id}-mem"),
            size: u64::from(mib) << 20,
            share: true,
        })?;
        qmp.execute(&DeviceAdd::PcDimm {
            id: id.clone(),
            memdev: format!("{id}-mem"),
        })?;
        self.dimms += 1;
        self.added_mib += mib;
        self.hotplugged_dimms_mib.push(mib);
        Ok(())
    }

    fn snapshot(&mut self, state: &Path) -> Result<(), HypervisorError> {
        if memory_path(&self.spec).is_none() {
            return Err(HypervisorError::Unsupported {
                backend: BACKEND,
                what: "snapshots of a VM whose memory is not a file",
            });
        }
        let qmp = self.qmp()?;
        // The memory stays in its file; only device state goes to the stream.
        ignore_shared(qmp, true)?;
        migrate_to_file(qmp, state, "saving the VM")
    }

    fn checkpoint(&mut self, image: &Path) -> Result<(), HypervisorError> {
        let qmp = self.qmp()?;
        // Everything, the memory too, whatever it lives in (a clone's
        // file was set to be left out when it was restored). A zero page
        // goes as a flag, not as 4 KiB.
        ignore_shared(qmp, false)?;
        migrate_to_file(qmp, image, "checkpointing the VM")
    }

    fn restorable(&self) -> VmSpec {
        let mut spec = self.spec.clone();
        spec.hotplug_slots = spec.hotplug_slots.saturating_sub(self.hotplugged.len());
        spec.devices.extend(self.hotplugged.iter().cloned());
        spec.dimms_mib
            .extend(self.hotplugged_dimms_mib.iter().copied());
        spec.restore = None;
        spec.memory_file = None;
        spec
    }

    fn restore(&mut self) -> Result<(), HypervisorError> {
        let Some(restore) = self.spec.restore.clone() else {
            return Err(HypervisorError::Unsupported {
                backend: BACKEND,
                what: "a restore into a VM launched to boot",
            });
        };
        let file = File::open(&restore.state).map_err(|source| HypervisorError::Open {
            path: restore.state.clone(),
            source,
        })?;
        let qmp = self.qmp()?;
        ignore_shared(qmp, restore.memory.is_some())?;
        qmp.execute_with_fd(
            &GetFd {
                fdname: MIGRATION_FD.into(),
            },
            file.as_fd(),
        )?;
        qmp.execute(&MigrateIncoming {
            uri: format!("fd:{MIGRATION_FD}"),
        })?;
        wait_migration(qmp, "restoring the VM")
    }

    fn stop(&mut self, timeout: Duration) -> Result<(), HypervisorError> {
        if let Some(child) = &self.child {
            let qmp = &mut self.qmp;
            child.stop(
                |_| {
                    if let Some(qmp) = qmp.as_mut() {
                        let _ = qmp.execute(&Quit {});
                    }
                },
                timeout,
            );
        }
        self.qmp = None;
        // QEMU is gone: the last of its console reaches the log.
        if let Some(drain) = self.console.take() {
            drain.finish(timeout.max(Duration::from_secs(1)));
        }
        if self.jail_uid_base.is_some() && !self.adopted {
            // A template's memory file is root's again once its QEMU has
            // gone (a clone's has no name by now).
            if let Some(memory) = memory_path(&self.spec) {
                let _ = std::os::unix::fs::chown(memory, Some(0), Some(0));
            }
        }
        for name in [QMP_SOCKET, AGENT_SOCKET] {
            let _ = fs::remove_file(self.spec.dir.join(name));
        }
        Ok(())
    }
}

/// Open what a boot or hotplugged device needs QEMU to hold.
fn open_device_fd(
    need: &BootFd,
    sockets: &SocketDir,
    dir: &Path,
) -> Result<OwnedFd, HypervisorError> {
    match need {
        BootFd::Share(name) => UnixStream::connect(sockets.path(name))
            .map(OwnedFd::from)
            .map_err(|source| HypervisorError::Open {
                path: dir.join(name),
                source,
            }),
        BootFd::Disk(path) => OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map(OwnedFd::from)
            .map_err(|source| HypervisorError::Open {
                path: path.clone(),
                source,
            }),
        BootFd::Tap(name) => tap::open(name).map_err(|source| HypervisorError::Tap {
            name: name.clone(),
            source,
        }),
    }
}

/// In the child: put each descriptor at its number (through copies above
/// them all, so that none overwrites another before it is placed).
///
/// # Safety
/// To be called only between fork and exec, in the child.
unsafe fn place_fds(fds: &[(i32, i32)]) -> std::io::Result<()> {
    const ABOVE: i32 = 1000;
    let mut copies = [0i32; 32];
    if fds.len() > copies.len() {
        return Err(std::io::Error::from_raw_os_error(libc::EMFILE));
    }
    for (i, &(_, fd)) in fds.iter().enumerate() {
        copies[i] = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, ABOVE);
        if copies[i] < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    for (i, &(n, _)) in fds.iter().enumerate() {
        // dup2 leaves the new descriptor open across exec.
        if libc::dup2(copies[i], n) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        libc::close(copies[i]);
    }
    Ok(())
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.stop(Duration::from_secs(1));
    }
}
