//! The lifecycle verbs as the command line uses them. Each runs for a moment
//! in the `runvm` process; anything that lasts belongs to the shim.
//!
//! `spawn` creates a container (it starts the shim), `verbs` are the verbs
//! that ask a shim, `delete` removes a container, `run` is `run` in the
//! foreground and detached.

mod checkpoint;
mod creating;
mod delete;
mod run;
mod spawn;
mod verbs;

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::SecondsFormat;
use serde::Serialize;
use slog::{debug, Logger};

use crate::config::{Config, ConfigError};
use crate::control::{Call, ControlError, CreateFailure, ShimFailure};
use crate::hooks::{self, HookState, Kind, Place};
use crate::id::{validate_id, IdError};
use crate::state::{State, StateError, StateStore};
use crate::status::{ContainerStatus, Refusal};

pub use spawn::SHIM_VERB;

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error(transparent)]
    Id(#[from] IdError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Spec(#[from] crate::spec::SpecError),
    #[error("runtime configuration")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Override(#[from] crate::overrides::OverrideError),
    /// runc's words, then what failed.
    #[error("unable to apply cgroup configuration")]
    HostCgroup(#[from] crate::host_cgroup::HostCgroupError),
    /// runc's words for what the container's status does not allow.
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("cannot delete container {id} that is not stopped: {status}")]
    DeleteNotStopped { id: String, status: ContainerStatus },
    #[error("cannot allocate tty if runvm will detach without setting console socket")]
    TerminalWithoutConsole,
    #[error("cannot use console socket if runvm will not detach or allocate tty")]
    ConsoleWithoutTerminal,
    #[error(transparent)]
    Terminal(#[from] crate::terminal::TerminalError),
    #[error(transparent)]
    Exec(#[from] crate::exec::ExecError),
    #[error("read {path}")]
    ReadSpec {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parse {path}")]
    ParseSpec {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("pid file directory {path} does not exist")]
    PidFileDir { path: PathBuf },
    #[error("write pid file")]
    PidFile(#[source] StateError),
    #[error("start the shim")]
    Spawn(#[source] nix::Error),
    /// The shim's account of why creation failed.
    #[error(transparent)]
    CreateFailed(#[from] CreateFailure),
    #[error("container {id} was not created: its create failed")]
    CreateFailedMeanwhile { id: String },
    #[error("container {id} is still being created after {timeout:?}")]
    StillCreating { id: String, timeout: Duration },
    #[error("container {id} was killed while it was being created")]
    KilledWhileCreating { id: String },
    #[error("container {id} was deleted while it was being created")]
    DeletedWhileCreating { id: String },
    #[error("the shim exited before the container was created (see {log})")]
    ShimVanished { log: PathBuf },
    #[error("read the shim's report")]
    ShimReport(#[source] runvm_protocol::FrameError),
    #[error("the shim did not answer within {0:?}")]
    ShimTimeout(Duration),
    #[error(transparent)]
    Control(ControlError),
    #[error("wait for the container")]
    Wait(#[source] nix::Error),
    #[error("the shim {pid} did not exit within {timeout:?}")]
    ShimStuck { pid: i32, timeout: Duration },
    #[error(transparent)]
    Checkpoint(#[from] crate::checkpoint::CheckpointError),
    /// What a checkpoint or restore needs of the host and could not get.
    #[error("{0}")]
    Checkpointing(String),
}

impl ContainerError {
    /// What a failed call to a shim means to a verb: a shim that is gone
    /// is `gone` (the container stopped meanwhile); its refusals are ours.
    fn from_control(e: ControlError, gone: Refusal) -> Self {
        match e {
            e if e.shim_gone() => ContainerError::Refused(gone),
            ControlError::Failed(ShimFailure::Refused(r)) => ContainerError::Refused(r),
            e => ContainerError::Control(e),
        }
    }
}

/// The OCI state of a container, as `state` and `list --format json` print it
/// (runc's field names and order).
#[derive(Serialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub struct OciState {
    pub oci_version: String,
    pub id: String,
    pub pid: i32,
    pub status: ContainerStatus,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub created: String,
    pub owner: String,
    #[serde(skip_serializing_if = "HashMap::is_empty")]
    pub annotations: HashMap<String, String>,
}

/// Options of `create` and `run`.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    pub id: String,
    pub bundle: PathBuf,
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
    /// Global flags the shim should be started with (--log, --debug...).
    pub shim_args: Vec<OsString>,
    /// `--systemd-cgroup`: `linux.cgroupsPath` is `slice:prefix:name`.
    pub systemd_cgroup: bool,
    /// `restore`: bring the container back from this checkpoint image
    /// instead of creating it.
    pub restore: Option<RestoreFrom>,
}

/// The checkpoint a restored container comes from.
#[derive(Debug, Clone)]
pub struct RestoreFrom {
    pub image: PathBuf,
    /// The id the guest knows the container by (the checkpointed one's).
    pub guest_id: String,
}

pub struct Runtime {
    store: StateStore,
    config: Config,
    log: Logger,
}

fn owner_name(uid: u32) -> String {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| uid.to_string())
}

impl Runtime {
    /// The runtime with the configuration from its files; a warning for
    /// each old key read as its new name (the verb's log: the shim and the
    /// rest it starts read the same files quietly).
    pub fn new(root: &Path, log: Logger) -> Result<Self, ContainerError> {
        let loaded = Config::load_with_sources()?;
        for w in &loaded.warnings {
            slog::warn!(log, "{}", w);
        }
        Ok(Self::with_config(root, loaded.config, log))
    }

    pub fn with_config(root: &Path, config: Config, log: Logger) -> Self {
        Runtime {
            store: StateStore::new(root),
            config,
            log,
        }
    }

    pub fn store(&self) -> &StateStore {
        &self.store
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    fn load(&self, id: &str) -> Result<State, ContainerError> {
        validate_id(id)?;
        Ok(self.store.load(id)?)
    }

    pub fn state(&self, id: &str) -> Result<OciState, ContainerError> {
        let state = self.load(id)?;
        if let Some(socket) = &state.debug_monitor {
            debug!(self.log, "the VM has a debug monitor"; "socket" => %socket.display());
        }
        Ok(oci_state(&state))
    }

    pub fn list(&self) -> Result<Vec<OciState>, ContainerError> {
        let mut out = Vec::new();
        for id in self.store.list()? {
            match self.store.load(&id) {
                Ok(state) => out.push(oci_state(&state)),
                Err(e) => {
                    debug!(self.log, "skip container"; "id" => &id, "error" => crate::error_chain(&e))
                }
            }
        }
        Ok(out)
    }

    /// How long a verb waits for the shim: longer than the shim waits for the
    /// agent, so the agent's timeout is the error the user sees.
    fn shim_timeout(&self) -> Duration {
        self.config.runtime.request() + Duration::from_secs(5)
    }

    /// Ask a container's shim; a shim that is gone means the container is
    /// no longer running (`gone`).
    fn ask<C: Call>(
        &self,
        id: &str,
        req: C,
        timeout: Duration,
        gone: Refusal,
    ) -> Result<C::Reply, ContainerError> {
        crate::control::call(&self.store.dir(id), req, timeout)
            .map_err(|e| ContainerError::from_control(e, gone))
    }

    /// Run the post-* hooks of a container's spec, as its state says, with
    /// a warning for each that fails.
    pub(super) fn run_hooks(
        &self,
        state: &State,
        kind: Kind,
        status: ContainerStatus,
        pid: Option<i32>,
    ) {
        let Some(hooks) =
            hooks::of_spec_file(&self.store.dir(&state.id).join(crate::state::SPEC_FILE))
        else {
            return;
        };
        let place = Place {
            bundle: &state.bundle,
            namespaces: None,
        };
        let hook_state = HookState::of(state, status, pid);
        hooks::run_warning(kind, &hooks, &hook_state, &place, &self.log);
    }

    pub fn features(&self) -> serde_json::Value {
        crate::features::features(&self.config)
    }
}

/// A pid file can only be written where its directory exists: check before
/// anything is started.
fn check_pid_file_dir(pid_file: &Path) -> Result<(), ContainerError> {
    match pid_file.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) if !parent.is_dir() => Err(ContainerError::PidFileDir {
            path: parent.to_path_buf(),
        }),
        _ => Ok(()),
    }
}

fn oci_state(state: &State) -> OciState {
    let status = state.refreshed_status();
    let pid = match (status, state.shim) {
        (ContainerStatus::Stopped, _) | (_, None) => 0,
        (_, Some(shim)) => shim.pid,
    };
    OciState {
        oci_version: state.oci_version.clone(),
        id: state.id.clone(),
        pid,
        status,
        bundle: state.bundle.clone(),
        rootfs: state.rootfs.clone(),
        created: state.created.to_rfc3339_opts(SecondsFormat::Nanos, true),
        owner: owner_name(state.owner_uid),
        annotations: state.annotations.clone(),
    }
}
