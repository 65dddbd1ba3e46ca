//! `checkpoint` and `restore`: runc's flags; the whole VM is the checkpoint,
//! so CRIU's tuning flags have nothing to tune (docs/checkpoint.md).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use libcontainer::container::CreateOptions;
use liboci_cli::Checkpoint;
use slog::debug;

use super::Context;

pub fn checkpoint(args: Checkpoint, ctx: &Context) -> Result<u8> {
    let ignored = [
        ("--tcp-established", args.tcp_established),
        ("--ext-unix-sk", args.ext_unix_sk),
        ("--shell-job", args.shell_job),
        ("--file-locks", args.file_locks),
        ("--link-remap", args.link_remap),
        ("--work-path", args.work_path.is_some()),
    ];
    for (flag, _) in ignored.iter().filter(|(_, given)| *given) {
        debug!(ctx.log, "{flag} has no meaning for a VM checkpoint, which saves every process, socket, lock and file of the guest: ignored");
    }
    if args.manage_cgroups_mode != "soft" {
        debug!(ctx.log, "--manage-cgroups-mode has no meaning for a VM checkpoint: the guest's cgroups are saved with it"; "mode" => &args.manage_cgroups_mode);
    }
    ctx.runtime()?
        .checkpoint(&args.container_id, &args.image_path, args.leave_running)?;
    Ok(0)
}

/// runc's `restore` flags.
#[derive(Args, Debug)]
pub struct Restore {
    #[arg(long, value_name = "PATH")]
    console_socket: Option<PathBuf>,
    #[arg(long, value_name = "PATH", default_value = "checkpoint")]
    image_path: PathBuf,
    #[arg(long, value_name = "PATH")]
    work_path: Option<PathBuf>,
    #[arg(long)]
    tcp_established: bool,
    #[arg(long)]
    ext_unix_sk: bool,
    #[arg(long)]
    shell_job: bool,
    #[arg(long)]
    file_locks: bool,
    #[arg(long, value_name = "MODE", default_value = "soft")]
    manage_cgroups_mode: String,
    #[arg(short, long, value_name = "DIR", default_value = ".")]
    bundle: PathBuf,
    #[arg(short, long)]
    detach: bool,
    #[arg(long, value_name = "PATH")]
    pid_file: Option<PathBuf>,
    #[arg(long)]
    no_subreaper: bool,
    #[arg(long)]
    no_pivot: bool,
    #[arg(long)]
    auto_dedup: bool,
    #[arg(long)]
    lazy_pages: bool,
    #[arg(long, value_name = "NS")]
    empty_ns: Option<String>,
    #[arg(value_parser = clap::builder::NonEmptyStringValueParser::new(), required = true)]
    container_id: String,
}

pub fn restore(args: Restore, ctx: &Context) -> Result<u8> {
    if args.lazy_pages {
        anyhow::bail!("--lazy-pages is not supported: the checkpoint's memory is loaded whole");
    }
    if let Some(ns) = &args.empty_ns {
        anyhow::bail!("--empty-ns {ns} is not supported: the container's namespaces are the guest's, restored with it");
    }
    for (flag, given) in [
        ("--tcp-established", args.tcp_established),
        ("--ext-unix-sk", args.ext_unix_sk),
        ("--shell-job", args.shell_job),
        ("--file-locks", args.file_locks),
        ("--no-subreaper", args.no_subreaper),
        ("--no-pivot", args.no_pivot),
        ("--auto-dedup", args.auto_dedup),
        ("--work-path", args.work_path.is_some()),
    ] {
        if given {
            debug!(
                ctx.log,
                "{flag} has no meaning for restoring a VM checkpoint: ignored"
            );
        }
    }
    let rt = ctx.runtime()?;
    let from = rt.restorable(&args.image_path)?;
    let opts = CreateOptions {
        id: args.container_id,
        bundle: args.bundle,
        pid_file: args.pid_file,
        console_socket: args.console_socket,
        shim_args: ctx.shim_args.clone(),
        systemd_cgroup: ctx.systemd_cgroup,
        restore: Some(from),
    };
    if args.detach {
        rt.restore(&opts)?;
        return Ok(0);
    }
    // In the foreground, as `run`: the exit code is the container's, and
    // the container is deleted once it has stopped.
    let code = rt.run(&opts, false)?;
    Ok(code.clamp(0, 255) as u8)
}
