//! The wire between the verbs and a container's shim, and its client.
//!
//! Every connection to `<state dir>/shim.sock` starts with one preface byte:
//! `-`, or `F` carrying three file descriptors (SCM_RIGHTS), the stdio of an
//! exec'd process. Then come length-prefixed JSON frames: a [`ShimRequest`],
//! and the shim's `Result<Reply, ShimFailure>` with the reply type of that
//! request ([`Call::Reply`]). An exec session goes on: the client may send
//! [`ExecControl`] frames, and the shim ends it with `Result<ExecExited,
//! ShimFailure>`.
//!
//! `runvm create` learns how creating went from the shim's [`Ready`], on a
//! pipe.

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use oci_spec::runtime::{LinuxResources, Process};
use runvm_protocol::{AgentError, AgentErrorKind, CgroupStats, FrameError, GuestProcess};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::sockdir::SocketDir;
use crate::status::Refusal;

pub const CONTROL_SOCKET: &str = "shim.sock";
pub const PREFACE_PLAIN: u8 = b'-';
pub const PREFACE_FDS: u8 = b'F';

/// A request to the shim, answered with `Result<Self::Reply, ShimFailure>`.
pub trait Call: Into<ShimRequest> {
    type Reply: Serialize + DeserializeOwned;
}

runvm_protocol::typed_requests! {
    /// Every request to the shim.
    Call for ShimRequest {
    Start(Start) -> ();
    Kill(Kill) -> ();
    Pause(Pause) -> ();
    Resume(Resume) -> ();
    Stats(Stats) -> CgroupStats;
    Update(Update) -> ();
    Ps(Ps) -> Processes;
    /// Save the whole VM into a checkpoint image (docs/checkpoint.md).
    Checkpoint(Checkpoint) -> ();
    /// Start a process in the container whose stdio are the three fds sent
    /// with the preface; the session then lasts until it exits.
    Exec(Exec) -> ExecStarted;
}
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Start;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Kill {
    pub signal: i32,
    pub all: bool,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Pause;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Resume;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Stats;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Update {
    pub resources: LinuxResources,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Ps;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// The image's directory (it exists, empty, made by the verb).
    pub image: PathBuf,
    /// Go on running afterwards; otherwise the container stops.
    pub leave_running: bool,
    /// What the hypervisor says of itself, for the image (the verb asks
    /// it: the shim, under its seccomp filter, starts no process).
    pub vmm_info: serde_json::Map<String, serde_json::Value>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Exec {
    pub exec_id: String,
    pub process: Process,
    pub ignore_paused: bool,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Processes {
    /// The shim and the exec stand-ins: what containerd expects.
    pub host_pids: Vec<i32>,
    pub processes: Vec<GuestProcess>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecStarted {
    pub guest_pid: i32,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecExited {
    pub code: i32,
}

/// What the exec stand-in sends during a session.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum ExecControl {
    Resize { rows: u16, cols: u16 },
    Signal { signal: i32 },
}

/// Why the shim did not do what it was asked. Its `Display` is what the
/// user sees: runc's words for refusals (from [`Refusal`]), the guest's
/// account for what failed there.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, thiserror::Error)]
pub enum ShimFailure {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("the agent did not answer within {0:?}")]
    AgentTimeout(Duration),
    #[error("the connection to the agent is lost")]
    AgentLost,
    #[error("the agent sent a reply runvm cannot read")]
    AgentGarbled,
    /// The guest's error, with its kind.
    #[error(transparent)]
    Agent(AgentError),
    /// A call of the shim's own failed: what it was doing, and the errno.
    #[error("{context}{}", errno_text(*.errno))]
    Io { context: String, errno: Option<i32> },
    #[error("an exec needs the process's stdio")]
    ExecWithoutStdio,
}

fn errno_text(errno: Option<i32>) -> String {
    errno
        .map(|e| format!(": {}", io::Error::from_raw_os_error(e)))
        .unwrap_or_default()
}

impl ShimFailure {
    pub fn io(context: impl Into<String>, e: &io::Error) -> Self {
        ShimFailure::Io {
            context: context.into(),
            errno: e.raw_os_error(),
        }
    }
}

/// How creating went, from the shim to `runvm create`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum Ready {
    Created { shim_pid: i32 },
    Failed(CreateFailure),
}

/// Why the shim could not create the container. `message` is what runc
/// would print (for a failure in the guest, youki's words, which clients
/// match: Podman maps "no such file or directory" to 127).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct CreateFailure {
    pub stage: CreateStage,
    pub message: String,
}

/// Where creating failed.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateStage {
    /// Reading the configuration, the state, the spec, sizing the VM.
    Prepare,
    /// Sharing the container's files (bind mounts, virtiofsd).
    Share,
    /// The prestart and createRuntime hooks.
    Hooks,
    /// Reading or joining the container's network namespace, connecting
    /// the VM's NICs to its interfaces.
    Network,
    /// Starting or restoring the VM.
    Vm,
    /// The VM or its agent did not come up.
    Boot,
    /// The guest refused the container (youki's error, a bad spec...).
    Guest(AgentErrorKind),
    /// The container's stdio or terminal on the host.
    Stdio,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Nobody listens: the shim is gone.
    #[error("connect to the shim at {path}")]
    Connect { path: PathBuf, source: io::Error },
    #[error("talk to the shim")]
    Frame(#[from] FrameError),
    #[error("talk to the shim")]
    Io(#[from] io::Error),
    /// The shim's answer.
    #[error(transparent)]
    Failed(#[from] ShimFailure),
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

    /// A read that gave up after `timeout` is a timeout; other frame errors
    /// stay what they are.
    fn from_frame(e: FrameError, timeout: Duration) -> Self {
        match &e {
            FrameError::Read(io) | FrameError::Write(io)
                if matches!(
                    io.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                ControlError::Timeout(timeout)
            }
            _ => ControlError::Frame(e),
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

/// Send a request on `stream` and read its answer within `timeout`.
pub fn exchange<C: Call>(
    stream: &mut UnixStream,
    req: C,
    timeout: Duration,
) -> Result<C::Reply, ControlError> {
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    runvm_protocol::send(stream, &req.into()).map_err(|e| ControlError::from_frame(e, timeout))?;
    let resp: Result<C::Reply, ShimFailure> =
        runvm_protocol::recv(stream).map_err(|e| ControlError::from_frame(e, timeout))?;
    Ok(resp?)
}

/// Send one request to the shim of the container whose state dir is `dir`.
pub fn call<C: Call>(dir: &Path, req: C, timeout: Duration) -> Result<C::Reply, ControlError> {
    let mut stream = connect(dir, None)?;
    exchange(&mut stream, req, timeout)
}

/// Receive the preface of a connection on the shim's side: the fds, if any.
pub fn recv_preface(sock: BorrowedFd<'_>) -> io::Result<Option<[OwnedFd; 3]>> {
    let mut byte = [0u8; 1];
    let (bytes, fds) = crate::sockdir::recv_with_fds(sock, &mut byte)?;
    if bytes == 0 {
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
    use crate::status::ContainerStatus;
    use serde_json::json;
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

    /// The control protocol's encoding, pinned: a shim and a verb of
    /// different builds (an upgrade under a running container) must agree.
    #[test]
    fn golden_encoding() {
        let enc = |v: &dyn erased::Ser| v.json();
        assert_eq!(enc(&ShimRequest::from(Start)), json!({"Start": null}));
        assert_eq!(
            enc(&ShimRequest::from(Kill {
                signal: 15,
                all: true
            })),
            json!({"Kill": {"signal": 15, "all": true}})
        );
        let ok: Result<(), ShimFailure> = Ok(());
        assert_eq!(enc(&ok), json!({"Ok": null}));
        let refused: Result<(), ShimFailure> =
            Err(Refusal::StartInState(ContainerStatus::Paused).into());
        assert_eq!(
            enc(&refused),
            json!({"Err": {"Refused": {"StartInState": "paused"}}})
        );
        let timeout: Result<(), ShimFailure> =
            Err(ShimFailure::AgentTimeout(Duration::from_secs(3)));
        assert_eq!(
            enc(&timeout),
            json!({"Err": {"AgentTimeout": {"secs": 3, "nanos": 0}}})
        );
        let agent: Result<(), ShimFailure> = Err(ShimFailure::Agent(AgentError::new(
            AgentErrorKind::NotFound,
            "no exec process x",
        )));
        assert_eq!(
            enc(&agent),
            json!({"Err": {"Agent": {"kind": "not_found", "message": "no exec process x"}}})
        );
        let started: Result<ExecStarted, ShimFailure> = Ok(ExecStarted { guest_pid: 7 });
        assert_eq!(enc(&started), json!({"Ok": {"guest_pid": 7}}));
        assert_eq!(
            enc(&ExecControl::Resize { rows: 24, cols: 80 }),
            json!({"Resize": {"rows": 24, "cols": 80}})
        );
        assert_eq!(
            enc(&Ready::Failed(CreateFailure {
                stage: CreateStage::Guest(AgentErrorKind::Runtime),
                message: "exec: \"/x\": no such file or directory".into()
            })),
            json!({"Failed": {"stage": {"Guest": "runtime"},
                "message": "exec: \"/x\": no such file or directory"}})
        );
        assert_eq!(
            enc(&Ready::Created { shim_pid: 42 }),
            json!({"Created": {"shim_pid": 42}})
        );
    }

    #[test]
    fn failures_read_as_runc_and_the_guest_say() {
        let f = ShimFailure::from(Refusal::NotPaused);
        assert_eq!(f.to_string(), "container not paused");
        let f = ShimFailure::AgentTimeout(Duration::from_secs(3));
        assert_eq!(f.to_string(), "the agent did not answer within 3s");
        let f = ShimFailure::io("record the state", &io::Error::from_raw_os_error(28));
        assert_eq!(
            f.to_string(),
            "record the state: No space left on device (os error 28)"
        );
    }

    /// Serialize anything for the golden test.
    mod erased {
        pub trait Ser {
            fn json(&self) -> serde_json::Value;
        }
        impl<T: serde::Serialize> Ser for T {
            fn json(&self) -> serde_json::Value {
                serde_json::to_value(self).unwrap()
            }
        }
    }
}
