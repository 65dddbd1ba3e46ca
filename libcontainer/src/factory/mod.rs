//! VM templates (Kata's "factory"): boot one VM with the agent ready and no
//! container, save its device state next to its memory file, and create
//! containers by restoring copies of it instead of booting.

mod files;
mod pool;

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use slog::{info, warn, Logger};

use crate::agent::{AgentClient, AgentClientError};
use crate::config::{Config, ConfigError};
use crate::hypervisor::{self, Hypervisor, HypervisorError, Operation, CONSOLE_LOG};
use crate::locate::{self, LocateError};
pub use files::{FilesError, Problem};
pub use pool::{Claimed, Pool};

const META_FILE: &str = "template.json";
const MEM_FILE: &str = "mem";
const STATE_FILE: &str = "state";
/// How often the console log is read while waiting for the agent to report
/// that it noticed the hang-up.
const CONSOLE_POLL: Duration = Duration::from_millis(10);
/// After a background build failed, creates boot cold without starting
/// another for this long (a build that fails for good would otherwise cost
/// every create a second VM); `factory init` by hand tries at once.
pub const BUILD_BACKOFF: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum FactoryError {
    #[error("runtime configuration")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Locate(#[from] LocateError),
    #[error("{path}")]
    Io { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Files(#[from] FilesError),
    #[error("template VM")]
    Hypervisor(#[from] HypervisorError),
    #[error("template VM's agent")]
    Agent(#[from] AgentClientError),
    #[error("the template VM did not come up: it {0}")]
    Died(String),
    #[error("the template VM's agent did not report the end of its session within {timeout:?} (no {marker:?} in {console}); is the guest older than runvm? (make guest)")]
    NoHangup {
        timeout: Duration,
        marker: &'static str,
        console: PathBuf,
    },
    #[error("template metadata {path}")]
    Meta {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("no template at {path}")]
    Missing { path: PathBuf },
    #[error("the {what} changed since the template was made")]
    Stale { what: &'static str },
    #[error("the template's agent speaks protocol {template}, runvm {host}")]
    Protocol { template: u32, host: u32 },
    #[error("the template was made by runvm {version}")]
    RunvmVersion { version: String },
    #[error("the template was made with {template}, runvm is configured for {configured}")]
    Backend {
        template: String,
        configured: String,
    },
    #[error("the VM's size or devices changed since the template was made")]
    Layout,
    #[error("the template has no {file} file")]
    NoFile { file: &'static str },
}

impl FactoryError {
    /// Whether building the template again cures this (it is missing, or
    /// was made from something else); not so a directory others may write,
    /// an unreadable file or a backend without templates.
    pub fn cured_by_a_build(&self) -> bool {
        matches!(
            self,
            FactoryError::Missing { .. }
                | FactoryError::Stale { .. }
                | FactoryError::Protocol { .. }
                | FactoryError::RunvmVersion { .. }
                | FactoryError::Backend { .. }
                | FactoryError::Layout
                | FactoryError::NoFile { .. }
                | FactoryError::Meta { .. }
        )
    }
}

/// Why a create that booted cold starts no background build.
#[derive(Debug, thiserror::Error)]
pub enum NoBuild {
    #[error("templates or their building are off")]
    Off,
    #[error("the template is usable")]
    Usable,
    #[error("the backend cannot: {0}")]
    Unsupported(String),
    #[error("a build would not help: {0}")]
    Refused(String),
    #[error("a build is running")]
    Running,
    #[error("a background build failed less than {} minutes ago; see {log}", BUILD_BACKOFF.as_secs() / 60)]
    Failed { log: PathBuf },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> FactoryError + '_ {
    move |source| FactoryError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A file as it was when the template was made.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FileStamp {
    pub path: PathBuf,
    pub size: u64,
    pub mtime_ns: i128,
}

impl FileStamp {
    fn of(path: &Path) -> Result<Self, FactoryError> {
        let m = fs::metadata(path).map_err(io_err(path))?;
        Ok(FileStamp {
            path: path.to_path_buf(),
            size: m.size(),
            mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
        })
    }
}

/// What a template was made from; a clone must be made from the same.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TemplateMeta {
    pub created: DateTime<Utc>,
    pub runvm_version: String,
    pub agent_protocol: u32,
    pub kernel_release: String,
    /// The hypervisor backend ("qemu") and its binary.
    pub backend: String,
    pub vmm: FileStamp,
    /// What the backend says of itself (QEMU: `qemuVersion`).
    #[serde(flatten)]
    pub vmm_info: serde_json::Map<String, serde_json::Value>,
    pub kernel: FileStamp,
    pub initrd: FileStamp,
    pub memory_mib: u32,
    pub vcpus: u32,
    pub accel: String,
    /// The backend's account of the VM's devices and size: a clone's must
    /// be the same.
    pub layout: String,
}

/// A usable template. It holds a shared lock on the template, so `factory
/// init` and `destroy` cannot replace or remove it until it is dropped:
/// keep it until the clone has read the state file.
pub struct Template {
    dir: PathBuf,
    pub meta: TemplateMeta,
    _lock: Flock<fs::File>,
}

impl Template {
    pub fn state(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    /// Copy the template's memory for a clone, next to it (same tmpfs),
    /// keeping its holes: only the pages the template touched are copied.
    /// The copy is a new file of mode 0600 (a file already there, a planted
    /// symlink included, is an error, except the leftover of a dead shim
    /// that had our pid).
    pub fn copy_memory(&self, name: &str) -> Result<PathBuf, FactoryError> {
        let src = self.dir.join(MEM_FILE);
        let dst = self
            .dir
            .with_file_name(format!("clone-{name}-{}.mem", std::process::id()));
        match files::copy_sparse(&src, &dst) {
            Err(FilesError::Io { source, .. }) if source.kind() == io::ErrorKind::AlreadyExists => {
                files::remove(&dst)?;
                files::copy_sparse(&src, &dst)?;
            }
            other => other?,
        }
        Ok(dst)
    }
}

/// The hypervisor of a template, or of its clone (to compare layouts).
fn template_hypervisor(
    config: &Config,
    dir: &Path,
    mem: PathBuf,
) -> Result<Box<dyn Hypervisor>, FactoryError> {
    let spec = hypervisor::template_vm(config, "runvm-template".into(), dir, mem)?;
    Ok(hypervisor::new(config, spec)?)
}

pub struct Factory {
    dir: PathBuf,
}

/// What `factory status` shows.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub path: PathBuf,
    pub exists: bool,
    pub usable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template: Option<TemplateMeta>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_file_bytes: Option<u64>,
}

impl Factory {
    pub fn new(config: &Config) -> Self {
        Factory {
            dir: config.factory.template_path.clone(),
        }
    }

    fn lock_path(&self) -> PathBuf {
        self.dir.with_extension("lock")
    }

    /// Held by whoever builds the template: one build at a time.
    fn build_lock_path(&self) -> PathBuf {
        self.dir.with_extension("build-lock")
    }

    /// Where a background build says what it did.
    pub fn build_log_path(&self) -> PathBuf {
        self.dir.with_extension("build.log")
    }

    /// There while a failed background build's backoff lasts.
    fn failed_path(&self) -> PathBuf {
        self.dir.with_extension("failed")
    }

    /// The directory that holds the template, its lock and the clones'
    /// copies: created mode 0700, refused if anyone else could change it.
    fn holder(&self) -> Result<&Path, FactoryError> {
        let holder = self.dir.parent().unwrap_or(Path::new("/"));
        files::ensure_private_dir(holder)?;
        Ok(holder)
    }

    fn lock(&self, how: FlockArg) -> Result<Flock<fs::File>, FactoryError> {
        self.holder()?;
        Ok(files::lock(&self.lock_path(), how)?)
    }

    fn read_meta(&self) -> Result<Option<TemplateMeta>, FactoryError> {
        let path = self.dir.join(META_FILE);
        let file = match files::open_nofollow(&path) {
            Ok(f) => f,
            Err(FilesError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                return Ok(None)
            }
            Err(e) => return Err(e.into()),
        };
        serde_json::from_reader(io::BufReader::new(file))
            .map(Some)
            .map_err(|source| FactoryError::Meta { path, source })
    }

    /// Boot a template VM, wait for its agent, save it. Replaces an existing
    /// template. The build takes no lock (it has a directory of its own);
    /// only the swap waits for clones that are reading the old template.
    pub fn init(&self, config: &Config, log: &Logger) -> Result<TemplateMeta, FactoryError> {
        self.holder()?;
        let build = files::lock(&self.build_lock_path(), FlockArg::LockExclusive)?;
        let _ = fs::remove_file(self.failed_path());
        let meta = self.init_locked(config, log)?;
        // Members start only while no build holds the build lock.
        drop(build);
        fill_pool(config, log);
        Ok(meta)
    }

    /// What a create that booted cold for want of a template calls: whether
    /// a background build would make later creates clones (templates on,
    /// building on, the backend able to, the template missing or stale for
    /// a reason a build cures, no build running, no failed one recently).
    pub fn wants_build(&self, config: &Config) -> Result<(), NoBuild> {
        if !config.factory.enable_template || !config.factory.auto_build {
            return Err(NoBuild::Off);
        }
        [
            Operation::Restore,
            Operation::Snapshot,
            Operation::Pause,
            Operation::HotplugFs,
        ]
        .into_iter()
        .try_for_each(|op| hypervisor::supports(config, op))
        .map_err(|e| NoBuild::Unsupported(crate::error_chain(&e)))?;
        match self.usable(config) {
            Ok(_) => return Err(NoBuild::Usable),
            Err(e) if !e.cured_by_a_build() => {
                return Err(NoBuild::Refused(crate::error_chain(&e)))
            }
            Err(_) => {}
        }
        let building = files::lock(&self.build_lock_path(), FlockArg::LockExclusiveNonblock);
        if matches!(building, Err(FilesError::Lock { .. })) {
            return Err(NoBuild::Running);
        }
        drop(building);
        if let Ok(m) = fs::symlink_metadata(self.failed_path()) {
            let age = m.modified().ok().and_then(|t| t.elapsed().ok());
            if age.is_none_or(|a| a < BUILD_BACKOFF) {
                return Err(NoBuild::Failed {
                    log: self.build_log_path(),
                });
            }
        }
        Ok(())
    }

    /// `factory init --if-needed`, the background build: nothing if another
    /// build holds the build lock or the template is usable by now; a
    /// failure leaves the backoff marker.
    pub fn init_if_needed(
        &self,
        config: &Config,
        log: &Logger,
    ) -> Result<Option<TemplateMeta>, FactoryError> {
        self.holder()?;
        let build = match files::lock(&self.build_lock_path(), FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err(FilesError::Lock { .. }) => {
                info!(log, "another build of the template is running");
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        };
        if self.usable(config).is_ok() {
            info!(log, "the template is usable already");
            return Ok(None);
        }
        match self.init_locked(config, log) {
            Ok(meta) => {
                let _ = fs::remove_file(self.failed_path());
                drop(build);
                fill_pool(config, log);
                Ok(Some(meta))
            }
            Err(e) => {
                // A new file each time: its mtime starts the backoff.
                let _ = fs::remove_file(self.failed_path());
                let _ = files::create_exclusive(&self.failed_path());
                Err(e)
            }
        }
    }

    /// Start `runvm factory init --if-needed` on its own, logging to
    /// [`Self::build_log_path`]: in a new session, stdio on /dev/null and
    /// nothing else of ours open in it (a caller's pipe held open would
    /// keep conmon or containerd waiting), not waited for. When we exit it
    /// is reparented to the caller's subreaper or init, which reap it.
    pub fn spawn_build(&self) -> io::Result<()> {
        self.holder().map_err(io::Error::other)?;
        let log = self.build_log_path();
        spawn_detached(&[
            "--debug".as_ref(),
            "--log".as_ref(),
            log.as_os_str(),
            "factory".as_ref(),
            "init".as_ref(),
            "--if-needed".as_ref(),
        ])
    }

    fn init_locked(&self, config: &Config, log: &Logger) -> Result<TemplateMeta, FactoryError> {
        files::check_private(&self.dir)?;
        let t0 = Instant::now();
        let tmp = self
            .dir
            .with_extension(format!("new-{}", std::process::id()));
        // A build of a dead process that had our pid.
        files::remove(&tmp)?;
        files::create_private_dir(&tmp)?;
        let result = self.build(config, &tmp, log);
        if result.is_err() {
            let _ = files::remove(&tmp);
            return result;
        }
        let _lock = self.lock(FlockArg::LockExclusive)?;
        if files::check_private(&self.dir)? {
            files::remove(&self.dir)?;
        }
        fs::rename(&tmp, &self.dir).map_err(io_err(&self.dir))?;
        drop(_lock);
        info!(log, "template ready"; "path" => %self.dir.display(), "ms" => t0.elapsed().as_millis() as u64);
        // The pool's VMs are of the old template now (and no new member
        // starts while we hold the build lock).
        Pool::new(config).stop_members(log);
        result
    }

    fn build(
        &self,
        config: &Config,
        tmp: &Path,
        log: &Logger,
    ) -> Result<TemplateMeta, FactoryError> {
        let mem = tmp.join(MEM_FILE);
        let mut vm = template_hypervisor(config, tmp, mem)?;
        vm.supports(Operation::Pause)?;
        vm.supports(Operation::Snapshot)?;
        let vmm_info = vm.describe()?;
        let console = tmp.join(CONSOLE_LOG);
        vm.launch()?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(io_err(tmp))?;
        let mut exit = vm.exit_watch();
        let endpoint = vm.agent_endpoint();
        let boot_timeout = config.timeouts.boot();
        let info = rt.block_on(async {
            let died = |why: Option<String>| FactoryError::Died(why.unwrap_or_default());
            let agent = AgentClient::connect(&endpoint, config.timeouts.request()).await?;
            // The whole reply, up to the stream's close: after it the agent
            // has nothing more to send to this host.
            let info = tokio::select! {
                r = agent.wait_ready_drained(boot_timeout) => r?,
                r = exit.wait_for(Option::is_some) => return Err(died(r.ok().and_then(|s| s.clone()))),
            };
            // Hang up, and wait until the agent has seen it: the snapshot
            // must catch the agent outside this session, waiting for a new
            // host, or every clone would talk to this session's leftovers.
            let before = session_ends(&console);
            drop(agent);
            tokio::select! {
                r = wait_session_end(&console, before, boot_timeout) => r?,
                r = exit.wait_for(Option::is_some) => return Err(died(r.ok().and_then(|s| s.clone()))),
            }
            Ok::<_, FactoryError>(info)
        })?;
        vm.pause()?;
        vm.snapshot(&tmp.join(STATE_FILE))?;
        vm.stop(config.timeouts.stop())?;
        let meta = TemplateMeta {
            created: Utc::now(),
            runvm_version: env!("CARGO_PKG_VERSION").to_string(),
            agent_protocol: info.protocol,
            kernel_release: info.kernel_release,
            backend: vm.backend().to_string(),
            vmm: FileStamp::of(vm.binary())?,
            vmm_info,
            kernel: FileStamp::of(&locate::kernel(&config.hypervisor)?)?,
            initrd: FileStamp::of(&locate::initrd(&config.hypervisor)?)?,
            memory_mib: config.hypervisor.memory_mib,
            vcpus: config.hypervisor.vcpus,
            accel: vm.accel().name.to_string(),
            layout: vm.layout(),
        };
        let path = tmp.join(META_FILE);
        let data = serde_json::to_vec_pretty(&meta).expect("metadata serializes");
        fs::write(&path, data).map_err(io_err(&path))?;
        slog::debug!(log, "template saved"; "kernel" => &meta.kernel_release);
        Ok(meta)
    }

    /// The template, if it exists and matches the configuration now: same
    /// QEMU, kernel, initramfs (and so agent), VM size and devices. It comes
    /// with a shared lock on it.
    pub fn usable(&self, config: &Config) -> Result<Template, FactoryError> {
        let missing = || FactoryError::Missing {
            path: self.dir.clone(),
        };
        if fs::symlink_metadata(&self.dir).is_err() {
            return Err(missing());
        }
        let lock = self.lock(FlockArg::LockShared)?;
        if !files::check_private(&self.dir)? {
            return Err(missing());
        }
        let meta = self.read_meta()?.ok_or_else(missing)?;
        let vm = template_hypervisor(config, &self.dir, self.dir.join(MEM_FILE))?;
        if meta.backend != vm.backend() {
            return Err(FactoryError::Backend {
                template: meta.backend,
                configured: vm.backend().to_string(),
            });
        }
        let stamp = |what: &'static str, path: &Path, then: &FileStamp| {
            if &FileStamp::of(path)? != then {
                return Err(FactoryError::Stale { what });
            }
            Ok(())
        };
        stamp("hypervisor binary", vm.binary(), &meta.vmm)?;
        stamp(
            "guest kernel",
            &locate::kernel(&config.hypervisor)?,
            &meta.kernel,
        )?;
        stamp(
            "guest initramfs",
            &locate::initrd(&config.hypervisor)?,
            &meta.initrd,
        )?;
        if meta.agent_protocol != runvm_protocol::PROTOCOL_VERSION {
            return Err(FactoryError::Protocol {
                template: meta.agent_protocol,
                host: runvm_protocol::PROTOCOL_VERSION,
            });
        }
        if meta.runvm_version != env!("CARGO_PKG_VERSION") {
            return Err(FactoryError::RunvmVersion {
                version: meta.runvm_version,
            });
        }
        if meta.layout != vm.layout() {
            return Err(FactoryError::Layout);
        }
        for file in [MEM_FILE, STATE_FILE] {
            let regular = fs::symlink_metadata(self.dir.join(file)).is_ok_and(|m| m.is_file());
            if !regular {
                return Err(FactoryError::NoFile { file });
            }
        }
        Ok(Template {
            dir: self.dir.clone(),
            meta,
            _lock: lock,
        })
    }

    pub fn status(&self, config: &Config) -> Status {
        let usable = self.usable(config).map(|t| t.meta);
        let meta = match &usable {
            Ok(meta) => Some(meta.clone()),
            Err(_) => self.read_meta().ok().flatten(),
        };
        let memory_file_bytes = fs::symlink_metadata(self.dir.join(MEM_FILE))
            .ok()
            .map(|m| m.blocks() * 512);
        Status {
            path: self.dir.clone(),
            exists: meta.is_some(),
            usable: usable.is_ok(),
            reason: usable.err().map(|e| crate::error_chain(&e)),
            template: meta,
            memory_file_bytes,
        }
    }

    /// Remove the template, its lock, and what dead builds and shims left
    /// beside it; true if there was a template.
    pub fn destroy(&self, log: &Logger) -> Result<bool, FactoryError> {
        self.holder()?;
        // A build running now would put its template in place after us.
        let build = files::lock(&self.build_lock_path(), FlockArg::LockExclusive)?;
        // Before the template's lock: a member restoring its VM holds it.
        let pool = Pool::for_dir(&self.dir);
        if !pool.stop_members(log) {
            warn!(log, "some of the warm pool's VMs are still running");
        }
        pool.remove_if_idle();
        let lock = self.lock(FlockArg::LockExclusive)?;
        let existed = files::check_private(&self.dir)?;
        if existed {
            files::remove(&self.dir)?;
        }
        for left in files::leftovers(&self.dir) {
            match files::remove(&left) {
                Ok(()) => info!(log, "removed a leftover"; "path" => %left.display()),
                Err(e) => warn!(log, "remove a leftover"; "error" => crate::error_chain(&e)),
            }
        }
        let _ = fs::remove_file(self.failed_path());
        let _ = fs::remove_file(self.build_log_path());
        // Removed while locked: a waiter then finds its lock file gone and
        // takes a new one (files::lock).
        let _ = fs::remove_file(self.lock_path());
        let _ = fs::remove_file(self.build_lock_path());
        drop(lock);
        drop(build);
        Ok(existed)
    }
}

/// Start the warm pool's VMs for a template just made.
fn fill_pool(config: &Config, log: &Logger) {
    if let Err(e) = Pool::new(config).fill() {
        warn!(log, "cannot start the warm pool"; "error" => %e);
    }
}

/// Start this binary with `args` on its own: in a new session, no signal
/// blocked, stdio on /dev/null and nothing else of ours open in it (a caller's pipe held open
/// would keep conmon or containerd waiting), not waited for. When we exit
/// it is reparented to the caller's subreaper or init, which reap it.
fn spawn_detached(args: &[&std::ffi::OsStr]) -> io::Result<()> {
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: between fork and exec only async-signal-safe calls (setsid,
    // close_range, fcntl, sigprocmask) on the child's own state.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()?;
            close_on_exec_from(3);
            // No signal blocked: the shim and the foreground `run` block
            // the ones they forward, and a pool VM's member stops on
            // SIGTERM.
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            if libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    Ok(())
}

/// Mark every descriptor from `first` up close-on-exec. Async-signal-safe:
/// for a child between fork and exec.
fn close_on_exec_from(first: u32) {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: plain syscalls on this process's own descriptor table.
    unsafe {
        if libc::syscall(libc::SYS_close_range, first, u32::MAX, CLOSE_RANGE_CLOEXEC) == 0 {
            return;
        }
        // Kernels before 5.11: one by one, up to the limit.
        let max = libc::sysconf(libc::_SC_OPEN_MAX).clamp(0, 65536) as i32;
        for fd in first as i32..max {
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        }
    }
}

/// How many times the agent has reported the end of a session so far.
fn session_ends(console: &Path) -> usize {
    let text = fs::read(console).unwrap_or_default();
    // Not whole lines: the firmware's last words have no newline.
    String::from_utf8_lossy(&text)
        .matches(runvm_protocol::SESSION_ENDED)
        .count()
}

/// Wait until the console log shows more session ends than `before`.
async fn wait_session_end(
    console: &Path,
    before: usize,
    timeout: Duration,
) -> Result<(), FactoryError> {
    let deadline = Instant::now() + timeout;
    while session_ends(console) <= before {
        if Instant::now() >= deadline {
            return Err(FactoryError::NoHangup {
                timeout,
                marker: runvm_protocol::SESSION_ENDED,
                console: console.to_path_buf(),
            });
        }
        tokio::time::sleep(CONSOLE_POLL).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ends_are_counted_after_firmware_output() {
        let tmp = tempfile::tempdir().unwrap();
        let console = tmp.path().join("console.log");
        assert_eq!(session_ends(&console), 0);
        let marker = runvm_protocol::SESSION_ENDED;
        fs::write(&console, format!("Booting from ROM..{marker}\n")).unwrap();
        assert_eq!(session_ends(&console), 1);
        fs::write(
            &console,
            format!("Booting from ROM..{marker}\nx\n{marker}\n"),
        )
        .unwrap();
        assert_eq!(session_ends(&console), 2);
    }

    fn config_at(template: &Path) -> Config {
        let mut config = Config::default();
        config.factory.template_path = template.to_path_buf();
        config
    }

    #[test]
    fn a_template_dir_others_can_write_is_refused_before_anything_runs() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let holder = tmp.path().join("runvm");
        fs::create_dir_all(holder.join("template")).unwrap();
        fs::set_permissions(&holder, fs::Permissions::from_mode(0o777)).unwrap();
        let config = config_at(&holder.join("template"));
        let factory = Factory::new(&config);
        let reason = crate::error_chain(&factory.usable(&config).err().unwrap());
        assert_eq!(
            reason,
            format!(
                "refusing the template directory {}: it is writable by group or others (mode 0777)",
                holder.display()
            )
        );
        let log = Logger::root(slog::Discard, slog::o!());
        let err = factory.init(&config, &log).unwrap_err();
        assert!(
            matches!(err, FactoryError::Files(FilesError::Insecure { .. })),
            "{err:?}"
        );
        assert!(factory.destroy(&log).is_err());
        // Nothing was made in it: no lock, no build directory.
        let names: Vec<_> = fs::read_dir(&holder)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, ["template"]);
    }

    #[test]
    fn a_template_that_is_a_symlink_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let holder = tmp.path().join("runvm");
        files::ensure_private_dir(&holder).unwrap();
        let elsewhere = tmp.path().join("planted");
        fs::create_dir(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, holder.join("template")).unwrap();
        let config = config_at(&holder.join("template"));
        let reason = crate::error_chain(&Factory::new(&config).usable(&config).err().unwrap());
        assert!(reason.ends_with("template: it is a symlink"), "{reason}");
    }

    #[test]
    fn the_holder_is_created_private() {
        let tmp = tempfile::tempdir().unwrap();
        let holder = tmp.path().join("runvm");
        let config = config_at(&holder.join("template"));
        let log = Logger::root(slog::Discard, slog::o!());
        assert!(!Factory::new(&config).destroy(&log).unwrap());
        assert_eq!(fs::metadata(&holder).unwrap().mode() & 0o7777, 0o700);
    }

    #[test]
    fn a_missing_template_is_not_usable() {
        let tmp = tempfile::tempdir().unwrap();
        let config = config_at(&tmp.path().join("template"));
        let err = Factory::new(&config).usable(&config).err().unwrap();
        assert!(err.to_string().starts_with("no template at"), "{err}");
    }
}
