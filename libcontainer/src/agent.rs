//! The host's client of the guest agent: one yamux session over the unix
//! socket behind the agent's virtio-serial port.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use runvm_protocol::{
    recv_async, send_async, AgentError, AgentInfo, ExitStatus, FrameError, ProcessRef, Reply,
    Request, Response, StreamKind,
};
use tokio::net::UnixStream;
use tokio::task::JoinHandle;
use tokio_yamux::{Config, Control, Session, StreamHandle};

#[derive(Debug, thiserror::Error)]
pub enum AgentClientError {
    #[error("connect to the agent socket {path}")]
    Connect { path: PathBuf, source: io::Error },
    #[error("the connection to the agent is lost")]
    Session,
    #[error("the agent did not answer within {0:?}")]
    Timeout(Duration),
    #[error("agent stream")]
    Frame(#[from] FrameError),
    /// The agent's own error message, as is.
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error("unexpected reply from the agent: {0}")]
    Unexpected(String),
}

pub type Result<T> = std::result::Result<T, AgentClientError>;

pub struct AgentClient {
    control: Control,
    driver: JoinHandle<()>,
    timeout: Duration,
}

fn yamux_config() -> Config {
    Config {
        // The VM may be paused (QMP stop) for any length of time; neither a
        // keepalive nor a write timeout may end the session then.
        enable_keepalive: false,
        connection_write_timeout: Duration::from_secs(24 * 3600),
        ..Config::default()
    }
}

impl AgentClient {
    /// Connect to the agent socket (QEMU listens on it). Requests time out
    /// after `timeout`.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Self> {
        let stream =
            UnixStream::connect(path)
                .await
                .map_err(|source| AgentClientError::Connect {
                    path: path.to_path_buf(),
                    source,
                })?;
        let mut session = Session::new_client(stream, yamux_config());
        let control = session.control();
        // The session only makes progress while it is polled.
        let driver = tokio::spawn(async move { while session.next().await.is_some() {} });
        Ok(AgentClient {
            control,
            driver,
            timeout,
        })
    }

    /// Whether the session to the agent has ended.
    pub fn is_closed(&self) -> bool {
        self.driver.is_finished()
    }

    /// Open a stream of the given kind.
    pub async fn open(&self, kind: &StreamKind) -> Result<StreamHandle> {
        let mut control = self.control.clone();
        let mut stream = control
            .open_stream()
            .await
            .map_err(|_| AgentClientError::Session)?;
        send_async(&mut stream, kind).await?;
        Ok(stream)
    }

    /// One request, answered within the configured timeout.
    pub async fn request(&self, req: Request) -> Result<Reply> {
        self.request_within(req, self.timeout).await
    }

    pub async fn request_within(&self, req: Request, timeout: Duration) -> Result<Reply> {
        self.exchange(req, timeout, false).await
    }

    /// One request and its reply; with `drain`, the reply's stream is also
    /// read to its close.
    async fn exchange(&self, req: Request, timeout: Duration, drain: bool) -> Result<Reply> {
        let exchange = async {
            let mut stream = self.open(&StreamKind::Rpc(req)).await?;
            let resp: Response = recv_async(&mut stream).await?;
            if drain {
                let mut rest = Vec::new();
                tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut rest)
                    .await
                    .map_err(|_| AgentClientError::Session)?;
            }
            Ok::<_, AgentClientError>(resp?)
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| AgentClientError::Timeout(timeout))?
    }

    /// Wait until the agent answers; it is buffered by QEMU until the guest
    /// opens its port, so one ping covers the whole boot.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<AgentInfo> {
        pong(self.exchange(Request::Ping, timeout, false).await?)
    }

    /// [`wait_ready`](Self::wait_ready), then read the reply's stream to its
    /// end: once the agent's close has arrived, the agent has nothing more in
    /// flight for this host, which may then hang up without leaving bytes of
    /// its session behind in the VM.
    pub async fn wait_ready_drained(&self, timeout: Duration) -> Result<AgentInfo> {
        pong(self.exchange(Request::Ping, timeout, true).await?)
    }

    /// Wait (without a time limit) for a process to exit.
    pub async fn wait_process(&self, process: ProcessRef) -> Result<ExitStatus> {
        let mut stream = self.open(&StreamKind::Wait(process)).await?;
        let status: std::result::Result<ExitStatus, AgentError> = recv_async(&mut stream).await?;
        Ok(status?)
    }
}

fn pong(reply: Reply) -> Result<AgentInfo> {
    match reply {
        Reply::Pong(info) => Ok(info),
        other => Err(AgentClientError::Unexpected(format!("{other:?}"))),
    }
}

impl Drop for AgentClient {
    fn drop(&mut self) {
        self.driver.abort();
    }
}
