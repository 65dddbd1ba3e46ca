use anyhow::Result;
use liboci_cli::Delete;

use super::Context;

pub fn delete(args: Delete, ctx: &Context) -> Result<u8> {
    ctx.runtime()?.delete(&args.container_id, args.force)?;
    Ok(0)
}
