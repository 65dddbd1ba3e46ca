//! OCI hooks: the host's kinds run on the host as runc runs them (state on
//! stdin, args, env, timeout, the runtime's namespaces), the in-container
//! kinds run in the guest when they are in the rootfs.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const BOOT: Duration = Duration::from_secs(120);

/// A hook that records what it got: the state, its namespaces, working
/// directory and environment, as `<dir>/<kind>.{json,net,mnt,cwd,env}`.
fn recorder(dir: &Path, kind: &str) -> Value {
    json!({
        "path": "/bin/sh",
        "args": ["sh", "-c",
            "cat > \"$0/$1.json\"; readlink /proc/self/ns/net > \"$0/$1.net\"; \
             readlink /proc/self/ns/mnt > \"$0/$1.mnt\"; pwd > \"$0/$1.cwd\"; env > \"$0/$1.env\"",
            dir, kind]
    })
}

/// Every host kind of hook, each recording into `dir`; the prestart hook
/// has an environment of its own.
fn record_all_hooks(b: &Bundle, dir: &Path) {
    let mut hooks = serde_json::Map::new();
    for kind in ["prestart", "createRuntime", "poststart", "poststop"] {
        hooks.insert(kind.into(), json!([recorder(dir, kind)]));
    }
    hooks["prestart"][0]["env"] = json!(["HOOK_ENV=prestart"]);
    b.edit(|c| c["hooks"] = Value::Object(hooks));
}

fn read_json(path: PathBuf) -> Value {
    let data = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&data).unwrap()
}

fn read(path: PathBuf) -> String {
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    k.sort();
    k
}

fn own_ns(kind: &str) -> String {
    fs::read_link(format!("/proc/self/ns/{kind}"))
        .unwrap()
        .display()
        .to_string()
}

/// The same hooks under runc, for comparison: the files they wrote.
fn under_runc(args: &[&str]) -> tempfile::TempDir {
    let b = Bundle::busybox(args);
    let out = tempfile::tempdir().unwrap();
    record_all_hooks(&b, out.path());
    let root = tempfile::tempdir().unwrap();
    let id = unique_id("hooks-runc");
    // The container inherits runc's stdio: files, not pipes read to EOF.
    let log = root.path().join("stderr");
    let runc = |args: &[&str]| {
        let status = std::process::Command::new("runc")
            .arg("--root")
            .arg(root.path())
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .status()
            .unwrap();
        assert!(status.success(), "runc {args:?}: {}", read(log.clone()));
    };
    let bundle = b.path().to_str().unwrap();
    runc(&["create", "--bundle", bundle, &id]);
    runc(&["start", &id]);
    runc(&["delete", "--force", &id]);
    out
}

#[test]
fn host_hooks_get_the_state_on_stdin_in_the_hosts_namespaces_as_under_runc() {
    let rv = Runvm::new();
    let id = unique_id("hooks");
    let b = Bundle::busybox(&["sh", "-c", "echo up; exec sleep 1000"]);
    let dir = tempfile::tempdir().unwrap();
    let out = |name: &str| dir.path().join(name);
    record_all_hooks(&b, dir.path());
    let bundle = b.path().to_str().unwrap().to_string();

    let (c, created) = rv.create(&id, &b);
    assert!(created.status.success(), "{}", b.output("err.txt"));
    let shim_pid = c.shim_pid.unwrap();
    assert_eq!(rv.state(&id)["pid"], shim_pid);
    for kind in ["prestart", "createRuntime"] {
        let state = read_json(out(&format!("{kind}.json")));
        assert_eq!(state["id"], id.as_str(), "{kind}");
        assert_eq!(state["status"], "creating", "{kind}");
        assert_eq!(state["pid"], shim_pid, "{kind}");
        assert_eq!(state["bundle"], bundle.as_str(), "{kind}");
        // The runtime's namespaces; the state's pid is in the container's
        // network namespace, where Docker's prestart hook looks.
        assert_eq!(read(out(&format!("{kind}.net"))).trim(), own_ns("net"));
        assert_eq!(read(out(&format!("{kind}.mnt"))).trim(), own_ns("mnt"));
        let container_net = fs::read_link(format!("/proc/{shim_pid}/ns/net")).unwrap();
        assert_ne!(container_net.display().to_string(), own_ns("net"));
        assert_eq!(read(out(&format!("{kind}.cwd"))).trim(), bundle);
    }
    // The hook's env, or the runtime's when it has none.
    let env = read(out("prestart.env"));
    assert!(env.lines().any(|l| l == "HOOK_ENV=prestart"), "{env}");
    assert!(!env.lines().any(|l| l.starts_with("PATH=")), "{env}");
    assert!(read(out("createRuntime.env"))
        .lines()
        .any(|l| l.starts_with("PATH=")));
    assert!(
        !out("poststart.json").exists(),
        "poststart ran before start"
    );

    let started = rv.run(&["start", &id]);
    assert!(started.status.success(), "{}", text(&started.stderr));
    let state = read_json(out("poststart.json"));
    assert_eq!(state["status"], "running");
    assert_eq!(state["pid"], shim_pid);
    wait_for_output(&b, "out.txt", "up", BOOT);
    assert!(!out("poststop.json").exists(), "poststop ran before delete");

    let deleted = rv.run(&["delete", "--force", &id]);
    assert!(deleted.status.success(), "{}", text(&deleted.stderr));
    let state = read_json(out("poststop.json"));
    assert_eq!(state["status"], "stopped");
    assert!(state.get("pid").is_none(), "{state}");
    drop(c);

    // The same fields as runc gives its hooks (runc 1.1 runs poststart
    // during create, with status "created": see docs/hooks.md).
    let runc = under_runc(&["sleep", "1000"]);
    for kind in ["prestart", "createRuntime", "poststart", "poststop"] {
        let theirs = read_json(runc.path().join(format!("{kind}.json")));
        let ours = read_json(out(&format!("{kind}.json")));
        assert_eq!(
            keys(&ours),
            keys(&theirs),
            "{kind}: {ours} vs runc's {theirs}"
        );
        if kind != "poststart" {
            assert_eq!(ours["status"], theirs["status"], "{kind}");
        }
        for file in ["net", "mnt"] {
            assert_eq!(
                read(out(&format!("{kind}.{file}"))),
                read(runc.path().join(format!("{kind}.{file}"))),
                "{kind}.{file}"
            );
        }
    }
}

#[test]
fn a_failing_prestart_hook_fails_create_in_runcs_words_and_leaves_nothing() {
    let rv = Runvm::new();
    let id = unique_id("hooks-fail");
    let b = Bundle::busybox(&["true"]);
    let dir = tempfile::tempdir().unwrap();
    let fail = json!({"path": "/bin/sh", "args": ["sh", "-c", "echo out; echo err >&2; exit 3"]});
    b.edit(|c| {
        c["hooks"] = json!({
            "prestart": [recorder(dir.path(), "prestart"), fail],
            "createRuntime": [recorder(dir.path(), "createRuntime")],
            "poststop": [recorder(dir.path(), "poststop")]
        })
    });
    let (c, out) = rv.create(&id, &b);
    assert_ne!(out.status.code(), Some(0));
    // Quoted in a log line on stderr, or as is after --log.
    let err = b.output("err.txt").replace("\\n", "\n");
    assert!(
        err.contains(
            "error running hook #1: error running hook: exit status 3, stdout: out\n, stderr: err\n"
        ),
        "{err}"
    );
    // The hooks before it ran, those after did not, and poststop ran as the
    // failed create was cleaned up (as runc does).
    assert!(dir.path().join("prestart.json").exists());
    assert!(!dir.path().join("createRuntime.json").exists());
    assert_eq!(
        read_json(dir.path().join("poststop.json"))["status"],
        "stopped"
    );
    let list = rv.run(&["list", "-q"]);
    assert_eq!(text(&list.stdout).trim(), "");
    drop(c);
}

#[test]
fn a_hook_past_its_timeout_is_killed_with_what_it_started() {
    let rv = Runvm::new();
    let id = unique_id("hooks-timeout");
    let b = Bundle::busybox(&["true"]);
    // The id in its arguments: the leak check looks for processes that
    // name the container.
    b.edit(|c| {
        c["hooks"] = json!({"createRuntime": [{
            "path": "/bin/sh",
            "args": ["sh", "-c", "sleep 1000 & wait", &id],
            "timeout": 1
        }]})
    });
    let (c, out) = rv.create(&id, &b);
    assert_ne!(out.status.code(), Some(0));
    let err = b.output("err.txt");
    assert!(
        err.contains("error running hook #0: hook ran past specified timeout of 1.0s"),
        "{err}"
    );
    // Dropping the guard checks no process of the hook is left.
    drop(c);
}

#[test]
fn failing_poststart_and_poststop_hooks_warn_and_the_lifecycle_goes_on() {
    let rv = Runvm::new();
    let id = unique_id("hooks-post");
    let b = Bundle::busybox(&["sh", "-c", "echo up; exec sleep 1000"]);
    let dir = tempfile::tempdir().unwrap();
    let fail = |n: i32| json!({"path": "/bin/sh", "args": ["sh", "-c", format!("exit {n}")]});
    b.edit(|c| {
        c["hooks"] = json!({
            "poststart": [fail(4), recorder(dir.path(), "poststart")],
            "poststop": [fail(5), recorder(dir.path(), "poststop")]
        })
    });
    let (c, out) = rv.create(&id, &b);
    assert!(out.status.success(), "{}", b.output("err.txt"));
    // The warnings go to the log, as runc's do.
    let log = dir.path().join("runvm.log");
    let verb = |args: &[&str]| {
        let out = rv.cmd().arg("--log").arg(&log).args(args).output().unwrap();
        let said = fs::read_to_string(&log).unwrap_or_default();
        assert!(out.status.success(), "{args:?}: {:?}: {said}", out.status);
        said
    };
    let warned = verb(&["start", &id]);
    assert!(
        warned.contains("error running hook #0: error running hook: exit status 4"),
        "{warned}"
    );
    assert!(
        dir.path().join("poststart.json").exists(),
        "the next hook ran"
    );
    wait_for_output(&b, "out.txt", "up", BOOT);
    assert_eq!(rv.status(&id), "running");
    let warned = verb(&["delete", "--force", &id]);
    assert!(
        warned.contains("error running hook #0: error running hook: exit status 5"),
        "{warned}"
    );
    assert!(
        dir.path().join("poststop.json").exists(),
        "the next hook ran"
    );
    drop(c);
}

#[test]
fn create_container_and_start_container_hooks_in_the_rootfs_run_in_the_guest() {
    let rv = Runvm::new();
    let id = unique_id("hooks-guest");
    let b = Bundle::busybox(&["sh", "-c", "cat /created.json; cat /started.json; echo"]);
    b.edit(|c| c["root"]["readonly"] = json!(false));
    // createContainer runs before the container's root is entered: it finds
    // the rootfs as any hook does, from the bundle's config.json.
    let created = "read -r s; b=${s#*\\\"bundle\\\":\\\"}; b=${b%%\\\"*}; \
        root=$(sed 's/.*\"root\":{[^}]*\"path\":\"\\([^\"]*\\)\".*/\\1/' \"$b/config.json\"); \
        echo \"$s\" > \"$root/created.json\"";
    b.edit(|c| {
        c["hooks"] = json!({
            "createContainer": [
                {"path": "/bin/busybox", "args": ["sh", "-c", created]},
                {"path": "/usr/libexec/runvm-test-not-in-the-rootfs"}
            ],
            "startContainer": [
                {"path": "/bin/busybox", "args": ["sh", "-c", "cat > /started.json"]}
            ]
        })
    });
    let out = rv
        .cmd()
        .args(["run", "--bundle"])
        .arg(b.path())
        .arg(&id)
        .output()
        .unwrap();
    let _guard = rv.guard(&id, &b);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let states: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}\n{stdout}")))
        .collect();
    assert_eq!(states.len(), 2, "{stdout}");
    // youki's state, in the guest's terms.
    for state in &states {
        assert_eq!(state["id"], id.as_str(), "{state}");
        assert!(state["bundle"].is_string(), "{state}");
    }
}

#[test]
fn start_returns_once_the_init_has_run_the_start_container_hook_and_execd() {
    // The hook takes a second; runc's start may return before it has run.
    // runvm's returns once the container's process is exec'd, so the file
    // the hook wrote (in the shared rootfs) is there when start returns.
    let rv = Runvm::new();
    let id = unique_id("hooks-exec");
    let b = Bundle::busybox(&["sleep", "1000"]);
    b.edit(|c| {
        c["root"]["readonly"] = json!(false);
        c["hooks"] = json!({
            "startContainer": [
                {"path": "/bin/busybox", "args": ["sh", "-c", "sleep 1; touch /hook-ran"]}
            ]
        })
    });
    let (_guard, out) = rv.create(&id, &b);
    assert!(out.status.success(), "{}", b.output("err.txt"));
    assert!(!b.rootfs().join("hook-ran").exists());
    let out = rv.cmd().args(["start", &id]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        b.rootfs().join("hook-ran").exists(),
        "start returned before the hook ran"
    );
    assert_eq!(rv.state(&id)["status"], "running");
}
