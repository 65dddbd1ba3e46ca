use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use libcontainer::shim::{self, ShimArgs};
use liboci_cli::GlobalOpts;
use slog::{Drain, Level, Logger};

use crate::logging::{Format, LineDrain};

#[derive(Args, Debug)]
pub struct ShimCmd {
    /// Write end of create's ready pipe.
    #[arg(long)]
    ready_fd: Option<i32>,
    /// Where the master of the container's terminal goes.
    #[arg(long)]
    console_socket: Option<PathBuf>,
    container_id: String,
}

/// The shim logs to <state dir>/shim.log, and to --log as the verbs do. Its
/// stdout and stderr are the container's: nothing of its own goes there.
pub fn shim(args: ShimCmd, root: PathBuf, global: &GlobalOpts) -> ExitCode {
    let format = Format::parse(global.log_format.as_deref()).unwrap_or(Format::Text);
    let level = if global.debug {
        Level::Debug
    } else {
        Level::Warning
    };
    let own_path = root.join(&args.container_id).join("shim.log");
    let own = LineDrain::file(&own_path, Format::Text, Level::Debug).ok();
    let user = global
        .log
        .as_ref()
        .and_then(|p| LineDrain::file(p, format, level).ok());
    let log = match (own, user) {
        (Some(a), Some(b)) => Logger::root(slog::Duplicate::new(a, b).ignore_res(), slog::o!()),
        (Some(a), None) => Logger::root(a.ignore_res(), slog::o!()),
        (None, Some(b)) => Logger::root(b.ignore_res(), slog::o!()),
        (None, None) => Logger::root(slog::Discard, slog::o!()),
    };
    let code = shim::main(ShimArgs {
        root,
        id: args.container_id,
        ready_fd: args.ready_fd,
        console_socket: args.console_socket,
        log,
    });
    // Exit now: the stdin relay may sit in a blocking read that would keep a
    // runtime shutdown waiting.
    std::process::exit(code)
}
