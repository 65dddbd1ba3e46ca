//! The clients' own networks reach runvm containers: Podman's default
//! network with a published port, Docker's default bridge with a published
//! port, a CRI pod on a CNI bridge, and `ctr run`'s loopback-only namespace.
//! Every subnet and bridge is the test's own; traffic goes only to
//! 127.0.0.1 and to addresses the test made.

mod common;
#[path = "common/cri.rs"]
mod cri;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::clients::*;
use common::*;

/// A web page the container serves with busybox httpd on port 80.
const PAGE: &str = "served-from-a-runvm-vm";
const SERVE: &str = "mkdir -p /www && echo served-from-a-runvm-vm > /www/index.html && \
                     echo SERVING && exec httpd -f -p 80 -h /www";

/// A free TCP port on 127.0.0.1 (the OS's pick, released for the client).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET / from `addr` until it answers (the server starts in the VM after
/// the client returns), within a minute; the body.
fn http_get(addr: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last;
    loop {
        let got = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(5))
            .and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(20)))?;
                write!(s, "GET / HTTP/1.0\r\nHost: test\r\n\r\n")?;
                let mut reply = String::new();
                s.read_to_string(&mut reply)?;
                Ok(reply)
            });
        match got {
            Ok(reply) if reply.starts_with("HTTP/1.") => {
                return reply.split("\r\n\r\n").nth(1).unwrap_or("").to_string()
            }
            Ok(reply) => last = format!("reply {reply:?}"),
            Err(e) => last = e.to_string(),
        }
        assert!(Instant::now() < deadline, "{addr} never answered: {last}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A bridge of the test's on the host, deleted when dropped (CNI's bridge
/// plugin and dockerd leave theirs).
struct Bridge(&'static str);

impl Bridge {
    fn create(name: &'static str, address: Option<&str>) -> Bridge {
        let _ = Command::new("ip").args(["link", "del", name]).output();
        let ip = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().unwrap();
            assert!(out.status.success(), "ip {args:?}: {}", text(&out.stderr));
        };
        ip(&["link", "add", name, "type", "bridge"]);
        if let Some(a) = address {
            ip(&["addr", "add", a, "dev", name]);
        }
        ip(&["link", "set", name, "up"]);
        Bridge(name)
    }

    /// One CNI or a daemon will create; removed when dropped.
    fn expected(name: &'static str) -> Bridge {
        let _ = Command::new("ip").args(["link", "del", name]).output();
        Bridge(name)
    }

    /// The interfaces attached to it (the clients' veths).
    fn ports(&self) -> Vec<String> {
        let out = Command::new("ip")
            .args(["-o", "link", "show", "master", self.0])
            .output()
            .unwrap();
        text(&out.stdout)
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap().to_string())
            .collect()
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", self.0]).output();
    }
}

/// A listener on the host at `ip:port`; returns the first line a client
/// sends, or why not.
fn listen_once(ip: &str, port: u16) -> std::thread::JoinHandle<String> {
    let l = TcpListener::bind((ip, port)).unwrap();
    std::thread::spawn(move || {
        let (mut c, _) = l.accept().unwrap();
        c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut got = String::new();
        let _ = c.read_to_string(&mut got);
        got
    })
}

#[test]
fn podman_default_network_publishes_a_port_and_reaches_the_bridge() {
    // Podman's default network ("podman"), in a network config directory
    // of the test's: a CNI bridge on a subnet the test chose.
    let bridge = Bridge::expected("rvtest-pm0");
    let p = Podman::with_default_network(bridge.0, "10.215.0.0/24", "10.215.0.1").with_image();
    let port = free_port();
    let cid = p.cidfile();
    let published = format!("127.0.0.1:{port}:80");
    let out = p.podman(&[
        "run",
        "-d",
        "--cidfile",
        cid.to_str().unwrap(),
        "-p",
        &published,
        IMAGE,
        "sh",
        "-c",
        SERVE,
    ]);
    assert!(out.status.success(), "podman run: {}", text(&out.stderr));
    let id = read_cid(&cid);
    assert_runs_in_vm(&p.runtime_root(), &id);
    assert_eq!(http_get(&format!("127.0.0.1:{port}")).trim(), PAGE);

    // The container has Podman's address and reaches the bridge's.
    let addr = p.podman(&["exec", &id, "ip", "-o", "-4", "addr", "show", "eth0"]);
    assert!(
        trimmed(&addr).contains("inet 10.215.0."),
        "{}",
        trimmed(&addr)
    );
    let back = free_port();
    let got = listen_once("10.215.0.1", back);
    let sent = p.podman(&[
        "exec",
        &id,
        "sh",
        "-c",
        &format!("echo from-the-container | nc -w 30 10.215.0.1 {back}"),
    ]);
    assert!(sent.status.success(), "{}", text(&sent.stderr));
    assert_eq!(got.join().unwrap(), "from-the-container\n");

    // Podman's netns (the one the state names) and veth go with the
    // container, and with them runvm's tap and qdiscs.
    let state = serde_json::from_slice::<serde_json::Value>(
        &std::fs::read(p.runtime_root().join(&id).join("state.json")).unwrap(),
    )
    .unwrap();
    let netns = state["network"]["namespace"].as_str().unwrap().to_string();
    assert!(netns.starts_with("/run/netns/"), "{netns}");
    assert_eq!(bridge.ports().len(), 1, "{:?}", bridge.ports());
    let out = p.podman(&["rm", "-f", &id]);
    assert!(out.status.success(), "podman rm: {}", text(&out.stderr));
    assert_no_leaks_of(&p.runtime_root(), &id);
    assert!(!std::path::Path::new(&netns).exists(), "{netns} left");
    assert_eq!(bridge.ports(), Vec::<String>::new());
}

#[test]
fn docker_default_bridge_publishes_a_port_and_exec_sees_the_interface() {
    // The default bridge network on a bridge of the test's (dockerd's
    // --bridge), with docker-proxy publishing the port: dockerd makes no
    // iptables rules (--iptables=false), its network set-up is its own
    // prestart hook, libnetwork-setkey, in the namespace of the state's pid.
    let bridge = Bridge::create("rvtest-dk0", Some("10.214.0.1/24"));
    let d = Dockerd::with_bridge(bridge.0);
    let out = d.docker(&["load", "-i", image_archive().to_str().unwrap()]);
    assert!(out.status.success(), "docker load: {}", text(&out.stderr));
    let port = free_port();
    let cid = d.cidfile();
    let published = format!("127.0.0.1:{port}:80");
    let out = d.docker(&[
        "run",
        "-d",
        "--runtime",
        "runvm",
        "--cidfile",
        cid.to_str().unwrap(),
        "-p",
        &published,
        IMAGE,
        "sh",
        "-c",
        SERVE,
    ]);
    assert!(out.status.success(), "docker run: {}", text(&out.stderr));
    let id = read_cid(&cid);
    assert_runs_in_vm(&d.runtime_root(), &id);
    assert_eq!(http_get(&format!("127.0.0.1:{port}")).trim(), PAGE);
    let inspect = d.docker(&[
        "inspect",
        "-f",
        "{{.NetworkSettings.IPAddress}} {{.NetworkSettings.MacAddress}}",
        &id,
    ]);
    let fields: Vec<String> = trimmed(&inspect)
        .split_whitespace()
        .map(String::from)
        .collect();
    assert_eq!(fields.len(), 2, "{}", trimmed(&inspect));
    let (ip, mac) = (&fields[0], &fields[1]);
    assert!(ip.starts_with("10.214.0."), "{ip}");
    // The guest's interface is the one Docker made.
    let link = d.docker(&["exec", &id, "ip", "-o", "addr", "show", "eth0"]);
    let link = trimmed(&link);
    assert!(link.contains(&format!("inet {ip}/24")), "{link}");
    let ether = d.docker(&["exec", &id, "cat", "/sys/class/net/eth0/address"]);
    assert_eq!(&trimmed(&ether), mac);
    // And the page straight from the container's address.
    assert_eq!(http_get(&format!("{ip}:80")).trim(), PAGE);
    let out = d.docker(&["rm", "-f", &id]);
    assert!(out.status.success(), "docker rm: {}", text(&out.stderr));
    assert_no_leaks_of(&d.runtime_root(), &id);
    assert_eq!(bridge.ports(), Vec::<String>::new());
}

#[test]
fn a_cri_pod_on_a_cni_bridge_answers_on_its_ip() {
    let bridge = Bridge::expected("rvtest-cri0");
    let ipam = tempfile::tempdir().unwrap();
    let conflist = serde_json::json!({
        "cniVersion": "0.4.0",
        "name": "runvm-test-pods",
        "plugins": [{
            "type": "bridge",
            "bridge": bridge.0,
            "isGateway": true,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "dataDir": ipam.path(),
                "ranges": [[{"subnet": "10.217.0.0/24", "gateway": "10.217.0.1"}]],
                "routes": [{"dst": "0.0.0.0/0"}]
            }
        }]
    });
    let c = Containerd::with_cri_network(Some(&conflist.to_string()));
    let root = Containerd::runtime_root("k8s.io");
    for archive in [image_archive(), pause_archive()] {
        let out = c.ctr(&[
            "-n",
            "k8s.io",
            "images",
            "import",
            archive.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let mut api = cri::Cri::connect(&c.socket());
    for image in [IMAGE, PAUSE_IMAGE] {
        api.wait_for_image(image, Duration::from_secs(30));
    }
    // The pod's own network: the default namespace options.
    let pod = cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: "web".into(),
            uid: unique_id("pod"),
            namespace: "default".into(),
            attempt: 0,
        }),
        log_directory: c.dir().join("pod-logs").to_string_lossy().into_owned(),
        linux: Some(cri::LinuxPodSandboxConfig::default()),
        ..Default::default()
    };
    let pod_id = api
        .run_pod(&pod, "runvm")
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", c.log_tail()));
    assert_runs_in_vm(&root, &pod_id);
    let ip = api.pod_ip(&pod_id).unwrap();
    assert!(ip.starts_with("10.217.0."), "pod IP {ip:?}");
    let config = cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: "httpd".into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: IMAGE.into(),
            ..Default::default()
        }),
        command: ["/bin/sh", "-c", SERVE].map(String::from).into(),
        log_path: "httpd.log".into(),
        linux: Some(cri::LinuxContainerConfig::default()),
        ..Default::default()
    };
    let ctr_id = api
        .create_container(&pod_id, config, &pod)
        .unwrap_or_else(|e| panic!("CreateContainer: {e}\n{}", c.log_tail()));
    api.start_container(&ctr_id)
        .unwrap_or_else(|e| panic!("StartContainer: {e}\n{}", c.log_tail()));
    assert_runs_in_vm(&root, &ctr_id);
    // The pod's IP answers, from the container's VM.
    assert_eq!(http_get(&format!("{ip}:80")).trim(), PAGE);
    api.stop_pod(&pod_id)
        .unwrap_or_else(|e| panic!("StopPodSandbox: {e}\n{}", c.log_tail()));
    api.remove_pod(&pod_id)
        .unwrap_or_else(|e| panic!("RemovePodSandbox: {e}\n{}", c.log_tail()));
    for id in [&ctr_id, &pod_id] {
        assert_no_leaks_of(&root, id);
    }
    assert_eq!(bridge.ports(), Vec::<String>::new());
}

#[test]
fn ctr_run_without_host_networking_has_loopback_only() {
    let c = Containerd::start();
    let out = c.ctr(&["images", "import", image_archive().to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = unique_id("ctr-net");
    let out = c
        .ctr_cmd()
        .args(["run", "--rm", "--runc-binary", runvm(), IMAGE, &id])
        .args(["ip", "-o", "link"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "ctr run: {}", text(&out.stderr));
    let links = text(&out.stdout);
    let names: Vec<&str> = links.lines().filter_map(|l| l.split(": ").nth(1)).collect();
    assert_eq!(names, ["lo"], "{links}");
    assert_no_leaks_of(&Containerd::runtime_root("default"), &id);
}
