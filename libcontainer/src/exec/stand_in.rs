//! The exec stand-in: the host process that stands for a process in the
//! guest. In the foreground it is `runvm exec` itself; with `--detach` a
//! forked child, which reports the start to its parent on a pipe.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use nix::unistd::{fork, ForkResult};
use oci_spec::runtime::Process;
use serde::{Deserialize, Serialize};

use super::ExecError;
use crate::control::{self, ControlError, Exec, ExecControl, ExecExited, ShimFailure};
use crate::signal::Forwarder;
use crate::state::write_atomic;
use crate::terminal::{self, RawMode};

/// An exec to run, and where.
pub struct Session<'a> {
    /// The container's state directory (its shim's socket is there).
    pub state_dir: &'a Path,
    pub process: &'a Process,
    pub ignore_paused: bool,
    pub pid_file: Option<&'a Path>,
    /// How long to wait for the shim to start the process.
    pub timeout: Duration,
}

/// Why the detached stand-in could not start the process, as it tells its
/// parent across the pipe.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, thiserror::Error)]
pub enum StandInError {
    /// The shim's answer.
    #[error(transparent)]
    Shim(ShimFailure),
    #[error("the container's shim is gone")]
    ShimGone,
    /// A failure of the stand-in's own: what it was doing, and the errno.
    #[error("{context}{}", errno.map(|e| format!(": {}", io::Error::from_raw_os_error(e))).unwrap_or_default())]
    Failed { context: String, errno: Option<i32> },
}

impl StandInError {
    fn of(e: &ExecError) -> Self {
        use std::error::Error;
        match e {
            ExecError::Control(c) if c.shim_gone() => StandInError::ShimGone,
            ExecError::Control(ControlError::Failed(f)) => StandInError::Shim(f.clone()),
            e => {
                let mut source = e.source();
                let mut errno = None;
                while let Some(s) = source {
                    if let Some(io) = s.downcast_ref::<io::Error>() {
                        errno = io.raw_os_error();
                    }
                    source = s.source();
                }
                StandInError::Failed {
                    context: crate::error_chain(e),
                    errno,
                }
            }
        }
    }

    /// Back into the parent's error, so it reads as the stand-in's did.
    fn into_exec_error(self) -> ExecError {
        match self {
            StandInError::Shim(f) => ExecError::Control(ControlError::Failed(f)),
            other => ExecError::StandIn(other),
        }
    }
}

/// The stand-in's report to its parent: the process's pid in the guest.
type Report = Result<i32, StandInError>;

/// The stdio the stand-in hands to the shim, and the tty whose size the
/// process's terminal follows.
struct StandInStdio {
    fds: [OwnedFd; 3],
    resize_source: Option<OwnedFd>,
    _raw: Option<RawMode>,
}

fn own_fd(fd: impl AsFd) -> Result<OwnedFd, ExecError> {
    fd.as_fd().try_clone_to_owned().map_err(ExecError::Stdio)
}

fn stand_in_stdio(
    terminal: bool,
    console_socket: Option<&Path>,
) -> Result<StandInStdio, ExecError> {
    if !terminal {
        return Ok(StandInStdio {
            fds: [
                own_fd(io::stdin())?,
                own_fd(io::stdout())?,
                own_fd(io::stderr())?,
            ],
            resize_source: None,
            _raw: None,
        });
    }
    match console_socket {
        Some(path) => {
            let (slave, _controlling) = terminal::console_pty(path)?;
            Ok(StandInStdio {
                fds: [own_fd(&slave)?, own_fd(&slave)?, own_fd(&slave)?],
                resize_source: Some(slave),
                _raw: None,
            })
        }
        None => {
            // The caller's own terminal, raw while the process runs.
            let raw = RawMode::enter(io::stdin().as_fd());
            let tty = own_fd(io::stdin())?;
            let out = own_fd(io::stdout())?;
            Ok(StandInStdio {
                fds: [own_fd(&tty)?, own_fd(&out)?, out],
                resize_source: Some(tty),
                _raw: raw,
            })
        }
    }
}

/// Start the exec session with the shim; returns the connection and the
/// process's pid in the guest.
fn start_session(s: &Session<'_>, fds: &[OwnedFd; 3]) -> Result<(UnixStream, i32), ExecError> {
    let raw = [fds[0].as_raw_fd(), fds[1].as_raw_fd(), fds[2].as_raw_fd()];
    let mut stream = control::connect(s.state_dir, Some(raw))?;
    let req = Exec {
        exec_id: new_exec_id(),
        process: s.process.clone(),
        ignore_paused: s.ignore_paused,
    };
    let started = control::exchange(&mut stream, req, s.timeout)?;
    // From now on the session lasts as long as the process does.
    stream
        .set_read_timeout(None)
        .map_err(|e| ExecError::Control(e.into()))?;
    Ok((stream, started.guest_pid))
}

/// Forward signals and window sizes until the shim reports the exit code.
fn relay_until_exit(
    mut stream: UnixStream,
    resize_source: Option<&OwnedFd>,
    signals: &mut Forwarder,
) -> Result<i32, ExecError> {
    let resize = |stream: &mut UnixStream| {
        if let Some((rows, cols)) = resize_source.and_then(|t| terminal::window_size(t.as_fd())) {
            let _ = runvm_protocol::send(stream, &ExecControl::Resize { rows, cols });
        }
    };
    resize(&mut stream);
    let mut writer = stream.try_clone().map_err(ExecError::Stdio)?;
    signals
        .relay_until(stream.as_fd(), |sig| {
            if sig == libc::SIGWINCH && resize_source.is_some() {
                resize(&mut writer);
            } else {
                let _ = runvm_protocol::send(&mut writer, &ExecControl::Signal { signal: sig });
            }
        })
        .map_err(ExecError::Signals)?;
    match runvm_protocol::recv::<_, Result<ExecExited, ShimFailure>>(&mut stream) {
        Ok(Ok(exited)) => Ok(exited.code),
        Ok(Err(failure)) => Err(ControlError::Failed(failure).into()),
        Err(_) => Err(ExecError::SessionLost),
    }
}

/// A fresh exec id, unique enough within one container.
pub fn new_exec_id() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("exec-{}-{}", std::process::id(), now.as_nanos())
}

fn terminal_of(process: &Process) -> bool {
    process.terminal().unwrap_or(false)
}

/// Run the exec in the foreground, as its own stand-in: writes its own pid
/// to the pid file once the process runs (as runc does without --detach)
/// and returns the process's exit code.
pub fn run_attached(s: &Session<'_>) -> Result<i32, ExecError> {
    let mut signals = Forwarder::new(&[]).map_err(ExecError::Signals)?;
    let stdio = stand_in_stdio(terminal_of(s.process), None)?;
    let (mut stream, _pid) = start_session(s, &stdio.fds)?;
    drop(stdio.fds);
    write_own_pid(s.pid_file, &mut stream)?;
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
    let kill = ExecControl::Signal {
        signal: libc::SIGKILL,
    };
    let _ = runvm_protocol::send(stream, &kill);
    // Wait for the exit report, so the process is gone when we return.
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = runvm_protocol::recv::<_, Result<ExecExited, ShimFailure>>(stream);
}

/// Fork the stand-in, wait until the process runs in the guest (the
/// stand-in writes its pid to the pid file), and return the stand-in's pid.
/// The stand-in lives on.
pub fn run_detached(s: &Session<'_>, console_socket: Option<&Path>) -> Result<i32, ExecError> {
    let terminal = terminal_of(s.process);
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
            std::process::exit(stand_in(s, console_socket, w))
        }
        ForkResult::Parent { child } => {
            drop(w);
            let mut r = File::from(r);
            match runvm_protocol::recv::<_, Report>(&mut r) {
                Ok(Ok(_guest_pid)) => Ok(child.as_raw()),
                Ok(Err(e)) => {
                    let _ = nix::sys::wait::waitpid(child, None);
                    Err(e.into_exec_error())
                }
                Err(_) => {
                    let _ = nix::sys::wait::waitpid(child, None);
                    Err(ExecError::StandInVanished)
                }
            }
        }
    }
}

/// The detached stand-in: once the process runs, write its own pid to the
/// pid file and report the start (or the failure) on `ready`; then wait
/// for the exit code and return it.
fn stand_in(s: &Session<'_>, console_socket: Option<&Path>, ready: OwnedFd) -> i32 {
    let mut ready = File::from(ready);
    let _ = nix::unistd::setsid();
    let started = Forwarder::new(&[])
        .map_err(ExecError::Signals)
        .and_then(|signals| {
            let stdio = stand_in_stdio(terminal_of(s.process), console_socket)?;
            let (mut stream, pid) = start_session(s, &stdio.fds)?;
            write_own_pid(s.pid_file, &mut stream)?;
            Ok((signals, stdio, stream, pid))
        });
    let (mut signals, stdio, stream, pid) = match started {
        Ok(started) => started,
        Err(e) => {
            let report: Report = Err(StandInError::of(&e));
            let _ = runvm_protocol::send(&mut ready, &report);
            return 255;
        }
    };
    let report: Report = Ok(pid);
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
