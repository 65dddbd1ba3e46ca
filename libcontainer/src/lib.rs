//! runvm's host-side library.
//!
//! The `runvm` binary is a thin command-line front end over this crate: the
//! state store, the lifecycle rules, the runtime configuration, the hypervisor
//! backends, the per-container shim and the client of the guest agent.

pub mod agent;
pub mod check;
pub mod checkpoint;
pub mod child;
pub mod config;
pub mod container;
pub mod control;
pub mod events;
pub mod exec;
pub mod factory;
pub mod features;
pub mod hooks;
pub mod host_cgroup;
pub mod hypervisor;
pub mod id;
pub mod locate;
pub mod lock;
pub mod namespaces;
pub mod network;
pub mod overrides;
pub mod procinfo;
pub mod resources;
pub mod seccomp;
pub mod share;
pub mod shim;
pub mod signal;
pub mod sizing;
pub mod sockdir;
pub mod spec;
pub mod state;
pub mod status;
pub mod terminal;
pub mod virtiofsd;

pub use container::{ContainerError, Runtime};
pub use status::ContainerStatus;

/// The OCI runtime spec version runvm implements, as reported in state JSON.
pub const OCI_VERSION: &str = "1.0.2";

/// At most `max` bytes of a file from byte `from` on; empty if it cannot be
/// read. For logs whose length the guest decides.
pub fn read_range(path: &std::path::Path, from: u64, max: u64) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let mut bytes = Vec::new();
    if let Ok(mut file) = std::fs::File::open(path) {
        if file.seek(SeekFrom::Start(from)).is_ok() {
            let _ = file.take(max).read_to_end(&mut bytes);
        }
    }
    bytes
}

/// The last `max` bytes of a file (all of it if shorter), as text.
pub fn read_tail(path: &std::path::Path, max: u64) -> String {
    let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    String::from_utf8_lossy(&read_range(path, len.saturating_sub(max), max)).into_owned()
}

/// Render an error with its chain of sources: `a: b: c`. A source whose text
/// the message already ends with is not repeated.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !text.is_empty() && !msg.ends_with(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        source = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    #[test]
    fn read_tail_reads_the_end_only() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("console.log");
        assert_eq!(super::read_tail(&log, 4), "");
        std::fs::write(&log, "abcdefgh").unwrap();
        assert_eq!(super::read_tail(&log, 4), "efgh");
        assert_eq!(super::read_tail(&log, 100), "abcdefgh");
    }
}
