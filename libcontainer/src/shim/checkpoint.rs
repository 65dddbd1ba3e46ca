//! `checkpoint` and `restore` in the shim: the whole VM saved into an image
//! and brought back in a new VM (docs/checkpoint.md).
//!
//! The agent's session is closed before the VM is saved, so the image holds
//! a guest with no host attached, as a template's does: a restored VM then
//! starts a fresh session with its new host, and the guest's relays, which
//! handed their descriptors back when the session ended, carry on with it.

use std::path::Path;
use std::time::Instant;

use slog::{info, warn};
use tokio::net::UnixListener;

use super::requests::{state_failure, Answer};
use super::stdio::Local;
use super::{ExitWaiter, Shim, ShimError};
use crate::checkpoint::{self, Current, FileDigest, ImageMeta};
use crate::control::{self, ShimFailure, CONTROL_SOCKET};
use crate::error_chain;
use crate::hypervisor::{self, Device, NetBackend, Restore, CONSOLE_LOG};
use crate::network::{self, Network, NicRecord};
use crate::procinfo::ProcessIdentity;
use crate::status::{ContainerStatus, Refusal};

/// Why a checkpoint failed, and whether the container survived it.
enum Failed {
    /// Nothing changed: the container runs on.
    Refused(ShimFailure),
    /// The VM could not be brought back to its host: the container is lost.
    Lost(ShimFailure),
}

fn io_failure(context: impl Into<String>) -> ShimFailure {
    ShimFailure::Io {
        context: context.into(),
        errno: None,
    }
}

impl Shim {
    /// Save the VM into `c.image`; without `leave_running`, stop the
    /// container afterwards (`Some(End)`). `exit` is replaced by the new
    /// session's waiter when the container goes on.
    pub(super) async fn checkpoint(
        &mut self,
        c: control::Checkpoint,
        exit: &mut ExitWaiter,
    ) -> (Answer<()>, Option<super::serve::End>) {
        let t0 = Instant::now();
        match self.checkpoint_into(&c, exit).await {
            Ok(()) => {
                info!(self.log, "checkpointed"; "image" => %c.image.display(),
                    "leave_running" => c.leave_running, "ms" => t0.elapsed().as_millis() as u64);
                let end = (!c.leave_running).then_some(super::serve::End::Checkpointed);
                (Ok(()), end)
            }
            Err(Failed::Refused(f)) => (Err(f), None),
            Err(Failed::Lost(f)) => {
                let why = f.to_string();
                (Err(f), Some(super::serve::End::VmLost(why)))
            }
        }
    }

    fn check_checkpointable(&self) -> Result<(), ShimFailure> {
        // A paused container is saved paused, as runc's is.
        if !matches!(
            self.status,
            ContainerStatus::Running | ContainerStatus::Paused
        ) {
            return Err(Refusal::NotRunning.into());
        }
        // An exec's stand-in is registered from the start of its process
        // to its end (its reply may still be on its way).
        let execs = self
            .stand_ins
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len();
        if execs > 0 {
            return Err(io_failure(
                "a checkpoint of a container with an exec session running is not supported: wait for the exec to end",
            ));
        }
        // The guest says on its console when its session is gone: a log
        // at its bound would never show it.
        let cap = u64::from(self.config.vmm().console_log_max_mib) << 20;
        if crate::factory::console_end(&self.dir.join(CONSOLE_LOG)) >= cap {
            return Err(io_failure(
                "the guest's console log is at its bound (console_log_max_mib), so the guest's end of its session cannot be seen: checkpoint refused",
            ));
        }
        let vm = self.vm.as_ref().ok_or(Refusal::NotRunning)?;
        vm.supports(hypervisor::Operation::Snapshot)
            .map_err(|e| io_failure(error_chain(&e)))?;
        if vm
            .restorable()
            .devices
            .iter()
            .any(|d| matches!(d, Device::Disk(_)))
        {
            return Err(io_failure(
                "a checkpoint of a container whose files are a disk image (shared_fs = \"none\") is not supported: its copy is not kept",
            ));
        }
        Ok(())
    }

    async fn checkpoint_into(
        &mut self,
        c: &control::Checkpoint,
        exit: &mut ExitWaiter,
    ) -> Result<(), Failed> {
        self.check_checkpointable().map_err(Failed::Refused)?;
        let console = self.dir.join(CONSOLE_LOG);
        let from = crate::factory::console_end(&console);
        // Hang up on the agent and let the output already sent reach the
        // caller; the guest says when its session is gone.
        if let Some(agent) = self.agent.take() {
            agent.close();
        }
        for task in self.outputs.drain(..) {
            let _ = tokio::time::timeout(super::DRAIN_TIMEOUT, task).await;
        }
        let boot = self.config.runtime.boot();
        if let Err(e) = crate::factory::wait_session_end(&console, from, boot).await {
            // The guest never let go: reconnecting would meet a session
            // that is still half there.
            return Err(Failed::Lost(io_failure(error_chain(&e))));
        }
        let saved = self.save_image(&c.image, c.vmm_info.clone());
        let vm = self.vm.as_mut().expect("checked above");
        if saved.is_err() || c.leave_running {
            if let Err(e) = vm.resume() {
                return Err(Failed::Lost(io_failure(error_chain(&e))));
            }
            match self.reattach(None).await {
                Ok(waiter) => *exit = waiter,
                Err(e) => return Err(Failed::Lost(io_failure(error_chain(&e)))),
            }
        }
        saved.map_err(|e| {
            for name in [checkpoint::VM_STATE, checkpoint::IMAGE_META] {
                let _ = std::fs::remove_file(c.image.join(name));
            }
            Failed::Refused(e)
        })
    }

    /// Pause the VM and write the image; the VM stays paused.
    fn save_image(
        &mut self,
        image: &Path,
        vmm_info: serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), ShimFailure> {
        let vm = self.vm.as_mut().expect("checked above");
        let fail = |e: &dyn std::error::Error| io_failure(format!("checkpoint: {e}"));
        vm.pause().map_err(|e| fail(&e))?;
        let stream = image.join(checkpoint::VM_STATE);
        vm.checkpoint(&stream).map_err(|e| fail(&e))?;
        let mut spec = vm.restorable();
        spec.name = String::new();
        spec.dir = Default::default();
        let now = Current::of(vm.backend(), vmm_info, &spec.kernel, &spec.initrd)
            .map_err(|e| fail(&e))?;
        let state = self.store.load(&self.id).map_err(|e| state_failure(&e))?;
        let meta = ImageMeta {
            format: checkpoint::IMAGE_FORMAT,
            created: chrono::Utc::now(),
            made_with: now,
            id: self.id.clone(),
            guest_id: self.guest_id.clone(),
            guest_pid: state.guest_pid,
            rootfs: state.rootfs.clone(),
            terminal: self.terminal,
            paused: self.status == ContainerStatus::Paused,
            vm: spec,
            vm_memory_mib: self.vm_memory_mib,
            network: state.network.map(|r| r.nics).unwrap_or_default(),
            state: FileDigest::of(&stream).map_err(|e| fail(&e))?,
        };
        meta.write(image).map_err(|e| fail(&e))
    }

    /// A new session with the agent (the clock set and the RNG reseeded:
    /// the guest has been paused, or restored), and the init's stdio and
    /// exit waited on again: from `local`, or from what the shim relays
    /// now.
    async fn reattach(&mut self, local: Option<Local>) -> Result<ExitWaiter, ShimError> {
        self.connect_agent(true).await?;
        let local = match local {
            Some(l) => l,
            None => self.local_again().map_err(ShimError::Stdio)?,
        };
        self.attach_init(local).await
    }

    /// The host side of the init's stdio, once more: the shim's own, or the
    /// terminal it relays.
    fn local_again(&self) -> std::io::Result<Local> {
        let own = Local::own()?;
        if !self.terminal {
            return Ok(own);
        }
        match (&self.console_socket, &self.resize_source) {
            (Some(_), Some(slave)) => Ok(Local {
                stdin: slave.try_clone()?,
                stdout: slave.try_clone()?,
                stderr: None,
            }),
            _ => Ok(Local {
                stderr: None,
                ..own
            }),
        }
    }

    /// Put the checkpointed VM's NICs onto the taps of `now`'s interfaces,
    /// by MAC; refuse an interface that is missing or whose addresses or
    /// MTU changed, which the guest would not know of.
    fn nics_onto(
        &self,
        devices: &mut [Device],
        saved: &[NicRecord],
        now: &Network,
    ) -> Result<(), ShimError> {
        let found = now.record().nics;
        let macs = |nics: &[NicRecord]| {
            nics.iter()
                .map(|n| format!("{} ({})", n.mac, n.interface))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut used = 0;
        for device in devices.iter_mut() {
            let Device::Net(nic) = device else { continue };
            let NetBackend::Tap { name } = &mut nic.backend else {
                continue;
            };
            let Some(here) = found.iter().find(|n| n.mac == nic.mac) else {
                return Err(ShimError::Restore(format!(
                    "the checkpointed container had an interface with MAC {}; the restore's network namespace has {}: restore into a namespace with the same interfaces",
                    nic.mac,
                    if found.is_empty() { "none".to_string() } else { macs(&found) }
                )));
            };
            if let Some(then) = saved.iter().find(|n| n.mac == nic.mac) {
                if (&then.addresses, then.mtu) != (&here.addresses, here.mtu) {
                    return Err(ShimError::Restore(format!(
                        "interface {} had addresses [{}] and MTU {} when checkpointed; it has [{}] and MTU {} now, which the guest would not know of",
                        here.interface,
                        then.addresses.join(", "),
                        then.mtu,
                        here.addresses.join(", "),
                        here.mtu
                    )));
                }
            }
            *name = here.tap.clone();
            used += 1;
        }
        if used < found.len() {
            warn!(self.log, "the restore's network namespace has interfaces the checkpointed container did not: the guest does not see them";
                "interfaces" => macs(&found));
        }
        Ok(())
    }

    /// `runvm restore`: the VM of the checkpoint in `image`, brought back
    /// over a new share of the bundle's files; the container runs on.
    pub(super) async fn restore_setup(&mut self, image: &Path) -> Result<(), ShimError> {
        let t0 = Instant::now();
        let (state, bundle) = self.load_bundle()?;
        self.run_create_hooks(&state, &bundle)?;
        let annotations = bundle.spec.annotations().clone().unwrap_or_default();
        self.config = crate::overrides::apply(&self.config, &annotations, crate::sizing::host())?.0;
        let meta = ImageMeta::read(image)?;
        if !meta.vm.devices.iter().any(|d| matches!(d, Device::Fs(_))) {
            return Err(ShimError::Restore(
                "the checkpointed VM has no virtio-fs share to serve the rootfs on".into(),
            ));
        }
        let share = self.share(&bundle)?;
        if !matches!(share, Device::Fs(_)) {
            return Err(ShimError::Restore(
                "the checkpoint served the rootfs over virtio-fs; shared_fs = \"none\" cannot restore it"
                    .into(),
            ));
        }
        // The interfaces the caller put in the namespace (again) are those
        // the guest had: the same MACs and addresses, new taps.
        let network =
            Network::discover(&self.net_mode, network::is_pod_sandbox(&bundle.spec)).await?;
        let mut spec = meta.vm.clone();
        self.nics_onto(&mut spec.devices, &meta.network, &network)?;
        self.record(|s| s.network = Some(network.record()))?;
        self.network = Some(network);
        let hv = self.config.vmm();
        spec.name = format!("runvm-{}", self.id);
        spec.dir = self.dir.clone();
        spec.kernel = crate::locate::kernel(hv).map_err(hypervisor::HypervisorError::from)?;
        spec.initrd = crate::locate::initrd(hv).map_err(hypervisor::HypervisorError::from)?;
        spec.memory_file = None;
        spec.restore = Some(Restore {
            state: image.join(checkpoint::VM_STATE),
            memory: None,
        });
        self.vm_memory_mib = meta.vm_memory_mib;
        let mut vm = hypervisor::new(&self.config, spec)?;
        let accel = vm.accel();
        info!(self.log, "accelerator"; "accel" => accel.name, "reason" => &accel.reason);
        let launched = vm.launch();
        let vmm_id = vm.pid().and_then(ProcessIdentity::of);
        self.record(|s| {
            s.vmm = vmm_id;
            s.accel = Some(accel.name.to_string());
            s.boot = Some("checkpoint".to_string());
        })?;
        let vm = self.vm.insert(vm);
        launched?;
        vm.restore()?;
        vm.resume()?;
        self.network.as_mut().expect("set above").connect().await?;
        self.limit_host_cgroup()?;
        let local = self.init_stdio(bundle.terminal())?;
        let waiter = self.reattach(Some(local)).await?;
        self.exit = Some(waiter);
        let listener =
            UnixListener::bind(self.sockets.path(CONTROL_SOCKET)).map_err(ShimError::Control)?;
        self.control = Some(listener);
        // Its cgroup in the guest is frozen still, if it was paused.
        self.status = if meta.paused {
            ContainerStatus::Paused
        } else {
            ContainerStatus::Running
        };
        self.paused_from = ContainerStatus::Running;
        let (status, guest_pid) = (self.status, meta.guest_pid);
        self.record(|s| {
            s.status = status;
            s.guest_pid = guest_pid;
        })?;
        if meta.rootfs != bundle.rootfs {
            warn!(self.log, "restored over another rootfs than the one checkpointed: its files must be the same, or the container sees them change under it";
                "checkpointed" => %meta.rootfs.display(), "now" => %bundle.rootfs.display());
        }
        info!(self.log, "container restored"; "image" => %image.display(),
            "ms" => t0.elapsed().as_millis() as u64);
        Ok(())
    }
}
