//! The containers and processes the agent runs.

use std::collections::HashMap;
use std::fs;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::mount::{mount, MsFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::{pipe2, Pid};
use runvm_protocol::{AgentError, CreateContainer, ExitStatus, ProcessRef, ROOTFS_TAG};
use serde_json::Value;
use tokio::net::unix::pipe;
use tokio::sync::watch;

use crate::reaper::{self, Reaper};
use crate::youki_helper;

const BUNDLES_DIR: &str = "/run/runvm/bundles";
const ROOTFS_DIR: &str = "/run/runvm/rootfs";
/// Every container's cgroup lives under this guest cgroup.
const CGROUP_PARENT: &str = "/runvm";
/// How long to wait for the rootfs share to show up (it may be hotplugged).
const SHARE_WAIT: Duration = Duration::from_secs(20);

type AgentResult<T> = Result<T, AgentError>;

fn fail(context: &str, err: impl std::fmt::Display) -> AgentError {
    AgentError::new(format!("{context}: {err}"))
}

/// One process the host can attach to: a container's init or an exec.
pub struct Proc {
    pub pid: i32,
    stdin: Mutex<Option<OwnedFd>>,
    stdout: Mutex<Option<OwnedFd>>,
    stderr: Mutex<Option<OwnedFd>>,
    exit: watch::Receiver<Option<ExitStatus>>,
}

#[derive(Clone, Copy, Debug)]
pub enum Stdio3 {
    Stdin,
    Stdout,
    Stderr,
}

impl Proc {
    /// Hand out one end of the process's stdio, once.
    pub fn take(&self, which: Stdio3) -> Option<OwnedFd> {
        let slot = match which {
            Stdio3::Stdin => &self.stdin,
            Stdio3::Stdout => &self.stdout,
            Stdio3::Stderr => &self.stderr,
        };
        slot.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    pub async fn wait(&self) -> Option<ExitStatus> {
        reaper::wait(self.exit.clone()).await
    }

    pub fn exited(&self) -> bool {
        self.exit.borrow().is_some()
    }
}

struct ContainerEntry {
    init: Arc<Proc>,
    cgroup: PathBuf,
}

#[derive(Default)]
pub struct Agent {
    pub reaper: Reaper,
    containers: Mutex<HashMap<String, ContainerEntry>>,
}

/// Pipes for a child's stdio: the child's ends, and the agent's ends.
struct StdioPipes {
    child: [OwnedFd; 3],
    ours: [OwnedFd; 3],
}

fn stdio_pipes() -> AgentResult<StdioPipes> {
    let p = |what| pipe2(OFlag::O_CLOEXEC).map_err(|e| fail(what, e));
    let (in_r, in_w) = p("stdin pipe")?;
    let (out_r, out_w) = p("stdout pipe")?;
    let (err_r, err_w) = p("stderr pipe")?;
    Ok(StdioPipes {
        child: [in_r, out_w, err_w],
        ours: [in_w, out_r, err_r],
    })
}

/// Output of a finished helper.
struct HelperOutput {
    status: Option<ExitStatus>,
    stdout: String,
    stderr: String,
}

impl Agent {
    fn container_init(&self, id: &str) -> AgentResult<Arc<Proc>> {
        let containers = self.containers.lock().unwrap_or_else(|e| e.into_inner());
        containers
            .get(id)
            .map(|c| c.init.clone())
            .ok_or_else(|| AgentError::new(format!("container {id} does not exist in the guest")))
    }

    pub fn process(&self, p: &ProcessRef) -> AgentResult<Arc<Proc>> {
        match &p.exec_id {
            None => self.container_init(&p.container_id),
            Some(exec) => Err(AgentError::new(format!("no exec process {exec}"))),
        }
    }

    /// Run `runvm-agent __youki <args>` with `fds` as its fds 3.., wait for it.
    async fn run_helper(&self, args: &[&str], fds: &[OwnedFd]) -> AgentResult<HelperOutput> {
        // Lift the fds above 9 first so that placing them at 3.. in the child
        // cannot overwrite one another.
        let mut high: Vec<OwnedFd> = Vec::new();
        for fd in fds {
            let raw = fcntl(fd.as_raw_fd(), FcntlArg::F_DUPFD_CLOEXEC(10))
                .map_err(|e| fail("dup stdio", e))?;
            // SAFETY: fcntl(F_DUPFD_CLOEXEC) returned a new descriptor we own.
            high.push(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) });
        }
        let raw_high: Vec<RawFd> = high.iter().map(|f| f.as_raw_fd()).collect();
        let mut cmd = Command::new("/proc/self/exe");
        cmd.arg(youki_helper::ARG)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: the closure only calls dup2, which is async-signal-safe, on
        // descriptors that are open in the child.
        unsafe {
            cmd.pre_exec(move || {
                for (i, fd) in raw_high.iter().enumerate() {
                    if libc::dup2(*fd, 3 + i as RawFd) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let (mut child, exit) = {
            let mut reaper = self.reaper.lock();
            let child = cmd.spawn().map_err(|e| fail("spawn the youki helper", e))?;
            let exit = reaper.watch(child.id() as i32);
            (child, exit)
        };
        drop(high);
        let out_fd: OwnedFd = child.stdout.take().expect("piped stdout").into();
        let err_fd: OwnedFd = child.stderr.take().expect("piped stderr").into();
        let out_rx = pipe::Receiver::from_owned_fd(out_fd).map_err(|e| fail("helper stdout", e))?;
        let err_rx = pipe::Receiver::from_owned_fd(err_fd).map_err(|e| fail("helper stderr", e))?;
        // Collect the output while waiting for the helper to exit, not until
        // EOF: the container's init inherits the helper's stderr until it
        // execs, so EOF may come only at `start`.
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let (mut out_eof, mut err_eof) = (false, false);
        let wait = reaper::wait(exit);
        tokio::pin!(wait);
        let status = loop {
            tokio::select! {
                status = &mut wait => break status,
                eof = read_some(&out_rx, &mut out), if !out_eof => out_eof = eof,
                eof = read_some(&err_rx, &mut err), if !err_eof => err_eof = eof,
            }
        };
        drain(&out_rx, &mut out);
        drain(&err_rx, &mut err);
        let stdout = String::from_utf8_lossy(&out).into_owned();
        let stderr = String::from_utf8_lossy(&err).into_owned();
        Ok(HelperOutput {
            status,
            stdout,
            stderr,
        })
    }

    pub async fn create_container(&self, req: CreateContainer) -> AgentResult<i32> {
        let id = req.container_id.clone();
        if id.is_empty() || id.contains('/') || id.starts_with('.') {
            return Err(AgentError::new(format!("invalid container id {id:?}")));
        }
        if self.container_init(&id).is_ok() {
            return Err(AgentError::new(format!(
                "container {id} already exists in the guest"
            )));
        }
        let rootfs = Path::new(ROOTFS_DIR).join(&id);
        fs::create_dir_all(&rootfs).map_err(|e| fail("create the rootfs mountpoint", e))?;
        // Mounted read-write even for root.readonly: youki creates missing
        // mountpoints in the rootfs (as runc does), then makes it read-only.
        mount_share(ROOTFS_TAG, &rootfs).await?;

        let bundle = Path::new(BUNDLES_DIR).join(&id);
        fs::create_dir_all(&bundle).map_err(|e| fail("create the bundle", e))?;
        let cgroup = format!("{CGROUP_PARENT}/{id}");
        let spec = guest_spec(req.spec, &rootfs, &cgroup)?;
        fs::write(bundle.join("config.json"), spec.to_string())
            .map_err(|e| fail("write config.json", e))?;

        let pipes = stdio_pipes()?;
        let bundle_s = bundle.to_string_lossy().into_owned();
        let out = self
            .run_helper(
                &["create", "--id", &id, "--bundle", &bundle_s],
                &pipes.child,
            )
            .await?;
        drop(pipes.child);
        if out.status != Some(ExitStatus::Exited(0)) {
            let _ = nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH);
            let mut msg = helper_error(&out);
            // The container's init may have said more on its stderr before it
            // died (a panic, a failed exec).
            let said = drain_pipe(&pipes.ours[2]);
            if !said.trim().is_empty() {
                msg.push_str(": ");
                msg.push_str(said.trim());
            }
            return Err(AgentError::new(msg));
        }
        let pid: i32 = out
            .stdout
            .trim()
            .parse()
            .map_err(|e| fail("youki helper printed no pid", e))?;
        let exit = self.reaper.watch(pid);
        let [stdin, stdout, stderr] = pipes.ours;
        let init = Arc::new(Proc {
            pid,
            stdin: Mutex::new(Some(stdin)),
            stdout: Mutex::new(Some(stdout)),
            stderr: Mutex::new(Some(stderr)),
            exit,
        });
        let mut containers = self.containers.lock().unwrap_or_else(|e| e.into_inner());
        containers.insert(
            id,
            ContainerEntry {
                init,
                cgroup: Path::new("/sys/fs/cgroup").join(cgroup.trim_start_matches('/')),
            },
        );
        Ok(pid)
    }

    pub async fn start_container(&self, id: &str) -> AgentResult<()> {
        let init = self.container_init(id)?;
        if init.exited() {
            return Err(AgentError::new("cannot start a container that has stopped"));
        }
        let out = self.run_helper(&["start", "--id", id], &[]).await?;
        if out.status != Some(ExitStatus::Exited(0)) {
            return Err(AgentError::new(helper_error(&out)));
        }
        Ok(())
    }

    pub fn signal(&self, p: &ProcessRef, signal: i32, all: bool) -> AgentResult<()> {
        let sig = Signal::try_from(signal).map_err(|e| fail("invalid signal", e))?;
        let proc_ = self.process(p)?;
        if all && p.exec_id.is_none() {
            let cgroup = {
                let containers = self.containers.lock().unwrap_or_else(|e| e.into_inner());
                containers.get(&p.container_id).map(|c| c.cgroup.clone())
            };
            if let Some(cgroup) = cgroup {
                let procs = fs::read_to_string(cgroup.join("cgroup.procs")).unwrap_or_default();
                for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    let _ = kill(Pid::from_raw(pid), sig);
                }
            }
            return Ok(());
        }
        if proc_.exited() {
            return Err(AgentError::new("container not running"));
        }
        kill(Pid::from_raw(proc_.pid), sig).map_err(|e| fail("kill", e))
    }
}

/// Read what is available once it is; true at EOF or on error.
async fn read_some(rx: &pipe::Receiver, buf: &mut Vec<u8>) -> bool {
    if rx.readable().await.is_err() {
        return true;
    }
    let mut chunk = [0u8; 4096];
    match rx.try_read(&mut chunk) {
        Ok(0) => true,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            false
        }
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
        Err(_) => true,
    }
}

/// Take whatever is buffered in a pipe now, without waiting.
fn drain(rx: &pipe::Receiver, buf: &mut Vec<u8>) {
    let mut chunk = [0u8; 4096];
    while let Ok(n) = rx.try_read(&mut chunk) {
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Whatever is buffered in a pipe, without blocking (at most 4 KiB).
fn drain_pipe(fd: &OwnedFd) -> String {
    let _ = fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK));
    let mut buf = vec![0u8; 4096];
    let n = nix::unistd::read(fd.as_raw_fd(), &mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// youki's error: its final line names the outcome, ending with the cause
/// after its own layers of context; an earlier error event may say more
/// (which mount failed), and is kept when the final line lacks it.
fn helper_error(out: &HelperOutput) -> String {
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let Some(last) = lines.last() else {
        return format!("youki helper failed: {:?}", out.status);
    };
    const LAYER: &str = "error in executing process : ";
    let cause = match last.rfind(LAYER) {
        Some(i) => &last[i + LAYER.len()..],
        None => last,
    };
    match lines[..lines.len() - 1].iter().find(|l| {
        !last.contains(*l) && !l.contains(cause) && !l.starts_with("failed to wait for init ready")
    }) {
        Some(detail) if cause.len() < 60 => format!("{cause} ({detail})"),
        _ => cause.to_string(),
    }
}

/// Mount the virtio-fs share `tag` at `target`, waiting for the device.
async fn mount_share(tag: &str, target: &Path) -> AgentResult<()> {
    let flags = MsFlags::MS_NODEV;
    let deadline = tokio::time::Instant::now() + SHARE_WAIT;
    loop {
        match mount(Some(tag), target, Some("virtiofs"), flags, None::<&str>) {
            Ok(()) => return Ok(()),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(fail(&format!("mount virtio-fs share {tag}"), e))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Adapt the host's spec to the guest: the rootfs is the share's mountpoint,
/// the cgroup is ours to place, and host-side references (namespace paths,
/// hooks that name host binaries) mean nothing in the VM.
fn guest_spec(mut spec: Value, rootfs: &Path, cgroup: &str) -> AgentResult<Value> {
    let obj = spec
        .as_object_mut()
        .ok_or_else(|| AgentError::new("config.json is not a JSON object"))?;
    let root = obj
        .entry("root")
        .or_insert_with(|| Value::Object(Default::default()));
    root["path"] = Value::String(rootfs.to_string_lossy().into_owned());
    obj.remove("hooks");
    let linux = obj
        .entry("linux")
        .or_insert_with(|| Value::Object(Default::default()));
    linux["cgroupsPath"] = Value::String(cgroup.to_string());
    if let Some(namespaces) = linux.get_mut("namespaces").and_then(Value::as_array_mut) {
        for ns in namespaces.iter_mut() {
            if let Some(ns) = ns.as_object_mut() {
                ns.remove("path");
            }
        }
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn guest_spec_points_at_the_share_and_drops_host_references() {
        let spec = json!({
            "ociVersion": "1.0.2",
            "root": {"path": "/host/bundle/rootfs", "readonly": true},
            "hooks": {"prestart": [{"path": "/usr/bin/host-hook"}]},
            "linux": {
                "cgroupsPath": "system.slice:libpod:abc",
                "namespaces": [{"type": "pid"}, {"type": "network", "path": "/run/netns/x"}]
            }
        });
        let out = guest_spec(spec, Path::new("/run/runvm/rootfs/c1"), "/runvm/c1").unwrap();
        assert_eq!(out["root"]["path"], "/run/runvm/rootfs/c1");
        assert_eq!(out["root"]["readonly"], true);
        assert!(out.get("hooks").is_none());
        assert_eq!(out["linux"]["cgroupsPath"], "/runvm/c1");
        assert_eq!(out["linux"]["namespaces"][1], json!({"type": "network"}));
    }
}
