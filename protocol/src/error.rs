//! The agent's errors: a kind the host matches, and the guest's account.

use serde::{Deserialize, Serialize};

/// What kind of failure the guest reports. The host turns these into runc's
/// words (a `NotRunning` start is "cannot start a container that has
/// stopped", a `NotRunning` signal "container not running"); it never parses
/// the message.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AgentErrorKind {
    /// No container or process of that name in the guest.
    NotFound,
    /// The container or process has already exited.
    NotRunning,
    /// A container or exec id that is already in use.
    AlreadyExists,
    /// The request is malformed: a bad id, signal, seed or spec.
    InvalidArgument,
    /// The request does not apply (a resize of a process without a
    /// terminal), or asks for more than the VM has.
    Refused,
    /// youki could not create, start or exec the process; the message is
    /// youki's (an OCI runtime error, e.g. "exec: ...: no such file or
    /// directory"), which clients show and match as they do runc's.
    Runtime,
    /// A system call in the guest failed (mount, cgroup files, ...).
    System,
}

/// An error from the agent.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct AgentError {
    pub kind: AgentErrorKind,
    /// What happened, in the guest's words (with its context).
    pub message: String,
}

impl AgentError {
    pub fn new(kind: AgentErrorKind, message: impl Into<String>) -> Self {
        AgentError {
            kind,
            message: message.into(),
        }
    }

    /// The longest message the host passes on; the rest is cut (the guest
    /// is not trusted to be brief).
    pub const MAX_MESSAGE: usize = 4096;

    /// This error with its message cut to [`Self::MAX_MESSAGE`] bytes.
    pub fn bounded(mut self) -> Self {
        if self.message.len() > Self::MAX_MESSAGE {
            let mut end = Self::MAX_MESSAGE;
            while !self.message.is_char_boundary(end) {
                end -= 1;
            }
            self.message.truncate(end);
            self.message.push_str("...");
        }
        self
    }

    /// A failed system call or library call, with what the agent was doing.
    pub fn system(context: &str, err: impl std::fmt::Display) -> Self {
        Self::new(AgentErrorKind::System, format!("{context}: {err}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_message_is_cut_at_a_character() {
        let e = AgentError::new(AgentErrorKind::System, "é".repeat(5000)).bounded();
        assert!(e.message.len() <= AgentError::MAX_MESSAGE + 3);
        assert!(e.message.ends_with("..."));
        let short = AgentError::new(AgentErrorKind::System, "short").bounded();
        assert_eq!(short.message, "short");
    }
}
