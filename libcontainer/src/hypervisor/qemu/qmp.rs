//! A small blocking QMP client with typed commands.
//!
//! Why not the `qapi` crate: its types are generated from one QEMU release's
//! schema, while runvm runs against whatever QEMU the host has (7.2 in
//! bookworm, 10.0 in backports), and it needs a dozen commands; typed structs
//! of its own for those are less than the generated crate's build.

use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("connect to {path}")]
    Connect { path: PathBuf, source: io::Error },
    #[error("QMP I/O")]
    Io(#[from] io::Error),
    #[error("QMP connection closed")]
    Closed,
    #[error("bad QMP message {0:?}")]
    Protocol(String),
    #[error("{command}: {class}: {desc}")]
    Command {
        command: &'static str,
        class: String,
        desc: String,
    },
}

/// A QMP command: its arguments are the struct's fields.
pub trait Command: Serialize {
    const NAME: &'static str;
    type Returns: DeserializeOwned;
}

/// The `{}` most commands return.
#[derive(Deserialize, Debug, PartialEq, Eq)]
pub struct Empty {}

macro_rules! no_args {
    ($($ty:ident = $name:literal -> $ret:ty;)*) => {$(
        #[derive(Serialize, Debug, Default)]
        pub struct $ty {}
        impl Command for $ty {
            const NAME: &'static str = $name;
            type Returns = $ret;
        }
    )*};
}

no_args! {
    QmpCapabilities = "qmp_capabilities" -> Empty;
    Stop = "stop" -> Empty;
    Cont = "cont" -> Empty;
    Quit = "quit" -> Empty;
    QueryMigrate = "query-migrate" -> MigrationInfo;
    QueryCpusFast = "query-cpus-fast" -> Vec<CpuInfo>;
}

/// One vCPU of `query-cpus-fast`: the host thread that runs it.
#[derive(Deserialize, Debug, PartialEq, Eq)]
pub struct CpuInfo {
    #[serde(rename = "thread-id")]
    pub thread_id: i32,
}

#[derive(Serialize, Debug)]
pub struct MigrationCapability {
    pub capability: &'static str,
    pub state: bool,
}

#[derive(Serialize, Debug)]
pub struct MigrateSetCapabilities {
    pub capabilities: Vec<MigrationCapability>,
}

impl Command for MigrateSetCapabilities {
    const NAME: &'static str = "migrate-set-capabilities";
    type Returns = Empty;
}

#[derive(Serialize, Debug)]
pub struct Migrate {
    pub uri: String,
}

impl Command for Migrate {
    const NAME: &'static str = "migrate";
    type Returns = Empty;
}

#[derive(Serialize, Debug)]
pub struct MigrateIncoming {
    pub uri: String,
}

impl Command for MigrateIncoming {
    const NAME: &'static str = "migrate-incoming";
    type Returns = Empty;
}

#[derive(Deserialize, Debug, Default, PartialEq, Eq)]
pub struct MigrationInfo {
    #[serde(default)]
    pub status: Option<String>,
    #[serde(rename = "error-desc", default)]
    pub error_desc: Option<String>,
}

#[derive(Serialize, Debug, PartialEq, Eq)]
#[serde(tag = "type", content = "data", rename_all = "lowercase")]
pub enum SocketAddress {
    /// A descriptor handed over with `getfd` under this name.
    Fd { str: String },
}

#[derive(Serialize, Debug, PartialEq, Eq)]
#[serde(tag = "type", content = "data", rename_all = "lowercase")]
pub enum ChardevBackend {
    Socket { addr: SocketAddress, server: bool },
}

#[derive(Serialize, Debug)]
pub struct ChardevAdd {
    pub id: String,
    pub backend: ChardevBackend,
}

impl Command for ChardevAdd {
    const NAME: &'static str = "chardev-add";
    type Returns = Value;
}

/// `device_add` of the devices runvm hotplugs.
#[derive(Serialize, Debug, PartialEq, Eq)]
#[serde(tag = "driver")]
pub enum DeviceAdd {
    #[serde(rename = "vhost-user-fs-pci")]
    VhostUserFs {
        id: String,
        chardev: String,
        tag: String,
        bus: String,
    },
    #[serde(rename = "pc-dimm")]
    PcDimm { id: String, memdev: String },
    #[serde(rename = "virtio-blk-pci")]
    VirtioBlk {
        id: String,
        drive: String,
        serial: String,
        bus: String,
    },
    #[serde(rename = "virtio-net-pci")]
    VirtioNet {
        id: String,
        netdev: String,
        mac: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        host_mtu: Option<u32>,
        bus: String,
    },
}

impl Command for DeviceAdd {
    const NAME: &'static str = "device_add";
    type Returns = Empty;
}

/// `object-add` of the objects runvm adds.
#[derive(Serialize, Debug)]
#[serde(tag = "qom-type")]
pub enum ObjectAdd {
    /// Guest memory for a hotplugged DIMM.
    #[serde(rename = "memory-backend-memfd")]
    MemoryBackendMemfd { id: String, size: u64, share: bool },
}

impl Command for ObjectAdd {
    const NAME: &'static str = "object-add";
    type Returns = Empty;
}

/// `blockdev-add` of a raw image file.
#[derive(Serialize, Debug)]
pub struct BlockdevAdd {
    pub driver: &'static str,
    #[serde(rename = "node-name")]
    pub node_name: String,
    pub file: BlockdevFile,
}

#[derive(Serialize, Debug)]
pub struct BlockdevFile {
    pub driver: &'static str,
    pub filename: String,
}

impl BlockdevAdd {
    pub fn raw_file(node_name: String, filename: String) -> Self {
        BlockdevAdd {
            driver: "raw",
            node_name,
            file: BlockdevFile {
                driver: "file",
                filename,
            },
        }
    }
}

impl Command for BlockdevAdd {
    const NAME: &'static str = "blockdev-add";
    type Returns = Empty;
}

/// `netdev_add` of a NIC's backend.
#[derive(Serialize, Debug)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum NetdevAdd {
    /// A tap opened by runvm, passed with `getfd` under the name `fd`.
    #[serde(rename = "tap")]
    TapFd {
        id: String,
        fd: String,
        vhost: bool,
    },
    User {
        id: String,
    },
}

/// Hand QEMU the descriptor sent with the command, under `fdname`.
#[derive(Serialize, Debug)]
pub struct GetFd {
    pub fdname: String,
}

impl Command for GetFd {
    const NAME: &'static str = "getfd";
    type Returns = Empty;
}

/// Hand QEMU the descriptor sent with the command in a new fd set, which
/// it opens as `/dev/fdset/<fdset-id>`.
#[derive(Serialize, Debug)]
pub struct AddFd {
    pub opaque: String,
}

#[derive(Deserialize, Debug, PartialEq, Eq)]
pub struct AddedFd {
    #[serde(rename = "fdset-id")]
    pub fdset_id: i64,
}

impl Command for AddFd {
    const NAME: &'static str = "add-fd";
    type Returns = AddedFd;
}

impl Command for NetdevAdd {
    const NAME: &'static str = "netdev_add";
    type Returns = Empty;
}

#[derive(Serialize)]
struct Message<'a, C> {
    execute: &'static str,
    arguments: &'a C,
}

/// A reply or an event, as QMP sends them.
#[derive(Deserialize)]
struct Incoming {
    #[serde(rename = "return")]
    ret: Option<Value>,
    error: Option<QmpErrorBody>,
    #[serde(rename = "QMP")]
    greeting: Option<Value>,
}

#[derive(Deserialize)]
struct QmpErrorBody {
    #[serde(default)]
    class: String,
    #[serde(default)]
    desc: String,
}

pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Connect, waiting up to `timeout` for the socket to accept, and leave
    /// capabilities negotiation mode. `alive` says whether it is still worth
    /// waiting (the QEMU process has not exited).
    pub fn connect(
        path: &Path,
        timeout: Duration,
        alive: impl Fn() -> bool,
    ) -> Result<Self, QmpError> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(_) if Instant::now() < deadline && alive() => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(source) => {
                    return Err(QmpError::Connect {
                        path: path.to_path_buf(),
                        source,
                    })
                }
            }
        };
        stream.set_read_timeout(Some(timeout))?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        };
        let (greeting, line) = qmp.read_message()?;
        if greeting.greeting.is_none() {
            return Err(QmpError::Protocol(line));
        }
        qmp.execute(&QmpCapabilities {})?;
        Ok(qmp)
    }

    pub fn set_timeout(&self, timeout: Duration) -> Result<(), QmpError> {
        self.writer.set_read_timeout(Some(timeout))?;
        Ok(())
    }

    fn read_message(&mut self) -> Result<(Incoming, String), QmpError> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(QmpError::Closed);
        }
        let line = line.trim().to_string();
        match serde_json::from_str(&line) {
            Ok(msg) => Ok((msg, line)),
            Err(_) => Err(QmpError::Protocol(line)),
        }
    }

    /// Run one command and return what it returns; events are skipped.
    pub fn execute<C: Command>(&mut self, command: &C) -> Result<C::Returns, QmpError> {
        self.execute_passing(command, None)
    }

    /// Run one command with `fd` sent along (SCM_RIGHTS), as `getfd`
    /// takes it.
    pub fn execute_with_fd<C: Command>(
        &mut self,
        command: &C,
        fd: BorrowedFd<'_>,
    ) -> Result<C::Returns, QmpError> {
        self.execute_passing(command, Some(fd))
    }

    fn execute_passing<C: Command>(
        &mut self,
        command: &C,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<C::Returns, QmpError> {
        let mut line = serde_json::to_string(&Message {
            execute: C::NAME,
            arguments: command,
        })
        .map_err(|e| QmpError::Protocol(e.to_string()))?;
        line.push('\n');
        match fd {
            None => self.writer.write_all(line.as_bytes())?,
            Some(fd) => {
                use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
                let fds = [fd.as_raw_fd()];
                let iov = [io::IoSlice::new(line.as_bytes())];
                let sent = sendmsg::<()>(
                    self.writer.as_raw_fd(),
                    &iov,
                    &[ControlMessage::ScmRights(&fds)],
                    MsgFlags::empty(),
                    None,
                )
                .map_err(io::Error::from)?;
                // The descriptor went with the first bytes; the rest, if
                // any, as usual.
                self.writer.write_all(&line.as_bytes()[sent..])?;
            }
        }
        loop {
            let (reply, text) = self.read_message()?;
            if let Some(ret) = reply.ret {
                return serde_json::from_value(ret).map_err(|_| QmpError::Protocol(text));
            }
            if let Some(err) = reply.error {
                return Err(QmpError::Command {
                    command: C::NAME,
                    class: err.class,
                    desc: err.desc,
                });
            }
            // An asynchronous event: not the reply we wait for.
        }
    }
}

/// The JSON a command is sent as.
#[cfg(test)]
fn encode<C: Command>(command: &C) -> Value {
    serde_json::to_value(Message {
        execute: C::NAME,
        arguments: command,
    })
    .expect("QMP commands serialize")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::os::unix::net::UnixListener;

    /// A scripted QMP server: checks each request, sends canned replies.
    fn serve(listener: UnixListener, script: Vec<(&'static str, &'static str)>) {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut w = stream;
        w.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
            .unwrap();
        for (expect, reply) in script {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let v: Value = serde_json::from_str(&line).unwrap();
            assert_eq!(v["execute"], expect);
            w.write_all(reply.as_bytes()).unwrap();
        }
    }

    #[test]
    fn a_descriptor_goes_with_its_command() {
        use std::os::fd::AsFd;
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut w = stream.try_clone().unwrap();
            w.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
                .unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            w.write_all(b"{\"return\": {}}\n").unwrap();
            // The command with the descriptor, in one message.
            let mut buf = [0u8; 256];
            let (n, fds) = crate::sockdir::recv_with_fds(stream.as_fd(), &mut buf).unwrap();
            w.write_all(b"{\"return\": {}}\n").unwrap();
            let v: Value = serde_json::from_slice(buf[..n].trim_ascii_end()).unwrap();
            (v, fds)
        });
        let mut qmp = Qmp::connect(&path, Duration::from_secs(5), || true).unwrap();
        let file = tempfile::tempfile().unwrap();
        qmp.execute_with_fd(
            &GetFd {
                fdname: "tapfd-net0".into(),
            },
            file.as_fd(),
        )
        .unwrap();
        let (v, fds) = server.join().unwrap();
        assert_eq!(
            v,
            json!({"execute": "getfd", "arguments": {"fdname": "tapfd-net0"}})
        );
        assert_eq!(fds.len(), 1);
        // The same open file: what is written through one is seen in the other.
        let mut sent = std::fs::File::from(fds.into_iter().next().unwrap());
        sent.write_all(b"via the copy").unwrap();
        let mut back = String::new();
        use std::io::{Read, Seek};
        let mut file = file;
        file.seek(io::SeekFrom::Start(0)).unwrap();
        file.read_to_string(&mut back).unwrap();
        assert_eq!(back, "via the copy");
    }

    #[test]
    fn negotiates_skips_events_and_reports_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            serve(
                listener,
                vec![
                    ("qmp_capabilities", "{\"return\": {}}\n"),
                    ("stop", "{\"event\": \"STOP\", \"data\": {}}\n{\"return\": {}}\n"),
                    (
                        "query-migrate",
                        "{\"return\": {\"status\": \"failed\", \"error-desc\": \"no space\"}}\n",
                    ),
                    (
                        "device_add",
                        "{\"error\": {\"class\": \"GenericError\", \"desc\": \"Bus 'rp9' not found\"}}\n",
                    ),
                ],
            )
        });
        let mut qmp = Qmp::connect(&path, Duration::from_secs(5), || true).unwrap();
        assert_eq!(qmp.execute(&Stop {}).unwrap(), Empty {});
        let info = qmp.execute(&QueryMigrate {}).unwrap();
        assert_eq!(info.status.as_deref(), Some("failed"));
        assert_eq!(info.error_desc.as_deref(), Some("no space"));
        let err = qmp
            .execute(&DeviceAdd::VhostUserFs {
                id: "fs1-dev".into(),
                chardev: "fs1".into(),
                tag: "share".into(),
                bus: "rp9".into(),
            })
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "device_add: GenericError: Bus 'rp9' not found"
        );
        server.join().unwrap();
    }

    #[test]
    fn commands_encode_as_qemu_expects() {
        assert_eq!(
            encode(&DeviceAdd::VirtioNet {
                id: "net0-dev".into(),
                netdev: "net0".into(),
                mac: "52:54:00:00:00:01".into(),
                host_mtu: Some(1400),
                bus: "rp1".into(),
            }),
            json!({"execute": "device_add", "arguments": {"driver": "virtio-net-pci",
                "id": "net0-dev", "netdev": "net0", "mac": "52:54:00:00:00:01",
                "host_mtu": 1400, "bus": "rp1"}})
        );
        assert_eq!(
            encode(&MigrateSetCapabilities {
                capabilities: vec![MigrationCapability {
                    capability: "x-ignore-shared",
                    state: true
                }]
            }),
            json!({"execute": "migrate-set-capabilities", "arguments": {"capabilities": [
                {"capability": "x-ignore-shared", "state": true}]}})
        );
        assert_eq!(
            encode(&AddFd {
                opaque: "disk0".into()
            }),
            json!({"execute": "add-fd", "arguments": {"opaque": "disk0"}})
        );
        assert_eq!(
            encode(&ChardevAdd {
                id: "fs1".into(),
                backend: ChardevBackend::Socket {
                    addr: SocketAddress::Fd {
                        str: "fs1-fd".into()
                    },
                    server: false
                }
            }),
            json!({"execute": "chardev-add", "arguments": {"id": "fs1", "backend": {
                "type": "socket", "data": {"addr": {"type": "fd", "data": {"str": "fs1-fd"}},
                "server": false}}}})
        );
        assert_eq!(
            encode(&NetdevAdd::TapFd {
                id: "net0".into(),
                fd: "tapfd-net0".into(),
                vhost: false
            }),
            json!({"execute": "netdev_add", "arguments": {"type": "tap", "id": "net0",
                "fd": "tapfd-net0", "vhost": false}})
        );
        assert_eq!(
            encode(&GetFd {
                fdname: "tapfd-net0".into()
            }),
            json!({"execute": "getfd", "arguments": {"fdname": "tapfd-net0"}})
        );
        assert_eq!(
            encode(&NetdevAdd::User { id: "net1".into() }),
            json!({"execute": "netdev_add", "arguments": {"type": "user", "id": "net1"}})
        );
        assert_eq!(
            encode(&Cont {}),
            json!({"execute": "cont", "arguments": {}})
        );
        assert_eq!(
            encode(&BlockdevAdd::raw_file("disk0".into(), "/d/c1.img".into())),
            json!({"execute": "blockdev-add", "arguments": {"driver": "raw",
                "node-name": "disk0", "file": {"driver": "file", "filename": "/d/c1.img"}}})
        );
        assert_eq!(
            encode(&DeviceAdd::VirtioBlk {
                id: "disk0-dev".into(),
                drive: "disk0".into(),
                serial: "share".into(),
                bus: "rp0".into(),
            }),
            json!({"execute": "device_add", "arguments": {"driver": "virtio-blk-pci",
                "id": "disk0-dev", "drive": "disk0", "serial": "share", "bus": "rp0"}})
        );
        assert_eq!(
            encode(&ObjectAdd::MemoryBackendMemfd {
                id: "dimm0-mem".into(),
                size: 512 << 20,
                share: true,
            }),
            json!({"execute": "object-add", "arguments": {"qom-type": "memory-backend-memfd",
                "id": "dimm0-mem", "size": 536870912u64, "share": true}})
        );
        assert_eq!(
            encode(&DeviceAdd::PcDimm {
                id: "dimm0".into(),
                memdev: "dimm0-mem".into(),
            }),
            json!({"execute": "device_add", "arguments": {"driver": "pc-dimm",
                "id": "dimm0", "memdev": "dimm0-mem"}})
        );
    }

    #[test]
    fn gives_up_when_the_process_is_gone() {
        let tmp = tempfile::tempdir().unwrap();
        let err = Qmp::connect(
            &tmp.path().join("none.sock"),
            Duration::from_secs(30),
            || false,
        );
        assert!(matches!(err, Err(QmpError::Connect { .. })));
    }
}
