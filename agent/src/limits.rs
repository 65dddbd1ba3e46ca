//! What `update` may ask of a container's cgroup, and how libcgroups is
//! told: runvm's checks against the VM's size, and runc 1.1's semantics
//! where libcgroups follows a later runc or differs.

use oci_spec::runtime::LinuxResources;

/// What to hand libcgroups for `r`: refuses what the VM does not have or
/// what means nothing, then makes runc 1.1's conversions.
pub fn for_libcgroups(
    r: &LinuxResources,
    vm_memory: u64,
    vm_cpus: u32,
) -> Result<LinuxResources, String> {
    check(r, vm_memory, vm_cpus)?;
    Ok(runc_1_1(r.clone()))
}

/// Kept: libcgroups knows nothing of the VM's size, and lets through what
/// runvm refuses (a pids limit or CPU quota below -1, a memory limit of 0, a
/// negative realtime runtime, a unified key that leaves the cgroup).
fn check(r: &LinuxResources, vm_memory: u64, vm_cpus: u32) -> Result<(), String> {
    let memory = r.memory().as_ref();
    let cpu = r.cpu().as_ref();
    let mem_limit = memory.and_then(|m| m.limit());
    // -1 means "no limit"; other negative numbers mean nothing.
    for (name, n) in [
        ("memory/limit", mem_limit),
        ("memory/reservation", memory.and_then(|m| m.reservation())),
        ("memory/swap", memory.and_then(|m| m.swap())),
        ("pids/limit", r.pids().as_ref().map(|p| p.limit())),
        ("cpu/quota", cpu.and_then(|c| c.quota())),
    ] {
        if let Some(n) = n.filter(|n| *n < -1) {
            return Err(format!("invalid value {n} for {name}"));
        }
    }
    if let Some(limit) = mem_limit {
        if limit > 0 && limit as u64 > vm_memory {
            return Err(format!(
                "memory limit of {limit} bytes exceeds the VM's {vm_memory} bytes; \
                 with [hypervisor.qemu] memory_slots runvm grows the VM, within default_maxmemory \
                 (or set default_memory)"
            ));
        }
        if limit == 0 {
            return Err("memory limit must be positive (or -1 for none)".into());
        }
    }
    let swap = memory.and_then(|m| m.swap());
    if swap.is_some_and(|s| s > 0) && mem_limit.is_none_or(|l| l <= 0) {
        return Err("a memory+swap limit needs a memory limit".into());
    }
    if let Some(cpu) = cpu {
        if cpu.quota().is_some() || cpu.period().is_some() {
            let period = cpu.period().filter(|p| *p > 0).unwrap_or(100_000);
            let quota = cpu.quota().unwrap_or(-1);
            if i128::from(quota) > i128::from(period) * i128::from(vm_cpus) {
                return Err(format!(
                    "a CPU quota of {quota}us per {period}us asks for more than the VM's {vm_cpus} CPU(s)"
                ));
            }
        }
        if cpu.realtime_runtime().unwrap_or(0) != 0 || cpu.realtime_period().unwrap_or(0) != 0 {
            return Err("CPU realtime limits do not exist in cgroup v2".into());
        }
        if let Some(cpus) = cpu.cpus().as_deref().filter(|s| !s.is_empty()) {
            if let Some(cpu) = parse_cpu_list(cpus)?.into_iter().find(|c| *c >= vm_cpus) {
                return Err(format!(
                    "CPU {cpu} does not exist: the VM has {vm_cpus} CPU(s)"
                ));
            }
        }
    }
    if let Some(weight) = r.block_io().as_ref().and_then(|b| b.weight()) {
        if weight > 0 && !(10..=1000).contains(&weight) {
            return Err(format!("blkio weight {weight} is outside 10-1000"));
        }
    }
    for key in r.unified().iter().flat_map(|u| u.keys()) {
        if key.contains('/') || key.starts_with('.') {
            return Err(format!("invalid unified cgroup key {key:?}"));
        }
    }
    Ok(())
}

/// Where libcgroups 0.7 and runc 1.1 (which runvm's tests compare against)
/// differ, runc's way:
/// - cpu shares become `cpu.weight` by runc 1.1's linear formula; libcgroups
///   uses runc 1.3's quadratic one (shares 512: 20, not 59);
/// - blkio weight becomes `io.weight` here: libcgroups computes it in u16,
///   which overflows for weights above 16;
/// - 0 means "unset" for a pids limit (libcgroups writes 1) and a CPU
///   period (libcgroups writes it), and an empty cpuset means "unset";
/// - swap -1 without a memory limit lifts the swap limit (libcgroups refuses).
///
/// Explicit `unified` values win, as they do in runc.
fn runc_1_1(mut r: LinuxResources) -> LinuxResources {
    let mut unified = r.unified().clone().unwrap_or_default();
    if let Some(cpu) = r.cpu_mut() {
        if let Some(shares) = cpu.shares().filter(|s| *s > 0) {
            let weight = 1 + (shares.clamp(2, 262_144) - 2) * 9999 / 262_142;
            unified
                .entry("cpu.weight".into())
                .or_insert(weight.to_string());
        }
        cpu.set_shares(None);
        cpu.set_period(cpu.period().filter(|p| *p > 0));
        cpu.set_cpus(cpu.cpus().clone().filter(|s| !s.is_empty()));
        cpu.set_mems(cpu.mems().clone().filter(|s| !s.is_empty()));
    }
    if let Some(b) = r.block_io_mut() {
        if let Some(weight) = b.weight().filter(|w| *w > 0) {
            let weight = 1 + (u32::from(weight).max(10) - 10) * 9999 / 990;
            unified
                .entry("io.weight".into())
                .or_insert(format!("default {weight}"));
        }
        b.set_weight(None);
    }
    if r.pids().as_ref().is_some_and(|p| p.limit() == 0) {
        r.set_pids(None);
    }
    if let Some(m) = r.memory_mut() {
        if m.swap() == Some(-1) && m.limit().is_none() {
            unified
                .entry("memory.swap.max".into())
                .or_insert("max".into());
            m.set_swap(None);
        }
    }
    r.set_unified((!unified.is_empty()).then_some(unified));
    r
}

/// Kept: to check a cpuset against the VM's CPUs (libcgroups writes it as is).
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
    use serde_json::{json, Value};

    const GIB: u64 = 1 << 30;

    fn res(v: Value) -> LinuxResources {
        serde_json::from_value(v).unwrap()
    }

    /// What libcgroups is handed, as JSON.
    fn handed(v: Value, vm_memory: u64, vm_cpus: u32) -> Result<Value, String> {
        for_libcgroups(&res(v), vm_memory, vm_cpus).map(|r| serde_json::to_value(r).unwrap())
    }

    #[test]
    fn runc_conversions() {
        let out = handed(
            json!({
                "memory": {"limit": 104857600, "reservation": 52428800, "swap": 209715200},
                "cpu": {"shares": 1024, "quota": 50000, "period": 100000, "cpus": "0"},
                "pids": {"limit": 42},
                "blockIO": {"weight": 500}
            }),
            GIB,
            1,
        )
        .unwrap();
        assert_eq!(
            out,
            json!({
                // libcgroups turns memory+swap into memory.swap.max itself.
                "memory": {"limit": 104857600, "reservation": 52428800, "swap": 209715200},
                "cpu": {"quota": 50000, "period": 100000, "cpus": "0"},
                "pids": {"limit": 42},
                "blockIO": {},
                "unified": {"cpu.weight": "39", "io.weight": "default 4950"}
            })
        );
    }

    #[test]
    fn shares_use_runc_1_1s_linear_formula() {
        let out = handed(json!({"cpu": {"shares": 512}}), GIB, 1).unwrap();
        assert_eq!(out["unified"]["cpu.weight"], "20");
        assert!(out["cpu"].get("shares").is_none(), "{out}");
        // An explicit unified value wins.
        let out = handed(
            json!({"cpu": {"shares": 512}, "unified": {"cpu.weight": "7"}}),
            GIB,
            1,
        )
        .unwrap();
        assert_eq!(out["unified"]["cpu.weight"], "7");
    }

    #[test]
    fn zero_and_empty_mean_unset() {
        let out = handed(
            json!({"pids": {"limit": 0}, "cpu": {"quota": 50000, "period": 0, "cpus": ""}}),
            GIB,
            1,
        )
        .unwrap();
        assert_eq!(out, json!({"cpu": {"quota": 50000}}));
        let out = handed(
            json!({"memory": {"limit": -1}, "pids": {"limit": -1}}),
            GIB,
            1,
        )
        .unwrap();
        assert_eq!(out, json!({"memory": {"limit": -1}, "pids": {"limit": -1}}));
        let out = handed(json!({"memory": {"swap": -1}}), GIB, 1).unwrap();
        assert_eq!(
            out,
            json!({"memory": {}, "unified": {"memory.swap.max": "max"}})
        );
    }

    #[test]
    fn more_than_the_vm_has_is_a_clear_error() {
        let err = handed(json!({"memory": {"limit": 2 * GIB}}), GIB, 1).unwrap_err();
        assert!(err.contains("exceeds the VM's"), "{err}");
        let err = handed(json!({"cpu": {"quota": 300000, "period": 100000}}), GIB, 2).unwrap_err();
        assert!(err.contains("more than the VM's 2 CPU(s)"), "{err}");
        let err = handed(json!({"cpu": {"cpus": "0-3"}}), GIB, 2).unwrap_err();
        assert!(err.contains("CPU 2 does not exist"), "{err}");
        assert!(handed(json!({"cpu": {"cpus": "x"}}), GIB, 2).is_err());
        assert!(handed(json!({"cpu": {"realtimeRuntime": 5}}), GIB, 2).is_err());
        assert!(handed(json!({"memory": {"limit": 0}}), GIB, 2).is_err());
        assert!(handed(json!({"memory": {"swap": GIB}}), GIB, 2).is_err());
        assert!(handed(json!({"blockIO": {"weight": 5}}), GIB, 2).is_err());
        assert!(handed(json!({"unified": {"../cpu.max": "1"}}), GIB, 2).is_err());
    }

    #[test]
    fn negative_numbers_other_than_minus_one_are_refused() {
        for r in [
            json!({"memory": {"limit": -5}}),
            json!({"pids": {"limit": -2}}),
            json!({"cpu": {"quota": -100}}),
        ] {
            let err = handed(r, GIB, 1).unwrap_err();
            assert!(err.starts_with("invalid value"), "{err}");
        }
        let err = handed(json!({"pids": {"limit": -5}}), GIB, 1).unwrap_err();
        assert_eq!(err, "invalid value -5 for pids/limit");
    }
}
