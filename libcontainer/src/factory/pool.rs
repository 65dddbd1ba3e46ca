//! The warm pool: clones of the template restored ahead of time, each by a
//! `runvm factory pool-vm N` process (its member) that launched it, warmed
//! up (a throwaway container created and removed in it, so the guest code
//! that creates containers has been translated once under TCG) and paused.
//! A create's shim claims one over the member's claim socket, adopts its
//! VM and goes on as with a clone of its own; the member stays the VM's
//! parent and kills it if the shim dies. `pool_size` slots, each a lock
//! file a member holds until its VM is claimed; a claimed VM no longer
//! counts against the pool.
//!
//! Layout, beside the template: `<template>.pool/slot-N.lock`,
//! `slot-N.log`, and `vm-<member pid>/` (the VM's directory: its sockets,
//! logs, `member.json`, and `claim.sock` while it waits).

use std::fs;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use nix::fcntl::FlockArg;
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use slog::{info, warn, Logger};

use super::build::{console_end, spawn_detached, wait_session_end};
use super::{files, io_err, Factory, FactoryError, FilesError};
use crate::agent::AgentClient;
use crate::child::Supervised;
use crate::config::Config;
use crate::hypervisor::{self, Hypervisor, CONSOLE_LOG};
use crate::procinfo::ProcessIdentity;
use crate::sockdir::SocketDir;

const CLAIM_SOCKET: &str = "claim.sock";
const MEMBER_FILE: &str = "member.json";
/// How long a claimant waits for a member's answer.
const CLAIM_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a waiting member checks that its directory is still there.
const DIR_CHECK: Duration = Duration::from_secs(2);
/// How long `factory destroy` waits for the members it stops.
const STOP_WAIT: Duration = Duration::from_secs(10);

/// What a member says of itself, in its VM's directory.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
struct Member {
    member: ProcessIdentity,
    vmm: Option<ProcessIdentity>,
    /// When the template it was restored from was made.
    template: DateTime<Utc>,
    claimed: bool,
}

/// A shim's request: the template it would have cloned, and who it is.
#[derive(Serialize, Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
struct Claim {
    pid: i32,
    template: DateTime<Utc>,
}

#[derive(Serialize, Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
enum ClaimReply {
    /// Yours: the VM is paused, its monitor free.
    Taken { vmm_pid: i32 },
    /// Restored from another template (the member goes if it is the older).
    Stale,
}

/// A claimed pool VM: adopt it with [`Hypervisor::adopt`].
pub struct Claimed {
    /// The VM's directory (its sockets and logs).
    pub dir: PathBuf,
    pub vmm_pid: i32,
}

pub struct Pool {
    dir: PathBuf,
    size: u32,
}

/// What `factory status` shows of the pool.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct PoolStatus {
    pub size: u32,
    /// VMs waiting for a claim.
    pub ready: usize,
    /// VMs being restored and warmed up.
    pub starting: usize,
    /// Claimed VMs whose containers still run.
    pub claimed: usize,
}

impl Pool {
    pub fn new(config: &Config) -> Self {
        Pool {
            size: config.factory.pool_size,
            ..Pool::for_dir(&config.factory.template_path)
        }
    }

    /// The pool of the template at `template`, whatever its size (to stop
    /// or remove it).
    pub(super) fn for_dir(template: &Path) -> Self {
        Pool {
            dir: template.with_extension("pool"),
            size: 0,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn slot_lock(&self, slot: u32) -> PathBuf {
        self.dir.join(format!("slot-{slot}.lock"))
    }

    pub fn slot_log(&self, slot: u32) -> PathBuf {
        self.dir.join(format!("slot-{slot}.log"))
    }

    /// VM directories, oldest member first (the lowest pids are not always
    /// the oldest, but any order is right).
    fn vm_dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("vm-"))
            .map(|e| e.path())
            .collect();
        dirs.sort();
        dirs
    }

    /// Slots no member holds.
    fn free_slots(&self) -> Vec<u32> {
        (0..self.size)
            .filter(|&slot| {
                !matches!(
                    files::lock(&self.slot_lock(slot), FlockArg::LockExclusiveNonblock),
                    Err(FilesError::Lock { .. })
                )
            })
            .collect()
    }

    /// Start a member for every free slot, each on its own as the
    /// background build is (see [`Factory::spawn_build`]), and remove what
    /// dead members left. How many were started.
    pub fn fill(&self) -> io::Result<usize> {
        if self.size == 0 {
            return Ok(0);
        }
        files::ensure_private_dir(&self.dir).map_err(io::Error::other)?;
        for dir in self.vm_dirs() {
            if read_member(&dir).is_none_or(|m| !m.member.is_alive()) {
                let _ = files::remove(&dir);
            }
        }
        let free = self.free_slots();
        for &slot in &free {
            let log = self.slot_log(slot);
            spawn_detached(&[
                "--debug".as_ref(),
                "--log".as_ref(),
                log.as_os_str(),
                "factory".as_ref(),
                "pool-vm".as_ref(),
                slot.to_string().as_ref(),
            ])?;
        }
        Ok(free.len())
    }

    /// Take a ready pool VM restored from the template made at `template`;
    /// `None` if there is none (the caller restores a clone of its own).
    pub fn claim(&self, template: DateTime<Utc>, log: &Logger) -> Option<Claimed> {
        if self.size == 0 {
            return None;
        }
        let claim = Claim {
            pid: std::process::id() as i32,
            template,
        };
        for dir in self.vm_dirs() {
            match ask(&dir, &claim) {
                Ok(ClaimReply::Taken { vmm_pid }) => return Some(Claimed { dir, vmm_pid }),
                Ok(ClaimReply::Stale) => {
                    info!(log, "a pool VM of an older template is going"; "dir" => %dir.display())
                }
                // Claimed by another create, or its member is gone.
                Err(e) => {
                    slog::debug!(log, "pool VM not available"; "dir" => %dir.display(), "error" => %e)
                }
            }
        }
        None
    }

    /// Stop every member whose VM is not claimed, and wait until each is
    /// gone (or has been claimed after all); true if none is left.
    pub fn stop_members(&self, log: &Logger) -> bool {
        let mut stopping = Vec::new();
        for dir in self.vm_dirs() {
            let Some(m) = read_member(&dir) else { continue };
            if !m.member.is_alive() {
                // What a member killed outright left (its VM died with it).
                let _ = files::remove(&dir);
            } else if !m.claimed && m.member.signal(Signal::SIGTERM) {
                stopping.push((dir, m));
            }
        }
        let deadline = Instant::now() + STOP_WAIT;
        let mut all = true;
        for (dir, m) in stopping {
            let left = deadline.saturating_duration_since(Instant::now());
            let gone = |m: &Member| !m.member.is_alive() && m.vmm.is_none_or(|v| !v.is_alive());
            let settled = wait_until(left, || {
                gone(&m) || read_member(&dir).is_some_and(|now| now.claimed)
            });
            if !settled {
                warn!(log, "a pool VM's member did not stop"; "pid" => m.member.pid);
                all = false;
            } else if gone(&m) {
                let _ = files::remove(&dir);
            }
        }
        all
    }

    pub fn status(&self) -> PoolStatus {
        let mut st = PoolStatus {
            size: self.size,
            ready: 0,
            starting: 0,
            claimed: 0,
        };
        for dir in self.vm_dirs() {
            match read_member(&dir) {
                Some(m) if !m.member.is_alive() => {}
                Some(m) if m.claimed => st.claimed += 1,
                Some(_) if dir.join(CLAIM_SOCKET).exists() => st.ready += 1,
                Some(_) => st.starting += 1,
                None => {}
            }
        }
        st
    }

    /// Remove the pool's directory if nothing but slot files are left in
    /// it (a claimed VM's directory stays until its container is gone).
    pub fn remove_if_idle(&self) {
        if self.vm_dirs().is_empty() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }

    /// `runvm factory pool-vm SLOT`: hold the slot, restore a clone of the
    /// template, warm it up, pause it and wait for a claim; once claimed,
    /// stay its parent until it stops (killing it if the claimant dies).
    pub fn serve_member(
        &self,
        config: &Config,
        slot: u32,
        log: &Logger,
    ) -> Result<(), FactoryError> {
        if slot >= self.size {
            info!(log, "the pool has fewer slots now"; "slot" => slot, "pool_size" => self.size);
            return Ok(());
        }
        files::ensure_private_dir(&self.dir)?;
        let slot_lock = match files::lock(&self.slot_lock(slot), FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err(FilesError::Lock { .. }) => {
                info!(log, "another member holds the slot"; "slot" => slot);
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        let dir = self.dir.join(format!("vm-{}", std::process::id()));
        files::remove(&dir)?;
        files::create_private_dir(&dir)?;
        let result = member(config, &dir, slot_lock, log);
        let _ = files::remove(&dir);
        result
    }
}

fn read_member(dir: &Path) -> Option<Member> {
    let file = files::open_nofollow(&dir.join(MEMBER_FILE)).ok()?;
    serde_json::from_reader(BufReader::new(file)).ok()
}

fn write_member(dir: &Path, m: &Member) -> Result<(), FactoryError> {
    let path = dir.join(MEMBER_FILE);
    let tmp = dir.join(format!("{MEMBER_FILE}.tmp"));
    let data = serde_json::to_vec(m).expect("member record serializes");
    fs::write(&tmp, data).map_err(io_err(&tmp))?;
    fs::rename(&tmp, &path).map_err(io_err(&path))
}

fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// One claim, over the member's socket.
fn ask(dir: &Path, claim: &Claim) -> io::Result<ClaimReply> {
    let sockets = SocketDir::open(dir)?;
    let mut stream = UnixStream::connect(sockets.path(CLAIM_SOCKET))?;
    stream.set_read_timeout(Some(CLAIM_TIMEOUT))?;
    let mut line = serde_json::to_vec(claim).map_err(io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply)?;
    serde_json::from_str(&reply).map_err(io::Error::other)
}

/// The spec of the warm-up container: runvm's default, as `runvm spec`
/// writes it (the agent sets its root and process).
fn warmup_spec() -> serde_json::Value {
    serde_json::to_value(oci_spec::runtime::Spec::default()).expect("the default spec serializes")
}

fn member(
    config: &Config,
    dir: &Path,
    slot_lock: nix::fcntl::Flock<fs::File>,
    log: &Logger,
) -> Result<(), FactoryError> {
    use tokio::signal::unix::{signal, SignalKind};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io_err(dir))?;
    // SIGTERM (`factory init` and `destroy` stopping the pool) is noted
    // from here on and acted on between steps, with the VM stopped.
    let mut term = {
        let _rt = rt.enter();
        signal(SignalKind::terminate()).map_err(io_err(Path::new("SIGTERM")))?
    };
    let factory = Factory::new(config);
    // Until this member has said who it is, builds and `factory destroy`
    // (which stop the members they find) wait; while one runs, no member
    // starts (its VM would be of the template being replaced).
    let starting = match files::lock(&factory.build_lock_path(), FlockArg::LockSharedNonblock) {
        Ok(l) => l,
        Err(FilesError::Lock { .. }) => {
            info!(
                log,
                "a build or destroy of the template is running: no pool VM now"
            );
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    let template = factory.usable(config)?;
    let made = template.meta.created;
    let mut record = Member {
        member: ProcessIdentity::of(std::process::id() as i32).expect("we are alive"),
        vmm: None,
        template: made,
        claimed: false,
    };
    write_member(dir, &record)?;
    drop(starting);
    let memory = template.copy_memory(&format!("pool-{}", std::process::id()))?;
    let spec = hypervisor::clone_vm(
        config,
        format!("runvm-pool-{}", std::process::id()),
        dir,
        template.state(),
        memory,
    )?;
    let mut vm = hypervisor::new(config, spec)?;
    let t0 = Instant::now();
    vm.launch()?;
    record.vmm = vm.pid().and_then(ProcessIdentity::of);
    write_member(dir, &record)?;
    vm.restore()?;
    drop(template);
    vm.resume()?;
    let console = dir.join(CONSOLE_LOG);
    let boot = config.runtime.boot();
    let mut exit = vm.exit_watch();
    let endpoint = vm.agent_endpoint();
    let warmed = rt.block_on(async {
        let died = |why: Option<String>| FactoryError::Died(why.unwrap_or_default());
        let warm = async {
            let agent = AgentClient::connect(&endpoint, config.runtime.request()).await?;
            agent.wait_ready(boot).await?;
            agent
                .call_within(
                    runvm_protocol::Warmup {
                        spec: warmup_spec(),
                    },
                    boot,
                )
                .await?;
            // The claimant's session must be a new one: hang up and wait
            // until the agent has seen it.
            let before = console_end(&console);
            drop(agent);
            wait_session_end(&console, before, boot).await
        };
        tokio::select! {
            r = warm => r.map(|()| true),
            _ = term.recv() => Ok(false),
            r = exit.wait_for(Option::is_some) => Err(died(r.ok().and_then(|s| s.clone()))),
        }
    })?;
    // A template made (or removed) while this one warmed up: this VM is of
    // the old one. Read without the template's lock, which a build or
    // destroy stopping this member may hold.
    let current = warmed
        .then(|| factory.read_meta().ok().flatten().map(|m| m.created))
        .flatten();
    if current != Some(made) {
        info!(log, "stopping the pool VM before it was ready"; "reason" => if warmed { "a new template" } else { "SIGTERM" });
        vm.stop(Duration::ZERO)?;
        return Ok(());
    }
    // Paused, an idle pool VM costs no CPU.
    vm.pause()?;
    vm.release();
    let sockets = SocketDir::open(dir).map_err(io_err(dir))?;
    let listener = UnixListener::bind(sockets.path(CLAIM_SOCKET)).map_err(io_err(dir))?;
    info!(log, "pool VM ready"; "dir" => %dir.display(), "ms" => t0.elapsed().as_millis() as u64);
    let claimant = rt.block_on(wait_claim(
        dir, &listener, &mut vm, made, &mut exit, &mut term, log,
    ))?;
    drop(listener);
    let _ = fs::remove_file(dir.join(CLAIM_SOCKET));
    let Some((claimant, stream)) = claimant else {
        vm.stop(Duration::ZERO)?;
        return Ok(());
    };
    record.claimed = true;
    write_member(dir, &record)?;
    // The slot is free for the next member once the VM is promised away.
    drop(slot_lock);
    answer(
        stream,
        &ClaimReply::Taken {
            vmm_pid: vm.pid().unwrap_or_default(),
        },
    );
    info!(log, "pool VM claimed"; "by" => claimant.pid());
    let mut gone = claimant.exit_watch();
    let claimant_died = rt.block_on(async {
        tokio::select! {
            _ = gone.wait_for(Option::is_some) => true,
            _ = exit.wait_for(Option::is_some) => false,
        }
    });
    if claimant_died {
        warn!(log, "the pool VM's claimant is gone: stopping the VM");
    } else {
        // The claimant stopped it: the directory (with the logs the shim
        // copies) stays until the shim is gone too.
        rt.block_on(async {
            let _ = gone.wait_for(Option::is_some).await;
        });
    }
    vm.stop(Duration::ZERO)?;
    Ok(())
}

fn answer(mut stream: UnixStream, reply: &ClaimReply) {
    let mut line = serde_json::to_vec(reply).expect("a reply serializes");
    line.push(b'\n');
    let _ = stream.write_all(&line);
}

/// Wait for a claim that this VM answers, SIGTERM, or the VM's end. The
/// claimant (watched) and its connection, or `None` to go.
async fn wait_claim(
    dir: &Path,
    listener: &UnixListener,
    vm: &mut Box<dyn Hypervisor>,
    made: DateTime<Utc>,
    exit: &mut crate::child::ExitWatch,
    term: &mut tokio::signal::unix::Signal,
    log: &Logger,
) -> Result<Option<(Supervised, UnixStream)>, FactoryError> {
    listener
        .set_nonblocking(true)
        .map_err(io_err(Path::new(CLAIM_SOCKET)))?;
    let listener = tokio::net::UnixListener::from_std(
        listener
            .try_clone()
            .map_err(io_err(Path::new(CLAIM_SOCKET)))?,
    )
    .map_err(io_err(Path::new(CLAIM_SOCKET)))?;
    // A member whose directory was removed by hand is found by nothing:
    // it goes too.
    let mut check = tokio::time::interval(DIR_CHECK);
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(_) => continue,
            },
            _ = term.recv() => {
                info!(log, "stopping the pool VM (SIGTERM)");
                return Ok(None);
            }
            _ = check.tick() => {
                if !dir.join(MEMBER_FILE).exists() {
                    warn!(log, "the pool VM's directory is gone: stopping the VM"; "dir" => %dir.display());
                    return Ok(None);
                }
                continue;
            }
            r = exit.wait_for(Option::is_some) => {
                let why = r.ok().and_then(|s| s.clone()).unwrap_or_default();
                return Err(FactoryError::Died(why));
            }
        };
        let stream = stream.into_std().map_err(io_err(Path::new(CLAIM_SOCKET)))?;
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_read_timeout(Some(CLAIM_TIMEOUT));
        let mut line = String::new();
        let claim: Claim = match BufReader::new(&stream)
            .read_line(&mut line)
            .ok()
            .and_then(|_| serde_json::from_str(&line).ok())
        {
            Some(c) => c,
            None => continue,
        };
        if claim.template != made {
            answer(stream, &ClaimReply::Stale);
            // A claimant that read the template before it was rebuilt is
            // the one behind: this VM waits for the next.
            if claim.template > made {
                info!(log, "claimed for a newer template: going");
                return Ok(None);
            }
            continue;
        }
        let vmm = vm.pid().and_then(ProcessIdentity::of);
        if exit.borrow().is_some() || !vmm.is_some_and(|v| v.is_alive()) {
            return Err(FactoryError::Died("exited".into()));
        }
        match Supervised::adopt(claim.pid) {
            Ok(watched) => return Ok(Some((watched, stream))),
            // The claimant is already gone: wait for the next.
            Err(_) => continue,
        }
    }
}
