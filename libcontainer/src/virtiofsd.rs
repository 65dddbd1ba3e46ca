//! virtiofsd: serves a host directory to the guest over vhost-user.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::sync::watch;

use crate::config::VirtiofsdConfig;
use crate::hypervisor::ExitWatch;

#[derive(Debug, thiserror::Error)]
pub enum VirtiofsdError {
    #[error("bind {path}")]
    Bind { path: PathBuf, source: io::Error },
    #[error("create {path}")]
    Log { path: PathBuf, source: io::Error },
    #[error("start {binary}")]
    Spawn { binary: PathBuf, source: io::Error },
}

pub struct Virtiofsd {
    pid: i32,
    exit_tx: watch::Sender<Option<String>>,
}

/// What to serve and how.
pub struct Share<'a> {
    pub shared_dir: &'a Path,
    pub socket: &'a Path,
    pub readonly: bool,
    pub log: &'a Path,
}

impl Virtiofsd {
    /// Start virtiofsd on a listening socket bound here, so the socket exists
    /// before QEMU connects to it (no polling for the file to appear).
    /// Like QEMU, it gets SIGKILL when the calling thread exits.
    pub fn spawn(
        binary: &Path,
        config: &VirtiofsdConfig,
        share: &Share<'_>,
    ) -> Result<Self, VirtiofsdError> {
        let listener = UnixListener::bind(share.socket).map_err(|source| VirtiofsdError::Bind {
            path: share.socket.to_path_buf(),
            source,
        })?;
        let fd = listener.as_raw_fd();
        let log_err = |source| VirtiofsdError::Log {
            path: share.log.to_path_buf(),
            source,
        };
        let log = File::create(share.log).map_err(log_err)?;
        let mut cmd = Command::new(binary);
        cmd.arg(format!("--fd={fd}"))
            .arg("--shared-dir")
            .arg(share.shared_dir)
            .arg(format!("--sandbox={}", config.sandbox))
            .arg(format!("--cache={}", config.cache))
            .arg("--log-level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(log_err)?)
            .stderr(log);
        if share.readonly {
            cmd.arg("--readonly");
        }
        // SAFETY: fcntl and prctl are async-signal-safe and only touch the
        // child's own descriptor table and process attributes.
        unsafe {
            cmd.pre_exec(move || {
                // Hand the listening socket over: clear its close-on-exec.
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0
                    || libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|source| VirtiofsdError::Spawn {
            binary: binary.to_path_buf(),
            source,
        })?;
        drop(listener);
        let pid = child.id() as i32;
        let exit_tx = watch::channel(None).0;
        let tx = exit_tx.clone();
        std::thread::spawn(move || {
            let desc = match child.wait() {
                Ok(s) => match (s.code(), s.signal()) {
                    (Some(c), _) => format!("exited with status {c}"),
                    (_, Some(sig)) => format!("killed by signal {sig}"),
                    _ => "ended".into(),
                },
                Err(e) => format!("wait failed: {e}"),
            };
            tx.send_replace(Some(desc));
        });
        Ok(Virtiofsd { pid, exit_tx })
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    pub fn exit_watch(&self) -> ExitWatch {
        self.exit_tx.subscribe()
    }

    /// Stop it (it normally exits by itself when QEMU disconnects).
    pub fn stop(&self, timeout: Duration) {
        if self.exit_tx.borrow().is_some() {
            return;
        }
        let _ = kill(Pid::from_raw(self.pid), Signal::SIGTERM);
        let deadline = Instant::now() + timeout;
        while self.exit_tx.borrow().is_none() {
            if Instant::now() >= deadline {
                let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
                deadline_wait(&self.exit_tx, Duration::from_secs(5));
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn deadline_wait(tx: &watch::Sender<Option<String>>, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while tx.borrow().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl Drop for Virtiofsd {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(1));
    }
}
