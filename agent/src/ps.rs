//! What the guest's /proc says about a container's processes, for `ps`.

use procfs::process::Process;
use runvm_protocol::GuestProcess;

/// What /proc says about each of `pids` (ones that vanished are left out),
/// in pid order.
pub fn describe(pids: &[i32]) -> Vec<GuestProcess> {
    let ticks = procfs::ticks_per_second().max(1);
    let boot = procfs::boot_time_secs().unwrap_or(0);
    let mut out: Vec<GuestProcess> = pids
        .iter()
        .filter_map(|&pid| {
            let process = Process::new(pid).ok()?;
            let stat = process.stat().ok()?;
            let uid = process.status().map(|s| s.ruid).unwrap_or(0);
            let cmdline = process.cmdline().unwrap_or_default().join(" ");
            let (major, minor) = stat.tty_nr();
            Some(GuestProcess {
                pid,
                ppid: stat.ppid,
                uid,
                start_time: boot + stat.starttime / ticks,
                cpu_secs: (stat.utime + stat.stime) / ticks,
                tty: (stat.tty_nr != 0).then(|| tty_name(major, minor)),
                cmdline: if cmdline.is_empty() {
                    format!("[{}]", stat.comm)
                } else {
                    cmdline
                },
            })
        })
        .collect();
    out.sort_by_key(|p| p.pid);
    out
}

/// Kept: procfs gives a tty's device numbers, ps shows its name.
fn tty_name(major: i32, minor: i32) -> String {
    match major {
        136..=143 => format!("pts/{}", minor + (major - 136) * 256),
        4 => format!("tty{minor}"),
        _ => format!("{major}:{minor}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tty_numbers_become_names() {
        assert_eq!(tty_name(136, 3), "pts/3");
        assert_eq!(tty_name(137, 1), "pts/257");
        assert_eq!(tty_name(4, 1), "tty1");
    }

    #[test]
    fn this_process_is_described() {
        let me = std::process::id() as i32;
        let out = describe(&[me, i32::MAX]);
        assert_eq!(out.len(), 1, "a pid that does not exist is left out");
        let p = &out[0];
        assert_eq!(p.pid, me);
        assert_eq!(p.ppid, nix::unistd::getppid().as_raw());
        assert_eq!(p.uid, nix::unistd::getuid().as_raw());
        assert!(!p.cmdline.is_empty());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(p.start_time <= now && p.start_time + 3600 > now, "{p:?}");
    }
}
