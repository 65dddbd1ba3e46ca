//! `shared_fs = "none"`: the share (the rootfs and each bind mount's
//! source, as [`super::assemble`] laid them out) copied into an ext4 image
//! that the VM gets as a virtio-blk disk, for hosts without virtio-fs.
//!
//! `mke2fs -d` does the copy: it keeps owners, modes, times, symlinks, hard
//! links, device nodes and extended attributes, as root must. The image is
//! sparse and has no journal (it dies with the container); it is made in
//! `disk_image_dir`, linked from the state directory as [`LINK`], and
//! unlinked once QEMU has it open, so a running container holds no name on
//! the host and a shim that died leaves a name `delete` finds.

use std::fs;
use std::io;
use std::os::unix::fs::{symlink, DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::locate;

/// In the container's state directory: a symlink to its image.
pub const LINK: &str = "share.img";

const MIB: u64 = 1024 * 1024;
const BLOCK: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("make the disk image directory {path}")]
    Dir { path: PathBuf, source: io::Error },
    #[error("measure the files to copy into the disk image: {path}")]
    Measure { path: PathBuf, source: io::Error },
    #[error("create the disk image {path}")]
    Create { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Locate(#[from] locate::LocateError),
    #[error("run {binary}")]
    Spawn { binary: PathBuf, source: io::Error },
    #[error("copy the container's files into the disk image {path} (mke2fs {status}): {stderr}")]
    Mkfs {
        path: PathBuf,
        status: String,
        stderr: String,
    },
}

/// What the share holds: bytes in whole blocks, and entries.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub bytes: u64,
    pub inodes: u64,
}

/// Walk `dir` without following symlinks, into the bind mounts below it.
pub fn measure(dir: &Path) -> Result<Usage, ImageError> {
    let mut usage = Usage::default();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let err = |source| ImageError::Measure {
            path: d.clone(),
            source,
        };
        usage.inodes += 1;
        usage.bytes += BLOCK;
        for entry in fs::read_dir(&d).map_err(err)? {
            let entry = entry.map_err(err)?;
            let meta = fs::symlink_metadata(entry.path()).map_err(err)?;
            if meta.is_dir() {
                pending.push(entry.path());
            } else {
                usage.inodes += 1;
                usage.bytes += meta.len().div_ceil(BLOCK) * BLOCK;
            }
        }
    }
    Ok(usage)
}

/// The image's size in MiB and its inode count: what the files take with
/// room for ext4's own structures, plus `free_mib` for the container.
pub fn geometry(usage: Usage, free_mib: u32) -> (u64, u64) {
    let inodes = usage.inodes + usage.inodes / 4 + 1024;
    // 256 bytes an inode, a tenth for block maps and directories, and a
    // fixed part for the superblocks and group descriptors.
    let metadata = inodes * 256 + usage.bytes / 10;
    let mib = (usage.bytes + metadata).div_ceil(MIB) + 16 + u64::from(free_mib);
    (mib, inodes)
}

/// Build the image of `share` in `dir`, named after the container, and
/// link it from `state_dir`. On failure nothing is left.
pub fn build(
    share: &Path,
    dir: &Path,
    state_dir: &Path,
    id: &str,
    free_mib: u32,
) -> Result<PathBuf, ImageError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| ImageError::Dir {
            path: dir.to_path_buf(),
            source,
        })?;
    let (mib, inodes) = geometry(measure(share)?, free_mib);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let path = dir.join(format!("{id}-{}-{nanos}.img", std::process::id()));
    let made = make(share, &path, mib, inodes).and_then(|()| {
        symlink(&path, state_dir.join(LINK)).map_err(|source| ImageError::Create {
            path: state_dir.join(LINK),
            source,
        })
    });
    if let Err(e) = made {
        let _ = fs::remove_file(&path);
        return Err(e);
    }
    Ok(path)
}

fn make(share: &Path, path: &Path, mib: u64, inodes: u64) -> Result<(), ImageError> {
    let create = |source| ImageError::Create {
        path: path.to_path_buf(),
        source,
    };
    let file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(create)?;
    file.set_len(mib * MIB).map_err(create)?;
    drop(file);
    let binary = mke2fs()?;
    let out = Command::new(&binary)
        .args(["-q", "-F", "-t", "ext4", "-m", "0", "-O", "^has_journal"])
        .args(["-E", "lazy_itable_init=1,root_owner=0:0"])
        .arg("-N")
        .arg(inodes.to_string())
        .arg("-d")
        .arg(share)
        .arg(path)
        .env("LC_ALL", "C")
        .output()
        .map_err(|source| ImageError::Spawn {
            binary: binary.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(ImageError::Mkfs {
            path: path.to_path_buf(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// e2fsprogs' mke2fs (in /usr/sbin, which a client's PATH may lack: the
/// search covers it).
fn mke2fs() -> Result<PathBuf, ImageError> {
    Ok(locate::find_binary(Path::new("mke2fs"))?)
}

/// Remove the image `state_dir` links to (QEMU has it open, or it is
/// left from a shim that died); the link stays for the directory's
/// removal.
pub fn unlink(state_dir: &Path) {
    if let Ok(target) = fs::read_link(state_dir.join(LINK)) {
        let _ = fs::remove_file(target);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_image_has_room_for_the_files_their_inodes_and_the_free_space() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("share/rootfs");
        fs::create_dir_all(root.join("bin")).unwrap();
        fs::write(root.join("bin/a"), vec![1u8; 5000]).unwrap();
        fs::write(root.join("empty"), b"").unwrap();
        symlink("a", root.join("bin/b")).unwrap();
        let usage = measure(&tmp.path().join("share")).unwrap();
        // share, rootfs, bin; a (2 blocks), empty (none), b (1).
        assert_eq!(usage.inodes, 6);
        assert_eq!(usage.bytes, 3 * BLOCK + 2 * BLOCK + BLOCK);
        let (mib, inodes) = geometry(usage, 100);
        assert_eq!(inodes, 6 + 1 + 1024);
        assert_eq!(mib, 1 + 16 + 100);
        let big = Usage {
            bytes: 1000 * MIB,
            inodes: 40_000,
        };
        let (mib, inodes) = geometry(big, 0);
        assert!(mib >= 1100 + 16, "{mib}");
        assert_eq!(inodes, 50_000 + 1024);
    }

    #[test]
    fn a_failed_build_leaves_neither_image_nor_link() {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        fs::create_dir(&state).unwrap();
        let images = tmp.path().join("images");
        let err = build(&tmp.path().join("missing"), &images, &state, "c1", 1).unwrap_err();
        assert!(matches!(err, ImageError::Measure { .. }), "{err}");
        assert_eq!(fs::read_dir(&images).unwrap().count(), 0);
        assert!(fs::symlink_metadata(state.join(LINK)).is_err());
    }

    #[test]
    fn unlink_removes_the_linked_image_only() {
        let tmp = tempfile::tempdir().unwrap();
        let image = tmp.path().join("c1.img");
        fs::write(&image, b"x").unwrap();
        symlink(&image, tmp.path().join(LINK)).unwrap();
        unlink(tmp.path());
        assert!(!image.exists());
        unlink(tmp.path());
        unlink(&tmp.path().join("nothing-here"));
    }
}
