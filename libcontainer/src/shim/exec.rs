//! Exec sessions: a stand-in process on the host (`runvm exec`, or the
//! detached stand-in whose pid goes in `--pid-file`) hands the shim its stdio
//! over the control socket; the shim starts the process in the guest, relays
//! its stdio, and tells the stand-in its exit code.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use oci_spec::runtime::Process;
use runvm_protocol::{ExecProcess, ProcessRef, ResizeTty, SignalProcess};
use serde::Serialize;
use slog::{debug, warn, Logger};
use tokio::net::UnixStream;

use super::stdio::{self, Local};
use super::DRAIN_TIMEOUT;
use crate::agent::AgentClient;
use crate::control::{ExecControl, ExecExited, ExecStarted, ShimFailure};
use crate::error_chain;
use crate::status::Refusal;

/// Host pids of the exec stand-ins, by exec id (for `ps --format json`).
pub type StandIns = Arc<Mutex<HashMap<String, i32>>>;

pub struct ExecSession {
    pub agent: Arc<AgentClient>,
    pub container_id: String,
    pub exec_id: String,
    pub process: Process,
    pub fds: [OwnedFd; 3],
    pub stand_ins: StandIns,
    pub log: Logger,
}

impl ExecSession {
    fn process_ref(&self) -> ProcessRef {
        ProcessRef {
            container_id: self.container_id.clone(),
            exec_id: Some(self.exec_id.clone()),
        }
    }

    /// Run the session to its end on `stream` (the stand-in's connection).
    pub async fn run(self, mut stream: UnixStream) {
        let terminal = self.process.terminal().unwrap_or(false);
        let started = self
            .agent
            .call(ExecProcess {
                container_id: self.container_id.clone(),
                exec_id: self.exec_id.clone(),
                process: self.process.clone(),
            })
            .await;
        let guest_pid = match started {
            Ok(created) => created.pid,
            Err(e) => {
                let failure = match &e {
                    crate::agent::AgentClientError::Agent(a)
                        if a.kind == runvm_protocol::AgentErrorKind::NotRunning =>
                    {
                        Refusal::ExecStopped.into()
                    }
                    e => e.to_failure(),
                };
                let _ = reply::<ExecStarted>(&mut stream, Err(failure)).await;
                return;
            }
        };
        if let Ok(cred) = stream.peer_cred() {
            if let Some(pid) = cred.pid() {
                self.lock_stand_ins().insert(self.exec_id.clone(), pid);
            }
        }
        let process = self.process_ref();
        let Self { fds, agent, .. } = &self;
        let [stdin, stdout, stderr] = fds.each_ref().map(|f| f.try_clone());
        let local = match (stdin, stdout, stderr) {
            (Ok(stdin), Ok(stdout), Ok(stderr)) => Local {
                stdin,
                stdout,
                stderr: (!terminal).then_some(stderr),
            },
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                let failure = ShimFailure::io("duplicate the exec's stdio", &e);
                let _ = reply::<ExecStarted>(&mut stream, Err(failure)).await;
                return;
            }
        };
        let outputs = match stdio::attach(agent, &process, local).await {
            Ok(o) => o,
            Err(e) => {
                let _ = reply::<ExecStarted>(&mut stream, Err(e.to_failure())).await;
                return;
            }
        };
        if reply(&mut stream, Ok(ExecStarted { guest_pid }))
            .await
            .is_err()
        {
            debug!(self.log, "exec stand-in left before the start"; "exec" => &self.exec_id);
        }
        let waiter = agent.clone();
        let wait = waiter.wait_process(process.clone());
        tokio::pin!(wait);
        // Once the stand-in is gone the process runs on until it ends.
        let mut stand_in_gone = false;
        let code = loop {
            tokio::select! {
                status = &mut wait => break match status {
                    Ok(s) => s.code(),
                    Err(e) => {
                        warn!(self.log, "exec lost"; "exec" => &self.exec_id, "error" => error_chain(&e));
                        super::VM_LOST_EXIT_CODE
                    }
                },
                req = runvm_protocol::recv_async::<_, ExecControl>(&mut stream), if !stand_in_gone => {
                    match req {
                        Ok(req) => self.forward(req).await,
                        Err(_) => stand_in_gone = true,
                    }
                }
            }
        };
        for task in outputs {
            let _ = tokio::time::timeout(DRAIN_TIMEOUT, task).await;
        }
        self.lock_stand_ins().remove(&self.exec_id);
        let _ = reply(&mut stream, Ok(ExecExited { code })).await;
    }

    fn lock_stand_ins(&self) -> std::sync::MutexGuard<'_, HashMap<String, i32>> {
        self.stand_ins.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn forward(&self, req: ExecControl) {
        let sent = match req {
            ExecControl::Resize { rows, cols } => {
                let process = self.process_ref();
                self.agent
                    .call(ResizeTty {
                        process,
                        rows,
                        cols,
                    })
                    .await
            }
            ExecControl::Signal { signal } => {
                let process = self.process_ref();
                let all = false;
                self.agent
                    .call(SignalProcess {
                        process,
                        signal,
                        all,
                    })
                    .await
            }
        };
        if let Err(e) = sent {
            debug!(self.log, "exec request"; "exec" => &self.exec_id, "error" => error_chain(&e));
        }
    }
}

async fn reply<T: Serialize>(
    stream: &mut UnixStream,
    resp: Result<T, ShimFailure>,
) -> Result<(), runvm_protocol::FrameError> {
    runvm_protocol::send_async(stream, &resp).await
}
