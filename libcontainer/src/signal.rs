//! Signal names and numbers as `runc kill` accepts them, and the one
//! forwarder that catches the signals a container's stand-ins pass on (the
//! shim, the exec stand-in, a foreground `run`).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::str::FromStr;

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown signal {0:?}")]
pub struct UnknownSignal(pub String);

/// Highest signal number Linux has (SIGRTMAX).
const SIGRTMAX: i32 = 64;

/// Parse `TERM`, `SIGTERM`, `sigterm` or `15`.
pub fn parse_signal(raw: &str) -> Result<i32, UnknownSignal> {
    let unknown = || UnknownSignal(raw.to_string());
    if let Ok(n) = raw.parse::<i32>() {
        return if (1..=SIGRTMAX).contains(&n) {
            Ok(n)
        } else {
            Err(unknown())
        };
    }
    let upper = raw.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    Signal::from_str(&name)
        .map(|s| s as i32)
        .map_err(|_| unknown())
}

/// Signals a process can catch: what the stand-ins forward into the guest.
/// SIGCHLD and SIGPIPE are the stand-in's own business; SIGKILL and SIGSTOP
/// cannot be caught; SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP and SIGSYS
/// report faults of the stand-in itself, and blocking them would hide those.
pub fn forwardable() -> impl Iterator<Item = i32> {
    (1..=SIGRTMAX).filter(|&s| {
        ![
            libc::SIGKILL,
            libc::SIGSTOP,
            libc::SIGCHLD,
            libc::SIGPIPE,
            libc::SIGSEGV,
            libc::SIGBUS,
            libc::SIGFPE,
            libc::SIGILL,
            libc::SIGTRAP,
            libc::SIGSYS,
            // glibc reserves 32 and 33 for its threads.
            32,
            33,
        ]
        .contains(&s)
    })
}

/// Catches the forwardable signals in a signalfd: they are blocked, so none
/// is lost between its arrival and its reading, and none runs a handler.
/// Children inherit the block: spawn them through `child::Supervised` (or
/// clear the mask before exec).
pub struct Forwarder {
    fd: SignalFd,
}

impl Forwarder {
    /// Block the forwardable signals and `extra` in this thread, and catch
    /// them. Call it before the process starts threads: they inherit the
    /// block, so the signals reach the signalfd whichever thread the kernel
    /// picks.
    pub fn new(extra: &[Signal]) -> nix::Result<Self> {
        let mut mask = SigSet::empty();
        for sig in forwardable() {
            if let Ok(s) = Signal::try_from(sig) {
                mask.add(s);
            }
        }
        for s in extra {
            mask.add(*s);
        }
        mask.thread_block()?;
        let fd = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)?;
        Ok(Forwarder { fd })
    }

    /// A caught signal, if one is pending.
    pub fn try_next(&mut self) -> nix::Result<Option<i32>> {
        Ok(self.fd.read_signal()?.map(|info| info.ssi_signo as i32))
    }

    /// Wait for the next caught signal.
    pub fn wait(&mut self) -> nix::Result<i32> {
        loop {
            if let Some(sig) = self.try_next()? {
                return Ok(sig);
            }
            wait_readable(&[self.fd.as_fd()])?;
        }
    }

    /// Pass every caught signal to `forward` until `wake` is readable.
    pub fn relay_until(
        &mut self,
        wake: BorrowedFd<'_>,
        mut forward: impl FnMut(i32),
    ) -> nix::Result<()> {
        loop {
            while let Some(sig) = self.try_next()? {
                forward(sig);
            }
            if wait_readable(&[self.fd.as_fd(), wake])?[1] {
                return Ok(());
            }
        }
    }

    /// The caught signals as a stream, for a tokio program (the shim); it
    /// must be called inside its runtime.
    pub fn into_channel(self) -> io::Result<tokio::sync::mpsc::UnboundedReceiver<i32>> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        // SAFETY: the forwarder owns its signalfd and is moved into the
        // AsyncFd, so the descriptor stays open and the same for its life.
        let mut afd =
            unsafe { tokio::io::unix::AsyncFd::register(self) }.map_err(|e| e.into_parts().1)?;
        tokio::spawn(async move {
            loop {
                let Ok(mut ready) = afd.readable_mut().await else {
                    return;
                };
                match ready.get_inner_mut().try_next() {
                    Ok(Some(sig)) => {
                        if tx.send(sig).is_err() {
                            return;
                        }
                    }
                    Ok(None) => ready.clear_ready(),
                    Err(_) => return,
                }
            }
        });
        Ok(rx)
    }
}

impl AsRawFd for Forwarder {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}

/// Wait until one of `fds` is readable (or hung up); which ones are.
fn wait_readable(fds: &[BorrowedFd<'_>]) -> nix::Result<Vec<bool>> {
    let mut polled: Vec<PollFd> = fds
        .iter()
        .map(|fd| PollFd::new(*fd, PollFlags::POLLIN))
        .collect();
    loop {
        match poll(&mut polled, PollTimeout::NONE) {
            Ok(_) => break,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(polled
        .iter()
        .map(|p| p.revents().is_some_and(|r| !r.is_empty()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_and_without_sig_and_numbers() {
        assert_eq!(parse_signal("TERM"), Ok(15));
        assert_eq!(parse_signal("SIGTERM"), Ok(15));
        assert_eq!(parse_signal("sigkill"), Ok(9));
        assert_eq!(parse_signal("KILL"), Ok(9));
        assert_eq!(parse_signal("9"), Ok(9));
        assert_eq!(parse_signal("40"), Ok(40));
    }

    #[test]
    fn unknown_signals_use_runc_words() {
        assert_eq!(
            parse_signal("FOO").unwrap_err().to_string(),
            "unknown signal \"FOO\""
        );
        assert!(parse_signal("0").is_err());
        assert!(parse_signal("65").is_err());
        assert!(parse_signal("-9").is_err());
        assert!(parse_signal("").is_err());
    }

    #[test]
    fn forwardable_leaves_out_uncatchable_and_local_signals() {
        let all: Vec<i32> = forwardable().collect();
        assert!(all.contains(&libc::SIGTERM) && all.contains(&libc::SIGINT));
        assert!(!all.contains(&libc::SIGKILL) && !all.contains(&libc::SIGCHLD));
        assert!(!all.contains(&libc::SIGSEGV));
    }

    #[test]
    fn the_forwarder_catches_what_is_sent_to_the_process() {
        // On a thread of its own: the block is the thread's, and the signal
        // is sent to that thread only.
        std::thread::spawn(|| {
            let mut f = Forwarder::new(&[]).unwrap();
            // SAFETY: pthread_self and pthread_kill on this live thread.
            unsafe {
                libc::pthread_kill(libc::pthread_self(), libc::SIGUSR2);
            }
            assert_eq!(f.wait().unwrap(), libc::SIGUSR2);
            assert_eq!(f.try_next().unwrap(), None);
            let (r, w) = nix::unistd::pipe().unwrap();
            // SAFETY: as above.
            unsafe {
                libc::pthread_kill(libc::pthread_self(), libc::SIGHUP);
            }
            nix::unistd::write(&w, b"x").unwrap();
            let mut seen = Vec::new();
            f.relay_until(r.as_fd(), |s| seen.push(s)).unwrap();
            assert_eq!(seen, [libc::SIGHUP]);
        })
        .join()
        .unwrap();
    }
}
