//! The per-container shim.
//!
//! `runvm create` starts it (double-forked, so the caller's subreaper adopts
//! it) and its pid goes into `--pid-file`: containerd and conmon reap it and
//! take its exit status as the container's. It owns everything the container
//! needs on the host: virtiofsd serving the rootfs, the VM, the connection to
//! the agent. It relays the stdio it inherited from `create`, forwards every
//! catchable signal it receives into the guest, answers the other verbs on
//! its control socket, and exits with the container's exit code once the
//! container has stopped.
//!
//! `boot` brings the container up, `serve` runs it, `requests` and `exec`
//! answer the verbs, `tty` is the container's terminal on the host, and
//! `teardown` stops what boot started.

mod boot;
mod checkpoint;
mod exec;
mod host_cgroup;
mod requests;
mod serve;
mod stdio;
mod teardown;
#[cfg(test)]
mod tests;
mod tty;

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;

use runvm_protocol::{AgentErrorKind, ExitStatus};
use slog::{error, warn, Logger};
use tokio::net::UnixListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::agent::{AgentClient, AgentClientError};
use crate::config::{Config, ConfigError};
use crate::control::{CreateFailure, CreateStage, Ready};
use crate::error_chain;
use crate::hypervisor::{Hypervisor, HypervisorError};
use crate::network::{self, Network, NetworkError};
use crate::procinfo::ProcessIdentity;
use crate::sockdir::SocketDir;
use crate::spec::SpecError;
use crate::state::{State, StateError, StateStore};
use crate::status::ContainerStatus;
use crate::terminal::TerminalError;
use crate::virtiofsd::{Virtiofsd, VirtiofsdError};
use exec::StandIns;

/// Exit code of the shim when the container ended without one (its VM died).
pub const VM_LOST_EXIT_CODE: i32 = 255;
/// After a process exits, how long its output may take to arrive. The agent
/// ends a process's output streams once the process has exited and all it
/// wrote is relayed, so the wait ends on that event; the bound is only for
/// an agent that stops answering, and is long because a guest under TCG on
/// a busy host can stall for seconds (a short one lost output).
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("runtime configuration")]
    Config(#[from] ConfigError),
    #[error("container state")]
    State(#[from] StateError),
    #[error("container spec")]
    Spec(#[from] SpecError),
    #[error("read {path}")]
    ReadSpec { path: PathBuf, source: io::Error },
    #[error("open the state directory {path}")]
    Dir { path: PathBuf, source: io::Error },
    #[error("start virtiofsd")]
    Virtiofsd(#[from] VirtiofsdError),
    /// A prestart or createRuntime hook failed; runc's words, which put
    /// what its init reported first.
    #[error("unable to start container process: error during container init")]
    Hook(#[from] crate::hooks::HookError),
    #[error("network")]
    Network(#[from] NetworkError),
    #[error("configure the guest's network")]
    GuestNetwork(#[source] AgentClientError),
    #[error("start the VM")]
    Hypervisor(#[from] HypervisorError),
    #[error("the VM did not come up: {reason}{console}")]
    Boot { reason: String, console: String },
    #[error("connect to the guest agent")]
    Agent(#[source] AgentClientError),
    /// The guest could not create the container; the message is the guest's.
    #[error("{0}")]
    Create(#[source] AgentClientError),
    #[error("bind the control socket")]
    Control(#[source] io::Error),
    #[error("terminal")]
    Terminal(#[from] TerminalError),
    #[error("share the container's files")]
    Share(#[from] crate::share::ShareError),
    #[error("share the container's files (shared_fs = \"none\")")]
    Image(#[from] crate::share::image::ImageError),
    #[error(transparent)]
    Sizing(#[from] crate::sizing::SizingError),
    #[error(transparent)]
    Override(#[from] crate::overrides::OverrideError),
    /// runc's words, then what failed.
    #[error("unable to apply cgroup configuration")]
    HostCgroup(#[from] crate::host_cgroup::HostCgroupError),
    #[error("set up stdio")]
    Stdio(#[source] io::Error),
    #[error("the guest's agent speaks protocol {guest}, runvm speaks {host}: rebuild the guest (make guest)")]
    AgentVersion { guest: u32, host: u32 },
    #[error("restore the checkpoint")]
    Checkpoint(#[from] crate::checkpoint::CheckpointError),
    #[error("restore the checkpoint: {0}")]
    Restore(String),
}

impl ShimError {
    /// Where creating failed, for `runvm create`.
    fn stage(&self) -> CreateStage {
        match self {
            ShimError::Config(_)
            | ShimError::State(_)
            | ShimError::Spec(_)
            | ShimError::ReadSpec { .. }
            | ShimError::Dir { .. }
            | ShimError::Sizing(_)
            | ShimError::Override(_)
            | ShimError::HostCgroup(_)
            | ShimError::Control(_)
            | ShimError::Checkpoint(_)
            | ShimError::Restore(_) => CreateStage::Prepare,
            ShimError::Virtiofsd(_) | ShimError::Share(_) | ShimError::Image(_) => {
                CreateStage::Share
            }
            ShimError::Hook(_) => CreateStage::Hooks,
            ShimError::Network(_) | ShimError::GuestNetwork(_) => CreateStage::Network,
            ShimError::Hypervisor(_) => CreateStage::Vm,
            ShimError::Boot { .. } | ShimError::Agent(_) | ShimError::AgentVersion { .. } => {
                CreateStage::Boot
            }
            ShimError::Create(AgentClientError::Agent(e)) => CreateStage::Guest(e.kind),
            ShimError::Create(_) => CreateStage::Guest(AgentErrorKind::System),
            ShimError::Terminal(_) | ShimError::Stdio(_) => CreateStage::Stdio,
        }
    }
}

pub struct ShimArgs {
    pub root: PathBuf,
    pub id: String,
    /// Write end of the pipe `runvm create` waits on.
    pub ready_fd: Option<RawFd>,
    /// Where to send the master of the container's terminal, if it has one.
    pub console_socket: Option<PathBuf>,
    pub log: Logger,
}

/// Run the shim; returns the process exit code.
pub fn main(args: ShimArgs) -> i32 {
    let ready = args.ready_fd.map(|fd| {
        // Children must not hold the pipe open.
        // SAFETY: fcntl on a descriptor number has no memory-safety effects.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        // SAFETY: `create` passed us this descriptor for our exclusive use.
        unsafe { File::from_raw_fd(fd) }
    });
    let fail = |ready, stage, message: String| {
        error!(args.log, "shim"; "error" => &message);
        report(ready, Ready::Failed(CreateFailure { stage, message }));
        1
    };
    // The host's namespaces, which the hooks run in, before the shim leaves
    // them.
    let host = match crate::hooks::Namespaces::of_this_process() {
        Ok(ns) => ns,
        Err(e) => {
            return fail(
                ready,
                CreateStage::Prepare,
                format!("open the host's namespaces: {e}"),
            )
        }
    };
    // Before any thread exists: the bind mounts that make up the share live
    // in a mount namespace of the shim's own, and the signals the shim
    // forwards are blocked in every thread (the runtime's threads inherit
    // the mask), so they all reach the forwarder.
    if let Err(e) = crate::share::enter_private_mount_namespace() {
        return fail(ready, CreateStage::Share, error_chain(&e));
    }
    // And the container's network namespace, which QEMU (and its taps)
    // inherit; the shim's pid is the state's, so /proc/<pid>/ns/net is the
    // container's network for the hooks and tools that look there; and its
    // uts, ipc and cgroup namespaces, for the same tools.
    let spec_file = StateStore::new(&args.root)
        .dir(&args.id)
        .join(crate::state::SPEC_FILE);
    let spec = match crate::spec::read_spec_file(&spec_file) {
        Ok(spec) => spec,
        Err(e) => return fail(ready, CreateStage::Prepare, error_chain(&e)),
    };
    let net_mode = match network::Mode::of(&spec).enter() {
        Ok(mode) => mode,
        Err(e) => return fail(ready, CreateStage::Network, error_chain(&e)),
    };
    // Into the container's host cgroup before anything is started, and
    // before a new cgroup namespace would make it the root.
    match StateStore::new(&args.root).load(&args.id) {
        Ok(state) => {
            if let Some(Err(e)) = state.host_cgroup.as_ref().map(|c| c.join()) {
                let e = ShimError::HostCgroup(e);
                return fail(ready, e.stage(), error_chain(&e));
            }
        }
        Err(e) => return fail(ready, CreateStage::Prepare, error_chain(&e)),
    }
    if let Err(e) = crate::namespaces::enter(&spec, &args.log) {
        return fail(ready, CreateStage::Prepare, error_chain(&e));
    }
    let signals = match crate::signal::Forwarder::new(&[]) {
        Ok(f) => f,
        Err(e) => return fail(ready, CreateStage::Prepare, format!("catch signals: {e}")),
    };
    // One thread: QEMU and virtiofsd are spawned from it with a parent-death
    // signal, which fires when the *thread* that forked them exits.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return fail(
                ready,
                CreateStage::Prepare,
                format!("start the runtime: {e}"),
            )
        }
    };
    let code = rt.block_on(run(args, ready, signals, net_mode, host));
    // Do not wait for blocking reads of stdin (a terminal that stays open).
    rt.shutdown_background();
    code
}

async fn run(
    args: ShimArgs,
    ready: Option<File>,
    signals: crate::signal::Forwarder,
    net_mode: network::Mode,
    host: crate::hooks::Namespaces,
) -> i32 {
    let log = args.log.clone();
    let signals = match signals.into_channel() {
        Ok(rx) => rx,
        Err(e) => {
            let message = format!("catch signals: {e}");
            error!(log, "shim"; "error" => &message);
            let stage = CreateStage::Prepare;
            report(ready, Ready::Failed(CreateFailure { stage, message }));
            return 1;
        }
    };
    let store = StateStore::new(&args.root);
    let mut shim = match Config::load()
        .map_err(ShimError::from)
        .and_then(|config| Shim::new(&args, store, config, net_mode, host))
    {
        Ok(s) => s,
        Err(e) => {
            let message = error_chain(&e);
            error!(log, "shim"; "error" => &message);
            report(
                ready,
                Ready::Failed(CreateFailure {
                    stage: e.stage(),
                    message,
                }),
            );
            return 1;
        }
    };
    // The filter is built before create is told, so one that cannot be
    // built fails the create, and loaded after, so the poststop hooks of a
    // create whose caller went away can still run.
    let restore_from = shim.store.load(&shim.id).ok().and_then(|s| s.restore_from);
    let set_up = match &restore_from {
        Some(image) => shim.restore_setup(image).await,
        None => shim.setup().await,
    };
    let setup = match set_up {
        Ok(()) if shim.config.runtime.shim_seccomp => crate::seccomp::shim_filter(true)
            .map(Some)
            .map_err(|e| (error_chain(&e), CreateStage::Prepare)),
        Ok(()) => Ok(None),
        Err(e) => Err((shim.describe_failure(&e), e.stage())),
    };
    let filter = match setup {
        Ok(filter) => filter,
        Err((message, stage)) => {
            error!(log, "create failed"; "error" => &message);
            shim.abandon().await;
            report(ready, Ready::Failed(CreateFailure { stage, message }));
            return 1;
        }
    };
    let pid = std::process::id() as i32;
    if !report(ready, Ready::Created { shim_pid: pid }) {
        warn!(
            log,
            "runvm create went away before the container was created; stopping"
        );
        shim.abandon().await;
        return 1;
    }
    if let Some(Err(e)) = filter.as_ref().map(crate::seccomp::load) {
        error!(log, "stopping the container"; "error" => error_chain(&e));
        shim.abandon().await;
        return 1;
    }
    shim.serve(signals).await
}

/// Send the outcome to `runvm create`; false if it is gone.
fn report(ready: Option<File>, msg: Ready) -> bool {
    match ready {
        Some(mut f) => runvm_protocol::send(&mut f, &msg).is_ok() && f.flush().is_ok(),
        None => true,
    }
}

/// Resolves with the container's exit status, from the agent.
type ExitWaiter = oneshot::Receiver<Result<ExitStatus, AgentClientError>>;

struct Shim {
    id: String,
    /// The id the guest knows the container by: `id`, unless it was
    /// restored under another than it was checkpointed with.
    guest_id: String,
    /// The container has a terminal.
    terminal: bool,
    log: Logger,
    store: StateStore,
    dir: PathBuf,
    sockets: SocketDir,
    config: Config,
    status: ContainerStatus,
    /// What a paused container was before (created or running), and is
    /// again once resumed.
    paused_from: ContainerStatus,
    net_mode: network::Mode,
    /// The host's namespaces, for the hooks.
    host: crate::hooks::Namespaces,
    /// The spec's hooks, once it has been read.
    hooks: Option<oci_spec::runtime::Hooks>,
    /// The NICs, once read from the namespace.
    network: Option<Network>,
    vm: Option<Box<dyn Hypervisor>>,
    virtiofsd: Option<Virtiofsd>,
    /// How the guest finds the share (virtio-fs, or a disk image).
    share_source: runvm_protocol::ShareSource,
    agent: Option<Arc<AgentClient>>,
    outputs: Vec<JoinHandle<()>>,
    /// The init's stdin on the host, once attached (kept for the sessions
    /// after a checkpoint).
    host_stdin: Option<stdio::SharedStdin>,
    exit: Option<ExitWaiter>,
    control: Option<UnixListener>,
    console_socket: Option<PathBuf>,
    /// The host tty whose window size the container's terminal follows.
    resize_source: Option<OwnedFd>,
    stand_ins: StandIns,
    exec_tasks: Vec<JoinHandle<()>>,
    /// The container's host cgroup, the limits it follows and the VM's
    /// memory they are sized from.
    host_cgroup: Option<crate::host_cgroup::Record>,
    container_limits: crate::host_cgroup::Limits,
    vm_memory_mib: u32,
    /// The VM is a clone that got memory beyond its template's.
    grown_at_create: bool,
}

impl Shim {
    fn new(
        args: &ShimArgs,
        store: StateStore,
        config: Config,
        net_mode: network::Mode,
        host: crate::hooks::Namespaces,
    ) -> Result<Self, ShimError> {
        let dir = store.dir(&args.id);
        let sockets = SocketDir::open(&dir).map_err(|source| ShimError::Dir {
            path: dir.clone(),
            source,
        })?;
        let state = store.load(&args.id)?;
        let shim = Shim {
            id: args.id.clone(),
            guest_id: state.guest_id.clone().unwrap_or_else(|| args.id.clone()),
            terminal: state.terminal,
            log: args.log.clone(),
            config,
            store,
            dir,
            sockets,
            status: ContainerStatus::Creating,
            paused_from: ContainerStatus::Running,
            net_mode,
            host,
            hooks: None,
            network: None,
            vm: None,
            virtiofsd: None,
            share_source: Default::default(),
            agent: None,
            outputs: Vec::new(),
            host_stdin: None,
            exit: None,
            control: None,
            console_socket: args.console_socket.clone(),
            resize_source: None,
            stand_ins: StandIns::default(),
            exec_tasks: Vec::new(),
            host_cgroup: None,
            container_limits: Default::default(),
            vm_memory_mib: 0,
            grown_at_create: false,
        };
        let me = ProcessIdentity::of(std::process::id() as i32);
        shim.record(|s| s.shim = me)?;
        Ok(shim)
    }

    /// Update state.json under the container's lock.
    fn record(&self, change: impl FnOnce(&mut State)) -> Result<(), StateError> {
        let _lock = self.store.lock(&self.id)?;
        let mut state = self.store.load(&self.id)?;
        change(&mut state);
        self.store.save(&state)
    }

    /// Move to `status`, in memory and in state.json.
    fn set_status(&mut self, status: ContainerStatus) -> Result<(), StateError> {
        self.status = status;
        self.record(|s| s.status = status)
    }
}
