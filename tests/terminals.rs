//! Terminals: a pty through a console socket for create and exec, window
//! sizes, runc's refusals, and `run` in the foreground on the caller's own
//! terminal; each end to end against a real VM.

mod common;

use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(60);

#[test]
fn exec_tty_through_a_console_socket_and_resizes() {
    let rv = Runvm::new();
    let b = Bundle::busybox(&["sleep", "1000"]);
    let (id, _c) = run_idle(&rv, "exectty", &b);
    let console = ConsoleReceiver::new();
    let pid_file = b.path().join("exec.pid");
    let out = rv.run(&[
        "exec",
        "--tty",
        "--detach",
        "--console-socket",
        console.path.to_str().unwrap(),
        "--pid-file",
        pid_file.to_str().unwrap(),
        &id,
        "sh",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let master = console.master();
    set_window_size(&master, 31, 97);
    nix::unistd::write(&master, b"stty size; tty\n").unwrap();
    let seen = read_until(&master, "/dev/pts/", T);
    assert!(seen.contains("31 97"), "{seen:?}");
    // A later resize reaches the guest too.
    set_window_size(&master, 50, 132);
    std::thread::sleep(Duration::from_millis(500));
    nix::unistd::write(&master, b"stty size; exit 3\n").unwrap();
    let seen = read_until(&master, "50 132", T);
    assert!(seen.contains("50 132"), "{seen:?}");
    let pid: i32 = std::fs::read_to_string(&pid_file).unwrap().parse().unwrap();
    assert_eq!(wait_pid(pid, T), Some(3));
}

#[test]
fn create_with_a_terminal_sends_the_master_to_the_console_socket() {
    let rv = Runvm::new();
    let b = Bundle::busybox(&["sh"]);
    b.edit(|c| c["process"]["terminal"] = true.into());
    let id = unique_id("createtty");
    let console = ConsoleReceiver::new();
    let out = rv.run(&[
        "create",
        "--bundle",
        b.path().to_str().unwrap(),
        "--console-socket",
        console.path.to_str().unwrap(),
        &id,
    ]);
    let _g = rv.guard(&id, &b);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let master = console.master();
    assert!(rv.run(&["start", &id]).status.success());
    set_window_size(&master, 37, 111);
    std::thread::sleep(Duration::from_millis(500));
    nix::unistd::write(&master, b"stty size; echo $((6*7))\n").unwrap();
    let seen = read_until(&master, "42", T);
    assert!(seen.contains("37 111"), "{seen:?}");
    nix::unistd::write(&master, b"exit 0\n").unwrap();
    rv.wait_status(&id, "stopped", T);
}

#[test]
fn a_console_socket_without_a_terminal_is_refused_as_by_runc() {
    let rv = Runvm::new();
    let b = Bundle::busybox(&["true"]);
    let id = unique_id("consolenotty");
    let console = ConsoleReceiver::new();
    for verb in [&["create"][..], &["run"], &["run", "-d"]] {
        let mut args = verb.to_vec();
        args.extend([
            "--bundle",
            b.path().to_str().unwrap(),
            "--console-socket",
            console.path.to_str().unwrap(),
            &id,
        ]);
        let out = rv.run(&args);
        assert_eq!(out.status.code(), Some(1), "{verb:?}");
        assert!(
            text(&out.stderr)
                .contains("cannot use console socket if runvm will not detach or allocate tty"),
            "{verb:?}: {}",
            text(&out.stderr)
        );
        assert_no_leaks(rv.root(), &id, b.path());
    }
}

#[test]
fn terminal_errors_leave_nothing() {
    let rv = Runvm::new();
    let b = Bundle::busybox(&["sh"]);
    b.edit(|c| c["process"]["terminal"] = true.into());
    let id = unique_id("ttyerr");
    let out = rv.run(&["create", "--bundle", b.path().to_str().unwrap(), &id]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr)
        .contains("cannot allocate tty if runvm will detach without setting console socket"));
    assert_no_leaks(rv.root(), &id, b.path());
    for socket in ["/nonexistent/console.sock", "/etc/hostname"] {
        let out = rv.run(&[
            "create",
            "--bundle",
            b.path().to_str().unwrap(),
            "--console-socket",
            socket,
            &id,
        ]);
        assert_eq!(out.status.code(), Some(1));
        assert!(
            text(&out.stderr).contains(&format!("console socket {socket}")),
            "{}",
            text(&out.stderr)
        );
        assert_no_leaks(rv.root(), &id, b.path());
    }
}

#[test]
fn run_in_the_foreground_uses_the_callers_terminal() {
    if which("script").is_none() {
        panic!("util-linux script is needed to give the test a terminal");
    }
    let rv = Runvm::new();
    let b = Bundle::busybox(&["sh", "-c", "stty size; tty; exit 4"]);
    b.edit(|c| c["process"]["terminal"] = true.into());
    let id = unique_id("runtty");
    let _g = rv.guard(&id, &b);
    // With the test's configuration (script's shell would otherwise run
    // runvm with the host's, and build a template of the host's).
    let config = rv
        .config_path()
        .map(|p| format!("RUNVM_CONFIG={} ", p.display()))
        .unwrap_or_default();
    let inner = format!(
        "stty rows 40 cols 120; {config}{RUNVM} --root {} run --bundle {} {id}; echo rc=$?",
        rv.root().display(),
        b.path().display()
    );
    let out = std::process::Command::new("script")
        .args(["-qec", &inner, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let seen = text(&out.stdout);
    assert!(seen.contains("40 120"), "{seen:?}");
    assert!(seen.contains("/dev/pts/0"), "{seen:?}");
    assert!(seen.contains("rc=4"), "{seen:?}");
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}
