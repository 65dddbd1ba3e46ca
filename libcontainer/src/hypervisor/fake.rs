//! A fake backend for unit tests: no VM, an in-process "guest" that speaks
//! the agent protocol on a unix socket, scripted to answer, hang or die.
//! The shim's and the verbs' logic runs against it unchanged.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use runvm_protocol::mux::yamux_config;
use runvm_protocol::{
    recv_async, send_async, AgentError, AgentErrorKind, AgentInfo, CgroupStats, Created,
    ExitStatus, GuestProcess, ProcessRef, Request, StreamKind, PROTOCOL_VERSION,
};
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_yamux::{Session, StreamHandle};

use super::{
    Accelerator, AgentEndpoint, Capabilities, Device, ExitWatch, Hypervisor, HypervisorError,
    VmSpec,
};

/// How the fake guest behaves.
#[derive(Clone, Debug)]
pub struct Script {
    pub capabilities: Capabilities,
    /// Requests (by their variant's name, e.g. "Stats") the guest receives
    /// and never answers.
    pub hang: HashSet<&'static str>,
    /// A guest that breaks the protocol, for the host's defences.
    pub evil: Option<Evil>,
}

/// How a malicious guest breaks the protocol.
#[derive(Clone, Copy, Debug)]
pub enum Evil {
    /// Answers requests of this name with a length prefix longer than a
    /// frame may be (and a few bytes).
    Oversized(&'static str),
    /// Answers requests of this name with a frame that is not JSON.
    Garbage(&'static str),
    /// Answers requests of this name with an error of 200 KiB.
    LongError(&'static str),
    /// Reports every exit as `exit 1000000`.
    ImpossibleExit,
    /// Opens this many streams to the host as a session starts, writing
    /// 64 KiB of junk on each.
    Flood(usize),
}

impl Default for Script {
    fn default() -> Self {
        Script {
            capabilities: Capabilities {
                pause: true,
                snapshot: true,
                hotplug_fs: true,
                hotplug_disk: true,
                hotplug_net: true,
                hotplug_memory: true,
            },
            hang: HashSet::new(),
            evil: None,
        }
    }
}

fn name(req: &Request) -> &'static str {
    match req {
        Request::Ping(_) => "Ping",
        Request::CreateContainer(_) => "CreateContainer",
        Request::StartContainer(_) => "StartContainer",
        Request::Signal(_) => "Signal",
        Request::Exec(_) => "Exec",
        Request::ResizeTty(_) => "ResizeTty",
        Request::Pause(_) => "Pause",
        Request::Resume(_) => "Resume",
        Request::Stats(_) => "Stats",
        Request::Update(_) => "Update",
        Request::ListProcesses(_) => "ListProcesses",
        Request::SyncGuest(_) => "SyncGuest",
        Request::ConfigureNetwork(_) => "ConfigureNetwork",
        Request::Warmup(_) => "Warmup",
    }
}

/// A process in the fake guest: it runs until a signal ends it.
struct Proc {
    exit: watch::Sender<Option<ExitStatus>>,
}

#[derive(Default)]
struct Guest {
    script: Script,
    processes: Mutex<HashMap<ProcessRef, Arc<Proc>>>,
    /// Every request's name, as it arrives.
    seen: Option<mpsc::UnboundedSender<&'static str>>,
}

impl Guest {
    fn process(&self, p: &ProcessRef) -> Result<Arc<Proc>, AgentError> {
        let procs = self.processes.lock().unwrap();
        procs
            .get(p)
            .cloned()
            .ok_or_else(|| AgentError::new(AgentErrorKind::NotFound, format!("no process {p:?}")))
    }

    fn spawn(&self, p: ProcessRef) {
        let proc_ = Arc::new(Proc {
            exit: watch::channel(None).0,
        });
        self.processes.lock().unwrap().insert(p, proc_);
    }

    fn running(&self, p: &ProcessRef) -> Result<Arc<Proc>, AgentError> {
        let proc_ = self.process(p)?;
        if proc_.exit.borrow().is_some() {
            return Err(AgentError::new(
                AgentErrorKind::NotRunning,
                "the process has exited",
            ));
        }
        Ok(proc_)
    }

    async fn answer(&self, req: Request, stream: &mut StreamHandle) {
        fn send<T: Serialize>(r: Result<T, AgentError>) -> Vec<u8> {
            serde_json::to_vec(&r).unwrap()
        }
        let init = |id: &str| ProcessRef::init(id);
        let frame = match req {
            Request::Ping(_) => send(Ok(AgentInfo {
                version: "fake".into(),
                protocol: PROTOCOL_VERSION,
                kernel_release: "fake".into(),
            })),
            Request::CreateContainer(c) => {
                self.spawn(init(&c.container_id));
                send(Ok(Created { pid: 1 }))
            }
            Request::StartContainer(s) => send(self.running(&init(&s.container_id)).map(|_| ())),
            Request::Signal(s) => send(self.running(&s.process).map(|p| {
                p.exit.send_replace(Some(ExitStatus::Signaled(s.signal)));
            })),
            Request::Exec(e) => {
                let p = ProcessRef {
                    container_id: e.container_id,
                    exec_id: Some(e.exec_id),
                };
                self.spawn(p);
                send(Ok(Created { pid: 2 }))
            }
            Request::Stats(s) => send(self.running(&init(&s.container_id)).map(|_| CgroupStats {
                pids_current: 1,
                ..CgroupStats::default()
            })),
            Request::ListProcesses(l) => send(self.running(&init(&l.container_id)).map(|_| {
                vec![GuestProcess {
                    pid: 1,
                    ppid: 0,
                    uid: 0,
                    start_time: 0,
                    cpu_secs: 0,
                    tty: None,
                    cmdline: "fake".into(),
                }]
            })),
            Request::Warmup(_)
            | Request::ResizeTty(_)
            | Request::Pause(_)
            | Request::Resume(_)
            | Request::Update(_)
            | Request::SyncGuest(_)
            | Request::ConfigureNetwork(_) => send::<()>(Ok(())),
        };
        let _ = runvm_protocol::write_frame_async(stream, &frame).await;
    }

    async fn wait(&self, p: &ProcessRef) -> Result<ExitStatus, AgentError> {
        let mut exit = self.process(p)?.exit.subscribe();
        let status = exit.wait_for(Option::is_some).await.ok().and_then(|s| *s);
        status.ok_or_else(|| AgentError::new(AgentErrorKind::System, "exit status lost"))
    }

    async fn handle(self: Arc<Self>, mut stream: StreamHandle) {
        let Ok(kind) = recv_async::<_, StreamKind>(&mut stream).await else {
            return;
        };
        match kind {
            StreamKind::Rpc(req) => {
                let req = *req;
                let which = name(&req);
                if let Some(seen) = &self.seen {
                    let _ = seen.send(which);
                }
                if self.script.hang.contains(which) {
                    std::future::pending::<()>().await;
                }
                match self.script.evil {
                    Some(Evil::Oversized(n)) if n == which => {
                        let len = (runvm_protocol::MAX_FRAME_LEN as u32 + 1).to_be_bytes();
                        let _ = stream.write_all(&len).await;
                        let _ = stream.write_all(b"{\"Ok\":").await;
                    }
                    Some(Evil::Garbage(n)) if n == which => {
                        let _ =
                            runvm_protocol::write_frame_async(&mut stream, b"\x00{not json").await;
                    }
                    Some(Evil::LongError(n)) if n == which => {
                        let long = AgentError::new(AgentErrorKind::System, "x".repeat(200 << 10));
                        let _ = send_async(&mut stream, &Err::<(), _>(long)).await;
                    }
                    _ => self.answer(req, &mut stream).await,
                }
            }
            StreamKind::Stdin(_) => {
                let _ = tokio::io::copy(&mut stream, &mut tokio::io::sink()).await;
            }
            // Output ends when the process does.
            StreamKind::Stdout(p) | StreamKind::Stderr(p) => {
                let _ = self.wait(&p).await;
            }
            StreamKind::Wait(p) => {
                let mut status = self.wait(&p).await;
                if matches!(self.script.evil, Some(Evil::ImpossibleExit)) {
                    status = Ok(ExitStatus::Exited(1_000_000));
                }
                let _ = send_async(&mut stream, &status).await;
            }
        }
        let _ = stream.shutdown().await;
    }
}

/// A fake VM.
pub struct FakeVm {
    spec: VmSpec,
    guest: Arc<Guest>,
    exit_tx: watch::Sender<Option<String>>,
    /// Ends the guest (the VM dies).
    kill: Arc<Mutex<Option<oneshot::Sender<()>>>>,
    thread: Option<std::thread::JoinHandle<()>>,
    launched: bool,
    /// What was asked of the VM, in order: "launch", "pause", "hotplug"...
    pub calls: Arc<Mutex<Vec<String>>>,
}

impl FakeVm {
    pub fn new(spec: VmSpec, script: Script) -> Self {
        FakeVm {
            spec,
            guest: Arc::new(Guest {
                script,
                ..Guest::default()
            }),
            exit_tx: watch::channel(None).0,
            kill: Arc::default(),
            thread: None,
            launched: false,
            calls: Arc::default(),
        }
    }

    /// Report every request the guest receives on the returned channel.
    pub fn watch_requests(&mut self) -> mpsc::UnboundedReceiver<&'static str> {
        let (tx, rx) = mpsc::unbounded_channel();
        Arc::get_mut(&mut self.guest).expect("before launch").seen = Some(tx);
        rx
    }

    /// A handle that makes the VM die, from any thread.
    pub fn killer(&self) -> Killer {
        Killer {
            kill: self.kill.clone(),
            exit_tx: self.exit_tx.clone(),
        }
    }

    fn socket(&self) -> PathBuf {
        self.spec.dir.join("fake-agent.sock")
    }

    fn call(&self, what: &str) {
        self.calls.lock().unwrap().push(what.to_string());
    }

    fn end(&mut self, why: &str) {
        if let Some(kill) = self.kill.lock().unwrap().take() {
            let _ = kill.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if self.exit_tx.borrow().is_none() {
            self.exit_tx.send_replace(Some(why.to_string()));
        }
    }
}

/// Kills a fake VM: its guest stops answering and its session closes.
#[derive(Clone)]
pub struct Killer {
    kill: Arc<Mutex<Option<oneshot::Sender<()>>>>,
    exit_tx: watch::Sender<Option<String>>,
}

impl Killer {
    pub fn kill(&self) {
        if let Some(kill) = self.kill.lock().unwrap().take() {
            let _ = kill.send(());
        }
        self.exit_tx
            .send_replace(Some("killed by signal 9".to_string()));
    }
}

/// Serve agent sessions on `listener` until `kill`.
async fn serve(guest: Arc<Guest>, listener: UnixListener, kill: oneshot::Receiver<()>) {
    let sessions = async {
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                return;
            };
            let mut session = Session::new_server(conn, yamux_config());
            if let Some(Evil::Flood(n)) = guest.script.evil {
                let mut control = session.control();
                tokio::spawn(async move {
                    for _ in 0..n {
                        let Ok(mut s) = control.open_stream().await else {
                            return;
                        };
                        tokio::spawn(async move {
                            let _ = s.write_all(&[0xff; 64 << 10]).await;
                        });
                    }
                });
            }
            while let Some(Ok(stream)) = session.next().await {
                tokio::spawn(guest.clone().handle(stream));
            }
        }
    };
    tokio::select! {
        _ = sessions => {}
        _ = kill => {}
    }
}

impl Hypervisor for FakeVm {
    fn backend(&self) -> &'static str {
        "fake"
    }

    fn capabilities(&self) -> Capabilities {
        self.guest.script.capabilities
    }

    fn accel(&self) -> Accelerator {
        Accelerator {
            name: "none",
            reason: "a fake VM".into(),
        }
    }

    fn binary(&self) -> &Path {
        Path::new("/bin/true")
    }

    fn describe(&self) -> Result<serde_json::Map<String, serde_json::Value>, HypervisorError> {
        Ok(serde_json::Map::new())
    }

    fn layout(&self) -> String {
        format!("fake {} {}", self.spec.vcpus, self.spec.memory_mib)
    }

    fn launch(&mut self) -> Result<(), HypervisorError> {
        self.call("launch");
        let path = self.socket();
        let std_listener = std::os::unix::net::UnixListener::bind(&path).map_err(|source| {
            HypervisorError::Dir {
                path: path.clone(),
                source,
            }
        })?;
        std_listener.set_nonblocking(true).unwrap();
        let (kill_tx, kill_rx) = oneshot::channel();
        let guest = self.guest.clone();
        // The guest runs on a thread and runtime of its own, like a VM.
        self.thread = Some(std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = UnixListener::from_std(std_listener).unwrap();
                serve(guest, listener, kill_rx).await;
            });
            rt.shutdown_timeout(Duration::from_millis(100));
        }));
        *self.kill.lock().unwrap() = Some(kill_tx);
        self.launched = true;
        Ok(())
    }

    fn adopt(&mut self, _pid: i32) -> Result<(), HypervisorError> {
        self.call("adopt");
        Err(HypervisorError::Unsupported {
            backend: "fake",
            what: "adopting a VM",
        })
    }

    fn release(&mut self) {
        self.call("release");
    }

    fn pid(&self) -> Option<i32> {
        self.launched.then(|| std::process::id() as i32)
    }

    fn vcpu_threads(&mut self) -> Result<Vec<i32>, HypervisorError> {
        self.call("vcpu_threads");
        Ok(self.pid().into_iter().collect())
    }

    fn agent_endpoint(&self) -> AgentEndpoint {
        AgentEndpoint::Serial {
            socket: self.socket(),
        }
    }

    fn exit_watch(&self) -> ExitWatch {
        self.exit_tx.subscribe()
    }

    fn pause(&mut self) -> Result<(), HypervisorError> {
        self.call("pause");
        Ok(())
    }

    fn resume(&mut self) -> Result<(), HypervisorError> {
        self.call("resume");
        Ok(())
    }

    fn hotplug(&mut self, device: &Device) -> Result<(), HypervisorError> {
        self.call(&format!("hotplug {}", device.kind()));
        Ok(())
    }

    fn hotplug_memory(&mut self, mib: u32) -> Result<(), HypervisorError> {
        self.call(&format!("hotplug {mib} MiB of memory"));
        Ok(())
    }

    fn snapshot(&mut self, _state: &Path) -> Result<(), HypervisorError> {
        self.call("snapshot");
        Ok(())
    }

    fn restore(&mut self) -> Result<(), HypervisorError> {
        self.call("restore");
        Ok(())
    }

    fn checkpoint(&mut self, _image: &Path) -> Result<(), HypervisorError> {
        self.call("checkpoint");
        Ok(())
    }

    fn restorable(&self) -> VmSpec {
        self.spec.clone()
    }

    fn stop(&mut self, _timeout: Duration) -> Result<(), HypervisorError> {
        self.call("stop");
        self.end("exited with status 0");
        let _ = std::fs::remove_file(self.socket());
        Ok(())
    }
}

impl Drop for FakeVm {
    fn drop(&mut self) {
        self.end("dropped");
    }
}
