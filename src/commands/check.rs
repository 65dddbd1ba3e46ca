use anyhow::Result;
use clap::Args;
use libcontainer::config::Config;
use libcontainer::factory::Factory;
use libcontainer::hypervisor::resolve_accel;
use serde_json::json;

/// Show what runvm would use on this host: binaries, guest, accelerator
/// (and why), template. Exits non-zero if something is missing.
#[derive(Args, Debug)]
pub struct CheckCmd {}

pub fn check(_: CheckCmd) -> Result<u8> {
    let config = Config::load()?;
    let found = |r: Result<std::path::PathBuf, libcontainer::config::ConfigError>| match r {
        Ok(p) => json!({"path": p, "ok": p.exists()}),
        Err(e) => json!({"ok": false, "error": format!("{:#}", anyhow::Error::from(e))}),
    };
    let (accel, reason) = resolve_accel(config.hypervisor.accel);
    let report = json!({
        "qemu": found(config.qemu()),
        "virtiofsd": found(config.virtiofsd()),
        "kernel": found(config.kernel()),
        "initrd": found(config.initrd()),
        "accel": {"use": accel.as_str(), "configured": config.hypervisor.accel, "reason": reason},
        "vm": {"vcpus": config.hypervisor.vcpus, "memoryMib": config.hypervisor.memory_mib},
        "template": {
            "enabled": config.factory.enable_template,
            "status": Factory::new(&config).status(&config),
        },
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    let ok = ["qemu", "virtiofsd", "kernel", "initrd"]
        .iter()
        .all(|k| report[k]["ok"] == true);
    Ok(if ok { 0 } else { 1 })
}
