//! flock on a file that stays the one at its path: a lock taken on a file
//! or directory that was removed (and maybe made again) while we waited
//! for it protects nothing, so it is refused.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("lock")]
    Flock(#[source] nix::Error),
    #[error("stat")]
    Stat(#[source] io::Error),
}

/// Lock `file`, which was opened from `path`. `None`: once the lock was
/// held, `path` no longer named that file (it was removed or replaced).
pub fn lock_at(path: &Path, file: File, how: FlockArg) -> Result<Option<Flock<File>>, LockError> {
    let locked = Flock::lock(file, how).map_err(|(_, e)| LockError::Flock(e))?;
    let held = locked.metadata().map_err(LockError::Stat)?;
    match fs::symlink_metadata(path) {
        Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => Ok(Some(locked)),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(LockError::Stat(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_replaced_while_waiting_is_not_locked() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("l");
        fs::write(&path, "").unwrap();
        let held = lock_at(&path, File::open(&path).unwrap(), FlockArg::LockExclusive)
            .unwrap()
            .expect("the file at the path");
        let opened = File::open(&path).unwrap();
        fs::remove_file(&path).unwrap();
        fs::write(&path, "").unwrap();
        drop(held);
        assert!(lock_at(&path, opened, FlockArg::LockExclusive)
            .unwrap()
            .is_none());
    }
}
