//! The shim's side of the container's host cgroup: the limits once the
//! VM's size is known, a warm pool VM moved in, `update`.

use oci_spec::runtime::LinuxResources;
use slog::debug;

use super::{Shim, ShimError};
use crate::host_cgroup::{HostCgroup, HostCgroupError, Limits};

impl Shim {
    /// A VM from the warm pool was started by another process: move it
    /// where the shim's own children are.
    pub(super) fn adopt_into_host_cgroup(&self, vmm_pid: i32) -> Result<(), ShimError> {
        if let Some(record) = &self.host_cgroup {
            HostCgroup::at(record.for_processes()).add_process("QEMU", vmm_pid)?;
        }
        Ok(())
    }

    /// Once the VM runs: its limits, and, when the VMM's overhead is
    /// accounted apart, its vCPU threads into the container's cgroup.
    pub(super) fn limit_host_cgroup(&mut self) -> Result<(), ShimError> {
        let Some(record) = self.host_cgroup.clone() else {
            return Ok(());
        };
        let cgroup = HostCgroup::at(&record.path);
        if record.overhead.is_some() {
            let vm = self.vm.as_mut().expect("the VM was launched");
            for tid in vm.vcpu_threads()? {
                cgroup.add_thread("vCPU thread", tid)?;
            }
        }
        let limits = self
            .container_limits
            .host(self.vm_memory_mib, &self.config.runtime);
        debug!(self.log, "host cgroup"; "path" => &record.path, "limits" => ?limits);
        cgroup.apply(&limits)?;
        Ok(())
    }

    /// `update`'s new limits, after the guest took them.
    pub(super) fn update_host_cgroup(
        &mut self,
        resources: &LinuxResources,
    ) -> Result<(), HostCgroupError> {
        let Some(record) = &self.host_cgroup else {
            return Ok(());
        };
        self.container_limits.merge(Limits::of(Some(resources)));
        let limits = self
            .container_limits
            .host(self.vm_memory_mib, &self.config.runtime);
        HostCgroup::at(&record.path).apply(&limits)
    }
}
