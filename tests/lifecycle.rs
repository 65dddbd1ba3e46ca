//! The container lifecycle end to end, each container in its own QEMU VM.

mod common;

use std::time::Duration;

use common::*;

const BOOT: Duration = Duration::from_secs(120);

#[test]
fn run_relays_stdout_and_stderr_separately() {
    let rv = Runvm::new();
    let b = Bundle::busybox(&["sh", "-c", "echo hello; echo oops >&2"]);
    let id = unique_id("stdio");
    let _g = rv.guard(&id, &b);
    let out = rv.run(&["run", "--bundle", b.path().to_str().unwrap(), &id]);
    assert_eq!(text(&out.stdout), "hello\n");
    assert_eq!(text(&out.stderr), "oops\n");
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn run_exits_with_the_container_exit_code_and_shows_the_guest_kernel() {
    let rv = Runvm::new();
    let b = Bundle::busybox(&["sh", "-c", "uname -r; exit 3"]);
    let id = unique_id("exit3");
    let _g = rv.guard(&id, &b);
    let out = rv.run(&["run", "--bundle", b.path().to_str().unwrap(), &id]);
    assert_eq!(out.status.code(), Some(3), "stderr: {}", text(&out.stderr));
    let guest_kernel = text(&out.stdout);
    let host_kernel = nix::sys::utsname::uname().unwrap();
    assert!(guest_kernel.contains(GUEST_KERNEL), "{guest_kernel}");
    assert_ne!(guest_kernel.trim(), host_kernel.release().to_string_lossy());
    // run deletes the container afterwards, as runc run does.
    let state = rv.run(&["state", &id]);
    assert!(!state.status.success());
}

#[test]
fn run_relays_stdin_until_eof() {
    let rv = Runvm::new();
    let b = Bundle::busybox(&["sh", "-c", "cat; echo done"]);
    let id = unique_id("stdin");
    let _g = rv.guard(&id, &b);
    let out = run_with_input(&rv, &id, &b, b"line one\nline two\n");
    assert_eq!(text(&out.stdout), "line one\nline two\ndone\n");
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn create_start_state_and_the_shim_exit_code() {
    let rv = Runvm::new();
    let b = Bundle::busybox(&["sh", "-c", "echo started; sleep 2; echo bye >&2; exit 3"]);
    let id = unique_id("lifecycle");
    let (mut c, out) = rv.create(&id, &b);
    assert!(out.status.success(), "create: {}", b.output("err.txt"));
    assert!(out.stdout.is_empty(), "create prints nothing");

    // The pid file holds the shim's pid with no trailing newline.
    let pid_file = std::fs::read_to_string(b.path().join("shim.pid")).unwrap();
    assert!(!pid_file.ends_with('\n'));
    let state = rv.state(&id);
    assert_eq!(state["status"], "created");
    assert_eq!(state["id"], id.as_str());
    assert_eq!(state["pid"].as_i64().unwrap().to_string(), pid_file);
    assert_eq!(state["bundle"], b.path().to_str().unwrap());
    assert!(state["ociVersion"].as_str().unwrap().starts_with("1."));
    // Nothing ran yet: held until start, like runc's exec fifo.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(b.output("out.txt"), "");
    assert_eq!(rv.status(&id), "created");

    let start = rv.run(&["start", &id]);
    assert!(start.status.success(), "start: {}", text(&start.stderr));
    assert_eq!(rv.status(&id), "running");
    rv.wait_status(&id, "stopped", Duration::from_secs(30));
    assert_eq!(rv.state(&id)["pid"], 0);
    assert_eq!(c.wait_shim(Duration::from_secs(30)), 3);
    assert_eq!(b.output("out.txt"), "started\n");
    assert_eq!(b.output("err.txt"), "bye\n");

    let del = rv.run(&["delete", &id]);
    assert!(del.status.success(), "delete: {}", text(&del.stderr));
    assert!(!rv.root().join(&id).exists());
}

#[test]
fn kill_defaults_to_term_which_a_handler_sees() {
    let rv = Runvm::new();
    let b = Bundle::busybox(&[
        "sh",
        "-c",
        "trap 'echo got TERM; exit 143' TERM; echo ready; while :; do sleep 1; done",
    ]);
    let id = unique_id("term");
    let (mut c, out) = rv.create(&id, &b);
    assert!(out.status.success(), "create: {}", b.output("err.txt"));
    assert!(rv.run(&["start", &id]).status.success());
    // Let the shell install its trap.
    let deadline = std::time::Instant::now() + BOOT;
    while b.output("out.txt") != "ready\n" {
        assert!(std::time::Instant::now() < deadline, "never ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    let kill = rv.run(&["kill", &id]);
    assert!(kill.status.success(), "kill: {}", text(&kill.stderr));
    assert_eq!(c.wait_shim(Duration::from_secs(30)), 143);
    assert_eq!(rv.status(&id), "stopped");
    assert_eq!(b.output("out.txt"), "ready\ngot TERM\n");

    // Killing a stopped container fails as runc's does; --all does not.
    let again = rv.run(&["kill", &id, "KILL"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(text(&again.stderr).contains("container not running"));
    assert!(rv.run(&["kill", "--all", &id, "KILL"]).status.success());
}

#[test]
fn kill_by_name_and_number_and_pid1_ignores_unhandled_term() {
    let rv = Runvm::new();
    let b = Bundle::busybox(&["sleep", "1000"]);
    let id = unique_id("sigkill");
    let (mut c, out) = rv.create(&id, &b);
    assert!(out.status.success(), "create: {}", b.output("err.txt"));
    assert!(rv.run(&["start", &id]).status.success());
    // sleep is PID 1 of its pid namespace without a TERM handler: as under
    // runc, TERM does nothing to it.
    assert!(rv.run(&["kill", &id, "SIGTERM"]).status.success());
    assert!(rv.run(&["kill", &id, "15"]).status.success());
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(rv.status(&id), "running");

    let unknown = rv.run(&["kill", &id, "FOO"]);
    assert_eq!(unknown.status.code(), Some(1));
    // Printed as runc does: logrus text, quotes escaped; only the message
    // when the log goes to a --log file (as in template mode).
    let want = if template_mode() {
        r#"unknown signal "FOO""#
    } else {
        r#"msg="unknown signal \"FOO\"""#
    };
    assert!(
        text(&unknown.stderr).contains(want),
        "{}",
        text(&unknown.stderr)
    );

    assert!(rv.run(&["kill", &id, "KILL"]).status.success());
    assert_eq!(c.wait_shim(Duration::from_secs(30)), 137);
    assert_eq!(rv.status(&id), "stopped");
}

#[test]
fn signals_to_the_shim_and_to_run_reach_the_container() {
    // The shim stands for the container: a signal it gets is the
    // container's (containerd and conmon signal the pid in the pid file).
    let rv = Runvm::new();
    let b = Bundle::busybox(&[
        "sh",
        "-c",
        "trap 'echo got USR1' USR1; trap 'echo got HUP; exit 9' HUP; echo ready; \
         while :; do sleep 1; done",
    ]);
    let id = unique_id("shimsig");
    let mut c = rv.run_detached(&id, &b);
    wait_for_output(&b, "out.txt", "ready\n", BOOT);
    let shim = nix::unistd::Pid::from_raw(c.shim_pid.unwrap());
    nix::sys::signal::kill(shim, nix::sys::signal::Signal::SIGUSR1).unwrap();
    wait_for_output(&b, "out.txt", "got USR1\n", Duration::from_secs(30));
    nix::sys::signal::kill(shim, nix::sys::signal::Signal::SIGHUP).unwrap();
    assert_eq!(c.wait_shim(Duration::from_secs(30)), 9);
    assert_eq!(b.output("out.txt"), "ready\ngot USR1\ngot HUP\n");

    // `runvm run` in the foreground forwards what it gets the same way.
    let b = Bundle::busybox(&[
        "sh",
        "-c",
        "trap 'echo got TERM; exit 143' TERM; echo ready; while :; do sleep 1; done",
    ]);
    let id = unique_id("runsig");
    let _g = rv.guard(&id, &b);
    let mut run = rv
        .cmd()
        .args(["run", "--bundle", b.path().to_str().unwrap(), &id])
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(b.path().join("run.out")).unwrap())
        .spawn()
        .unwrap();
    wait_for_output(&b, "run.out", "ready\n", BOOT);
    let pid = nix::unistd::Pid::from_raw(run.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    assert_eq!(run.wait().unwrap().code(), Some(143));
    assert_eq!(b.output("run.out"), "ready\ngot TERM\n");
}

#[test]
fn seccomp_profiles_are_enforced_in_the_guest() {
    let rv = Runvm::new();
    let b = Bundle::busybox(&["sh", "-c", "mkdir /tmp/blocked && echo made; echo after"]);
    b.edit(|c| {
        c["root"]["readonly"] = false.into();
        c["linux"]["seccomp"] = serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64"],
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
        });
    });
    std::fs::create_dir(b.rootfs().join("tmp")).unwrap();
    let id = unique_id("seccomp");
    let _g = rv.guard(&id, &b);
    let out = rv.run(&["run", "--bundle", b.path().to_str().unwrap(), &id]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "after\n");
    assert!(
        text(&out.stderr).contains("Operation not permitted"),
        "{}",
        text(&out.stderr)
    );
    assert!(!b.rootfs().join("tmp/blocked").exists());
}

#[test]
fn delete_needs_force_for_a_running_container_and_leaves_nothing() {
    let rv = Runvm::new();
    let b = Bundle::busybox(&["sleep", "1000"]);
    let id = unique_id("delete");
    let (mut c, out) = rv.create(&id, &b);
    assert!(out.status.success(), "create: {}", b.output("err.txt"));
    assert!(rv.run(&["start", &id]).status.success());
    assert!(rv.vmm(&id).alive(), "QEMU runs");

    let refused = rv.run(&["delete", &id]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        text(&refused.stderr).contains(&format!(
            "cannot delete container {id} that is not stopped: running"
        )),
        "{}",
        text(&refused.stderr)
    );
    let del = rv.run(&["delete", "--force", &id]);
    assert!(
        del.status.success(),
        "delete --force: {}",
        text(&del.stderr)
    );
    c.wait_shim(Duration::from_secs(30));
    assert_no_leaks(rv.root(), &id, b.path());
    assert!(!rv.run(&["state", &id]).status.success());
}

#[test]
fn delete_of_a_created_container_kills_it_like_runc() {
    let rv = Runvm::new();
    let b = Bundle::busybox(&["sleep", "1000"]);
    let id = unique_id("delcreated");
    let (mut c, out) = rv.create(&id, &b);
    assert!(out.status.success(), "create: {}", b.output("err.txt"));
    let del = rv.run(&["delete", &id]);
    assert!(del.status.success(), "delete: {}", text(&del.stderr));
    c.wait_shim(Duration::from_secs(30));
    assert_no_leaks(rv.root(), &id, b.path());
}

#[test]
fn the_spec_is_honoured_in_the_guest() {
    let rv = Runvm::new();
    let b = Bundle::busybox(&[
        "sh",
        "-c",
        "hostname; id -u; id -g; pwd; echo $GREETING; touch /written-by-guest; \
         for d in /proc/self /dev/pts /dev/mqueue /sys/kernel; do test -d $d && echo $d; done; \
         cat /sys/class/net/lo/operstate",
    ]);
    b.edit(|c| {
        c["hostname"] = "guest-host".into();
        c["process"]["user"] = serde_json::json!({"uid": 1234, "gid": 567});
        c["process"]["cwd"] = "/tmp".into();
        c["process"]["env"]
            .as_array_mut()
            .unwrap()
            .push("GREETING=hi there".into());
        c["root"]["readonly"] = false.into();
    });
    std::fs::create_dir(b.rootfs().join("tmp")).unwrap();
    std::fs::set_permissions(
        b.rootfs(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let id = unique_id("spec");
    let _g = rv.guard(&id, &b);
    let out = rv.run(&["run", "--bundle", b.path().to_str().unwrap(), &id]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "guest-host\n1234\n567\n/tmp\nhi there\n/proc/self\n/dev/pts\n/dev/mqueue\n/sys/kernel\n\
         unknown\n"
    );
    // The rootfs is the bundle's own, shared into the guest by virtio-fs.
    let meta = std::fs::metadata(b.rootfs().join("written-by-guest")).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 1234);
}

#[test]
fn a_readonly_root_stays_readonly_in_the_guest() {
    let rv = Runvm::new();
    let b = Bundle::busybox(&["sh", "-c", "touch /nope && echo wrote"]);
    assert_eq!(b.config()["root"]["readonly"], true, "runvm spec default");
    let id = unique_id("readonly");
    let _g = rv.guard(&id, &b);
    let out = rv.run(&["run", "--bundle", b.path().to_str().unwrap(), &id]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("Read-only file system"),
        "{}",
        text(&out.stderr)
    );
    assert!(!b.rootfs().join("nope").exists());
}

#[test]
fn qemu_dying_stops_the_container_and_the_shim_exits_nonzero() {
    let rv = Runvm::new();
    let b = Bundle::busybox(&["sleep", "1000"]);
    let id = unique_id("vmdeath");
    let (mut c, out) = rv.create(&id, &b);
    assert!(out.status.success(), "create: {}", b.output("err.txt"));
    assert!(rv.run(&["start", &id]).status.success());
    let qemu = rv.vmm(&id);
    assert!(qemu.alive());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(qemu.pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let code = c.wait_shim(Duration::from_secs(30));
    assert_ne!(code, 0);
    assert_eq!(rv.status(&id), "stopped");
    let del = rv.run(&["delete", &id]);
    assert!(del.status.success(), "delete: {}", text(&del.stderr));
}

#[test]
fn list_shows_containers_in_table_and_json() {
    let rv = Runvm::new();
    let b = Bundle::busybox(&["sleep", "1000"]);
    let id = unique_id("list");
    let (c, out) = rv.create(&id, &b);
    assert!(out.status.success(), "create: {}", b.output("err.txt"));
    let table = rv.run(&["list"]);
    let table = text(&table.stdout);
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"]
    );
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(row[0], id);
    assert_eq!(row[1], c.shim_pid.unwrap().to_string());
    assert_eq!(row[2], "created");
    assert_eq!(row[3], b.path().to_str().unwrap());
    assert_eq!(row[5], "root");

    let json = rv.run(&["list", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v[0]["id"], id.as_str());
    assert_eq!(v[0]["status"], "created");
    let quiet = rv.run(&["list", "-q"]);
    assert_eq!(text(&quiet.stdout), format!("{id}\n"));
}

#[test]
fn bind_mounts_share_host_files_and_dirs() {
    let rv = Runvm::new();
    let vol = tempfile::tempdir().unwrap();
    std::fs::write(vol.path().join("file"), "from the host\n").unwrap();
    let hosts = vol.path().join("hosts");
    std::fs::write(&hosts, "10.0.0.1 myhost\n").unwrap();
    let data = vol.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("file"), "from the host\n").unwrap();
    let b = Bundle::busybox(&[
        "sh",
        "-c",
        "cat /data/file /etc/hosts; echo from the guest > /data/new; \
         echo x >> /etc/hosts || echo refused",
    ]);
    b.edit(|c| {
        let mounts = c["mounts"].as_array_mut().unwrap();
        mounts.push(serde_json::json!({"destination": "/data", "type": "bind",
            "source": data, "options": ["rbind", "rw"]}));
        mounts.push(
            serde_json::json!({"destination": "/etc/hosts", "type": "bind",
            "source": hosts, "options": ["bind", "ro"]}),
        );
    });
    let id = unique_id("binds");
    let _g = rv.guard(&id, &b);
    let out = rv.run(&["run", "--bundle", b.path().to_str().unwrap(), &id]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "from the host\n10.0.0.1 myhost\nrefused\n"
    );
    assert!(text(&out.stderr).contains("Read-only file system"));
    assert_eq!(
        std::fs::read_to_string(data.join("new")).unwrap(),
        "from the guest\n"
    );
    assert_eq!(
        std::fs::read_to_string(&hosts).unwrap(),
        "10.0.0.1 myhost\n"
    );
    // The shim's bind mounts never show in the host's mount table.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&*vol.path().to_string_lossy()));
}

#[test]
fn a_missing_bind_source_fails_at_create() {
    let rv = Runvm::new();
    let b = Bundle::busybox(&["true"]);
    b.edit(|c| {
        c["mounts"].as_array_mut().unwrap().push(serde_json::json!({
            "destination": "/data", "type": "bind", "source": "/nonexistent/src", "options": ["rbind"]}));
    });
    let id = unique_id("nobind");
    let out = rv.run(&["create", "--bundle", b.path().to_str().unwrap(), &id]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("bind mount source /nonexistent/src (for /data)"),
        "{}",
        text(&out.stderr)
    );
    assert_no_leaks(rv.root(), &id, b.path());
}

#[test]
fn flags_clients_pass_are_accepted() {
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::os::unix::process::CommandExt;

    let rv = Runvm::new();
    let b = Bundle::busybox(&["sh", "-c", "echo flags"]);
    let id = unique_id("flags");
    // What a client with --systemd-cgroup sends: slice:prefix:name.
    b.edit(|c| c["linux"]["cgroupsPath"] = serde_json::json!(format!("system.slice:runvm:{id}")));
    let log = b.path().join("runvm.log");
    // Two extra fds for --preserve-fds 2, as a client passes them: at 3 and
    // 4 in runvm. Parked at 10 and above first, so the dup2s below cannot
    // clobber each other.
    let extra: Vec<OwnedFd> = [b.path().join("config.json"), "/dev/null".into()]
        .iter()
        .map(|p| {
            let f = std::fs::File::open(p).unwrap();
            nix::fcntl::fcntl(f.as_raw_fd(), nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(10))
                .map(|fd| {
                    // SAFETY: fcntl just returned this fd, and nothing else owns it.
                    unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) }
                })
                .unwrap()
        })
        .collect();
    let (a, z) = (extra[0].as_raw_fd(), extra[1].as_raw_fd());
    let mut cmd = rv.cmd();
    cmd.arg("--log")
        .arg(&log)
        .args(["--log-format", "json", "--systemd-cgroup", "create"])
        .args(["--no-pivot", "--no-new-keyring", "--preserve-fds", "2"])
        .args(["--bundle", b.path().to_str().unwrap(), &id])
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(b.path().join("out.txt")).unwrap())
        .stderr(std::fs::File::create(b.path().join("err.txt")).unwrap());
    // SAFETY: between fork and exec the child only calls dup2, which is
    // async-signal-safe, on fds that stay open in the parent until the
    // child has exec'd; dup2 clears FD_CLOEXEC on 3 and 4 (a and z are >= 10,
    // so neither is its own target).
    unsafe {
        cmd.pre_exec(move || {
            for (from, to) in [(a, 3), (z, 4)] {
                if libc::dup2(from, to) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let out = cmd.status().unwrap();
    drop(extra);
    let _g = rv.guard(&id, &b);
    assert!(out.success(), "{}", b.output("err.txt"));
    assert!(rv.run(&["start", &id]).status.success());
    rv.wait_status(&id, "stopped", Duration::from_secs(30));
    assert_eq!(b.output("out.txt"), "flags\n");
    let logged = std::fs::read_to_string(&log).unwrap();
    let warned = logged.lines().any(|l| {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        v["level"] == "warning"
            && v["msg"] == "--preserve-fds is ignored: host fds cannot reach the guest"
    });
    assert!(warned, "no --preserve-fds warning in the log: {logged}");
}

#[test]
fn the_vm_grows_to_the_containers_limits() {
    let rv = Runvm::new();
    let b = Bundle::busybox(&["sh", "-c", "nproc; grep MemTotal /proc/meminfo"]);
    b.edit(|c| {
        c["linux"]["resources"]["memory"] = serde_json::json!({"limit": 512u64 << 20});
        c["linux"]["resources"]["cpu"] = serde_json::json!({"quota": 200000, "period": 100000});
    });
    let id = unique_id("grow");
    let _g = rv.guard(&id, &b);
    let out = rv.run(&["run", "--bundle", b.path().to_str().unwrap(), &id]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some("2"));
    let kib: u64 = lines
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert!(kib > 500 * 1024, "{stdout}");
}

#[test]
fn more_cpus_than_the_host_has_is_a_clear_error() {
    let rv = Runvm::new();
    let b = Bundle::busybox(&["true"]);
    b.edit(|c| {
        c["linux"]["resources"]["cpu"] = serde_json::json!({"quota": 6400000, "period": 100000})
    });
    let id = unique_id("toobig");
    let out = rv.run(&["create", "--bundle", b.path().to_str().unwrap(), &id]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("the container asks for 64 CPUs; the host has"),
        "{}",
        text(&out.stderr)
    );
    assert_no_leaks(rv.root(), &id, b.path());
}
