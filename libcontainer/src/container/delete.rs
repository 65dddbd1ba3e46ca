//! `delete`: a container and everything it started, gone.

use std::time::Duration;

use slog::warn;

use super::creating::Ender;
use super::{ContainerError, Runtime};
use crate::control::Kill;
use crate::hooks::Kind;
use crate::id::validate_id;
use crate::procinfo::ProcessIdentity;
use crate::state::StateError;
use crate::status::{ContainerStatus, Refusal};

impl Runtime {
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
        let stop = self.config.runtime.stop() + Duration::from_secs(5);
        let ended_create = status == ContainerStatus::Creating;
        if ended_create && !self.end_create(id, Ender::Delete)? {
            // Create finished first: delete what it made.
            return self.delete(id, force);
        }
        if let Some(shim) = state.shim.filter(|s| s.is_alive()) {
            if status != ContainerStatus::Creating {
                if status != ContainerStatus::Stopped {
                    // The shim kills the container, stops its VM and exits.
                    let kill = Kill {
                        signal: libc::SIGKILL,
                        all: false,
                    };
                    let _ = self.ask(id, kill, self.shim_timeout(), Refusal::NotRunning);
                }
                // A stopped container's shim may still be stopping its VM:
                // let it finish, and kill it only if it does not.
                if !shim.wait_gone(stop) {
                    shim.kill_and_wait(stop);
                }
            }
            if shim.is_alive() {
                return Err(ContainerError::ShimStuck {
                    pid: shim.pid,
                    timeout: stop,
                });
            }
        }
        let _lock = match self.store.lock(id) {
            // The create we ended removed what it made first.
            Err(StateError::NotExist { .. }) if ended_create => return Ok(()),
            lock => lock?,
        };
        // The shim stops its VM and virtiofsd; if it was killed, they got
        // their parent-death signal. Make sure either way.
        let state = self.store.load(id).unwrap_or(state);
        for p in state.processes() {
            p.kill_and_wait(stop);
        }
        // Kept on failure, with the state: a delete again tries again.
        if let Some(cgroup) = &state.host_cgroup {
            cgroup.remove(stop)?;
        }
        self.run_hooks(&state, Kind::Poststop, ContainerStatus::Stopped, None);
        self.store.remove(id)?;
        Ok(())
    }

    /// The host cgroup of a container whose create failed; a failure is
    /// a warning (the create's error is the one to report).
    pub(super) fn remove_host_cgroup(&self, state: &crate::state::State) {
        if let Some(cgroup) = &state.host_cgroup {
            let stop = self.config.runtime.stop() + Duration::from_secs(5);
            if let Err(e) = cgroup.remove(stop) {
                warn!(self.log, "remove the host cgroup of a failed create"; "error" => crate::error_chain(&e));
            }
        }
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
    /// identifies them without the file; the host cgroup is in the record
    /// create left beside it.
    fn delete_unreadable(&self, id: &str) -> Result<(), ContainerError> {
        let dir = self.store.dir(id);
        let stop = self.config.runtime.stop() + Duration::from_secs(5);
        for p in ProcessIdentity::working_in(&dir) {
            warn!(self.log, "killing a process of a container with unreadable state"; "pid" => p.pid);
            p.kill_and_wait(stop);
        }
        if let Some(cgroup) = crate::host_cgroup::Record::saved_in(&dir) {
            cgroup.remove(stop)?;
        }
        let _lock = self.store.lock(id)?;
        self.store.remove(id)?;
        Ok(())
    }
}
