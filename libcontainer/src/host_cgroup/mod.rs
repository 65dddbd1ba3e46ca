//! The container's cgroup on the host, which holds its VM: Kubernetes,
//! Docker and Podman account and limit a container there, and without it
//! they would see none of a runvm container's memory or CPU.
//!
//! `create` resolves `linux.cgroupsPath` (`path`) and records it in the
//! state; the shim makes the cgroup and joins it before it starts anything,
//! so virtiofsd and QEMU are born in it; a VM taken from the warm pool is
//! moved in. The limits are the container's plus the VM's overhead
//! (`[runtime] cgroup_memory_overhead`, `cgroup_cpu_overhead`), so that the
//! guest's OOM killer acts on the workload before the host's acts on QEMU.
//! `delete` (and a failed create) kills what is left in it and removes it.
//! The guest has a cgroup of its own for the container, which `events
//! --stats` reads.

pub mod path;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cgroups_rs::fs::cpu::CpuController;
use cgroups_rs::fs::cpuset::CpuSetController;
use cgroups_rs::fs::memory::MemController;
use cgroups_rs::fs::{hierarchies, Cgroup};
use cgroups_rs::CgroupPid;
use oci_spec::runtime::LinuxResources;
use serde::{Deserialize, Serialize};

use crate::config::RuntimeConfig;

pub use path::PathError;

/// Where runvm puts the VM's overhead when `sandbox_cgroup_only` is off.
pub const OVERHEAD_PARENT: &str = "runvm_overhead";

#[derive(Debug, thiserror::Error)]
pub enum HostCgroupError {
    #[error(transparent)]
    Path(#[from] PathError),
    #[error("create cgroup {dir}")]
    Create {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("create cgroup {path}")]
    Controllers {
        path: String,
        source: Box<cgroups_rs::fs::error::Error>,
    },
    #[error("move {what} {pid} into cgroup {path}")]
    Join {
        what: &'static str,
        pid: i32,
        path: String,
        source: Box<cgroups_rs::fs::error::Error>,
    },
    #[error("set {limit} = {value} in cgroup {path}")]
    Limit {
        limit: &'static str,
        value: String,
        path: String,
        source: Box<cgroups_rs::fs::error::Error>,
    },
    #[error("cgroup {path} still holds pids {pids:?} after {timeout:?}")]
    Busy {
        path: String,
        pids: Vec<i32>,
        timeout: Duration,
    },
    #[error("remove cgroup {path}")]
    Remove {
        path: String,
        source: Box<cgroups_rs::fs::error::Error>,
    },
    #[error("sandbox_cgroup_only = false needs cgroup v1 on the host: cgroup v2 keeps a process's threads in one cgroup")]
    ThreadsNeedV1,
}

/// What state.json keeps: the cgroup's path below each hierarchy's root,
/// and the overhead's when `sandbox_cgroup_only` is off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overhead: Option<String>,
}

/// A copy of the record in the state directory, written at create: a
/// `delete --force` of a container whose state.json is corrupt still finds
/// the cgroup to remove.
pub const RECORD_FILE: &str = "host-cgroup.json";

impl Record {
    /// The record a create left in state directory `dir`, if it is there
    /// and reads.
    pub fn saved_in(dir: &Path) -> Option<Record> {
        serde_json::from_slice(&std::fs::read(dir.join(RECORD_FILE)).ok()?).ok()
    }

    /// Where this container's cgroup goes, from its spec's path and
    /// `--systemd-cgroup`.
    pub fn resolve(
        cgroups_path: Option<&str>,
        systemd: bool,
        id: &str,
        runtime: &RuntimeConfig,
    ) -> Result<Record, HostCgroupError> {
        let own = own_cgroup(runtime)?;
        let path = path::resolve(cgroups_path, systemd, id, &own)?;
        let overhead = (!runtime.sandbox_cgroup_only).then(|| format!("{OVERHEAD_PARENT}/{id}"));
        Ok(Record { path, overhead })
    }

    /// The cgroup the shim, virtiofsd and QEMU's main thread go in.
    pub fn for_processes(&self) -> &str {
        self.overhead.as_deref().unwrap_or(&self.path)
    }

    /// The shim's first step: make the cgroups and move itself in, so that
    /// what it starts (virtiofsd, QEMU) is born there.
    pub fn join(&self) -> Result<(), HostCgroupError> {
        HostCgroup::create(&self.path)?;
        if let Some(overhead) = &self.overhead {
            HostCgroup::create(overhead)?;
        }
        HostCgroup::at(self.for_processes()).add_process("the shim", std::process::id() as i32)
    }

    /// Remove both cgroups, killing what is still in them; each is tried.
    pub fn remove(&self, timeout: Duration) -> Result<(), HostCgroupError> {
        let container = HostCgroup::at(&self.path).remove(timeout);
        let overhead = match &self.overhead {
            Some(p) => HostCgroup::at(p).remove(timeout),
            None => Ok(()),
        };
        container.and(overhead)
    }
}

/// runvm's own cgroup, below which relative paths go; an error for the
/// split mode where the host cannot have it (cgroup v2).
fn own_cgroup(runtime: &RuntimeConfig) -> Result<String, HostCgroupError> {
    let v2 = hierarchies::is_cgroup2_unified_mode();
    if !runtime.sandbox_cgroup_only && v2 {
        return Err(HostCgroupError::ThreadsNeedV1);
    }
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    Ok(path::own_cgroup(&own, v2))
}

/// What `runvm check` says of host cgroups here: the hierarchy, where a
/// container's VM goes by default and what it is limited to; an error when
/// create would fail (no hierarchy, runvm's own cgroup not writable, the
/// split mode on cgroup v2).
pub fn describe(runtime: &RuntimeConfig) -> Result<String, String> {
    let v2 = hierarchies::is_cgroup2_unified_mode();
    let own = own_cgroup(runtime).map_err(|e| e.to_string())?;
    let probe = HostCgroup::at(&own);
    let dirs = probe.dirs();
    if dirs.is_empty() {
        return Err("no cgroup hierarchy is mounted under /sys/fs/cgroup".into());
    }
    if let Some(dir) = dirs
        .iter()
        .find(|d| nix::unistd::access(d.as_path(), nix::unistd::AccessFlags::W_OK).is_err())
    {
        return Err(format!(
            "{} is not writable: a container's cgroup cannot be made below it",
            dir.display()
        ));
    }
    let controllers: Vec<String> = probe
        .cgroup
        .subsystems()
        .iter()
        .map(|s| s.controller_name())
        .collect();
    let default = if own.is_empty() {
        "/<id>".to_string()
    } else {
        format!("/{own}/<id>")
    };
    let split = if runtime.sandbox_cgroup_only {
        String::new()
    } else {
        format!(", the rest of the VM in /{OVERHEAD_PARENT}/<id>")
    };
    Ok(format!(
        "cgroup {} ({}): a VM goes in its container's cgroupsPath, or {default}{split}; \
         limits: the container's, plus {} MiB of memory and {} CPU for the VM",
        if v2 { "v2" } else { "v1" },
        controllers.join(", "),
        runtime.cgroup_memory_overhead,
        runtime.cgroup_cpu_overhead,
    ))
}

/// One cgroup, in every hierarchy the host has.
pub struct HostCgroup {
    path: String,
    cgroup: Cgroup,
}

impl HostCgroup {
    pub fn at(path: &str) -> HostCgroup {
        HostCgroup {
            path: path.to_string(),
            cgroup: Cgroup::load(hierarchies::auto(), path),
        }
    }

    /// Its directories: one per controller on cgroup v1, one on v2.
    pub fn dirs(&self) -> Vec<PathBuf> {
        if self.cgroup.v2() {
            return vec![Path::new(hierarchies::UNIFIED_MOUNTPOINT).join(&self.path)];
        }
        let mut dirs: Vec<PathBuf> = self
            .cgroup
            .subsystems()
            .iter()
            .map(|s| s.to_controller().path().to_path_buf())
            .collect();
        dirs.dedup();
        dirs
    }

    /// Make it (and its parents) in every hierarchy; on failure, remove
    /// what this made.
    pub fn create(path: &str) -> Result<HostCgroup, HostCgroupError> {
        let cg = HostCgroup::at(path);
        let dirs = cg.dirs();
        let firsts: Vec<PathBuf> = dirs.iter().map(|d| first_missing(d)).collect();
        let made = dirs.iter().try_for_each(|dir| {
            std::fs::create_dir_all(dir).map_err(|source| HostCgroupError::Create {
                dir: dir.clone(),
                source,
            })
        });
        // Then the library's own create: cpuset's cpus and mems copied from
        // the parents, v2's controllers enabled down the path.
        let made = made.and_then(|()| {
            cg.cgroup
                .create()
                .map_err(|source| HostCgroupError::Controllers {
                    path: path.to_string(),
                    source: Box::new(source),
                })
        });
        if let Err(e) = made {
            for (dir, first) in dirs.iter().zip(&firsts) {
                remove_up_to(dir, first);
            }
            return Err(e);
        }
        Ok(cg)
    }

    /// Move a process (all its threads) in.
    pub fn add_process(&self, what: &'static str, pid: i32) -> Result<(), HostCgroupError> {
        self.cgroup
            .add_task_by_tgid(CgroupPid::from(pid as u64))
            .map_err(|source| self.join_error(what, pid, source))
    }

    /// Move one thread in (cgroup v1).
    pub fn add_thread(&self, what: &'static str, tid: i32) -> Result<(), HostCgroupError> {
        self.cgroup
            .add_task(CgroupPid::from(tid as u64))
            .map_err(|source| self.join_error(what, tid, source))
    }

    fn join_error(
        &self,
        what: &'static str,
        pid: i32,
        source: cgroups_rs::fs::error::Error,
    ) -> HostCgroupError {
        HostCgroupError::Join {
            what,
            pid,
            path: self.path.clone(),
            source: Box::new(source),
        }
    }

    /// The processes in it.
    pub fn procs(&self) -> Vec<i32> {
        let mut pids: Vec<i32> = self.cgroup.procs().iter().map(|p| p.pid as i32).collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    pub fn apply(&self, limits: &Limits) -> Result<(), HostCgroupError> {
        let fail = |limit, value: String| {
            let path = self.path.clone();
            move |source| HostCgroupError::Limit {
                limit,
                value,
                path,
                source: Box::new(source),
            }
        };
        let v2 = self.cgroup.v2();
        if let (Some(bytes), Some(mem)) =
            (limits.memory, self.cgroup.controller_of::<MemController>())
        {
            mem.set_limit(bytes)
                .map_err(fail("memory limit", bytes.to_string()))?;
        }
        if let Some(cpu) = self.cgroup.controller_of::<CpuController>() {
            if let Some(shares) = limits.cpu_shares {
                let value = if v2 { shares_to_weight(shares) } else { shares };
                cpu.set_shares(value)
                    .map_err(fail("cpu shares", value.to_string()))?;
            }
            if limits.cpu_quota.is_some() || limits.cpu_period.is_some() {
                let value = format!("{:?} {:?}", limits.cpu_quota, limits.cpu_period);
                // The period first: v1 refuses a quota below its period's
                // minimum ratio only against the current period.
                if let Some(period) = limits.cpu_period {
                    cpu.set_cfs_period(period)
                        .map_err(fail("cpu period", value.clone()))?;
                }
                if let Some(quota) = limits.cpu_quota {
                    cpu.set_cfs_quota(quota).map_err(fail("cpu quota", value))?;
                }
            }
        }
        if let Some(cpuset) = self.cgroup.controller_of::<CpuSetController>() {
            if let Some(cpus) = &limits.cpus {
                cpuset
                    .set_cpus(cpus)
                    .map_err(fail("cpuset cpus", cpus.clone()))?;
            }
            if let Some(mems) = &limits.mems {
                cpuset
                    .set_mems(mems)
                    .map_err(fail("cpuset mems", mems.clone()))?;
            }
        }
        Ok(())
    }

    /// Kill what is still in it, wait until it is empty, remove it. Its
    /// parents stay, as runc leaves them.
    pub fn remove(&self, timeout: Duration) -> Result<(), HostCgroupError> {
        if !self.cgroup.exists() {
            return Ok(());
        }
        let deadline = Instant::now() + timeout;
        loop {
            let pids = self.procs();
            if pids.is_empty() {
                break;
            }
            for pid in &pids {
                // SAFETY: kill(2) has no memory effects; the pids are
                // what the cgroup holds now.
                unsafe { libc::kill(*pid, libc::SIGKILL) };
            }
            if Instant::now() >= deadline {
                return Err(HostCgroupError::Busy {
                    path: self.path.clone(),
                    pids,
                    timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // An exiting process can hold the directory busy for a moment
        // after it left cgroup.procs.
        loop {
            match self.cgroup.delete() {
                Ok(()) => return Ok(()),
                Err(_) if Instant::now() < deadline && self.cgroup.exists() => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(_) if !self.cgroup.exists() => return Ok(()),
                Err(source) => {
                    return Err(HostCgroupError::Remove {
                        path: self.path.clone(),
                        source: Box::new(source),
                    })
                }
            }
        }
    }
}

/// The first directory of `dir` and its ancestors that does not exist yet.
fn first_missing(dir: &Path) -> PathBuf {
    let mut first = dir.to_path_buf();
    let mut at = dir;
    while let Some(parent) = at.parent() {
        if at.exists() {
            break;
        }
        first = at.to_path_buf();
        at = parent;
    }
    first
}

/// rmdir `dir` and its parents up to `first` (which `create` made).
fn remove_up_to(dir: &Path, first: &Path) {
    if !dir.starts_with(first) {
        return;
    }
    let mut at = Some(dir);
    while let Some(d) = at {
        let _ = std::fs::remove_dir(d);
        if d == first {
            break;
        }
        at = d.parent();
    }
}

/// runc's conversion of cgroup v1 shares to a v2 weight.
fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 0;
    }
    1 + (shares.clamp(2, 262144) - 2) * 9999 / 262142
}

/// Memory and CPU limits, the container's (from its spec and `update`) or
/// the host cgroup's ([`Limits::host`]); `None`: none given, left as it is.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Limits {
    pub memory: Option<i64>,
    pub cpu_shares: Option<u64>,
    pub cpu_quota: Option<i64>,
    pub cpu_period: Option<u64>,
    pub cpus: Option<String>,
    pub mems: Option<String>,
}

impl Limits {
    /// A container's, from its spec's (or `update`'s) resources.
    pub fn of(resources: Option<&LinuxResources>) -> Limits {
        let memory = resources.and_then(|r| r.memory().as_ref());
        let cpu = resources.and_then(|r| r.cpu().as_ref());
        Limits {
            memory: memory.and_then(|m| m.limit()),
            cpu_shares: cpu.and_then(|c| c.shares()),
            cpu_quota: cpu.and_then(|c| c.quota()),
            cpu_period: cpu.and_then(|c| c.period()),
            cpus: cpu.and_then(|c| c.cpus().clone()).filter(|s| !s.is_empty()),
            mems: cpu.and_then(|c| c.mems().clone()).filter(|s| !s.is_empty()),
        }
    }

    /// `update`'s new limits over these.
    pub fn merge(&mut self, newer: Limits) {
        let Limits {
            memory,
            cpu_shares,
            cpu_quota,
            cpu_period,
            cpus,
            mems,
        } = newer;
        self.memory = memory.or(self.memory);
        self.cpu_shares = cpu_shares.or(self.cpu_shares);
        self.cpu_quota = cpu_quota.or(self.cpu_quota);
        self.cpu_period = cpu_period.or(self.cpu_period);
        self.cpus = cpus.or(self.cpus.take());
        self.mems = mems.or(self.mems.take());
    }

    /// The host cgroup's limits for a VM of `vm_memory_mib`. The guest
    /// can use all of its memory whatever the container's limit (its
    /// kernel, page cache, agent), and QEMU's own beside it: the host's
    /// limit is the VM's size plus the overhead, so only a runaway QEMU
    /// meets it. With `vcpus_only` (sandbox_cgroup_only off) the cgroup
    /// holds the vCPU threads alone: the CPU limits without overhead, and
    /// no memory limit (a process's memory is charged to one cgroup, the
    /// overhead's, whichever thread touches it).
    pub fn host(&self, vm_memory_mib: u32, runtime: &RuntimeConfig) -> Limits {
        let vcpus_only = !runtime.sandbox_cgroup_only;
        let memory = self
            .memory
            .filter(|l| *l > 0 && !vcpus_only)
            .map(|_| (i64::from(vm_memory_mib) + i64::from(runtime.cgroup_memory_overhead)) << 20);
        let period = self.cpu_period.unwrap_or(100_000);
        let cpu_quota = self.cpu_quota.filter(|q| *q > 0).map(|q| {
            let extra = if vcpus_only {
                0.0
            } else {
                runtime.cgroup_cpu_overhead * period as f64
            };
            q + extra.round() as i64
        });
        Limits {
            memory,
            cpu_shares: self.cpu_shares.filter(|s| *s > 0),
            cpu_period: cpu_quota.map(|_| period),
            cpu_quota,
            cpus: self.cpus.clone(),
            mems: self.mems.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn resources(v: serde_json::Value) -> LinuxResources {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn the_host_limit_is_the_vm_plus_its_overhead() {
        let rt = RuntimeConfig::default();
        let r = resources(json!({"memory": {"limit": 64 << 20},
            "cpu": {"quota": 50000, "period": 100000, "shares": 512, "cpus": "1"}}));
        let limits = Limits::of(Some(&r)).host(256, &rt);
        assert_eq!(
            limits,
            Limits {
                memory: Some((256 + 256) << 20),
                cpu_shares: Some(512),
                cpu_quota: Some(100_000),
                cpu_period: Some(100_000),
                cpus: Some("1".into()),
                mems: None,
            }
        );
    }

    #[test]
    fn no_limit_in_the_container_is_none_on_the_host() {
        let rt = RuntimeConfig::default();
        assert_eq!(Limits::of(None).host(256, &rt), Limits::default());
        let r = resources(json!({"memory": {"limit": -1}, "cpu": {"quota": -1}}));
        assert_eq!(Limits::of(Some(&r)).host(256, &rt), Limits::default());
    }

    #[test]
    fn vcpu_threads_alone_get_the_cpu_limit_without_overhead_and_no_memory_limit() {
        let rt = RuntimeConfig {
            sandbox_cgroup_only: false,
            ..RuntimeConfig::default()
        };
        let r = resources(json!({"memory": {"limit": 64 << 20}, "cpu": {"quota": 20000}}));
        let limits = Limits::of(Some(&r)).host(256, &rt);
        assert_eq!(limits.memory, None);
        assert_eq!(
            (limits.cpu_quota, limits.cpu_period),
            (Some(20000), Some(100_000))
        );
    }

    #[test]
    fn update_changes_what_it_names_and_keeps_the_rest() {
        let mut w = Limits::of(Some(&resources(
            json!({"cpu": {"quota": 50000, "period": 50000, "cpus": "0"}}),
        )));
        w.merge(Limits::of(Some(&resources(
            json!({"cpu": {"quota": 25000}}),
        ))));
        let limits = w.host(256, &RuntimeConfig::default());
        assert_eq!(limits.cpu_quota, Some(25000 + 25000));
        assert_eq!(limits.cpu_period, Some(50000));
        assert_eq!(limits.cpus.as_deref(), Some("0"));
    }

    #[test]
    fn shares_convert_to_weights_as_runc_converts_them() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262144), 10000);
    }

    #[test]
    fn a_failed_create_removes_the_directories_it_made_and_no_others() {
        let tmp = tempfile::tempdir().unwrap();
        let leaf = tmp.path().join("a/b/c");
        let first = first_missing(&leaf);
        assert_eq!(first, tmp.path().join("a"));
        std::fs::create_dir_all(&leaf).unwrap();
        remove_up_to(&leaf, &first);
        assert!(!tmp.path().join("a").exists());
        assert!(tmp.path().exists());
    }
}
