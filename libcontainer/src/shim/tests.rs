//! The shim and the verbs against the fake backend: their rules and their
//! failures, in seconds and without a VM. The end-to-end tests under tests/
//! prove the same flows with QEMU and a real guest.

use std::fs::{File, OpenOptions};
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::Duration;

use slog::Logger;
use tokio::sync::mpsc;

use super::stdio::Local;
use super::{Shim, ShimArgs, VM_LOST_EXIT_CODE};
use crate::config::Config;
use crate::container::{ContainerError, Runtime};
use crate::control::{self, ControlError, ShimFailure};
use crate::hypervisor::fake::{Evil, FakeVm, Killer, Script};
use crate::hypervisor::{self, FsDevice, Hypervisor, Operation};
use crate::state::{State, StateStore};
use crate::status::{ContainerStatus, Refusal};

/// A container whose shim serves on a thread of its own, over a fake VM.
struct Harness {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    id: String,
    rt: Runtime,
    shim: Option<JoinHandle<i32>>,
    killer: Killer,
    /// Names of the requests the fake guest receives.
    requests: std::sync::mpsc::Receiver<&'static str>,
    /// Signals "received" by the shim.
    signals: mpsc::UnboundedSender<i32>,
}

fn log() -> Logger {
    Logger::root(slog::Discard, slog::o!())
}

fn null() -> std::os::fd::OwnedFd {
    let f: File = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .unwrap();
    f.into()
}

fn config(request_secs: u64) -> Config {
    let mut c = Config::default();
    // Any existing file will do: the fake does not boot it.
    c.hypervisor.qemu.kernel = Some("/dev/null".into());
    c.hypervisor.qemu.initrd = Some("/dev/null".into());
    c.runtime.request_secs = request_secs;
    c.runtime.boot_secs = 10;
    c.runtime.stop_secs = 2;
    c
}

impl Harness {
    /// A created container.
    fn created(script: Script, request_secs: u64) -> Harness {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let id = "c1".to_string();
        let store = StateStore::new(&root);
        let dir = store.create_dir(&id).unwrap();
        let bundle = tmp.path().to_path_buf();
        store
            .save(&State::creating(&id, bundle.clone(), bundle.join("rootfs")))
            .unwrap();
        let config = config(request_secs);
        let spec = hypervisor::container_vm(
            &config,
            "runvm-c1".into(),
            &dir,
            hypervisor::Device::Fs(FsDevice {
                tag: "share".into(),
                socket: "share.sock".into(),
            }),
            &[],
        )
        .unwrap();
        let mut vm = FakeVm::new(spec, script);
        let mut seen = vm.watch_requests();
        let (req_tx, requests) = std::sync::mpsc::channel();
        let (killer_tx, killer_rx) = std::sync::mpsc::channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (signals, signals_rx) = mpsc::unbounded_channel();
        let args = ShimArgs {
            root: root.clone(),
            id: id.clone(),
            ready_fd: None,
            console_socket: None,
            log: log(),
        };
        let shim_config = config.clone();
        let shim = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                tokio::spawn(async move {
                    while let Some(r) = seen.recv().await {
                        let _ = req_tx.send(r);
                    }
                });
                let mut shim = Shim::new(
                    &args,
                    store,
                    shim_config,
                    crate::network::Mode::New,
                    crate::hooks::Namespaces::of_this_process().unwrap(),
                )
                .unwrap();
                vm.launch().unwrap();
                killer_tx.send(vm.killer()).unwrap();
                shim.vm = Some(Box::new(vm));
                shim.connect_agent(false).await.unwrap();
                let local = Local {
                    stdin: null(),
                    stdout: null(),
                    stderr: Some(null()),
                };
                shim.create_in_guest(serde_json::json!({}), local)
                    .await
                    .unwrap();
                ready_tx.send(()).unwrap();
                shim.serve(signals_rx).await
            })
        });
        let killer = killer_rx.recv().unwrap();
        ready_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the shim came up");
        let rt = Runtime::with_config(&root, config, log());
        Harness {
            _tmp: tmp,
            root,
            id,
            rt,
            shim: Some(shim),
            killer,
            requests,
            signals,
        }
    }

    fn dir(&self) -> PathBuf {
        self.root.join(&self.id)
    }

    fn status(&self) -> ContainerStatus {
        self.rt.state(&self.id).unwrap().status
    }

    /// The shim's exit code.
    fn wait_shim(&mut self) -> i32 {
        self.shim.take().unwrap().join().unwrap()
    }

    /// Wait until the guest has received a request of this name.
    fn wait_request(&self, name: &str) {
        loop {
            let got = self
                .requests
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("the guest never got {name}"));
            if got == name {
                return;
            }
        }
    }

    /// The shim's stand-in for the stopped state: the recorded shim is gone.
    fn stopped_state(&self) -> State {
        StateStore::new(&self.root).load(&self.id).unwrap()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(shim) = self.shim.take() {
            self.killer.kill();
            let _ = shim.join();
        }
    }
}

fn refused(r: Result<(), ContainerError>) -> Refusal {
    match r {
        Err(ContainerError::Refused(r)) => r,
        other => panic!("not a refusal: {other:?}"),
    }
}

fn shim_refusal<T: std::fmt::Debug>(r: Result<T, ControlError>) -> Refusal {
    match r {
        Err(ControlError::Failed(ShimFailure::Refused(r))) => r,
        other => panic!("not a refusal from the shim: {other:?}"),
    }
}

#[test]
fn start_refusals_in_runc_words() {
    let h = Harness::created(Script::default(), 5);
    assert_eq!(h.status(), ContainerStatus::Created);
    // The shim refuses by its own status, whatever the verb checked.
    h.rt.pause(&h.id).unwrap();
    let again = control::call(&h.dir(), control::Start, Duration::from_secs(5));
    let r = shim_refusal(again);
    assert_eq!(
        r.to_string(),
        "cannot start a container in the paused state"
    );
    assert_eq!(
        refused(h.rt.start(&h.id)),
        Refusal::StartInState(ContainerStatus::Paused)
    );
    h.rt.resume(&h.id).unwrap();
    assert_eq!(h.status(), ContainerStatus::Created);
    h.rt.start(&h.id).unwrap();
    assert_eq!(h.status(), ContainerStatus::Running);
    assert_eq!(refused(h.rt.start(&h.id)), Refusal::StartRunning);
    let r = shim_refusal(control::call(
        &h.dir(),
        control::Start,
        Duration::from_secs(5),
    ));
    assert_eq!(r.to_string(), "cannot start an already running container");
    assert_eq!(refused(h.rt.resume(&h.id)), Refusal::NotPaused);
}

#[test]
fn a_killed_container_stops_and_refuses_more_kills() {
    let mut h = Harness::created(Script::default(), 5);
    h.rt.start(&h.id).unwrap();
    h.rt.kill(&h.id, libc::SIGTERM, false).unwrap();
    // The fake's init dies of the signal: 128 + 15, as a shell reports it.
    assert_eq!(h.wait_shim(), 143);
    let state = h.stopped_state();
    assert_eq!(state.status, ContainerStatus::Stopped);
    assert_eq!(state.exit_code, Some(143));
    // The recorded shim (this test process) still lives, so the status
    // comes from the file; a kill is refused in runc's words.
    let err = h.rt.kill(&h.id, libc::SIGKILL, false).unwrap_err();
    assert_eq!(err.to_string(), "container not running");
    // `kill --all` of a stopped container is not an error, as in runc.
    h.rt.kill(&h.id, libc::SIGKILL, true).unwrap();
    assert_eq!(refused(h.rt.pause(&h.id)), Refusal::NotRunning);
    let err = h.rt.stats(&h.id).unwrap_err();
    assert_eq!(err.to_string(), "container not running");
}

#[test]
fn a_signal_to_the_shim_reaches_the_container() {
    let mut h = Harness::created(Script::default(), 5);
    h.rt.start(&h.id).unwrap();
    h.signals.send(libc::SIGHUP).unwrap();
    h.wait_request("Signal");
    assert_eq!(h.wait_shim(), 128 + libc::SIGHUP);
}

#[test]
fn a_vm_that_dies_mid_request_fails_the_request_and_stops_the_container() {
    let mut script = Script::default();
    script.hang.insert("Stats");
    let mut h = Harness::created(script, 30);
    h.rt.start(&h.id).unwrap();
    let root = h.root.clone();
    let id = h.id.clone();
    let asking =
        std::thread::spawn(move || Runtime::with_config(&root, config(30), log()).stats(&id));
    h.wait_request("Stats");
    h.killer.kill();
    let err = asking.join().unwrap().unwrap_err();
    assert_eq!(err.to_string(), "the connection to the agent is lost");
    assert_eq!(h.wait_shim(), VM_LOST_EXIT_CODE);
    let state = h.stopped_state();
    assert_eq!(state.status, ContainerStatus::Stopped);
    // A lost VM leaves no exit code: the container did not exit.
    assert_eq!(state.exit_code, None);
}

#[test]
fn an_unanswered_request_times_out_and_the_container_goes_on() {
    let mut script = Script::default();
    script.hang.insert("Stats");
    script.hang.insert("ListProcesses");
    let mut h = Harness::created(script, 1);
    h.rt.start(&h.id).unwrap();
    let err = h.rt.stats(&h.id).unwrap_err();
    assert_eq!(err.to_string(), "the agent did not answer within 1s");
    let err = h.rt.ps(&h.id).unwrap_err();
    assert_eq!(err.to_string(), "the agent did not answer within 1s");
    assert_eq!(h.status(), ContainerStatus::Running);
    // Not a kill: with a one-second timeout, a loaded host could fail it.
    h.killer.kill();
    assert_eq!(h.wait_shim(), VM_LOST_EXIT_CODE);
}

#[test]
fn ps_lists_the_shim_and_the_guest_processes() {
    let h = Harness::created(Script::default(), 5);
    let (host_pids, guest) = h.rt.ps(&h.id).unwrap();
    assert_eq!(host_pids, [std::process::id() as i32]);
    assert_eq!(guest.len(), 1);
    assert_eq!(guest[0].cmdline, "fake");
}

#[test]
fn a_backend_without_an_operation_says_so() {
    let mut script = Script::default();
    script.capabilities.snapshot = false;
    let tmp = tempfile::tempdir().unwrap();
    let spec = hypervisor::template_vm(&config(5), "t".into(), tmp.path(), tmp.path().join("mem"))
        .unwrap();
    let vm = FakeVm::new(spec, script);
    assert!(vm.supports(Operation::Pause).is_ok());
    let err = vm.supports(Operation::Snapshot).unwrap_err();
    assert_eq!(err.to_string(), "fake does not support snapshots");
    let err = vm.supports(Operation::Restore).unwrap_err();
    assert_eq!(
        err.to_string(),
        "fake does not support restoring a snapshot"
    );
}

/// The fake serves on a socket in the container's directory: nothing of it
/// outlives the shim.
#[test]
fn the_shim_leaves_no_sockets() {
    let mut h = Harness::created(Script::default(), 5);
    h.rt.kill(&h.id, libc::SIGKILL, false).unwrap();
    assert_eq!(h.wait_shim(), 137);
    let left: Vec<String> = std::fs::read_dir(h.dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".sock"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

fn evil(evil: Evil) -> Script {
    Script {
        evil: Some(evil),
        ..Script::default()
    }
}

/// A frame too long to be one, or one that is not JSON, in the reply to a
/// verb: the verb fails, the shim closes the session and ends the container
/// as a lost VM (no panic, no exit code from the guest), and an honest
/// container beside it goes on.
#[test]
fn a_guest_that_breaks_the_protocol_ends_its_own_container_only() {
    let honest = Harness::created(Script::default(), 5);
    honest.rt.start(&honest.id).unwrap();
    for broken in [Evil::Oversized("Stats"), Evil::Garbage("Stats")] {
        let mut h = Harness::created(evil(broken), 5);
        h.rt.start(&h.id).unwrap();
        let err = h.rt.stats(&h.id).unwrap_err().to_string();
        assert_eq!(
            err, "the agent sent a reply runvm cannot read",
            "{broken:?}"
        );
        assert_eq!(h.wait_shim(), VM_LOST_EXIT_CODE, "{broken:?}");
        let state = h.stopped_state();
        assert_eq!(state.status, ContainerStatus::Stopped);
        assert_eq!(state.exit_code, None);
    }
    assert_eq!(honest.status(), ContainerStatus::Running);
    assert_eq!(honest.rt.ps(&honest.id).unwrap().1.len(), 1);
}

/// An exit status no process can have is not passed on as the container's.
#[test]
fn an_impossible_exit_status_is_a_lost_container_not_an_exit_code() {
    let mut h = Harness::created(evil(Evil::ImpossibleExit), 5);
    h.rt.start(&h.id).unwrap();
    h.rt.kill(&h.id, libc::SIGKILL, false).unwrap();
    assert_eq!(h.wait_shim(), VM_LOST_EXIT_CODE);
    assert_eq!(h.stopped_state().exit_code, None);
}

/// The guest's error messages reach the caller cut to a few KiB.
#[test]
fn a_guests_long_error_is_cut_and_the_container_goes_on() {
    let h = Harness::created(evil(Evil::LongError("Stats")), 5);
    h.rt.start(&h.id).unwrap();
    let err = h.rt.stats(&h.id).unwrap_err().to_string();
    assert!(
        err.len() < runvm_protocol::AgentError::MAX_MESSAGE + 100,
        "{} bytes",
        err.len()
    );
    assert!(err.ends_with("..."), "{}", &err[err.len() - 20..]);
    assert_eq!(h.status(), ContainerStatus::Running);
}

/// Streams the guest opens to the host are refused, however many: the
/// shim goes on answering.
#[test]
fn a_flood_of_streams_from_the_guest_leaves_the_shim_serving() {
    let mut h = Harness::created(evil(Evil::Flood(2000)), 5);
    h.rt.start(&h.id).unwrap();
    for _ in 0..3 {
        assert_eq!(h.rt.ps(&h.id).unwrap().1.len(), 1);
    }
    h.rt.kill(&h.id, libc::SIGKILL, false).unwrap();
    assert_eq!(h.wait_shim(), 137);
}
