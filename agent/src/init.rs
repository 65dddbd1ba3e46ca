//! PID 1 duties: leave the initramfs, mount what a Linux system needs.

use std::ffi::CString;
use std::fs;
use std::os::unix::fs::{symlink, FileTypeExt};
use std::path::Path;

use anyhow::{Context, Result};
use nix::mount::{mount, MsFlags};

/// Argument PID 1 passes to itself after it moved to the tmpfs.
pub const STAGE2_ARG: &str = "--stage2";
const NEW_ROOT: &str = "/newroot";

/// pivot_root(2) cannot move away from the initramfs (it is the root of the
/// mount tree), and youki needs pivot_root for a proper container root. So, as
/// initramfs inits do, copy the initramfs onto a tmpfs, free the old files,
/// make the tmpfs the root and exec ourselves again.
pub fn move_root_to_tmpfs() -> Result<()> {
    fs::create_dir_all(NEW_ROOT).context("create /newroot")?;
    mount(
        Some("tmpfs"),
        NEW_ROOT,
        Some("tmpfs"),
        MsFlags::MS_NOSUID,
        Some("mode=0755"),
    )
    .context("mount tmpfs on /newroot")?;
    for entry in fs::read_dir("/").context("read /")? {
        let entry = entry?;
        let name = entry.file_name();
        if name == "newroot" {
            continue;
        }
        let from = entry.path();
        copy_tree(&from, &Path::new(NEW_ROOT).join(&name))
            .with_context(|| format!("copy {} to the tmpfs", from.display()))?;
        remove_tree(&from);
    }
    std::env::set_current_dir(NEW_ROOT)?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .context("move the tmpfs to /")?;
    nix::unistd::chroot(".").context("chroot into the tmpfs")?;
    std::env::set_current_dir("/")?;
    let init = CString::new("/init")?;
    let stage2 = CString::new(STAGE2_ARG)?;
    nix::unistd::execv(&init, &[init.clone(), stage2]).context("exec /init")?;
    unreachable!("execv returned without an error")
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    let meta = fs::symlink_metadata(from)?;
    let ft = meta.file_type();
    if ft.is_dir() {
        fs::create_dir_all(to)?;
        fs::set_permissions(to, meta.permissions())?;
        for entry in fs::read_dir(from)? {
            let entry = entry?;
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        }
    } else if ft.is_symlink() {
        symlink(fs::read_link(from)?, to)?;
    } else if ft.is_file() {
        fs::copy(from, to)?;
    } else if ft.is_char_device() || ft.is_block_device() {
        // Device nodes come back with devtmpfs on /dev.
    }
    Ok(())
}

fn remove_tree(path: &Path) {
    let is_dir = fs::symlink_metadata(path)
        .map(|m| m.is_dir())
        .unwrap_or(false);
    let _ = if is_dir {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
}

struct Mnt {
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
}

/// Mount the pseudo filesystems and turn on the cgroup v2 controllers the
/// containers' cgroups are made from.
pub fn mount_system() -> Result<()> {
    let nosuid_noexec_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV;
    let mounts = [
        Mnt {
            source: "proc",
            target: "/proc",
            fstype: "proc",
            flags: nosuid_noexec_nodev,
            data: None,
        },
        Mnt {
            source: "sysfs",
            target: "/sys",
            fstype: "sysfs",
            flags: nosuid_noexec_nodev,
            data: None,
        },
        Mnt {
            source: "devtmpfs",
            target: "/dev",
            fstype: "devtmpfs",
            flags: MsFlags::MS_NOSUID,
            data: Some("mode=0755"),
        },
        Mnt {
            source: "devpts",
            target: "/dev/pts",
            fstype: "devpts",
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            data: Some("gid=5,mode=0620,ptmxmode=0666"),
        },
        Mnt {
            source: "shm",
            target: "/dev/shm",
            fstype: "tmpfs",
            flags: nosuid_noexec_nodev,
            data: Some("mode=1777"),
        },
        Mnt {
            source: "tmpfs",
            target: "/run",
            fstype: "tmpfs",
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            data: Some("mode=0755"),
        },
        Mnt {
            source: "tmpfs",
            target: "/tmp",
            fstype: "tmpfs",
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            data: Some("mode=1777"),
        },
        Mnt {
            source: "cgroup2",
            target: "/sys/fs/cgroup",
            fstype: "cgroup2",
            flags: nosuid_noexec_nodev,
            data: None,
        },
    ];
    for m in &mounts {
        fs::create_dir_all(m.target).with_context(|| format!("create {}", m.target))?;
        mount(Some(m.source), m.target, Some(m.fstype), m.flags, m.data)
            .with_context(|| format!("mount {} on {}", m.fstype, m.target))?;
    }
    let controllers = fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
        .context("read the cgroup v2 controllers")?;
    let enable: Vec<String> = controllers
        .split_whitespace()
        .map(|c| format!("+{c}"))
        .collect();
    fs::write("/sys/fs/cgroup/cgroup.subtree_control", enable.join(" "))
        .context("enable cgroup v2 controllers")?;
    let _ = nix::unistd::sethostname("runvm");
    load_modules();
    Ok(())
}

/// Load the kernel modules the initramfs carries for the running kernel
/// (/lib/modules/<release>: runvm's own kernel has every driver built in and
/// no directory; Debian's cloud kernel, the fallback, has its drivers there).
/// A module that fails to load costs a feature (free page reporting, NICs),
/// not the VM.
fn load_modules() {
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let Ok(entries) = fs::read_dir(Path::new("/lib/modules").join(release)) else {
        return;
    };
    // Named in load order (guest/build.sh numbers them).
    let mut paths: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    for path in paths {
        if path.extension().is_some_and(|e| e == "ko") {
            let loaded = fs::File::open(&path).and_then(|f| {
                nix::kmod::finit_module(&f, c"", nix::kmod::ModuleInitFlags::empty())
                    .map_err(std::io::Error::from)
            });
            if let Err(e) = loaded {
                eprintln!("runvm-agent: load {}: {e}", path.display());
            }
        }
    }
}
