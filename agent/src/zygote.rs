//! The zygote: a single-threaded process, started once, that forks the youki
//! helpers. Exec'ing a fresh helper for every create, start and exec costs
//! the dynamic loader and the runtime's start-up each time, which under TCG
//! is about 0.1 s, and 0.3 s in a VM cloned from a template (whose QEMU has
//! translated none of that code yet). A fork of an already started process
//! skips all of it; the zygote, being single-threaded, can fork safely.
//!
//! Protocol, over a SOCK_SEQPACKET pair: the agent sends the helper's
//! arguments as JSON with its stdout and stderr pipes and the process's
//! stdio (SCM_RIGHTS). The zygote forks a child, which forks the helper and
//! reports its pid, then exits: the helper is reparented to the agent (PID 1),
//! whose reaper collects its exit status like any other.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode, Stdio};

use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use nix::sys::wait::waitpid;
use nix::unistd::{fork, ForkResult};
use serde::{Deserialize, Serialize};

pub const ARG: &str = "__zygote";
/// The zygote's end of the socket pair.
const SOCKET_FD: RawFd = 3;
const MAX_FDS: usize = 5;

#[derive(Serialize, Deserialize)]
struct Spawn {
    args: Vec<String>,
}

#[derive(Serialize, Deserialize)]
enum Spawned {
    Pid(i32),
    Failed(String),
}

/// The agent's handle on the zygote.
pub struct Zygote {
    sock: std::sync::Mutex<OwnedFd>,
}

impl Zygote {
    /// Start the zygote (the agent's child).
    pub fn start() -> std::io::Result<Zygote> {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        let raw = theirs.as_raw_fd();
        let mut cmd = Command::new("/proc/self/exe");
        cmd.arg(ARG)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        // SAFETY: dup2 is async-signal-safe; the descriptor is open in the
        // child.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(raw, SOCKET_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.spawn()?;
        drop(theirs);
        Ok(Zygote {
            sock: std::sync::Mutex::new(ours),
        })
    }

    /// Fork a helper running `__youki <args>` with `out` and `err` as its
    /// stdout and stderr and `stdio` as its fds 3..; returns its pid.
    pub fn spawn(
        &self,
        args: &[&str],
        out: &OwnedFd,
        err: &OwnedFd,
        stdio: &[OwnedFd],
    ) -> std::io::Result<i32> {
        let sock = self.sock.lock().unwrap_or_else(|e| e.into_inner());
        let req = serde_json::to_vec(&Spawn {
            args: args.iter().map(|a| a.to_string()).collect(),
        })?;
        let mut fds: Vec<RawFd> = vec![out.as_raw_fd(), err.as_raw_fd()];
        fds.extend(stdio.iter().map(|f| f.as_raw_fd()));
        let cmsg = [ControlMessage::ScmRights(&fds)];
        sendmsg::<()>(
            sock.as_raw_fd(),
            &[IoSlice::new(&req)],
            &cmsg,
            MsgFlags::empty(),
            None,
        )?;
        let mut buf = [0u8; 4096];
        let n = nix::unistd::read(sock.as_raw_fd(), &mut buf)?;
        match serde_json::from_slice(&buf[..n])? {
            Spawned::Pid(pid) => Ok(pid),
            Spawned::Failed(why) => Err(std::io::Error::other(why)),
        }
    }
}

fn reply(sock: RawFd, msg: &Spawned) {
    if let Ok(data) = serde_json::to_vec(msg) {
        let _ = nix::unistd::write(
            // SAFETY: the socket stays open for the life of the process.
            unsafe { std::os::fd::BorrowedFd::borrow_raw(sock) },
            &data,
        );
    }
}

/// The zygote's main loop: one request, one helper, until the agent hangs up.
pub fn main() -> ExitCode {
    loop {
        let mut buf = vec![0u8; 64 * 1024];
        let mut iov = [IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
        let (len, fds) = match recvmsg::<()>(
            SOCKET_FD,
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(msg) if msg.bytes > 0 => {
                let mut fds: Vec<OwnedFd> = Vec::new();
                for c in msg.cmsgs().into_iter().flatten() {
                    if let ControlMessageOwned::ScmRights(raw) = c {
                        // SAFETY: SCM_RIGHTS installed these descriptors in
                        // our table just now; each is owned once here.
                        fds.extend(
                            raw.into_iter()
                                .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                        );
                    }
                }
                (msg.bytes, fds)
            }
            Ok(_) => return ExitCode::SUCCESS,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return ExitCode::FAILURE,
        };
        let req: Spawn = match serde_json::from_slice(&buf[..len]) {
            Ok(r) => r,
            Err(e) => {
                reply(SOCKET_FD, &Spawned::Failed(e.to_string()));
                continue;
            }
        };
        if fds.len() < 2 {
            reply(SOCKET_FD, &Spawned::Failed("no output pipes".into()));
            continue;
        }
        // SAFETY: the zygote is single-threaded, so its child may run
        // ordinary code.
        match unsafe { fork() } {
            Ok(ForkResult::Child) => first_child(req, fds),
            Ok(ForkResult::Parent { child }) => {
                drop(fds);
                let _ = waitpid(child, None);
            }
            Err(e) => reply(SOCKET_FD, &Spawned::Failed(format!("fork: {e}"))),
        }
    }
}

/// Fork the helper, report its pid, and exit, so the helper is reparented to
/// the agent.
fn first_child(req: Spawn, fds: Vec<OwnedFd>) -> ! {
    // SAFETY: still single-threaded.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => helper(req, fds),
        Ok(ForkResult::Parent { child }) => {
            reply(SOCKET_FD, &Spawned::Pid(child.as_raw()));
            std::process::exit(0)
        }
        Err(e) => {
            reply(SOCKET_FD, &Spawned::Failed(format!("fork: {e}")));
            std::process::exit(1)
        }
    }
}

/// Become `runvm-agent __youki <args>` with its descriptors in place.
fn helper(req: Spawn, fds: Vec<OwnedFd>) -> ! {
    // Lift everything above the range it goes to, then place it: stdout,
    // stderr, and the process's stdio at 3...
    let high: Vec<RawFd> = fds
        .iter()
        .map(|f| {
            nix::fcntl::fcntl(f.as_raw_fd(), nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(20))
                .unwrap_or(-1)
        })
        .collect();
    drop(fds);
    // SAFETY: plain descriptor syscalls on descriptors this process owns.
    unsafe {
        libc::close(SOCKET_FD);
        let _ = libc::dup2(high[0], 1);
        let _ = libc::dup2(high[1], 2);
        for (i, fd) in high[2..].iter().enumerate() {
            let _ = libc::dup2(*fd, 3 + i as RawFd);
        }
        for fd in &high {
            libc::close(*fd);
        }
    }
    let code = crate::youki_helper::main(&req.args);
    // Exit without running the parent's destructors twice.
    let status = if code == ExitCode::SUCCESS { 0 } else { 1 };
    std::process::exit(status)
}
