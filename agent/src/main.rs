//! runvm's guest agent.
//!
//! The kernel starts it as `/init` from the initramfs. As PID 1 it moves a
//! bind mount of the initramfs over `/` (so containers can `pivot_root`),
//! mounts the pseudo filesystems, finds its virtio-serial port and serves
//! the host's requests: creating the container from its OCI spec (through
//! youki's container library, run in a short-lived helper process),
//! relaying stdio, forwarding signals and reporting exit statuses.
//!
//! The same binary is that helper: `runvm-agent __youki <verb> ...`.

mod cgroup;
mod containers;
mod executor;
mod fdio;
mod guest;
mod init;
mod limits;
mod network;
mod process;
mod ps;
mod reaper;
mod runc_defaults;
mod server;
mod tty;
mod warmup;
mod youki_helper;
mod zygote;

use std::process::ExitCode;

/// The warm-up container's process: this binary, exiting at once.
pub const WARMUP_ARG: &str = "__warmup";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(WARMUP_ARG) {
        return ExitCode::SUCCESS;
    }
    if args.get(1).map(String::as_str) == Some(youki_helper::ARG) {
        return youki_helper::main(&args[2..]);
    }
    if args.get(1).map(String::as_str) == Some(zygote::ARG) {
        return zygote::main();
    }
    if nix::unistd::getpid().as_raw() != 1 {
        eprintln!("runvm-agent: must run as PID 1 of the guest");
        return ExitCode::FAILURE;
    }
    if let Err(err) = run_init(args.get(1).map(String::as_str) == Some(init::STAGE2_ARG)) {
        // PID 1 exiting panics the kernel; with panic=-1 and QEMU's -no-reboot
        // that ends the VM, which the host reports as a stopped container.
        eprintln!("runvm-agent: {err:#}");
    }
    ExitCode::FAILURE
}

fn run_init(stage2: bool) -> anyhow::Result<()> {
    if !stage2 {
        // Does not return on success: execs this binary again from the new root.
        init::leave_initramfs()?;
    }
    init::mount_system()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(server::serve())
}
