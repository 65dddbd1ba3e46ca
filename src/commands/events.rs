use std::io::Write;
use std::time::Duration;

use anyhow::Result;
use liboci_cli::Events;

use super::Context;

/// One stats object with --stats; otherwise one every interval until the
/// container stops.
pub fn events(args: Events, ctx: &Context) -> Result<u8> {
    let rt = ctx.runtime()?;
    let interval = Duration::from_secs(args.interval as u64);
    libcontainer::events::stream(&rt, &args.container_id, args.stats, interval, |event| {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", serde_json::to_string(event)?)?;
        out.flush()
    })?;
    Ok(0)
}
