//! Short-lived helper processes that drive youki's container library.
//!
//! youki forks the container's processes from the process that calls it. The
//! agent is a multi-threaded tokio program, where forking and then running
//! ordinary Rust code is unsafe, so each youki call runs in a fresh,
//! single-threaded exec of this binary: `runvm-agent __youki <verb> ...`.
//! The container's stdio arrives as fds 3, 4 and 5; the helper prints its
//! result on stdout and its error on stderr.

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use nix::mount::{mount, MsFlags};
use serde_json::Value;
use youki::container::builder::ContainerBuilder;
use youki::container::Container;
use youki::syscall::syscall::SyscallType;

pub const ARG: &str = "__youki";
/// youki's state directory inside the guest.
pub const YOUKI_ROOT: &str = "/run/youki";

pub fn main(args: &[String]) -> ExitCode {
    // Rust starts with SIGPIPE ignored, and an ignored signal stays ignored
    // across exec: the container must start with the default disposition.
    // SAFETY: single-threaded at this point; SIG_DFL is always a valid handler.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // youki explains failures in its log events rather than in the error it
    // returns; send error events to the agent. The container's init process
    // is forked from this one and keeps logging here until it execs (the
    // descriptor is close-on-exec), so its setup errors arrive too.
    if let Ok(fd) = nix::fcntl::fcntl(2, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(100)) {
        let _ = tracing_subscriber::fmt()
            .with_writer(move || FdWriter(fd))
            .with_max_level(tracing::Level::ERROR)
            .without_time()
            .with_target(false)
            .with_level(false)
            .with_ansi(false)
            .try_init();
    }
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprint!("{err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Writes to a raw descriptor that outlives every writer.
struct FdWriter(std::os::fd::RawFd);

impl std::io::Write for FdWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // SAFETY: the descriptor stays open for the life of the process.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(self.0) };
        nix::unistd::write(fd, buf).map_err(std::io::Error::from)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn flag(args: &[String], name: &str) -> Option<String> {
    args.windows(2).find(|w| w[0] == name).map(|w| w[1].clone())
}

fn required(args: &[String], name: &str) -> Result<String> {
    flag(args, name).with_context(|| format!("missing {name}"))
}

fn run(args: &[String]) -> Result<()> {
    let verb = args.first().map(String::as_str).unwrap_or_default();
    let id = required(args, "--id")?;
    match verb {
        "create" => create(
            &id,
            &required(args, "--bundle")?,
            flag(args, "--console-socket"),
        ),
        "exec" => exec(
            &id,
            &required(args, "--process")?,
            flag(args, "--console-socket"),
        ),
        "start" => {
            let mut container = Container::load(PathBuf::from(YOUKI_ROOT).join(&id))
                .context("load the container")?;
            container.start().context("start the container")?;
            Ok(())
        }
        other => bail!("unknown helper verb {other:?}"),
    }
}

/// A builder with the process's stdio: the console socket, or fds 3-5.
fn builder(id: &str, console_socket: Option<&str>) -> Result<ContainerBuilder> {
    let mut builder = ContainerBuilder::new(id.to_string(), SyscallType::default())
        .with_root_path(YOUKI_ROOT)
        .context("youki root")?
        .with_console_socket(console_socket)
        .with_executor(crate::executor::RuncWords);
    if console_socket.is_none() {
        // SAFETY: the agent passes the process's stdio as fds 3, 4 and 5 and
        // nothing else in this process uses them.
        let (stdin, stdout, stderr) = unsafe {
            (
                OwnedFd::from_raw_fd(3),
                OwnedFd::from_raw_fd(4),
                OwnedFd::from_raw_fd(5),
            )
        };
        builder = builder
            .with_stdin(stdin)
            .with_stdout(stdout)
            .with_stderr(stderr);
    }
    Ok(builder)
}

fn exec(id: &str, process: &str, console_socket: Option<String>) -> Result<()> {
    // youki checks the container's spec again for an exec (see create).
    let container =
        Container::load(PathBuf::from(YOUKI_ROOT).join(id)).context("load the container")?;
    step_out_of_the_vms_network(&read_spec(&container.bundle().to_string_lossy())?)?;
    let pid = builder(id, console_socket.as_deref())?
        .as_tenant()
        .with_process(Some(process))
        .with_detach(true)
        .build()
        .map_err(|e| anyhow::anyhow!(e))?;
    println!("{pid}");
    Ok(())
}

fn create(id: &str, bundle: &str, console_socket: Option<String>) -> Result<()> {
    let spec = read_spec(bundle)?;
    step_out_of_the_vms_network(&spec)?;
    let container = builder(id, console_socket.as_deref())?
        .as_init(bundle)
        .with_systemd(false)
        .with_detach(true)
        .build()
        .map_err(|e| anyhow::anyhow!(e))?;
    let pid = container.pid().context("youki reported no pid")?;
    apply_mount_propagation(&spec, pid)?;
    println!("{pid}");
    Ok(())
}

/// The propagation options of one mount, as mount(2) flags, in spec order.
fn propagation_flags(options: &[Value]) -> Vec<MsFlags> {
    options
        .iter()
        .filter_map(Value::as_str)
        .filter_map(|o| {
            Some(match o {
                "shared" => MsFlags::MS_SHARED,
                "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
                "slave" => MsFlags::MS_SLAVE,
                "rslave" => MsFlags::MS_SLAVE | MsFlags::MS_REC,
                "private" => MsFlags::MS_PRIVATE,
                "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
                "unbindable" => MsFlags::MS_UNBINDABLE,
                "runbindable" => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
                _ => return None,
            })
        })
        .collect()
}

/// Give the container's mounts the propagation their options ask for.
///
/// Why: youki 0.7 mounts with open_tree/move_mount and never applies a
/// mount's propagation options (`shared`, `rslave`, ...), which runc applies
/// right after each mount; so a `shared` bind was private in the container.
/// This helper is single-threaded, so it may enter the created container's
/// mount namespace: that makes the container's root its own, and each
/// destination resolves inside the container as the spec means it. The init
/// waits for start meanwhile, and nothing of the container has run yet.
fn apply_mount_propagation(spec: &Value, pid: nix::unistd::Pid) -> Result<()> {
    let wanted: Vec<(&str, Vec<MsFlags>)> = spec["mounts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| {
            let flags = propagation_flags(m["options"].as_array()?);
            Some((m["destination"].as_str()?, flags))
        })
        .filter(|(_, flags)| !flags.is_empty())
        .collect();
    let own_mount_ns = spec["linux"]["namespaces"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|ns| ns["type"] == "mount");
    if wanted.is_empty() || !own_mount_ns {
        return Ok(());
    }
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/mnt"))
        .context("open the container's mount namespace")?;
    nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNS)
        .context("enter the container's mount namespace")?;
    for (destination, flags) in wanted {
        for flag in flags {
            mount(None::<&str>, destination, None::<&str>, flag, None::<&str>)
                .with_context(|| format!("set the propagation of mount {destination}"))?;
        }
    }
    Ok(())
}

fn read_spec(bundle: &str) -> Result<Value> {
    let path = PathBuf::from(bundle).join("config.json");
    serde_json::from_slice(
        &std::fs::read(&path).with_context(|| format!("read {}", path.display()))?,
    )
    .with_context(|| format!("parse {}", path.display()))
}

/// A container joins the VM's network namespace, which is its own (one VM
/// per container). youki takes a namespace path equal to its caller's for
/// the host's and then refuses the spec's net.* sysctls, as runc does for a
/// host-network container; so this helper, not the container, moves out of
/// the way into a namespace of its own, gone when it exits. The spec names
/// a network namespace to join when it does (the agent points it at the
/// VM's).
fn step_out_of_the_vms_network(spec: &Value) -> Result<()> {
    let joins = spec["linux"]["namespaces"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|ns| ns["type"] == "network" && ns["path"].is_string());
    if joins {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .context("leave the VM's network namespace")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn propagation_options_become_flags_in_order_and_others_are_left() {
        let options = json!(["rbind", "ro", "rslave", "shared", "nosuid", "runbindable"]);
        assert_eq!(
            propagation_flags(options.as_array().unwrap()),
            vec![
                MsFlags::MS_SLAVE | MsFlags::MS_REC,
                MsFlags::MS_SHARED,
                MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
            ]
        );
    }
}
