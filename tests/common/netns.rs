//! Network namespaces a test makes for itself: a container's, holding one
//! end of a veth pair (as CNI leaves it), and a peer's, holding the other
//! end. Nothing touches the host's own interfaces or routes.

use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn ip(args: &[&str]) -> Output {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A network namespace, removed when dropped.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new() -> Netns {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("rvt-{}-{n}", std::process::id());
        ip(&["netns", "add", &name]);
        Netns { name }
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// `cmd args…` inside the namespace.
    pub fn exec(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .expect("run ip netns exec")
    }

    /// `ip args…` inside the namespace; must succeed.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        String::from_utf8_lossy(&ip(&all).stdout).into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

/// A container's namespace with `eth0` at `10.213.0.2/24` (MTU `mtu`), a
/// default route via the peer at `10.213.0.1`.
pub struct VethPair {
    pub container: Netns,
    pub peer: Netns,
    pub mac: String,
}

pub const CONTAINER_IP: &str = "10.213.0.2";
pub const PEER_IP: &str = "10.213.0.1";

impl VethPair {
    pub fn new(mtu: u32) -> VethPair {
        let container = Netns::new();
        let peer = Netns::new();
        let mtu = mtu.to_string();
        // Made inside the peer's namespace, so the host never has either end.
        peer.ip(&[
            "link",
            "add",
            "eth0",
            "mtu",
            &mtu,
            "type",
            "veth",
            "peer",
            "name",
            "ceth0",
            "mtu",
            &mtu,
            "netns",
            &container.name,
        ]);
        peer.ip(&["addr", "add", &format!("{PEER_IP}/24"), "dev", "eth0"]);
        peer.ip(&["link", "set", "eth0", "up"]);
        peer.ip(&["link", "set", "lo", "up"]);
        container.ip(&["link", "set", "ceth0", "name", "eth0"]);
        container.ip(&["addr", "add", &format!("{CONTAINER_IP}/24"), "dev", "eth0"]);
        container.ip(&["link", "set", "eth0", "up"]);
        container.ip(&["route", "add", "default", "via", PEER_IP]);
        let link = container.ip(&["-o", "link", "show", "eth0"]);
        let mac = link
            .split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .expect("eth0 has a MAC")
            .to_string();
        VethPair {
            container,
            peer,
            mac,
        }
    }

    /// What runvm left in the container's namespace: its taps, or an
    /// ingress qdisc on eth0.
    pub fn leftovers(&self) -> Vec<String> {
        let mut left: Vec<String> = self
            .container
            .ip(&["-o", "link"])
            .lines()
            .filter(|l| l.contains("rvtap"))
            .map(str::to_string)
            .collect();
        let tc = self.container.exec(&["tc", "qdisc", "show", "dev", "eth0"]);
        left.extend(
            String::from_utf8_lossy(&tc.stdout)
                .lines()
                .filter(|l| l.contains("ingress"))
                .map(str::to_string),
        );
        left
    }
}
