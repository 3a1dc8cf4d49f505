//! libvirt domain XML for a [`Target`]. Every name from the VM is escaped; each
//! virtio-blk disk sits behind a PCIe root port of its own, the ports in disk order on
//! the root bus; virtio-scsi disks are targets of one controller in disk order;
//! user-mode NICs become QEMU arguments with `restrict=on` (libvirt's own user
//! interface cannot say it).

use quick_xml::escape::escape;

use crate::tuning::{cpuset, MEMORY_SLOTS};
use crate::{
    disk_port, Accel, Firmware, GuestFeatures, NetTarget, Target, TargetNic, USER_NIC_FIRST_SLOT,
};

/// A VM name for the `<title>`: control characters dropped (libvirt refuses them),
/// length capped as the guest-side excerpts are.
fn printable(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(200).collect()
}

fn x(s: &str) -> String {
    escape(s).into_owned()
}

fn disk_letter(i: usize) -> String {
    // a..z, then aa..zz, as the kernel names them.
    if i < 26 {
        ((b'a' + i as u8) as char).to_string()
    } else {
        let hi = i / 26 - 1;
        format!(
            "{}{}",
            (b'a' + hi as u8) as char,
            (b'a' + (i % 26) as u8) as char
        )
    }
}

/// The NBD export a live import's overlay reads unstreamed data from (issue 19): v2k's
/// server on a unix socket, export `export`, raw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NbdBacking {
    pub socket: std::path::PathBuf,
    pub export: String,
}

/// libvirt domain XML, with the guest's features (Hyper-V enlightenments, local-time
/// RTC). User-mode NICs are emitted as QEMU arguments in the qemu namespace because
/// libvirt's `<interface type='user'>` cannot say `restrict=on`.
pub fn domain_xml(t: &Target, f: &GuestFeatures) -> String {
    xml(t, f, None)
}

/// The domain XML of a live import: disk `i` is the QCOW2 overlay `t.disks[i]`, whose
/// `<backingStore>` is `backing[i]` over NBD (libvirt must be told: it does not read a
/// network backing from the overlay's header). Read and write errors stop the VM
/// (`error_policy`/`rerror_policy='stop'`) instead of reaching the guest, so a source
/// outage pauses it and it resumes when the data comes back.
pub fn live_domain_xml(
    t: &Target,
    f: &GuestFeatures,
    backing: &[NbdBacking],
) -> crate::Result<String> {
    if backing.len() != t.disks.len() {
        return Err(crate::Error::LiveBacking {
            disks: t.disks.len(),
            backings: backing.len(),
        });
    }
    Ok(xml(t, f, Some(backing)))
}

fn xml(t: &Target, f: &GuestFeatures, live: Option<&[NbdBacking]>) -> String {
    let hyperv = f.hyperv && t.accel == Accel::Kvm;
    let mut s = String::new();
    let user_nics: Vec<(usize, &TargetNic)> = t
        .nics
        .iter()
        .enumerate()
        .filter(|(_, n)| n.target == NetTarget::User)
        .collect();
    let dtype = match t.accel {
        Accel::Kvm => "kvm",
        Accel::Tcg => "qemu",
    };
    s.push_str(&format!(
        "<domain type='{dtype}' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>\n"
    ));
    s.push_str(&format!("  <name>{}</name>\n", x(&t.safe_name())));
    if let Some(u) = &t.uuid {
        s.push_str(&format!("  <uuid>{}</uuid>\n", x(u)));
    }
    s.push_str(&format!(
        "  <title>{}</title>\n  <description>Converted from VMware by v2k</description>\n",
        x(&printable(&t.name))
    ));
    let tu = &t.tuning;
    if let Some(max) = tu.max_memory_mib {
        s.push_str(&format!(
            "  <maxMemory slots='{MEMORY_SLOTS}' unit='MiB'>{max}</maxMemory>\n"
        ));
    }
    s.push_str(&format!("  <memory unit='MiB'>{}</memory>\n", t.memory_mib));
    if let Some(size) = tu.hugepage_kib {
        // All of VMware's reservation: on hugepages, never swapped (tuning.rs).
        s.push_str(&format!(
            "  <memoryBacking>\n    <hugepages>\n      <page size='{size}' unit='KiB'/>\n    \
             </hugepages>\n    <locked/>\n  </memoryBacking>\n"
        ));
    }
    if t.max_vcpus() > t.vcpus {
        s.push_str(&format!(
            "  <vcpu placement='static' current='{}'>{}</vcpu>\n",
            t.vcpus,
            t.max_vcpus()
        ));
    } else {
        s.push_str(&format!("  <vcpu placement='static'>{}</vcpu>\n", t.vcpus));
    }
    if !tu.vcpu_cpuset.is_empty() {
        // Every vCPU (hot-added ones too) on the set, as VMware schedules them.
        s.push_str("  <cputune>\n");
        let set = cpuset(&tu.vcpu_cpuset);
        for v in 0..t.max_vcpus() {
            s.push_str(&format!("    <vcpupin vcpu='{v}' cpuset='{set}'/>\n"));
        }
        s.push_str("  </cputune>\n");
    }
    if !tu.memory_nodes.is_empty() {
        s.push_str(&format!(
            "  <numatune>\n    <memory mode='strict' nodeset='{}'/>\n  </numatune>\n",
            cpuset(&tu.memory_nodes)
        ));
    }
    match &t.firmware {
        Firmware::Efi { secure_boot, vars } => {
            s.push_str("  <os firmware='efi'>\n");
            s.push_str(&format!(
                "    <type arch='x86_64' machine='{}'>hvm</type>\n",
                t.machine
            ));
            // Stated either way: without it libvirt's firmware auto-selection may
            // pick the Secure Boot image, which refuses an unsigned boot loader.
            let on = if *secure_boot { "yes" } else { "no" };
            s.push_str(&format!(
                "    <firmware>\n      <feature enabled='{on}' name='secure-boot'/>\n      \
                 <feature enabled='{on}' name='enrolled-keys'/>\n    </firmware>\n"
            ));
            // The VM's own variable store (firmware.rs), never the template.
            s.push_str(&format!(
                "    <nvram>{}</nvram>\n",
                x(&vars.to_string_lossy())
            ));
        }
        Firmware::Bios => {
            s.push_str("  <os>\n");
            s.push_str(&format!(
                "    <type arch='x86_64' machine='{}'>hvm</type>\n",
                t.machine
            ));
        }
    }
    // Boot order is per disk (`<boot order='1'/>`); libvirt refuses both forms at once.
    s.push_str("  </os>\n");
    s.push_str("  <features>\n    <acpi/>\n    <apic/>\n");
    if t.firmware.secure_boot() {
        s.push_str("    <smm state='on'/>\n");
    }
    if hyperv {
        s.push_str(
            "    <hyperv mode='custom'>\n      <relaxed state='on'/>\n      <vapic state='on'/>\n      \
             <spinlocks state='on' retries='8191'/>\n      <vpindex state='on'/>\n      \
             <synic state='on'/>\n      <stimer state='on'/>\n      <reset state='on'/>\n      \
             <frequencies state='on'/>\n    </hyperv>\n",
        );
    }
    s.push_str("  </features>\n");
    match t.accel {
        Accel::Kvm => s.push_str("  <cpu mode='host-passthrough' check='none'>\n"),
        Accel::Tcg => s.push_str("  <cpu mode='custom' match='exact' check='none'>\n    <model fallback='allow'>qemu64</model>\n"),
    }
    s.push_str(&format!(
        "    <topology sockets='{}' dies='1' cores='{}' threads='1'/>\n",
        t.sockets, t.cores
    ));
    if !tu.guest_cells.is_empty() {
        s.push_str("    <numa>\n");
        for (i, c) in tu.guest_cells.iter().enumerate() {
            s.push_str(&format!(
                "      <cell id='{i}' cpus='{}-{}' memory='{}' unit='MiB'/>\n",
                c.first_cpu, c.last_cpu, c.memory_mib
            ));
        }
        s.push_str("    </numa>\n");
    }
    s.push_str("  </cpu>\n");
    if *f == GuestFeatures::default() {
        s.push_str("  <clock offset='utc'/>\n");
    } else {
        s.push_str(&format!(
        "  <clock offset='{}'>\n    <timer name='rtc' tickpolicy='catchup'/>\n    \
         <timer name='pit' tickpolicy='delay'/>\n    <timer name='hpet' present='no'/>\n{}  </clock>\n",
        if f.localtime { "localtime" } else { "utc" },
        if hyperv {
            "    <timer name='hypervclock' present='yes'/>\n"
        } else {
            ""
        }
    ));
    }
    s.push_str("  <on_poweroff>destroy</on_poweroff>\n  <on_reboot>restart</on_reboot>\n  <on_crash>destroy</on_crash>\n");
    s.push_str("  <devices>\n");
    if t.scsi() {
        s.push_str("    <controller type='scsi' index='0' model='virtio-scsi'/>\n");
    } else {
        // One root port per disk, in disk order (lib.rs `disk_port`): explicit, so
        // libvirt's own assignment (devices in its order, not ours) cannot reorder
        // the disks the guest names vda, vdb...
        for i in 0..t.disks.len() {
            let (slot, function) = disk_port(i);
            let multi = if function == 0 {
                " multifunction='on'"
            } else {
                ""
            };
            s.push_str(&format!(
                "    <controller type='pci' index='{}' model='pcie-root-port'>\n      \
                 <address type='pci' domain='0x0000' bus='0x00' slot='{slot:#04x}' function='{function:#x}'{multi}/>\n    \
                 </controller>\n",
                i + 1
            ));
        }
    }
    for (i, d) in t.disks.iter().enumerate() {
        let (dev, bus) = if t.scsi() {
            (format!("sd{}", disk_letter(i)), "scsi")
        } else {
            (format!("vd{}", disk_letter(i)), "virtio")
        };
        s.push_str("    <disk type='file' device='disk'>\n");
        let policy = if live.is_some() {
            " error_policy='stop' rerror_policy='stop'"
        } else {
            ""
        };
        s.push_str(&format!(
            "      <driver name='qemu' type='qcow2' discard='unmap'{policy}/>\n"
        ));
        s.push_str(&format!(
            "      <source file='{}'/>\n",
            x(&d.to_string_lossy())
        ));
        if let Some(b) = live.map(|l| &l[i]) {
            s.push_str(&format!(
                "      <backingStore type='network'>\n        <format type='raw'/>\n        \
                 <source protocol='nbd' name='{}'>\n          \
                 <host transport='unix' socket='{}'/>\n        </source>\n      </backingStore>\n",
                x(&b.export),
                x(&b.socket.to_string_lossy())
            ));
        }
        s.push_str(&format!("      <target dev='{dev}' bus='{bus}'/>\n"));
        if let Some(u) = t.disk_uuid(i) {
            // The VMware disk's identity (lib.rs `disk_serial`, `disk_wwn`).
            s.push_str(&format!(
                "      <serial>{}</serial>\n",
                crate::disk_serial(u)
            ));
            if t.scsi() {
                s.push_str(&format!("      <wwn>{}</wwn>\n", crate::disk_wwn(u)));
            }
        }
        if t.scsi() {
            // Target i, in disk order, as the QEMU argv's scsi-id.
            s.push_str(&format!(
                "      <address type='drive' controller='0' bus='0' target='{i}' unit='0'/>\n"
            ));
        } else {
            // Behind its own root port (controller index i + 1), so that disk order
            // is the guest's scan order: a guest that names its root /dev/vda1 must
            // not meet its data disk first.
            s.push_str(&format!(
                "      <address type='pci' domain='0x0000' bus='{:#04x}' slot='0x00' function='0x0'/>\n",
                i + 1
            ));
        }
        if i == 0 {
            s.push_str("      <boot order='1'/>\n");
        }
        s.push_str("    </disk>\n");
    }
    for n in &t.nics {
        let src = match &n.target {
            NetTarget::Network(name) => ("network", format!("<source network='{}'/>", x(name))),
            NetTarget::Bridge(name) => ("bridge", format!("<source bridge='{}'/>", x(name))),
            NetTarget::User => continue,
        };
        s.push_str(&format!("    <interface type='{}'>\n", src.0));
        s.push_str(&format!(
            "      <mac address='{}'/>\n      {}\n",
            x(&n.mac),
            src.1
        ));
        s.push_str("      <model type='virtio'/>\n    </interface>\n");
    }
    s.push_str("    <serial type='pty'>\n      <target port='0'/>\n    </serial>\n");
    s.push_str(
        "    <console type='pty'>\n      <target type='serial' port='0'/>\n    </console>\n",
    );
    s.push_str("    <input type='tablet' bus='usb'/>\n");
    s.push_str("    <graphics type='vnc' autoport='yes' listen='127.0.0.1'/>\n");
    s.push_str("    <video>\n      <model type='virtio'/>\n    </video>\n");
    s.push_str("    <memballoon model='virtio'/>\n");
    s.push_str("    <rng model='virtio'>\n      <backend model='random'>/dev/urandom</backend>\n    </rng>\n");
    s.push_str("  </devices>\n");
    if !user_nics.is_empty() {
        s.push_str("  <qemu:commandline>\n");
        for (i, n) in user_nics {
            for arg in [
                "-netdev".to_string(),
                format!("user,id=v2knet{i},restrict=on"),
                "-device".to_string(),
                // An explicit slot on the root bus, clear of the ones libvirt assigns
                // itself (video at 0x1, root ports from 0x2, ICH9 at 0x1f) and of the
                // disks' root ports.
                format!(
                    "virtio-net-pci,netdev=v2knet{i},mac={},bus=pcie.0,addr={:#x}",
                    n.mac,
                    USER_NIC_FIRST_SLOT + i
                ),
            ] {
                s.push_str(&format!("    <qemu:arg value='{}'/>\n", x(&arg)));
            }
        }
        s.push_str("  </qemu:commandline>\n");
    }
    s.push_str("</domain>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_letters_follow_kernel_naming() {
        assert_eq!(disk_letter(0), "a");
        assert_eq!(disk_letter(25), "z");
        assert_eq!(disk_letter(26), "aa");
        assert_eq!(disk_letter(27), "ab");
    }
}
