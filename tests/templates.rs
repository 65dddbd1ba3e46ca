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
    let rv = runvm_with(&template, "[hypervisor]\nmemory_mib = 320\n");
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
    let hv = format!("[hypervisor]\ninitrd = \"{}\"\n", initrd.display());
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
    (holder, TestTemplate { path })
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
    let id = unique_id("larger");
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
    let _g = rv.guard(&id, &b);
    assert!(out.success(), "create: {}", b.output("err.txt"));
    assert_eq!(rv.raw_state(&id)["boot"], "cold");
    let logged = std::fs::read_to_string(log.path()).unwrap();
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
    if line.contains("boot=\"template\"") || line.contains("boot=template") {
        "template"
    } else {
        "cold"
    }
}

/// Wait until the background build has made the template usable and its
/// process is gone.
fn wait_for_background_build(rv: &Runvm, template: &TestTemplate) {
    let deadline = std::time::Instant::now() + T * 2;
    loop {
        let status: Value = serde_json::from_slice(&factory(rv, "status").stdout).unwrap();
        let builders = processes_matching(&template.path.display().to_string());
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
    let template = TestTemplate::unbuilt("auto");
    // The kernel a copy of our own, so that the test can make the template
    // stale by changing it.
    let guest = tempfile::tempdir().unwrap();
    let kernel = guest.path().join("vmlinux");
    let shipped = debian_kernel().with_file_name("vmlinux");
    std::fs::copy(&shipped, &kernel).unwrap();
    let rv = Runvm::with_config(&format!(
        "[hypervisor]\nkernel = \"{}\"\ninitrd = \"{}\"\n[factory]\ntemplate_path = \"{}\"\n",
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

    let (code, log) = run_logged(&rv, &b, "second");
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(boot_of(&log), "template", "{log}");
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
    let (code, log) = run_logged(&rv, &b, "rebuilt");
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(boot_of(&log), "template", "{log}");

    assert!(factory(&rv, "destroy").status.success());
    for left in ["build-lock", "build.log", "failed", "lock"] {
        assert!(!template.path.with_extension(left).exists(), "{left} left");
    }
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
        "[hypervisor]\nqemu = \"{}\"\n[factory]\ntemplate_path = \"{}\"\n",
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
