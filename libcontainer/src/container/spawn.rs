//! `create`: the container's state directory, and the shim started to
//! bring it up. The shim reports on a pipe; `create` returns when it has.

use std::ffi::{CString, OsString};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, SigmaskHow};
use nix::sys::wait::waitpid;
use nix::unistd::{fork, ForkResult, Pid};
use slog::{info, warn};

use super::{check_pid_file_dir, ContainerError, CreateOptions, Runtime};
use crate::control::Ready;
use crate::factory::{Factory, NoBuild, Pool};
use crate::id::validate_id;
use crate::spec::Bundle;
use crate::state::{write_atomic, State, SPEC_FILE};

/// The hidden command-line verb that runs the shim.
pub const SHIM_VERB: &str = "__shim";

impl Runtime {
    /// Boot a VM and create the container in it; returns when the container is
    /// created (or creation failed and nothing is left behind).
    pub fn create(&self, opts: &CreateOptions) -> Result<i32, ContainerError> {
        let shim = self.create_with(opts, true)?;
        Ok(shim.as_raw())
    }

    pub(super) fn create_with(
        &self,
        opts: &CreateOptions,
        detach: bool,
    ) -> Result<Pid, ContainerError> {
        validate_id(&opts.id)?;
        let bundle = Bundle::load(&opts.bundle)?;
        // Refused overrides fail here, before anything exists.
        let (_, overrides) = crate::overrides::apply(
            &self.config,
            &bundle.spec.annotations().clone().unwrap_or_default(),
            crate::sizing::host(),
        )?;
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
        let cgroups_path = bundle
            .spec
            .linux()
            .as_ref()
            .and_then(|l| l.cgroups_path().clone());
        let host_cgroup = crate::host_cgroup::Record::resolve(
            cgroups_path.as_deref().and_then(Path::to_str),
            opts.systemd_cgroup,
            &opts.id,
            &self.config.runtime,
        )?;
        let dir = self.store.create_dir(&opts.id)?;
        match self.create_in(&dir, &bundle, opts, (overrides, host_cgroup), detach) {
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
        (overrides, host_cgroup): (crate::overrides::Applied, crate::host_cgroup::Record),
        detach: bool,
    ) -> Result<Pid, ContainerError> {
        {
            // Held until the state file exists, so that a concurrent delete
            // does not take the new directory for one a killed create left.
            let _lock = self.store.lock(&opts.id)?;
            let spec = serde_json::to_vec_pretty(&bundle.raw).expect("spec serializes");
            write_atomic(&dir.join(SPEC_FILE), &spec)?;
            let record = serde_json::to_vec(&host_cgroup).expect("record serializes");
            write_atomic(&dir.join(crate::host_cgroup::RECORD_FILE), &record)?;
            let state = State {
                annotations: bundle.spec.annotations().clone().unwrap_or_default(),
                terminal: bundle.terminal(),
                overrides,
                host_cgroup: Some(host_cgroup),
                restore_from: opts.restore.as_ref().map(|r| r.image.clone()),
                guest_id: opts
                    .restore
                    .as_ref()
                    .map(|r| r.guest_id.clone())
                    .filter(|g| *g != opts.id),
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
        match read_ready(ready, self.create_timeout())? {
            Some(Ready::Created { shim_pid: reported }) => {
                if opts.restore.is_none() {
                    self.build_template_behind(&opts.id);
                }
                if let Some(pid_file) = &opts.pid_file {
                    // Last, and atomically: containerd takes the pid file's
                    // appearance as "create finished". No trailing newline:
                    // containerd parses it with Atoi.
                    write_atomic(pid_file, reported.to_string().as_bytes())
                        .map_err(ContainerError::PidFile)?;
                }
                Ok(shim_pid.unwrap_or(Pid::from_raw(reported)))
            }
            Some(Ready::Failed(failure)) => Err(failure.into()),
            None => Err(super::creating::vanished(&opts.id, dir)),
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

    /// A container that booted cold for want of a usable template gets
    /// one built in the background, so that the creates after it are
    /// clones; one that was cloned or took a pool VM gets the warm pool
    /// refilled behind it (docs/templating.md). Never fails the create.
    fn build_template_behind(&self, id: &str) {
        let boot = self.store.load(id).ok().and_then(|s| s.boot);
        if matches!(boot.as_deref(), Some("template" | "pool")) {
            // The template is usable: keep the warm pool full (a slot a
            // member holds is left alone, so this starts one per VM taken).
            let pool = Pool::new(&self.config);
            match pool.fill() {
                Ok(0) => {}
                Ok(n) => {
                    info!(self.log, "refilling the warm pool"; "vms" => n, "dir" => %pool.dir().display())
                }
                Err(e) => warn!(self.log, "start the warm pool's VMs"; "error" => %e),
            }
        }
        if boot.as_deref() != Some("cold") {
            return;
        }
        let factory = Factory::new(&self.config);
        match factory.wants_build(&self.config) {
            Ok(()) => match factory.spawn_build() {
                Ok(()) => {
                    info!(self.log, "building a template in the background, for the next creates";
                    "log" => %factory.build_log_path().display())
                }
                Err(e) => {
                    warn!(self.log, "start a background build of the template"; "error" => %e)
                }
            },
            Err(e @ NoBuild::Failed { .. }) => {
                warn!(self.log, "not building a template"; "reason" => %e)
            }
            Err(_) => {}
        }
    }

    /// Remove a container whose creation failed, and anything it started.
    fn discard(&self, id: &str) {
        if let Ok(state) = self.store.load(id) {
            for p in state.processes() {
                p.kill_and_wait(Duration::from_secs(5));
            }
            self.remove_host_cgroup(&state);
        }
        if let Ok(_lock) = self.store.lock(id) {
            if let Err(e) = self.store.remove(id) {
                warn!(self.log, "remove the state of a failed create"; "error" => crate::error_chain(&e));
            }
        }
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
        // Closed without a word: the shim died.
        Err(e) if e.is_disconnect() => Ok(None),
        Err(e) => Err(ContainerError::ShimReport(e)),
    }
}
