//! `run`: create and start, detached or with the caller waiting.

use std::os::fd::AsFd;

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};

use super::{ContainerError, CreateOptions, Runtime};
use crate::signal::Forwarder;
use crate::spec::Bundle;

impl Runtime {
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
    /// container is deleted afterwards unless `keep`. A foreground
    /// `restore` is the same, its container restored rather than created
    /// and started.
    pub fn run(&self, opts: &CreateOptions, keep: bool) -> Result<i32, ContainerError> {
        // Catch the signals we forward before the shim exists, so none is
        // lost; the shim starts with an empty mask (see exec_shim).
        let mut signals = Forwarder::new(&[Signal::SIGCHLD]).map_err(ContainerError::Wait)?;
        // With a terminal and no console socket the container uses our own
        // terminal, raw while it runs, as under runc.
        let _raw = match Bundle::load(&opts.bundle) {
            Ok(b) if b.terminal() && opts.console_socket.is_none() => {
                crate::terminal::RawMode::enter(std::io::stdin().as_fd())
            }
            _ => None,
        };
        let shim = self.create_with(opts, false)?;
        if opts.restore.is_none() {
            if let Err(e) = self.start(&opts.id) {
                let _ = self.delete(&opts.id, true);
                let _ = waitpid(shim, None);
                return Err(e);
            }
        }
        let code = loop {
            match waitpid(shim, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, code)) => break code,
                Ok(WaitStatus::Signaled(_, sig, _)) => break 128 + sig as i32,
                Ok(_) => {}
                Err(e) => return Err(ContainerError::Wait(e)),
            }
            match signals.wait() {
                Ok(libc::SIGCHLD) | Err(_) => {}
                Ok(sig) => {
                    if let Ok(sig) = Signal::try_from(sig) {
                        let _ = kill(shim, sig);
                    }
                }
            }
        };
        if !keep {
            self.delete(&opts.id, true)?;
        }
        Ok(code)
    }
}
