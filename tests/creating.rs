//! Verbs that arrive while `create` is still bringing the container up, as
//! they do from clients that give create runc's speed (a fixed second, then
//! `start`). A createRuntime hook that waits for a file the test makes holds
//! the create at a known point, so each verb surely arrives during it.

mod common;

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{text, unique_id, Bundle, Runvm};
use serde_json::json;

const T: Duration = Duration::from_secs(60);

/// A bundle whose create waits, in its createRuntime hook, until `go`
/// exists in `gate` (and says `waiting` there first); the hook fails after
/// the gate opens when `fail` is set. The id is in the hook's arguments, so
/// the leak check sees a hook left behind.
fn gated(args: &[&str], id: &str, gate: &Path, fail: bool) -> Bundle {
    let b = Bundle::busybox(args);
    let script = format!(
        "touch {g}/waiting; while [ ! -e {g}/go ]; do sleep 0.05; done; exit {code}",
        g = gate.display(),
        code = u8::from(fail)
    );
    b.edit(|c| {
        c["hooks"] = json!({"createRuntime": [{
            "path": "/bin/sh",
            "args": ["sh", "-c", script, id]
        }]})
    });
    b
}

fn wait_for_file(path: &Path) {
    let deadline = Instant::now() + T;
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `runvm create` in the background, its stdout and stderr pipes ours.
fn spawn_create(rv: &Runvm, id: &str, b: &Bundle) -> Child {
    rv.cmd()
        .args(["create", "--bundle"])
        .arg(b.path())
        .arg("--pid-file")
        .arg(b.path().join("shim.pid"))
        .arg(id)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Everything `create`'s stdout gets until it closes (the shim holds it
/// for the container's life), or a failure after `T`.
fn read_to_close(child: &mut Child) -> mpsc::Receiver<String> {
    let mut out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        let _ = tx.send(s);
    });
    rx
}

fn stderr_of(child: &mut Child) -> String {
    let mut s = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut s);
    s
}

/// `runvm --debug --log L <args>` in the background.
fn spawn_logged(rv: &Runvm, log: &Path, args: &[&str]) -> Child {
    rv.cmd()
        .arg("--debug")
        .arg("--log")
        .arg(log)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Wait until `log` says the verb is waiting for create.
fn wait_until_waiting(log: &Path) {
    let deadline = Instant::now() + T;
    while !fs::read_to_string(log)
        .unwrap_or_default()
        .contains("still being created")
    {
        assert!(
            Instant::now() < deadline,
            "the verb never waited for create"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Gate {
    dir: tempfile::TempDir,
}

impl Gate {
    fn new() -> Gate {
        Gate {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn path(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
    fn wait_closed(&self) {
        wait_for_file(&self.dir.path().join("waiting"));
    }
    fn open(&self) {
        fs::write(self.dir.path().join("go"), b"").unwrap();
    }
}

#[test]
fn start_during_create_waits_for_it_and_create_stdout_closes_when_the_container_exits() {
    let rv = Runvm::new();
    let id = unique_id("early-start");
    let gate = Gate::new();
    let b = gated(
        &["echo", "hello from the container"],
        &id,
        &gate.path(),
        false,
    );
    let mut c = rv.guard(&id, &b);
    let mut create = spawn_create(&rv, &id, &b);
    let out = read_to_close(&mut create);
    gate.wait_closed();
    // As runc's: a container being created says so, with its stand-in.
    let state = rv.state(&id);
    assert_eq!(state["status"], "creating", "{state}");
    let refused = rv.run(&["delete", &id]);
    assert_ne!(refused.status.code(), Some(0));
    assert!(
        text(&refused.stderr).contains("that is not stopped: creating"),
        "{}",
        text(&refused.stderr)
    );
    let log = b.path().join("start.log");
    let mut start = spawn_logged(&rv, &log, &["start", &id]);
    wait_until_waiting(&log);
    gate.open();
    let started = start.wait().unwrap();
    assert!(started.success(), "start: {}", stderr_of(&mut start));
    let created = create.wait().unwrap();
    assert!(created.success(), "create: {}", stderr_of(&mut create));
    c.shim_pid = fs::read_to_string(b.path().join("shim.pid"))
        .ok()
        .and_then(|s| s.parse().ok());
    let output = out.recv_timeout(T).expect("create's stdout never closed");
    assert_eq!(output, "hello from the container\n");
    assert_eq!(c.wait_shim(T), 0);
    assert_eq!(rv.status(&id), "stopped");
}

#[test]
fn start_waiting_for_a_create_that_fails_fails_too() {
    let rv = Runvm::new();
    let id = unique_id("early-start-fail");
    let gate = Gate::new();
    let b = gated(&["true"], &id, &gate.path(), true);
    let c = rv.guard(&id, &b);
    let mut create = spawn_create(&rv, &id, &b);
    gate.wait_closed();
    let log = b.path().join("start.log");
    let mut start = spawn_logged(&rv, &log, &["start", &id]);
    wait_until_waiting(&log);
    gate.open();
    assert_ne!(start.wait().unwrap().code(), Some(0));
    let err = stderr_of(&mut start);
    assert!(
        err.contains(&format!(
            "container {id} was not created: its create failed"
        )),
        "{err}"
    );
    assert_ne!(create.wait().unwrap().code(), Some(0));
    let err = stderr_of(&mut create);
    assert!(err.contains("error running hook #0"), "{err}");
    drop(c);
}

/// `verb` while create waits in its hook: the verb succeeds, create fails
/// saying `why`, and nothing is left (the guard checks: no process, hook
/// included, no state directory).
fn end_a_create_under_way(verb: &[&str], why: &str) {
    let rv = Runvm::new();
    let id = unique_id("early-end");
    let gate = Gate::new();
    let b = gated(&["true"], &id, &gate.path(), false);
    let c = rv.guard(&id, &b);
    let mut create = spawn_create(&rv, &id, &b);
    let out = read_to_close(&mut create);
    gate.wait_closed();
    let args: Vec<&str> = verb
        .iter()
        .map(|a| if *a == "ID" { id.as_str() } else { *a })
        .collect();
    let ended = rv.run(&args);
    assert!(ended.status.success(), "{args:?}: {}", text(&ended.stderr));
    assert_ne!(create.wait().unwrap().code(), Some(0));
    let err = stderr_of(&mut create);
    assert!(
        err.contains(&format!(
            "container {id} was {why} while it was being created"
        )),
        "{err}"
    );
    out.recv_timeout(T).expect("create's stdout never closed");
    let state = rv.run(&["state", &id]);
    assert!(
        text(&state.stderr).contains("does not exist"),
        "{}",
        text(&state.stderr)
    );
    // Dropping the guard checks that the hook went with the shim that ran
    // it (the id is in its arguments).
    drop(c);
}

#[test]
fn kill_during_create_ends_it_and_leaves_nothing() {
    end_a_create_under_way(&["kill", "ID", "KILL"], "killed");
}

#[test]
fn delete_force_during_create_ends_it_and_leaves_nothing() {
    end_a_create_under_way(&["delete", "--force", "ID"], "deleted");
}
