//! What runc does for a container's process that youki does not: it sets
//! HOME when the spec's env has none, and it creates a cwd the rootfs lacks.
//! Both are done to the guest's copy of the spec and the shared rootfs
//! before youki runs, as root, before the rootfs is made read-only: where
//! runc does them.

use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

use runvm_protocol::{AgentError, AgentErrorKind};
use serde_json::Value;

use crate::executor::errno_text;
use crate::process::AgentResult;

/// Apply runc's defaults to the spec's process, in `rootfs`.
pub fn apply(spec: &mut Value, rootfs: &Path) -> AgentResult<()> {
    let Some(process) = spec.get_mut("process").and_then(Value::as_object_mut) else {
        return Ok(());
    };
    let uid = process
        .get("user")
        .and_then(|u| u.get("uid"))
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let env = process
        .entry("env")
        .or_insert_with(|| Value::Array(Vec::new()));
    if let Some(env) = env.as_array_mut() {
        let has_home = env
            .iter()
            .filter_map(Value::as_str)
            .any(|e| e.starts_with("HOME="));
        if !has_home {
            let home = home_of(rootfs, uid).unwrap_or_else(|| "/".into());
            env.push(Value::String(format!("HOME={home}")));
        }
    }
    if let Some(cwd) = process.get("cwd").and_then(Value::as_str) {
        create_cwd(rootfs, Path::new(cwd)).map_err(|e| {
            AgentError::new(
                AgentErrorKind::Runtime,
                format!("unable to start container process: error during container init: {e}"),
            )
        })?;
    }
    Ok(())
}

/// The home directory of `uid` in the rootfs's /etc/passwd, as runc looks
/// it up. A passwd that is a symlink is not followed.
fn home_of(rootfs: &Path, uid: u64) -> Option<String> {
    let passwd = rootfs.join("etc/passwd");
    if !fs::symlink_metadata(&passwd).ok()?.is_file() {
        return None;
    }
    home_in(&fs::read_to_string(passwd).ok()?, uid)
}

fn home_in(passwd: &str, uid: u64) -> Option<String> {
    passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() >= 7 && f[2].parse::<u64>().ok()? == uid && !f[5].is_empty())
            .then(|| f[5].to_string())
    })
}

/// `mkdir -p` of an absolute cwd inside the rootfs, one component at a time,
/// never following a symlink out of it: a component that is a symlink ends
/// the walk (youki resolves it inside the container and fails there if it
/// leads nowhere). The error names the path as the container sees it, in
/// runc's words ("mkdir /bin/busybox: not a directory").
fn create_cwd(rootfs: &Path, cwd: &Path) -> Result<(), String> {
    if !cwd.is_absolute() {
        return Ok(()); // refused earlier, on the host, in runc's words
    }
    let mut seen = PathBuf::from("/");
    for part in cwd.components() {
        let Component::Normal(name) = part else {
            continue;
        };
        seen.push(name);
        let on_disk = rootfs.join(seen.strip_prefix("/").unwrap_or(&seen));
        match fs::symlink_metadata(&on_disk) {
            Ok(m) if m.file_type().is_symlink() => return Ok(()),
            Ok(m) if m.is_dir() => continue,
            Ok(_) => {
                return Err(mkdir_error(
                    &seen,
                    io::Error::from_raw_os_error(libc::ENOTDIR),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => match fs::create_dir(&on_disk) {
                Ok(()) => {
                    use std::os::unix::fs::PermissionsExt;
                    let _ = fs::set_permissions(&on_disk, fs::Permissions::from_mode(0o755));
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(mkdir_error(&seen, e)),
            },
            Err(e) => return Err(mkdir_error(&seen, e)),
        }
    }
    Ok(())
}

fn mkdir_error(path: &Path, e: io::Error) -> String {
    format!("mkdir {}: {}", path.display(), errno_text(&e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn home_comes_from_passwd_or_is_slash_and_a_given_home_stays() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir(root.path().join("etc")).unwrap();
        fs::write(
            root.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nweb:x:1000:1000::/srv/web:/bin/sh\n",
        )
        .unwrap();
        let home = |process: Value| {
            let mut spec = json!({ "process": process });
            apply(&mut spec, root.path()).unwrap();
            spec["process"]["env"].clone()
        };
        assert_eq!(
            home(json!({"user": {"uid": 1000}, "env": ["A=1"]})),
            json!(["A=1", "HOME=/srv/web"])
        );
        assert_eq!(home(json!({"user": {"uid": 7}})), json!(["HOME=/"]));
        assert_eq!(home(json!({"env": ["HOME=/x"]})), json!(["HOME=/x"]));
    }

    #[test]
    fn a_missing_cwd_is_made_and_a_file_in_the_way_is_runcs_error() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir(root.path().join("bin")).unwrap();
        fs::write(root.path().join("bin/busybox"), "").unwrap();
        std::os::unix::fs::symlink("/elsewhere", root.path().join("link")).unwrap();
        create_cwd(root.path(), Path::new("/no/such/dir")).unwrap();
        assert!(root.path().join("no/such/dir").is_dir());
        assert_eq!(
            create_cwd(root.path(), Path::new("/bin/busybox/x")).unwrap_err(),
            "mkdir /bin/busybox: not a directory"
        );
        create_cwd(root.path(), Path::new("/link/sub")).unwrap();
        assert!(!Path::new("/elsewhere").exists());
    }
}
