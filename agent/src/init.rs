//! PID 1 duties: leave the initramfs, mount what a Linux system needs.

use std::ffi::CString;
use std::fs;
use std::path::Path;

use anyhow::{Context, Result};
use nix::mount::{mount, MsFlags};

/// Argument PID 1 passes to itself after it moved to the tmpfs.
pub const STAGE2_ARG: &str = "--stage2";
const NEW_ROOT: &str = "/newroot";

/// pivot_root(2) cannot move away from the initramfs (it is the root of the
/// mount tree, with no parent), and youki needs pivot_root for a proper
/// container root. Initramfs inits usually copy the files onto a new tmpfs;
/// under TCG copying this 13 MB image took about 0.1 s of every cold boot.
/// A bind mount of the initramfs moved over `/` is enough: it is a mount
/// with a parent (the initramfs itself), so pivot_root works below it, and
/// no byte is copied. Then exec ourselves again from the new root.
pub fn leave_initramfs() -> Result<()> {
    fs::create_dir_all(NEW_ROOT).context("create /newroot")?;
    mount(
        Some("/"),
        NEW_ROOT,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .context("bind the initramfs on /newroot")?;
    std::env::set_current_dir(NEW_ROOT)?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .context("move the bind mount to /")?;
    nix::unistd::chroot(".").context("chroot into the bind mount")?;
    std::env::set_current_dir("/")?;
    let init = CString::new("/init")?;
    let stage2 = CString::new(STAGE2_ARG)?;
    nix::unistd::execv(&init, &[init.clone(), stage2]).context("exec /init")?;
    unreachable!("execv returned without an error")
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
