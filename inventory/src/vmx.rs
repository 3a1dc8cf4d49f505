//! VMX (and VMSD) files: the `key = "value"` dictionary VMware Workstation, Fusion,
//! GSX and ESXi write, and its mapping to the VM model.
//!
//! Grammar as VMware reads it: one entry per line, `#` comments, keys compared without
//! case, the last of duplicate keys wins, values in double quotes with `|XX` hex
//! escapes (`|22` is a quote, `|0A` a newline), and an optional `.encoding` entry
//! naming the character set of the whole file. A device with `present = "FALSE"` does
//! not exist. Disk files are resolved inside the VMX's directory by [`crate::paths`];
//! a name that cannot be resolved safely becomes a critical concern, not a read.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::model::*;
use crate::paths::{self, Resolved};
use crate::probe::DiskProbe;

/// A VMX larger than this is refused before it is read. Real ones are 2–20 KiB; the
/// largest seen (long `guestinfo.*` blobs) are a few hundred KiB.
pub(crate) const MAX_VMX_BYTES: u64 = 4 << 20;

/// Highest controller index read per bus kind (ESXi has 4 SCSI, 4 SATA, 4 NVMe, 2 IDE).
const MAX_CONTROLLERS: u32 = 4;

/// A parsed VMX dictionary.
#[derive(Debug, Default, Clone)]
pub struct Vmx {
    /// Lowercased key to value; last duplicate wins.
    entries: BTreeMap<String, String>,
    /// Whether some bytes were not valid in the declared encoding and were replaced.
    pub lossy: bool,
}

/// Why [`Vmx::parse`] refused a file: the first bad line (1-based) and what is
/// wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {problem}")]
pub struct VmxError {
    pub line: usize,
    pub problem: LineProblem,
}

/// What is wrong with one VMX line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineProblem {
    #[error("expected key = \"value\"")]
    NotKeyValue,
    #[error("bad key {key:?}")]
    BadKey { key: String },
    #[error("unterminated quoted value")]
    UnterminatedValue,
}

impl Vmx {
    /// Parses VMX text. Fails on a line that is neither a comment nor `key = value`.
    pub fn parse(bytes: &[u8]) -> std::result::Result<Vmx, VmxError> {
        let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
        let (text, lossy) = decode(bytes);
        let mut vmx = Vmx {
            entries: BTreeMap::new(),
            lossy,
        };
        for (no, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = |problem| VmxError {
                line: no + 1,
                problem,
            };
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| at(LineProblem::NotKeyValue))?;
            let key = key.trim();
            if key.is_empty() || key.contains(char::is_whitespace) {
                return Err(at(LineProblem::BadKey {
                    key: key.to_string(),
                }));
            }
            let value =
                parse_value(value.trim()).ok_or_else(|| at(LineProblem::UnterminatedValue))?;
            vmx.entries.insert(key.to_ascii_lowercase(), value);
        }
        Ok(vmx)
    }

    /// Case-insensitive lookup.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .get(&key.to_ascii_lowercase())
            .map(String::as_str)
    }

    fn bool(&self, key: &str) -> Option<bool> {
        self.get(key).map(truthy)
    }

    fn is_true(&self, key: &str) -> bool {
        self.bool(key).unwrap_or(false)
    }

    fn num<T: std::str::FromStr>(&self, key: &str) -> Option<T> {
        self.get(key).and_then(|v| v.trim().parse().ok())
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }
}

fn truthy(v: &str) -> bool {
    matches!(
        v.trim().to_ascii_lowercase().as_str(),
        "true" | "yes" | "1" | "on"
    )
}

/// Decodes the file as UTF-8, or as the Latin-1 family when `.encoding` says
/// windows-1252 / ISO-8859-1; anything else invalid is replaced (and flagged).
fn decode(bytes: &[u8]) -> (String, bool) {
    if let Ok(s) = std::str::from_utf8(bytes) {
        return (s.to_string(), false);
    }
    let declared = declared_encoding(bytes)
        .unwrap_or_default()
        .to_ascii_lowercase();
    if matches!(
        declared.as_str(),
        "windows-1252" | "iso-8859-1" | "latin1" | "iso-8859-15"
    ) {
        // Latin-1 maps byte to code point; windows-1252's 0x80-0x9F punctuation is
        // rare in VMX files and only affects display names.
        return (bytes.iter().map(|&b| char::from(b)).collect(), false);
    }
    (String::from_utf8_lossy(bytes).into_owned(), true)
}

fn declared_encoding(bytes: &[u8]) -> Option<String> {
    for line in bytes.split(|&b| b == b'\n') {
        let line = String::from_utf8_lossy(line);
        if let Some((k, v)) = line.split_once('=') {
            if k.trim().eq_ignore_ascii_case(".encoding") {
                return parse_value(v.trim());
            }
        }
    }
    None
}

/// A quoted value with `|XX` escapes, or a bare value up to a `#` comment.
fn parse_value(v: &str) -> Option<String> {
    let raw = if let Some(rest) = v.strip_prefix('"') {
        let end = rest.find('"')?;
        &rest[..end]
    } else {
        v.split('#').next().unwrap_or("").trim()
    };
    if !raw.contains('|') {
        return Some(raw.to_string());
    }
    let b = raw.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'|' {
            if let Some(byte) = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

use crate::error::one_line;

/// Reads a VMX file from disk, size-limited.
pub fn read_file(path: &Path) -> Result<Vmx> {
    let bytes = crate::read_limited(path, MAX_VMX_BYTES, "VMX file")?;
    Vmx::parse(&bytes).map_err(|e| Error::Vmx {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Loads a VMX into the model. `path` must be absolute.
pub fn load(path: &Path, probe: &dyn DiskProbe) -> Result<Vm> {
    let vmx = read_file(path)?;
    let dir = path.parent().unwrap_or(Path::new("/"));
    let mut vm = to_vm(&vmx, path, dir, probe);
    read_snapshots(&mut vm, path, dir);
    Ok(vm)
}

/// `56 4d 7f 3a 52 0b 1d 61-3f 8f 2b 4f 88 d3 7a 1c` to canonical UUID form.
fn canonical_uuid(v: &str) -> Option<String> {
    let hex: String = v.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    let junk = v
        .chars()
        .any(|c| !(c.is_ascii_hexdigit() || c == ' ' || c == '-'));
    if hex.len() != 32 || junk {
        return None;
    }
    let h = hex.to_ascii_lowercase();
    Some(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

/// `00:50:56:AB:CD:EF` to lowercase; `None` if not six hex pairs.
pub(crate) fn canonical_mac(v: &str) -> Option<String> {
    let v = v.trim().replace('-', ":").to_ascii_lowercase();
    let parts: Vec<&str> = v.split(':').collect();
    (parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit())))
    .then_some(v)
}

fn bus_name(bus: BusKind) -> &'static str {
    match bus {
        BusKind::Ide => "ide",
        BusKind::Scsi => "scsi",
        BusKind::Sata => "sata",
        BusKind::Nvme => "nvme",
    }
}

/// `scsi0:1.present` to (Scsi, 0, 1).
fn parse_slot_key(key: &str) -> Option<Slot> {
    let stem = key.strip_suffix(".present")?;
    let (ctrl, unit) = stem.split_once(':')?;
    let (bus, idx) = [
        ("scsi", BusKind::Scsi),
        ("sata", BusKind::Sata),
        ("nvme", BusKind::Nvme),
        ("ide", BusKind::Ide),
    ]
    .iter()
    .find_map(|(p, b)| ctrl.strip_prefix(p).map(|i| (*b, i)))?;
    Some(Slot {
        bus,
        controller: idx.parse().ok()?,
        unit: unit.parse().ok()?,
    })
}

/// `ethernet3.present` with prefix `ethernet` to 3.
fn indexed(key: &str, prefix: &str, suffix: &str) -> Option<u32> {
    key.strip_prefix(prefix)?.strip_suffix(suffix)?.parse().ok()
}

fn controller_model(raw: Option<&str>, bus: BusKind) -> (ControllerModel, Option<String>) {
    match bus {
        BusKind::Ide => return (ControllerModel::Ide, None),
        BusKind::Sata => return (ControllerModel::Ahci, None),
        BusKind::Nvme => return (ControllerModel::Nvme, None),
        BusKind::Scsi => {}
    }
    // Without virtualDev, VMware uses BusLogic (the historical default).
    let raw = raw.unwrap_or("buslogic");
    let m = match raw.to_ascii_lowercase().as_str() {
        "pvscsi" => ControllerModel::Pvscsi,
        "lsilogic" => ControllerModel::Lsilogic,
        "lsisas1068" => ControllerModel::Lsisas1068,
        "buslogic" => ControllerModel::Buslogic,
        _ => return (ControllerModel::Unknown, Some(raw.to_string())),
    };
    (m, None)
}

pub(crate) fn nic_model(raw: &str) -> NicModel {
    match raw.to_ascii_lowercase().as_str() {
        "vmxnet3" => NicModel::Vmxnet3,
        "vmxnet2" | "vmxnet 2" => NicModel::Vmxnet2,
        "vmxnet" => NicModel::Vmxnet,
        "e1000" => NicModel::E1000,
        "e1000e" => NicModel::E1000e,
        "vlance" | "pcnet32" => NicModel::Vlance,
        "sriov" => NicModel::Sriov,
        _ => NicModel::Unknown,
    }
}

fn disk_mode(raw: Option<&str>) -> DiskMode {
    match raw.map(str::to_ascii_lowercase).as_deref() {
        Some("independent-persistent") => DiskMode::IndependentPersistent,
        Some("independent-nonpersistent") => DiskMode::IndependentNonpersistent,
        Some("nonpersistent") => DiskMode::Nonpersistent,
        Some("undoable") => DiskMode::Undoable,
        _ => DiskMode::Persistent,
    }
}

/// `raw` as a number; when it is not one (text, a sign, more digits than the type
/// holds) a critical concern quoting it, and 0. Pre-flight would flag the 0 too, but
/// would describe it as 0 rather than as what the file says.
fn number_or_concern<T: std::str::FromStr + Default>(
    vm: &mut Vm,
    key: &str,
    raw: &str,
    concern: &str,
) -> T {
    raw.trim().parse().unwrap_or_else(|_| {
        vm.concerns.push(Concern {
            id: concern.into(),
            severity: Severity::Critical,
            subject: None,
            message: format!("{key} {raw:?} is not a number KVM can use"),
        });
        T::default()
    })
}

/// Maps the dictionary to the model. Never fails: what cannot be used becomes a
/// concern (added here for disk resolution, the rest by [`crate::preflight`]).
pub fn to_vm(vmx: &Vmx, path: &Path, dir: &Path, probe: &dyn DiskProbe) -> Vm {
    let mut vm = Vm::empty(SourceKind::Vmx, path.to_path_buf());
    vm.name = vmx
        .get("displayName")
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| {
            path.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
    vm.bios_uuid = vmx.get("uuid.bios").and_then(canonical_uuid);
    if let Some(id) = vmx.get("guestOS") {
        vm.guest_os.family = os_family(id);
        vm.guest_os.id = Some(id.to_string());
    }
    if vmx
        .get("firmware")
        .is_some_and(|f| f.eq_ignore_ascii_case("efi"))
    {
        vm.firmware.kind = FirmwareKind::Efi;
    }
    vm.firmware.secure_boot = vmx.is_true("uefi.secureBoot.enabled");
    // An absent numvcpus is VMware's default of one; a present one is kept as
    // written (0 or past MAX_VCPUS is a critical concern, never silently 1).
    vm.cpu.count = match vmx.get("numvcpus") {
        None => 1,
        Some(raw) => number_or_concern(&mut vm, "numvcpus", raw, "vcpu-count-unsupported"),
    };
    vm.cpu.cores_per_socket = vmx
        .num("cpuid.coresPerSocket")
        .filter(|&n| n > 0)
        .unwrap_or(1);
    // Absent, it stays 0, which pre-flight reports (the target needs a size).
    vm.memory_mib = match vmx.get("memsize") {
        None => 0,
        Some(raw) => number_or_concern(&mut vm, "memsize", raw, "memory-size-unsupported"),
    };
    vm.hardware_version = vmx.num("virtualHW.version");
    vm.tpm = vmx.is_true("vtpm.present");
    vm.cbt = vmx.is_true("ctkEnabled");
    vm.disk_enable_uuid = vmx.is_true("disk.EnableUUID");
    read_tuning(vmx, &mut vm);
    // Fault Tolerance leaves `ft.*` keys (FT's checkpointing settings are `ftcpt.*`,
    // present in ordinary VMs too, and do not count).
    // Keys are kept lowercase.
    if vmx.keys().any(|k| k.starts_with("ft.")) {
        vm.fault_tolerance = Some(crate::model::FaultTolerance::Configured);
    }
    if vmx.lossy {
        vm.concerns.push(Concern {
            id: "vmx-invalid-text".into(),
            severity: Severity::Warning,
            subject: None,
            message: "the VMX has bytes invalid in its declared encoding; names may be garbled"
                .into(),
        });
    }

    // Controllers. IDE controllers always exist; the others only when present.
    let mut ctrl_present = std::collections::BTreeSet::new();
    for bus in [BusKind::Scsi, BusKind::Sata, BusKind::Nvme] {
        for i in 0..MAX_CONTROLLERS {
            let p = format!("{}{i}", bus_name(bus));
            if vmx.is_true(&format!("{p}.present")) {
                let (model, raw_model) = controller_model(vmx.get(&format!("{p}.virtualDev")), bus);
                let shared_bus = vmx
                    .get(&format!("{p}.sharedBus"))
                    .filter(|s| !s.eq_ignore_ascii_case("none"))
                    .map(str::to_string);
                vm.controllers.push(Controller {
                    bus,
                    index: i,
                    model,
                    raw_model,
                    shared_bus,
                });
                ctrl_present.insert((bus, i));
            }
        }
    }

    // Devices on controllers.
    let mut slots: Vec<Slot> = vmx
        .keys()
        .filter_map(parse_slot_key)
        .filter(|s| vmx.is_true(&format!("{s}.present")))
        .collect();
    slots.sort();
    slots.dedup();
    for slot in slots {
        if slot.bus == BusKind::Ide {
            if slot.controller >= 2 {
                continue;
            }
            if ctrl_present.insert((BusKind::Ide, slot.controller)) {
                vm.controllers.push(Controller {
                    bus: BusKind::Ide,
                    index: slot.controller,
                    model: ControllerModel::Ide,
                    raw_model: None,
                    shared_bus: None,
                });
            }
        } else if !ctrl_present.contains(&(slot.bus, slot.controller)) {
            // VMware ignores a device whose controller is absent.
            continue;
        }
        read_slot(vmx, slot, dir, probe, &mut vm);
    }
    vm.controllers.sort_by_key(|c| (c.bus, c.index));

    // Floppies: only an explicit present = TRUE counts.
    for i in 0..2 {
        let p = format!("floppy{i}");
        if vmx.is_true(&format!("{p}.present")) {
            let ft = vmx
                .get(&format!("{p}.fileType"))
                .unwrap_or("device")
                .to_ascii_lowercase();
            vm.removable.push(Removable {
                kind: RemovableKind::Floppy,
                slot: None,
                backing: if ft == "file" {
                    RemovableBacking::Image
                } else {
                    RemovableBacking::HostDevice
                },
                file: vmx
                    .get(&format!("{p}.fileName"))
                    .filter(|s| !s.is_empty())
                    .map(str::to_string),
                start_connected: vmx.bool(&format!("{p}.startConnected")).unwrap_or(true),
            });
        }
    }

    read_nics(vmx, &mut vm);
    read_ports(vmx, &mut vm);

    // USB.
    for (key, name) in [
        ("usb.present", "uhci"),
        ("ehci.present", "ehci"),
        ("usb_xhci.present", "xhci"),
    ] {
        if vmx.is_true(key) {
            vm.usb.controllers.push(name.into());
        }
    }
    let mut usb_dev: Vec<u32> = vmx
        .keys()
        .filter_map(|k| indexed(k, "usb:", ".present"))
        .collect();
    usb_dev.sort_unstable();
    for i in usb_dev {
        let p = format!("usb:{i}");
        let dt = vmx
            .get(&format!("{p}.deviceType"))
            .unwrap_or("")
            .to_ascii_lowercase();
        // The virtual mouse/keyboard and hubs VMware adds itself are not host devices.
        if vmx.is_true(&format!("{p}.present"))
            && !matches!(dt.as_str(), "hid" | "hub" | "mouse" | "keyboard")
        {
            vm.usb.devices.push(
                vmx.get(&format!("{p}.vid"))
                    .map_or_else(|| format!("usb:{i} {dt}"), |v| format!("usb:{i} vid {v}")),
            );
        }
    }

    // PCI passthrough and SR-IOV.
    let mut pci: Vec<u32> = vmx
        .keys()
        .filter_map(|k| indexed(k, "pcipassthru", ".present"))
        .collect();
    pci.sort_unstable();
    for i in pci {
        let p = format!("pciPassthru{i}");
        if vmx.is_true(&format!("{p}.present")) {
            vm.pci_passthrough.push(PciDevice {
                index: i,
                id: vmx.get(&format!("{p}.id")).map(str::to_string),
                sriov: vmx.get(&format!("{p}.pfId")).is_some(),
            });
        }
    }
    vm
}

fn read_slot(vmx: &Vmx, slot: Slot, dir: &Path, probe: &dyn DiskProbe, vm: &mut Vm) {
    let p = slot.to_string();
    let file = vmx.get(&format!("{p}.fileName")).unwrap_or("").to_string();
    let dt = vmx
        .get(&format!("{p}.deviceType"))
        .map(str::to_ascii_lowercase);
    let lower = file.to_ascii_lowercase();
    let kind = match dt.as_deref() {
        Some("cdrom-image") => "cdrom-image",
        Some("cdrom-raw" | "atapi-cdrom") => "cdrom-raw",
        Some("scsi-passthru") => "passthru",
        Some("rawdisk" | "fulldevice" | "partitioneddevice") => "rawdisk",
        Some(_) => "disk",
        None if lower.ends_with(".iso") => "cdrom-image",
        None => "disk",
    };
    let start_connected = vmx.bool(&format!("{p}.startConnected")).unwrap_or(true);
    match kind {
        "cdrom-image" | "cdrom-raw" | "passthru" => {
            vm.removable.push(Removable {
                kind: RemovableKind::Cdrom,
                slot: Some(slot),
                backing: match kind {
                    "cdrom-image" => RemovableBacking::Image,
                    "passthru" => RemovableBacking::Passthrough,
                    _ if file.is_empty() => RemovableBacking::None,
                    _ => RemovableBacking::HostDevice,
                },
                file: (!file.is_empty()).then_some(file),
                start_connected,
            });
        }
        _ => {
            let mut disk = Disk {
                id: p.clone(),
                slot: Some(slot),
                capacity: None,
                populated_size: None,
                location: DiskLocation::Missing {
                    reference: file.clone(),
                },
                format: None,
                mode: disk_mode(vmx.get(&format!("{p}.mode"))),
                sharing: if vmx
                    .get(&format!("{p}.sharing"))
                    .is_some_and(|s| s.eq_ignore_ascii_case("multi-writer"))
                {
                    Sharing::MultiWriter
                } else {
                    Sharing::None
                },
                rdm: (kind == "rawdisk").then_some(RdmKind::RawDisk),
                parents: Vec::new(),
                uuid: None,
            };
            if file.starts_with("/dev/") || (kind == "rawdisk" && !lower.ends_with(".vmdk")) {
                disk.location = DiskLocation::HostDevice { path: file };
                disk.rdm.get_or_insert(RdmKind::RawDisk);
            } else {
                match paths::resolve_in(dir, &file, false) {
                    Ok(Resolved::File(path)) => {
                        match probe.probe(&path) {
                            Ok(f) => {
                                disk.capacity = f.capacity;
                                disk.populated_size = f.allocated_bytes;
                                disk.rdm = match f.create_type.as_deref() {
                                    Some("vmfsRawDeviceMap") => Some(RdmKind::Virtual),
                                    Some("vmfsPassthroughRawDeviceMap") => Some(RdmKind::Physical),
                                    _ => disk.rdm,
                                };
                                disk.format = f.create_type;
                                disk.parents = f.parents;
                                disk.uuid = f.uuid.as_deref().and_then(crate::model::disk_uuid);
                            }
                            Err(why) => vm.concerns.push(Concern {
                                id: "disk-unreadable".into(),
                                severity: Severity::Critical,
                                subject: Some(p.clone()),
                                message: one_line(&why),
                            }),
                        }
                        disk.location = DiskLocation::File {
                            path,
                            compression: None,
                        };
                    }
                    Ok(Resolved::Missing(_)) => {}
                    Err(reason) => {
                        disk.location = DiskLocation::Refused {
                            reference: file,
                            reason,
                        };
                    }
                }
            }
            vm.disks.push(disk);
        }
    }
}

/// Placement and resource tuning ([`crate::model::Tuning`]). A value that does not
/// parse is dropped: pre-flight then has nothing to say about it, as VMware ignores it.
fn read_tuning(vmx: &Vmx, vm: &mut Vm) {
    let list = |key: &str| {
        vmx.get(key)
            .and_then(crate::model::affinity_list)
            .unwrap_or_default()
    };
    vm.tuning = crate::model::Tuning {
        cpu_affinity: list("sched.cpu.affinity"),
        numa_node_affinity: list("numa.nodeAffinity"),
        vnuma_max_vcpus_per_node: vmx.num("numa.vcpu.maxPerVirtualNode").filter(|&n| n > 0),
        cpu_hot_add: vmx.is_true("vcpu.hotadd"),
        memory_hot_add: vmx.is_true("mem.hotadd"),
        memory_reservation_mib: vmx.num("sched.mem.min").filter(|&n| n > 0),
        memory_pinned: vmx.is_true("sched.mem.pin"),
    };
}

fn read_nics(vmx: &Vmx, vm: &mut Vm) {
    let mut idx: Vec<u32> = vmx
        .keys()
        .filter_map(|k| indexed(k, "ethernet", ".present"))
        .collect();
    idx.sort_unstable();
    for i in idx {
        let p = format!("ethernet{i}");
        if !vmx.is_true(&format!("{p}.present")) {
            continue;
        }
        let get = |k: &str| {
            vmx.get(&format!("{p}.{k}"))
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        // Without virtualDev VMware emulates the AMD PCnet (vlance / "flexible").
        let raw = get("virtualDev").unwrap_or_else(|| "vlance".into());
        let model = nic_model(&raw);
        let address_type = match get("addressType")
            .map(|s| s.to_ascii_lowercase())
            .as_deref()
        {
            None | Some("generated") => AddressType::Generated,
            Some("static") => AddressType::Static,
            Some("vpx") => AddressType::Vpx,
            Some(_) => AddressType::Unknown,
        };
        let mac_raw = match address_type {
            AddressType::Static => get("address"),
            _ => get("generatedAddress").or_else(|| get("address")),
        };
        let dvs = (get("dvs.switchId").is_some()
            || get("dvs.portId").is_some()
            || get("dvs.portgroupId").is_some())
        .then(|| DvsPort {
            switch_id: get("dvs.switchId"),
            portgroup_id: get("dvs.portgroupId"),
            port_id: get("dvs.portId"),
        });
        vm.nics.push(Nic {
            index: i,
            model,
            raw_model: (model == NicModel::Unknown).then_some(raw),
            mac: mac_raw.as_deref().and_then(canonical_mac),
            address_type,
            network: get("networkName").or_else(|| get("vnet")),
            connection_type: get("connectionType"),
            dvs,
            start_connected: vmx.bool(&format!("{p}.startConnected")).unwrap_or(true),
        });
    }
}

fn read_ports(vmx: &Vmx, vm: &mut Vm) {
    for (prefix, serial) in [("serial", true), ("parallel", false)] {
        let mut idx: Vec<u32> = vmx
            .keys()
            .filter_map(|k| indexed(k, prefix, ".present"))
            .collect();
        idx.sort_unstable();
        for i in idx {
            let p = format!("{prefix}{i}");
            if !vmx.is_true(&format!("{p}.present")) {
                continue;
            }
            let port = Port {
                index: i,
                backing: vmx.get(&format!("{p}.fileType")).map(str::to_string),
                target: vmx.get(&format!("{p}.fileName")).map(str::to_string),
            };
            if serial {
                vm.serial_ports.push(port);
            } else {
                vm.parallel_ports.push(port);
            }
        }
    }
}

/// Reads `<stem>.vmsd` beside the VMX, if any, for the snapshot list.
fn read_snapshots(vm: &mut Vm, path: &Path, dir: &Path) {
    let Some(stem) = path.file_stem() else { return };
    let name = format!("{}.vmsd", stem.to_string_lossy());
    let file = match paths::resolve_in(dir, &name, false) {
        Ok(Resolved::File(f)) => f,
        _ => return,
    };
    let Ok(vmsd) = read_file(&file) else {
        vm.concerns.push(Concern {
            id: "snapshot-metadata-unreadable".into(),
            severity: Severity::Warning,
            subject: None,
            message: format!("{} could not be read", file.display()),
        });
        return;
    };
    vm.snapshots = snapshots_from_vmsd(&vmsd);
}

/// Snapshot list of a VMSD dictionary.
pub fn snapshots_from_vmsd(vmsd: &Vmx) -> Vec<Snapshot> {
    let current: Option<u32> = vmsd.num("snapshot.current");
    let n: u32 = vmsd.num("snapshot.numSnapshots").unwrap_or(0);
    // A VMSD claims its own count; cap the loop by what the file can hold.
    let n = n.min(vmsd.entries.len() as u32);
    (0..n)
        .map(|i| {
            let uid: Option<u32> = vmsd.num(&format!("snapshot{i}.uid"));
            Snapshot {
                name: vmsd
                    .get(&format!("snapshot{i}.displayName"))
                    .map(str::to_string),
                uid,
                current: uid.is_some() && uid == current,
            }
        })
        .collect()
}

/// The directory a VMX lives in, made absolute without resolving a symlink in the
/// file name itself.
pub(crate) fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::DiskFacts;

    struct FixedProbe(u64);
    impl DiskProbe for FixedProbe {
        fn probe(&self, _: &Path) -> std::result::Result<DiskFacts, crate::ProbeError> {
            Ok(DiskFacts {
                create_type: Some("vmfs".into()),
                capacity: Some(self.0),
                uuid: Some("60 00 C2 93 0f 83 56 40-0b 2c 08 2c ac 6f 35 74".into()),
                ..DiskFacts::default()
            })
        }
    }

    #[test]
    fn keys_are_case_insensitive_and_last_duplicate_wins() {
        let v = Vmx::parse(b"memsize = \"1024\"\nMemSize = \"2048\"\n# c\n\n").unwrap();
        assert_eq!(v.get("MEMSIZE"), Some("2048"));
    }

    #[test]
    fn decodes_pipe_hex_escapes_in_values() {
        let v = Vmx::parse(b"displayName = \"say |22hi|22 |7C x\"\n").unwrap();
        assert_eq!(v.get("displayname"), Some("say \"hi\" | x"));
    }

    #[test]
    fn accepts_bare_values_and_trailing_comments() {
        let v = Vmx::parse(b"numvcpus = 4 # four\nmemsize=\"512\"  # after\n").unwrap();
        assert_eq!(v.get("numvcpus"), Some("4"));
        assert_eq!(v.get("memsize"), Some("512"));
    }

    #[test]
    fn a_refused_line_is_a_typed_error_with_its_number() {
        assert_eq!(
            Vmx::parse(b"a = \"1\"\ngarbage\n").unwrap_err(),
            VmxError {
                line: 2,
                problem: LineProblem::NotKeyValue
            }
        );
        let e = Vmx::parse(b"bad key = \"1\"\n").unwrap_err();
        assert_eq!(
            e.problem,
            LineProblem::BadKey {
                key: "bad key".into()
            }
        );
        assert_eq!(e.to_string(), "line 1: bad key \"bad key\"");
    }

    #[test]
    fn rejects_a_line_without_equals_naming_its_number() {
        let e = Vmx::parse(b"a = \"1\"\ngarbage\n").unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
        assert!(Vmx::parse(b"a = \"open\n")
            .unwrap_err()
            .to_string()
            .contains("unterminated"));
    }

    #[test]
    fn decodes_latin1_when_declared_and_flags_invalid_utf8_otherwise() {
        let v = Vmx::parse(b".encoding = \"windows-1252\"\ndisplayName = \"caf\xe9\"\n").unwrap();
        assert_eq!(v.get("displayName"), Some("café"));
        assert!(!v.lossy);
        let v = Vmx::parse(b".encoding = \"UTF-8\"\ndisplayName = \"caf\xe9\"\n").unwrap();
        assert!(v.lossy);
        assert!(v.get("displayName").unwrap().starts_with("caf"));
    }

    #[test]
    fn canonicalises_bios_uuid_and_mac() {
        assert_eq!(
            canonical_uuid("56 4d 7f 3a 52 0b 1d 61-3f 8f 2b 4f 88 d3 7a 1c").as_deref(),
            Some("564d7f3a-520b-1d61-3f8f-2b4f88d37a1c")
        );
        assert_eq!(canonical_uuid("nonsense"), None);
        assert_eq!(
            canonical_mac("00:50:56:AB:cd:EF").as_deref(),
            Some("00:50:56:ab:cd:ef")
        );
        assert_eq!(canonical_mac("00:50:56"), None);
    }

    #[test]
    fn device_with_present_false_does_not_exist() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a.vmdk"), b"x").unwrap();
        let v = Vmx::parse(
            b"scsi0.present = \"TRUE\"\nscsi0.virtualDev = \"pvscsi\"\nscsi0:0.present = \"FALSE\"\nscsi0:0.fileName = \"a.vmdk\"\nethernet0.present = \"FALSE\"\n",
        )
        .unwrap();
        let vm = to_vm(&v, &d.path().join("x.vmx"), d.path(), &FixedProbe(1));
        assert!(vm.disks.is_empty());
        assert!(vm.nics.is_empty());
        assert_eq!(vm.controllers[0].model, ControllerModel::Pvscsi);
    }

    #[test]
    fn refuses_parent_and_absolute_disk_names_without_reading_them() {
        let d = tempfile::tempdir().unwrap();
        let v = Vmx::parse(
            b"scsi0.present = \"TRUE\"\nscsi0:0.present = \"TRUE\"\nscsi0:0.fileName = \"../other/x.vmdk\"\nscsi0:1.present = \"TRUE\"\nscsi0:1.fileName = \"/vmfs/volumes/ds2/x.vmdk\"\n",
        )
        .unwrap();
        let vm = to_vm(&v, &d.path().join("x.vmx"), d.path(), &FixedProbe(1));
        assert_eq!(vm.disks.len(), 2);
        for disk in &vm.disks {
            assert!(
                matches!(disk.location, DiskLocation::Refused { .. }),
                "{:?}",
                disk.location
            );
            assert_eq!(disk.capacity, None);
        }
    }

    #[test]
    fn reads_disk_capacity_through_the_probe_and_marks_rdm() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a.vmdk"), b"x").unwrap();
        let v = Vmx::parse(
            b"sata0.present = \"TRUE\"\nsata0:2.present = \"TRUE\"\nsata0:2.fileName = \"a.vmdk\"\nsata0:2.mode = \"independent-persistent\"\nscsi0:0.present = \"TRUE\"\nscsi0:0.fileName = \"b.vmdk\"\nide1:0.present = \"TRUE\"\nide1:0.deviceType = \"rawDisk\"\nide1:0.fileName = \"/dev/sdb\"\n",
        )
        .unwrap();
        let vm = to_vm(&v, &d.path().join("x.vmx"), d.path(), &FixedProbe(4096));
        // scsi0 is not present, so its disk does not exist.
        assert_eq!(vm.disks.len(), 2);
        let sata = vm.disks.iter().find(|d| d.id == "sata0:2").unwrap();
        assert_eq!(sata.capacity, Some(4096));
        // ddb.uuid, in the one spelling the model keeps.
        assert_eq!(
            sata.uuid.as_deref(),
            Some("6000c2930f8356400b2c082cac6f3574")
        );
        assert_eq!(sata.mode, DiskMode::IndependentPersistent);
        assert!(
            matches!(&sata.location, DiskLocation::File { path, .. } if path.ends_with("a.vmdk"))
        );
        let raw = vm.disks.iter().find(|d| d.id == "ide1:0").unwrap();
        assert_eq!(raw.rdm, Some(RdmKind::RawDisk));
        assert!(matches!(raw.location, DiskLocation::HostDevice { .. }));
    }

    #[test]
    fn reads_placement_and_resource_tuning() {
        let v = Vmx::parse(
            b"memsize = \"4096\"\nnumvcpus = \"4\"\nsched.cpu.affinity = \"0,2-3\"\nnuma.nodeAffinity = \"1\"\nnuma.vcpu.maxPerVirtualNode = \"2\"\nvcpu.hotadd = \"TRUE\"\nmem.hotadd = \"TRUE\"\nsched.mem.min = \"4096\"\nsched.mem.pin = \"TRUE\"\n",
        )
        .unwrap();
        let d = tempfile::tempdir().unwrap();
        let t = to_vm(&v, &d.path().join("x.vmx"), d.path(), &FixedProbe(0)).tuning;
        assert_eq!(t.cpu_affinity, [0, 2, 3]);
        assert_eq!(t.numa_node_affinity, [1]);
        assert_eq!(t.vnuma_max_vcpus_per_node, Some(2));
        assert!(t.cpu_hot_add && t.memory_hot_add && t.memory_pinned);
        assert_eq!(t.memory_reservation_mib, Some(4096));
        // `all`, nonsense and a range too wide to walk leave no affinity.
        let v = Vmx::parse(b"sched.cpu.affinity = \"all\"\nnuma.nodeAffinity = \"0-4294967295\"\n")
            .unwrap();
        let t = to_vm(&v, &d.path().join("x.vmx"), d.path(), &FixedProbe(0)).tuning;
        assert!(t.is_empty(), "{t:?}");
        assert_eq!(crate::model::affinity_list("3-1"), None);
        assert_eq!(crate::model::affinity_list("x"), None);
    }

    #[test]
    fn counts_snapshots_from_vmsd_and_marks_current() {
        let v = Vmx::parse(b".encoding = \"UTF-8\"\nsnapshot.lastUID = \"2\"\nsnapshot.numSnapshots = \"2\"\nsnapshot.current = \"2\"\nsnapshot0.uid = \"1\"\nsnapshot0.displayName = \"base\"\nsnapshot1.uid = \"2\"\nsnapshot1.displayName = \"after patch\"\n").unwrap();
        let s = snapshots_from_vmsd(&v);
        assert_eq!(s.len(), 2);
        assert!(s[1].current && !s[0].current);
        let huge = Vmx::parse(b"snapshot.numSnapshots = \"4000000000\"\n").unwrap();
        assert!(snapshots_from_vmsd(&huge).len() <= 1);
    }
}
