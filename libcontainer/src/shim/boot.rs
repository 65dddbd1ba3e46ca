//! Bringing a container up: its files shared, its VM booted (or cloned from
//! the template), the agent reached, the container created in the guest.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use runvm_protocol::{AgentInfo, CreateContainer, ProcessRef, ShareSource, SyncGuest, SHARE_TAG};
use slog::{info, warn};
use tokio::net::UnixListener;
use tokio::sync::oneshot;

use super::stdio::{self, Local};
use super::{Shim, ShimError};
use crate::agent::AgentClient;
use crate::config::Config;
use crate::config::SharedFs;
use crate::control::CONTROL_SOCKET;
use crate::error_chain;
use crate::factory::{Claimed, Factory, Pool, Template};
use crate::hooks::{self, HookState, Kind, Place};
use crate::hypervisor::{
    self, Device, DiskDevice, FsDevice, NetDevice, Operation, VmSpec, CONSOLE_LOG,
};
use crate::network::{self, Network};
use crate::procinfo::ProcessIdentity;
use crate::spec::Bundle;
use crate::state::SPEC_FILE;
use crate::status::ContainerStatus;
use crate::virtiofsd::{Share, Virtiofsd};

pub(super) const SHARE_SOCKET: &str = "share.sock";

impl Shim {
    fn console_tail(&self) -> String {
        // The end only: the guest decides how long its console gets.
        let text = crate::read_tail(&self.dir.join(CONSOLE_LOG), 64 << 10);
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let tail = &lines[lines.len().saturating_sub(5)..];
        if tail.is_empty() {
            String::new()
        } else {
            format!("; guest console: {}", tail.join(" | "))
        }
    }

    pub(super) fn describe_failure(&self, e: &ShimError) -> String {
        let mut msg = error_chain(e);
        if let ShimError::Agent(_) = e {
            msg.push_str(&self.console_tail());
        }
        msg
    }

    /// The state and the bundle (the spec as `create` saved it), and the
    /// host cgroup's record and limits, with the shim in the container's
    /// directory: QEMU and virtiofsd inherit it as
    /// their working directory and name their sockets relative to it.
    pub(super) fn load_bundle(&mut self) -> Result<(crate::state::State, Bundle), ShimError> {
        std::env::set_current_dir(&self.dir).map_err(|source| ShimError::Dir {
            path: self.dir.clone(),
            source,
        })?;
        let state = self.store.load(&self.id)?;
        let spec_path = self.dir.join(SPEC_FILE);
        let data = fs::read(&spec_path).map_err(|source| ShimError::ReadSpec {
            path: spec_path.clone(),
            source,
        })?;
        let bundle = Bundle::from_slice(&state.bundle, &spec_path, &data)?;
        // The container's host cgroup and the limits it follows.
        self.host_cgroup = state.host_cgroup.clone();
        self.container_limits = crate::host_cgroup::Limits::of(
            bundle
                .spec
                .linux()
                .as_ref()
                .and_then(|l| l.resources().as_ref()),
        );
        Ok((state, bundle))
    }

    /// The prestart and createRuntime hooks, in the host's namespaces, with
    /// the shim's pid (in the container's network namespace) as the
    /// container's.
    pub(super) fn run_create_hooks(
        &mut self,
        state: &crate::state::State,
        bundle: &Bundle,
    ) -> Result<(), ShimError> {
        if let Some(hooks) = bundle.spec.hooks() {
            self.hooks = Some(hooks.clone());
            let hook_state = HookState::of(
                state,
                ContainerStatus::Creating,
                Some(std::process::id() as i32),
            );
            let place = Place {
                bundle: &bundle.dir,
                namespaces: Some(&self.host),
            };
            hooks::run(Kind::Prestart, hooks, &hook_state, &place)?;
            hooks::run(Kind::CreateRuntime, hooks, &hook_state, &place)?;
        }
        Ok(())
    }

    pub(super) async fn setup(&mut self) -> Result<(), ShimError> {
        let t0 = Instant::now();
        let (state, bundle) = self.load_bundle()?;
        // The caller's set-up (Docker configures the network namespace in
        // a prestart hook), with the shim, whose pid the hooks get, in the
        // container's network namespace.
        self.run_create_hooks(&state, &bundle)?;
        // The operator's settings with the container's allowed overrides
        // (create checked them), then grown to the container's limits; a
        // template of another size or kernel command line then does not
        // match, and the container boots cold.
        let host = crate::sizing::host();
        let annotations = bundle.spec.annotations().clone().unwrap_or_default();
        self.config = crate::overrides::apply(&self.config, &annotations, host)?.0;
        let configured = self.config.clone();
        self.config = crate::sizing::fit(&self.config, &bundle.spec, host.cpus, host.mib)?;
        let share = self.share(&bundle)?;
        // The caller's set-up is done: the interfaces it put in the
        // namespace are the VM's NICs.
        let sandbox = network::is_pod_sandbox(&bundle.spec);
        let network = Network::discover(&self.net_mode, sandbox).await?;
        if *network.mode() == network::Mode::Host {
            warn!(self.log, "the container asked for the host's network, which a VM cannot share: it gets outbound-only user-mode networking (10.0.2.15); nothing on the host can connect to it");
        }
        let nics = network.devices();
        let record = network.record();
        info!(self.log, "network"; "namespace" => &record.namespace,
            "nics" => record.nics.iter().map(|n| format!("{}={}", n.interface, n.tap)).collect::<Vec<_>>().join(" "));
        self.record(|s| s.network = Some(record))?;
        self.network = Some(network);
        let cloned = self.launch_vm(&configured, share, &nics).await?;
        // QEMU has the disk image open: its name goes.
        crate::share::image::unlink(&self.dir);
        self.limit_host_cgroup()?;
        if self.config.vmm().debug_monitor().is_some() {
            let socket = self.dir.join(hypervisor::DEBUG_MONITOR_SOCKET);
            if socket.exists() {
                warn!(self.log, "the VM has a debug monitor: whoever can open its socket controls the VM, so treat this VM and its container as untrusted from now on";
                    "socket" => %socket.display());
                self.record(|s| s.debug_monitor = Some(socket))?;
            } else {
                // A warm pool VM made its sockets in its own directory.
                warn!(self.log, "the debug monitor is on, but this VM came from the warm pool: its monitor socket is not in the container's directory");
            }
        }
        let network = self.network.as_mut().expect("set above");
        network.connect().await?;
        let guest_network = network.guest_config();
        let t_launch = t0.elapsed();
        let info = self.connect_agent(cloned).await?;
        if let Some(config) = guest_network {
            let agent = self.agent.clone().expect("the agent is connected");
            agent
                .call_within(config, self.config.runtime.boot())
                .await
                .map_err(ShimError::GuestNetwork)?;
        }
        let t_ready = t0.elapsed();
        let local = self.init_stdio(bundle.terminal())?;
        let mut spec = crate::share::guest_spec(&bundle.raw, &bundle.binds);
        if let Some((hostname, domainname)) =
            crate::namespaces::names_of_the_joined_uts(&bundle.spec)
        {
            spec["hostname"] = hostname.into();
            if let Some(d) = domainname {
                spec["domainname"] = d.into();
            }
        }
        let (guest_hooks, left_out) = hooks::for_the_guest(&bundle.raw, &bundle.rootfs);
        for (kind, path) in left_out {
            warn!(self.log, "a hook that is not in the container's rootfs cannot run in the VM: left out"; "hook" => kind.name(), "path" => path.display().to_string());
        }
        spec["hooks"] = guest_hooks;
        self.create_in_guest(spec, local).await?;
        info!(self.log, "container created";
            "boot" => self.store.load(&self.id).ok().and_then(|s| s.boot).unwrap_or_default(),
            "kernel" => info.kernel_release,
            "vmm_launch_ms" => t_launch.as_millis() as u64,
            "agent_ready_ms" => t_ready.as_millis() as u64,
            "created_ms" => t0.elapsed().as_millis() as u64);
        Ok(())
    }

    /// The poststop hooks of a container whose create failed (runc runs
    /// them when it cleans up).
    pub(super) fn run_poststop(&self) {
        let Some(hooks) = &self.hooks else { return };
        let Ok(state) = self.store.load(&self.id) else {
            return;
        };
        let hook_state = HookState::of(&state, ContainerStatus::Stopped, None);
        let place = Place {
            bundle: &state.bundle,
            namespaces: Some(&self.host),
        };
        hooks::run_warning(Kind::Poststop, hooks, &hook_state, &place, &self.log);
    }

    /// Assemble the container's files and serve them: virtiofsd, or a copy
    /// on a disk image (`shared_fs = "none"`). Returns the VM's device.
    pub(super) fn share(&mut self, bundle: &Bundle) -> Result<Device, ShimError> {
        let share = crate::share::assemble(&self.dir, &bundle.rootfs, &bundle.binds)?;
        let hv = self.config.vmm();
        if hv.shared_fs == SharedFs::None {
            let t0 = Instant::now();
            let image = crate::share::image::build(
                &share,
                &hv.disk_image_dir,
                &self.dir,
                &self.id,
                hv.disk_image_free_mib,
            )?;
            info!(self.log, "shared_fs = none: the container's files are copied into a disk image; changes on either side stay on that side";
                "image" => %image.display(), "ms" => t0.elapsed().as_millis() as u64);
            self.share_source = ShareSource::Disk {
                serial: SHARE_TAG.into(),
            };
            return Ok(Device::Disk(DiskDevice {
                path: image,
                serial: SHARE_TAG.into(),
            }));
        }
        let virtiofsd = Virtiofsd::spawn(
            &hv.virtiofsd(),
            &Share {
                shared_dir: &share,
                socket: &self.sockets.path(SHARE_SOCKET),
                // root.readonly is applied in the guest, after the mountpoints
                // the spec needs are created in the rootfs (as runc does).
                readonly: false,
                log: &self.dir.join("virtiofsd.log"),
            },
        )?;
        let vfs_id = ProcessIdentity::of(virtiofsd.pid());
        self.virtiofsd = Some(virtiofsd);
        self.record(|s| s.virtiofsd = vfs_id)?;
        Ok(Device::Fs(FsDevice {
            tag: SHARE_TAG.into(),
            socket: SHARE_SOCKET.into(),
        }))
    }

    /// Start the VM: a clone of the template when there is a usable one,
    /// else a cold boot. Returns whether it is a clone.
    async fn launch_vm(
        &mut self,
        configured: &Config,
        share: Device,
        nics: &[NetDevice],
    ) -> Result<bool, ShimError> {
        let t0 = Instant::now();
        let name = format!("runvm-{}", self.id);
        let mut template = self.template(configured, nics.len());
        if let Some(t) = &template {
            if let Some(claimed) = Pool::new(configured).claim(t.meta.created, &self.log) {
                let t = template.take().expect("checked");
                match self.adopt_pooled(claimed, t, share.clone(), nics) {
                    Ok(()) => {
                        slog::debug!(self.log, "pool VM adopted, share and NICs hotplugged"; "ms" => t0.elapsed().as_millis() as u64);
                        return Ok(true);
                    }
                    Err(e) => {
                        warn!(self.log, "the pool VM could not be taken over: restoring a clone instead"; "error" => error_chain(&e));
                        if let Some(mut vm) = self.vm.take() {
                            let _ = vm.stop(std::time::Duration::ZERO);
                        }
                        for log in [CONSOLE_LOG, hypervisor::VMM_LOG] {
                            let _ = fs::remove_file(self.dir.join(log));
                        }
                        template = self.template(configured, nics.len());
                    }
                }
            }
        }
        let clone = template.and_then(|t| match t.copy_memory(&self.id) {
            Ok(memory) => Some((t, memory)),
            Err(e) => {
                warn!(self.log, "booting cold: cannot copy the template's memory"; "error" => error_chain(&e));
                None
            }
        });
        let spec: VmSpec = match &clone {
            Some((template, memory)) => hypervisor::clone_vm(
                &self.clone_config(template),
                name,
                &self.dir,
                template.state(),
                memory.clone(),
            ),
            None => hypervisor::container_vm(&self.config, name, &self.dir, share.clone(), nics),
        }
        .map_err(crate::hypervisor::HypervisorError::from)?;
        self.vm_memory_mib = match &clone {
            Some((template, _)) => template.meta.memory_mib,
            None => self.config.vmm().default_memory,
        };
        let mut vm = hypervisor::new(&self.config, spec)?;
        let accel = vm.accel();
        info!(self.log, "accelerator"; "accel" => accel.name, "reason" => &accel.reason);
        let launched = vm.launch();
        let vmm_id = vm.pid().and_then(ProcessIdentity::of);
        let cloned = clone.is_some();
        self.record(|s| {
            s.vmm = vmm_id;
            s.accel = Some(accel.name.to_string());
            s.boot = Some(if cloned { "template" } else { "cold" }.to_string());
        })?;
        let vm = self.vm.insert(vm);
        launched?;
        if let Some((template, _)) = clone {
            vm.restore()?;
            // The state file has been read: `factory init` may replace the
            // template from here on.
            drop(template);
            vm.resume()?;
            hotplug_devices(vm.as_mut(), share, nics)?;
            slog::debug!(self.log, "restored, share and NICs hotplugged"; "nics" => nics.len(), "ms" => t0.elapsed().as_millis() as u64);
            self.grow_clone()?;
        }
        Ok(cloned)
    }

    /// The configuration a clone of `template` is restored with: the
    /// template's size. The container may need more memory, which
    /// [`grow_clone`](Self::grow_clone) adds once the clone runs.
    fn clone_config(&self, template: &Template) -> Config {
        let mut config = self.config.clone();
        config.vmm_mut().default_memory = template.meta.memory_mib;
        config.vmm_mut().default_vcpus = template.meta.vcpus;
        config
    }

    /// A clone of a smaller template than the container needs (`template`
    /// checked that the VM may grow so far): hotplug the memory missing,
    /// in whole 128 MiB blocks.
    fn grow_clone(&mut self) -> Result<(), ShimError> {
        let needs = self.config.vmm().default_memory;
        if needs > self.vm_memory_mib {
            self.grow_vm_to(needs)?;
            self.grown_at_create = true;
        }
        Ok(())
    }

    /// Hotplug what the VM lacks of `mib` MiB, in whole 128 MiB memory
    /// blocks (as the guest onlines them): for a clone at create, and for
    /// `update` of a larger memory limit.
    pub(super) fn grow_vm_to(&mut self, mib: u32) -> Result<(), hypervisor::HypervisorError> {
        let grow = (mib.saturating_sub(self.vm_memory_mib)).div_ceil(128) * 128;
        let vm = self
            .vm
            .as_mut()
            .ok_or(hypervisor::HypervisorError::NotRunning)?;
        vm.supports(Operation::HotplugMemory)?;
        vm.hotplug_memory(grow)?;
        self.vm_memory_mib += grow;
        info!(self.log, "the VM grew"; "added_mib" => grow, "vm_mib" => self.vm_memory_mib);
        Ok(())
    }

    /// Take over a VM of the warm pool: its monitor, its agent port; the
    /// share and NICs are hotplugged as into a clone of our own.
    fn adopt_pooled(
        &mut self,
        claimed: Claimed,
        template: Template,
        share: Device,
        nics: &[NetDevice],
    ) -> Result<(), ShimError> {
        let mut spec = hypervisor::clone_vm(
            &self.clone_config(&template),
            format!("runvm-{}", self.id),
            &claimed.dir,
            template.state(),
            claimed.dir.join("mem"),
        )
        .map_err(crate::hypervisor::HypervisorError::from)?;
        spec.restore = None;
        self.vm_memory_mib = template.meta.memory_mib;
        drop(template);
        // QEMU runs in the pool VM's directory: the share's socket, and
        // the logs the shim reads, are linked across.
        let link = |name: &str, from: &Path, to: &Path| {
            std::os::unix::fs::symlink(from.join(name), to.join(name)).map_err(|source| {
                ShimError::Dir {
                    path: to.join(name),
                    source,
                }
            })
        };
        if matches!(share, Device::Fs(_)) {
            link(SHARE_SOCKET, &self.dir, &claimed.dir)?;
        }
        for log in [CONSOLE_LOG, hypervisor::VMM_LOG] {
            let _ = fs::remove_file(self.dir.join(log));
            link(log, &claimed.dir, &self.dir)?;
        }
        let mut vm = hypervisor::new(&self.config, spec)?;
        let accel = vm.accel();
        let adopted = vm.adopt(claimed.vmm_pid);
        let vmm_id = ProcessIdentity::of(claimed.vmm_pid);
        self.record(|s| {
            s.vmm = vmm_id;
            s.accel = Some(accel.name.to_string());
            s.boot = Some("pool".to_string());
        })?;
        self.vm = Some(vm);
        adopted?;
        self.adopt_into_host_cgroup(claimed.vmm_pid)?;
        let vm = self.vm.as_mut().expect("inserted above");
        vm.resume()?;
        hotplug_devices(vm.as_mut(), share, nics)?;
        self.grow_clone()
    }

    /// Reach the agent and wait until it answers (the whole boot, for a
    /// cold VM); a clone gets the host's clock and fresh entropy.
    pub(super) async fn connect_agent(&mut self, cloned: bool) -> Result<AgentInfo, ShimError> {
        let vm = self.vm.as_ref().expect("the VM was launched");
        let mut vm_exit = vm.exit_watch();
        let agent = AgentClient::connect(&vm.agent_endpoint(), self.config.runtime.request())
            .await
            .map_err(ShimError::Agent)?;
        let agent = Arc::new(agent);
        self.agent = Some(agent.clone());
        let info = tokio::select! {
            r = agent.wait_ready(self.config.runtime.boot()) => r.map_err(ShimError::Agent)?,
            r = vm_exit.wait_for(Option::is_some) => {
                let reason = r.ok().and_then(|s| s.clone()).unwrap_or_default();
                return Err(ShimError::Boot {
                    reason: format!("the VM {reason} during boot"),
                    console: self.console_tail(),
                });
            }
        };
        if info.protocol != runvm_protocol::PROTOCOL_VERSION {
            return Err(ShimError::AgentVersion {
                guest: info.protocol,
                host: runvm_protocol::PROTOCOL_VERSION,
            });
        }
        if cloned {
            // The clone stops living in the template's past and stops
            // sharing its random numbers.
            let mut seed = vec![0u8; 64];
            getrandom(&mut seed).map_err(ShimError::Stdio)?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            agent
                .call(SyncGuest {
                    unix_time_ns: now.as_nanos() as u64,
                    seed,
                })
                .await
                .map_err(ShimError::Agent)?;
        }
        Ok(info)
    }

    /// Create the container in the guest with `spec`, relay its stdio from
    /// `local`, and start answering verbs: the container is created.
    pub(super) async fn create_in_guest(
        &mut self,
        spec: serde_json::Value,
        local: Local,
    ) -> Result<(), ShimError> {
        let agent = self.agent.clone().expect("the agent is connected");
        // Creating and starting are part of bringing the container up: they
        // get the boot timeout, which allows for a busy host.
        let created = agent
            .call_within(
                CreateContainer {
                    container_id: self.guest_id.clone(),
                    spec,
                    share: self.share_source.clone(),
                    vm_memory_mib: self
                        .grown_at_create
                        .then_some(u64::from(self.vm_memory_mib)),
                },
                self.config.runtime.boot(),
            )
            .await
            .map_err(ShimError::Create)?;
        self.exit = Some(self.attach_init(local).await?);
        let listener =
            UnixListener::bind(self.sockets.path(CONTROL_SOCKET)).map_err(ShimError::Control)?;
        self.control = Some(listener);
        self.status = ContainerStatus::Created;
        self.record(|s| {
            s.status = ContainerStatus::Created;
            s.guest_pid = Some(created.pid);
        })?;
        Ok(())
    }

    /// Relay the container init's stdio from `local`, and wait for its
    /// exit: the returned waiter resolves with it.
    pub(super) async fn attach_init(
        &mut self,
        local: Local,
    ) -> Result<super::ExitWaiter, ShimError> {
        let agent = self.agent.clone().expect("the agent is connected");
        let process = ProcessRef::init(&self.guest_id);
        // The first one is kept: a later session relays the same stdin.
        let stdin = self
            .host_stdin
            .get_or_insert_with(|| stdio::shared_stdin(local.stdin))
            .clone();
        self.outputs = stdio::attach_with(&agent, &process, local.stdout, local.stderr, stdin)
            .await
            .map_err(ShimError::Agent)?;
        self.push_window_size().await;
        let (tx, rx) = oneshot::channel();
        tokio::spawn(async move {
            let _ = tx.send(agent.wait_process(process).await);
        });
        Ok(rx)
    }

    /// The template to clone, if templates are on, the one there matches the
    /// configuration and it is as large as the container's VM must be.
    /// Templates being on, every other outcome is a cold boot and says why,
    /// as a warning: the user asked for clones.
    fn template(&self, configured: &Config, nics: usize) -> Option<Template> {
        if !configured.factory.enable_template {
            return None;
        }
        let share = match configured.vmm().shared_fs {
            SharedFs::VirtioFs => Operation::HotplugFs,
            SharedFs::None => Operation::HotplugDisk,
        };
        let mut needs = vec![Operation::Restore, share];
        if nics > 0 {
            needs.push(Operation::HotplugNet);
        }
        let can = needs
            .into_iter()
            .try_for_each(|op| hypervisor::supports(configured, op));
        if let Err(e) = can {
            warn!(self.log, "booting cold: {}", error_chain(&e));
            return None;
        }
        let template = match Factory::new(configured).usable(configured) {
            Ok(t) => t,
            // The create builds one behind this container: nothing is wrong.
            Err(reason) if configured.factory.auto_build && reason.cured_by_a_build() => {
                info!(self.log, "booting cold: the template is not usable"; "reason" => error_chain(&reason));
                return None;
            }
            Err(reason) => {
                warn!(self.log, "booting cold: the template is not usable"; "reason" => error_chain(&reason));
                return None;
            }
        };
        if nics > hypervisor::SPARE_SLOTS {
            warn!(self.log, "booting cold: the container has {nics} network interfaces, a clone has room for {}", hypervisor::SPARE_SLOTS);
            return None;
        }
        let (needs, has) = (self.config.vmm(), &template.meta);
        // More memory than the template's is hotplugged into the clone,
        // where the VM may grow so far.
        let clone_max = hypervisor::max_memory_mib(&crate::config::HypervisorConfig {
            default_memory: has.memory_mib,
            ..needs.clone()
        });
        let grows = needs.memory_slots > 0
            && needs.default_memory <= clone_max
            && hypervisor::supports(configured, Operation::HotplugMemory).is_ok();
        if needs.default_vcpus > has.vcpus || (needs.default_memory > has.memory_mib && !grows) {
            // Growing a clone needs CPU hotplug, which the guest kernel does
            // not offer on q35 (docs/templating.md).
            warn!(
                self.log,
                "booting cold: the container needs {} / {} MiB, the template has {} / {} MiB",
                vcpus(needs.default_vcpus),
                needs.default_memory,
                vcpus(has.vcpus),
                has.memory_mib
            );
            return None;
        }
        Some(template)
    }
}

/// A clone's share goes into the slot the template left free, at once (the
/// guest enumerates it while the agent reconnects), and its NICs into the
/// slots left (`template` checked there are enough).
fn hotplug_devices(
    vm: &mut dyn hypervisor::Hypervisor,
    share: Device,
    nics: &[NetDevice],
) -> Result<(), hypervisor::HypervisorError> {
    vm.supports(match share {
        Device::Disk(_) => Operation::HotplugDisk,
        _ => Operation::HotplugFs,
    })?;
    vm.hotplug(&share)?;
    for nic in nics {
        vm.supports(Operation::HotplugNet)?;
        vm.hotplug(&hypervisor::Device::Net(nic.clone()))?;
    }
    Ok(())
}

fn vcpus(n: u32) -> String {
    if n == 1 {
        "1 vCPU".into()
    } else {
        format!("{n} vCPUs")
    }
}

/// Bytes from the host's RNG.
fn getrandom(buf: &mut [u8]) -> io::Result<()> {
    File::open("/dev/urandom")?.read_exact(buf)
}
