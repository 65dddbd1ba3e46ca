//! `update`'s input: an OCI `linux.resources` object, read from a file (or
//! stdin) or made from runc's flags. It is applied to the container's cgroup
//! in the guest.

use std::io::Read;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    LinuxBlockIoBuilder, LinuxCpuBuilder, LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResources,
    LinuxResourcesBuilder,
};

#[derive(Debug, thiserror::Error)]
pub enum ResourcesError {
    #[error("read {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parse the resources in {path}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("Intel RDT is not available in a VM")]
    IntelRdt,
    #[error("blkio weight {0} is outside 10-1000")]
    BlkioWeight(u64),
    #[error("invalid resources")]
    Build(#[source] oci_spec::OciSpecError),
}

/// runc's `update` flags; `None` leaves a limit as it is.
#[derive(Debug, Default, Clone)]
pub struct ResourceFlags {
    pub blkio_weight: Option<u64>,
    pub cpu_period: Option<u64>,
    pub cpu_quota: Option<u64>,
    pub cpu_rt_period: Option<u64>,
    pub cpu_rt_runtime: Option<u64>,
    pub cpu_share: Option<u64>,
    pub cpuset_cpus: Option<String>,
    pub cpuset_mems: Option<String>,
    pub memory: Option<u64>,
    pub memory_reservation: Option<u64>,
    pub memory_swap: Option<i64>,
    pub pids_limit: Option<i64>,
    /// Intel RDT schemas: refused, a VM has no RDT.
    pub intel_rdt: bool,
}

impl ResourceFlags {
    /// The `linux.resources` the flags describe.
    pub fn to_resources(&self) -> Result<LinuxResources, ResourcesError> {
        if self.intel_rdt {
            return Err(ResourcesError::IntelRdt);
        }
        let build = ResourcesError::Build;
        let mut r = LinuxResourcesBuilder::default();
        if self.memory.is_some() || self.memory_reservation.is_some() || self.memory_swap.is_some()
        {
            let mut m = LinuxMemoryBuilder::default();
            if let Some(v) = self.memory {
                m = m.limit(v as i64);
            }
            if let Some(v) = self.memory_reservation {
                m = m.reservation(v as i64);
            }
            if let Some(v) = self.memory_swap {
                m = m.swap(v);
            }
            r = r.memory(m.build().map_err(build)?);
        }
        let cpu_set = [
            self.cpu_share,
            self.cpu_quota,
            self.cpu_period,
            self.cpu_rt_runtime,
            self.cpu_rt_period,
        ]
        .iter()
        .any(Option::is_some)
            || self.cpuset_cpus.is_some()
            || self.cpuset_mems.is_some();
        if cpu_set {
            let mut c = LinuxCpuBuilder::default();
            if let Some(v) = self.cpu_share {
                c = c.shares(v);
            }
            if let Some(v) = self.cpu_quota {
                c = c.quota(v as i64);
            }
            if let Some(v) = self.cpu_period {
                c = c.period(v);
            }
            if let Some(v) = self.cpu_rt_runtime {
                c = c.realtime_runtime(v as i64);
            }
            if let Some(v) = self.cpu_rt_period {
                c = c.realtime_period(v);
            }
            if let Some(v) = &self.cpuset_cpus {
                c = c.cpus(v.clone());
            }
            if let Some(v) = &self.cpuset_mems {
                c = c.mems(v.clone());
            }
            r = r.cpu(c.build().map_err(build)?);
        }
        if let Some(limit) = self.pids_limit {
            r = r.pids(
                LinuxPidsBuilder::default()
                    .limit(limit)
                    .build()
                    .map_err(build)?,
            );
        }
        if let Some(weight) = self.blkio_weight {
            let weight = u16::try_from(weight).map_err(|_| ResourcesError::BlkioWeight(weight))?;
            r = r.block_io(
                LinuxBlockIoBuilder::default()
                    .weight(weight)
                    .build()
                    .map_err(build)?,
            );
        }
        r.build().map_err(build)
    }
}

/// A `linux.resources` object from `path`, or from stdin when `path` is
/// `-`; it must parse as the OCI type.
pub fn read_resources(path: &Path) -> Result<LinuxResources, ResourcesError> {
    let read_err = |source| ResourcesError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut text = String::new();
    if path.as_os_str() == "-" {
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(read_err)?;
    } else {
        text = std::fs::read_to_string(path).map_err(read_err)?;
    }
    serde_json::from_str(&text).map_err(|source| ResourcesError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn flags_become_oci_resources() {
        let flags = ResourceFlags {
            memory: Some(64 << 20),
            memory_swap: Some(-1),
            cpu_quota: Some(50_000),
            cpu_period: Some(100_000),
            cpuset_cpus: Some("0".into()),
            pids_limit: Some(42),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_value(flags.to_resources().unwrap()).unwrap(),
            json!({
                "memory": {"limit": 64 << 20, "swap": -1},
                "cpu": {"quota": 50_000, "period": 100_000, "cpus": "0"},
                "pids": {"limit": 42}
            })
        );
        assert_eq!(
            serde_json::to_value(ResourceFlags::default().to_resources().unwrap()).unwrap(),
            json!({})
        );
    }

    #[test]
    fn intel_rdt_is_refused() {
        let flags = ResourceFlags {
            intel_rdt: true,
            ..Default::default()
        };
        assert!(matches!(
            flags.to_resources(),
            Err(ResourcesError::IntelRdt)
        ));
    }

    #[test]
    fn a_resources_file_must_be_oci_resources() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.json");
        std::fs::write(&good, r#"{"pids": {"limit": 7}}"#).unwrap();
        assert_eq!(read_resources(&good).unwrap().pids().unwrap().limit(), 7);
        let wrong = dir.path().join("wrong.json");
        std::fs::write(&wrong, r#"{"pids": {"limit": "many"}}"#).unwrap();
        assert!(matches!(
            read_resources(&wrong),
            Err(ResourcesError::Parse { .. })
        ));
        assert!(matches!(
            read_resources(&dir.path().join("none.json")),
            Err(ResourcesError::Read { .. })
        ));
    }
}
