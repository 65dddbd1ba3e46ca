//! A supervised child: a helper process (QEMU, virtiofsd) that dies with the
//! thread that started it, starts with a clean signal mask, and whose exit
//! is watched.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitStatus};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::sync::watch;

/// How a child ended, once it has: `Some(description)`.
pub type ExitWatch = watch::Receiver<Option<String>>;

/// How long to wait for a child that was sent SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(5);

pub struct Supervised {
    pid: i32,
    exit_tx: watch::Sender<Option<String>>,
    /// Set for an adopted process: signals go through it.
    pidfd: Option<Arc<OwnedFd>>,
}

/// "exited with status 1", "killed by signal 9".
pub fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => "ended".to_string(),
    }
}

impl Supervised {
    /// Start `cmd`. The child gets SIGKILL when the calling thread exits (a
    /// helper nobody controls is a leak: call this from a thread that lives
    /// as long as the child should), an empty signal mask (std's Command
    /// keeps the caller's, and the shim blocks the signals it forwards: a
    /// virtiofsd that inherited the block would never see the SIGTERM of
    /// its parent-death signal), and `keep` open across exec.
    pub fn spawn(cmd: Command, keep: &[RawFd]) -> io::Result<Self> {
        Self::spawn_then(cmd, keep, || Ok(()))
    }

    /// [`spawn`](Self::spawn), with `then` run in the child after the
    /// above, just before exec (the same rules hold: system calls only).
    pub fn spawn_then(
        mut cmd: Command,
        keep: &[RawFd],
        mut then: impl FnMut() -> io::Result<()> + Send + Sync + 'static,
    ) -> io::Result<Self> {
        let keep = keep.to_vec();
        // SAFETY: the closure calls only async-signal-safe functions (prctl,
        // sigemptyset, sigprocmask, fcntl) and touches no memory shared with
        // the parent but the copied fd list.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                let mut empty: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut empty);
                if libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) != 0 {
                    return Err(io::Error::last_os_error());
                }
                for &fd in &keep {
                    if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                then()
            });
        }
        let mut child = cmd.spawn()?;
        let pid = child.id() as i32;
        let exit_tx = watch::channel(None).0;
        let tx = exit_tx.clone();
        std::thread::spawn(move || {
            let desc = match child.wait() {
                Ok(status) => describe(status),
                Err(e) => format!("wait failed: {e}"),
            };
            tx.send_replace(Some(desc));
        });
        Ok(Supervised {
            pid,
            exit_tx,
            pidfd: None,
        })
    }

    /// Watch a running process that is not our child (a pool VM's QEMU,
    /// whose parent is the pool process that launched it): through a pidfd,
    /// which also makes the signals [`Self::stop`] sends reach that process
    /// and no other that later gets its pid.
    pub fn adopt(pid: i32) -> io::Result<Self> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the fd was just opened and is owned only here.
        let pidfd = Arc::new(unsafe { OwnedFd::from_raw_fd(fd as RawFd) });
        let exit_tx = watch::channel(None).0;
        let tx = exit_tx.clone();
        let watched = pidfd.clone();
        std::thread::spawn(move || {
            // A pidfd polls readable once its process has exited.
            let mut fds = [PollFd::new(watched.as_fd(), PollFlags::POLLIN)];
            while !matches!(poll(&mut fds, PollTimeout::NONE), Ok(n) if n > 0) {}
            tx.send_replace(Some("exited".to_string()));
        });
        Ok(Supervised {
            pid,
            exit_tx,
            pidfd: Some(pidfd),
        })
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    fn signal(&self, sig: Signal) {
        match &self.pidfd {
            // SAFETY: pidfd_send_signal on a pidfd we hold, no siginfo.
            Some(fd) => unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd.as_raw_fd(),
                    sig as libc::c_int,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                );
            },
            None => {
                let _ = kill(Pid::from_raw(self.pid), sig);
            }
        }
    }

    pub fn exit_watch(&self) -> ExitWatch {
        self.exit_tx.subscribe()
    }

    /// How it ended, if it has.
    pub fn exited(&self) -> Option<String> {
        self.exit_tx.borrow().clone()
    }

    /// Wait up to `timeout` for the child to exit; whether it has.
    pub fn wait_exit(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.exit_tx.borrow().is_none() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    /// Stop it: `ask` it to go (a signal, a quit command), give it
    /// `timeout`, then SIGKILL it and wait for it.
    pub fn stop(&self, ask: impl FnOnce(Pid), timeout: Duration) {
        if self.exited().is_some() {
            return;
        }
        ask(Pid::from_raw(self.pid));
        if !self.wait_exit(timeout) {
            self.signal(Signal::SIGKILL);
            self.wait_exit(KILL_WAIT);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sleep() -> Command {
        let mut c = Command::new("sleep");
        c.arg("100");
        c
    }

    #[test]
    fn a_child_is_watched_and_stopped() {
        let child = Supervised::spawn(sleep(), &[]).unwrap();
        assert!(child.exited().is_none());
        child.stop(
            |pid| {
                let _ = kill(pid, Signal::SIGTERM);
            },
            Duration::from_secs(5),
        );
        assert_eq!(child.exited().as_deref(), Some("killed by signal 15"));
    }

    #[test]
    fn a_child_that_ignores_the_request_is_killed() {
        let child = Supervised::spawn(sleep(), &[]).unwrap();
        child.stop(|_| {}, Duration::from_millis(50));
        assert_eq!(child.exited().as_deref(), Some("killed by signal 9"));
    }

    #[test]
    fn a_child_starts_with_no_blocked_signals() {
        use nix::sys::signal::{SigSet, SigmaskHow};
        std::thread::spawn(|| {
            let mut set = SigSet::empty();
            set.add(Signal::SIGTERM);
            // Blocked on this thread, as the shim blocks what it forwards.
            nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None).unwrap();
            let sigblk = |mut cmd: Command| {
                cmd.args(["SigBlk", "/proc/self/status"]);
                String::from_utf8(cmd.output().unwrap().stdout).unwrap()
            };
            // A plain Command keeps the mask (bit 14 is SIGTERM)...
            assert_eq!(sigblk(Command::new("grep")), "SigBlk:\t0000000000004000\n");
            // ...a supervised child does not.
            let dir = tempfile::tempdir().unwrap();
            let out = dir.path().join("out");
            let mut cmd = Command::new("grep");
            cmd.args(["SigBlk", "/proc/self/status"])
                .stdout(std::fs::File::create(&out).unwrap());
            let child = Supervised::spawn(cmd, &[]).unwrap();
            assert!(child.wait_exit(Duration::from_secs(10)));
            let seen = std::fs::read_to_string(&out).unwrap();
            assert_eq!(seen, "SigBlk:\t0000000000000000\n");
        })
        .join()
        .unwrap();
    }
}
