//! QEMU's command line for a [`VmSpec`]: q35, direct kernel boot, the agent
//! on a virtio-serial port, virtio-fs shares and NICs on PCIe root ports.

use std::path::{Path, PathBuf};

use crate::config::MonitorKind;
use crate::hypervisor::{Device, NetBackend, NetDevice, ResolvedAccel, VmSpec};

pub const AGENT_SOCKET: &str = "agent.sock";
pub const QMP_SOCKET: &str = "qmp.sock";

/// QEMU opens no file of the state directory by name: the shim hands it
/// each as a descriptor, at these numbers (fixed, so that a clone's command
/// line is its template's). See `jail.rs`.
pub const FD_CONSOLE: i32 = 3;
pub const FD_QMP: i32 = 4;
pub const FD_AGENT: i32 = 5;
pub const FD_DEBUG_MONITOR: i32 = 6;
/// The boot devices' descriptors (a share's connection to its daemon, a
/// disk image, a tap), in the order of the devices.
const FD_DEVICES: i32 = 7;
/// QEMU's fd sets: the console's, then one per disk.
const FDSET_CONSOLE: i32 = 1;
const FDSET_DISKS: i32 = 10;

/// What a boot device's descriptor is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootFd {
    /// A connection to the vhost-user socket of this name in the VM's
    /// directory.
    Share(String),
    /// The image, opened read-write.
    Disk(PathBuf),
    /// The tap of this name, opened (in the namespace QEMU runs in).
    Tap(String),
}

/// The descriptors the boot devices need, with their numbers.
pub fn boot_fds(spec: &VmSpec) -> Vec<(i32, BootFd)> {
    let needs = spec.devices.iter().filter_map(|d| match d {
        Device::Fs(share) => Some(BootFd::Share(share.socket.clone())),
        Device::Disk(disk) => Some(BootFd::Disk(disk.path.clone())),
        Device::Net(NetDevice {
            backend: NetBackend::Tap { name },
            ..
        }) => Some(BootFd::Tap(name.clone())),
        _ => None,
    });
    (FD_DEVICES..).zip(needs).collect()
}

/// Skip what a VM with one console and no legacy devices does not need:
/// crypto self-tests, probing serial ports and the PS/2 controller, the
/// IO-APIC timer check. Together they take about a second under TCG.
const FAST_BOOT_PARAMS: &str = "tsc=reliable no_timer_check rcupdate.rcu_expedited=1 \
     i8042.direct=1 i8042.dumbkbd=1 i8042.nopnp=1 i8042.noaux=1 noreplace-smp \
     cryptomgr.notests 8250.nr_uarts=1";

/// Under TCG only: the emulated CPU has no TSC-deadline timer, so the kernel
/// calibrates the local APIC timer against the PIT for 100 ms of guest time,
/// about 150 ms of a cold boot here. Without it the tick comes from the
/// HPET, broadcast to the other vCPUs. With KVM the TSC-deadline timer
/// needs no calibration, and the local timer is kept.
const TCG_BOOT_PARAMS: &str = "noapictimer";

/// What the QEMU backend takes from its configuration besides the spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub accel: ResolvedAccel,
    /// `-sandbox on` (seccomp) with the dangerous groups denied.
    pub seccomp_sandbox: bool,
    /// A second monitor for debugging, on
    /// [`crate::hypervisor::DEBUG_MONITOR_SOCKET`].
    pub debug_monitor: Option<MonitorKind>,
    /// `-machine`: q35 or a versioned q35.
    pub machine_type: String,
}

/// PCIe root ports: one per boot device that needs one, plus the free ones.
pub fn root_ports(spec: &VmSpec) -> usize {
    let at_boot = spec
        .devices
        .iter()
        .filter(|d| matches!(d, Device::Fs(_) | Device::Disk(_) | Device::Net(_)))
        .count();
    at_boot + spec.hotplug_slots
}

/// Where guest RAM lives: the restore's copy, the spec's file, or a memfd
/// (also for a checkpoint's restore, whose memory is in its stream).
pub fn memory_path(spec: &VmSpec) -> Option<&Path> {
    match (
        spec.restore.as_ref().and_then(|r| r.memory.as_deref()),
        &spec.memory_file,
    ) {
        (Some(copy), _) => Some(copy),
        (None, f) => f.as_deref(),
    }
}

/// QEMU's command line for `spec` (without the binary).
pub fn command_line(spec: &VmSpec, opts: &Options) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    let (accel, cpu) = match opts.accel {
        ResolvedAccel::Kvm => ("kvm", "host"),
        ResolvedAccel::Tcg => ("tcg", "max"),
    };
    let mem = format!("{}M", spec.memory_mib);
    let mut smp = spec.vcpus.to_string();
    if spec.max_vcpus > spec.vcpus {
        smp.push_str(&format!(",maxcpus={}", spec.max_vcpus));
    }
    let mut memory = mem.clone();
    if spec.max_memory_mib > spec.memory_mib {
        memory.push_str(&format!(
            ",slots={},maxmem={}M",
            spec.memory_slots.max(1),
            spec.max_memory_mib
        ));
    }
    push(&["-name", &format!("{},debug-threads=on", spec.name)]);
    push(&[
        "-machine",
        &format!("{},accel={accel},memory-backend=mem", opts.machine_type),
    ]);
    push(&["-cpu", cpu, "-smp", &smp, "-m", &memory]);
    // vhost-user devices (virtio-fs) need guest memory the daemon can map.
    match memory_path(spec) {
        None => push(&[
            "-object",
            &format!("memory-backend-memfd,id=mem,size={mem},share=on"),
        ]),
        Some(path) => push(&[
            "-object",
            &format!(
                "memory-backend-file,id=mem,size={mem},mem-path={},share=on",
                path.display()
            ),
        ]),
    }
    // Memory a checkpointed VM had hotplugged, as QEMU's hotplug made it
    // (hypervisor::Qemu::hotplug_memory): the same ids, shared memfds.
    for (i, mib) in spec.dimms_mib.iter().enumerate() {
        push(&[
            "-object",
            &format!("memory-backend-memfd,id=dimm{i}-mem,size={mib}M,share=on"),
            "-device",
            &format!("pc-dimm,id=dimm{i},memdev=dimm{i}-mem"),
        ]);
    }
    push(&[
        "-kernel",
        &spec.kernel.to_string_lossy(),
        "-initrd",
        &spec.initrd.to_string_lossy(),
    ]);
    let mut cmdline = format!("console=ttyS0 quiet panic=-1 {FAST_BOOT_PARAMS}");
    if opts.accel == ResolvedAccel::Tcg {
        cmdline.push(' ');
        cmdline.push_str(TCG_BOOT_PARAMS);
    }
    if !spec.kernel_params.is_empty() {
        cmdline.push(' ');
        cmdline.push_str(&spec.kernel_params);
    }
    push(&["-append", &cmdline]);
    push(&["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"]);
    if opts.seccomp_sandbox {
        push(&[
            "-sandbox",
            "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
        ]);
    }
    push(&[
        "-add-fd",
        &format!("fd={FD_CONSOLE},set={FDSET_CONSOLE},opaque=console"),
        // A pipe (console.rs): append, because a file chardev that would
        // truncate calls ftruncate on the descriptor.
        "-chardev",
        &format!("file,id=console,path=/dev/fdset/{FDSET_CONSOLE},append=on"),
        "-serial",
        "chardev:console",
    ]);
    push(&[
        "-chardev",
        &format!("socket,id=qmp,fd={FD_QMP},server=on,wait=off"),
        "-mon",
        "chardev=qmp,mode=control",
    ]);
    if let Some(kind) = opts.debug_monitor {
        push(&[
            "-chardev",
            &format!("socket,id=debugmon,fd={FD_DEBUG_MONITOR},server=on,wait=off"),
        ]);
        let mode = match kind {
            MonitorKind::Hmp => "readline",
            MonitorKind::Qmp => "control",
            MonitorKind::QmpPretty => "control,pretty=on",
        };
        push(&["-mon", &format!("chardev=debugmon,mode={mode}")]);
    }
    // A new generation id on every start tells the guest kernel to reseed its
    // RNG: clones of one template must not share random numbers.
    push(&["-device", "vmgenid,guid=auto"]);
    // The guest reports the pages it frees; QEMU drops them, so a VM holds
    // the memory it uses now, not the most it ever touched.
    push(&[
        "-device",
        "virtio-balloon-pci,id=balloon0,free-page-reporting=on",
    ]);
    // The agent's port first, as before any root port: PCI slots follow
    // the order of the devices.
    for device in &spec.devices {
        if let Device::AgentPort { name } = device {
            push(&["-device", "virtio-serial-pci,id=vser0"]);
            push(&[
                "-chardev",
                &format!("socket,id=agent,fd={FD_AGENT},server=on,wait=off"),
            ]);
            push(&[
                "-device",
                &format!("virtserialport,bus=vser0.0,chardev=agent,name={name}"),
            ]);
        }
    }
    for i in 0..root_ports(spec) {
        push(&[
            "-device",
            &format!("pcie-root-port,id=rp{i},chassis={},slot={}", i + 1, i + 1),
        ]);
    }
    if spec.restore.is_some() {
        push(&["-incoming", "defer"]);
    }
    let (mut port, mut fs, mut disk, mut net) = (0, 0, 0, 0);
    let mut fds = boot_fds(spec).into_iter().map(|(fd, _)| fd);
    for device in &spec.devices {
        match device {
            Device::AgentPort { .. } => {}
            Device::Fs(share) => {
                let id = format!("fs{fs}");
                fs += 1;
                let fd = fds.next().expect("a descriptor per share");
                push(&["-chardev", &format!("socket,id={id},fd={fd}")]);
                push(&[
                    "-device",
                    &format!(
                        "vhost-user-fs-pci,id={id}-dev,chardev={id},tag={},bus=rp{port}",
                        share.tag
                    ),
                ]);
                port += 1;
            }
            Device::Disk(d) => {
                let id = format!("disk{disk}");
                let set = FDSET_DISKS + disk;
                disk += 1;
                let fd = fds.next().expect("a descriptor per disk");
                push(&["-add-fd", &format!("fd={fd},set={set},opaque={id}")]);
                push(&["-blockdev", &blockdev(&id, &format!("/dev/fdset/{set}"))]);
                push(&[
                    "-device",
                    &format!(
                        "virtio-blk-pci,id={id}-dev,drive={id},serial={},bus=rp{port}",
                        d.serial
                    ),
                ]);
                port += 1;
            }
            Device::Net(nic) => {
                let id = format!("net{net}");
                net += 1;
                let fd = match nic.backend {
                    NetBackend::Tap { .. } => fds.next(),
                    NetBackend::User => None,
                };
                push(&["-netdev", &netdev(&id, fd)]);
                push(&[
                    "-device",
                    &format!(
                        "virtio-net-pci,id={id}-dev,netdev={id},mac={}{},bus=rp{port}",
                        nic.mac,
                        nic.mtu
                            .map(|m| format!(",host_mtu={m}"))
                            .unwrap_or_default()
                    ),
                ]);
                port += 1;
            }
        }
    }
    a
}

/// A raw image file as a block node; a comma in its path is doubled, as
/// QEMU's option syntax escapes it.
fn blockdev(id: &str, path: &str) -> String {
    format!(
        "driver=raw,node-name={id},file.driver=file,file.filename={}",
        path.replace(',', ",,")
    )
}

/// A tap QEMU was handed (`fd`), or user networking.
fn netdev(id: &str, fd: Option<i32>) -> String {
    match fd {
        Some(fd) => format!("tap,id={id},fd={fd},vhost=off"),
        None => format!("user,id={id}"),
    }
}

/// The command line with what differs between a template and its clones
/// (name, directory, memory file, the wait for incoming state) taken out.
pub fn layout(spec: &VmSpec, opts: &Options) -> String {
    let mut normal = spec.clone();
    normal.name = "@NAME".into();
    normal.dir = PathBuf::from("@DIR");
    normal.memory_file = memory_path(spec).map(|_| PathBuf::from("@MEM"));
    normal.restore = None;
    command_line(&normal, opts).join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypervisor::{DiskDevice, FsDevice, NetDevice, Restore};

    fn spec() -> VmSpec {
        VmSpec {
            name: "runvm-c1".into(),
            dir: "/run/runvm/c1".into(),
            kernel: "/k".into(),
            initrd: "/i".into(),
            kernel_params: "foo=1".into(),
            vcpus: 1,
            max_vcpus: 1,
            memory_mib: 256,
            max_memory_mib: 256,
            memory_slots: 0,
            hotplug_slots: 1,
            devices: vec![
                Device::AgentPort {
                    name: "agent.0".into(),
                },
                Device::Fs(FsDevice {
                    tag: "share".into(),
                    socket: "share.sock".into(),
                }),
            ],
            memory_file: None,
            restore: None,
            dimms_mib: Vec::new(),
        }
    }

    fn opts(accel: ResolvedAccel) -> Options {
        Options {
            accel,
            seccomp_sandbox: true,
            debug_monitor: None,
            machine_type: "q35".into(),
        }
    }

    #[test]
    fn a_debug_monitor_is_a_second_monitor_on_its_socket_only_when_asked() {
        let none = command_line(&spec(), &opts(ResolvedAccel::Tcg));
        assert!(!none.iter().any(|a| a.contains("debugmon")), "{none:?}");
        let chardev = "socket,id=debugmon,fd=6,server=on,wait=off";
        for (kind, mode) in [
            (MonitorKind::Hmp, "chardev=debugmon,mode=readline"),
            (MonitorKind::Qmp, "chardev=debugmon,mode=control"),
            (
                MonitorKind::QmpPretty,
                "chardev=debugmon,mode=control,pretty=on",
            ),
        ] {
            let o = Options {
                debug_monitor: Some(kind),
                ..opts(ResolvedAccel::Tcg)
            };
            let a = command_line(&spec(), &o);
            assert!(has_pair(&a, "-chardev", chardev), "{a:?}");
            assert!(has_pair(&a, "-mon", mode), "{a:?}");
            // The template's layout differs: a debugged VM is never a clone
            // of an undebugged template.
            assert_ne!(
                layout(&spec(), &o),
                layout(&spec(), &opts(ResolvedAccel::Tcg))
            );
        }
    }

    fn has_pair(args: &[String], flag: &str, value: &str) -> bool {
        args.windows(2).any(|w| w[0] == flag && w[1] == value)
    }

    /// The guest kernel's command line (`-append`'s value).
    fn append(args: &[String]) -> &str {
        let i = args.iter().position(|s| s == "-append").unwrap();
        &args[i + 1]
    }

    #[test]
    fn tcg_command_line() {
        let a = command_line(&spec(), &opts(ResolvedAccel::Tcg));
        assert!(has_pair(&a, "-machine", "q35,accel=tcg,memory-backend=mem"));
        assert!(has_pair(&a, "-cpu", "max"));
        assert!(has_pair(&a, "-smp", "1"));
        assert!(has_pair(&a, "-m", "256M"));
        assert!(has_pair(
            &a,
            "-object",
            "memory-backend-memfd,id=mem,size=256M,share=on"
        ));
        let append = append(&a);
        assert!(
            append.starts_with("console=ttyS0 quiet panic=-1 "),
            "{append}"
        );
        assert!(append.contains("cryptomgr.notests"), "{append}");
        assert!(append.contains(" noapictimer"), "{append}");
        assert!(append.ends_with(" foo=1"), "{append}");
        assert!(has_pair(
            &a,
            "-device",
            "virtserialport,bus=vser0.0,chardev=agent,name=agent.0"
        ));
        assert!(has_pair(
            &a,
            "-device",
            "vhost-user-fs-pci,id=fs0-dev,chardev=fs0,tag=share,bus=rp0"
        ));
        // A second root port stays free for a hotplugged device.
        assert!(has_pair(
            &a,
            "-device",
            "pcie-root-port,id=rp1,chassis=2,slot=2"
        ));
        assert!(!a.iter().any(|s| s.contains("rp2")));
        assert!(a.iter().any(|s| s.starts_with("on,obsolete=deny")));
        // Every file of the state directory comes as a descriptor.
        assert!(has_pair(&a, "-add-fd", "fd=3,set=1,opaque=console"));
        assert!(has_pair(
            &a,
            "-chardev",
            "file,id=console,path=/dev/fdset/1,append=on"
        ));
        assert!(has_pair(&a, "-serial", "chardev:console"));
        assert!(has_pair(
            &a,
            "-chardev",
            "socket,id=qmp,fd=4,server=on,wait=off"
        ));
        assert!(has_pair(&a, "-mon", "chardev=qmp,mode=control"));
        assert!(has_pair(
            &a,
            "-chardev",
            "socket,id=agent,fd=5,server=on,wait=off"
        ));
        assert!(has_pair(&a, "-chardev", "socket,id=fs0,fd=7"));
        assert_eq!(boot_fds(&spec()), [(7, BootFd::Share("share.sock".into()))]);
        assert!(!a.iter().any(|s| s.contains("/run/runvm/c1")), "{a:?}");
    }

    #[test]
    fn a_disk_share_is_a_virtio_blk_device_on_a_root_port_and_the_machine_type_is_used() {
        let mut s = spec();
        s.devices[1] = Device::Disk(DiskDevice {
            path: "/var/lib/runvm/disks/a,b.img".into(),
            serial: "share".into(),
        });
        let o = Options {
            machine_type: "pc-q35-7.2".into(),
            ..opts(ResolvedAccel::Tcg)
        };
        let a = command_line(&s, &o);
        assert!(has_pair(
            &a,
            "-machine",
            "pc-q35-7.2,accel=tcg,memory-backend=mem"
        ));
        assert!(has_pair(&a, "-add-fd", "fd=7,set=10,opaque=disk0"));
        assert!(has_pair(
            &a,
            "-blockdev",
            "driver=raw,node-name=disk0,file.driver=file,file.filename=/dev/fdset/10"
        ));
        assert_eq!(
            boot_fds(&s),
            [(7, BootFd::Disk("/var/lib/runvm/disks/a,b.img".into()))]
        );
        assert!(has_pair(
            &a,
            "-device",
            "virtio-blk-pci,id=disk0-dev,drive=disk0,serial=share,bus=rp0"
        ));
        assert!(!a.iter().any(|x| x.contains("vhost-user-fs")), "{a:?}");
        assert!(has_pair(
            &a,
            "-device",
            "pcie-root-port,id=rp1,chassis=2,slot=2"
        ));
    }

    #[test]
    fn a_checkpoint_restores_into_memfd_memory_with_its_dimms_at_boot() {
        let mut s = spec();
        s.memory_slots = 4;
        s.max_memory_mib = 2048;
        s.dimms_mib = vec![384, 128];
        s.restore = Some(Restore {
            state: "/img/vm.state".into(),
            memory: None,
        });
        let a = command_line(&s, &opts(ResolvedAccel::Tcg));
        assert!(has_pair(
            &a,
            "-object",
            "memory-backend-memfd,id=mem,size=256M,share=on"
        ));
        for (i, mib) in [(0, 384), (1, 128)] {
            assert!(has_pair(
                &a,
                "-object",
                &format!("memory-backend-memfd,id=dimm{i}-mem,size={mib}M,share=on")
            ));
            assert!(has_pair(
                &a,
                "-device",
                &format!("pc-dimm,id=dimm{i},memdev=dimm{i}-mem")
            ));
        }
        assert!(has_pair(&a, "-m", "256M,slots=4,maxmem=2048M"));
        assert!(has_pair(&a, "-incoming", "defer"));
        // The share the checkpointed VM had is at boot, on the first port.
        assert!(has_pair(
            &a,
            "-device",
            "vhost-user-fs-pci,id=fs0-dev,chardev=fs0,tag=share,bus=rp0"
        ));
    }

    #[test]
    fn a_clone_waits_for_its_state_over_file_memory() {
        let mut s = spec();
        s.devices.truncate(1);
        s.hotplug_slots = 2;
        s.restore = Some(Restore {
            state: "/dev/shm/t/state".into(),
            memory: Some("/dev/shm/x.mem".into()),
        });
        s.memory_file = Some("/dev/shm/x.mem".into());
        let a = command_line(&s, &opts(ResolvedAccel::Tcg));
        assert!(has_pair(
            &a,
            "-object",
            "memory-backend-file,id=mem,size=256M,mem-path=/dev/shm/x.mem,share=on"
        ));
        assert!(has_pair(&a, "-incoming", "defer"));
        assert!(!a.iter().any(|s| s.starts_with("vhost-user-fs-pci")));
        assert!(has_pair(
            &a,
            "-device",
            "pcie-root-port,id=rp1,chassis=2,slot=2"
        ));
    }

    #[test]
    fn a_template_and_its_clone_have_one_layout() {
        let mut template = spec();
        template.devices.truncate(1);
        template.hotplug_slots = 2;
        template.memory_file = Some("/dev/shm/t.new-1/mem".into());
        template.dir = "/dev/shm/t.new-1".into();
        let mut clone = template.clone();
        clone.name = "runvm-c2".into();
        clone.dir = "/run/runvm/c2".into();
        clone.memory_file = Some("/dev/shm/clone-c2-9.mem".into());
        clone.restore = Some(Restore {
            state: "/dev/shm/t/state".into(),
            memory: Some("/dev/shm/clone-c2-9.mem".into()),
        });
        let o = opts(ResolvedAccel::Tcg);
        assert_eq!(layout(&template, &o), layout(&clone, &o));
        let mut bigger = clone.clone();
        bigger.memory_mib = 512;
        assert_ne!(layout(&template, &o), layout(&bigger, &o));
        assert_ne!(
            layout(&template, &o),
            layout(&template, &opts(ResolvedAccel::Kvm))
        );
    }

    #[test]
    fn kvm_uses_the_host_cpu() {
        let a = command_line(&spec(), &opts(ResolvedAccel::Kvm));
        assert!(has_pair(&a, "-machine", "q35,accel=kvm,memory-backend=mem"));
        assert!(has_pair(&a, "-cpu", "host"));
        let append = append(&a);
        assert!(!append.contains("noapictimer"), "{append}");
    }

    #[test]
    fn room_to_grow_and_nics_at_boot() {
        let mut s = spec();
        s.max_vcpus = 4;
        s.max_memory_mib = 1024;
        s.memory_slots = 4;
        s.devices.push(Device::Net(NetDevice {
            backend: NetBackend::Tap {
                name: "tap0".into(),
            },
            mac: "52:54:00:12:34:56".into(),
            mtu: Some(1400),
        }));
        s.devices.push(Device::Net(NetDevice {
            backend: NetBackend::User,
            mac: "52:54:00:12:34:57".into(),
            mtu: None,
        }));
        let a = command_line(&s, &opts(ResolvedAccel::Tcg));
        assert!(has_pair(&a, "-smp", "1,maxcpus=4"));
        assert!(has_pair(&a, "-m", "256M,slots=4,maxmem=1024M"));
        assert!(has_pair(&a, "-netdev", "tap,id=net0,fd=8,vhost=off"));
        assert_eq!(boot_fds(&s)[1], (8, BootFd::Tap("tap0".into())));
        assert!(has_pair(
            &a,
            "-device",
            "virtio-net-pci,id=net0-dev,netdev=net0,mac=52:54:00:12:34:56,host_mtu=1400,bus=rp1"
        ));
        assert!(has_pair(&a, "-netdev", "user,id=net1"));
        assert!(has_pair(
            &a,
            "-device",
            "virtio-net-pci,id=net1-dev,netdev=net1,mac=52:54:00:12:34:57,bus=rp2"
        ));
        assert!(has_pair(
            &a,
            "-device",
            "pcie-root-port,id=rp2,chassis=3,slot=3"
        ));
    }
}
