//! exec, ps, pause/resume, events, update, features, kill --all: each end
//! to end against a real VM (terminals are in terminals.rs).

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(60);

#[test]
fn exec_in_the_foreground_relays_output_and_exit_codes() {
    let rv = Runvm::new();
    let b = Bundle::busybox(&["sleep", "1000"]);
    let (id, _c) = run_idle(&rv, "exec", &b);
    let out = rv.run(&["exec", &id, "sh", "-c", "echo out; echo err >&2"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout), "out\n");
    assert_eq!(text(&out.stderr), "err\n");
    let out = rv.run(&["exec", &id, "sh", "-c", "exit 5"]);
    assert_eq!(out.status.code(), Some(5));
    // All of a process's output arrives, more than a pipe holds included;
    // and the exec ends with its process when a background child keeps the
    // output open (what that child writes later is not the exec's).
    let out = rv.run(&["exec", &id, "seq", "1", "30000"]);
    let lines: String = (1..=30000).map(|i| format!("{i}\n")).collect();
    assert!(
        text(&out.stdout) == lines,
        "{} bytes of output",
        out.stdout.len()
    );
    let out = rv.run(&[
        "exec",
        &id,
        "sh",
        "-c",
        "echo before; sleep 1000 & echo after",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "before\nafter\n");
    // Flags apply over the container's process; its environment is kept.
    let out = rv.run(&[
        "exec",
        "--env",
        "GREETING=hi",
        "--cwd",
        "/bin",
        "--user",
        "1000:100",
        &id,
        "sh",
        "-c",
        "echo $GREETING $PATH; pwd; id -u; id -g",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let lines: Vec<String> = text(&out.stdout).lines().map(String::from).collect();
    assert!(lines[0].starts_with("hi /usr/local/sbin:"), "{lines:?}");
    assert_eq!(&lines[1..], ["/bin", "1000", "100"]);
    // A uid alone keeps the container's gid, as under runc; the other
    // process flags reach the guest.
    let out = rv.run(&[
        "exec",
        "--user",
        "1000",
        "--additional-gids",
        "44",
        "--no-new-privs",
        &id,
        "sh",
        "-c",
        "id -u; id -g; id -G; grep NoNewPrivs /proc/self/status",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let lines: Vec<String> = text(&out.stdout).lines().map(String::from).collect();
    assert_eq!(lines[..2], ["1000", "0"], "{lines:?}");
    assert!(lines[2].split(' ').any(|g| g == "44"), "{lines:?}");
    assert_eq!(
        lines[3].split_whitespace().collect::<Vec<_>>(),
        ["NoNewPrivs:", "1"]
    );
    // --cap adds to the container's capabilities: bit 12 is CAP_NET_ADMIN,
    // which runc's default spec does not grant.
    let cap_eff = |extra: &[&str]| {
        let mut args = vec!["exec"];
        args.extend(extra);
        args.extend([id.as_str(), "grep", "CapEff", "/proc/self/status"]);
        let out = rv.run(&args);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let hex = text(&out.stdout)
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_string();
        u64::from_str_radix(&hex, 16).unwrap()
    };
    assert_eq!(cap_eff(&[]) & (1 << 12), 0);
    assert_ne!(cap_eff(&["--cap", "CAP_NET_ADMIN"]) & (1 << 12), 0);
    // Without --detach the pid file holds runvm exec's own pid.
    let pid_file = b.path().join("attached.pid");
    let mut child = rv
        .cmd()
        .args(["exec", "--pid-file", pid_file.to_str().unwrap(), &id])
        .args(["sh", "-c", "echo running; sleep 2"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 8];
    std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut first).unwrap();
    assert_eq!(&first, b"running\n");
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    assert_eq!(pid, child.id().to_string());
    assert!(child.wait().unwrap().success());
    // stdin reaches the exec'd process.
    let mut child = rv
        .cmd()
        .args(["exec", &id, "cat"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"to cat\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(text(&out.stdout), "to cat\n");
}

#[test]
fn exec_detached_leaves_a_stand_in_with_the_exit_code() {
    let rv = Runvm::new();
    let b = Bundle::busybox(&["sleep", "1000"]);
    let (id, _c) = run_idle(&rv, "execd", &b);
    let pid_file = b.path().join("exec.pid");
    let out = rv
        .cmd()
        .args([
            "exec",
            "--detach",
            "--pid-file",
            pid_file.to_str().unwrap(),
            &id,
        ])
        .args(["sh", "-c", "echo detached; sleep 3; exit 7"])
        .stdin(std::process::Stdio::null())
        // The process's stdio: files, as containerd passes FIFOs (the shim
        // holds them until the process ends).
        .stdout(std::fs::File::create(b.path().join("exec.out")).unwrap())
        .stderr(std::fs::File::create(b.path().join("exec.err")).unwrap())
        .status()
        .unwrap();
    assert!(out.success(), "{}", b.output("exec.err"));
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    assert!(!pid.ends_with('\n'), "no trailing newline");
    let pid: i32 = pid.parse().unwrap();
    // ps --format json lists the shim and the stand-in.
    let ps = rv.run(&["ps", "--format", "json", &id]);
    let pids: Vec<i32> = serde_json::from_slice(&ps.stdout).unwrap();
    assert!(pids.contains(&pid), "{pids:?} lacks {pid}");
    // We are the stand-in's subreaper, as containerd's shim is.
    assert_eq!(wait_pid(pid, T), Some(7));
    assert_eq!(b.output("exec.out"), "detached\n");
}

#[test]
fn exec_into_a_created_container_works_as_in_runc() {
    let rv = Runvm::new();
    let b = Bundle::busybox(&["sleep", "1000"]);
    let id = unique_id("execcreated");
    let (_c, out) = rv.create(&id, &b);
    assert!(out.status.success(), "create: {}", b.output("err.txt"));
    let out = rv.run(&["exec", &id, "echo", "early"]);
    assert_eq!(text(&out.stdout), "early\n", "{}", text(&out.stderr));
    // The container is still created and starts normally.
    assert_eq!(rv.status(&id), "created");
    assert!(rv.run(&["start", &id]).status.success());
    assert_eq!(rv.status(&id), "running");
}

#[test]
fn exec_errors() {
    let rv = Runvm::new();
    let out = rv.run(&["exec", "nope", "true"]);
    assert_eq!(out.status.code(), Some(255));
    assert!(text(&out.stderr).contains("container does not exist"));

    let b = Bundle::busybox(&["sleep", "1000"]);
    let (id, _c) = run_idle(&rv, "execerr", &b);
    let out = rv.run(&["exec", "--process", "/nonexistent/process.json", &id]);
    assert_eq!(out.status.code(), Some(255));
    assert!(
        text(&out.stderr).contains("read /nonexistent/process.json"),
        "{}",
        text(&out.stderr)
    );
    let bad = b.path().join("bad.json");
    std::fs::write(&bad, r#"{"args": "not a list"}"#).unwrap();
    let out = rv.run(&["exec", "--process", bad.to_str().unwrap(), &id]);
    assert_eq!(out.status.code(), Some(255));
    assert!(
        text(&out.stderr).contains("parse "),
        "{}",
        text(&out.stderr)
    );
    let out = rv.run(&["exec", &id, "/no/such/binary"]);
    assert_eq!(out.status.code(), Some(255));
    assert!(
        text(&out.stderr).contains("no such file or directory"),
        "{}",
        text(&out.stderr)
    );
    let out = rv.run(&["exec", "-t", "-d", &id, "sh"]);
    assert_eq!(out.status.code(), Some(255));
    assert!(
        text(&out.stderr).contains("cannot allocate tty"),
        "{}",
        text(&out.stderr)
    );
    // A console socket needs --tty and --detach, as under runc.
    let console = ConsoleReceiver::new();
    for args in [
        &["exec", "-d", "--console-socket"][..],
        &["exec", "-t", "--console-socket"],
    ] {
        let mut args = args.to_vec();
        args.extend([console.path.to_str().unwrap(), &id, "true"]);
        let out = rv.run(&args);
        assert_eq!(out.status.code(), Some(255), "{args:?}");
        assert!(
            text(&out.stderr)
                .contains("cannot use console socket if runvm will not detach or allocate tty"),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    // A pid file that cannot be written: an error, and nothing runs on.
    let out = rv.run(&[
        "exec",
        "-d",
        "--pid-file",
        "/nonexistent/dir/exec.pid",
        &id,
        "sleep",
        "777",
    ]);
    assert_eq!(out.status.code(), Some(255));
    assert!(
        text(&out.stderr).contains("pid file directory /nonexistent/dir does not exist"),
        "{}",
        text(&out.stderr)
    );
    let ps = text(&rv.run(&["ps", &id]).stdout);
    assert!(!ps.contains("sleep 777"), "{ps}");

    assert!(rv.run(&["pause", &id]).status.success());
    let out = rv.run(&["exec", &id, "true"]);
    assert_eq!(out.status.code(), Some(255));
    assert!(text(&out.stderr).contains("cannot exec in a paused container"));
    assert!(rv.run(&["resume", &id]).status.success());

    assert!(rv.run(&["kill", &id, "KILL"]).status.success());
    rv.wait_status(&id, "stopped", T);
    let out = rv.run(&["exec", &id, "true"]);
    assert_eq!(out.status.code(), Some(255));
    assert!(text(&out.stderr).contains("cannot exec in a stopped container"));
}

fn cpu_total(rv: &Runvm, id: &str) -> u64 {
    let out = rv.run(&["events", "--stats", id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["data"]["cpu"]["usage"]["total"].as_u64().unwrap()
}

#[test]
fn pause_stops_the_cpu_and_resume_restarts_it() {
    let rv = Runvm::new();
    let b = Bundle::busybox(&["sh", "-c", "while :; do :; done"]);
    let (id, _c) = run_idle(&rv, "pause", &b);
    std::thread::sleep(Duration::from_secs(1));
    assert!(rv.run(&["pause", &id]).status.success());
    assert_eq!(rv.status(&id), "paused");
    let frozen = cpu_total(&rv, &id);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        cpu_total(&rv, &id),
        frozen,
        "CPU time advanced while paused"
    );
    let again = rv.run(&["pause", &id]);
    assert!(text(&again.stderr).contains("container not running"));

    assert!(rv.run(&["resume", &id]).status.success());
    assert_eq!(rv.status(&id), "running");
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        cpu_total(&rv, &id) > frozen,
        "CPU time did not advance after resume"
    );
    let again = rv.run(&["resume", &id]);
    assert!(text(&again.stderr).contains("container not paused"));
}

#[test]
fn a_paused_container_can_be_killed_and_force_deleted() {
    let rv = Runvm::new();
    let b = Bundle::busybox(&["sleep", "1000"]);
    let (id, mut c) = run_idle(&rv, "pausekill", &b);
    assert!(rv.run(&["pause", &id]).status.success());
    assert!(rv.run(&["kill", &id, "KILL"]).status.success());
    assert_eq!(c.wait_shim(T), 137);
    assert_eq!(rv.status(&id), "stopped");

    let b2 = Bundle::busybox(&["sleep", "1000"]);
    let (id2, mut c2) = run_idle(&rv, "pausedel", &b2);
    assert!(rv.run(&["pause", &id2]).status.success());
    let del = rv.run(&["delete", "--force", &id2]);
    assert!(del.status.success(), "{}", text(&del.stderr));
    c2.wait_shim(T);
    assert_no_leaks(rv.root(), &id2, b2.path());
}

#[test]
fn events_stats_update_ps_and_kill_all() {
    let rv = Runvm::new();
    let b = Bundle::busybox(&["sh", "-c", "sleep 1000 & sleep 1000 & echo forked; wait"]);
    let (id, mut c) = run_idle(&rv, "verbs", &b);
    // Once both sleeps are forked: the 3 pids below, and what kill --all
    // signals. Under TCG no fixed pause is long enough.
    wait_for_output(&b, "out.txt", "forked\n", T);

    let out = rv.run(&["events", "--stats", &id]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["type"], "stats");
    assert_eq!(v["id"], id.as_str());
    assert!(
        v["data"]["memory"]["usage"]["usage"].as_u64().unwrap() > 0,
        "{v}"
    );
    assert_eq!(v["data"]["pids"]["current"], 3);

    let out = rv.run(&["update", "--pids-limit", "42", &id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let pids_max = rv.run(&["exec", &id, "cat", "/sys/fs/cgroup/pids.max"]);
    assert_eq!(text(&pids_max.stdout), "42\n");
    let res = b.path().join("resources.json");
    std::fs::write(
        &res,
        r#"{"memory": {"limit": 104857600}, "cpu": {"quota": 50000, "period": 100000}}"#,
    )
    .unwrap();
    assert!(rv
        .run(&["update", "--resources", res.to_str().unwrap(), &id])
        .status
        .success());
    let out = rv.run(&[
        "exec",
        &id,
        "cat",
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/cpu.max",
    ]);
    assert_eq!(text(&out.stdout), "104857600\n50000 100000\n");
    // More than the VM can grow to (the host's memory) is a clear error,
    // and changes nothing.
    let out = rv.run(&["update", "--memory", "1099511627776", &id]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("the VM cannot grow by ")
            && text(&out.stderr).contains("may grow to "),
        "{}",
        text(&out.stderr)
    );
    let out = rv.run(&["exec", &id, "cat", "/sys/fs/cgroup/memory.max"]);
    assert_eq!(text(&out.stdout), "104857600\n");
    // The flag forms, and --resources - (stdin).
    let out = rv.run(&["update", "--cpu-share", "512", &id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = rv.run(&["exec", &id, "cat", "/sys/fs/cgroup/cpu.weight"]);
    // runc's conversion of shares to cgroup v2 weight: 1 + (s-2)*9999/262142.
    assert_eq!(text(&out.stdout), "20\n");
    let mut child = rv
        .cmd()
        .args(["update", "--resources", "-", &id])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(br#"{"pids": {"limit": 77}}"#)
        .unwrap();
    assert!(child.wait().unwrap().success());
    let pids_max = rv.run(&["exec", &id, "cat", "/sys/fs/cgroup/pids.max"]);
    assert_eq!(text(&pids_max.stdout), "77\n");
    std::fs::write(&res, "{not json").unwrap();
    let out = rv.run(&["update", "--resources", res.to_str().unwrap(), &id]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("parse the resources"));

    let ps = rv.run(&["ps", "--format", "json", &id]);
    let pids: Vec<i32> = serde_json::from_slice(&ps.stdout).unwrap();
    assert_eq!(pids, vec![c.shim_pid.unwrap()]);
    let table = text(&rv.run(&["ps", &id]).stdout);
    assert!(table.starts_with("UID"), "{table}");
    let sleeps = table.lines().filter(|l| l.ends_with(" sleep 1000")).count();
    assert_eq!(sleeps, 2, "{table}");

    // TERM to every process: the sleeps die, so the shell's wait returns.
    assert!(rv.run(&["kill", "--all", &id, "TERM"]).status.success());
    assert_eq!(c.wait_shim(T), 0);
}

/// With the default memory slots, a memory limit the VM cannot hold grows
/// it (a clone or pool VM in template mode: hotplug works there too).
#[test]
fn update_of_a_larger_memory_limit_grows_the_vm() {
    let rv = Runvm::new();
    let b = Bundle::busybox(&["sh", "-c", "echo ready; while true; do sleep 1; done"]);
    let (id, _c) = run_idle(&rv, "grow", &b);
    wait_for_output(&b, "out.txt", "ready\n", T);
    let limit = (400u64 << 20).to_string();
    let out = rv.run(&["update", "--memory", &limit, &id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = rv.run(&["exec", &id, "grep", "MemTotal", "/proc/meminfo"]);
    let kib: u64 = text(&out.stdout)
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_default();
    // 256 MiB and two 128 MiB blocks: 512, of which the kernel keeps some.
    assert!(kib > 400 * 1024 && kib <= 512 * 1024, "MemTotal {kib} kB");
    let out = rv.run(&["exec", &id, "cat", "/sys/fs/cgroup/memory.max"]);
    assert_eq!(text(&out.stdout), format!("{limit}\n"));
}

#[test]
fn verbs_on_unknown_or_stopped_containers() {
    let rv = Runvm::new();
    for args in [
        &["pause", "nope"][..],
        &["resume", "nope"],
        &["ps", "nope"],
        &["events", "--stats", "nope"],
        &["update", "--pids-limit", "5", "nope"],
    ] {
        let out = rv.run(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(
            text(&out.stderr).contains("container does not exist"),
            "{args:?}"
        );
    }
    let b = Bundle::busybox(&["true"]);
    let id = unique_id("stoppedverbs");
    let (mut c, out) = rv.create(&id, &b);
    assert!(out.status.success());
    assert!(rv.run(&["start", &id]).status.success());
    c.wait_shim(T);
    for args in [
        &["pause", &id][..],
        &["ps", &id],
        &["update", "--pids-limit", "5", &id],
    ] {
        let out = rv.run(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(
            text(&out.stderr).contains("container not running"),
            "{args:?}"
        );
    }
    let out = rv.run(&["resume", &id]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("container not paused"));
    // runc's words for events on a stopped container, streaming or not.
    for args in [&["events", "--stats", &id][..], &["events", &id]] {
        let out = rv.run(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let want = format!("container with id {id} is not running");
        assert!(
            text(&out.stderr).contains(&want),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    let out = rv.run(&["ps", "--format", "bogus", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    let out = rv.run(&["ps", &id, "-ef"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("ps options are not supported"));
}

#[test]
fn a_created_container_can_be_paused_as_in_runc() {
    let rv = Runvm::new();
    let b = Bundle::busybox(&["sh", "-c", "echo started"]);
    let id = unique_id("pausecreated");
    let (mut c, out) = rv.create(&id, &b);
    assert!(out.status.success(), "create: {}", b.output("err.txt"));
    assert!(rv.run(&["pause", &id]).status.success());
    assert_eq!(rv.status(&id), "paused");
    let start = rv.run(&["start", &id]);
    assert_eq!(start.status.code(), Some(1));
    assert!(
        text(&start.stderr).contains("cannot start a container in the paused state"),
        "{}",
        text(&start.stderr)
    );
    // Resumed, it is created again, and starts.
    assert!(rv.run(&["resume", &id]).status.success());
    assert_eq!(rv.status(&id), "created");
    assert!(rv.run(&["start", &id]).status.success());
    assert_eq!(c.wait_shim(T), 0);
    assert_eq!(b.output("out.txt"), "started\n");
}

#[test]
fn features_describe_runvm() {
    let out = std::process::Command::new(RUNVM)
        .arg("features")
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ociVersionMin"], "1.0.0");
    assert!(
        v["ociVersionMax"].as_str().unwrap().starts_with("1."),
        "{v}"
    );
    for key in ["hooks", "mountOptions"] {
        assert!(v[key].is_array(), "{key}: {v}");
    }
    let caps = v["linux"]["capabilities"].as_array().unwrap();
    assert!(caps.contains(&"CAP_SYS_ADMIN".into()), "{v}");
    assert!(v["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .contains(&"pid".into()));
    assert_eq!(v["linux"]["cgroup"]["v2"], true);
    assert_eq!(v["linux"]["seccomp"]["enabled"], true);
    assert_eq!(v["annotations"]["io.github.runvm.hypervisor"], "qemu");
}
