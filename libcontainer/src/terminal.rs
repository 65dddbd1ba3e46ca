//! Host-side terminals: the pty whose master goes to the caller's console
//! socket (runc's protocol), raw mode, window sizes.

use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg, Termios};

#[derive(Debug, thiserror::Error)]
pub enum TerminalError {
    #[error("console socket {path}")]
    Socket { path: PathBuf, source: io::Error },
    #[error("console socket {path} is not a socket")]
    NotASocket { path: PathBuf },
    #[error("send the terminal to the console socket {path}")]
    Send { path: PathBuf, source: nix::Error },
    #[error("allocate a pty")]
    Pty(#[source] nix::Error),
    #[error("set up the terminal")]
    Termios(#[source] nix::Error),
}

/// Check before anything is created that the console socket exists and is
/// a socket.
pub fn check_console_socket(path: &Path) -> Result<(), TerminalError> {
    let meta = std::fs::metadata(path).map_err(|source| TerminalError::Socket {
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.file_type().is_socket() {
        return Err(TerminalError::NotASocket {
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

pub struct Pty {
    pub master: OwnedFd,
    pub slave: OwnedFd,
}

/// A new pty whose slave is raw: the line discipline that counts is the
/// guest's, and a second one on the host would echo and translate twice.
pub fn open_pty() -> Result<Pty, TerminalError> {
    let pty = nix::pty::openpty(None, None).map_err(TerminalError::Pty)?;
    make_raw(pty.slave.as_fd()).map_err(TerminalError::Termios)?;
    Ok(Pty {
        master: pty.master,
        slave: pty.slave,
    })
}

fn make_raw(fd: BorrowedFd<'_>) -> nix::Result<Termios> {
    let saved = tcgetattr(fd)?;
    let mut raw = saved.clone();
    cfmakeraw(&mut raw);
    tcsetattr(fd, SetArg::TCSANOW, &raw)?;
    Ok(saved)
}

/// Send `master` to the console socket at `path`, as runc does: one message
/// whose payload is a name, carrying exactly one descriptor.
pub fn send_to_console_socket(path: &Path, master: BorrowedFd<'_>) -> Result<(), TerminalError> {
    let stream = UnixStream::connect(path).map_err(|source| TerminalError::Socket {
        path: path.to_path_buf(),
        source,
    })?;
    let name = b"/dev/ptmx";
    let iov = [IoSlice::new(name)];
    let fds = [master.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    sendmsg::<()>(stream.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None).map_err(|source| {
        TerminalError::Send {
            path: path.to_path_buf(),
            source,
        }
    })?;
    Ok(())
}

/// The terminal of a process whose caller holds its master: a new pty, its
/// master sent to `console_socket`; this process leads a session with the
/// slave as its controlling terminal, so a resize by the master's holder
/// arrives here as SIGWINCH. Returns the slave, and whether it became the
/// controlling terminal (without it resizes do not arrive).
pub fn console_pty(console_socket: &Path) -> Result<(OwnedFd, io::Result<()>), TerminalError> {
    let pty = open_pty()?;
    send_to_console_socket(console_socket, pty.master.as_fd())?;
    drop(pty.master);
    let _ = nix::unistd::setsid();
    let controlling = set_controlling(pty.slave.as_fd());
    Ok((pty.slave, controlling))
}

/// The receiving side of the console-socket protocol: read the one message
/// and take the descriptor it carries (as containerd and conmon do).
pub fn receive_from_console_socket(conn: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let mut name = [0u8; 4096];
    let (_, mut owned) = crate::sockdir::recv_with_fds(conn, &mut name)?;
    match owned.len() {
        1 => Ok(owned.remove(0)),
        n => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("expected one descriptor on the console socket, got {n}"),
        )),
    }
}

/// Make `fd` (a tty) the controlling terminal of this process, which must
/// lead its session: then window-size changes arrive as SIGWINCH.
pub fn set_controlling(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: TIOCSCTTY takes an integer argument; the descriptor is valid.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSCTTY, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub fn is_tty(fd: BorrowedFd<'_>) -> bool {
    nix::unistd::isatty(fd.as_raw_fd()).unwrap_or(false)
}

/// The window size of a tty, if it is one and has a size.
pub fn window_size(fd: BorrowedFd<'_>) -> Option<(u16, u16)> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes a winsize we own.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) } < 0 {
        return None;
    }
    (ws.ws_row > 0 && ws.ws_col > 0).then_some((ws.ws_row, ws.ws_col))
}

/// The caller's terminal in raw mode, restored when dropped (`run` and
/// `exec` in the foreground with a terminal, as runc does).
pub struct RawMode {
    fd: OwnedFd,
    saved: Termios,
}

impl RawMode {
    /// Put the tty `fd` in raw mode, if it is a tty.
    pub fn enter(fd: BorrowedFd<'_>) -> Option<Self> {
        if !is_tty(fd) {
            return None;
        }
        let owned = fd.try_clone_to_owned().ok()?;
        let saved = make_raw(owned.as_fd()).ok()?;
        Some(RawMode { fd: owned, saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = tcsetattr(self.fd.as_fd(), SetArg::TCSANOW, &self.saved);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn the_master_reaches_the_console_socket_and_sizes_travel() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("console.sock");
        let listener = UnixListener::bind(&path).unwrap();
        check_console_socket(&path).unwrap();
        let pty = open_pty().unwrap();
        send_to_console_socket(&path, pty.master.as_fd()).unwrap();
        let (conn, _) = listener.accept().unwrap();
        let master = receive_from_console_socket(conn.as_fd()).unwrap();
        // Resizing through the received master shows on the slave.
        let ws = libc::winsize {
            ws_row: 33,
            ws_col: 101,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a winsize we own from a valid descriptor.
        assert_eq!(
            unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) },
            0
        );
        assert_eq!(window_size(pty.slave.as_fd()), Some((33, 101)));
    }

    #[test]
    fn a_console_socket_must_be_a_socket() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(matches!(
            check_console_socket(&tmp.path().join("missing")),
            Err(TerminalError::Socket { .. })
        ));
        let file = tmp.path().join("file");
        std::fs::write(&file, "").unwrap();
        assert!(matches!(
            check_console_socket(&file),
            Err(TerminalError::NotASocket { .. })
        ));
    }
}
