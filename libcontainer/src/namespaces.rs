//! The host's view of a container. The pid in `state` is the shim's, the
//! container's stand-in, and tools look at `/proc/<pid>/ns/*` to find the
//! container (CNI plugins, `nsenter -t`, Docker's network hook, conformance
//! suites). So the stand-in lives in the uts, ipc and cgroup namespaces the
//! spec gives the container: new ones where it asks for new ones, the one at
//! the path where it names one (as runc's init would join it). The network
//! namespace is the network module's; the mount namespace is always one of
//! the shim's own (it builds the share there, from the host's files).
//!
//! What the stand-in cannot follow, it says in a debug line: a mount
//! namespace by path (the shim needs the host's files), a pid namespace (its
//! pid is the one callers reap and signal), a user namespace (the VM needs
//! the host's root). Inside the guest the container gets the spec's
//! namespaces from youki, and a host path means nothing there: it gets a new
//! namespace of that type.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use nix::sched::{setns, unshare, CloneFlags};
use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceType, Spec};
use slog::{debug, Logger};

#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    /// runc's words.
    #[error("namespace path: lstat {path}")]
    Path { path: PathBuf, source: io::Error },
    #[error("join the {kind} namespace {path}")]
    Join {
        kind: &'static str,
        path: PathBuf,
        source: nix::Error,
    },
    #[error("create a {kind} namespace")]
    Create {
        kind: &'static str,
        source: nix::Error,
    },
    #[error("set the {what} in the container's uts namespace")]
    Name {
        what: &'static str,
        source: nix::Error,
    },
}

/// The namespaces the stand-in follows here: the spec's type, the flag, the
/// name under /proc/<pid>/ns.
const FOLLOWED: [(LinuxNamespaceType, CloneFlags, &str); 3] = [
    (LinuxNamespaceType::Uts, CloneFlags::CLONE_NEWUTS, "uts"),
    (LinuxNamespaceType::Ipc, CloneFlags::CLONE_NEWIPC, "ipc"),
    (
        LinuxNamespaceType::Cgroup,
        CloneFlags::CLONE_NEWCGROUP,
        "cgroup",
    ),
];

/// What the stand-in does for one namespace of the spec.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    New,
    Join(PathBuf),
}

fn step(ns: &LinuxNamespace) -> Step {
    match ns.path() {
        Some(p) if !p.as_os_str().is_empty() => Step::Join(p.clone()),
        _ => Step::New,
    }
}

fn find(spec: &Spec, typ: LinuxNamespaceType) -> Option<&LinuxNamespace> {
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .and_then(|ns| ns.iter().find(|n| n.typ() == typ))
}

/// Move this process into the spec's uts, ipc and cgroup namespaces, and
/// name the uts namespace as the spec does. Call it before any thread
/// exists (a namespace belongs to each thread; later threads inherit it),
/// and after opening the host's namespaces for the hooks.
pub fn enter(spec: &Spec, log: &Logger) -> Result<(), NamespaceError> {
    let mut own_uts = false;
    for (typ, flag, kind) in FOLLOWED {
        let Some(ns) = find(spec, typ) else { continue };
        match step(ns) {
            Step::New => unshare(flag).map_err(|source| NamespaceError::Create { kind, source })?,
            Step::Join(path) => {
                if !join(&path, flag, kind)? {
                    debug!(log, "the namespace path is the host's own: the stand-in stays in it"; "type" => kind, "path" => %path.display());
                    continue;
                }
                debug!(log, "the stand-in joined the namespace on the host; in the guest the container gets a new one"; "type" => kind, "path" => %path.display());
            }
        }
        own_uts |= typ == LinuxNamespaceType::Uts;
    }
    // Never the host's own names: only in a namespace that is not the
    // host's.
    if own_uts {
        if let Some(name) = spec.hostname().as_deref().filter(|n| !n.is_empty()) {
            nix::unistd::sethostname(name).map_err(|source| NamespaceError::Name {
                what: "hostname",
                source,
            })?;
        }
        if let Some(name) = spec.domainname().as_deref().filter(|n| !n.is_empty()) {
            set_domainname(name)?;
        }
    }
    for (typ, why) in [
        (
            LinuxNamespaceType::Pid,
            "its pid is the one callers reap and signal",
        ),
        (LinuxNamespaceType::User, "the VM needs the host's root"),
    ] {
        if find(spec, typ).is_some() {
            debug!(log, "the stand-in stays in the host's namespace"; "type" => format!("{typ:?}").to_lowercase(), "why" => why);
        }
    }
    if let Some(Step::Join(path)) = find(spec, LinuxNamespaceType::Mount).map(step) {
        debug!(log, "the stand-in keeps a mount namespace of its own: it serves the container's files from the host's"; "path" => %path.display());
    }
    Ok(())
}

/// For a spec that joins a uts namespace by path: the names of this
/// process's uts namespace (it has joined that one), for the guest's
/// container, which cannot join a host namespace and gets one of its own:
/// so it sees the hostname and domainname of the namespace it names, as
/// under runc. None when the spec makes a new one or names none.
pub fn names_of_the_joined_uts(spec: &Spec) -> Option<(String, Option<String>)> {
    let Step::Join(_) = step(find(spec, LinuxNamespaceType::Uts)?) else {
        return None;
    };
    let names = nix::sys::utsname::uname().ok()?;
    let hostname = names.nodename().to_string_lossy().into_owned();
    let domainname = names.domainname().to_string_lossy().into_owned();
    // The kernel's name for "none set".
    Some((hostname, (domainname != "(none)").then_some(domainname)))
}

/// Join the namespace at `path`; false if it is this process's already.
fn join(path: &Path, flag: CloneFlags, kind: &'static str) -> Result<bool, NamespaceError> {
    std::fs::symlink_metadata(path).map_err(|source| NamespaceError::Path {
        path: path.to_path_buf(),
        source,
    })?;
    let err = |source| NamespaceError::Join {
        kind,
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path)
        .map_err(|e| err(nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO))))?;
    if same_file(&file, &Path::new("/proc/self/ns").join(kind)) {
        return Ok(false);
    }
    setns(file, flag).map_err(err)?;
    Ok(true)
}

/// `file` is `path` (a namespace is known by its nsfs device and inode).
pub(crate) fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

fn set_domainname(name: &str) -> Result<(), NamespaceError> {
    // SAFETY: the pointer and length describe `name`, which outlives the
    // call; the kernel only reads them.
    let rc = unsafe { libc::setdomainname(name.as_ptr().cast(), name.len()) };
    if rc != 0 {
        return Err(NamespaceError::Name {
            what: "domainname",
            source: nix::Error::last(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    use crate::spec::with_namespaces as spec;

    #[test]
    fn a_namespace_is_new_unless_the_spec_names_a_path() {
        let s = spec(json!([
            {"type": "uts"},
            {"type": "ipc", "path": ""},
            {"type": "cgroup", "path": "/proc/7/ns/cgroup"}
        ]));
        let of = |t| find(&s, t).map(step);
        assert_eq!(of(LinuxNamespaceType::Uts), Some(Step::New));
        assert_eq!(of(LinuxNamespaceType::Ipc), Some(Step::New));
        assert_eq!(
            of(LinuxNamespaceType::Cgroup),
            Some(Step::Join("/proc/7/ns/cgroup".into()))
        );
        assert_eq!(of(LinuxNamespaceType::Pid), None);
    }

    #[test]
    fn a_missing_path_is_refused_in_runcs_words_and_the_own_one_is_not_joined() {
        let e = join(
            Path::new("/nonexistent/ns"),
            CloneFlags::CLONE_NEWUTS,
            "uts",
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "namespace path: lstat /nonexistent/ns");
        // Our own namespace: nothing to do (and no privilege needed).
        assert!(!join(
            Path::new("/proc/self/ns/uts"),
            CloneFlags::CLONE_NEWUTS,
            "uts"
        )
        .unwrap());
    }
}
