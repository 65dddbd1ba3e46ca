//! config.json as `create` reads it: parsed, checked as runc checks it, its
//! bind mounts resolved, then its annotations applied to a configuration
//! that allows every override.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libcontainer::config::Config;
use libcontainer::overrides::{apply, Host};
use libcontainer::spec::Bundle;
use libfuzzer_sys::fuzz_target;

fn bundle() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("runvm-fuzz-bundle-")
            .tempdir()
            .unwrap()
            .keep();
        std::fs::create_dir_all(dir.join("rootfs")).unwrap();
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let dir = bundle();
    let Ok(b) = Bundle::from_slice(dir, &dir.join("config.json"), data) else {
        return;
    };
    let mut config = Config::default();
    config.vmm_mut().enable_annotations = vec![".*".into()];
    config.vmm_mut().valid_kernel_paths = vec!["/**".into()];
    let annotations = b.spec.annotations().clone().unwrap_or_default();
    let _ = apply(
        &config,
        &annotations,
        Host {
            cpus: 2,
            mib: 24 << 10,
        },
    );
});
