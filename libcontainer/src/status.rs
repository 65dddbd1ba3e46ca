//! A container's status and the lifecycle rules that hang off it.

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

impl ContainerStatus {
    pub fn can_start(self) -> bool {
        self == ContainerStatus::Created
    }

    pub fn can_kill(self) -> bool {
        matches!(
            self,
            ContainerStatus::Created | ContainerStatus::Running | ContainerStatus::Paused
        )
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

    pub fn can_resume(self) -> bool {
        self == ContainerStatus::Paused
    }

    pub fn can_exec(self) -> bool {
        matches!(self, ContainerStatus::Created | ContainerStatus::Running)
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

    #[test]
    fn creating() {
        let s = Creating;
        assert!(!s.can_start() && !s.can_kill() && !s.can_delete());
        assert!(!s.can_pause() && !s.can_resume() && !s.can_exec());
        assert!(s.has_shim());
    }

    #[test]
    fn created() {
        let s = Created;
        assert!(s.can_start() && s.can_kill() && s.can_delete() && s.can_exec());
        assert!(s.can_pause() && !s.can_resume());
    }

    #[test]
    fn running() {
        let s = Running;
        assert!(!s.can_start() && !s.can_delete() && !s.can_resume());
        assert!(s.can_kill() && s.can_pause() && s.can_exec());
    }

    #[test]
    fn paused() {
        let s = Paused;
        assert!(!s.can_start() && !s.can_delete() && !s.can_pause() && !s.can_exec());
        assert!(s.can_kill() && s.can_resume());
    }

    #[test]
    fn stopped() {
        let s = Stopped;
        assert!(!s.can_start() && !s.can_kill() && !s.can_pause());
        assert!(!s.can_resume() && !s.can_exec() && !s.has_shim());
        assert!(s.can_delete());
    }

    #[test]
    fn serializes_in_lowercase_like_runc() {
        assert_eq!(serde_json::to_string(&Running).unwrap(), "\"running\"");
        assert_eq!(Stopped.to_string(), "stopped");
    }
}
