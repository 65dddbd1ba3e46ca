use anyhow::Result;
use clap::{Args, ValueEnum};
use libcontainer::config::{show, Config};

#[derive(Args, Debug)]
pub struct EnvCmd {
    #[arg(long, value_enum, default_value_t = Format::Toml)]
    format: Format,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum Format {
    Toml,
    Json,
}

pub fn env(args: EnvCmd) -> Result<u8> {
    let loaded = Config::load_with_sources()?;
    match args.format {
        Format::Toml => print!("{}", show::toml(&loaded)),
        Format::Json => println!("{}", serde_json::to_string_pretty(&show::json(&loaded))?),
    }
    Ok(0)
}
