use anyhow::Result;
use libcontainer::container::CreateOptions;
use liboci_cli::Create;
use slog::warn;

use super::Context;

pub fn create(args: Create, ctx: &Context) -> Result<u8> {
    if args.preserve_fds > 0 {
        // The container runs in a VM: host file descriptors cannot follow it.
        warn!(
            ctx.log,
            "--preserve-fds is ignored: host fds cannot reach the guest"
        );
    }
    ctx.runtime()?.create(&CreateOptions {
        id: args.container_id,
        bundle: args.bundle,
        pid_file: args.pid_file,
        console_socket: args.console_socket,
        shim_args: ctx.shim_args.clone(),
        systemd_cgroup: ctx.systemd_cgroup,
        restore: None,
    })?;
    Ok(0)
}
