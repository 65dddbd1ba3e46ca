//! A container's cgroup (v2) in the guest: freezing, readings, new limits,
//! and the processes in it.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use runvm_protocol::CgroupStats;
use serde_json::Value;

pub struct Cgroup {
    path: PathBuf,
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_default()
}

/// A file of `key value` lines.
fn keyed(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?.to_string(), it.next()?.parse().ok()?))
        })
        .collect()
}

/// A single number, or `None` for "max".
fn limit(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// Memory of the VM, from /proc/meminfo.
fn vm_memory_bytes() -> u64 {
    keyed(&read(Path::new("/proc/meminfo")))
        .get("MemTotal:")
        .copied()
        .unwrap_or(0)
        * 1024
}

fn vm_cpus() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
}

impl Cgroup {
    pub fn new(path: PathBuf) -> Self {
        Cgroup { path }
    }

    /// Pids of every process in the cgroup and below it.
    pub fn pids(&self) -> Vec<i32> {
        let mut pids = Vec::new();
        collect_pids(&self.path, &mut pids);
        pids
    }

    /// Freeze or thaw, and wait until the kernel says it is done.
    pub fn freeze(&self, frozen: bool) -> Result<(), String> {
        let want = if frozen { "1" } else { "0" };
        fs::write(self.path.join("cgroup.freeze"), want)
            .map_err(|e| format!("write cgroup.freeze: {e}"))?;
        for _ in 0..500 {
            let events = keyed(&read(&self.path.join("cgroup.events")));
            if events.get("frozen").map(|v| v.to_string()) == Some(want.to_string()) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err(format!(
            "the cgroup did not {}",
            if frozen { "freeze" } else { "thaw" }
        ))
    }

    pub fn stats(&self) -> CgroupStats {
        let f = |name: &str| read(&self.path.join(name));
        let cpu = keyed(&f("cpu.stat"));
        let c = |k: &str| cpu.get(k).copied().unwrap_or(0);
        let events = keyed(&f("memory.events"));
        CgroupStats {
            cpu_usage_usec: c("usage_usec"),
            cpu_user_usec: c("user_usec"),
            cpu_system_usec: c("system_usec"),
            cpu_nr_periods: c("nr_periods"),
            cpu_nr_throttled: c("nr_throttled"),
            cpu_throttled_usec: c("throttled_usec"),
            memory_current: limit(&f("memory.current")).unwrap_or(0),
            memory_max: limit(&f("memory.max")),
            memory_peak: limit(&f("memory.peak")).unwrap_or(0),
            memory_swap_current: limit(&f("memory.swap.current")).unwrap_or(0),
            memory_swap_max: limit(&f("memory.swap.max")),
            memory_oom_kill: events.get("oom_kill").copied().unwrap_or(0),
            memory_stat: keyed(&f("memory.stat")),
            pids_current: limit(&f("pids.current")).unwrap_or(0),
            pids_max: limit(&f("pids.max")),
            online_cpus: vm_cpus(),
        }
    }

    /// Apply an OCI `linux.resources` object, as runc does on cgroup v2.
    pub fn update(&self, resources: &Value) -> Result<(), String> {
        let writes = resource_writes(resources, vm_memory_bytes(), vm_cpus())?;
        for (file, value) in writes {
            fs::write(self.path.join(&file), &value)
                .map_err(|e| format!("set {file} to {value:?}: {e}"))?;
        }
        Ok(())
    }
}

fn collect_pids(dir: &Path, pids: &mut Vec<i32>) {
    pids.extend(
        read(&dir.join("cgroup.procs"))
            .lines()
            .filter_map(|l| l.trim().parse::<i32>().ok()),
    );
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                collect_pids(&e.path(), pids);
            }
        }
    }
}

fn num(v: &Value, ptr: &str) -> Option<i64> {
    v.pointer(ptr).and_then(Value::as_i64)
}

fn max_or(n: i64) -> String {
    if n < 0 {
        "max".to_string()
    } else {
        n.to_string()
    }
}

/// The cgroup v2 files and values for an OCI `linux.resources` object, with
/// runc's conversions; refuses what the VM does not have.
pub fn resource_writes(
    r: &Value,
    vm_memory: u64,
    vm_cpus: u32,
) -> Result<Vec<(String, String)>, String> {
    // -1 means "no limit"; other negative numbers mean nothing.
    for ptr in [
        "/memory/limit",
        "/memory/reservation",
        "/memory/swap",
        "/pids/limit",
        "/cpu/quota",
    ] {
        if let Some(n) = num(r, ptr).filter(|n| *n < -1) {
            return Err(format!("invalid value {n} for {}", &ptr[1..]));
        }
    }
    let mut w: Vec<(String, String)> = Vec::new();
    let mut put = |f: &str, v: String| w.push((f.to_string(), v));

    let mem_limit = num(r, "/memory/limit");
    if let Some(limit) = mem_limit {
        if limit > 0 && limit as u64 > vm_memory {
            return Err(format!(
                "memory limit of {limit} bytes exceeds the VM's {vm_memory} bytes; \
                 runvm cannot grow a VM yet (set [hypervisor] memory_mib)"
            ));
        }
        if limit == 0 {
            return Err("memory limit must be positive (or -1 for none)".into());
        }
        put("memory.max", max_or(limit));
    }
    if let Some(res) = num(r, "/memory/reservation") {
        put("memory.low", max_or(res));
    }
    if let Some(swap) = num(r, "/memory/swap") {
        // OCI's swap is memory+swap; cgroup v2 limits swap alone.
        let value = match (swap, mem_limit) {
            (s, _) if s < 0 => "max".to_string(),
            (s, Some(l)) if l > 0 => {
                if s < l {
                    return Err("memory+swap limit must not be below the memory limit".into());
                }
                (s - l).to_string()
            }
            _ => return Err("a memory+swap limit needs a memory limit".into()),
        };
        put("memory.swap.max", value);
    }
    if let Some(shares) = num(r, "/cpu/shares").filter(|s| *s > 0) {
        let weight = 1 + ((shares.clamp(2, 262144) - 2) * 9999) / 262142;
        put("cpu.weight", weight.to_string());
    }
    let quota = num(r, "/cpu/quota");
    let period = num(r, "/cpu/period");
    if quota.is_some() || period.is_some() {
        let period = period.filter(|p| *p > 0).unwrap_or(100_000);
        let quota = quota.unwrap_or(-1);
        if quota > period * vm_cpus as i64 {
            return Err(format!(
                "a CPU quota of {quota}us per {period}us asks for more than the VM's {vm_cpus} CPU(s)"
            ));
        }
        let quota = if quota <= 0 {
            "max".to_string()
        } else {
            quota.to_string()
        };
        put("cpu.max", format!("{quota} {period}"));
    }
    if num(r, "/cpu/realtimeRuntime").unwrap_or(0) != 0
        || num(r, "/cpu/realtimePeriod").unwrap_or(0) != 0
    {
        return Err("CPU realtime limits do not exist in cgroup v2".into());
    }
    if let Some(cpus) = r
        .pointer("/cpu/cpus")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
    {
        for cpu in parse_cpu_list(cpus)? {
            if cpu >= vm_cpus {
                return Err(format!(
                    "CPU {cpu} does not exist: the VM has {vm_cpus} CPU(s)"
                ));
            }
        }
        put("cpuset.cpus", cpus.to_string());
    }
    if let Some(mems) = r
        .pointer("/cpu/mems")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
    {
        put("cpuset.mems", mems.to_string());
    }
    if let Some(pids) = num(r, "/pids/limit") {
        put(
            "pids.max",
            if pids <= 0 {
                "max".into()
            } else {
                pids.to_string()
            },
        );
    }
    if let Some(weight) = num(r, "/blockIO/weight").filter(|w| *w > 0) {
        if !(10..=1000).contains(&weight) {
            return Err(format!("blkio weight {weight} is outside 10-1000"));
        }
        put(
            "io.weight",
            format!("default {}", 1 + (weight - 10) * 9999 / 990),
        );
    }
    if let Some(unified) = r.get("unified").and_then(Value::as_object) {
        for (k, v) in unified {
            if k.contains('/') || k.starts_with('.') {
                return Err(format!("invalid unified cgroup key {k:?}"));
            }
            put(
                k,
                v.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string()),
            );
        }
    }
    Ok(w)
}

fn parse_cpu_list(s: &str) -> Result<Vec<u32>, String> {
    let bad = || format!("invalid CPU list {s:?}");
    let mut cpus = Vec::new();
    for part in s.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (
                    a.trim().parse().map_err(|_| bad())?,
                    b.trim().parse().map_err(|_| bad())?,
                );
                if a > b {
                    return Err(bad());
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(part.trim().parse().map_err(|_| bad())?),
        }
    }
    Ok(cpus)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const GIB: u64 = 1 << 30;

    #[test]
    fn runc_conversions() {
        let w = resource_writes(
            &json!({
                "memory": {"limit": 104857600, "reservation": 52428800, "swap": 209715200},
                "cpu": {"shares": 1024, "quota": 50000, "period": 100000, "cpus": "0"},
                "pids": {"limit": 42},
                "blockIO": {"weight": 500}
            }),
            GIB,
            1,
        )
        .unwrap();
        let m: BTreeMap<_, _> = w.into_iter().collect();
        assert_eq!(m["memory.max"], "104857600");
        assert_eq!(m["memory.low"], "52428800");
        assert_eq!(m["memory.swap.max"], "104857600");
        assert_eq!(m["cpu.weight"], "39");
        assert_eq!(m["cpu.max"], "50000 100000");
        assert_eq!(m["cpuset.cpus"], "0");
        assert_eq!(m["pids.max"], "42");
        assert_eq!(m["io.weight"], "default 4950");
    }

    #[test]
    fn unlimited_values_become_max() {
        let w = resource_writes(
            &json!({"memory": {"limit": -1}, "pids": {"limit": 0}}),
            GIB,
            1,
        )
        .unwrap();
        assert_eq!(
            w,
            vec![
                ("memory.max".into(), "max".into()),
                ("pids.max".into(), "max".into())
            ]
        );
    }

    #[test]
    fn more_than_the_vm_has_is_a_clear_error() {
        let err = resource_writes(&json!({"memory": {"limit": 2 * GIB}}), GIB, 1).unwrap_err();
        assert!(err.contains("exceeds the VM's"), "{err}");
        let err = resource_writes(&json!({"cpu": {"quota": 300000, "period": 100000}}), GIB, 2)
            .unwrap_err();
        assert!(err.contains("more than the VM's 2 CPU(s)"), "{err}");
        let err = resource_writes(&json!({"cpu": {"cpus": "0-3"}}), GIB, 2).unwrap_err();
        assert!(err.contains("CPU 2 does not exist"), "{err}");
        assert!(resource_writes(&json!({"cpu": {"cpus": "x"}}), GIB, 2).is_err());
        assert!(resource_writes(&json!({"cpu": {"realtimeRuntime": 5}}), GIB, 2).is_err());
    }

    #[test]
    fn negative_numbers_other_than_minus_one_are_refused() {
        for r in [
            json!({"memory": {"limit": -5}}),
            json!({"pids": {"limit": -2}}),
            json!({"cpu": {"quota": -100}}),
        ] {
            let err = resource_writes(&r, GIB, 1).unwrap_err();
            assert!(err.starts_with("invalid value"), "{err}");
        }
    }
}
