//! A host process recorded by pid and start time, so a reused pid is never
//! mistaken for (or killed as) the process we started.

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ProcessIdentity {
    pub pid: i32,
    /// Field 22 of /proc/<pid>/stat: clock ticks after boot.
    pub start_time: u64,
}

fn stat(pid: i32) -> Option<procfs::process::Stat> {
    procfs::process::Process::new(pid).ok()?.stat().ok()
}

impl ProcessIdentity {
    /// The identity of a live process.
    pub fn of(pid: i32) -> Option<Self> {
        let st = stat(pid)?;
        Some(ProcessIdentity {
            pid,
            start_time: st.starttime,
        })
    }

    /// The same process still exists and has not exited (a zombie has).
    pub fn is_alive(&self) -> bool {
        match stat(self.pid) {
            Some(st) => st.starttime == self.start_time && st.state != 'Z' && st.state != 'X',
            None => false,
        }
    }

    /// Send `sig` if this is still the process recorded.
    pub fn signal(&self, sig: Signal) -> bool {
        self.is_alive() && kill(Pid::from_raw(self.pid), sig).is_ok()
    }

    /// Wait up to `timeout` for the process to be gone; true if it is.
    pub fn wait_gone(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.is_alive() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Live processes whose working directory is `dir`.
    pub fn working_in(dir: &std::path::Path) -> Vec<Self> {
        let Ok(dir) = std::fs::canonicalize(dir) else {
            return Vec::new();
        };
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|&pid| pid != std::process::id() as i32)
            .filter(|pid| {
                std::fs::read_link(format!("/proc/{pid}/cwd"))
                    .ok()
                    .as_deref()
                    == Some(&*dir)
            })
            .filter_map(Self::of)
            .filter(|p| p.is_alive())
            .collect()
    }

    /// SIGKILL the process if it is still the one recorded, and wait for it.
    pub fn kill_and_wait(&self, timeout: Duration) -> bool {
        self.signal(Signal::SIGKILL);
        self.wait_gone(timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive_and_a_changed_start_time_is_not() {
        let me = ProcessIdentity::of(std::process::id() as i32).unwrap();
        assert!(me.is_alive());
        let other = ProcessIdentity {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(!other.is_alive());
        assert!(!other.signal(Signal::SIGTERM));
    }

    #[test]
    fn finds_processes_by_working_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("10")
            .current_dir(tmp.path())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut found = Vec::new();
        while found.is_empty() && std::time::Instant::now() < deadline {
            found = ProcessIdentity::working_in(tmp.path());
        }
        assert_eq!(
            found.iter().map(|p| p.pid).collect::<Vec<_>>(),
            vec![child.id() as i32]
        );
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn exited_child_is_gone() {
        let mut child = std::process::Command::new("sleep")
            .arg("100")
            .spawn()
            .unwrap();
        let id = ProcessIdentity::of(child.id() as i32).expect("a running child has an identity");
        assert!(id.is_alive());
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(id.wait_gone(Duration::from_secs(1)));
        assert!(!id.is_alive());
    }
}
