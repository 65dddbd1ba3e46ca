//! Terminals: youki creates the pty inside the container and sends its master
//! over a unix socket (runc's console-socket protocol); the agent receives it,
//! relays it to the host and sets its window size.

use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use nix::cmsg_space;
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use tokio::net::UnixListener;

const CONSOLE_DIR: &str = "/run/runvm/console";
/// How long youki may take to send the pty master after it exists.
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(30);

static NEXT: AtomicUsize = AtomicUsize::new(0);

pub struct ConsoleSocket {
    listener: UnixListener,
    pub path: PathBuf,
}

impl ConsoleSocket {
    pub fn bind() -> std::io::Result<Self> {
        std::fs::create_dir_all(CONSOLE_DIR)?;
        let path = PathBuf::from(format!(
            "{CONSOLE_DIR}/{}.sock",
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_file(&path);
        Ok(ConsoleSocket {
            listener: UnixListener::bind(&path)?,
            path,
        })
    }

    /// Accept youki's connection and take the pty master it sends.
    pub async fn receive(self) -> Result<OwnedFd, String> {
        let accept = tokio::time::timeout(RECEIVE_TIMEOUT, self.listener.accept());
        let (stream, _) = accept
            .await
            .map_err(|_| "no terminal arrived from the container".to_string())?
            .map_err(|e| format!("accept on the console socket: {e}"))?;
        let stream = stream.into_std().map_err(|e| e.to_string())?;
        stream.set_nonblocking(false).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(RECEIVE_TIMEOUT))
            .map_err(|e| e.to_string())?;
        let _ = std::fs::remove_file(&self.path);
        tokio::task::spawn_blocking(move || receive_fd(stream.as_raw_fd()))
            .await
            .map_err(|e| e.to_string())?
    }
}

fn receive_fd(sock: i32) -> Result<OwnedFd, String> {
    let mut name = [0u8; 4096];
    let mut iov = [IoSliceMut::new(&mut name)];
    let mut space = cmsg_space!([i32; 1]);
    let msg = recvmsg::<()>(sock, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(|e| format!("receive the terminal: {e}"))?;
    for cmsg in msg.cmsgs().map_err(|e| e.to_string())? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            if let Some(&fd) = fds.first() {
                // SAFETY: SCM_RIGHTS just installed this descriptor in our
                // table; nothing else owns it.
                return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    Err("the container closed its console socket without sending a terminal".into())
}

/// Set the window size of the terminal whose master is `master`.
pub fn resize(master: &OwnedFd, rows: u16, cols: u16) -> std::io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize we own from a valid descriptor.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
