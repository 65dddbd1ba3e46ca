//! One module per verb: parse (liboci-cli's structs), call libcontainer,
//! print.

mod create;
mod delete;
mod kill;
mod list;
mod run;
pub mod shim;
mod spec;
mod start;
mod state;

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
            CommonCmd::Checkpointt(_) => not_implemented("checkpoint"),
            CommonCmd::Events(_) => not_implemented("events"),
            CommonCmd::Exec(_) => not_implemented("exec"),
            CommonCmd::Features(_) => not_implemented("features"),
            CommonCmd::Pause(_) => not_implemented("pause"),
            CommonCmd::Ps(_) => not_implemented("ps"),
            CommonCmd::Resume(_) => not_implemented("resume"),
            CommonCmd::Update(_) => not_implemented("update"),
        },
        Command::Shim(_) => unreachable!("the shim is dispatched before logging is set up"),
    }
}

fn not_implemented(verb: &str) -> Result<u8> {
    eprintln!("runvm: {verb} is not implemented yet");
    Ok(1)
}
