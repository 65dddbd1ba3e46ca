//! The shim's own seccomp filter.
//!
//! Once a container is created, the shim only relays bytes between the
//! caller, the guest's agent and the VMM, answers the other verbs, and in the
//! end stops the VM: it never again starts a process, mounts, enters a
//! namespace or traces anything. It is also the host process that parses
//! what the guest sends, so a bug there is the guest's way onto the host.
//! The filter allows the system calls that running and stopping a container
//! use, with their risky arguments pinned (threads but no new processes,
//! Unix and netlink sockets but no others, terminal ioctls but not
//! `TIOCSTI`), and denies everything else with `EPERM`, which the shim logs
//! as the failed operation. The kernel's audit log records each denial
//! (`SECCOMP_FILTER_FLAG_LOG`), so a call the list lacks shows up there with
//! its number rather than as a mystery.

use libseccomp::{ScmpAction, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall};

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("build the shim's seccomp filter")]
    Build(#[source] libseccomp::error::SeccompError),
    #[error("load the shim's seccomp filter")]
    Load(#[source] libseccomp::error::SeccompError),
}

/// Calls allowed with any arguments. Names this architecture lacks (the
/// legacy `open`, `poll`… on arm64) are skipped.
#[rustfmt::skip]
const ALLOWED: &[&str] = &[
    // Memory.
    "brk", "mmap", "munmap", "mremap", "mprotect", "madvise",
    // Threads, their exit, and the runtime's synchronisation.
    "futex", "set_robust_list", "get_robust_list", "rseq", "sched_yield",
    "sched_getaffinity", "exit", "exit_group", "restart_syscall",
    // Who am I.
    "getpid", "gettid", "getppid", "getuid", "geteuid", "getgid", "getegid",
    "getresuid", "getresgid", "uname", "sysinfo", "getrlimit", "getrandom",
    // Signals: forwarding, and stopping the VMM and virtiofsd.
    "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "rt_sigtimedwait",
    "sigaltstack", "kill", "tgkill", "tkill", "pidfd_open", "pidfd_send_signal",
    "wait4", "waitid",
    // Time.
    "clock_gettime", "clock_getres", "gettimeofday", "time", "nanosleep",
    "clock_nanosleep", "timerfd_create", "timerfd_settime", "timerfd_gettime",
    // Waiting for descriptors.
    "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait", "epoll_pwait2",
    "poll", "ppoll", "select", "pselect6", "eventfd2", "pipe2",
    // Descriptors: the relay, state files, logs, cgroup files.
    "read", "write", "readv", "writev", "pread64", "pwrite64", "preadv",
    "pwritev", "lseek", "close", "close_range", "dup", "dup2", "dup3", "fcntl",
    "fsync", "fdatasync", "ftruncate", "sendfile", "copy_file_range", "splice",
    "flock", "fstat", "newfstatat", "statx", "stat", "lstat", "fstatfs",
    "statfs", "getdents64", "readlink", "readlinkat", "access", "faccessat",
    "faccessat2", "open", "openat", "getcwd",
    // The state directory: temporary files given their mode and renamed
    // into place, sockets and the VM's files removed, the memory file given
    // back to root.
    "rename", "renameat", "renameat2", "unlink", "unlinkat", "rmdir", "mkdir",
    "mkdirat", "fchmod", "fchmodat", "chmod", "fchown", "fchownat", "chown",
    "lchown",
    // Sockets the shim already has, or connects to (the VMM's monitor, the
    // control socket's clients, netlink for the network's teardown).
    "socketpair", "connect", "accept", "accept4", "bind", "listen",
    "getsockopt", "setsockopt", "getsockname", "getpeername", "sendto",
    "recvfrom", "sendmsg", "recvmsg", "sendmmsg", "recvmmsg", "shutdown",
];

/// ioctls the shim's terminals and sockets use: the termios and window
/// size of the container's terminal, non-blocking mode and close-on-exec.
const IOCTLS: &[libc::c_ulong] = &[
    libc::TCGETS,
    libc::TCSETS,
    libc::TCSETSW,
    libc::TCSETSF,
    libc::TIOCGWINSZ,
    libc::TIOCSWINSZ,
    libc::TIOCGPGRP,
    libc::FIONBIO,
    libc::FIOCLEX,
    libc::FIONCLEX,
    libc::FIONREAD,
];

/// Socket families the shim opens.
const SOCKET_FAMILIES: &[libc::c_int] = &[libc::AF_UNIX, libc::AF_NETLINK];

/// prctl options the runtime uses (naming its threads).
const PRCTLS: &[libc::c_int] = &[libc::PR_SET_NAME, libc::PR_GET_NAME];

/// The filter. `every_thread` applies it to all the process's threads at
/// load (the shim); without it, only to the calling thread.
pub fn shim_filter(every_thread: bool) -> Result<ScmpFilterContext, SeccompError> {
    build(every_thread).map_err(SeccompError::Build)
}

/// What the filter does, for `runvm check`.
pub fn describe() -> String {
    let version = match libseccomp::ScmpVersion::current() {
        Ok(v) => format!("libseccomp {}.{}.{}", v.major, v.minor, v.micro),
        Err(_) => "libseccomp".into(),
    };
    format!("on once a container is created: no new processes, mounts, namespaces or tracing ({version})")
}

/// Load a filter built by [`shim_filter`].
pub fn load(filter: &ScmpFilterContext) -> Result<(), SeccompError> {
    filter.load().map_err(SeccompError::Load)
}

fn build(every_thread: bool) -> Result<ScmpFilterContext, libseccomp::error::SeccompError> {
    let mut f = ScmpFilterContext::new(ScmpAction::Errno(libc::EPERM))?;
    f.set_ctl_tsync(every_thread)?;
    f.set_ctl_log(true)?;
    for name in ALLOWED {
        if let Ok(call) = ScmpSyscall::from_name(name) {
            f.add_rule(ScmpAction::Allow, call)?;
        }
    }
    // Threads, never a new process: glibc tries clone3 first, whose flags
    // sit behind a pointer a filter cannot read, and falls back to clone
    // when told the call does not exist.
    f.add_rule(
        ScmpAction::Errno(libc::ENOSYS),
        ScmpSyscall::from_name("clone3")?,
    )?;
    let thread = libc::CLONE_THREAD as u64;
    f.add_rule_conditional(
        ScmpAction::Allow,
        ScmpSyscall::from_name("clone")?,
        &[ScmpArgCompare::new(
            0,
            ScmpCompareOp::MaskedEqual(thread),
            thread,
        )],
    )?;
    let one_of = |f: &mut ScmpFilterContext, call: &str, arg: u32, values: &[u64]| {
        let call = ScmpSyscall::from_name(call)?;
        for v in values {
            let cmp = ScmpArgCompare::new(arg, ScmpCompareOp::Equal, *v);
            f.add_rule_conditional(ScmpAction::Allow, call, &[cmp])?;
        }
        Ok::<_, libseccomp::error::SeccompError>(())
    };
    #[allow(clippy::unnecessary_cast)] // c_ulong is u64 on 64-bit hosts only
    let ioctls: Vec<u64> = IOCTLS.iter().map(|r| *r as u64).collect();
    one_of(&mut f, "ioctl", 1, &ioctls)?;
    let families: Vec<u64> = SOCKET_FAMILIES.iter().map(|d| *d as u64).collect();
    one_of(&mut f, "socket", 0, &families)?;
    let prctls: Vec<u64> = PRCTLS.iter().map(|o| *o as u64).collect();
    one_of(&mut f, "prctl", 0, &prctls)?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::net::UnixStream;

    fn errno() -> i32 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    }

    /// On a thread of its own (a filter without tsync binds only the thread
    /// that loads it, and dies with it): what the shim does still works,
    /// and what an attacker in the shim would want is refused.
    #[test]
    fn allows_the_relay_and_refuses_processes_mounts_and_other_sockets() {
        let outcome = std::thread::spawn(|| {
            load(&shim_filter(false).unwrap()).unwrap();
            let mut seen = Vec::new();
            // Allowed: files, Unix sockets, a thread.
            let mut s = String::new();
            std::fs::File::open("/proc/thread-self/status")
                .unwrap()
                .read_to_string(&mut s)
                .unwrap();
            seen.push(("seccomp mode", s.contains("Seccomp:\t2")));
            seen.push(("unix socket", UnixStream::pair().is_ok()));
            let t = std::thread::spawn(|| 7).join();
            seen.push(("thread", t.ok() == Some(7)));
            // Refused. Each call has arguments the kernel itself would
            // reject with another error, so EPERM can only be the filter's
            // and nothing happens if the filter let one through.
            // SAFETY: plain system calls on constant arguments; a fork that
            // succeeded (it must not) exits at once in the child.
            unsafe {
                let pid = libc::fork();
                if pid == 0 {
                    libc::_exit(0);
                }
                seen.push(("fork refused", pid == -1 && errno() == libc::EPERM));
                let argv = [std::ptr::null()];
                let r = libc::execv(c"/nonexistent/runvm".as_ptr(), argv.as_ptr());
                seen.push(("exec refused", r == -1 && errno() == libc::EPERM));
                let r = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
                seen.push(("inet socket refused", r == -1 && errno() == libc::EPERM));
                let r = libc::mount(
                    c"none".as_ptr(),
                    c"/nonexistent/runvm".as_ptr(),
                    c"tmpfs".as_ptr(),
                    0,
                    std::ptr::null(),
                );
                seen.push(("mount refused", r == -1 && errno() == libc::EPERM));
                let r = libc::unshare(libc::CSIGNAL);
                seen.push(("unshare refused", r == -1 && errno() == libc::EPERM));
                let r = libc::ptrace(libc::PTRACE_ATTACH, i32::MAX, 0, 0);
                seen.push(("ptrace refused", r == -1 && errno() == libc::EPERM));
                let b = 0u8;
                let r = libc::ioctl(-1, libc::TIOCSTI, &b);
                seen.push(("TIOCSTI refused", r == -1 && errno() == libc::EPERM));
            }
            seen
        })
        .join()
        .unwrap();
        let failed: Vec<_> = outcome.iter().filter(|(_, ok)| !ok).collect();
        assert!(failed.is_empty(), "{failed:?} (all: {outcome:?})");
    }
}
