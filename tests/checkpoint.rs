//! `checkpoint` and `restore`: a running container saved with its whole VM
//! and brought back, with no CRIU (docs/checkpoint.md).

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use common::netns::{VethPair, CONTAINER_IP};
use common::*;

const BOOT: Duration = Duration::from_secs(120);

/// Counts in a tmpfs of the container's, printing each number, after
/// writing a file into its rootfs.
fn counter() -> Bundle {
    let b = Bundle::busybox(&[
        "sh",
        "-c",
        "echo before > /in-rootfs; i=0; while :; do i=$((i+1)); echo $i > /tmp/n; echo tick $i; sleep 0.2; done",
    ]);
    b.edit(|c| {
        c["root"]["readonly"] = false.into();
        c["mounts"].as_array_mut().unwrap().push(serde_json::json!({
            "destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
            "options": ["nosuid", "size=1m"]
        }));
    });
    b
}

/// The numbers of the `tick N` lines of an output, in order.
fn ticks(output: &str) -> Vec<u64> {
    output
        .lines()
        .filter_map(|l| l.strip_prefix("tick ")?.trim().parse().ok())
        .collect()
}

fn exec(rv: &Runvm, id: &str, cmd: &str) -> String {
    let out = rv.run(&["exec", id, "sh", "-c", cmd]);
    assert!(out.status.success(), "exec {cmd}: {}", text(&out.stderr));
    text(&out.stdout)
}

fn checkpoint(rv: &Runvm, id: &str, image: &Path, leave_running: bool) {
    let mut args = vec!["checkpoint", "--image-path", image.to_str().unwrap()];
    if leave_running {
        args.push("--leave-running");
    }
    args.push(id);
    let out = rv.run(&args);
    assert!(out.status.success(), "checkpoint: {}", text(&out.stderr));
}

/// Start `b` under `id` and wait until it has counted to 3.
fn counting<'a>(rv: &'a Runvm, id: &str, b: &Bundle) -> Container<'a> {
    let (c, out) = rv.create(id, b);
    assert!(out.status.success(), "create: {}", b.output("err.txt"));
    let out = rv.run(&["start", id]);
    assert!(out.status.success(), "start: {}", text(&out.stderr));
    wait_for_output(b, "out.txt", "tick 3\n", BOOT);
    c
}

#[test]
fn a_restored_container_counts_on_from_where_it_was_checkpointed() {
    let rv = Runvm::new();
    let b = counter();
    let id = unique_id("ckpt-orig");
    let mut c = counting(&rv, &id, &b);
    let guest_pid = rv.raw_state(&id)["guestPid"].clone();
    let images = tempfile::tempdir().unwrap();
    let image = images.path().join("img");
    checkpoint(&rv, &id, &image, false);

    // As under runc: the container is stopped, its stand-in gone with
    // SIGKILL's code, and it can be deleted.
    assert_eq!(rv.status(&id), "stopped");
    assert_eq!(c.wait_shim(Duration::from_secs(30)), 137);
    let before = ticks(&b.output("out.txt"));
    let last = *before.last().expect("the original counted");
    let out = rv.run(&["delete", &id]);
    assert!(out.status.success(), "delete: {}", text(&out.stderr));
    // The image holds the container's memory: only root reads it.
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&image), 0o700);
    for f in ["vm.state", "runvm-checkpoint.json"] {
        assert_eq!(mode(&image.join(f)), 0o600, "{f}");
    }

    let id2 = unique_id("ckpt-back");
    let (_c2, out) = rv.restore(&id2, &b, &image);
    assert!(out.status.success(), "restore: {}", b.output("err.txt"));
    assert_eq!(rv.status(&id2), "running");
    assert_eq!(rv.raw_state(&id2)["boot"], "checkpoint");
    wait_for_output(&b, "out.txt", "tick", BOOT);
    let first = ticks(&b.output("out.txt"))[0];
    let want = last + 3;
    wait_for_output(&b, "out.txt", &format!("tick {want}\n"), BOOT);
    let after = ticks(&b.output("out.txt"));
    // It went on from its saved count, not from 1: the first number is the
    // next one, or one the original had printed as the checkpoint began.
    assert!(
        first > 1 && first <= last + 1,
        "the original stopped at {last}, the restored one began at {first}"
    );
    let counted: Vec<u64> = after.iter().copied().skip_while(|n| *n < first).collect();
    assert!(counted.windows(2).all(|w| w[1] == w[0] + 1), "{counted:?}");
    // Its tmpfs, its rootfs and its pid are as they were.
    let n: u64 = exec(&rv, &id2, "cat /tmp/n").trim().parse().unwrap();
    assert!(n >= want, "/tmp/n is {n}");
    assert_eq!(exec(&rv, &id2, "cat /in-rootfs"), "before\n");
    assert_eq!(rv.raw_state(&id2)["guestPid"], guest_pid);
    let ps = rv.run(&["ps", &id2]);
    let pid = format!(" {} ", guest_pid);
    assert!(
        text(&ps.stdout)
            .lines()
            .any(|l| l.contains(&pid) && l.contains("while")),
        "{}",
        text(&ps.stdout)
    );
    // The same image once more: a second container, on its own.
    let b3 = b.copy();
    let id3 = unique_id("ckpt-again");
    let (_c3, out) = rv.restore(&id3, &b3, &image);
    assert!(out.status.success(), "restore: {}", b3.output("err.txt"));
    wait_for_output(&b3, "out.txt", "tick", BOOT);
    assert_eq!(ticks(&b3.output("out.txt"))[0], first);
    exec(&rv, &id3, "touch /tmp/only-in-the-second");
    assert_eq!(exec(&rv, &id2, "ls /tmp"), "n\n");
}

#[test]
fn a_paused_container_is_restored_paused_and_resumes() {
    let rv = Runvm::new();
    let b = counter();
    let id = unique_id("ckpt-paused");
    let _c = counting(&rv, &id, &b);
    assert!(rv.run(&["pause", &id]).status.success());
    let images = tempfile::tempdir().unwrap();
    let image = images.path().join("img");
    checkpoint(&rv, &id, &image, false);
    let last = *ticks(&b.output("out.txt")).last().unwrap();
    let b2 = b.copy();
    let id2 = unique_id("ckpt-unpaused");
    let (_c2, out) = rv.restore(&id2, &b2, &image);
    assert!(out.status.success(), "restore: {}", b2.output("err.txt"));
    assert_eq!(rv.status(&id2), "paused");
    let out = rv.run(&["resume", &id2]);
    assert!(out.status.success(), "resume: {}", text(&out.stderr));
    assert_eq!(rv.status(&id2), "running");
    wait_for_output(&b2, "out.txt", &format!("tick {}\n", last + 2), BOOT);
}

#[test]
fn leave_running_keeps_the_original_and_the_restored_copy_is_another_container() {
    let rv = Runvm::new();
    let b = counter();
    let id = unique_id("ckpt-keep");
    let _c = counting(&rv, &id, &b);
    let images = tempfile::tempdir().unwrap();
    let image = images.path().join("img");
    checkpoint(&rv, &id, &image, true);
    assert_eq!(rv.status(&id), "running");
    let last = *ticks(&b.output("out.txt")).last().unwrap();
    // It goes on printing on the stdio it had.
    wait_for_output(&b, "out.txt", &format!("tick {}\n", last + 3), BOOT);

    // The copy, from another bundle with the same files.
    let b2 = b.copy();
    let id2 = unique_id("ckpt-copy");
    let (_c2, out) = rv.restore(&id2, &b2, &image);
    assert!(out.status.success(), "restore: {}", b2.output("err.txt"));
    wait_for_output(&b2, "out.txt", "tick", BOOT);
    assert!(ticks(&b2.output("out.txt"))[0] > 1);
    exec(&rv, &id2, "touch /tmp/only-in-the-copy");
    assert_eq!(exec(&rv, &id2, "ls /tmp"), "n\nonly-in-the-copy\n");
    assert_eq!(exec(&rv, &id, "ls /tmp"), "n\n");
    let out = rv.run(&["kill", &id2, "KILL"]);
    assert!(out.status.success(), "kill: {}", text(&out.stderr));
    rv.wait_status(&id2, "stopped", BOOT);
    let now = *ticks(&b.output("out.txt")).last().unwrap();
    wait_for_output(&b, "out.txt", &format!("tick {}\n", now + 2), BOOT);
    assert_eq!(rv.status(&id), "running");
}

#[test]
fn a_foreground_restore_relays_the_output_and_exits_with_the_containers_code() {
    let rv = Runvm::new();
    let b = Bundle::busybox(&[
        "sh",
        "-c",
        "i=0; while [ $i -lt 12 ]; do i=$((i+1)); echo tick $i; sleep 0.2; done; exit 7",
    ]);
    let id = unique_id("ckpt-fg");
    let (mut c, out) = rv.create(&id, &b);
    assert!(out.status.success(), "create: {}", b.output("err.txt"));
    assert!(rv.run(&["start", &id]).status.success());
    wait_for_output(&b, "out.txt", "tick 2\n", BOOT);
    let images = tempfile::tempdir().unwrap();
    let image = images.path().join("img");
    checkpoint(&rv, &id, &image, false);
    assert_eq!(c.wait_shim(Duration::from_secs(30)), 137);
    let last = *ticks(&b.output("out.txt")).last().unwrap();
    assert!(last < 12, "the original finished before its checkpoint");

    let id2 = unique_id("ckpt-fg-back");
    let _g = rv.guard(&id2, &b);
    let out = rv
        .cmd()
        .args([
            "restore",
            "--image-path",
            image.to_str().unwrap(),
            "--bundle",
        ])
        .arg(b.path())
        .arg(&id2)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7), "stderr: {}", text(&out.stderr));
    let after = ticks(&text(&out.stdout));
    assert_eq!(after.last(), Some(&12), "{after:?}");
    assert!(
        after[0] > 1 && after[0] <= last + 1,
        "{after:?} after {last}"
    );
    // As with run: the container is gone once it has stopped.
    assert!(!rv.run(&["state", &id2]).status.success());
}

/// Restoring `image` under a new id fails with `message`, and nothing of
/// that id is left.
fn refused(rv: &Runvm, b: &Bundle, image: &Path, message: &str) {
    let id = unique_id("ckpt-bad");
    let out = rv.run(&[
        "restore",
        "--detach",
        "--image-path",
        image.to_str().unwrap(),
        "--bundle",
        b.path().to_str().unwrap(),
        &id,
    ]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains(message), "wanted {message:?}: {err}");
    assert_no_leaks(rv.root(), &id, b.path());
}

#[test]
fn bad_images_and_checkpoints_of_containers_not_running_are_refused_leaving_nothing() {
    let rv = Runvm::new();
    let images = tempfile::tempdir().unwrap();

    // A created container has not run: nothing is saved, no directory made.
    let idle = Bundle::busybox(&["true"]);
    let id = unique_id("ckpt-created");
    let (_c, out) = rv.create(&id, &idle);
    assert!(out.status.success(), "create: {}", idle.output("err.txt"));
    let none = images.path().join("never");
    let out = rv.run(&["checkpoint", "--image-path", none.to_str().unwrap(), &id]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("container not running"),
        "{}",
        text(&out.stderr)
    );
    assert!(!none.exists());

    let b = counter();
    let id = unique_id("ckpt-src");
    let _c = counting(&rv, &id, &b);
    // Not while an exec runs (its stand-in could not follow the VM); the
    // image directory the checkpoint made goes again.
    let mut exec = rv
        .cmd()
        .args(["exec", &id, "sh", "-c", "echo in-exec; read x; true"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(exec.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line, "in-exec\n");
    let during = images.path().join("during-exec");
    let out = rv.run(&[
        "checkpoint",
        "--leave-running",
        "--image-path",
        during.to_str().unwrap(),
        &id,
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("with an exec session running is not supported"),
        "{}",
        text(&out.stderr)
    );
    assert!(!during.exists());
    // Its end ends the refusal.
    drop(exec.stdin.take());
    assert!(exec.wait().unwrap().success());
    assert_eq!(rv.status(&id), "running");

    let image = images.path().join("img");
    checkpoint(&rv, &id, &image, true);
    // A second checkpoint into the same image is refused; the first stays.
    let out = rv.run(&["checkpoint", "--image-path", image.to_str().unwrap(), &id]);
    assert!(
        text(&out.stderr).contains("is not empty"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(rv.status(&id), "running");

    // Restored over a copy: the original's bundle is in use.
    let b = b.copy();
    refused(
        &rv,
        &b,
        &images.path().join("missing"),
        "is not a runvm checkpoint image",
    );
    let variant = |name: &str, change: &dyn Fn(&Path)| {
        let dir = images.path().join(name);
        fs::create_dir(&dir).unwrap();
        for f in ["vm.state", "runvm-checkpoint.json"] {
            fs::copy(image.join(f), dir.join(f)).unwrap();
        }
        change(&dir);
        dir
    };
    let truncated = variant("truncated", &|d| {
        let f = fs::OpenOptions::new()
            .write(true)
            .open(d.join("vm.state"))
            .unwrap();
        f.set_len(f.metadata().unwrap().len() / 2).unwrap();
    });
    refused(&rv, &b, &truncated, "vm.state is damaged or truncated");
    let flipped = variant("flipped", &|d| {
        let mut data = fs::read(d.join("vm.state")).unwrap();
        let at = data.len() / 2;
        data[at] ^= 0xff;
        fs::write(d.join("vm.state"), data).unwrap();
    });
    refused(&rv, &b, &flipped, "its sha256 is not the one saved");
    let edit_meta = |d: &Path, f: &dyn Fn(&mut serde_json::Value)| {
        let path = d.join("runvm-checkpoint.json");
        let mut meta: serde_json::Value =
            serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        f(&mut meta);
        fs::write(&path, serde_json::to_vec(&meta).unwrap()).unwrap();
    };
    let foreign = variant("foreign", &|d| {
        edit_meta(d, &|m| m["runvmVersion"] = "0.0.1-elsewhere".into())
    });
    refused(&rv, &b, &foreign, "made by runvm 0.0.1-elsewhere");
    let other_qemu = variant("other-qemu", &|d| {
        edit_meta(d, &|m| {
            m["vmmInfo"]["qemuVersion"] = "QEMU emulator version 7.2.0".into()
        })
    });
    refused(&rv, &b, &other_qemu, "QEMU emulator version 7.2.0");
    let other_kernel = variant("other-kernel", &|d| {
        edit_meta(d, &|m| m["kernel"]["sha256"] = "0".repeat(64).into())
    });
    refused(&rv, &b, &other_kernel, "made by the guest kernel");
    // The original never noticed.
    assert_eq!(rv.status(&id), "running");
}

#[test]
fn a_shell_on_a_terminal_is_restored_onto_the_new_console_socket_with_its_variables() {
    let rv = Runvm::new();
    let b = Bundle::busybox(&["sh"]);
    b.edit(|c| c["process"]["terminal"] = true.into());
    let id = unique_id("ckpt-tty");
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
    // A variable of the shell's, which only its memory holds.
    nix::unistd::write(&master, b"secret=kept-in-memory; echo set-$((6*7))\n").unwrap();
    read_until(&master, "set-42", BOOT);
    let images = tempfile::tempdir().unwrap();
    let image = images.path().join("img");
    checkpoint(&rv, &id, &image, false);
    assert_eq!(rv.status(&id), "stopped");

    let id2 = unique_id("ckpt-tty-back");
    let console2 = ConsoleReceiver::new();
    let out = rv.run(&[
        "restore",
        "--detach",
        "--image-path",
        image.to_str().unwrap(),
        "--bundle",
        b.path().to_str().unwrap(),
        "--console-socket",
        console2.path.to_str().unwrap(),
        &id2,
    ]);
    let _g2 = rv.guard(&id2, &b);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let master2 = console2.master();
    nix::unistd::write(&master2, b"echo got-$secret; exit 5\n").unwrap();
    read_until(&master2, "got-kept-in-memory", BOOT);
    rv.wait_status(&id2, "stopped", BOOT);
    assert_eq!(rv.raw_state(&id2)["exitCode"], 5);
}

/// A TCP connection from the peer's namespace to a server in the container
/// lives through checkpoint and restore into the same network namespace:
/// the same server process answers on it afterwards.
#[test]
fn an_established_tcp_connection_survives_checkpoint_and_restore() {
    use std::io::{BufRead, BufReader, Write};
    let net = VethPair::new(1500);
    let rv = Runvm::new();
    let b = Bundle::busybox(&[
        "sh",
        "-c",
        "echo READY; exec nc -l -p 7780 -e sh -c 'echo pid:$$; while read l; do echo echo:$l; done'",
    ]);
    b.join_netns(&net.container.path());
    let id = unique_id("ckpt-tcp");
    let mut c = rv.run_detached(&id, &b);
    wait_for_output(&b, "out.txt", "READY", BOOT);
    // The client: connects (retrying until the server listens), prints
    // what it gets, and sends each line it reads from its stdin.
    let script = format!(
        "import socket, sys, time\n\
         deadline = time.time() + 60\n\
         while True:\n    try:\n        s = socket.create_connection(('{CONTAINER_IP}', 7780), timeout=5); break\n\
         \x20   except OSError:\n        if time.time() > deadline: raise\n        time.sleep(0.2)\n\
         s.settimeout(120)\nf = s.makefile('rw')\nprint(f.readline().strip(), flush=True)\n\
         for line in sys.stdin:\n    f.write(line); f.flush()\n    print(f.readline().strip(), flush=True)\n"
    );
    let mut client = std::process::Command::new("ip")
        .args(["netns", "exec", &net.peer.name, "python3", "-c", &script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut to = client.stdin.take().unwrap();
    let mut from = BufReader::new(client.stdout.take().unwrap());
    let mut line = String::new();
    let mut next = |from: &mut BufReader<_>| {
        line.clear();
        from.read_line(&mut line).unwrap();
        line.trim().to_string()
    };
    let pid = next(&mut from);
    assert!(pid.starts_with("pid:"), "{pid}");
    writeln!(to, "before").unwrap();
    assert_eq!(next(&mut from), "echo:before");

    let images = tempfile::tempdir().unwrap();
    let image = images.path().join("img");
    checkpoint(&rv, &id, &image, false);
    assert_eq!(c.wait_shim(Duration::from_secs(30)), 137);
    // Its tap went with its VM.
    assert!(!net.container.ip(&["-o", "link"]).contains("rvtap"));
    let id2 = unique_id("ckpt-tcp-back");
    let b2 = b.copy();
    let (_c2, out) = rv.restore(&id2, &b2, &image);
    assert!(out.status.success(), "restore: {}", b2.output("err.txt"));
    assert_eq!(
        rv.raw_state(&id2)["network"]["nics"][0]["mac"],
        net.mac.as_str()
    );
    writeln!(to, "after").unwrap();
    assert_eq!(next(&mut from), "echo:after");
    drop(to);
    let _ = client.wait();
    drop(_c2);
    drop(c);
    assert_eq!(net.leftovers(), Vec::<String>::new());
}

#[test]
fn a_restore_into_a_namespace_without_the_interfaces_is_refused_leaving_nothing() {
    let net = VethPair::new(1500);
    let rv = Runvm::new();
    let b = Bundle::busybox(&["sh", "-c", "echo READY; sleep 1000"]);
    b.join_netns(&net.container.path());
    let id = unique_id("ckpt-nic");
    let _c = rv.run_detached(&id, &b);
    wait_for_output(&b, "out.txt", "READY", BOOT);
    let images = tempfile::tempdir().unwrap();
    let image = images.path().join("img");
    checkpoint(&rv, &id, &image, true);
    // A copy whose spec asks for a new, empty network namespace.
    let b2 = b.copy();
    b2.edit(|c| {
        let ns = c["linux"]["namespaces"].as_array_mut().unwrap();
        ns.retain(|n| n["type"] != "network");
        ns.push(serde_json::json!({"type": "network"}));
    });
    refused(
        &rv,
        &b2,
        &image,
        &format!("had an interface with MAC {}", net.mac),
    );
}

/// With --leave-running the container's stdin goes on too: what the caller
/// writes after the checkpoint arrives, and so does its end.
#[test]
fn leave_running_keeps_relaying_stdin_to_its_end() {
    use std::io::Write;
    let rv = Runvm::new();
    let b = Bundle::busybox(&[
        "sh",
        "-c",
        "echo READY; while read l; do echo got:$l; done; echo eof",
    ]);
    let id = unique_id("ckpt-stdin");
    let mut create = rv
        .cmd()
        .args(["create", "--bundle"])
        .arg(b.path())
        .arg(&id)
        .stdin(std::process::Stdio::piped())
        .stdout(fs::File::create(b.path().join("out.txt")).unwrap())
        .stderr(fs::File::create(b.path().join("err.txt")).unwrap())
        .spawn()
        .unwrap();
    let mut stdin = create.stdin.take().unwrap();
    assert!(
        create.wait().unwrap().success(),
        "create: {}",
        b.output("err.txt")
    );
    let _g = rv.guard(&id, &b);
    assert!(rv.run(&["start", &id]).status.success());
    wait_for_output(&b, "out.txt", "READY\n", BOOT);
    writeln!(stdin, "one").unwrap();
    wait_for_output(&b, "out.txt", "got:one\n", BOOT);
    let images = tempfile::tempdir().unwrap();
    checkpoint(&rv, &id, &images.path().join("img"), true);
    writeln!(stdin, "two").unwrap();
    wait_for_output(&b, "out.txt", "got:two\n", BOOT);
    drop(stdin);
    wait_for_output(&b, "out.txt", "eof\n", BOOT);
    rv.wait_status(&id, "stopped", BOOT);
    assert_eq!(rv.raw_state(&id)["exitCode"], 0);
    assert_eq!(b.output("out.txt"), "READY\ngot:one\ngot:two\neof\n");
}

/// A container larger than the template: its clone got memory hotplugged
/// at create (a DIMM), which its restored VM has at boot; and it can grow
/// once more after the restore.
#[test]
fn a_grown_vm_is_restored_with_its_memory_and_grows_again() {
    let rv = Runvm::new();
    let b = counter();
    b.edit(|c| c["linux"]["resources"]["memory"] = serde_json::json!({"limit": 512u64 << 20}));
    let id = unique_id("ckpt-grown");
    let _c = counting(&rv, &id, &b);
    let mem = |id: &str| exec(&rv, id, "head -n1 /proc/meminfo");
    let before = mem(&id);
    let images = tempfile::tempdir().unwrap();
    let image = images.path().join("img");
    checkpoint(&rv, &id, &image, false);
    let b2 = b.copy();
    let id2 = unique_id("ckpt-regrown");
    let (_c2, out) = rv.restore(&id2, &b2, &image);
    assert!(out.status.success(), "restore: {}", b2.output("err.txt"));
    assert_eq!(mem(&id2), before);
    let out = rv.run(&["update", "--memory", &(900u64 << 20).to_string(), &id2]);
    assert!(out.status.success(), "update: {}", text(&out.stderr));
    let kib = |line: String| -> u64 { line.split_whitespace().nth(1).unwrap().parse().unwrap() };
    assert!(
        kib(mem(&id2)) > kib(before.clone()),
        "{} after {before}",
        mem(&id2)
    );
}
