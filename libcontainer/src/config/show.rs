//! `runvm env`: the effective configuration as TOML, each value with the
//! file it came from or `default`.

use serde_json::{json, Value};

use super::Loaded;

/// A key the serialized configuration leaves out because it is unset.
const UNSET: &[(&str, &str, &str)] = &[
    ("hypervisor", "kernel", "vmlinux from the guest directories"),
    ("hypervisor", "initrd", "initramfs.img beside the kernel"),
];

/// The configuration as TOML that runvm would read back as the same one,
/// with a comment on each line saying where its value came from.
pub fn toml(loaded: &Loaded) -> String {
    let mut out = String::from("# runvm's effective configuration: the defaults, then\n");
    if loaded.files.is_empty() {
        out.push_str("# no file.\n");
    }
    for f in &loaded.files {
        out.push_str(&format!("#   {}\n", f.display()));
    }
    let value = toml::Table::try_from(&loaded.config).expect("the configuration serializes");
    for (table, entries) in &value {
        out.push_str(&format!("\n[{table}]\n"));
        let Some(entries) = entries.as_table() else {
            continue;
        };
        for (key, v) in entries {
            let source = loaded
                .sources
                .get(&format!("{table}.{key}"))
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "default".into());
            out.push_str(&format!("{key} = {v} # {source}\n"));
        }
        for (t, key, meaning) in UNSET {
            if t == table && !entries.contains_key(*key) {
                out.push_str(&format!("# {key} is unset: {meaning} # default\n"));
            }
        }
    }
    out
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
        fs::write(&main, "[hypervisor]\nmemory_mib = 512\n").unwrap();
        fs::create_dir(tmp.path().join("config.d")).unwrap();
        let dropin = tmp.path().join("config.d/10-vcpus.toml");
        fs::write(&dropin, "[hypervisor]\nvcpus = 2\n").unwrap();
        let loaded = load_files(&main, true).unwrap();
        let text = toml(&loaded);
        assert!(
            text.contains(&format!("memory_mib = 512 # {}\n", main.display())),
            "{text}"
        );
        assert!(
            text.contains(&format!("vcpus = 2 # {}\n", dropin.display())),
            "{text}"
        );
        assert!(text.contains("accel = \"auto\" # default\n"), "{text}");
        assert!(text.contains("# kernel is unset: "), "{text}");
        let back: Config = ::toml::from_str(&text).unwrap();
        assert_eq!(back, loaded.config);
        let j = json(&loaded);
        assert_eq!(j["config"]["hypervisor"]["vcpus"], 2);
        assert_eq!(
            j["sources"]["hypervisor.vcpus"],
            dropin.display().to_string()
        );
    }
}
