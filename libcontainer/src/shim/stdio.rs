//! Relaying a process's stdio between host descriptors (the ones `create`
//! was given, an exec stand-in's, or a host pty) and the guest.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use runvm_protocol::{ProcessRef, StreamKind};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::task::JoinHandle;
use tokio_yamux::StreamHandle;

use crate::agent::{AgentClient, Result};

/// The host side of a process's stdio.
pub struct Local {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    /// `None` for a terminal, whose output all comes on stdout.
    pub stderr: Option<OwnedFd>,
}

impl Local {
    /// This process's own stdin, stdout and stderr.
    pub fn own() -> std::io::Result<Self> {
        use std::os::fd::AsFd;
        Ok(Local {
            stdin: std::io::stdin().as_fd().try_clone_to_owned()?,
            stdout: std::io::stdout().as_fd().try_clone_to_owned()?,
            stderr: Some(std::io::stderr().as_fd().try_clone_to_owned()?),
        })
    }
}

/// Tasks copying the process's output; they end when the guest closes it.
pub type Outputs = Vec<JoinHandle<()>>;

/// Open the process's stdio streams and start relaying. The host descriptors
/// may be shared with other processes (a caller's terminal), so they are used
/// in blocking mode, on tokio's blocking threads, never made non-blocking.
pub async fn attach(
    agent: &Arc<AgentClient>,
    process: &ProcessRef,
    local: Local,
) -> Result<Outputs> {
    let stdout = agent.open(&StreamKind::Stdout(process.clone())).await?;
    let stderr = agent.open(&StreamKind::Stderr(process.clone())).await?;
    let stdin = agent.open(&StreamKind::Stdin(process.clone())).await?;
    let mut tasks = vec![tokio::spawn(copy_out(stdout, file(local.stdout)))];
    match local.stderr {
        Some(fd) => tasks.push(tokio::spawn(copy_out(stderr, file(fd)))),
        None => drop(stderr),
    }
    // A read of stdin may never return (a terminal that stays open); nobody
    // waits for this task.
    tokio::spawn(copy_in(file(local.stdin), stdin));
    Ok(tasks)
}

fn file(fd: OwnedFd) -> tokio::fs::File {
    tokio::fs::File::from_std(File::from(fd))
}

async fn copy_out<W: AsyncWrite + Unpin>(mut from: StreamHandle, mut to: W) {
    let _ = tokio::io::copy(&mut from, &mut to).await;
    let _ = to.flush().await;
}

async fn copy_in(mut from: tokio::fs::File, mut to: StreamHandle) {
    let _ = tokio::io::copy(&mut from, &mut to).await;
    // EOF on our side: the process sees EOF on its stdin.
    let _ = to.shutdown().await;
}
