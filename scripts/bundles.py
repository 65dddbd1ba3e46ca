"""Busybox bundles for the benchmark and soak scripts."""
import json
import os
import shutil
import subprocess
import tempfile


def make_bundle(runvm, args, prefix="runvm-bundle-"):
    """A bundle with a busybox rootfs and `runvm spec`'s config running args."""
    d = tempfile.mkdtemp(prefix=prefix)
    os.makedirs(f"{d}/rootfs/bin")
    shutil.copy("/bin/busybox", f"{d}/rootfs/bin/busybox")
    for applet in ("sh", "echo", "true", "sleep"):
        os.symlink("busybox", f"{d}/rootfs/bin/{applet}")
    subprocess.run([runvm, "spec", "--bundle", d], check=True)
    with open(f"{d}/config.json") as f:
        config = json.load(f)
    config["process"]["args"] = args
    with open(f"{d}/config.json", "w") as f:
        json.dump(config, f)
    return d
