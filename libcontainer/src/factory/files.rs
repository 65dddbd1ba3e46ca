//! The template's files. They live on tmpfs, by default under /dev/shm, which
//! every local user can write: root's QEMU restores whatever memory and
//! device state it finds there, so nothing in that path may be changeable by
//! anyone else, and no name is ever followed through a symlink.

use std::fmt;
use std::fs::{self, DirBuilder, File, Metadata, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::procinfo::ProcessIdentity;

/// Why a directory on the template's path is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    Symlink,
    NotADirectory,
    Owner {
        owner: u32,
        uid: u32,
    },
    Writable {
        mode: u32,
    },
    /// A directory others may write whose sticky bit is off: they could
    /// rename ours away and put theirs in its place.
    NotSticky {
        mode: u32,
    },
    /// A sticky directory's owner may still rename what is in it.
    StickyOwner {
        owner: u32,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Symlink => write!(f, "is a symlink"),
            Problem::NotADirectory => write!(f, "is not a directory"),
            Problem::Owner { owner, uid } => {
                write!(f, "is owned by uid {owner}, not by runvm's uid {uid}")
            }
            Problem::Writable { mode } => {
                write!(f, "is writable by group or others (mode {mode:04o})")
            }
            Problem::NotSticky { mode } => write!(
                f,
                "is writable by others without the sticky bit (mode {mode:04o})"
            ),
            Problem::StickyOwner { owner } => {
                write!(f, "is writable by others and owned by uid {owner}")
            }
        }
    }
}

fn uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// What is wrong with `m` as a directory only `uid` may change.
fn private_problem(m: &Metadata, uid: u32) -> Option<Problem> {
    let mode = m.mode() & 0o7777;
    if m.file_type().is_symlink() {
        Some(Problem::Symlink)
    } else if !m.is_dir() {
        Some(Problem::NotADirectory)
    } else if m.uid() != uid {
        Some(Problem::Owner {
            owner: m.uid(),
            uid,
        })
    } else if mode & 0o022 != 0 {
        Some(Problem::Writable { mode })
    } else {
        None
    }
}

/// What is wrong with `m` as the directory that holds a private one: others
/// may write it only if it is sticky and owned by root or `uid` (/dev/shm,
/// /tmp).
fn holder_problem(m: &Metadata, uid: u32) -> Option<Problem> {
    let mode = m.mode() & 0o7777;
    if !m.is_dir() {
        return Some(Problem::NotADirectory);
    }
    if mode & 0o022 == 0 && (m.uid() == 0 || m.uid() == uid) {
        return None;
    }
    if mode & 0o022 == 0 {
        return Some(Problem::Owner {
            owner: m.uid(),
            uid,
        });
    }
    if mode & 0o1000 == 0 {
        return Some(Problem::NotSticky { mode });
    }
    if m.uid() != 0 && m.uid() != uid {
        return Some(Problem::StickyOwner { owner: m.uid() });
    }
    None
}

/// An error about the template's files.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("{path}")]
    Io { path: PathBuf, source: io::Error },
    #[error("refusing the template directory {path}: it {problem}")]
    Insecure { path: PathBuf, problem: Problem },
    #[error("lock {path}")]
    Lock {
        path: PathBuf,
        source: crate::lock::LockError,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> FilesError + '_ {
    move |source| FilesError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Whether `path` exists as a directory only this user can change; an error
/// if it exists and is anything else.
pub fn check_private(path: &Path) -> Result<bool, FilesError> {
    check_private_as(path, uid())
}

fn check_private_as(path: &Path, uid: u32) -> Result<bool, FilesError> {
    match fs::symlink_metadata(path) {
        Ok(m) => match private_problem(&m, uid) {
            None => Ok(true),
            Some(problem) => Err(FilesError::Insecure {
                path: path.to_path_buf(),
                problem,
            }),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Create `dir` (mode 0700) unless it exists, and make sure it and the
/// directory holding it cannot be changed by anyone else.
pub fn ensure_private_dir(dir: &Path) -> Result<(), FilesError> {
    if let Some(holder) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        let m = fs::metadata(holder).map_err(io_err(holder))?;
        if let Some(problem) = holder_problem(&m, uid()) {
            return Err(FilesError::Insecure {
                path: holder.to_path_buf(),
                problem,
            });
        }
    }
    match DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_err(dir)(e)),
    }
    if check_private(dir)? {
        Ok(())
    } else {
        Err(io_err(dir)(io::ErrorKind::NotFound.into()))
    }
}

/// A new private directory (mode 0700); an error if the name is taken.
pub fn create_private_dir(dir: &Path) -> Result<(), FilesError> {
    DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .map_err(io_err(dir))
}

/// Lock `path` (created mode 0600 if missing, never through a symlink).
/// Retries when the file was removed and replaced while we waited, so the
/// lock held is always on the file now at `path`.
pub fn lock(path: &Path, how: FlockArg) -> Result<Flock<File>, FilesError> {
    loop {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(io_err(path))?;
        match crate::lock::lock_at(path, file, how) {
            Ok(Some(locked)) => return Ok(locked),
            Ok(None) => continue,
            Err(source) => {
                return Err(FilesError::Lock {
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
    }
}

/// Open a regular file for reading, never through a symlink.
pub fn open_nofollow(path: &Path) -> Result<File, FilesError> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(io_err(path))
}

/// Create `path` (mode 0600); an error if anything, a symlink included, is
/// already there.
pub fn create_exclusive(path: &Path) -> Result<File, FilesError> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(io_err(path))
}

/// Copy `src` to a new file `dst` without filling its holes.
pub fn copy_sparse(src: &Path, dst: &Path) -> Result<(), FilesError> {
    let from = open_nofollow(src)?;
    let to = create_exclusive(dst)?;
    copy_sparse_files(&from, &to).map_err(io_err(dst))
}

fn copy_sparse_files(from: &File, to: &File) -> io::Result<()> {
    use nix::unistd::{lseek, Whence};
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

/// The pid a leftover's name ends with: `template.new-PID` (a build) or
/// `clone-ID-PID.mem` (a shim's copy of the memory, unlinked once its QEMU
/// has it open).
fn owner_pid(name: &str, template: &str) -> Option<i32> {
    let pid = if let Some(rest) = name.strip_prefix(&format!("{template}.new-")) {
        rest
    } else {
        let rest = name.strip_prefix("clone-")?.strip_suffix(".mem")?;
        rest.rsplit_once('-')?.1
    };
    pid.parse().ok().filter(|p| *p > 0)
}

/// Leftovers next to the template `dir` of processes that are gone: builds
/// that died before renaming theirs into place, shims that died before their
/// QEMU took the copy of the memory.
pub fn leftovers(dir: &Path) -> Vec<PathBuf> {
    let (Some(holder), Some(name)) = (dir.parent(), dir.file_name()) else {
        return Vec::new();
    };
    let name = name.to_string_lossy();
    let Ok(entries) = fs::read_dir(holder) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| {
            owner_pid(&e.file_name().to_string_lossy(), &name)
                .is_some_and(|pid| !ProcessIdentity::of(pid).is_some_and(|p| p.is_alive()))
        })
        .map(|e| e.path())
        .collect()
}

/// Remove a file or a whole directory, never following a symlink.
pub fn remove(path: &Path) -> Result<(), FilesError> {
    let m = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(path)(e)),
    };
    if m.is_dir() {
        fs::remove_dir_all(path).map_err(io_err(path))
    } else {
        fs::remove_file(path).map_err(io_err(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};
    use std::os::unix::fs::PermissionsExt;

    fn chmod(path: &Path, mode: u32) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn a_private_dir_is_created_0700_and_accepted() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("runvm");
        ensure_private_dir(&dir).unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o7777, 0o700);
        ensure_private_dir(&dir).unwrap();
        assert!(check_private(&dir).unwrap());
        assert!(!check_private(&dir.join("missing")).unwrap());
    }

    #[test]
    fn a_dir_others_can_write_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("runvm");
        fs::create_dir(&dir).unwrap();
        chmod(&dir, 0o777);
        let err = ensure_private_dir(&dir).unwrap_err();
        assert!(
            matches!(
                &err,
                FilesError::Insecure {
                    problem: Problem::Writable { mode: 0o777 },
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!(
                "refusing the template directory {}: it is writable by group or others (mode 0777)",
                dir.display()
            )
        );
        chmod(&dir, 0o770);
        assert!(check_private(&dir).is_err());
    }

    #[test]
    fn a_dir_of_another_user_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("runvm");
        fs::create_dir(&dir).unwrap();
        let owner = fs::metadata(&dir).unwrap().uid();
        let err = check_private_as(&dir, owner + 1).unwrap_err();
        assert!(
            matches!(
                err,
                FilesError::Insecure {
                    problem: Problem::Owner { .. },
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err
            .to_string()
            .contains(&format!("is owned by uid {owner}")));
    }

    #[test]
    fn a_symlink_is_refused_even_to_a_private_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("real");
        ensure_private_dir(&real).unwrap();
        let link = tmp.path().join("runvm");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(matches!(
            ensure_private_dir(&link),
            Err(FilesError::Insecure {
                problem: Problem::Symlink,
                ..
            })
        ));
    }

    #[test]
    fn the_holder_must_be_sticky_if_others_can_write_it() {
        let tmp = tempfile::tempdir().unwrap();
        let holder = tmp.path().join("shm");
        fs::create_dir(&holder).unwrap();
        chmod(&holder, 0o777);
        let err = ensure_private_dir(&holder.join("runvm")).unwrap_err();
        assert!(
            matches!(&err, FilesError::Insecure { problem: Problem::NotSticky { .. }, path } if *path == holder),
            "{err:?}"
        );
        assert!(!holder.join("runvm").exists());
        chmod(&holder, 0o1777);
        ensure_private_dir(&holder.join("runvm")).unwrap();
        // Only root or the user itself may own a sticky holder.
        let m = fs::metadata(&holder).unwrap();
        let expected = (m.uid() != 0).then_some(Problem::StickyOwner { owner: m.uid() });
        assert_eq!(holder_problem(&m, m.uid() + 1), expected);
    }

    #[test]
    fn locks_and_copies_do_not_follow_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("target");
        fs::write(&target, "precious").unwrap();
        let link = tmp.path().join("template.lock");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(lock(&link, FlockArg::LockExclusive).is_err());
        let src = tmp.path().join("mem");
        fs::write(&src, "memory").unwrap();
        let planted = tmp.path().join("clone-c1-1.mem");
        std::os::unix::fs::symlink(&target, &planted).unwrap();
        assert!(copy_sparse(&src, &planted).is_err());
        // An existing plain file is not overwritten either.
        assert!(copy_sparse(&src, &target).is_err());
        assert_eq!(fs::read_to_string(&target).unwrap(), "precious");
    }

    #[test]
    fn a_lock_is_on_the_file_at_the_path() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("template.lock");
        let held = lock(&path, FlockArg::LockShared).unwrap();
        let other = lock(&path, FlockArg::LockSharedNonblock).unwrap();
        assert!(lock(&path, FlockArg::LockExclusiveNonblock).is_err());
        drop((held, other));
        assert!(lock(&path, FlockArg::LockExclusiveNonblock).is_ok());
    }

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
    fn leftovers_of_dead_processes_only() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("template");
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let me = std::process::id();
        for name in [
            format!("template.new-{dead}"),
            format!("template.new-{me}"),
            format!("other.new-{dead}"),
        ] {
            fs::create_dir(tmp.path().join(name)).unwrap();
        }
        for name in [
            format!("clone-my-ctr-{dead}.mem"),
            format!("clone-c2-{me}.mem"),
            "clone-x.mem".to_string(),
        ] {
            fs::write(tmp.path().join(name), "").unwrap();
        }
        let mut found: Vec<String> = leftovers(&dir)
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        found.sort();
        assert_eq!(
            found,
            [
                format!("clone-my-ctr-{dead}.mem"),
                format!("template.new-{dead}")
            ]
        );
    }
}
