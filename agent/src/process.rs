//! Processes the host can attach to (a container's init or an exec), and the
//! youki helper processes that create them.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::Mutex;

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::unistd::pipe2;
use runvm_protocol::{AgentError, AgentErrorKind, ExitStatus};
use tokio::net::unix::pipe;
use tokio::sync::watch;

use crate::reaper::{self, Reaper};
use crate::youki_helper;
use crate::zygote::Zygote;

pub type AgentResult<T> = Result<T, AgentError>;

/// A failed call in the guest, with what the agent was doing.
pub fn fail(context: &str, err: impl std::fmt::Display) -> AgentError {
    AgentError::system(context, err)
}

#[derive(Clone, Copy, Debug)]
pub enum Stdio3 {
    Stdin,
    Stdout,
    Stderr,
}

/// The agent's ends of a process's stdio.
pub enum ProcStdio {
    Pipes {
        stdin: Mutex<Option<OwnedFd>>,
        stdout: Mutex<Option<OwnedFd>>,
        stderr: Mutex<Option<OwnedFd>>,
    },
    /// A pty: input and output both go through its master.
    Tty {
        master: OwnedFd,
        taken: Mutex<(bool, bool)>,
    },
}

pub struct Proc {
    pub pid: i32,
    stdio: ProcStdio,
    exit: watch::Receiver<Option<ExitStatus>>,
    /// Output read from the process that its relay could not send before
    /// the host's session ended (stdout, stderr): the next relay sends it
    /// first.
    unsent: Mutex<[Vec<u8>; 2]>,
}

impl Proc {
    pub fn new(pid: i32, stdio: ProcStdio, exit: watch::Receiver<Option<ExitStatus>>) -> Self {
        Proc {
            pid,
            stdio,
            exit,
            unsent: Mutex::new([Vec::new(), Vec::new()]),
        }
    }

    /// The slot of a pipe end, when the process's stdio is pipes.
    fn pipe(&self, which: Stdio3) -> Option<&Mutex<Option<OwnedFd>>> {
        match &self.stdio {
            ProcStdio::Pipes {
                stdin,
                stdout,
                stderr,
            } => Some(match which {
                Stdio3::Stdin => stdin,
                Stdio3::Stdout => stdout,
                Stdio3::Stderr => stderr,
            }),
            ProcStdio::Tty { .. } => None,
        }
    }

    /// Take back an end of stdio that [`take`](Self::take) handed out, from
    /// a relay whose session ended (a checkpoint), so that the next
    /// session's relay gets it.
    pub fn give_back(&self, which: Stdio3, fd: OwnedFd) {
        if let Some(slot) = self.pipe(which) {
            *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(fd);
        } else if let ProcStdio::Tty { taken, .. } = &self.stdio {
            // The relay had a duplicate of the master: it may go.
            let mut taken = taken.lock().unwrap_or_else(|e| e.into_inner());
            match which {
                Stdio3::Stdin => taken.0 = false,
                Stdio3::Stdout => taken.1 = false,
                Stdio3::Stderr => {}
            }
        }
    }

    /// Keep output a relay could not send (appended to what is kept).
    pub fn keep_unsent(&self, which: Stdio3, bytes: &[u8]) {
        let mut unsent = self.unsent.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = Self::output_index(which) {
            unsent[i].extend_from_slice(bytes);
        }
    }

    /// Output an earlier relay could not send, to go first.
    pub fn take_unsent(&self, which: Stdio3) -> Vec<u8> {
        let mut unsent = self.unsent.lock().unwrap_or_else(|e| e.into_inner());
        Self::output_index(which)
            .map(|i| std::mem::take(&mut unsent[i]))
            .unwrap_or_default()
    }

    fn output_index(which: Stdio3) -> Option<usize> {
        match which {
            Stdio3::Stdin => None,
            Stdio3::Stdout => Some(0),
            Stdio3::Stderr => Some(1),
        }
    }

    /// Hand out one end of the process's stdio, once. A terminal has no
    /// stderr of its own.
    pub fn take(&self, which: Stdio3) -> Option<OwnedFd> {
        if let Some(slot) = self.pipe(which) {
            return slot.lock().unwrap_or_else(|e| e.into_inner()).take();
        }
        match &self.stdio {
            ProcStdio::Pipes { .. } => None,
            ProcStdio::Tty { master, taken } => {
                let mut taken = taken.lock().unwrap_or_else(|e| e.into_inner());
                let slot = match which {
                    Stdio3::Stdin => &mut taken.0,
                    Stdio3::Stdout => &mut taken.1,
                    Stdio3::Stderr => return None,
                };
                if *slot {
                    return None;
                }
                *slot = true;
                master.try_clone().ok()
            }
        }
    }

    pub fn resize(&self, rows: u16, cols: u16) -> AgentResult<()> {
        match &self.stdio {
            ProcStdio::Tty { master, .. } => {
                crate::tty::resize(master, rows, cols).map_err(|e| fail("resize the terminal", e))
            }
            ProcStdio::Pipes { .. } => Err(AgentError::new(
                AgentErrorKind::Refused,
                "the process has no terminal",
            )),
        }
    }

    pub async fn wait(&self) -> Option<ExitStatus> {
        reaper::wait(self.exit.clone()).await
    }

    pub fn exited(&self) -> bool {
        self.exit.borrow().is_some()
    }
}

/// Pipes for a child's stdio: the child's ends, and the agent's ends.
pub struct StdioPipes {
    pub child: [OwnedFd; 3],
    pub ours: [OwnedFd; 3],
}

pub fn stdio_pipes() -> AgentResult<StdioPipes> {
    let p = |what| pipe2(OFlag::O_CLOEXEC).map_err(|e| fail(what, e));
    let (in_r, in_w) = p("stdin pipe")?;
    let (out_r, out_w) = p("stdout pipe")?;
    let (err_r, err_w) = p("stderr pipe")?;
    Ok(StdioPipes {
        child: [in_r, out_w, err_w],
        ours: [in_w, out_r, err_r],
    })
}

/// The agent's ends of stdio pipes, as a process's stdio.
pub fn pipes_stdio(ours: [OwnedFd; 3]) -> ProcStdio {
    let [stdin, stdout, stderr] = ours;
    ProcStdio::Pipes {
        stdin: Mutex::new(Some(stdin)),
        stdout: Mutex::new(Some(stdout)),
        stderr: Mutex::new(Some(stderr)),
    }
}

/// Output of a finished helper.
pub struct HelperOutput {
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    /// The helper's stderr, when a process it forked still holds it open
    /// after the helper exited: a created container's init does until it
    /// execs the container's process (its copy is close-on-exec).
    pub stderr_held: Option<pipe::Receiver>,
}

impl HelperOutput {
    pub fn ok(&self) -> bool {
        self.status == Some(ExitStatus::Exited(0))
    }

    /// The pid the helper printed.
    pub fn pid(&self) -> AgentResult<i32> {
        self.stdout
            .trim()
            .parse()
            .map_err(|e| fail("youki helper printed no pid", e))
    }

    /// youki's error: its final line names the outcome, ending with the cause
    /// after its own layers of context; an earlier error event may say more
    /// (which mount failed), and is kept when the final line lacks it.
    pub fn error(&self) -> String {
        let lines: Vec<&str> = self
            .stderr
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let Some(last) = lines.last() else {
            return format!("youki helper failed: {:?}", self.status);
        };
        // What youki could not tidy up after the failure (a cgroup the dying
        // init is still leaving, on a slow guest) is not the user's error:
        // the VM goes with the failed create.
        let last = last
            .split(". error during cleanup: ")
            .next()
            .unwrap_or(last);
        const LAYER: &str = "error in executing process : ";
        let cause = match last.rfind(LAYER) {
            Some(i) => &last[i + LAYER.len()..],
            None => last,
        };
        match lines[..lines.len() - 1].iter().find(|l| {
            !last.contains(*l)
                && !l.contains(cause)
                && !l.starts_with("failed to wait for init ready")
        }) {
            Some(detail) if cause.len() < 60 => format!("{cause} ({detail})"),
            _ => cause.to_string(),
        }
    }
}

/// Run `runvm-agent __youki <args>` with `fds` as its fds 3.., and wait for
/// it: forked by the zygote when there is one, else exec'd.
pub async fn run_helper(
    reaper: &Reaper,
    zygote: Option<&Zygote>,
    args: &[&str],
    fds: &[OwnedFd],
) -> AgentResult<HelperOutput> {
    let forked = match zygote {
        Some(z) => tokio::task::block_in_place(|| fork_helper(reaper, z, args, fds)),
        None => None,
    };
    let (exit, out_fd, err_fd) = match forked {
        Some(started) => started,
        None => exec_helper(reaper, args, fds)?,
    };
    let out_rx = pipe::Receiver::from_owned_fd(out_fd).map_err(|e| fail("helper stdout", e))?;
    let err_rx = pipe::Receiver::from_owned_fd(err_fd).map_err(|e| fail("helper stderr", e))?;
    // Collect the output while waiting for the helper to exit, not until EOF:
    // the container's init inherits the helper's stderr until it execs, so
    // EOF may come only at `start`.
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let (mut out_eof, mut err_eof) = (false, false);
    let wait = reaper::wait(exit);
    tokio::pin!(wait);
    let status = loop {
        tokio::select! {
            status = &mut wait => break status,
            eof = read_some(&out_rx, &mut out), if !out_eof => out_eof = eof,
            eof = read_some(&err_rx, &mut err), if !err_eof => err_eof = eof,
        }
    };
    drain(&out_rx, &mut out);
    let err_eof = err_eof || drain(&err_rx, &mut err);
    Ok(HelperOutput {
        status,
        stdout: String::from_utf8_lossy(&out).into_owned(),
        stderr: String::from_utf8_lossy(&err).into_owned(),
        stderr_held: (!err_eof).then_some(err_rx),
    })
}

/// Wait until every writer of `rx` has closed it; what they write is
/// dropped.
pub async fn until_eof(rx: &pipe::Receiver) {
    let mut sink = Vec::new();
    while !read_some(rx, &mut sink).await {
        sink.clear();
    }
}

type Started = (watch::Receiver<Option<ExitStatus>>, OwnedFd, OwnedFd);

/// Have the zygote fork the helper; `None` if it cannot (then exec).
fn fork_helper(
    reaper: &Reaper,
    zygote: &Zygote,
    args: &[&str],
    fds: &[OwnedFd],
) -> Option<Started> {
    let (out_r, out_w) = pipe2(OFlag::O_CLOEXEC).ok()?;
    let (err_r, err_w) = pipe2(OFlag::O_CLOEXEC).ok()?;
    match zygote.spawn(args, &out_w, &err_w, fds) {
        Ok(pid) => Some((reaper.watch(pid), out_r, err_r)),
        Err(e) => {
            eprintln!("runvm-agent: zygote: {e}; exec'ing the helper instead");
            None
        }
    }
}

/// Exec `runvm-agent __youki <args>` with `fds` as its fds 3...
fn exec_helper(reaper: &Reaper, args: &[&str], fds: &[OwnedFd]) -> AgentResult<Started> {
    // Lift the fds above 9 first so that placing them at 3.. in the child
    // cannot overwrite one another.
    let mut high: Vec<OwnedFd> = Vec::new();
    for fd in fds {
        let raw = fcntl(fd.as_raw_fd(), FcntlArg::F_DUPFD_CLOEXEC(10))
            .map_err(|e| fail("dup stdio", e))?;
        // SAFETY: fcntl(F_DUPFD_CLOEXEC) returned a new descriptor we own.
        high.push(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) });
    }
    let raw_high: Vec<RawFd> = high.iter().map(|f| f.as_raw_fd()).collect();
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg(youki_helper::ARG)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: the closure only calls dup2, which is async-signal-safe, on
    // descriptors that are open in the child.
    unsafe {
        cmd.pre_exec(move || {
            for (i, fd) in raw_high.iter().enumerate() {
                if libc::dup2(*fd, 3 + i as RawFd) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let (mut child, exit) = {
        let mut reaper = reaper.lock();
        let child = cmd.spawn().map_err(|e| fail("spawn the youki helper", e))?;
        let exit = reaper.watch(child.id() as i32);
        (child, exit)
    };
    drop(high);
    let out_fd: OwnedFd = child.stdout.take().expect("piped stdout").into();
    let err_fd: OwnedFd = child.stderr.take().expect("piped stderr").into();
    Ok((exit, out_fd, err_fd))
}

/// Read what is available once it is; true at EOF or on error.
async fn read_some(rx: &pipe::Receiver, buf: &mut Vec<u8>) -> bool {
    if rx.readable().await.is_err() {
        return true;
    }
    let mut chunk = [0u8; 4096];
    match rx.try_read(&mut chunk) {
        Ok(0) => true,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            false
        }
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
        Err(_) => true,
    }
}

/// Take whatever is buffered in a pipe now, without waiting; true at EOF.
fn drain(rx: &pipe::Receiver, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 4096];
    while let Ok(n) = rx.try_read(&mut chunk) {
        if n == 0 {
            return true;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    false
}

/// Whatever is buffered in a pipe, without blocking (at most 4 KiB).
pub fn drain_pipe(fd: &OwnedFd) -> String {
    let _ = fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK));
    let mut buf = vec![0u8; 4096];
    let n = nix::unistd::read(fd.as_raw_fd(), &mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(stderr: &str) -> HelperOutput {
        HelperOutput {
            status: Some(ExitStatus::Exited(1)),
            stdout: String::new(),
            stderr: stderr.into(),
            stderr_held: None,
        }
    }

    #[test]
    fn youki_errors_are_cut_to_their_cause() {
        let o = out("failed to initialize container process: exec: \"/x\": stat /x: no such file or directory\n\
            failed to create container: exec process failed with error error in executing process : exec: \"/x\": stat /x: no such file or directory");
        assert_eq!(
            o.error(),
            "exec: \"/x\": stat /x: no such file or directory"
        );
    }

    #[test]
    fn youkis_cleanup_after_a_failure_is_not_the_error() {
        let o = out("failed to create container: exec process failed with error error in executing process : exec: \"/x\": stat /x: no such file or directory. error during cleanup: failed to cleanup container: io error: at /sys/fs/cgroup/runvm/c1: could not delete");
        assert_eq!(
            o.error(),
            "exec: \"/x\": stat /x: no such file or directory"
        );
    }

    #[test]
    fn a_vague_cause_keeps_the_detail() {
        let o = out("failed to mount /proc: create next directory component failed\n\
            failed to create container: exec process failed with error error in executing process : failed to prepare rootfs");
        assert_eq!(
            o.error(),
            "failed to prepare rootfs (failed to mount /proc: create next directory component failed)"
        );
    }
}
