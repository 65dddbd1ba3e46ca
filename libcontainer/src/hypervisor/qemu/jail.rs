//! QEMU's jail: what the child does between fork and exec so that QEMU
//! never runs with the host's privileges.
//!
//! QEMU parses everything a guest sends; a bug in its device emulation is
//! the usual way out of a VM. So QEMU runs:
//! - as a uid and gid of its own (`jail_uid_base` + the pid of the process
//!   that launched it: unique among the VMs alive, with no user database
//!   entry and no file on the host owned by it but the VM's memory file);
//! - with no capabilities at all (permitted, effective, inheritable,
//!   ambient and bounding sets empty) and `no_new_privs`;
//! - in mount and IPC namespaces of its own, whose root is a read-only
//!   tmpfs holding only what QEMU opens by name: its binary and libraries
//!   (`/usr`, read-only), a few device nodes, the guest kernel and
//!   initramfs, and the memory file. Everything else (its monitor and agent
//!   sockets, the console, the rootfs server's socket, taps, disk images,
//!   snapshot streams) it gets as a descriptor from the shim.
//!
//! Everything here is prepared before the fork ([`Jail::new`]); the child
//! only makes system calls on it ([`Jail::enter`]).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// What QEMU needs from the host's tree: its binary and libraries (all of
/// /usr on a merged-/usr system; the top-level links to it are recreated),
/// the loader's cache, and the device nodes it opens.
const SYSTEM_DIRS: &[&str] = &["/usr"];
const TOP_LINKS: &[&str] = &["/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"];
const SYSTEM_FILES: &[&str] = &["/etc/ld.so.cache"];
const DEVICES: &[&str] = &["/dev/null", "/dev/zero", "/dev/urandom", "/dev/random"];

#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("open {path} for QEMU's jail")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("give {path} to QEMU's uid {uid}")]
    Chown {
        path: PathBuf,
        uid: u32,
        #[source]
        source: io::Error,
    },
    #[error("jail_uid_base {base} plus this process's pid {pid} is not a valid uid")]
    Uid { base: u32, pid: u32 },
}

/// One bind mount into the jail: `tree`, a detached copy of the mount at
/// the source (open_tree), attached at `target`, a path inside the new
/// root. A copy made before the child's unshare, because a mount of
/// another namespace cannot be bound into a new one, and a detached tree
/// can be attached anywhere.
struct Bind {
    /// Closed on exec: attached by then.
    tree: OwnedFd,
    target: CString,
    dir: bool,
    read_only: bool,
}

pub struct Jail {
    uid: u32,
    gid: u32,
    groups: Vec<libc::gid_t>,
    /// Where the new root's tmpfs is mounted (in the child's namespace
    /// only): an existing directory.
    root: CString,
    /// The process that forks QEMU: the child dies if it is gone.
    parent: libc::pid_t,
    /// Directories to make in the new root, parents first.
    dirs: Vec<CString>,
    /// (link, its target) to make in the new root.
    links: Vec<(CString, CString)>,
    binds: Vec<Bind>,
}

/// The uid (and gid) QEMU runs as when launched by this process.
pub fn uid_for(base: u32) -> Result<u32, JailError> {
    let pid = std::process::id();
    base.checked_add(pid)
        .filter(|&uid| uid < u32::MAX - 1 && base > 0)
        .ok_or(JailError::Uid { base, pid })
}

/// Whether a jail can be made here, and if not why (for `runvm check`).
pub fn usable() -> Result<(), String> {
    // SAFETY: geteuid has no failure mode.
    if unsafe { libc::geteuid() } != 0 {
        return Err("runvm is not running as root, which setting up the jail needs".into());
    }
    // SAFETY: open_tree without OPEN_TREE_CLONE opens a path descriptor of
    // "/", closed at once.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            c"/".as_ptr(),
            libc::O_CLOEXEC as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(format!(
            "the kernel has no open_tree (Linux 5.2 or later): {}",
            io::Error::last_os_error()
        ));
    }
    // SAFETY: a descriptor just returned to us.
    drop(unsafe { OwnedFd::from_raw_fd(fd as RawFd) });
    Ok(())
}

fn cstring(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).expect("paths have no NUL byte")
}

impl Jail {
    /// A jail for a QEMU run as `uid`, its root mounted over `root` (an
    /// existing directory), with `read_only` and `writable` files and
    /// `devices` beyond the usual ones visible at their own paths. The
    /// writable ones are given to `uid`.
    pub fn new(
        uid: u32,
        groups: Vec<u32>,
        root: &Path,
        read_only: &[&Path],
        writable: &[&Path],
        devices: &[&Path],
    ) -> Result<Self, JailError> {
        let mut jail = Jail {
            uid,
            gid: uid,
            groups,
            root: cstring(root),
            parent: std::process::id() as libc::pid_t,
            dirs: Vec::new(),
            links: Vec::new(),
            binds: Vec::new(),
        };
        for link in TOP_LINKS {
            match std::fs::read_link(link) {
                Ok(to) => jail
                    .links
                    .push((cstring(&root.join(&link[1..])), cstring(&to))),
                // A real directory (not a merged-/usr system): bound as is.
                Err(_) if Path::new(link).is_dir() => jail.bind(root, Path::new(link), true)?,
                Err(_) => {}
            }
        }
        for dir in SYSTEM_DIRS {
            jail.bind(root, Path::new(dir), true)?;
        }
        for file in SYSTEM_FILES {
            if Path::new(file).exists() {
                jail.bind(root, Path::new(file), true)?;
            }
        }
        // Device nodes as they are: a read-only mount would refuse writes
        // to /dev/null.
        for dev in DEVICES.iter().map(Path::new).filter(|d| d.exists()) {
            jail.bind(root, dev, false)?;
        }
        for dev in devices {
            jail.bind(root, dev, false)?;
        }
        for path in read_only {
            jail.bind(root, path, true)?;
        }
        for path in writable {
            std::os::unix::fs::chown(path, Some(uid), Some(uid)).map_err(|source| {
                JailError::Chown {
                    path: path.to_path_buf(),
                    uid,
                    source,
                }
            })?;
            jail.bind(root, path, false)?;
        }
        Ok(jail)
    }

    fn bind(&mut self, root: &Path, path: &Path, read_only: bool) -> Result<(), JailError> {
        // Already visible through a directory bound before (a kernel under
        // /usr/share, say).
        let covered = self.binds.iter().any(|b| {
            b.dir
                && Path::new(std::ffi::OsStr::from_bytes(b.target.as_bytes()))
                    .strip_prefix(root)
                    .is_ok_and(|t| path.strip_prefix("/").is_ok_and(|p| p.starts_with(t)))
        });
        if covered {
            return Ok(());
        }
        let open_err = |source| JailError::Open {
            path: path.to_path_buf(),
            source,
        };
        let dir = std::fs::metadata(path).map_err(open_err)?.is_dir();
        let c_path = cstring(path);
        // SAFETY: open_tree reads the NUL-terminated path and returns a new
        // descriptor, owned below.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_open_tree,
                libc::AT_FDCWD,
                c_path.as_ptr(),
                OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | AT_RECURSIVE,
            )
        };
        if fd < 0 {
            return Err(open_err(io::Error::last_os_error()));
        }
        // SAFETY: a descriptor just returned to us.
        let tree = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        let mut parent = root.to_path_buf();
        let components: Vec<Component> = path.components().collect();
        for (i, c) in components.iter().enumerate() {
            if let Component::Normal(name) = c {
                parent.push(name);
                let last = i + 1 == components.len();
                let made = cstring(&parent);
                if !last && !self.dirs.contains(&made) {
                    self.dirs.push(made);
                }
            }
        }
        self.binds.push(Bind {
            tree,
            target: cstring(&parent),
            dir,
            read_only,
        });
        Ok(())
    }

    /// In the child, before exec: new mount and IPC namespaces, the new
    /// root, then the credentials. Only system calls on what [`Jail::new`]
    /// prepared: no allocation.
    ///
    /// # Safety
    /// To be called only between fork and exec, in the child.
    pub unsafe fn enter(&self) -> io::Result<()> {
        let check = |r: libc::c_int| {
            if r < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        };
        let none = std::ptr::null::<libc::c_char>();
        check(libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWIPC))?;
        // Nothing done below reaches the shim's namespace or the host's.
        check(libc::mount(
            none,
            c"/".as_ptr(),
            none,
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ))?;
        check(libc::mount(
            c"tmpfs".as_ptr(),
            self.root.as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            c"mode=0755,size=64k".as_ptr().cast(),
        ))?;
        let mkdir = |dir: &CString| {
            if libc::mkdir(dir.as_ptr(), 0o755) < 0
                && io::Error::last_os_error().raw_os_error() != Some(libc::EEXIST)
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        };
        for dir in &self.dirs {
            mkdir(dir)?;
        }
        for (link, to) in &self.links {
            check(libc::symlink(to.as_ptr(), link.as_ptr()))?;
        }
        for bind in &self.binds {
            if bind.dir {
                mkdir(&bind.target)?;
            } else {
                let fd = libc::open(
                    bind.target.as_ptr(),
                    libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                    0o600,
                );
                check(fd)?;
                libc::close(fd);
            }
            check(libc::syscall(
                libc::SYS_move_mount,
                bind.tree.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_FDCWD,
                bind.target.as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH,
            ) as libc::c_int)?;
            let mut flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID;
            if bind.read_only {
                flags |= libc::MS_RDONLY;
            }
            check(libc::mount(
                none,
                bind.target.as_ptr(),
                none,
                flags,
                std::ptr::null(),
            ))?;
        }
        // The tmpfs becomes the root, the old root goes (pivot_root with
        // itself as the place for the old root, then a lazy unmount).
        check(libc::chdir(self.root.as_ptr()))?;
        check(libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) as libc::c_int)?;
        check(libc::umount2(c".".as_ptr(), libc::MNT_DETACH))?;
        check(libc::chdir(c"/".as_ptr()))?;
        check(libc::mount(
            none,
            c"/".as_ptr(),
            none,
            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
            std::ptr::null(),
        ))?;
        // Credentials last: the bounding set needs CAP_SETPCAP, which
        // leaves with the uid.
        check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
        check(libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        ))?;
        for cap in 0..64 {
            // EINVAL past the kernel's last capability.
            if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) < 0
                && io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL)
            {
                return Err(io::Error::last_os_error());
            }
        }
        check(libc::setgroups(self.groups.len(), self.groups.as_ptr()))?;
        check(libc::setresgid(self.gid, self.gid, self.gid))?;
        check(libc::setresuid(self.uid, self.uid, self.uid))?;
        // The uid change emptied the permitted and effective sets; the
        // inheritable one goes too.
        let mut header = CapHeader {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        let data = [CapData::default(); 2];
        check(libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) as libc::c_int)?;
        // A change of credentials clears the parent-death signal: set it
        // again, and die now if the parent is already gone.
        check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0))?;
        if libc::getppid() != self.parent {
            libc::_exit(1);
        }
        Ok(())
    }
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
const OPEN_TREE_CLONE: libc::c_uint = 1;
const AT_RECURSIVE: libc::c_uint = 0x8000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_is_the_base_plus_our_pid() {
        let uid = uid_for(2_000_000_000).unwrap();
        assert_eq!(uid, 2_000_000_000 + std::process::id());
        assert!(matches!(uid_for(u32::MAX - 1), Err(JailError::Uid { .. })));
        assert!(matches!(uid_for(0), Err(JailError::Uid { .. })));
    }

    #[test]
    fn binds_name_their_parents_once_parents_first() {
        let tmp = tempfile::tempdir().unwrap();
        let a = tmp.path().join("a/b");
        std::fs::create_dir_all(&a).unwrap();
        std::fs::write(a.join("k"), "").unwrap();
        std::fs::write(a.join("i"), "").unwrap();
        let root = tmp.path().join("root");
        let jail = Jail::new(
            uid_for(2_000_000_000).unwrap(),
            vec![],
            &root,
            &[&a.join("k"), &a.join("i")],
            &[],
            &[],
        )
        .unwrap();
        let in_root = |p: &Path| cstring(&root.join(p.strip_prefix("/").unwrap()));
        let k_parent = in_root(&a);
        let at = jail.dirs.iter().position(|d| *d == k_parent).unwrap();
        assert_eq!(jail.dirs.iter().filter(|d| **d == k_parent).count(), 1);
        let grand = in_root(a.parent().unwrap());
        assert!(jail.dirs.iter().position(|d| *d == grand).unwrap() < at);
        let targets: Vec<_> = jail.binds.iter().map(|b| b.target.clone()).collect();
        assert!(targets.contains(&in_root(&a.join("k"))));
        assert!(targets.contains(&in_root(Path::new("/usr"))));
        // Read-only, but for the device nodes.
        for b in &jail.binds {
            let dev = b
                .target
                .to_bytes()
                .starts_with(cstring(&root.join("dev")).as_bytes());
            assert_eq!(b.read_only, !dev, "{:?}", b.target);
        }
    }
}
