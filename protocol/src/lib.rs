//! Wire types shared by the host side of runvm (the shim) and the guest agent.
//!
//! Host and guest talk over one virtio-serial port multiplexed with yamux. Every
//! yamux stream is opened by the host and starts with one frame holding a
//! [`StreamKind`] that says what the stream carries: a single request/response
//! exchange, or one direction of one process's stdio, or the exit status of a
//! process. A frame is a 4-byte big-endian length followed by that many bytes of
//! JSON.
//!
//! Every request has a reply type of its own ([`Rpc::Reply`]); the agent
//! answers `Result<Reply, AgentError>`, and an [`AgentError`] carries a kind
//! the host can match besides the guest's account of what happened.

use std::io::{self, Read, Write};

use serde::{de::DeserializeOwned, Deserialize, Serialize};

mod error;
pub mod frame;
#[cfg(feature = "tokio")]
pub mod mux;
mod rpc;

pub use error::{AgentError, AgentErrorKind};
pub use frame::{read_frame, write_frame, FrameError, MAX_FRAME_LEN};
#[cfg(feature = "tokio")]
pub use frame::{read_frame_async, write_frame_async};
pub use rpc::*;

/// On the guest kernel's command line (`[agent] enable_debug`): the agent
/// logs each request it answers to the console.
pub const AGENT_DEBUG_PARAM: &str = "runvm.agent_debug=1";
/// Name of the virtio-serial port the agent listens on.
pub const AGENT_PORT_NAME: &str = "agent.0";
/// virtio-fs tag (or disk serial, [`ShareSource::Disk`]) of the container's
/// share: a directory holding the rootfs at [`SHARE_ROOTFS`] and each bind
/// mount's source under `mounts/`.
pub const SHARE_TAG: &str = "share";
/// Where the rootfs is inside the share.
pub const SHARE_ROOTFS: &str = "rootfs";
/// A bind mount source in the spec the host sends that starts with this
/// names a path inside the share (`runvm-share:mounts/0`).
pub const SHARE_SOURCE_PREFIX: &str = "runvm-share:";
/// Bumped whenever a change to these types breaks compatibility, or the host
/// comes to depend on new behaviour of the agent (3: [`SESSION_ENDED`]; 4:
/// a reply type per request, typed errors, OCI types for processes and
/// resources; 5: [`ConfigureNetwork`]; 6: [`Warmup`]; 7: a share on a
/// disk, [`ShareSource`], and `vm_memory_mib` in [`Update`] and
/// [`CreateContainer`]).
pub const PROTOCOL_VERSION: u32 = 7;
/// The line the agent writes to the guest console when a yamux session that
/// carried streams has ended (the host hung up) and it waits for a new host.
/// `factory init` waits for it before it saves the template: a clone must
/// start with the agent outside the template builder's session.
pub const SESSION_ENDED: &str = "runvm-agent: host hung up, waiting for a new session";

/// Which process of a container a stream or request is about.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProcessRef {
    pub container_id: String,
    /// `None` is the container's init process; `Some` names an exec'd process.
    pub exec_id: Option<String>,
}

impl ProcessRef {
    pub fn init(container_id: &str) -> Self {
        ProcessRef {
            container_id: container_id.to_string(),
            exec_id: None,
        }
    }
}

/// The first frame of every stream.
#[derive(Serialize, Deserialize, Debug)]
pub enum StreamKind {
    /// One request; the agent answers with one frame, `Result<R::Reply,
    /// AgentError>` for the request's type `R`, and closes.
    Rpc(Box<Request>),
    /// Host → guest bytes for the process's stdin (or its terminal); EOF closes it.
    Stdin(ProcessRef),
    /// Guest → host bytes of the process's stdout (or its terminal output).
    /// A terminal has no separate stderr: its Stderr stream ends at once.
    Stdout(ProcessRef),
    /// Guest → host bytes of the process's stderr.
    Stderr(ProcessRef),
    /// The agent writes one `Result<ExitStatus, AgentError>` frame when the
    /// process has exited.
    Wait(ProcessRef),
}

/// How a process ended.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Exited(i32),
    Signaled(i32),
}

impl ExitStatus {
    /// Whether a Linux process can end this way: an exit code of 0 to 255,
    /// or a signal from 1 to 64. The host checks what the guest says.
    pub fn is_possible(self) -> bool {
        match self {
            ExitStatus::Exited(code) => (0..=255).contains(&code),
            ExitStatus::Signaled(sig) => (1..=64).contains(&sig),
        }
    }

    /// The code a shell would report: the exit code, or 128 + signal number.
    pub fn code(self) -> i32 {
        match self {
            ExitStatus::Exited(code) => code,
            ExitStatus::Signaled(sig) => 128 + sig,
        }
    }
}

/// Send one value as a frame over a blocking writer.
pub fn send<W: Write, T: Serialize>(w: &mut W, value: &T) -> Result<(), FrameError> {
    write_frame(w, &serde_json::to_vec(value).map_err(FrameError::Encode)?)
}

/// Receive one value sent with [`send`] from a blocking reader.
pub fn recv<R: Read, T: DeserializeOwned>(r: &mut R) -> Result<T, FrameError> {
    let buf = read_frame(r)?;
    serde_json::from_slice(&buf).map_err(FrameError::Decode)
}

/// Async form of [`send`].
#[cfg(feature = "tokio")]
pub async fn send_async<W, T>(w: &mut W, value: &T) -> Result<(), FrameError>
where
    W: tokio::io::AsyncWrite + Unpin,
    T: Serialize,
{
    write_frame_async(w, &serde_json::to_vec(value).map_err(FrameError::Encode)?).await
}

/// Async form of [`recv`].
#[cfg(feature = "tokio")]
pub async fn recv_async<R, T>(r: &mut R) -> Result<T, FrameError>
where
    R: tokio::io::AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let buf = read_frame_async(r).await?;
    serde_json::from_slice(&buf).map_err(FrameError::Decode)
}

/// Whether an I/O error only means the peer went away.
pub fn is_disconnect(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_status_codes_follow_the_shell() {
        assert_eq!(ExitStatus::Exited(3).code(), 3);
        assert_eq!(ExitStatus::Signaled(9).code(), 137);
        assert_eq!(ExitStatus::Signaled(15).code(), 143);
    }

    #[test]
    fn values_round_trip_through_frames() {
        let kind = StreamKind::Rpc(Box::new(
            SignalProcess {
                process: ProcessRef::init("c1"),
                signal: 15,
                all: false,
            }
            .into(),
        ));
        let mut buf = Vec::new();
        send(&mut buf, &kind).unwrap();
        assert_eq!(&buf[..4], &((buf.len() - 4) as u32).to_be_bytes());
        let back: StreamKind = recv(&mut buf.as_slice()).unwrap();
        match back {
            StreamKind::Rpc(req) if matches!(*req, Request::Signal(_)) => {
                let Request::Signal(s) = *req else {
                    unreachable!()
                };
                assert_eq!(s.process, ProcessRef::init("c1"));
                assert_eq!(s.signal, 15);
                assert!(!s.all);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
