//! The process `runvm exec` runs, as runc builds it: from `--process`, or
//! the container's own process with the flags applied.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use oci_spec::runtime::{Capabilities, Capability, LinuxCapabilitiesBuilder, Process};

use super::{ExecError, ExecOptions};

/// `NET_ADMIN` or `CAP_NET_ADMIN`.
fn capability(name: &str) -> Result<Capability, ExecError> {
    let bare = name.strip_prefix("CAP_").unwrap_or(name);
    Capability::from_str(&bare.to_ascii_uppercase())
        .map_err(|_| ExecError::UnknownCapability(name.to_string()))
}

/// The process to run: from `--process`, or the container's own process
/// with the flags applied (runc's rules).
pub fn build_process(
    opts: &ExecOptions,
    container: Option<&Process>,
) -> Result<Process, ExecError> {
    let mut p = match &opts.process_file {
        Some(path) => read_process(path)?,
        None => with_flags(opts, container.cloned().unwrap_or_default())?,
    };
    if p.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(ExecError::NoArgs);
    }
    if p.cwd().as_os_str().is_empty() {
        p.set_cwd(PathBuf::from("/"));
    } else if !p.cwd().is_absolute() {
        return Err(ExecError::RelativeCwd(p.cwd().clone()));
    }
    Ok(p)
}

fn read_process(path: &Path) -> Result<Process, ExecError> {
    let data = std::fs::read(path).map_err(|source| ExecError::ReadProcess {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_slice(&data).map_err(|source| ExecError::ParseProcess {
        path: path.to_path_buf(),
        source,
    })
}

fn with_flags(opts: &ExecOptions, mut p: Process) -> Result<Process, ExecError> {
    p.set_args(Some(opts.args.clone()));
    p.set_terminal(Some(opts.tty));
    if let Some(cwd) = &opts.cwd {
        p.set_cwd(cwd.clone());
    }
    let mut env = p.env().clone().unwrap_or_default();
    for (k, v) in &opts.env {
        env.retain(|e| e.split_once('=').map(|(ek, _)| ek) != Some(k.as_str()));
        env.push(format!("{k}={v}"));
    }
    p.set_env(Some(env));
    let user = p.user_mut();
    if let Some((uid, gid)) = opts.user {
        // As runc: a uid alone keeps the container's gid.
        user.set_uid(uid);
        if let Some(gid) = gid {
            user.set_gid(gid);
        }
    }
    if !opts.additional_gids.is_empty() {
        user.set_additional_gids(Some(opts.additional_gids.clone()));
    }
    if !opts.caps.is_empty() {
        let added = opts
            .caps
            .iter()
            .map(|c| capability(c))
            .collect::<Result<Capabilities, _>>()?;
        // A process without capabilities gets only the added ones (not the
        // OCI crate's defaults).
        let mut caps = match p.capabilities() {
            Some(caps) => caps.clone(),
            None => LinuxCapabilitiesBuilder::default()
                .build()
                .expect("no field is required"),
        };
        let grow = |set: &Option<Capabilities>| {
            let mut set = set.clone().unwrap_or_default();
            set.extend(added.iter().copied());
            Some(set)
        };
        let bounding = grow(caps.bounding());
        let effective = grow(caps.effective());
        let permitted = grow(caps.permitted());
        let inheritable = grow(caps.inheritable());
        caps.set_bounding(bounding)
            .set_effective(effective)
            .set_permitted(permitted)
            .set_inheritable(inheritable);
        p.set_capabilities(Some(caps));
    }
    if opts.no_new_privs {
        p.set_no_new_privileges(Some(true));
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> Process {
        serde_json::from_value(json!({
            "args": ["sleep", "100"], "cwd": "/", "terminal": false,
            "env": ["PATH=/bin", "HOME=/root"],
            "user": {"uid": 0, "gid": 0},
            "capabilities": {"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"], "permitted": ["CAP_KILL"]}
        }))
        .unwrap()
    }

    fn names(set: &Option<Capabilities>) -> Vec<String> {
        let mut v: Vec<String> = set.iter().flatten().map(|c| c.to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn flags_apply_over_the_container_process() {
        let opts = ExecOptions {
            args: vec!["echo".into(), "hi".into()],
            tty: true,
            cwd: Some("/tmp".into()),
            env: vec![("HOME".into(), "/home/x".into()), ("A".into(), "1".into())],
            user: Some((1000, Some(100))),
            additional_gids: vec![5],
            caps: vec!["NET_ADMIN".into(), "CAP_SYS_TIME".into()],
            no_new_privs: true,
            ..Default::default()
        };
        let p = build_process(&opts, Some(&base())).unwrap();
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["args"], json!(["echo", "hi"]));
        assert_eq!(v["terminal"], true);
        assert_eq!(v["cwd"], "/tmp");
        assert_eq!(v["env"], json!(["PATH=/bin", "HOME=/home/x", "A=1"]));
        assert_eq!(
            v["user"],
            json!({"uid": 1000, "gid": 100, "additionalGids": [5]})
        );
        let caps = p.capabilities().as_ref().unwrap();
        assert_eq!(names(caps.bounding()), ["KILL", "NET_ADMIN", "SYS_TIME"]);
        assert_eq!(names(caps.inheritable()), ["NET_ADMIN", "SYS_TIME"]);
        assert_eq!(v["noNewPrivileges"], true);
    }

    #[test]
    fn a_uid_alone_keeps_the_containers_gid() {
        let mut b = base();
        b.user_mut().set_gid(42);
        let opts = ExecOptions {
            args: vec!["id".into()],
            user: Some((7, None)),
            ..Default::default()
        };
        let p = build_process(&opts, Some(&b)).unwrap();
        assert_eq!((p.user().uid(), p.user().gid()), (7, 42));
    }

    #[test]
    fn bad_exec_input() {
        let err = build_process(&ExecOptions::default(), Some(&base())).unwrap_err();
        assert_eq!(err.to_string(), "args must not be empty");
        let opts = ExecOptions {
            args: vec!["ls".into()],
            cwd: Some("rel".into()),
            ..Default::default()
        };
        assert!(matches!(
            build_process(&opts, Some(&base())),
            Err(ExecError::RelativeCwd(_))
        ));
        let opts = ExecOptions {
            args: vec!["ls".into()],
            caps: vec!["CAP_FLY".into()],
            ..Default::default()
        };
        assert_eq!(
            build_process(&opts, Some(&base())).unwrap_err().to_string(),
            "unknown capability \"CAP_FLY\""
        );

        let tmp = tempfile::tempdir().unwrap();
        let missing = ExecOptions {
            process_file: Some(tmp.path().join("none.json")),
            ..Default::default()
        };
        assert!(matches!(
            build_process(&missing, Some(&base())),
            Err(ExecError::ReadProcess { .. })
        ));
        let bad = tmp.path().join("bad.json");
        std::fs::write(&bad, r#"{"args": "sh"}"#).unwrap();
        let invalid = ExecOptions {
            process_file: Some(bad),
            ..Default::default()
        };
        assert!(matches!(
            build_process(&invalid, Some(&base())),
            Err(ExecError::ParseProcess { .. })
        ));
    }

    #[test]
    fn a_process_file_is_taken_as_is() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("p.json");
        std::fs::write(
            &f,
            r#"{"args": ["id"], "cwd": "/", "user": {"uid": 7, "gid": 7}}"#,
        )
        .unwrap();
        let opts = ExecOptions {
            process_file: Some(f),
            args: vec!["ignored".into()],
            ..Default::default()
        };
        let p = build_process(&opts, Some(&base())).unwrap();
        assert_eq!(p.args().as_deref(), Some(&["id".to_string()][..]));
        assert_eq!(p.user().uid(), 7);
    }
}
