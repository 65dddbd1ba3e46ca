//! Whole-guest adjustments: the clock and the RNG of a VM restored from a
//! template; memory the host hotplugged.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::AsRawFd;

use nix::sys::time::TimeSpec;
use nix::time::{clock_settime, ClockId};
use runvm_protocol::{AgentError, AgentErrorKind};

use crate::process::{fail, AgentResult};

/// `struct rand_pool_info` of <linux/random.h>, with room for the seed.
#[repr(C)]
struct RandPoolInfo {
    entropy_count: libc::c_int,
    buf_size: libc::c_int,
    buf: [u8; 64],
}

/// RNDADDENTROPY: _IOW('R', 0x03, int[2]).
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// RNDRESEEDCRNG: _IO('R', 0x07).
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

pub fn sync(unix_time_ns: u64, seed: &[u8]) -> AgentResult<()> {
    let ts = TimeSpec::new(
        (unix_time_ns / 1_000_000_000) as i64,
        (unix_time_ns % 1_000_000_000) as i64,
    );
    clock_settime(ClockId::CLOCK_REALTIME, ts).map_err(|e| fail("set the clock", e))?;
    if seed.is_empty() || seed.len() > 64 {
        return Err(AgentError::new(
            AgentErrorKind::InvalidArgument,
            "the seed must be 1 to 64 bytes",
        ));
    }
    let mut info = RandPoolInfo {
        entropy_count: (seed.len() * 8) as libc::c_int,
        buf_size: seed.len() as libc::c_int,
        buf: [0; 64],
    };
    info.buf[..seed.len()].copy_from_slice(seed);
    let mut random = OpenOptions::new()
        .write(true)
        .open("/dev/urandom")
        .map_err(|e| fail("open /dev/urandom", e))?;
    // Mixed into the input pool and credited. Since Linux 5.18 that does not
    // reseed a crng that is already initialized (as the template's is): it
    // would only be used at the next scheduled reseed, up to a minute later.
    // SAFETY: RNDADDENTROPY reads a rand_pool_info we own, whose buf_size
    // does not exceed the buffer that follows it.
    let rc = unsafe { libc::ioctl(random.as_raw_fd(), RNDADDENTROPY as _, &info) };
    if rc < 0 {
        // Without the credit, at least mix it in.
        random
            .write_all(seed)
            .map_err(|e| fail("seed the RNG", e))?;
    }
    // So reseed now, from the pool that holds the host's seed: every
    // process started after this reply draws from a key the template never
    // had. (vmgenid also makes the kernel reseed, but asynchronously, when
    // it gets to the ACPI notification.)
    // SAFETY: RNDRESEEDCRNG takes no argument.
    let rc = unsafe { libc::ioctl(random.as_raw_fd(), RNDRESEEDCRNG as _) };
    if rc < 0 {
        return Err(fail("reseed the RNG", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// How long to wait for hotplugged memory to come online (the kernel does
/// it by itself; under TCG that can take a while for a large DIMM).
const ONLINE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);
const SYS_MEMORY: &str = "/sys/devices/system/memory";

/// Wait until the guest has `mib` MiB of memory online, after the host
/// added some; on timeout the caller's checks say what is missing.
pub async fn wait_memory_online(mib: u64) {
    let deadline = tokio::time::Instant::now() + ONLINE_WAIT;
    let path = std::path::Path::new(SYS_MEMORY);
    while online_mib(path).is_ok_and(|online| online < mib)
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Memory in online blocks under `sys` (/sys/devices/system/memory), MiB.
fn online_mib(sys: &std::path::Path) -> std::io::Result<u64> {
    let size = std::fs::read_to_string(sys.join("block_size_bytes"))?;
    let block = u64::from_str_radix(size.trim(), 16)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    let mut online = 0;
    for entry in std::fs::read_dir(sys)? {
        let entry = entry?;
        if !entry.file_name().to_string_lossy().starts_with("memory") {
            continue;
        }
        let state = std::fs::read_to_string(entry.path().join("state")).unwrap_or_default();
        if state.trim() == "online" {
            online += block;
        }
    }
    Ok(online >> 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn online_memory_counts_the_online_blocks() {
        let sys = tempfile::tempdir().unwrap();
        std::fs::write(sys.path().join("block_size_bytes"), "8000000\n").unwrap();
        for (block, state) in [
            ("memory0", "online"),
            ("memory1", "online"),
            ("memory32", "offline"),
        ] {
            std::fs::create_dir(sys.path().join(block)).unwrap();
            std::fs::write(sys.path().join(block).join("state"), format!("{state}\n")).unwrap();
        }
        std::fs::create_dir(sys.path().join("power")).unwrap();
        assert_eq!(online_mib(sys.path()).unwrap(), 256);
        std::fs::write(sys.path().join("memory32/state"), "online\n").unwrap();
        assert_eq!(online_mib(sys.path()).unwrap(), 384);
    }
}
