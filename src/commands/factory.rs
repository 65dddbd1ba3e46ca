use anyhow::Result;
use clap::{Args, Subcommand};
use libcontainer::config::Config;
use libcontainer::factory::Factory;

use super::Context;

/// VM templates: containers are created by cloning a saved VM instead of
/// booting one (unless `[factory] enable_template = false`).
#[derive(Args, Debug)]
pub struct FactoryCmd {
    #[command(subcommand)]
    action: Action,
}

#[derive(Subcommand, Debug)]
enum Action {
    /// Boot a template VM and save it (replaces an existing template)
    Init {
        /// Only if no other build is running and the template is not
        /// usable: the background build a cold create starts
        #[arg(long, hide = true)]
        if_needed: bool,
    },
    /// Show the template and whether it matches the configuration
    Status,
    /// Remove the template (and stop the warm pool's idle VMs)
    Destroy,
    /// One VM of the warm pool: restore it, warm it up, wait for a create
    /// to claim it (what creates and `factory init` start behind them)
    #[command(hide = true)]
    PoolVm { slot: u32 },
}

pub fn factory(cmd: FactoryCmd, ctx: &Context) -> Result<u8> {
    let config = Config::load()?;
    let factory = Factory::new(&config);
    match cmd.action {
        Action::Init { if_needed: false } => {
            let meta = factory.init(&config, &ctx.log)?;
            println!("{}", serde_json::to_string_pretty(&meta)?);
        }
        Action::Init { if_needed: true } => match factory.init_if_needed(&config, &ctx.log) {
            Ok(_) => {}
            Err(e) => {
                slog::warn!(ctx.log, "the background build of the template failed; creates boot cold";
                    "error" => libcontainer::error_chain(&e));
                return Ok(1);
            }
        },
        Action::Status => {
            println!(
                "{}",
                serde_json::to_string_pretty(&factory.status(&config))?
            );
        }
        Action::Destroy => {
            factory.destroy(&ctx.log)?;
        }
        Action::PoolVm { slot } => {
            let pool = libcontainer::factory::Pool::new(&config);
            if let Err(e) = pool.serve_member(&config, slot, &ctx.log) {
                slog::warn!(ctx.log, "a warm pool VM failed"; "slot" => slot,
                    "error" => libcontainer::error_chain(&e));
                return Ok(1);
            }
        }
    }
    Ok(0)
}
