//! The clients people run runvm under, started by the tests with private
//! state: containerd, dockerd and podman, and a busybox image built locally
//! (a rootfs tarball, `podman import`, `podman save`, then `ctr images
//! import` and `docker load`: no registry). Each guard stops what it started
//! and removes what it made, mounts included.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::{text, RUNVM};

pub const IMAGE: &str = "localhost/runvm-test/busybox:latest";
/// The same busybox, whose default command runs until killed: the sandbox
/// ("pause") image of CRI pods.
pub const PAUSE_IMAGE: &str = "localhost/runvm-test/pause:latest";

/// Where Debian's containernetworking-plugins are.
pub const CNI_PLUGINS: &str = "/usr/lib/cni";

/// The runvm binary the clients are given: the one under test.
pub fn runvm() -> &'static str {
    RUNVM
}

/// A configuration snippet the package ships (docs/examples/, installed in
/// /usr/share/doc/runvm/examples/), with the runvm under test in place of
/// the package's `/usr/bin/runvm`: the clients run on these very files.
pub fn example(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("docs/examples")
        .join(name);
    let text = fs::read_to_string(&path).unwrap();
    assert!(
        text.contains("/usr/bin/runvm"),
        "{} does not name /usr/bin/runvm",
        path.display()
    );
    text.replace("/usr/bin/runvm", runvm())
}

/// The environment a client passes on to runvm (see [`super::client_config`]).
fn runvm_env() -> Vec<(&'static str, PathBuf)> {
    vec![("RUNVM_CONFIG", super::client_config())]
}

fn wait_until(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ready() {
        assert!(
            Instant::now() < deadline,
            "{what} not ready after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Unmount everything under `dir`, deepest first.
fn unmount_under(dir: &Path) {
    let prefix = dir.to_string_lossy().into_owned();
    let mut points: Vec<String> = fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(String::from))
        .filter(|p| p.starts_with(&prefix))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = nix::mount::umount2(p.as_str(), nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Stop a daemon: SIGTERM, then SIGKILL.
fn stop(child: &mut Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Kill processes whose command line mentions `needle` (shims a daemon
/// left behind).
fn kill_matching(needle: &str) {
    for (pid, _) in super::processes_matching(needle) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// containerd with its own root, state and socket.
pub struct Containerd {
    dir: tempfile::TempDir,
    child: Child,
}

impl Containerd {
    pub fn start() -> Containerd {
        Self::start_with(|_| {
            "[plugins.\"io.containerd.grpc.v1.cri\"]\n  disable_cgroup = true\n".into()
        })
    }

    /// containerd whose CRI plugin has runvm as runtime handler `runvm`, set
    /// up as on a Kubernetes node: the runc.v2 shim with `BinaryName` in the
    /// handler's options. Pods use the host's network (the CNI directories
    /// are empty), and the sandbox image is [`PAUSE_IMAGE`], which must be
    /// imported into the `k8s.io` namespace: it is never pulled.
    pub fn with_cri_runtime() -> Containerd {
        Self::with_cri_network(None)
    }

    /// [`Containerd::with_cri_runtime`], and pods that do not use the
    /// host's network get theirs from the CNI plugins of
    /// containernetworking-plugins, configured by `conflist` (in the
    /// private directory's `cni/net.d`).
    pub fn with_cri_network(conflist: Option<&str>) -> Containerd {
        Self::start_with(|d| {
            let cni = d.join("cni");
            fs::create_dir_all(cni.join("bin")).unwrap();
            fs::create_dir_all(cni.join("net.d")).unwrap();
            let bin = match conflist {
                Some(conflist) => {
                    fs::write(cni.join("net.d/10-runvm-test.conflist"), conflist).unwrap();
                    PathBuf::from(CNI_PLUGINS)
                }
                None => cni.join("bin"),
            };
            let cri = "plugins.\"io.containerd.grpc.v1.cri\"";
            // The handlers: the package's example, as an operator adds it.
            format!(
                "[{cri}]\n  sandbox_image = \"{PAUSE_IMAGE}\"\n\
                 [{cri}.cni]\n  bin_dir = \"{bin}\"\n  conf_dir = \"{conf}\"\n{handlers}",
                bin = bin.display(),
                conf = cni.join("net.d").display(),
                handlers = example("containerd-config.toml"),
            )
        })
    }

    /// containerd with a private root, state and socket, and `plugins`
    /// (TOML, given the private directory) as the rest of its config.
    fn start_with(plugins: impl FnOnce(&Path) -> String) -> Containerd {
        let dir = tempfile::Builder::new()
            .prefix("runvm-ctd-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        let config = format!(
            "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
             [grpc]\n  address = \"{sock}\"\n{plugins}",
            root = d.join("root").display(),
            state = d.join("state").display(),
            sock = d.join("containerd.sock").display(),
            plugins = plugins(d),
        );
        fs::write(d.join("config.toml"), config).unwrap();
        let child = Command::new("containerd")
            .envs(runvm_env())
            .arg("--config")
            .arg(d.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(fs::File::create(d.join("containerd.log")).unwrap())
            .stderr(fs::File::create(d.join("containerd.err")).unwrap())
            .spawn()
            .expect("containerd is installed (make deps)");
        let c = Containerd { dir, child };
        wait_until("containerd", Duration::from_secs(30), || {
            c.ctr(&["version"]).status.success()
        });
        c
    }

    /// The private directory: config, logs, root, state, socket.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The end of containerd's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.dir.path().join("containerd.err")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    pub fn ctr_cmd(&self) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address").arg(self.socket());
        c
    }

    pub fn ctr(&self, args: &[&str]) -> Output {
        self.ctr_cmd()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// The `--root` that containerd's runc.v2 shim gives runvm for
    /// containers of namespace `ns`: the shim's default, which is not under
    /// the daemon's private root or state.
    pub fn runtime_root(ns: &str) -> PathBuf {
        Path::new("/run/containerd/runc").join(ns)
    }

    /// Delete what a failed test left, through containerd, so runvm stops
    /// the VMs (killing the runc shims alone would leave them running).
    fn delete_all(&self) {
        let lines =
            |out: Output| -> Vec<String> { text(&out.stdout).lines().map(String::from).collect() };
        for ns in lines(self.ctr(&["namespaces", "ls", "-q"])) {
            for task in lines(self.ctr(&["-n", &ns, "tasks", "ls", "-q"])) {
                let _ = self.ctr(&["-n", &ns, "tasks", "delete", "--force", &task]);
            }
            for c in lines(self.ctr(&["-n", &ns, "containers", "ls", "-q"])) {
                let _ = self.ctr(&["-n", &ns, "containers", "delete", &c]);
            }
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.delete_all();
        stop(&mut self.child);
        kill_matching(&self.socket().to_string_lossy());
        unmount_under(self.dir.path());
    }
}

/// dockerd with its own data and exec roots and socket, on a containerd of
/// the test's, with runvm registered as runtime `runvm`.
pub struct Dockerd {
    dir: tempfile::TempDir,
    child: Child,
    _containerd: Containerd,
}

impl Dockerd {
    pub fn start() -> Dockerd {
        Self::with_bridge("none")
    }

    /// dockerd whose default bridge network is on `bridge` (a bridge the
    /// caller made, with its address), or none ("none"). It makes no
    /// iptables rules: docker-proxy publishes ports.
    pub fn with_bridge(bridge: &str) -> Dockerd {
        let containerd = Containerd::start();
        let dir = tempfile::Builder::new()
            .prefix("runvm-dockerd-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        // runvm registered as the package's example daemon.json does it.
        let daemon_json = d.join("daemon.json");
        fs::write(&daemon_json, example("docker-daemon.json")).unwrap();
        let child = Command::new("dockerd")
            .envs(runvm_env())
            .args(["--iptables=false", "--ip-masq=false"])
            .arg(format!("--bridge={bridge}"))
            .arg(format!("--data-root={}", d.join("root").display()))
            .arg(format!("--exec-root={}", d.join("exec").display()))
            .arg(format!("--pidfile={}", d.join("docker.pid").display()))
            .arg(format!("--host=unix://{}", d.join("docker.sock").display()))
            .arg(format!("--containerd={}", containerd.socket().display()))
            .arg(format!("--config-file={}", daemon_json.display()))
            .stdin(Stdio::null())
            .stdout(fs::File::create(d.join("dockerd.log")).unwrap())
            .stderr(fs::File::create(d.join("dockerd.err")).unwrap())
            .spawn()
            .expect("dockerd is installed (make deps)");
        let dk = Dockerd {
            dir,
            child,
            _containerd: containerd,
        };
        wait_until("dockerd", Duration::from_secs(60), || {
            dk.docker(&["info"]).status.success()
        });
        dk
    }

    pub fn docker_cmd(&self) -> Command {
        let mut c = Command::new("/usr/bin/docker");
        c.arg(format!(
            "--host=unix://{}",
            self.dir.path().join("docker.sock").display()
        ));
        c
    }

    pub fn docker(&self, args: &[&str]) -> Output {
        self.docker_cmd()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// The `--root` runvm gets from dockerd (through containerd's shim):
    /// `runtime-runc/moby` under the exec root, whatever the runtime's name.
    pub fn runtime_root(&self) -> PathBuf {
        self.dir.path().join("exec/runtime-runc/moby")
    }

    /// A path for `--cidfile`, where docker writes the container's id.
    pub fn cidfile(&self) -> PathBuf {
        self.dir.path().join(super::unique_id("cid"))
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let ids = self.docker(&["ps", "-aq"]);
        for id in text(&ids.stdout).split_whitespace() {
            let _ = self.docker(&["rm", "-f", id]);
        }
        stop(&mut self.child);
        unmount_under(self.dir.path());
    }
}

/// podman with private storage and state, cgroupfs and file events (no
/// systemd here), runvm as its runtime.
pub struct Podman {
    dir: tempfile::TempDir,
}

impl Podman {
    pub fn new() -> Podman {
        let dir = tempfile::Builder::new()
            .prefix("runvm-podman-")
            .tempdir()
            .unwrap();
        fs::create_dir_all(dir.path().join("net.d")).unwrap();
        // Podman starts the runtime from conmon, whose environment is only
        // what containers.conf lists; runvm is a runtime by name there, as
        // the package's example sets it.
        fs::write(
            dir.path().join("containers.conf"),
            format!(
                "[engine]\nconmon_env_vars = [\"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\", \"RUNVM_CONFIG={}\"]\n{}",
                super::client_config().display(),
                example("podman-containers.conf"),
            ),
        )
        .unwrap();
        Podman { dir }
    }

    /// podman whose default network ("podman", CNI) is a bridge `bridge` on
    /// `subnet` with the gateway `gateway`, with ports published by CNI's
    /// portmap: the network Podman would make by itself, on the test's own
    /// bridge and subnet.
    pub fn with_default_network(bridge: &str, subnet: &str, gateway: &str) -> Podman {
        let p = Self::new();
        let conflist = serde_json::json!({
            "cniVersion": "0.4.0",
            "name": "podman",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": bridge,
                    "isGateway": true,
                    "ipMasq": false,
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "dataDir": p.dir.path().join("ipam"),
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "ranges": [[{"subnet": subnet, "gateway": gateway}]]
                    }
                },
                {"type": "portmap", "capabilities": {"portMappings": true}},
                {"type": "tuning"}
            ]
        });
        fs::write(
            p.dir.path().join("net.d/87-podman.conflist"),
            serde_json::to_vec_pretty(&conflist).unwrap(),
        )
        .unwrap();
        p
    }

    pub fn cmd(&self) -> Command {
        let d = self.dir.path();
        let mut c = Command::new("podman");
        c.envs(runvm_env());
        let conf = d.join("containers.conf");
        if conf.exists() {
            c.env("CONTAINERS_CONF", conf);
        }
        c.arg(format!("--root={}", d.join("root").display()))
            .arg(format!("--runroot={}", d.join("run").display()))
            .arg(format!("--tmpdir={}", d.join("tmp").display()))
            .arg(format!(
                "--network-config-dir={}",
                d.join("net.d").display()
            ))
            .args([
                "--cgroup-manager=cgroupfs",
                "--events-backend=file",
                "--storage-driver=vfs",
            ])
            .arg("--runtime=runvm");
        c
    }

    pub fn podman(&self, args: &[&str]) -> Output {
        self.cmd().args(args).stdin(Stdio::null()).output().unwrap()
    }

    /// The runvm root of podman's containers: runvm's default, as podman
    /// passes no `--root` to a runtime it does not know by name.
    pub fn runtime_root(&self) -> PathBuf {
        PathBuf::from("/run/runvm")
    }

    /// A path for `--cidfile`, where podman writes the container's id.
    pub fn cidfile(&self) -> PathBuf {
        self.dir.path().join(super::unique_id("cid"))
    }

    /// Load the test image (from the docker-archive) into this podman.
    pub fn with_image(self) -> Podman {
        let out = self.podman(&["load", "-i", image_archive().to_str().unwrap()]);
        assert!(out.status.success(), "podman load: {}", text(&out.stderr));
        self
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.podman(&["rm", "-f", "-a"]);
        unmount_under(self.dir.path());
    }
}

/// The busybox image ([`IMAGE`], default command `sh`) as a docker-archive
/// tarball, built once per test binary.
pub fn image_archive() -> &'static Path {
    static ARCHIVE: OnceLock<PathBuf> = OnceLock::new();
    ARCHIVE.get_or_init(|| archive(IMAGE, r#"CMD ["/bin/sh"]"#))
}

/// [`PAUSE_IMAGE`] as a docker-archive tarball, built once per test binary.
pub fn pause_archive() -> &'static Path {
    static ARCHIVE: OnceLock<PathBuf> = OnceLock::new();
    ARCHIVE.get_or_init(|| archive(PAUSE_IMAGE, r#"CMD ["/bin/sleep", "100000"]"#))
}

/// `podman import` of the busybox rootfs tarball as `name` with `change`,
/// then `podman save`: the archive's path.
fn archive(name: &str, change: &str) -> PathBuf {
    let (dir, tar) = rootfs_tar();
    let podman = Podman::new();
    let out = podman.podman(&["import", "--change", change, tar.to_str().unwrap(), name]);
    assert!(out.status.success(), "podman import: {}", text(&out.stderr));
    let archive = dir.join(format!("{}.tar", name.replace(['/', ':'], "_")));
    let out = podman.podman(&[
        "save",
        "--format",
        "docker-archive",
        "-o",
        archive.to_str().unwrap(),
        name,
    ]);
    assert!(out.status.success(), "podman save: {}", text(&out.stderr));
    archive
}

/// A busybox rootfs tarball (busybox-static, its applets as symlinks, a
/// minimal /etc/passwd), built once per test binary; the directory it is in
/// (removed at exit) and its path.
fn rootfs_tar() -> &'static (PathBuf, PathBuf) {
    // Statics are never dropped: the directory goes at exit.
    static TAR: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    extern "C" fn cleanup() {
        if let Some((dir, _)) = TAR.get() {
            let _ = fs::remove_dir_all(dir);
        }
    }
    TAR.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("runvm-image-")
            .tempdir()
            .unwrap()
            .keep();
        // SAFETY: registering a plain extern "C" function with atexit.
        unsafe {
            libc::atexit(cleanup);
        }
        let rootfs = dir.join("rootfs");
        let bin = rootfs.join("bin");
        fs::create_dir_all(&bin).unwrap();
        fs::create_dir_all(rootfs.join("etc")).unwrap();
        fs::copy("/bin/busybox", bin.join("busybox")).unwrap();
        let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
        for applet in text(&list.stdout).lines().filter(|a| *a != "busybox") {
            let _ = std::os::unix::fs::symlink("busybox", bin.join(applet));
        }
        fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        fs::write(rootfs.join("etc/group"), "root:x:0:\n").unwrap();
        let tar = dir.join("rootfs.tar");
        let out = Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .output()
            .unwrap();
        assert!(out.status.success(), "tar: {}", text(&out.stderr));
        (dir, tar)
    })
}

/// Nothing of container `id` is left once its client removed it: no QEMU,
/// shim or virtiofsd process, and no state directory under `root`, the
/// `--root` the client gives runvm. The root itself must exist, so a wrong
/// path cannot make the check pass by itself.
pub fn assert_no_leaks_of(root: &Path, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left: Vec<_> = super::processes_matching(&format!("runvm-{id},"))
            .into_iter()
            .chain(
                super::processes_matching(id)
                    .into_iter()
                    .filter(|(_, cmd)| cmd.contains("__shim") || cmd.contains("virtiofsd")),
            )
            .collect();
        let dir = root.join(id);
        if left.is_empty() && !dir.exists() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left of {id}: processes {left:?}, state directory {} {}",
            dir.display(),
            if dir.exists() { "present" } else { "gone" }
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        root.is_dir(),
        "runtime root {} does not exist: is it the --root the client passes?",
        root.display()
    );
}

/// Container `id` runs in a VM of runvm's, with its state under `root`:
/// the other half of [`assert_no_leaks_of`]. Its shim and QEMU are in the
/// host cgroup the client asked for; that cgroup's path is returned.
pub fn assert_runs_in_vm(root: &Path, id: &str) -> String {
    let state = root.join(id).join("state.json");
    assert!(state.is_file(), "no runvm state at {}", state.display());
    if super::template_mode() {
        let state: serde_json::Value = serde_json::from_slice(&fs::read(&state).unwrap()).unwrap();
        // containerd and Podman give runvm a --log in the bundle.
        let bundle = PathBuf::from(state["bundle"].as_str().unwrap_or_default());
        let why: Vec<String> = ["log.json", "runtime.log"]
            .iter()
            .flat_map(|f| {
                fs::read_to_string(bundle.join(f))
                    .unwrap_or_default()
                    .lines()
                    .map(String::from)
                    .collect::<Vec<_>>()
            })
            .filter(|l| l.contains("cold"))
            .collect();
        let boot = &state["boot"];
        assert!(
            boot == "template" || boot == "pool",
            "{id} booted cold: {why:?}"
        );
    }
    let state: serde_json::Value = serde_json::from_slice(&fs::read(&state).unwrap()).unwrap();
    let vmm = super::Vmm::of(&state);
    assert!(vmm.alive(), "no QEMU of {id}");
    let cgroup = state["hostCgroup"]["path"]
        .as_str()
        .unwrap_or_else(|| panic!("no host cgroup in the state of {id}: {state}"))
        .to_string();
    let procs = super::host_cgroup_procs(&cgroup, "memory");
    for (what, pid) in [
        ("shim", state["shim"]["pid"].as_i64().unwrap() as i32),
        ("QEMU", vmm.pid),
    ] {
        assert!(
            procs.contains(&pid),
            "{what} {pid} of {id} is not in {cgroup}: {procs:?}"
        );
    }
    cgroup
}

/// Host cgroup `path` (from [`assert_runs_in_vm`]) is gone: the container's
/// delete removed it, as runc's does.
pub fn assert_host_cgroup_gone(path: &str) {
    let left = super::host_cgroup_dirs(path);
    assert!(left.is_empty(), "host cgroup {path} left: {left:?}");
}

/// The id a client wrote to a `--cidfile`.
pub fn read_cid(path: &Path) -> String {
    fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cidfile {}: {e}", path.display()))
        .trim()
        .to_string()
}

/// The full id of a client's container from its short or long form, as
/// printed by `run -d`.
pub fn trimmed(out: &Output) -> String {
    text(&out.stdout).trim().to_string()
}
