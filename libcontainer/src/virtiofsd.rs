//! virtiofsd: serves a host directory to the guest over vhost-user.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};

use crate::child::{ExitWatch, Supervised};
use crate::config::VirtiofsdConfig;
use crate::locate::{find_binary, LocateError};

#[derive(Debug, thiserror::Error)]
pub enum VirtiofsdError {
    #[error(transparent)]
    Locate(#[from] LocateError),
    #[error("bind {path}")]
    Bind { path: PathBuf, source: io::Error },
    #[error("create {path}")]
    Log { path: PathBuf, source: io::Error },
    #[error("start {binary}")]
    Spawn { binary: PathBuf, source: io::Error },
}

pub struct Virtiofsd {
    child: Supervised,
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
    pub fn spawn(config: &VirtiofsdConfig, share: &Share<'_>) -> Result<Self, VirtiofsdError> {
        let binary = find_binary(&config.path)?;
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
        let mut cmd = Command::new(&binary);
        cmd.arg(format!("--fd={fd}"))
            .arg("--shared-dir")
            .arg(share.shared_dir)
            .arg(format!("--sandbox={}", config.sandbox.as_str()))
            .arg(format!("--cache={}", config.cache.as_str()))
            .arg("--log-level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(log_err)?)
            .stderr(log);
        if share.readonly {
            cmd.arg("--readonly");
        }
        cmd.args(&config.extra_args);
        // The listening socket is handed over: it stays open across exec.
        let child = Supervised::spawn(cmd, &[fd])
            .map_err(|source| VirtiofsdError::Spawn { binary, source })?;
        drop(listener);
        Ok(Virtiofsd { child })
    }

    pub fn pid(&self) -> i32 {
        self.child.pid()
    }

    pub fn exit_watch(&self) -> ExitWatch {
        self.child.exit_watch()
    }

    /// Stop it (it normally exits by itself when QEMU disconnects).
    pub fn stop(&self, timeout: Duration) {
        self.child.stop(
            |pid| {
                let _ = kill(pid, Signal::SIGTERM);
            },
            timeout,
        );
    }
}

impl Drop for Virtiofsd {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(1));
    }
}
