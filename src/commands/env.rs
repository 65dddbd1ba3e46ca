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

/// The effective configuration, then what it resolves to on this host (the
/// binaries and guest files found, the accelerator): `runvm check`'s items.
pub fn env(args: EnvCmd) -> Result<u8> {
    let loaded = Config::load_with_sources()?;
    let report = libcontainer::check::check(Ok(loaded.clone()));
    match args.format {
        Format::Toml => {
            print!("{}", show::toml(&loaded));
            println!("\n# On this host (runvm check):");
            for line in report.text().lines() {
                println!("# {line}");
            }
        }
        Format::Json => {
            let mut v = show::json(&loaded);
            v["host"] = report.json;
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
    }
    Ok(0)
}
