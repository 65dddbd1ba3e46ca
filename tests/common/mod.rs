//! Harness of the end-to-end tests: they run the real `runvm` binary, which
//! boots a real QEMU VM with the real guest kernel, agent and virtiofsd, on a
//! busybox rootfs. Each container is cleaned up by a guard, even when the test
//! fails, and the leak check runs after it (when the test has already failed,
//! leaks are printed rather than asserted, so the first failure is the one
//! reported).

#![allow(dead_code)]

pub mod clients;
pub mod netns;
mod templates;
mod vmm;

use templates::shared_template;
// Not every test binary uses both.
#[allow(unused_imports)]
pub use templates::{template_mode, TestTemplate};
pub use vmm::Vmm;

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;
use std::time::{Duration, Instant};

use serde_json::Value;

pub const RUNVM: &str = env!("CARGO_BIN_EXE_runvm");
/// What `uname -r` says in the guest: runvm's own kernel (guest/kernel.sh).
pub const GUEST_KERNEL: &str = "-runvm";
/// The fallback kernel, Debian's cloud kernel, in the guest directory that
/// `make guest` fills beside the binary.
pub fn debian_kernel() -> PathBuf {
    Path::new(RUNVM)
        .parent()
        .and_then(Path::parent)
        .expect("the binary is in target/<profile>")
        .join("share/runvm/vmlinux-debian")
}
const BUSYBOX: &str = "/bin/busybox";
const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "sleep", "true", "false", "uname", "id", "pwd", "hostname", "touch", "ls",
    "dd", "head", "od", "tr", "wc", "stty", "date", "ps", "env", "grep", "mkdir", "rm", "kill",
    "yes", "seq", "printf", "test", "nproc", "free", "mount", "ip", "ping", "nc", "httpd", "wget",
];

static SUBREAPER: Once = Once::new();
static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Become the subreaper of the shims we create, as containerd's shim is, so
/// their exit statuses can be checked.
fn become_subreaper() {
    SUBREAPER.call_once(|| {
        // SAFETY: prctl with integer arguments only.
        let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        assert_eq!(rc, 0, "PR_SET_CHILD_SUBREAPER");
    });
}

/// The runvm configuration the clients' daemons pass on to runvm (through
/// their environment): in template mode, the shared template's; else one
/// with templates off.
pub fn client_config() -> PathBuf {
    if template_mode() {
        shared_template().path.with_extension("toml")
    } else {
        templates::cold_config().to_path_buf()
    }
}

/// A container id unique to this test run.
pub fn unique_id(name: &str) -> String {
    format!(
        "{name}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// A bundle: a busybox rootfs and the config.json `runvm spec` writes.
pub struct Bundle {
    dir: tempfile::TempDir,
}

impl Bundle {
    pub fn busybox(args: &[&str]) -> Bundle {
        let dir = tempfile::Builder::new()
            .prefix("runvm-test-")
            .tempdir()
            .unwrap();
        let bin = dir.path().join("rootfs/bin");
        fs::create_dir_all(&bin).unwrap();
        fs::copy(BUSYBOX, bin.join("busybox")).unwrap();
        for applet in APPLETS {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
        }
        let out = Command::new(RUNVM)
            .arg("spec")
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "runvm spec: {out:?}");
        let b = Bundle { dir };
        b.edit(|c| c["process"]["args"] = serde_json::json!(args));
        b
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Join the network namespace at `path` instead of a new one.
    pub fn join_netns(&self, path: &str) {
        let path = path.to_string();
        self.edit(move |c| {
            let ns = c["linux"]["namespaces"].as_array_mut().unwrap();
            ns.retain(|n| n["type"] != "network");
            ns.push(serde_json::json!({"type": "network", "path": path}));
        });
    }

    /// Another bundle with the same config.json and a copy of the rootfs
    /// (busybox and what the container wrote there).
    pub fn copy(&self) -> Bundle {
        let dir = tempfile::Builder::new()
            .prefix("runvm-test-")
            .tempdir()
            .unwrap();
        let status = Command::new("cp")
            .arg("-a")
            .arg(self.rootfs())
            .arg(self.path().join("config.json"))
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success());
        Bundle { dir }
    }

    pub fn rootfs(&self) -> PathBuf {
        self.dir.path().join("rootfs")
    }

    pub fn config(&self) -> Value {
        serde_json::from_slice(&fs::read(self.path().join("config.json")).unwrap()).unwrap()
    }

    pub fn edit(&self, f: impl FnOnce(&mut Value)) {
        let mut c = self.config();
        f(&mut c);
        fs::write(
            self.path().join("config.json"),
            serde_json::to_vec_pretty(&c).unwrap(),
        )
        .unwrap();
    }

    /// The file a created container's stdout or stderr was sent to.
    pub fn output(&self, name: &str) -> String {
        fs::read_to_string(self.path().join(name)).unwrap_or_default()
    }
}

/// runvm with a state root of its own.
pub struct Runvm {
    root: tempfile::TempDir,
    /// A runvm config file given through $RUNVM_CONFIG (outside the root).
    config: Option<tempfile::NamedTempFile>,
    /// Its containers must be clones of the shared template (template mode).
    clones: bool,
    /// In template mode, the `--log` file of every command: a shim that boots
    /// cold says why there, as a warning, and the drop checks that none did.
    boot_log: Option<tempfile::NamedTempFile>,
}

impl Default for Runvm {
    fn default() -> Self {
        Self::new()
    }
}

impl Runvm {
    /// runvm with the default configuration, or, when RUNVM_TEST_TEMPLATE=1,
    /// with containers cloned from a template (built once per test binary).
    pub fn new() -> Runvm {
        Self::with_config("")
    }

    /// runvm with this configuration (TOML), e.g. short timeouts.
    pub fn with_config(toml: &str) -> Runvm {
        Self::configured(toml, template_mode())
    }

    /// runvm that boots every container cold whatever RUNVM_TEST_TEMPLATE
    /// says: for tests of a VM's own settings, which a clone of the shared
    /// template could not have.
    pub fn cold(toml: &str) -> Runvm {
        Self::configured(toml, false)
    }

    fn configured(toml: &str, clones: bool) -> Runvm {
        become_subreaper();
        let mut rv = Runvm {
            root: tempfile::Builder::new()
                .prefix("runvm-root-")
                .tempdir()
                .unwrap(),
            config: None,
            clones,
            boot_log: clones.then(|| {
                tempfile::Builder::new()
                    .prefix("runvm-log-")
                    .tempfile()
                    .unwrap()
            }),
        };
        let mut toml = toml.to_string();
        if clones {
            toml.push_str(&shared_template().config_section());
        } else if !toml.contains("[factory]") {
            toml.push_str(templates::COLD_SECTION);
        }
        if !toml.is_empty() {
            let file = tempfile::Builder::new()
                .prefix("runvm-config-")
                .suffix(".toml")
                .tempfile()
                .unwrap();
            fs::write(file.path(), toml).unwrap();
            rv.config = Some(file);
        }
        rv
    }

    /// The state file of a container, as runvm keeps it.
    pub fn raw_state(&self, id: &str) -> Value {
        serde_json::from_slice(&fs::read(self.root().join(id).join("state.json")).unwrap()).unwrap()
    }

    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// The file given as $RUNVM_CONFIG, if any.
    pub fn config_path(&self) -> Option<&Path> {
        self.config.as_ref().map(|c| c.path())
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(RUNVM);
        c.arg("--root").arg(self.root.path());
        if let Some(log) = &self.boot_log {
            // A test's own --log comes later and wins.
            c.arg("--log").arg(log.path());
        }
        if let Some(config) = &self.config {
            c.env("RUNVM_CONFIG", config.path());
        }
        c
    }

    /// Run a verb that ends quickly; stdin is empty.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).stdin(Stdio::null()).output().unwrap()
    }

    /// In template mode every container must be a clone: a broken template
    /// must not let the suite pass on cold boots. (A restored container
    /// boots nothing: its VM is the checkpoint's.)
    fn check_boot(&self, id: &str) {
        if self.clones {
            let boot = self.raw_state(id)["boot"].clone();
            assert!(
                boot == "template" || boot == "pool" || boot == "checkpoint",
                "{id} booted cold"
            );
        }
    }

    /// `runvm restore --detach --image-path IMAGE` of `bundle` under `id`,
    /// with the container's stdio in the bundle's `out.txt` and `err.txt`.
    pub fn restore<'a>(
        &'a self,
        id: &str,
        bundle: &Bundle,
        image: &Path,
    ) -> (Container<'a>, Output) {
        let image = image.to_str().unwrap();
        self.start_detached(&["restore", "--detach", "--image-path", image], id, bundle)
    }

    /// Container `id`'s QEMU, as its state records it (a warm pool VM's
    /// QEMU is named after the pool, not after the container).
    pub fn vmm(&self, id: &str) -> Vmm {
        Vmm::of(&self.raw_state(id))
    }

    pub fn state(&self, id: &str) -> Value {
        let out = self.run(&["state", id]);
        assert!(out.status.success(), "state {id}: {}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    pub fn status(&self, id: &str) -> String {
        self.state(id)["status"].as_str().unwrap().to_string()
    }

    /// Wait until `state` reports `status`.
    pub fn wait_status(&self, id: &str, status: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let now = self.status(id);
            if now == status {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{id} is still {now}, not {status}, after {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `runvm create` with the container's stdout and stderr sent to
    /// `out.txt` and `err.txt` in the bundle (the shim keeps them open, so
    /// they cannot be pipes we read to EOF). Returns the guard and output.
    pub fn create<'a>(&'a self, id: &str, bundle: &Bundle) -> (Container<'a>, Output) {
        self.start_detached(&["create"], id, bundle)
    }

    /// `verb --bundle B --pid-file P ID` with the container's stdio in the
    /// bundle's `out.txt` and `err.txt`.
    fn start_detached<'a>(
        &'a self,
        verb: &[&str],
        id: &str,
        bundle: &Bundle,
    ) -> (Container<'a>, Output) {
        let pid_file = bundle.path().join("shim.pid");
        let out = self
            .cmd()
            .args(verb)
            .arg("--bundle")
            .arg(bundle.path())
            .arg("--pid-file")
            .arg(&pid_file)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(File::create(bundle.path().join("out.txt")).unwrap())
            .stderr(File::create(bundle.path().join("err.txt")).unwrap())
            .output()
            .unwrap();
        let shim_pid = fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.parse().ok());
        let mut c = Container {
            rv: self,
            id: id.to_string(),
            shim_pid,
            bundle: bundle.path().to_path_buf(),
            vmm: None,
        };
        if out.status.success() {
            // With the guard made: if this fails, the container goes.
            self.check_boot(id);
            c.vmm = Some(self.vmm(id));
        }
        (c, out)
    }

    /// A guard for a container created some other way (e.g. `run -d`).
    pub fn guard<'a>(&'a self, id: &str, bundle: &Bundle) -> Container<'a> {
        Container {
            rv: self,
            id: id.to_string(),
            shim_pid: None,
            bundle: bundle.path().to_path_buf(),
            vmm: None,
        }
    }
}

/// In template mode every container of the test, foreground `run`s and failed
/// creates included, must have been a clone. The one cold boot allowed is the
/// documented one: a container that needs a larger VM than the template's
/// (docs/templating.md).
impl Drop for Runvm {
    fn drop(&mut self) {
        let Some(log) = &self.boot_log else { return };
        if std::thread::panicking() {
            return;
        }
        let text = fs::read_to_string(log.path()).unwrap_or_default();
        let cold: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("booting cold") && !l.contains("the container needs"))
            .collect();
        assert!(cold.is_empty(), "containers booted cold: {cold:#?}");
    }
}

/// Deletes its container (with --force) when dropped, reaps its shim, and
/// checks that nothing of it is left.
pub struct Container<'a> {
    pub rv: &'a Runvm,
    pub id: String,
    pub shim_pid: Option<i32>,
    bundle: PathBuf,
    /// Its QEMU, once created.
    vmm: Option<Vmm>,
}

impl Container<'_> {
    /// Wait for the shim (our child, as we are its subreaper) and return its
    /// exit code.
    pub fn wait_shim(&mut self, timeout: Duration) -> i32 {
        let pid = self.shim_pid.expect("the pid file named the shim");
        let code = wait_pid(pid, timeout).unwrap_or_else(|| panic!("shim {pid} still runs"));
        self.shim_pid = None;
        code
    }
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        let _ = self.rv.run(&["delete", "--force", &self.id]);
        if let Some(pid) = self.shim_pid.take() {
            let _ = wait_pid(pid, Duration::from_secs(30));
        }
        let vmm_left = self
            .vmm
            .filter(|v| !v.wait_gone(Duration::from_secs(10)))
            .map(|v| format!("QEMU {} of {} left", v.pid, self.id));
        if std::thread::panicking() {
            if let Err(leak) = leaks(self.rv.root(), &self.id, &self.bundle) {
                eprintln!("after the failure, {leak}");
            }
            if let Some(left) = vmm_left {
                eprintln!("after the failure, {left}");
            }
        } else {
            assert_no_leaks(self.rv.root(), &self.id, &self.bundle);
            assert_eq!(vmm_left, None);
        }
    }
}

/// waitpid with a deadline; the exit code (128+N for signal N).
pub fn wait_pid(pid: i32, timeout: Duration) -> Option<i32> {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let deadline = Instant::now() + timeout;
    loop {
        match waitpid(nix::unistd::Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => return Some(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Some(128 + sig as i32),
            Ok(_) => {}
            Err(_) => return None,
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Host processes whose command line mentions `needle`.
pub fn processes_matching(needle: &str) -> Vec<(i32, String)> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == std::process::id() as i32 {
            continue;
        }
        let Ok(raw) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push((pid, cmdline));
        }
    }
    found
}

/// Nothing of container `id` remains: no shim, QEMU or virtiofsd process, no
/// state directory (so no socket or log), no mount under the state root or
/// the bundle in this (the host's) mount namespace. The share's own bind
/// mounts live in the shim's private namespace and end with it, which the
/// process check covers.
pub fn assert_no_leaks(root: &Path, id: &str, bundle: &Path) {
    if let Err(leak) = leaks(root, id, bundle) {
        panic!("{leak}");
    }
}

/// What is left of container `id`, waiting up to 10 s for processes to go.
pub fn leaks(root: &Path, id: &str, bundle: &Path) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let procs: Vec<_> = processes_matching(id)
            .into_iter()
            .chain(processes_matching(&bundle.display().to_string()))
            .collect();
        if procs.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            return Err(format!("processes of {id} left: {procs:?}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if root.join(id).exists() {
        return Err(format!("state directory {} left", root.join(id).display()));
    }
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for m in mounts.lines() {
        if m.contains(&*root.to_string_lossy()) || m.contains(&*bundle.to_string_lossy()) {
            return Err(format!("mount left: {m}"));
        }
    }
    let dirs = host_cgroup_dirs(&default_host_cgroup(id));
    if !dirs.is_empty() {
        return Err(format!("host cgroup left: {dirs:?}"));
    }
    Ok(())
}

/// The tests' own cgroup (so runvm's, which they run) below the
/// hierarchy's root: the memory controller's on a cgroup v1 host.
pub fn own_cgroup() -> String {
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let text = fs::read_to_string("/proc/self/cgroup").unwrap();
    text.lines()
        .find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (n, controllers, path) = (f.next()?, f.next()?, f.next()?);
            let ours = if v2 {
                n == "0"
            } else {
                controllers.split(',').any(|c| c == "memory")
            };
            ours.then(|| path.trim_matches('/').to_string())
        })
        .unwrap_or_default()
}

/// The host cgroup of container `id` when its spec names none: `id` below
/// runvm's own cgroup, as runc puts a relative path.
pub fn default_host_cgroup(id: &str) -> String {
    match own_cgroup() {
        own if own.is_empty() => id.to_string(),
        own => format!("{own}/{id}"),
    }
}

/// The directories of host cgroup `path` (below each hierarchy's root)
/// that exist.
pub fn host_cgroup_dirs(path: &str) -> Vec<PathBuf> {
    let roots: Vec<PathBuf> = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        vec![PathBuf::from("/sys/fs/cgroup")]
    } else {
        fs::read_dir("/sys/fs/cgroup")
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect()
    };
    roots
        .into_iter()
        .map(|r| r.join(path))
        .filter(|d| d.is_dir())
        .collect()
}

/// The pids in host cgroup `path` of `hierarchy` ("memory", "cpu"; ignored
/// on a cgroup v2 host).
pub fn host_cgroup_procs(path: &str, hierarchy: &str) -> Vec<i32> {
    host_cgroup_file(path, hierarchy, "cgroup.procs")
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// A file of host cgroup `path` in `hierarchy`, read.
pub fn host_cgroup_file(path: &str, hierarchy: &str, file: &str) -> String {
    let dir = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        PathBuf::from("/sys/fs/cgroup").join(path)
    } else {
        PathBuf::from("/sys/fs/cgroup").join(hierarchy).join(path)
    };
    fs::read_to_string(dir.join(file))
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.join(file).display()))
}

/// `run -d` a container under a unique id made from `name`; the id and its
/// guard.
pub fn run_idle<'a>(rv: &'a Runvm, name: &str, b: &Bundle) -> (String, Container<'a>) {
    let id = unique_id(name);
    let c = rv.run_detached(&id, b);
    (id, c)
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Run `runvm run` with `input` on its stdin; returns its output.
pub fn run_with_input(rv: &Runvm, id: &str, bundle: &Bundle, input: &[u8]) -> Output {
    let mut child = rv
        .cmd()
        .args(["run", "--bundle"])
        .arg(bundle.path())
        .arg(id)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input).unwrap();
    drop(stdin);
    child.wait_with_output().unwrap()
}

impl Runvm {
    /// `runvm run -d`: create and start; the container's stdio go to
    /// `out.txt` and `err.txt` in the bundle. Returns the guard.
    pub fn run_detached<'a>(&'a self, id: &str, bundle: &Bundle) -> Container<'a> {
        let (c, out) = self.start_detached(&["run", "-d"], id, bundle);
        assert!(out.status.success(), "run -d: {}", bundle.output("err.txt"));
        c
    }
}

/// Wait until a file holds `needle` (a detached container's output).
pub fn wait_for_output(bundle: &Bundle, file: &str, needle: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !bundle.output(file).contains(needle) {
        assert!(
            Instant::now() < deadline,
            "{file} never showed {needle:?}: {:?}",
            bundle.output(file)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The receiving end of runc's console-socket protocol, as containerd and
/// conmon implement it: accept one connection, take the pty master sent
/// with SCM_RIGHTS.
pub struct ConsoleReceiver {
    pub path: PathBuf,
    handle: std::thread::JoinHandle<std::os::fd::OwnedFd>,
    _dir: tempfile::TempDir,
}

impl ConsoleReceiver {
    pub fn new() -> ConsoleReceiver {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let handle = std::thread::spawn(move || {
            let (conn, _) = listener.accept().unwrap();
            libcontainer::terminal::receive_from_console_socket(std::os::fd::AsFd::as_fd(&conn))
                .unwrap()
        });
        ConsoleReceiver {
            path,
            handle,
            _dir: dir,
        }
    }

    pub fn master(self) -> std::os::fd::OwnedFd {
        self.handle.join().unwrap()
    }
}

/// Set the window size through a pty master, as a terminal client does.
pub fn set_window_size(master: &std::os::fd::OwnedFd, rows: u16, cols: u16) {
    use std::os::fd::AsRawFd;
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize we own from a valid descriptor.
    assert_eq!(
        unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) },
        0
    );
}

/// Read from a pty master until `needle` shows up; returns all read.
pub fn read_until(master: &std::os::fd::OwnedFd, needle: &str, timeout: Duration) -> String {
    use std::os::fd::AsFd;
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while !String::from_utf8_lossy(&out).contains(needle) {
        assert!(
            Instant::now() < deadline,
            "terminal never showed {needle:?}: {:?}",
            String::from_utf8_lossy(&out)
        );
        let mut fds = [nix::poll::PollFd::new(
            master.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        if nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(200u16)).unwrap_or(0) > 0 {
            let mut buf = [0u8; 4096];
            match nix::unistd::read(std::os::fd::AsRawFd::as_raw_fd(master), &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
