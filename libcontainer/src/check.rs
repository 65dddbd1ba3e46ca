//! `runvm check`: what runvm found on this host and would use.

use serde_json::{json, Value};

use crate::config::Config;
use crate::factory::Factory;
use crate::hypervisor::resolve_accel;
use crate::locate::{self, LocateError};

/// The report, and whether everything a container needs was found.
pub fn check(config: &Config) -> (Value, bool) {
    let found = |r: Result<std::path::PathBuf, LocateError>| match r {
        Ok(p) => json!({"path": p, "ok": p.exists()}),
        Err(e) => json!({"ok": false, "error": crate::error_chain(&e)}),
    };
    let hv = &config.hypervisor;
    let backend = hv.backend.as_str();
    let (accel, reason) = resolve_accel(hv.accel);
    let mut report = json!({
        "backend": backend,
        "virtiofsd": found(locate::find_binary(&config.virtiofsd.path)),
        "kernel": found(locate::kernel(hv)),
        "initrd": found(locate::initrd(hv)),
        "accel": {"use": accel.as_str(), "configured": hv.accel, "reason": reason},
        "vm": {"vcpus": hv.vcpus, "memoryMib": hv.memory_mib},
        "template": {
            "enabled": config.factory.enable_template,
            "autoBuild": config.factory.auto_build,
            "status": Factory::new(config).status(config),
        },
    });
    report[backend] = found(crate::hypervisor::binary(config));
    let ok = [backend, "virtiofsd", "kernel", "initrd"]
        .iter()
        .all(|k| report[k]["ok"] == true);
    (report, ok)
}
