#!/usr/bin/env python3
"""make bench: the cost of one container, runvm against runc and crun.

Each cycle is create + start + wait until stopped + delete of /bin/true in a
busybox rootfs. Prints medians and ratios from one run (never asserted), and
where runvm's time goes, from the timings its shim logs with --debug.
"""
import argparse
import ctypes
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time


def make_bundle(runvm, args):
    d = tempfile.mkdtemp(prefix="runvm-bench-")
    os.makedirs(f"{d}/rootfs/bin")
    shutil.copy("/bin/busybox", f"{d}/rootfs/bin/busybox")
    for a in ("sh", "true", "sleep"):
        os.symlink("busybox", f"{d}/rootfs/bin/{a}")
    subprocess.run([runvm, "spec", "--bundle", d], check=True)
    with open(f"{d}/config.json") as f:
        c = json.load(f)
    c["process"]["args"] = args
    with open(f"{d}/config.json", "w") as f:
        json.dump(c, f)
    return d


def status(cmd, cid):
    out = subprocess.run(cmd + ["state", cid], capture_output=True, text=True)
    return json.loads(out.stdout)["status"] if out.returncode == 0 else None


def cycle(cmd, bundle, cid, log=None):
    """One create/start/wait/delete; returns phase durations in ms."""
    t = {}
    t0 = time.monotonic()
    subprocess.run(cmd + ["create", "--bundle", bundle, cid], check=True,
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    t1 = time.monotonic()
    subprocess.run(cmd + ["start", cid], check=True)
    t2 = time.monotonic()
    while status(cmd, cid) != "stopped":
        time.sleep(0.002)
    t3 = time.monotonic()
    subprocess.run(cmd + ["delete", cid], check=True)
    t4 = time.monotonic()
    t["create"], t["start"] = (t1 - t0) * 1e3, (t2 - t1) * 1e3
    t["until_stopped"], t["delete"] = (t3 - t2) * 1e3, (t4 - t3) * 1e3
    t["total"] = (t4 - t0) * 1e3
    return t


def shim_timings(log_path):
    """The shim's own phase timings from its --debug log (text format)."""
    out = {}
    with open(log_path) as f:
        for line in f:
            for key in ("vmm_launch_ms", "agent_ready_ms", "created_ms", "teardown_ms"):
                m = re.search(key + r'="(\d+)"', line)
                if m:
                    out[key] = float(m.group(1))
    return out


def hide_unified_cgroup():
    """crun 1.8 refuses hybrid cgroups (v1 plus /sys/fs/cgroup/unified), which
    these hosts have. Run the whole benchmark in a private mount namespace
    without the unified mount, so crun sees plain v1 (runc and runvm do not
    mind either way)."""
    if not os.path.ismount("/sys/fs/cgroup/unified"):
        return True
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(0x00020000) != 0:  # CLONE_NEWNS
        return False
    subprocess.run(["mount", "--make-rprivate", "/"], check=True)
    return subprocess.run(["umount", "/sys/fs/cgroup/unified"]).returncode == 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runvm", default="target/release/runvm")
    ap.add_argument("-n", type=int, default=10)
    a = ap.parse_args()
    runvm = os.path.abspath(a.runvm)
    bundle = make_bundle(runvm, ["true"])
    roots = {}
    runtimes = {"runvm": [runvm]}
    for name in ("runc", "crun"):
        if shutil.which(name):
            runtimes[name] = [name]
    if "crun" in runtimes and not hide_unified_cgroup():
        print("crun left out: cannot hide the hybrid cgroup mount", file=sys.stderr)
        del runtimes["crun"]
    results = {name: [] for name in runtimes}
    details = []
    try:
        for name, base in runtimes.items():
            roots[name] = tempfile.mkdtemp(prefix=f"bench-root-{name}-")
        for i in range(a.n):
            for name, base in runtimes.items():
                cmd = base + ["--root", roots[name]]
                log = None
                if name == "runvm":
                    log = os.path.join(roots[name], f"log-{i}.txt")
                    cmd = cmd + ["--debug", "--log", log]
                t = cycle(cmd, bundle, f"bench-{i}")
                results[name].append(t["total"])
                if log:
                    t.update(shim_timings(log))
                    details.append(t)
    finally:
        for d in list(roots.values()) + [bundle]:
            shutil.rmtree(d, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"create + start + wait until stopped + delete of /bin/true, median of {a.n}")
    for name, m in med.items():
        ratios = ", ".join(f"{m / med[o]:.1f}x {o}" for o in med if o != name and name == "runvm")
        print(f"  {name:6} {m:9.1f} ms" + (f"   ({ratios})" if ratios else ""))
    print("where runvm's time goes (median ms):")
    dm = lambda k: statistics.median(d[k] for d in details if k in d)
    rows = [
        ("create (runvm create, wall)", "create"),
        ("  QEMU launched, QMP ready", "vmm_launch_ms"),
        ("  boot until the agent answers", "agent_ready_ms"),
        ("  container created in the guest", "created_ms"),
        ("start", "start"),
        ("run until stopped (seen by state)", "until_stopped"),
        ("delete", "delete"),
        ("  shim teardown (VM and virtiofsd stop)", "teardown_ms"),
    ]
    for label, key in rows:
        if any(key in d for d in details):
            print(f"  {label:40} {dm(key):8.1f}")
    print("(the shim's phases are cumulative from its start)")


if __name__ == "__main__":
    sys.exit(main())
