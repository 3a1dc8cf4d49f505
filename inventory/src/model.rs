//! The VM model: what every later stage (convert, inject, validate) knows about a
//! source VM, the same whichever file it came from (VMX, OVF or OVA).
//!
//! It is a schema: serialised with kebab-case fields, optional and empty fields left
//! out, and a `schema-version` that changes whenever a field changes meaning or is
//! removed (adding an optional field does not bump it). docs/vm-model.md documents
//! every field. Disks say exactly where their bytes are ([`DiskLocation`]), so the
//! converter never has to re-derive a path from a VMware file.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Version of this schema; see docs/vm-model.md for what each version changed.
pub const SCHEMA_VERSION: u32 = 1;

fn is_false(b: &bool) -> bool {
    !*b
}

/// One virtual machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Vm {
    pub schema_version: u32,
    /// Display name (VMX `displayName`, OVF `VirtualSystem/Name` or `ovf:id`).
    pub name: String,
    pub source: Source,
    /// SMBIOS UUID in canonical lowercase 8-4-4-4-12 form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bios_uuid: Option<String>,
    pub guest_os: GuestOs,
    pub firmware: Firmware,
    pub cpu: Cpu,
    pub memory_mib: u64,
    /// VMware virtual hardware version (`virtualHW.version`, `vmx-NN`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hardware_version: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub controllers: Vec<Controller>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<Disk>,
    /// CD-ROM and floppy drives.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removable: Vec<Removable>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nics: Vec<Nic>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub serial_ports: Vec<Port>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parallel_ports: Vec<Port>,
    #[serde(default, skip_serializing_if = "Usb::is_empty")]
    pub usb: Usb,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pci_passthrough: Vec<PciDevice>,
    /// A virtual TPM is configured (`vtpm.present`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub tpm: bool,
    /// Changed block tracking (`ctkEnabled`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub cbt: bool,
    /// `disk.EnableUUID`: the guest sees stable SCSI serials.
    #[serde(default, skip_serializing_if = "is_false")]
    pub disk_enable_uuid: bool,
    /// vSphere Fault Tolerance on this VM (vSphere `config.ftInfo`, VMX `ft.*` keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault_tolerance: Option<FaultTolerance>,
    /// The guest's filesystems with their free space, as VMware Tools reported them
    /// (vSphere `guest.disk`); empty when unknown (files, or no Tools).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub guest_filesystems: Vec<GuestFilesystem>,
    /// Placement and resource tuning set on VMware (affinity, reservations, hot-add).
    #[serde(default, skip_serializing_if = "Tuning::is_empty")]
    pub tuning: Tuning,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snapshots: Vec<Snapshot>,
    /// Power state when inventoried (vSphere sources only: a file does not say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_state: Option<PowerState>,
    /// For a vSphere source: where the VM lives on the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsphere: Option<VsphereSource>,
    /// Pre-flight findings, most severe first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub concerns: Vec<Concern>,
}

/// A VM's part in vSphere Fault Tolerance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultTolerance {
    /// The protected VM (`ftInfo.role` 1).
    Primary,
    /// A shadow copy kept in lockstep (`ftInfo.role` 2 and up): not a VM to migrate.
    Secondary,
    /// FT settings without a role (VMX `ft.*` keys).
    Configured,
}

/// One guest filesystem as VMware Tools reports it (vSphere `GuestDiskInfo`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct GuestFilesystem {
    /// Where it is mounted (`/`, `/boot`, `C:\`); untrusted text.
    pub path: String,
    pub capacity: u64,
    pub free: u64,
}

/// Placement and resource tuning a VMware administrator set on the VM. The KVM
/// target maps each onto the destination host (`<cputune><vcpupin>`, `<numatune>`,
/// `<cpu><numa>`, `<memoryBacking>`, `<vcpu current>`/`<maxMemory>`: kvm-target's
/// `tuning` module); pre-flight names what no target carries (`tuning-not-carried`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Tuning {
    /// Host CPUs the vCPUs may run on (VMX `sched.cpu.affinity`; `all` is none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cpu_affinity: Vec<u32>,
    /// Host NUMA nodes the VM may use (VMX `numa.nodeAffinity`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub numa_node_affinity: Vec<u32>,
    /// Most vCPUs per virtual NUMA node (VMX `numa.vcpu.maxPerVirtualNode`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vnuma_max_vcpus_per_node: Option<u32>,
    /// CPU hot-add enabled (VMX `vcpu.hotadd`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub cpu_hot_add: bool,
    /// Memory hot-add enabled (VMX `mem.hotadd`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub memory_hot_add: bool,
    /// Memory reservation in MiB (VMX `sched.mem.min`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_reservation_mib: Option<u64>,
    /// "Reserve all guest memory (all locked)" (VMX `sched.mem.pin`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub memory_pinned: bool,
}

impl Tuning {
    pub fn is_empty(&self) -> bool {
        *self == Tuning::default()
    }
}

/// The most list entries v2k keeps from an affinity setting: KVM's vCPU limit
/// (4096), which is also far beyond any host's CPU count.
pub(crate) const MAX_AFFINITY_ENTRIES: usize = 4096;

/// A VMware affinity list (`0,1,4-7`; `all` or empty is no affinity) as sorted,
/// distinct numbers; `None` when it is not such a list (untrusted text) or names
/// more than [`MAX_AFFINITY_ENTRIES`] entries.
pub fn affinity_list(s: &str) -> Option<Vec<u32>> {
    let s = s.trim();
    if s.is_empty() || s.eq_ignore_ascii_case("all") {
        return Some(Vec::new());
    }
    let mut out = std::collections::BTreeSet::new();
    for part in s.split(',') {
        let part = part.trim();
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.trim().parse::<u32>().ok()?, b.trim().parse::<u32>().ok()?),
            None => {
                let n = part.parse::<u32>().ok()?;
                (n, n)
            }
        };
        // Checked before the range is walked: `0-4294967295` allocates nothing.
        let span = usize::try_from(b.checked_sub(a)?).ok()?;
        if span >= MAX_AFFINITY_ENTRIES || out.len() + span >= MAX_AFFINITY_ENTRIES {
            return None;
        }
        out.extend(a..=b);
    }
    Some(out.into_iter().collect())
}

/// Whether `s` is a MAC address as the model holds it (six colon-separated hex pairs);
/// the target keeps each NIC's MAC, and the guest's NIC names are pinned to it.
pub fn is_mac(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Where the description came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Source {
    pub kind: SourceKind,
    /// The .vmx, .ovf or .ova file, absolute.
    pub path: PathBuf,
    /// For an OVF or OVA: whether a manifest was present and verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<ManifestStatus>,
}

/// Where a VM read from vCenter/ESXi lives ([`Vm::vsphere`]). `Source::path` is its address
/// without the user (`vsphere://HOST[:PORT]/DC/vm/FOLDER/NAME`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct VsphereSource {
    /// `host[:port]` of the vCenter or ESXi the VM was read from.
    pub server: String,
    /// Managed object id (`vm-42`).
    pub moref: String,
    /// Inventory path of the datacenter (`DC0`, or `folder/DC0`): the `dcPath` of
    /// datastore downloads.
    pub datacenter: String,
    /// Inventory path of the VM (`DC0/vm/folder/name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inventory_path: Option<String>,
    /// The `.vmx` as a datastore path (`[ds] dir/name.vmx`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmx_path: Option<String>,
    /// The ESXi host running (or registered with) the VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Names of the datastores the VM uses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub datastores: Vec<String>,
    /// vCenter's instance UUID of the VM (`config.instanceUuid`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_uuid: Option<String>,
}

/// A VM's power state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PowerState {
    PoweredOn,
    PoweredOff,
    Suspended,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    Vmx,
    Ovf,
    Ova,
    /// Read from vCenter or ESXi over the vSphere API.
    Vsphere,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ManifestStatus {
    /// Every file named by the OVF was in the manifest and matched.
    Verified,
    /// There was no manifest to check.
    Absent,
    /// Verification was turned off (`--no-verify-manifest`).
    Skipped,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct GuestOs {
    /// VMware's guest id (`guestOS` / `vmw:osType`), e.g. `ubuntu-64`, `windows2019srv-64`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub family: OsFamily,
    /// OVF `OperatingSystemSection` CIM id (e.g. 94 Ubuntu 64-bit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cim_id: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OsFamily {
    Linux,
    Windows,
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Firmware {
    pub kind: FirmwareKind,
    #[serde(default, skip_serializing_if = "is_false")]
    pub secure_boot: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FirmwareKind {
    Bios,
    Efi,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Cpu {
    /// Total virtual CPUs.
    pub count: u32,
    pub cores_per_socket: u32,
}

/// A storage controller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Controller {
    pub bus: BusKind,
    /// Index of this controller among those of its bus kind (`scsi1` is 1).
    pub index: u32,
    pub model: ControllerModel,
    /// The model string as VMware wrote it, when it was not one we know.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_model: Option<String>,
    /// SCSI bus sharing (`scsiN.sharedBus`: virtual / physical).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_bus: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BusKind {
    Ide,
    Scsi,
    Sata,
    Nvme,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ControllerModel {
    Pvscsi,
    Lsilogic,
    Lsisas1068,
    Buslogic,
    Ahci,
    Nvme,
    Ide,
    Unknown,
}

/// Where a device sits: bus kind, controller index, unit on that controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Slot {
    pub bus: BusKind,
    pub controller: u32,
    pub unit: u32,
}

impl std::fmt::Display for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let bus = match self.bus {
            BusKind::Ide => "ide",
            BusKind::Scsi => "scsi",
            BusKind::Sata => "sata",
            BusKind::Nvme => "nvme",
        };
        write!(f, "{bus}{}:{}", self.controller, self.unit)
    }
}

/// A virtual disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Disk {
    /// Stable id inside this VM: the slot (`scsi0:1`) for a VMX, the OVF `diskId`
    /// otherwise.
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<Slot>,
    /// Virtual size in bytes; `None` when it could not be learnt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<u64>,
    /// OVF `ovf:populatedSize` or the VMDK's allocated bytes, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub populated_size: Option<u64>,
    pub location: DiskLocation,
    /// What the bytes at `location` are: the VMDK `createType` (e.g.
    /// `streamOptimized`, `monolithicSparse`, `vmfs`) or the OVF format URI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    pub mode: DiskMode,
    #[serde(default, skip_serializing_if = "Sharing::is_none")]
    pub sharing: Sharing,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rdm: Option<RdmKind>,
    /// Parent disks of a snapshot delta, nearest first, as named by the VMDK.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parents: Vec<PathBuf>,
    /// The disk's 128-bit identifier as 32 lowercase hex digits (VMDK `ddb.uuid`,
    /// vSphere `backing.uuid`). With `disk.EnableUUID` the guest saw it as the SCSI
    /// NAA identifier: `/dev/disk/by-id/scsi-3<uuid>` and `wwn-0x<uuid>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
}

/// A disk identifier from VMware's spellings (`60 00 C2 93 0f 83 56 40-0b 2c 08 2c ac
/// 6f 35 74` in a VMDK, `6000C293-0f83-5640-0b2c-082cac6f3574` in vSphere) as 32
/// lowercase hex digits; anything else (untrusted text) is `None`.
pub fn disk_uuid(s: &str) -> Option<String> {
    let hex: String = s
        .chars()
        .filter(|c| !matches!(c, ' ' | '-'))
        .map(|c| c.to_ascii_lowercase())
        .collect();
    (hex.len() == 32 && hex.chars().all(|c| c.is_ascii_hexdigit())).then_some(hex)
}

/// Where a disk's bytes are. The converter reads exactly this.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum DiskLocation {
    /// A file on the host, absolute, already checked to lie inside the VM's directory
    /// with no symlink on the way, and to be a regular file. For a VMDK this is the
    /// descriptor (or monolithic file); its extents are resolved by the converter.
    #[serde(rename_all = "kebab-case")]
    File {
        path: PathBuf,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        compression: Option<Compression>,
    },
    /// An OVF file split into chunks (`disk.vmdk.000000000`, ...), each a checked
    /// file, to be read one after the other in this order.
    #[serde(rename_all = "kebab-case")]
    FileChunks {
        paths: Vec<PathBuf>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        compression: Option<Compression>,
    },
    /// A file inside an OVA (tar) archive, read in place: the bytes of `chunks`,
    /// each `size` bytes at `offset` in `archive`, one after the other.
    #[serde(rename_all = "kebab-case")]
    OvaMember {
        archive: PathBuf,
        /// The OVF `href` this came from (the member name, or the chunk stem).
        name: String,
        chunks: Vec<ArchiveChunk>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        compression: Option<Compression>,
    },
    /// A file on a vSphere datastore, read over the datastore HTTP interface
    /// (`/folder/PATH?dcPath=DATACENTER&dsName=DATASTORE`). For a VMDK, the
    /// descriptor; its extent is found from it.
    #[serde(rename_all = "kebab-case")]
    Datastore {
        /// Datastore name (`LocalDS_0`).
        datastore: String,
        /// Path inside the datastore (`vm1/vm1.vmdk`).
        path: String,
        /// Inventory path of the datacenter (`dcPath`).
        datacenter: String,
        /// Thin provisioned on the datastore (`thinProvisioned`).
        #[serde(default, skip_serializing_if = "is_false")]
        thin: bool,
    },
    /// A raw host device (VMX `rawDisk`, `/dev/...`): not copied.
    #[serde(rename_all = "kebab-case")]
    HostDevice { path: String },
    /// The file named by the VM does not exist.
    #[serde(rename_all = "kebab-case")]
    Missing { reference: String },
    /// The file name was refused (absolute, `..`, a symlink, a device...); nothing
    /// was read from it.
    #[serde(rename_all = "kebab-case")]
    Refused { reference: String, reason: String },
}

impl DiskLocation {
    /// Whether a converter can read this disk at all.
    pub fn is_readable(&self) -> bool {
        matches!(
            self,
            DiskLocation::File { .. }
                | DiskLocation::FileChunks { .. }
                | DiskLocation::OvaMember { .. }
                | DiskLocation::Datastore { .. }
        )
    }
}

/// One tar member holding (part of) a disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ArchiveChunk {
    /// The member name in the archive.
    pub member: String,
    /// Byte offset of the member's data in the archive file.
    pub offset: u64,
    /// Number of data bytes.
    pub size: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Compression {
    /// The stored bytes are one gzip stream (OVF `ovf:compression="gzip"`).
    Gzip,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DiskMode {
    Persistent,
    Nonpersistent,
    Undoable,
    IndependentPersistent,
    IndependentNonpersistent,
}

impl DiskMode {
    /// The kebab-case name used in JSON and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            DiskMode::Persistent => "persistent",
            DiskMode::Nonpersistent => "nonpersistent",
            DiskMode::Undoable => "undoable",
            DiskMode::IndependentPersistent => "independent-persistent",
            DiskMode::IndependentNonpersistent => "independent-nonpersistent",
        }
    }

    pub(crate) fn is_independent(self) -> bool {
        matches!(
            self,
            DiskMode::IndependentPersistent | DiskMode::IndependentNonpersistent
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Sharing {
    #[default]
    None,
    MultiWriter,
}

impl Sharing {
    fn is_none(&self) -> bool {
        *self == Sharing::None
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RdmKind {
    /// Virtual compatibility mode (`vmfsRawDeviceMap`).
    Virtual,
    /// Physical compatibility mode (`vmfsPassthroughRawDeviceMap`).
    Physical,
    /// A Workstation raw disk (`rawDisk`, `fullDevice`, `partitionedDevice`).
    RawDisk,
}

/// A CD-ROM or floppy drive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Removable {
    pub kind: RemovableKind,
    /// The slot of a CD-ROM; floppies have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<Slot>,
    pub backing: RemovableBacking,
    /// Image file or host device as the VM names it (not resolved: not copied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub start_connected: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RemovableKind {
    Cdrom,
    Floppy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RemovableBacking {
    Image,
    HostDevice,
    Passthrough,
    None,
}

/// A network adapter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Nic {
    pub index: u32,
    pub model: NicModel,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_model: Option<String>,
    /// Lowercase colon-separated MAC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    pub address_type: AddressType,
    /// Port group / network name (VMX `networkName`, OVF `Connection`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// Workstation/Fusion connection type (bridged, nat, hostonly, custom).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dvs: Option<DvsPort>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub start_connected: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NicModel {
    Vmxnet3,
    Vmxnet2,
    Vmxnet,
    E1000,
    E1000e,
    Vlance,
    Sriov,
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AddressType {
    Generated,
    Static,
    /// Assigned by vCenter.
    Vpx,
    Unknown,
}

/// A distributed virtual switch port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct DvsPort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switch_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub portgroup_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_id: Option<String>,
}

/// A serial or parallel port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Port {
    pub index: u32,
    /// `file`, `device`, `pipe`, `network`, `thinprint`...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backing: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Usb {
    /// USB controllers: `uhci`, `ehci`, `xhci`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub controllers: Vec<String>,
    /// Passed-through host USB devices (VMX `usb:N`, OVF none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<String>,
}

impl Usb {
    pub fn is_empty(&self) -> bool {
        self.controllers.is_empty() && self.devices.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct PciDevice {
    pub index: u32,
    /// Host PCI address or device id as VMware recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// An SR-IOV virtual function (`pciPassthruN.pfId` set).
    #[serde(default, skip_serializing_if = "is_false")]
    pub sriov: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Snapshot {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub current: bool,
}

/// A pre-flight finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Concern {
    /// Stable id (docs/inspect.md lists them all); tools match on this.
    pub id: String,
    pub severity: Severity,
    /// What it is about (`scsi0:1`, `ethernet0`), when it is about one device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// One line for a human.
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Severity {
    // Order matters: sorting puts critical first.
    Critical,
    Warning,
    Info,
}

impl Vm {
    /// A VM with nothing known yet, to be filled by a reader.
    pub(crate) fn empty(kind: SourceKind, path: PathBuf) -> Vm {
        Vm {
            schema_version: SCHEMA_VERSION,
            name: String::new(),
            source: Source {
                kind,
                path,
                manifest: None,
            },
            bios_uuid: None,
            guest_os: GuestOs {
                id: None,
                family: OsFamily::Other,
                cim_id: None,
                description: None,
            },
            firmware: Firmware {
                kind: FirmwareKind::Bios,
                secure_boot: false,
            },
            cpu: Cpu {
                count: 1,
                cores_per_socket: 1,
            },
            memory_mib: 0,
            hardware_version: None,
            controllers: Vec::new(),
            disks: Vec::new(),
            removable: Vec::new(),
            nics: Vec::new(),
            serial_ports: Vec::new(),
            parallel_ports: Vec::new(),
            usb: Usb::default(),
            pci_passthrough: Vec::new(),
            tpm: false,
            cbt: false,
            disk_enable_uuid: false,
            fault_tolerance: None,
            guest_filesystems: Vec::new(),
            tuning: Tuning::default(),
            snapshots: Vec::new(),
            power_state: None,
            vsphere: None,
            concerns: Vec::new(),
        }
    }

    /// A VM with nothing known yet, for readers outside this crate (the vSphere
    /// client) to fill.
    pub fn new_empty(kind: SourceKind, path: PathBuf) -> Vm {
        Vm::empty(kind, path)
    }

    /// Whether any concern is critical (the `inspect` exit code).
    pub fn has_critical(&self) -> bool {
        self.concerns
            .iter()
            .any(|c| c.severity == Severity::Critical)
    }
}

/// Guest family from a VMware guest id.
pub fn os_family(guest_id: &str) -> OsFamily {
    let g = guest_id.to_ascii_lowercase();
    // "longhorn" is VMware's id for Windows Server 2008.
    if g.starts_with("win") || g.starts_with("longhorn") {
        OsFamily::Windows
    } else if [
        "linux",
        "ubuntu",
        "debian",
        "rhel",
        "centos",
        "sles",
        "suse",
        "opensuse",
        "oracle",
        "fedora",
        "asianux",
        "mandrake",
        "mandriva",
        "redhat",
        "turbolinux",
        "coreos",
        "photon",
        "amazonlinux",
        "almalinux",
        "rockylinux",
        "other26xlinux",
        "other3xlinux",
        "other4xlinux",
        "other5xlinux",
        "other6xlinux",
        "otherlinux",
        "miraclelinux",
        "nld",
        "sjds",
        "vmwarephoton",
        "crxpod",
    ]
    .iter()
    .any(|p| g.starts_with(p))
    {
        OsFamily::Linux
    } else {
        OsFamily::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialises_kebab_case_with_version_and_omits_empty_fields() {
        let vm = Vm::empty(SourceKind::Vmx, PathBuf::from("/x/a.vmx"));
        let v = serde_json::to_value(&vm).unwrap();
        assert_eq!(v["schema-version"], 1);
        assert_eq!(v["source"]["kind"], "vmx");
        assert_eq!(v["memory-mib"], 0);
        assert!(v.get("disks").is_none());
        assert!(v.get("tpm").is_none());
        assert!(v.get("bios-uuid").is_none());
    }

    #[test]
    fn disk_location_is_tagged_by_kind_and_round_trips() {
        let loc = DiskLocation::OvaMember {
            archive: "/a/b.ova".into(),
            name: "disk1.vmdk".into(),
            chunks: vec![ArchiveChunk {
                member: "disk1.vmdk".into(),
                offset: 1536,
                size: 4096,
            }],
            compression: Some(Compression::Gzip),
        };
        let v = serde_json::to_value(&loc).unwrap();
        assert_eq!(v["kind"], "ova-member");
        assert_eq!(v["chunks"][0]["offset"], 1536);
        assert_eq!(v["compression"], "gzip");
        let back: DiskLocation = serde_json::from_value(v).unwrap();
        assert_eq!(back, loc);
    }

    #[test]
    fn classifies_guest_families() {
        assert_eq!(os_family("windows2019srv-64"), OsFamily::Windows);
        assert_eq!(os_family("ubuntu-64"), OsFamily::Linux);
        assert_eq!(os_family("rhel9_64Guest"), OsFamily::Linux);
        assert_eq!(os_family("other26xLinux64Guest"), OsFamily::Linux);
        assert_eq!(os_family("freebsd12-64"), OsFamily::Other);
    }

    #[test]
    fn severity_sorts_critical_first() {
        let mut s = vec![Severity::Info, Severity::Critical, Severity::Warning];
        s.sort();
        assert_eq!(
            s,
            vec![Severity::Critical, Severity::Warning, Severity::Info]
        );
    }
}
