//! Errors a user can reach, each with a clear message in runc's words where
//! runc has them, a non-zero exit, and nothing left behind.

mod common;

use common::*;

fn assert_fails_cleanly(rv: &Runvm, out: &std::process::Output, id: &str, b: &Bundle, want: &str) {
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = text(&out.stderr);
    assert!(err.contains(want), "{err:?} does not contain {want:?}");
    assert_no_leaks(rv.root(), id, b.path());
}

fn create(rv: &Runvm, id: &str, bundle: &std::path::Path) -> std::process::Output {
    rv.run(&["create", "--bundle", bundle.to_str().unwrap(), id])
}

#[test]
fn duplicate_id_is_refused_and_the_first_container_is_untouched() {
    let rv = Runvm::new();
    let b = Bundle::busybox(&["sleep", "1000"]);
    let id = unique_id("dup");
    let (_c, out) = rv.create(&id, &b);
    assert!(out.status.success(), "create: {}", b.output("err.txt"));
    let b2 = Bundle::busybox(&["true"]);
    let dup = create(&rv, &id, b2.path());
    assert_eq!(dup.status.code(), Some(1));
    assert!(text(&dup.stderr).contains("container with given ID already exists"));
    assert_eq!(rv.status(&id), "created");
}

#[test]
fn unknown_ids_do_not_exist() {
    let rv = Runvm::new();
    // `delete --force` too: runc says nothing and exits 0 there, but then
    // racing deletes could not tell which one removed the container.
    for verb in [
        &["state"][..],
        &["start"],
        &["kill"],
        &["delete"],
        &["delete", "--force"],
    ] {
        let mut args = verb.to_vec();
        args.push("no-such-container");
        let out = rv.run(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(
            text(&out.stderr).contains("container does not exist"),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
}

#[test]
fn invalid_ids_are_refused_before_anything_is_made() {
    let rv = Runvm::new();
    let b = Bundle::busybox(&["true"]);
    let long = "x".repeat(1024);
    for id in ["../escape", "a/b", "has space", "..", long.as_str()] {
        let out = create(&rv, id, b.path());
        assert_eq!(out.status.code(), Some(1), "{id}");
        assert!(
            text(&out.stderr).contains("invalid container ID format"),
            "{id}: {}",
            text(&out.stderr)
        );
        for verb in ["state", "delete", "kill", "start"] {
            let out = rv.run(&[verb, id]);
            assert!(
                text(&out.stderr).contains("invalid container ID format"),
                "{verb} {id}"
            );
        }
    }
    assert_eq!(std::fs::read_dir(rv.root()).unwrap().count(), 0);
    assert!(!rv.root().parent().unwrap().join("escape").exists());
}

#[test]
fn missing_bundle() {
    let rv = Runvm::new();
    let b = Bundle::busybox(&["true"]);
    let id = unique_id("nobundle");
    let out = create(&rv, &id, std::path::Path::new("/nonexistent/bundle"));
    assert_fails_cleanly(&rv, &out, &id, &b, "bundle /nonexistent/bundle");
}

#[test]
fn missing_config_json() {
    let rv = Runvm::new();
    let b = Bundle::busybox(&["true"]);
    std::fs::remove_file(b.path().join("config.json")).unwrap();
    let id = unique_id("noconfig");
    let out = create(&rv, &id, b.path());
    assert_fails_cleanly(
        &rv,
        &out,
        &id,
        &b,
        "JSON specification file config.json not found",
    );
}

#[test]
fn malformed_config_json() {
    let rv = Runvm::new();
    let b = Bundle::busybox(&["true"]);
    std::fs::write(b.path().join("config.json"), "{\"ociVersion\": ").unwrap();
    let id = unique_id("badjson");
    let out = create(&rv, &id, b.path());
    assert_fails_cleanly(&rv, &out, &id, &b, "parse ");
}

#[test]
fn wrong_types_in_config_json() {
    let rv = Runvm::new();
    let b = Bundle::busybox(&["true"]);
    b.edit(|c| c["process"]["args"] = "sh".into());
    let id = unique_id("wrongtype");
    let out = create(&rv, &id, b.path());
    assert_fails_cleanly(&rv, &out, &id, &b, "invalid type");
}

#[test]
fn config_without_process() {
    let rv = Runvm::new();
    let b = Bundle::busybox(&["true"]);
    b.edit(|c| {
        c.as_object_mut().unwrap().remove("process");
    });
    let id = unique_id("noprocess");
    let out = create(&rv, &id, b.path());
    assert_fails_cleanly(&rv, &out, &id, &b, "process property must not be empty");
}

#[test]
fn empty_args_and_relative_cwd() {
    let rv = Runvm::new();
    let b = Bundle::busybox(&[]);
    let id = unique_id("noargs");
    let out = create(&rv, &id, b.path());
    assert_fails_cleanly(&rv, &out, &id, &b, "args must not be empty");
    b.edit(|c| {
        c["process"]["args"] = serde_json::json!(["true"]);
        c["process"]["cwd"] = "relative".into();
    });
    let out = create(&rv, &id, b.path());
    assert_fails_cleanly(&rv, &out, &id, &b, "Cwd must be an absolute path");
}

#[test]
fn rootfs_missing() {
    let rv = Runvm::new();
    let b = Bundle::busybox(&["true"]);
    std::fs::remove_dir_all(b.rootfs()).unwrap();
    let id = unique_id("norootfs");
    let out = create(&rv, &id, b.path());
    assert_fails_cleanly(&rv, &out, &id, &b, "invalid rootfs: stat");
}

#[test]
fn a_missing_executable_fails_at_create_and_leaves_no_vm() {
    let rv = Runvm::new();
    let b = Bundle::busybox(&["/no/such/binary"]);
    let id = unique_id("noexe");
    let out = create(&rv, &id, b.path());
    assert_fails_cleanly(&rv, &out, &id, &b, "/no/such/binary");
}

#[test]
fn pid_file_in_a_missing_directory() {
    let rv = Runvm::new();
    let b = Bundle::busybox(&["true"]);
    let id = unique_id("pidfile");
    let out = rv.run(&[
        "create",
        "--bundle",
        b.path().to_str().unwrap(),
        "--pid-file",
        "/nonexistent/dir/pid",
        &id,
    ]);
    assert_fails_cleanly(
        &rv,
        &out,
        &id,
        &b,
        "pid file directory /nonexistent/dir does not exist",
    );
}

#[test]
fn json_log_ends_with_the_error_for_containerd() {
    let rv = Runvm::new();
    let log = tempfile::NamedTempFile::new().unwrap();
    let out = rv
        .cmd()
        .args([
            "--log",
            log.path().to_str().unwrap(),
            "--log-format",
            "json",
            "state",
            "nope",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = std::fs::read_to_string(log.path()).unwrap();
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["level"], "error");
    assert_eq!(last["msg"], "container does not exist");
}

#[test]
fn spec_writes_a_runc_like_config_once() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(RUNVM)
        .args(["spec", "--bundle", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let c: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).unwrap()).unwrap();
    assert_eq!(c["process"]["args"], serde_json::json!(["sh"]));
    assert_eq!(c["process"]["terminal"], false);
    assert_eq!(c["root"]["path"], "rootfs");
    let types: Vec<&str> = c["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["type"].as_str().unwrap())
        .collect();
    for ns in ["pid", "network", "ipc", "uts", "mount"] {
        assert!(types.contains(&ns), "{types:?}");
    }
    let again = std::process::Command::new(RUNVM)
        .args(["spec", "--bundle", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(1));
    assert!(text(&again.stderr).contains("File config.json exists. Remove it first"));
}

#[test]
fn version_and_the_checkpoint_verbs_on_nothing() {
    let out = std::process::Command::new(RUNVM)
        .arg("--version")
        .output()
        .unwrap();
    let v = text(&out.stdout);
    assert!(v.starts_with("runvm version "), "{v}");
    assert!(v.contains("\ncommit: "), "{v}");
    assert!(v.contains("\nspec: 1."), "{v}");
    // checkpoint and restore say what is wrong in runc's words, and make
    // no image directory for a container that is not there.
    let rv = Runvm::new();
    let img = tempfile::tempdir().unwrap();
    let image = img.path().join("img");
    let out = rv.run(&["checkpoint", "--image-path", image.to_str().unwrap(), "x"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("container does not exist"),
        "{}",
        text(&out.stderr)
    );
    assert!(!image.exists());
    let out = rv.run(&["restore", "--image-path", image.to_str().unwrap(), "x"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("is not a runvm checkpoint image"),
        "{}",
        text(&out.stderr)
    );
    assert!(!rv.root().join("x").exists());
}

fn check_with(config: Option<&std::path::Path>, args: &[&str]) -> std::process::Output {
    let mut cmd = std::process::Command::new(RUNVM);
    cmd.arg("check").args(args).env_remove("RUNVM_CONFIG");
    if let Some(c) = config {
        cmd.env("RUNVM_CONFIG", c);
    }
    cmd.output().unwrap()
}

#[test]
fn check_reports_the_accelerator_and_the_guest() {
    let out = check_with(None, &[]);
    let report = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{report}{}", text(&out.stderr));
    for item in [
        "qemu",
        "virtiofsd",
        "guest kernel",
        "guest initramfs",
        "accelerator",
        "QEMU's jail",
        "the shim's filter",
        "host cgroups",
    ] {
        assert!(
            report
                .lines()
                .any(|l| l.starts_with(&format!("✔ {item}: "))),
            "{item}:\n{report}"
        );
    }
    assert!(
        report.ends_with("runvm can run containers on this host\n"),
        "{report}"
    );
    // Where a container's VM goes when its spec names no cgroup: below
    // runvm's own, as runc puts a relative path.
    let default = common::default_host_cgroup("<id>");
    assert!(
        report.contains(&format!(
            "or /{default}; limits: the container's, plus 256 MiB"
        )),
        "{report}"
    );

    let out = check_with(None, &["--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(["kvm", "tcg"].contains(&v["accel"]["use"].as_str().unwrap()));
    assert!(!v["accel"]["reason"].as_str().unwrap().is_empty());
    for part in [
        "qemu",
        "virtiofsd",
        "kernel",
        "initrd",
        "jail",
        "shimSeccomp",
    ] {
        assert_eq!(v[part]["ok"], true, "{part}: {v}");
    }
    assert_eq!(v["jail"]["uidBase"], 2_000_000_000);
}

#[test]
fn check_fails_and_says_why_when_the_guest_kernel_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        "[runtime]\nshim_seccomp = false\n\n[hypervisor.qemu]\nkernel = \"/nonexistent/runvm/vmlinux\"\njail = false\n",
    )
    .unwrap();
    let out = check_with(Some(&config), &[]);
    let report = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(
        report.contains(&format!("✔ configuration: {}\n", config.display())),
        "{report}"
    );
    assert!(
        report.contains("✘ guest kernel: /nonexistent/runvm/vmlinux does not exist\n  to fix: "),
        "{report}"
    );
    assert!(
        report.contains("- QEMU's jail: off (jail = false): QEMU runs as root\n"),
        "{report}"
    );
    assert!(
        report.contains(
            "- the shim's filter: off (shim_seccomp = false): the shim runs without a filter of its own\n"
        ),
        "{report}"
    );
    assert!(
        report.ends_with("runvm cannot run containers on this host\n"),
        "{report}"
    );

    std::fs::write(&config, "[hypervisor.qemu]\nvcpu = 2\n").unwrap();
    let out = check_with(Some(&config), &["--format", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["config"]["ok"], false, "{v}");
    assert!(
        v["config"]["error"].as_str().unwrap().contains("vcpu"),
        "{v}"
    );
}

/// The verbs `runvm --help` lists (clap's own `help` aside).
fn listed_verbs(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| *l != "Commands:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .filter(|v| v != "help")
        .collect()
}

#[test]
fn every_verbs_help_is_runvms_own() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(RUNVM)
            .args(args)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            text(&out.stderr)
        );
        text(&out.stdout)
    };
    let top = run(&["--help"]);
    let mut verbs: Vec<Vec<String>> = listed_verbs(&top).into_iter().map(|v| vec![v]).collect();
    assert!(verbs.len() >= 20, "{top}");
    let mut walked = 0;
    while let Some(path) = verbs.pop() {
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        let help = run(&args);
        for bad in [
            "github.com",
            "Reference:",
            "introduced in runc",
            "rather then",
        ] {
            assert!(
                !help.contains(bad),
                "runvm {path:?} --help has {bad:?}:\n{help}"
            );
        }
        for sub in listed_verbs(&help) {
            let mut p = path.clone();
            p.push(sub);
            verbs.push(p);
        }
        walked += 1;
    }
    // The verbs and factory's three actions.
    assert!(walked >= 23, "{walked}");
    let create = run(&["create", "--help"]);
    assert!(
        create.contains("Create a container in a new VM"),
        "{create}"
    );
}

#[test]
fn completion_prints_each_shells_script() {
    for (shell, marker) in [
        ("bash", "complete -F _runvm"),
        ("zsh", "#compdef runvm"),
        ("fish", "complete -c runvm"),
    ] {
        let out = std::process::Command::new(RUNVM)
            .args(["completion", shell])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{shell}");
        let script = text(&out.stdout);
        assert!(script.contains(marker), "{shell}: {script}");
        assert!(script.contains("create"), "{shell}");
    }
    let out = std::process::Command::new(RUNVM)
        .args(["completion", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("invalid value 'tcsh'"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn env_shows_the_effective_configuration_and_where_each_value_came_from() {
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("config.toml");
    std::fs::write(&main, "[hypervisor.qemu]\ndefault_memory = 512\n").unwrap();
    std::fs::create_dir(dir.path().join("config.d")).unwrap();
    let dropin = dir.path().join("config.d/10-vcpus.toml");
    std::fs::write(
        &dropin,
        "[hypervisor.qemu]\ndefault_vcpus = 2\ndefault_memory = 384\n",
    )
    .unwrap();
    let env = |args: &[&str]| {
        std::process::Command::new(RUNVM)
            .env_remove("RUNVM_CONFIG")
            .arg("--config")
            .arg(&main)
            .args(args)
            .output()
            .unwrap()
    };
    let out = env(&["env"]);
    let shown = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        shown.contains(&format!(
            "#   {}\n#   {}\n",
            main.display(),
            dropin.display()
        )),
        "{shown}"
    );
    assert!(
        shown.contains(&format!("default_memory = 384 # {}\n", dropin.display())),
        "{shown}"
    );
    assert!(shown.contains("accel = \"auto\" # default\n"), "{shown}");
    // What it resolves to here, as check says.
    assert!(
        shown.contains("\n# On this host (runvm check):\n"),
        "{shown}"
    );
    assert!(shown.contains("\n# ✔ qemu: /"), "{shown}");

    let out = env(&["env", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["config"]["hypervisor"]["qemu"]["default_vcpus"], 2, "{v}");
    assert_eq!(v["host"]["qemu"]["ok"], true, "{v}");
    assert_eq!(
        v["sources"]["hypervisor.qemu.default_memory"],
        dropin.display().to_string()
    );

    // check names both files; a drop-in that does not parse fails it.
    let out = env(&["check"]);
    let report = text(&out.stdout);
    assert!(
        report.starts_with(&format!(
            "✔ configuration: {}, {}\n",
            main.display(),
            dropin.display()
        )),
        "{report}"
    );
    std::fs::write(
        dir.path().join("config.d/20-bad.toml"),
        "[factory]\npool = 1\n",
    )
    .unwrap();
    let out = env(&["check"]);
    let report = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(
        report.contains("20-bad.toml: TOML parse error at line 2"),
        "{report}"
    );
    let out = env(&["env"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("unknown field `pool`"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_file_of_the_old_layout_still_works_and_warns_with_the_new_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "[hypervisor]\nmemory_mib = 320\n").unwrap();
    let warning = format!(
        "config {}: [hypervisor] memory_mib is the old name of [hypervisor.qemu] default_memory: read as that (rename it)",
        config.display()
    );
    let out = check_with(Some(&config), &[]);
    let report = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{report}");
    assert!(
        report.contains(&format!("- configuration: warning: {warning}\n")),
        "{report}"
    );
    let out = std::process::Command::new(RUNVM)
        .env("RUNVM_CONFIG", &config)
        .args(["env"])
        .output()
        .unwrap();
    let shown = text(&out.stdout);
    assert!(
        shown.contains(&format!("default_memory = 320 # {}\n", config.display())),
        "{shown}"
    );
    // A verb says it too, in its log.
    let root = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(RUNVM)
        .env("RUNVM_CONFIG", &config)
        .arg("--root")
        .arg(root.path())
        .arg("list")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains(&warning),
        "{}",
        text(&out.stderr)
    );
}
