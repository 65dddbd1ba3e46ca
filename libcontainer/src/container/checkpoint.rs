//! `checkpoint` and `restore`: the container's VM saved whole into an image
//! directory, and brought back from one (docs/checkpoint.md).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{ContainerError, CreateOptions, RestoreFrom, Runtime};
use crate::checkpoint::{self, CheckpointError, Current, ImageMeta};
use crate::control::Checkpoint;
use crate::status::{ContainerStatus, Refusal};

impl Runtime {
    /// Save the running container `id` into `image` (made if missing; it
    /// must be empty). Without `leave_running` the container then stops,
    /// and can be deleted.
    pub fn checkpoint(
        &self,
        id: &str,
        image: &Path,
        leave_running: bool,
    ) -> Result<(), ContainerError> {
        let state = self.load(id)?;
        if !matches!(
            state.refreshed_status(),
            ContainerStatus::Running | ContainerStatus::Paused
        ) {
            return Err(Refusal::NotRunning.into());
        }
        let image = absolute(image)?;
        let made = !image.exists();
        checkpoint::prepare_dir(&image)?;
        let saved = self.checkpoint_into(id, &image, leave_running);
        if saved.is_err() && made {
            // Only if still empty: the shim removes a half-written image.
            let _ = std::fs::remove_dir(&image);
        }
        saved
    }

    fn checkpoint_into(
        &self,
        id: &str,
        image: &Path,
        leave_running: bool,
    ) -> Result<(), ContainerError> {
        let image = image.to_path_buf();
        // Saving waits for the guest to let go of its host, then writes
        // the memory: the boot timeout, and a minute for the writing.
        let timeout = self.config.runtime.boot() + Duration::from_secs(60);
        let vmm_info = crate::hypervisor::describe(&self.config)
            .map_err(|e| ContainerError::Checkpointing(crate::error_chain(&e)))?;
        let req = Checkpoint {
            image,
            leave_running,
            vmm_info,
        };
        self.ask(id, req, timeout, Refusal::NotRunning)?;
        if !leave_running {
            // The shim records the container stopped as it exits.
            let _ = self.wait_stopped(id, self.config.runtime.stop() + Duration::from_secs(5));
        }
        Ok(())
    }

    /// Wait, bounded, until the container's state says stopped.
    fn wait_stopped(&self, id: &str, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            match self.load(id) {
                Ok(s) if s.refreshed_status() != ContainerStatus::Stopped => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => return true,
            }
        }
        false
    }

    /// What `restore` reads of `image` before anything is made: the image
    /// must be one this host can restore. Returns where the guest's
    /// container is to be found.
    pub fn restorable(&self, image: &Path) -> Result<RestoreFrom, ContainerError> {
        let image = absolute(image)?;
        let meta = ImageMeta::read(&image)?;
        let hv = self.config.vmm();
        let locate = |e: crate::locate::LocateError| ContainerError::Checkpointing(e.to_string());
        let kernel = crate::locate::kernel(hv).map_err(locate)?;
        let initrd = crate::locate::initrd(hv).map_err(locate)?;
        let vmm_info = crate::hypervisor::describe(&self.config)
            .map_err(|e| ContainerError::Checkpointing(crate::error_chain(&e)))?;
        let backend = crate::hypervisor::backend_name(&self.config);
        let now = Current::of(backend, vmm_info, &kernel, &initrd)?;
        meta.check_restorable(&image, &now)?;
        Ok(RestoreFrom {
            image,
            guest_id: meta.guest_id,
        })
    }

    /// `restore --detach`: the container comes back running; returns the
    /// shim's pid.
    pub fn restore(&self, opts: &CreateOptions) -> Result<i32, ContainerError> {
        debug_assert!(opts.restore.is_some());
        self.create(opts)
    }
}

/// An image path as the shim must get it: it runs in another directory.
fn absolute(path: &Path) -> Result<PathBuf, CheckpointError> {
    std::path::absolute(path).map_err(|source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    })
}
