//! Pre-flight concerns: what in a VM will not migrate cleanly, each with a stable id
//! (tools match on it; docs/inspect.md lists them all), a severity and one line for a
//! human. Severities follow what a fleet migration needs (FIELD-NOTES §3): critical
//! means the VM cannot be converted as it is; warning means it converts but something
//! is lost or needs a decision; info is worth knowing.

use crate::model::*;

/// Every concern id this module can raise, with its severity, for docs and tests.
pub(crate) const CONCERNS: &[(&str, Severity)] = &[
    ("disk-missing", Severity::Critical),
    ("disk-path-refused", Severity::Critical),
    ("disk-unreadable", Severity::Critical),
    ("disk-rdm", Severity::Critical),
    ("disk-zero-capacity", Severity::Critical),
    ("vcpu-count-unsupported", Severity::Critical),
    ("memory-size-unsupported", Severity::Critical),
    ("pci-passthrough", Severity::Critical),
    ("guest-os-unsupported", Severity::Critical),
    ("disk-capacity-unknown", Severity::Warning),
    ("disk-capacity-mismatch", Severity::Warning),
    ("disk-shared", Severity::Warning),
    ("scsi-bus-sharing", Severity::Warning),
    ("disk-independent", Severity::Warning),
    ("snapshots-present", Severity::Warning),
    ("sriov", Severity::Warning),
    ("usb-device", Severity::Warning),
    ("scsi-passthrough", Severity::Warning),
    ("tpm", Severity::Warning),
    ("secure-boot", Severity::Warning),
    ("nvme-controller", Severity::Warning),
    ("controller-unknown", Severity::Warning),
    ("nic-unknown-model", Severity::Warning),
    ("guest-os-unknown", Severity::Warning),
    ("manifest-absent", Severity::Warning),
    ("manifest-skipped", Severity::Warning),
    ("vmx-invalid-text", Severity::Warning),
    ("snapshot-metadata-unreadable", Severity::Warning),
    ("tuning-not-carried", Severity::Warning),
    ("domain-name-collision", Severity::Critical),
    ("fault-tolerance-secondary", Severity::Critical),
    ("tuning-host-too-small", Severity::Warning),
    ("disk-file-shared", Severity::Warning),
    ("fault-tolerance", Severity::Warning),
    ("guest-free-space-low", Severity::Warning),
    ("hugepages-unavailable", Severity::Warning),
    ("cbt-enabled", Severity::Info),
    ("usb-controller", Severity::Info),
    ("serial-port", Severity::Info),
    ("parallel-port", Severity::Info),
    ("cdrom-host-device", Severity::Info),
    ("nic-static-mac", Severity::Info),
    ("windows-virtio-win", Severity::Info),
];

/// Most vCPUs accepted: the KVM_MAX_VCPUS of x86-64 Linux since 5.15 and the limit
/// of QEMU's q35 machine with x2APIC. VMware's own maximum is 768 (ESXi 8), so more
/// means corrupt or hostile metadata.
pub const MAX_VCPUS: u32 = 4096;

/// Most guest memory accepted, in MiB: 16 TiB, far above any KVM host this runs on
/// (x86-64 KVM guests are limited by the host's physical address bits), and small
/// enough that the value in bytes (MiB << 20) cannot overflow a u64.
pub(crate) const MAX_MEMORY_MIB: u64 = 16 << 20;

/// What in the VM's vCPU count and memory size KVM cannot run, as (concern id,
/// message) pairs; empty when both are usable. Shared by [`assess`] and the KVM
/// target, which refuses such a VM rather than copy the numbers into domain XML.
pub fn machine_size_problems(vm: &Vm) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let vcpus = vm.cpu.count;
    if vcpus == 0 || vcpus > MAX_VCPUS {
        out.push((
            "vcpu-count-unsupported",
            format!("{vcpus} vCPUs: KVM runs 1 to {MAX_VCPUS}"),
        ));
    }
    let mib = vm.memory_mib;
    if mib == 0 || mib > MAX_MEMORY_MIB {
        out.push((
            "memory-size-unsupported",
            format!(
                "memory size {mib} MiB: KVM runs 1 MiB to {MAX_MEMORY_MIB} MiB (16 TiB){}",
                if mib == 0 {
                    "; 0 means the source gave none"
                } else {
                    ""
                }
            ),
        ));
    }
    out
}

fn severity(id: &str) -> Severity {
    CONCERNS
        .iter()
        .find(|(i, _)| *i == id)
        .map(|(_, s)| *s)
        .unwrap_or(Severity::Warning)
}

/// A concern of id `id` (one of [`CONCERNS`], whose severity it takes): for the stages
/// after pre-flight that find one (the KVM target's host-dependent tuning).
pub fn concern(id: &str, subject: Option<String>, message: String) -> Concern {
    Concern {
        id: id.to_string(),
        severity: severity(id),
        subject,
        message,
    }
}

fn add(vm: &mut Vm, id: &str, subject: Option<String>, message: String) {
    vm.concerns.push(concern(id, subject, message));
}

/// Whether a VMware guest id names a Windows older than 7 / Server 2008 R2. VMware's ids
/// for Windows 7 and later all start with `windows` (`windows7-64`, `windows2019srv-64`,
/// `windows9_64Guest`); the older ones with `win` or `longhorn` (`winXPPro`,
/// `winNetStandard` = 2003, `longhorn` / `winLonghorn` = 2008, `winVista`, `winNT`).
/// Without an id the guest's own inspection decides (the injector refuses < 6.1).
fn windows_before_7(id: Option<&str>) -> bool {
    id.is_some_and(|id| {
        let id = id.to_ascii_lowercase();
        !id.starts_with("windows") && (id.starts_with("win") || id.starts_with("longhorn"))
    })
}

/// The VMware tuning of `vm` no KVM target carries: a memory reservation of less
/// than all of memory (KVM has no partial reservation). Everything else is mapped
/// onto the destination host by the KVM target, which raises its own concerns
/// (`tuning-host-too-small`, `hugepages-unavailable`) when that host cannot take it.
fn tuning_message(vm: &Vm) -> Option<String> {
    let t = &vm.tuning;
    match t.memory_reservation_mib {
        Some(mib) if !t.memory_pinned && mib < vm.memory_mib => Some(format!(
            "a memory reservation of {mib} of {} MiB (sched.mem.min): KVM has no partial \
             reservation; only a reservation of all memory becomes hugepages",
            vm.memory_mib
        )),
        _ => None,
    }
}

/// Adds every concern about `vm` (keeping those its reader already added), then sorts
/// them most severe first. Calling it twice does not duplicate anything.
pub fn assess(vm: &mut Vm) {
    let mut found: Vec<(&str, Option<String>, String)> = Vec::new();
    let mut push =
        |id: &'static str, subject: Option<String>, msg: String| found.push((id, subject, msg));

    for (id, message) in machine_size_problems(vm) {
        push(id, None, message);
    }
    for d in &vm.disks {
        let s = Some(d.id.clone());
        match &d.location {
            DiskLocation::Missing { reference } if reference.is_empty() => {
                push("disk-missing", s.clone(), "disk has no file name".into())
            }
            DiskLocation::Missing { reference } => push(
                "disk-missing",
                s.clone(),
                format!("disk file {reference:?} does not exist"),
            ),
            DiskLocation::Refused { reference, reason } => push(
                "disk-path-refused",
                s.clone(),
                format!("disk file {reference:?} refused ({reason}); copy it beside the VM file"),
            ),
            _ => {}
        }
        if let Some(kind) = d.rdm {
            push(
                "disk-rdm",
                s.clone(),
                format!(
                    "raw device mapping ({}): the LUN is not a file and is not copied",
                    match kind {
                        RdmKind::Virtual => "virtual mode",
                        RdmKind::Physical => "physical mode",
                        RdmKind::RawDisk => "raw disk",
                    }
                ),
            );
        } else if matches!(d.location, DiskLocation::HostDevice { .. }) {
            push(
                "disk-rdm",
                s.clone(),
                "disk is a raw host device: not copied".into(),
            );
        }
        let unreadable = vm
            .concerns
            .iter()
            .any(|c| c.id == "disk-unreadable" && c.subject == s);
        match d.capacity {
            Some(0) => push(
                "disk-zero-capacity",
                s.clone(),
                "disk capacity is 0 bytes".into(),
            ),
            None if d.location.is_readable() && !unreadable => push(
                "disk-capacity-unknown",
                s.clone(),
                "disk capacity could not be determined".into(),
            ),
            _ => {}
        }
        if d.sharing == Sharing::MultiWriter {
            push(
                "disk-shared",
                s.clone(),
                "multi-writer disk shared with other VMs (clustering)".into(),
            );
        }
        if d.mode.is_independent() {
            push(
                "disk-independent",
                s.clone(),
                format!("{} disk: not covered by snapshots or CBT", d.mode.as_str()),
            );
        }
    }
    let deltas = vm
        .disks
        .iter()
        .filter(|d| !d.parents.is_empty() || is_delta_name(&d.location))
        .count();
    if !vm.snapshots.is_empty() || deltas > 0 {
        push(
            "snapshots-present",
            None,
            format!(
                "{} snapshot(s), {deltas} disk(s) on a delta: the chain is flattened to the current state",
                vm.snapshots.len()
            ),
        );
    }
    for c in &vm.controllers {
        let subj = Some(format!("{:?}{}", c.bus, c.index).to_ascii_lowercase());
        if c.model == ControllerModel::Unknown {
            push(
                "controller-unknown",
                subj.clone(),
                format!(
                    "unknown controller model {:?}",
                    c.raw_model.as_deref().unwrap_or("")
                ),
            );
        }
        if c.bus == BusKind::Nvme {
            push(
                "nvme-controller",
                subj.clone(),
                "NVMe controller: the guest must boot from virtio after conversion".into(),
            );
        }
        if let Some(sb) = &c.shared_bus {
            push(
                "scsi-bus-sharing",
                subj,
                format!("SCSI bus sharing {sb:?} (clustered disks)"),
            );
        }
    }
    for n in &vm.nics {
        let subj = Some(format!("ethernet{}", n.index));
        if n.model == NicModel::Unknown {
            push(
                "nic-unknown-model",
                subj.clone(),
                format!(
                    "unknown NIC model {:?}",
                    n.raw_model.as_deref().unwrap_or("")
                ),
            );
        }
        if n.model == NicModel::Sriov {
            push(
                "sriov",
                subj.clone(),
                "SR-IOV adapter: needs a matching host VF on KVM".into(),
            );
        }
        if n.address_type == AddressType::Static {
            push(
                "nic-static-mac",
                subj,
                format!("static MAC {} is kept", n.mac.as_deref().unwrap_or("?")),
            );
        }
    }
    for p in &vm.pci_passthrough {
        let subj = Some(format!("pciPassthru{}", p.index));
        if p.sriov {
            push(
                "sriov",
                subj,
                "SR-IOV virtual function: needs a matching host VF on KVM".into(),
            );
        } else {
            push(
                "pci-passthrough",
                subj,
                format!(
                    "PCI device {} passed through: tied to the ESXi host",
                    p.id.as_deref().unwrap_or("?")
                ),
            );
        }
    }
    for d in &vm.usb.devices {
        push(
            "usb-device",
            Some(d.clone()),
            "host USB device attached: not carried over".into(),
        );
    }
    if !vm.usb.controllers.is_empty() {
        push(
            "usb-controller",
            None,
            format!("USB controller(s) {}", vm.usb.controllers.join(", ")),
        );
    }
    if vm.tpm {
        push(
            "tpm",
            None,
            "virtual TPM: its secrets (BitLocker, measured boot) are not migrated".into(),
        );
    }
    if vm.firmware.secure_boot {
        push(
            "secure-boot",
            None,
            "UEFI secure boot: the target needs OVMF with secure-boot variables".into(),
        );
    }
    if let Some(m) = tuning_message(vm) {
        push("tuning-not-carried", None, m);
    }
    match vm.fault_tolerance {
        Some(FaultTolerance::Secondary) => push(
            "fault-tolerance-secondary",
            None,
            "the Fault Tolerance secondary of a protected VM (a shadow copy kept in \
             lockstep): migrate its primary instead"
                .into(),
        ),
        Some(_) => push(
            "fault-tolerance",
            None,
            "vSphere Fault Tolerance protects this VM: KVM has no lockstep twin, the \
             migrated VM runs unprotected"
                .into(),
        ),
        None => {}
    }
    for fs in &vm.guest_filesystems {
        if let Some(min) = free_space_minimum(&fs.path) {
            if fs.free < min {
                push(
                    "guest-free-space-low",
                    Some(fs.path.clone()),
                    format!(
                        "{} free of {}: the conversion writes into it (initramfs, drivers, \
                         agent) and needs at least {} MiB",
                        human(fs.free),
                        human(fs.capacity),
                        min >> 20
                    ),
                );
            }
        }
    }
    if vm.cbt {
        push(
            "cbt-enabled",
            None,
            "changed block tracking enabled (usable for warm migration later)".into(),
        );
    }
    for p in &vm.serial_ports {
        push(
            "serial-port",
            Some(format!("serial{}", p.index)),
            format!(
                "serial port backed by {}: not carried over",
                p.backing.as_deref().unwrap_or("?")
            ),
        );
    }
    for p in &vm.parallel_ports {
        push(
            "parallel-port",
            Some(format!("parallel{}", p.index)),
            "parallel port: not carried over".into(),
        );
    }
    for r in &vm.removable {
        if r.backing == RemovableBacking::Passthrough {
            // `deviceType = "scsi-passthru"`: any host SCSI device, most often a tape
            // drive or a licence dongle, not a CD-ROM.
            push(
                "scsi-passthrough",
                r.slot.map(|s| s.to_string()),
                "a generic SCSI device of the ESXi host is passed through (tape, \
                 dongle…): not carried; on KVM pass the destination host's device with \
                 <hostdev type='scsi'>"
                    .into(),
            );
        } else if r.backing == RemovableBacking::HostDevice {
            push(
                "cdrom-host-device",
                r.slot.map(|s| s.to_string()),
                format!(
                    "{} uses a host device: dropped",
                    if r.kind == RemovableKind::Floppy {
                        "floppy"
                    } else {
                        "CD-ROM"
                    }
                ),
            );
        }
    }
    match vm.guest_os.family {
        OsFamily::Windows if windows_before_7(vm.guest_os.id.as_deref()) => push(
            "guest-os-unsupported",
            None,
            format!(
                "{} guest: Windows older than 7 / Server 2008 R2 is not converted (virtio-win \
                 has no maintained drivers for it)",
                vm.guest_os.id.as_deref().unwrap_or("Windows")
            ),
        ),
        OsFamily::Windows => push(
            "windows-virtio-win",
            None,
            format!(
                "{} guest: its conversion needs the virtio-win drivers (--virtio-win DIR|ISO \
                 or $VIRTIO_WIN)",
                vm.guest_os.id.as_deref().unwrap_or("Windows")
            ),
        ),
        OsFamily::Other => push(
            "guest-os-unknown",
            None,
            format!(
                "guest OS {:?} is not one the injector knows",
                vm.guest_os
                    .id
                    .as_deref()
                    .or(vm.guest_os.description.as_deref())
                    .unwrap_or("unset")
            ),
        ),
        OsFamily::Linux => {}
    }
    match vm.source.manifest {
        Some(ManifestStatus::Absent) => push(
            "manifest-absent",
            None,
            "no manifest: package integrity not checked".into(),
        ),
        Some(ManifestStatus::Skipped) => push(
            "manifest-skipped",
            None,
            "manifest verification turned off".into(),
        ),
        _ => {}
    }
    for (id, subject, message) in found {
        if !vm
            .concerns
            .iter()
            .any(|c| c.id == id && c.subject == subject)
        {
            add(vm, id, subject, message);
        }
    }
    vm.concerns
        .sort_by(|a, b| a.severity.cmp(&b.severity).then_with(|| a.id.cmp(&b.id)));
}

/// The free space a guest filesystem needs for the injector's edits, by mount
/// point: virt-v2v's minimums (100 MiB on `/` and `C:`, 50 MiB on `/boot`), which
/// Forklift checks as well; other filesystems are not written to.
fn free_space_minimum(path: &str) -> Option<u64> {
    const MIB: u64 = 1 << 20;
    let p = path.trim_end_matches(['/', '\\']);
    match p {
        "" => Some(100 * MIB),
        "/boot" => Some(50 * MIB),
        _ if p.eq_ignore_ascii_case("c:") => Some(100 * MIB),
        _ => None,
    }
}

/// `12.5 MiB`: a size for a concern's message.
fn human(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1 << 20) as f64)
}

/// The longest libvirt domain name v2k gives.
const DOMAIN_NAME_CHARS: usize = 64;

/// The libvirt domain (and file) name a VM called `name` gets: anything but
/// `[A-Za-z0-9._-]` replaced by `_`, at most 64 characters, never starting with `.`
/// or `-`. The one rule: the KVM target names its domain with it, and
/// [`assess_together`] finds the VMs it would give one name.
pub fn domain_name(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(DOMAIN_NAME_CHARS)
        .collect();
    if s.is_empty() || s.starts_with(['.', '-']) {
        format!("v2k-{s}")
    } else {
        s
    }
}

/// Where a disk's bytes live, as a key two VMs' disks can share: a local file, or a
/// datastore path; `None` for what is not one file (an OVA member is the package's
/// own copy).
fn disk_file_key(l: &DiskLocation) -> Option<String> {
    match l {
        DiskLocation::File { path, .. } => Some(path.display().to_string()),
        DiskLocation::Datastore {
            datacenter,
            datastore,
            path,
            ..
        } => Some(format!("{datacenter}/[{datastore}] {path}")),
        _ => None,
    }
}

/// Which of [`assess_together`]'s checks apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Together {
    /// Both: the VMs' domains will meet (one `v2k inspect`, a plan that delivers
    /// every VM to one destination).
    All,
    /// Only the shared disk files: the VMs' domains never meet (a plan without a
    /// destination defines no domain; validation domains have unique names).
    DisksOnly,
}

/// Adds the concerns only VMs seen together show (one `v2k inspect` of several
/// sources, one wave plan's check): names the KVM target would make one domain
/// name (`domain-name-collision`, with [`Together::All`]), and one disk file in two
/// VMs without multi-writer on both (`disk-file-shared`). Calling it twice adds
/// nothing twice.
pub fn assess_together(vms: &mut [Vm], which: Together) {
    let mut found: Vec<(usize, &'static str, Option<String>, String)> = Vec::new();
    let names: Vec<String> = vms.iter().map(|v| domain_name(&v.name)).collect();
    for (i, n) in names.iter().enumerate().filter(|_| which == Together::All) {
        let others: Vec<String> = (0..vms.len())
            .filter(|&j| j != i && names[j] == *n)
            .map(|j| format!("{:?}", vms[j].name))
            .collect();
        if !others.is_empty() {
            found.push((
                i,
                "domain-name-collision",
                None,
                format!(
                    "VM {:?} and {} all become libvirt domain {n:?}: one would replace                      the other on the destination; rename them apart on VMware first",
                    vms[i].name,
                    others.join(", ")
                ),
            ));
        }
    }
    let mut by_file: std::collections::BTreeMap<String, Vec<(usize, usize)>> = Default::default();
    for (i, vm) in vms.iter().enumerate() {
        for (k, d) in vm.disks.iter().enumerate() {
            if let Some(key) = disk_file_key(&d.location) {
                by_file.entry(key).or_default().push((i, k));
            }
        }
    }
    for (file, users) in &by_file {
        for &(i, k) in users {
            let d = &vms[i].disks[k];
            let others: Vec<String> = users
                .iter()
                .filter(|&&(j, _)| j != i)
                .map(|&(j, l)| format!("{} of VM {:?}", vms[j].disks[l].id, vms[j].name))
                .collect();
            let all_multi = users
                .iter()
                .all(|&(j, l)| vms[j].disks[l].sharing == Sharing::MultiWriter);
            if !others.is_empty() && !all_multi {
                found.push((
                    i,
                    "disk-file-shared",
                    Some(d.id.clone()),
                    format!(
                        "disk file {file} is also {} without multi-writer on both: each \
                         migrated VM gets its own copy, and they stop sharing its data",
                        others.join(", ")
                    ),
                ));
            }
        }
    }
    for (i, id, subject, message) in found {
        let vm = &mut vms[i];
        if !vm
            .concerns
            .iter()
            .any(|c| c.id == id && c.subject == subject)
        {
            add(vm, id, subject, message);
        }
        vm.concerns
            .sort_by(|a, b| a.severity.cmp(&b.severity).then_with(|| a.id.cmp(&b.id)));
    }
}

/// `name-000001.vmdk`: the name VMware gives a snapshot delta, so a delta is seen even
/// when its descriptor could not be read, or its file is missing (the VM still has
/// snapshots, and the user must know the chain is what is missing).
fn is_delta_name(l: &DiskLocation) -> bool {
    let path = match l {
        DiskLocation::File { path, .. } => path.as_path(),
        DiskLocation::Missing { reference } => std::path::Path::new(reference),
        _ => return false,
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.strip_suffix(".vmdk")
        .and_then(|stem| stem.rsplit_once('-'))
        .is_some_and(|(_, n)| n.len() == 6 && n.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm() -> Vm {
        let mut vm = Vm::empty(SourceKind::Vmx, "/x/a.vmx".into());
        vm.guest_os.family = OsFamily::Linux;
        vm.cpu.count = 1;
        vm.memory_mib = 1024;
        vm
    }

    fn disk(location: DiskLocation, capacity: Option<u64>) -> Disk {
        Disk {
            id: "scsi0:0".into(),
            slot: None,
            capacity,
            populated_size: None,
            location,
            format: None,
            mode: DiskMode::Persistent,
            sharing: Sharing::None,
            rdm: None,
            parents: vec![],
            uuid: None,
        }
    }

    fn ids(vm: &Vm) -> Vec<&str> {
        vm.concerns.iter().map(|c| c.id.as_str()).collect()
    }

    #[test]
    fn a_plain_linux_vm_has_no_concerns() {
        let mut v = vm();
        v.disks.push(disk(
            DiskLocation::File {
                path: "/x/a.vmdk".into(),
                compression: None,
            },
            Some(1 << 30),
        ));
        assess(&mut v);
        assert!(v.concerns.is_empty(), "{:?}", v.concerns);
        assert!(!v.has_critical());
    }

    #[test]
    fn missing_and_zero_capacity_disks_are_critical() {
        let mut v = vm();
        v.disks.push(disk(
            DiskLocation::Missing {
                reference: "gone.vmdk".into(),
            },
            None,
        ));
        let mut z = disk(
            DiskLocation::File {
                path: "/x/z.vmdk".into(),
                compression: None,
            },
            Some(0),
        );
        z.id = "scsi0:1".into();
        v.disks.push(z);
        assess(&mut v);
        assert_eq!(ids(&v), vec!["disk-missing", "disk-zero-capacity"]);
        assert!(v.has_critical());
    }

    #[test]
    fn a_missing_snapshot_delta_also_says_the_vm_has_snapshots() {
        let mut v = vm();
        v.disks.push(disk(
            DiskLocation::Missing {
                reference: "a-000002.vmdk".into(),
            },
            None,
        ));
        assess(&mut v);
        assert_eq!(ids(&v), vec!["disk-missing", "snapshots-present"]);
        let c = v.concerns.iter().find(|c| c.id == "snapshots-present");
        assert!(
            c.is_some_and(|c| c.message.contains("1 disk(s) on a delta")),
            "{:?}",
            v.concerns
        );
    }

    #[test]
    fn windows_7_and_later_convert_with_drivers_older_windows_is_critical() {
        for (id, want, sev) in [
            ("windows2019srv-64", "windows-virtio-win", Severity::Info),
            ("windows7srv-64", "windows-virtio-win", Severity::Info),
            ("windows9_64Guest", "windows-virtio-win", Severity::Info),
            ("winXPPro", "guest-os-unsupported", Severity::Critical),
            ("winNetStandard", "guest-os-unsupported", Severity::Critical),
            ("longhorn-64", "guest-os-unsupported", Severity::Critical),
            ("winNT", "guest-os-unsupported", Severity::Critical),
        ] {
            let mut v = vm();
            v.guest_os.family = OsFamily::Windows;
            v.guest_os.id = Some(id.into());
            assess(&mut v);
            assert_eq!(v.concerns[0].id, want, "{id}");
            assert_eq!(v.concerns[0].severity, sev, "{id}");
        }
    }

    #[test]
    fn sorts_critical_first_and_does_not_duplicate_on_reassessment() {
        let mut v = vm();
        v.cbt = true;
        v.tpm = true;
        v.pci_passthrough.push(PciDevice {
            index: 0,
            id: None,
            sriov: false,
        });
        assess(&mut v);
        assess(&mut v);
        assert_eq!(ids(&v), vec!["pci-passthrough", "tpm", "cbt-enabled"]);
    }

    #[test]
    fn a_scsi_passthrough_device_is_its_own_warning_not_a_cdrom() {
        use crate::model::{BusKind, Removable, RemovableKind, Slot};
        let mut v = vm_with(1, 1024);
        let slot = Slot {
            bus: BusKind::Scsi,
            controller: 0,
            unit: 6,
        };
        v.removable.push(Removable {
            kind: RemovableKind::Cdrom,
            slot: Some(slot),
            backing: RemovableBacking::Passthrough,
            file: Some("/vmfs/devices/genscsi/naa.5000".into()),
            start_connected: true,
        });
        assess(&mut v);
        let c: Vec<(&str, Severity)> = v
            .concerns
            .iter()
            .map(|c| (c.id.as_str(), c.severity))
            .collect();
        assert_eq!(c, [("scsi-passthrough", Severity::Warning)]);
    }

    #[test]
    fn only_the_tuning_no_kvm_target_carries_is_named() {
        let mut v = vm_with(4, 4096);
        // Affinity, hot-add and a full reservation are the KVM target's to map.
        v.tuning.cpu_affinity = vec![0, 1];
        v.tuning.memory_hot_add = true;
        v.tuning.memory_reservation_mib = Some(4096);
        assess(&mut v);
        assert!(!ids(&v).contains(&"tuning-not-carried"), "{:?}", v.concerns);
        // A partial reservation has no KVM answer.
        v.tuning.memory_reservation_mib = Some(1024);
        assess(&mut v);
        let c = v
            .concerns
            .iter()
            .find(|c| c.id == "tuning-not-carried")
            .unwrap();
        assert_eq!(c.severity, Severity::Warning);
        assert!(
            c.message.contains("1024 of 4096 MiB (sched.mem.min)"),
            "{}",
            c.message
        );
    }

    #[test]
    fn vms_seen_together_with_one_domain_name_or_one_disk_file_are_named() {
        let file = |p: &str| DiskLocation::File {
            path: p.into(),
            compression: None,
        };
        let mut a = vm_with(1, 512);
        a.name = "web 01".into();
        a.disks.push(disk(file("/vms/shared.vmdk"), Some(1)));
        a.disks.push(disk(file("/vms/a.vmdk"), Some(1)));
        let mut b = vm_with(1, 512);
        b.name = "web/01".into();
        let mut d = disk(file("/vms/shared.vmdk"), Some(1));
        d.id = "scsi0:3".into();
        b.disks.push(d);
        let mut c = vm_with(1, 512);
        c.name = "db".into();
        let mut vms = vec![a, b, c];
        let mut alone = vms.clone();
        assess_together(&mut alone, Together::DisksOnly);
        assert_eq!(ids(&alone[0]), ["disk-file-shared"]);
        assess_together(&mut vms, Together::All);
        assess_together(&mut vms, Together::All);
        assert_eq!(ids(&vms[0]), ["domain-name-collision", "disk-file-shared"]);
        assert_eq!(ids(&vms[1]), ["domain-name-collision", "disk-file-shared"]);
        assert!(vms[2].concerns.is_empty());
        let m = &vms[0].concerns[0].message;
        assert!(
            m.contains("\"web 01\" and \"web/01\"") && m.contains("\"web_01\""),
            "{m}"
        );
        let m = &vms[0].concerns[1];
        assert_eq!(m.subject.as_deref(), Some("scsi0:0"));
        assert!(
            m.message.contains("scsi0:3 of VM \"web/01\""),
            "{}",
            m.message
        );
        // Multi-writer on both: a cluster disk, `disk-shared`'s business, not this.
        for v in &mut vms {
            v.concerns.clear();
            for d in &mut v.disks {
                d.sharing = Sharing::MultiWriter;
            }
        }
        vms[1].name = "web02".into();
        assess_together(&mut vms, Together::All);
        assert!(
            vms.iter().all(|v| v.concerns.is_empty()),
            "{:?}",
            vms[0].concerns
        );
    }

    #[test]
    fn fault_tolerance_and_low_guest_free_space_are_named() {
        let mut v = vm_with(1, 512);
        v.fault_tolerance = Some(FaultTolerance::Secondary);
        assess(&mut v);
        assert_eq!(ids(&v), ["fault-tolerance-secondary"]);
        assert!(v.has_critical());
        let mut v = vm_with(1, 512);
        v.fault_tolerance = Some(FaultTolerance::Primary);
        let fs = |path: &str, free: u64| GuestFilesystem {
            path: path.into(),
            capacity: 10 << 30,
            free,
        };
        v.guest_filesystems = vec![
            fs("/", 99 << 20),
            fs("/boot/", 60 << 20),
            fs("/data", 0),
            fs("C:\\", 10 << 20),
        ];
        assess(&mut v);
        assert_eq!(
            ids(&v),
            [
                "fault-tolerance",
                "guest-free-space-low",
                "guest-free-space-low"
            ]
        );
        let low: Vec<_> = v
            .concerns
            .iter()
            .filter(|c| c.id == "guest-free-space-low")
            .map(|c| c.subject.as_deref().unwrap_or_default())
            .collect();
        assert_eq!(low, ["/", "C:\\"]);
        assert!(
            v.concerns[1].message.contains("99.0 MiB free"),
            "{}",
            v.concerns[1].message
        );
    }

    #[test]
    fn domain_names_keep_only_safe_characters() {
        assert_eq!(domain_name("web 01/x"), "web_01_x");
        assert_eq!(domain_name("-x"), "v2k--x");
        assert_eq!(domain_name(""), "v2k-");
        assert_eq!(domain_name(&"a".repeat(100)).len(), 64);
    }

    fn vm_with(vcpus: u32, mib: u64) -> Vm {
        let mut v = vm();
        v.cpu.count = vcpus;
        v.memory_mib = mib;
        v
    }

    #[test]
    fn vcpus_and_memory_kvm_cannot_run_are_critical() {
        for (vcpus, mib, want) in [
            (0, 1024, vec!["vcpu-count-unsupported"]),
            (MAX_VCPUS + 1, 1024, vec!["vcpu-count-unsupported"]),
            (100_000, 1024, vec!["vcpu-count-unsupported"]),
            (2, 0, vec!["memory-size-unsupported"]),
            (2, MAX_MEMORY_MIB + 1, vec!["memory-size-unsupported"]),
            // Overflows when converted to bytes.
            (2, u64::MAX, vec!["memory-size-unsupported"]),
            (
                u32::MAX,
                u64::MAX >> 20,
                vec!["memory-size-unsupported", "vcpu-count-unsupported"],
            ),
        ] {
            let mut v = vm_with(vcpus, mib);
            assess(&mut v);
            assert_eq!(ids(&v), want, "{vcpus} vCPUs, {mib} MiB");
            assert!(v.has_critical());
        }
    }

    #[test]
    fn the_limits_themselves_are_accepted() {
        for (vcpus, mib) in [(1, 1), (MAX_VCPUS, MAX_MEMORY_MIB), (2, 2048)] {
            let mut v = vm_with(vcpus, mib);
            assess(&mut v);
            assert!(v.concerns.is_empty(), "{vcpus} {mib}: {:?}", v.concerns);
        }
        // 16 TiB in bytes still fits a u64.
        assert!(MAX_MEMORY_MIB.checked_mul(1 << 20).is_some());
    }

    #[test]
    fn every_concern_id_is_documented_in_docs_inspect_md_with_its_severity() {
        let doc = include_str!("../../docs/inspect.md");
        for (id, sev) in CONCERNS {
            let row = format!("| `{id}` | {} |", format!("{sev:?}").to_ascii_lowercase());
            assert!(doc.contains(&row), "docs/inspect.md lacks {row}");
        }
    }

    #[test]
    fn every_raised_id_is_in_the_documented_table() {
        let mut v = vm();
        v.guest_os.family = OsFamily::Other;
        v.cbt = true;
        v.tpm = true;
        v.firmware.secure_boot = true;
        v.usb.controllers.push("xhci".into());
        v.usb.devices.push("usb:2".into());
        v.source.manifest = Some(ManifestStatus::Absent);
        let mut d = disk(
            DiskLocation::HostDevice {
                path: "/dev/sdb".into(),
            },
            None,
        );
        d.sharing = Sharing::MultiWriter;
        d.mode = DiskMode::IndependentPersistent;
        v.disks.push(d);
        assess(&mut v);
        for c in &v.concerns {
            assert!(
                CONCERNS.iter().any(|(i, s)| *i == c.id && *s == c.severity),
                "{}",
                c.id
            );
        }
    }
}
