//! VM templates: `factory init/status/destroy`, and containers cloned from a
//! template instead of booted.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(60);

fn runvm_with(template: &TestTemplate, extra: &str) -> Runvm {
    Runvm::with_config(&format!("{extra}{}", template.config_section()))
}

fn factory(rv: &Runvm, verb: &str) -> std::process::Output {
    rv.run(&["factory", verb])
}

/// Create, start, wait for the end; returns stdout and how the VM came up.
fn run_to_end(rv: &Runvm, b: &Bundle, name: &str) -> (String, String) {
    let id = unique_id(name);
    let (mut c, out) = rv.create(&id, b);
    assert!(out.status.success(), "create: {}", b.output("err.txt"));
    let boot = rv.raw_state(&id)["boot"].as_str().unwrap().to_string();
    assert!(rv.run(&["start", &id]).status.success());
    assert_eq!(c.wait_shim(T), 0, "{}", b.output("err.txt"));
    (b.output("out.txt"), boot)
}

#[test]
fn init_status_and_destroy() {
    let template = TestTemplate::build("verbs");
    let rv = runvm_with(&template, "");
    let status: Value = serde_json::from_slice(&factory(&rv, "status").stdout).unwrap();
    assert_eq!(status["exists"], true);
    assert_eq!(status["usable"], true, "{status}");
    assert_eq!(status["template"]["memoryMib"], 256);
    assert!(status["template"]["kernel"]["path"]
        .as_str()
        .unwrap()
        .ends_with("vmlinux"));
    assert!(status["template"]["kernelRelease"]
        .as_str()
        .unwrap()
        .contains(GUEST_KERNEL));
    let qemu = std::process::Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .unwrap();
    let qemu = text(&qemu.stdout);
    assert_eq!(
        status["template"]["qemuVersion"].as_str(),
        qemu.lines().next(),
        "{status}"
    );
    assert!(qemu.starts_with("QEMU emulator version"), "{qemu}");
    assert!(template.path.join("mem").is_file() && template.path.join("state").is_file());

    assert!(factory(&rv, "destroy").status.success());
    assert!(!template.path.exists());
    assert!(!template.path.with_extension("lock").exists());
    let status: Value = serde_json::from_slice(&factory(&rv, "status").stdout).unwrap();
    assert_eq!(status["exists"], false);
    assert_eq!(status["usable"], false);
}

#[test]
fn clones_run_their_own_rootfs_with_their_own_time_and_randomness() {
    let template = TestTemplate::build("clones");
    let rv = runvm_with(&template, "");
    // Let the template's clock fall well behind the host's: a clone that
    // kept it would be this far in the past.
    std::thread::sleep(Duration::from_secs(20));
    let script = "cat /marker; date +%s; od -An -N16 -tx1 /dev/urandom | tr -d ' \\n'";
    let b1 = Bundle::busybox(&["sh", "-c", script]);
    std::fs::write(b1.rootfs().join("marker"), "first rootfs\n").unwrap();
    let b2 = Bundle::busybox(&["sh", "-c", script]);
    std::fs::write(b2.rootfs().join("marker"), "second rootfs\n").unwrap();

    let before = unix_now();
    let (out1, boot1) = run_to_end(&rv, &b1, "clone1");
    let after = unix_now();
    let (out2, boot2) = run_to_end(&rv, &b2, "clone2");
    assert_eq!((boot1.as_str(), boot2.as_str()), ("template", "template"));
    let l1: Vec<&str> = out1.lines().collect();
    let l2: Vec<&str> = out2.lines().collect();
    assert_eq!(l1[0], "first rootfs");
    assert_eq!(l2[0], "second rootfs");
    // The guest read its clock between our two readings of the host's
    // (a second either side for the rounding of `date +%s`).
    let guest_time: i64 = l1[1].parse().unwrap();
    assert!(
        before - 1 <= guest_time && guest_time <= after + 1,
        "guest {guest_time}, host {before}..{after}"
    );
    assert_eq!(l1[2].len(), 32);
    assert_ne!(l1[2], l2[2], "sibling clones drew the same random numbers");
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[test]
fn a_stale_template_is_not_used() {
    let template = TestTemplate::build("stale");
    // The VM size changed since the template was made.
    let rv = runvm_with(&template, "[hypervisor.qemu]\ndefault_memory = 320\n");
    let status: Value = serde_json::from_slice(&factory(&rv, "status").stdout).unwrap();
    assert_eq!(status["usable"], false);
    assert!(
        status["reason"]
            .as_str()
            .unwrap()
            .contains("size or devices changed"),
        "{status}"
    );
    let b = Bundle::busybox(&["sh", "-c", "echo cold"]);
    let (out, boot) = run_to_end(&rv, &b, "stale");
    assert_eq!(out, "cold\n");
    assert_eq!(boot, "cold");
}

#[test]
fn a_rebuilt_initramfs_makes_the_template_stale() {
    let guest = std::path::Path::new(RUNVM)
        .parent()
        .and_then(|p| p.parent())
        .unwrap()
        .join("share/runvm");
    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("initramfs.img");
    std::fs::copy(guest.join("initramfs.img"), &initrd).unwrap();
    let hv = format!("[hypervisor.qemu]\ninitrd = \"{}\"\n", initrd.display());
    let template = TestTemplate::build_with("initrd", &hv);
    let rv = runvm_with(&template, &hv);
    let status: Value = serde_json::from_slice(&factory(&rv, "status").stdout).unwrap();
    assert_eq!(status["usable"], true, "{status}");

    // `make guest` writes a new file: same bytes, new modification time.
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(&initrd, std::fs::read(&initrd).unwrap()).unwrap();
    let status: Value = serde_json::from_slice(&factory(&rv, "status").stdout).unwrap();
    assert_eq!(status["exists"], true);
    assert_eq!(status["usable"], false);
    assert_eq!(
        status["reason"], "the guest initramfs changed since the template was made",
        "{status}"
    );
    let b = Bundle::busybox(&["sh", "-c", "echo cold"]);
    let (out, boot) = run_to_end(&rv, &b, "initrd");
    assert_eq!((out.as_str(), boot.as_str()), ("cold\n", "cold"));
}

/// A template path in a directory of its own under /dev/shm, made by hand;
/// the directory goes with the `TempDir`, whatever the test put there.
fn scratch_template() -> (tempfile::TempDir, TestTemplate) {
    let holder = tempfile::Builder::new()
        .prefix("runvm-test-scratch-")
        .tempdir_in("/dev/shm")
        .unwrap();
    let path = holder.path().join("template");
    (holder, TestTemplate { path, pool: 0 })
}

#[test]
fn destroy_removes_what_dead_builds_and_shims_left() {
    let (holder, template) = scratch_template();
    let h = holder.path();
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let live = std::process::id();
    std::fs::create_dir(&template.path).unwrap();
    std::fs::write(template.path.join("template.json"), "{}").unwrap();
    for d in [dead, live] {
        std::fs::create_dir(h.join(format!("template.new-{d}"))).unwrap();
        std::fs::write(h.join(format!("template.new-{d}/mem")), "x").unwrap();
        std::fs::write(h.join(format!("clone-my-ctr-{d}.mem")), "x").unwrap();
    }
    let rv = runvm_with(&template, "");
    let out = factory(&rv, "destroy");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut left: Vec<String> = std::fs::read_dir(h)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    // What processes that still run own stays.
    assert_eq!(
        left,
        [
            format!("clone-my-ctr-{live}.mem"),
            format!("template.new-{live}")
        ]
    );
}

#[test]
fn a_template_directory_others_can_write_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let (holder, template) = scratch_template();
    std::fs::set_permissions(holder.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let rv = runvm_with(&template, "");
    let want = format!(
        "refusing the template directory {}: it is writable by group or others (mode 0777)",
        holder.path().display()
    );
    let out = factory(&rv, "init");
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains(&want), "{}", text(&out.stderr));
    std::fs::create_dir(&template.path).unwrap();
    let status: Value = serde_json::from_slice(&factory(&rv, "status").stdout).unwrap();
    assert_eq!(status["usable"], false);
    assert_eq!(status["reason"], want.as_str());
    // Templates on, so a container boots cold rather than restore from it.
    let b = Bundle::busybox(&["sh", "-c", "echo cold"]);
    let (out, boot) = run_to_end(&rv, &b, "insecure");
    assert_eq!((out.as_str(), boot.as_str()), ("cold\n", "cold"));
}

#[test]
fn a_missing_template_means_a_cold_boot() {
    let template = TestTemplate::build("missing");
    template.destroy();
    let rv = runvm_with(&template, "");
    let b = Bundle::busybox(&["sh", "-c", "echo cold"]);
    let (out, boot) = run_to_end(&rv, &b, "missing");
    assert_eq!((out.as_str(), boot.as_str()), ("cold\n", "cold"));
}

#[test]
fn a_container_larger_than_the_template_boots_cold_and_says_why() {
    let template = TestTemplate::build("larger");
    let rv = runvm_with(&template, "");
    let b = Bundle::busybox(&["sh", "-c", "nproc"]);
    b.edit(|c| {
        c["linux"]["resources"]["memory"] = serde_json::json!({"limit": 512u64 << 20});
        c["linux"]["resources"]["cpu"] = serde_json::json!({"quota": 200000, "period": 100000});
    });
    let (id, _g, logged) = create_logged(&rv, &b, "larger");
    assert_eq!(rv.raw_state(&id)["boot"], "cold");
    assert!(
        logged.contains(
            "level=warning msg=\"booting cold: the container needs 2 vCPUs / 576 MiB, \
             the template has 1 vCPU / 256 MiB\""
        ),
        "{logged}"
    );
    assert!(rv.run(&["start", &id]).status.success());
    rv.wait_status(&id, "stopped", T);
    assert_eq!(b.output("out.txt"), "2\n");
}

#[test]
fn a_container_with_more_memory_than_the_template_is_a_clone_that_grows() {
    let template = TestTemplate::build("grows");
    let rv = runvm_with(&template, "");
    assert_grows(&rv, "template");
}

#[test]
fn a_pool_vm_grows_too() {
    let template = TestTemplate::build_pooled("poolgrows", 1);
    let rv = runvm_with(&template, "");
    template.wait_pool(1, T * 2);
    assert_grows(&rv, "pool");
}

/// A container whose memory limit needs more than the template's 256 MiB
/// comes up as `boot` (a clone, or a pool VM) grown to its size.
fn assert_grows(rv: &Runvm, boot: &str) {
    let b = Bundle::busybox(&[
        "sh",
        "-c",
        "grep MemTotal /proc/meminfo; cat /sys/fs/cgroup/memory.max",
    ]);
    // 512 MiB and the guest's 64: the 256 MiB template and three 128 MiB
    // blocks, 640 MiB.
    b.edit(|c| c["linux"]["resources"]["memory"] = serde_json::json!({"limit": 512u64 << 20}));
    let (id, _g, logged) = create_logged(rv, &b, "grows");
    assert_eq!(rv.raw_state(&id)["boot"], boot, "{logged}");
    assert!(!logged.contains("booting cold"), "{logged}");
    let limit = common::host_cgroup_file(
        &common::default_host_cgroup(&id),
        "memory",
        "memory.limit_in_bytes",
    );
    assert_eq!(limit.trim(), ((640u64 + 256) << 20).to_string());
    assert!(rv.run(&["start", &id]).status.success());
    rv.wait_status(&id, "stopped", T);
    let out = b.output("out.txt");
    let kib: u64 = out
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_default();
    assert!(kib > 512 * 1024 && kib <= 640 * 1024, "{out}");
    assert!(out.ends_with(&format!("\n{}\n", 512u64 << 20)), "{out}");
}

/// `runvm create` of `b` with its own `--log` file, which must succeed
/// (stdio in the bundle's out.txt and err.txt); the id, its guard and what
/// was logged.
fn create_logged<'a>(rv: &'a Runvm, b: &Bundle, name: &str) -> (String, Container<'a>, String) {
    let id = unique_id(name);
    let log = tempfile::NamedTempFile::new().unwrap();
    let out = rv
        .cmd()
        .args(["--log", log.path().to_str().unwrap(), "create", "--bundle"])
        .arg(b.path())
        .arg(&id)
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(b.path().join("out.txt")).unwrap())
        .stderr(std::fs::File::create(b.path().join("err.txt")).unwrap())
        .status()
        .unwrap();
    let guard = rv.guard(&id, b);
    assert!(out.success(), "create: {}", b.output("err.txt"));
    let logged = std::fs::read_to_string(log.path()).unwrap();
    (id, guard, logged)
}

/// `runvm run` of `b` with its own `--log` file; returns the exit code and
/// what was logged.
fn run_logged(rv: &Runvm, b: &Bundle, name: &str) -> (Option<i32>, String) {
    let log = b.path().join(format!("{name}.log"));
    let id = unique_id(name);
    let _g = rv.guard(&id, b);
    let out = rv
        .cmd()
        .args(["--debug", "--log"])
        .arg(&log)
        .args(["run", "--bundle", b.path().to_str().unwrap(), &id])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code(),
        std::fs::read_to_string(&log).unwrap_or_default(),
    )
}

/// How the VM of a container came up, from its create's log.
fn boot_of(log: &str) -> &str {
    let line = log
        .lines()
        .find(|l| l.contains("container created"))
        .unwrap_or_else(|| panic!("no container created in {log}"));
    ["template", "pool"]
        .into_iter()
        .find(|b| line.contains(&format!("boot=\"{b}\"")) || line.contains(&format!("boot={b} ")))
        .unwrap_or("cold")
}

/// Wait until the background build has made the template usable and its
/// process is gone.
fn wait_for_background_build(rv: &Runvm, template: &TestTemplate) {
    let deadline = std::time::Instant::now() + T * 2;
    loop {
        let status: Value = serde_json::from_slice(&factory(rv, "status").stdout).unwrap();
        // The warm pool's VMs stay: they are not builders.
        let builders: Vec<_> = processes_matching(&template.path.display().to_string())
            .into_iter()
            .filter(|(_, cmd)| !cmd.contains("pool-vm") && !cmd.contains("runvm-pool-"))
            .collect();
        if status["usable"] == true && builders.is_empty() {
            return;
        }
        let log = std::fs::read_to_string(template.path.with_extension("build.log"));
        assert!(
            std::time::Instant::now() < deadline,
            "no usable template after {:?}: {status}, builders {builders:?}, log {log:?}",
            T * 2
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn with_nothing_configured_the_first_create_builds_a_template_and_the_next_clones_it() {
    let mut template = TestTemplate::unbuilt("auto");
    // The default pool size.
    template.pool = 2;
    // The kernel a copy of our own, so that the test can make the template
    // stale by changing it.
    let guest = tempfile::tempdir().unwrap();
    let kernel = guest.path().join("vmlinux");
    let shipped = debian_kernel().with_file_name("vmlinux");
    std::fs::copy(&shipped, &kernel).unwrap();
    let rv = Runvm::with_config(&format!(
        "[hypervisor.qemu]\nkernel = \"{}\"\ninitrd = \"{}\"\n[factory]\ntemplate_path = \"{}\"\n",
        kernel.display(),
        shipped.with_file_name("initramfs.img").display(),
        template.path.display()
    ));
    let b = Bundle::busybox(&["sh", "-c", "echo ran"]);

    let (code, log) = run_logged(&rv, &b, "first");
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(boot_of(&log), "cold");
    assert!(
        log.contains("building a template in the background"),
        "{log}"
    );
    assert!(
        !log.contains("level=warning"),
        "a first cold boot is not a warning: {log}"
    );
    wait_for_background_build(&rv, &template);
    // The build fills the warm pool behind it.
    template.wait_pool(2, T * 2);

    let (code, log) = run_logged(&rv, &b, "second");
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(boot_of(&log), "pool", "{log}");
    assert!(!log.contains("building a template"), "{log}");

    // A new kernel makes the template stale: cold once more, rebuilt behind.
    let f = std::fs::OpenOptions::new()
        .append(true)
        .open(&kernel)
        .unwrap();
    f.set_modified(std::time::SystemTime::now() + Duration::from_secs(5))
        .unwrap();
    drop(f);
    let (code, log) = run_logged(&rv, &b, "stale");
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(boot_of(&log), "cold");
    assert!(log.contains("the guest kernel changed"), "{log}");
    assert!(
        log.contains("building a template in the background"),
        "{log}"
    );
    wait_for_background_build(&rv, &template);
    // The old template's pool VMs were stopped, new ones started.
    template.wait_pool(2, T * 2);
    let (code, log) = run_logged(&rv, &b, "rebuilt");
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(boot_of(&log), "pool", "{log}");

    assert!(factory(&rv, "destroy").status.success());
    for left in ["build-lock", "build.log", "failed", "lock", "pool"] {
        assert!(!template.path.with_extension(left).exists(), "{left} left");
    }
    let pool = template.pool_dir().display().to_string();
    assert_eq!(processes_matching(&pool), vec![], "pool processes left");
}

#[test]
fn a_failed_background_build_is_a_warning_and_is_not_retried_at_once() {
    let template = TestTemplate::unbuilt("autofail");
    // QEMU itself, except for the template VM (named runvm-template),
    // which it refuses: the container boots, the build fails.
    let dir = tempfile::tempdir().unwrap();
    let qemu = dir.path().join("qemu");
    std::fs::write(
        &qemu,
        "#!/bin/sh\ncase \"$*\" in *runvm-template*) echo no templates here >&2; exit 1;; esac\n\
         exec qemu-system-x86_64 \"$@\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&qemu, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let rv = Runvm::with_config(&format!(
        "[hypervisor.qemu]\npath = \"{}\"\n[factory]\ntemplate_path = \"{}\"\n",
        qemu.display(),
        template.path.display()
    ));
    let b = Bundle::busybox(&["true"]);
    let (code, log) = run_logged(&rv, &b, "first");
    assert_eq!(code, Some(0), "{log}");
    assert!(
        log.contains("building a template in the background"),
        "{log}"
    );
    // The build's end: its warning in the build log.
    let build_log = template.path.with_extension("build.log");
    let deadline = std::time::Instant::now() + T;
    while !std::fs::read_to_string(&build_log)
        .unwrap_or_default()
        .contains("the background build of the template failed")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no failure logged in {build_log:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(template.path.with_extension("failed").exists());
    assert!(!template.path.exists());

    let (code, log) = run_logged(&rv, &b, "second");
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(boot_of(&log), "cold");
    assert!(
        !log.contains("building a template in the background"),
        "{log}"
    );
    assert!(
        log.contains("level=warning")
            && log.contains("a background build failed less than 10 minutes ago"),
        "{log}"
    );
}

/// The QEMU of a pool VM, from its member's record.
fn vmm_of(pool_vm: &std::path::Path) -> i64 {
    let member: Value =
        serde_json::from_slice(&std::fs::read(pool_vm.join("member.json")).unwrap()).unwrap();
    member["vmm"]["pid"].as_i64().unwrap()
}

fn alive(pid: i64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| !s.contains(") Z ") && !s.contains(") X "))
}

/// Create; what the state says of the VM; start; wait; stdout.
fn run_with_state(rv: &Runvm, b: &Bundle, name: &str) -> (Value, String) {
    let id = unique_id(name);
    let (mut c, out) = rv.create(&id, b);
    assert!(out.status.success(), "create: {}", b.output("err.txt"));
    let state = rv.raw_state(&id);
    assert!(rv.run(&["start", &id]).status.success());
    assert_eq!(c.wait_shim(T), 0, "{}", b.output("err.txt"));
    (state, b.output("out.txt"))
}

#[test]
fn a_create_takes_a_warm_pool_vm_and_the_pool_is_refilled() {
    let template = TestTemplate::build_pooled("pool", 1);
    let rv = runvm_with(&template, "");
    let ready = template.wait_pool(1, T * 2);
    let pooled = vmm_of(&ready[0]);
    let status: Value = serde_json::from_slice(&factory(&rv, "status").stdout).unwrap();
    assert_eq!(
        status["pool"],
        serde_json::json!({"size": 1, "ready": 1, "starting": 0, "claimed": 0})
    );
    let b = Bundle::busybox(&["sh", "-c", "echo ran; uname -r"]);
    let (state, out) = run_with_state(&rv, &b, "pooled");
    assert_eq!(state["boot"], "pool");
    assert_eq!(state["vmm"]["pid"], pooled);
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("ran"), "{out}");
    assert!(lines.next().unwrap().ends_with(GUEST_KERNEL), "{out}");
    // The container's VM is gone with it, and a new one took its slot.
    assert!(!alive(pooled));
    let next = template.wait_pool(1, T * 2);
    assert_ne!(vmm_of(&next[0]), pooled);
    let (state, out) = run_with_state(&rv, &b, "pooled2");
    assert_eq!(state["boot"], "pool");
    assert!(out.starts_with("ran\n"), "{out}");
}

#[test]
fn a_dead_or_stale_pool_vm_is_never_handed_out() {
    let template = TestTemplate::build_pooled("pooldead", 1);
    let rv = runvm_with(&template, "");
    let b = Bundle::busybox(&["sh", "-c", "echo ran"]);
    let ready = template.wait_pool(1, T * 2);
    let dead = vmm_of(&ready[0]);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(dead as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // The create clones the template itself.
    let (state, out) = run_with_state(&rv, &b, "afterdead");
    assert_eq!(
        (state["boot"].as_str(), out.as_str()),
        (Some("template"), "ran\n")
    );
    assert_ne!(state["vmm"]["pid"], dead);

    // That create refilled the pool; a new template makes its VM stale.
    let stale = vmm_of(&template.wait_pool(1, T * 2)[0]);
    let init = rv.run(&["factory", "init"]);
    assert!(init.status.success(), "{}", text(&init.stderr));
    assert!(
        !alive(stale),
        "factory init left the old template's pool VM"
    );
    let fresh = vmm_of(&template.wait_pool(1, T * 2)[0]);
    let (state, out) = run_with_state(&rv, &b, "afterstale");
    assert_eq!(
        (state["boot"].as_str(), out.as_str()),
        (Some("pool"), "ran\n")
    );
    assert_eq!(state["vmm"]["pid"], fresh);
}

#[test]
fn factory_destroy_leaves_no_pool_process() {
    let template = TestTemplate::build_pooled("pooldestroy", 2);
    let rv = runvm_with(&template, "");
    let ready = template.wait_pool(2, T * 2);
    let vmms: Vec<i64> = ready.iter().map(|d| vmm_of(d)).collect();
    let pool = template.pool_dir().display().to_string();
    let members: Vec<_> = processes_matching(&pool)
        .into_iter()
        .filter(|(_, cmd)| cmd.contains("pool-vm"))
        .collect();
    assert_eq!(members.len(), 2, "{members:?}");
    let out = factory(&rv, "destroy");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(processes_matching(&pool), vec![]);
    for vmm in vmms {
        assert!(!alive(vmm), "pool QEMU {vmm} left");
    }
    assert!(!template.pool_dir().exists());
}

#[test]
fn ten_parallel_creates_against_a_pool_of_two_never_share_a_vm() {
    let template = TestTemplate::build_pooled("poolpar", 2);
    let rv = runvm_with(&template, "");
    let pooled: Vec<i64> = template
        .wait_pool(2, T * 2)
        .iter()
        .map(|d| vmm_of(d))
        .collect();
    let results: Vec<(Value, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..10)
            .map(|i| {
                let rv = &rv;
                s.spawn(move || {
                    let b = Bundle::busybox(&["sh", "-c", &format!("echo ran {i}")]);
                    let (state, out) = run_with_state(rv, &b, &format!("par{i}"));
                    assert_eq!(out, format!("ran {i}\n"));
                    (state, out)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut vmms: Vec<i64> = results
        .iter()
        .map(|(s, _)| s["vmm"]["pid"].as_i64().unwrap())
        .collect();
    let from_pool = results.iter().filter(|(s, _)| s["boot"] == "pool").count();
    vmms.sort();
    vmms.dedup();
    assert_eq!(vmms.len(), 10, "two containers shared a VM: {results:?}");
    // Both ready VMs were taken, each by one create.
    assert!(from_pool >= 2, "{results:?}");
    for vmm in pooled {
        let takers = results
            .iter()
            .filter(|(s, _)| s["vmm"]["pid"] == vmm)
            .count();
        assert_eq!(takers, 1, "pool VM {vmm}: {results:?}");
    }
}
