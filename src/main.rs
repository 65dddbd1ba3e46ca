//! runvm: a runc-compatible OCI runtime that runs every container in its own
//! lightweight VM. This binary is a thin front end over `libcontainer`.

mod commands;
mod help;
mod logging;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use liboci_cli::{CommonCmd, GlobalOpts, StandardCmd};
use slog::{Drain, Level, Logger};

use logging::{Format, LineDrain};

const DEFAULT_ROOT: &str = "/run/runvm";

#[derive(Parser, Debug)]
#[command(
    name = "runvm",
    about = "runc-compatible OCI runtime that runs every container in its own VM",
    disable_version_flag = true
)]
struct Cli {
    #[command(flatten)]
    global: GlobalOpts,
    #[arg(short = 'v', long = "version", global = true)]
    version: bool,
    /// runvm's own flag, after runc's: the configuration file.
    #[arg(long = "config", value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    #[command(flatten)]
    Standard(Box<StandardCmd>),
    #[command(flatten)]
    Common(Box<CommonCmd>),
    Factory(commands::factory::FactoryCmd),
    Check(commands::check::CheckCmd),
    Env(commands::env::EnvCmd),
    Completion(commands::docs::CompletionCmd),
    Checkpoint(liboci_cli::Checkpoint),
    Restore(commands::checkpoint::Restore),
    /// Write the man pages into a directory (for `make install`).
    #[command(name = "__man", hide = true)]
    Man(commands::docs::ManCmd),
    /// The per-container shim (started by create and run; not for users).
    #[command(name = "__shim", hide = true)]
    Shim(commands::shim::ShimCmd),
}

/// Parse the command line. liboci-cli's `kill` requires the signal; runc's
/// defaults it to SIGTERM, and callers rely on that, so the argument is made
/// optional here, in one place.
fn parse() -> Cli {
    let matches = command().get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

fn command() -> clap::Command {
    let cmd = Cli::command()
        // A global flag given twice takes the last value, as with runc (Go's
        // flag package): wrappers prepend their own `--log` to the caller's.
        .args_override_self(true)
        // liboci-cli spells it "checkpointt"; runvm answers to "checkpoint".
        .mut_subcommand("checkpointt", |c| c.hide(true))
        .mut_subcommand("kill", |c| {
            c.mut_arg("signal", |a| a.required(false).default_value("SIGTERM"))
        })
        // The table shows the processes as the guest sees them; there is no
        // host `ps` to pass options to.
        .mut_subcommand("ps", |c| c.mut_arg("ps_options", |a| a.hide(true)))
        // runc takes a duration ("5s", "1m"); liboci-cli a number of seconds.
        .mut_subcommand("events", |c| {
            c.mut_arg("interval", |a| a.value_parser(parse_interval))
        });
    help::apply(cmd)
}

/// Seconds from "5", "5s", "2m" or "1h".
fn parse_interval(s: &str) -> Result<u32, String> {
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u32 = num.parse().map_err(|_| format!("invalid interval {s:?}"))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return Err(format!("invalid interval {s:?}")),
    };
    Ok(n * mult)
}

fn version() -> String {
    format!(
        "runvm version {}\ncommit: {}\nspec: {}\n",
        env!("CARGO_PKG_VERSION"),
        env!("RUNVM_COMMIT"),
        libcontainer::OCI_VERSION
    )
}

/// The logger for a verb: the `--log` file when given, stderr otherwise.
fn logger(global: &GlobalOpts) -> anyhow::Result<Logger> {
    let format = Format::parse(global.log_format.as_deref())?;
    let level = if global.debug {
        Level::Debug
    } else {
        Level::Warning
    };
    let drain = match &global.log {
        Some(path) => LineDrain::file(path, format, level)?,
        None => LineDrain::new(Box::new(std::io::stderr()), format, level),
    };
    Ok(Logger::root(drain.fuse(), slog::o!()))
}

/// Global flags the shim is started with, so it logs where the verb does.
fn shim_args(global: &GlobalOpts) -> Vec<OsString> {
    let mut args = Vec::new();
    if let Some(log) = &global.log {
        args.push("--log".into());
        args.push(log.clone().into_os_string());
    }
    if let Some(format) = &global.log_format {
        args.push("--log-format".into());
        args.push(format.into());
    }
    if global.debug {
        args.push("--debug".into());
    }
    args
}

fn main() -> ExitCode {
    let cli = parse();
    if let Some(config) = &cli.config {
        // What every process of this container reads (the shim, the warm
        // pool's VMs, a template build) is the environment, so `--config`
        // is `RUNVM_CONFIG` for this command and all it starts; absolute,
        // as they do not run in the caller's directory.
        match std::path::absolute(config) {
            Ok(path) => std::env::set_var(libcontainer::config::CONFIG_ENV, path),
            Err(e) => {
                eprintln!("runvm: --config {}: {e}", config.display());
                return ExitCode::FAILURE;
            }
        }
    }
    if cli.version {
        print!("{}", version());
        return ExitCode::SUCCESS;
    }
    let Some(cmd) = cli.cmd else {
        let _ = command().print_help();
        return ExitCode::SUCCESS;
    };
    let root = cli
        .global
        .root
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT));
    if let Command::Shim(args) = cmd {
        return commands::shim::shim(args, root, &cli.global);
    }
    // A verb whose output is cut short (`runvm list | head`) ends quietly, as
    // runc does, instead of panicking on a closed stdout.
    // SAFETY: single-threaded here; SIG_DFL is always a valid disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let log = match logger(&cli.global) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("runvm: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let ctx = commands::Context {
        root,
        log: log.clone(),
        shim_args: shim_args(&cli.global),
        systemd_cgroup: cli.global.systemd_cgroup,
        logs_to_file: cli.global.log.is_some(),
    };
    match commands::dispatch(cmd, &ctx) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let msg = format!("{e:#}");
            slog::error!(log, "{}", msg);
            if cli.global.log.is_some() {
                // runc also prints the error on stderr when it logs to a file.
                eprintln!("{msg}");
            }
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_log_flag_wins() {
        let m = command()
            .try_get_matches_from(["runvm", "--log", "/a", "--log", "/b", "state", "x"])
            .unwrap();
        let cli = Cli::from_arg_matches(&m).unwrap();
        assert_eq!(cli.global.log, Some(PathBuf::from("/b")));
    }
}
