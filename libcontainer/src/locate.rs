//! Where the files runvm runs are: binaries named in the configuration
//! (looked up in PATH and the usual directories) and the guest's kernel and
//! initramfs.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};

use crate::config::HypervisorConfig;

pub const KERNEL_FILE: &str = "vmlinux";
pub const INITRD_FILE: &str = "initramfs.img";

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LocateError {
    #[error("guest {what} not found (looked in {looked}); build it with `make guest`")]
    GuestMissing { what: &'static str, looked: String },
    #[error("{name} not found in PATH or {looked}")]
    BinaryMissing { name: String, looked: String },
}

/// The guest kernel: the configured one, else `vmlinux` in the first guest
/// directory that has it.
pub fn kernel(hv: &HypervisorConfig) -> Result<PathBuf, LocateError> {
    match &hv.kernel {
        Some(p) => Ok(p.clone()),
        None => find_guest_file(KERNEL_FILE, "kernel"),
    }
}

/// The guest initramfs: the configured one, else `initramfs.img` beside a
/// configured kernel, else in the first guest directory that has it.
pub fn initrd(hv: &HypervisorConfig) -> Result<PathBuf, LocateError> {
    match (&hv.initrd, &hv.kernel) {
        (Some(p), _) => Ok(p.clone()),
        (None, Some(kernel)) => Ok(kernel.with_file_name(INITRD_FILE)),
        (None, None) => find_guest_file(INITRD_FILE, "initramfs"),
    }
}

/// Where `make guest` and `make install` put the guest kernel and initramfs:
/// `share/runvm` beside the binary's directory (so `target/release/runvm`
/// finds `target/share/runvm`), then the usual prefixes.
pub fn guest_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Ok(exe) = env::current_exe() {
        if let Some(prefix) = exe.parent().and_then(Path::parent) {
            dirs.push(prefix.join("share/runvm"));
        }
    }
    dirs.push(PathBuf::from("/usr/local/share/runvm"));
    dirs.push(PathBuf::from("/usr/share/runvm"));
    dirs
}

fn find_guest_file(file: &str, what: &'static str) -> Result<PathBuf, LocateError> {
    let dirs = guest_dirs();
    dirs.iter()
        .map(|d| d.join(file))
        .find(|p| p.is_file())
        .ok_or_else(|| LocateError::GuestMissing {
            what,
            looked: dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// Directories searched after PATH: containerd and conmon may run runvm with
/// a short PATH.
const EXTRA_BIN_DIRS: &[&str] = &[
    "/usr/local/bin",
    "/usr/bin",
    "/usr/libexec",
    "/usr/lib/qemu",
    "/usr/sbin",
    "/sbin",
];

/// runvm's own helpers: `libexec/runvm` beside the binary's directory, where
/// the package puts the virtiofsd it ships (`/usr/libexec/runvm` for
/// `/usr/bin/runvm`), so the version it was built with wins over PATH's.
fn helper_dir() -> Option<PathBuf> {
    let exe = env::current_exe().ok()?;
    Some(exe.parent()?.parent()?.join("libexec/runvm"))
}

/// Resolve a binary: a path with a slash is taken as is; a bare name is looked
/// up in runvm's helper directory, PATH, then a few standard directories.
pub fn find_binary(name: &Path) -> Result<PathBuf, LocateError> {
    if name.components().count() > 1 || name.is_absolute() {
        return Ok(name.to_path_buf());
    }
    let path_dirs = env::var_os("PATH")
        .map(|p| env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    helper_dir()
        .into_iter()
        .chain(path_dirs.iter().cloned())
        .chain(EXTRA_BIN_DIRS.iter().map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
        .ok_or_else(|| LocateError::BinaryMissing {
            name: name.display().to_string(),
            looked: EXTRA_BIN_DIRS.join(", "),
        })
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initrd_defaults_to_beside_a_configured_kernel() {
        let hv = HypervisorConfig {
            kernel: Some("/opt/guest/vmlinux".into()),
            ..HypervisorConfig::default()
        };
        assert_eq!(
            initrd(&hv).unwrap(),
            PathBuf::from("/opt/guest/initramfs.img")
        );
    }

    #[test]
    fn binaries_resolve_through_path() {
        assert!(find_binary(Path::new("sh")).unwrap().is_absolute());
        assert!(matches!(
            find_binary(Path::new("no-such-binary-runvm")),
            Err(LocateError::BinaryMissing { .. })
        ));
    }
}
