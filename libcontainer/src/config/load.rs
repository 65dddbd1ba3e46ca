//! Reading the configuration: the main file, then its drop-ins
//! (`config.d/*.toml` beside it, in lexical order), each overriding the
//! keys of the ones before, and where each value came from.
//!
//! Every file is checked on its own first, so an unknown key or a bad value
//! is reported with that file, its line and the key; the merged tables then
//! make the one [`Config`].

use std::collections::BTreeMap;
use std::env;
use std::fs;
use std::path::{Path, PathBuf};

use super::{legacy, Config, ConfigError, CONFIG_ENV, DEFAULT_CONFIG_PATH};

/// The drop-in directory's name, beside the main file.
pub const DROPIN_DIR: &str = "config.d";

/// A configuration and how it was made.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    /// The files read, in the order they were applied: the main file (if
    /// it exists), then the drop-ins.
    pub files: Vec<PathBuf>,
    /// `table.key` → the file whose value it has; a key not here has its
    /// default.
    pub sources: BTreeMap<String, PathBuf>,
    /// Old keys read as their new names (`legacy`), with the file.
    pub warnings: Vec<String>,
}

impl Config {
    /// Load from `$RUNVM_CONFIG` (must exist; `runvm --config FILE` sets
    /// it) or the default path (optional), with their drop-ins.
    pub fn load() -> Result<Self, ConfigError> {
        Ok(Self::load_with_sources()?.config)
    }

    /// [`Config::load`], with the files it read and where each key's value
    /// came from.
    pub fn load_with_sources() -> Result<Loaded, ConfigError> {
        match env::var_os(CONFIG_ENV) {
            Some(path) => load_files(Path::new(&path), true),
            None => load_files(Path::new(DEFAULT_CONFIG_PATH), false),
        }
    }

    /// Parse a configuration's text, old keys included, as a file would be
    /// read.
    #[cfg(test)]
    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        let mut table: toml::Table = text.parse()?;
        legacy::migrate(&mut table);
        toml::Value::Table(table).try_into()
    }
}

/// The main file `main` (an error if it is missing and `must_exist`) and
/// the drop-ins beside it.
pub fn load_files(main: &Path, must_exist: bool) -> Result<Loaded, ConfigError> {
    let mut files = Vec::new();
    if must_exist || main.exists() {
        files.push(main.to_path_buf());
    }
    let dir = main.parent().unwrap_or(Path::new(".")).join(DROPIN_DIR);
    files.extend(dropins(&dir)?);
    let mut merged = toml::Table::new();
    let mut sources = BTreeMap::new();
    let mut warnings = Vec::new();
    for path in &files {
        let text = read(path)?;
        let parse_err = |source| ConfigError::Parse {
            path: path.clone(),
            source,
        };
        let mut table: toml::Table = text.parse().map_err(parse_err)?;
        if legacy::has_old_keys(&table) {
            // Checked after the move, which has no positions: the error is
            // placed at the key as the file wrote it.
            let moved = legacy::migrate(&mut table);
            warnings.extend(
                moved
                    .into_iter()
                    .map(|w| format!("config {}: {w}", path.display())),
            );
            serde_path_to_error::deserialize::<_, Config>(toml::Value::Table(table.clone()))
                .map_err(|e| {
                    let (key, line) = legacy::locate(&text, &e.path().to_string());
                    ConfigError::OldLayout {
                        path: path.clone(),
                        at: line.map(|l| format!("line {l}, ")).unwrap_or_default(),
                        key,
                        message: e.into_inner().message().to_string(),
                    }
                })?;
        } else {
            parse(path, &text)?;
        }
        record_sources(&table, "", path, &mut sources);
        merge(&mut merged, table);
    }
    let config: Config =
        toml::Value::Table(merged)
            .try_into()
            .map_err(|source| ConfigError::Merge {
                files: files.clone(),
                source: Box::new(source),
            })?;
    if config.vmm().extra_monitor_socket.is_some() && !config.vmm().enable_debug {
        warnings.push(
            "[hypervisor.qemu] extra_monitor_socket is ignored: it needs enable_debug = true"
                .into(),
        );
    }
    Ok(Loaded {
        config,
        files,
        sources,
        warnings,
    })
}

fn read(path: &Path) -> Result<String, ConfigError> {
    fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    toml::from_str(text).map_err(|source| ConfigError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

/// A drop-in (or its directory) that someone else could have written is
/// refused: a main file in a shared directory (`RUNVM_CONFIG=/tmp/x.toml`)
/// must not let another user's `/tmp/config.d` choose the binaries runvm
/// runs as root.
fn check_trusted(path: &Path) -> Result<(), ConfigError> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let me = nix::unistd::geteuid().as_raw();
    // Group write counts unless the group is root's own.
    let writable = if meta.gid() == 0 { 0o002 } else { 0o022 };
    let why = if meta.uid() != me {
        Some(format!("it is owned by uid {}, not {me}", meta.uid()))
    } else if meta.mode() & writable != 0 {
        Some(format!(
            "its mode {:o} lets others write it",
            meta.mode() & 0o7777
        ))
    } else {
        None
    };
    match why {
        Some(why) => Err(ConfigError::Untrusted {
            path: path.to_path_buf(),
            why,
        }),
        None => Ok(()),
    }
}

/// The `*.toml` files of the drop-in directory, by name; none if it does
/// not exist.
fn dropins(dir: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(ConfigError::Read {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    check_trusted(dir)?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| ConfigError::Read {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "toml") && path.is_file() {
            check_trusted(&path)?;
            files.push(path);
        }
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(files)
}

/// Override `into`'s keys with `from`'s; tables merge key by key.
fn merge(into: &mut toml::Table, from: toml::Table) {
    for (key, value) in from {
        match (into.get_mut(&key), value) {
            (Some(toml::Value::Table(old)), toml::Value::Table(new)) => merge(old, new),
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}

fn record_sources(
    table: &toml::Table,
    prefix: &str,
    path: &Path,
    sources: &mut BTreeMap<String, PathBuf>,
) {
    for (key, value) in table {
        let name = format!("{prefix}{key}");
        match value {
            toml::Value::Table(t) => record_sources(t, &format!("{name}."), path, sources),
            _ => {
                sources.insert(name, path.to_path_buf());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Accel;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn drop_ins_apply_in_lexical_order_over_the_main_file() {
        let tmp = tempfile::tempdir().unwrap();
        let main = write(
            tmp.path(),
            "config.toml",
            "[hypervisor.qemu]\naccel = \"tcg\"\ndefault_memory = 512\n",
        );
        let late = write(
            tmp.path(),
            "config.d/20-memory.toml",
            "[hypervisor.qemu]\ndefault_memory = 384\n",
        );
        let early = write(
            tmp.path(),
            "config.d/10-memory.toml",
            "[hypervisor.qemu]\ndefault_memory = 320\ndefault_vcpus = 2\n",
        );
        write(tmp.path(), "config.d/30-notes.txt", "not toml = at all [");
        fs::create_dir(tmp.path().join("config.d/40-dir.toml")).unwrap();
        let loaded = load_files(&main, true).unwrap();
        assert_eq!(
            loaded.files,
            vec![main.clone(), early.clone(), late.clone()]
        );
        let hv = &loaded.config.hypervisor.qemu;
        assert_eq!(
            (hv.accel, hv.default_memory, hv.default_vcpus),
            (Accel::Tcg, 384, 2)
        );
        assert_eq!(loaded.sources["hypervisor.qemu.default_memory"], late);
        assert_eq!(loaded.sources["hypervisor.qemu.default_vcpus"], early);
        assert_eq!(loaded.sources["hypervisor.qemu.accel"], main);
        assert!(!loaded.sources.contains_key("hypervisor.qemu.path"));
        assert!(loaded.warnings.is_empty());
    }

    #[test]
    fn drop_ins_apply_without_the_optional_main_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dropin = write(
            tmp.path(),
            "config.d/10-pool.toml",
            "[factory]\npool_size = 0\n",
        );
        let loaded = load_files(&tmp.path().join("config.toml"), false).unwrap();
        assert_eq!(loaded.files, vec![dropin]);
        assert_eq!(loaded.config.factory.pool_size, 0);
        assert!(matches!(
            load_files(&tmp.path().join("config.toml"), true),
            Err(ConfigError::Read { .. })
        ));
    }

    #[test]
    fn an_unknown_key_in_a_drop_in_names_the_file_the_line_and_the_key() {
        let tmp = tempfile::tempdir().unwrap();
        let main = write(tmp.path(), "config.toml", "");
        let bad = write(
            tmp.path(),
            "config.d/10-typo.toml",
            "[hypervisor.qemu]\ndefault_vcpus = 2\nmemroy_mib = 512\n",
        );
        let err = load_files(&main, true).unwrap_err();
        let msg = crate::error_chain(&err);
        assert!(
            msg.starts_with(&format!("parse config {}: ", bad.display())),
            "{msg}"
        );
        assert!(msg.contains("line 3"), "{msg}");
        assert!(msg.contains("unknown field `memroy_mib`"), "{msg}");
    }

    #[test]
    fn drop_ins_others_could_write_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let main = write(tmp.path(), "config.toml", "");
        let dropin = write(
            tmp.path(),
            "config.d/10-a.toml",
            "[factory]\npool_size = 0\n",
        );
        let dir = tmp.path().join("config.d");
        for (path, mode) in [(&dir, 0o777), (&dropin, 0o666)] {
            let before = fs::metadata(path).unwrap().permissions().mode();
            fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
            let msg = crate::error_chain(&load_files(&main, true).unwrap_err());
            assert_eq!(
                msg,
                format!(
                    "config drop-in {} is refused: its mode {mode:o} lets others write it (it must be runvm's user's, and writable by no one else)",
                    path.display()
                )
            );
            fs::set_permissions(path, fs::Permissions::from_mode(before)).unwrap();
        }
        std::os::unix::fs::chown(&dropin, Some(65534), None).unwrap();
        let msg = crate::error_chain(&load_files(&main, true).unwrap_err());
        let me = nix::unistd::geteuid();
        assert!(
            msg.contains(&format!("it is owned by uid 65534, not {me}")),
            "{msg}"
        );
    }

    #[test]
    fn a_bad_value_names_the_file_and_the_line() {
        let tmp = tempfile::tempdir().unwrap();
        let main = write(
            tmp.path(),
            "config.toml",
            "[runtime]\nboot_secs = 5\n\n[hypervisor.qemu]\ndefault_vcpus = \"two\"\n",
        );
        let msg = crate::error_chain(&load_files(&main, true).unwrap_err());
        assert!(
            msg.starts_with(&format!("parse config {}: ", main.display())),
            "{msg}"
        );
        assert!(msg.contains("line 5"), "{msg}");
        assert!(msg.contains("default_vcpus"), "{msg}");
    }

    #[test]
    fn out_of_bounds_sizes_and_unbuilt_hypervisors_are_refused_with_the_line() {
        let tmp = tempfile::tempdir().unwrap();
        let main = tmp.path().join("config.toml");
        for (text, line, says) in [
            (
                "[hypervisor.qemu]\ndefault_vcpus = 0\n",
                "line 2",
                "at least 1 vCPU",
            ),
            (
                "\n[hypervisor.qemu]\ndefault_memory = 64\n",
                "line 3",
                "minimum VM of 128 MiB",
            ),
            (
                "[hypervisor.firecracker]\ndefault_memory = 32\n",
                "line 2",
                "minimum VM of 128 MiB",
            ),
            (
                "[runtime]\n\ncgroup_cpu_overhead = -1.0\n",
                "line 3",
                "-1 CPUs is not between 0 and 1024",
            ),
            (
                "[hypervisor.acrn]\nvcpus = 2\n",
                "line 2",
                "unknown field `vcpus`",
            ),
            (
                "[runtime]\nhypervisor = \"firecracker\"\n",
                "line 2",
                "hypervisor \"firecracker\" is not built into this runvm",
            ),
            (
                "[runtime]\nhypervisor = \"xen\"\n",
                "line 2",
                "unknown hypervisor \"xen\"",
            ),
        ] {
            fs::write(&main, text).unwrap();
            let msg = crate::error_chain(&load_files(&main, true).unwrap_err());
            assert!(msg.contains(line) && msg.contains(says), "{text:?}: {msg}");
        }
        // A section for a hypervisor that is not selected is only checked.
        fs::write(
            &main,
            "[hypervisor.firecracker]\npath = \"/usr/bin/firecracker\"\ndefault_vcpus = 2\n",
        )
        .unwrap();
        let loaded = load_files(&main, true).unwrap();
        assert_eq!(
            loaded.config.hypervisor.firecracker.unwrap().default_vcpus,
            Some(2)
        );
    }

    #[test]
    fn a_file_with_the_old_keys_still_works_and_warns_with_the_new_names() {
        let tmp = tempfile::tempdir().unwrap();
        let main = write(
            tmp.path(),
            "config.toml",
            "[hypervisor]\nmemory_mib = 320\n",
        );
        let loaded = load_files(&main, true).unwrap();
        assert_eq!(loaded.config.hypervisor.qemu.default_memory, 320);
        assert_eq!(loaded.sources["hypervisor.qemu.default_memory"], main);
        assert_eq!(
            loaded.warnings,
            vec![format!(
                "config {}: [hypervisor] memory_mib is the old name of [hypervisor.qemu] default_memory: read as that (rename it)",
                main.display()
            )]
        );
        // Still checked: an unknown key next to the old ones is an error.
        fs::write(&main, "[hypervisor]\nmemory_mib = 320\nmemroy = 1\n").unwrap();
        let msg = crate::error_chain(&load_files(&main, true).unwrap_err());
        assert_eq!(
            msg,
            format!(
                "parse config {}: line 3, [hypervisor] memroy: unknown field `memroy`, \
                 expected one of `qemu`, `cloud-hypervisor`, `firecracker`, `acrn`, `dragonball`",
                main.display()
            )
        );
        // A bad value of an old key: its line and its name as written.
        fs::write(&main, "[hypervisor]\nvcpus = 1\nmemory_mib = \"x\"\n").unwrap();
        let msg = crate::error_chain(&load_files(&main, true).unwrap_err());
        assert_eq!(
            msg,
            format!(
                "parse config {}: line 3, [hypervisor] memory_mib (read as [hypervisor.qemu] \
                 default_memory): invalid type: string \"x\", expected u32",
                main.display()
            )
        );
    }
}
