//! The per-container shim.
//!
//! `runvm create` starts it (double-forked, so the caller's subreaper adopts
//! it) and its pid goes into `--pid-file`: containerd and conmon reap it and
//! take its exit status as the container's. It owns everything the container
//! needs on the host: virtiofsd serving the rootfs, QEMU running the VM, the
//! connection to the agent. It relays the stdio it inherited from `create`,
//! forwards every catchable signal it receives into the guest, answers the
//! other verbs on its control socket, and exits with the container's exit
//! code once the container has stopped.

pub mod control;
mod exec;
mod requests;
mod stdio;

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::{AsFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use runvm_protocol::{CreateContainer, ExitStatus, ProcessRef, Reply, Request, SHARE_TAG};
use serde::{Deserialize, Serialize};
use slog::{error, info, warn, Logger};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::agent::{AgentClient, AgentClientError};
use crate::config::{Config, ConfigError};
use crate::error_chain;
use crate::hypervisor::qemu::Qemu;
use crate::hypervisor::{
    resolve_accel, FsShare, GuestMemory, Hypervisor, HypervisorError, VmConfig,
};
use crate::procinfo::ProcessIdentity;
use crate::sockdir::SocketDir;
use crate::spec::{Bundle, SpecError};
use crate::state::{State, StateError, StateStore, SPEC_FILE};
use crate::status::ContainerStatus;
use crate::terminal::{self, TerminalError};
use crate::virtiofsd::{Share, Virtiofsd, VirtiofsdError};
use control::CONTROL_SOCKET;
use exec::StandIns;
use stdio::Local;

const SHARE_SOCKET: &str = "share.sock";
/// After the container exits, how long its output may take to drain.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Exit code of the shim when the container ended without one (its VM died).
pub const VM_LOST_EXIT_CODE: i32 = 255;

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
    #[error("template")]
    Factory(#[from] crate::factory::FactoryError),
    #[error(transparent)]
    Sizing(#[from] crate::sizing::SizingError),
    #[error("set up stdio")]
    Stdio(#[source] io::Error),
    #[error("the guest's agent speaks protocol {guest}, runvm speaks {host}: rebuild the guest (make guest)")]
    AgentVersion { guest: u32, host: u32 },
}

/// What the shim tells `runvm create` through the ready pipe.
#[derive(Serialize, Deserialize, Debug)]
pub enum Ready {
    Created { shim_pid: i32 },
    Failed { message: String },
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
    // Before any thread exists: the bind mounts that make up the share live
    // in a mount namespace of the shim's own.
    if let Err(e) = crate::share::enter_private_mount_namespace() {
        error!(args.log, "shim"; "error" => error_chain(&e));
        if let Some(fd) = args.ready_fd {
            // SAFETY: `create` passed us this descriptor for our exclusive use.
            let ready = unsafe { File::from_raw_fd(fd) };
            report(
                Some(ready),
                Ready::Failed {
                    message: error_chain(&e),
                },
            );
        }
        return 1;
    }
    // One thread: QEMU and virtiofsd are spawned from it with a parent-death
    // signal, which fires when the *thread* that forked them exits.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!(args.log, "start the shim's runtime"; "error" => %e);
            return 1;
        }
    };
    let code = rt.block_on(run(args));
    // Do not wait for blocking reads of stdin (a terminal that stays open).
    rt.shutdown_background();
    code
}

async fn run(args: ShimArgs) -> i32 {
    let log = args.log.clone();
    let ready = args.ready_fd.map(|fd| {
        // Children must not hold the pipe open.
        // SAFETY: fcntl on a descriptor number has no memory-safety effects.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        // SAFETY: `create` passed us this descriptor for our exclusive use.
        unsafe { File::from_raw_fd(fd) }
    });
    let signals = forward_signals(&log);
    let store = StateStore::new(&args.root);
    let mut shim = match Shim::new(&args, store) {
        Ok(s) => s,
        Err(e) => {
            error!(log, "shim"; "error" => error_chain(&e));
            report(
                ready,
                Ready::Failed {
                    message: error_chain(&e),
                },
            );
            return 1;
        }
    };
    if let Err(e) = shim.setup().await {
        let message = shim.describe_failure(&e);
        error!(log, "create failed"; "error" => &message);
        shim.teardown().await;
        shim.record_stopped(None);
        report(ready, Ready::Failed { message });
        return 1;
    }
    let pid = std::process::id() as i32;
    if !report(ready, Ready::Created { shim_pid: pid }) {
        warn!(
            log,
            "runvm create went away before the container was created; stopping"
        );
        shim.teardown().await;
        shim.record_stopped(None);
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

/// Catch every catchable signal and pass its number on.
fn forward_signals(log: &Logger) -> mpsc::UnboundedReceiver<i32> {
    use tokio::signal::unix::{signal, SignalKind};
    let (tx, rx) = mpsc::unbounded_channel();
    for sig in crate::signal::forwardable() {
        // tokio refuses a few (SIGSEGV, SIGILL, SIGFPE...): they are faults
        // of the shim itself, not requests to forward.
        let Ok(mut stream) = signal(SignalKind::from_raw(sig)) else {
            continue;
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                if tx.send(sig).is_err() {
                    break;
                }
            }
        });
    }
    slog::debug!(log, "forwarding signals");
    rx
}

/// How the serve loop ended.
enum End {
    Exited(ExitStatus),
    VmLost(String),
    SessionLost(String),
}

struct Shim {
    id: String,
    log: Logger,
    store: StateStore,
    dir: PathBuf,
    sockets: SocketDir,
    config: Config,
    status: ContainerStatus,
    /// What a paused container was before (created or running), and is
    /// again once resumed.
    paused_from: ContainerStatus,
    vm: Option<Box<dyn Hypervisor>>,
    virtiofsd: Option<Virtiofsd>,
    agent: Option<Arc<AgentClient>>,
    outputs: Vec<tokio::task::JoinHandle<()>>,
    exit: Option<oneshot::Receiver<Result<ExitStatus, AgentClientError>>>,
    control: Option<UnixListener>,
    console_socket: Option<PathBuf>,
    /// The host tty whose window size the container's terminal follows.
    resize_source: Option<OwnedFd>,
    stand_ins: StandIns,
    exec_tasks: Vec<JoinHandle<()>>,
}

impl Shim {
    fn new(args: &ShimArgs, store: StateStore) -> Result<Self, ShimError> {
        let dir = store.dir(&args.id);
        let sockets = SocketDir::open(&dir).map_err(|source| ShimError::Dir {
            path: dir.clone(),
            source,
        })?;
        // QEMU and virtiofsd inherit this working directory and name their
        // sockets relative to it.
        std::env::set_current_dir(&dir).map_err(|source| ShimError::Dir {
            path: dir.clone(),
            source,
        })?;
        let shim = Shim {
            id: args.id.clone(),
            log: args.log.clone(),
            config: Config::load()?,
            store,
            dir,
            sockets,
            status: ContainerStatus::Creating,
            paused_from: ContainerStatus::Running,
            vm: None,
            virtiofsd: None,
            agent: None,
            outputs: Vec::new(),
            exit: None,
            control: None,
            console_socket: args.console_socket.clone(),
            resize_source: None,
            stand_ins: StandIns::default(),
            exec_tasks: Vec::new(),
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

    fn record_stopped(&mut self, exit_code: Option<i32>) {
        self.status = ContainerStatus::Stopped;
        if let Err(e) = self.record(|s| {
            s.status = ContainerStatus::Stopped;
            s.exit_code = exit_code;
        }) {
            // The directory is gone when `delete` got there first.
            if !matches!(e, StateError::NotExist { .. }) {
                warn!(self.log, "record the stopped state"; "error" => error_chain(&e));
            }
        }
    }

    fn console_tail(&self) -> String {
        let text = fs::read_to_string(self.dir.join("console.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let tail = &lines[lines.len().saturating_sub(5)..];
        if tail.is_empty() {
            String::new()
        } else {
            format!("; guest console: {}", tail.join(" | "))
        }
    }

    fn describe_failure(&self, e: &ShimError) -> String {
        let mut msg = error_chain(e);
        if let ShimError::Agent(_) = e {
            msg.push_str(&self.console_tail());
        }
        msg
    }

    async fn setup(&mut self) -> Result<(), ShimError> {
        let t0 = Instant::now();
        let state = self.store.load(&self.id)?;
        let spec_path = self.dir.join(SPEC_FILE);
        let data = fs::read(&spec_path).map_err(|source| ShimError::ReadSpec {
            path: spec_path.clone(),
            source,
        })?;
        let bundle = Bundle::from_slice(&state.bundle, &spec_path, &data)?;
        // The VM grows to the container's limits; a template of another size
        // then does not match, and the container boots cold.
        let (host_cpus, host_mib) = crate::sizing::host_capacity();
        let configured = self.config.clone();
        self.config = crate::sizing::fit(&self.config, &bundle.spec, host_cpus, host_mib)?;
        let hv = &self.config.hypervisor;
        let (accel, why) = resolve_accel(hv.accel);
        info!(self.log, "accelerator"; "accel" => accel.as_str(), "reason" => why);

        let share = crate::share::assemble(&self.dir, &bundle.rootfs, &bundle.binds)?;
        let virtiofsd = Virtiofsd::spawn(
            &self.config.virtiofsd()?,
            &self.config.virtiofsd,
            &Share {
                shared_dir: &share,
                socket: &self.sockets.path(SHARE_SOCKET),
                // root.readonly is applied in the guest, after the mountpoints
                // the spec needs are created in the rootfs (as runc does).
                readonly: false,
                log: &self.dir.join("virtiofsd.log"),
            },
        )?;
        let vfs_id = ProcessIdentity::of(virtiofsd.pid());
        self.virtiofsd = Some(virtiofsd);
        self.record(|s| s.virtiofsd = vfs_id)?;

        let share_dev = FsShare {
            id: "fs0".into(),
            tag: SHARE_TAG.into(),
            socket: SHARE_SOCKET.into(),
        };
        let name = format!("runvm-{}", self.id);
        // A clone of the template when there is a usable one; else a boot.
        let clone = self.template(&configured).and_then(|t| match t.copy_memory(&self.id) {
            Ok(mem) => Some((t, mem)),
            Err(e) => {
                warn!(self.log, "booting cold: cannot copy the template's memory"; "error" => error_chain(&e));
                None
            }
        });
        let vm_config = match &clone {
            Some((_, mem)) => VmConfig {
                incoming: true,
                ..crate::factory::template_vm_config(&self.config, name, &self.dir, mem)?
            },
            None => self.config.vm_config(
                name,
                &self.dir,
                GuestMemory::Memfd,
                vec![share_dev.clone()],
            )?,
        };
        let mut vm: Box<dyn Hypervisor> = Box::new(Qemu::new(self.config.qemu()?, vm_config));
        let launched = vm.launch();
        if let Some((_, mem)) = &clone {
            // QEMU holds it open now; it goes away with QEMU.
            let _ = fs::remove_file(mem);
        }
        let vmm_id = vm.pid().and_then(ProcessIdentity::of);
        let agent_socket = vm.agent_socket();
        let mut vm_exit = vm.exit_watch();
        self.vm = Some(vm);
        let cloned = clone.is_some();
        let boot = if cloned { "template" } else { "cold" };
        self.record(|s| {
            s.vmm = vmm_id;
            s.accel = Some(accel.as_str().to_string());
            s.boot = Some(boot.to_string());
        })?;
        launched?;
        if let Some((template, _)) = clone.as_ref() {
            let vm = self.vm.as_mut().expect("the VM was just launched");
            vm.restore(&template.state())?;
            // The state file has been read: `factory init` may replace the
            // template from here on.
            drop(clone);
            // The share goes into the root port the template left free, at
            // once: the guest enumerates it while the agent reconnects.
            vm.hotplug_fs(&share_dev)?;
            slog::debug!(self.log, "restored, share hotplugged"; "ms" => t0.elapsed().as_millis() as u64);
        }
        let t_launch = t0.elapsed();

        let agent = AgentClient::connect(&agent_socket, self.config.timeouts.request())
            .await
            .map_err(ShimError::Agent)?;
        let agent = Arc::new(agent);
        self.agent = Some(agent.clone());
        let boot_timeout = self.config.timeouts.boot();
        let info = tokio::select! {
            r = agent.wait_ready(boot_timeout) => r.map_err(ShimError::Agent)?,
            r = vm_exit.wait_for(Option::is_some) => {
                let reason = r.ok().and_then(|s| s.clone()).unwrap_or_default();
                return Err(ShimError::Boot {
                    reason: format!("the VM {reason} during boot"),
                    console: self.console_tail(),
                });
            }
        };
        let t_ready = t0.elapsed();
        if info.protocol != runvm_protocol::PROTOCOL_VERSION {
            return Err(ShimError::AgentVersion {
                guest: info.protocol,
                host: runvm_protocol::PROTOCOL_VERSION,
            });
        }
        if cloned {
            // The clone stops living in the template's past and stops
            // sharing its random numbers.
            let mut seed = vec![0u8; 64];
            getrandom(&mut seed).map_err(ShimError::Stdio)?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            agent
                .request(Request::SyncGuest {
                    unix_time_ns: now.as_nanos() as u64,
                    seed,
                })
                .await
                .map_err(ShimError::Agent)?;
            slog::debug!(self.log, "guest clock and RNG synced"; "ms" => t0.elapsed().as_millis() as u64);
        }

        let process = ProcessRef::init(&self.id);
        // Creating and starting are part of bringing the container up: they
        // get the boot timeout, which allows for a busy host.
        let reply = agent
            .request_within(
                Request::CreateContainer(CreateContainer {
                    container_id: self.id.clone(),
                    spec: crate::share::guest_spec(&bundle.raw, &bundle.binds),
                }),
                boot_timeout,
            )
            .await
            .map_err(ShimError::Create)?;
        let guest_pid = match reply {
            Reply::Created { pid } => pid,
            other => {
                return Err(ShimError::Create(AgentClientError::Unexpected(format!(
                    "{other:?}"
                ))))
            }
        };
        let local = self.init_stdio(bundle.terminal())?;
        self.outputs = stdio::attach(&agent, &process, local)
            .await
            .map_err(ShimError::Agent)?;
        self.push_window_size().await;
        let (tx, rx) = oneshot::channel();
        let waiter = agent.clone();
        tokio::spawn(async move {
            let _ = tx.send(waiter.wait_process(process).await);
        });
        self.exit = Some(rx);

        let listener =
            UnixListener::bind(self.sockets.path(CONTROL_SOCKET)).map_err(ShimError::Control)?;
        self.control = Some(listener);
        self.status = ContainerStatus::Created;
        self.record(|s| {
            s.status = ContainerStatus::Created;
            s.guest_pid = Some(guest_pid);
        })?;
        info!(self.log, "container created";
            "boot" => boot,
            "kernel" => info.kernel_release,
            "vmm_launch_ms" => t_launch.as_millis() as u64,
            "agent_ready_ms" => t_ready.as_millis() as u64,
            "created_ms" => t0.elapsed().as_millis() as u64);
        Ok(())
    }

    /// Answer control requests and forward signals until the container exits
    /// or its VM is lost; then tear down and return the exit code.
    async fn serve(mut self, mut signals: mpsc::UnboundedReceiver<i32>) -> i32 {
        let listener = self.control.take().expect("setup bound the control socket");
        let mut exit = self.exit.take().expect("setup started the exit waiter");
        let mut vm_exit = self.vm.as_ref().expect("setup started the VM").exit_watch();
        let mut vfs_exit = self
            .virtiofsd
            .as_ref()
            .expect("setup started virtiofsd")
            .exit_watch();
        let (queue, mut requests) = mpsc::unbounded_channel();
        let read_timeout = self.config.timeouts.request();
        let end = loop {
            tokio::select! {
                conn = listener.accept() => {
                    if let Ok((stream, _)) = conn {
                        tokio::spawn(requests::read_request(stream, read_timeout, queue.clone()));
                    }
                }
                Some(incoming) = requests.recv() => self.handle_control(incoming).await,
                Some(sig) = signals.recv() => self.forward(sig).await,
                status = &mut exit => {
                    match status {
                        Ok(Ok(status)) => break End::Exited(status),
                        // The session dropped: the VM is going or gone.
                        Ok(Err(e)) => break End::SessionLost(error_chain(&e)),
                        Err(_) => break End::VmLost("the exit waiter vanished".into()),
                    }
                }
                r = vm_exit.wait_for(Option::is_some) => {
                    let why = r.ok().and_then(|s| s.clone()).unwrap_or_default();
                    break End::VmLost(format!("the VM {why}"));
                }
                r = vfs_exit.wait_for(Option::is_some) => {
                    let why = r.ok().and_then(|s| s.clone()).unwrap_or_default();
                    break End::VmLost(format!("virtiofsd {why}, the rootfs is gone"));
                }
            }
        };
        drop(listener);
        for task in self.exec_tasks.drain(..) {
            let _ = tokio::time::timeout(DRAIN_TIMEOUT, task).await;
        }
        let code = match end {
            End::Exited(status) => {
                info!(self.log, "container exited"; "code" => status.code());
                for task in self.outputs.drain(..) {
                    let _ = tokio::time::timeout(DRAIN_TIMEOUT, task).await;
                }
                status.code()
            }
            End::VmLost(why) => {
                error!(self.log, "container lost"; "reason" => why);
                VM_LOST_EXIT_CODE
            }
            End::SessionLost(err) => {
                let waited =
                    tokio::time::timeout(Duration::from_secs(2), vm_exit.wait_for(Option::is_some))
                        .await;
                let why = match waited {
                    Ok(Ok(s)) => format!("the VM {}", s.clone().unwrap_or_default()),
                    _ => err,
                };
                error!(self.log, "container lost"; "reason" => why);
                VM_LOST_EXIT_CODE
            }
        };
        let _ = io::stdout().flush();
        let t = Instant::now();
        self.record_stopped((code != VM_LOST_EXIT_CODE).then_some(code));
        self.teardown().await;
        info!(self.log, "shim exiting"; "code" => code, "teardown_ms" => t.elapsed().as_millis() as u64);
        code
    }

    /// The template to clone, if templates are on, the one there matches the
    /// configuration and it is as large as the container's VM must be.
    /// Templates being on, every other outcome is a cold boot and says why,
    /// as a warning: the user asked for clones.
    fn template(&self, configured: &Config) -> Option<crate::factory::Template> {
        if !configured.factory.enable_template {
            return None;
        }
        let template = match crate::factory::Factory::new(configured).usable(configured) {
            Ok(t) => t,
            Err(reason) => {
                warn!(self.log, "booting cold: the template is not usable"; "reason" => reason);
                return None;
            }
        };
        let (needs, has) = (&self.config.hypervisor, &template.meta);
        if needs.vcpus > has.vcpus || needs.memory_mib > has.memory_mib {
            // Growing a clone needs CPU hotplug, which the guest kernel does
            // not offer on q35 (docs/templating.md).
            warn!(
                self.log,
                "booting cold: the container needs {} / {} MiB, the template has {} / {} MiB",
                vcpus(needs.vcpus),
                needs.memory_mib,
                vcpus(has.vcpus),
                has.memory_mib
            );
            return None;
        }
        Some(template)
    }

    /// The container's stdio on the host: what `create` was given, or, for a
    /// terminal, a new pty whose master goes to the console socket (or the
    /// caller's own terminal, for `run` in the foreground).
    fn init_stdio(&mut self, terminal: bool) -> Result<Local, ShimError> {
        let own = Local::own().map_err(ShimError::Stdio)?;
        if !terminal {
            return Ok(own);
        }
        let Some(console) = self.console_socket.clone() else {
            let tty = if terminal::is_tty(own.stdin.as_fd()) {
                &own.stdin
            } else {
                &own.stdout
            };
            self.resize_source = Some(tty.try_clone().map_err(ShimError::Stdio)?);
            return Ok(Local {
                stderr: None,
                ..own
            });
        };
        let pty = terminal::open_pty()?;
        terminal::send_to_console_socket(&console, pty.master.as_fd())?;
        drop(pty.master);
        // Lead a session with the pty as its terminal, so a resize by the
        // holder of the master arrives here as SIGWINCH.
        let _ = nix::unistd::setsid();
        if let Err(e) = terminal::set_controlling(pty.slave.as_fd()) {
            warn!(self.log, "no controlling terminal: resizes will not reach the container"; "error" => %e);
        }
        self.resize_source = Some(pty.slave.try_clone().map_err(ShimError::Stdio)?);
        // The container's stdio is the pty now: let go of what `create` was
        // given, or its caller would wait for EOF on those pipes forever.
        drop(own);
        if let Ok(null) = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
        {
            for fd in 0..3 {
                let _ = nix::unistd::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), fd);
            }
        }
        Ok(Local {
            stdin: pty.slave.try_clone().map_err(ShimError::Stdio)?,
            stdout: pty.slave,
            stderr: None,
        })
    }

    /// Give the container's terminal the host terminal's window size.
    async fn push_window_size(&self) {
        let (Some(tty), Some(agent)) = (&self.resize_source, &self.agent) else {
            return;
        };
        let Some((rows, cols)) = terminal::window_size(tty.as_fd()) else {
            return;
        };
        let req = Request::ResizeTty {
            process: ProcessRef::init(&self.id),
            rows,
            cols,
        };
        if let Err(e) = agent.request(req).await {
            warn!(self.log, "resize the terminal"; "error" => error_chain(&e));
        }
    }

    async fn forward(&self, sig: i32) {
        if sig == libc::SIGWINCH && self.resize_source.is_some() {
            self.push_window_size().await;
            return;
        }
        let Some(agent) = self.agent.clone() else {
            return;
        };
        let req = Request::Signal {
            process: ProcessRef::init(&self.id),
            signal: sig,
            all: false,
        };
        let log = self.log.clone();
        tokio::spawn(async move {
            if let Err(e) = agent.request(req).await {
                warn!(log, "forward signal"; "signal" => sig, "error" => error_chain(&e));
            }
        });
    }

    /// Stop whatever was started: the VM, then virtiofsd; remove sockets.
    async fn teardown(&mut self) {
        self.agent = None;
        let stop = self.config.timeouts.stop();
        if let Some(mut vm) = self.vm.take() {
            let t = Instant::now();
            if let Err(e) = vm.stop(stop) {
                warn!(self.log, "stop the VM"; "error" => error_chain(&e));
            }
            slog::debug!(self.log, "VM stopped"; "ms" => t.elapsed().as_millis() as u64);
        }
        if let Some(vfs) = self.virtiofsd.take() {
            let t = Instant::now();
            vfs.stop(stop);
            slog::debug!(self.log, "virtiofsd stopped"; "ms" => t.elapsed().as_millis() as u64);
        }
        for name in [CONTROL_SOCKET, SHARE_SOCKET, "agent.sock", "qmp.sock"] {
            let _ = fs::remove_file(self.dir.join(name));
        }
    }
}

fn vcpus(n: u32) -> String {
    if n == 1 {
        "1 vCPU".into()
    } else {
        format!("{n} vCPUs")
    }
}

/// Bytes from the host's RNG.
fn getrandom(buf: &mut [u8]) -> io::Result<()> {
    use std::io::Read;
    File::open("/dev/urandom")?.read_exact(buf)
}
