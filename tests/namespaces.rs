//! The host's view of a container: the pid in `state` (the shim, the
//! container's stand-in) lives in the namespaces the spec gives the
//! container, as runc's container process does, so that tools that look at
//! /proc/<pid>/ns/* find the container there.

mod common;

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::process::{Command, Stdio};

use common::{text, unique_id, Bundle, Runvm};

const TYPES: [&str; 7] = ["cgroup", "ipc", "mnt", "net", "pid", "user", "uts"];

fn ns(pid: i32, kind: &str) -> String {
    fs::read_link(format!("/proc/{pid}/ns/{kind}"))
        .unwrap()
        .display()
        .to_string()
}

/// The namespace types in which `pid` is not where this test process is.
fn own_namespaces(pid: i32) -> BTreeSet<&'static str> {
    let me = std::process::id() as i32;
    TYPES
        .into_iter()
        .filter(|k| ns(pid, k) != ns(me, k))
        .collect()
}

/// `cmd` run in the uts namespace of `pid`.
fn in_uts_of(pid: i32, cmd: &[&str]) -> String {
    let out = Command::new("nsenter")
        .arg(format!("--uts=/proc/{pid}/ns/uts"))
        .args(cmd)
        .output()
        .unwrap();
    assert!(out.status.success(), "nsenter: {}", text(&out.stderr));
    text(&out.stdout).trim().to_string()
}

/// A bundle whose container asks for new uts, ipc, mount, network, pid and
/// cgroup namespaces (runvm's default spec) and names its uts namespace.
fn named_bundle() -> Bundle {
    let b = Bundle::busybox(&["sleep", "1000"]);
    b.edit(|c| {
        c["hostname"] = "stand-in".into();
        c["domainname"] = "stand-in.example".into();
    });
    b
}

/// Under runc, the namespaces its created container's pid has of its own.
fn under_runc(b: &Bundle) -> BTreeSet<&'static str> {
    let root = tempfile::tempdir().unwrap();
    let id = unique_id("runc-ns");
    let runc = |args: &[&str]| {
        Command::new("runc")
            .arg("--root")
            .arg(root.path())
            .args(args)
            .stdin(Stdio::null())
            .stdout(File::create(b.path().join("runc.out")).unwrap())
            .stderr(File::create(b.path().join("runc.err")).unwrap())
            .status()
            .unwrap()
    };
    let bundle = b.path().display().to_string();
    assert!(runc(&["create", "--bundle", &bundle, &id]).success());
    let state = Command::new("runc")
        .arg("--root")
        .arg(root.path())
        .args(["state", &id])
        .output()
        .unwrap();
    let pid = serde_json::from_slice::<serde_json::Value>(&state.stdout).unwrap()["pid"]
        .as_i64()
        .unwrap() as i32;
    let own = own_namespaces(pid);
    assert!(runc(&["delete", "--force", &id]).success());
    own
}

#[test]
fn the_state_pid_has_the_namespaces_the_spec_asks_for_as_under_runc_and_its_names() {
    let rv = Runvm::new();
    let id = unique_id("ns-new");
    let b = named_bundle();
    let host_name = fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let (c, out) = rv.create(&id, &b);
    assert!(out.status.success(), "create: {}", b.output("err.txt"));
    let pid = rv.state(&id)["pid"].as_i64().unwrap() as i32;
    let runvm = own_namespaces(pid);
    // The one difference: the stand-in is not PID 1 of a new pid namespace
    // (its pid is the one callers reap and signal): docs/compatibility.md.
    let mut expected = under_runc(&b);
    assert!(expected.remove("pid"), "runc: {expected:?}");
    assert_eq!(runvm, expected);
    assert_eq!(in_uts_of(pid, &["hostname"]), "stand-in");
    assert_eq!(
        in_uts_of(pid, &["cat", "/proc/sys/kernel/domainname"]),
        "stand-in.example"
    );
    // Never the host's own.
    assert_eq!(
        fs::read_to_string("/proc/sys/kernel/hostname").unwrap(),
        host_name
    );
    drop(c);
}

#[test]
fn a_namespace_path_is_joined_by_the_stand_in() {
    let rv = Runvm::new();
    let first_id = unique_id("ns-first");
    let first = named_bundle();
    let (c1, out) = rv.create(&first_id, &first);
    assert!(out.status.success(), "create: {}", first.output("err.txt"));
    let first_pid = rv.state(&first_id)["pid"].as_i64().unwrap() as i32;

    let id = unique_id("ns-join");
    let b = Bundle::busybox(&["sleep", "1000"]);
    b.edit(|c| {
        for n in c["linux"]["namespaces"].as_array_mut().unwrap() {
            if let Some(kind @ ("uts" | "ipc")) = n["type"].as_str() {
                n["path"] = format!("/proc/{first_pid}/ns/{kind}").into();
            }
        }
        // Its own name would rename the namespace it joins (as under runc).
        c.as_object_mut().unwrap().remove("hostname");
    });
    let (c2, out) = rv.create(&id, &b);
    assert!(out.status.success(), "create: {}", b.output("err.txt"));
    let pid = rv.state(&id)["pid"].as_i64().unwrap() as i32;
    assert_eq!(ns(pid, "uts"), ns(first_pid, "uts"));
    assert_eq!(ns(pid, "ipc"), ns(first_pid, "ipc"));
    assert_ne!(ns(pid, "cgroup"), ns(first_pid, "cgroup"));
    assert_eq!(in_uts_of(pid, &["hostname"]), "stand-in");
    drop(c2);
    drop(c1);
}

#[test]
fn a_namespace_path_that_does_not_exist_fails_create_in_runcs_words_and_leaves_nothing() {
    let rv = Runvm::new();
    let id = unique_id("ns-missing");
    let b = Bundle::busybox(&["true"]);
    b.edit(|c| {
        for n in c["linux"]["namespaces"].as_array_mut().unwrap() {
            if n["type"] == "cgroup" {
                n["path"] = "/nonexistent/ns".into();
            }
        }
    });
    let (c, out) = rv.create(&id, &b);
    assert_ne!(out.status.code(), Some(0));
    let err = b.output("err.txt");
    assert!(
        err.contains("namespace path: lstat /nonexistent/ns: No such file or directory"),
        "{err}"
    );
    drop(c);
}
