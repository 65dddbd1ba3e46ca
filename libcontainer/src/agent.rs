//! The host's client of the guest agent: one yamux session over the
//! hypervisor's agent endpoint.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;
use runvm_protocol::mux::yamux_config;
use runvm_protocol::{
    recv_async, send_async, AgentError, AgentInfo, ExitStatus, FrameError, Ping, ProcessRef, Rpc,
    StreamKind,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::task::JoinHandle;
use tokio_yamux::{Control, Session, StreamHandle};

use crate::control::ShimFailure;
use crate::hypervisor::AgentEndpoint;

#[derive(Debug, thiserror::Error)]
pub enum AgentClientError {
    #[error("connect to the agent socket {path}")]
    Connect { path: PathBuf, source: io::Error },
    #[error("the hybrid vsock at {path} refused port {port}: {answer:?}")]
    VsockRefused {
        path: PathBuf,
        port: u32,
        answer: String,
    },
    #[error("the connection to the agent is lost")]
    Session,
    #[error("the agent did not answer within {0:?}")]
    Timeout(Duration),
    #[error("agent stream")]
    Frame(#[from] FrameError),
    /// The agent's own error, as is.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// The guest sent what the protocol does not allow (an oversized or
    /// undecodable frame, an impossible value): the host stops listening.
    #[error("the agent broke the protocol ({0}); its session is closed")]
    Untrusted(String),
}

impl AgentClientError {
    /// The same failure as the shim reports it to a verb.
    pub fn to_failure(&self) -> ShimFailure {
        match self {
            AgentClientError::Timeout(d) => ShimFailure::AgentTimeout(*d),
            AgentClientError::Agent(e) => ShimFailure::Agent(e.clone()),
            AgentClientError::Frame(FrameError::Decode(_)) | AgentClientError::Untrusted(_) => {
                ShimFailure::AgentGarbled
            }
            AgentClientError::Connect { .. }
            | AgentClientError::VsockRefused { .. }
            | AgentClientError::Session
            | AgentClientError::Frame(_) => ShimFailure::AgentLost,
        }
    }
}

pub type Result<T> = std::result::Result<T, AgentClientError>;

pub struct AgentClient {
    control: Control,
    driver: JoinHandle<()>,
    timeout: Duration,
    /// Why the session was closed on the guest, once it was.
    distrusted: std::sync::Mutex<Option<String>>,
}

/// The longest version and kernel release an agent may report.
const MAX_INFO_FIELD: usize = 256;

/// Connect to a hybrid vsock's unix socket and ask for `port`.
async fn hybrid_vsock(path: &std::path::Path, port: u32) -> Result<UnixStream> {
    let connect_err = |source| AgentClientError::Connect {
        path: path.to_path_buf(),
        source,
    };
    let mut stream = UnixStream::connect(path).await.map_err(connect_err)?;
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .await
        .map_err(connect_err)?;
    // Read the answer byte by byte: what follows its newline is the
    // agent's, and must stay in the stream.
    let mut reader = BufReader::with_capacity(1, &mut stream);
    let mut answer = String::new();
    reader.read_line(&mut answer).await.map_err(connect_err)?;
    if !answer.starts_with("OK ") {
        return Err(AgentClientError::VsockRefused {
            path: path.to_path_buf(),
            port,
            answer: answer.trim().to_string(),
        });
    }
    Ok(stream)
}

impl AgentClient {
    /// Connect to the agent (the hypervisor listens on the endpoint).
    /// Requests time out after `timeout`.
    pub async fn connect(endpoint: &AgentEndpoint, timeout: Duration) -> Result<Self> {
        let stream = match endpoint {
            AgentEndpoint::Serial { socket } => {
                UnixStream::connect(socket)
                    .await
                    .map_err(|source| AgentClientError::Connect {
                        path: socket.clone(),
                        source,
                    })?
            }
            AgentEndpoint::HybridVsock { socket, port } => hybrid_vsock(socket, *port).await?,
        };
        let mut session = Session::new_client(stream, yamux_config());
        let control = session.control();
        // The session only makes progress while it is polled.
        let driver = tokio::spawn(async move { while session.next().await.is_some() {} });
        Ok(AgentClient {
            control,
            driver,
            timeout,
            distrusted: std::sync::Mutex::new(None),
        })
    }

    /// End the session now: the guest sees the host hang up, its relays
    /// let go, and every call and stream of this client fails.
    pub fn close(&self) {
        self.driver.abort();
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
            .map_err(|_| self.lost(AgentClientError::Session))?;
        send_async(&mut stream, kind)
            .await
            .map_err(|e| self.lost(e.into()))?;
        Ok(stream)
    }

    /// One request, answered within the configured timeout.
    pub async fn call<R: Rpc>(&self, req: R) -> Result<R::Reply> {
        self.call_within(req, self.timeout).await
    }

    pub async fn call_within<R: Rpc>(&self, req: R, timeout: Duration) -> Result<R::Reply> {
        self.exchange(req, timeout, false).await
    }

    /// One request and its reply; with `drain`, the reply's stream is also
    /// read to its close.
    async fn exchange<R: Rpc>(&self, req: R, timeout: Duration, drain: bool) -> Result<R::Reply> {
        let exchange = async {
            let mut stream = self.open(&StreamKind::Rpc(Box::new(req.into()))).await?;
            let resp: std::result::Result<R::Reply, AgentError> = self.receive(&mut stream).await?;
            if drain {
                // Read and dropped: however much the guest sends.
                tokio::io::copy(&mut stream, &mut tokio::io::sink())
                    .await
                    .map_err(|_| self.lost(AgentClientError::Session))?;
            }
            Ok::<_, AgentClientError>(resp.map_err(AgentError::bounded)?)
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| AgentClientError::Timeout(timeout))?
    }

    /// Wait until the agent answers; it is buffered by the hypervisor until
    /// the guest opens its port, so one ping covers the whole boot.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<AgentInfo> {
        let info = self.exchange(Ping, timeout, false).await?;
        self.check_info(info)
    }

    /// [`wait_ready`](Self::wait_ready), then read the reply's stream to its
    /// end: once the agent's close has arrived, the agent has nothing more in
    /// flight for this host, which may then hang up without leaving bytes of
    /// its session behind in the VM.
    pub async fn wait_ready_drained(&self, timeout: Duration) -> Result<AgentInfo> {
        let info = self.exchange(Ping, timeout, true).await?;
        self.check_info(info)
    }

    fn check_info(&self, info: AgentInfo) -> Result<AgentInfo> {
        if info.version.len() > MAX_INFO_FIELD || info.kernel_release.len() > MAX_INFO_FIELD {
            return Err(self.distrust(format!(
                "a version or kernel release longer than {MAX_INFO_FIELD} bytes"
            )));
        }
        Ok(info)
    }

    /// Wait (without a time limit) for a process to exit.
    pub async fn wait_process(&self, process: ProcessRef) -> Result<ExitStatus> {
        let mut stream = self.open(&StreamKind::Wait(process)).await?;
        let status: std::result::Result<ExitStatus, AgentError> = self.receive(&mut stream).await?;
        let status = status.map_err(AgentError::bounded)?;
        if !status.is_possible() {
            return Err(self.distrust(format!("an impossible exit status {status:?}")));
        }
        Ok(status)
    }

    /// One frame from the guest. One that is too long or does not decode
    /// ends the session: nothing else it sends is believed.
    async fn receive<T: serde::de::DeserializeOwned>(
        &self,
        stream: &mut StreamHandle,
    ) -> Result<T> {
        match recv_async(stream).await {
            Ok(v) => Ok(v),
            Err(e @ (FrameError::TooLong { .. } | FrameError::Decode(_))) => {
                Err(self.distrust(crate::error_chain(&e)))
            }
            Err(e) => Err(self.lost(e.into())),
        }
    }

    /// Close the session on a guest that broke the protocol.
    fn distrust(&self, why: String) -> AgentClientError {
        self.driver.abort();
        let mut reason = self.distrusted.lock().unwrap_or_else(|e| e.into_inner());
        // The first reason stays: what follows is its consequence.
        AgentClientError::Untrusted(reason.get_or_insert(why).clone())
    }

    /// `err`, or why the session was closed if it was closed on the guest:
    /// every stream it carried fails then.
    fn lost(&self, err: AgentClientError) -> AgentClientError {
        let reason = self.distrusted.lock().unwrap_or_else(|e| e.into_inner());
        match reason.as_ref() {
            Some(why) => AgentClientError::Untrusted(why.clone()),
            None => err,
        }
    }
}

impl Drop for AgentClient {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::UnixListener;

    #[tokio::test]
    async fn hybrid_vsock_asks_for_the_port_and_keeps_what_follows() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("v.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut line = [0u8; 13];
            s.read_exact(&mut line).await.unwrap();
            assert_eq!(&line, b"CONNECT 1024\n");
            s.write_all(b"OK 1073741824\nagent").await.unwrap();
            let (mut s2, _) = listener.accept().await.unwrap();
            s2.read_exact(&mut line).await.unwrap();
            s2.write_all(b"ERR no listener\n").await.unwrap();
        });
        let mut stream = hybrid_vsock(&path, 1024).await.unwrap();
        let mut rest = [0u8; 5];
        stream.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"agent");
        let err = hybrid_vsock(&path, 1024).await.unwrap_err();
        assert!(
            matches!(&err, AgentClientError::VsockRefused { answer, .. } if answer == "ERR no listener"),
            "{err:?}"
        );
        server.await.unwrap();
    }
}
