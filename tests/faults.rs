//! Faults, races and bad input: whatever goes wrong, `state` tells the truth
//! and `delete --force` leaves nothing behind.

mod common;

use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const T: Duration = Duration::from_secs(60);

fn signal(pid: i32, sig: Signal) {
    kill(Pid::from_raw(pid), sig).unwrap();
}

#[test]
fn virtiofsd_dying_stops_the_container() {
    let rv = Runvm::new();
    let b = Bundle::busybox(&["sleep", "1000"]);
    let id = unique_id("vfsdeath");
    let mut c = rv.run_detached(&id, &b);
    // The virtiofsd runvm started (its sandboxed child is its business).
    let share = rv.root().join(&id).join("share");
    let vfs = processes_matching(&format!("--shared-dir {}", share.display()));
    let parent = vfs
        .iter()
        .map(|(pid, _)| *pid)
        .min()
        .expect("virtiofsd runs");
    signal(parent, Signal::SIGKILL);
    assert_ne!(c.wait_shim(T), 0);
    assert_eq!(rv.status(&id), "stopped");
    assert!(rv.run(&["delete", &id]).status.success());
}

#[test]
fn a_killed_shim_takes_its_vm_along() {
    let rv = Runvm::new();
    let b = Bundle::busybox(&["sleep", "1000"]);
    let id = unique_id("shimdeath");
    let mut c = rv.run_detached(&id, &b);
    let qemu = rv.vmm(&id);
    assert!(qemu.alive());
    signal(c.shim_pid.unwrap(), Signal::SIGKILL);
    assert_eq!(c.wait_shim(T), 137);
    assert_eq!(rv.status(&id), "stopped");
    // QEMU and virtiofsd die with their shim (parent-death signal; a warm
    // pool VM's member kills it when its claimant dies).
    assert!(qemu.wait_gone(T), "QEMU outlived its shim");
    let del = rv.run(&["delete", "--force", &id]);
    assert!(del.status.success(), "{}", text(&del.stderr));
}

#[test]
fn an_unresponsive_guest_gives_timeouts_not_hangs() {
    let rv = Runvm::with_config("[runtime]\nrequest_secs = 3\nstop_secs = 3\n");
    let b = Bundle::busybox(&["sleep", "1000"]);
    let id = unique_id("frozen");
    let mut c = rv.run_detached(&id, &b);
    let qemu = rv.vmm(&id).pid;
    // The whole VM stops: the agent cannot answer.
    signal(qemu, Signal::SIGSTOP);
    for args in [
        &["ps", &id][..],
        &["events", "--stats", &id],
        &["kill", &id, "CONT"],
    ] {
        let t = Instant::now();
        let out = rv.run(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(
            text(&out.stderr).contains("did not answer within 3s"),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{args:?} took {:?}",
            t.elapsed()
        );
    }
    let out = rv.run(&["exec", &id, "true"]);
    assert_eq!(out.status.code(), Some(255));
    assert!(
        text(&out.stderr).contains("did not answer within 3s"),
        "{}",
        text(&out.stderr)
    );
    // state does not ask the guest; delete --force still cleans up.
    assert_eq!(rv.status(&id), "running");
    let del = rv.run(&["delete", "--force", &id]);
    assert!(del.status.success(), "{}", text(&del.stderr));
    c.wait_shim(T);
}

#[test]
fn runvm_killed_during_create_can_be_deleted_and_recreated() {
    let rv = Runvm::new();
    let b = Bundle::busybox(&["sh", "-c", "echo second life"]);
    let id = unique_id("createkill");
    let mut create = rv
        .cmd()
        .args(["create", "--bundle", b.path().to_str().unwrap(), &id])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Killed while its VM boots: once QEMU is recorded, before create ends.
    let deadline = Instant::now() + T;
    let state_file = rv.root().join(&id).join("state.json");
    loop {
        let state: Option<serde_json::Value> = std::fs::read(&state_file)
            .ok()
            .and_then(|d| serde_json::from_slice(&d).ok());
        if state.is_some_and(|s| s["status"] == "creating" && !s["vmm"].is_null()) {
            break;
        }
        assert!(Instant::now() < deadline, "QEMU never started");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(create.try_wait().unwrap().is_none(), "create already ended");
    create.kill().unwrap();
    create.wait().unwrap();
    let del = rv.run(&["delete", "--force", &id]);
    assert!(del.status.success(), "{}", text(&del.stderr));
    assert_no_leaks(rv.root(), &id, b.path());
    // The id is free again.
    let _g = rv.guard(&id, &b);
    let out = rv.run(&["run", "--bundle", b.path().to_str().unwrap(), &id]);
    assert_eq!(text(&out.stdout), "second life\n", "{}", text(&out.stderr));
}

#[test]
fn a_directory_without_state_is_removed_as_runc_does() {
    // What a create killed before its first state write leaves.
    let rv = Runvm::new();
    let b = Bundle::busybox(&["sh", "-c", "echo reborn"]);
    let id = unique_id("stateless");
    let dir = rv.root().join(&id);
    for force in [false, true] {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("config.json"), "{}").unwrap();
        let mut args = vec!["delete"];
        if force {
            args.push("--force");
        }
        args.push(&id);
        let out = rv.run(&args);
        if force {
            assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        } else {
            assert_eq!(out.status.code(), Some(1));
            assert!(text(&out.stderr).contains("container does not exist"));
        }
        assert!(!dir.exists(), "delete {force} left {}", dir.display());
    }
    let _g = rv.guard(&id, &b);
    let out = rv.run(&["run", "--bundle", b.path().to_str().unwrap(), &id]);
    assert_eq!(text(&out.stdout), "reborn\n", "{}", text(&out.stderr));
}

#[test]
fn a_garbage_state_file_is_reported_and_force_delete_cleans_up() {
    let rv = Runvm::new();
    let b = Bundle::busybox(&["sleep", "1000"]);
    let id = unique_id("garbage");
    let mut c = rv.run_detached(&id, &b);
    std::fs::write(rv.root().join(&id).join("state.json"), b"{\"id\": \"trunc").unwrap();
    let out = rv.run(&["state", &id]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("is corrupt"),
        "{}",
        text(&out.stderr)
    );
    let del = rv.run(&["delete", &id]);
    assert_eq!(
        del.status.code(),
        Some(1),
        "without --force the state must be readable"
    );
    let del = rv.run(&["delete", "--force", &id]);
    assert!(del.status.success(), "{}", text(&del.stderr));
    c.wait_shim(T);
    assert_no_leaks(rv.root(), &id, b.path());
}

#[test]
fn ten_containers_at_once() {
    let rv = Runvm::new();
    let bundles: Vec<Bundle> = (0..10)
        .map(|_| Bundle::busybox(&["sh", "-c", "echo up; sleep 1000"]))
        .collect();
    let ids: Vec<String> = (0..10).map(|i| unique_id(&format!("many{i}"))).collect();
    let containers: Vec<Container> = std::thread::scope(|s| {
        let handles: Vec<_> = ids
            .iter()
            .zip(&bundles)
            .map(|(id, b)| {
                let rv = &rv;
                s.spawn(move || rv.run_detached(id, b))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (id, b) in ids.iter().zip(&bundles) {
        assert_eq!(rv.status(id), "running");
        wait_for_output(b, "out.txt", "up\n", T);
    }
    std::thread::scope(|s| {
        for id in &ids {
            let rv = &rv;
            s.spawn(move || {
                let del = rv.run(&["delete", "--force", id]);
                assert!(del.status.success(), "{id}: {}", text(&del.stderr));
            });
        }
    });
    for (mut c, b) in containers.into_iter().zip(&bundles) {
        c.wait_shim(T);
        assert_no_leaks(rv.root(), &c.id, b.path());
    }
}

#[test]
fn twenty_racing_verbs_never_corrupt_state_and_one_delete_wins() {
    let rv = Runvm::new();
    let b = Bundle::busybox(&["sleep", "1000"]);
    let id = unique_id("race");
    let mut c = rv.run_detached(&id, &b);
    let results: Vec<(usize, std::process::Output)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..20)
            .map(|i| {
                let (rv, id) = (&rv, &id);
                s.spawn(move || {
                    let args: Vec<&str> = match i % 4 {
                        0 => vec!["delete", "--force", id],
                        1 => vec!["kill", id, "CONT"],
                        _ => vec!["state", id],
                    };
                    (i, rv.run(&args))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut deletes_ok = 0;
    for (i, out) in &results {
        let err = text(&out.stderr);
        assert!(!err.contains("corrupt"), "{i}: {err}");
        match i % 4 {
            0 if out.status.success() => deletes_ok += 1,
            0 => assert!(err.contains("container does not exist"), "{i}: {err}"),
            1 => assert!(
                out.status.success()
                    || err.contains("container not running")
                    || err.contains("container does not exist"),
                "{i}: {err}"
            ),
            _ => {
                if out.status.success() {
                    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                    assert!(["running", "stopped"].contains(&v["status"].as_str().unwrap()));
                } else {
                    assert!(err.contains("container does not exist"), "{i}: {err}");
                }
            }
        }
    }
    assert_eq!(deletes_ok, 1, "exactly one delete succeeds");
    c.wait_shim(T);
}

#[test]
fn bad_numbers_and_signals() {
    let rv = Runvm::new();
    let b = Bundle::busybox(&["sleep", "1000"]);
    let id = unique_id("badnum");
    let _c = rv.run_detached(&id, &b);
    let out = rv.run(&["update", "--pids-limit=-5", &id]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("invalid value -5 for pids/limit"),
        "{}",
        text(&out.stderr)
    );
    let out = rv.run(&[
        "update",
        "--cpu-quota",
        "99999999999",
        "--cpu-period",
        "100000",
        &id,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("more than the VM's"),
        "{}",
        text(&out.stderr)
    );
    let out = rv.run(&["update", "--memory", "-1", &id]);
    assert_ne!(
        out.status.code(),
        Some(0),
        "clap refuses a negative byte count"
    );
    for sig in ["99", "0", "SIGNOPE"] {
        let out = rv.run(&["kill", &id, sig]);
        assert_eq!(out.status.code(), Some(1), "{sig}");
        assert!(text(&out.stderr).contains("unknown signal"), "{sig}");
    }
    assert_eq!(rv.status(&id), "running");
}

#[test]
fn events_stream_until_the_container_stops() {
    let rv = Runvm::new();
    let b = Bundle::busybox(&["sleep", "4"]);
    let id = unique_id("events");
    let mut c = rv.run_detached(&id, &b);
    let t = Instant::now();
    let out = rv.run(&["events", "--interval", "1s", &id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.len() >= 2, "{lines:?}");
    assert!(lines
        .iter()
        .all(|l| l["type"] == "stats" && l["id"] == id.as_str()));
    assert!(t.elapsed() < T);
    c.wait_shim(T);
}

#[test]
fn a_guest_kernel_panic_stops_only_its_container() {
    let rv = Runvm::new();
    // A container that owns its guest kernel: all capabilities, /proc
    // writable, and it crashes the kernel.
    let b = Bundle::busybox(&["sh", "-c", "echo c > /proc/sysrq-trigger; sleep 1000"]);
    b.edit(|c| {
        c["linux"]["readonlyPaths"] = serde_json::json!([]);
        c["linux"]["maskedPaths"] = serde_json::json!([]);
        for set in ["bounding", "effective", "permitted"] {
            c["process"]["capabilities"][set]
                .as_array_mut()
                .unwrap()
                .push("CAP_SYS_ADMIN".into());
        }
        let mounts = c["mounts"].as_array_mut().unwrap();
        for m in mounts.iter_mut() {
            if m["destination"] == "/proc" {
                m["options"] = serde_json::json!([]);
            }
        }
    });
    let id = unique_id("panic");
    let mut c = rv.run_detached(&id, &b);
    // The VM ends with its kernel; the shim reports the container lost.
    assert_eq!(c.wait_shim(T), 255);
    assert_eq!(rv.status(&id), "stopped");
    let console =
        std::fs::read_to_string(rv.root().join(&id).join("console.log")).unwrap_or_default();
    assert!(
        console.contains("Kernel panic") || console.contains("sysrq"),
        "{console}"
    );
    assert!(rv.run(&["delete", &id]).status.success());
}
