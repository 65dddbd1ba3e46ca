"""make bench's network rows: TCP throughput between a peer and a container
over a veth pair, runvm against runc in the same run, and what a NIC adds to
runvm's create.

The container's network namespace holds one end of a veth pair, a peer
namespace the other (both made here, on 10.216.0.0/24; nothing touches the
host's interfaces). The container runs busybox `nc`; the peer side is Python.
"""
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from bundles import make_bundle

SUBNET = "10.216.0"
PEER_IP, CONTAINER_IP = f"{SUBNET}.1", f"{SUBNET}.2"
MIB = 64
DEADLINE_S = 180


def ip(*args):
    subprocess.run(["ip", *args], check=True)


class VethPair:
    def __init__(self):
        tag = os.getpid()
        self.container, self.peer = f"rvb-c-{tag}", f"rvb-p-{tag}"
        ip("netns", "add", self.container)
        ip("netns", "add", self.peer)
        ip("-n", self.peer, "link", "add", "eth0", "type", "veth", "peer", "name", "ceth0",
           "netns", self.container)
        ip("-n", self.peer, "addr", "add", f"{PEER_IP}/24", "dev", "eth0")
        ip("-n", self.peer, "link", "set", "eth0", "up")
        ip("-n", self.container, "link", "set", "ceth0", "name", "eth0")
        ip("-n", self.container, "addr", "add", f"{CONTAINER_IP}/24", "dev", "eth0")
        ip("-n", self.container, "link", "set", "eth0", "up")

    def close(self):
        for ns in (self.container, self.peer):
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True)


# The peer's side, run with `ip netns exec`: send or receive MIB MiB, print
# the seconds from connect (or accept) to the other end's close.
SEND = """
import socket, sys, time
deadline = time.monotonic() + 120
while True:
    try:
        s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.05)
buf = b"x" * 65536
t = time.monotonic()
for _ in range(int(sys.argv[3]) * 16):
    s.sendall(buf)
s.shutdown(socket.SHUT_WR)
s.settimeout(120)
s.recv(1)
print(time.monotonic() - t)
"""
RECV = """
import socket, sys, time
l = socket.socket()
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("0.0.0.0", int(sys.argv[1])))
l.listen(1)
print("LISTENING", flush=True)
c, _ = l.accept()
t = time.monotonic()
n = 0
while True:
    b = c.recv(1 << 20)
    if not b:
        break
    n += len(b)
print(time.monotonic() - t, n, flush=True)
"""


def join(bundle, netns):
    path = os.path.join(bundle, "config.json")
    with open(path) as f:
        c = json.load(f)
    c["linux"]["namespaces"] = [n for n in c["linux"]["namespaces"] if n["type"] != "network"]
    c["linux"]["namespaces"].append({"type": "network", "path": f"/run/netns/{netns}"})
    with open(path, "w") as f:
        json.dump(c, f)


def throughput(cmd, env, net, bundle, cid):
    """(host -> container, container -> host) in Mbit/s."""
    subprocess.run(cmd + ["run", "-d", "--bundle", bundle, cid], check=True, env=env,
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        # In: the container's nc receives until the peer closes.
        out = subprocess.run(["ip", "netns", "exec", net.peer, sys.executable, "-c", SEND,
                              CONTAINER_IP, "5001", str(MIB)],
                             check=True, capture_output=True, text=True, timeout=DEADLINE_S)
        inbound = MIB * 8 / float(out.stdout.split()[0])
        # Out: an exec'd dd | nc sends to the peer's listener.
        recv = subprocess.Popen(["ip", "netns", "exec", net.peer, sys.executable, "-c", RECV,
                                 "5002"], stdout=subprocess.PIPE, text=True)
        assert recv.stdout.readline().strip() == "LISTENING"
        subprocess.run(cmd + ["exec", cid, "sh", "-c",
                              f"dd if=/dev/zero bs=65536 count={MIB * 16} 2>/dev/null"
                              f" | nc {PEER_IP} 5002"],
                       check=True, env=env, timeout=DEADLINE_S)
        secs, n = recv.stdout.readline().split()
        recv.wait(timeout=30)
        outbound = int(n) * 8 / 2**20 / float(secs)
        return inbound, outbound
    finally:
        subprocess.run(cmd + ["delete", "--force", cid], capture_output=True, env=env)


def create_ms(cmd, env, bundle, cid):
    t = time.monotonic()
    subprocess.run(cmd + ["create", "--bundle", bundle, cid], check=True, env=env,
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    ms = (time.monotonic() - t) * 1e3
    subprocess.run(cmd + ["delete", "--force", cid], check=True, env=env)
    return ms


def run(runvm, runvm_env, n):
    """Measure; returns the network rows as text."""
    net = VethPair()
    server = make_bundle(runvm, ["sh", "-c", "nc -l -p 5001 > /dev/null; sleep 1000"],
                         "runvm-bench-net-")
    join(server, net.container)
    nic = make_bundle(runvm, ["true"], "runvm-bench-net-")
    join(nic, net.container)
    lo = make_bundle(runvm, ["true"], "runvm-bench-net-")
    roots = {}
    try:
        runtimes = {"runvm": ([runvm], runvm_env)}
        if shutil.which("runc"):
            runtimes["runc"] = (["runc"], None)
        rates = {}
        for name, (base, env) in runtimes.items():
            roots[name] = tempfile.mkdtemp(prefix=f"bench-net-{name}-")
            cmd = base + ["--root", roots[name]]
            rates[name] = throughput(cmd, env, net, server, "bench-net")
        base, env = runtimes["runvm"]
        cmd = base + ["--root", roots["runvm"]]
        with_nic = [create_ms(cmd, env, nic, f"bench-nic-{i}") for i in range(n)]
        loopback = [create_ms(cmd, env, lo, f"bench-lo-{i}") for i in range(n)]
    finally:
        for d in list(roots.values()) + [server, nic, lo]:
            shutil.rmtree(d, ignore_errors=True)
        net.close()
    lines = [f"TCP throughput over a veth pair, {MIB} MiB each way (busybox nc in the container)"]
    for name, (inbound, outbound) in rates.items():
        ratio = ""
        if name == "runvm" and "runc" in rates:
            ratio = (f"   ({inbound / rates['runc'][0]:.2f}x, {outbound / rates['runc'][1]:.2f}x"
                     " runc)")
        lines.append(f"  {name:15} peer -> container {inbound:8.1f} Mbit/s, "
                     f"container -> peer {outbound:8.1f} Mbit/s{ratio}")
    a, b = statistics.median(with_nic), statistics.median(loopback)
    lines.append(f"runvm create with one NIC vs loopback only, median of {n}: "
                 f"{a:.1f} ms vs {b:.1f} ms ({a - b:+.1f} ms)")
    return "\n".join(lines)
