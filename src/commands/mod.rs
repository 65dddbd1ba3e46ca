//! One module per verb: parse (liboci-cli's structs), call libcontainer,
//! print.

pub mod check;
pub mod checkpoint;
mod create;
mod delete;
pub mod docs;
pub mod env;
mod events;
mod exec;
pub mod factory;
mod features;
mod kill;
mod list;
mod pause;
mod ps;
mod run;
pub mod shim;
mod spec;
mod start;
mod state;
mod update;

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::Result;
use libcontainer::Runtime;
use liboci_cli::{CommonCmd, StandardCmd};
use slog::Logger;

use crate::Command;

pub struct Context {
    pub root: PathBuf,
    pub log: Logger,
    pub shim_args: Vec<OsString>,
    /// `--systemd-cgroup`, for create and run.
    pub systemd_cgroup: bool,
    /// Errors go to a --log file (and are echoed on stderr, as runc does).
    pub logs_to_file: bool,
}

impl Context {
    pub fn runtime(&self) -> Result<Runtime> {
        Ok(Runtime::new(&self.root, self.log.clone())?)
    }
}

/// Run a verb; the result is the process exit code.
pub fn dispatch(cmd: Command, ctx: &Context) -> Result<u8> {
    match cmd {
        Command::Standard(cmd) => match *cmd {
            StandardCmd::Create(args) => create::create(args, ctx),
            StandardCmd::Start(args) => start::start(args, ctx),
            StandardCmd::State(args) => state::state(args, ctx),
            StandardCmd::Kill(args) => kill::kill(args, ctx),
            StandardCmd::Delete(args) => delete::delete(args, ctx),
        },
        Command::Common(cmd) => match *cmd {
            CommonCmd::Run(args) => run::run(args, ctx),
            CommonCmd::Spec(args) => spec::spec(args),
            CommonCmd::List(args) => list::list(args, ctx),
            CommonCmd::Checkpointt(args) => checkpoint::checkpoint(args, ctx),
            CommonCmd::Events(args) => events::events(args, ctx),
            CommonCmd::Exec(args) => exec::exec(args, ctx),
            CommonCmd::Features(_) => features::features(ctx),
            CommonCmd::Pause(args) => pause::pause(args, ctx),
            CommonCmd::Ps(args) => ps::ps(args, ctx),
            CommonCmd::Resume(args) => pause::resume(args, ctx),
            CommonCmd::Update(args) => update::update(args, ctx),
        },
        Command::Checkpoint(args) => checkpoint::checkpoint(args, ctx),
        Command::Restore(args) => checkpoint::restore(args, ctx),
        Command::Factory(cmd) => factory::factory(cmd, ctx),
        Command::Check(cmd) => check::check(cmd),
        Command::Completion(cmd) => docs::completion(cmd),
        Command::Env(cmd) => env::env(cmd),
        Command::Man(cmd) => docs::man_pages(cmd),
        Command::Shim(_) => unreachable!("the shim is dispatched before logging is set up"),
    }
}
