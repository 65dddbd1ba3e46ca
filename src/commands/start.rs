use anyhow::Result;
use liboci_cli::Start;

use super::Context;

pub fn start(args: Start, ctx: &Context) -> Result<u8> {
    ctx.runtime()?.start(&args.container_id)?;
    Ok(0)
}
