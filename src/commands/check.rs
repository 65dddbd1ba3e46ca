use anyhow::Result;
use clap::{Args, ValueEnum};
use libcontainer::config::Config;

#[derive(Args, Debug)]
pub struct CheckCmd {
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum Format {
    Text,
    Json,
}

/// Exits 1 if a container cannot run here.
pub fn check(args: CheckCmd) -> Result<u8> {
    let report = libcontainer::check::check(Config::load_with_sources());
    match args.format {
        Format::Text => print!("{}", report.text()),
        Format::Json => println!("{}", serde_json::to_string_pretty(&report.json)?),
    }
    Ok(if report.ok() { 0 } else { 1 })
}
