//! Where a container's host cgroup is: `linux.cgroupsPath` read as runc
//! reads it, cgroupfs or systemd form, without systemd.

/// runc's words for a path that is not the systemd form.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PathError {
    #[error("expected cgroupsPath to be of format \"slice:prefix:name\" for systemd cgroups, got {0:?} instead")]
    SystemdForm(String),
    #[error("invalid slice name: {0}")]
    Slice(String),
    #[error("cgroupsPath {0:?} is the root cgroup: runvm puts the VM's processes in the container's cgroup and removes it at delete")]
    Root(String),
}

/// The unit prefix of a systemd-form path runvm makes up itself
/// (`--systemd-cgroup` without a path), as runc's is "runc".
const SCOPE_PREFIX: &str = "runvm";

/// The container's cgroup below each hierarchy's root, without a leading
/// `/`. `own` is runvm's own cgroup (relative paths are below it, as
/// runc's are); `systemd` is `--systemd-cgroup`. A path of the form
/// `name.slice:prefix:name` is read as systemd's even without the flag,
/// as it cannot be a sensible cgroupfs path.
pub fn resolve(
    cgroups_path: Option<&str>,
    systemd: bool,
    id: &str,
    own: &str,
) -> Result<String, PathError> {
    let given = cgroups_path.filter(|p| !p.is_empty());
    let resolved = match given {
        Some(p) if systemd || is_systemd_form(p) => systemd_path(p)?,
        None if systemd => systemd_path(&format!(":{SCOPE_PREFIX}:{id}"))?,
        Some(p) if p.starts_with('/') => clean(p),
        Some(p) => join(own, &clean(p)),
        None => join(own, id),
    };
    if resolved.is_empty() {
        return Err(PathError::Root(given.unwrap_or_default().to_string()));
    }
    Ok(resolved)
}

fn is_systemd_form(p: &str) -> bool {
    let parts: Vec<&str> = p.split(':').collect();
    parts.len() == 3 && parts[0].ends_with(".slice")
}

/// `slice:prefix:name` → `<slice's path>/<prefix>-<name>.scope` (or the
/// name itself when it is a slice), as systemd would place the unit.
fn systemd_path(p: &str) -> Result<String, PathError> {
    let parts: Vec<&str> = p.split(':').collect();
    let [slice, prefix, name] = parts[..] else {
        return Err(PathError::SystemdForm(p.to_string()));
    };
    if name.is_empty() || name.contains('/') || prefix.contains('/') {
        return Err(PathError::SystemdForm(p.to_string()));
    }
    let slice = if slice.is_empty() {
        "system.slice"
    } else {
        slice
    };
    let unit = if name.ends_with(".slice") {
        name.to_string()
    } else if prefix.is_empty() {
        format!("{name}.scope")
    } else {
        format!("{prefix}-{name}.scope")
    };
    Ok(join(&expand_slice(slice)?, &unit))
}

/// `a-b-c.slice` → `a.slice/a-b.slice/a-b-c.slice`; `-.slice` is the root.
fn expand_slice(slice: &str) -> Result<String, PathError> {
    let bad = || PathError::Slice(slice.to_string());
    let stem = slice.strip_suffix(".slice").ok_or_else(bad)?;
    if slice.contains('/') {
        return Err(bad());
    }
    if stem == "-" {
        return Ok(String::new());
    }
    if stem.is_empty() || stem.starts_with('-') || stem.ends_with('-') || stem.contains("--") {
        return Err(bad());
    }
    let mut path = Vec::new();
    let mut prefix = String::new();
    for part in stem.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        path.push(format!("{prefix}.slice"));
    }
    Ok(path.join("/"))
}

/// A path cleaned as if it were absolute (so `..` cannot climb above the
/// root), without its leading `/`: runc's CleanPath.
fn clean(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            part => parts.push(part),
        }
    }
    parts.join("/")
}

fn join(a: &str, b: &str) -> String {
    [a.trim_matches('/'), b.trim_matches('/')]
        .iter()
        .filter(|s| !s.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join("/")
}

/// runvm's own cgroup, from `/proc/self/cgroup`'s text: the unified line
/// on a cgroup v2 host, the memory controller's on a v1 host (relative
/// paths go below it in every hierarchy).
pub fn own_cgroup(proc_self_cgroup: &str, v2: bool) -> String {
    proc_self_cgroup
        .lines()
        .find_map(|line| {
            let mut f = line.splitn(3, ':');
            let (id, controllers, path) = (f.next()?, f.next()?, f.next()?);
            let ours = if v2 {
                id == "0" && controllers.is_empty()
            } else {
                controllers.split(',').any(|c| c == "memory")
            };
            ours.then(|| path.trim_matches('/').to_string())
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(p: Option<&str>, systemd: bool) -> Result<String, PathError> {
        resolve(p, systemd, "c1", "user.slice/session-1.scope")
    }

    #[test]
    fn cgroupfs_paths_are_read_as_runc_reads_them() {
        assert_eq!(
            r(Some("/libpod_parent/libpod-c1"), false).unwrap(),
            "libpod_parent/libpod-c1"
        );
        assert_eq!(r(Some("/a/../../b/./c/"), false).unwrap(), "b/c");
        assert_eq!(
            r(Some("x/../../y"), false).unwrap(),
            "user.slice/session-1.scope/y"
        );
        assert_eq!(r(None, false).unwrap(), "user.slice/session-1.scope/c1");
        assert_eq!(r(Some(""), false).unwrap(), "user.slice/session-1.scope/c1");
        assert_eq!(resolve(None, false, "c1", "").unwrap(), "c1");
    }

    #[test]
    fn systemd_paths_are_expanded_as_systemd_places_units() {
        assert_eq!(
            r(Some("system.slice:cri-containerd:c1"), true).unwrap(),
            "system.slice/cri-containerd-c1.scope"
        );
        assert_eq!(
            r(Some("kubepods-besteffort-pod12.slice:cri:c1"), false).unwrap(),
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod12.slice/cri-c1.scope"
        );
        assert_eq!(
            r(Some(":docker:c1"), true).unwrap(),
            "system.slice/docker-c1.scope"
        );
        assert_eq!(r(Some("-.slice::c1"), true).unwrap(), "c1.scope");
        assert_eq!(
            r(Some("a.slice::b.slice"), true).unwrap(),
            "a.slice/b.slice"
        );
        assert_eq!(r(None, true).unwrap(), "system.slice/runvm-c1.scope");
    }

    #[test]
    fn bad_paths_get_runcs_words() {
        assert_eq!(
            r(Some("/plain/path"), true).unwrap_err().to_string(),
            "expected cgroupsPath to be of format \"slice:prefix:name\" for systemd cgroups, got \"/plain/path\" instead"
        );
        assert_eq!(
            r(Some("a--b.slice:x:c1"), true).unwrap_err(),
            PathError::Slice("a--b.slice".into())
        );
        assert_eq!(
            r(Some("notaslice:x:c1"), true).unwrap_err(),
            PathError::Slice("notaslice".into())
        );
        assert_eq!(
            r(Some("/"), false).unwrap_err(),
            PathError::Root("/".into())
        );
        assert_eq!(
            r(Some("/a/.."), false).unwrap_err(),
            PathError::Root("/a/..".into())
        );
    }

    #[test]
    fn own_cgroup_is_the_memory_line_on_v1_and_the_unified_on_v2() {
        let text =
            "9:name=systemd:/\n4:memory:/process_api/9f\n3:cpu,cpuacct:/\n0::/user.slice/x.scope\n";
        assert_eq!(own_cgroup(text, false), "process_api/9f");
        assert_eq!(own_cgroup(text, true), "user.slice/x.scope");
        assert_eq!(own_cgroup("", true), "");
    }
}
