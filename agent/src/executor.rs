//! How youki runs the container's process, with runc's error messages when
//! the executable cannot be run: clients parse them (Podman turns "no such
//! file or directory" and "executable file not found" into exit code 127,
//! "permission denied" into 126).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use nix::errno::Errno;
use oci_spec::runtime::Spec;
use youki::workload::default::DefaultExecutor;
use youki::workload::{Executor, ExecutorError, ExecutorValidationError};

#[derive(Clone, Default)]
pub struct RuncWords;

impl Executor for RuncWords {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        DefaultExecutor {}.exec(spec)
    }

    /// Runs in the container (after pivot_root, before the start signal).
    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        let process = spec.process().as_ref();
        let Some(name) = process
            .and_then(|p| p.args().as_ref())
            .and_then(|a| a.first())
        else {
            return Err(ExecutorValidationError::ArgValidationError(
                "args must not be empty".into(),
            ));
        };
        let path_var = process
            .and_then(|p| p.env().as_ref())
            .and_then(|env| env.iter().find_map(|e| e.strip_prefix("PATH=")))
            .unwrap_or("");
        check_executable(name, path_var).map_err(ExecutorValidationError::ArgValidationError)
    }
}

pub(crate) fn errno_text(e: &std::io::Error) -> String {
    let text = Errno::from_raw(e.raw_os_error().unwrap_or(0)).desc();
    let mut chars = text.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

fn is_executable_file(p: &Path) -> Option<bool> {
    let meta = std::fs::metadata(p).ok()?;
    Some(meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// runc's checks and words: a name with a slash is stat'ed, a bare name is
/// looked up in the process's PATH.
pub fn check_executable(name: &str, path_var: &str) -> Result<(), String> {
    if name.contains('/') {
        let meta = std::fs::metadata(name)
            .map_err(|e| format!("exec: {name:?}: stat {name}: {}", errno_text(&e)))?;
        if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
            return Err(format!("exec: {name:?}: permission denied"));
        }
        return Ok(());
    }
    let found = path_var
        .split(':')
        .filter(|d| !d.is_empty())
        .any(|d| is_executable_file(&Path::new(d).join(name)) == Some(true));
    if found {
        Ok(())
    } else {
        Err(format!(
            "exec: {name:?}: executable file not found in $PATH"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runc_words() {
        assert_eq!(
            check_executable("/no/such", "/bin").unwrap_err(),
            "exec: \"/no/such\": stat /no/such: no such file or directory"
        );
        assert_eq!(
            check_executable("/", "/bin").unwrap_err(),
            "exec: \"/\": permission denied"
        );
        assert_eq!(
            check_executable("nosuch-binary-x", "/usr/bin:/bin").unwrap_err(),
            "exec: \"nosuch-binary-x\": executable file not found in $PATH"
        );
        assert_eq!(check_executable("sh", "/usr/bin:/bin"), Ok(()));
        assert_eq!(check_executable("/bin/sh", ""), Ok(()));
    }
}
