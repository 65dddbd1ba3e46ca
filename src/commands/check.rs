use anyhow::Result;
use clap::Args;
use libcontainer::config::Config;

/// Show what runvm would use on this host: binaries, guest, accelerator
/// (and why), template. Exits non-zero if something is missing.
#[derive(Args, Debug)]
pub struct CheckCmd {}

pub fn check(_: CheckCmd) -> Result<u8> {
    let (report, ok) = libcontainer::check::check(&Config::load()?);
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(if ok { 0 } else { 1 })
}
