//! The container's network is the one its caller set up: the interfaces of
//! the network namespace the spec names, reached through the VM's NICs.

mod common;

use std::time::{Duration, Instant};

use common::netns::{Netns, VethPair, CONTAINER_IP, PEER_IP};
use common::*;
use serde_json::json;

const BOOT: Duration = Duration::from_secs(120);

/// Connect from `from` to `ip:port`, send a line, return the reply; retried
/// until the server listens (it prints its marker just before it does).
fn tcp_echo(from: &Netns, ip: &str, port: u16, line: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = from.exec(&[
            "sh",
            "-c",
            &format!("echo {line} | busybox nc -w 10 {ip} {port}"),
        ]);
        let reply = text(&out.stdout);
        if !reply.is_empty() || Instant::now() >= deadline {
            return reply;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A listener in `ns` on `port`; the container connects to it with `exec`
/// and sends `line`; returns what the listener got.
fn from_container(rv: &Runvm, id: &str, ns: &Netns, ip: &str, port: u16, line: &str) -> String {
    use std::io::{BufRead, BufReader, Read};
    let script = format!(
        "import socket\nl = socket.socket()\nl.bind(('0.0.0.0', {port}))\nl.listen(1)\n\
         print('LISTENING', flush=True)\nc, _ = l.accept()\nc.settimeout(60)\nb = b''\n\
         while True:\n    d = c.recv(4096)\n    if not d: break\n    b += d\n\
         print(b.decode(), end='', flush=True)\n"
    );
    let mut server = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.name, "python3", "-c", &script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(server.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert_eq!(first.trim(), "LISTENING");
    let sent = rv.run(&[
        "exec",
        id,
        "sh",
        "-c",
        &format!("echo {line} | nc -w 30 {ip} {port}"),
    ]);
    let mut got = String::new();
    out.read_to_string(&mut got).unwrap();
    let _ = server.wait();
    assert!(sent.status.success(), "exec nc: {}", text(&sent.stderr));
    got
}

#[test]
fn a_container_gets_the_interfaces_of_its_network_namespace() {
    let net = VethPair::new(1400);
    let rv = Runvm::new();
    // The server answers one line and exits, so the client sees the
    // connection close.
    let b = Bundle::busybox(&[
        "sh",
        "-c",
        "ip -o link; ip -o addr; ip route; cat /sys/class/net/eth0/mtu; echo READY; \
         exec nc -l -p 7777 -e sh -c 'read l; echo echo:$l'",
    ]);
    b.join_netns(&net.container.path());
    let id = unique_id("net");
    let c = rv.run_detached(&id, &b);
    wait_for_output(&b, "out.txt", "READY", BOOT);
    let out = b.output("out.txt");
    assert!(
        out.contains(&format!("link/ether {}", net.mac)),
        "the guest's eth0 has the veth's MAC {}: {out}",
        net.mac
    );
    assert!(out.contains("eth0") && out.contains(&format!("inet {CONTAINER_IP}/24")));
    assert!(
        out.contains(&format!("default via {PEER_IP} dev eth0")),
        "{out}"
    );
    assert!(out.lines().any(|l| l == "1400"), "MTU 1400: {out}");
    // The host's side of the namespace has the tap, and state.json says
    // which interface it stands for.
    assert!(net.container.ip(&["-o", "link"]).contains("rvtap0"));
    let nic = &rv.raw_state(&id)["network"]["nics"][0];
    assert_eq!(nic["interface"], "eth0");
    assert_eq!(nic["tap"], "rvtap0");
    assert_eq!(nic["mac"], net.mac.as_str());
    // Both ways: the peer reaches the container, the container the peer.
    let ping = net
        .peer
        .exec(&["busybox", "ping", "-c", "1", "-W", "10", CONTAINER_IP]);
    assert!(ping.status.success(), "ping the container: {ping:?}");
    // The container's default spec has no CAP_NET_RAW (nor has runc's):
    // its side is a TCP connection to a listener in the peer's namespace.
    assert_eq!(
        from_container(&rv, &id, &net.peer, PEER_IP, 7778, "hi-from-container"),
        "hi-from-container\n"
    );
    assert_eq!(
        tcp_echo(&net.peer, CONTAINER_IP, 7777, "hello"),
        "echo:hello\n"
    );
    drop(c);
    assert_eq!(net.leftovers(), Vec::<String>::new());
}

/// The fallback kernel (docs/config.md): Debian's, whose virtio-net is a
/// module the agent loads from the initramfs. Cold mode only: a template is
/// made with runvm's kernel, so a clone would not have this one.
#[test]
fn debians_kernel_as_the_configured_kernel_runs_a_container_with_its_nic() {
    if template_mode() {
        return;
    }
    let net = VethPair::new(1500);
    let rv = Runvm::with_config(&format!(
        "[hypervisor.qemu]\nkernel = \"{}\"\n",
        debian_kernel().display()
    ));
    let b = Bundle::busybox(&[
        "sh",
        "-c",
        "uname -r; ip -o addr show eth0; echo READY; exec nc -l -p 7777 -e sh -c 'read l; echo echo:$l'",
    ]);
    b.join_netns(&net.container.path());
    let id = unique_id("debkernel");
    let c = rv.run_detached(&id, &b);
    wait_for_output(&b, "out.txt", "READY", BOOT);
    let out = b.output("out.txt");
    assert!(
        out.lines()
            .next()
            .unwrap_or_default()
            .ends_with("-cloud-amd64"),
        "{out}"
    );
    assert!(out.contains(&format!("inet {CONTAINER_IP}/24")), "{out}");
    assert_eq!(
        tcp_echo(&net.peer, CONTAINER_IP, 7777, "hello"),
        "echo:hello\n"
    );
    drop(c);
    assert_eq!(net.leftovers(), Vec::<String>::new());
}

#[test]
fn in_a_pod_the_sandbox_holds_the_namespace_and_one_container_gets_its_interfaces() {
    let net = VethPair::new(1500);
    let rv = Runvm::new();
    let pod = |b: &Bundle, kind: &str| {
        b.join_netns(&net.container.path());
        let kind = kind.to_string();
        b.edit(move |c| {
            c["annotations"] = json!({"io.kubernetes.cri.container-type": kind});
        });
    };
    let sandbox = Bundle::busybox(&["sh", "-c", "ip -o link; echo READY; exec sleep 1000"]);
    pod(&sandbox, "sandbox");
    let sandbox_id = unique_id("netpod-sandbox");
    let s = rv.run_detached(&sandbox_id, &sandbox);
    wait_for_output(&sandbox, "out.txt", "READY", BOOT);
    let links = sandbox.output("out.txt");
    assert_eq!(
        links.lines().filter(|l| l.contains(": ")).count(),
        1,
        "lo only: {links}"
    );
    assert_eq!(rv.raw_state(&sandbox_id)["network"]["nics"], json!([]));

    let app = Bundle::busybox(&[
        "sh",
        "-c",
        "echo READY; exec nc -l -p 7777 -e sh -c 'read l; echo echo:$l'",
    ]);
    pod(&app, "container");
    let app_id = unique_id("netpod-app");
    let a = rv.run_detached(&app_id, &app);
    wait_for_output(&app, "out.txt", "READY", BOOT);

    // A second container of the pod cannot have the same interfaces, and
    // its failed create leaves the first one's connection alone.
    let other = Bundle::busybox(&["true"]);
    pod(&other, "container");
    let other_id = unique_id("netpod-other");
    let (o, out) = rv.create(&other_id, &other);
    assert_ne!(out.status.code(), Some(0));
    let err = other.output("err.txt");
    assert!(err.contains("interface eth0 is already in use"), "{err}");
    drop(o);
    assert_eq!(tcp_echo(&net.peer, CONTAINER_IP, 7777, "pod"), "echo:pod\n");
    drop(a);
    drop(s);
    assert_eq!(net.leftovers(), Vec::<String>::new());
}

#[test]
fn a_new_network_namespace_has_loopback_only_and_is_the_state_pids() {
    let rv = Runvm::new();
    let b = Bundle::busybox(&["sh", "-c", "ip -o link; echo READY; sleep 600"]);
    let id = unique_id("netnew");
    let c = rv.run_detached(&id, &b);
    wait_for_output(&b, "out.txt", "READY", BOOT);
    let out = b.output("out.txt");
    let links: Vec<&str> = out.lines().filter(|l| l.contains(": ")).collect();
    assert_eq!(links.len(), 1, "loopback only: {out}");
    assert!(links[0].contains(": lo:"), "{out}");
    // The state's pid lives in the container's network namespace, not the
    // host's: where Docker's prestart hook configures it.
    let pid = rv.state(&id)["pid"].as_i64().unwrap();
    let theirs = std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
    let ours = std::fs::read_link("/proc/self/ns/net").unwrap();
    assert_ne!(theirs, ours);
    drop(c);
}

#[test]
fn a_namespace_with_only_loopback_gives_loopback_only() {
    let ns = Netns::new();
    let rv = Runvm::new();
    let b = Bundle::busybox(&["sh", "-c", "ip -o link"]);
    b.join_netns(&ns.path());
    let id = unique_id("netlo");
    let _g = rv.guard(&id, &b);
    let out = rv.run(&["run", "--bundle", b.path().to_str().unwrap(), &id]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let links: Vec<String> = text(&out.stdout)
        .lines()
        .filter(|l| l.contains(": "))
        .map(str::to_string)
        .collect();
    assert_eq!(links.len(), 1, "{links:?}");
    assert!(links[0].contains(": lo:"));
}

#[test]
fn a_network_namespace_path_that_does_not_exist_fails_create_cleanly() {
    let rv = Runvm::new();
    let b = Bundle::busybox(&["true"]);
    b.join_netns("/run/netns/runvm-test-no-such-netns");
    let id = unique_id("netmissing");
    let (c, out) = rv.create(&id, &b);
    assert!(!out.status.success());
    let err = b.output("err.txt");
    assert!(
        err.contains("namespace path: lstat /run/netns/runvm-test-no-such-netns"),
        "runc's words: {err}"
    );
    drop(c);
}

#[test]
fn a_path_that_is_not_a_network_namespace_fails_create_cleanly() {
    let rv = Runvm::new();
    let b = Bundle::busybox(&["true"]);
    let not_ns = b.path().join("config.json");
    b.join_netns(not_ns.to_str().unwrap());
    let id = unique_id("netnotns");
    let (c, out) = rv.create(&id, &b);
    assert!(!out.status.success());
    let err = b.output("err.txt");
    assert!(
        err.contains(&format!("join the network namespace {}", not_ns.display())),
        "{err}"
    );
    drop(c);
}

#[test]
fn the_host_network_is_user_mode_and_reaches_the_host() {
    host_network(false);
}

#[test]
fn a_path_to_the_hosts_network_namespace_is_the_host_network() {
    host_network(true);
}

fn host_network(by_path: bool) {
    // A server on the host's loopback; user-mode networking maps 10.0.2.2
    // to it.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap();
        s.write_all(b"host:").unwrap();
        s.write_all(&buf[..n]).unwrap();
    });
    let rv = Runvm::new();
    let b = Bundle::busybox(&[
        "sh",
        "-c",
        &format!("ip -o addr show eth0; echo hi | nc -w 30 10.0.2.2 {port}"),
    ]);
    // Without a network namespace, or with a path to the host's (as a
    // host-network pod's containers have their sandbox's): the host's
    // interfaces are never the VM's.
    let host_ns = format!("/proc/{}/ns/net", std::process::id());
    if by_path {
        b.join_netns(&host_ns);
    } else {
        b.edit(|c| {
            c["linux"]["namespaces"]
                .as_array_mut()
                .unwrap()
                .retain(|n| n["type"] != "network")
        });
    }
    let id = unique_id("nethost");
    let _g = rv.guard(&id, &b);
    let out = rv.run(&["run", "--bundle", b.path().to_str().unwrap(), &id]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("inet 10.0.2.15/24"), "{stdout}");
    assert!(stdout.contains("host:hi"), "{stdout}");
    server.join().unwrap();
}
