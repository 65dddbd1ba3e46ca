//! Relaying the shim's own stdin/stdout/stderr (the ones `create` was given)
//! to and from a process in the guest.

use std::sync::Arc;

use runvm_protocol::{ProcessRef, StreamKind};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::task::JoinHandle;
use tokio_yamux::StreamHandle;

use crate::agent::{AgentClient, Result};

/// Tasks copying the process's output; they end when the guest closes it.
pub struct Outputs {
    pub tasks: Vec<JoinHandle<()>>,
}

/// Open the process's stdio streams and start relaying. stdout and stderr stay
/// separate streams, as they are separate fds for the caller.
pub async fn attach(agent: &Arc<AgentClient>, process: &ProcessRef) -> Result<Outputs> {
    let stdout = agent.open(&StreamKind::Stdout(process.clone())).await?;
    let stderr = agent.open(&StreamKind::Stderr(process.clone())).await?;
    let stdin = agent.open(&StreamKind::Stdin(process.clone())).await?;
    let tasks = vec![
        tokio::spawn(copy_out(stdout, tokio::io::stdout())),
        tokio::spawn(copy_out(stderr, tokio::io::stderr())),
    ];
    // stdin is read on a blocking thread that may never return (a terminal
    // that stays open); the shim exits without waiting for it.
    tokio::spawn(copy_in(stdin));
    Ok(Outputs { tasks })
}

async fn copy_out<W: AsyncWrite + Unpin>(mut from: StreamHandle, mut to: W) {
    let _ = tokio::io::copy(&mut from, &mut to).await;
    let _ = to.flush().await;
}

async fn copy_in(mut to: StreamHandle) {
    let mut stdin = tokio::io::stdin();
    let _ = tokio::io::copy(&mut stdin, &mut to).await;
    // EOF on our stdin: the process sees EOF on its stdin.
    let _ = to.shutdown().await;
}
