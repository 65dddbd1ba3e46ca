//! What the host keeps from the guest (docs/security.md): QEMU's jail, the
//! shim's own seccomp filter, the bound on the guest's console log. Run
//! cold and, with RUNVM_TEST_TEMPLATE=1, as clones and pool VMs.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use common::{run_idle, text, wait_for_output, Bundle, Runvm};

const WAIT: Duration = Duration::from_secs(120);
const UID_BASE: u32 = 2_000_000_000;

/// A `Name:\tvalue` line of /proc/<pid>/status.
fn status_field(pid: i32, name: &str) -> String {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
        .trim()
        .to_string()
}

fn names_in(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

fn ns(pid: i32, kind: &str) -> std::path::PathBuf {
    fs::read_link(format!("/proc/{pid}/ns/{kind}")).unwrap()
}

/// Every file under `dir` and their owners.
fn owners(dir: &Path, out: &mut Vec<(String, u32)>) {
    for e in fs::read_dir(dir).unwrap().flatten() {
        let meta = e.metadata().unwrap();
        out.push((e.path().display().to_string(), meta.uid()));
        if meta.is_dir() {
            owners(&e.path(), out);
        }
    }
}

#[test]
fn qemu_runs_unprivileged_in_a_root_of_its_own_and_the_container_works() {
    let rv = Runvm::new();
    let b = Bundle::busybox(&["sh", "-c", "echo ready; while true; do sleep 0.2; done"]);
    let (id, _c) = run_idle(&rv, "jail", &b);
    wait_for_output(&b, "out.txt", "ready", WAIT);
    let qemu = rv.vmm(&id).pid;
    let shim = rv.state(&id)["pid"].as_i64().unwrap() as i32;

    // A uid and gid of its own, the same in all four fields.
    let uids: Vec<u32> = status_field(qemu, "Uid")
        .split_whitespace()
        .map(|u| u.parse().unwrap())
        .collect();
    assert_eq!(uids.len(), 4);
    assert!(uids.iter().all(|&u| u == uids[0]), "{uids:?}");
    let uid = uids[0];
    assert!(uid > UID_BASE, "QEMU runs as uid {uid}");
    assert_eq!(
        status_field(qemu, "Gid").split_whitespace().next().unwrap(),
        uid.to_string()
    );
    assert_eq!(status_field(qemu, "Groups"), "");
    // The base plus the pid of the process that started it: the shim,
    // unless the VM came from the warm pool (then its member).
    if rv.raw_state(&id)["boot"] != "pool" {
        assert_eq!(uid, UID_BASE + shim as u32);
    }
    // No capabilities at all, no way to gain any, and QEMU's own seccomp.
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(status_field(qemu, set), "0000000000000000", "{set}");
    }
    assert_eq!(status_field(qemu, "NoNewPrivs"), "1");
    assert_eq!(status_field(qemu, "Seccomp"), "2");

    // Its root is not the host's: a tmpfs with /usr, a few devices, and the
    // files it opens by name.
    let root = Path::new("/proc").join(qemu.to_string()).join("root");
    let (host, jail) = (fs::metadata("/").unwrap(), fs::metadata(&root).unwrap());
    assert_ne!((host.dev(), host.ino()), (jail.dev(), jail.ino()));
    let top = names_in(&root);
    for name in ["usr", "dev", "etc"] {
        assert!(
            top.contains(name),
            "{name} missing from QEMU's root: {top:?}"
        );
    }
    for name in ["proc", "sys", "run", "root", "home", "var", "boot"] {
        assert!(!top.contains(name), "QEMU's root has {name}: {top:?}");
    }
    assert_eq!(
        names_in(&root.join("etc")),
        BTreeSet::from(["ld.so.cache".to_string()])
    );
    let devices = names_in(&root.join("dev"));
    for dev in ["null", "zero", "random", "urandom"] {
        assert!(devices.contains(dev), "{devices:?}");
    }
    assert!(
        !devices.contains("mem") && !devices.contains("kmsg"),
        "{devices:?}"
    );
    assert!(root.join("usr/bin").is_dir());
    // The tmpfs is read-only, even to root.
    assert!(fs::write(root.join("planted"), "x").is_err());
    // Its own mount and IPC namespaces.
    for kind in ["mnt", "ipc"] {
        assert_ne!(ns(qemu, kind), ns(shim, kind), "{kind}");
    }

    // The shim, which parses what the guest sends, runs under a filter of
    // its own (on top of none: its parent has none).
    assert_eq!(status_field(shim, "NoNewPrivs"), "1");
    assert_eq!(status_field(shim, "Seccomp"), "2");
    assert_eq!(status_field(shim, "Seccomp_filters"), "1");

    // Nothing in the state directory is the jail's to write.
    let mut files = Vec::new();
    owners(&rv.root().join(&id), &mut files);
    assert!(!files.is_empty());
    for (path, owner) in &files {
        assert_eq!(*owner, 0, "{path} is owned by {owner}");
    }

    // And the container works as ever: exec, ps, pause, resume, update and
    // stats, all answered by the filtered shim.
    for verb in [
        &["ps", &id][..],
        &["pause", &id],
        &["resume", &id],
        &["update", "--memory", "419430400", &id],
        &["events", "--stats", &id],
    ] {
        let out = rv.run(verb);
        assert!(out.status.success(), "{verb:?}: {}", text(&out.stderr));
    }
    let out = rv.run(&["exec", &id, "sh", "-c", "echo hello from $(hostname)"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("hello from"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn jail_false_and_shim_seccomp_false_leave_both_unconfined() {
    let rv = Runvm::cold("[runtime]\nshim_seccomp = false\n\n[hypervisor.qemu]\njail = false\n");
    let b = Bundle::busybox(&["sh", "-c", "echo ready; while true; do sleep 0.2; done"]);
    let (id, _c) = run_idle(&rv, "nojail", &b);
    wait_for_output(&b, "out.txt", "ready", WAIT);
    let qemu = rv.vmm(&id).pid;
    assert_eq!(status_field(qemu, "Uid"), "0\t0\t0\t0");
    let host = fs::metadata("/").unwrap();
    let root = fs::metadata(format!("/proc/{qemu}/root")).unwrap();
    assert_eq!((host.dev(), host.ino()), (root.dev(), root.ino()));
    let shim = rv.state(&id)["pid"].as_i64().unwrap() as i32;
    assert_eq!(status_field(shim, "Seccomp"), "0");
}

/// A guest that writes far more to its serial console than the log keeps:
/// the log holds the first `console_log_max_mib` and says the rest went,
/// and the container is not held up.
#[test]
fn the_console_log_keeps_its_bound_when_the_guest_floods_it() {
    let rv = Runvm::cold("[hypervisor.qemu]\nconsole_log_max_mib = 1\n");
    // The guest's serial port, given to the container as a device.
    let b = Bundle::busybox(&[
        "sh",
        "-c",
        "yes 'flooding the console' | head -c 2200000 > /dev/ttyS0; echo flooded",
    ]);
    b.edit(|c| {
        c["linux"]["devices"] = serde_json::json!([{
            "path": "/dev/ttyS0", "type": "c", "major": 4, "minor": 64,
            "fileMode": 0o620, "uid": 0, "gid": 0
        }]);
        c["linux"]["resources"]["devices"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"allow": true, "type": "c", "major": 4, "minor": 64, "access": "rw"}));
    });
    let id = common::unique_id("flood");
    let mut c = rv.run_detached(&id, &b);
    assert_eq!(c.wait_shim(WAIT), 0, "{}", b.output("err.txt"));
    assert_eq!(b.output("out.txt"), "flooded\n");
    let log = fs::read(rv.root().join(&id).join("console.log")).unwrap();
    let note = b"\n[runvm: the guest's console passed 1 MiB; the rest is dropped]\n";
    assert!(
        log.ends_with(note),
        "{}",
        String::from_utf8_lossy(&log[log.len().saturating_sub(200)..])
    );
    assert!(log.len() <= (1 << 20) + note.len(), "{} bytes", log.len());
    let flood = String::from_utf8_lossy(&log);
    assert!(flood.matches("flooding the console").count() > 40_000);
}
