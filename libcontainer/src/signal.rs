//! Signal names and numbers as `runc kill` accepts them.

use std::str::FromStr;

use nix::sys::signal::Signal;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown signal {0:?}")]
pub struct UnknownSignal(pub String);

/// Highest signal number Linux has (SIGRTMAX).
const SIGRTMAX: i32 = 64;

/// Parse `TERM`, `SIGTERM`, `sigterm` or `15`.
pub fn parse_signal(raw: &str) -> Result<i32, UnknownSignal> {
    let unknown = || UnknownSignal(raw.to_string());
    if let Ok(n) = raw.parse::<i32>() {
        return if (1..=SIGRTMAX).contains(&n) {
            Ok(n)
        } else {
            Err(unknown())
        };
    }
    let upper = raw.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    Signal::from_str(&name)
        .map(|s| s as i32)
        .map_err(|_| unknown())
}

/// Signals a process can catch: what the shim forwards into the guest.
/// SIGCHLD and SIGPIPE are the shim's own business; SIGKILL and SIGSTOP
/// cannot be caught.
pub fn forwardable() -> impl Iterator<Item = i32> {
    (1..=SIGRTMAX).filter(|&s| {
        ![
            libc::SIGKILL,
            libc::SIGSTOP,
            libc::SIGCHLD,
            libc::SIGPIPE,
            // glibc reserves 32 and 33 for its threads.
            32,
            33,
        ]
        .contains(&s)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_and_without_sig_and_numbers() {
        assert_eq!(parse_signal("TERM"), Ok(15));
        assert_eq!(parse_signal("SIGTERM"), Ok(15));
        assert_eq!(parse_signal("sigkill"), Ok(9));
        assert_eq!(parse_signal("KILL"), Ok(9));
        assert_eq!(parse_signal("9"), Ok(9));
        assert_eq!(parse_signal("40"), Ok(40));
    }

    #[test]
    fn unknown_signals_use_runc_words() {
        assert_eq!(
            parse_signal("FOO").unwrap_err().to_string(),
            "unknown signal \"FOO\""
        );
        assert!(parse_signal("0").is_err());
        assert!(parse_signal("65").is_err());
        assert!(parse_signal("-9").is_err());
        assert!(parse_signal("").is_err());
    }

    #[test]
    fn forwardable_leaves_out_uncatchable_and_local_signals() {
        let all: Vec<i32> = forwardable().collect();
        assert!(all.contains(&libc::SIGTERM) && all.contains(&libc::SIGINT));
        assert!(!all.contains(&libc::SIGKILL) && !all.contains(&libc::SIGCHLD));
    }
}
