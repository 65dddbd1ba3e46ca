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
    /// Its warm pool's size (`[factory] pool_size`).
    pub pool: u32,
}

impl TestTemplate {
    pub fn build(name: &str) -> TestTemplate {
        Self::build_with(name, "")
    }

    /// A template with a warm pool of `pool` VMs, filled once it is built.
    pub fn build_pooled(name: &str, pool: u32) -> TestTemplate {
        let mut t = Self::unbuilt(name);
        t.pool = pool;
        t.init("");
        t
    }

    /// A path of its own for a template no one has built yet.
    pub fn unbuilt(name: &str) -> TestTemplate {
        let path = PathBuf::from(format!(
            "/dev/shm/runvm-test-templates/{name}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        TestTemplate { path, pool: 0 }
    }

    /// A template made with this configuration (TOML) besides its own
    /// `[factory]` section.
    pub fn build_with(name: &str, toml: &str) -> TestTemplate {
        let t = Self::unbuilt(name);
        t.init(toml);
        t
    }

    fn init(&self, toml: &str) {
        let config = self.path.with_extension("toml");
        fs::write(&config, format!("{toml}{}", self.config_section())).unwrap();
        let out = Command::new(RUNVM)
            .args(["factory", "init"])
            .env("RUNVM_CONFIG", &config)
            .output()
            .unwrap();
        assert!(out.status.success(), "factory init: {}", text(&out.stderr));
    }

    pub fn pool_dir(&self) -> PathBuf {
        self.path.with_extension("pool")
    }

    /// The pool's VMs waiting for a claim: their directories.
    pub fn pool_ready(&self) -> Vec<PathBuf> {
        let mut ready: Vec<PathBuf> = fs::read_dir(self.pool_dir())
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.join("claim.sock").exists())
            .collect();
        ready.sort();
        ready
    }

    /// Wait until `n` pool VMs are ready.
    pub fn wait_pool(&self, n: usize, timeout: std::time::Duration) -> Vec<PathBuf> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let ready = self.pool_ready();
            if ready.len() >= n {
                return ready;
            }
            let logs: Vec<String> = (0..self.pool)
                .map(|s| {
                    fs::read_to_string(self.pool_dir().join(format!("slot-{s}.log")))
                        .unwrap_or_default()
                })
                .collect();
            assert!(
                std::time::Instant::now() < deadline,
                "{} of {n} pool VMs ready after {timeout:?}; logs: {logs:?}",
                ready.len()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Templates on, and built by the tests only: a create that finds this
    /// one unusable boots cold and starts no build behind the test's back.
    pub fn config_section(&self) -> String {
        format!(
            "\n[factory]\nenable_template = true\nauto_build = false\npool_size = {}\ntemplate_path = \"{}\"\n",
            self.pool,
            self.path.display()
        )
    }

    /// Remove it, its lock and config files, and the directory of a build
    /// of it that died (`NAME.new-PID`), as `factory destroy` would. Each
    /// template's name is its own, so nothing of another is touched; the
    /// clones' memory copies are their containers' to remove.
    pub fn destroy(&self) {
        // The pool's VMs are stopped by `factory destroy` (which the pool
        // tests check); it needs only the template's path.
        let config = self.path.with_extension("toml");
        if self.pool_dir().exists() {
            if !config.exists() {
                let _ = fs::write(&config, self.config_section());
            }
            let _ = Command::new(RUNVM)
                .args(["factory", "destroy"])
                .env("RUNVM_CONFIG", &config)
                .output();
        }
        let _ = fs::remove_dir_all(self.pool_dir());
        // A background build still running (a test that failed before it
        // waited for one) would put files back after us: wait for it, as
        // `factory destroy` does.
        let _build = fs::File::open(self.path.with_extension("build-lock"))
            .ok()
            .and_then(|f| nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive).ok());
        let _ = fs::remove_dir_all(&self.path);
        for ext in ["lock", "toml", "build-lock", "build.log", "failed"] {
            let _ = fs::remove_file(self.path.with_extension(ext));
        }
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

/// In cold mode every runvm the tests start is given this: templates off,
/// so that no create clones, or builds, a template of the host's.
pub const COLD_SECTION: &str = "\n[factory]\nenable_template = false\n";

/// A config file with [`COLD_SECTION`] alone, for the clients' daemons to
/// pass on; removed when the test binary exits.
pub(super) fn cold_config() -> &'static Path {
    static F: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    F.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("runvm-cold-{}.toml", std::process::id()));
        fs::write(&path, COLD_SECTION).unwrap();
        extern "C" fn cleanup() {
            if let Some(p) = F.get() {
                let _ = fs::remove_file(p);
            }
        }
        // SAFETY: registering a plain extern "C" function with atexit.
        unsafe {
            libc::atexit(cleanup);
        }
        path
    })
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
        // The suite's template mode runs with the warm pool on, as a user
        // gets it.
        TestTemplate::build_pooled(&name, 2)
    })
}
