//! Which accelerator a VM runs with: KVM where /dev/kvm can run a normal
//! guest kernel, TCG (software emulation) where it cannot.

use std::fs::OpenOptions;
use std::path::Path;

use crate::config::Accel;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResolvedAccel {
    Kvm,
    Tcg,
}

impl ResolvedAccel {
    pub fn as_str(self) -> &'static str {
        match self {
            ResolvedAccel::Kvm => "kvm",
            ResolvedAccel::Tcg => "tcg",
        }
    }
}

/// Turn the configured accelerator into the one to use, with the reason.
/// `auto` takes KVM only when /dev/kvm can run a normal guest kernel: a PVM
/// host's /dev/kvm (module kvm_pvm) runs only PVM-built guests, and a normal
/// kernel dies early with "KVM internal error".
pub fn resolve_accel(accel: Accel) -> (ResolvedAccel, String) {
    match accel {
        Accel::Kvm => (ResolvedAccel::Kvm, "configured".into()),
        Accel::Tcg => (ResolvedAccel::Tcg, "configured".into()),
        Accel::Auto => match kvm_usable(Path::new("/dev/kvm"), Path::new("/sys/module")) {
            Ok(()) => (ResolvedAccel::Kvm, "/dev/kvm is usable".into()),
            Err(why) => (ResolvedAccel::Tcg, why),
        },
    }
}

/// Why KVM cannot run a normal guest here, if it cannot.
fn kvm_usable(dev: &Path, modules: &Path) -> Result<(), String> {
    if let Err(e) = OpenOptions::new().read(true).write(true).open(dev) {
        return Err(format!("{} is not usable: {e}", dev.display()));
    }
    if modules.join("kvm_pvm").exists() {
        return Err(format!(
            "{} is PVM (kvm_pvm is loaded), which runs only PVM guest kernels",
            dev.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvm_host_falls_back_to_tcg() {
        let tmp = tempfile::tempdir().unwrap();
        let dev = tmp.path().join("kvm");
        std::fs::write(&dev, b"").unwrap();
        let modules = tmp.path().join("module");
        std::fs::create_dir_all(modules.join("kvm_pvm")).unwrap();
        let err = kvm_usable(&dev, &modules).unwrap_err();
        assert!(err.contains("PVM"), "{err}");
        std::fs::remove_dir(modules.join("kvm_pvm")).unwrap();
        assert_eq!(kvm_usable(&dev, &modules), Ok(()));
        assert!(kvm_usable(&tmp.path().join("missing"), &modules).is_err());
    }

    #[test]
    fn configured_accel_is_taken_as_is() {
        assert_eq!(resolve_accel(Accel::Tcg).0, ResolvedAccel::Tcg);
        assert_eq!(resolve_accel(Accel::Kvm).0, ResolvedAccel::Kvm);
    }
}
