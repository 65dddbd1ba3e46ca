use anyhow::Result;
use liboci_cli::{Pause, Resume};

use super::Context;

/// The container's cgroup in the guest is frozen; the VM keeps running, so
/// kill, stats and delete still reach it.
pub fn pause(args: Pause, ctx: &Context) -> Result<u8> {
    ctx.runtime()?.pause(&args.container_id)?;
    Ok(0)
}

pub fn resume(args: Resume, ctx: &Context) -> Result<u8> {
    ctx.runtime()?.resume(&args.container_id)?;
    Ok(0)
}
