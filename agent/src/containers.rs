//! The containers the agent runs, and what the host can ask of them.

use std::collections::HashMap;
use std::fs;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::mount::{mount, MsFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use oci_spec::runtime::LinuxResources;
use runvm_protocol::{
    AgentError, AgentErrorKind, CgroupStats, CreateContainer, Created, ExecProcess, GuestProcess,
    ProcessRef, ShareSource, SHARE_ROOTFS, SHARE_SOURCE_PREFIX,
};
use serde_json::Value;

use crate::cgroup::Cgroup;
use crate::process::{
    drain_pipe, fail, pipes_stdio, run_helper, stdio_pipes, AgentResult, Proc, ProcStdio,
};
use crate::reaper::Reaper;
use crate::tty::ConsoleSocket;
use crate::youki_helper::YOUKI_ROOT;
use youki::container::{Container as YoukiContainer, ContainerStatus, State as YoukiState};

const BUNDLES_DIR: &str = "/run/runvm/bundles";
const SHARE_DIR: &str = "/run/runvm/share";
const EXEC_DIR: &str = "/run/runvm/exec";
/// Every container's cgroup lives under this guest cgroup.
const CGROUP_PARENT: &str = "/runvm";
/// How long to wait for the rootfs share to show up (it may be hotplugged).
const SHARE_WAIT: Duration = Duration::from_secs(20);

static NEXT_EXEC_FILE: AtomicUsize = AtomicUsize::new(0);

pub(crate) struct Container {
    pub(crate) init: Arc<Proc>,
    execs: Mutex<HashMap<String, Arc<Proc>>>,
    cgroup: Cgroup,
    /// Serializes start and exec, which both look at youki's state.
    lifecycle: tokio::sync::Mutex<()>,
    /// Open until the init execs the container's process (see
    /// `start_container`).
    until_exec: Mutex<Option<tokio::net::unix::pipe::Receiver>>,
}

/// How long `start` waits for the container's process to be exec'd; past
/// it (a slow startContainer hook), start returns as runc's would.
const EXEC_WAIT: Duration = Duration::from_secs(10);

#[derive(Default)]
pub struct Agent {
    pub reaper: Reaper,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    /// Forks the youki helpers; without it they are exec'd.
    zygote: Option<crate::zygote::Zygote>,
}

fn is_terminal(process: Option<&Value>) -> bool {
    process
        .and_then(|p| p.get("terminal"))
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

fn not_found(what: String) -> AgentError {
    AgentError::new(AgentErrorKind::NotFound, what)
}

/// How a new process gets its stdio: pipes passed as fds 3-5, or a console
/// socket youki sends the pty master to.
enum NewStdio {
    Pipes(crate::process::StdioPipes),
    Tty(ConsoleSocket),
}

impl NewStdio {
    fn new(terminal: bool) -> AgentResult<Self> {
        if terminal {
            Ok(NewStdio::Tty(
                ConsoleSocket::bind().map_err(|e| fail("console socket", e))?,
            ))
        } else {
            Ok(NewStdio::Pipes(stdio_pipes()?))
        }
    }

    fn helper_args(&self) -> Vec<String> {
        match self {
            NewStdio::Tty(c) => vec!["--console-socket".into(), c.path.to_string_lossy().into()],
            NewStdio::Pipes(_) => Vec::new(),
        }
    }

    fn child_fds(&self) -> &[OwnedFd] {
        match self {
            NewStdio::Pipes(p) => &p.child,
            NewStdio::Tty(_) => &[],
        }
    }

    /// After a failed helper: what the process said on stderr, if anything.
    fn said(&self) -> String {
        match self {
            NewStdio::Pipes(p) => drain_pipe(&p.ours[2]),
            NewStdio::Tty(_) => String::new(),
        }
    }

    /// After the helper succeeded: the agent's ends.
    async fn finish(self) -> AgentResult<ProcStdio> {
        match self {
            NewStdio::Pipes(p) => {
                drop(p.child);
                Ok(pipes_stdio(p.ours))
            }
            NewStdio::Tty(c) => {
                let master = c
                    .receive()
                    .await
                    .map_err(|e| AgentError::new(AgentErrorKind::System, e))?;
                Ok(ProcStdio::Tty {
                    master,
                    taken: Mutex::new((false, false)),
                })
            }
        }
    }
}

impl Agent {
    pub fn new() -> Self {
        let zygote = match crate::zygote::Zygote::start() {
            Ok(z) => Some(z),
            Err(e) => {
                eprintln!("runvm-agent: no zygote ({e}): helpers will be exec'd");
                None
            }
        };
        Agent {
            zygote,
            ..Agent::default()
        }
    }

    pub(crate) fn container(&self, id: &str) -> AgentResult<Arc<Container>> {
        let containers = self.containers.lock().unwrap_or_else(|e| e.into_inner());
        containers
            .get(id)
            .cloned()
            .ok_or_else(|| not_found(format!("container {id} does not exist in the guest")))
    }

    pub fn process(&self, p: &ProcessRef) -> AgentResult<Arc<Proc>> {
        let c = self.container(&p.container_id)?;
        match &p.exec_id {
            None => Ok(c.init.clone()),
            Some(exec) => c
                .execs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(exec)
                .cloned()
                .ok_or_else(|| not_found(format!("no exec process {exec}"))),
        }
    }

    pub async fn create_container(&self, req: CreateContainer) -> AgentResult<Created> {
        let id = req.container_id.clone();
        if id.is_empty() || id.contains('/') || id.starts_with('.') {
            return Err(AgentError::new(
                AgentErrorKind::InvalidArgument,
                format!("invalid container id {id:?}"),
            ));
        }
        if self.container(&id).is_ok() {
            return Err(AgentError::new(
                AgentErrorKind::AlreadyExists,
                format!("container {id} already exists in the guest"),
            ));
        }
        let share = Path::new(SHARE_DIR).join(&id);
        fs::create_dir_all(&share).map_err(|e| fail("create the share's mountpoint", e))?;
        // Mounted read-write even for root.readonly: youki creates missing
        // mountpoints in the rootfs (as runc does), then makes it read-only.
        mount_share(&req.share, &share).await?;
        if let Some(mib) = req.vm_memory_mib {
            crate::guest::wait_memory_online(mib).await;
        }
        self.create_from(id, req.spec, &share).await
    }

    /// Create container `id` from `spec`, whose root and bind sources are
    /// in `share`; `share` is unmounted if that fails.
    pub(crate) async fn create_from(
        &self,
        id: String,
        spec: Value,
        share: &Path,
    ) -> AgentResult<Created> {
        let bundle = Path::new(BUNDLES_DIR).join(&id);
        fs::create_dir_all(&bundle).map_err(|e| fail("create the bundle", e))?;
        let cgroup_path = format!("{CGROUP_PARENT}/{id}");
        let cgroup = Cgroup::new(&cgroup_path)?;
        let mut spec = guest_spec(spec, share, &cgroup_path)?;
        if let Err(e) = crate::runc_defaults::apply(&mut spec, &share.join(SHARE_ROOTFS)) {
            let _ = nix::mount::umount2(share, nix::mount::MntFlags::MNT_DETACH);
            return Err(e);
        }
        let stdio = NewStdio::new(is_terminal(spec.get("process")))?;
        fs::write(bundle.join("config.json"), spec.to_string())
            .map_err(|e| fail("write config.json", e))?;

        let bundle_s = bundle.to_string_lossy().into_owned();
        let mut args = vec!["create", "--id", &id, "--bundle", &bundle_s];
        let extra = stdio.helper_args();
        args.extend(extra.iter().map(String::as_str));
        let out = run_helper(&self.reaper, self.zygote.as_ref(), &args, stdio.child_fds()).await?;
        if !out.ok() {
            let _ = nix::mount::umount2(share, nix::mount::MntFlags::MNT_DETACH);
            return Err(start_error(out.error(), &stdio.said()));
        }
        let pid = out.pid()?;
        let until_exec = Mutex::new(out.stderr_held);
        let exit = self.reaper.watch(pid);
        let init = Arc::new(Proc::new(pid, stdio.finish().await?, exit));
        let mut containers = self.containers.lock().unwrap_or_else(|e| e.into_inner());
        containers.insert(
            id,
            Arc::new(Container {
                init,
                execs: Mutex::new(HashMap::new()),
                cgroup,
                lifecycle: tokio::sync::Mutex::new(()),
                until_exec,
            }),
        );
        Ok(Created { pid })
    }

    /// Remove what is left of a container whose processes have exited: its
    /// cgroup, youki's state and the bundle.
    pub(crate) fn forget(&self, id: &str) {
        let removed = self
            .containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        if let Some(c) = removed {
            c.cgroup.remove();
        }
        let _ = fs::remove_dir_all(Path::new(YOUKI_ROOT).join(id));
        let _ = fs::remove_dir_all(Path::new(BUNDLES_DIR).join(id));
    }

    pub async fn start_container(&self, id: &str) -> AgentResult<()> {
        let c = self.container(id)?;
        let _serial = c.lifecycle.lock().await;
        if c.init.exited() {
            return Err(AgentError::new(
                AgentErrorKind::NotRunning,
                "the container has stopped",
            ));
        }
        let out = run_helper(
            &self.reaper,
            self.zygote.as_ref(),
            &["start", "--id", id],
            &[],
        )
        .await?;
        if !out.ok() {
            return Err(runtime_error(out.error(), ""));
        }
        // runc's start returns once it has let the init go; the init then
        // still runs the startContainer hooks and execs. Under TCG that takes
        // tens of milliseconds, in which a signal sent right after start
        // finds a process that is not yet the container's. So start returns
        // once the init has exec'd it (the init's copy of the create
        // helper's stderr closes then), or has died.
        let until_exec = c
            .until_exec
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(rx) = until_exec {
            let _ = tokio::time::timeout(EXEC_WAIT, crate::process::until_eof(&rx)).await;
        }
        Ok(())
    }

    pub async fn exec(&self, req: ExecProcess) -> AgentResult<Created> {
        let c = self.container(&req.container_id)?;
        let _serial = c.lifecycle.lock().await;
        if c.init.exited() {
            return Err(AgentError::new(
                AgentErrorKind::NotRunning,
                "the container has stopped",
            ));
        }
        let taken = c
            .execs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&req.exec_id);
        if taken {
            return Err(AgentError::new(
                AgentErrorKind::AlreadyExists,
                format!("exec id {} is already in use", req.exec_id),
            ));
        }
        fs::create_dir_all(EXEC_DIR).map_err(|e| fail("create the exec directory", e))?;
        let file = PathBuf::from(format!(
            "{EXEC_DIR}/{}.json",
            NEXT_EXEC_FILE.fetch_add(1, Ordering::SeqCst)
        ));
        let process =
            serde_json::to_vec(&req.process).map_err(|e| fail("encode process.json", e))?;
        fs::write(&file, process).map_err(|e| fail("write process.json", e))?;
        let stdio = NewStdio::new(req.process.terminal().unwrap_or(false))?;
        let file_s = file.to_string_lossy().into_owned();
        let mut args = vec!["exec", "--id", &req.container_id, "--process", &file_s];
        let extra = stdio.helper_args();
        args.extend(extra.iter().map(String::as_str));
        // runc allows exec into a created container, youki only into a
        // running one (see MarkedRunning).
        let out = match MarkedRunning::mark(Path::new(YOUKI_ROOT).join(&req.container_id)) {
            Ok(marked) => {
                let out =
                    run_helper(&self.reaper, self.zygote.as_ref(), &args, stdio.child_fds()).await;
                if let Some(marked) = marked {
                    marked.restore();
                }
                out
            }
            Err(e) => Err(e),
        };
        let _ = fs::remove_file(&file);
        let out = out?;
        if !out.ok() {
            return Err(start_error(out.error(), &stdio.said()));
        }
        let pid = out.pid()?;
        let exit = self.reaper.watch(pid);
        let proc_ = Arc::new(Proc::new(pid, stdio.finish().await?, exit));
        c.execs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(req.exec_id, proc_);
        Ok(Created { pid })
    }

    pub fn signal(&self, p: &ProcessRef, signal: i32, all: bool) -> AgentResult<()> {
        let sig = Signal::try_from(signal).map_err(|e| {
            AgentError::new(
                AgentErrorKind::InvalidArgument,
                format!("invalid signal: {e}"),
            )
        })?;
        if all && p.exec_id.is_none() {
            let c = self.container(&p.container_id)?;
            for pid in c.cgroup.pids()? {
                let _ = kill(Pid::from_raw(pid), sig);
            }
            return Ok(());
        }
        let proc_ = self.process(p)?;
        if proc_.exited() {
            return Err(AgentError::new(
                AgentErrorKind::NotRunning,
                "the process has exited",
            ));
        }
        kill(Pid::from_raw(proc_.pid), sig).map_err(|e| fail("kill", e))
    }

    pub fn resize(&self, p: &ProcessRef, rows: u16, cols: u16) -> AgentResult<()> {
        self.process(p)?.resize(rows, cols)
    }

    pub fn freeze(&self, id: &str, frozen: bool) -> AgentResult<()> {
        self.container(id)?.cgroup.freeze(frozen)
    }

    pub fn stats(&self, id: &str) -> AgentResult<CgroupStats> {
        self.container(id)?.cgroup.stats()
    }

    pub fn update(&self, id: &str, resources: &LinuxResources) -> AgentResult<()> {
        self.container(id)?.cgroup.update(resources)
    }

    pub fn processes(&self, id: &str) -> AgentResult<Vec<GuestProcess>> {
        Ok(crate::ps::describe(&self.container(id)?.cgroup.pids()?))
    }
}

/// Why a container's process (create) or an exec's could not be started:
/// youki's cause behind runc's words for it.
fn start_error(cause: String, said: &str) -> AgentError {
    runtime_error(format!("unable to start container process: {cause}"), said)
}

/// youki's error, with what the process said on its stderr before it died
/// (a panic), if anything.
fn runtime_error(mut msg: String, said: &str) -> AgentError {
    if !said.trim().is_empty() {
        msg.push_str(": ");
        msg.push_str(said.trim());
    }
    AgentError::new(AgentErrorKind::Runtime, msg)
}

/// A created container that youki's state records as running for the time
/// of an exec.
///
/// Why: runc allows exec into a created container; youki's tenant builder
/// loads state.json and accepts only a running (or paused) one, with no
/// option for created. The init is already in its namespaces and cgroup,
/// so an exec joins them as it would after start.
/// Why it is safe: the agent serialises start and exec per container
/// (`Container::lifecycle`), the exec helper only reads the state, and
/// nothing else in the guest drives youki. The state is youki's own typed
/// `State`, written atomically rather than with youki's `save`, which
/// truncates and rewrites in place: a failed write (a full tmpfs) would
/// leave the container without a state, and youki unable to start it.
struct MarkedRunning {
    created: YoukiContainer,
}

impl MarkedRunning {
    /// If youki records the container as created, record it as running and
    /// return what to restore.
    fn mark(youki_dir: PathBuf) -> AgentResult<Option<Self>> {
        let created = YoukiContainer::load(youki_dir)
            .map_err(|e| fail("load youki's state of the container", e))?;
        if created.status() != ContainerStatus::Created {
            return Ok(None);
        }
        let mut running = created.clone();
        running.set_status(ContainerStatus::Running);
        save_youki_state(&running).map_err(|e| fail("record the container as running", e))?;
        Ok(Some(MarkedRunning { created }))
    }

    fn restore(self) {
        if let Err(e) = save_youki_state(&self.created) {
            eprintln!(
                "runvm-agent: restore youki's state of {}: {e}",
                self.created.id()
            );
        }
    }
}

/// youki's state.json, written as runc's saveState does: a temp file in the
/// same directory, fsynced, renamed over the old one.
fn save_youki_state(container: &YoukiContainer) -> std::io::Result<()> {
    let path = YoukiState::file_path(&container.root);
    let tmp = path.with_extension("json.runvm-tmp");
    let mut file = fs::File::create(&tmp)?;
    serde_json::to_writer(&mut file, &container.state)?;
    file.sync_all()?;
    fs::rename(&tmp, &path)
}

/// Mount the container's share at `target`, waiting for its device (it may
/// be hotplugged after the request was sent).
async fn mount_share(source: &ShareSource, target: &Path) -> AgentResult<()> {
    let deadline = tokio::time::Instant::now() + SHARE_WAIT;
    loop {
        let (what, r) = match source {
            ShareSource::VirtioFs { tag } => (
                format!("virtio-fs share {tag}"),
                mount(
                    Some(tag.as_str()),
                    target,
                    Some("virtiofs"),
                    MsFlags::MS_NODEV,
                    None::<&str>,
                )
                .map_err(std::io::Error::from),
            ),
            ShareSource::Disk { serial } => (
                format!("the share's disk (serial {serial})"),
                mount_disk(serial, target),
            ),
        };
        match r {
            Ok(()) => return Ok(()),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(fail(&format!("mount {what}"), e))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Mount the ext4 filesystem of the virtio-blk disk whose serial is
/// `serial`. The image is new and runvm's alone: its inode tables are not
/// zeroed in the background (that would only burn the guest's CPU).
fn mount_disk(serial: &str, target: &Path) -> std::io::Result<()> {
    let device = disk_by_serial(Path::new("/sys/block"), serial)?;
    mount(
        Some(&Path::new("/dev").join(device)),
        target,
        Some("ext4"),
        MsFlags::MS_NODEV,
        Some("noinit_itable"),
    )
    .map_err(std::io::Error::from)
}

/// The block device under `sys_block` whose `serial` is `serial`.
fn disk_by_serial(sys_block: &Path, serial: &str) -> std::io::Result<String> {
    for entry in fs::read_dir(sys_block)? {
        let entry = entry?;
        let found = fs::read_to_string(entry.path().join("serial")).unwrap_or_default();
        if found.trim_end() == serial {
            return Ok(entry.file_name().to_string_lossy().into_owned());
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::NotFound,
        format!("no disk with serial {serial}"),
    ))
}

/// The VM's network namespace: the agent's, PID 1's.
const VM_NETNS: &str = "/proc/1/ns/net";

/// Adapt the host's spec to the guest: the rootfs and bind sources are in the
/// share, the cgroup is ours to place, and host-side references (namespace
/// paths, hooks that name host binaries) mean nothing in the VM; the
/// container's network is the VM's.
fn guest_spec(mut spec: Value, share: &Path, cgroup: &str) -> AgentResult<Value> {
    let obj = spec.as_object_mut().ok_or_else(|| {
        AgentError::new(
            AgentErrorKind::InvalidArgument,
            "config.json is not a JSON object",
        )
    })?;
    let root = obj
        .entry("root")
        .or_insert_with(|| Value::Object(Default::default()));
    root["path"] = Value::String(share.join(SHARE_ROOTFS).to_string_lossy().into_owned());
    if let Some(mounts) = obj.get_mut("mounts").and_then(Value::as_array_mut) {
        for m in mounts.iter_mut() {
            if let Some(path) = in_share(share, m.get("source")) {
                m["source"] = Value::String(path);
            }
        }
    }
    // The host sends only the hooks that run here (createContainer and
    // startContainer, found in the rootfs); a path in the share is mapped
    // to where the share is mounted.
    if let Some(hooks) = obj.get_mut("hooks").and_then(Value::as_object_mut) {
        hooks.retain(|kind, _| kind == "createContainer" || kind == "startContainer");
        for hook in hooks.values_mut().filter_map(Value::as_array_mut).flatten() {
            if let Some(path) = in_share(share, hook.get("path")) {
                hook["path"] = Value::String(path);
            }
        }
    }
    let linux = obj
        .entry("linux")
        .or_insert_with(|| Value::Object(Default::default()));
    linux["cgroupsPath"] = Value::String(cgroup.to_string());
    if let Some(namespaces) = linux.get_mut("namespaces").and_then(Value::as_array_mut) {
        for ns in namespaces.iter_mut() {
            if let Some(ns) = ns.as_object_mut() {
                ns.remove("path");
                // One VM per container: the VM's network (its NICs,
                // configured from the host's interfaces) is the container's.
                // It joins the VM's namespace, and still has a network
                // namespace of its own as far as youki's checks go (net.*
                // sysctls are refused without one, as by runc).
                if ns.get("type").and_then(Value::as_str) == Some("network") {
                    ns.insert("path".into(), Value::String(VM_NETNS.into()));
                }
            }
        }
    }
    Ok(spec)
}

/// Where a host path that names a file in the share (`runvm-share:rel`)
/// is in the guest.
fn in_share(share: &Path, host: Option<&Value>) -> Option<String> {
    let rel = host?.as_str()?.strip_prefix(SHARE_SOURCE_PREFIX)?;
    Some(share.join(rel).to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_share_disk_is_found_by_its_serial() {
        let sys = tempfile::tempdir().unwrap();
        for (dev, serial) in [("vda", "other\n"), ("vdb", "share\n"), ("loop0", "")] {
            fs::create_dir(sys.path().join(dev)).unwrap();
            if !serial.is_empty() {
                fs::write(sys.path().join(dev).join("serial"), serial).unwrap();
            }
        }
        assert_eq!(disk_by_serial(sys.path(), "share").unwrap(), "vdb");
        let err = disk_by_serial(sys.path(), "nope").unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    }

    #[test]
    fn guest_spec_points_at_the_share_and_drops_host_references() {
        let spec = json!({
            "ociVersion": "1.0.2",
            "root": {"path": "/host/bundle/rootfs", "readonly": true},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/etc/hosts", "type": "bind", "source": "runvm-share:mounts/1"}
            ],
            "hooks": {
                "prestart": [{"path": "/usr/bin/host-hook"}],
                "createContainer": [{"path": "runvm-share:rootfs/bin/hook", "args": ["hook"]}],
                "startContainer": [{"path": "/bin/hook"}]
            },
            "linux": {
                "cgroupsPath": "system.slice:libpod:abc",
                "namespaces": [{"type": "pid"}, {"type": "network", "path": "/run/netns/x"}]
            }
        });
        let out = guest_spec(spec, Path::new("/run/runvm/share/c1"), "/runvm/c1").unwrap();
        assert_eq!(out["root"]["path"], "/run/runvm/share/c1/rootfs");
        assert_eq!(out["mounts"][0]["source"], "proc");
        assert_eq!(out["mounts"][1]["source"], "/run/runvm/share/c1/mounts/1");
        assert_eq!(out["root"]["readonly"], true);
        assert_eq!(
            out["hooks"],
            json!({
                "createContainer": [{"path": "/run/runvm/share/c1/rootfs/bin/hook", "args": ["hook"]}],
                "startContainer": [{"path": "/bin/hook"}]
            })
        );
        assert_eq!(out["linux"]["cgroupsPath"], "/runvm/c1");
        assert_eq!(
            out["linux"]["namespaces"],
            json!([{"type": "pid"}, {"type": "network", "path": "/proc/1/ns/net"}])
        );
    }

    #[test]
    fn a_created_container_is_marked_running_and_restored() {
        let dir = std::env::temp_dir().join(format!("runvm-youki-state-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let me = std::process::id() as i32;
        let mut youki =
            YoukiContainer::new("c1", ContainerStatus::Created, Some(me), &dir, &dir).unwrap();
        youki.save().unwrap();
        let load = || YoukiContainer::load(dir.clone()).unwrap().status();

        let marked = MarkedRunning::mark(dir.clone()).unwrap().unwrap();
        assert_eq!(load(), ContainerStatus::Running);
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["state.json"], "no temp file is left");
        marked.restore();
        assert_eq!(load(), ContainerStatus::Created);

        // A running container is left alone.
        youki.set_status(ContainerStatus::Running).save().unwrap();
        assert!(MarkedRunning::mark(dir.clone()).unwrap().is_none());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn terminal_comes_from_the_process() {
        assert!(is_terminal(Some(&json!({"terminal": true}))));
        assert!(!is_terminal(Some(&json!({"args": ["sh"]}))));
        assert!(!is_terminal(None));
    }
}
