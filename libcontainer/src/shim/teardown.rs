//! Stopping what `boot` started, and recording the end.

use std::fs;
use std::time::Instant;

use slog::warn;

use super::Shim;
use crate::control::CONTROL_SOCKET;
use crate::error_chain;
use crate::state::StateError;
use crate::status::ContainerStatus;

impl Shim {
    /// Record that the container has stopped (with its exit code, if it
    /// had one: a lost VM has none).
    pub(super) fn record_stopped(&mut self, exit_code: Option<i32>) {
        self.status = ContainerStatus::Stopped;
        if let Err(e) = self.record(|s| {
            s.status = ContainerStatus::Stopped;
            s.exit_code = exit_code;
        }) {
            // The directory is gone when `delete` got there first.
            if !matches!(e, StateError::NotExist { .. }) {
                warn!(self.log, "record the stopped state"; "error" => error_chain(&e));
            }
        }
    }

    /// End a container that never ran: stop what boot started, record it
    /// stopped, and run its poststop hooks (as runc does when it cleans up
    /// after a failed create).
    pub(super) async fn abandon(&mut self) {
        self.teardown().await;
        self.record_stopped(None);
        self.run_poststop();
    }

    /// A pool VM's logs are links into its member's directory, which the
    /// member removes once this shim is gone: keep copies in the state
    /// directory, where `runvm` and the user look for them.
    fn keep_pool_logs(&self) {
        for name in [crate::hypervisor::CONSOLE_LOG, crate::hypervisor::VMM_LOG] {
            let path = self.dir.join(name);
            let linked = fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink());
            if !linked {
                continue;
            }
            // The member copies the console into its log until the VM is
            // gone: wait for the last of it.
            if name == crate::hypervisor::CONSOLE_LOG
                && !crate::hypervisor::console::wait_complete(&path, self.config.runtime.stop())
            {
                warn!(
                    self.log,
                    "the pool VM's console is still being written: its copy may lack the end"
                );
            }
            let copy = self.dir.join(format!("{name}.copy"));
            if fs::copy(&path, &copy).is_ok() {
                let _ = fs::rename(&copy, &path);
            } else {
                let _ = fs::remove_file(&copy);
            }
        }
    }

    /// Stop whatever was started: the VM, then virtiofsd; remove the sockets
    /// the shim made (the hypervisor removes its own).
    pub(super) async fn teardown(&mut self) {
        self.agent = None;
        let stop = self.config.runtime.stop();
        if let Some(mut vm) = self.vm.take() {
            let t = Instant::now();
            if let Err(e) = vm.stop(stop) {
                warn!(self.log, "stop the VM"; "error" => error_chain(&e));
            }
            slog::debug!(self.log, "VM stopped"; "ms" => t.elapsed().as_millis() as u64);
        }
        self.keep_pool_logs();
        // The taps went with the VM; the redirects on the caller's
        // interfaces go now (their namespace may outlive the container).
        if let Some(network) = self.network.take() {
            for e in network.disconnect().await {
                warn!(self.log, "disconnect the network"; "error" => error_chain(&e));
            }
        }
        if let Some(vfs) = self.virtiofsd.take() {
            let t = Instant::now();
            vfs.stop(stop);
            slog::debug!(self.log, "virtiofsd stopped"; "ms" => t.elapsed().as_millis() as u64);
        }
        for name in [CONTROL_SOCKET, super::boot::SHARE_SOCKET] {
            let _ = fs::remove_file(self.dir.join(name));
        }
    }
}
