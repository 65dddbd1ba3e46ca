//! The keys of runvm's first configuration layout (`[hypervisor]` with the
//! QEMU settings in it, `[virtiofsd]`, `[timeouts]`), read as the keys that
//! replaced them, each with a warning naming the new key, so that an
//! existing file keeps working.

/// `(old table, old key, new table, new key)`.
const MOVED: &[(&str, &str, &str, &str)] = &[
    ("hypervisor", "backend", "runtime", "hypervisor"),
    ("hypervisor", "qemu", "hypervisor.qemu", "path"),
    ("hypervisor", "kernel", "hypervisor.qemu", "kernel"),
    ("hypervisor", "initrd", "hypervisor.qemu", "initrd"),
    ("hypervisor", "accel", "hypervisor.qemu", "accel"),
    ("hypervisor", "vcpus", "hypervisor.qemu", "default_vcpus"),
    (
        "hypervisor",
        "memory_mib",
        "hypervisor.qemu",
        "default_memory",
    ),
    (
        "hypervisor",
        "kernel_params",
        "hypervisor.qemu",
        "kernel_params",
    ),
    (
        "hypervisor",
        "seccomp_sandbox",
        "hypervisor.qemu",
        "seccomp_sandbox",
    ),
    ("virtiofsd", "path", "hypervisor.qemu", "virtio_fs_daemon"),
    ("virtiofsd", "cache", "hypervisor.qemu", "virtio_fs_cache"),
    (
        "virtiofsd",
        "sandbox",
        "hypervisor.qemu",
        "virtio_fs_sandbox",
    ),
    ("timeouts", "boot_secs", "runtime", "boot_secs"),
    ("timeouts", "request_secs", "runtime", "request_secs"),
    ("timeouts", "stop_secs", "runtime", "stop_secs"),
];

fn table_mut<'a>(root: &'a mut toml::Table, dotted: &str) -> Option<&'a mut toml::Table> {
    let mut t = root;
    for part in dotted.split('.') {
        t = t.get_mut(part)?.as_table_mut()?;
    }
    Some(t)
}

/// Whether `table` has any old key (a string `[hypervisor] qemu` is the
/// old key; a `[hypervisor.qemu]` table is the new section).
pub fn has_old_keys(table: &toml::Table) -> bool {
    MOVED.iter().any(|(t, k, _, _)| {
        table
            .get(*t)
            .and_then(|v| v.as_table())
            .and_then(|t| t.get(*k))
            .is_some_and(|v| !v.is_table())
    })
}

/// Move the old keys of `table` to their new places; one warning for
/// each. A new key given too keeps its value, and the warning says so.
pub fn migrate(table: &mut toml::Table) -> Vec<String> {
    let mut warnings = Vec::new();
    for (old_t, old_k, new_t, new_k) in MOVED {
        let Some(value) = table_mut(table, old_t).and_then(|t| match t.get(*old_k) {
            Some(v) if !v.is_table() => t.remove(*old_k),
            _ => None,
        }) else {
            continue;
        };
        let mut dest: &mut toml::Table = table;
        for part in new_t.split('.') {
            dest = dest
                .entry(part)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .expect("a section is a table");
        }
        if dest.contains_key(*new_k) {
            warnings.push(format!(
                "[{old_t}] {old_k} is the old name of [{new_t}] {new_k}, which is set too: \
                 the old one is ignored (remove it)"
            ));
        } else {
            dest.insert(new_k.to_string(), value);
            warnings.push(format!(
                "[{old_t}] {old_k} is the old name of [{new_t}] {new_k}: read as that (rename it)"
            ));
        }
    }
    for old_t in ["virtiofsd", "timeouts"] {
        if table
            .get(old_t)
            .and_then(|v| v.as_table())
            .is_some_and(|t| t.is_empty())
        {
            table.remove(old_t);
        }
    }
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Accel, Config};

    #[test]
    fn old_keys_are_read_as_the_new_ones_with_a_warning_each() {
        let mut t: toml::Table =
            "[hypervisor]\nqemu = \"/opt/qemu\"\nmemory_mib = 320\naccel = \"tcg\"\n\
             [virtiofsd]\ncache = \"never\"\n[timeouts]\nboot_secs = 30\n"
                .parse()
                .unwrap();
        assert!(has_old_keys(&t));
        let warnings = migrate(&mut t);
        assert!(!has_old_keys(&t));
        assert_eq!(warnings.len(), 5, "{warnings:#?}");
        assert!(warnings.contains(
            &"[hypervisor] memory_mib is the old name of [hypervisor.qemu] default_memory: read as that (rename it)".to_string()
        ));
        let c: Config = toml::Value::Table(t).try_into().unwrap();
        let qemu = &c.hypervisor.qemu;
        assert_eq!(qemu.path, std::path::PathBuf::from("/opt/qemu"));
        assert_eq!((qemu.default_memory, qemu.accel), (320, Accel::Tcg));
        assert_eq!(qemu.virtio_fs_cache, crate::config::FsCache::Never);
        assert_eq!(c.runtime.boot_secs, 30);
    }

    #[test]
    fn a_new_key_wins_over_its_old_name() {
        let mut t: toml::Table = "[hypervisor]\nvcpus = 4\n[hypervisor.qemu]\ndefault_vcpus = 2\n"
            .parse()
            .unwrap();
        let warnings = migrate(&mut t);
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].contains("is set too: the old one is ignored"),
            "{warnings:?}"
        );
        let c: Config = toml::Value::Table(t).try_into().unwrap();
        assert_eq!(c.hypervisor.qemu.default_vcpus, 2);
    }

    #[test]
    fn the_new_layout_has_no_old_keys() {
        let t: toml::Table = "[runtime]\nhypervisor = \"qemu\"\n[hypervisor.qemu]\npath = \"/q\"\n"
            .parse()
            .unwrap();
        assert!(!has_old_keys(&t));
    }
}
