//! The state store: `<root>/<id>/state.json`, written atomically, guarded by an
//! flock on the container's directory.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::procinfo::ProcessIdentity;
use crate::status::ContainerStatus;

pub const STATE_FILE: &str = "state.json";
/// The copy of the bundle's config.json taken at create time.
pub const SPEC_FILE: &str = "config.json";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("container does not exist")]
    NotExist { id: String },
    #[error("container with given ID already exists")]
    Exists { id: String },
    #[error("create state root {path}")]
    CreateRoot { path: PathBuf, source: io::Error },
    #[error("create state directory {path}")]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("lock {path}")]
    Lock {
        path: PathBuf,
        source: crate::lock::LockError,
    },
    #[error("read {path}")]
    Read { path: PathBuf, source: io::Error },
    #[error("state file {path} is corrupt")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("write {path}")]
    Write { path: PathBuf, source: io::Error },
    #[error("remove {path}")]
    Remove { path: PathBuf, source: io::Error },
    #[error("list {path}")]
    List { path: PathBuf, source: io::Error },
}

/// What runvm records about one container.
#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(rename_all = "camelCase")]
pub struct State {
    pub oci_version: String,
    pub id: String,
    pub status: ContainerStatus,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub created: DateTime<Utc>,
    /// uid of the user who created the container.
    pub owner_uid: u32,
    #[serde(default)]
    pub annotations: HashMap<String, String>,
    /// The `runvm create` (or `run`) that made the container.
    #[serde(default)]
    pub creator: Option<ProcessIdentity>,
    /// The per-container shim: the pid in `--pid-file`.
    pub shim: Option<ProcessIdentity>,
    /// The hypervisor process (QEMU).
    pub vmm: Option<ProcessIdentity>,
    pub virtiofsd: Option<ProcessIdentity>,
    /// The container's init pid inside the guest.
    pub guest_pid: Option<i32>,
    /// How the VM is accelerated: "kvm" or "tcg".
    pub accel: Option<String>,
    /// How the VM came up: "cold" (booted) or "template" (cloned).
    #[serde(default)]
    pub boot: Option<String>,
    /// Exit code of the container process (128+N for signal N).
    pub exit_code: Option<i32>,
    /// The container process has a terminal.
    #[serde(default)]
    pub terminal: bool,
    /// The network the VM got (for debugging: the taps and what they
    /// stand for).
    #[serde(default)]
    pub network: Option<crate::network::Record>,
    /// The `org.runvm.config.*` annotations applied to this container's VM
    /// (`overrides`); `annotations` stays the caller's.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub overrides: std::collections::BTreeMap<String, String>,
    /// The VM's debug monitor socket, when the operator turned it on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debug_monitor: Option<PathBuf>,
    /// The container's cgroup on the host, which holds its VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_cgroup: Option<crate::host_cgroup::Record>,
    /// The checkpoint image the shim restores the container from, instead
    /// of creating it (`runvm restore`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_from: Option<PathBuf>,
    /// The id the guest knows the container by, when it is not `id`: a
    /// container restored under another id than it was checkpointed with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_id: Option<String>,
}

impl State {
    /// The state of a container being created now, by this process.
    pub fn creating(id: &str, bundle: PathBuf, rootfs: PathBuf) -> Self {
        State {
            oci_version: crate::OCI_VERSION.to_string(),
            id: id.to_string(),
            status: ContainerStatus::Creating,
            bundle,
            rootfs,
            created: Utc::now(),
            owner_uid: nix::unistd::geteuid().as_raw(),
            annotations: HashMap::new(),
            creator: ProcessIdentity::of(std::process::id() as i32),
            shim: None,
            vmm: None,
            virtiofsd: None,
            guest_pid: None,
            accel: None,
            boot: None,
            exit_code: None,
            terminal: false,
            network: None,
            overrides: Default::default(),
            debug_monitor: None,
            host_cgroup: None,
            restore_from: None,
            guest_id: None,
        }
    }

    /// The status as it stands now: a container whose shim is gone is stopped,
    /// whatever the file last said.
    pub fn refreshed_status(&self) -> ContainerStatus {
        if !self.status.has_shim() {
            return self.status;
        }
        match (self.shim, self.creator) {
            (Some(shim), _) if shim.is_alive() => self.status,
            (Some(_), _) => ContainerStatus::Stopped,
            // Being created by a `create` that has not started the shim yet...
            (None, Some(creator)) if creator.is_alive() => self.status,
            // ...or that died before it could.
            (None, _) => ContainerStatus::Stopped,
        }
    }

    /// Every host process recorded for this container (not its creator).
    pub fn processes(&self) -> impl Iterator<Item = ProcessIdentity> {
        [self.shim, self.vmm, self.virtiofsd].into_iter().flatten()
    }
}

/// An exclusive flock on a container's directory, released on drop.
pub struct ContainerLock {
    _lock: Flock<File>,
}

#[derive(Clone, Debug)]
pub struct StateStore {
    root: PathBuf,
}

impl StateStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        StateStore { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of a container. `id` must have been validated.
    pub fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// Create the state root (mode 0700) if it is missing.
    pub fn ensure_root(&self) -> Result<(), StateError> {
        let err = |source| StateError::CreateRoot {
            path: self.root.clone(),
            source,
        };
        match fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)
        {
            Ok(()) => Ok(()),
            Err(e) => Err(err(e)),
        }
    }

    /// Create a new container's directory; fails if the id is taken.
    pub fn create_dir(&self, id: &str) -> Result<PathBuf, StateError> {
        self.ensure_root()?;
        let dir = self.dir(id);
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {
                // The umask may have narrowed the mode; it must not widen it.
                let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(0o700));
                Ok(dir)
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                Err(StateError::Exists { id: id.to_string() })
            }
            Err(source) => Err(StateError::CreateDir { path: dir, source }),
        }
    }

    pub fn exists(&self, id: &str) -> bool {
        self.dir(id).join(STATE_FILE).exists()
    }

    /// Lock a container's directory. Fails with `NotExist` if the container is
    /// gone, including when it was deleted while we waited for the lock.
    pub fn lock(&self, id: &str) -> Result<ContainerLock, StateError> {
        let dir = self.dir(id);
        let file = match File::open(&dir) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StateError::NotExist { id: id.to_string() })
            }
            Err(source) => return Err(StateError::Read { path: dir, source }),
        };
        // A concurrent delete may have removed (and a create re-made) the
        // directory while we waited: only the directory at the path counts.
        match crate::lock::lock_at(&dir, file, FlockArg::LockExclusive) {
            Ok(Some(lock)) => Ok(ContainerLock { _lock: lock }),
            Ok(None) => Err(StateError::NotExist { id: id.to_string() }),
            Err(source) => Err(StateError::Lock { path: dir, source }),
        }
    }

    pub fn load(&self, id: &str) -> Result<State, StateError> {
        let path = self.dir(id).join(STATE_FILE);
        let data = match fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StateError::NotExist { id: id.to_string() })
            }
            Err(source) => return Err(StateError::Read { path, source }),
        };
        serde_json::from_slice(&data).map_err(|source| StateError::Corrupt { path, source })
    }

    /// Write `state` atomically: temp file in the same directory, fsync,
    /// rename over state.json (runc's saveState).
    pub fn save(&self, state: &State) -> Result<(), StateError> {
        let data = serde_json::to_vec(state).expect("state serializes");
        write_atomic(&self.dir(&state.id).join(STATE_FILE), &data)
    }

    /// Remove a container's directory and everything in it.
    pub fn remove(&self, id: &str) -> Result<(), StateError> {
        let dir = self.dir(id);
        // A disk image of the share lives elsewhere (on disk) and is
        // linked from here.
        crate::share::image::unlink(&dir);
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StateError::Remove { path: dir, source }),
        }
    }

    /// Ids of the containers under the root (directories only; sorted).
    pub fn list(&self) -> Result<Vec<String>, StateError> {
        let entries = match fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(StateError::List {
                    path: self.root.clone(),
                    source,
                })
            }
        };
        let mut ids: Vec<String> = entries
            .flatten()
            .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|id| crate::id::validate_id(id).is_ok())
            .collect();
        ids.sort();
        Ok(ids)
    }
}

/// Write a file atomically with `O_EXCL` on the temp file (runc's
/// createPidFile and saveState).
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<(), StateError> {
    let err = |source| StateError::Write {
        path: path.to_path_buf(),
        source,
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    let result = f
        .write_all(data)
        .and_then(|()| f.sync_all())
        .and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(err(e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(id: &str) -> State {
        State {
            status: ContainerStatus::Created,
            creator: None,
            ..State::creating(id, "/b".into(), "/b/rootfs".into())
        }
    }

    #[test]
    fn save_then_load_round_trips() {
        let tmp = tempfile::tempdir().unwrap();
        let store = StateStore::new(tmp.path().join("root"));
        store.create_dir("c1").unwrap();
        store.save(&sample("c1")).unwrap();
        let back = store.load("c1").unwrap();
        assert_eq!(back.id, "c1");
        assert_eq!(back.status, ContainerStatus::Created);
        let mode = fs::metadata(store.dir("c1")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        assert_eq!(store.list().unwrap(), vec!["c1".to_string()]);
    }

    #[test]
    fn duplicate_and_missing_ids_use_runc_words() {
        let tmp = tempfile::tempdir().unwrap();
        let store = StateStore::new(tmp.path());
        store.create_dir("c1").unwrap();
        let dup = store.create_dir("c1").unwrap_err();
        assert_eq!(dup.to_string(), "container with given ID already exists");
        let missing = store.load("nope").unwrap_err();
        assert_eq!(missing.to_string(), "container does not exist");
        assert!(matches!(
            store.lock("nope"),
            Err(StateError::NotExist { .. })
        ));
    }

    #[test]
    fn garbage_state_is_reported_as_corrupt() {
        let tmp = tempfile::tempdir().unwrap();
        let store = StateStore::new(tmp.path());
        let dir = store.create_dir("c1").unwrap();
        fs::write(dir.join(STATE_FILE), b"{\"id\": \"c1\", trunc").unwrap();
        assert!(matches!(store.load("c1"), Err(StateError::Corrupt { .. })));
    }

    #[test]
    fn lock_notices_a_directory_deleted_while_waiting() {
        let tmp = tempfile::tempdir().unwrap();
        let store = StateStore::new(tmp.path());
        store.create_dir("c1").unwrap();
        let held = store.lock("c1").unwrap();
        let store2 = store.clone();
        let waiter = std::thread::spawn(move || store2.lock("c1").map(|_| ()));
        std::thread::sleep(std::time::Duration::from_millis(50));
        store.remove("c1").unwrap();
        drop(held);
        assert!(matches!(
            waiter.join().unwrap(),
            Err(StateError::NotExist { .. })
        ));
    }

    #[test]
    fn stopped_status_needs_no_shim_and_a_dead_shim_means_stopped() {
        let mut st = sample("c1");
        st.status = ContainerStatus::Running;
        st.shim = Some(ProcessIdentity {
            pid: i32::MAX,
            start_time: 1,
        });
        assert_eq!(st.refreshed_status(), ContainerStatus::Stopped);
        st.shim = ProcessIdentity::of(std::process::id() as i32);
        assert_eq!(st.refreshed_status(), ContainerStatus::Running);
    }

    #[test]
    fn a_creation_whose_creator_died_before_the_shim_is_stopped() {
        let mut st = sample("c1");
        st.status = ContainerStatus::Creating;
        st.creator = ProcessIdentity::of(std::process::id() as i32);
        assert_eq!(st.refreshed_status(), ContainerStatus::Creating);
        st.creator = Some(ProcessIdentity {
            pid: i32::MAX,
            start_time: 1,
        });
        assert_eq!(st.refreshed_status(), ContainerStatus::Stopped);
    }
}
