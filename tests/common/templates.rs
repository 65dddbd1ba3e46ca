//! VM templates for the tests: one built per test, and the one every
//! container of a test binary clones in template mode.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;

use super::{text, COUNTER, RUNVM};

/// Whether the suite runs with containers cloned from a template.
pub fn template_mode() -> bool {
    std::env::var("RUNVM_TEST_TEMPLATE").is_ok_and(|v| v == "1")
}

/// A template built with `runvm factory init` in a directory of its own on
/// tmpfs; removed when dropped, so a failing test leaves no memory file.
pub struct TestTemplate {
    pub path: PathBuf,
}

impl TestTemplate {
    pub fn build(name: &str) -> TestTemplate {
        Self::build_with(name, "")
    }

    /// A template made with this configuration (TOML) besides its own
    /// `[factory]` section.
    pub fn build_with(name: &str, toml: &str) -> TestTemplate {
        let path = PathBuf::from(format!(
            "/dev/shm/runvm-test-templates/{name}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        let t = TestTemplate { path };
        let config = t.path.with_extension("toml");
        fs::create_dir_all(t.path.parent().unwrap()).unwrap();
        fs::write(&config, format!("{toml}{}", t.config_section())).unwrap();
        let out = Command::new(RUNVM)
            .args(["factory", "init"])
            .env("RUNVM_CONFIG", &config)
            .output()
            .unwrap();
        assert!(out.status.success(), "factory init: {}", text(&out.stderr));
        t
    }

    pub fn config_section(&self) -> String {
        format!(
            "\n[factory]\nenable_template = true\ntemplate_path = \"{}\"\n",
            self.path.display()
        )
    }

    /// Remove it, its lock and config files, and the directory of a build
    /// of it that died (`NAME.new-PID`), as `factory destroy` would. Each
    /// template's name is its own, so nothing of another is touched; the
    /// clones' memory copies are their containers' to remove.
    pub fn destroy(&self) {
        let _ = fs::remove_dir_all(&self.path);
        let _ = fs::remove_file(self.path.with_extension("lock"));
        let _ = fs::remove_file(self.path.with_extension("toml"));
        let (Some(holder), Some(name)) = (self.path.parent(), self.path.file_name()) else {
            return;
        };
        let builds = format!("{}.new-", name.to_string_lossy());
        for entry in fs::read_dir(holder).into_iter().flatten().flatten() {
            if entry.file_name().to_string_lossy().starts_with(&builds) {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }
}

/// Tests may also destroy a template themselves, mid-test; removing what is
/// gone already is harmless.
impl Drop for TestTemplate {
    fn drop(&mut self) {
        self.destroy();
    }
}

/// The template all containers of this test binary clone in template mode;
/// removed when the test binary exits (a static is never dropped).
pub(super) fn shared_template() -> &'static TestTemplate {
    static T: std::sync::OnceLock<TestTemplate> = std::sync::OnceLock::new();
    T.get_or_init(|| {
        let name = std::env::args()
            .next()
            .and_then(|a| {
                Path::new(&a)
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
            })
            .unwrap_or_else(|| "tests".into());
        extern "C" fn cleanup() {
            if let Some(t) = T.get() {
                t.destroy();
            }
        }
        // SAFETY: registering a plain extern "C" function with atexit.
        unsafe {
            libc::atexit(cleanup);
        }
        TestTemplate::build(&name)
    })
}
