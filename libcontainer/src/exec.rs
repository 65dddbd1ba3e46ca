//! `runvm exec`: the process description runc would build, and the stand-in
//! on the host that represents the process in the guest. The stand-in hands
//! its stdio to the container's shim, forwards the signals it receives, and
//! exits with the process's exit code; with `--detach` it is forked off and
//! its pid goes in `--pid-file`, so containerd and conmon reap it.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::unistd::{fork, ForkResult};
use serde_json::{json, Value};

use crate::shim::control::{self, ControlError, ShimReply, ShimRequest, ShimResponse};
use crate::state::write_atomic;
use crate::terminal::{self, RawMode, TerminalError};

/// runc's `exec` flags.
#[derive(Debug, Clone, Default)]
pub struct ExecOptions {
    pub id: String,
    pub process_file: Option<PathBuf>,
    pub args: Vec<String>,
    pub tty: bool,
    pub console_socket: Option<PathBuf>,
    pub cwd: Option<PathBuf>,
    pub env: Vec<(String, String)>,
    pub user: Option<(u32, Option<u32>)>,
    pub additional_gids: Vec<u32>,
    pub caps: Vec<String>,
    pub no_new_privs: bool,
    pub detach: bool,
    pub pid_file: Option<PathBuf>,
    pub ignore_paused: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("read {path}")]
    ReadProcess { path: PathBuf, source: io::Error },
    #[error("parse {path}")]
    ParseProcess {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("args must not be empty")]
    NoArgs,
    #[error("cwd {0} must be an absolute path")]
    RelativeCwd(PathBuf),
    #[error("cannot allocate tty if runvm will detach without setting console socket")]
    TerminalWithoutConsole,
    #[error("cannot use console socket if runvm will not detach or allocate tty")]
    ConsoleWithoutTerminal,
    #[error(transparent)]
    Terminal(#[from] TerminalError),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("the shim ended the exec session without an exit status")]
    SessionLost,
    #[error("start the exec stand-in")]
    Fork(#[source] nix::Error),
    #[error("the exec stand-in exited before the process started")]
    StandInVanished,
    #[error("write pid file")]
    PidFile(#[source] crate::state::StateError),
    #[error("signals")]
    Signals(#[source] nix::Error),
}

/// The process to run: from `--process`, or the container's own process
/// with the flags applied (runc's rules).
pub fn build_process(opts: &ExecOptions, container_process: &Value) -> Result<Value, ExecError> {
    let mut p = match &opts.process_file {
        Some(path) => {
            let data = std::fs::read(path).map_err(|source| ExecError::ReadProcess {
                path: path.clone(),
                source,
            })?;
            let value: Value =
                serde_json::from_slice(&data).map_err(|source| ExecError::ParseProcess {
                    path: path.clone(),
                    source,
                })?;
            // It must be an OCI process object.
            serde_json::from_value::<oci_spec::runtime::Process>(value.clone()).map_err(
                |source| ExecError::ParseProcess {
                    path: path.clone(),
                    source,
                },
            )?;
            value
        }
        None => {
            let mut p = container_process.clone();
            p["args"] = json!(opts.args);
            p["terminal"] = json!(opts.tty);
            if let Some(cwd) = &opts.cwd {
                p["cwd"] = json!(cwd);
            }
            let mut env: Vec<String> = p["env"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            for (k, v) in &opts.env {
                env.retain(|e| e.split_once('=').map(|(ek, _)| ek) != Some(k.as_str()));
                env.push(format!("{k}={v}"));
            }
            p["env"] = json!(env);
            if let Some((uid, gid)) = opts.user {
                // As runc: a uid alone keeps the container's gid.
                p["user"]["uid"] = json!(uid);
                if let Some(gid) = gid {
                    p["user"]["gid"] = json!(gid);
                }
            }
            if !opts.additional_gids.is_empty() {
                p["user"]["additionalGids"] = json!(opts.additional_gids);
            }
            for set in ["bounding", "effective", "permitted", "inheritable"] {
                for cap in &opts.caps {
                    let cap = if cap.starts_with("CAP_") {
                        cap.clone()
                    } else {
                        format!("CAP_{cap}")
                    };
                    let list = p["capabilities"][set].as_array_mut();
                    match list {
                        Some(list) if !list.iter().any(|c| c == &json!(cap)) => {
                            list.push(json!(cap))
                        }
                        Some(_) => {}
                        None => p["capabilities"][set] = json!([cap]),
                    }
                }
            }
            if opts.no_new_privs {
                p["noNewPrivileges"] = json!(true);
            }
            p
        }
    };
    if p["args"].as_array().is_none_or(|a| a.is_empty()) {
        return Err(ExecError::NoArgs);
    }
    match p["cwd"].as_str() {
        Some(cwd) if Path::new(cwd).is_absolute() => {}
        None => p["cwd"] = json!("/"),
        Some(cwd) => return Err(ExecError::RelativeCwd(cwd.into())),
    }
    Ok(p)
}

fn terminal_of(process: &Value) -> bool {
    process["terminal"].as_bool().unwrap_or(false)
}

/// The stdio the stand-in hands to the shim, and the tty whose size the
/// process's terminal follows.
struct StandInStdio {
    fds: [OwnedFd; 3],
    resize_source: Option<OwnedFd>,
    _raw: Option<RawMode>,
}

fn own_fd(fd: impl AsFd) -> io::Result<OwnedFd> {
    fd.as_fd().try_clone_to_owned()
}

fn stand_in_stdio(
    terminal: bool,
    console_socket: Option<&Path>,
) -> Result<StandInStdio, ExecError> {
    let io_err = |e: io::Error| ExecError::Control(ControlError::Io(e));
    if !terminal {
        let fds = [
            own_fd(io::stdin()),
            own_fd(io::stdout()),
            own_fd(io::stderr()),
        ];
        let [a, b, c] = fds;
        return Ok(StandInStdio {
            fds: [a.map_err(io_err)?, b.map_err(io_err)?, c.map_err(io_err)?],
            resize_source: None,
            _raw: None,
        });
    }
    match console_socket {
        Some(path) => {
            let pty = terminal::open_pty()?;
            terminal::send_to_console_socket(path, pty.master.as_fd())?;
            // Lead a session with the pty as its terminal: resizes by the
            // holder of the master arrive as SIGWINCH.
            let _ = nix::unistd::setsid();
            let _ = terminal::set_controlling(pty.slave.as_fd());
            let dup = || pty.slave.try_clone().map_err(io_err);
            Ok(StandInStdio {
                fds: [dup()?, dup()?, dup()?],
                resize_source: Some(dup()?),
                _raw: None,
            })
        }
        None => {
            // The caller's own terminal, raw while the process runs.
            let raw = RawMode::enter(io::stdin().as_fd());
            let tty = own_fd(io::stdin()).map_err(io_err)?;
            let out = own_fd(io::stdout()).map_err(io_err)?;
            Ok(StandInStdio {
                fds: [
                    tty.try_clone().map_err(io_err)?,
                    out.try_clone().map_err(io_err)?,
                    out,
                ],
                resize_source: Some(tty),
                _raw: raw,
            })
        }
    }
}

/// Start the exec session with the shim; returns the connection and the
/// process's pid in the guest.
fn start_session(
    state_dir: &Path,
    exec_id: &str,
    process: &Value,
    fds: &[OwnedFd; 3],
    timeout: Duration,
) -> Result<(UnixStream, i32), ExecError> {
    let raw = [fds[0].as_raw_fd(), fds[1].as_raw_fd(), fds[2].as_raw_fd()];
    let mut stream = control::connect(state_dir, Some(raw))?;
    let io = |e| ExecError::Control(ControlError::Io(e));
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    let req = ShimRequest::Exec {
        exec_id: exec_id.to_string(),
        process: process.clone(),
    };
    runvm_protocol::send(&mut stream, &req).map_err(ControlError::from)?;
    let resp: ShimResponse = runvm_protocol::recv(&mut stream).map_err(|e| match e {
        runvm_protocol::FrameError::Read(ref io)
            if matches!(
                io.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            ControlError::Timeout(timeout)
        }
        e => ControlError::from(e),
    })?;
    // From now on the session lasts as long as the process does.
    stream.set_read_timeout(None).map_err(io)?;
    match resp.map_err(ControlError::Shim)? {
        ShimReply::ExecStarted { guest_pid } => Ok((stream, guest_pid)),
        other => Err(ControlError::Shim(format!("unexpected reply {other:?}")).into()),
    }
}

/// Forward signals and window sizes until the shim reports the exit code.
fn relay_until_exit(
    mut stream: UnixStream,
    resize_source: Option<&OwnedFd>,
    signals: &mut SignalFd,
) -> Result<i32, ExecError> {
    let send = |stream: &mut UnixStream, req: &ShimRequest| {
        let _ = runvm_protocol::send(stream, req);
    };
    if let Some((rows, cols)) = resize_source.and_then(|t| terminal::window_size(t.as_fd())) {
        send(&mut stream, &ShimRequest::ExecResize { rows, cols });
    }
    loop {
        let (sock_ready, sig_ready) = {
            let mut fds = [
                PollFd::new(stream.as_fd(), PollFlags::POLLIN),
                PollFd::new(signals.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(ExecError::Signals(e)),
            }
            let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
            (ready(&fds[0]), ready(&fds[1]))
        };
        if sig_ready {
            if let Ok(Some(info)) = signals.read_signal() {
                let sig = info.ssi_signo as i32;
                if sig == libc::SIGWINCH && resize_source.is_some() {
                    if let Some((rows, cols)) =
                        resize_source.and_then(|t| terminal::window_size(t.as_fd()))
                    {
                        send(&mut stream, &ShimRequest::ExecResize { rows, cols });
                    }
                } else if sig != libc::SIGCHLD {
                    send(&mut stream, &ShimRequest::ExecSignal { signal: sig });
                }
            }
        }
        if sock_ready {
            return match runvm_protocol::recv::<_, ShimResponse>(&mut stream) {
                Ok(Ok(ShimReply::ExecExited { code })) => Ok(code),
                Ok(Err(msg)) => Err(ControlError::Shim(msg).into()),
                _ => Err(ExecError::SessionLost),
            };
        }
    }
}

/// Catch the signals to forward in a signalfd (blocked, so none is lost
/// before the loop reads them).
fn signal_fd() -> Result<SignalFd, ExecError> {
    let mut mask = SigSet::empty();
    for sig in crate::signal::forwardable() {
        if let Ok(s) = Signal::try_from(sig) {
            mask.add(s);
        }
    }
    mask.thread_block().map_err(ExecError::Signals)?;
    SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC).map_err(ExecError::Signals)
}

/// A fresh exec id, unique enough within one container.
pub fn new_exec_id() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("exec-{}-{}", std::process::id(), now.as_nanos())
}

/// Run the exec in the foreground, as its own stand-in: writes its own pid
/// to `pid_file` once the process runs (as runc does without --detach) and
/// returns the process's exit code.
pub fn run_attached(
    state_dir: &Path,
    process: &Value,
    pid_file: Option<&Path>,
    timeout: Duration,
) -> Result<i32, ExecError> {
    let mut signals = signal_fd()?;
    let stdio = stand_in_stdio(terminal_of(process), None)?;
    let (mut stream, _pid) =
        start_session(state_dir, &new_exec_id(), process, &stdio.fds, timeout)?;
    drop(stdio.fds);
    write_own_pid(pid_file, &mut stream)?;
    relay_until_exit(stream, stdio.resize_source.as_ref(), &mut signals)
}

/// Write this process's pid to `pid_file`, if there is one, with no trailing
/// newline (containerd parses it with Atoi). If that fails, the session's
/// process is killed: nothing may run that the caller cannot reap.
fn write_own_pid(pid_file: Option<&Path>, stream: &mut UnixStream) -> Result<(), ExecError> {
    let Some(pid_file) = pid_file else {
        return Ok(());
    };
    let written = write_atomic(pid_file, std::process::id().to_string().as_bytes());
    written.map_err(|e| {
        kill_session(stream);
        ExecError::PidFile(e)
    })
}

/// Kill the session's process: it must not run on when its exec failed.
fn kill_session(stream: &mut UnixStream) {
    let _ = runvm_protocol::send(
        stream,
        &ShimRequest::ExecSignal {
            signal: libc::SIGKILL,
        },
    );
    // Wait for the exit report, so the process is gone when we return.
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = runvm_protocol::recv::<_, ShimResponse>(stream);
}

/// Fork the stand-in, wait until the process runs in the guest, write the
/// stand-in's pid to `pid_file`, and return. The stand-in lives on.
pub fn run_detached(
    state_dir: &Path,
    process: &Value,
    console_socket: Option<&Path>,
    pid_file: Option<&Path>,
    timeout: Duration,
) -> Result<i32, ExecError> {
    let terminal = terminal_of(process);
    if terminal && console_socket.is_none() {
        return Err(ExecError::TerminalWithoutConsole);
    }
    if !terminal && console_socket.is_some() {
        return Err(ExecError::ConsoleWithoutTerminal);
    }
    if let Some(path) = console_socket {
        terminal::check_console_socket(path)?;
    }
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(ExecError::Fork)?;
    // SAFETY: the CLI is single-threaded, so the child may run ordinary code.
    match unsafe { fork() }.map_err(ExecError::Fork)? {
        ForkResult::Child => {
            drop(r);
            let code = stand_in(state_dir, process, console_socket, pid_file, w, timeout);
            std::process::exit(code)
        }
        ForkResult::Parent { child } => {
            drop(w);
            let mut r = File::from(r);
            let report: Result<Result<i32, String>, _> = runvm_protocol::recv(&mut r);
            match report {
                Ok(Ok(_guest_pid)) => Ok(child.as_raw()),
                Ok(Err(msg)) => {
                    let _ = nix::sys::wait::waitpid(child, None);
                    Err(ControlError::Shim(msg).into())
                }
                Err(_) => {
                    let _ = nix::sys::wait::waitpid(child, None);
                    Err(ExecError::StandInVanished)
                }
            }
        }
    }
}

/// The detached stand-in: once the process runs, write its own pid to
/// `pid_file` and report the start (or the failure) on `ready`; then wait
/// for the exit code and return it.
fn stand_in(
    state_dir: &Path,
    process: &Value,
    console_socket: Option<&Path>,
    pid_file: Option<&Path>,
    ready: OwnedFd,
    timeout: Duration,
) -> i32 {
    let mut ready = File::from(ready);
    let _ = nix::unistd::setsid();
    let started = signal_fd().and_then(|signals| {
        let stdio = stand_in_stdio(terminal_of(process), console_socket)?;
        let (mut stream, pid) =
            start_session(state_dir, &new_exec_id(), process, &stdio.fds, timeout)?;
        write_own_pid(pid_file, &mut stream)?;
        Ok((signals, stdio, stream, pid))
    });
    let (mut signals, stdio, stream, pid) = match started {
        Ok(s) => s,
        Err(e) => {
            let report: Result<i32, String> = Err(crate::error_chain(&e));
            let _ = runvm_protocol::send(&mut ready, &report);
            return 255;
        }
    };
    let report: Result<i32, String> = Ok(pid);
    let _ = runvm_protocol::send(&mut ready, &report);
    let _ = ready.flush();
    drop(ready);
    // The shim holds the stdio now; let go of ours so the caller's pipes
    // close when the process's do.
    drop(stdio.fds);
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        for fd in 0..3 {
            let _ = nix::unistd::dup2(null.as_raw_fd(), fd);
        }
    }
    relay_until_exit(stream, stdio.resize_source.as_ref(), &mut signals).unwrap_or(255)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Value {
        json!({
            "args": ["sleep", "100"], "cwd": "/", "terminal": false,
            "env": ["PATH=/bin", "HOME=/root"],
            "user": {"uid": 0, "gid": 0},
            "capabilities": {"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"], "permitted": ["CAP_KILL"]}
        })
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
            caps: vec!["NET_ADMIN".into()],
            no_new_privs: true,
            ..Default::default()
        };
        let p = build_process(&opts, &base()).unwrap();
        assert_eq!(p["args"], json!(["echo", "hi"]));
        assert_eq!(p["terminal"], true);
        assert_eq!(p["cwd"], "/tmp");
        assert_eq!(p["env"], json!(["PATH=/bin", "HOME=/home/x", "A=1"]));
        assert_eq!(
            p["user"],
            json!({"uid": 1000, "gid": 100, "additionalGids": [5]})
        );
        assert_eq!(
            p["capabilities"]["bounding"],
            json!(["CAP_KILL", "CAP_NET_ADMIN"])
        );
        assert_eq!(p["capabilities"]["inheritable"], json!(["CAP_NET_ADMIN"]));
        assert_eq!(p["noNewPrivileges"], true);
    }

    #[test]
    fn bad_exec_input() {
        let err = build_process(&ExecOptions::default(), &base()).unwrap_err();
        assert_eq!(err.to_string(), "args must not be empty");
        let opts = ExecOptions {
            args: vec!["ls".into()],
            cwd: Some("rel".into()),
            ..Default::default()
        };
        assert!(matches!(
            build_process(&opts, &base()),
            Err(ExecError::RelativeCwd(_))
        ));

        let tmp = tempfile::tempdir().unwrap();
        let missing = ExecOptions {
            process_file: Some(tmp.path().join("none.json")),
            ..Default::default()
        };
        assert!(matches!(
            build_process(&missing, &base()),
            Err(ExecError::ReadProcess { .. })
        ));
        let bad = tmp.path().join("bad.json");
        std::fs::write(&bad, r#"{"args": "sh"}"#).unwrap();
        let invalid = ExecOptions {
            process_file: Some(bad),
            ..Default::default()
        };
        assert!(matches!(
            build_process(&invalid, &base()),
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
        let p = build_process(&opts, &base()).unwrap();
        assert_eq!(p["args"], json!(["id"]));
        assert_eq!(p["user"]["uid"], 7);
    }
}
