//! VM templates (Kata's "factory"): boot one VM with the agent ready and no
//! container, save its device state next to its memory file, and create
//! containers by restoring copies of it instead of booting.

mod build;
mod files;
mod pool;

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use slog::{info, warn, Logger};

use crate::agent::AgentClientError;
use crate::config::{Config, ConfigError};
use crate::hypervisor::{self, Hypervisor, HypervisorError};
use crate::locate::{self, LocateError};
pub use build::{console_end, wait_session_end};
pub use files::{FilesError, Problem};
pub use pool::{Claimed, Pool};

const META_FILE: &str = "template.json";
const MEM_FILE: &str = "mem";
const STATE_FILE: &str = "state";
/// How often the console log is read while waiting for the agent to report
/// that it noticed the hang-up.
const CONSOLE_POLL: Duration = Duration::from_millis(10);
/// After a background build failed, creates boot cold without starting
/// another for this long (a build that fails for good would otherwise cost
/// every create a second VM); `factory init` by hand tries at once.
pub const BUILD_BACKOFF: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum FactoryError {
    #[error("runtime configuration")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Locate(#[from] LocateError),
    #[error("{path}")]
    Io { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Files(#[from] FilesError),
    #[error("template VM")]
    Hypervisor(#[from] HypervisorError),
    #[error("template VM's agent")]
    Agent(#[from] AgentClientError),
    #[error("the template VM did not come up: it {0}")]
    Died(String),
    #[error("the template VM's agent did not report the end of its session within {timeout:?} (no {marker:?} in {console}); is the guest older than runvm? (make guest)")]
    NoHangup {
        timeout: Duration,
        marker: &'static str,
        console: PathBuf,
    },
    #[error("template metadata {path}")]
    Meta {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("no template at {path}")]
    Missing { path: PathBuf },
    #[error("the {what} changed since the template was made")]
    Stale { what: &'static str },
    #[error("the template's agent speaks protocol {template}, runvm {host}")]
    Protocol { template: u32, host: u32 },
    #[error("the template was made by runvm {version}")]
    RunvmVersion { version: String },
    #[error("the template was made with {template}, runvm is configured for {configured}")]
    Backend {
        template: String,
        configured: String,
    },
    #[error("the VM's size or devices changed since the template was made")]
    Layout,
    #[error("the template has no {file} file")]
    NoFile { file: &'static str },
}

impl FactoryError {
    /// Whether building the template again cures this (it is missing, or
    /// was made from something else); not so a directory others may write,
    /// an unreadable file or a backend without templates.
    pub fn cured_by_a_build(&self) -> bool {
        matches!(
            self,
            FactoryError::Missing { .. }
                | FactoryError::Stale { .. }
                | FactoryError::Protocol { .. }
                | FactoryError::RunvmVersion { .. }
                | FactoryError::Backend { .. }
                | FactoryError::Layout
                | FactoryError::NoFile { .. }
                | FactoryError::Meta { .. }
        )
    }
}

/// Why a create that booted cold starts no background build.
#[derive(Debug, thiserror::Error)]
pub enum NoBuild {
    #[error("templates or their building are off")]
    Off,
    #[error("the template is usable")]
    Usable,
    #[error("the backend cannot: {0}")]
    Unsupported(String),
    #[error("a build would not help: {0}")]
    Refused(String),
    #[error("a build is running")]
    Running,
    #[error("a background build failed less than {} minutes ago; see {log}", BUILD_BACKOFF.as_secs() / 60)]
    Failed { log: PathBuf },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> FactoryError + '_ {
    move |source| FactoryError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A file as it was when the template was made.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FileStamp {
    pub path: PathBuf,
    pub size: u64,
    pub mtime_ns: i128,
}

impl FileStamp {
    fn of(path: &Path) -> Result<Self, FactoryError> {
        let m = fs::metadata(path).map_err(io_err(path))?;
        Ok(FileStamp {
            path: path.to_path_buf(),
            size: m.size(),
            mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
        })
    }
}

/// What a template was made from; a clone must be made from the same.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TemplateMeta {
    pub created: DateTime<Utc>,
    pub runvm_version: String,
    pub agent_protocol: u32,
    pub kernel_release: String,
    /// The hypervisor backend ("qemu") and its binary.
    pub backend: String,
    pub vmm: FileStamp,
    /// What the backend says of itself (QEMU: `qemuVersion`).
    #[serde(flatten)]
    pub vmm_info: serde_json::Map<String, serde_json::Value>,
    pub kernel: FileStamp,
    pub initrd: FileStamp,
    pub memory_mib: u32,
    pub vcpus: u32,
    pub accel: String,
    /// The backend's account of the VM's devices and size: a clone's must
    /// be the same.
    pub layout: String,
}

/// A usable template. It holds a shared lock on the template, so `factory
/// init` and `destroy` cannot replace or remove it until it is dropped:
/// keep it until the clone has read the state file.
pub struct Template {
    dir: PathBuf,
    pub meta: TemplateMeta,
    _lock: Flock<fs::File>,
}

impl Template {
    pub fn state(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    /// Copy the template's memory for a clone, next to it (same tmpfs),
    /// keeping its holes: only the pages the template touched are copied.
    /// The copy is a new file of mode 0600 (a file already there, a planted
    /// symlink included, is an error, except the leftover of a dead shim
    /// that had our pid).
    pub fn copy_memory(&self, name: &str) -> Result<PathBuf, FactoryError> {
        let src = self.dir.join(MEM_FILE);
        let dst = self
            .dir
            .with_file_name(format!("clone-{name}-{}.mem", std::process::id()));
        match files::copy_sparse(&src, &dst) {
            Err(FilesError::Io { source, .. }) if source.kind() == io::ErrorKind::AlreadyExists => {
                files::remove(&dst)?;
                files::copy_sparse(&src, &dst)?;
            }
            other => other?,
        }
        Ok(dst)
    }
}

/// The hypervisor of a template, or of its clone (to compare layouts).
fn template_hypervisor(
    config: &Config,
    dir: &Path,
    mem: PathBuf,
) -> Result<Box<dyn Hypervisor>, FactoryError> {
    let spec = hypervisor::template_vm(config, "runvm-template".into(), dir, mem)?;
    Ok(hypervisor::new(config, spec)?)
}

pub struct Factory {
    dir: PathBuf,
}

/// What `factory status` shows.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub path: PathBuf,
    pub exists: bool,
    pub usable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template: Option<TemplateMeta>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_file_bytes: Option<u64>,
    pub pool: pool::PoolStatus,
}

impl Factory {
    pub fn new(config: &Config) -> Self {
        Factory {
            dir: config.factory.template_path.clone(),
        }
    }

    fn lock_path(&self) -> PathBuf {
        self.dir.with_extension("lock")
    }

    /// Held by whoever builds the template: one build at a time.
    fn build_lock_path(&self) -> PathBuf {
        self.dir.with_extension("build-lock")
    }

    /// Where a background build says what it did.
    pub fn build_log_path(&self) -> PathBuf {
        self.dir.with_extension("build.log")
    }

    /// There while a failed background build's backoff lasts.
    fn failed_path(&self) -> PathBuf {
        self.dir.with_extension("failed")
    }

    /// The directory that holds the template, its lock and the clones'
    /// copies: created mode 0700, refused if anyone else could change it.
    fn holder(&self) -> Result<&Path, FactoryError> {
        let holder = self.dir.parent().unwrap_or(Path::new("/"));
        files::ensure_private_dir(holder)?;
        Ok(holder)
    }

    fn lock(&self, how: FlockArg) -> Result<Flock<fs::File>, FactoryError> {
        self.holder()?;
        Ok(files::lock(&self.lock_path(), how)?)
    }

    fn read_meta(&self) -> Result<Option<TemplateMeta>, FactoryError> {
        let path = self.dir.join(META_FILE);
        let file = match files::open_nofollow(&path) {
            Ok(f) => f,
            Err(FilesError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                return Ok(None)
            }
            Err(e) => return Err(e.into()),
        };
        serde_json::from_reader(io::BufReader::new(file))
            .map(Some)
            .map_err(|source| FactoryError::Meta { path, source })
    }

    /// The template, if it exists and matches the configuration now: same
    /// QEMU, kernel, initramfs (and so agent), VM size and devices. It comes
    /// with a shared lock on it.
    pub fn usable(&self, config: &Config) -> Result<Template, FactoryError> {
        let missing = || FactoryError::Missing {
            path: self.dir.clone(),
        };
        if fs::symlink_metadata(&self.dir).is_err() {
            return Err(missing());
        }
        let lock = self.lock(FlockArg::LockShared)?;
        if !files::check_private(&self.dir)? {
            return Err(missing());
        }
        let meta = self.read_meta()?.ok_or_else(missing)?;
        let vm = template_hypervisor(config, &self.dir, self.dir.join(MEM_FILE))?;
        if meta.backend != vm.backend() {
            return Err(FactoryError::Backend {
                template: meta.backend,
                configured: vm.backend().to_string(),
            });
        }
        let stamp = |what: &'static str, path: &Path, then: &FileStamp| {
            if &FileStamp::of(path)? != then {
                return Err(FactoryError::Stale { what });
            }
            Ok(())
        };
        stamp("hypervisor binary", vm.binary(), &meta.vmm)?;
        stamp("guest kernel", &locate::kernel(config.vmm())?, &meta.kernel)?;
        stamp(
            "guest initramfs",
            &locate::initrd(config.vmm())?,
            &meta.initrd,
        )?;
        if meta.agent_protocol != runvm_protocol::PROTOCOL_VERSION {
            return Err(FactoryError::Protocol {
                template: meta.agent_protocol,
                host: runvm_protocol::PROTOCOL_VERSION,
            });
        }
        if meta.runvm_version != env!("CARGO_PKG_VERSION") {
            return Err(FactoryError::RunvmVersion {
                version: meta.runvm_version,
            });
        }
        if meta.layout != vm.layout() {
            return Err(FactoryError::Layout);
        }
        for file in [MEM_FILE, STATE_FILE] {
            let regular = fs::symlink_metadata(self.dir.join(file)).is_ok_and(|m| m.is_file());
            if !regular {
                return Err(FactoryError::NoFile { file });
            }
        }
        Ok(Template {
            dir: self.dir.clone(),
            meta,
            _lock: lock,
        })
    }

    pub fn status(&self, config: &Config) -> Status {
        let usable = self.usable(config).map(|t| t.meta);
        let meta = match &usable {
            Ok(meta) => Some(meta.clone()),
            Err(_) => self.read_meta().ok().flatten(),
        };
        let memory_file_bytes = fs::symlink_metadata(self.dir.join(MEM_FILE))
            .ok()
            .map(|m| m.blocks() * 512);
        Status {
            path: self.dir.clone(),
            exists: meta.is_some(),
            usable: usable.is_ok(),
            reason: usable.err().map(|e| crate::error_chain(&e)),
            template: meta,
            memory_file_bytes,
            pool: Pool::new(config).status(),
        }
    }

    /// Remove the template, its lock, and what dead builds and shims left
    /// beside it; true if there was a template.
    pub fn destroy(&self, log: &Logger) -> Result<bool, FactoryError> {
        self.holder()?;
        // A build running now would put its template in place after us.
        let build = files::lock(&self.build_lock_path(), FlockArg::LockExclusive)?;
        // Before the template's lock: a member restoring its VM holds it.
        let pool = Pool::for_dir(&self.dir);
        if !pool.stop_members(log) {
            warn!(log, "some of the warm pool's VMs are still running");
        }
        pool.remove_if_idle();
        let lock = self.lock(FlockArg::LockExclusive)?;
        let existed = files::check_private(&self.dir)?;
        if existed {
            files::remove(&self.dir)?;
        }
        for left in files::leftovers(&self.dir) {
            match files::remove(&left) {
                Ok(()) => info!(log, "removed a leftover"; "path" => %left.display()),
                Err(e) => warn!(log, "remove a leftover"; "error" => crate::error_chain(&e)),
            }
        }
        let _ = fs::remove_file(self.failed_path());
        let _ = fs::remove_file(self.build_log_path());
        // Removed while locked: a waiter then finds its lock file gone and
        // takes a new one (files::lock).
        let _ = fs::remove_file(self.lock_path());
        let _ = fs::remove_file(self.build_lock_path());
        drop(lock);
        drop(build);
        Ok(existed)
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    fn config_at(template: &Path) -> Config {
        let mut config = Config::default();
        config.factory.template_path = template.to_path_buf();
        config
    }

    #[test]
    fn a_template_dir_others_can_write_is_refused_before_anything_runs() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let holder = tmp.path().join("runvm");
        fs::create_dir_all(holder.join("template")).unwrap();
        fs::set_permissions(&holder, fs::Permissions::from_mode(0o777)).unwrap();
        let config = config_at(&holder.join("template"));
        let factory = Factory::new(&config);
        let reason = crate::error_chain(&factory.usable(&config).err().unwrap());
        assert_eq!(
            reason,
            format!(
                "refusing the template directory {}: it is writable by group or others (mode 0777)",
                holder.display()
            )
        );
        let log = Logger::root(slog::Discard, slog::o!());
        let err = factory.init(&config, &log).unwrap_err();
        assert!(
            matches!(err, FactoryError::Files(FilesError::Insecure { .. })),
            "{err:?}"
        );
        assert!(factory.destroy(&log).is_err());
        // Nothing was made in it: no lock, no build directory.
        let names: Vec<_> = fs::read_dir(&holder)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, ["template"]);
    }

    #[test]
    fn a_template_that_is_a_symlink_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let holder = tmp.path().join("runvm");
        files::ensure_private_dir(&holder).unwrap();
        let elsewhere = tmp.path().join("planted");
        fs::create_dir(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, holder.join("template")).unwrap();
        let config = config_at(&holder.join("template"));
        let reason = crate::error_chain(&Factory::new(&config).usable(&config).err().unwrap());
        assert!(reason.ends_with("template: it is a symlink"), "{reason}");
    }

    #[test]
    fn the_holder_is_created_private() {
        let tmp = tempfile::tempdir().unwrap();
        let holder = tmp.path().join("runvm");
        let config = config_at(&holder.join("template"));
        let log = Logger::root(slog::Discard, slog::o!());
        assert!(!Factory::new(&config).destroy(&log).unwrap());
        assert_eq!(fs::metadata(&holder).unwrap().mode() & 0o7777, 0o700);
    }

    #[test]
    fn a_missing_template_is_not_usable() {
        let tmp = tempfile::tempdir().unwrap();
        let config = config_at(&tmp.path().join("template"));
        let err = Factory::new(&config).usable(&config).err().unwrap();
        assert!(err.to_string().starts_with("no template at"), "{err}");
    }
}
