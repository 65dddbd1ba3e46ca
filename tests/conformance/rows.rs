//! The rows of the table: one spec feature each, what it looks at, and
//! what the two runtimes are expected to show.

use crate::cases::{row, Expect::*, Row};
use crate::observe::Observe::*;

const CGROUP_V1_V2: &str = "the host has cgroup v1, the guest cgroup v2 (one unified hierarchy)";
const SHARE: &str =
    "the rootfs is the bundle's directory shared over virtio-fs, mounted nodev in the guest";
const BIND_SHARE: &str =
    "a bind source reaches the guest through the virtio-fs share, not as the host's mount: its submounts are part of it, not mounts of their own";
const NODEV: &str = "the share that carries the rootfs and the bind sources is mounted nodev in the guest, so a device node in them cannot open the VM's devices (the agent's channel among them); a bind from it keeps nodev";

pub fn rows() -> Vec<Row> {
    let mut rows = process_rows();
    rows.extend(mount_rows());
    rows.extend(linux_rows());
    rows.extend(failure_rows());
    rows
}

fn process_rows() -> Vec<Row> {
    vec![
        row("process.user default", "`id` as root", "default", Probe("id"), Match),
        row("process.user uid/gid/additionalGids", "`id` as 1000:1000 with groups 10, 20", "process", Probe("id"), Match),
        row("process.user additionalGids", "Groups: in /proc/self/status", "process", Lines("status", "Groups:"), Match),
        row("process.user.umask", "`umask` with umask 0077", "process", Probe("umask"), Match),
        row("process.user.umask default", "`umask` with none set", "default", Probe("umask"), Match),
        row("process.cwd", "`pwd` with cwd /bin", "process", Probe("pwd"), Match),
        row("process.cwd default", "`pwd` with cwd /", "default", Probe("pwd"), Match),
        row("process.cwd missing", "`pwd` with a cwd not in the rootfs", "missing-cwd", Probe("pwd"), Match),
        row("process.env", "`env` with an extra variable", "process", Probe("env"), Match),
        row("process.env default", "`env` of the default spec (HOME added by the runtime)", "default", Probe("env"), Match),
        row("process exit code", "the exit code of `run` when the process exits 7", "process", Code, Match),
        row("capabilities default", "CapEff: with the default spec", "default", Lines("status", "CapEff:"), Match),
        row("capabilities.bounding", "CapBnd:", "caps", Lines("status", "CapBnd:"), Match),
        row("capabilities.permitted", "CapPrm:", "caps", Lines("status", "CapPrm:"), Match),
        row("capabilities.inheritable", "CapInh:", "caps", Lines("status", "CapInh:"), Match),
        row("capabilities.effective", "CapEff:", "caps", Lines("status", "CapEff:"), Match),
        row("capabilities.ambient", "CapAmb:", "caps", Lines("status", "CapAmb:"), Match),
        row("capabilities as non-root", "CapEff: and CapAmb: as uid 1000", "process", Lines("status", "Cap"), Match),
        row("rlimits RLIMIT_NOFILE", "Max open files in /proc/self/limits", "rlimits", Lines("limits", "Max open files"), Match),
        row("rlimits RLIMIT_NPROC", "Max processes", "rlimits", Lines("limits", "Max processes"), Match),
        row("rlimits RLIMIT_CORE", "Max core file size", "rlimits", Lines("limits", "Max core file size"), Match),
        row("rlimits default", "Max open files with the default spec's 1024", "default", Lines("limits", "Max open files"), Match),
        row("rlimits not in the spec", "Max pending signals (inherited from the runtime)", "default", Lines("limits", "Max pending signals"),
            Vm("inherited from the runtime: the guest kernel's default is sized by the VM's memory")),
        row("rlimits soft above hard", "the error of a soft limit above the hard one", "rlimit-soft-above-hard", Lines("limits", "Max open files"), Match),
        row("noNewPrivileges true", "NoNewPrivs:", "default", Lines("status", "NoNewPrivs:"), Match),
        row("noNewPrivileges false", "NoNewPrivs:", "process", Lines("status", "NoNewPrivs:"), Match),
        row("oomScoreAdj", "/proc/self/oom_score_adj with 500", "process", Probe("oom"), Match),
        row("oomScoreAdj unset", "/proc/self/oom_score_adj inherited", "default", Probe("oom"), Match),
        row("hostname", "`hostname`", "default", Probe("hostname"), Match),
        row("domainname", "/proc/sys/kernel/domainname with domainname example.org", "paths", Probe("domainname"),
            Runc("runc 1.1 ignores domainname; runvm sets it")),
        row("domainname unset", "/proc/sys/kernel/domainname", "default", Probe("domainname"), Match),
    ]
}

fn mount_rows() -> Vec<Row> {
    vec![
        row(
            "root",
            "the / line of mountinfo",
            "default",
            Mount("/"),
            Vm(SHARE),
        ),
        row(
            "root.readonly true",
            "`touch /probe`",
            "default",
            Probe("rootro"),
            Match,
        ),
        row(
            "root.readonly false",
            "`touch /probe`",
            "rw-root",
            Probe("rootrw"),
            Match,
        ),
        row(
            "mounts proc",
            "the /proc line of mountinfo",
            "default",
            Mount("/proc"),
            Match,
        ),
        row(
            "mounts tmpfs /dev",
            "the /dev line",
            "default",
            Mount("/dev"),
            Match,
        ),
        row(
            "mounts devpts",
            "the /dev/pts line",
            "default",
            Mount("/dev/pts"),
            Match,
        ),
        row(
            "mounts shm",
            "the /dev/shm line",
            "default",
            Mount("/dev/shm"),
            Match,
        ),
        row(
            "mounts mqueue",
            "the /dev/mqueue line",
            "default",
            Mount("/dev/mqueue"),
            Match,
        ),
        row(
            "mounts sysfs",
            "the /sys line",
            "default",
            Mount("/sys"),
            Vm("the container shares the VM's network namespace (the VM is its network), so its sysfs is the VM's superblock, which is rw; the mount is ro"),
        ),
        row(
            "mounts cgroup",
            "the lines at and under /sys/fs/cgroup",
            "default",
            MountsUnder("/sys/fs/cgroup"),
            Vm(CGROUP_V1_V2),
        ),
        row(
            "mounts tmpfs size/mode",
            "the /data line (size=1m, mode=750)",
            "mounts",
            Mount("/data"),
            Match,
        ),
        row(
            "mounts tmpfs mode",
            "the mode of /data",
            "mounts",
            Probe("tmpfsmode"),
            Match,
        ),
        row(
            "mounts bind ro",
            "reading and writing /mnt/ro",
            "mounts",
            Probe("ro"),
            Match,
        ),
        row(
            "mounts bind ro options",
            "the /mnt/ro options",
            "mounts",
            MountOpts("/mnt/ro"),
            Vm(NODEV),
        ),
        row(
            "mounts bind",
            "a submount of the source is not under a bind (entries in /mnt/bind/sub)",
            "mounts",
            Probe("bind"),
            Match,
        ),
        row(
            "mounts rbind",
            "a submount of the source is under an rbind",
            "mounts",
            Probe("rbind"),
            Match,
        ),
        row(
            "mounts rbind submount",
            "the /mnt/rbind/sub options",
            "mounts",
            MountOpts("/mnt/rbind/sub"),
            Vm(BIND_SHARE),
        ),
        row(
            "mounts propagation shared",
            "/mnt/etc-shared propagation",
            "propagation",
            Propagation("/mnt/etc-shared"),
            Match,
        ),
        row(
            "mounts propagation rshared",
            "/mnt/rshared",
            "propagation",
            Propagation("/mnt/rshared"),
            Match,
        ),
        row(
            "mounts propagation slave",
            "/mnt/slave",
            "propagation",
            Propagation("/mnt/slave"),
            Match,
        ),
        row(
            "mounts propagation rslave",
            "/mnt/rslave",
            "propagation",
            Propagation("/mnt/rslave"),
            Match,
        ),
        row(
            "mounts propagation private",
            "/mnt/private",
            "propagation",
            Propagation("/mnt/private"),
            Match,
        ),
        row(
            "mounts propagation unbindable",
            "/mnt/unbindable",
            "propagation",
            Propagation("/mnt/unbindable"),
            Match,
        ),
        row(
            "rootfsPropagation unset",
            "the propagation of /",
            "default",
            Propagation("/"),
            Match,
        ),
        row(
            "rootfsPropagation shared",
            "the propagation of /",
            "rootprop-shared",
            Propagation("/"),
            Runc("runc 1.1 leaves / private whatever rootfsPropagation says; runvm (youki) makes it shared as asked"),
        ),
        row(
            "rootfsPropagation slave",
            "the propagation of /",
            "rootprop-slave",
            Propagation("/"),
            Match,
        ),
        row(
            "rootfsPropagation private",
            "the propagation of /",
            "rootprop-private",
            Propagation("/"),
            Match,
        ),
        row(
            "maskedPaths default",
            "reading masked /proc files and /sys/firmware",
            "default",
            Probe("masked"),
            Match,
        ),
        row(
            "maskedPaths default mounts",
            "the /proc/keys line",
            "default",
            Mount("/proc/keys"),
            Match,
        ),
        row(
            "maskedPaths file",
            "reading /proc/version masked",
            "paths",
            Probe("maskedfile"),
            Match,
        ),
        row(
            "maskedPaths directory",
            "entries in /opt/masked masked",
            "paths",
            Probe("maskeddir"),
            Match,
        ),
        row(
            "readonlyPaths default",
            "writing /proc/sys/kernel/domainname",
            "default",
            Probe("readonly"),
            Match,
        ),
        row(
            "readonlyPaths default mounts",
            "the /proc/sys line",
            "default",
            Mount("/proc/sys"),
            Runc("runc 1.1 loses /proc's nosuid, nodev and noexec when it remounts /proc/sys read-only; runvm (youki) keeps them"),
        ),
        row(
            "readonlyPaths",
            "`touch` in /dev/shm made read-only",
            "paths",
            Probe("rodir"),
            Match,
        ),
        row(
            "readonlyPaths mount",
            "the /dev/shm options",
            "paths",
            MountOpts("/dev/shm"),
            Match,
        ),
        row(
            "namespaces mount",
            "the mount points of the container's table",
            "default",
            Mountpoints,
            Match,
        ),
    ]
}

fn linux_rows() -> Vec<Row> {
    vec![
        row("namespaces pid", "`echo $$` is 1", "default", Probe("pid"), Match),
        row("namespaces pid absent", "`echo $$` is not 1", "no-pid-ns", Probe("pid"), Match),
        row("namespaces uts", "`hostname` of the spec", "default", Probe("hostname"), Match),
        row("namespaces ipc", "lines of /proc/sysvipc/shm (header only)", "default", Probe("ipc"), Match),
        row("namespaces cgroup", "the paths of /proc/self/cgroup", "default", CgroupPaths, Match),
        row("namespaces uts by path", "`hostname` in a uts namespace joined by path", "uts-by-path", Probe("hostname"), Match),
        row("devices default", "type, mode and numbers of /dev/null, zero, full, random, urandom, tty", "default", Probe("chardevs"), Match),
        row("devices default links", "/dev/ptmx, fd, stdin, stdout, stderr, core", "default", Probe("links"), Match),
        row("linux.devices", "/dev/xnull (c 1:3, 0666) and a write to it", "devices", Probe("device"), Match),
        row("sysctl", "kernel.shmmax, kernel.msgmax, fs.mqueue.msg_max, net.ipv4.ip_forward, kernel.domainname", "sysctl", Probe("sysctl"), Match),
        row("sysctl net without a netns", "the error of a net.* sysctl without a network namespace", "sysctl-net-without-netns", Failure, Match),
        row("seccomp status", "Seccomp: in /proc/self/status", "seccomp", Lines("status", "Seccomp:"), Match),
        row("seccomp errnoRet", "`mkdir` denied with EACCES", "seccomp", Probe("mkdir"), Match),
        row("seccomp args", "kill(1, 0) denied with EPERM", "seccomp", Probe("kill0"), Match),
        row("seccomp args not matching", "kill(1, SIGCONT) allowed", "seccomp", Probe("killcont"), Match),
        row("seccomp defaultAction", "`mkdir` outside the allow-list, defaultErrnoRet ENOSYS", "seccomp-default", Probe("mkdir"),
            Bug("youki's init loads the filter, then tells the runtime it is ready (sendmsg) and waits for start (accept4, recvfrom); runc's loads it just before exec: a default-deny filter must allow those three (the next row)")),
        row("seccomp defaultAction, youki's needs allowed", "the same with the allow-list also allowing what youki's init calls after loading the filter (sendmsg, accept4, recvfrom)", "seccomp-default-youki", Probe("mkdir"), Match),
        row("seccomp unset", "Seccomp: with no filter", "default", Lines("status", "Seccomp:"), Match),
        row("resources.memory.limit", "memory.max (v2) or memory.limit_in_bytes (v1) of the own cgroup", "resources", Probe("memory"), Match),
        row("resources.pids.limit", "pids.max of the own cgroup", "resources", Probe("pids"), Match),
        row("resources.cpu quota/period", "cpu.max (v2) or cfs_quota_us and cfs_period_us (v1)", "resources", Probe("cpu"), Match),
        row("hooks prestart, createRuntime, startContainer", "each hook's kind and the status in the state on its stdin, in the order they ran", "hooks", Probe("hooks"),
            Bug("youki gives startContainer the state it had when it forked the init (status creating); runc gives created")),
        row("hooks failing", "the error of create when a prestart hook exits 2", "hook-fails", Failure, Match),
        row("personality LINUX32", "`uname -m`", "personality", Probe("uname"),
            Runc("runc 1.1 ignores linux.personality; runvm applies it")),
        row("state", "status, pid, bundle, annotations of `state` after create", "state", State, Match),
        row("host namespace cgroup", "/proc/<state pid>/ns/cgroup against the caller's", "state", Ns("cgroup"), Match),
        row("host namespace ipc", "/proc/<state pid>/ns/ipc", "state", Ns("ipc"), Match),
        row("host namespace mnt", "/proc/<state pid>/ns/mnt", "state", Ns("mnt"), Match),
        row("host namespace net", "/proc/<state pid>/ns/net", "state", Ns("net"), Match),
        row("host namespace pid", "/proc/<state pid>/ns/pid", "state", Ns("pid"),
            Bug("the stand-in, whose pid callers signal and reap, stays in the caller's pid namespace")),
        row("host namespace uts", "/proc/<state pid>/ns/uts", "state", Ns("uts"), Match),
    ]
}

fn failure_rows() -> Vec<Row> {
    vec![
        row(
            "process.args not found",
            "`run` of /bin/nope",
            "exec-not-found",
            Failure,
            Match,
        ),
        row(
            "process.args not in PATH",
            "`run` of nope",
            "exec-not-in-path",
            Failure,
            Match,
        ),
        row(
            "process.args not executable",
            "`run` of a 0644 file",
            "exec-permission",
            Failure,
            Match,
        ),
        row(
            "process.args empty",
            "`run` with no args",
            "empty-args",
            Failure,
            Match,
        ),
        row(
            "process.cwd not a directory",
            "`run` with cwd /bin/busybox",
            "cwd-not-a-dir",
            Failure,
            Match,
        ),
        row(
            "process.cwd relative",
            "`run` with cwd bin",
            "relative-cwd",
            Failure,
            Match,
        ),
        row(
            "process.user bad uid",
            "`run` as uid 4294967295",
            "bad-uid",
            Failure,
            Match,
        ),
    ]
}
