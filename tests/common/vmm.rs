//! A container's QEMU, as its state records it.

use std::fs;
use std::time::{Duration, Instant};

use serde_json::Value;

/// A QEMU process, by pid and start time (so a reused pid is not it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vmm {
    pub pid: i32,
    start_time: u64,
}

impl Vmm {
    /// The `vmm` a state records.
    pub fn of(state: &Value) -> Vmm {
        Vmm {
            pid: state["vmm"]["pid"]
                .as_i64()
                .expect("the state names the VM's QEMU") as i32,
            start_time: state["vmm"]["startTime"].as_u64().unwrap_or_default(),
        }
    }

    /// Still running (a zombie is not).
    pub fn alive(&self) -> bool {
        let Ok(stat) = fs::read_to_string(format!("/proc/{}/stat", self.pid)) else {
            return false;
        };
        // After the command's closing parenthesis: state, then 19 fields
        // to the start time.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        fields.first().is_some_and(|s| *s != "Z" && *s != "X")
            && fields.get(19).and_then(|t| t.parse().ok()) == Some(self.start_time)
    }

    /// Wait until it is gone; whether it is.
    pub fn wait_gone(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.alive() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        true
    }
}
