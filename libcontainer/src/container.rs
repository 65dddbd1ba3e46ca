//! The lifecycle verbs as the command line uses them. Each runs for a moment
//! in the `runvm` process; anything that lasts belongs to the shim.

use std::collections::HashMap;
use std::ffi::{CString, OsString};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::SecondsFormat;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};
use serde::Serialize;
use slog::{debug, warn, Logger};

use crate::config::{Config, ConfigError};
use crate::exec::ExecOptions;
use crate::id::{validate_id, IdError};
use crate::procinfo::ProcessIdentity;
use crate::shim::control::{self, ControlError, ShimReply, ShimRequest};
use crate::shim::Ready;
use crate::spec::{Bundle, SpecError};
use crate::state::{write_atomic, State, StateError, StateStore, SPEC_FILE};
use crate::status::ContainerStatus;
use runvm_protocol::{CgroupStats, GuestProcess};

/// The hidden command-line verb that runs the shim.
pub const SHIM_VERB: &str = "__shim";

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error(transparent)]
    Id(#[from] IdError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("runtime configuration")]
    Config(#[from] ConfigError),
    #[error("cannot start a container that has stopped")]
    StartStopped,
    #[error("cannot start an already running container")]
    StartRunning,
    /// runc's words for the other states ("paused", "creating").
    #[error("cannot start a container in the {0} state")]
    StartInState(ContainerStatus),
    #[error("container not running")]
    NotRunning,
    #[error("cannot delete container {id} that is not stopped: {status}")]
    DeleteNotStopped { id: String, status: ContainerStatus },
    #[error("cannot allocate tty if runvm will detach without setting console socket")]
    TerminalWithoutConsole,
    #[error("cannot use console socket if runvm will not detach or allocate tty")]
    ConsoleWithoutTerminal,
    #[error(transparent)]
    Terminal(#[from] crate::terminal::TerminalError),
    #[error(transparent)]
    Exec(#[from] crate::exec::ExecError),
    #[error("cannot exec in a stopped container")]
    ExecStopped,
    #[error("cannot exec in a container that is still being created")]
    ExecCreating,
    #[error("cannot exec in a paused container (use --ignore-paused to override)")]
    ExecPaused,
    #[error("container not paused")]
    NotPaused,
    #[error("read {path}")]
    ReadSpec {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parse {path}")]
    ParseSpec {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("unexpected answer from the shim: {0}")]
    Unexpected(String),
    #[error("pid file directory {path} does not exist")]
    PidFileDir { path: PathBuf },
    #[error("write pid file")]
    PidFile(#[source] StateError),
    #[error("start the shim")]
    Spawn(#[source] nix::Error),
    /// The shim's own account of why creation failed.
    #[error("{message}")]
    CreateFailed { message: String },
    #[error("the shim exited before the container was created (see {log})")]
    ShimVanished { log: PathBuf },
    #[error("the shim did not answer within {0:?}")]
    ShimTimeout(Duration),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("wait for the container")]
    Wait(#[source] nix::Error),
    #[error("the shim {pid} did not exit within {timeout:?}")]
    ShimStuck { pid: i32, timeout: Duration },
}

/// The OCI state of a container, as `state` and `list --format json` print it
/// (runc's field names and order).
#[derive(Serialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub struct OciState {
    pub oci_version: String,
    pub id: String,
    pub pid: i32,
    pub status: ContainerStatus,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub created: String,
    pub owner: String,
    #[serde(skip_serializing_if = "HashMap::is_empty")]
    pub annotations: HashMap<String, String>,
}

/// Options of `create` and `run`.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    pub id: String,
    pub bundle: PathBuf,
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
    /// Global flags the shim should be started with (--log, --debug...).
    pub shim_args: Vec<OsString>,
}

pub struct Runtime {
    store: StateStore,
    config: Config,
    log: Logger,
}

fn owner_name(uid: u32) -> String {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| uid.to_string())
}

impl Runtime {
    pub fn new(root: &Path, log: Logger) -> Result<Self, ContainerError> {
        Ok(Runtime {
            store: StateStore::new(root),
            config: Config::load()?,
            log,
        })
    }

    pub fn store(&self) -> &StateStore {
        &self.store
    }

    fn load(&self, id: &str) -> Result<State, ContainerError> {
        validate_id(id)?;
        Ok(self.store.load(id)?)
    }

    /// Boot a VM and create the container in it; returns when the container is
    /// created (or creation failed and nothing is left behind).
    pub fn create(&self, opts: &CreateOptions) -> Result<i32, ContainerError> {
        let shim = self.create_with(opts, true)?;
        Ok(shim.as_raw())
    }

    fn create_with(&self, opts: &CreateOptions, detach: bool) -> Result<Pid, ContainerError> {
        validate_id(&opts.id)?;
        let bundle = Bundle::load(&opts.bundle)?;
        if bundle.terminal() && opts.console_socket.is_none() && detach {
            return Err(ContainerError::TerminalWithoutConsole);
        }
        if opts.console_socket.is_some() && (!detach || !bundle.terminal()) {
            return Err(ContainerError::ConsoleWithoutTerminal);
        }
        if let Some(path) = &opts.console_socket {
            crate::terminal::check_console_socket(path)?;
        }
        if let Some(pid_file) = &opts.pid_file {
            check_pid_file_dir(pid_file)?;
        }
        let dir = self.store.create_dir(&opts.id)?;
        match self.create_in(&dir, &bundle, opts, detach) {
            Ok(pid) => Ok(pid),
            Err(e) => {
                self.discard(&opts.id);
                Err(e)
            }
        }
    }

    fn create_in(
        &self,
        dir: &Path,
        bundle: &Bundle,
        opts: &CreateOptions,
        detach: bool,
    ) -> Result<Pid, ContainerError> {
        {
            // Held until the state file exists, so that a concurrent delete
            // does not take the new directory for one a killed create left.
            let _lock = self.store.lock(&opts.id)?;
            let spec = serde_json::to_vec_pretty(&bundle.raw).expect("spec serializes");
            write_atomic(&dir.join(SPEC_FILE), &spec)?;
            let state = State {
                annotations: bundle.spec.annotations().clone().unwrap_or_default(),
                terminal: bundle.terminal(),
                ..State::creating(&opts.id, bundle.dir.clone(), bundle.rootfs.clone())
            };
            self.store.save(&state)?;
        }
        let mut shim_args = opts.shim_args.clone();
        if let Some(console) = &opts.console_socket {
            shim_args.push("--console-socket".into());
            shim_args.push(console.clone().into_os_string());
        }
        let (shim_pid, ready) = self.spawn_shim(&opts.id, &shim_args, detach)?;
        let timeout = self.config.timeouts.boot() + self.config.timeouts.request() * 2;
        match read_ready(ready, timeout)? {
            Some(Ready::Created { shim_pid: reported }) => {
                if let Some(pid_file) = &opts.pid_file {
                    // Last, and atomically: containerd takes the pid file's
                    // appearance as "create finished". No trailing newline:
                    // containerd parses it with Atoi.
                    write_atomic(pid_file, reported.to_string().as_bytes())
                        .map_err(ContainerError::PidFile)?;
                }
                Ok(shim_pid.unwrap_or(Pid::from_raw(reported)))
            }
            Some(Ready::Failed { message }) => Err(ContainerError::CreateFailed { message }),
            None => Err(ContainerError::ShimVanished {
                log: dir.join("shim.log"),
            }),
        }
    }

    /// Start the shim. Detached: double fork, so the shim is reparented to
    /// the caller's subreaper (containerd, conmon) or init when we exit.
    /// Attached (`run` in the foreground): the shim is our child.
    fn spawn_shim(
        &self,
        id: &str,
        shim_args: &[OsString],
        detach: bool,
    ) -> Result<(Option<Pid>, File), ContainerError> {
        let (r, w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(ContainerError::Spawn)?;
        let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
        let cstr = |s: &[u8]| CString::new(s).expect("no NUL in arguments");
        let mut argv: Vec<CString> = vec![cstr(exe.as_os_str().as_bytes())];
        argv.push(cstr(b"--root"));
        argv.push(cstr(self.store.root().as_os_str().as_bytes()));
        // Global flags go before the verb, the verb's own after it.
        let verb_at = shim_args
            .iter()
            .position(|a| a == "--console-socket")
            .unwrap_or(shim_args.len());
        argv.extend(shim_args[..verb_at].iter().map(|a| cstr(a.as_bytes())));
        argv.push(cstr(SHIM_VERB.as_bytes()));
        argv.extend(shim_args[verb_at..].iter().map(|a| cstr(a.as_bytes())));
        argv.push(cstr(b"--ready-fd"));
        argv.push(cstr(w.as_raw_fd().to_string().as_bytes()));
        argv.push(cstr(id.as_bytes()));
        let exe_c = argv[0].clone();
        let wfd = w.as_raw_fd();
        // SAFETY: this process is single-threaded (the CLI never starts
        // threads before this point), so the child may run ordinary code.
        match unsafe { fork() }.map_err(ContainerError::Spawn)? {
            ForkResult::Child => {
                drop(r);
                let _ = nix::unistd::setsid();
                if detach {
                    // SAFETY: as above, still single-threaded.
                    match unsafe { fork() } {
                        Ok(ForkResult::Child) => exec_shim(&exe_c, &argv, wfd),
                        _ => std::process::exit(0),
                    }
                }
                exec_shim(&exe_c, &argv, wfd)
            }
            ForkResult::Parent { child } => {
                drop(w);
                if detach {
                    let _ = waitpid(child, None);
                    Ok((None, File::from(r)))
                } else {
                    Ok((Some(child), File::from(r)))
                }
            }
        }
    }

    /// Remove a container whose creation failed, and anything it started.
    fn discard(&self, id: &str) {
        if let Ok(state) = self.store.load(id) {
            for p in state.processes() {
                p.kill_and_wait(Duration::from_secs(5));
            }
        }
        if let Ok(_lock) = self.store.lock(id) {
            if let Err(e) = self.store.remove(id) {
                warn!(self.log, "remove the state of a failed create"; "error" => crate::error_chain(&e));
            }
        }
    }

    pub fn start(&self, id: &str) -> Result<(), ContainerError> {
        let state = self.load(id)?;
        if let Some(refusal) = start_refusal(state.refreshed_status()) {
            return Err(refusal);
        }
        // Starting may wait on a busy guest: it gets the boot timeout.
        let timeout = self.config.timeouts.boot() + Duration::from_secs(5);
        match control::call(&self.store.dir(id), &ShimRequest::Start, timeout) {
            Ok(_) => Ok(()),
            Err(e) if e.shim_gone() => Err(ContainerError::StartStopped),
            Err(e) => Err(e.into()),
        }
    }

    pub fn state(&self, id: &str) -> Result<OciState, ContainerError> {
        let state = self.load(id)?;
        Ok(oci_state(&state))
    }

    pub fn list(&self) -> Result<Vec<OciState>, ContainerError> {
        let mut out = Vec::new();
        for id in self.store.list()? {
            match self.store.load(&id) {
                Ok(state) => out.push(oci_state(&state)),
                Err(e) => {
                    debug!(self.log, "skip container"; "id" => &id, "error" => crate::error_chain(&e))
                }
            }
        }
        Ok(out)
    }

    pub fn kill(&self, id: &str, signal: i32, all: bool) -> Result<(), ContainerError> {
        let state = self.load(id)?;
        let status = state.refreshed_status();
        if !status.can_kill() {
            return if all && status == ContainerStatus::Stopped {
                Ok(())
            } else {
                Err(ContainerError::NotRunning)
            };
        }
        match control::call(
            &self.store.dir(id),
            &ShimRequest::Kill { signal, all },
            self.shim_timeout(),
        ) {
            Ok(_) => Ok(()),
            Err(e) if e.shim_gone() => Err(ContainerError::NotRunning),
            Err(e) => Err(e.into()),
        }
    }

    /// Remove a container. A running or paused one needs `force` (SIGKILL);
    /// a created one is killed, as runc does.
    pub fn delete(&self, id: &str, force: bool) -> Result<(), ContainerError> {
        validate_id(id)?;
        let state = match self.store.load(id) {
            Ok(state) => state,
            Err(StateError::Corrupt { .. } | StateError::Read { .. }) if force => {
                return self.delete_unreadable(id)
            }
            Err(StateError::NotExist { .. }) => {
                // As runc: a directory without a state file is what a create
                // that was killed early leaves (no process was started yet);
                // remove it. With --force that is a successful delete. A
                // container that is not there at all stays an error, even
                // with --force, so that of racing deletes exactly one wins.
                let removed = self.remove_stateless_dir(id);
                return if force && removed {
                    Ok(())
                } else {
                    Err(StateError::NotExist { id: id.to_string() }.into())
                };
            }
            Err(e) => return Err(e.into()),
        };
        let status = state.refreshed_status();
        if !force && !status.can_delete() {
            return Err(ContainerError::DeleteNotStopped {
                id: id.to_string(),
                status,
            });
        }
        let stop = self.config.timeouts.stop() + Duration::from_secs(5);
        if let Some(shim) = state.shim.filter(|s| s.is_alive()) {
            match status {
                // Still booting: nothing to ask it yet.
                ContainerStatus::Creating => {
                    shim.kill_and_wait(stop);
                }
                _ => {
                    if status != ContainerStatus::Stopped {
                        // The shim kills the container, stops its VM and exits.
                        let _ = control::call(
                            &self.store.dir(id),
                            &ShimRequest::Kill {
                                signal: libc::SIGKILL,
                                all: false,
                            },
                            self.shim_timeout(),
                        );
                    }
                    // A stopped container's shim may still be stopping its
                    // VM: let it finish, and kill it only if it does not.
                    if !shim.wait_gone(stop) {
                        shim.kill_and_wait(stop);
                    }
                }
            }
            if shim.is_alive() {
                return Err(ContainerError::ShimStuck {
                    pid: shim.pid,
                    timeout: stop,
                });
            }
        }
        let _lock = self.store.lock(id)?;
        // The shim stops its VM and virtiofsd; if it was killed, they got
        // their parent-death signal. Make sure either way.
        let state = self.store.load(id).unwrap_or(state);
        for p in state.processes() {
            p.kill_and_wait(stop);
        }
        self.store.remove(id)?;
        Ok(())
    }

    /// Remove `<root>/<id>` if it exists without a state file; whether it
    /// did.
    fn remove_stateless_dir(&self, id: &str) -> bool {
        let Ok(_lock) = self.store.lock(id) else {
            return false;
        };
        if self.store.exists(id) {
            return false;
        }
        match self.store.remove(id) {
            Ok(()) => true,
            Err(e) => {
                warn!(self.log, "remove a directory without state"; "error" => crate::error_chain(&e));
                false
            }
        }
    }

    /// `delete --force` of a container whose state file cannot be read: the
    /// shim, QEMU and virtiofsd all run in the container's directory, which
    /// identifies them without the file.
    fn delete_unreadable(&self, id: &str) -> Result<(), ContainerError> {
        let dir = self.store.dir(id);
        let stop = self.config.timeouts.stop() + Duration::from_secs(5);
        for p in ProcessIdentity::working_in(&dir) {
            warn!(self.log, "killing a process of a container with unreadable state"; "pid" => p.pid);
            p.kill_and_wait(stop);
        }
        let _lock = self.store.lock(id)?;
        self.store.remove(id)?;
        Ok(())
    }

    /// `run --detach`: create and start; a container that fails to start is
    /// deleted again.
    pub fn run_detached(&self, opts: &CreateOptions) -> Result<(), ContainerError> {
        self.create(opts)?;
        if let Err(e) = self.start(&opts.id) {
            let _ = self.delete(&opts.id, true);
            return Err(e);
        }
        Ok(())
    }

    /// `run`: create with the shim as our child, start, relay signals to it,
    /// and return its exit code once the container has stopped. The
    /// container is deleted afterwards unless `keep`.
    pub fn run(&self, opts: &CreateOptions, keep: bool) -> Result<i32, ContainerError> {
        // Block the signals we forward before the shim exists, so none is
        // lost; the shim starts with an empty mask (see exec_shim).
        let mut mask = SigSet::empty();
        for sig in crate::signal::forwardable() {
            if let Ok(s) = Signal::try_from(sig) {
                mask.add(s);
            }
        }
        mask.add(Signal::SIGCHLD);
        mask.thread_block().map_err(ContainerError::Wait)?;
        // With a terminal and no console socket the container uses our own
        // terminal, raw while it runs, as under runc.
        let _raw = match Bundle::load(&opts.bundle) {
            Ok(b) if b.terminal() && opts.console_socket.is_none() => {
                crate::terminal::RawMode::enter(std::io::stdin().as_fd())
            }
            _ => None,
        };
        let shim = self.create_with(opts, false)?;
        if let Err(e) = self.start(&opts.id) {
            let _ = self.delete(&opts.id, true);
            let _ = waitpid(shim, None);
            return Err(e);
        }
        let code = loop {
            match waitpid(shim, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, code)) => break code,
                Ok(WaitStatus::Signaled(_, sig, _)) => break 128 + sig as i32,
                Ok(_) => {}
                Err(e) => return Err(ContainerError::Wait(e)),
            }
            match mask.wait() {
                Ok(Signal::SIGCHLD) | Err(_) => {}
                Ok(sig) => {
                    let _ = kill(shim, sig);
                }
            }
        };
        if !keep {
            self.delete(&opts.id, true)?;
        }
        Ok(code)
    }
}

impl Runtime {
    /// How long a verb waits for the shim: longer than the shim waits for the
    /// agent, so the agent's timeout is the error the user sees.
    fn shim_timeout(&self) -> Duration {
        self.config.timeouts.request() + Duration::from_secs(5)
    }

    fn live(&self, id: &str) -> Result<State, ContainerError> {
        let state = self.load(id)?;
        if state.refreshed_status() == ContainerStatus::Stopped {
            return Err(ContainerError::NotRunning);
        }
        Ok(state)
    }

    /// Ask a live container's shim.
    fn ask(&self, id: &str, req: &ShimRequest) -> Result<ShimReply, ContainerError> {
        match control::call(&self.store.dir(id), req, self.shim_timeout()) {
            Ok(reply) => Ok(reply),
            Err(e) if e.shim_gone() => Err(ContainerError::NotRunning),
            Err(e) => Err(e.into()),
        }
    }

    /// Run a process in the container. In the foreground, returns its exit
    /// code; detached, returns once it runs (0).
    pub fn exec(&self, opts: &ExecOptions) -> Result<i32, ContainerError> {
        let state = self.load(&opts.id)?;
        match state.refreshed_status() {
            ContainerStatus::Stopped => return Err(ContainerError::ExecStopped),
            ContainerStatus::Creating => return Err(ContainerError::ExecCreating),
            ContainerStatus::Paused if !opts.ignore_paused => {
                return Err(ContainerError::ExecPaused)
            }
            _ => {}
        }
        if !opts.detach && opts.console_socket.is_some() {
            return Err(crate::exec::ExecError::ConsoleWithoutTerminal.into());
        }
        if let Some(pid_file) = &opts.pid_file {
            check_pid_file_dir(pid_file)?;
        }
        let dir = self.store.dir(&opts.id);
        let spec_path = dir.join(SPEC_FILE);
        let data = std::fs::read(&spec_path).map_err(|source| ContainerError::ReadSpec {
            path: spec_path.clone(),
            source,
        })?;
        let spec: serde_json::Value =
            serde_json::from_slice(&data).map_err(|source| ContainerError::ParseSpec {
                path: spec_path.clone(),
                source,
            })?;
        let process = crate::exec::build_process(opts, &spec["process"])?;
        let result = if opts.detach {
            crate::exec::run_detached(
                &dir,
                &process,
                opts.console_socket.as_deref(),
                opts.pid_file.as_deref(),
                self.shim_timeout(),
            )
            .map(|_| 0)
        } else {
            crate::exec::run_attached(
                &dir,
                &process,
                opts.pid_file.as_deref(),
                self.shim_timeout(),
            )
        };
        result.map_err(|e| match e {
            crate::exec::ExecError::Control(c) if c.shim_gone() => ContainerError::ExecStopped,
            e => e.into(),
        })
    }

    /// The host pids standing for the container (the shim and exec
    /// stand-ins) and its processes in the guest.
    pub fn ps(&self, id: &str) -> Result<(Vec<i32>, Vec<GuestProcess>), ContainerError> {
        self.live(id)?;
        match self.ask(id, &ShimRequest::Ps)? {
            ShimReply::Ps {
                host_pids,
                processes,
            } => Ok((host_pids, processes)),
            other => Err(ContainerError::Unexpected(format!("{other:?}"))),
        }
    }

    pub fn pause(&self, id: &str) -> Result<(), ContainerError> {
        let state = self.live(id)?;
        if !state.refreshed_status().can_pause() {
            return Err(ContainerError::NotRunning);
        }
        self.ask(id, &ShimRequest::Pause).map(|_| ())
    }

    pub fn resume(&self, id: &str) -> Result<(), ContainerError> {
        let state = self.load(id)?;
        if !state.refreshed_status().can_resume() {
            return Err(ContainerError::NotPaused);
        }
        self.ask(id, &ShimRequest::Resume).map(|_| ())
    }

    pub fn stats(&self, id: &str) -> Result<CgroupStats, ContainerError> {
        self.live(id)?;
        match self.ask(id, &ShimRequest::Stats)? {
            ShimReply::Stats(s) => Ok(s),
            other => Err(ContainerError::Unexpected(format!("{other:?}"))),
        }
    }

    /// New limits for the container's cgroup (an OCI `linux.resources`).
    pub fn update(&self, id: &str, resources: serde_json::Value) -> Result<(), ContainerError> {
        self.live(id)?;
        self.ask(id, &ShimRequest::Update { resources }).map(|_| ())
    }

    pub fn features(&self) -> serde_json::Value {
        crate::features::features(&self.config)
    }
}

/// A pid file can only be written where its directory exists: check before
/// anything is started.
fn check_pid_file_dir(pid_file: &Path) -> Result<(), ContainerError> {
    match pid_file.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) if !parent.is_dir() => Err(ContainerError::PidFileDir {
            path: parent.to_path_buf(),
        }),
        _ => Ok(()),
    }
}

/// Why a container in `status` cannot be started, in runc's words; `None`
/// if it can.
pub fn start_refusal(status: ContainerStatus) -> Option<ContainerError> {
    if status.can_start() {
        return None;
    }
    Some(match status {
        ContainerStatus::Stopped => ContainerError::StartStopped,
        ContainerStatus::Running => ContainerError::StartRunning,
        other => ContainerError::StartInState(other),
    })
}

fn oci_state(state: &State) -> OciState {
    let status = state.refreshed_status();
    let pid = match (status, state.shim) {
        (ContainerStatus::Stopped, _) | (_, None) => 0,
        (_, Some(shim)) => shim.pid,
    };
    OciState {
        oci_version: state.oci_version.clone(),
        id: state.id.clone(),
        pid,
        status,
        bundle: state.bundle.clone(),
        rootfs: state.rootfs.clone(),
        created: state.created.to_rfc3339_opts(SecondsFormat::Nanos, true),
        owner: owner_name(state.owner_uid),
        annotations: state.annotations.clone(),
    }
}

/// In the forked child: give the shim the ready pipe and a clean signal mask,
/// and exec it. Never returns.
fn exec_shim(exe: &CString, argv: &[CString], ready_fd: i32) -> ! {
    // SAFETY: plain syscalls on our own descriptor and signal mask.
    unsafe {
        libc::fcntl(ready_fd, libc::F_SETFD, 0);
    }
    let _ = SigSet::empty().thread_set_mask();
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    let _ = nix::unistd::execv(exe, argv);
    // SAFETY: _exit is always safe; no destructors may run in this child.
    unsafe { libc::_exit(127) }
}

/// Wait for the shim's report on the ready pipe. `None`: it exited without
/// one.
fn read_ready(ready: File, timeout: Duration) -> Result<Option<Ready>, ContainerError> {
    let owned: OwnedFd = ready.into();
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    let mut fds = [PollFd::new(owned.as_fd(), PollFlags::POLLIN)];
    loop {
        match poll(
            &mut fds,
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
        ) {
            Ok(0) => return Err(ContainerError::ShimTimeout(timeout)),
            Ok(_) => break,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(ContainerError::Wait(e)),
        }
    }
    let mut file = File::from(owned);
    match runvm_protocol::recv::<_, Ready>(&mut file) {
        Ok(r) => Ok(Some(r)),
        Err(e) if e.is_disconnect() => Ok(None),
        Err(_) => Ok(None),
    }
}
