"""make bench's checkpoint rows: how long `runvm checkpoint` and `runvm
restore` take and how large the image is, for an idle busybox container and
one holding 100 MiB of random data in a tmpfs (touched memory); and runc's
checkpoint of the idle one in the same run, which needs CRIU (its first error
is reported when it fails).
"""
import json
import os
import shutil
import subprocess
import tempfile
import time

from bundles import make_bundle

READY_TIMEOUT_S = 300


def touched_bundle(runvm):
    b = make_bundle(runvm, ["sh", "-c", "dd if=/dev/urandom of=/data/x bs=1M count=100 "
                            "2>/dev/null; echo READY; exec sleep 1000"], "runvm-bench-ckpt-")
    os.symlink("busybox", f"{b}/rootfs/bin/dd")
    with open(f"{b}/config.json") as f:
        config = json.load(f)
    config["mounts"].append({"destination": "/data", "type": "tmpfs", "source": "tmpfs",
                             "options": ["size=160m"]})
    config["linux"].setdefault("resources", {})["memory"] = {"limit": 512 << 20}
    with open(f"{b}/config.json", "w") as f:
        json.dump(config, f)
    return b


def wait_ready(path):
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            with open(path) as f:
                if "READY" in f.read():
                    return
        except FileNotFoundError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"bench: the container never printed READY into {path}")


def image_size(d):
    """(apparent MiB, MiB on disk) of an image directory."""
    apparent = used = 0
    for name in os.listdir(d):
        st = os.stat(os.path.join(d, name))
        apparent += st.st_size
        used += st.st_blocks * 512
    return apparent / 2**20, used / 2**20


def run_ready(cmd, env, bundle, cid):
    out = os.path.join(bundle, f"{cid}.out")
    with open(out, "w") as o:
        subprocess.run(cmd + ["run", "-d", "--bundle", bundle, cid], env=env, check=True,
                       stdin=subprocess.DEVNULL, stdout=o, stderr=subprocess.DEVNULL)
    wait_ready(out)


def one_round(cmd, env, bundle, cid, image):
    run_ready(cmd, env, bundle, cid)
    t0 = time.monotonic()
    subprocess.run(cmd + ["checkpoint", "--image-path", image, cid], env=env, check=True,
                   stdin=subprocess.DEVNULL)
    ckpt = (time.monotonic() - t0) * 1000
    size = image_size(image)
    subprocess.run(cmd + ["delete", "--force", cid], env=env, check=True)
    back = f"{cid}-back"
    t0 = time.monotonic()
    with open(os.path.join(bundle, f"{back}.out"), "w") as o:
        subprocess.run(cmd + ["restore", "--detach", "--image-path", image, "--bundle", bundle,
                              back], env=env, check=True, stdin=subprocess.DEVNULL, stdout=o,
                       stderr=subprocess.DEVNULL)
    restore = (time.monotonic() - t0) * 1000
    state = subprocess.run(cmd + ["state", back], env=env, capture_output=True, text=True)
    if json.loads(state.stdout or "{}").get("status") != "running":
        raise SystemExit(f"bench: the restored {back} is not running: {state.stderr}")
    subprocess.run(cmd + ["delete", "--force", back], env=env, check=True)
    shutil.rmtree(image)
    return ckpt, restore, size


def runc_checkpoint(bundle, root, image):
    """runc's checkpoint of the idle container: ms, or why it failed."""
    cmd = ["runc", "--root", root]
    with open(os.devnull, "w") as null:
        subprocess.run(cmd + ["run", "-d", "bench-ckpt-runc"], cwd=bundle, check=True,
                       stdin=subprocess.DEVNULL, stdout=null, stderr=null)
    try:
        t0 = time.monotonic()
        done = subprocess.run(cmd + ["checkpoint", "--image-path", image, "bench-ckpt-runc"],
                              capture_output=True, text=True)
        ms = (time.monotonic() - t0) * 1000
        if done.returncode == 0:
            return ms, None
        why = done.stderr.strip().splitlines()[-1:] or ["no message"]
        log = os.path.join(image, "dump.log")
        if os.path.exists(log):
            errors = [line.strip() for line in open(log) if "Error" in line]
            why = errors[:1] or why
        return None, why[0]
    finally:
        subprocess.run(cmd + ["delete", "--force", "bench-ckpt-runc"], capture_output=True)


def run(runvm, runvm_env, n):
    """Measure; returns (the rows as text, the figures)."""
    idle = make_bundle(runvm, ["sh", "-c", "echo READY; exec sleep 1000"], "runvm-bench-ckpt-")
    touched = touched_bundle(runvm)
    root = tempfile.mkdtemp(prefix="bench-ckpt-root-")
    images = tempfile.mkdtemp(prefix="bench-ckpt-images-")
    cmd = [runvm, "--root", root]
    figures = {}
    try:
        for name, bundle in (("idle", idle), ("100 MiB touched", touched)):
            rounds = [one_round(cmd, runvm_env, bundle, f"bench-ckpt-{i}",
                                os.path.join(images, f"img-{i}")) for i in range(n)]
            med = lambda xs: sorted(xs)[len(xs) // 2]
            figures[name] = {
                "checkpoint_ms": med([r[0] for r in rounds]),
                "restore_ms": med([r[1] for r in rounds]),
                "image_mib": med([r[2][0] for r in rounds]),
                "image_on_disk_mib": med([r[2][1] for r in rounds]),
            }
        runc = None
        if shutil.which("runc"):
            runc_root = tempfile.mkdtemp(prefix="bench-ckpt-runc-")
            try:
                runc = runc_checkpoint(idle, runc_root, os.path.join(images, "runc"))
            finally:
                shutil.rmtree(runc_root, ignore_errors=True)
    finally:
        for d in (idle, touched, root, images):
            shutil.rmtree(d, ignore_errors=True)
    lines = [f"checkpoint and restore (runvm, cold VMs of busybox; median of {n}):"
             " checkpoint = the verb, the container then stopped;"
             " restore = the verb, until the process runs again"]
    for name, f in figures.items():
        lines.append(f"  {name:16} checkpoint {f['checkpoint_ms']:8.1f} ms   restore "
                     f"{f['restore_ms']:8.1f} ms   image {f['image_mib']:7.1f} MiB "
                     f"({f['image_on_disk_mib']:.1f} MiB on disk)")
    if runc is None:
        lines.append("  runc: not installed")
    elif runc[0] is not None:
        ratio = figures["idle"]["checkpoint_ms"] / runc[0]
        lines.append(f"  runc checkpoint (CRIU) of the idle one: {runc[0]:.1f} ms "
                     f"(runvm {ratio:.1f}x)")
        figures["runc_checkpoint_ms"] = runc[0]
    else:
        lines.append(f"  runc checkpoint (CRIU) of the idle one failed: {runc[1]}")
        figures["runc_checkpoint_error"] = runc[1]
    return "\n".join(lines), figures
