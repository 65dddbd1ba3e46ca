//! The yamux server on the agent's port and the dispatch of its streams.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Result;
use futures::StreamExt;
use runvm_protocol::mux::yamux_config;
use runvm_protocol::{
    recv_async, send_async, AgentError, AgentErrorKind, AgentInfo, ExitStatus, ProcessRef, Request,
    StreamKind, AGENT_DEBUG_PARAM, AGENT_PORT_NAME, PROTOCOL_VERSION, SESSION_ENDED,
};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio_yamux::{Session, StreamHandle};

use crate::containers::Agent;
use crate::fdio::{self, FdIo};
use crate::process::{AgentResult, Proc, Stdio3};

pub async fn serve() -> Result<()> {
    let agent = Arc::new(Agent::new());
    let reaper_owner = agent.clone();
    tokio::spawn(async move {
        if let Err(e) = reaper_owner.reaper.run().await {
            eprintln!("runvm-agent: reaper: {e:#}");
        }
    });
    // Loopback is every container's, whatever else its network has.
    if let Err(e) = crate::network::loopback_up() {
        eprintln!("runvm-agent: {e}");
    }
    let path = fdio::find_port(AGENT_PORT_NAME).await?;
    let port = FdIo::open(&path)?;
    // A session ends when the host side disconnects (reads return EOF while no
    // host is connected); containers keep running, and a new session starts
    // when the host comes back. Until then each new session ends at once, on
    // the same EOF.
    let (ended, _) = watch::channel(0u64);
    let mut generation = 0u64;
    loop {
        let mut session = Session::new_server(port.clone(), yamux_config());
        let (alive, mut relays_done) = mpsc::channel::<()>(1);
        let mut streams = 0u64;
        while let Some(item) = session.next().await {
            match item {
                Ok(stream) => {
                    streams += 1;
                    let end = SessionEnd {
                        ended: ended.subscribe(),
                        generation,
                        _alive: alive.clone(),
                    };
                    tokio::spawn(handle_stream(agent.clone(), stream, end));
                }
                Err(_) => break,
            }
        }
        // The session's relays hand their descriptors back before the next
        // session can ask for them (the host that checkpointed the VM, or
        // the one that restored it, attaches anew).
        generation += 1;
        ended.send_replace(generation);
        drop(session);
        drop(alive);
        let _ = relays_done.recv().await;
        if streams > 0 {
            // Said only after the session is gone: `factory init` and
            // `checkpoint` snapshot the VM once they read this (see
            // runvm_protocol::SESSION_ENDED).
            eprintln!("{SESSION_ENDED}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What a stream's handler knows of its session: whether it has ended, and
/// a token the serve loop waits on until every relay has let go.
struct SessionEnd {
    ended: watch::Receiver<u64>,
    generation: u64,
    _alive: mpsc::Sender<()>,
}

impl SessionEnd {
    fn has_ended(&self) -> bool {
        *self.ended.borrow() > self.generation
    }

    async fn wait(&mut self) {
        let generation = self.generation;
        let _ = self.ended.wait_for(|n| *n > generation).await;
    }
}

async fn handle_stream(agent: Arc<Agent>, mut stream: StreamHandle, mut end: SessionEnd) {
    let kind: StreamKind = match recv_async(&mut stream).await {
        Ok(kind) => kind,
        Err(e) => {
            eprintln!("runvm-agent: bad stream header: {e}");
            return;
        }
    };
    match kind {
        StreamKind::Rpc(req) => {
            // A request finishes on its own: the serve loop does not wait.
            drop(end);
            handle_request(&agent, *req, &mut stream).await;
            let _ = stream.shutdown().await;
        }
        StreamKind::Stdin(p) => relay_stdin(&agent, &p, stream, end).await,
        StreamKind::Stdout(p) => relay_output(&agent, &p, Stdio3::Stdout, stream, end).await,
        StreamKind::Stderr(p) => relay_output(&agent, &p, Stdio3::Stderr, stream, end).await,
        StreamKind::Wait(p) => {
            let status: Result<ExitStatus, AgentError> = match agent.process(&p) {
                Ok(proc_) => tokio::select! {
                    status = proc_.wait() => status
                        .ok_or_else(|| AgentError::new(AgentErrorKind::System, "exit status lost")),
                    // Nobody is left to tell; the next host asks again.
                    _ = end.wait() => return,
                },
                Err(e) => Err(e),
            };
            let _ = send_async(&mut stream, &status).await;
            let _ = stream.shutdown().await;
        }
    }
}

/// Answer one request on its stream, with the reply type of its kind.
async fn handle_request(agent: &Agent, req: Request, stream: &mut StreamHandle) {
    let log = RequestLog::start(req.name());
    match req {
        Request::Ping(_) => reply(stream, &log, Ok(info())).await,
        Request::CreateContainer(r) => reply(stream, &log, agent.create_container(r).await).await,
        Request::StartContainer(r) => {
            reply(stream, &log, agent.start_container(&r.container_id).await).await
        }
        Request::Signal(r) => reply(stream, &log, agent.signal(&r.process, r.signal, r.all)).await,
        Request::Exec(r) => reply(stream, &log, agent.exec(r).await).await,
        Request::ResizeTty(r) => {
            reply(stream, &log, agent.resize(&r.process, r.rows, r.cols)).await
        }
        Request::Pause(r) => {
            reply(
                stream,
                &log,
                blocking(|| agent.freeze(&r.container_id, true)),
            )
            .await
        }
        Request::Resume(r) => {
            reply(
                stream,
                &log,
                blocking(|| agent.freeze(&r.container_id, false)),
            )
            .await
        }
        Request::Stats(r) => reply(stream, &log, agent.stats(&r.container_id)).await,
        Request::Update(r) => {
            if let Some(mib) = r.vm_memory_mib {
                crate::guest::wait_memory_online(mib).await;
            }
            reply(stream, &log, agent.update(&r.container_id, &r.resources)).await
        }
        Request::ListProcesses(r) => reply(stream, &log, agent.processes(&r.container_id)).await,
        Request::SyncGuest(r) => {
            reply(stream, &log, crate::guest::sync(r.unix_time_ns, &r.seed)).await
        }
        Request::ConfigureNetwork(r) => {
            reply(stream, &log, crate::network::configure(r).await).await
        }
        Request::Warmup(r) => reply(stream, &log, agent.warmup(r).await).await,
    }
}

async fn reply<T: Serialize>(stream: &mut StreamHandle, log: &RequestLog, result: AgentResult<T>) {
    log.end(result.as_ref().err());
    let _ = send_async(stream, &result).await;
}

/// With `[agent] enable_debug` on the host (the kernel command line has
/// [`AGENT_DEBUG_PARAM`]), a line on the console for each request and its
/// outcome.
struct RequestLog {
    name: &'static str,
    started: Instant,
}

impl RequestLog {
    fn start(name: &'static str) -> Self {
        if debug() {
            eprintln!("runvm-agent: debug: request {name}");
        }
        RequestLog {
            name,
            started: Instant::now(),
        }
    }

    fn end(&self, error: Option<&AgentError>) {
        if !debug() {
            return;
        }
        let ms = self.started.elapsed().as_millis();
        match error {
            None => eprintln!("runvm-agent: debug: {} ok in {ms} ms", self.name),
            Some(e) => eprintln!("runvm-agent: debug: {} failed in {ms} ms: {e}", self.name),
        }
    }
}

fn debug() -> bool {
    static DEBUG: OnceLock<bool> = OnceLock::new();
    *DEBUG.get_or_init(|| {
        std::fs::read_to_string("/proc/cmdline")
            .is_ok_and(|c| c.split_whitespace().any(|w| w == AGENT_DEBUG_PARAM))
    })
}

fn info() -> AgentInfo {
    AgentInfo {
        version: env!("CARGO_PKG_VERSION").to_string(),
        protocol: PROTOCOL_VERSION,
        kernel_release: nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default(),
    }
}

/// Run a short blocking call (it waits on the kernel) off the async threads.
fn blocking<T>(f: impl FnOnce() -> AgentResult<T>) -> AgentResult<T> {
    tokio::task::block_in_place(f)
}

/// Relay the host's bytes to a process's stdin until the host closes it
/// (the process then sees EOF), or until the session ends without the host
/// having closed it: then the descriptor is handed back for the next
/// session. A session's end reaches this stream as EOF too, so the serve
/// loop's count of ended sessions tells the two apart: it is raised before
/// the session is dropped, which is what ends its streams.
async fn relay_stdin(agent: &Agent, p: &ProcessRef, mut stream: StreamHandle, mut end: SessionEnd) {
    let Ok(proc_) = agent.process(p) else {
        let _ = stream.shutdown().await;
        return;
    };
    let Some(fd) = proc_.take(Stdio3::Stdin) else {
        let _ = stream.shutdown().await;
        return;
    };
    let Ok(mut to) = FdIo::new(fd) else {
        let _ = stream.shutdown().await;
        return;
    };
    let mut buf = vec![0u8; 32 * 1024];
    let session_ended = loop {
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                // A process that does not read its stdin holds the write
                // up, not the next session: its end stops the write.
                Ok(n) if n > 0 => tokio::select! {
                    written = to.write_all(&buf[..n]) => if written.is_err() {
                        break false;
                    },
                    _ = end.wait() => break true,
                },
                _ => break end.has_ended(),
            },
            _ = end.wait() => break true,
        }
    };
    if session_ended {
        if let Some(fd) = to.into_fd() {
            proc_.give_back(Stdio3::Stdin, fd);
        }
    }
    // Otherwise dropping our end of the pipe gives the process EOF on stdin.
}

/// Relay a process's output until EOF, or until the process has exited and
/// all it wrote has been relayed: then the stream ends, so the host knows
/// it has the whole output without waiting for a background child that
/// keeps the pipe open (`sh -c 'sleep 100 &'`). Once the process is dead,
/// everything it wrote is in the pipe (or pty) buffer: reading until the
/// buffer is empty gets it all. If the session ends first, what was read
/// and not sent is kept, and the descriptor handed back, for the next
/// session's relay.
async fn relay_output(
    agent: &Agent,
    p: &ProcessRef,
    which: Stdio3,
    mut stream: StreamHandle,
    mut end: SessionEnd,
) {
    let Ok(proc_) = agent.process(p) else {
        let _ = stream.shutdown().await;
        return;
    };
    let Some(Ok(mut from)) = proc_.take(which).map(FdIo::new) else {
        let _ = stream.shutdown().await;
        return;
    };
    let unsent = proc_.take_unsent(which);
    let mut sent = Sent::All;
    if !unsent.is_empty() {
        sent = send_or_keep(&mut stream, &unsent, &proc_, which, &mut end).await;
    }
    let exited = proc_.wait();
    tokio::pin!(exited);
    let mut buf = vec![0u8; 32 * 1024];
    while sent == Sent::All {
        tokio::select! {
            biased;
            read = from.read(&mut buf) => match read {
                Ok(n) if n > 0 => {
                    sent = send_or_keep(&mut stream, &buf[..n], &proc_, which, &mut end).await;
                }
                _ => break,
            },
            _ = &mut exited => {
                while let Some(n) = from.read_buffered(&mut buf) {
                    sent = send_or_keep(&mut stream, &buf[..n], &proc_, which, &mut end).await;
                    if sent != Sent::All {
                        break;
                    }
                }
                break;
            }
            _ = end.wait() => sent = Sent::SessionEnded,
        }
    }
    match sent {
        Sent::SessionEnded => {
            if let Some(fd) = from.into_fd() {
                proc_.give_back(which, fd);
            }
        }
        // The host let go of this output while its session goes on: the
        // process's next write fails, as with runc when the reader goes.
        Sent::Refused => {}
        Sent::All => {
            let _ = stream.shutdown().await;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    All,
    /// The stream failed, its session going on.
    Refused,
    /// The session ended: the bytes are kept for the next one.
    SessionEnded,
}

/// Send `bytes` on the stream; if the session ends first, keep them for
/// the next relay of this output. (A write cut short by the end may have
/// sent a part: the next host may get those bytes twice.)
async fn send_or_keep(
    stream: &mut StreamHandle,
    bytes: &[u8],
    proc_: &Proc,
    which: Stdio3,
    end: &mut SessionEnd,
) -> Sent {
    let written = tokio::select! {
        written = stream.write_all(bytes) => written.is_ok(),
        _ = end.wait() => false,
    };
    if written {
        Sent::All
    } else if end.has_ended() {
        proc_.keep_unsent(which, bytes);
        Sent::SessionEnded
    } else {
        Sent::Refused
    }
}
