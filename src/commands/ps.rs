use std::io::Write;

use anyhow::{bail, Result};
use chrono::{DateTime, Local};
use liboci_cli::Ps;
use tabwriter::TabWriter;

use super::Context;

/// `--format json`: the host pids that stand for the container (its shim and
/// exec stand-ins), which is what containerd expects. The table lists the
/// container's processes as the guest sees them (guest pids); ps options are
/// not passed on.
pub fn ps(args: Ps, ctx: &Context) -> Result<u8> {
    if !args.ps_options.is_empty() {
        bail!("ps options are not supported: the processes are listed by the guest");
    }
    let (host_pids, processes) = ctx.runtime()?.ps(&args.container_id)?;
    match args.format.as_str() {
        "json" => println!("{}", serde_json::to_string(&host_pids)?),
        "table" => {
            let mut tw = TabWriter::new(std::io::stdout()).padding(2);
            writeln!(tw, "UID\tPID\tPPID\tSTIME\tTTY\tTIME\tCMD")?;
            for p in processes {
                let uid = if p.uid == 0 {
                    "root".to_string()
                } else {
                    p.uid.to_string()
                };
                let stime = DateTime::from_timestamp(p.start_time as i64, 0)
                    .map(|t| t.with_timezone(&Local).format("%H:%M").to_string())
                    .unwrap_or_default();
                let cpu = format!(
                    "{:02}:{:02}:{:02}",
                    p.cpu_secs / 3600,
                    p.cpu_secs / 60 % 60,
                    p.cpu_secs % 60
                );
                let tty = p.tty.unwrap_or_else(|| "?".into());
                writeln!(
                    tw,
                    "{uid}\t{}\t{}\t{stime}\t{tty}\t{cpu}\t{}",
                    p.pid, p.ppid, p.cmdline
                )?;
            }
            tw.flush()?;
        }
        other => bail!("invalid format option: {other}"),
    }
    Ok(0)
}
