use std::io::Write;

use anyhow::{bail, Result};
use liboci_cli::List;
use tabwriter::TabWriter;

use super::Context;

pub fn list(args: List, ctx: &Context) -> Result<u8> {
    let states = ctx.runtime()?.list()?;
    if args.quiet {
        for s in &states {
            println!("{}", s.id);
        }
        return Ok(0);
    }
    match args.format.as_str() {
        "json" => println!("{}", serde_json::to_string(&states)?),
        "table" => {
            let mut tw = TabWriter::new(std::io::stdout()).padding(3);
            writeln!(tw, "ID\tPID\tSTATUS\tBUNDLE\tCREATED\tOWNER")?;
            for s in &states {
                let bundle = s.bundle.display();
                writeln!(
                    tw,
                    "{}\t{}\t{}\t{bundle}\t{}\t{}",
                    s.id, s.pid, s.status, s.created, s.owner
                )?;
            }
            tw.flush()?;
        }
        other => bail!("invalid format option: {other}"),
    }
    Ok(0)
}
