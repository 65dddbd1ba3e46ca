use anyhow::Result;
use liboci_cli::State;

use super::Context;

pub fn state(args: State, ctx: &Context) -> Result<u8> {
    let state = ctx.runtime()?.state(&args.container_id)?;
    println!("{}", serde_json::to_string_pretty(&state)?);
    Ok(0)
}
