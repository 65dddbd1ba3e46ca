//! Whole-guest adjustments: the clock and the RNG of a VM restored from a
//! template.

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
