//! Running one case's bundle under runc and under runvm, and what each
//! container was seen to do.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use crate::common::{text, unique_id, Bundle, Runvm};

pub const RUNC: &str = "/usr/sbin/runc";
/// The namespace types whose host-side placement is compared.
pub const NS_TYPES: &[&str] = &["cgroup", "ipc", "mnt", "net", "pid", "uts"];

/// How a case is run.
#[derive(Clone, Copy, PartialEq)]
pub enum Mode {
    /// `run` in the foreground: the container prints and exits.
    Foreground,
    /// `create`, then `state`, and the state pid's namespaces looked at from
    /// the host, then `delete --force`.
    Created,
}

/// What one runtime's container showed.
#[derive(Default)]
pub struct Outcome {
    pub code: Option<i32>,
    pub stdout: String,
    /// The runtime's error, one line, with the bundle and id replaced.
    pub error: String,
    pub state: Option<Value>,
    /// Per namespace type: whether the state pid's differs from ours.
    pub ns_differs: BTreeMap<String, bool>,
}

impl Outcome {
    /// The output a probe printed after its `@@label` marker.
    pub fn probe(&self, label: &str) -> String {
        let marker = format!("@@{label}");
        let mut lines = self.stdout.lines().skip_while(|l| *l != marker);
        if lines.next().is_none() {
            return format!("not run: {}", self.failure());
        }
        lines
            .take_while(|l| !l.starts_with("@@"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// How a failed run or create ended: its exit code and its error.
    pub fn failure(&self) -> String {
        match self.code {
            Some(0) => "exit 0".into(),
            Some(c) => format!("exit {c}: {}", self.error),
            None => format!("killed: {}", self.error),
        }
    }
}

/// The line of the runtime's error: runc logs it as `msg="..."`, runvm as
/// a plain line; both name the bundle and the id, which vary, and runc puts
/// its own name and verb first ("runc run failed: "), which runvm does not.
fn error_line(stderr: &str, bundle: &Path, id: &str) -> String {
    let line = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    let msg = match line.split_once("msg=\"") {
        Some((_, rest)) => rest.strip_suffix('"').unwrap_or(rest).replace("\\\"", "\""),
        None => line.to_string(),
    };
    let msg = ["run", "create"]
        .iter()
        .find_map(|verb| msg.strip_prefix(&format!("runc {verb} failed: ")))
        .map(str::to_string)
        .unwrap_or(msg);
    msg.replace(&bundle.display().to_string(), "<bundle>")
        .replace(id, "<id>")
}

fn own_ns(kind: &str) -> String {
    fs::read_link(format!("/proc/self/ns/{kind}"))
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

fn ns_of(pid: i64) -> BTreeMap<String, bool> {
    NS_TYPES
        .iter()
        .map(|kind| {
            let theirs = fs::read_link(format!("/proc/{pid}/ns/{kind}"))
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            (kind.to_string(), theirs != own_ns(kind))
        })
        .collect()
}

fn outcome(out: Output, bundle: &Bundle, id: &str) -> Outcome {
    Outcome {
        code: out.status.code(),
        // runc's mount table names the bundle, a new temporary directory.
        stdout: text(&out.stdout).replace(&bundle.path().display().to_string(), "<bundle>"),
        error: error_line(&text(&out.stderr), bundle.path(), id),
        ..Default::default()
    }
}

/// The state fields both runtimes keep alike; the pid as present or not.
/// Not ociVersion: the spec version each was built with (runc 1.1.5 says
/// 1.0.2-dev, runvm 1.0.2).
fn state_fields(state: Value, bundle: &Bundle) -> Value {
    let mut kept = serde_json::Map::new();
    for key in ["status", "annotations"] {
        kept.insert(key.into(), state[key].clone());
    }
    // Each runtime has a bundle of its own.
    let theirs = state["bundle"].clone();
    let ours = bundle.path().to_str().map(Value::from);
    let shown = if Some(&theirs) == ours.as_ref() {
        "<bundle>".into()
    } else {
        theirs
    };
    kept.insert("bundle".into(), shown);
    kept.insert("pid".into(), Value::Bool(state["pid"].as_i64().is_some()));
    Value::Object(kept)
}

/// runc with a state root of its own; deletes its container when dropped.
struct Runc {
    root: tempfile::TempDir,
    id: String,
}

impl Runc {
    fn cmd(&self) -> Command {
        let mut c = Command::new(RUNC);
        c.arg("--root").arg(self.root.path());
        c.stdin(Stdio::null());
        c
    }
}

impl Drop for Runc {
    fn drop(&mut self) {
        let _ = self
            .cmd()
            .args(["delete", "--force", &self.id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

pub fn under_runc(bundle: &Bundle, mode: Mode) -> Outcome {
    let runc = Runc {
        root: tempfile::tempdir().unwrap(),
        id: unique_id("conf-runc"),
    };
    let b = bundle.path().to_str().unwrap();
    match mode {
        Mode::Foreground => {
            let out = runc
                .cmd()
                .args(["run", "--bundle", b, &runc.id])
                .output()
                .unwrap();
            outcome(out, bundle, &runc.id)
        }
        Mode::Created => {
            // The container keeps runc's stdio, so they cannot be pipes
            // read to EOF: files, as runvm's create gets.
            let err = bundle.path().join("err.txt");
            let out = runc
                .cmd()
                .args(["create", "--bundle", b, &runc.id])
                .stdout(Stdio::null())
                .stderr(fs::File::create(&err).unwrap())
                .output()
                .unwrap();
            let mut o = Outcome {
                code: out.status.code(),
                error: error_line(&bundle.output("err.txt"), bundle.path(), &runc.id),
                ..Default::default()
            };
            if o.code == Some(0) {
                let state = runc.cmd().args(["state", &runc.id]).output().unwrap();
                let state: Value = serde_json::from_slice(&state.stdout).unwrap();
                o.ns_differs = ns_of(state["pid"].as_i64().unwrap_or(0));
                o.state = Some(state_fields(state, bundle));
            }
            o
        }
    }
}

pub fn under_runvm(bundle: &Bundle, mode: Mode) -> Outcome {
    let rv = Runvm::new();
    let id = unique_id("conf-runvm");
    match mode {
        Mode::Foreground => {
            let _guard = rv.guard(&id, bundle);
            let out = rv
                .cmd()
                .args(["run", "--bundle"])
                .arg(bundle.path())
                .arg(&id)
                .stdin(Stdio::null())
                .output()
                .unwrap();
            outcome(out, bundle, &id)
        }
        Mode::Created => {
            let (_guard, out) = rv.create(&id, bundle);
            let stderr = bundle.output("err.txt");
            let mut o = Outcome {
                code: out.status.code(),
                error: error_line(&stderr, bundle.path(), &id),
                ..Default::default()
            };
            if o.code == Some(0) {
                let state = rv.state(&id);
                o.ns_differs = ns_of(state["pid"].as_i64().unwrap_or(0));
                o.state = Some(state_fields(state, bundle));
            }
            o
        }
    }
}
