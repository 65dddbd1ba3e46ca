//! Checkpoint images: a whole VM saved by `runvm checkpoint` (QEMU's
//! migration stream, memory included) and what `runvm restore` needs to
//! bring it back and to refuse an image it cannot (docs/checkpoint.md).
//!
//! An image is a directory of two files, both 0600: [`VM_STATE`], the
//! stream, and [`IMAGE_META`], this module's [`ImageMeta`] as JSON.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::hypervisor::VmSpec;

pub const VM_STATE: &str = "vm.state";
pub const IMAGE_META: &str = "runvm-checkpoint.json";
/// The layout of [`ImageMeta`]; an image of another is refused.
pub const IMAGE_FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} is not a runvm checkpoint image ({why})")]
    NotAnImage { path: PathBuf, why: String },
    #[error("the checkpoint image {dir} is not empty: checkpoint into a new directory")]
    NotEmpty { dir: PathBuf },
    #[error("the checkpoint image was made by {what} {then}; this host has {now}")]
    Differs {
        what: &'static str,
        then: String,
        now: String,
    },
    #[error("the checkpoint image's {file} is damaged or truncated: {why}")]
    Damaged { file: &'static str, why: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A file by its content: the guest kernel and initramfs a checkpoint
/// was running must be the ones it is restored with.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct FileDigest {
    pub path: PathBuf,
    pub size: u64,
    pub sha256: String,
}

impl FileDigest {
    pub fn of(path: &Path) -> Result<Self, CheckpointError> {
        let file = File::open(path).map_err(io_err(path))?;
        let (size, sha256) = digest(file).map_err(io_err(path))?;
        Ok(FileDigest {
            path: path.to_path_buf(),
            size,
            sha256,
        })
    }
}

fn digest(mut from: impl Read) -> io::Result<(u64, String)> {
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        size += n as u64;
    }
    let hex = hash
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    Ok((size, hex))
}

/// What was checkpointed, and with what.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ImageMeta {
    pub format: u32,
    pub created: DateTime<Utc>,
    /// What the host that made it ran.
    #[serde(flatten)]
    pub made_with: Current,
    /// The container as it was checkpointed: its id (which the guest knows
    /// it by), its init's pid in the guest, its files, whether it has a
    /// terminal.
    pub id: String,
    pub guest_id: String,
    pub guest_pid: Option<i32>,
    pub rootfs: PathBuf,
    pub terminal: bool,
    /// The container was paused (its cgroup in the guest frozen): it is
    /// restored paused.
    #[serde(default)]
    pub paused: bool,
    /// The VM to restore into: its devices as they were, hotplugged ones
    /// included (name, directory and files are the restoring shim's).
    pub vm: VmSpec,
    pub vm_memory_mib: u32,
    /// The interfaces the container's network had (the restore's
    /// namespace must have them, with the same addresses).
    #[serde(default)]
    pub network: Vec<crate::network::NicRecord>,
    /// The stream's size and digest: a damaged image is refused before
    /// QEMU reads it.
    pub state: FileDigest,
}

/// Make `dir` for a new image: created (0700) if missing, refused if it
/// holds anything.
pub fn prepare_dir(dir: &Path) -> Result<(), CheckpointError> {
    match fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(CheckpointError::NotEmpty {
                    dir: dir.to_path_buf(),
                });
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err(dir)),
        Err(e) => Err(io_err(dir)(e)),
    }
}

impl ImageMeta {
    pub fn write(&self, dir: &Path) -> Result<(), CheckpointError> {
        let path = dir.join(IMAGE_META);
        let json = serde_json::to_vec_pretty(self).expect("the image's metadata serializes");
        let tmp = dir.join(format!(".{IMAGE_META}.tmp"));
        let write = || -> io::Result<()> {
            use std::io::Write;
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&json)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)
        };
        write().map_err(io_err(&path))
    }

    pub fn read(dir: &Path) -> Result<Self, CheckpointError> {
        let path = dir.join(IMAGE_META);
        let data = match fs::read(&path) {
            Ok(data) => data,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(CheckpointError::NotAnImage {
                    path: dir.to_path_buf(),
                    why: format!("it has no {IMAGE_META}"),
                })
            }
            Err(e) => return Err(io_err(&path)(e)),
        };
        let format = serde_json::from_slice::<serde_json::Value>(&data)
            .ok()
            .and_then(|v| v.get("format").and_then(serde_json::Value::as_u64));
        match format {
            Some(f) if f == u64::from(IMAGE_FORMAT) => {}
            Some(f) => {
                return Err(CheckpointError::Differs {
                    what: "runvm's image format",
                    then: f.to_string(),
                    now: IMAGE_FORMAT.to_string(),
                })
            }
            None => {
                return Err(CheckpointError::Damaged {
                    file: IMAGE_META,
                    why: "not JSON with a format".into(),
                })
            }
        }
        serde_json::from_slice(&data).map_err(|e| CheckpointError::Damaged {
            file: IMAGE_META,
            why: e.to_string(),
        })
    }

    /// Whether this host can restore the image: the same runvm, agent
    /// protocol, hypervisor, guest kernel and initramfs, and a stream that
    /// is whole. `now` is what this host would write into an image.
    pub fn check_restorable(&self, dir: &Path, now: &Current) -> Result<(), CheckpointError> {
        let made = &self.made_with;
        let differs = |what, then: &dyn ToString, now: &dyn ToString| {
            Err(CheckpointError::Differs {
                what,
                then: then.to_string(),
                now: now.to_string(),
            })
        };
        if made.runvm_version != now.runvm_version {
            return differs("runvm", &made.runvm_version, &now.runvm_version);
        }
        if made.agent_protocol != now.agent_protocol {
            return differs("agent protocol", &made.agent_protocol, &now.agent_protocol);
        }
        if made.backend != now.backend {
            return differs("the hypervisor", &made.backend, &now.backend);
        }
        let version = |m: &serde_json::Map<String, serde_json::Value>| {
            serde_json::Value::Object(m.clone()).to_string()
        };
        if made.vmm_info != now.vmm_info {
            return differs(
                "the hypervisor",
                &version(&made.vmm_info),
                &version(&now.vmm_info),
            );
        }
        let file = |d: &FileDigest| format!("{} (sha256 {})", d.path.display(), d.sha256);
        if (made.kernel.size, &made.kernel.sha256) != (now.kernel.size, &now.kernel.sha256) {
            return differs("the guest kernel", &file(&made.kernel), &file(&now.kernel));
        }
        if (made.initrd.size, &made.initrd.sha256) != (now.initrd.size, &now.initrd.sha256) {
            return differs(
                "the guest initramfs",
                &file(&made.initrd),
                &file(&now.initrd),
            );
        }
        let state = dir.join(VM_STATE);
        let have = match File::open(&state) {
            Ok(f) => digest(f).map_err(io_err(&state))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(CheckpointError::Damaged {
                    file: VM_STATE,
                    why: "it is missing".into(),
                })
            }
            Err(e) => return Err(io_err(&state)(e)),
        };
        if have.0 != self.state.size {
            return Err(CheckpointError::Damaged {
                file: VM_STATE,
                why: format!("{} bytes, {} were saved", have.0, self.state.size),
            });
        }
        if have.1 != self.state.sha256 {
            return Err(CheckpointError::Damaged {
                file: VM_STATE,
                why: "its sha256 is not the one saved".into(),
            });
        }
        Ok(())
    }
}

/// What a host runs, as an image records it: runvm and its agent
/// protocol, the hypervisor backend ("qemu") and what it says of itself
/// (`qemuVersion`), the guest kernel and initramfs.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Current {
    pub runvm_version: String,
    pub agent_protocol: u32,
    pub backend: String,
    pub vmm_info: serde_json::Map<String, serde_json::Value>,
    pub kernel: FileDigest,
    pub initrd: FileDigest,
}

impl Current {
    pub fn of(
        backend: &str,
        vmm_info: serde_json::Map<String, serde_json::Value>,
        kernel: &Path,
        initrd: &Path,
    ) -> Result<Self, CheckpointError> {
        Ok(Current {
            runvm_version: env!("CARGO_PKG_VERSION").to_string(),
            agent_protocol: runvm_protocol::PROTOCOL_VERSION,
            backend: backend.to_string(),
            vmm_info,
            kernel: FileDigest::of(kernel)?,
            initrd: FileDigest::of(initrd)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VmSpec {
        VmSpec {
            name: "runvm-c1".into(),
            dir: "/run/runvm/c1".into(),
            kernel: "/k".into(),
            initrd: "/i".into(),
            kernel_params: String::new(),
            vcpus: 1,
            max_vcpus: 1,
            memory_mib: 256,
            max_memory_mib: 256,
            memory_slots: 0,
            hotplug_slots: 0,
            devices: Vec::new(),
            memory_file: None,
            restore: None,
            dimms_mib: vec![128],
        }
    }

    fn current(dir: &Path) -> Current {
        fs::write(dir.join("k"), b"kernel").unwrap();
        fs::write(dir.join("i"), b"initrd").unwrap();
        let mut info = serde_json::Map::new();
        info.insert("qemuVersion".into(), "QEMU emulator version 10.0.2".into());
        Current::of("qemu", info, &dir.join("k"), &dir.join("i")).unwrap()
    }

    fn image(dir: &Path, now: &Current) -> ImageMeta {
        let image = dir.join("img");
        prepare_dir(&image).unwrap();
        fs::write(image.join(VM_STATE), b"the stream").unwrap();
        let meta = ImageMeta {
            format: IMAGE_FORMAT,
            created: Utc::now(),
            made_with: now.clone(),
            id: "c1".into(),
            guest_id: "c1".into(),
            guest_pid: Some(1),
            rootfs: "/b/rootfs".into(),
            terminal: false,
            paused: false,
            vm: spec(),
            vm_memory_mib: 256,
            network: Vec::new(),
            state: FileDigest::of(&image.join(VM_STATE)).unwrap(),
        };
        meta.write(&image).unwrap();
        meta
    }

    #[test]
    fn an_image_reads_back_and_fits_the_host_that_made_it() {
        let tmp = tempfile::tempdir().unwrap();
        let now = current(tmp.path());
        let meta = image(tmp.path(), &now);
        let dir = tmp.path().join("img");
        let back = ImageMeta::read(&dir).unwrap();
        assert_eq!(back, meta);
        back.check_restorable(&dir, &now).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir.join(IMAGE_META))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let mode = fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        // A second checkpoint into the same directory is refused.
        let err = prepare_dir(&dir).unwrap_err();
        assert!(err.to_string().contains("is not empty"), "{err}");
    }

    #[test]
    fn another_qemu_kernel_or_version_and_a_damaged_stream_are_named() {
        let tmp = tempfile::tempdir().unwrap();
        let now = current(tmp.path());
        image(tmp.path(), &now);
        let dir = tmp.path().join("img");
        let meta = ImageMeta::read(&dir).unwrap();
        let mut other = now.clone();
        other
            .vmm_info
            .insert("qemuVersion".into(), "QEMU emulator version 9.2.0".into());
        let err = meta.check_restorable(&dir, &other).unwrap_err().to_string();
        assert!(
            err.contains("made by the hypervisor") && err.contains("9.2.0"),
            "{err}"
        );
        let mut other = now.clone();
        other.kernel.sha256 = "00".into();
        let err = meta.check_restorable(&dir, &other).unwrap_err().to_string();
        assert!(err.contains("the guest kernel"), "{err}");
        let mut other = now.clone();
        other.runvm_version = "0.0.0-other".into();
        let err = meta.check_restorable(&dir, &other).unwrap_err().to_string();
        assert!(
            err.contains("made by runvm") && err.contains("0.0.0-other"),
            "{err}"
        );
        // Truncated, then the same size with other bytes.
        fs::write(dir.join(VM_STATE), b"the str").unwrap();
        let err = meta.check_restorable(&dir, &now).unwrap_err().to_string();
        assert!(
            err.contains("damaged or truncated") && err.contains("7 bytes"),
            "{err}"
        );
        fs::write(dir.join(VM_STATE), b"the strea!").unwrap();
        let err = meta.check_restorable(&dir, &now).unwrap_err().to_string();
        assert!(err.contains("sha256"), "{err}");
        // Not an image at all, and one of another format.
        let err = ImageMeta::read(tmp.path()).unwrap_err().to_string();
        assert!(err.contains("is not a runvm checkpoint image"), "{err}");
        fs::write(dir.join(IMAGE_META), br#"{"format": 99}"#).unwrap();
        let err = ImageMeta::read(&dir).unwrap_err().to_string();
        assert!(err.contains("image format 99"), "{err}");
        fs::write(dir.join(IMAGE_META), b"{garbage").unwrap();
        let err = ImageMeta::read(&dir).unwrap_err().to_string();
        assert!(err.contains("damaged"), "{err}");
    }
}
