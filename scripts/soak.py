#!/usr/bin/env python3
"""make soak: many run/delete cycles, then parallel loops for a while.

Counts failures and leaks (processes of a container left behind, state
directories, mounts), and prints host memory and open fds before and after.
Not part of CI: under TCG it takes about twenty minutes.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

from bundles import make_bundle


def host_figures():
    mem = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":")
            mem[k] = int(v.split()[0])
    fds = sum(len(os.listdir(f"/proc/{p}/fd")) for p in os.listdir("/proc")
              if p.isdigit() and os.path.exists(f"/proc/{p}/fd")
              and _readable(f"/proc/{p}/fd"))
    return {"mem_available_mib": mem["MemAvailable"] // 1024,
            "mem_used_mib": (mem["MemTotal"] - mem["MemAvailable"]) // 1024,
            "open_fds": fds}


def _readable(path):
    try:
        os.listdir(path)
        return True
    except OSError:
        return False


def leaks(root, cid, bundle):
    found = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            cmd = open(f"/proc/{p}/cmdline", "rb").read().replace(b"\0", b" ").decode()
        except OSError:
            continue
        mine = (f"runvm-{cid}," in cmd                      # QEMU
                or cmd.endswith(f" {cid} ")                  # shim
                or f"{root}/{cid}/share" in cmd)             # virtiofsd
        if mine:
            found.append(f"process {p}: {cmd[:80]}")
    if os.path.exists(os.path.join(root, cid)):
        found.append("state dir")
    if root in open("/proc/self/mountinfo").read():
        found.append("mount")
    return found


def cycle(runvm, root, bundle, cid):
    out = subprocess.run([runvm, "--root", root, "run", "--bundle", bundle, cid],
                         capture_output=True, text=True, stdin=subprocess.DEVNULL)
    ok = out.returncode == 0 and out.stdout == "ok\n"
    if not ok:
        subprocess.run([runvm, "--root", root, "delete", "--force", cid], capture_output=True)
    time.sleep(0.2)
    return ok, leaks(root, cid, bundle), out.stderr.strip()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runvm", default="target/release/runvm")
    ap.add_argument("--sequential", type=int, default=200)
    ap.add_argument("--parallel", type=int, default=10)
    ap.add_argument("--minutes", type=float, default=5)
    a = ap.parse_args()
    runvm = os.path.abspath(a.runvm)
    root = tempfile.mkdtemp(prefix="runvm-soak-root-")
    bundle = make_bundle(runvm, ["sh", "-c", "echo ok"], "runvm-soak-")
    before = host_figures()
    failures, leaked, runs = [], [], 0
    t0 = time.monotonic()
    for i in range(a.sequential):
        ok, lk, err = cycle(runvm, root, bundle, f"seq-{i}")
        runs += 1
        if not ok:
            failures.append(f"seq-{i}: {err}")
        leaked += lk
    seq_secs = time.monotonic() - t0
    lock = threading.Lock()
    deadline = time.monotonic() + a.minutes * 60

    def loop(n):
        nonlocal runs
        i = 0
        while time.monotonic() < deadline:
            ok, lk, err = cycle(runvm, root, bundle, f"par-{n}-{i}")
            with lock:
                runs += 1
                if not ok:
                    failures.append(f"par-{n}-{i}: {err}")
                leaked.extend(lk)
            i += 1

    threads = [threading.Thread(target=loop, args=(n,)) for n in range(a.parallel)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    time.sleep(2)
    after = host_figures()
    print(f"runs: {runs} ({a.sequential} sequential in {seq_secs:.0f} s, then "
          f"{a.parallel} parallel loops for {a.minutes} min)")
    print(f"failures: {len(failures)}")
    for f in failures[:10]:
        print("  ", f)
    print(f"leaks: {len(leaked)}")
    for l in leaked[:10]:
        print("  ", l)
    print(f"host before: {before}")
    print(f"host after:  {after}")
    shutil.rmtree(bundle, ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)
    return 1 if failures or leaked else 0


if __name__ == "__main__":
    sys.exit(main())
