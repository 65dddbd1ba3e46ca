//! runvm's own help text for every verb and flag. liboci-cli's doc strings
//! point at runc's man pages and pull requests and describe runc's
//! internals; these replace them, in one place, keeping runc's flag names and
//! meanings. `runvm --help`, the man pages and the completions all come from
//! the command tree this produces.

use clap::Command;

/// A verb's one-line summary, its longer description (the man page's), and
/// the help of each of its arguments by clap id.
struct Verb {
    name: &'static str,
    about: &'static str,
    long: &'static str,
    args: &'static [(&'static str, &'static str)],
}

const ID: (&str, &str) = ("container_id", "The container's id");
const BUNDLE: (&str, &str) = (
    "bundle",
    "The bundle directory: config.json and the root filesystem it names",
);
const CONSOLE: (&str, &str) = (
    "console_socket",
    "A unix socket that receives the master end of the container's terminal (process.terminal = true)",
);
const PID_FILE: (&str, &str) = (
    "pid_file",
    "Write the pid of the container's host stand-in here (the process the caller reaps)",
);
const NO_PIVOT: (&str, &str) = (
    "no_pivot",
    "Accepted for runc compatibility; the guest always pivots into the rootfs",
);
const TCP: (&str, &str) = (
    "tcp_established",
    "Accepted for runc compatibility; open TCP connections are saved with the VM",
);
const UNIX_SK: (&str, &str) = (
    "ext_unix_sk",
    "Accepted for runc compatibility; the guest's unix sockets are saved with the VM",
);
const SHELL_JOB: (&str, &str) = (
    "shell_job",
    "Accepted for runc compatibility; the terminal is the VM's, saved with it",
);
const LOCKS: (&str, &str) = (
    "file_locks",
    "Accepted for runc compatibility; file locks are saved with the VM",
);
const CGROUPS_MODE: (&str, &str) = (
    "manage_cgroups_mode",
    "Accepted for runc compatibility; the guest's cgroups are saved with the VM",
);
const NO_KEYRING: (&str, &str) = (
    "no_new_keyring",
    "Accepted for runc compatibility; the container's keyring is in the guest kernel",
);
const PRESERVE_FDS: (&str, &str) = (
    "preserve_fds",
    "Accepted for runc compatibility and ignored with a warning: host file descriptors cannot reach the guest",
);

/// The global flags (runc's).
const GLOBAL: &[(&str, &str)] = &[
    (
        "log",
        "Write runvm's log here (the shim's too) instead of stderr",
    ),
    (
        "debug",
        "Log at debug level: each step of the VM's boot, the agent's requests",
    ),
    ("log_format", "The log's format: text (the default) or json"),
    (
        "root",
        "The directory of runvm's container state (default /run/runvm)",
    ),
    (
        "systemd_cgroup",
        "Read linux.cgroupsPath as slice:prefix:name, placed as systemd places the unit (runvm writes the cgroup itself; systemd need not run)",
    ),
    ("version", "Print runvm's version, commit and OCI spec version"),
    (
        "config",
        "Read runvm's configuration from FILE and FILE's config.d/*.toml (default: $RUNVM_CONFIG, else /etc/runvm/config.toml)",
    ),
];

const VERBS: &[Verb] = &[
    Verb {
        name: "create",
        about: "Create a container in a new VM; it waits there for start",
        long: "Create a container in a new VM: boot a VM (or clone it from a template), serve the bundle's root filesystem to it over virtio-fs, and have the guest agent create the container's process, which waits for `runvm start`. The pid in --pid-file is the container's host stand-in (the shim): it relays stdio, forwards signals into the guest and exits with the container's exit code.",
        args: &[ID, BUNDLE, CONSOLE, PID_FILE, NO_PIVOT, NO_KEYRING, PRESERVE_FDS],
    },
    Verb {
        name: "start",
        about: "Start a created container: run its process in the VM",
        long: "Start a created container: its process runs its program in the guest. Returns once the program is running. A container that is still being created is waited for.",
        args: &[ID],
    },
    Verb {
        name: "state",
        about: "Print a container's OCI state as JSON",
        long: "Print a container's OCI state as JSON. Its pid is the host stand-in's, which lives in the container's uts, ipc, cgroup and network namespaces on the host.",
        args: &[ID],
    },
    Verb {
        name: "kill",
        about: "Send a signal to the container's process in the VM",
        long: "Send a signal to the container's process in the guest (default TERM; a name, with or without SIG, or a number). Killing a container that is still being created ends its create.",
        args: &[
            ID,
            ("signal", "The signal: a name (TERM, SIGKILL) or a number"),
            ("all", "Send it to every process of the container in the guest"),
        ],
    },
    Verb {
        name: "delete",
        about: "Delete a stopped container: its VM, shim, virtiofsd and state",
        long: "Delete a container: stop its VM, its shim and its virtiofsd, and remove its state. A running container is refused unless --force.",
        args: &[
            ID,
            (
                "force",
                "Delete it even if it is running or being created (its process is killed)",
            ),
        ],
    },
    Verb {
        name: "events",
        about: "Print the container's resource usage from its cgroup in the guest",
        long: "Print the container's resource statistics as runc's JSON, read from its cgroup in the guest: once with --stats, else every --interval.",
        args: &[
            ID,
            ("interval", "How often to print (5, 5s, 2m, 1h)"),
            ("stats", "Print the statistics once and exit"),
        ],
    },
    Verb {
        name: "exec",
        about: "Run another process in a running container, in its VM",
        long: "Run another process in a running container, in its VM: from --process (an OCI process.json) or the command line. Exits with the process's exit code; with --detach its host stand-in's pid goes in --pid-file.",
        args: &[
            ID,
            ("command", "The program and its arguments"),
            CONSOLE,
            ("cwd", "The process's working directory in the container"),
            ("env", "Set an environment variable (KEY=VALUE); repeatable"),
            ("tty", "Give the process a terminal"),
            ("user", "The uid[:gid] to run as"),
            ("additional_gids", "Add a supplementary group id; repeatable"),
            ("process", "Read the process from this OCI process.json"),
            ("detach", "Return at once, leaving the process running"),
            (
                "pid_file",
                "Write the pid of the process's host stand-in here",
            ),
            (
                "process_label",
                "Accepted for runc compatibility; the guest has no SELinux",
            ),
            (
                "apparmor",
                "Accepted for runc compatibility; the guest has no AppArmor",
            ),
            ("no_new_privs", "Set no_new_privs for the process"),
            ("cap", "Add a capability to the process; repeatable"),
            PRESERVE_FDS,
            ("ignore_paused", "Allow exec in a paused container"),
            (
                "cgroup",
                "Accepted for runc compatibility; the process joins the container's cgroup",
            ),
        ],
    },
    Verb {
        name: "features",
        about: "Print what this runtime supports, as runc's features JSON",
        long: "Print the OCI features JSON: the spec fields, namespaces, capabilities and mount options runvm honours (containerd asks for it).",
        args: &[],
    },
    Verb {
        name: "list",
        about: "List the containers under --root",
        long: "List the containers under --root with their host pid, status, bundle, creation time and owner.",
        args: &[
            ("format", "table (the default) or json"),
            ("quiet", "Print the ids only"),
        ],
    },
    Verb {
        name: "pause",
        about: "Freeze the container's processes in the VM",
        long: "Freeze the container's processes with its cgroup's freezer in the guest. The VM keeps running.",
        args: &[ID],
    },
    Verb {
        name: "ps",
        about: "List the container's processes, as the guest sees them",
        long: "List the container's processes as the guest sees them (ps -ef's columns). --format json prints the host pids that stand for the container (its shim and exec stand-ins), which is what callers that signal or reap them need.",
        args: &[ID, ("format", "table (the default) or json")],
    },
    Verb {
        name: "resume",
        about: "Thaw a paused container's processes",
        long: "Thaw the processes that pause froze.",
        args: &[ID],
    },
    Verb {
        name: "run",
        about: "Create and start a container; wait for it unless --detach",
        long: "Create a container in a new VM and start it. In the foreground, stdio and signals are relayed, runvm exits with the container's exit code and deletes it (unless --keep).",
        args: &[
            ID,
            BUNDLE,
            CONSOLE,
            PID_FILE,
            (
                "no_subreaper",
                "Accepted for runc compatibility; the container's processes are reaped in the guest",
            ),
            NO_PIVOT,
            NO_KEYRING,
            PRESERVE_FDS,
            ("keep", "Keep the container's state after it exits"),
            ("detach", "Return once it is started, leaving it running"),
        ],
    },
    Verb {
        name: "update",
        about: "Change a container's resource limits in its cgroup in the guest",
        long: "Change a running container's resource limits, applied to its cgroup in the guest: from --resources (an OCI linux.resources JSON) or the flags.",
        args: &[
            ID,
            (
                "resources",
                "Read the limits from this OCI linux.resources JSON file (- for stdin); the other flags are then ignored",
            ),
            ("blkio_weight", "Block I/O weight"),
            ("cpu_period", "CPU CFS period, in microseconds"),
            ("cpu_quota", "CPU CFS quota per period, in microseconds"),
            ("cpu_rt_period", "CPU realtime period, in microseconds"),
            ("cpu_rt_runtime", "CPU realtime runtime per period, in microseconds"),
            ("cpu_share", "CPU shares (a weight relative to other cgroups)"),
            ("cpuset_cpus", "The guest CPUs it may use (0-3,7)"),
            ("cpuset_mems", "The guest memory nodes it may use"),
            ("memory", "Memory limit, in bytes"),
            ("memory_reservation", "Memory soft limit, in bytes"),
            ("memory_swap", "Memory plus swap limit, in bytes (-1: unlimited)"),
            ("pids_limit", "Maximum number of processes"),
            ("l3_cache_schema", "Intel RDT L3 schema: refused, the guest has no RDT"),
            ("mem_bw_schema", "Intel RDT memory bandwidth schema: refused, the guest has no RDT"),
        ],
    },
    Verb {
        name: "spec",
        about: "Write a default config.json into the bundle",
        long: "Write a default config.json, as runc's: sh on a terminal, the root filesystem in ./rootfs, the usual namespaces and mounts. Into --bundle, or the current directory.",
        args: &[
            ("bundle", "The bundle directory to write it to"),
            (
                "rootless",
                "Write the configuration of a rootless container (a user namespace)",
            ),
        ],
    },
    Verb {
        name: "factory",
        about: "Manage the VM template containers are cloned from",
        long: "Manage the VM template: a booted and saved VM that creates clone instead of booting one, and the warm pool of clones kept ready for the next creates.",
        args: &[],
    },
    Verb {
        name: "check",
        about: "Check that this host can run containers: QEMU, virtiofsd, guest, accelerator",
        long: "Check what runvm would use on this host: the configuration, QEMU, virtiofsd, the guest kernel and initramfs, the accelerator (KVM, or TCG and why) and the template. One line per item, with what to install for any that is missing; exits non-zero if a container cannot run.",
        args: &[("format", "text (the default) or json")],
    },
    Verb {
        name: "env",
        about: "Print the effective configuration and where each value came from",
        long: "Print the configuration runvm would use, after the main file and its drop-ins (config.d/*.toml, in lexical order), as TOML that reads back as the same configuration, each value with the file it came from or `default`; then, as comments, what it resolves to on this host (runvm check's lines: the binaries and guest files found, the accelerator).",
        args: &[("format", "toml (the default) or json")],
    },
    Verb {
        name: "completion",
        about: "Print the shell completion script for bash, zsh or fish",
        long: "Print the completion script for a shell. The package installs them; by hand: runvm completion bash > /etc/bash_completion.d/runvm.",
        args: &[("shell", "bash, zsh or fish")],
    },
    Verb {
        name: "checkpoint",
        about: "Save a running container, its whole VM, into an image directory",
        long: "Pause the container's VM and save it whole into --image-path: every process, socket, file in memory and the guest kernel's state, with no CRIU. Without --leave-running the container then stops (exit code 137) and can be deleted. The image holds the container's memory: it is made 0700/0600. See docs/checkpoint.md.",
        args: &[
            ID,
            ("image_path", "The directory the image goes in (made if missing; it must be empty)"),
            ("work_path", "Accepted for runc compatibility; a VM checkpoint has no work files"),
            ("leave_running", "Let the container run on after the checkpoint"),
            TCP,
            UNIX_SK,
            SHELL_JOB,
            LOCKS,
            ("link_remap", "Accepted for runc compatibility; unlinked open files are saved with the VM"),
            CGROUPS_MODE,
        ],
    },
    Verb {
        name: "restore",
        about: "Bring a container back from a checkpoint image",
        long: "Start a VM from the image that checkpoint saved, over the bundle's rootfs (its files must be those the container had), and let the container run on where it was, under the id given. In the foreground the exit code is the container's; with --detach it runs on its own, as after run --detach. Restoring one image twice gives two independent containers. An image from another runvm, QEMU, guest kernel or initramfs, or a damaged one, is refused. See docs/checkpoint.md.",
        args: &[
            ID,
            BUNDLE,
            CONSOLE,
            PID_FILE,
            NO_PIVOT,
            ("image_path", "The checkpoint's image directory"),
            ("work_path", "Accepted for runc compatibility; a VM restore has no work files"),
            ("detach", "Return once the container runs, leaving it in the background"),
            TCP,
            UNIX_SK,
            SHELL_JOB,
            LOCKS,
            CGROUPS_MODE,
            ("no_subreaper", "Accepted for runc compatibility; the stand-in reaps nothing"),
            ("auto_dedup", "Accepted for runc compatibility; the image is read once"),
            ("lazy_pages", "Not supported: the memory is loaded whole"),
            ("empty_ns", "Not supported: the namespaces are the guest's, restored with it"),
        ],
    },
];

/// The factory's actions.
const FACTORY: &[(&str, &str, &str)] = &[
    (
        "init",
        "Boot a template VM and save it (replaces an existing one)",
        "Boot a VM, wait for its agent, and save it as the template; creates then clone it. Replaces an existing template.",
    ),
    (
        "status",
        "Show the template and whether it matches the configuration",
        "Print the template's metadata as JSON and whether it matches the current QEMU, kernel, initramfs and runvm.",
    ),
    (
        "destroy",
        "Remove the template and stop the warm pool's idle VMs",
        "Remove the template and stop the warm pool's idle VMs. Running containers are not touched.",
    ),
];

/// Set the help of `args`. clap's `mut_arg` moves the argument it changes
/// to the end, which would reorder positionals (`exec ID COMMAND...`), so
/// every argument is passed through in its order.
fn with_args(mut cmd: Command, args: &[(&'static str, &'static str)]) -> Command {
    let ids: Vec<String> = cmd
        .get_arguments()
        .map(|a| a.get_id().to_string())
        .collect();
    for (id, _) in args {
        assert!(
            ids.iter().any(|i| i == id),
            "{}: no argument {id}",
            cmd.get_name()
        );
    }
    for id in ids {
        let help = args.iter().find(|(i, _)| *i == id).map(|(_, h)| *h);
        cmd = cmd.mut_arg(&id, |a| match help {
            Some(h) => a.help(h),
            None => a,
        });
    }
    cmd
}

/// The command tree with runvm's text.
pub fn apply(mut cmd: Command) -> Command {
    cmd = with_args(cmd, GLOBAL).long_about(
        "runvm runs OCI containers as runc does, with runc's verbs and flags, but each container in a lightweight VM of its own with its own guest kernel, so a kernel exploit in a container does not reach the host.",
    );
    for v in VERBS {
        cmd = cmd.mut_subcommand(v.name, |c| {
            with_args(c.about(v.about).long_about(v.long), v.args)
        });
    }
    cmd.mut_subcommand("factory", |mut f| {
        for (name, about, long) in FACTORY {
            f = f.mut_subcommand(*name, |c| c.about(*about).long_about(*long));
        }
        f
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every verb a user sees, its subcommands included, with its path.
    fn visible(cmd: &Command, path: String, out: &mut Vec<(String, Command)>) {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            if sub.get_name() == "help" {
                continue;
            }
            let p = format!("{path} {}", sub.get_name());
            out.push((p.clone(), sub.clone()));
            visible(sub, p, out);
        }
    }

    #[test]
    fn every_visible_verb_and_flag_has_runvms_text() {
        let cmd = crate::command();
        let mut verbs = vec![("runvm".to_string(), cmd.clone())];
        visible(&cmd, "runvm".into(), &mut verbs);
        let ours: Vec<&str> = VERBS
            .iter()
            .flat_map(|v| v.args.iter().chain(GLOBAL).map(|(_, h)| *h))
            .collect();
        for (path, c) in &verbs {
            assert!(c.get_about().is_some(), "{path} has no summary");
            for arg in c.get_arguments().filter(|a| !a.is_hide_set()) {
                let id = arg.get_id().as_str();
                if id == "help" {
                    continue;
                }
                let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
                assert!(
                    ours.contains(&help.as_str()),
                    "{path} --{id}: help {help:?} is not runvm's"
                );
            }
        }
    }

    #[test]
    fn the_help_has_no_upstream_links_or_runc_history() {
        let cmd = crate::command();
        let mut verbs = vec![("runvm".to_string(), cmd.clone())];
        visible(&cmd, "runvm".into(), &mut verbs);
        for (path, mut c) in verbs {
            let text = c.render_long_help().to_string();
            for bad in [
                "github.com",
                "Reference:",
                "introduced in runc",
                "rather then",
                "rool",
            ] {
                assert!(!text.contains(bad), "{path}'s help has {bad:?}:\n{text}");
            }
        }
    }
}
