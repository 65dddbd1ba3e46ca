//! The shim's answers on its control socket: start, kill, pause and resume,
//! stats, update, ps, and exec sessions.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use runvm_protocol::{ProcessRef, Reply, Request};
use tokio::io::Interest;
use tokio::net::UnixStream;

use super::control::{self, ShimReply, ShimRequest, ShimResponse};
use super::exec::ExecSession;
use super::Shim;
use crate::agent::AgentClient;
use crate::error_chain;
use crate::status::ContainerStatus;

/// A control request, read off its connection.
pub(super) struct Incoming {
    stream: UnixStream,
    fds: Option<[OwnedFd; 3]>,
    req: ShimRequest,
}

/// Read a connection's preface and request, then queue it for the serve
/// loop. Runs as a task of its own, so a client that connects and sends
/// nothing holds up nobody (it is dropped after `timeout`).
pub(super) async fn read_request(
    mut stream: UnixStream,
    timeout: std::time::Duration,
    queue: tokio::sync::mpsc::UnboundedSender<Incoming>,
) {
    let fds = match tokio::time::timeout(timeout, preface(&stream)).await {
        Ok(Ok(fds)) => fds,
        _ => return,
    };
    let req = match tokio::time::timeout(timeout, runvm_protocol::recv_async(&mut stream)).await {
        Ok(Ok(req)) => req,
        _ => return,
    };
    let _ = queue.send(Incoming { stream, fds, req });
}

impl Shim {
    pub(super) async fn handle_control(&mut self, incoming: Incoming) {
        let Incoming {
            mut stream,
            fds,
            req,
        } = incoming;
        let resp: ShimResponse = match req {
            ShimRequest::Exec { exec_id, process } => match self.exec(exec_id, process, fds) {
                Ok(session) => {
                    self.exec_tasks.retain(|t| !t.is_finished());
                    self.exec_tasks.push(tokio::spawn(session.run(stream)));
                    return;
                }
                Err(e) => Err(e),
            },
            ShimRequest::Start => self.start().await,
            ShimRequest::Kill { signal, all } => self.kill(signal, all).await,
            ShimRequest::Pause => self.pause(true).await,
            ShimRequest::Resume => self.pause(false).await,
            ShimRequest::Stats => {
                self.ask(Request::Stats {
                    container_id: self.id.clone(),
                })
                .await
            }
            ShimRequest::Update { resources } => {
                self.ask(Request::Update {
                    container_id: self.id.clone(),
                    resources,
                })
                .await
            }
            ShimRequest::Ps => self.ps().await,
            ShimRequest::ExecResize { .. } | ShimRequest::ExecSignal { .. } => {
                Err("not an exec session".into())
            }
        };
        let _ = runvm_protocol::send_async(&mut stream, &resp).await;
    }

    fn exec(
        &self,
        exec_id: String,
        process: serde_json::Value,
        fds: Option<[OwnedFd; 3]>,
    ) -> Result<ExecSession, String> {
        let fds = fds.ok_or_else(|| "exec needs the process's stdio".to_string())?;
        if self.status == ContainerStatus::Stopped {
            return Err("cannot exec in a stopped container".into());
        }
        Ok(ExecSession {
            agent: self.agent()?.clone(),
            container_id: self.id.clone(),
            exec_id,
            process,
            fds,
            stand_ins: self.stand_ins.clone(),
            log: self.log.clone(),
        })
    }

    /// Pass a request on to the agent and its answer back.
    async fn ask(&self, req: Request) -> ShimResponse {
        match self.agent()?.request(req).await {
            Ok(Reply::Stats(stats)) => Ok(ShimReply::Stats(stats)),
            Ok(_) => Ok(ShimReply::Done),
            Err(e) => Err(error_chain(&e)),
        }
    }

    async fn ps(&self) -> ShimResponse {
        let processes = match self
            .agent()?
            .request(Request::ListProcesses {
                container_id: self.id.clone(),
            })
            .await
        {
            Ok(Reply::Processes(p)) => p,
            Ok(other) => return Err(format!("unexpected reply {other:?}")),
            Err(e) => return Err(error_chain(&e)),
        };
        let mut host_pids = vec![std::process::id() as i32];
        host_pids.extend(
            self.stand_ins
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .copied(),
        );
        Ok(ShimReply::Ps {
            host_pids,
            processes,
        })
    }

    /// Freeze (pause) or thaw (resume) the container's cgroup in the guest.
    /// As under runc, a created container can be paused too; resuming it
    /// makes it created again.
    async fn pause(&mut self, freeze: bool) -> ShimResponse {
        let (to, req) = if freeze {
            if !self.status.can_pause() {
                return Err("container not running".into());
            }
            let req = Request::Pause {
                container_id: self.id.clone(),
            };
            (ContainerStatus::Paused, req)
        } else {
            if !self.status.can_resume() {
                return Err("container not paused".into());
            }
            let req = Request::Resume {
                container_id: self.id.clone(),
            };
            (self.paused_from, req)
        };
        self.agent()?
            .request(req)
            .await
            .map_err(|e| error_chain(&e))?;
        if freeze {
            self.paused_from = self.status;
        }
        self.status = to;
        self.record(|s| s.status = to)
            .map_err(|e| error_chain(&e))?;
        Ok(ShimReply::Done)
    }

    pub(super) fn agent(&self) -> Result<&Arc<AgentClient>, String> {
        self.agent
            .as_ref()
            .ok_or_else(|| "container not running".to_string())
    }

    async fn start(&mut self) -> ShimResponse {
        if let Some(refusal) = crate::container::start_refusal(self.status) {
            return Err(refusal.to_string());
        }
        let req = Request::StartContainer {
            container_id: self.id.clone(),
        };
        self.agent()?
            .request_within(req, self.config.timeouts.boot())
            .await
            .map_err(|e| error_chain(&e))?;
        self.status = ContainerStatus::Running;
        self.record(|s| s.status = ContainerStatus::Running)
            .map_err(|e| error_chain(&e))?;
        Ok(ShimReply::Done)
    }

    async fn kill(&mut self, signal: i32, all: bool) -> ShimResponse {
        if !self.status.can_kill() {
            return Err("container not running".into());
        }
        self.agent()?
            .request(Request::Signal {
                process: ProcessRef::init(&self.id),
                signal,
                all,
            })
            .await
            .map_err(|e| error_chain(&e))?;
        Ok(ShimReply::Done)
    }
}

/// Read a control connection's preface: the fds it carries, if any.
async fn preface(stream: &UnixStream) -> io::Result<Option<[OwnedFd; 3]>> {
    loop {
        stream.readable().await?;
        match stream.try_io(Interest::READABLE, || control::recv_preface(stream.as_fd())) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            result => return result,
        }
    }
}
