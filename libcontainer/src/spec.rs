//! The bundle's config.json: loading, the checks runc makes before it creates
//! anything, and the default spec `runvm spec` writes.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;
use serde_json::Value;

pub const CONFIG_FILE: &str = "config.json";

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("bundle {path}")]
    Bundle { path: PathBuf, source: io::Error },
    #[error("JSON specification file config.json not found")]
    NotFound { path: PathBuf },
    #[error("read {path}")]
    Read { path: PathBuf, source: io::Error },
    #[error("parse {path}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("process property must not be empty")]
    NoProcess,
    #[error("args must not be empty")]
    EmptyArgs,
    #[error("Cwd must be an absolute path")]
    RelativeCwd,
    #[error("root must be specified")]
    NoRoot,
    #[error("invalid rootfs: stat {path}")]
    Rootfs { path: PathBuf, source: io::Error },
    #[error("invalid rootfs: {path} is not a directory")]
    RootfsNotDir { path: PathBuf },
    #[error(transparent)]
    BindMount(#[from] crate::share::ShareError),
    #[error("File config.json exists. Remove it first")]
    Exists { path: PathBuf },
    #[error("write {path}")]
    Write { path: PathBuf, source: io::Error },
    #[error("rootless containers are not supported")]
    Rootless,
    #[error("sysctl {0:?} not allowed in host network namespace")]
    NetSysctlWithoutNetns(String),
    #[error("unable to start container process: unable to setup user: uids and gids must be in range 0-{MAX_ID}")]
    IdOutOfRange,
    #[error("unable to start container process: error during container init: error setting rlimits for ready process: error setting rlimit type {0}: invalid argument")]
    SoftAboveHard(u32),
}

/// The largest uid or gid runc accepts (Go's int32).
const MAX_ID: u32 = i32::MAX as u32;

/// A bundle whose config.json parsed and passed the checks.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// The bundle directory, absolute.
    pub dir: PathBuf,
    /// The rootfs directory, absolute.
    pub rootfs: PathBuf,
    pub spec: Spec,
    /// config.json as the user wrote it; sent to the guest as is, so fields
    /// this crate's types do not know still reach the guest.
    pub raw: Value,
    /// The spec's bind mounts, sources resolved on the host.
    pub binds: Vec<crate::share::BindMount>,
}

impl Bundle {
    pub fn load(dir: &Path) -> Result<Self, SpecError> {
        let dir = fs::canonicalize(dir).map_err(|source| SpecError::Bundle {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(CONFIG_FILE);
        let data = match fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(SpecError::NotFound { path })
            }
            Err(source) => return Err(SpecError::Read { path, source }),
        };
        Self::from_slice(&dir, &path, &data)
    }

    /// Parse and check a config.json that was read from `path` in bundle `dir`.
    pub fn from_slice(dir: &Path, path: &Path, data: &[u8]) -> Result<Self, SpecError> {
        let parse_err = |source| SpecError::Parse {
            path: path.to_path_buf(),
            source,
        };
        let raw: Value = serde_json::from_slice(data).map_err(parse_err)?;
        let spec: Spec = serde_json::from_value(raw.clone()).map_err(parse_err)?;
        let rootfs = check(&spec, dir)?;
        let binds = crate::share::bind_mounts(&spec, dir)?;
        Ok(Bundle {
            dir: dir.to_path_buf(),
            rootfs,
            spec,
            raw,
            binds,
        })
    }

    pub fn terminal(&self) -> bool {
        self.spec
            .process()
            .as_ref()
            .and_then(|p| p.terminal())
            .unwrap_or(false)
    }

    pub fn rootfs_readonly(&self) -> bool {
        self.spec
            .root()
            .as_ref()
            .and_then(|r| r.readonly())
            .unwrap_or(false)
    }
}

/// runc's checks, in runc's order and words; returns the absolute rootfs.
fn check(spec: &Spec, bundle: &Path) -> Result<PathBuf, SpecError> {
    let process = spec.process().as_ref().ok_or(SpecError::NoProcess)?;
    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(SpecError::EmptyArgs);
    }
    if !process.cwd().is_absolute() {
        return Err(SpecError::RelativeCwd);
    }
    let root = spec.root().as_ref().ok_or(SpecError::NoRoot)?;
    let rootfs = bundle.join(root.path());
    let meta = fs::metadata(&rootfs).map_err(|source| SpecError::Rootfs {
        path: rootfs.clone(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(SpecError::RootfsNotDir { path: rootfs });
    }
    check_sysctls(spec)?;
    check_user(process)?;
    check_rlimits(process)?;
    fs::canonicalize(&rootfs).map_err(|source| SpecError::Rootfs {
        path: rootfs,
        source,
    })
}

/// A net.* sysctl needs a network namespace of the container's own; these
/// checks run on the host, so a spec runc refuses boots no VM.
fn check_sysctls(spec: &Spec) -> Result<(), SpecError> {
    let Some(linux) = spec.linux().as_ref() else {
        return Ok(());
    };
    let own_netns = linux
        .namespaces()
        .iter()
        .flatten()
        .any(|ns| ns.typ() == oci_spec::runtime::LinuxNamespaceType::Network);
    let mut keys: Vec<&String> = linux.sysctl().iter().flat_map(|m| m.keys()).collect();
    keys.sort();
    match keys.into_iter().find(|k| k.starts_with("net.")) {
        Some(key) if !own_netns => Err(SpecError::NetSysctlWithoutNetns(key.clone())),
        _ => Ok(()),
    }
}

fn check_user(process: &oci_spec::runtime::Process) -> Result<(), SpecError> {
    let user = process.user();
    let mut ids = [user.uid(), user.gid()]
        .into_iter()
        .chain(user.additional_gids().iter().flatten().copied());
    if ids.any(|id| id > MAX_ID) {
        return Err(SpecError::IdOutOfRange);
    }
    Ok(())
}

/// A soft limit above its hard one, which setrlimit(2) refuses (EINVAL),
/// named by the resource's number as runc names it.
fn check_rlimits(process: &oci_spec::runtime::Process) -> Result<(), SpecError> {
    use oci_spec::runtime::PosixRlimitType::*;
    for r in process.rlimits().iter().flatten() {
        if r.soft() <= r.hard() {
            continue;
        }
        let number = match r.typ() {
            RlimitCpu => libc::RLIMIT_CPU,
            RlimitFsize => libc::RLIMIT_FSIZE,
            RlimitData => libc::RLIMIT_DATA,
            RlimitStack => libc::RLIMIT_STACK,
            RlimitCore => libc::RLIMIT_CORE,
            RlimitRss => libc::RLIMIT_RSS,
            RlimitNproc => libc::RLIMIT_NPROC,
            RlimitNofile => libc::RLIMIT_NOFILE,
            RlimitMemlock => libc::RLIMIT_MEMLOCK,
            RlimitAs => libc::RLIMIT_AS,
            RlimitLocks => libc::RLIMIT_LOCKS,
            RlimitSigpending => libc::RLIMIT_SIGPENDING,
            RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
            RlimitNice => libc::RLIMIT_NICE,
            RlimitRtprio => libc::RLIMIT_RTPRIO,
            RlimitRttime => libc::RLIMIT_RTTIME,
        };
        return Err(SpecError::SoftAboveHard(number));
    }
    Ok(())
}

/// The default config.json, modelled on runc's: `sh` in a busybox-like rootfs
/// at `rootfs`, new namespaces, the usual mounts, masked and read-only /proc
/// paths. Unlike runc's, `process.terminal` is false, so the spec works with
/// `runvm run` from scripts and pipes without a console socket.
/// The spec saved in a container's directory, before the shim has a
/// runtime to load the bundle with.
pub fn read_spec_file(path: &Path) -> Result<Spec, SpecError> {
    let data = std::fs::read(path).map_err(|source| SpecError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_slice(&data).map_err(|source| SpecError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

pub fn default_spec() -> Spec {
    let mut spec = Spec::default();
    spec.set_hostname(Some("runvm".to_string()));
    if let Some(process) = spec.process_mut() {
        process.set_terminal(Some(false));
    }
    spec
}

/// Write the default spec to `<bundle>/config.json`; refuses to overwrite.
pub fn write_default_spec(bundle: &Path, rootless: bool) -> Result<PathBuf, SpecError> {
    if rootless {
        return Err(SpecError::Rootless);
    }
    let path = bundle.join(CONFIG_FILE);
    if path.exists() {
        return Err(SpecError::Exists { path });
    }
    let json = serde_json::to_string_pretty(&default_spec()).expect("spec serializes");
    fs::write(&path, json + "\n").map_err(|source| SpecError::Write {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

/// A spec with just these namespaces, for tests of what follows from them.
#[cfg(test)]
pub(crate) fn with_namespaces(namespaces: Value) -> Spec {
    serde_json::from_value(serde_json::json!({
        "ociVersion": "1.0.2",
        "linux": {"namespaces": namespaces}
    }))
    .unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bundle_with(config: &Value) -> (tempfile::TempDir, Result<Bundle, SpecError>) {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir(tmp.path().join("rootfs")).unwrap();
        fs::write(tmp.path().join(CONFIG_FILE), config.to_string()).unwrap();
        let b = Bundle::load(tmp.path());
        (tmp, b)
    }

    fn good() -> Value {
        serde_json::to_value(default_spec()).unwrap()
    }

    #[test]
    fn default_spec_loads_and_is_not_a_terminal() {
        let (tmp, b) = bundle_with(&good());
        let b = b.unwrap();
        assert!(!b.terminal());
        assert_eq!(
            b.rootfs,
            fs::canonicalize(tmp.path().join("rootfs")).unwrap()
        );
        assert_eq!(b.spec.hostname().as_deref(), Some("runvm"));
    }

    #[test]
    fn runc_words_for_each_bad_spec() {
        type Mutation = Box<dyn Fn(&mut Value)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (
                Box::new(|c| {
                    c.as_object_mut().unwrap().remove("process");
                }),
                "process property must not be empty",
            ),
            (
                Box::new(|c| c["process"]["args"] = json!([])),
                "args must not be empty",
            ),
            (
                Box::new(|c| c["process"]["cwd"] = json!("tmp")),
                "Cwd must be an absolute path",
            ),
            (
                Box::new(|c| {
                    c.as_object_mut().unwrap().remove("root");
                }),
                "root must be specified",
            ),
            (
                Box::new(|c| c["root"]["path"] = json!("nope")),
                "invalid rootfs: stat",
            ),
            (
                Box::new(|c| {
                    c["linux"]["namespaces"] = json!([{"type": "pid"}]);
                    c["linux"]["sysctl"] = json!({"kernel.shmmax": "1", "net.ipv4.ip_forward": "1"});
                }),
                "sysctl \"net.ipv4.ip_forward\" not allowed in host network namespace",
            ),
            (
                Box::new(|c| c["process"]["user"]["additionalGids"] = json!([10, 2147483648u32])),
                "unable to start container process: unable to setup user: uids and gids must be in range 0-2147483647",
            ),
            (
                Box::new(|c| {
                    c["process"]["rlimits"] =
                        json!([{"type": "RLIMIT_NOFILE", "soft": 2048, "hard": 1024}])
                }),
                "unable to start container process: error during container init: \
                 error setting rlimits for ready process: error setting rlimit type 7: invalid argument",
            ),
        ];
        for (mutate, want) in cases {
            let mut c = good();
            mutate(&mut c);
            let (_tmp, b) = bundle_with(&c);
            let msg = b.unwrap_err().to_string();
            assert!(msg.starts_with(want), "{msg} does not start with {want}");
        }
    }

    #[test]
    fn wrong_types_and_bad_json_are_parse_errors() {
        let mut c = good();
        c["process"]["args"] = json!("sh");
        let (_tmp, b) = bundle_with(&c);
        assert!(matches!(b, Err(SpecError::Parse { .. })));

        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join(CONFIG_FILE), "{bad json").unwrap();
        assert!(matches!(
            Bundle::load(tmp.path()),
            Err(SpecError::Parse { .. })
        ));
    }

    #[test]
    fn missing_bundle_and_missing_config() {
        assert!(matches!(
            Bundle::load(Path::new("/nonexistent/bundle")),
            Err(SpecError::Bundle { .. })
        ));
        let tmp = tempfile::tempdir().unwrap();
        let err = Bundle::load(tmp.path()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "JSON specification file config.json not found"
        );
    }

    #[test]
    fn bind_mounts_need_an_existing_source() {
        let mut c = good();
        c["mounts"]
            .as_array_mut()
            .unwrap()
            .push(json!({"destination": "/data", "type": "bind", "source": "/nonexistent/srv", "options": ["rbind"]}));
        let (_tmp, b) = bundle_with(&c);
        assert!(matches!(b, Err(SpecError::BindMount(_))));
    }

    #[test]
    fn spec_refuses_to_overwrite() {
        let tmp = tempfile::tempdir().unwrap();
        write_default_spec(tmp.path(), false).unwrap();
        let err = write_default_spec(tmp.path(), false).unwrap_err();
        assert_eq!(err.to_string(), "File config.json exists. Remove it first");
    }
}
