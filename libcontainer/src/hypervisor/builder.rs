//! The VMs runvm runs, described for any backend: a container's, and a
//! template's (and its clones').

use std::path::{Path, PathBuf};

use super::{Device, NetDevice, Restore, VmSpec};
use crate::config::Config;
use crate::locate::{self, LocateError};

/// Device slots a VM keeps free after boot: one for a later NIC or share.
/// A template's clone has these for its NICs (its share has a slot of its
/// own).
pub const SPARE_SLOTS: usize = 1;

fn base(config: &Config, name: String, dir: &Path) -> Result<VmSpec, LocateError> {
    let hv = config.vmm();
    Ok(VmSpec {
        name,
        dir: dir.to_path_buf(),
        kernel: locate::kernel(hv)?,
        initrd: locate::initrd(hv)?,
        kernel_params: kernel_params(config),
        vcpus: hv.default_vcpus,
        max_vcpus: hv.default_vcpus,
        memory_mib: hv.default_memory,
        max_memory_mib: max_memory_mib(hv),
        memory_slots: hv.memory_slots,
        hotplug_slots: SPARE_SLOTS,
        devices: vec![Device::AgentPort {
            name: runvm_protocol::AGENT_PORT_NAME.to_string(),
        }],
        memory_file: None,
        dimms_mib: Vec::new(),
        restore: None,
    })
}

/// What the VM may grow to: with memory slots, `default_maxmemory` (0: the
/// host's memory), at least its size.
pub fn max_memory_mib(hv: &crate::config::HypervisorConfig) -> u32 {
    if hv.memory_slots == 0 {
        return hv.default_memory;
    }
    let max = match hv.default_maxmemory {
        0 => u32::try_from(crate::sizing::host_capacity().1).unwrap_or(u32::MAX),
        n => n,
    };
    max.max(hv.default_memory)
}

/// The operator's kernel parameters, after those of runvm's own settings.
fn kernel_params(config: &Config) -> String {
    let mut params = Vec::new();
    if config.agent.enable_debug {
        params.push(runvm_protocol::AGENT_DEBUG_PARAM);
    }
    params.push(config.vmm().kernel_params.trim());
    params.retain(|p| !p.is_empty());
    params.join(" ")
}

/// A container's VM booted from scratch, its share (a virtio-fs device or
/// a disk) and NICs attached at boot.
pub fn container_vm(
    config: &Config,
    name: String,
    dir: &Path,
    share: Device,
    nics: &[NetDevice],
) -> Result<VmSpec, LocateError> {
    let mut vm = base(config, name, dir)?;
    vm.devices.push(share);
    vm.devices.extend(nics.iter().cloned().map(Device::Net));
    Ok(vm)
}

/// A template VM: no share at boot (each clone hotplugs its own into the
/// slot kept for it), memory in a file.
pub fn template_vm(
    config: &Config,
    name: String,
    dir: &Path,
    memory_file: PathBuf,
) -> Result<VmSpec, LocateError> {
    let mut vm = base(config, name, dir)?;
    vm.hotplug_slots += 1;
    vm.memory_file = Some(memory_file);
    Ok(vm)
}

/// A clone of a template: the template's VM, brought back from its
/// snapshot (`state`) over a copy of its memory.
pub fn clone_vm(
    config: &Config,
    name: String,
    dir: &Path,
    state: PathBuf,
    memory: PathBuf,
) -> Result<VmSpec, LocateError> {
    let mut vm = template_vm(config, name, dir, memory.clone())?;
    vm.restore = Some(Restore {
        state,
        memory: Some(memory),
    });
    Ok(vm)
}
