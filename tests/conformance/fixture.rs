//! Host-side things both runtimes' containers point at: a directory to
//! bind mount (with a submount, so bind and rbind differ) and a uts
//! namespace kept alive by a bind mount on a file, to join by path. Its Drop
//! unmounts them, so a failing run leaves no mount behind.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const UTS_HOSTNAME: &str = "joined-by-path";

pub struct Fixture {
    dir: tempfile::TempDir,
    mounted: Vec<PathBuf>,
}

fn must(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Fixture {
    pub fn new() -> Fixture {
        let dir = tempfile::Builder::new()
            .prefix("runvm-conformance-")
            .tempdir()
            .unwrap();
        let mut f = Fixture {
            dir,
            mounted: Vec::new(),
        };
        let src = f.bind_source();
        fs::create_dir(&src).unwrap();
        fs::write(src.join("file"), "bound\n").unwrap();
        let sub = src.join("sub");
        fs::create_dir(&sub).unwrap();
        f.mount(&["-t", "tmpfs", "-o", "size=1m", "tmpfs"], &sub);
        fs::write(sub.join("inner"), "submount\n").unwrap();

        // A persistent namespace file must not sit on a shared mount (the
        // kernel refuses to propagate an nsfs mount), so it gets a private
        // tmpfs of its own.
        let ns = f.dir.path().join("ns");
        fs::create_dir(&ns).unwrap();
        f.mount(&["-t", "tmpfs", "-o", "size=1m", "tmpfs"], &ns);
        must(Command::new("mount").args(["--make-private"]).arg(&ns));
        let uts = f.uts_path();
        fs::write(&uts, "").unwrap();
        must(
            Command::new("unshare")
                .arg(format!("--uts={}", uts.display()))
                .args(["hostname", UTS_HOSTNAME]),
        );
        f.mounted.push(uts);
        f
    }

    fn mount(&mut self, args: &[&str], target: &Path) {
        must(Command::new("mount").args(args).arg(target));
        self.mounted.push(target.to_path_buf());
    }

    /// A directory holding `file` and a tmpfs at `sub` holding `inner`.
    pub fn bind_source(&self) -> PathBuf {
        self.dir.path().join("src")
    }

    /// A uts namespace whose hostname is [`UTS_HOSTNAME`].
    pub fn uts_path(&self) -> PathBuf {
        self.dir.path().join("ns/uts")
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // Innermost first: the namespace file sits on the ns tmpfs.
        for m in self.mounted.iter().rev() {
            let _ = Command::new("umount").arg(m).output();
        }
    }
}
