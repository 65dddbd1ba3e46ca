use anyhow::Result;
use libcontainer::exec::ExecOptions;
use liboci_cli::Exec;
use slog::{error, warn};

use super::Context;

/// Like runc, a failure of runvm itself exits 255, so that it cannot be
/// mistaken for the process's own exit code.
pub fn exec(args: Exec, ctx: &Context) -> Result<u8> {
    if args.preserve_fds > 0 {
        warn!(
            ctx.log,
            "--preserve-fds is ignored: host fds cannot reach the guest"
        );
    }
    let opts = ExecOptions {
        id: args.container_id,
        process_file: args.process,
        args: args.command,
        tty: args.tty,
        console_socket: args.console_socket,
        cwd: args.cwd,
        env: args.env,
        user: args.user,
        additional_gids: args.additional_gids,
        caps: args.cap,
        no_new_privs: args.no_new_privs,
        detach: args.detach,
        pid_file: args.pid_file,
        ignore_paused: args.ignore_paused,
    };
    match ctx.runtime()?.exec(&opts) {
        Ok(code) => Ok(code.clamp(0, 255) as u8),
        Err(e) => {
            let msg = format!("exec failed: {:#}", anyhow::Error::from(e));
            error!(ctx.log, "{}", msg);
            if ctx.logs_to_file {
                eprintln!("{msg}");
            }
            Ok(255)
        }
    }
}
