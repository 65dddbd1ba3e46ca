//! Wire types shared by the host side of runvm (the shim) and the guest agent.
//!
//! Host and guest talk over one virtio-serial port multiplexed with yamux. Every
//! yamux stream is opened by the host and starts with one frame holding a
//! [`StreamKind`] that says what the stream carries: a single request/response
//! exchange, or one direction of one process's stdio, or the exit status of a
//! process. A frame is a 4-byte big-endian length followed by that many bytes of
//! JSON.

use std::io::{self, Read, Write};

use serde::{de::DeserializeOwned, Deserialize, Serialize};

pub mod frame;

pub use frame::{read_frame, write_frame, FrameError, MAX_FRAME_LEN};
#[cfg(feature = "tokio")]
pub use frame::{read_frame_async, write_frame_async};

/// Name of the virtio-serial port the agent listens on.
pub const AGENT_PORT_NAME: &str = "agent.0";
/// virtio-fs tag of the container's share: a directory holding the rootfs
/// at [`SHARE_ROOTFS`] and each bind mount's source under `mounts/`.
pub const SHARE_TAG: &str = "share";
/// Where the rootfs is inside the share.
pub const SHARE_ROOTFS: &str = "rootfs";
/// A bind mount source in the spec the host sends that starts with this
/// names a path inside the share (`runvm-share:mounts/0`).
pub const SHARE_SOURCE_PREFIX: &str = "runvm-share:";
/// Bumped whenever a change to these types breaks compatibility, or the host
/// comes to depend on new behaviour of the agent (3: [`SESSION_ENDED`]).
pub const PROTOCOL_VERSION: u32 = 3;
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
    /// One request; the agent answers with one [`Response`] frame and closes.
    Rpc(Request),
    /// Host → guest bytes for the process's stdin (or its terminal); EOF closes it.
    Stdin(ProcessRef),
    /// Guest → host bytes of the process's stdout (or its terminal output).
    /// A terminal has no separate stderr: its Stderr stream ends at once.
    Stdout(ProcessRef),
    /// Guest → host bytes of the process's stderr.
    Stderr(ProcessRef),
    /// The agent writes one [`ExitStatus`] frame when the process has exited.
    Wait(ProcessRef),
}

#[derive(Serialize, Deserialize, Debug)]
pub enum Request {
    Ping,
    CreateContainer(CreateContainer),
    StartContainer {
        container_id: String,
    },
    Signal {
        process: ProcessRef,
        signal: i32,
        /// Signal every process of the container, not only the one named.
        all: bool,
    },
    /// Start another process in the container; answered with `Created`.
    Exec(ExecProcess),
    /// Set the window size of a process's terminal.
    ResizeTty {
        process: ProcessRef,
        rows: u16,
        cols: u16,
    },
    /// Freeze the container's cgroup.
    Pause {
        container_id: String,
    },
    Resume {
        container_id: String,
    },
    /// Answered with `Stats`.
    Stats {
        container_id: String,
    },
    /// New limits for the container's cgroup: an OCI `linux.resources` object.
    Update {
        container_id: String,
        resources: serde_json::Value,
    },
    /// Answered with `Processes`.
    ListProcesses {
        container_id: String,
    },
    /// After a VM is restored from a template: set the guest's clock to the
    /// host's and mix host entropy into its RNG, so clones of one template
    /// neither share random numbers nor live in the template's past.
    SyncGuest {
        /// Nanoseconds since the epoch.
        unix_time_ns: u64,
        /// Random bytes from the host.
        seed: Vec<u8>,
    },
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct ExecProcess {
    pub container_id: String,
    pub exec_id: String,
    /// An OCI `process` object; `terminal` asks for a pty.
    pub process: serde_json::Value,
}

/// Readings of a container's cgroup (v2) in the guest.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct CgroupStats {
    pub cpu_usage_usec: u64,
    pub cpu_user_usec: u64,
    pub cpu_system_usec: u64,
    pub cpu_nr_periods: u64,
    pub cpu_nr_throttled: u64,
    pub cpu_throttled_usec: u64,
    pub memory_current: u64,
    /// `None` is "max".
    pub memory_max: Option<u64>,
    pub memory_peak: u64,
    pub memory_swap_current: u64,
    pub memory_swap_max: Option<u64>,
    pub memory_oom_kill: u64,
    /// memory.stat, key by key.
    pub memory_stat: std::collections::BTreeMap<String, u64>,
    pub pids_current: u64,
    pub pids_max: Option<u64>,
    /// CPUs the VM has.
    pub online_cpus: u32,
}

/// One process of a container, as the guest's /proc shows it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct GuestProcess {
    pub pid: i32,
    pub ppid: i32,
    pub uid: u32,
    /// When it started, in seconds since the epoch by the guest's clock.
    pub start_time: u64,
    /// User plus system CPU time, in seconds.
    pub cpu_secs: u64,
    pub tty: Option<String>,
    pub cmdline: String,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct CreateContainer {
    pub container_id: String,
    /// The bundle's config.json. The agent replaces `root.path` with the
    /// guest path where it mounted the rootfs share.
    pub spec: serde_json::Value,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub enum Reply {
    Pong(AgentInfo),
    /// The process exists (a container's init is held before its user code
    /// until start).
    Created {
        pid: i32,
    },
    Done,
    Stats(CgroupStats),
    Processes(Vec<GuestProcess>),
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct AgentInfo {
    pub version: String,
    pub protocol: u32,
    pub kernel_release: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct AgentError {
    pub message: String,
}

impl AgentError {
    pub fn new(message: impl Into<String>) -> Self {
        AgentError {
            message: message.into(),
        }
    }
}

pub type Response = Result<Reply, AgentError>;

/// How a process ended.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Exited(i32),
    Signaled(i32),
}

impl ExitStatus {
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
        let kind = StreamKind::Rpc(Request::Signal {
            process: ProcessRef::init("c1"),
            signal: 15,
            all: false,
        });
        let mut buf = Vec::new();
        send(&mut buf, &kind).unwrap();
        assert_eq!(&buf[..4], &((buf.len() - 4) as u32).to_be_bytes());
        let back: StreamKind = recv(&mut buf.as_slice()).unwrap();
        match back {
            StreamKind::Rpc(Request::Signal {
                process,
                signal,
                all,
            }) => {
                assert_eq!(process, ProcessRef::init("c1"));
                assert_eq!(signal, 15);
                assert!(!all);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn errors_round_trip_as_results() {
        let resp: Response = Err(AgentError::new("no such container"));
        let mut buf = Vec::new();
        send(&mut buf, &resp).unwrap();
        let back: Response = recv(&mut buf.as_slice()).unwrap();
        assert_eq!(back.unwrap_err().to_string(), "no such container");
    }
}
