//! Podman, containerd and Docker run containers through runvm: the flows of
//! issue #4, with the clients installed from Debian's packages and started
//! by the tests with private state.

mod common;
// The test binaries that speak CRI include it: the gRPC client stays out of
// `common`, which every test binary builds.
#[path = "common/cri.rs"]
mod cri;

use std::time::{Duration, Instant};

use common::clients::{
    assert_host_cgroup_gone, assert_no_leaks_of, assert_runs_in_vm, read_cid, trimmed, Containerd,
    Dockerd, Podman, IMAGE, PAUSE_IMAGE,
};
use common::{text, unique_id, GUEST_KERNEL};

fn host_kernel() -> String {
    nix::sys::utsname::uname()
        .unwrap()
        .release()
        .to_string_lossy()
        .into_owned()
}

/// A command as a shell line, each word single-quoted.
fn shell_line(cmd: &std::process::Command) -> String {
    let quote = |w: &std::ffi::OsStr| format!("'{}'", w.to_string_lossy().replace('\'', "'\\''"));
    // The environment the command was given (RUNVM_CONFIG, the client's
    // config), through env(1).
    let envs = cmd.get_envs().filter_map(|(k, v)| {
        v.map(|v| {
            let mut kv = k.to_os_string();
            kv.push("=");
            kv.push(v);
            quote(&kv)
        })
    });
    std::iter::once("env".to_string())
        .chain(envs)
        .chain(
            std::iter::once(cmd.get_program())
                .chain(cmd.get_args())
                .map(quote),
        )
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

/// Exits 42 on SIGTERM: that code shows the signal reached the process in
/// the guest and its handler ran (SIGKILL would give 137, dying of SIGTERM
/// 143), and ctr shows only a non-zero one. Once the trap is set it creates
/// [`TRAP_SET_FILE`] and prints [`TRAP_SET`]: a TERM sent before that would
/// kill the shell, so the tests wait for one of them first.
const TRAP_TERM: &str =
    "trap 'exit 42' TERM; touch /trap-set; echo trap-set; while :; do sleep 1; done";
/// The line [`TRAP_TERM`] prints once its trap is set.
const TRAP_SET: &str = "trap-set";
/// The file [`TRAP_TERM`] creates in the container once its trap is set,
/// for clients that keep no log (`ctr run -d`).
const TRAP_SET_FILE: &str = "/trap-set";

/// Wait until `trap_set` says the container's TERM trap is set; `what`
/// names the event in the failure message, with `trap_set`'s last words.
fn wait_for_trap(what: &str, mut trap_set: impl FnMut() -> Result<(), String>) {
    let timeout = Duration::from_secs(60);
    let deadline = Instant::now() + timeout;
    loop {
        let last = match trap_set() {
            Ok(()) => return,
            Err(last) => last,
        };
        assert!(
            Instant::now() < deadline,
            "the TERM trap was not set after {timeout:?} ({what}): {last}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Whether a client's `logs` output shows the [`TRAP_SET`] line; else what
/// it showed.
fn logs_show_trap_set(out: &std::process::Output) -> Result<(), String> {
    if text(&out.stdout).lines().any(|l| l == TRAP_SET) {
        Ok(())
    } else {
        Err(format!("{out:?}"))
    }
}

#[test]
fn podman_runs_containers_in_vms() {
    let p = Podman::new().with_image();
    let root = p.runtime_root();
    // `run --rm`, with the id from --cidfile for the leak check.
    let run_rm = |args: &[&str]| {
        let cid = p.cidfile();
        let run = ["run", "--rm", "--network", "none", "--cidfile"];
        let out = p.podman(&[&run[..], &[cid.to_str().unwrap(), IMAGE], args].concat());
        (out, read_cid(&cid))
    };
    let (out, id) = run_rm(&["echo", "hi"]);
    assert_eq!(text(&out.stdout), "hi\n", "{}", text(&out.stderr));
    assert_no_leaks_of(&root, &id);
    let (out, id) = run_rm(&["sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7));
    assert_no_leaks_of(&root, &id);
    // runc's words, which podman maps to 127 (not found) and 126 (found
    // but not executable).
    for (args, code) in [
        (["/no/such/binary"], 127),
        (["no-such-binary"], 127),
        (["/"], 126),
    ] {
        let (out, id) = run_rm(&args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert_no_leaks_of(&root, &id);
    }

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
    assert_runs_in_vm(&root, &id);
    let exec = p.podman(&["exec", &id, "echo", "in-vm"]);
    assert_eq!(text(&exec.stdout), "in-vm\n", "{}", text(&exec.stderr));
    let uname = p.podman(&["exec", &id, "uname", "-r"]);
    let guest = text(&uname.stdout);
    assert!(guest.contains(GUEST_KERNEL), "{guest}");
    assert_ne!(guest.trim(), host_kernel());
    let ps = p.podman(&["ps", "--format", "{{.ID}} {{.Status}}"]);
    assert!(text(&ps.stdout).contains(&id[..12]), "{}", text(&ps.stdout));
    assert!(p.podman(&["top", &id]).status.success());
    assert!(p.podman(&["pause", &id]).status.success());
    let state = p.podman(&["inspect", "--format", "{{.State.Status}}", &id]);
    assert_eq!(text(&state.stdout).trim(), "paused");
    assert!(p.podman(&["unpause", &id]).status.success());
    // SIGTERM reaches the process in the guest: its trap's code, not the
    // 137 of the SIGKILL that follows a timeout. The trap must be set first.
    wait_for_trap("podman logs", || {
        logs_show_trap_set(&p.podman(&["logs", &id]))
    });
    let stop = p.podman(&["stop", "-t", "20", &id]);
    assert!(stop.status.success(), "{}", text(&stop.stderr));
    let code = p.podman(&["inspect", "--format", "{{.State.ExitCode}}", &id]);
    assert_eq!(text(&code.stdout).trim(), "42");
    assert!(p.podman(&["rm", "-f", &id]).status.success());
    assert_no_leaks_of(&root, &id);

    // The VM is in the cgroup podman names for the container (cgroupfs,
    // cgroup v1), as runc's process would be, and leaves with it.
    let out = p.podman(&["run", "-d", "--network", "none", IMAGE, "sleep", "1000"]);
    let id = trimmed(&out);
    let cgroup = assert_runs_in_vm(&root, &id);
    assert_eq!(cgroup, format!("libpod_parent/libpod-{id}"));
    assert!(p.podman(&["rm", "-f", &id]).status.success());
    assert_no_leaks_of(&root, &id);
    assert_host_cgroup_gone(&cgroup);
}

#[test]
fn podman_run_it_uses_a_terminal() {
    let p = Podman::new().with_image();
    let cid = p.cidfile();
    let mut cmd = p.cmd();
    cmd.args(["run", "-it", "--rm", "--network", "none", "--cidfile"])
        .arg(&cid)
        .args([IMAGE, "sh", "-c", "tty; stty size; exit 3"]);
    let line = format!("stty rows 33 cols 99; {}; echo rc=$?", shell_line(&cmd));
    let seen = in_terminal(&line);
    assert!(seen.contains("/dev/pts/0"), "{seen:?}");
    assert!(seen.contains("33 99"), "{seen:?}");
    assert!(seen.contains("rc=3"), "{seen:?}");
    assert_no_leaks_of(&p.runtime_root(), &read_cid(&cid));
}

#[test]
fn containerd_runs_containers_in_vms() {
    let c = Containerd::start();
    let root = Containerd::runtime_root("default");
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
    assert_no_leaks_of(&root, &id);
    let out = c.ctr(
        &[
            &["run", "--rm"][..],
            &rt,
            &[IMAGE, &id, "sh", "-c", "exit 7"],
        ]
        .concat(),
    );
    assert_eq!(out.status.code(), Some(7));
    assert_no_leaks_of(&root, &id);
    // containerd puts the last error of the --log file runvm writes right
    // after "OCI runtime create failed: "; without that file it would show
    // runvm's exit status and stderr ("did not terminate successfully").
    let out = c.ctr(&[&["run", "--rm"][..], &rt, &[IMAGE, &id, "/no/such/binary"]].concat());
    assert_ne!(out.status.code(), Some(0));
    let stderr = text(&out.stderr);
    assert!(
        stderr.lines().any(|l| l
            == "ctr: failed to create shim task: OCI runtime create failed: \
                unable to start container process: exec: \"/no/such/binary\": stat /no/such/binary: no such file or directory: \
                unknown"),
        "{stderr}"
    );
    let _ = c.ctr(&["container", "delete", &id]);
    assert_no_leaks_of(&root, &id);

    // A cgroup in systemd's form, as kubelet's systemd driver gives: the VM
    // is in the scope it names (made by runvm: there is no systemd here).
    let scope = format!("runvmctr{}.slice:runvm:{id}", std::process::id());
    let out = c.ctr(
        &[
            &["run", "-d", "--cgroup", &scope][..],
            &rt,
            &[IMAGE, &id, "sh", "-c", TRAP_TERM],
        ]
        .concat(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let cgroup = assert_runs_in_vm(&root, &id);
    assert_eq!(
        cgroup,
        format!("runvmctr{}.slice/runvm-{id}.scope", std::process::id())
    );
    let exec = c.ctr(&["task", "exec", "--exec-id", "x1", &id, "echo", "in-vm"]);
    assert_eq!(
        text(&exec.stdout),
        "in-vm\n",
        "{exec:?}\ncontainerd:\n{}",
        c.log_tail()
    );
    let exec = c.ctr(&["task", "exec", "--exec-id", "x2", &id, "sh", "-c", "exit 5"]);
    assert_eq!(
        exec.status.code(),
        Some(5),
        "{exec:?}\ncontainerd:\n{}",
        c.log_tail()
    );
    let ps = c.ctr(&["task", "ps", &id]);
    assert!(
        ps.status.success() && text(&ps.stdout).lines().count() >= 2,
        "{ps:?}"
    );
    assert!(c.ctr(&["task", "pause", &id]).status.success());
    assert!(text(&c.ctr(&["task", "ls"]).stdout).contains("PAUSED"));
    assert!(c.ctr(&["task", "resume", &id]).status.success());
    // `ctr run -d` keeps no log: the trap's file shows it is set.
    let mut polls = 0;
    wait_for_trap("ctr task exec test -e", || {
        polls += 1;
        let exec_id = format!("trap{polls}");
        let test = ["task", "exec", "--exec-id", &exec_id, &id, "test", "-e"];
        let out = c.ctr(&[&test[..], &[TRAP_SET_FILE]].concat());
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("{out:?}"))
        }
    });
    assert!(c.ctr(&["task", "kill", &id]).status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !text(&c.ctr(&["task", "ls"]).stdout).contains("STOPPED") {
        assert!(Instant::now() < deadline, "SIGTERM did not stop the task");
        std::thread::sleep(Duration::from_millis(200));
    }
    // ctr reports the exit status when the task is deleted (a non-zero one
    // only): the TERM trap's 42.
    let delete = c.ctr(&["task", "delete", &id]);
    assert!(delete.status.success(), "{}", text(&delete.stderr));
    assert!(
        text(&delete.stderr).contains(&format!("task {id} exit with non-zero exit code 42")),
        "{}",
        text(&delete.stderr)
    );
    assert!(c.ctr(&["container", "delete", &id]).status.success());
    assert_no_leaks_of(&root, &id);
    assert_host_cgroup_gone(&cgroup);
    // The slice is left, as runc leaves a cgroup's parents.
    for dir in common::host_cgroup_dirs(cgroup.split('/').next().unwrap()) {
        let _ = std::fs::remove_dir(dir);
    }

    // ctr sizes the console only once start has returned, so the process
    // may start on a 0x0 terminal (under runc as well): it waits for the
    // size to arrive (busybox's stty exits 0 even on a 0x0 terminal, so
    // the size it prints is what is looked at; a minute at most, so that a
    // size that never comes fails the test), then shows it.
    let mut cmd = c.ctr_cmd();
    cmd.args(["run", "-t", "--rm"]).args(rt).args([
        IMAGE,
        &format!("{id}-t"),
        "sh",
        "-c",
        "i=0; while [ $i -lt 60 ]; do case \"$(stty size 2>/dev/null)\" in \
         [1-9]*' '[1-9]*) break;; esac; sleep 1; i=$((i+1)); done; stty size; exit 3",
    ]);
    let line = format!("stty rows 30 cols 90; {}; echo rc=$?", shell_line(&cmd));
    let seen = in_terminal(&line);
    assert!(seen.contains("30 90"), "{seen:?}");
    assert!(seen.contains("rc=3"), "{seen:?}");
    assert_no_leaks_of(&root, &format!("{id}-t"));
}

/// The configuration form: Kubernetes' way in. A CRI client (as the kubelet
/// is) asks containerd for a pod with runtime handler `runvm`, which
/// containerd's config maps to the runc.v2 shim with `BinaryName` = runvm.
#[test]
fn containerd_cri_runs_pods_with_the_runvm_handler() {
    let c = Containerd::with_cri_runtime();
    let root = Containerd::runtime_root("k8s.io");
    for archive in [
        common::clients::image_archive(),
        common::clients::pause_archive(),
    ] {
        let archive = archive.to_str().unwrap();
        let out = c.ctr(&["-n", "k8s.io", "images", "import", archive]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let mut api = cri::Cri::connect(&c.socket());
    let version = api
        .version()
        .unwrap_or_else(|e| panic!("{e}\n{}", c.log_tail()));
    assert_eq!(version.runtime_name, "containerd");
    assert_eq!(version.runtime_api_version, "v1");
    for image in [IMAGE, PAUSE_IMAGE] {
        api.wait_for_image(image, Duration::from_secs(30));
    }

    let logs = c.dir().join("pod-logs");
    let host_network = || cri::NamespaceOption {
        network: cri::NamespaceMode::Node as i32,
        ..Default::default()
    };
    let pod = cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: "uname".into(),
            uid: unique_id("pod"),
            namespace: "default".into(),
            attempt: 0,
        }),
        log_directory: logs.to_string_lossy().into_owned(),
        linux: Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(host_network()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let pod_id = api
        .run_pod(&pod, "runvm")
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", c.log_tail()));
    // The pod's sandbox runs in a VM of runvm's.
    assert_runs_in_vm(&root, &pod_id);

    // A busybox container of the pod running `script`, logging to `name`.log
    // in the pod's log directory; its id.
    let start = |api: &mut cri::Cri, name: &str, script: &str| {
        let config = cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: IMAGE.into(),
                ..Default::default()
            }),
            command: ["/bin/sh", "-c", script].map(String::from).into(),
            log_path: format!("{name}.log"),
            linux: Some(cri::LinuxContainerConfig {
                security_context: Some(cri::LinuxContainerSecurityContext {
                    namespace_options: Some(host_network()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let id = api
            .create_container(&pod_id, config, &pod)
            .unwrap_or_else(|e| panic!("CreateContainer: {e}\n{}", c.log_tail()));
        api.start_container(&id)
            .unwrap_or_else(|e| panic!("StartContainer: {e}\n{}", c.log_tail()));
        id
    };
    // What the container wrote, from the log containerd writes for the
    // kubelet, once it holds `line` (or anything, if `line` is empty).
    let output = |name: &str, line: &str| {
        let log = logs.join(format!("{name}.log"));
        let timeout = Duration::from_secs(60);
        let deadline = Instant::now() + timeout;
        loop {
            let lines = cri::log_lines(&std::fs::read_to_string(&log).unwrap_or_default());
            if !lines.is_empty() && (line.is_empty() || lines.iter().any(|l| l == line)) {
                return lines;
            }
            assert!(
                Instant::now() < deadline,
                "{} does not show {line:?} after {timeout:?}: {lines:?}",
                log.display()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };

    // A container that ends by itself: its exit code, and the guest's
    // kernel in its log.
    let done_id = start(&mut api, "exit7", "uname -r; exit 7");
    let status = api.wait_exited(&done_id, Duration::from_secs(60));
    assert_eq!(status.exit_code, 7, "{status:?}");
    let lines = output("exit7", "");
    assert!(lines[0].contains(GUEST_KERNEL), "{lines:?}");
    assert_ne!(lines[0], host_kernel());

    // A container that runs until stopped.
    let ctr_id = start(&mut api, "uname", &format!("uname -r; {TRAP_TERM}"));
    // Its log shows the trap is set: StopContainer's TERM may come.
    let lines = output("uname", TRAP_SET);
    assert!(lines[0].contains(GUEST_KERNEL), "{lines:?}");
    assert_ne!(lines[0], host_kernel());
    // The container has a VM of its own, not the sandbox's.
    let status = api.container_status(&ctr_id).unwrap();
    assert_eq!(status.state, cri::ContainerState::ContainerRunning as i32);
    assert_runs_in_vm(&root, &ctr_id);
    // It joins the sandbox's namespace by path, which is the host's: it
    // gets user-mode networking, and the host's interfaces are left alone.
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join(&ctr_id).join("state.json")).unwrap())
            .unwrap();
    assert_eq!(state["network"]["namespace"], "host", "{state}");
    // StopContainer's SIGTERM reaches the trap in the guest, and its exit
    // code comes back to the CRI client.
    api.stop_container(&ctr_id, 30)
        .unwrap_or_else(|e| panic!("StopContainer: {e}\n{}", c.log_tail()));
    let status = api.wait_exited(&ctr_id, Duration::from_secs(60));
    assert_eq!(status.exit_code, 42, "{status:?}");

    api.stop_pod(&pod_id)
        .unwrap_or_else(|e| panic!("StopPodSandbox: {e}\n{}", c.log_tail()));
    api.remove_pod(&pod_id)
        .unwrap_or_else(|e| panic!("RemovePodSandbox: {e}\n{}", c.log_tail()));
    assert_eq!(api.pods().unwrap(), Vec::<String>::new());
    for id in [&done_id, &ctr_id, &pod_id] {
        assert_no_leaks_of(&root, id);
    }
}

#[test]
fn docker_runs_containers_in_vms() {
    let d = Dockerd::start();
    let root = d.runtime_root();
    let out = d.docker(&[
        "load",
        "-i",
        common::clients::image_archive().to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let run = ["run", "--runtime", "runvm", "--network", "none"];
    // `run --rm`, with the id from --cidfile for the leak check.
    let run_rm = |args: &[&str]| {
        let cid = d.cidfile();
        let rm = ["--rm", "--cidfile", cid.to_str().unwrap(), IMAGE];
        let out = d.docker(&[&run[..], &rm, args].concat());
        (out, read_cid(&cid))
    };
    let (out, id) = run_rm(&["echo", "hi"]);
    assert_eq!(text(&out.stdout), "hi\n", "{}", text(&out.stderr));
    assert_no_leaks_of(&root, &id);
    let (out, id) = run_rm(&["sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7));
    assert_no_leaks_of(&root, &id);

    let out = d.docker(&[&run[..], &["-d", IMAGE, "sh", "-c", TRAP_TERM]].concat());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = trimmed(&out);
    let cgroup = assert_runs_in_vm(&root, &id);
    assert_eq!(cgroup, format!("docker/{id}"));
    let exec = d.docker(&["exec", &id, "echo", "in-vm"]);
    assert_eq!(text(&exec.stdout), "in-vm\n", "{}", text(&exec.stderr));
    let uname = d.docker(&["exec", &id, "uname", "-r"]);
    assert_ne!(text(&uname.stdout).trim(), host_kernel());
    let exec = d.docker(&["exec", &id, "sh", "-c", "exit 5"]);
    assert_eq!(exec.status.code(), Some(5));
    // SIGTERM reaches the process in the guest: its trap's code, not 137.
    // The trap must be set first.
    wait_for_trap("docker logs", || {
        logs_show_trap_set(&d.docker(&["logs", &id]))
    });
    assert!(d.docker(&["stop", "-t", "20", &id]).status.success());
    let code = d.docker(&["inspect", "-f", "{{.State.ExitCode}}", &id]);
    assert_eq!(text(&code.stdout).trim(), "42");
    assert!(d.docker(&["rm", &id]).status.success());
    assert_no_leaks_of(&root, &id);
    assert_host_cgroup_gone(&cgroup);
}

/// Podman drives runvm's checkpoint as it drives runc's (it asks the `criu`
/// binary for its version first: Debian's criu is installed for that, and
/// runvm never runs it), and exports the image. Its restore insists on a
/// CRIU file, `inventory.img`, which a VM checkpoint does not have and
/// runvm does not fake (docs/checkpoint.md): the image Podman saved is
/// restored with runvm itself.
#[test]
fn podman_checkpoints_and_exports_a_container_in_a_vm() {
    let p = Podman::new().with_image();
    let out = p.podman(&[
        "run",
        "-d",
        "--network",
        "none",
        IMAGE,
        "sh",
        "-c",
        "i=0; while :; do i=$((i+1)); echo tick $i; sleep 0.2; done",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = text(&out.stdout).trim().to_string();
    wait_for_trap("podman logs", || {
        let logs = text(&p.podman(&["logs", &id]).stdout);
        if logs.contains("tick 3\n") {
            Ok(())
        } else {
            Err(logs)
        }
    });
    let tar = tempfile::tempdir().unwrap();
    let export = tar.path().join("ckpt.tar.gz");
    let out = p.podman(&[
        "container",
        "checkpoint",
        "--compress",
        "gzip",
        "--export",
        export.to_str().unwrap(),
        &id,
    ]);
    assert!(out.status.success(), "checkpoint: {}", text(&out.stderr));
    let state = p.podman(&["inspect", "--format", "{{.State.Status}}", &id]);
    assert_eq!(text(&state.stdout).trim(), "exited");
    let listing = std::process::Command::new("tar")
        .arg("tzf")
        .arg(&export)
        .output()
        .unwrap();
    let listing = text(&listing.stdout);
    for f in [
        "checkpoint/runvm-checkpoint.json",
        "checkpoint/vm.state",
        "config.dump",
    ] {
        assert!(
            listing.lines().any(|l| l.ends_with(f)),
            "{f} not in {listing}"
        );
    }
    let out = p.podman(&["container", "restore", &id]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("inventory.img"),
        "{}",
        text(&out.stderr)
    );
    assert_no_leaks_of(&p.runtime_root(), &id);
    // An import of the exported tarball meets the same check.
    assert!(p.podman(&["rm", "-f", &id]).status.success());
    let out = p.podman(&["container", "restore", "--import", export.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("inventory.img"),
        "{}",
        text(&out.stderr)
    );
    assert_no_leaks_of(&p.runtime_root(), &id);
}
