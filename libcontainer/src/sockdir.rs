//! Unix socket paths that fit in `sun_path` (108 bytes) however long the
//! state directory's path is: Docker's `/var/run/docker/runtime-X/moby/<64
//! hex>/…` does not fit. Sockets are named through `/proc/self/fd/<dirfd>/`,
//! and child processes (QEMU) get names relative to their working directory.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

pub struct SocketDir {
    dir: File,
}

impl SocketDir {
    pub fn open(dir: &Path) -> io::Result<Self> {
        Ok(SocketDir {
            dir: File::open(dir)?,
        })
    }

    /// A short path naming `name` inside the directory, valid in this process.
    pub fn path(&self, name: &str) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}/{name}", self.dir.as_raw_fd()))
    }
}

/// Receive one message on a unix socket into `buf`, with the descriptors it
/// carries (SCM_RIGHTS, at most three), made close-on-exec. Returns the
/// number of bytes and the descriptors, each owned once.
pub fn recv_with_fds(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut iov = [io::IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!([RawFd; 3]);
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(raw) = cmsg {
            // SAFETY: SCM_RIGHTS just installed these descriptors in our
            // table; nothing else owns them.
            fds.extend(
                raw.into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    Ok((msg.bytes, fds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::{UnixListener, UnixStream};

    #[test]
    fn binds_and_connects_under_a_path_longer_than_sun_path() {
        let tmp = tempfile::tempdir().unwrap();
        let deep = tmp.path().join("d".repeat(120));
        std::fs::create_dir(&deep).unwrap();
        assert!(UnixListener::bind(deep.join("s.sock")).is_err());
        let sd = SocketDir::open(&deep).unwrap();
        let _l = UnixListener::bind(sd.path("s.sock")).unwrap();
        assert!(deep.join("s.sock").exists());
        UnixStream::connect(sd.path("s.sock")).unwrap();
    }
}
