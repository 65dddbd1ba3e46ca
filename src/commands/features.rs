use anyhow::Result;

use super::Context;

pub fn features(ctx: &Context) -> Result<u8> {
    println!(
        "{}",
        serde_json::to_string_pretty(&ctx.runtime()?.features())?
    );
    Ok(0)
}
