//! The host's requests to the agent, each with its reply type.

use oci_spec::runtime::{LinuxResources, Process};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::ProcessRef;

/// A request the agent answers with one `Result<Self::Reply, AgentError>`.
pub trait Rpc: Into<Request> {
    type Reply: Serialize + DeserializeOwned + std::fmt::Debug;
}

/// An enum of requests, one struct each, and each struct's reply type
/// through `$trait` (this crate's [`Rpc`], the shim's control `Call`).
#[macro_export]
macro_rules! typed_requests {
    ($(#[$meta:meta])* $trait:ident for $enum:ident {
        $($(#[$doc:meta])* $variant:ident($ty:ty) -> $reply:ty;)*
    }) => {
        $(#[$meta])*
        #[derive(::serde::Serialize, ::serde::Deserialize, Debug)]
        pub enum $enum {
            $($(#[$doc])* $variant($ty),)*
        }
        impl $enum {
            /// The request's kind, as logs name it.
            pub fn name(&self) -> &'static str {
                match self {
                    $($enum::$variant(_) => stringify!($variant),)*
                }
            }
        }
        $(
            impl From<$ty> for $enum {
                fn from(r: $ty) -> $enum {
                    $enum::$variant(r)
                }
            }
            impl $trait for $ty {
                type Reply = $reply;
            }
        )*
    };
}

typed_requests! {
    /// Every request, as it travels in [`crate::StreamKind::Rpc`].
    Rpc for Request {
    /// Answered once the agent runs; one ping covers the whole boot.
    Ping(Ping) -> AgentInfo;
    CreateContainer(CreateContainer) -> Created;
    StartContainer(StartContainer) -> ();
    Signal(SignalProcess) -> ();
    /// Start another process in the container.
    Exec(ExecProcess) -> Created;
    /// Set the window size of a process's terminal.
    ResizeTty(ResizeTty) -> ();
    /// Freeze the container's cgroup.
    Pause(Pause) -> ();
    Resume(Resume) -> ();
    Stats(Stats) -> CgroupStats;
    /// New limits for the container's cgroup.
    Update(Update) -> ();
    ListProcesses(ListProcesses) -> Vec<GuestProcess>;
    /// After a VM is restored from a template: set the guest's clock to the
    /// host's and mix host entropy into its RNG, so clones of one template
    /// neither share random numbers nor live in the template's past.
    SyncGuest(SyncGuest) -> ();
    /// Give the guest's NICs the host interfaces' identities: MAC (the
    /// device already has it), name, MTU, addresses, then the routes.
    /// Answered when every interface is up and every route is in.
    ConfigureNetwork(ConfigureNetwork) -> ();
    /// Create, start and remove a throwaway container whose root is the
    /// guest's own, so that the code that creates containers has run once
    /// in this VM (a warm pool VM's: under TCG, code runs slowly the first
    /// time). Answered when it is gone.
    Warmup(Warmup) -> ();
}
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Ping;

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct CreateContainer {
    pub container_id: String,
    /// The bundle's config.json as the user wrote it (kept as JSON so that
    /// fields the OCI crate does not know still reach youki). The agent
    /// replaces `root.path` with the guest path where it mounted the share.
    pub spec: serde_json::Value,
    /// Where the share is: virtio-fs (what an older host meant), or a disk.
    #[serde(default)]
    pub share: ShareSource,
    /// The host has just grown the VM to this many MiB (a clone of a
    /// smaller template): wait until the guest has it online first.
    #[serde(default)]
    pub vm_memory_mib: Option<u64>,
}

/// How the container's share reaches the guest (the host's `shared_fs`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ShareSource {
    /// A virtio-fs device of this tag.
    VirtioFs { tag: String },
    /// An ext4 filesystem on a virtio-blk disk of this serial: a copy of
    /// the share made at create.
    Disk { serial: String },
}

impl Default for ShareSource {
    fn default() -> Self {
        ShareSource::VirtioFs {
            tag: crate::SHARE_TAG.to_string(),
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct StartContainer {
    pub container_id: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct SignalProcess {
    pub process: ProcessRef,
    pub signal: i32,
    /// Signal every process of the container, not only the one named.
    pub all: bool,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ExecProcess {
    pub container_id: String,
    pub exec_id: String,
    /// `terminal` asks for a pty.
    pub process: Process,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ResizeTty {
    pub process: ProcessRef,
    pub rows: u16,
    pub cols: u16,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Pause {
    pub container_id: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Resume {
    pub container_id: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Stats {
    pub container_id: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Update {
    pub container_id: String,
    pub resources: LinuxResources,
    /// The host has just grown the VM to this many MiB (memory hotplug):
    /// wait until the guest has it online before checking the limits.
    #[serde(default)]
    pub vm_memory_mib: Option<u64>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ListProcesses {
    pub container_id: String,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Warmup {
    /// A spec as for [`CreateContainer`]; the agent sets its root and
    /// process.
    pub spec: serde_json::Value,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct SyncGuest {
    /// Nanoseconds since the epoch.
    pub unix_time_ns: u64,
    /// Random bytes from the host.
    pub seed: Vec<u8>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct ConfigureNetwork {
    pub interfaces: Vec<Interface>,
    /// In the order the host listed them; a route's gateway is reachable
    /// through an address or a route earlier in the list.
    pub routes: Vec<Route>,
}

/// One NIC of the guest, as the host's interface it stands for.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Interface {
    /// The name the container sees (the host interface's, e.g. `eth0`).
    pub name: String,
    /// `aa:bb:cc:dd:ee:ff`, lowercase: how the agent finds the device.
    pub mac: String,
    pub mtu: u32,
    /// `address/prefix`, IPv4 or IPv6 (`10.88.0.5/16`, `fd00::5/64`).
    pub addresses: Vec<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Route {
    /// `address/prefix`; `None` is the default route (of the gateway's
    /// family).
    pub destination: Option<String>,
    pub gateway: Option<String>,
    /// The interface's `name`.
    pub device: String,
    /// Link-scope (no gateway, on the link) or universe.
    pub scope_link: bool,
    pub metric: Option<u32>,
}

/// What the agent says of itself.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct AgentInfo {
    pub version: String,
    pub protocol: u32,
    pub kernel_release: String,
}

/// A process exists in the guest (a container's init is held before its
/// user code until start).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Created {
    pub pid: i32,
}

/// Readings of a container's cgroup (v2) in the guest.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct CgroupStats {
    pub cpu_usage_usec: u64,
    pub cpu_user_usec: u64,
    pub cpu_system_usec: u64,
    pub cpu_nr_periods: u64,
    pub cpu_nr_throttled: u64,
    pub cpu_throttled_usec: u64,
    pub memory_current: u64,
    /// `None` is "max".
    pub memory_max: Option<u64>,
    pub memory_peak: u64,
    pub memory_swap_current: u64,
    pub memory_swap_max: Option<u64>,
    pub memory_oom_kill: u64,
    /// memory.stat, key by key.
    pub memory_stat: std::collections::BTreeMap<String, u64>,
    pub pids_current: u64,
    pub pids_max: Option<u64>,
    /// CPUs the VM has.
    pub online_cpus: u32,
}

/// One process of a container, as the guest's /proc shows it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct GuestProcess {
    pub pid: i32,
    pub ppid: i32,
    pub uid: u32,
    /// When it started, in seconds since the epoch by the guest's clock.
    pub start_time: u64,
    /// User plus system CPU time, in seconds.
    pub cpu_secs: u64,
    pub tty: Option<String>,
    pub cmdline: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AgentError, AgentErrorKind, ExitStatus, StreamKind};
    use serde_json::{json, Value};

    fn enc<T: Serialize>(v: &T) -> Value {
        serde_json::to_value(v).unwrap()
    }

    /// The agent protocol's encoding, pinned: a host and a guest built from
    /// different trees must still agree, or bump PROTOCOL_VERSION.
    #[test]
    fn golden_encoding() {
        let rpc = |r: Request| enc(&StreamKind::Rpc(Box::new(r)));
        assert_eq!(rpc(Ping.into()), json!({"Rpc": {"Ping": null}}));
        assert_eq!(
            rpc(Warmup {
                spec: json!({"ociVersion": "1.0.2"})
            }
            .into()),
            json!({"Rpc": {"Warmup": {"spec": {"ociVersion": "1.0.2"}}}})
        );
        assert_eq!(
            rpc(StartContainer {
                container_id: "c1".into()
            }
            .into()),
            json!({"Rpc": {"StartContainer": {"container_id": "c1"}}})
        );
        assert_eq!(
            rpc(SignalProcess {
                process: ProcessRef {
                    container_id: "c1".into(),
                    exec_id: Some("e1".into())
                },
                signal: 9,
                all: false
            }
            .into()),
            json!({"Rpc": {"Signal": {"process": {"container_id": "c1", "exec_id": "e1"},
                "signal": 9, "all": false}}})
        );
        let resources: LinuxResources =
            serde_json::from_value(json!({"pids": {"limit": 7}})).unwrap();
        assert_eq!(
            rpc(Update {
                container_id: "c1".into(),
                resources,
                vm_memory_mib: Some(768),
            }
            .into()),
            json!({"Rpc": {"Update": {"container_id": "c1", "resources": {"pids": {"limit": 7}},
                "vm_memory_mib": 768}}})
        );
        // An older host's requests still read: no VM growth, a virtio-fs share.
        let old: Request =
            serde_json::from_value(json!({"Update": {"container_id": "c1", "resources": {}}}))
                .unwrap();
        assert!(matches!(
            old,
            Request::Update(Update {
                vm_memory_mib: None,
                ..
            })
        ));
        let old: Request =
            serde_json::from_value(json!({"CreateContainer": {"container_id": "c1", "spec": {}}}))
                .unwrap();
        let Request::CreateContainer(c) = old else {
            panic!("{old:?}")
        };
        assert_eq!(
            c.share,
            ShareSource::VirtioFs {
                tag: "share".into()
            }
        );
        assert_eq!(
            serde_json::to_value(ShareSource::Disk {
                serial: "share".into()
            })
            .unwrap(),
            json!({"disk": {"serial": "share"}})
        );
        assert_eq!(
            enc(&StreamKind::Wait(ProcessRef::init("c1"))),
            json!({"Wait": {"container_id": "c1", "exec_id": null}})
        );
        let created: Result<Created, AgentError> = Ok(Created { pid: 12 });
        assert_eq!(enc(&created), json!({"Ok": {"pid": 12}}));
        let done: Result<(), AgentError> = Ok(());
        assert_eq!(enc(&done), json!({"Ok": null}));
        let err: Result<(), AgentError> = Err(AgentError::new(
            AgentErrorKind::NotRunning,
            "the process has exited",
        ));
        assert_eq!(
            enc(&err),
            json!({"Err": {"kind": "not_running", "message": "the process has exited"}})
        );
        assert_eq!(
            rpc(ConfigureNetwork {
                interfaces: vec![Interface {
                    name: "eth0".into(),
                    mac: "02:42:0a:00:00:02".into(),
                    mtu: 1400,
                    addresses: vec!["10.0.0.2/24".into()],
                }],
                routes: vec![Route {
                    destination: None,
                    gateway: Some("10.0.0.1".into()),
                    device: "eth0".into(),
                    scope_link: false,
                    metric: None,
                }],
            }
            .into()),
            json!({"Rpc": {"ConfigureNetwork": {
                "interfaces": [{"name": "eth0", "mac": "02:42:0a:00:00:02", "mtu": 1400,
                    "addresses": ["10.0.0.2/24"]}],
                "routes": [{"destination": null, "gateway": "10.0.0.1", "device": "eth0",
                    "scope_link": false, "metric": null}]}}})
        );
        let status: Result<ExitStatus, AgentError> = Ok(ExitStatus::Signaled(15));
        assert_eq!(enc(&status), json!({"Ok": {"Signaled": 15}}));
    }

    #[test]
    fn every_error_kind_has_its_name() {
        let kinds = [
            (AgentErrorKind::NotFound, "not_found"),
            (AgentErrorKind::NotRunning, "not_running"),
            (AgentErrorKind::AlreadyExists, "already_exists"),
            (AgentErrorKind::InvalidArgument, "invalid_argument"),
            (AgentErrorKind::Refused, "refused"),
            (AgentErrorKind::Runtime, "runtime"),
            (AgentErrorKind::System, "system"),
        ];
        for (kind, name) in kinds {
            assert_eq!(enc(&kind), json!(name));
        }
    }
}
