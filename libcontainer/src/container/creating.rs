//! Verbs that arrive while `create` is still bringing the container up.
//!
//! runc's create takes ~40 ms; runvm's boots a VM, which under TCG takes
//! seconds. Clients and harnesses that give create a fixed second and then
//! call `start` must not be refused (and then hang on create's stdout, which
//! the shim holds for a container that would never start): `start` waits for
//! create to finish. `kill` and `delete --force` end the create: its shim is
//! killed (QEMU and virtiofsd follow it by their parent-death signal) and
//! `create` fails saying why.

use std::path::Path;
use std::time::{Duration, Instant};

use slog::info;

use super::{ContainerError, Runtime};
use crate::state::{State, StateError};
use crate::status::ContainerStatus;

/// Left in the state directory by a verb that ended a create, naming it.
const ENDED_MARKER: &str = "ended-while-creating";

/// The verb that ends a create.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Ender {
    Kill,
    Delete,
}

impl Ender {
    fn as_str(self) -> &'static str {
        match self {
            Ender::Kill => "kill",
            Ender::Delete => "delete",
        }
    }
}

/// How often a waiting verb looks at the state again.
const POLL: Duration = Duration::from_millis(50);

impl Runtime {
    /// How long `create` waits for its shim, and a verb for `create`.
    pub(super) fn create_timeout(&self) -> Duration {
        self.config.runtime.boot() + self.config.runtime.request() * 2
    }

    /// The state of a container once `create` has finished with it (the
    /// lock is not held meanwhile: create and its shim need it).
    pub(super) fn wait_created(&self, id: &str) -> Result<State, ContainerError> {
        info!(self.log, "the container is still being created: waiting for create to finish"; "id" => id);
        let timeout = self.create_timeout();
        let deadline = Instant::now() + timeout;
        loop {
            let failed = ContainerError::CreateFailedMeanwhile { id: id.into() };
            match self.store.load(id).map(|s| (s.refreshed_status(), s)) {
                Ok((ContainerStatus::Creating, _)) => {}
                // A failed create's shim says stopped, and create then
                // removes what it made.
                Ok((ContainerStatus::Stopped, _)) | Err(StateError::NotExist { .. }) => {
                    return Err(failed)
                }
                Ok((_, s)) => return Ok(s),
                Err(e) => return Err(e.into()),
            }
            if Instant::now() >= deadline {
                return Err(ContainerError::StillCreating {
                    id: id.into(),
                    timeout,
                });
            }
            std::thread::sleep(POLL);
        }
    }

    /// End a create that is still under way: kill its shim, or, if create
    /// has not started one yet, wait until it has. The directory is marked
    /// with the verb first, so that create can say why its shim vanished.
    /// False if create finished first (the container is created, or its
    /// create failed).
    pub(super) fn end_create(&self, id: &str, verb: Ender) -> Result<bool, ContainerError> {
        let marker = self.store.dir(id).join(ENDED_MARKER);
        let _ = std::fs::write(&marker, verb.as_str());
        let ended = self.kill_creating_shim(id);
        if !matches!(ended, Ok(true)) {
            let _ = std::fs::remove_file(&marker);
        }
        ended
    }

    fn kill_creating_shim(&self, id: &str) -> Result<bool, ContainerError> {
        let timeout = self.create_timeout();
        let deadline = Instant::now() + timeout;
        loop {
            let state = match self.store.load(id) {
                Ok(s) => s,
                Err(StateError::NotExist { .. }) => return Ok(false),
                Err(e) => return Err(e.into()),
            };
            if state.refreshed_status() != ContainerStatus::Creating {
                return Ok(false);
            }
            if let Some(shim) = state.shim.filter(|s| s.is_alive()) {
                info!(self.log, "ending a create that is under way"; "id" => id, "shim" => shim.pid);
                let stop = self.config.runtime.stop() + Duration::from_secs(5);
                shim.kill_and_wait(stop);
                if shim.is_alive() {
                    return Err(ContainerError::ShimStuck {
                        pid: shim.pid,
                        timeout: stop,
                    });
                }
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Err(ContainerError::StillCreating {
                    id: id.into(),
                    timeout,
                });
            }
            std::thread::sleep(POLL);
        }
    }
}

/// Why a shim vanished before it reported: a verb ended the create, or it
/// died of its own.
pub(super) fn vanished(id: &str, dir: &Path) -> ContainerError {
    let ender = std::fs::read(dir.join(ENDED_MARKER)).ok();
    match ender.as_deref() {
        Some(b"kill") => ContainerError::KilledWhileCreating { id: id.into() },
        // Delete removes the directory, marker and all.
        Some(b"delete") => ContainerError::DeletedWhileCreating { id: id.into() },
        _ if !dir.exists() => ContainerError::DeletedWhileCreating { id: id.into() },
        _ => ContainerError::ShimVanished {
            log: dir.join("shim.log"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vanished_shim_is_explained_by_the_verb_that_ended_it() {
        let dir = tempfile::tempdir().unwrap();
        let said = |d: &Path| vanished("c1", d).to_string();
        assert!(said(dir.path()).starts_with("the shim exited before"));
        std::fs::write(dir.path().join(ENDED_MARKER), Ender::Kill.as_str()).unwrap();
        assert_eq!(
            said(dir.path()),
            "container c1 was killed while it was being created"
        );
        std::fs::write(dir.path().join(ENDED_MARKER), Ender::Delete.as_str()).unwrap();
        assert_eq!(
            said(dir.path()),
            "container c1 was deleted while it was being created"
        );
        assert_eq!(
            said(&dir.path().join("gone")),
            "container c1 was deleted while it was being created"
        );
    }
}
