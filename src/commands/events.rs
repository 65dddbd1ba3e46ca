use std::time::Duration;

use anyhow::Result;
use libcontainer::events::Event;
use libcontainer::ContainerError;
use liboci_cli::Events;

use super::Context;

/// One stats object with --stats; otherwise one every interval until the
/// container stops.
pub fn events(args: Events, ctx: &Context) -> Result<u8> {
    let rt = ctx.runtime()?;
    let id = &args.container_id;
    loop {
        match rt.stats(id) {
            Ok(stats) => println!("{}", serde_json::to_string(&Event::stats(id, &stats))?),
            Err(ContainerError::NotRunning) if !args.stats => return Ok(0),
            Err(e) => return Err(e.into()),
        }
        if args.stats {
            return Ok(0);
        }
        std::thread::sleep(Duration::from_secs(args.interval.max(1) as u64));
    }
}
