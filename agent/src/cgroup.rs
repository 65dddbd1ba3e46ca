//! A container's cgroup (v2) in the guest. youki's libcgroups freezes it,
//! reads it, writes its limits and lists its processes; what runvm checks
//! and converts before libcgroups writes limits is in `limits`.

use std::error::Error as _;
use std::path::{Path, PathBuf};

use libcgroups::common::{CgroupManager, ControllerOpt, FreezerState, WrappedIoError};
use libcgroups::v2::manager::{Manager, V2ManagerError};
use oci_spec::runtime::LinuxResources;
use procfs::Current as _;
use runvm_protocol::{AgentError, AgentErrorKind, CgroupStats};

use crate::limits::for_libcgroups;
use crate::process::{fail, AgentResult};

/// Where the guest mounts cgroup2.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

pub struct Cgroup {
    manager: Manager,
    path: PathBuf,
}

impl Cgroup {
    /// The cgroup at `cgroup_path` (the spec's `cgroupsPath`, e.g. `/runvm/<id>`).
    pub fn new(cgroup_path: &str) -> AgentResult<Self> {
        let manager = Manager::new(CGROUP_ROOT.into(), cgroup_path.into())
            .map_err(|e| fail("locate the container's cgroup", e))?;
        let path = Path::new(CGROUP_ROOT).join(cgroup_path.trim_start_matches('/'));
        Ok(Cgroup { manager, path })
    }

    /// Remove the (empty) cgroup.
    pub fn remove(&self) {
        let _ = std::fs::remove_dir(&self.path);
    }

    /// Pids of every process in the cgroup and below it.
    pub fn pids(&self) -> AgentResult<Vec<i32>> {
        let pids = self
            .manager
            .get_all_pids()
            .map_err(|e| fail("list the cgroup's processes", e))?;
        Ok(pids.into_iter().map(|p| p.as_raw()).collect())
    }

    /// Freeze or thaw, and wait until the kernel says it is done.
    pub fn freeze(&self, frozen: bool) -> AgentResult<()> {
        let (state, what) = if frozen {
            (FreezerState::Frozen, "freeze the cgroup")
        } else {
            (FreezerState::Thawed, "thaw the cgroup")
        };
        self.manager.freeze(state).map_err(|e| fail(what, e))
    }

    pub fn stats(&self) -> AgentResult<CgroupStats> {
        let s = self
            .manager
            .stats()
            .map_err(|e| fail("read the cgroup's statistics", e))?;
        // libcgroups reads "max" as u64::MAX.
        let limit = |n: u64| (n != u64::MAX).then_some(n);
        let (cpu, mem) = (&s.cpu, &s.memory);
        Ok(CgroupStats {
            cpu_usage_usec: cpu.usage.usage_total,
            cpu_user_usec: cpu.usage.usage_user,
            cpu_system_usec: cpu.usage.usage_kernel,
            cpu_nr_periods: cpu.throttling.periods,
            cpu_nr_throttled: cpu.throttling.throttled_periods,
            cpu_throttled_usec: cpu.throttling.throttled_time,
            memory_current: mem.memory.usage,
            memory_max: limit(mem.memory.limit),
            memory_peak: mem.memory.max_usage,
            memory_swap_current: mem.memswap.usage,
            memory_swap_max: limit(mem.memswap.limit),
            memory_oom_kill: self.oom_kills(),
            memory_stat: mem.stats.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            pids_current: s.pids.current,
            // libcgroups reads pids.max "max" as 0.
            pids_max: (s.pids.limit != 0).then_some(s.pids.limit),
            online_cpus: vm_cpus(),
        })
    }

    /// Kept: libcgroups' Stats count memory.events' `oom`, not `oom_kill`.
    fn oom_kills(&self) -> u64 {
        std::fs::read_to_string(self.path.join("memory.events"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Apply an OCI `linux.resources` object, as runc 1.1 does on cgroup v2.
    pub fn update(&self, resources: &LinuxResources) -> AgentResult<()> {
        let resources = for_libcgroups(resources, vm_memory_bytes()?, vm_cpus())
            .map_err(|e| AgentError::new(AgentErrorKind::Refused, e))?;
        let opt = ControllerOpt {
            resources: &resources,
            disable_oom_killer: false,
            oom_score_adj: None,
            freezer_state: None,
        };
        self.manager.apply(&opt).map_err(update_error)
    }
}

/// A failed `apply`: the kernel or libcgroups refusing a value is `Refused`,
/// any other failure to read or write a cgroup file is `System`.
fn update_error(err: V2ManagerError) -> AgentError {
    const WHAT: &str = "set the cgroup's limits";
    let io = match &err {
        V2ManagerError::WrappedIo(e)
        | V2ManagerError::CpuSetController(e)
        | V2ManagerError::PidsController(e) => Some(e),
        // The controllers' own errors wrap their I/O error as the source.
        other => other
            .source()
            .and_then(|s| s.downcast_ref::<WrappedIoError>()),
    };
    match io {
        Some(e) if matches!(e.inner().raw_os_error(), Some(libc::EINVAL | libc::ERANGE)) => {
            AgentError::new(AgentErrorKind::Refused, format!("{WHAT}: {e}"))
        }
        Some(e) => fail(WHAT, e),
        None => AgentError::new(AgentErrorKind::Refused, format!("{WHAT}: {err}")),
    }
}

/// Memory of the VM.
fn vm_memory_bytes() -> AgentResult<u64> {
    procfs::Meminfo::current()
        .map(|m| m.mem_total)
        .map_err(|e| fail("read the VM's memory size", e))
}

fn vm_cpus() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// What `update` hands libcgroups ends up in the files runc 1.1 writes.
    #[test]
    fn libcgroups_writes_the_converted_limits() {
        let dir = std::env::temp_dir().join(format!("runvm-cgroup-{}", std::process::id()));
        let cg = dir.join("c");
        std::fs::create_dir_all(&cg).unwrap();
        std::fs::write(dir.join("cgroup.controllers"), "").unwrap();
        for f in ["cpu.max", "cpu.weight", "pids.max"] {
            std::fs::write(cg.join(f), "").unwrap();
        }
        let asked = serde_json::from_value(json!({
            "cpu": {"shares": 512, "quota": 50000, "period": 100000},
            "pids": {"limit": 77}
        }))
        .unwrap();
        let resources = for_libcgroups(&asked, 1 << 30, 1).unwrap();
        let opt = ControllerOpt {
            resources: &resources,
            disable_oom_killer: false,
            oom_score_adj: None,
            freezer_state: None,
        };
        let manager = Manager::new(dir.clone(), "/c".into()).unwrap();
        manager.apply(&opt).unwrap();
        let read = |f: &str| std::fs::read_to_string(cg.join(f)).unwrap();
        assert_eq!(read("cpu.weight"), "20");
        assert_eq!(read("cpu.max"), "50000 100000");
        assert_eq!(read("pids.max"), "77");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_refused_value_is_refused_other_failures_are_the_systems() {
        let io = |errno| {
            V2ManagerError::WrappedIo(WrappedIoError::Write {
                err: std::io::Error::from_raw_os_error(errno),
                path: "/sys/fs/cgroup/runvm/c1/cpuset.mems".into(),
                data: "5".into(),
            })
        };
        let err = update_error(io(libc::EINVAL));
        assert_eq!(err.kind, AgentErrorKind::Refused);
        assert!(
            err.message.starts_with(
                "set the cgroup's limits: failed to write 5 to /sys/fs/cgroup/runvm/c1/cpuset.mems"
            ),
            "{err}"
        );
        assert_eq!(update_error(io(libc::ENOENT)).kind, AgentErrorKind::System);
    }
}
