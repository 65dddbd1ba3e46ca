//! The QEMU backend: q35 machine, direct kernel boot, the agent on a
//! virtio-serial port, virtio-fs shares on PCIe root ports, control over QMP.

use std::fs::{self, File};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::json;
use tokio::sync::watch;

use super::qmp::Qmp;
use super::{
    Capabilities, ExitWatch, FsShare, GuestMemory, Hypervisor, HypervisorError, ResolvedAccel,
    VmConfig, AGENT_SOCKET, QMP_SOCKET,
};
use crate::sockdir::SocketDir;

/// Root ports for hotplugged shares. Boot-time shares take the first ones.
const ROOT_PORTS: usize = 2;
/// Skip what a VM with one console and no legacy devices does not need:
/// crypto self-tests, probing serial ports and the PS/2 controller, the
/// IO-APIC timer check. Together they take about a second under TCG.
const FAST_BOOT_PARAMS: &str = "tsc=reliable no_timer_check rcupdate.rcu_expedited=1 \
     i8042.direct=1 i8042.dumbkbd=1 i8042.nopnp=1 i8042.noaux=1 noreplace-smp \
     cryptomgr.notests 8250.nr_uarts=1";
const QMP_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const QMP_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// A template's device state is well under a megabyte.
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Qemu {
    binary: PathBuf,
    config: VmConfig,
    pid: Option<i32>,
    qmp: Option<Qmp>,
    sockets: Option<SocketDir>,
    exit_tx: watch::Sender<Option<String>>,
    /// Shares attached so far, each on its own root port.
    ports_used: usize,
}

impl Qemu {
    pub fn new(binary: PathBuf, config: VmConfig) -> Self {
        Qemu {
            binary,
            config,
            pid: None,
            qmp: None,
            sockets: None,
            exit_tx: watch::channel(None).0,
            ports_used: 0,
        }
    }

    fn qmp(&mut self) -> Result<&mut Qmp, HypervisorError> {
        if self.exit_tx.borrow().is_some() {
            return Err(HypervisorError::NotRunning);
        }
        self.qmp.as_mut().ok_or(HypervisorError::NotRunning)
    }

    fn log_tail(&self) -> String {
        let text = fs::read_to_string(self.config.log_file()).unwrap_or_default();
        let last: Vec<&str> = text.lines().rev().take(5).collect();
        if last.is_empty() {
            String::new()
        } else {
            let lines: Vec<&str> = last.into_iter().rev().collect();
            format!(": {}", lines.join("; "))
        }
    }

    fn wait_exit(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.exit_tx.borrow().is_none() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }
}

/// QEMU's command line for `c` (without the binary).
pub fn command_line(c: &VmConfig) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    let (accel, cpu) = match c.accel {
        ResolvedAccel::Kvm => ("kvm", "host"),
        ResolvedAccel::Tcg => ("tcg", "max"),
    };
    let mem = format!("{}M", c.memory_mib);
    push(&["-name", &format!("{},debug-threads=on", c.name)]);
    push(&["-machine", &format!("q35,accel={accel},memory-backend=mem")]);
    push(&["-cpu", cpu, "-smp", &c.vcpus.to_string(), "-m", &mem]);
    // vhost-user devices (virtio-fs) need guest memory the daemon can map.
    match &c.memory {
        GuestMemory::Memfd => push(&[
            "-object",
            &format!("memory-backend-memfd,id=mem,size={mem},share=on"),
        ]),
        GuestMemory::File(path) => push(&[
            "-object",
            &format!(
                "memory-backend-file,id=mem,size={mem},mem-path={},share=on",
                path.display()
            ),
        ]),
    }
    push(&[
        "-kernel",
        &c.kernel.to_string_lossy(),
        "-initrd",
        &c.initrd.to_string_lossy(),
    ]);
    let mut cmdline = format!("console=ttyS0 quiet panic=-1 {FAST_BOOT_PARAMS}");
    if !c.kernel_params.is_empty() {
        cmdline.push(' ');
        cmdline.push_str(&c.kernel_params);
    }
    push(&["-append", &cmdline]);
    push(&["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"]);
    if c.seccomp_sandbox {
        push(&[
            "-sandbox",
            "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
        ]);
    }
    push(&["-serial", &format!("file:{}", c.console_log().display())]);
    push(&["-qmp", &format!("unix:{QMP_SOCKET},server=on,wait=off")]);
    // A new generation id on every start tells the guest kernel to reseed its
    // RNG: clones of one template must not share random numbers.
    push(&["-device", "vmgenid,guid=auto"]);
    // The guest reports the pages it frees; QEMU drops them, so a VM holds
    // the memory it uses now, not the most it ever touched.
    push(&[
        "-device",
        "virtio-balloon-pci,id=balloon0,free-page-reporting=on",
    ]);
    push(&["-device", "virtio-serial-pci,id=vser0"]);
    push(&[
        "-chardev",
        &format!("socket,id=agent,path={AGENT_SOCKET},server=on,wait=off"),
    ]);
    push(&[
        "-device",
        &format!(
            "virtserialport,bus=vser0.0,chardev=agent,name={}",
            runvm_protocol::AGENT_PORT_NAME
        ),
    ]);
    for i in 0..ROOT_PORTS {
        push(&[
            "-device",
            &format!("pcie-root-port,id=rp{i},chassis={},slot={}", i + 1, i + 1),
        ]);
    }
    if c.incoming {
        push(&["-incoming", "defer"]);
    }
    for (i, share) in c.fs_shares.iter().enumerate() {
        push(&[
            "-chardev",
            &format!("socket,id={},path={}", share.id, share.socket),
        ]);
        push(&[
            "-device",
            &format!(
                "vhost-user-fs-pci,id={}-dev,chardev={},tag={},bus=rp{i}",
                share.id, share.id, share.tag
            ),
        ]);
    }
    a
}

fn ignore_shared(qmp: &mut Qmp) -> Result<(), HypervisorError> {
    qmp.execute(
        "migrate-set-capabilities",
        Some(json!({"capabilities": [{"capability": "x-ignore-shared", "state": true}]})),
    )?;
    Ok(())
}

/// Poll `query-migrate` until the migration has completed or failed.
fn wait_migration(qmp: &mut Qmp, what: &'static str) -> Result<(), HypervisorError> {
    let deadline = Instant::now() + MIGRATION_TIMEOUT;
    loop {
        let info = qmp.execute("query-migrate", None)?;
        let status = info["status"].as_str().unwrap_or("").to_string();
        match status.as_str() {
            "completed" => return Ok(()),
            "failed" | "cancelled" => {
                let detail = info["error-desc"]
                    .as_str()
                    .map(|d| format!(": {d}"))
                    .unwrap_or_default();
                return Err(HypervisorError::Migration {
                    what,
                    status,
                    detail,
                });
            }
            _ if Instant::now() >= deadline => {
                return Err(HypervisorError::Migration {
                    what,
                    status,
                    detail: format!(" after {MIGRATION_TIMEOUT:?}"),
                })
            }
            _ => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

fn describe(status: std::process::ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => "ended".to_string(),
    }
}

impl Hypervisor for Qemu {
    fn launch(&mut self) -> Result<(), HypervisorError> {
        if self.config.fs_shares.len() > ROOT_PORTS {
            return Err(HypervisorError::Unsupported {
                backend: "qemu",
                what: "more virtio-fs shares than root ports",
            });
        }
        let log_path = self.config.log_file();
        let log_err = |source| HypervisorError::Log {
            path: log_path.clone(),
            source,
        };
        let log = File::create(&log_path).map_err(log_err)?;
        let sockets = SocketDir::open(&self.config.dir).map_err(|source| HypervisorError::Dir {
            path: self.config.dir.clone(),
            source,
        })?;
        let qmp_path = sockets.path(QMP_SOCKET);
        self.sockets = Some(sockets);
        let mut cmd = Command::new(&self.binary);
        cmd.args(command_line(&self.config))
            .current_dir(&self.config.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(log_err)?)
            .stderr(log);
        // SAFETY: prctl is async-signal-safe; the closure touches no memory
        // shared with the parent.
        unsafe {
            cmd.pre_exec(|| {
                // Never outlive the shim: a VM nobody controls is a leak.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|source| HypervisorError::Spawn {
            binary: self.binary.clone(),
            source,
        })?;
        self.pid = Some(child.id() as i32);
        let exit_tx = self.exit_tx.clone();
        std::thread::spawn(move || {
            let desc = match child.wait() {
                Ok(status) => describe(status),
                Err(e) => format!("wait failed: {e}"),
            };
            exit_tx.send_replace(Some(desc));
        });
        self.ports_used = self.config.fs_shares.len();
        let exit_rx = self.exit_tx.subscribe();
        match Qmp::connect(&qmp_path, QMP_CONNECT_TIMEOUT, || {
            exit_rx.borrow().is_none()
        }) {
            Ok(qmp) => {
                qmp.set_timeout(QMP_REQUEST_TIMEOUT)?;
                self.qmp = Some(qmp);
                Ok(())
            }
            Err(e) => {
                // Give a dying QEMU a moment to say why in its log.
                self.wait_exit(Duration::from_millis(500));
                let status = self.exit_tx.borrow().clone();
                let _ = self.stop(Duration::from_secs(1));
                match status {
                    Some(status) => Err(HypervisorError::DiedAtStart {
                        status,
                        log: self.log_tail(),
                    }),
                    None => Err(e.into()),
                }
            }
        }
    }

    fn pid(&self) -> Option<i32> {
        self.pid
    }

    fn agent_socket(&self) -> PathBuf {
        match &self.sockets {
            Some(s) => s.path(AGENT_SOCKET),
            None => self.config.dir.join(AGENT_SOCKET),
        }
    }

    fn exit_watch(&self) -> ExitWatch {
        self.exit_tx.subscribe()
    }

    fn pause(&mut self) -> Result<(), HypervisorError> {
        self.qmp()?.execute("stop", None)?;
        Ok(())
    }

    fn resume(&mut self) -> Result<(), HypervisorError> {
        self.qmp()?.execute("cont", None)?;
        Ok(())
    }

    fn hotplug_fs(&mut self, share: &FsShare) -> Result<(), HypervisorError> {
        if self.ports_used >= ROOT_PORTS {
            return Err(HypervisorError::Unsupported {
                backend: "qemu",
                what: "more virtio-fs shares than root ports",
            });
        }
        let port = format!("rp{}", self.ports_used);
        let qmp = self.qmp()?;
        qmp.execute(
            "chardev-add",
            Some(json!({
                "id": share.id,
                "backend": {"type": "socket", "data": {
                    "addr": {"type": "unix", "data": {"path": share.socket}},
                    "server": false
                }}
            })),
        )?;
        qmp.execute(
            "device_add",
            Some(json!({
                "driver": "vhost-user-fs-pci",
                "id": format!("{}-dev", share.id),
                "chardev": share.id,
                "tag": share.tag,
                "bus": port,
            })),
        )?;
        self.ports_used += 1;
        Ok(())
    }

    fn snapshot(&mut self, state: &Path) -> Result<(), HypervisorError> {
        if !matches!(self.config.memory, GuestMemory::File(_)) {
            return Err(HypervisorError::Unsupported {
                backend: "qemu",
                what: "snapshots of a VM whose memory is not a file",
            });
        }
        let qmp = self.qmp()?;
        qmp.execute("stop", None)?;
        // The memory stays in its file; only device state goes to the stream.
        ignore_shared(qmp)?;
        let uri = format!("file:{}", state.display());
        qmp.execute("migrate", Some(json!({ "uri": uri })))?;
        wait_migration(qmp, "save")
    }

    fn restore(&mut self, state: &Path) -> Result<(), HypervisorError> {
        let qmp = self.qmp()?;
        ignore_shared(qmp)?;
        let uri = format!("file:{}", state.display());
        qmp.execute("migrate-incoming", Some(json!({ "uri": uri })))?;
        wait_migration(qmp, "restore")?;
        qmp.execute("cont", None)?;
        Ok(())
    }

    fn stop(&mut self, timeout: Duration) -> Result<(), HypervisorError> {
        let Some(pid) = self.pid else {
            return Ok(());
        };
        if self.exit_tx.borrow().is_none() {
            if let Some(qmp) = self.qmp.as_mut() {
                let _ = qmp.execute("quit", None);
            }
            if !self.wait_exit(timeout) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                self.wait_exit(Duration::from_secs(5));
            }
        }
        self.qmp = None;
        Ok(())
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            pause: true,
            snapshot: true,
            fs_hotplug: true,
        }
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.stop(Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(accel: ResolvedAccel) -> VmConfig {
        VmConfig {
            name: "runvm-c1".into(),
            dir: "/run/runvm/c1".into(),
            kernel: "/k".into(),
            initrd: "/i".into(),
            kernel_params: "foo=1".into(),
            vcpus: 1,
            memory_mib: 256,
            accel,
            fs_shares: vec![FsShare {
                id: "fs0".into(),
                tag: "rootfs".into(),
                socket: "fs0.sock".into(),
            }],
            seccomp_sandbox: true,
            memory: GuestMemory::Memfd,
            incoming: false,
        }
    }

    fn has_pair(args: &[String], flag: &str, value: &str) -> bool {
        args.windows(2).any(|w| w[0] == flag && w[1] == value)
    }

    #[test]
    fn tcg_command_line() {
        let a = command_line(&config(ResolvedAccel::Tcg));
        assert!(has_pair(&a, "-machine", "q35,accel=tcg,memory-backend=mem"));
        assert!(has_pair(&a, "-cpu", "max"));
        assert!(has_pair(&a, "-m", "256M"));
        assert!(has_pair(
            &a,
            "-object",
            "memory-backend-memfd,id=mem,size=256M,share=on"
        ));
        let append = a.iter().skip_while(|s| *s != "-append").nth(1).unwrap();
        assert!(
            append.starts_with("console=ttyS0 quiet panic=-1 "),
            "{append}"
        );
        assert!(append.contains("cryptomgr.notests"), "{append}");
        assert!(append.ends_with(" foo=1"), "{append}");
        assert!(has_pair(
            &a,
            "-device",
            "virtserialport,bus=vser0.0,chardev=agent,name=agent.0"
        ));
        assert!(has_pair(
            &a,
            "-device",
            "vhost-user-fs-pci,id=fs0-dev,chardev=fs0,tag=rootfs,bus=rp0"
        ));
        // A second root port stays free for a hotplugged share.
        assert!(has_pair(
            &a,
            "-device",
            "pcie-root-port,id=rp1,chassis=2,slot=2"
        ));
        assert!(a.iter().any(|s| s.starts_with("on,obsolete=deny")));
    }

    #[test]
    fn a_clone_waits_for_its_state_over_file_memory() {
        let mut c = config(ResolvedAccel::Tcg);
        c.memory = GuestMemory::File("/dev/shm/x.mem".into());
        c.incoming = true;
        c.fs_shares.clear();
        let a = command_line(&c);
        assert!(has_pair(
            &a,
            "-object",
            "memory-backend-file,id=mem,size=256M,mem-path=/dev/shm/x.mem,share=on"
        ));
        assert!(has_pair(&a, "-incoming", "defer"));
        assert!(!a.iter().any(|s| s.starts_with("vhost-user-fs-pci")));
    }

    #[test]
    fn kvm_uses_the_host_cpu() {
        let a = command_line(&config(ResolvedAccel::Kvm));
        assert!(has_pair(&a, "-machine", "q35,accel=kvm,memory-backend=mem"));
        assert!(has_pair(&a, "-cpu", "host"));
    }
}
