//! The configuration file (/etc/runvm/config.toml) as runvm loads it: read,
//! old keys migrated, merged with its (absent) drop-ins, checked.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libcontainer::config::load_files;
use libfuzzer_sys::fuzz_target;

fn file() -> &'static PathBuf {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    FILE.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("runvm-fuzz-config-")
            .tempdir_in("/dev/shm")
            .unwrap()
            .keep();
        dir.join("config.toml")
    })
}

fuzz_target!(|data: &[u8]| {
    std::fs::write(file(), data).unwrap();
    let _ = load_files(file(), true);
});
