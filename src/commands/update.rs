use anyhow::Result;
use libcontainer::resources::{read_resources, ResourceFlags};
use liboci_cli::Update;

use super::Context;

/// `--resources F|-` (an OCI linux.resources object) or the flags; applied
/// to the container's cgroup in the guest.
pub fn update(args: Update, ctx: &Context) -> Result<u8> {
    let resources = match &args.resources {
        Some(path) => read_resources(path)?,
        None => ResourceFlags {
            blkio_weight: args.blkio_weight,
            cpu_period: args.cpu_period,
            cpu_quota: args.cpu_quota,
            cpu_rt_period: args.cpu_rt_period,
            cpu_rt_runtime: args.cpu_rt_runtime,
            cpu_share: args.cpu_share,
            cpuset_cpus: args.cpuset_cpus,
            cpuset_mems: args.cpuset_mems,
            memory: args.memory,
            memory_reservation: args.memory_reservation,
            memory_swap: args.memory_swap,
            pids_limit: args.pids_limit,
            intel_rdt: args.l3_cache_schema.is_some() || args.mem_bw_schema.is_some(),
        }
        .to_resources()?,
    };
    ctx.runtime()?.update(&args.container_id, resources)?;
    Ok(0)
}
