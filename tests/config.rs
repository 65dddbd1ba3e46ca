//! runvm's configuration as an operator writes it: `--config FILE` and the
//! drop-ins beside it, applied to the VM a container gets, and refused with
//! the file, line and key when wrong. Cold boots only: the VM's size is the
//! point (a template's VM has the default size).

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{text, unique_id, Bundle, Runvm};

/// A main file (cold boots) and drop-ins in a directory of their own.
fn config_dir(dropins: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("runvm-config-dir-")
        .tempdir()
        .unwrap();
    let main = dir.path().join("config.toml");
    fs::write(&main, "[factory]\nenable_template = false\n").unwrap();
    fs::create_dir(dir.path().join("config.d")).unwrap();
    for (name, body) in dropins {
        fs::write(dir.path().join("config.d").join(name), body).unwrap();
    }
    (dir, main)
}

/// `runvm --root R --config FILE ...`, without the tests' RUNVM_CONFIG.
fn with_config(rv: &Runvm, config: &Path) -> Command {
    let mut c = rv.cmd();
    c.env_remove("RUNVM_CONFIG").arg("--config").arg(config);
    c
}

#[test]
fn the_vm_gets_the_size_the_drop_ins_set() {
    let (_dir, main) = config_dir(&[
        (
            "10-size.toml",
            "[hypervisor.qemu]\ndefault_memory = 320\ndefault_vcpus = 2\n",
        ),
        (
            "20-memory.toml",
            "[hypervisor.qemu]\ndefault_memory = 448\n",
        ),
    ]);
    let rv = Runvm::cold("");
    let b = Bundle::busybox(&["sh", "-c", "nproc; grep MemTotal /proc/meminfo"]);
    let id = unique_id("cfg-size");
    let _guard = rv.guard(&id, &b);
    let out = with_config(&rv, &main)
        .args(["run", "--bundle"])
        .arg(b.path())
        .arg(&id)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    // The later drop-in's memory won.
    assert_two_vcpus_and_448_mib(&mut stdout.lines(), &stdout);
}

/// `nproc` then MemTotal: 2 vCPUs and a 448 MiB VM (the guest kernel keeps
/// some of it: more than 320 MiB, at most 448).
fn assert_two_vcpus_and_448_mib<'a>(lines: &mut impl Iterator<Item = &'a str>, all: &str) {
    assert_eq!(lines.next(), Some("2"), "{all}");
    let kib: u64 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no MemTotal in {all:?}"));
    assert!(kib > 320 * 1024 && kib <= 448 * 1024, "MemTotal {kib} kB");
}

#[test]
fn a_bad_drop_in_fails_create_with_its_file_line_and_key_and_leaves_nothing() {
    let (dir, main) = config_dir(&[
        ("10-size.toml", "[hypervisor.qemu]\ndefault_vcpus = 2\n"),
        ("20-typo.toml", "[hypervisor.qemu]\nmemroy_mib = 512\n"),
    ]);
    let rv = Runvm::cold("");
    let b = Bundle::busybox(&["true"]);
    let id = unique_id("cfg-bad");
    let out = with_config(&rv, &main)
        .args(["create", "--bundle"])
        .arg(b.path())
        .arg(&id)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let typo = dir.path().join("config.d/20-typo.toml");
    assert!(
        err.contains(&format!("parse config {}", typo.display())),
        "{err}"
    );
    assert!(err.contains("line 2"), "{err}");
    assert!(err.contains("unknown field `memroy_mib`"), "{err}");
    common::assert_no_leaks(rv.root(), &id, b.path());
}

#[test]
fn virtiofsd_gets_the_extra_arguments() {
    let rv = Runvm::cold("[hypervisor.qemu]\nvirtio_fs_extra_args = [\"--announce-submounts\"]\n");
    let b = Bundle::busybox(&["true"]);
    let id = unique_id("cfg-vfs-args");
    let (_c, out) = rv.create(&id, &b);
    assert!(out.status.success(), "{}", b.output("err.txt"));
    // It serves the container's share in its state directory.
    let share = rv.root().join(&id).join("share").display().to_string();
    let virtiofsd: Vec<String> = common::processes_matching(&share)
        .into_iter()
        .map(|(_, cmdline)| cmdline)
        .filter(|c| c.contains("virtiofsd"))
        .collect();
    // One process, or two with the namespace sandbox (it forks).
    assert!(!virtiofsd.is_empty(), "no virtiofsd serves {share}");
    for cmdline in &virtiofsd {
        assert!(
            cmdline.trim_end().ends_with("--announce-submounts"),
            "{cmdline}"
        );
    }
}

#[test]
fn agent_debug_logs_each_request_on_the_console_and_qemu_gets_the_machine_type() {
    let rv = Runvm::cold(
        "[hypervisor.qemu]\nmachine_type = \"pc-q35-8.2\"\n\n[agent]\nenable_debug = true\n",
    );
    let b = Bundle::busybox(&["true"]);
    let id = unique_id("cfg-agent-debug");
    let (_c, out) = rv.create(&id, &b);
    assert!(out.status.success(), "{}", b.output("err.txt"));
    let console = fs::read_to_string(rv.root().join(&id).join("console.log")).unwrap();
    assert!(
        console.contains("runvm-agent: debug: request CreateContainer"),
        "{console}"
    );
    assert!(
        console
            .lines()
            .any(|l| l.contains("runvm-agent: debug: CreateContainer ok in ")
                && l.trim_end().ends_with(" ms")),
        "{console}"
    );
    let cmdline = fs::read(format!("/proc/{}/cmdline", rv.vmm(&id).pid)).unwrap();
    let args: Vec<String> = text(&cmdline).split('\0').map(String::from).collect();
    let machine = args
        .windows(2)
        .find(|w| w[0] == "-machine")
        .map(|w| w[1].clone())
        .unwrap_or_default();
    assert!(machine.starts_with("pc-q35-8.2,"), "{args:?}");
    let append = args
        .windows(2)
        .find(|w| w[0] == "-append")
        .map(|w| w[1].clone())
        .unwrap_or_default();
    assert!(append.contains(" runvm.agent_debug=1"), "{append}");
}

/// MemTotal of the guest a running container is in, kB.
fn guest_mem_total_kib(rv: &Runvm, id: &str) -> u64 {
    let out = rv.run(&["exec", id, "grep", "MemTotal", "/proc/meminfo"]);
    let line = text(&out.stdout);
    line.split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no MemTotal: {line:?} {}", text(&out.stderr)))
}

#[test]
fn update_grows_a_vm_that_has_memory_slots_up_to_its_maximum() {
    let rv = Runvm::cold("[hypervisor.qemu]\nmemory_slots = 2\ndefault_maxmemory = 1024\n");
    let b = Bundle::busybox(&[
        "sh",
        "-c",
        "trap 'exit 0' TERM; echo ready; while true; do sleep 0.2; done",
    ]);
    b.edit(|c| c["linux"]["resources"]["memory"] = serde_json::json!({"limit": 100u64 << 20}));
    let id = unique_id("cfg-grow");
    let _c = rv.run_detached(&id, &b);
    common::wait_for_output(&b, "out.txt", "ready", std::time::Duration::from_secs(120));
    assert!(guest_mem_total_kib(&rv, &id) <= 256 * 1024);
    let host_limit = || {
        common::host_cgroup_file(
            &common::default_host_cgroup(&id),
            "memory",
            "memory.limit_in_bytes",
        )
        .trim()
        .to_string()
    };
    assert_eq!(host_limit(), ((256u64 + 256) << 20).to_string());

    // 600 MiB and the guest's 64 need 664: four 128 MiB blocks more, 768.
    let limit = (600u64 << 20).to_string();
    let out = rv.run(&["update", "--memory", &limit, &id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // At once: update answers when the guest has the memory online.
    let total = guest_mem_total_kib(&rv, &id);
    assert!(
        total > 600 * 1024 && total <= 768 * 1024,
        "MemTotal {total} kB"
    );
    let out = rv.run(&["exec", &id, "cat", "/sys/fs/cgroup/memory.max"]);
    assert_eq!(text(&out.stdout), format!("{limit}\n"));
    assert_eq!(host_limit(), ((768u64 + 256) << 20).to_string());

    // More than default_maxmemory: refused, nothing changes.
    let out = rv.run(&["update", "--memory", &(2000u64 << 20).to_string(), &id]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("it has 768 MiB and may grow to 1024 MiB"),
        "{err}"
    );
    let out = rv.run(&["exec", &id, "cat", "/sys/fs/cgroup/memory.max"]);
    assert_eq!(text(&out.stdout), format!("{limit}\n"));
    assert_eq!(host_limit(), ((768u64 + 256) << 20).to_string());
}

/// runvm whose operator allows the size and kernel-parameter overrides.
fn allowing(patterns: &str) -> Runvm {
    Runvm::cold(&format!(
        "[hypervisor.qemu]\nenable_annotations = {patterns}\n"
    ))
}

fn annotate(b: &Bundle, pairs: &[(&str, &str)]) {
    b.edit(|c| {
        for (k, v) in pairs {
            c["annotations"][*k] = (*v).into();
        }
    });
}

#[test]
fn allowed_annotations_size_the_vm_and_extend_its_kernel_command_line() {
    let rv = allowing("[\"default_(vcpus|memory)\", \"kernel_params\"]");
    let b = Bundle::busybox(&[
        "sh",
        "-c",
        "nproc; grep MemTotal /proc/meminfo; cat /proc/cmdline",
    ]);
    let pairs = [
        ("org.runvm.config.hypervisor.default_vcpus", "2"),
        ("org.runvm.config.hypervisor.default_memory", "448"),
        (
            "org.runvm.config.hypervisor.kernel_params",
            "runvm.test=override-1",
        ),
        ("example.com/owner", "the-caller"),
    ];
    annotate(&b, &pairs);
    let id = unique_id("ann-size");
    let (mut c, out) = rv.create(&id, &b);
    assert!(out.status.success(), "{}", b.output("err.txt"));
    let raw = rv.raw_state(&id);
    assert_eq!(
        raw["overrides"],
        serde_json::json!({
            "org.runvm.config.hypervisor.default_memory": "448",
            "org.runvm.config.hypervisor.default_vcpus": "2",
            "org.runvm.config.hypervisor.kernel_params": "runvm.test=override-1",
        })
    );
    // `state` shows the caller's annotations, all of them.
    let state = rv.state(&id);
    for (k, v) in pairs {
        assert_eq!(state["annotations"][k], v, "{state}");
    }
    let started = rv.run(&["start", &id]);
    assert!(started.status.success(), "{}", text(&started.stderr));
    assert_eq!(c.wait_shim(std::time::Duration::from_secs(120)), 0);
    let shown = b.output("out.txt");
    let mut lines = shown.lines();
    assert_two_vcpus_and_448_mib(&mut lines, &shown);
    let cmdline = lines.next().unwrap_or_default();
    assert!(
        cmdline
            .split_whitespace()
            .any(|p| p == "runvm.test=override-1"),
        "{cmdline}"
    );
}

#[test]
fn refused_annotations_fail_create_and_leave_nothing() {
    let rv = allowing("[\"default_vcpus\", \"kernel\"]");
    for (annotation, value, says) in [
        (
            "org.runvm.config.hypervisor.default_memory",
            "512",
            "annotation org.runvm.config.hypervisor.default_memory is not enabled: the operator allows it with a pattern matching \"default_memory\" in [hypervisor.qemu] enable_annotations",
        ),
        (
            "org.runvm.config.hypervisor.default_vcpus",
            "lots",
            "annotation org.runvm.config.hypervisor.default_vcpus: \"lots\" is not a number of vCPUs from 1 to",
        ),
        (
            "org.runvm.config.hypervisor.kernel",
            "/tmp/vmlinux",
            "annotation org.runvm.config.hypervisor.kernel: /tmp/vmlinux is not allowed: it matches none of [hypervisor.qemu] valid_kernel_paths ([])",
        ),
        (
            "org.runvm.config.runtime.boot_secs",
            "1",
            "annotation org.runvm.config.runtime.boot_secs is not a setting runvm lets a container override",
        ),
    ] {
        let b = Bundle::busybox(&["true"]);
        annotate(&b, &[(annotation, value)]);
        let id = unique_id("ann-refused");
        let (_c, out) = rv.create(&id, &b);
        // The log line quotes the message (logfmt).
        let err = b.output("err.txt").replace("\\\"", "\"");
        assert_eq!(out.status.code(), Some(1), "{annotation}: {err}");
        assert!(err.contains(says), "{annotation}: {err}");
        common::assert_no_leaks(rv.root(), &id, b.path());
    }
}

/// Send `request` lines to a unix socket and read until `until` shows.
fn converse(socket: &Path, requests: &[&str], until: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    let mut read_some = |s: &mut std::os::unix::net::UnixStream, seen: &mut String| {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "the monitor closed: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    };
    // The greeting first (QMP's banner, or HMP's prompt).
    read_some(&mut s, &mut seen);
    for r in requests {
        s.write_all(format!("{r}\n").as_bytes()).unwrap();
    }
    while !seen.contains(until) {
        read_some(&mut s, &mut seen);
    }
    seen
}

#[test]
fn a_debug_monitor_answers_on_its_socket_only_with_enable_debug() {
    use std::os::unix::fs::PermissionsExt;
    for (kind, requests, answer) in [
        (
            "qmp",
            &[
                r#"{"execute": "qmp_capabilities"}"#,
                r#"{"execute": "query-status"}"#,
            ][..],
            r#""status": "running""#,
        ),
        ("hmp", &["info status"][..], "VM status: running"),
    ] {
        let rv = Runvm::cold(&format!(
            "[hypervisor.qemu]\nenable_debug = true\nextra_monitor_socket = \"{kind}\"\n"
        ));
        let b = Bundle::busybox(&["sleep", "1000"]);
        let id = unique_id("cfg-debugmon");
        let (_c, out) = rv.create(&id, &b);
        assert!(out.status.success(), "{}", b.output("err.txt"));
        let socket = rv.root().join(&id).join("extra-monitor.sock");
        let mode = fs::metadata(&socket).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{kind}: {mode:o}");
        assert_eq!(
            rv.raw_state(&id)["debugMonitor"],
            socket.display().to_string()
        );
        let seen = converse(&socket, requests, answer);
        assert!(seen.contains(answer), "{kind}: {seen}");
        // The shim says so in its log (and in --log's).
        let shim_log = fs::read_to_string(rv.root().join(&id).join("shim.log")).unwrap();
        assert!(
            shim_log.contains("the VM has a debug monitor"),
            "{shim_log}"
        );
    }

    // Without enable_debug: no socket, and a warning.
    let rv = Runvm::cold("[hypervisor.qemu]\nextra_monitor_socket = \"qmp\"\n");
    let b = Bundle::busybox(&["sleep", "1000"]);
    let id = unique_id("cfg-nomon");
    let (_c, out) = rv.create(&id, &b);
    assert!(out.status.success(), "{}", b.output("err.txt"));
    assert!(!rv.root().join(&id).join("extra-monitor.sock").exists());
    assert!(
        b.output("err.txt")
            .contains("extra_monitor_socket is ignored: it needs enable_debug = true"),
        "{}",
        b.output("err.txt")
    );
}
