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

/// The host side of a process's stdin, kept across agent sessions: after a
/// checkpoint with `--leave-running` the container's stdin is relayed on a
/// new session, and a read that was under way when the old one ended, or
/// its end of file, is passed on by the next relay.
pub struct HostStdin {
    file: tokio::fs::File,
    unsent: Vec<u8>,
    eof: bool,
}

pub type SharedStdin = Arc<tokio::sync::Mutex<HostStdin>>;

pub fn shared_stdin(fd: OwnedFd) -> SharedStdin {
    Arc::new(tokio::sync::Mutex::new(HostStdin {
        file: file(fd),
        unsent: Vec::new(),
        eof: false,
    }))
}

/// Open the process's stdio streams and start relaying. The host descriptors
/// may be shared with other processes (a caller's terminal), so they are used
/// in blocking mode, on tokio's blocking threads, never made non-blocking.
pub async fn attach(
    agent: &Arc<AgentClient>,
    process: &ProcessRef,
    local: Local,
) -> Result<Outputs> {
    let stdin = shared_stdin(local.stdin);
    attach_with(agent, process, local.stdout, local.stderr, stdin).await
}

/// [`attach`], with stdin from a [`SharedStdin`] that outlives the session.
pub async fn attach_with(
    agent: &Arc<AgentClient>,
    process: &ProcessRef,
    stdout: OwnedFd,
    stderr: Option<OwnedFd>,
    stdin: SharedStdin,
) -> Result<Outputs> {
    let out = agent.open(&StreamKind::Stdout(process.clone())).await?;
    let err = agent.open(&StreamKind::Stderr(process.clone())).await?;
    let into = agent.open(&StreamKind::Stdin(process.clone())).await?;
    let mut tasks = vec![tokio::spawn(copy_out(out, file(stdout)))];
    match stderr {
        Some(fd) => tasks.push(tokio::spawn(copy_out(err, file(fd)))),
        None => drop(err),
    }
    // A read of stdin may never return (a terminal that stays open); nobody
    // waits for this task.
    tokio::spawn(copy_in(stdin, into));
    Ok(tasks)
}

fn file(fd: OwnedFd) -> tokio::fs::File {
    tokio::fs::File::from_std(File::from(fd))
}

async fn copy_out<W: AsyncWrite + Unpin>(mut from: StreamHandle, mut to: W) {
    let _ = tokio::io::copy(&mut from, &mut to).await;
    let _ = to.flush().await;
}

/// Relay stdin until its end of file, which the process then sees, or
/// until the stream fails (its session ended): what was read then waits in
/// `from` for the next relay. The lock is held across the read, so the next
/// relay starts once this one has given up.
async fn copy_in(from: SharedStdin, mut to: StreamHandle) {
    use tokio::io::AsyncReadExt;
    let mut from = from.lock().await;
    if !from.unsent.is_empty() {
        let bytes = std::mem::take(&mut from.unsent);
        if to.write_all(&bytes).await.is_err() {
            from.unsent = bytes;
            return;
        }
    }
    let mut buf = vec![0u8; 32 * 1024];
    while !from.eof {
        match from.file.read(&mut buf).await {
            Ok(n) if n > 0 => {
                if to.write_all(&buf[..n]).await.is_err() {
                    from.unsent.extend_from_slice(&buf[..n]);
                    return;
                }
            }
            _ => from.eof = true,
        }
    }
    // EOF on our side: the process sees EOF on its stdin.
    let _ = to.shutdown().await;
}
