//! Building the template: `factory init`, the background build a cold
//! create starts, and what both need (starting this binary detached,
//! waiting for the agent's hang-up).

use std::fs;
use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use chrono::Utc;
use nix::fcntl::FlockArg;
use slog::{info, warn, Logger};

use super::{
    files, io_err, template_hypervisor, Factory, FactoryError, FileStamp, FilesError, NoBuild,
    Pool, TemplateMeta, BUILD_BACKOFF, CONSOLE_POLL, MEM_FILE, META_FILE, STATE_FILE,
};
use crate::agent::AgentClient;
use crate::config::Config;
use crate::hypervisor::{self, Operation, CONSOLE_LOG};
use crate::locate;

impl Factory {
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
        let boot_timeout = config.runtime.boot();
        let info = rt.block_on(async {
            let died = |why: Option<String>| FactoryError::Died(why.unwrap_or_default());
            let agent = AgentClient::connect(&endpoint, config.runtime.request()).await?;
            // The whole reply, up to the stream's close: after it the agent
            // has nothing more to send to this host.
            let info = tokio::select! {
                r = agent.wait_ready_drained(boot_timeout) => r?,
                r = exit.wait_for(Option::is_some) => return Err(died(r.ok().and_then(|s| s.clone()))),
            };
            // Hang up, and wait until the agent has seen it: the snapshot
            // must catch the agent outside this session, waiting for a new
            // host, or every clone would talk to this session's leftovers.
            let before = console_end(&console);
            drop(agent);
            tokio::select! {
                r = wait_session_end(&console, before, boot_timeout) => r?,
                r = exit.wait_for(Option::is_some) => return Err(died(r.ok().and_then(|s| s.clone()))),
            }
            Ok::<_, FactoryError>(info)
        })?;
        vm.pause()?;
        vm.snapshot(&tmp.join(STATE_FILE))?;
        vm.stop(config.runtime.stop())?;
        let meta = TemplateMeta {
            created: Utc::now(),
            runvm_version: env!("CARGO_PKG_VERSION").to_string(),
            agent_protocol: info.protocol,
            kernel_release: info.kernel_release,
            backend: vm.backend().to_string(),
            vmm: FileStamp::of(vm.binary())?,
            vmm_info,
            kernel: FileStamp::of(&locate::kernel(config.vmm())?)?,
            initrd: FileStamp::of(&locate::initrd(config.vmm())?)?,
            memory_mib: config.vmm().default_memory,
            vcpus: config.vmm().default_vcpus,
            accel: vm.accel().name.to_string(),
            layout: vm.layout(),
        };
        let path = tmp.join(META_FILE);
        let data = serde_json::to_vec_pretty(&meta).expect("metadata serializes");
        fs::write(&path, data).map_err(io_err(&path))?;
        slog::debug!(log, "template saved"; "kernel" => &meta.kernel_release);
        Ok(meta)
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
pub(super) fn spawn_detached(args: &[&std::ffi::OsStr]) -> io::Result<()> {
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

/// Where the console log ends now: the agent's next "host hung up" line is
/// looked for after it.
pub fn console_end(console: &Path) -> u64 {
    fs::metadata(console).map(|m| m.len()).unwrap_or(0)
}

/// The most of the console read past `from` for the marker: the guest
/// decides how much it writes there, the host how much it reads.
const CONSOLE_SCAN: u64 = 1 << 20;

/// Whether the agent has reported the end of a session after byte `from`.
fn session_ended_since(console: &Path, from: u64) -> bool {
    let text = crate::read_range(console, from, CONSOLE_SCAN);
    // Not whole lines: the firmware's last words have no newline.
    String::from_utf8_lossy(&text).contains(runvm_protocol::SESSION_ENDED)
}

/// Wait until the console log shows a session end after byte `from`.
pub async fn wait_session_end(
    console: &Path,
    from: u64,
    timeout: Duration,
) -> Result<(), FactoryError> {
    let deadline = Instant::now() + timeout;
    while !session_ended_since(console, from) {
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
    fn a_session_end_is_found_after_the_offset_and_firmware_output() {
        let tmp = tempfile::tempdir().unwrap();
        let console = tmp.path().join("console.log");
        assert_eq!(console_end(&console), 0);
        assert!(!session_ended_since(&console, 0));
        let marker = runvm_protocol::SESSION_ENDED;
        fs::write(&console, format!("Booting from ROM..{marker}\n")).unwrap();
        assert!(session_ended_since(&console, 0));
        let before = console_end(&console);
        assert!(!session_ended_since(&console, before));
        fs::write(
            &console,
            format!("Booting from ROM..{marker}\nx\n{marker}\n"),
        )
        .unwrap();
        assert!(session_ended_since(&console, before));
        // A guest that floods its console before the marker is not read
        // without end: past the scan, the marker is not seen.
        let flood = "y".repeat(CONSOLE_SCAN as usize + 10);
        fs::write(&console, format!("{flood}{marker}\n")).unwrap();
        assert!(!session_ended_since(&console, 0));
    }
}
