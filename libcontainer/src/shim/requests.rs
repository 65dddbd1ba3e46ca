//! The shim's answers on its control socket: start, kill, pause and resume,
//! stats, update, ps, and exec sessions. Each request gets its own reply
//! type or a [`ShimFailure`].

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use oci_spec::runtime::LinuxResources;
use runvm_protocol::{
    AgentErrorKind, CgroupStats, ListProcesses, Pause, ProcessRef, Resume, SignalProcess,
    StartContainer, Stats, Update,
};
use serde::Serialize;
use tokio::io::Interest;
use tokio::net::UnixStream;

use super::exec::ExecSession;
use super::serve::End;
use super::{ExitWaiter, Shim};
use crate::agent::{AgentClient, AgentClientError};
use crate::control::{self, Exec, Processes, ShimFailure, ShimRequest};
use crate::error_chain;
use crate::state::StateError;
use crate::status::{ContainerStatus, Refusal};

pub(super) type Answer<T> = Result<T, ShimFailure>;

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

/// The agent's failure as the verb sees it: `NotRunning` from the guest is
/// the refusal runc gives for this request.
pub(super) fn agent_failure(e: AgentClientError, not_running: Refusal) -> ShimFailure {
    match e {
        AgentClientError::Agent(ref a) if a.kind == AgentErrorKind::NotRunning => {
            not_running.into()
        }
        e => e.to_failure(),
    }
}

pub(super) fn state_failure(e: &StateError) -> ShimFailure {
    use std::error::Error;
    let errno = e
        .source()
        .and_then(|s| s.downcast_ref::<io::Error>())
        .and_then(io::Error::raw_os_error);
    ShimFailure::Io {
        context: error_chain(e),
        errno,
    }
}

async fn reply<T: Serialize>(stream: &mut UnixStream, answer: Answer<T>) {
    let _ = runvm_protocol::send_async(stream, &answer).await;
}

impl Shim {
    /// Answer one request; `Some` when it ended the container's run here
    /// (a checkpoint that stopped it). `exit` is the container's exit
    /// waiter, which a checkpoint replaces.
    pub(super) async fn handle_control(
        &mut self,
        incoming: Incoming,
        exit: &mut ExitWaiter,
    ) -> Option<End> {
        let Incoming {
            mut stream,
            fds,
            req,
        } = incoming;
        let s = &mut stream;
        match req {
            ShimRequest::Checkpoint(c) => {
                let (answer, end) = self.checkpoint(c, exit).await;
                reply(s, answer).await;
                return end;
            }
            ShimRequest::Exec(exec) => match self.exec(exec, fds) {
                Ok(session) => {
                    self.exec_tasks.retain(|t| !t.is_finished());
                    self.exec_tasks.push(tokio::spawn(session.run(stream)));
                }
                Err(e) => reply::<()>(s, Err(e)).await,
            },
            ShimRequest::Start(_) => reply(s, self.start().await).await,
            ShimRequest::Kill(k) => reply(s, self.kill(k.signal, k.all).await).await,
            ShimRequest::Pause(_) => reply(s, self.pause(true).await).await,
            ShimRequest::Resume(_) => reply(s, self.pause(false).await).await,
            ShimRequest::Stats(_) => reply(s, self.stats().await).await,
            ShimRequest::Update(u) => reply(s, self.update(u).await).await,
            ShimRequest::Ps(_) => reply(s, self.ps().await).await,
        }
        None
    }

    fn agent(&self) -> Answer<&Arc<AgentClient>> {
        self.agent.as_ref().ok_or(Refusal::NotRunning.into())
    }

    fn exec(&self, exec: Exec, fds: Option<[OwnedFd; 3]>) -> Answer<ExecSession> {
        let fds = fds.ok_or(ShimFailure::ExecWithoutStdio)?;
        self.status.check_exec(exec.ignore_paused)?;
        Ok(ExecSession {
            agent: self.agent()?.clone(),
            container_id: self.guest_id.clone(),
            exec_id: exec.exec_id,
            process: exec.process,
            fds,
            stand_ins: self.stand_ins.clone(),
            log: self.log.clone(),
        })
    }

    async fn start(&mut self) -> Answer<()> {
        self.status.check_start()?;
        let req = StartContainer {
            container_id: self.guest_id.clone(),
        };
        self.agent()?
            .call_within(req, self.config.runtime.boot())
            .await
            .map_err(|e| agent_failure(e, Refusal::StartStopped))?;
        self.set_status(ContainerStatus::Running)
            .map_err(|e| state_failure(&e))
    }

    async fn kill(&mut self, signal: i32, all: bool) -> Answer<()> {
        self.status.check_kill()?;
        self.agent()?
            .call(SignalProcess {
                process: ProcessRef::init(&self.guest_id),
                signal,
                all,
            })
            .await
            .map_err(|e| agent_failure(e, Refusal::NotRunning))
    }

    /// Freeze (pause) or thaw (resume) the container's cgroup in the guest.
    /// As under runc, a created container can be paused too; resuming it
    /// makes it created again.
    async fn pause(&mut self, freeze: bool) -> Answer<()> {
        let container_id = self.guest_id.clone();
        let to = if freeze {
            self.status.check_pause()?;
            self.agent()?.call(Pause { container_id }).await
        } else {
            self.status.check_resume()?;
            self.agent()?.call(Resume { container_id }).await
        };
        to.map_err(|e| agent_failure(e, Refusal::NotRunning))?;
        let to = if freeze {
            self.paused_from = self.status;
            ContainerStatus::Paused
        } else {
            self.paused_from
        };
        self.set_status(to).map_err(|e| state_failure(&e))
    }

    async fn stats(&self) -> Answer<CgroupStats> {
        let req = Stats {
            container_id: self.guest_id.clone(),
        };
        self.agent()?
            .call(req)
            .await
            .map_err(|e| agent_failure(e, Refusal::NotRunning))
    }

    async fn update(&mut self, u: control::Update) -> Answer<()> {
        let vm_memory_mib = self.grow_memory_for(&u.resources)?;
        let req = Update {
            container_id: self.guest_id.clone(),
            resources: u.resources.clone(),
            vm_memory_mib,
        };
        self.agent()?
            .call(req)
            .await
            .map_err(|e| agent_failure(e, Refusal::NotRunning))?;
        self.update_host_cgroup(&u.resources).map_err(|e| {
            let context = format!(
                "unable to set the host cgroup's limits: {}",
                error_chain(&e)
            );
            ShimFailure::Io {
                context,
                errno: None,
            }
        })
    }

    /// A new memory limit that needs more than the VM has: hotplug what
    /// is missing (in whole 128 MiB memory blocks, as the guest onlines
    /// them), if the VM has memory slots. Returns the VM's new size, for
    /// the agent to wait for.
    fn grow_memory_for(&mut self, resources: &LinuxResources) -> Answer<Option<u64>> {
        let limit = resources
            .memory()
            .as_ref()
            .and_then(|m| m.limit())
            .unwrap_or(0);
        let needed = crate::sizing::vm_mib_for_limit(limit);
        let have = u64::from(self.vm_memory_mib);
        if needed <= have || self.config.vmm().memory_slots == 0 {
            return Ok(None);
        }
        self.grow_vm_to(u32::try_from(needed).unwrap_or(u32::MAX))
            .map_err(|e| ShimFailure::Io {
                context: format!(
                    "the container's memory limit needs a VM of {needed} MiB, it has {have}: {}",
                    error_chain(&e)
                ),
                errno: None,
            })?;
        Ok(Some(u64::from(self.vm_memory_mib)))
    }

    async fn ps(&self) -> Answer<Processes> {
        let req = ListProcesses {
            container_id: self.guest_id.clone(),
        };
        let processes = self
            .agent()?
            .call(req)
            .await
            .map_err(|e| agent_failure(e, Refusal::NotRunning))?;
        let mut host_pids = vec![std::process::id() as i32];
        host_pids.extend(
            self.stand_ins
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .copied(),
        );
        Ok(Processes {
            host_pids,
            processes,
        })
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
