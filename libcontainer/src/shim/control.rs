//! The shim's control socket: how `runvm start`, `kill`, `delete` reach the
//! process that owns the VM and the agent connection.

use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use runvm_protocol::FrameError;
use serde::{Deserialize, Serialize};

use crate::sockdir::SocketDir;

pub const CONTROL_SOCKET: &str = "shim.sock";

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum ShimRequest {
    Start,
    Kill { signal: i32, all: bool },
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum ShimReply {
    Done,
}

/// The shim answers with its error message, in runc's words where runc has
/// them.
pub type ShimResponse = Result<ShimReply, String>;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Nobody listens: the shim is gone.
    #[error("connect to the shim at {path}")]
    Connect { path: PathBuf, source: io::Error },
    #[error("talk to the shim")]
    Frame(#[from] FrameError),
    #[error("talk to the shim")]
    Io(#[from] io::Error),
    /// The shim's own error message.
    #[error("{0}")]
    Shim(String),
}

impl ControlError {
    /// The shim is not there to ask (it has exited).
    pub fn shim_gone(&self) -> bool {
        match self {
            ControlError::Connect { .. } => true,
            ControlError::Frame(e) => e.is_disconnect(),
            _ => false,
        }
    }
}

/// Send one request to the shim of the container whose state dir is `dir`.
pub fn call(dir: &Path, req: &ShimRequest, timeout: Duration) -> Result<ShimReply, ControlError> {
    let sd = SocketDir::open(dir).map_err(|source| ControlError::Connect {
        path: dir.join(CONTROL_SOCKET),
        source,
    })?;
    let mut stream =
        UnixStream::connect(sd.path(CONTROL_SOCKET)).map_err(|source| ControlError::Connect {
            path: dir.join(CONTROL_SOCKET),
            source,
        })?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    runvm_protocol::send(&mut stream, req)?;
    let resp: ShimResponse = runvm_protocol::recv(&mut stream)?;
    resp.map_err(ControlError::Shim)
}
