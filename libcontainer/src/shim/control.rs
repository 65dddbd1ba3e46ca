//! The shim's control socket: how the other verbs reach the process that owns
//! the VM and the agent connection.
//!
//! Every connection starts with one preface byte: `-`, or `F` carrying three
//! file descriptors (SCM_RIGHTS), the stdio of an exec'd process. Then come
//! length-prefixed JSON frames: a request, and the shim's response(s).

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use runvm_protocol::{CgroupStats, FrameError, GuestProcess};
use serde::{Deserialize, Serialize};

use crate::sockdir::SocketDir;

pub const CONTROL_SOCKET: &str = "shim.sock";
pub const PREFACE_PLAIN: u8 = b'-';
pub const PREFACE_FDS: u8 = b'F';

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum ShimRequest {
    Start,
    Kill {
        signal: i32,
        all: bool,
    },
    Pause,
    Resume,
    Stats,
    /// An OCI `linux.resources` object.
    Update {
        resources: serde_json::Value,
    },
    Ps,
    /// Start a process in the container whose stdio are the three fds sent
    /// with the preface. The shim answers `ExecStarted`, later `ExecExited`;
    /// meanwhile the client may send `ExecResize` and `ExecSignal`.
    Exec {
        exec_id: String,
        process: serde_json::Value,
    },
    ExecResize {
        rows: u16,
        cols: u16,
    },
    ExecSignal {
        signal: i32,
    },
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum ShimReply {
    Done,
    Stats(CgroupStats),
    Ps {
        /// The shim and the exec stand-ins: what containerd expects.
        host_pids: Vec<i32>,
        processes: Vec<GuestProcess>,
    },
    ExecStarted {
        guest_pid: i32,
    },
    ExecExited {
        code: i32,
    },
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
    #[error("the shim did not answer within {0:?}")]
    Timeout(Duration),
}

impl ControlError {
    /// The shim is not there to ask (it has exited).
    pub fn shim_gone(&self) -> bool {
        match self {
            ControlError::Connect { .. } => true,
            ControlError::Frame(e) => e.is_disconnect(),
            // The shim closed its socket as we connected (it is exiting).
            ControlError::Io(e) => runvm_protocol::is_disconnect(e),
            _ => false,
        }
    }
}

/// Open a connection to the shim of the container whose state dir is `dir`,
/// sending `fds` (stdin, stdout, stderr) with the preface.
pub fn connect(dir: &Path, fds: Option<[RawFd; 3]>) -> Result<UnixStream, ControlError> {
    let path = dir.join(CONTROL_SOCKET);
    let connect_err = |source| ControlError::Connect {
        path: path.clone(),
        source,
    };
    let sd = SocketDir::open(dir).map_err(connect_err)?;
    let stream = UnixStream::connect(sd.path(CONTROL_SOCKET)).map_err(connect_err)?;
    match fds {
        None => {
            use std::io::Write;
            (&stream).write_all(&[PREFACE_PLAIN])?;
        }
        Some(fds) => {
            let iov = [IoSlice::new(&[PREFACE_FDS])];
            let cmsg = [ControlMessage::ScmRights(&fds)];
            sendmsg::<()>(stream.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)
                .map_err(io::Error::from)?;
        }
    }
    Ok(stream)
}

/// Send one request to the shim of the container whose state dir is `dir`.
pub fn call(dir: &Path, req: &ShimRequest, timeout: Duration) -> Result<ShimReply, ControlError> {
    let mut stream = connect(dir, None)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let timed_out = |e: FrameError| match &e {
        FrameError::Read(io) | FrameError::Write(io)
            if matches!(
                io.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            ControlError::Timeout(timeout)
        }
        _ => ControlError::Frame(e),
    };
    runvm_protocol::send(&mut stream, req).map_err(timed_out)?;
    let resp: ShimResponse = runvm_protocol::recv(&mut stream).map_err(timed_out)?;
    resp.map_err(ControlError::Shim)
}

/// Receive the preface of a connection on the shim's side: the fds, if any.
pub fn recv_preface(sock: BorrowedFd<'_>) -> io::Result<Option<[std::os::fd::OwnedFd; 3]>> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned};
    use std::os::fd::{FromRawFd, OwnedFd};
    let mut byte = [0u8; 1];
    let mut iov = [io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([RawFd; 3]);
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(io::Error::from)?;
    let mut fds: Vec<OwnedFd> = Vec::new();
    for cmsg in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(raw) = cmsg {
            // SAFETY: SCM_RIGHTS just installed these descriptors in our
            // table; nothing else owns them.
            fds.extend(
                raw.into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    if msg.bytes == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    match (byte[0], <[OwnedFd; 3]>::try_from(fds)) {
        (PREFACE_PLAIN, Err(v)) if v.is_empty() => Ok(None),
        (PREFACE_FDS, Ok(fds)) => Ok(Some(fds)),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "bad control preface",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixListener;

    #[test]
    fn fds_travel_with_the_preface() {
        let tmp = tempfile::tempdir().unwrap();
        let listener = UnixListener::bind(tmp.path().join(CONTROL_SOCKET)).unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        let client = connect(
            tmp.path(),
            Some([r.as_raw_fd(), w.as_raw_fd(), w.as_raw_fd()]),
        )
        .unwrap();
        let (server, _) = listener.accept().unwrap();
        let fds = recv_preface(server.as_fd()).unwrap().expect("three fds");
        // The received write end reaches the original pipe.
        nix::unistd::write(&fds[1], b"x").unwrap();
        let mut buf = [0u8; 1];
        nix::unistd::read(r.as_raw_fd(), &mut buf).unwrap();
        assert_eq!(&buf, b"x");
        drop(client);

        let _plain = connect(tmp.path(), None).unwrap();
        let (server, _) = listener.accept().unwrap();
        assert!(recv_preface(server.as_fd()).unwrap().is_none());
    }
}
