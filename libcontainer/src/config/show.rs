//! `runvm env`: the effective configuration as TOML, each value with the
//! file it came from or `default`.

use serde_json::{json, Value};

use super::Loaded;

/// A key the serialized configuration leaves out because it is unset.
const UNSET: &[(&str, &str, &str)] = &[
    (
        "hypervisor.qemu",
        "kernel",
        "vmlinux from the guest directories",
    ),
    (
        "hypervisor.qemu",
        "initrd",
        "initramfs.img beside the kernel",
    ),
];

/// The configuration as TOML that runvm would read back as the same one,
/// with a comment on each line saying where its value came from.
pub fn toml(loaded: &Loaded) -> String {
    let mut out = String::from(if loaded.files.is_empty() {
        "# runvm's effective configuration: the defaults (no configuration file)\n"
    } else {
        "# runvm's effective configuration: the defaults, then\n"
    });
    for f in &loaded.files {
        out.push_str(&format!("#   {}\n", f.display()));
    }
    for w in &loaded.warnings {
        out.push_str(&format!("# warning: {w}\n"));
    }
    if loaded.config.vmm().debug_monitor().is_some() {
        out.push_str(&format!(
            "# debug monitor: on, at <root>/<id>/{} of each VM (untrusted VMs)\n",
            crate::hypervisor::DEBUG_MONITOR_SOCKET
        ));
    }
    let value = toml::Table::try_from(&loaded.config).expect("the configuration serializes");
    for (name, entries) in &value {
        if let Some(t) = entries.as_table() {
            section(loaded, name, t, &mut out);
        }
    }
    out
}

/// `[name]` with its values, then its sub-tables as sections of their own.
fn section(loaded: &Loaded, name: &str, table: &toml::Table, out: &mut String) {
    // A table of sections only (`[hypervisor]`) needs no header of its own.
    if table.is_empty() || table.values().any(|v| !v.is_table()) {
        out.push_str(&format!("\n[{name}]\n"));
    }
    for (key, v) in table.iter().filter(|(_, v)| !v.is_table()) {
        let source = loaded
            .sources
            .get(&format!("{name}.{key}"))
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "default".into());
        out.push_str(&format!("{key} = {v} # {source}\n"));
    }
    for (t, key, meaning) in UNSET {
        if *t == name && !table.contains_key(*key) {
            out.push_str(&format!("# {key} is unset: {meaning} # default\n"));
        }
    }
    for (key, v) in table {
        if let Some(sub) = v.as_table() {
            section(loaded, &format!("{name}.{key}"), sub, out);
        }
    }
}

/// The same as JSON: `files`, `config` and `sources` (`table.key` → file,
/// for the keys a file set).
pub fn json(loaded: &Loaded) -> Value {
    json!({
        "files": loaded.files,
        "config": loaded.config,
        "sources": loaded.sources,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{load_files, Config};
    use std::fs;

    #[test]
    fn the_effective_toml_reads_back_as_the_same_configuration() {
        let tmp = tempfile::tempdir().unwrap();
        let main = tmp.path().join("config.toml");
        fs::write(&main, "[hypervisor.qemu]\ndefault_memory = 512\n").unwrap();
        fs::create_dir(tmp.path().join("config.d")).unwrap();
        let dropin = tmp.path().join("config.d/10-vcpus.toml");
        fs::write(&dropin, "[hypervisor.qemu]\ndefault_vcpus = 2\n").unwrap();
        let loaded = load_files(&main, true).unwrap();
        let text = toml(&loaded);
        assert!(
            text.contains(&format!("default_memory = 512 # {}\n", main.display())),
            "{text}"
        );
        assert!(
            text.contains(&format!("default_vcpus = 2 # {}\n", dropin.display())),
            "{text}"
        );
        assert!(text.contains("accel = \"auto\" # default\n"), "{text}");
        assert!(text.contains("# kernel is unset: "), "{text}");
        let back: Config = ::toml::from_str(&text).unwrap();
        assert_eq!(back, loaded.config);
        let j = json(&loaded);
        assert_eq!(j["config"]["hypervisor"]["qemu"]["default_vcpus"], 2);
        assert_eq!(
            j["sources"]["hypervisor.qemu.default_vcpus"],
            dropin.display().to_string()
        );
    }
}
