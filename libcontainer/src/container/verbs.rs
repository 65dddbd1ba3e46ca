//! The verbs that ask a container's shim: start, kill, exec, ps, pause,
//! resume, stats (events), update.

use std::time::Duration;

use oci_spec::runtime::{LinuxResources, Spec};
use runvm_protocol::{CgroupStats, GuestProcess};

use super::creating::Ender;
use super::{check_pid_file_dir, ContainerError, Runtime};
use crate::control::{Kill, Pause, Processes, Ps, Resume, Start, Stats, Update};
use crate::exec::ExecOptions;
use crate::hooks::Kind;
use crate::state::{State, SPEC_FILE};
use crate::status::{ContainerStatus, Refusal};

impl Runtime {
    pub fn start(&self, id: &str) -> Result<(), ContainerError> {
        let mut state = self.load(id)?;
        if state.refreshed_status() == ContainerStatus::Creating {
            state = self.wait_created(id)?;
        }
        state.refreshed_status().check_start()?;
        // Starting may wait on a busy guest: it gets the boot timeout.
        let timeout = self.config.runtime.boot() + Duration::from_secs(5);
        self.ask(id, Start, timeout, Refusal::StartStopped)?;
        let pid = state.shim.map(|s| s.pid);
        self.run_hooks(&state, Kind::Poststart, ContainerStatus::Running, pid);
        Ok(())
    }

    pub fn kill(&self, id: &str, signal: i32, all: bool) -> Result<(), ContainerError> {
        let state = self.load(id)?;
        let status = state.refreshed_status();
        if all && status == ContainerStatus::Stopped {
            return Ok(());
        }
        if status == ContainerStatus::Creating {
            // Signal 0 asks whether it is there; any other ends the create,
            // as killing runc's init ends runc's.
            if signal == 0 || self.end_create(id, Ender::Kill)? {
                return Ok(());
            }
            // Create finished first: the signal is for what it made.
            return self.kill(id, signal, all);
        }
        status.check_kill()?;
        let req = Kill { signal, all };
        self.ask(id, req, self.shim_timeout(), Refusal::NotRunning)
    }

    /// The state of a container that has not stopped.
    fn live(&self, id: &str) -> Result<State, ContainerError> {
        let state = self.load(id)?;
        if state.refreshed_status() == ContainerStatus::Stopped {
            return Err(Refusal::NotRunning.into());
        }
        Ok(state)
    }

    /// Run a process in the container. In the foreground, returns its exit
    /// code; detached, returns once it runs (0).
    pub fn exec(&self, opts: &ExecOptions) -> Result<i32, ContainerError> {
        let state = self.load(&opts.id)?;
        state.refreshed_status().check_exec(opts.ignore_paused)?;
        if !opts.detach && opts.console_socket.is_some() {
            return Err(crate::exec::ExecError::ConsoleWithoutTerminal.into());
        }
        if let Some(pid_file) = &opts.pid_file {
            check_pid_file_dir(pid_file)?;
        }
        let dir = self.store.dir(&opts.id);
        let spec_path = dir.join(SPEC_FILE);
        let data = std::fs::read(&spec_path).map_err(|source| ContainerError::ReadSpec {
            path: spec_path.clone(),
            source,
        })?;
        let spec: Spec =
            serde_json::from_slice(&data).map_err(|source| ContainerError::ParseSpec {
                path: spec_path.clone(),
                source,
            })?;
        let process = crate::exec::build_process(opts, spec.process().as_ref())?;
        let session = crate::exec::Session {
            state_dir: &dir,
            process: &process,
            ignore_paused: opts.ignore_paused,
            pid_file: opts.pid_file.as_deref(),
            timeout: self.shim_timeout(),
        };
        let result = if opts.detach {
            crate::exec::run_detached(&session, opts.console_socket.as_deref()).map(|_| 0)
        } else {
            crate::exec::run_attached(&session)
        };
        result.map_err(|e| match e {
            crate::exec::ExecError::Control(c) => {
                ContainerError::from_control(c, Refusal::ExecStopped)
            }
            crate::exec::ExecError::StandIn(crate::exec::StandInError::ShimGone) => {
                Refusal::ExecStopped.into()
            }
            e => e.into(),
        })
    }

    /// The host pids standing for the container (the shim and exec
    /// stand-ins) and its processes in the guest.
    pub fn ps(&self, id: &str) -> Result<(Vec<i32>, Vec<GuestProcess>), ContainerError> {
        self.live(id)?;
        let Processes {
            host_pids,
            processes,
        } = self.ask(id, Ps, self.shim_timeout(), Refusal::NotRunning)?;
        Ok((host_pids, processes))
    }

    pub fn pause(&self, id: &str) -> Result<(), ContainerError> {
        self.live(id)?.refreshed_status().check_pause()?;
        self.ask(id, Pause, self.shim_timeout(), Refusal::NotRunning)
    }

    pub fn resume(&self, id: &str) -> Result<(), ContainerError> {
        self.load(id)?.refreshed_status().check_resume()?;
        self.ask(id, Resume, self.shim_timeout(), Refusal::NotRunning)
    }

    pub fn stats(&self, id: &str) -> Result<CgroupStats, ContainerError> {
        self.live(id)?;
        self.ask(id, Stats, self.shim_timeout(), Refusal::NotRunning)
    }

    /// New limits for the container's cgroup.
    pub fn update(&self, id: &str, resources: LinuxResources) -> Result<(), ContainerError> {
        self.live(id)?;
        let req = Update { resources };
        self.ask(id, req, self.shim_timeout(), Refusal::NotRunning)
    }
}
