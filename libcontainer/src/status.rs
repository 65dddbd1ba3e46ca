//! A container's status and the lifecycle rules that hang off it, with
//! runc's words for each refusal. Both the verbs (from state.json) and the
//! shim (from what it knows) ask these.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ContainerStatus {
    /// `create` is booting the VM and preparing the container.
    Creating,
    /// The container process exists in the guest, held before its user code.
    Created,
    /// The container process runs.
    Running,
    /// The container is frozen.
    Paused,
    /// The container process has exited (or its VM or shim is gone).
    Stopped,
}

/// Why a verb cannot act on a container in its status, in runc's words. It
/// crosses the shim's control socket as is, so the words are made here only.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("cannot start a container that has stopped")]
    StartStopped,
    #[error("cannot start an already running container")]
    StartRunning,
    /// runc's words for the other states ("paused", "creating").
    #[error("cannot start a container in the {0} state")]
    StartInState(ContainerStatus),
    #[error("container not running")]
    NotRunning,
    #[error("container not paused")]
    NotPaused,
    #[error("cannot exec in a stopped container")]
    ExecStopped,
    #[error("cannot exec in a container that is still being created")]
    ExecCreating,
    #[error("cannot exec in a paused container (use --ignore-paused to override)")]
    ExecPaused,
}

impl ContainerStatus {
    pub fn can_start(self) -> bool {
        self == ContainerStatus::Created
    }

    /// `start`, or why not.
    pub fn check_start(self) -> Result<(), Refusal> {
        match self {
            s if s.can_start() => Ok(()),
            ContainerStatus::Stopped => Err(Refusal::StartStopped),
            ContainerStatus::Running => Err(Refusal::StartRunning),
            other => Err(Refusal::StartInState(other)),
        }
    }

    pub fn can_kill(self) -> bool {
        matches!(
            self,
            ContainerStatus::Created | ContainerStatus::Running | ContainerStatus::Paused
        )
    }

    /// `kill`, or why not.
    pub fn check_kill(self) -> Result<(), Refusal> {
        self.can_kill().then_some(()).ok_or(Refusal::NotRunning)
    }

    /// Whether `delete` without `--force` may remove it. Like runc, a created
    /// container is killed and removed; a running or paused one needs force.
    pub fn can_delete(self) -> bool {
        matches!(self, ContainerStatus::Created | ContainerStatus::Stopped)
    }

    /// Like runc, a created container can be paused as well as a running one.
    pub fn can_pause(self) -> bool {
        matches!(self, ContainerStatus::Created | ContainerStatus::Running)
    }

    /// `pause`, or why not.
    pub fn check_pause(self) -> Result<(), Refusal> {
        self.can_pause().then_some(()).ok_or(Refusal::NotRunning)
    }

    pub fn can_resume(self) -> bool {
        self == ContainerStatus::Paused
    }

    /// `resume`, or why not.
    pub fn check_resume(self) -> Result<(), Refusal> {
        self.can_resume().then_some(()).ok_or(Refusal::NotPaused)
    }

    pub fn can_exec(self) -> bool {
        matches!(self, ContainerStatus::Created | ContainerStatus::Running)
    }

    /// `exec` (with `--ignore-paused` or not), or why not. As under runc, a
    /// created container takes an exec.
    pub fn check_exec(self, ignore_paused: bool) -> Result<(), Refusal> {
        match self {
            s if s.can_exec() => Ok(()),
            ContainerStatus::Paused if ignore_paused => Ok(()),
            ContainerStatus::Paused => Err(Refusal::ExecPaused),
            ContainerStatus::Creating => Err(Refusal::ExecCreating),
            _ => Err(Refusal::ExecStopped),
        }
    }

    /// Whether a shim process should be alive behind this status.
    pub fn has_shim(self) -> bool {
        !matches!(self, ContainerStatus::Stopped)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ContainerStatus::Creating => "creating",
            ContainerStatus::Created => "created",
            ContainerStatus::Running => "running",
            ContainerStatus::Paused => "paused",
            ContainerStatus::Stopped => "stopped",
        }
    }
}

impl fmt::Display for ContainerStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::ContainerStatus::*;
    use super::Refusal;

    #[test]
    fn creating() {
        let s = Creating;
        assert!(!s.can_start() && !s.can_kill() && !s.can_delete());
        assert!(!s.can_pause() && !s.can_resume() && !s.can_exec());
        assert!(s.has_shim());
        assert_eq!(s.check_start(), Err(Refusal::StartInState(Creating)));
        assert_eq!(s.check_exec(true), Err(Refusal::ExecCreating));
        assert_eq!(s.check_kill(), Err(Refusal::NotRunning));
    }

    #[test]
    fn created() {
        let s = Created;
        assert!(s.can_start() && s.can_kill() && s.can_delete() && s.can_exec());
        assert!(s.can_pause() && !s.can_resume());
        assert_eq!(s.check_start(), Ok(()));
        assert_eq!(s.check_exec(false), Ok(()));
        assert_eq!(s.check_resume(), Err(Refusal::NotPaused));
    }

    #[test]
    fn running() {
        let s = Running;
        assert!(!s.can_start() && !s.can_delete() && !s.can_resume());
        assert!(s.can_kill() && s.can_pause() && s.can_exec());
        assert_eq!(s.check_start(), Err(Refusal::StartRunning));
    }

    #[test]
    fn paused() {
        let s = Paused;
        assert!(!s.can_start() && !s.can_delete() && !s.can_pause() && !s.can_exec());
        assert!(s.can_kill() && s.can_resume());
        assert_eq!(s.check_exec(false), Err(Refusal::ExecPaused));
        assert_eq!(s.check_exec(true), Ok(()));
        assert_eq!(s.check_pause(), Err(Refusal::NotRunning));
    }

    #[test]
    fn stopped() {
        let s = Stopped;
        assert!(!s.can_start() && !s.can_kill() && !s.can_pause());
        assert!(!s.can_resume() && !s.can_exec() && !s.has_shim());
        assert!(s.can_delete());
        assert_eq!(s.check_start(), Err(Refusal::StartStopped));
        assert_eq!(s.check_exec(true), Err(Refusal::ExecStopped));
    }

    #[test]
    fn refusals_use_runc_words() {
        assert_eq!(
            Refusal::StartInState(Paused).to_string(),
            "cannot start a container in the paused state"
        );
        assert_eq!(Refusal::NotRunning.to_string(), "container not running");
    }

    #[test]
    fn serializes_in_lowercase_like_runc() {
        assert_eq!(serde_json::to_string(&Running).unwrap(), "\"running\"");
        assert_eq!(Stopped.to_string(), "stopped");
    }
}
