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

import bench_checkpoint
import bench_net
from bundles import make_bundle


# How long a started /bin/true may take to be seen stopped.
STOP_DEADLINE_S = 120


def status(cmd, cid, env):
    out = subprocess.run(cmd + ["state", cid], capture_output=True, text=True, env=env)
    return json.loads(out.stdout)["status"] if out.returncode == 0 else None


def check_boot(root, cid, boot):
    """Abort unless runvm's state.json says the VM came up as `boot`."""
    if boot is None:
        return
    with open(os.path.join(root, cid, "state.json")) as f:
        got = json.load(f).get("boot")
    if got not in boot.split("|"):
        sys.exit(f"bench: {cid} booted {got!r}, not {boot!r}: the figures would be wrong "
                 "(runvm factory status, and the shim's log, say why)")


def cycle(cmd, env, bundle, cid, root, boot=None):
    """One create/start/wait/delete; returns phase durations in ms. `boot`:
    how a runvm VM must have come up ("cold", "template", "pool", or
    alternatives as "pool|template")."""
    t0 = time.monotonic()
    subprocess.run(cmd + ["create", "--bundle", bundle, cid], check=True, env=env,
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    t1 = time.monotonic()
    check_boot(root, cid, boot)  # not timed
    t1s = time.monotonic()
    subprocess.run(cmd + ["start", cid], check=True, env=env)
    t2 = time.monotonic()
    deadline = t2 + STOP_DEADLINE_S
    while status(cmd, cid, env) != "stopped":
        if time.monotonic() > deadline:
            subprocess.run(cmd + ["delete", "--force", cid], capture_output=True, env=env)
            sys.exit(f"bench: {cid} not stopped {STOP_DEADLINE_S} s after start")
        time.sleep(0.002)
    t3 = time.monotonic()
    subprocess.run(cmd + ["delete", cid], check=True, env=env)
    t4 = time.monotonic()
    t = {"create": (t1 - t0) * 1e3, "start": (t2 - t1s) * 1e3,
         "until_stopped": (t3 - t2) * 1e3, "delete": (t4 - t3) * 1e3}
    t["total"] = sum(t.values())
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
            m = re.search(r'msg="container created".*boot="(\w+)"', line)
            if m:
                out["boot"] = m.group(1)
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


def pss_kib(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def unmapped_guest_kib(pid):
    """Guest RAM the VMM's memory file holds but the VMM has not mapped. A
    clone's copy of the template memory is allocated on tmpfs by the copy,
    and PSS counts only the pages the guest touched since the restore; the
    rest is host memory all the same. (A cold VM's memfd gets pages only
    when they are touched through a mapping, so this is about 0 there.)"""
    extra = 0
    try:
        with open(f"/proc/{pid}/smaps") as f:
            lines = f.read().splitlines()
    except OSError:
        return 0
    vma, rss = None, {}
    for line in lines:
        fields = line.split()
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            start, end = (int(x, 16) for x in fields[0].split("-"))
            shared = "s" in fields[1]
            vma = fields[0] if shared and end - start >= 64 << 20 and len(fields) > 5 else None
        elif vma and fields[0] == "Rss:":
            rss[vma] = int(fields[1])
    for vma, rss_kib in rss.items():
        try:
            allocated = os.stat(f"/proc/{pid}/map_files/{vma}").st_blocks // 2
        except OSError:
            continue
        extra += max(0, allocated - rss_kib)
    return extra


def children(pid):
    out = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                stat = open(f"/proc/{p}/stat").read()
            except OSError:
                continue
            if int(stat[stat.rfind(")") + 2:].split()[1]) == pid:
                out.append(int(p))
    return out


def ppid(pid):
    stat = open(f"/proc/{pid}/stat").read()
    return int(stat[stat.rfind(")") + 2:].split()[1])


def pool_pss(pool_dir):
    """(n, mean PSS MiB, the same with the unmapped memory file) of the
    pool VMs waiting in pool_dir (member + QEMU), or None."""
    found = []
    for d in sorted(os.listdir(pool_dir)) if os.path.isdir(pool_dir) else []:
        path = os.path.join(pool_dir, d)
        if not os.path.exists(os.path.join(path, "claim.sock")):
            continue
        m = json.load(open(os.path.join(path, "member.json")))
        vmm = m["vmm"]["pid"]
        pss = pss_kib(m["member"]["pid"]) + pss_kib(vmm)
        found.append((pss / 1024, (pss + unmapped_guest_kib(vmm)) / 1024))
    if not found:
        return None
    return (len(found), statistics.mean(v for v, _ in found),
            statistics.mean(h for _, h in found))


def idle_pss(cmd, env, root, bundle, n, boot):
    """Start n idle containers; the mean PSS (MiB) of each one's shim, QEMU
    and virtiofsd processes, and the same plus the guest memory held in the
    VM's memory file but not mapped (see unmapped_guest_kib)."""
    ids = [f"idle-{i}" for i in range(n)]
    try:
        for cid in ids:
            subprocess.run(cmd + ["run", "-d", "--bundle", bundle, cid], check=True, env=env,
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
            check_boot(root, cid, boot)
        time.sleep(3)
        totals, held = [], []
        for cid in ids:
            st = json.load(open(os.path.join(root, cid, "state.json")))
            pids = [st[k]["pid"] for k in ("shim", "vmm", "virtiofsd") if st.get(k)]
            pids += children(st["virtiofsd"]["pid"]) if st.get("virtiofsd") else []
            # A pool VM's QEMU is the child of its pool member, which lives
            # as long as it does: its cost is the container's.
            if st.get("vmm"):
                parent = ppid(st["vmm"]["pid"])
                if parent not in pids and parent > 1:
                    pids.append(parent)
            pss = sum(pss_kib(p) for p in pids)
            totals.append(pss / 1024)
            unmapped = unmapped_guest_kib(st["vmm"]["pid"]) if st.get("vmm") else 0
            held.append((pss + unmapped) / 1024)
        return statistics.mean(totals), statistics.mean(held)
    finally:
        for cid in ids:
            subprocess.run(cmd + ["delete", "--force", cid], capture_output=True, env=env)


def wait_usable(runvm, env, timeout=300):
    """Wait for the background build a cold create started."""
    deadline = time.monotonic() + timeout
    while True:
        out = subprocess.run([runvm, "factory", "status"], capture_output=True, text=True, env=env)
        if out.returncode == 0 and json.loads(out.stdout).get("usable"):
            return
        if time.monotonic() > deadline:
            sys.exit(f"bench: no template {timeout} s after the first create: {out.stdout}")
        time.sleep(0.1)


def state_latency(cmd, env, bundle, cid, n):
    """Median ms of `state` of a running container, the verb alone."""
    subprocess.run(cmd + ["run", "--detach", "--bundle", bundle, cid], check=True, env=env,
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        times = []
        for _ in range(n):
            t0 = time.monotonic()
            subprocess.run(cmd + ["state", cid], check=True, env=env, stdout=subprocess.DEVNULL)
            times.append((time.monotonic() - t0) * 1000)
        return statistics.median(times)
    finally:
        subprocess.run(cmd + ["delete", "--force", cid], capture_output=True, env=env)


def first_output(cmd, env, bundle, cid, n):
    """Median ms from `start` returning to the container's first output
    reaching create's stdout (a pipe the container inherits): the time a
    signal sent at once may arrive before the process has run anything."""
    import select
    times = []
    for i in range(n):
        r, w = os.pipe()
        try:
            subprocess.run(cmd + ["create", "--bundle", bundle, f"{cid}-{i}"], check=True,
                           env=env, stdin=subprocess.DEVNULL, stdout=w)
            os.close(w)
            w = None
            subprocess.run(cmd + ["start", f"{cid}-{i}"], check=True, env=env)
            t0 = time.monotonic()
            if not select.select([r], [], [], STOP_DEADLINE_S)[0] or not os.read(r, 1):
                sys.exit(f"bench: {cid}-{i} printed nothing after start")
            times.append((time.monotonic() - t0) * 1000)
        finally:
            if w is not None:
                os.close(w)
            os.close(r)
            subprocess.run(cmd + ["delete", "--force", f"{cid}-{i}"], capture_output=True,
                           env=env)
    return statistics.median(times)


def parallel(cmd, env, bundle, prefix, root, boot, k=10):
    """Wall ms for k create+start+wait+delete cycles started at once."""
    from concurrent.futures import ThreadPoolExecutor
    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=k) as ex:
        list(ex.map(lambda i: cycle(cmd, env, bundle, f"{prefix}-{i}", root, boot), range(k)))
    return (time.monotonic() - t0) * 1000


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runvm", default="target/release/runvm")
    ap.add_argument("-n", type=int, default=10)
    ap.add_argument("--idle", type=int, default=10, help="idle containers for the PSS figures")
    ap.add_argument("--no-network", action="store_true", help="leave out the network rows")
    ap.add_argument("--json", default="target/bench.json", help="where the figures go as JSON")
    a = ap.parse_args()
    runvm = os.path.abspath(a.runvm)
    bundle = make_bundle(runvm, ["true"], "runvm-bench-")
    idle_bundle = make_bundle(runvm, ["sleep", "1000"], "runvm-bench-")
    echo_bundle = make_bundle(runvm, ["echo", "go"], "runvm-bench-")
    roots = {}
    # A template of the bench's own, on tmpfs, used by "runvm-template"
    # (clones restored by each create: no pool) and "runvm-pool" (the same
    # template with a warm pool of 2, filled by `factory init`).
    tpl_dir = tempfile.mkdtemp(prefix="runvm-bench-template-", dir="/dev/shm")
    tpl_config = os.path.join(tpl_dir, "config.toml")
    pool_config = os.path.join(tpl_dir, "pool.toml")
    for path, pool in ((tpl_config, 0), (pool_config, 2)):
        with open(path, "w") as f:
            f.write(f'[factory]\nenable_template = true\nauto_build = false\n'
                    f'pool_size = {pool}\ntemplate_path = "{tpl_dir}/template"\n')
    subprocess.run([runvm, "factory", "init"], check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "RUNVM_CONFIG": pool_config})
    # Every boot cold: templates off (the default is on).
    cold_config = os.path.join(tpl_dir, "cold.toml")
    with open(cold_config, "w") as f:
        f.write("[factory]\nenable_template = false\n")
    # The fallback kernel, cold: what runvm's own kernel saves.
    debian_config = os.path.join(tpl_dir, "debian.toml")
    kernel = os.path.join(os.path.dirname(os.path.dirname(runvm)), "share/runvm/vmlinux-debian")
    with open(debian_config, "w") as f:
        f.write(f'[hypervisor.qemu]\nkernel = "{kernel}"\n'
                f'initrd = "{os.path.join(os.path.dirname(kernel), "initramfs.img")}"\n'
                "[factory]\nenable_template = false\n")
    # What a user gets with nothing configured, but with a template of the
    # bench's own: the first create boots cold and builds it behind itself.
    default_config = os.path.join(tpl_dir, "default.toml")
    with open(default_config, "w") as f:
        f.write(f'[factory]\ntemplate_path = "{tpl_dir}/default"\n')
    default_env = {**os.environ, "RUNVM_CONFIG": default_config}
    first = subprocess.run([runvm, "run", "--bundle", bundle, "bench-first"], env=default_env,
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    if first.returncode != 0:
        sys.exit("bench: the first create with default settings failed")
    wait_usable(runvm, default_env)
    # name: (command, environment)
    runtimes = {"runvm": ([runvm], {**os.environ, "RUNVM_CONFIG": cold_config}),
                "runvm-template": ([runvm], {**os.environ, "RUNVM_CONFIG": tpl_config}),
                "runvm-pool": ([runvm], {**os.environ, "RUNVM_CONFIG": pool_config}),
                "runvm-default": ([runvm], default_env),
                "runvm-debian": ([runvm], {**os.environ, "RUNVM_CONFIG": debian_config})}
    # A pool VM is taken when one is ready; the refill behind a create may
    # not be done by the next one (then it restores a clone of its own).
    boots = {"runvm": "cold", "runvm-template": "template", "runvm-pool": "pool|template",
             "runvm-default": "pool|template", "runvm-debian": "cold"}
    for name in ("runc", "crun"):
        if shutil.which(name):
            runtimes[name] = ([name], None)
    if "crun" in runtimes and not hide_unified_cgroup():
        print("crun left out: cannot hide the hybrid cgroup mount", file=sys.stderr)
        del runtimes["crun"]
    results = {name: [] for name in runtimes}
    details = {}
    taken = {}
    try:
        for name in runtimes:
            roots[name] = tempfile.mkdtemp(prefix=f"bench-root-{name}-")
        for i in range(a.n):
            for name, (base, env) in runtimes.items():
                # Every runtime logs the same way (runc and crun take
                # --debug --log too), so none pays for logging the others
                # do not.
                log = os.path.join(roots[name], f"log-{i}.txt")
                cmd = base + ["--root", roots[name], "--debug", "--log", log]
                t = cycle(cmd, env, bundle, f"bench-{i}", roots[name], boots.get(name))
                results[name].append(t["total"])
                if name.startswith("runvm"):
                    t.update(shim_timings(log))
                    details.setdefault(name, []).append(t)
                    counts = taken.setdefault(name, {})
                    counts[t.get("boot", "?")] = counts.get(t.get("boot", "?"), 0) + 1
        par = {}
        lat = {}
        first = {}
        for name, (base, env) in runtimes.items():
            cmd = base + ["--root", roots[name]]
            if name != "runvm-debian":
                par[name] = parallel(cmd, env, bundle, "par", roots[name], boots.get(name))
            # The verb reads state.json and asks the shim: the same however
            # the VM came up.
            if name in ("runvm", "runc", "crun"):
                lat[name] = state_latency(cmd, env, idle_bundle, "lat", a.n)
            if name in ("runvm", "runvm-pool", "runc", "crun"):
                first[name] = first_output(cmd, env, echo_bundle, "first", a.n)
        pss = {}
        for name in ("runvm", "runvm-template", "runvm-pool"):
            base, env = runtimes[name]
            pss[name] = idle_pss(base + ["--root", roots[name]], env, roots[name],
                                 idle_bundle, a.idle, boots[name])
        waiting = pool_pss(os.path.join(tpl_dir, "template.pool"))
        network = None if a.no_network else bench_net.run(runvm, runtimes["runvm"][1], a.n)
        # Each image is the VM's memory: a few rounds are enough.
        checkpoints = bench_checkpoint.run(runvm, runtimes["runvm"][1], min(a.n, 3))
    finally:
        for d in list(roots.values()) + [bundle, idle_bundle, echo_bundle]:
            shutil.rmtree(d, ignore_errors=True)
        for config in (pool_config, default_config):
            subprocess.run([runvm, "factory", "destroy"], capture_output=True,
                           env={**os.environ, "RUNVM_CONFIG": config})
        shutil.rmtree(tpl_dir, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"create + start + wait until stopped + delete of /bin/true, median of {a.n}")
    for name, m in med.items():
        ratios = ""
        if name.startswith("runvm"):
            ratios = "   (" + ", ".join(
                f"{m / med[o]:.1f}x {o}" for o in ("runc", "crun", "runvm") if o in med and o != name
            ) + ")"
        print(f"  {name:15} {m:9.1f} ms{ratios}")
    rows = [
        ("create (runvm create, wall)", "create"),
        ("  QEMU launched, QMP ready", "vmm_launch_ms"),
        ("  boot or restore until the agent answers", "agent_ready_ms"),
        ("  container created in the guest", "created_ms"),
        ("start", "start"),
        ("run until stopped (seen by state)", "until_stopped"),
        ("delete", "delete"),
        ("  shim teardown (VM and virtiofsd stop)", "teardown_ms"),
    ]
    for name, ds in details.items():
        print(f"where {name}'s time goes (median ms; the shim's phases count from its start):")
        for label, key in rows:
            vals = [d[key] for d in ds if key in d]
            if vals:
                print(f"  {label:44} {statistics.median(vals):8.1f}")
    print(f"host memory per idle container (mean of {a.idle}): PSS of shim + QEMU + virtiofsd;")
    print("  and with the guest memory its memory file holds that QEMU has not mapped")
    for name, (v, held) in pss.items():
        print(f"  {name:15} {v:7.1f} MiB   {held:7.1f} MiB")
    if waiting:
        n, v, held = waiting
        print(f"  a waiting pool VM (mean of {n}: member + QEMU) {v:7.1f} MiB   {held:7.1f} MiB")
    for name, counts in taken.items():
        if name in ("runvm-pool", "runvm-default"):
            print(f"  {name}: how its {a.n} sequential creates came up: {counts}")

    def ratio_line(values, unit):
        for name, v in values.items():
            ratios = ""
            if name.startswith("runvm"):
                ratios = "   (" + ", ".join(f"{v / values[o]:.1f}x {o}"
                                           for o in ("runc", "crun") if o in values) + ")"
            print(f"  {name:15} {v:9.1f} {unit}{ratios}")
    print("10 create + start + wait + delete cycles at once, wall time")
    ratio_line(par, "ms")
    print(f"state of a running container, the verb alone, median of {a.n}")
    ratio_line(lat, "ms")
    print(f"start returned -> the container's first output on create's stdout, median of {a.n}")
    ratio_line(first, "ms")
    figures = {
        "load": os.getloadavg(),
        "cycle_median_ms": med,
        "parallel10_ms": par,
        "state_ms": lat,
        "start_to_first_output_ms": first,
        "idle_pss_mib": {k: {"pss": v, "with_unmapped_memory_file": h} for k, (v, h) in pss.items()},
        "waiting_pool_vm_pss_mib": waiting and {"pss": waiting[1],
                                                "with_unmapped_memory_file": waiting[2]},
        "boots": taken,
        "checkpoint": checkpoints[1],
    }
    with open(a.json, "w") as f:
        json.dump(figures, f, indent=2)
    print(f"figures written to {a.json}")
    if network:
        print(network)
    print(checkpoints[0])


if __name__ == "__main__":
    sys.exit(main())
