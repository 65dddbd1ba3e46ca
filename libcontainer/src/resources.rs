//! `update`'s input: an OCI `linux.resources` object, read from a file (or
//! stdin) or made from runc's flags. It is applied to the container's cgroup
//! in the guest.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

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
    /// The `linux.resources` object the flags describe.
    pub fn to_resources(&self) -> Result<Value, ResourcesError> {
        if self.intel_rdt {
            return Err(ResourcesError::IntelRdt);
        }
        let mut r = Map::new();
        let mut set = |section: &str, key: &str, v: Option<Value>| {
            if let Some(v) = v {
                r.entry(section)
                    .or_insert_with(|| json!({}))
                    .as_object_mut()
                    .expect("sections are objects")
                    .insert(key.to_string(), v);
            }
        };
        let j = |v: Option<u64>| v.map(Value::from);
        set("memory", "limit", j(self.memory));
        set("memory", "reservation", j(self.memory_reservation));
        set("memory", "swap", self.memory_swap.map(Value::from));
        set("cpu", "shares", j(self.cpu_share));
        set("cpu", "quota", j(self.cpu_quota));
        set("cpu", "period", j(self.cpu_period));
        set("cpu", "realtimeRuntime", j(self.cpu_rt_runtime));
        set("cpu", "realtimePeriod", j(self.cpu_rt_period));
        set("cpu", "cpus", self.cpuset_cpus.clone().map(Value::from));
        set("cpu", "mems", self.cpuset_mems.clone().map(Value::from));
        set("pids", "limit", self.pids_limit.map(Value::from));
        set("blockIO", "weight", j(self.blkio_weight));
        Ok(Value::Object(r))
    }
}

/// A `linux.resources` object from `path`, or from stdin when `path` is
/// `-`; it must parse as the OCI type.
pub fn read_resources(path: &Path) -> Result<Value, ResourcesError> {
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
    let parse_err = |source| ResourcesError::Parse {
        path: path.to_path_buf(),
        source,
    };
    let value: Value = serde_json::from_str(&text).map_err(parse_err)?;
    serde_json::from_value::<oci_spec::runtime::LinuxResources>(value.clone())
        .map_err(parse_err)?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

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
            flags.to_resources().unwrap(),
            json!({
                "memory": {"limit": 64 << 20, "swap": -1},
                "cpu": {"quota": 50_000, "period": 100_000, "cpus": "0"},
                "pids": {"limit": 42}
            })
        );
        assert_eq!(ResourceFlags::default().to_resources().unwrap(), json!({}));
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
        assert_eq!(
            read_resources(&good).unwrap(),
            json!({"pids": {"limit": 7}})
        );
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
