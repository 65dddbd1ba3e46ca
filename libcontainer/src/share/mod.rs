//! What the guest sees of the host's files: one directory per container,
//! `<state dir>/share`, holding the bundle's rootfs at `rootfs/` and the
//! source of each bind mount at `mounts/<n>`, served by one virtiofsd.
//!
//! The shim builds it with bind mounts in a mount namespace of its own, so
//! the host's mount table never sees them and they vanish with the shim (and
//! the QEMU and virtiofsd that share its namespace). With `shared_fs =
//! "none"` the same directory is copied into a disk image instead
//! ([`image`]).

pub mod image;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};
use oci_spec::runtime::Spec;
use runvm_protocol::{SHARE_ROOTFS, SHARE_SOURCE_PREFIX};
use serde_json::Value;

pub const SHARE_DIR: &str = "share";

#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error("enter a private mount namespace")]
    Namespace(#[source] nix::Error),
    #[error("bind mount source {source_path} (for {destination})")]
    Source {
        source_path: PathBuf,
        destination: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("bind mount source {0} is neither a file nor a directory: only those can be shared with the VM")]
    SourceType(PathBuf),
    #[error("prepare {path}")]
    Prepare { path: PathBuf, source: io::Error },
    #[error("bind {from} on {to}")]
    Bind {
        from: PathBuf,
        to: PathBuf,
        source: nix::Error,
    },
}

/// A bind mount of the spec, with its source resolved on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct BindMount {
    /// Position in the spec's `mounts`.
    pub index: usize,
    pub source: PathBuf,
    pub destination: PathBuf,
    pub recursive: bool,
    pub readonly: bool,
    pub is_dir: bool,
}

fn is_bind(m: &oci_spec::runtime::Mount) -> bool {
    m.typ().as_deref() == Some("bind")
        || m.options()
            .iter()
            .flatten()
            .any(|o| o == "bind" || o == "rbind")
}

/// The spec's bind mounts; a source must exist and be a file or directory.
/// Relative sources are relative to the bundle, as in runc.
pub fn bind_mounts(spec: &Spec, bundle: &Path) -> Result<Vec<BindMount>, ShareError> {
    let mut binds = Vec::new();
    for (index, m) in spec.mounts().iter().flatten().enumerate() {
        if !is_bind(m) {
            continue;
        }
        let raw = m.source().clone().unwrap_or_default();
        let err = |source| ShareError::Source {
            source_path: raw.clone(),
            destination: m.destination().clone(),
            source,
        };
        let source = fs::canonicalize(bundle.join(&raw)).map_err(err)?;
        let meta = fs::metadata(&source).map_err(err)?;
        if !meta.is_dir() && !meta.is_file() {
            return Err(ShareError::SourceType(source));
        }
        let options: Vec<&str> = m.options().iter().flatten().map(String::as_str).collect();
        binds.push(BindMount {
            index,
            source,
            destination: m.destination().clone(),
            recursive: options.contains(&"rbind"),
            readonly: options.contains(&"ro"),
            is_dir: meta.is_dir(),
        });
    }
    Ok(binds)
}

/// Give this process (and the children it starts) a mount namespace of its
/// own that still receives the host's mounts but sends none back. Call it
/// before any thread exists: a mount namespace belongs to the thread.
pub fn enter_private_mount_namespace() -> Result<(), ShareError> {
    unshare(CloneFlags::CLONE_NEWNS).map_err(ShareError::Namespace)?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .map_err(ShareError::Namespace)
}

fn bind(from: &Path, to: &Path, recursive: bool, readonly: bool) -> Result<(), ShareError> {
    let err = |source| ShareError::Bind {
        from: from.to_path_buf(),
        to: to.to_path_buf(),
        source,
    };
    let mut flags = MsFlags::MS_BIND;
    if recursive {
        flags |= MsFlags::MS_REC;
    }
    mount(Some(from), to, None::<&str>, flags, None::<&str>).map_err(err)?;
    if readonly {
        // Read-only on the host too: virtiofsd cannot write what the
        // container may only read.
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        mount(None::<&str>, to, None::<&str>, flags, None::<&str>).map_err(err)?;
    }
    Ok(())
}

/// Build the share in `dir` (call inside the private namespace); returns its
/// path.
pub fn assemble(dir: &Path, rootfs: &Path, binds: &[BindMount]) -> Result<PathBuf, ShareError> {
    let share = dir.join(SHARE_DIR);
    let prep = |path: &Path, is_dir: bool| -> Result<(), ShareError> {
        let r = if is_dir {
            fs::create_dir_all(path)
        } else {
            fs::File::create(path).map(|_| ())
        };
        r.map_err(|source| ShareError::Prepare {
            path: path.to_path_buf(),
            source,
        })
    };
    let root_target = share.join(SHARE_ROOTFS);
    prep(&root_target, true)?;
    bind(rootfs, &root_target, true, false)?;
    if !binds.is_empty() {
        prep(&share.join("mounts"), true)?;
    }
    for b in binds {
        let target = share.join("mounts").join(b.index.to_string());
        prep(&target, b.is_dir)?;
        bind(&b.source, &target, b.recursive, b.readonly)?;
    }
    Ok(share)
}

/// The spec as the guest gets it: bind sources point into the share.
pub fn guest_spec(raw: &Value, binds: &[BindMount]) -> Value {
    let mut spec = raw.clone();
    if let Some(mounts) = spec.get_mut("mounts").and_then(Value::as_array_mut) {
        for b in binds {
            if let Some(m) = mounts.get_mut(b.index) {
                m["source"] = Value::String(format!("{SHARE_SOURCE_PREFIX}mounts/{}", b.index));
            }
        }
    }
    spec
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn finds_bind_mounts_and_rewrites_their_sources() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("hosts"), "127.0.0.1 x\n").unwrap();
        fs::create_dir(tmp.path().join("data")).unwrap();
        let raw = json!({
            "ociVersion": "1.0.2",
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/etc/hosts", "type": "bind", "source": "hosts", "options": ["bind", "ro"]},
                {"destination": "/data", "source": tmp.path().join("data"), "options": ["rbind", "rw"]}
            ]
        });
        let spec: Spec = serde_json::from_value(raw.clone()).unwrap();
        let binds = bind_mounts(&spec, tmp.path()).unwrap();
        assert_eq!(binds.len(), 2);
        assert_eq!(binds[0].index, 1);
        assert_eq!(
            binds[0].source,
            fs::canonicalize(tmp.path().join("hosts")).unwrap()
        );
        assert!(binds[0].readonly && !binds[0].is_dir && !binds[0].recursive);
        assert!(binds[1].recursive && binds[1].is_dir && !binds[1].readonly);
        let g = guest_spec(&raw, &binds);
        assert_eq!(g["mounts"][0]["source"], "proc");
        assert_eq!(g["mounts"][1]["source"], "runvm-share:mounts/1");
        assert_eq!(g["mounts"][2]["source"], "runvm-share:mounts/2");
    }

    #[test]
    fn a_missing_source_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let spec: Spec = serde_json::from_value(json!({
            "ociVersion": "1.0.2",
            "mounts": [{"destination": "/x", "type": "bind", "source": "/nonexistent/src"}]
        }))
        .unwrap();
        let err = bind_mounts(&spec, tmp.path()).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/src (for /x)"),
            "{err}"
        );
    }
}
