//! The yamux server on the agent's port and the dispatch of its streams.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use futures::StreamExt;
use runvm_protocol::{
    recv_async, send_async, AgentError, AgentInfo, ExitStatus, ProcessRef, Reply, Request,
    Response, StreamKind, AGENT_PORT_NAME, PROTOCOL_VERSION, SESSION_ENDED,
};
use tokio::io::AsyncWriteExt;
use tokio_yamux::{Config, Session, StreamHandle};

use crate::containers::Agent;
use crate::fdio::{self, FdIo};
use crate::process::Stdio3;

pub fn yamux_config() -> Config {
    Config {
        // The host may pause the VM or stop reading for a long time; a
        // keepalive or write timeout would tear down a healthy session.
        enable_keepalive: false,
        connection_write_timeout: Duration::from_secs(24 * 3600),
        ..Config::default()
    }
}

pub async fn serve() -> Result<()> {
    let agent = Arc::new(Agent::new());
    let reaper_owner = agent.clone();
    tokio::spawn(async move {
        if let Err(e) = reaper_owner.reaper.run().await {
            eprintln!("runvm-agent: reaper: {e:#}");
        }
    });
    let path = fdio::find_port(AGENT_PORT_NAME).await?;
    let port = FdIo::open(&path)?;
    // A session ends when the host side disconnects (reads return EOF while no
    // host is connected); containers keep running, and a new session starts
    // when the host comes back. Until then each new session ends at once, on
    // the same EOF.
    loop {
        let mut session = Session::new_server(port.clone(), yamux_config());
        let mut streams = 0u64;
        while let Some(item) = session.next().await {
            match item {
                Ok(stream) => {
                    streams += 1;
                    tokio::spawn(handle_stream(agent.clone(), stream));
                }
                Err(_) => break,
            }
        }
        drop(session);
        if streams > 0 {
            // Said only after the session is gone: `factory init` snapshots
            // the VM once it reads this (see runvm_protocol::SESSION_ENDED).
            eprintln!("{SESSION_ENDED}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn handle_stream(agent: Arc<Agent>, mut stream: StreamHandle) {
    let kind: StreamKind = match recv_async(&mut stream).await {
        Ok(kind) => kind,
        Err(e) => {
            eprintln!("runvm-agent: bad stream header: {e}");
            return;
        }
    };
    match kind {
        StreamKind::Rpc(req) => {
            let resp = handle_request(&agent, req).await;
            let _ = send_async(&mut stream, &resp).await;
            let _ = stream.shutdown().await;
        }
        StreamKind::Stdin(p) => relay_stdin(&agent, &p, stream).await,
        StreamKind::Stdout(p) => relay_output(&agent, &p, Stdio3::Stdout, stream).await,
        StreamKind::Stderr(p) => relay_output(&agent, &p, Stdio3::Stderr, stream).await,
        StreamKind::Wait(p) => {
            let status: Result<ExitStatus, AgentError> = match agent.process(&p) {
                Ok(proc_) => proc_
                    .wait()
                    .await
                    .ok_or_else(|| AgentError::new("exit status lost")),
                Err(e) => Err(e),
            };
            let _ = send_async(&mut stream, &status).await;
            let _ = stream.shutdown().await;
        }
    }
}

async fn handle_request(agent: &Agent, req: Request) -> Response {
    match req {
        Request::Ping => Ok(Reply::Pong(AgentInfo {
            version: env!("CARGO_PKG_VERSION").to_string(),
            protocol: PROTOCOL_VERSION,
            kernel_release: nix::sys::utsname::uname()
                .map(|u| u.release().to_string_lossy().into_owned())
                .unwrap_or_default(),
        })),
        Request::CreateContainer(create) => agent
            .create_container(create)
            .await
            .map(|pid| Reply::Created { pid }),
        Request::StartContainer { container_id } => agent
            .start_container(&container_id)
            .await
            .map(|()| Reply::Done),
        Request::Signal {
            process,
            signal,
            all,
        } => agent.signal(&process, signal, all).map(|()| Reply::Done),
        Request::Exec(exec) => agent.exec(exec).await.map(|pid| Reply::Created { pid }),
        Request::ResizeTty {
            process,
            rows,
            cols,
        } => agent.resize(&process, rows, cols).map(|()| Reply::Done),
        Request::Pause { container_id } => blocking(agent, move |a| {
            a.freeze(&container_id, true).map(|()| Reply::Done)
        }),
        Request::Resume { container_id } => blocking(agent, move |a| {
            a.freeze(&container_id, false).map(|()| Reply::Done)
        }),
        Request::Stats { container_id } => agent.stats(&container_id).map(Reply::Stats),
        Request::Update {
            container_id,
            resources,
        } => agent
            .update(&container_id, &resources)
            .map(|()| Reply::Done),
        Request::ListProcesses { container_id } => {
            agent.processes(&container_id).map(Reply::Processes)
        }
        Request::SyncGuest { unix_time_ns, seed } => {
            crate::guest::sync(unix_time_ns, &seed).map(|()| Reply::Done)
        }
    }
}

/// Run a short blocking call (it waits on the kernel) off the async threads.
fn blocking(agent: &Agent, f: impl FnOnce(&Agent) -> Response) -> Response {
    tokio::task::block_in_place(|| f(agent))
}

async fn relay_stdin(agent: &Agent, p: &ProcessRef, mut stream: StreamHandle) {
    let fd = agent
        .process(p)
        .ok()
        .and_then(|proc_| proc_.take(Stdio3::Stdin));
    match fd.map(FdIo::new) {
        Some(Ok(mut to)) => {
            let _ = tokio::io::copy(&mut stream, &mut to).await;
            // Dropping our end of a pipe gives the process EOF on stdin.
        }
        _ => {
            let _ = stream.shutdown().await;
        }
    }
}

async fn relay_output(agent: &Agent, p: &ProcessRef, which: Stdio3, mut stream: StreamHandle) {
    let fd = agent.process(p).ok().and_then(|proc_| proc_.take(which));
    if let Some(Ok(mut from)) = fd.map(FdIo::new) {
        let _ = tokio::io::copy(&mut from, &mut stream).await;
    }
    let _ = stream.shutdown().await;
}
