//! OCI hooks, run as runc runs them.
//!
//! `prestart` and `createRuntime` run in the shim during create, after it has
//! entered the container's network namespace and before the VM's NICs are
//! read from it (Docker configures that namespace in a prestart hook), but in
//! the host's mount and network namespaces: the runtime's, as the spec says.
//! `poststart` runs in `start`, `poststop` in `delete` (and when a create
//! fails, as runc does). `createContainer` and `startContainer` belong to the
//! container's namespaces, which are in the guest: those whose path is in
//! the rootfs go to the guest, where youki runs them ([`for_the_guest`]).
//!
//! Each hook gets the container's state on stdin, its `args` (the first is
//! argv[0]) and its `env` (the runtime's environment when it has none, as
//! with runc), runs in the bundle directory in a process group of its own,
//! and is killed with the whole group when its `timeout` runs out.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use oci_spec::runtime::{Hook, Hooks};
use serde::Serialize;
use serde_json::Value;
use slog::{warn, Logger};

use crate::state::State;
use crate::status::ContainerStatus;

/// How long a hook's output may stay open after the hook has exited (a
/// daemon it started may hold it): what was read by then is reported.
const OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// The kinds of hook, in the spec's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Prestart,
    CreateRuntime,
    CreateContainer,
    StartContainer,
    Poststart,
    Poststop,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Prestart => "prestart",
            Kind::CreateRuntime => "createRuntime",
            Kind::CreateContainer => "createContainer",
            Kind::StartContainer => "startContainer",
            Kind::Poststart => "poststart",
            Kind::Poststop => "poststop",
        }
    }

    /// The hooks of this kind in `hooks`.
    #[allow(deprecated)] // prestart: deprecated by the spec, used by Docker
    pub fn of(self, hooks: &Hooks) -> &[Hook] {
        let list = match self {
            Kind::Prestart => hooks.prestart(),
            Kind::CreateRuntime => hooks.create_runtime(),
            Kind::CreateContainer => hooks.create_container(),
            Kind::StartContainer => hooks.start_container(),
            Kind::Poststart => hooks.poststart(),
            Kind::Poststop => hooks.poststop(),
        };
        list.as_deref().unwrap_or_default()
    }
}

/// The state a hook reads on stdin: the OCI state (`pid` only while there
/// is a process, as runc leaves it out once stopped).
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HookState {
    pub oci_version: String,
    pub id: String,
    pub status: ContainerStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    pub bundle: PathBuf,
    #[serde(skip_serializing_if = "std::collections::HashMap::is_empty")]
    pub annotations: std::collections::HashMap<String, String>,
}

impl HookState {
    pub fn of(state: &State, status: ContainerStatus, pid: Option<i32>) -> Self {
        HookState {
            oci_version: state.oci_version.clone(),
            id: state.id.clone(),
            status,
            pid,
            bundle: state.bundle.clone(),
            annotations: state.annotations.clone(),
        }
    }
}

/// A hook that failed, in runc's words: `error running hook #0: ...`.
#[derive(Debug, thiserror::Error)]
#[error("error running hook #{index}")]
pub struct HookError {
    pub index: usize,
    #[source]
    pub failure: Failure,
}

#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("fork/exec {path}")]
    Spawn { path: PathBuf, source: io::Error },
    #[error("error running hook: {status}, stdout: {stdout}, stderr: {stderr}")]
    Status {
        status: String,
        stdout: String,
        stderr: String,
    },
    #[error("hook ran past specified timeout of {seconds:.1}s")]
    Timeout { seconds: f64 },
    #[error("wait for the hook")]
    Wait(#[source] io::Error),
}

/// The namespaces hooks run in when the caller has left them (the shim is in
/// the container's network, uts, ipc and cgroup namespaces and a mount
/// namespace of its own): opened before it leaves.
#[derive(Debug)]
pub struct Namespaces {
    /// Each with its setns type; the mount namespace first (after it, the
    /// others are still found by descriptor).
    fds: [(OwnedFd, libc::c_int); 5],
}

impl Namespaces {
    /// This process's mount, network, uts, ipc and cgroup namespaces.
    pub fn of_this_process() -> io::Result<Self> {
        let open = |ns: &str| File::open(format!("/proc/self/ns/{ns}")).map(OwnedFd::from);
        Ok(Namespaces {
            fds: [
                (open("mnt")?, libc::CLONE_NEWNS),
                (open("net")?, libc::CLONE_NEWNET),
                (open("uts")?, libc::CLONE_NEWUTS),
                (open("ipc")?, libc::CLONE_NEWIPC),
                (open("cgroup")?, libc::CLONE_NEWCGROUP),
            ],
        })
    }
}

/// Where hooks run: the bundle directory, in `namespaces` if given (else the
/// caller's).
pub struct Place<'a> {
    pub bundle: &'a Path,
    pub namespaces: Option<&'a Namespaces>,
}

/// Run the hooks of `kind` in order; the first that fails stops the rest
/// (create-time hooks: the create fails).
pub fn run(kind: Kind, hooks: &Hooks, state: &HookState, place: &Place) -> Result<(), HookError> {
    let input = serde_json::to_vec(state).expect("the state serializes");
    for (index, hook) in kind.of(hooks).iter().enumerate() {
        run_one(hook, &input, place).map_err(|failure| HookError { index, failure })?;
    }
    Ok(())
}

/// Run the hooks of `kind`, each whatever the one before did, with a
/// warning for each that fails (poststart, poststop: the spec has the
/// lifecycle go on).
pub fn run_warning(kind: Kind, hooks: &Hooks, state: &HookState, place: &Place, log: &Logger) {
    let input = serde_json::to_vec(state).expect("the state serializes");
    for (index, hook) in kind.of(hooks).iter().enumerate() {
        if let Err(failure) = run_one(hook, &input, place) {
            let e = HookError { index, failure };
            warn!(log, "{}", crate::error_chain(&e); "hook" => kind.name(), "id" => &state.id);
        }
    }
}

fn run_one(hook: &Hook, input: &[u8], place: &Place) -> Result<(), Failure> {
    let path = hook.path();
    let mut cmd = Command::new(path);
    match hook.args().as_deref().and_then(|a| a.split_first()) {
        Some((arg0, rest)) => cmd.arg0(arg0).args(rest),
        None => cmd.arg0(path),
    };
    if let Some(env) = hook.env() {
        cmd.env_clear();
        for entry in env {
            let (k, v) = entry.split_once('=').unwrap_or((entry, ""));
            cmd.env(k, v);
        }
    }
    // The state is a file, not a pipe: a hook that exits without reading
    // it is no SIGPIPE for the runtime.
    cmd.stdin(state_file(input).map_err(|source| Failure::Spawn {
        path: path.clone(),
        source,
    })?)
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .process_group(0);
    let cwd = CString::new(place.bundle.as_os_str().as_bytes()).map_err(|_| Failure::Spawn {
        path: path.clone(),
        source: io::ErrorKind::InvalidInput.into(),
    })?;
    let namespaces = place
        .namespaces
        .map(|n| n.fds.each_ref().map(|(fd, typ)| (fd.as_raw_fd(), *typ)));
    // SAFETY: between fork and exec the closure calls only async-signal-safe
    // functions (sigemptyset, sigprocmask, prctl, setns, chdir) on memory it owns
    // (the copied descriptors and path).
    unsafe {
        cmd.pre_exec(move || {
            // The shim blocks the signals it forwards; a hook must not
            // inherit that.
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            if libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
            // A runtime killed while a hook runs (a create ended by kill or
            // delete) takes the hook with it.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            for (fd, typ) in namespaces.iter().flatten() {
                if libc::setns(*fd, *typ) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            // After setns: entering a mount namespace moves to its root.
            if libc::chdir(cwd.as_ptr()) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|source| Failure::Spawn {
        path: path.clone(),
        source,
    })?;
    let pgid = child.id() as i32;
    let (out_tx, out_rx) = mpsc::channel();
    for (n, pipe) in [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .enumerate()
    {
        let tx = out_tx.clone();
        let mut pipe = pipe.expect("piped");
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            let _ = tx.send((n, buf));
        });
    }
    let (exit_tx, exit_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = exit_tx.send(child.wait());
    });
    let exited = match hook.timeout() {
        Some(t) => {
            let limit = Duration::from_secs(t.max(0) as u64);
            match exit_rx.recv_timeout(limit) {
                Ok(r) => r,
                Err(_) => {
                    // The hook and whatever it started.
                    // SAFETY: kill(2) on the hook's own process group.
                    unsafe { libc::kill(-pgid, libc::SIGKILL) };
                    let _ = exit_rx.recv();
                    return Err(Failure::Timeout {
                        seconds: limit.as_secs_f64(),
                    });
                }
            }
        }
        None => exit_rx
            .recv()
            .unwrap_or_else(|_| Err(io::ErrorKind::Other.into())),
    };
    let status = exited.map_err(Failure::Wait)?;
    if status.success() {
        return Ok(());
    }
    let mut output = [Vec::new(), Vec::new()];
    let deadline = std::time::Instant::now() + OUTPUT_GRACE;
    for _ in 0..2 {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match out_rx.recv_timeout(left) {
            Ok((n, buf)) => output[n] = buf,
            Err(_) => break,
        }
    }
    Err(Failure::Status {
        status: go_status(status),
        stdout: String::from_utf8_lossy(&output[0]).into_owned(),
        stderr: String::from_utf8_lossy(&output[1]).into_owned(),
    })
}

/// A file holding `data`, read from its start.
fn state_file(data: &[u8]) -> io::Result<File> {
    // SAFETY: memfd_create with a NUL-terminated name; the result is checked
    // and owned below.
    let fd = unsafe { libc::memfd_create(c"runvm-hook-state".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor that nothing else owns.
    let mut file = unsafe { File::from(OwnedFd::from_raw_fd(fd)) };
    file.write_all(data)?;
    file.seek(io::SeekFrom::Start(0))?;
    Ok(file)
}

/// An exit status as Go's os/exec prints it (runc's hook errors).
fn go_status(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exit status {code}");
    }
    let sig = status.signal().unwrap_or(0);
    let name = match sig {
        libc::SIGHUP => "hangup".to_string(),
        libc::SIGINT => "interrupt".to_string(),
        libc::SIGQUIT => "quit".to_string(),
        libc::SIGABRT => "aborted".to_string(),
        libc::SIGKILL => "killed".to_string(),
        libc::SIGSEGV => "segmentation fault".to_string(),
        libc::SIGPIPE => "broken pipe".to_string(),
        libc::SIGTERM => "terminated".to_string(),
        n => format!("signal {n}"),
    };
    format!("signal: {name}")
}

/// The spec's hooks for the guest, from the `hooks` of config.json: the
/// createContainer and startContainer hooks whose path is in `rootfs` (the
/// guest sees nothing else of the host). A createContainer hook's path is
/// looked up before the container's root is entered, so it becomes a path
/// in the share; a startContainer hook's is looked up in the container and
/// stays. Returns the hooks and the ones left out.
pub fn for_the_guest(raw: &Value, rootfs: &Path) -> (Value, Vec<(Kind, PathBuf)>) {
    let mut kept = serde_json::Map::new();
    let mut left_out = Vec::new();
    let all = raw.get("hooks").and_then(Value::as_object);
    for kind in [Kind::CreateContainer, Kind::StartContainer] {
        let Some(list) = all
            .and_then(|h| h.get(kind.name()))
            .and_then(Value::as_array)
        else {
            continue;
        };
        let mut guest = Vec::new();
        for hook in list {
            let Some(path) = hook.get("path").and_then(Value::as_str) else {
                continue;
            };
            let rel = path.trim_start_matches('/');
            if rel.is_empty() || !rootfs.join(rel).is_file() {
                left_out.push((kind, PathBuf::from(path)));
                continue;
            }
            let mut hook = hook.clone();
            if kind == Kind::CreateContainer {
                hook["path"] = Value::String(format!(
                    "{}{}/{rel}",
                    runvm_protocol::SHARE_SOURCE_PREFIX,
                    runvm_protocol::SHARE_ROOTFS
                ));
            }
            guest.push(hook);
        }
        if !guest.is_empty() {
            kept.insert(kind.name().to_string(), Value::Array(guest));
        }
    }
    (Value::Object(kept), left_out)
}

/// The hooks of the spec a container was created with (its copy in the
/// state directory), if it has any that can be read.
pub fn of_spec_file(path: &Path) -> Option<Hooks> {
    let data = std::fs::read(path).ok()?;
    let spec: oci_spec::runtime::Spec = serde_json::from_slice(&data).ok()?;
    spec.hooks().clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn hooks(v: Value) -> Hooks {
        serde_json::from_value(v).unwrap()
    }

    fn state() -> HookState {
        HookState {
            oci_version: "1.0.2".into(),
            id: "c1".into(),
            status: ContainerStatus::Creating,
            pid: Some(42),
            bundle: PathBuf::from("/tmp"),
            annotations: Default::default(),
        }
    }

    fn place() -> Place<'static> {
        Place {
            bundle: Path::new("/tmp"),
            namespaces: None,
        }
    }

    #[test]
    fn state_on_stdin_args_env_and_cwd() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        let script = format!(
            "cat > {o}; echo; tr '\\0' ' ' < /proc/$$/cmdline; echo; echo \"$FOO $(pwd)\"; env | grep -c .",
            o = out.display()
        );
        let h = hooks(json!({"prestart": [{
            "path": "/bin/sh",
            "args": ["my-hook", "-c", format!("({script}) >> {}", out.display())],
            "env": ["FOO=bar"]
        }]}));
        run(Kind::Prestart, &h, &state(), &place()).unwrap();
        let got = std::fs::read_to_string(&out).unwrap();
        let lines: Vec<&str> = got.lines().collect();
        assert_eq!(
            lines[0],
            r#"{"ociVersion":"1.0.2","id":"c1","status":"creating","pid":42,"bundle":"/tmp"}"#
        );
        assert!(lines[1].starts_with("my-hook -c "), "{}", lines[1]);
        assert_eq!(lines[2], "bar /tmp");
        // FOO and the PWD sh sets: the environment is the hook's only.
        assert_eq!(lines[3], "2");
    }

    #[test]
    fn a_stopped_state_has_no_pid() {
        let mut s = state();
        s.status = ContainerStatus::Stopped;
        s.pid = None;
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"ociVersion":"1.0.2","id":"c1","status":"stopped","bundle":"/tmp"}"#
        );
    }

    #[test]
    fn failures_in_runcs_words() {
        let h = hooks(json!({"createRuntime": [
            {"path": "/bin/true"},
            {"path": "/bin/sh", "args": ["sh", "-c", "echo out; echo err >&2; exit 3"]}
        ]}));
        let e = run(Kind::CreateRuntime, &h, &state(), &place()).unwrap_err();
        assert_eq!(e.index, 1);
        assert_eq!(
            crate::error_chain(&e),
            "error running hook #1: error running hook: exit status 3, stdout: out\n, stderr: err\n"
        );
        let h = hooks(json!({"prestart": [{"path": "/nonexistent/hook"}]}));
        let e = run(Kind::Prestart, &h, &state(), &place()).unwrap_err();
        assert!(
            crate::error_chain(&e)
                .starts_with("error running hook #0: fork/exec /nonexistent/hook: No such file"),
            "{}",
            crate::error_chain(&e)
        );
        let h =
            hooks(json!({"prestart": [{"path": "/bin/sh", "args": ["sh", "-c", "kill -9 $$"]}]}));
        let e = run(Kind::Prestart, &h, &state(), &place()).unwrap_err();
        assert!(crate::error_chain(&e)
            .contains("error running hook: signal: killed, stdout: , stderr: "));
    }

    #[test]
    fn a_timeout_kills_the_hook_and_what_it_started() {
        let tmp = tempfile::tempdir().unwrap();
        let pidfile = tmp.path().join("pid");
        // The hook's child holds its stdout: killing the hook alone would
        // leave the child and the pipe.
        let script = format!("sleep 1000 & echo $! > {}; wait", pidfile.display());
        let h = hooks(
            json!({"prestart": [{"path": "/bin/sh", "args": ["sh", "-c", script], "timeout": 1}]}),
        );
        let e = run(Kind::Prestart, &h, &state(), &place()).unwrap_err();
        assert_eq!(
            crate::error_chain(&e),
            "error running hook #0: hook ran past specified timeout of 1.0s"
        );
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // Killed with the hook: gone (or a zombie until init reaps it)
        // soon; a process left running would stay so.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat.rsplit(") ").next().unwrap_or("").chars().next();
            if stat.is_empty() || state == Some('Z') {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "still running: {stat}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn only_in_guest_hooks_in_the_rootfs_go_to_the_guest() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("bin")).unwrap();
        std::fs::write(tmp.path().join("bin/hook"), "").unwrap();
        let raw = json!({"hooks": {
            "prestart": [{"path": "/bin/hook"}],
            "createContainer": [{"path": "/bin/hook", "args": ["hook", "a"]}, {"path": "/usr/bin/host-only"}],
            "startContainer": [{"path": "/bin/hook", "timeout": 3}],
            "poststop": [{"path": "/bin/hook"}]
        }});
        let (guest, left_out) = for_the_guest(&raw, tmp.path());
        assert_eq!(
            guest,
            json!({
                "createContainer": [{"path": "runvm-share:rootfs/bin/hook", "args": ["hook", "a"]}],
                "startContainer": [{"path": "/bin/hook", "timeout": 3}]
            })
        );
        assert_eq!(
            left_out,
            vec![(Kind::CreateContainer, PathBuf::from("/usr/bin/host-only"))]
        );
    }
}
