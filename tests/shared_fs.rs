//! `shared_fs = "none"`: the container's files reach the guest as a copy on
//! a disk image instead of over virtio-fs. Run cold and, with
//! RUNVM_TEST_TEMPLATE=1, as clones (the disk is hotplugged into them).

mod common;

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use common::{text, unique_id, wait_for_output, Bundle, Runvm};

const WAIT: Duration = Duration::from_secs(120);

fn copying(images: &Path) -> Runvm {
    Runvm::with_config(&format!(
        "[hypervisor.qemu]\nshared_fs = \"none\"\ndisk_image_dir = \"{}\"\ndisk_image_free_mib = 64\n",
        images.display()
    ))
}

fn names_in(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The files QEMU `pid` has open whose name was removed.
fn deleted_files_open(pid: i32) -> Vec<String> {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| fs::read_link(e.path()).ok())
        .map(|p| p.display().to_string())
        .filter(|p| p.ends_with(" (deleted)"))
        .collect()
}

#[test]
fn a_container_runs_on_a_copy_of_its_files_and_nothing_flows_either_way() {
    let images = tempfile::Builder::new()
        .prefix("runvm-disks-")
        .tempdir()
        .unwrap();
    let rv = copying(images.path());
    let b = Bundle::busybox(&[
        "sh",
        "-c",
        "cat /data/hello; cat /etc/greeting; ls -ln /owned; ls -l /bin/link; \
         echo from-container > /data/new; \
         (echo x > /etc/greeting) 2>/dev/null && echo greeting-rw || echo greeting-ro; \
         grep ' / ' /proc/mounts; \
         trap 'exit 3' TERM; echo ready; while true; do sleep 0.2; done",
    ]);
    // A rootfs file with an owner and mode of its own, and a symlink.
    let owned = b.rootfs().join("owned");
    fs::write(&owned, "x").unwrap();
    nix::unistd::chown(&owned, Some(1234.into()), Some(5678.into())).unwrap();
    fs::set_permissions(&owned, fs::Permissions::from_mode(0o640)).unwrap();
    symlink("busybox", b.rootfs().join("bin/link")).unwrap();
    // A volume (a directory, read-write) and a read-only file.
    let host = tempfile::Builder::new()
        .prefix("runvm-volume-")
        .tempdir()
        .unwrap();
    let data = host.path().join("data");
    fs::create_dir(&data).unwrap();
    fs::write(data.join("hello"), "hello from the host\n").unwrap();
    let greeting = host.path().join("greeting");
    fs::write(&greeting, "greetings\n").unwrap();
    b.edit(|c| {
        let mounts = c["mounts"].as_array_mut().unwrap();
        mounts.push(serde_json::json!({
            "destination": "/data", "type": "bind",
            "source": data, "options": ["rbind", "rw"]}));
        mounts.push(serde_json::json!({
            "destination": "/etc/greeting", "type": "bind",
            "source": greeting, "options": ["bind", "ro"]}));
    });
    let id = unique_id("sfs-copy");
    let mut c = rv.run_detached(&id, &b);
    wait_for_output(&b, "out.txt", "ready", WAIT);
    let out = b.output("out.txt");
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("hello from the host"), "{out}");
    assert_eq!(lines.next(), Some("greetings"), "{out}");
    let owned_line = lines.next().unwrap_or_default();
    assert!(
        owned_line.starts_with("-rw-r----- ")
            && owned_line.contains(" 1234 ")
            && owned_line.contains(" 5678 "),
        "{out}"
    );
    assert!(
        lines
            .next()
            .unwrap_or_default()
            .ends_with("/bin/link -> busybox"),
        "{out}"
    );
    assert_eq!(lines.next(), Some("greeting-ro"), "{out}");
    // The container's root is the disk's ext4, not virtio-fs.
    let root = lines.next().unwrap_or_default();
    assert!(
        root.starts_with("/dev/vd") && root.contains(" / ext4 "),
        "{out}"
    );

    // No virtiofsd serves it; QEMU holds the image, whose name is gone.
    let share = rv.root().join(&id).join("share").display().to_string();
    let virtiofsd: Vec<_> = common::processes_matching(&share)
        .into_iter()
        .filter(|(_, cmdline)| cmdline.contains("virtiofsd"))
        .collect();
    assert!(virtiofsd.is_empty(), "{virtiofsd:?}");
    assert_eq!(names_in(images.path()), Vec::<String>::new());
    let held = deleted_files_open(rv.vmm(&id).pid);
    let prefix = images.path().join(&id).display().to_string();
    assert!(
        held.iter()
            .any(|p| p.starts_with(&prefix) && p.contains(".img")),
        "QEMU has no deleted image of {prefix} open: {held:?}"
    );

    // What the container wrote stays in the guest; what the host writes
    // now does not reach it.
    assert!(!data.join("new").exists());
    fs::write(data.join("later"), "too late\n").unwrap();
    let out = rv.run(&["exec", &id, "cat", "/data/new"]);
    assert_eq!(
        text(&out.stdout),
        "from-container\n",
        "{}",
        text(&out.stderr)
    );
    let out = rv.run(&["exec", &id, "ls", "/data"]);
    assert_eq!(text(&out.stdout), "hello\nnew\n", "{}", text(&out.stderr));
    assert_eq!(
        fs::read_to_string(&greeting).unwrap(),
        "greetings\n",
        "the read-only file changed on the host"
    );

    let out = rv.run(&["kill", &id, "TERM"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(c.wait_shim(WAIT), 3);
    let out = rv.run(&["delete", &id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    drop(c);
    assert_eq!(names_in(images.path()), Vec::<String>::new());
}

#[test]
fn an_image_that_cannot_be_made_fails_create_with_why_and_leaves_nothing() {
    let rv = copying(Path::new("/proc/runvm-no-such-dir/disks"));
    let b = Bundle::busybox(&["true"]);
    let id = unique_id("sfs-bad");
    let (c, out) = rv.create(&id, &b);
    let err = b.output("err.txt");
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("make the disk image directory /proc/runvm-no-such-dir/disks"),
        "{err}"
    );
    // The guard's drop checks that nothing is left.
    drop(c);
}

/// Debian's cloud kernel, the documented fallback, has virtio-blk as a
/// module: the initramfs carries it. Cold only: the template has runvm's
/// kernel.
#[test]
fn debians_fallback_kernel_mounts_the_disk_too() {
    let images = tempfile::Builder::new()
        .prefix("runvm-disks-")
        .tempdir()
        .unwrap();
    let rv = Runvm::cold(&format!(
        "[hypervisor.qemu]\nshared_fs = \"none\"\ndisk_image_dir = \"{}\"\nkernel = \"{}\"\n",
        images.path().display(),
        common::debian_kernel().display()
    ));
    let b = Bundle::busybox(&["sh", "-c", "uname -r; grep ' / ' /proc/mounts"]);
    let id = unique_id("sfs-debian");
    let _guard = rv.guard(&id, &b);
    let out = rv.run(&["run", "--bundle", &b.path().display().to_string(), &id]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    let mut lines = stdout.lines();
    assert!(
        lines.next().unwrap_or_default().ends_with("-cloud-amd64"),
        "{stdout}"
    );
    let root = lines.next().unwrap_or_default();
    assert!(
        root.starts_with("/dev/vd") && root.contains(" / ext4 "),
        "{stdout}"
    );
    assert_eq!(names_in(images.path()), Vec::<String>::new());
}
