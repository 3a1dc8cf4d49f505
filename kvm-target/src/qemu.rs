//! The QEMU command line for a [`Target`] (direct QEMU, without libvirt) and a runnable
//! script of it. An EFI guest's writable flash is its own variable store
//! ([`crate::firmware`]).

use crate::{disk_port, Accel, GuestFeatures, NetTarget, Target, HYPERV_FLAGS};

/// How to run QEMU directly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuOptions {
    /// `-serial` value: `mon:stdio` for a person, `file:PATH` for a test.
    pub serial: String,
    /// Open disks with `snapshot=on` (writes go to a temporary overlay).
    pub snapshot: bool,
}

impl Default for QemuOptions {
    fn default() -> Self {
        QemuOptions {
            serial: "mon:stdio".into(),
            snapshot: false,
        }
    }
}

/// The QEMU command line as an argv array (argv[0] is `qemu-system-x86_64`), with the
/// guest's features (Hyper-V enlightenments, local-time RTC). Disk paths go into
/// `-drive file=` where a comma would start a new option: QEMU's own escape (a
/// doubled comma) is applied.
pub fn qemu_argv(t: &Target, q: &QemuOptions, f: &GuestFeatures) -> Vec<String> {
    let qc = |s: &str| s.replace(',', ",,");
    let hyperv = f.hyperv && t.accel == Accel::Kvm;
    let mut a: Vec<String> = vec!["qemu-system-x86_64".into()];
    let mut push = |xs: &[&str]| a.extend(xs.iter().map(|s| s.to_string()));
    push(&[
        "-name",
        &format!("guest={},debug-threads=on", qc(&t.safe_name())),
    ]);
    if let Some(u) = &t.uuid {
        push(&["-uuid", u]);
    }
    let tu = &t.tuning;
    // Host placement of the memory (hugepages, NUMA binding), as libvirt's
    // <memoryBacking>/<numatune> do: on the memory backends. Without guest NUMA
    // cells the machine's RAM is one backend of its own.
    let placed = tu.hugepage_kib.is_some() || !tu.memory_nodes.is_empty();
    let main_ram = placed && tu.guest_cells.is_empty();
    push(&[
        "-machine",
        &format!(
            "{},accel={}{}{}",
            t.machine,
            t.accel.as_str(),
            if t.firmware.secure_boot() {
                ",smm=on"
            } else {
                ""
            },
            if main_ram {
                ",memory-backend=v2kram"
            } else {
                ""
            }
        ),
    ]);
    let mut cpu = if t.accel == Accel::Kvm { "host" } else { "max" }.to_string();
    if hyperv {
        for flag in HYPERV_FLAGS {
            cpu.push(',');
            cpu.push_str(flag);
        }
    }
    push(&["-cpu", &cpu]);
    if f.localtime {
        push(&["-rtc", "base=localtime,driftfix=slew"]);
    }
    // What the guest sees of the tuning (hot-add room, vNUMA cells); the host's
    // memory placement on the backends (memory_backend); vCPU pinning is the
    // script's (qemu_script: QEMU does not pin its threads itself).
    push(&[
        "-smp",
        &format!(
            "{},maxcpus={},sockets={},cores={},threads=1",
            t.vcpus,
            t.max_vcpus(),
            t.sockets,
            t.cores
        ),
    ]);
    match tu.max_memory_mib {
        Some(max) => push(&[
            "-m",
            &format!(
                "{},slots={},maxmem={max}M",
                t.memory_mib,
                crate::tuning::MEMORY_SLOTS
            ),
        ]),
        None => push(&["-m", &t.memory_mib.to_string()]),
    }
    if main_ram {
        push(&["-object", &memory_backend(t, "v2kram", t.memory_mib)]);
    }
    if tu.hugepage_kib.is_some() {
        // libvirt's <locked/>: the guest's memory is never swapped.
        push(&["-overcommit", "mem-lock=on"]);
    }
    for (i, c) in tu.guest_cells.iter().enumerate() {
        let backend = if placed {
            memory_backend(t, &format!("v2kmem{i}"), c.memory_mib)
        } else {
            format!("memory-backend-ram,id=v2kmem{i},size={}M", c.memory_mib)
        };
        push(&[
            "-object",
            &backend,
            "-numa",
            &format!(
                "node,nodeid={i},cpus={}-{},memdev=v2kmem{i}",
                c.first_cpu, c.last_cpu
            ),
        ]);
    }
    push(&["-nodefaults", "-display", "none", "-serial", &q.serial]);
    if let (Some((code, _)), Some(vars)) = (t.firmware.images(), t.firmware.vars()) {
        if t.firmware.secure_boot() {
            // The Secure Boot build only runs with SMM, and its flash must be locked.
            push(&["-global", "driver=cfi.pflash01,property=secure,value=on"]);
        }
        push(&[
            "-drive",
            &format!("if=pflash,format=raw,readonly=on,file={}", qc(code)),
        ]);
        push(&[
            "-drive",
            &format!("if=pflash,format=raw,file={}", qc(&vars.to_string_lossy())),
        ]);
    }
    if t.scsi() {
        push(&["-device", "virtio-scsi-pci,id=scsi0"]);
    }
    for (i, d) in t.disks.iter().enumerate() {
        let snap = if q.snapshot { ",snapshot=on" } else { "" };
        push(&[
            "-drive",
            &format!(
                "file={},format=qcow2,if=none,id=disk{i},discard=unmap{snap}",
                qc(&d.to_string_lossy())
            ),
        ]);
        let mut boot = if i == 0 { ",bootindex=0" } else { "" }.to_string();
        if let Some(u) = t.disk_uuid(i) {
            // The VMware disk's identity, as in the domain XML.
            boot.push_str(&format!(",serial={}", crate::disk_serial(u)));
            if t.scsi() {
                boot.push_str(&format!(",wwn=0x{}", crate::disk_wwn(u)));
            }
        }
        if t.scsi() {
            // Target i, in disk order, as the domain XML's drive address.
            push(&[
                "-device",
                &format!("scsi-hd,bus=scsi0.0,scsi-id={i},lun=0,drive=disk{i},id=v2kdisk{i}{boot}"),
            ]);
        } else {
            // Behind its own root port, the ports in disk order on the root bus, as
            // in the domain XML (QEMU's automatic slots run out past ~28 devices).
            let (slot, function) = disk_port(i);
            let multi = if function == 0 {
                ",multifunction=on"
            } else {
                ""
            };
            push(&[
                "-device",
                &format!(
                    "pcie-root-port,id=v2kport{i},bus=pcie.0,chassis={},addr={slot:#x}.{function:#x}{multi}",
                    i + 1
                ),
            ]);
            push(&[
                "-device",
                &format!(
                    "virtio-blk-pci,bus=v2kport{i},addr=0x0,drive=disk{i},id=v2kdisk{i}{boot}"
                ),
            ]);
        }
    }
    for (i, n) in t.nics.iter().enumerate() {
        let netdev = match &n.target {
            NetTarget::Bridge(b) => format!("bridge,id=net{i},br={b}"),
            // A libvirt network has no meaning to bare QEMU: stay isolated.
            NetTarget::Network(_) | NetTarget::User => format!("user,id=net{i},restrict=on"),
        };
        push(&["-netdev", &netdev]);
        push(&[
            "-device",
            &format!("virtio-net-pci,netdev=net{i},mac={}", n.mac),
        ]);
    }
    push(&["-device", "virtio-rng-pci", "-device", "virtio-balloon-pci"]);
    a
}

/// A memory backend of `mib` placed as the tuning says, in QEMU's JSON form for
/// `-object` (lists such as `host-nodes` have no unambiguous flat syntax): on
/// hugepages (`/dev/hugepages`, preallocated, as libvirt backs `<hugepages/>`) and
/// bound to the host NUMA nodes of `<numatune>` (policy `bind`, libvirt's `strict`).
fn memory_backend(t: &Target, id: &str, mib: u64) -> String {
    let tu = &t.tuning;
    let mut o = serde_json::json!({
        "qom-type": if tu.hugepage_kib.is_some() { "memory-backend-file" } else { "memory-backend-ram" },
        "id": id,
        "size": mib.saturating_mul(1 << 20),
    });
    if tu.hugepage_kib.is_some() {
        o["mem-path"] = "/dev/hugepages".into();
        o["prealloc"] = true.into();
    }
    if !tu.memory_nodes.is_empty() {
        o["host-nodes"] = tu.memory_nodes.clone().into();
        o["policy"] = "bind".into();
    }
    o.to_string()
}

/// Quotes one word for POSIX sh.
pub fn sh_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_=,./:@+".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// A runnable script for the argv. With `cpuset` (the tuning's `<vcpupin>` set, the
/// same for every vCPU) QEMU runs under `taskset -c`: its vCPU threads, and its other
/// threads with them, stay on those host CPUs.
pub fn qemu_script(argv: &[String], cpuset: &[u32]) -> String {
    let mut s = String::from(
        "#!/bin/sh\n# Written by v2k inject: runs the converted VM under QEMU directly.\n\
         # The serial console is on this terminal (Ctrl-a x quits).\nexec",
    );
    if !cpuset.is_empty() {
        s.push_str(&format!(" taskset -c {}", crate::tuning::cpuset(cpuset)));
    }
    // One option per line, with its value when it has one.
    for (i, a) in argv.iter().enumerate() {
        let is_value = i > 0 && argv[i - 1].starts_with('-') && !a.starts_with('-');
        s.push_str(if is_value || i == 0 { " " } else { " \\\n    " });
        s.push_str(&sh_quote(a));
    }
    s.push('\n');
    s
}
