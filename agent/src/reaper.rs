//! As PID 1 the agent reaps every process in the guest, its own helpers, the
//! containers' processes (reparented to it) and any orphan. Interested code
//! subscribes to a pid and gets its exit status through a watch channel.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use runvm_protocol::ExitStatus;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// Exit statuses nobody subscribed to yet are kept, up to this many.
const MAX_UNCLAIMED: usize = 4096;

type ExitWatch = watch::Receiver<Option<ExitStatus>>;

#[derive(Default)]
pub struct Reaper {
    inner: Mutex<Inner>,
}

#[derive(Default)]
pub struct Inner {
    waiting: HashMap<i32, watch::Sender<Option<ExitStatus>>>,
    unclaimed: HashMap<i32, ExitStatus>,
}

impl Inner {
    /// Subscribe to the exit of `pid`, which may already have been reaped.
    pub fn watch(&mut self, pid: i32) -> ExitWatch {
        if let Some(status) = self.unclaimed.remove(&pid) {
            let (_tx, rx) = watch::channel(Some(status));
            return rx;
        }
        let tx = self
            .waiting
            .entry(pid)
            .or_insert_with(|| watch::channel(None).0);
        tx.subscribe()
    }

    fn deliver(&mut self, pid: i32, status: ExitStatus) {
        match self.waiting.remove(&pid) {
            Some(tx) => {
                let _ = tx.send(Some(status));
            }
            None => {
                if self.unclaimed.len() >= MAX_UNCLAIMED {
                    self.unclaimed.clear();
                }
                self.unclaimed.insert(pid, status);
            }
        }
    }
}

impl Reaper {
    /// Hold this while spawning a child and subscribing to it, so the child
    /// cannot be reaped in between.
    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn watch(&self, pid: i32) -> ExitWatch {
        self.lock().watch(pid)
    }

    /// Reap on every SIGCHLD, forever.
    pub async fn run(&self) -> anyhow::Result<()> {
        let mut sigchld = signal(SignalKind::child())?;
        loop {
            self.reap_all();
            sigchld.recv().await;
        }
    }

    fn reap_all(&self) {
        let mut inner = self.lock();
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => {
                    inner.deliver(pid.as_raw(), ExitStatus::Exited(code))
                }
                Ok(WaitStatus::Signaled(pid, sig, _)) => {
                    inner.deliver(pid.as_raw(), ExitStatus::Signaled(sig as i32))
                }
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(_) => break,
            }
        }
    }
}

/// Wait until the watched process has exited.
pub async fn wait(mut rx: ExitWatch) -> Option<ExitStatus> {
    loop {
        if let Some(status) = *rx.borrow_and_update() {
            return Some(status);
        }
        if rx.changed().await.is_err() {
            return *rx.borrow();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_reaped_before_subscribing_is_kept() {
        let mut inner = Inner::default();
        inner.deliver(42, ExitStatus::Exited(3));
        let rx = inner.watch(42);
        assert_eq!(*rx.borrow(), Some(ExitStatus::Exited(3)));
        assert!(inner.unclaimed.is_empty());
    }

    #[test]
    fn subscriber_gets_a_later_exit() {
        let mut inner = Inner::default();
        let rx = inner.watch(7);
        assert_eq!(*rx.borrow(), None);
        inner.deliver(7, ExitStatus::Signaled(9));
        assert_eq!(*rx.borrow(), Some(ExitStatus::Signaled(9)));
    }
}
