//! The container's stdio and terminal on the host.

use std::fs;
use std::os::fd::{AsFd, AsRawFd};

use runvm_protocol::{ProcessRef, ResizeTty};
use slog::warn;

use super::stdio::Local;
use super::{Shim, ShimError};
use crate::error_chain;
use crate::terminal;

impl Shim {
    /// The container's stdio on the host: what `create` was given, or, for a
    /// terminal, a new pty whose master goes to the console socket (or the
    /// caller's own terminal, for `run` in the foreground).
    pub(super) fn init_stdio(&mut self, terminal: bool) -> Result<Local, ShimError> {
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
        let (slave, controlling) = terminal::console_pty(&console)?;
        if let Err(e) = controlling {
            warn!(self.log, "no controlling terminal: resizes will not reach the container"; "error" => %e);
        }
        self.resize_source = Some(slave.try_clone().map_err(ShimError::Stdio)?);
        // The container's stdio is the pty now: let go of what `create` was
        // given, or its caller would wait for EOF on those pipes forever.
        drop(own);
        if let Ok(null) = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
        {
            for fd in 0..3 {
                let _ = nix::unistd::dup2(null.as_raw_fd(), fd);
            }
        }
        Ok(Local {
            stdin: slave.try_clone().map_err(ShimError::Stdio)?,
            stdout: slave,
            stderr: None,
        })
    }

    /// Give the container's terminal the host terminal's window size.
    pub(super) async fn push_window_size(&self) {
        let (Some(tty), Some(agent)) = (&self.resize_source, &self.agent) else {
            return;
        };
        let Some((rows, cols)) = terminal::window_size(tty.as_fd()) else {
            return;
        };
        let req = ResizeTty {
            process: ProcessRef::init(&self.guest_id),
            rows,
            cols,
        };
        if let Err(e) = agent.call(req).await {
            warn!(self.log, "resize the terminal"; "error" => error_chain(&e));
        }
    }
}
