use anyhow::Result;
use clap::{Args, Subcommand};
use libcontainer::config::Config;
use libcontainer::factory::Factory;

use super::Context;

/// VM templates: containers are created by cloning a saved VM instead of
/// booting one (when `[factory] enable_template = true`).
#[derive(Args, Debug)]
pub struct FactoryCmd {
    #[command(subcommand)]
    action: Action,
}

#[derive(Subcommand, Debug)]
enum Action {
    /// Boot a template VM and save it (replaces an existing template)
    Init,
    /// Show the template and whether it matches the configuration
    Status,
    /// Remove the template
    Destroy,
}

pub fn factory(cmd: FactoryCmd, ctx: &Context) -> Result<u8> {
    let config = Config::load()?;
    let factory = Factory::new(&config);
    match cmd.action {
        Action::Init => {
            let meta = factory.init(&config, &ctx.log)?;
            println!("{}", serde_json::to_string_pretty(&meta)?);
        }
        Action::Status => {
            println!(
                "{}",
                serde_json::to_string_pretty(&factory.status(&config))?
            );
        }
        Action::Destroy => {
            factory.destroy(&ctx.log)?;
        }
    }
    Ok(0)
}
