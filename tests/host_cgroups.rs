//! The container's cgroup on the host holds its VM: the shim, QEMU and
//! virtiofsd are in `linux.cgroupsPath` (read as runc reads it) while the
//! container runs, with the container's limits plus the VM's overhead, and
//! the cgroup is gone after delete. Clients' paths (Podman's cgroupfs one,
//! containerd's systemd form) are checked in tests/clients.rs.

mod common;

use std::fs;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::{
    default_host_cgroup, host_cgroup_dirs, host_cgroup_file, host_cgroup_procs, text, unique_id,
    wait_for_output, Bundle, Runvm,
};
use serde_json::{json, Value};

const READY: Duration = Duration::from_secs(120);

fn v2() -> bool {
    Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

/// The memory limit of host cgroup `path`, bytes.
fn memory_limit(path: &str) -> String {
    let file = if v2() {
        "memory.max"
    } else {
        "memory.limit_in_bytes"
    };
    host_cgroup_file(path, "memory", file).trim().to_string()
}

/// The CFS quota and period of host cgroup `path`, µs.
fn cpu_quota(path: &str) -> (String, String) {
    if v2() {
        let max = host_cgroup_file(path, "cpu", "cpu.max");
        let (q, p) = max.trim().split_once(' ').unwrap();
        return (q.into(), p.into());
    }
    let read = |f| host_cgroup_file(path, "cpu", f).trim().to_string();
    (read("cpu.cfs_quota_us"), read("cpu.cfs_period_us"))
}

/// The pids a state records for the shim, QEMU and virtiofsd.
fn vm_processes(state: &Value) -> [(&'static str, i32); 3] {
    let pid = |k: &str| {
        state[k]["pid"]
            .as_i64()
            .unwrap_or_else(|| panic!("no {k} in {state}")) as i32
    };
    [
        ("shim", pid("shim")),
        ("QEMU", pid("vmm")),
        ("virtiofsd", pid("virtiofsd")),
    ]
}

/// The shim, QEMU and virtiofsd of `state` are in host cgroup `path` of
/// `hierarchy`.
fn assert_vm_in(state: &Value, path: &str, hierarchy: &str) {
    let procs = host_cgroup_procs(path, hierarchy);
    for (what, pid) in vm_processes(state) {
        assert!(
            procs.contains(&pid),
            "{what} {pid} is not in {hierarchy}:{path} {procs:?}"
        );
    }
}

/// Remove the parents a test's path made (they stay after delete, as
/// runc leaves them), innermost first.
fn remove_parents(parents: &[&str]) {
    for p in parents {
        for dir in host_cgroup_dirs(p) {
            let _ = fs::remove_dir(dir);
        }
    }
}

fn sleeper() -> Bundle {
    Bundle::busybox(&["sh", "-c", "echo ready; exec sleep 1000"])
}

#[test]
fn the_vm_runs_in_the_containers_host_cgroup_with_its_limits_and_it_goes_at_delete() {
    let rv =
        Runvm::with_config("[runtime]\ncgroup_memory_overhead = 200\ncgroup_cpu_overhead = 0.25\n");
    let parent = format!("runvm-test-{}", std::process::id());
    let id = unique_id("hcg");
    let path = format!("{parent}/{id}");
    let b = sleeper();
    b.edit(|c| {
        c["linux"]["cgroupsPath"] = json!(format!("/{path}"));
        c["linux"]["resources"] = json!({
            "memory": {"limit": 96 << 20},
            "cpu": {"quota": 50000, "period": 100000}
        });
    });
    let (c, out) = rv.create(&id, &b);
    assert!(out.status.success(), "{}", b.output("err.txt"));
    let state = rv.raw_state(&id);
    assert_eq!(state["hostCgroup"]["path"], path.as_str());
    // Created: the VM is in it already, before the container starts.
    for hierarchy in ["memory", "cpu", "pids"] {
        assert_vm_in(&state, &path, hierarchy);
    }
    assert!(rv.run(&["start", &id]).status.success());
    wait_for_output(&b, "out.txt", "ready", READY);
    // The VM is 256 MiB (the default, more than 96 + the guest's 64): the
    // host's limit is that plus the configured overhead; the quota the
    // container's plus a quarter CPU.
    assert_eq!(memory_limit(&path), ((256u64 + 200) << 20).to_string());
    assert_eq!(cpu_quota(&path), ("75000".into(), "100000".into()));
    let out = rv.run(&["update", "--cpu-quota", "20000", &id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(cpu_quota(&path).0, "45000");
    drop(c);
    assert_eq!(host_cgroup_dirs(&path), Vec::<std::path::PathBuf>::new());
    remove_parents(&[&parent]);
}

#[test]
fn without_a_cgroups_path_the_cgroup_is_the_id_below_runvms_own() {
    let rv = Runvm::new();
    let id = unique_id("hcg-default");
    let b = sleeper();
    let (c, out) = rv.create(&id, &b);
    assert!(out.status.success(), "{}", b.output("err.txt"));
    let path = default_host_cgroup(&id);
    let state = rv.raw_state(&id);
    assert_eq!(state["hostCgroup"]["path"], path.as_str());
    assert_vm_in(&state, &path, "memory");
    // Limits only where the container has them: none here.
    if !v2() {
        assert_eq!(
            memory_limit(&path),
            host_cgroup_file("", "memory", "memory.limit_in_bytes").trim()
        );
    }
    drop(c);
    assert_eq!(host_cgroup_dirs(&path), Vec::<std::path::PathBuf>::new());
}

#[test]
fn a_systemd_form_path_is_placed_as_systemd_places_the_unit() {
    let rv = Runvm::new();
    let slice = format!("runvmtest{}.slice", std::process::id());
    let id = unique_id("hcg-sd");
    let b = sleeper();
    b.edit(|c| c["linux"]["cgroupsPath"] = json!(format!("{slice}:it:{id}")));
    let c = rv.guard(&id, &b);
    let out = rv
        .cmd()
        .args(["--systemd-cgroup", "run", "-d", "--bundle"])
        .arg(b.path())
        .arg(&id)
        .stdin(Stdio::null())
        .stdout(fs::File::create(b.path().join("out.txt")).unwrap())
        .stderr(fs::File::create(b.path().join("err.txt")).unwrap())
        .status()
        .unwrap();
    assert!(out.success(), "{}", b.output("err.txt"));
    let path = format!("{slice}/it-{id}.scope");
    let state = rv.raw_state(&id);
    assert_eq!(state["hostCgroup"]["path"], path.as_str());
    assert_vm_in(&state, &path, "memory");
    drop(c);
    assert_eq!(host_cgroup_dirs(&path), Vec::<std::path::PathBuf>::new());
    remove_parents(&[&slice]);
}

#[test]
fn a_cgroups_path_that_cannot_be_used_fails_create_and_leaves_nothing() {
    let rv = Runvm::new();
    // cgroup.procs is a file: no cgroup can be made below it.
    let id = unique_id("hcg-bad");
    let b = sleeper();
    b.edit(|c| c["linux"]["cgroupsPath"] = json!(format!("/cgroup.procs/{id}")));
    let (c, out) = rv.create(&id, &b);
    assert_ne!(out.status.code(), Some(0));
    let err = b.output("err.txt");
    assert!(
        err.contains("unable to apply cgroup configuration: create cgroup /sys/fs/cgroup/")
            && err.contains("Not a directory"),
        "{err}"
    );
    drop(c);
    assert!(rv.run(&["list", "-q"]).stdout.is_empty());

    // With --systemd-cgroup, a path not of the systemd form: runc's words,
    // before anything is made.
    let id = unique_id("hcg-bad-sd");
    let b = sleeper();
    b.edit(|c| c["linux"]["cgroupsPath"] = json!(format!("/plain/{id}")));
    let c = rv.guard(&id, &b);
    let out = rv
        .cmd()
        .args(["--systemd-cgroup", "create", "--bundle"])
        .arg(b.path())
        .arg(&id)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(
        // Plain or logfmt (quotes escaped), as the harness's mode logs.
        text(&out.stderr).replace("\\\"", "\"").contains(&format!(
            "unable to apply cgroup configuration: expected cgroupsPath to be of format \
             \"slice:prefix:name\" for systemd cgroups, got \"/plain/{id}\" instead"
        )),
        "{}",
        text(&out.stderr)
    );
    drop(c);
    assert_eq!(
        host_cgroup_dirs(&format!("plain/{id}")),
        Vec::<std::path::PathBuf>::new()
    );
}

#[test]
fn without_sandbox_cgroup_only_the_vcpu_threads_alone_are_in_the_containers_cgroup() {
    if v2() {
        println!("SKIP: sandbox_cgroup_only = false needs a cgroup v1 host");
        return;
    }
    let rv = Runvm::with_config("[runtime]\nsandbox_cgroup_only = false\n");
    let parent = format!("runvm-test-vcpu-{}", std::process::id());
    let id = unique_id("hcg-vcpu");
    let path = format!("{parent}/{id}");
    let overhead = format!("runvm_overhead/{id}");
    let b = sleeper();
    b.edit(|c| {
        c["linux"]["cgroupsPath"] = json!(format!("/{path}"));
        c["linux"]["resources"] = json!({"cpu": {"quota": 50000, "period": 100000}});
    });
    let (c, out) = rv.create(&id, &b);
    assert!(out.status.success(), "{}", b.output("err.txt"));
    let state = rv.raw_state(&id);
    assert_eq!(state["hostCgroup"]["overhead"], overhead.as_str());
    let [_, (_, qemu), _] = vm_processes(&state);
    let tasks: Vec<i32> = host_cgroup_file(&path, "cpu", "tasks")
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect();
    assert!(!tasks.is_empty(), "no thread in {path}");
    for tid in &tasks {
        // QEMU names its threads (debug-threads=on): "CPU 0/TCG", "CPU 0/KVM".
        let comm = fs::read_to_string(format!("/proc/{qemu}/task/{tid}/comm")).unwrap_or_default();
        assert!(
            comm.starts_with("CPU "),
            "thread {tid} ({comm:?}) of {path} is not a vCPU of QEMU {qemu}"
        );
    }
    // No overhead on the quota: the vCPUs alone are limited.
    assert_eq!(cpu_quota(&path).0, "50000");
    assert_vm_in(&state, &overhead, "cpu");
    drop(c);
    assert_eq!(host_cgroup_dirs(&path), Vec::<std::path::PathBuf>::new());
    assert_eq!(
        host_cgroup_dirs(&overhead),
        Vec::<std::path::PathBuf>::new()
    );
    remove_parents(&[&parent, "runvm_overhead"]);
}
