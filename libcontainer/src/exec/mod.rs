//! `runvm exec`: the process description runc would build (`process`), and
//! the stand-in on the host that represents the process in the guest
//! (`stand_in`). The stand-in hands its stdio to the container's shim,
//! forwards the signals it receives, and exits with the process's exit code;
//! with `--detach` it is forked off and its pid goes in `--pid-file`, so
//! containerd and conmon reap it.

mod process;
mod stand_in;

use std::io;
use std::path::PathBuf;

pub use process::build_process;
pub use stand_in::{new_exec_id, run_attached, run_detached, Session, StandInError};

use crate::control::ControlError;
use crate::terminal::TerminalError;

/// runc's `exec` flags.
#[derive(Debug, Clone, Default)]
pub struct ExecOptions {
    pub id: String,
    pub process_file: Option<PathBuf>,
    pub args: Vec<String>,
    pub tty: bool,
    pub console_socket: Option<PathBuf>,
    pub cwd: Option<PathBuf>,
    pub env: Vec<(String, String)>,
    pub user: Option<(u32, Option<u32>)>,
    pub additional_gids: Vec<u32>,
    pub caps: Vec<String>,
    pub no_new_privs: bool,
    pub detach: bool,
    pub pid_file: Option<PathBuf>,
    pub ignore_paused: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("read {path}")]
    ReadProcess { path: PathBuf, source: io::Error },
    #[error("parse {path}")]
    ParseProcess {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("args must not be empty")]
    NoArgs,
    #[error("cwd {0} must be an absolute path")]
    RelativeCwd(PathBuf),
    #[error("unknown capability {0:?}")]
    UnknownCapability(String),
    #[error("cannot allocate tty if runvm will detach without setting console socket")]
    TerminalWithoutConsole,
    #[error("cannot use console socket if runvm will not detach or allocate tty")]
    ConsoleWithoutTerminal,
    #[error(transparent)]
    Terminal(#[from] TerminalError),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("the exec's stdio")]
    Stdio(#[source] io::Error),
    #[error("the shim ended the exec session without an exit status")]
    SessionLost,
    #[error("start the exec stand-in")]
    Fork(#[source] nix::Error),
    #[error("the exec stand-in exited before the process started")]
    StandInVanished,
    /// What the detached stand-in reported.
    #[error(transparent)]
    StandIn(StandInError),
    #[error("write pid file")]
    PidFile(#[source] crate::state::StateError),
    #[error("signals")]
    Signals(#[source] nix::Error),
}
