//! The runs (one bundle each, run under both runtimes) and the rows of the
//! table (one spec feature each, observed in one run's output).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde_json::{json, Value};

use crate::fixture::Fixture;
use crate::observe::Observe;
use crate::runner::Mode;

/// What the two runtimes are expected to show.
#[derive(Clone, Copy)]
pub enum Expect {
    Match,
    /// Cannot match with the container in a VM: why.
    Vm(&'static str),
    /// Should match; runvm falls short: how.
    Bug(&'static str),
    /// runc 1.1 departs from the runtime spec and runvm follows it: how.
    Runc(&'static str),
}

type Edit = fn(&mut Value, &Fixture);

pub struct Run {
    pub name: &'static str,
    pub mode: Mode,
    /// Shell commands, each printed after a `@@label` line; none means the
    /// edit sets the process's args itself.
    pub probes: &'static [(&'static str, &'static str)],
    pub edit: Edit,
    /// Files the case needs in the rootfs.
    pub rootfs: fn(&Path),
}

pub struct Row {
    pub feature: &'static str,
    pub checks: &'static str,
    pub run: &'static str,
    pub observe: Observe,
    pub expect: Expect,
}

fn none(_: &mut Value, _: &Fixture) {}
fn no_files(_: &Path) {}

fn run(name: &'static str, probes: &'static [(&'static str, &'static str)], edit: Edit) -> Run {
    Run {
        name,
        mode: Mode::Foreground,
        probes,
        edit,
        rootfs: no_files,
    }
}

pub fn row(
    feature: &'static str,
    checks: &'static str,
    run: &'static str,
    observe: Observe,
    expect: Expect,
) -> Row {
    Row {
        feature,
        checks,
        run,
        observe,
        expect,
    }
}

fn args(c: &mut Value, a: &[&str]) {
    c["process"]["args"] = json!(a);
}

fn add_mount(c: &mut Value, m: Value) {
    c["mounts"].as_array_mut().unwrap().push(m);
}

fn bind(f: &Fixture, dest: &str, options: &[&str]) -> Value {
    json!({"destination": dest, "type": "bind", "source": f.bind_source(), "options": options})
}

fn drop_namespace(c: &mut Value, kind: &str) {
    c["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .retain(|ns| ns["type"] != kind);
}

fn caps(c: &mut Value, set: &str, names: &[&str]) {
    c["process"]["capabilities"][set] = json!(names);
}

const STATUS: (&str, &str) = (
    "status",
    "grep -E '^(Cap|NoNewPrivs|Seccomp|Groups)' /proc/self/status",
);
const MOUNTINFO: (&str, &str) = ("mountinfo", "cat /proc/self/mountinfo");
const LIMITS: (&str, &str) = ("limits", "cat /proc/self/limits");

/// A broad allow-list for a default-deny filter: what busybox and the
/// runtimes' last steps before exec use, less mkdir.
const ALLOWED: &[&str] = &[
    "access",
    "arch_prctl",
    "brk",
    "capget",
    "capset",
    "chdir",
    "clock_gettime",
    "clock_nanosleep",
    "clone",
    "clone3",
    "close",
    "close_range",
    "dup",
    "dup2",
    "dup3",
    "epoll_create1",
    "epoll_ctl",
    "epoll_pwait",
    "epoll_wait",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fchdir",
    "fcntl",
    "fork",
    "fstat",
    "fstatfs",
    "futex",
    "getcwd",
    "getdents64",
    "getegid",
    "geteuid",
    "getgid",
    "getgroups",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getrandom",
    "getresgid",
    "getresuid",
    "getrlimit",
    "gettid",
    "gettimeofday",
    "getuid",
    "ioctl",
    "lseek",
    "lstat",
    "madvise",
    "mmap",
    "mprotect",
    "mremap",
    "munmap",
    "nanosleep",
    "newfstatat",
    "open",
    "openat",
    "pipe",
    "pipe2",
    "poll",
    "ppoll",
    "prctl",
    "pread64",
    "prlimit64",
    "pselect6",
    "read",
    "readlink",
    "readlinkat",
    "readv",
    "rseq",
    "rt_sigaction",
    "rt_sigprocmask",
    "rt_sigreturn",
    "sched_getaffinity",
    "sched_yield",
    "select",
    "set_robust_list",
    "set_tid_address",
    "setgid",
    "setgroups",
    "setpgid",
    "setresgid",
    "setresuid",
    "setsid",
    "setuid",
    "sigaltstack",
    "stat",
    "statfs",
    "statx",
    "sysinfo",
    "tgkill",
    "tkill",
    "umask",
    "uname",
    "vfork",
    "wait4",
    "waitid",
    "write",
    "writev",
];

/// What youki's init calls after it has loaded the filter, which runc's
/// does not (it loads the filter just before exec): it reports ready, then
/// accepts and reads the start message. Found by narrowing a broad list.
pub const YOUKI_AFTER_SECCOMP: &[&str] = &["sendmsg", "accept4", "recvfrom"];

/// A filter that fails every syscall but `allowed` with ENOSYS.
fn default_deny(c: &mut Value, allowed: &[&str]) {
    c["linux"]["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 38,
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{"names": allowed, "action": "SCMP_ACT_ALLOW"}]
    });
}

pub fn runs() -> Vec<Run> {
    let mut runs = vec![
        run(
            "default",
            &[
                ("id", "id"),
                ("umask", "umask"),
                ("pwd", "pwd"),
                ("hostname", "hostname"),
                ("domainname", "cat /proc/sys/kernel/domainname"),
                STATUS,
                LIMITS,
                MOUNTINFO,
                ("oom", "cat /proc/self/oom_score_adj"),
                ("env", "env | sort"),
                ("pid", "echo $$"),
                ("cgroup", "cat /proc/self/cgroup"),
                ("ipc", "cat /proc/sysvipc/shm | wc -l"),
                (
                    "chardevs",
                    "busybox stat -c '%n %F %a %t:%T' /dev/null /dev/zero /dev/full /dev/random \
                     /dev/urandom /dev/tty",
                ),
                (
                    "links",
                    "for l in /dev/ptmx /dev/fd /dev/stdin /dev/stdout /dev/stderr /dev/core; do \
                     echo \"$l -> $(busybox readlink $l)\"; done",
                ),
                (
                    "masked",
                    "for p in /proc/kcore /proc/keys /proc/timer_list; do \
                     echo \"$p $(head -c 16 $p | wc -c)\"; done; ls /sys/firmware | wc -l",
                ),
                ("readonly", "echo x > /proc/sys/kernel/domainname"),
                ("rootro", "touch /probe"),
            ],
            none,
        ),
        run(
            "process",
            &[
                ("id", "id"),
                ("umask", "umask"),
                ("pwd", "pwd"),
                ("env", "env | sort"),
                STATUS,
                ("oom", "cat /proc/self/oom_score_adj"),
                ("exit", "exit 7"),
            ],
            |c, _| {
                c["process"]["user"] =
                    json!({"uid": 1000, "gid": 1000, "additionalGids": [10, 20], "umask": 63});
                c["process"]["cwd"] = json!("/bin");
                c["process"]["env"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!("CONFORMANCE=yes"));
                c["process"]["noNewPrivileges"] = json!(false);
                c["process"]["oomScoreAdj"] = json!(500);
            },
        ),
        run("caps", &[STATUS], |c, _| {
            caps(
                c,
                "bounding",
                &["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT"],
            );
            caps(c, "permitted", &["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE"]);
            caps(c, "inheritable", &["CAP_KILL", "CAP_NET_BIND_SERVICE"]);
            caps(c, "effective", &["CAP_CHOWN", "CAP_KILL"]);
            caps(c, "ambient", &["CAP_NET_BIND_SERVICE"]);
        }),
        run("rlimits", &[LIMITS], |c, _| {
            c["process"]["rlimits"] = json!([
                {"type": "RLIMIT_NOFILE", "soft": 256, "hard": 512},
                {"type": "RLIMIT_NPROC", "soft": 500, "hard": 1000},
                {"type": "RLIMIT_CORE", "soft": 0, "hard": 0}
            ]);
        }),
        run("rlimit-soft-above-hard", &[LIMITS], |c, _| {
            c["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "soft": 2048, "hard": 1024}]);
        }),
        run("rw-root", &[("rootrw", "touch /probe && echo written")], |c, _| {
            c["root"]["readonly"] = json!(false);
        }),
        Run {
            rootfs: |r| {
                fs::create_dir_all(r.join("opt/masked")).unwrap();
                fs::write(r.join("opt/masked/secret"), "secret\n").unwrap();
            },
            ..run(
                "paths",
                &[
                    MOUNTINFO,
                    ("maskedfile", "cat /proc/version | wc -c"),
                    ("maskeddir", "ls /opt/masked | wc -l"),
                    ("rodir", "touch /dev/shm/probe"),
                    ("domainname", "cat /proc/sys/kernel/domainname"),
                ],
                |c, _| {
                    let linux = &mut c["linux"];
                    linux["maskedPaths"] = json!(["/proc/version", "/opt/masked"]);
                    linux["readonlyPaths"] = json!(["/dev/shm"]);
                    c["domainname"] = json!("example.org");
                },
            )
        },
        run(
            "sysctl",
            &[(
                "sysctl",
                "for k in kernel/shmmax kernel/msgmax fs/mqueue/msg_max net/ipv4/ip_forward \
                 kernel/domainname; do echo \"$k $(cat /proc/sys/$k)\"; done",
            )],
            |c, _| {
                c["linux"]["sysctl"] = json!({
                    "kernel.shmmax": "4294967296", "kernel.msgmax": "16384",
                    "fs.mqueue.msg_max": "20", "net.ipv4.ip_forward": "1",
                    "kernel.domainname": "sysctl.example"
                });
            },
        ),
        run("sysctl-net-without-netns", &[("sysctl", "true")], |c, _| {
            drop_namespace(c, "network");
            c["linux"]["sysctl"] = json!({"net.ipv4.ip_forward": "1"});
        }),
        run(
            "devices",
            &[(
                "device",
                "busybox stat -c '%n %F %a %t:%T %u:%g' /dev/xnull && echo hi > /dev/xnull && \
                 echo written",
            )],
            |c, _| {
                c["linux"]["devices"] = json!([{"path": "/dev/xnull", "type": "c", "major": 1,
                    "minor": 3, "fileMode": 438, "uid": 0, "gid": 0}]);
            },
        ),
        run(
            "mounts",
            &[
                MOUNTINFO,
                ("tmpfsmode", "busybox stat -c '%a' /data"),
                ("ro", "cat /mnt/ro/file; touch /mnt/ro/probe"),
                ("bind", "ls /mnt/bind/sub | wc -l"),
                ("rbind", "cat /mnt/rbind/sub/inner"),
            ],
            |c, f| {
                add_mount(
                    c,
                    json!({"destination": "/data", "type": "tmpfs", "source": "tmpfs",
                        "options": ["size=1m", "mode=750"]}),
                );
                add_mount(c, bind(f, "/mnt/ro", &["bind", "ro"]));
                add_mount(c, bind(f, "/mnt/bind", &["bind"]));
                add_mount(c, bind(f, "/mnt/rbind", &["rbind"]));
            },
        ),
        run("propagation", &[MOUNTINFO], |c, f| {
            add_mount(c, bind(f, "/mnt/etc-shared", &["bind", "shared"]));
            add_mount(c, bind(f, "/mnt/rshared", &["rbind", "rshared"]));
            add_mount(c, bind(f, "/mnt/slave", &["bind", "slave"]));
            add_mount(c, bind(f, "/mnt/rslave", &["rbind", "rslave"]));
            add_mount(c, bind(f, "/mnt/private", &["bind", "private"]));
            add_mount(c, bind(f, "/mnt/unbindable", &["bind", "unbindable"]));
        }),
        run("rootprop-shared", &[MOUNTINFO], |c, _| {
            c["linux"]["rootfsPropagation"] = json!("shared");
        }),
        run("rootprop-slave", &[MOUNTINFO], |c, _| {
            c["linux"]["rootfsPropagation"] = json!("slave");
        }),
        run("rootprop-private", &[MOUNTINFO], |c, _| {
            c["linux"]["rootfsPropagation"] = json!("private");
        }),
        run("no-pid-ns", &[("pid", "[ $$ = 1 ] && echo 1 || echo 'not 1'")], |c, _| {
            drop_namespace(c, "pid")
        }),
        run("uts-by-path", &[("hostname", "hostname")], |c, f| {
            c.as_object_mut().unwrap().remove("hostname");
            for ns in c["linux"]["namespaces"].as_array_mut().unwrap() {
                if ns["type"] == "uts" {
                    ns["path"] = json!(f.uts_path());
                }
            }
        }),
        run(
            "seccomp",
            &[
                STATUS,
                ("mkdir", "mkdir /dev/shm/probe"),
                ("kill0", "kill -0 1; echo rc=$?"),
                ("killcont", "kill -CONT 1; echo rc=$?"),
            ],
            |c, _| {
                c["linux"]["seccomp"] = json!({
                    "defaultAction": "SCMP_ACT_ALLOW",
                    "architectures": ["SCMP_ARCH_X86_64"],
                    "syscalls": [
                        {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
                        {"names": ["kill"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
                         "args": [{"index": 1, "value": 0, "op": "SCMP_CMP_EQ"}]}
                    ]
                });
            },
        ),
        run(
            "seccomp-default",
            &[("mkdir", "mkdir /dev/shm/probe")],
            |c, _| default_deny(c, ALLOWED),
        ),
        run(
            "seccomp-default-youki",
            &[("mkdir", "mkdir /dev/shm/probe")],
            |c, _| default_deny(c, &[ALLOWED, YOUKI_AFTER_SECCOMP].concat()),
        ),
        run(
            "resources",
            &[
                (
                    "memory",
                    "cat /sys/fs/cgroup/memory.max 2>/dev/null || \
                     cat /sys/fs/cgroup/memory/memory.limit_in_bytes",
                ),
                (
                    "pids",
                    "cat /sys/fs/cgroup/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids/pids.max",
                ),
                (
                    "cpu",
                    "cat /sys/fs/cgroup/cpu.max 2>/dev/null || echo \"$(cat \
                     /sys/fs/cgroup/cpu/cpu.cfs_quota_us) $(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us)\"",
                ),
            ],
            |c, _| {
                c["linux"]["resources"]["memory"] = json!({"limit": 67108864});
                c["linux"]["resources"]["pids"] = json!({"limit": 64});
                c["linux"]["resources"]["cpu"] = json!({"quota": 50000, "period": 100000});
            },
        ),
        run(
            "hooks",
            &[("hooks", "cat /hooks.log")],
            |c, _| {
                // Each hook notes its kind and the status in the state it
                // reads on stdin. The host's hooks write to the bundle's
                // rootfs, found from that state; startContainer runs in the
                // container, where the rootfs is /.
                let on_host = |kind: &str| {
                    let script = format!(
                        r#"read -r s; b=${{s#*\"bundle\":\"}}; b=${{b%%\"*}}; st=${{s#*\"status\":\"}}; st=${{st%%\"*}}; echo "{kind} $st" >> "$b/rootfs/hooks.log""#
                    );
                    json!({"path": "/bin/busybox", "args": ["sh", "-c", script]})
                };
                let in_container = r#"read -r s; st=${s#*\"status\":\"}; st=${st%%\"*}; echo "startContainer $st" >> /hooks.log"#;
                c["root"]["readonly"] = json!(false);
                c["hooks"] = json!({
                    "prestart": [on_host("prestart")],
                    "createRuntime": [on_host("createRuntime")],
                    "startContainer": [{"path": "/bin/busybox", "args": ["sh", "-c", in_container]}]
                });
            },
        ),
        run("hook-fails", &[], |c, _| {
            args(c, &["true"]);
            c["hooks"] = json!({"prestart": [
                {"path": "/bin/busybox", "args": ["sh", "-c", "echo out; echo err >&2; exit 2"]}
            ]});
        }),
        run("personality", &[("uname", "uname -m")], |c, _| {
            c["linux"]["personality"] = json!({"domain": "LINUX32"});
        }),
        run("missing-cwd", &[("pwd", "pwd")], |c, _| {
            c["process"]["cwd"] = json!("/no/such/dir");
        }),
        // Create-time failures: the process is never run.
        run("exec-not-found", &[], |c, _| args(c, &["/bin/nope"])),
        run("exec-not-in-path", &[], |c, _| args(c, &["nope"])),
        Run {
            rootfs: |r| {
                let f = r.join("bin/noexec");
                fs::write(&f, "#!/bin/sh\n").unwrap();
                fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
            },
            ..run("exec-permission", &[], |c, _| args(c, &["/bin/noexec"]))
        },
        run("cwd-not-a-dir", &[], |c, _| {
            args(c, &["true"]);
            c["process"]["cwd"] = json!("/bin/busybox");
        }),
        run("empty-args", &[], |c, _| args(c, &[])),
        run("bad-uid", &[], |c, _| {
            args(c, &["true"]);
            c["process"]["user"]["uid"] = json!(4294967295u32);
        }),
        run("relative-cwd", &[], |c, _| {
            args(c, &["true"]);
            c["process"]["cwd"] = json!("bin");
        }),
    ];
    runs.push(Run {
        mode: Mode::Created,
        ..run("state", &[], |c, _| {
            args(c, &["sleep", "1000"]);
            c["annotations"] = json!({"org.example.key": "value"});
        })
    });
    runs
}
