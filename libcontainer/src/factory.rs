//! VM templates (Kata's "factory"): boot one VM with the agent ready and no
//! container, save its device state next to its memory file, and create
//! containers by restoring copies of it instead of booting.

use std::fs::{self, File};
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use slog::{info, Logger};

use crate::agent::{AgentClient, AgentClientError};
use crate::config::{Config, ConfigError};
use crate::hypervisor::qemu::{command_line, Qemu};
use crate::hypervisor::{GuestMemory, Hypervisor, HypervisorError, VmConfig};

const META_FILE: &str = "template.json";
const MEM_FILE: &str = "mem";
const STATE_FILE: &str = "state";
/// How often the console log is read while waiting for the agent to report
/// that it noticed the hang-up.
const CONSOLE_POLL: Duration = Duration::from_millis(10);

#[derive(Debug, thiserror::Error)]
pub enum FactoryError {
    #[error("runtime configuration")]
    Config(#[from] ConfigError),
    #[error("{path}")]
    Io { path: PathBuf, source: io::Error },
    #[error("lock {path}")]
    Lock { path: PathBuf, source: nix::Error },
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
    pub qemu: FileStamp,
    pub kernel: FileStamp,
    pub initrd: FileStamp,
    pub memory_mib: u32,
    pub vcpus: u32,
    pub accel: String,
    /// QEMU's command line for the template's devices, with the directory
    /// written as `@DIR`: a clone's must be the same.
    pub command_line: Vec<String>,
}

/// A usable template.
pub struct Template {
    dir: PathBuf,
    pub meta: TemplateMeta,
}

impl Template {
    pub fn state(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    /// Copy the template's memory for a clone, next to it (same tmpfs),
    /// keeping its holes: only the pages the template touched are copied.
    pub fn copy_memory(&self, name: &str) -> Result<PathBuf, FactoryError> {
        let src = self.dir.join(MEM_FILE);
        let dst = self
            .dir
            .with_file_name(format!("clone-{name}-{}.mem", std::process::id()));
        copy_sparse(&src, &dst).map_err(io_err(&dst))?;
        Ok(dst)
    }
}

/// The devices of a template and of its clones: no share at boot (each clone
/// hotplugs its own), memory in a file.
pub fn template_vm_config(
    config: &Config,
    name: String,
    dir: &Path,
    mem: &Path,
) -> Result<VmConfig, ConfigError> {
    config.vm_config(name, dir, GuestMemory::File(mem.to_path_buf()), Vec::new())
}

/// The command line that identifies a template's layout, paths normalized.
fn layout(config: &Config) -> Result<Vec<String>, ConfigError> {
    let dir = Path::new("@DIR");
    let vm = template_vm_config(config, "runvm-template".into(), dir, &dir.join(MEM_FILE))?;
    Ok(command_line(&vm))
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
}

impl Factory {
    pub fn new(config: &Config) -> Self {
        Factory {
            dir: config.factory.template_path.clone(),
        }
    }

    fn lock(&self) -> Result<Flock<File>, FactoryError> {
        let parent = self.dir.parent().unwrap_or(Path::new("/"));
        fs::create_dir_all(parent).map_err(io_err(parent))?;
        let path = self.dir.with_extension("lock");
        let f = File::create(&path).map_err(io_err(&path))?;
        Flock::lock(f, FlockArg::LockExclusive)
            .map_err(|(_, source)| FactoryError::Lock { path, source })
    }

    fn read_meta(&self) -> Result<Option<TemplateMeta>, FactoryError> {
        let path = self.dir.join(META_FILE);
        match fs::read(&path) {
            Ok(data) => serde_json::from_slice(&data)
                .map(Some)
                .map_err(|source| FactoryError::Meta { path, source }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Boot a template VM, wait for its agent, save it. Replaces an existing
    /// template.
    pub fn init(&self, config: &Config, log: &Logger) -> Result<TemplateMeta, FactoryError> {
        let _lock = self.lock()?;
        let t0 = Instant::now();
        let tmp = self
            .dir
            .with_extension(format!("new-{}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
        let result = self.build(config, &tmp, log);
        if result.is_err() {
            let _ = fs::remove_dir_all(&tmp);
            return result;
        }
        if self.dir.exists() {
            fs::remove_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        }
        fs::rename(&tmp, &self.dir).map_err(io_err(&self.dir))?;
        info!(log, "template ready"; "path" => %self.dir.display(), "ms" => t0.elapsed().as_millis() as u64);
        result
    }

    fn build(
        &self,
        config: &Config,
        tmp: &Path,
        log: &Logger,
    ) -> Result<TemplateMeta, FactoryError> {
        let mem = tmp.join(MEM_FILE);
        let vm_config = template_vm_config(config, "runvm-template".into(), tmp, &mem)?;
        let accel = vm_config.accel;
        let console = vm_config.console_log();
        let mut vm = Qemu::new(config.qemu()?, vm_config);
        vm.launch()?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(io_err(tmp))?;
        let mut exit = vm.exit_watch();
        let socket = vm.agent_socket();
        let boot_timeout = config.timeouts.boot();
        let info = rt.block_on(async {
            let died = |why: Option<String>| FactoryError::Died(why.unwrap_or_default());
            let agent = AgentClient::connect(&socket, config.timeouts.request()).await?;
            // The whole reply, up to the stream's close: after it the agent
            // has nothing more to send to this host.
            let info = tokio::select! {
                r = agent.wait_ready_drained(boot_timeout) => r?,
                r = exit.wait_for(Option::is_some) => return Err(died(r.ok().and_then(|s| s.clone()))),
            };
            // Hang up, and wait until the agent has seen it: the snapshot
            // must catch the agent outside this session, waiting for a new
            // host, or every clone would talk to this session's leftovers.
            let before = session_ends(&console);
            drop(agent);
            tokio::select! {
                r = wait_session_end(&console, before, boot_timeout) => r?,
                r = exit.wait_for(Option::is_some) => return Err(died(r.ok().and_then(|s| s.clone()))),
            }
            Ok::<_, FactoryError>(info)
        })?;
        vm.snapshot(&tmp.join(STATE_FILE))?;
        vm.stop(config.timeouts.stop())?;
        let meta = TemplateMeta {
            created: Utc::now(),
            runvm_version: env!("CARGO_PKG_VERSION").to_string(),
            agent_protocol: info.protocol,
            kernel_release: info.kernel_release,
            qemu: FileStamp::of(&config.qemu()?)?,
            kernel: FileStamp::of(&config.kernel()?)?,
            initrd: FileStamp::of(&config.initrd()?)?,
            memory_mib: config.hypervisor.memory_mib,
            vcpus: config.hypervisor.vcpus,
            accel: accel.as_str().to_string(),
            command_line: layout(config)?,
        };
        let path = tmp.join(META_FILE);
        let data = serde_json::to_vec_pretty(&meta).expect("metadata serializes");
        fs::write(&path, data).map_err(io_err(&path))?;
        slog::debug!(log, "template saved"; "kernel" => &meta.kernel_release);
        Ok(meta)
    }

    /// The template, if it exists and matches the configuration now: same
    /// QEMU, kernel, initramfs (and so agent), VM size and devices.
    pub fn usable(&self, config: &Config) -> Result<Template, String> {
        let meta = match self.read_meta() {
            Ok(Some(meta)) => meta,
            Ok(None) => return Err(format!("no template at {}", self.dir.display())),
            Err(e) => return Err(crate::error_chain(&e)),
        };
        let stamp = |what: &str, path: Result<PathBuf, ConfigError>, then: &FileStamp| {
            let path = path.map_err(|e| crate::error_chain(&e))?;
            let now = FileStamp::of(&path).map_err(|e| crate::error_chain(&e))?;
            if &now != then {
                return Err(format!("the {what} changed since the template was made"));
            }
            Ok(())
        };
        stamp("QEMU binary", config.qemu(), &meta.qemu)?;
        stamp("guest kernel", config.kernel(), &meta.kernel)?;
        stamp("guest initramfs", config.initrd(), &meta.initrd)?;
        if meta.agent_protocol != runvm_protocol::PROTOCOL_VERSION {
            return Err(format!(
                "the template's agent speaks protocol {}, runvm {}",
                meta.agent_protocol,
                runvm_protocol::PROTOCOL_VERSION
            ));
        }
        if meta.runvm_version != env!("CARGO_PKG_VERSION") {
            return Err(format!(
                "the template was made by runvm {}",
                meta.runvm_version
            ));
        }
        let layout = layout(config).map_err(|e| crate::error_chain(&e))?;
        if meta.command_line != layout {
            return Err("the VM's size or devices changed since the template was made".into());
        }
        for file in [MEM_FILE, STATE_FILE] {
            if !self.dir.join(file).is_file() {
                return Err(format!("the template has no {file} file"));
            }
        }
        Ok(Template {
            dir: self.dir.clone(),
            meta,
        })
    }

    pub fn status(&self, config: &Config) -> Status {
        let meta = self.read_meta().ok().flatten();
        let usable = self.usable(config);
        let memory_file_bytes = fs::metadata(self.dir.join(MEM_FILE))
            .ok()
            .map(|m| m.blocks() * 512);
        Status {
            path: self.dir.clone(),
            exists: meta.is_some(),
            usable: usable.is_ok(),
            reason: usable.err(),
            template: meta,
            memory_file_bytes,
        }
    }

    /// Remove the template; true if there was one.
    pub fn destroy(&self) -> Result<bool, FactoryError> {
        let _lock = self.lock()?;
        let existed = self.dir.exists();
        if existed {
            fs::remove_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        }
        let _ = fs::remove_file(self.dir.with_extension("lock"));
        Ok(existed)
    }
}

/// How many times the agent has reported the end of a session so far.
fn session_ends(console: &Path) -> usize {
    let text = fs::read(console).unwrap_or_default();
    // Not whole lines: the firmware's last words have no newline.
    String::from_utf8_lossy(&text)
        .matches(runvm_protocol::SESSION_ENDED)
        .count()
}

/// Wait until the console log shows more session ends than `before`.
async fn wait_session_end(
    console: &Path,
    before: usize,
    timeout: Duration,
) -> Result<(), FactoryError> {
    let deadline = Instant::now() + timeout;
    while session_ends(console) <= before {
        if Instant::now() >= deadline {
            return Err(FactoryError::NoHangup {
                timeout,
                marker: runvm_protocol::SESSION_ENDED,
                console: console.to_path_buf(),
            });
        }
        tokio::time::sleep(CONSOLE_POLL).await;
    }
    Ok(())
}

/// Copy `src` to `dst` without filling its holes.
fn copy_sparse(src: &Path, dst: &Path) -> io::Result<()> {
    use nix::unistd::{lseek, Whence};
    let from = File::open(src)?;
    let to = File::create(dst)?;
    let len = from.metadata()?.len();
    to.set_len(len)?;
    let mut offset: i64 = 0;
    while (offset as u64) < len {
        let data = match lseek(from.as_raw_fd(), offset, Whence::SeekData) {
            Ok(d) => d,
            Err(nix::errno::Errno::ENXIO) => break,
            Err(e) => return Err(e.into()),
        };
        let hole = lseek(from.as_raw_fd(), data, Whence::SeekHole)?;
        let (mut off_in, mut off_out) = (data, data);
        let mut left = (hole - data) as usize;
        while left > 0 {
            let n = nix::fcntl::copy_file_range(
                from.as_fd(),
                Some(&mut off_in),
                to.as_fd(),
                Some(&mut off_out),
                left,
            )?;
            if n == 0 {
                break;
            }
            left -= n;
        }
        offset = hole;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};

    #[test]
    fn sparse_copy_keeps_data_and_holes() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        let mut f = File::create(&src).unwrap();
        f.set_len(64 << 20).unwrap();
        f.seek(SeekFrom::Start(1 << 20)).unwrap();
        f.write_all(b"first").unwrap();
        f.seek(SeekFrom::Start(40 << 20)).unwrap();
        f.write_all(b"second").unwrap();
        drop(f);
        let dst = tmp.path().join("dst");
        copy_sparse(&src, &dst).unwrap();
        assert_eq!(fs::read(&src).unwrap(), fs::read(&dst).unwrap());
        let allocated = fs::metadata(&dst).unwrap().blocks() * 512;
        assert!(allocated < 8 << 20, "holes were filled: {allocated} bytes");
    }

    #[test]
    fn session_ends_are_counted_after_firmware_output() {
        let tmp = tempfile::tempdir().unwrap();
        let console = tmp.path().join("console.log");
        assert_eq!(session_ends(&console), 0);
        let marker = runvm_protocol::SESSION_ENDED;
        fs::write(&console, format!("Booting from ROM..{marker}\n")).unwrap();
        assert_eq!(session_ends(&console), 1);
        fs::write(
            &console,
            format!("Booting from ROM..{marker}\nx\n{marker}\n"),
        )
        .unwrap();
        assert_eq!(session_ends(&console), 2);
    }

    #[test]
    fn a_missing_template_is_not_usable() {
        let tmp = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.factory.template_path = tmp.path().join("template");
        let err = Factory::new(&config).usable(&config).err().unwrap();
        assert!(err.starts_with("no template at"), "{err}");
    }
}
