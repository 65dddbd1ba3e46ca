//! The container's network, as its caller set it up.
//!
//! The network namespace is the caller's contract. A spec that names one by
//! path (Podman, CNI, containerd's CRI) gets that one; a spec that asks for
//! a new one (Docker, `ctr run`) gets a new one made on the host. Either
//! way the shim lives in it, so `/proc/<state pid>/ns/net` is the
//! container's network, where Docker's prestart hook and any other tool
//! look. After the hooks have run, every Ethernet interface the caller put
//! there becomes a NIC of the VM: a tap device in the same namespace,
//! joined to the interface by tc mirred redirects both ways, given to the
//! VM as a virtio-net device with the interface's MAC; the agent gives the
//! guest's NIC the interface's name, MTU, addresses and routes.
//!
//! A spec without a network namespace asks for the host's network, which a
//! VM cannot share: it gets the hypervisor's user-mode network (outbound
//! connections only), and a warning says so (docs/networking.md).

mod netlink;

use std::fs::File;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use nix::sched::{setns, unshare, CloneFlags};
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use runvm_protocol::{ConfigureNetwork, Interface, Route};

use crate::hypervisor::{NetBackend, NetDevice};

/// Names of the taps runvm makes: `rvtap0`, `rvtap1`… (a namespace holds
/// one container's, so they need not be unique beyond it).
pub const TAP_PREFIX: &str = "rvtap";

/// The guest's side of the user-mode network (QEMU's slirp defaults).
const USER_ADDRESS: &str = "10.0.2.15/24";
const USER_GATEWAY: &str = "10.0.2.2";
const USER_MAC: &str = "52:54:00:12:34:56";

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// runc's words.
    #[error("namespace path: lstat {path}")]
    NamespacePath { path: PathBuf, source: io::Error },
    #[error("join the network namespace {path}")]
    Join { path: PathBuf, source: nix::Error },
    #[error("create a network namespace")]
    Create(#[source] nix::Error),
    #[error("talk to the kernel's netlink")]
    Socket(#[source] io::Error),
    #[error("read the network namespace's {what}")]
    Read {
        what: &'static str,
        #[source]
        source: Box<rtnetlink::Error>,
    },
    #[error("interface {name} has no MAC address")]
    NoMac { name: String },
    #[error("tap {tap} for {interface} did not appear")]
    NoTap { tap: String, interface: String },
    /// Another VM (another container of the same pod) holds it, or the
    /// caller has tc rules of its own on it.
    #[error("interface {interface} is already in use: it has an ingress qdisc (another VM's, as a second container of a pod finds, or the caller's own)")]
    InUse { interface: String },
    #[error("connect {interface} to {tap}: {step}")]
    Connect {
        interface: String,
        tap: String,
        step: &'static str,
        #[source]
        source: Box<rtnetlink::Error>,
    },
}

/// Which network the spec asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// No network namespace: the host's.
    Host,
    /// The namespace at this path.
    Join(PathBuf),
    /// A new namespace.
    New,
}

impl Mode {
    pub fn of(spec: &Spec) -> Mode {
        let ns = spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().as_ref())
            .and_then(|ns| ns.iter().find(|n| n.typ() == LinuxNamespaceType::Network));
        match ns {
            None => Mode::Host,
            Some(n) => match n.path() {
                Some(p) if !p.as_os_str().is_empty() => Mode::Join(p.clone()),
                _ => Mode::New,
            },
        }
    }

    /// Move the calling process into the namespace; returns the mode it is
    /// in: a path to the namespace the caller is in already is the host's
    /// network (a host-network pod's containers join their sandbox's by
    /// path), whose interfaces are never the VM's. Call it before any
    /// thread exists: a namespace is a property of each thread, and threads
    /// started later inherit it.
    pub fn enter(self) -> Result<Mode, NetworkError> {
        match self {
            Mode::Host => Ok(Mode::Host),
            Mode::New => {
                unshare(CloneFlags::CLONE_NEWNET).map_err(NetworkError::Create)?;
                Ok(Mode::New)
            }
            Mode::Join(path) => {
                std::fs::symlink_metadata(&path).map_err(|source| NetworkError::NamespacePath {
                    path: path.clone(),
                    source,
                })?;
                let join = |source| NetworkError::Join {
                    path: path.clone(),
                    source,
                };
                let file = File::open(&path).map_err(|e| join(nix::Error::from_raw(errno(&e))))?;
                if crate::namespaces::same_file(&file, Path::new("/proc/self/ns/net")) {
                    return Ok(Mode::Host);
                }
                setns(file, CloneFlags::CLONE_NEWNET).map_err(join)?;
                Ok(Mode::Join(path))
            }
        }
    }
}

fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

/// An interface the caller set up, as read from its namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostInterface {
    pub index: u32,
    pub name: String,
    pub mac: String,
    pub mtu: u32,
    pub addresses: Vec<(IpAddr, u8)>,
}

impl HostInterface {
    /// Its addresses as `address/prefix`.
    pub fn cidrs(&self) -> Vec<String> {
        self.addresses
            .iter()
            .map(|(a, p)| format!("{a}/{p}"))
            .collect()
    }
}

/// What `state.json` says of the network, for whoever debugs it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Record {
    /// "host" (user-mode), "new" or the namespace's path.
    pub namespace: String,
    pub nics: Vec<NicRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NicRecord {
    pub interface: String,
    pub tap: String,
    pub mac: String,
    pub mtu: u32,
    pub addresses: Vec<String>,
}

/// A NIC of the VM and the host interface it stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    pub host: HostInterface,
    pub tap: String,
}

/// The container's network: the NICs its VM gets and what the guest makes
/// of them.
#[derive(Debug, Clone, PartialEq)]
pub struct Network {
    mode: Mode,
    nics: Vec<Nic>,
    routes: Vec<Route>,
    /// How many of the caller's interfaces `connect` has changed (their
    /// ingress qdisc is ours to remove).
    connected: usize,
}

impl Network {
    /// Read the namespace the shim is in (after the caller's hooks). A pod's
    /// sandbox only holds the namespace for the pod's containers: its VM
    /// gets no NICs, leaving the interfaces to the container that serves.
    pub async fn discover(mode: &Mode, sandbox: bool) -> Result<Network, NetworkError> {
        if *mode == Mode::Host || sandbox {
            return Ok(Network {
                mode: mode.clone(),
                nics: Vec::new(),
                routes: Vec::new(),
                connected: 0,
            });
        }
        let found = netlink::Netlink::open()?.read().await?;
        // Tap names free in the namespace (another VM's may be there).
        let mut names = (0..)
            .map(|i| format!("{TAP_PREFIX}{i}"))
            .filter(|n| !found.taps.contains(n));
        let nics = found
            .interfaces
            .into_iter()
            .map(|host| Nic {
                host,
                tap: names.next().expect("endless"),
            })
            .collect();
        Ok(Network {
            mode: mode.clone(),
            nics,
            routes: found.routes,
            connected: 0,
        })
    }

    pub fn mode(&self) -> &Mode {
        &self.mode
    }

    pub fn record(&self) -> Record {
        Record {
            namespace: match &self.mode {
                Mode::Host => "host".into(),
                Mode::New => "new".into(),
                Mode::Join(p) => p.display().to_string(),
            },
            nics: self
                .nics
                .iter()
                .map(|n| NicRecord {
                    interface: n.host.name.clone(),
                    tap: n.tap.clone(),
                    mac: n.host.mac.clone(),
                    mtu: n.host.mtu,
                    addresses: n.host.cidrs(),
                })
                .collect(),
        }
    }

    /// The VM's network devices.
    pub fn devices(&self) -> Vec<NetDevice> {
        if self.mode == Mode::Host {
            return vec![NetDevice {
                backend: NetBackend::User,
                mac: USER_MAC.into(),
                mtu: None,
            }];
        }
        self.nics
            .iter()
            .map(|n| NetDevice {
                backend: NetBackend::Tap {
                    name: n.tap.clone(),
                },
                mac: n.host.mac.clone(),
                mtu: Some(n.host.mtu),
            })
            .collect()
    }

    /// What the agent is asked to configure; `None` when the guest has
    /// nothing but loopback.
    pub fn guest_config(&self) -> Option<ConfigureNetwork> {
        if self.mode == Mode::Host {
            return Some(ConfigureNetwork {
                interfaces: vec![Interface {
                    name: "eth0".into(),
                    mac: USER_MAC.into(),
                    mtu: 1500,
                    addresses: vec![USER_ADDRESS.into()],
                }],
                routes: vec![Route {
                    destination: None,
                    gateway: Some(USER_GATEWAY.into()),
                    device: "eth0".into(),
                    scope_link: false,
                    metric: None,
                }],
            });
        }
        if self.nics.is_empty() {
            return None;
        }
        Some(ConfigureNetwork {
            interfaces: self
                .nics
                .iter()
                .map(|n| Interface {
                    name: n.host.name.clone(),
                    mac: n.host.mac.clone(),
                    mtu: n.host.mtu,
                    addresses: n.host.cidrs(),
                })
                .collect(),
            routes: self.routes.clone(),
        })
    }

    /// Once the VM holds its taps: bring each up and join it to its
    /// interface.
    pub async fn connect(&mut self) -> Result<(), NetworkError> {
        if self.nics.is_empty() {
            return Ok(());
        }
        let nl = netlink::Netlink::open()?;
        for nic in &self.nics {
            let mut changed = false;
            let done = nl.connect(nic, &mut changed).await;
            if changed {
                self.connected += 1;
            }
            done?;
        }
        Ok(())
    }

    /// Undo `connect` on the caller's interfaces (the taps go with the VM).
    /// Best effort: an interface that is gone needs nothing undone.
    pub async fn disconnect(&self) -> Vec<NetworkError> {
        if self.connected == 0 {
            return Vec::new();
        }
        let nl = match netlink::Netlink::open() {
            Ok(nl) => nl,
            Err(e) => return vec![e],
        };
        let mut errors = Vec::new();
        for nic in &self.nics[..self.connected] {
            if let Err(e) = nl.disconnect(nic).await {
                errors.push(e);
            }
        }
        errors
    }
}

/// The spec is a pod's sandbox (the container that holds the pod's
/// namespaces), as containerd's CRI and CRI-O mark it.
pub fn is_pod_sandbox(spec: &Spec) -> bool {
    spec.annotations().as_ref().is_some_and(|a| {
        a.get("io.kubernetes.cri.container-type")
            .map(String::as_str)
            == Some("sandbox")
            || a.get("io.kubernetes.cri-o.ContainerType")
                .map(String::as_str)
                == Some("sandbox")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    use crate::spec::with_namespaces as spec;

    #[test]
    fn mode_follows_the_network_namespace() {
        assert_eq!(Mode::of(&spec(json!([{"type": "pid"}]))), Mode::Host);
        assert_eq!(Mode::of(&spec(json!([{"type": "network"}]))), Mode::New);
        assert_eq!(
            Mode::of(&spec(json!([{"type": "network", "path": "/run/netns/a"}]))),
            Mode::Join("/run/netns/a".into())
        );
    }

    #[test]
    fn a_path_to_our_own_namespace_is_the_host_network() {
        // Nothing is joined: the namespace is the one we are in.
        assert_eq!(
            Mode::Join("/proc/self/ns/net".into()).enter().unwrap(),
            Mode::Host
        );
    }

    #[test]
    fn a_missing_namespace_path_is_refused_in_runcs_words() {
        let e = Mode::Join("/run/netns/runvm-no-such".into())
            .enter()
            .unwrap_err();
        assert_eq!(
            crate::error_chain(&e),
            "namespace path: lstat /run/netns/runvm-no-such: No such file or directory (os error 2)"
        );
    }

    fn interface(name: &str) -> HostInterface {
        HostInterface {
            index: 2,
            name: name.into(),
            mac: "02:00:00:00:00:01".into(),
            mtu: 1400,
            addresses: vec![("10.1.0.2".parse().unwrap(), 24)],
        }
    }

    #[test]
    fn each_interface_becomes_a_nic_with_its_identity() {
        let net = Network {
            mode: Mode::New,
            nics: vec![Nic {
                host: interface("eth0"),
                tap: "rvtap0".into(),
            }],
            routes: vec![],
            connected: 0,
        };
        assert_eq!(
            net.devices(),
            vec![NetDevice {
                backend: NetBackend::Tap {
                    name: "rvtap0".into()
                },
                mac: "02:00:00:00:00:01".into(),
                mtu: Some(1400),
            }]
        );
        let guest = net.guest_config().unwrap();
        assert_eq!(guest.interfaces[0].addresses, vec!["10.1.0.2/24"]);
        assert_eq!(guest.interfaces[0].mtu, 1400);
    }

    #[test]
    fn no_interfaces_is_loopback_only_and_host_is_user_mode() {
        let lo = Network {
            mode: Mode::New,
            nics: vec![],
            routes: vec![],
            connected: 0,
        };
        assert!(lo.devices().is_empty());
        assert!(lo.guest_config().is_none());
        let host = Network {
            mode: Mode::Host,
            ..lo
        };
        assert_eq!(host.devices()[0].backend, NetBackend::User);
        assert_eq!(
            host.guest_config().unwrap().routes[0].gateway.as_deref(),
            Some(USER_GATEWAY)
        );
    }
}
