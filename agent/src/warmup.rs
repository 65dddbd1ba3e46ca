//! The warm-up of a pool VM (the host's `Warmup` request): one throwaway
//! container created, started, waited for and removed, so that the code
//! that does it has run once in this VM.

use std::fs;
use std::path::Path;

use nix::mount::{mount, MsFlags};
use runvm_protocol::{AgentError, AgentErrorKind, ExitStatus, Warmup, SHARE_ROOTFS};

use crate::containers::Agent;
use crate::process::{fail, AgentResult};

/// The throwaway container, and where its root is bound.
const WARMUP_ID: &str = "runvm-warmup";
const WARMUP_DIR: &str = "/run/runvm/warmup";

impl Agent {
    /// [`Warmup`]: a container whose root is the guest's own (a bind of
    /// it, without what is mounted on it) and whose process is this agent
    /// exiting at once, created, started, waited for and removed.
    pub async fn warmup(&self, req: Warmup) -> AgentResult<()> {
        let dir = Path::new(WARMUP_DIR);
        let rootfs = dir.join(SHARE_ROOTFS);
        fs::create_dir_all(&rootfs).map_err(|e| fail("create the warm-up root", e))?;
        mount(
            Some("/"),
            &rootfs,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| fail("bind the guest's root for the warm-up", e))?;
        let mut spec = req.spec;
        spec["process"]["args"] = serde_json::json!(["/init", crate::WARMUP_ARG]);
        spec["process"]["terminal"] = false.into();
        spec["root"]["readonly"] = true.into();
        let result = async {
            self.create_from(WARMUP_ID.to_string(), spec, dir).await?;
            self.start_container(WARMUP_ID).await?;
            match self.container(WARMUP_ID)?.init.wait().await {
                Some(ExitStatus::Exited(0)) => Ok(()),
                other => Err(AgentError::new(
                    AgentErrorKind::System,
                    format!("the warm-up container ended as {other:?}"),
                )),
            }
        }
        .await;
        self.forget(WARMUP_ID);
        let _ = nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH);
        result
    }
}
