//! Running the container: control requests and signals in, until the
//! container exits or its VM is lost.

use std::io::{self, Write};
use std::time::{Duration, Instant};

use runvm_protocol::{ExitStatus, ProcessRef, SignalProcess};
use slog::{error, info, warn};
use tokio::sync::mpsc;

use super::{requests, Shim, DRAIN_TIMEOUT, VM_LOST_EXIT_CODE};
use crate::child::ExitWatch;
use crate::error_chain;

/// How the serve loop ended.
pub(super) enum End {
    Exited(ExitStatus),
    VmLost(String),
    SessionLost(String),
    /// Saved into a checkpoint image, and stopped (as CRIU's dump kills
    /// the container under runc).
    Checkpointed,
}

/// What the stand-in exits with after a checkpoint that stopped the
/// container: its init was killed, as far as the caller can tell.
const CHECKPOINTED_EXIT_CODE: i32 = 128 + libc::SIGKILL;

/// Resolves when `watch` says the process ended, with how.
async fn ended(watch: &mut ExitWatch) -> String {
    match watch.wait_for(Option::is_some).await {
        Ok(s) => s.clone().unwrap_or_default(),
        Err(_) => String::new(),
    }
}

impl Shim {
    /// Answer control requests and forward signals until the container exits
    /// or its VM is lost; then tear down and return the exit code.
    pub(super) async fn serve(mut self, mut signals: mpsc::UnboundedReceiver<i32>) -> i32 {
        let listener = self.control.take().expect("setup bound the control socket");
        let mut exit = self.exit.take().expect("setup started the exit waiter");
        let mut vm_exit = self.vm.as_ref().expect("setup started the VM").exit_watch();
        // Without virtiofsd (a VM whose files come otherwise) nothing ends.
        let mut vfs_exit = self.virtiofsd.as_ref().map(|v| v.exit_watch());
        let (queue, mut requests) = mpsc::unbounded_channel();
        let read_timeout = self.config.runtime.request();
        let end = loop {
            tokio::select! {
                conn = listener.accept() => {
                    if let Ok((stream, _)) = conn {
                        tokio::spawn(requests::read_request(stream, read_timeout, queue.clone()));
                    }
                }
                Some(incoming) = requests.recv() => {
                    if let Some(end) = self.handle_control(incoming, &mut exit).await {
                        break end;
                    }
                }
                Some(sig) = signals.recv() => self.forward(sig).await,
                status = &mut exit => {
                    match status {
                        Ok(Ok(status)) => break End::Exited(status),
                        // The session dropped: the VM is going or gone.
                        Ok(Err(e)) => break End::SessionLost(error_chain(&e)),
                        Err(_) => break End::VmLost("the exit waiter vanished".into()),
                    }
                }
                why = ended(&mut vm_exit) => break End::VmLost(format!("the VM {why}")),
                why = async {
                    match vfs_exit.as_mut() {
                        Some(w) => ended(w).await,
                        None => std::future::pending().await,
                    }
                } => break End::VmLost(format!("virtiofsd {why}, the rootfs is gone")),
            }
        };
        drop(listener);
        for task in self.exec_tasks.drain(..) {
            let _ = tokio::time::timeout(DRAIN_TIMEOUT, task).await;
        }
        let code = match end {
            End::Exited(status) => {
                info!(self.log, "container exited"; "code" => status.code());
                for task in self.outputs.drain(..) {
                    let _ = tokio::time::timeout(DRAIN_TIMEOUT, task).await;
                }
                status.code()
            }
            End::VmLost(why) => {
                error!(self.log, "container lost"; "reason" => why);
                VM_LOST_EXIT_CODE
            }
            End::Checkpointed => {
                info!(self.log, "container checkpointed and stopped");
                CHECKPOINTED_EXIT_CODE
            }
            End::SessionLost(err) => {
                let waited =
                    tokio::time::timeout(Duration::from_secs(2), ended(&mut vm_exit)).await;
                let why = match waited {
                    Ok(s) => format!("the VM {s}"),
                    Err(_) => err,
                };
                error!(self.log, "container lost"; "reason" => why);
                VM_LOST_EXIT_CODE
            }
        };
        let _ = io::stdout().flush();
        let t = Instant::now();
        self.record_stopped((code != VM_LOST_EXIT_CODE).then_some(code));
        self.teardown().await;
        info!(self.log, "shim exiting"; "code" => code, "teardown_ms" => t.elapsed().as_millis() as u64);
        code
    }

    /// A signal the shim received: a window size change of its terminal, or
    /// one for the container's init.
    async fn forward(&self, sig: i32) {
        if sig == libc::SIGWINCH && self.resize_source.is_some() {
            self.push_window_size().await;
            return;
        }
        let Some(agent) = self.agent.clone() else {
            return;
        };
        let req = SignalProcess {
            process: ProcessRef::init(&self.guest_id),
            signal: sig,
            all: false,
        };
        let log = self.log.clone();
        tokio::spawn(async move {
            if let Err(e) = agent.call(req).await {
                warn!(log, "forward signal"; "signal" => sig, "error" => error_chain(&e));
            }
        });
    }
}
