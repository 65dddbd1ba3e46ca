//! `events`: a container's cgroup readings in runc's JSON shape.

use std::collections::BTreeMap;
use std::time::Duration;

use runvm_protocol::CgroupStats;
use serde::Serialize;

use crate::status::Refusal;
use crate::{ContainerError, Runtime};

/// `events`: one stats object with `stats_only`; otherwise one every
/// `interval` until the container stops. Each is handed to `emit` (which
/// prints it). A container that is not running is an error at the start, in
/// runc's words; one that stops while streaming ends the stream.
pub fn stream(
    rt: &Runtime,
    id: &str,
    stats_only: bool,
    interval: Duration,
    mut emit: impl FnMut(&Event) -> std::io::Result<()>,
) -> Result<(), EventsError> {
    let mut first = true;
    loop {
        match rt.stats(id) {
            Ok(stats) => emit(&Event::stats(id, &stats)).map_err(EventsError::Write)?,
            Err(ContainerError::Refused(Refusal::NotRunning)) if first => {
                return Err(EventsError::NotRunning { id: id.to_string() })
            }
            Err(ContainerError::Refused(Refusal::NotRunning)) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        if stats_only {
            return Ok(());
        }
        first = false;
        std::thread::sleep(interval.max(Duration::from_secs(1)));
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error("container with id {id} is not running")]
    NotRunning { id: String },
    #[error(transparent)]
    Container(#[from] ContainerError),
    #[error("write the event")]
    Write(#[source] std::io::Error),
}

/// One line of `runc events`.
#[derive(Serialize, Debug)]
pub struct Event {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub id: String,
    pub data: Stats,
}

#[derive(Serialize, Debug, Default)]
pub struct Stats {
    pub cpu: Cpu,
    pub memory: Memory,
    pub pids: Pids,
    pub blkio: BTreeMap<String, u64>,
    pub hugetlb: BTreeMap<String, u64>,
    pub intel_rdt: BTreeMap<String, u64>,
    pub network_interfaces: Option<Vec<()>>,
}

#[derive(Serialize, Debug, Default)]
pub struct Cpu {
    pub usage: CpuUsage,
    pub throttling: Throttling,
}

/// Nanoseconds, as runc reports them.
#[derive(Serialize, Debug, Default)]
pub struct CpuUsage {
    pub total: u64,
    /// cgroup v2 has no per-CPU figures.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub percpu: Vec<u64>,
    pub kernel: u64,
    pub user: u64,
}

#[derive(Serialize, Debug, Default)]
pub struct Throttling {
    pub periods: u64,
    pub throttled_periods: u64,
    pub throttled_time: u64,
}

#[derive(Serialize, Debug, Default)]
pub struct Memory {
    pub cache: u64,
    pub usage: MemoryEntry,
    pub swap: MemoryEntry,
    pub raw: BTreeMap<String, u64>,
}

#[derive(Serialize, Debug, Default)]
pub struct MemoryEntry {
    pub limit: u64,
    pub usage: u64,
    pub max: u64,
    pub failcnt: u64,
}

#[derive(Serialize, Debug, Default)]
pub struct Pids {
    pub current: u64,
    pub limit: u64,
}

/// runc prints "no limit" as the largest page-aligned i64.
const UNLIMITED: u64 = 9_223_372_036_854_771_712;

impl Event {
    pub fn stats(id: &str, s: &CgroupStats) -> Self {
        Event {
            kind: "stats",
            id: id.to_string(),
            data: Stats {
                cpu: Cpu {
                    usage: CpuUsage {
                        total: s.cpu_usage_usec * 1000,
                        percpu: Vec::new(),
                        kernel: s.cpu_system_usec * 1000,
                        user: s.cpu_user_usec * 1000,
                    },
                    throttling: Throttling {
                        periods: s.cpu_nr_periods,
                        throttled_periods: s.cpu_nr_throttled,
                        throttled_time: s.cpu_throttled_usec * 1000,
                    },
                },
                memory: Memory {
                    cache: s.memory_stat.get("file").copied().unwrap_or(0),
                    usage: MemoryEntry {
                        limit: s.memory_max.unwrap_or(UNLIMITED),
                        usage: s.memory_current,
                        max: s.memory_peak,
                        failcnt: s.memory_oom_kill,
                    },
                    swap: MemoryEntry {
                        limit: s.memory_swap_max.unwrap_or(UNLIMITED),
                        usage: s.memory_swap_current,
                        max: 0,
                        failcnt: 0,
                    },
                    raw: s.memory_stat.clone(),
                },
                pids: Pids {
                    current: s.pids_current,
                    // runc reports 0 for "max".
                    limit: s.pids_max.unwrap_or(0),
                },
                ..Stats::default()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_become_runc_shaped_json() {
        let s = CgroupStats {
            cpu_usage_usec: 1500,
            cpu_user_usec: 1000,
            cpu_system_usec: 500,
            memory_current: 4096,
            memory_max: Some(1 << 20),
            pids_current: 2,
            pids_max: None,
            ..CgroupStats::default()
        };
        let v = serde_json::to_value(Event::stats("c1", &s)).unwrap();
        assert_eq!(v["type"], "stats");
        assert_eq!(v["id"], "c1");
        assert_eq!(v["data"]["cpu"]["usage"]["total"], 1_500_000);
        assert_eq!(v["data"]["cpu"]["usage"]["user"], 1_000_000);
        assert_eq!(v["data"]["memory"]["usage"]["usage"], 4096);
        assert_eq!(v["data"]["memory"]["usage"]["limit"], 1 << 20);
        assert_eq!(v["data"]["memory"]["swap"]["limit"], UNLIMITED);
        assert_eq!(v["data"]["pids"]["current"], 2);
        assert_eq!(v["data"]["pids"]["limit"], 0);
    }
}
