use anyhow::Result;
use libcontainer::signal::parse_signal;
use liboci_cli::Kill;

use super::Context;

pub fn kill(args: Kill, ctx: &Context) -> Result<u8> {
    let signal = parse_signal(&args.signal)?;
    ctx.runtime()?.kill(&args.container_id, signal, args.all)?;
    Ok(0)
}
