//! The VM a container needs: at least the configured size, grown to what its
//! spec's resource limits ask for, as Kata sizes its VMs.

use oci_spec::runtime::Spec;

use crate::config::Config;

/// Memory the guest kernel and agent need beside the container's limit.
pub const GUEST_OVERHEAD_MIB: u64 = 64;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SizingError {
    #[error("the container asks for {asked} CPUs; the host has {host}")]
    TooManyCpus { asked: u32, host: u32 },
    #[error("the container asks for {asked} MiB of memory; the host has {host} MiB")]
    TooMuchMemory { asked: u64, host: u64 },
}

/// CPUs the container's limits need: its CFS quota, or the highest CPU of
/// its cpuset, whichever is more.
fn cpus_needed(spec: &Spec) -> u32 {
    let Some(cpu) = spec
        .linux()
        .as_ref()
        .and_then(|l| l.resources().as_ref())
        .and_then(|r| r.cpu().as_ref())
    else {
        return 0;
    };
    let by_quota = match (cpu.quota(), cpu.period()) {
        (Some(q), Some(p)) if q > 0 && p > 0 => (q as u64).div_ceil(p) as u32,
        (Some(q), None) if q > 0 => (q as u64).div_ceil(100_000) as u32,
        _ => 0,
    };
    let by_cpuset = cpu
        .cpus()
        .as_deref()
        .map(|list| {
            list.split(',')
                .filter_map(|part| part.rsplit('-').next()?.trim().parse::<u32>().ok())
                .map(|highest| highest + 1)
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0);
    by_quota.max(by_cpuset)
}

fn memory_needed_mib(spec: &Spec) -> u64 {
    spec.linux()
        .as_ref()
        .and_then(|l| l.resources().as_ref())
        .and_then(|r| r.memory().as_ref())
        .and_then(|m| m.limit())
        .map(vm_mib_for_limit)
        .unwrap_or(0)
}

/// The VM's memory a container's memory limit (bytes) needs; 0 for none.
pub fn vm_mib_for_limit(limit: i64) -> u64 {
    if limit <= 0 {
        return 0;
    }
    (limit as u64).div_ceil(1 << 20) + GUEST_OVERHEAD_MIB
}

/// `config` with the VM grown to fit `spec`; the host's CPUs and memory
/// bound it.
pub fn fit(
    config: &Config,
    spec: &Spec,
    host_cpus: u32,
    host_mib: u64,
) -> Result<Config, SizingError> {
    let mut sized = config.clone();
    let cpus = cpus_needed(spec);
    if cpus > host_cpus {
        return Err(SizingError::TooManyCpus {
            asked: cpus,
            host: host_cpus,
        });
    }
    sized.vmm_mut().default_vcpus = sized.vmm().default_vcpus.max(cpus);
    let mib = memory_needed_mib(spec);
    if mib > host_mib {
        return Err(SizingError::TooMuchMemory {
            asked: mib,
            host: host_mib,
        });
    }
    // Whole 2 MiB pages, as QEMU likes them.
    let mib = mib.div_ceil(2) * 2;
    sized.vmm_mut().default_memory = sized.vmm().default_memory.max(mib as u32);
    Ok(sized)
}

/// The host's size, for the bounds of a VM.
pub fn host() -> crate::overrides::Host {
    let (cpus, mib) = host_capacity();
    crate::overrides::Host { cpus, mib }
}

/// The host's CPUs and memory (MiB).
pub fn host_capacity() -> (u32, u64) {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1);
    let mib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map(|kib| kib / 1024)
        .unwrap_or(u64::MAX);
    (cpus, mib)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(resources: serde_json::Value) -> Spec {
        serde_json::from_value(json!({"ociVersion": "1.0.2", "linux": {"resources": resources}}))
            .unwrap()
    }

    #[test]
    fn small_limits_keep_the_configured_size() {
        let c = Config::default();
        let sized = fit(&c, &spec(json!({"memory": {"limit": 64 << 20}})), 2, 4096).unwrap();
        assert_eq!(sized, c);
    }

    #[test]
    fn larger_limits_grow_the_vm() {
        let s = spec(
            json!({"memory": {"limit": 512u64 << 20}, "cpu": {"quota": 150000, "period": 100000}}),
        );
        let sized = fit(&Config::default(), &s, 4, 4096).unwrap();
        assert_eq!(sized.vmm().default_memory, 512 + 64);
        assert_eq!(sized.vmm().default_vcpus, 2);
        let s = spec(json!({"cpu": {"cpus": "0,2-3"}}));
        assert_eq!(
            fit(&Config::default(), &s, 4, 4096)
                .unwrap()
                .vmm()
                .default_vcpus,
            4
        );
    }

    #[test]
    fn more_than_the_host_has_is_a_clear_error() {
        let s = spec(json!({"cpu": {"quota": 800000, "period": 100000}}));
        assert_eq!(
            fit(&Config::default(), &s, 2, 4096)
                .unwrap_err()
                .to_string(),
            "the container asks for 8 CPUs; the host has 2"
        );
        let s = spec(json!({"memory": {"limit": 8u64 << 30}}));
        assert!(matches!(
            fit(&Config::default(), &s, 2, 4096),
            Err(SizingError::TooMuchMemory { .. })
        ));
    }
}
