//! Podman, containerd and Docker run containers through runvm: the flows of
//! issue #4, with the clients installed from Debian's packages and started
//! by the tests with private state.

mod common;

use std::time::{Duration, Instant};

use common::clients::{assert_no_vm_of, trimmed, Containerd, Dockerd, Podman, IMAGE};
use common::{text, unique_id};

fn host_kernel() -> String {
    nix::sys::utsname::uname()
        .unwrap()
        .release()
        .to_string_lossy()
        .into_owned()
}

/// A command as a shell line, each word single-quoted.
fn shell_line(cmd: &std::process::Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|w| format!("'{}'", w.to_string_lossy().replace('\'', "'\\''")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Run `cmd` under a pty (util-linux `script`), as an interactive user would.
fn in_terminal(cmd: &str) -> String {
    let out = std::process::Command::new("script")
        .args(["-qec", cmd, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    text(&out.stdout)
}

const TRAP_TERM: &str = "trap 'exit 0' TERM; while :; do sleep 1; done";

#[test]
fn podman_runs_containers_in_vms() {
    let p = Podman::new().with_image();
    let out = p.podman(&["run", "--rm", "--network", "none", IMAGE, "echo", "hi"]);
    assert_eq!(text(&out.stdout), "hi\n", "{}", text(&out.stderr));
    let out = p.podman(&[
        "run",
        "--rm",
        "--network",
        "none",
        IMAGE,
        "sh",
        "-c",
        "exit 7",
    ]);
    assert_eq!(out.status.code(), Some(7));
    // runc's words, which podman maps to 127.
    let out = p.podman(&["run", "--rm", "--network", "none", IMAGE, "/no/such/binary"]);
    assert_eq!(out.status.code(), Some(127), "{}", text(&out.stderr));

    let out = p.podman(&[
        "run",
        "-d",
        "--network",
        "none",
        IMAGE,
        "sh",
        "-c",
        TRAP_TERM,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = trimmed(&out);
    let exec = p.podman(&["exec", &id, "echo", "in-vm"]);
    assert_eq!(text(&exec.stdout), "in-vm\n", "{}", text(&exec.stderr));
    let uname = p.podman(&["exec", &id, "uname", "-r"]);
    let guest = text(&uname.stdout);
    assert!(guest.contains("cloud-amd64"), "{guest}");
    assert_ne!(guest.trim(), host_kernel());
    let ps = p.podman(&["ps", "--format", "{{.ID}} {{.Status}}"]);
    assert!(text(&ps.stdout).contains(&id[..12]), "{}", text(&ps.stdout));
    assert!(p.podman(&["top", &id]).status.success());
    assert!(p.podman(&["pause", &id]).status.success());
    let state = p.podman(&["inspect", "--format", "{{.State.Status}}", &id]);
    assert_eq!(text(&state.stdout).trim(), "paused");
    assert!(p.podman(&["unpause", &id]).status.success());
    // SIGTERM reaches the process in the guest: stop ends well within its
    // timeout, without SIGKILL.
    let t = Instant::now();
    let stop = p.podman(&["stop", "-t", "20", &id]);
    assert!(stop.status.success(), "{}", text(&stop.stderr));
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "stop took {:?}",
        t.elapsed()
    );
    let code = p.podman(&["inspect", "--format", "{{.State.ExitCode}}", &id]);
    assert_eq!(text(&code.stdout).trim(), "0");
    assert!(p.podman(&["rm", "-f", &id]).status.success());
    assert_no_vm_of(&id);

    let out = p.podman(&["run", "-d", "--network", "none", IMAGE, "sleep", "1000"]);
    let id = trimmed(&out);
    assert!(p.podman(&["rm", "-f", &id]).status.success());
    assert_no_vm_of(&id);
}

#[test]
fn podman_run_it_uses_a_terminal() {
    let p = Podman::new().with_image();
    let mut cmd = p.cmd();
    cmd.args([
        "run",
        "-it",
        "--rm",
        "--network",
        "none",
        IMAGE,
        "sh",
        "-c",
        "tty; stty size; exit 3",
    ]);
    let line = format!("stty rows 33 cols 99; {}; echo rc=$?", shell_line(&cmd));
    let seen = in_terminal(&line);
    assert!(seen.contains("/dev/pts/0"), "{seen:?}");
    assert!(seen.contains("33 99"), "{seen:?}");
    assert!(seen.contains("rc=3"), "{seen:?}");
}

#[test]
fn containerd_runs_containers_in_vms() {
    let c = Containerd::start();
    let out = c.ctr(&[
        "images",
        "import",
        common::clients::image_archive().to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rt = ["--runc-binary", common::clients::runvm()];
    let id = unique_id("ctr");
    let out = c.ctr(&[&["run", "--rm"][..], &rt, &[IMAGE, &id, "echo", "hi"]].concat());
    assert_eq!(text(&out.stdout), "hi\n", "{}", text(&out.stderr));
    let out = c.ctr(
        &[
            &["run", "--rm"][..],
            &rt,
            &[IMAGE, &id, "sh", "-c", "exit 7"],
        ]
        .concat(),
    );
    assert_eq!(out.status.code(), Some(7));
    // The error runvm logs as JSON reaches ctr's stderr.
    let out = c.ctr(&[&["run", "--rm"][..], &rt, &[IMAGE, &id, "/no/such/binary"]].concat());
    assert_ne!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr)
            .contains("exec: \"/no/such/binary\": stat /no/such/binary: no such file or directory"),
        "{}",
        text(&out.stderr)
    );
    let _ = c.ctr(&["container", "delete", &id]);

    let out = c.ctr(
        &[
            &["run", "-d"][..],
            &rt,
            &[IMAGE, &id, "sh", "-c", TRAP_TERM],
        ]
        .concat(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let exec = c.ctr(&["task", "exec", "--exec-id", "x1", &id, "echo", "in-vm"]);
    assert_eq!(text(&exec.stdout), "in-vm\n", "{}", text(&exec.stderr));
    let exec = c.ctr(&["task", "exec", "--exec-id", "x2", &id, "sh", "-c", "exit 5"]);
    assert_eq!(exec.status.code(), Some(5));
    let ps = c.ctr(&["task", "ps", &id]);
    assert!(
        ps.status.success() && text(&ps.stdout).lines().count() >= 2,
        "{ps:?}"
    );
    assert!(c.ctr(&["task", "pause", &id]).status.success());
    assert!(text(&c.ctr(&["task", "ls"]).stdout).contains("PAUSED"));
    assert!(c.ctr(&["task", "resume", &id]).status.success());
    assert!(c.ctr(&["task", "kill", &id]).status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !text(&c.ctr(&["task", "ls"]).stdout).contains("STOPPED") {
        assert!(Instant::now() < deadline, "SIGTERM did not stop the task");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(c.ctr(&["task", "delete", &id]).status.success());
    assert!(c.ctr(&["container", "delete", &id]).status.success());
    assert_no_vm_of(&id);

    let mut cmd = c.ctr_cmd();
    cmd.args(["run", "-t", "--rm"]).args(rt).args([
        IMAGE,
        &format!("{id}-t"),
        "sh",
        "-c",
        "stty size; exit 3",
    ]);
    let line = format!("stty rows 30 cols 90; {}; echo rc=$?", shell_line(&cmd));
    let seen = in_terminal(&line);
    assert!(seen.contains("30 90"), "{seen:?}");
    assert!(seen.contains("rc=3"), "{seen:?}");
    assert_no_vm_of(&format!("{id}-t"));
}

#[test]
fn docker_runs_containers_in_vms() {
    let d = Dockerd::start();
    let out = d.docker(&[
        "load",
        "-i",
        common::clients::image_archive().to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let run = ["run", "--runtime", "runvm", "--network", "none"];
    let out = d.docker(&[&run[..], &["--rm", IMAGE, "echo", "hi"]].concat());
    assert_eq!(text(&out.stdout), "hi\n", "{}", text(&out.stderr));
    let out = d.docker(&[&run[..], &["--rm", IMAGE, "sh", "-c", "exit 7"]].concat());
    assert_eq!(out.status.code(), Some(7));

    let out = d.docker(&[&run[..], &["-d", IMAGE, "sh", "-c", TRAP_TERM]].concat());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = trimmed(&out);
    let exec = d.docker(&["exec", &id, "echo", "in-vm"]);
    assert_eq!(text(&exec.stdout), "in-vm\n", "{}", text(&exec.stderr));
    let uname = d.docker(&["exec", &id, "uname", "-r"]);
    assert_ne!(text(&uname.stdout).trim(), host_kernel());
    let exec = d.docker(&["exec", &id, "sh", "-c", "exit 5"]);
    assert_eq!(exec.status.code(), Some(5));
    let t = Instant::now();
    assert!(d.docker(&["stop", "-t", "20", &id]).status.success());
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "stop took {:?}",
        t.elapsed()
    );
    let code = d.docker(&["inspect", "-f", "{{.State.ExitCode}}", &id]);
    assert_eq!(text(&code.stdout).trim(), "0");
    assert!(d.docker(&["rm", &id]).status.success());
    assert_no_vm_of(&id);
}
