use std::io::Read;

use anyhow::{bail, Context as _, Result};
use liboci_cli::Update;
use serde_json::{json, Map, Value};

use super::Context;

/// `--resources F|-` (an OCI linux.resources object) or the flags; applied
/// to the container's cgroup in the guest.
pub fn update(args: Update, ctx: &Context) -> Result<u8> {
    let resources = match &args.resources {
        Some(path) => read_resources(path)?,
        None => from_flags(&args)?,
    };
    ctx.runtime()?.update(&args.container_id, resources)?;
    Ok(0)
}

fn read_resources(path: &std::path::Path) -> Result<Value> {
    let mut text = String::new();
    if path.as_os_str() == "-" {
        std::io::stdin().read_to_string(&mut text)?;
    } else {
        text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    }
    let value: Value = serde_json::from_str(&text).context("parse the resources")?;
    serde_json::from_value::<oci_spec::runtime::LinuxResources>(value.clone())
        .context("parse the resources")?;
    Ok(value)
}

fn from_flags(a: &Update) -> Result<Value> {
    if a.l3_cache_schema.is_some() || a.mem_bw_schema.is_some() {
        bail!("Intel RDT is not available in a VM");
    }
    let mut r = Map::new();
    let mut set = |section: &str, key: &str, v: Value| {
        r.entry(section)
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .expect("sections are objects")
            .insert(key.to_string(), v);
    };
    if let Some(v) = a.memory {
        set("memory", "limit", json!(v));
    }
    if let Some(v) = a.memory_reservation {
        set("memory", "reservation", json!(v));
    }
    if let Some(v) = a.memory_swap {
        set("memory", "swap", json!(v));
    }
    if let Some(v) = a.cpu_share {
        set("cpu", "shares", json!(v));
    }
    if let Some(v) = a.cpu_quota {
        set("cpu", "quota", json!(v));
    }
    if let Some(v) = a.cpu_period {
        set("cpu", "period", json!(v));
    }
    if let Some(v) = a.cpu_rt_runtime {
        set("cpu", "realtimeRuntime", json!(v));
    }
    if let Some(v) = a.cpu_rt_period {
        set("cpu", "realtimePeriod", json!(v));
    }
    if let Some(v) = &a.cpuset_cpus {
        set("cpu", "cpus", json!(v));
    }
    if let Some(v) = &a.cpuset_mems {
        set("cpu", "mems", json!(v));
    }
    if let Some(v) = a.pids_limit {
        set("pids", "limit", json!(v));
    }
    if let Some(v) = a.blkio_weight {
        set("blockIO", "weight", json!(v));
    }
    Ok(Value::Object(r))
}
