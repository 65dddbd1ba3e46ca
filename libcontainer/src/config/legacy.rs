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

/// The key at dotted `path` of the migrated table as the file wrote it
/// (`[hypervisor] memory_mib (read as [hypervisor.qemu] default_memory)` for
/// a moved key), and its line in `text`, for an error in a file of the old
/// layout: its values are checked after the move, which has no positions.
pub fn locate(text: &str, path: &str) -> (String, Option<usize>) {
    let moved = MOVED.iter().find_map(|(old_t, old_k, new_t, new_k)| {
        let rest = path.strip_prefix(&format!("{new_t}.{new_k}"))?;
        (rest.is_empty() || rest.starts_with('.')).then(|| {
            (
                format!("{old_t}.{old_k}{rest}"),
                format!(" (read as {})", shown(&format!("{new_t}.{new_k}{rest}"))),
            )
        })
    });
    let doc = toml_edit::ImDocument::parse(text).ok();
    let line = |dotted: &str| {
        let doc = doc.as_ref()?;
        let mut item = doc.as_item();
        let mut span = None;
        for part in dotted.split('.') {
            let Some(next) = item.get(part) else { break };
            item = next;
            span = item.span().or(span);
        }
        span.map(|s| text[..s.start].matches('\n').count() + 1)
    };
    match moved {
        // The old key, if the file has it (a new key of the same name wins).
        Some((old, read_as)) if line(&old).is_some() && !has_new(&doc, path) => {
            (format!("{}{read_as}", shown(&old)), line(&old))
        }
        _ => (shown(path), line(path)),
    }
}

/// Whether the file sets the new key at `path` itself.
fn has_new(doc: &Option<toml_edit::ImDocument<&str>>, path: &str) -> bool {
    let Some(doc) = doc else { return false };
    let mut item = doc.as_item();
    for part in path.split('.') {
        match item.get(part) {
            Some(next) => item = next,
            None => return false,
        }
    }
    true
}

/// `a.b.c` as the file's sections show it: `[a.b] c`.
fn shown(dotted: &str) -> String {
    match dotted.rsplit_once('.') {
        Some((table, key)) => format!("[{table}] {key}"),
        None => dotted.to_string(),
    }
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
    fn an_error_is_placed_at_the_key_the_file_wrote() {
        let text = "# old\n[hypervisor]\nvcpus = 1\nmemory_mib = \"x\"\nmemroy = 1\n";
        assert_eq!(
            locate(text, "hypervisor.qemu.default_memory"),
            (
                "[hypervisor] memory_mib (read as [hypervisor.qemu] default_memory)".into(),
                Some(4)
            )
        );
        assert_eq!(
            locate(text, "hypervisor.memroy"),
            ("[hypervisor] memroy".into(), Some(5))
        );
        // A key the file gave in the new layout is shown as written.
        let text = "[hypervisor]\nvcpus = 1\n[hypervisor.qemu]\ndefault_memory = -1\n";
        assert_eq!(
            locate(text, "hypervisor.qemu.default_memory"),
            ("[hypervisor.qemu] default_memory".into(), Some(4))
        );
    }

    #[test]
    fn the_new_layout_has_no_old_keys() {
        let t: toml::Table = "[runtime]\nhypervisor = \"qemu\"\n[hypervisor.qemu]\npath = \"/q\"\n"
            .parse()
            .unwrap();
        assert!(!has_old_keys(&t));
    }
}
