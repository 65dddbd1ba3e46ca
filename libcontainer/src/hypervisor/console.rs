//! The guest's console log, bounded.
//!
//! The guest decides how much it writes to its serial console, and the log
//! lives on the host, usually on a tmpfs (/run): a VMM writing straight into
//! the file would let a guest fill the host's memory. So the VMM writes into
//! a pipe, and a thread of the process that launched it copies the pipe into
//! the log up to a bound (`[hypervisor.qemu] console_log_max_mib`), then
//! notes that the rest is dropped and discards it, so the VMM never blocks
//! on a full pipe.
//!
//! The thread holds an exclusive `flock` on the log while it copies; a
//! reader that needs the whole log once the VM is gone (the shim copying a
//! pool VM's log, which another process drains) waits for that lock.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg, OFlag};

/// The copying thread, for waiting until it has written everything.
pub struct Drain {
    done: mpsc::Receiver<()>,
}

/// Create (truncate) the log at `path` and start copying into it. Returns
/// the pipe's write end, for the VMM, and the drain.
pub fn start(path: &Path, max: u64) -> io::Result<(OwnedFd, Drain)> {
    let log = File::create(path)?;
    let log =
        Flock::lock(log, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| io::Error::from(e))?;
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    let (tx, done) = mpsc::channel();
    std::thread::Builder::new()
        .name("console".into())
        .spawn(move || {
            copy_bounded(File::from(read), log, max);
            let _ = tx.send(());
        })?;
    Ok((write, Drain { done }))
}

impl Drain {
    /// Wait, at most `timeout`, for the copy to end (the VMM is gone and
    /// everything it wrote is in the log).
    pub fn finish(self, timeout: Duration) {
        let _ = self.done.recv_timeout(timeout);
    }
}

/// Copy `from` into `to` until end of file, keeping the first `max` bytes.
fn copy_bounded(mut from: File, mut to: Flock<File>, max: u64) {
    let mut kept = 0u64;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        if kept >= max {
            continue;
        }
        let take = (n as u64).min(max - kept) as usize;
        kept += take as u64;
        if to.write_all(&buf[..take]).is_err() {
            kept = max;
        }
        if kept >= max {
            let _ = writeln!(
                to,
                "\n[runvm: the guest's console passed {} MiB; the rest is dropped]",
                max >> 20
            );
        }
    }
}

/// Wait, at most `timeout`, until nothing is copying into the log at
/// `path` any more; false if something still is.
pub fn wait_complete(path: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let Ok(log) = File::open(path) else {
            return true;
        };
        if Flock::lock(log, FlockArg::LockSharedNonblock).is_ok() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_first_bytes_notes_the_drop_and_never_blocks_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let (write, drain) = start(&path, 1 << 20).unwrap();
        // While the copy runs, a reader waiting for the whole log waits.
        assert!(!wait_complete(&path, Duration::from_millis(50)));
        let mut w = File::from(write);
        // Far more than a pipe holds: the writer must not block.
        let line = [b'x'; 1000];
        for _ in 0..2000 {
            w.write_all(&line).unwrap();
        }
        drop(w);
        drain.finish(Duration::from_secs(60));
        assert!(wait_complete(&path, Duration::ZERO));
        let log = std::fs::read(&path).unwrap();
        let note = b"\n[runvm: the guest's console passed 1 MiB; the rest is dropped]\n";
        assert_eq!(log.len(), (1 << 20) + note.len());
        assert!(log.ends_with(note));
        assert!(log[..1 << 20].iter().all(|b| *b == b'x'));
    }

    #[test]
    fn a_short_log_is_kept_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let (write, drain) = start(&path, 16 << 20).unwrap();
        let mut w = File::from(write);
        w.write_all(b"Linux version 6.12\nrunvm-agent: ready\n")
            .unwrap();
        drop(w);
        drain.finish(Duration::from_secs(60));
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "Linux version 6.12\nrunvm-agent: ready\n"
        );
    }
}
