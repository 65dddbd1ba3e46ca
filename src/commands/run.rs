use anyhow::Result;
use libcontainer::container::CreateOptions;
use liboci_cli::Run;

use super::Context;

/// Create and start; in the foreground, relay signals and exit with the
/// container's exit code, then delete it (unless --keep), as runc does.
pub fn run(args: Run, ctx: &Context) -> Result<u8> {
    let rt = ctx.runtime()?;
    let opts = CreateOptions {
        id: args.container_id.clone(),
        bundle: args.bundle,
        pid_file: args.pid_file,
        console_socket: args.console_socket,
        shim_args: ctx.shim_args.clone(),
        systemd_cgroup: ctx.systemd_cgroup,
        restore: None,
    };
    if args.detach {
        rt.run_detached(&opts)?;
        return Ok(0);
    }
    let code = rt.run(&opts, args.keep)?;
    Ok(code.clamp(0, 255) as u8)
}
