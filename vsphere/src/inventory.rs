//! VMs read from vCenter/ESXi into the same [`Vm`] model as VMX and OVF files.
//!
//! One ContainerView over the root folder collects the names and parents of folders,
//! datacenters, hosts, datastores and networks (to build inventory paths and name the
//! port groups and hosts a VM refers to); a second collects the VM properties in
//! [`VM_PROPERTIES`]. [`map_vm`] then maps one VM's properties, device by device, as
//! docs/vm-model.md describes, and the inventory crate's pre-flight rules are applied
//! ([`v2k_inventory::preflight::assess`]) together with the one only a live source
//! has: `powered-on` (critical: a cold migration copies a disk that is not changing).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use v2k_inventory::model::*;

use crate::client::{Client, MoRef, ObjectContent, PropertySpec, Session};
use crate::datastore::DatastorePath;
use crate::error::{Error, Result};
use crate::xml::Element;

/// The VM properties read. Unset ones are simply absent from the answer.
pub(crate) const VM_PROPERTIES: &[&str] = &[
    "name",
    "parent",
    "config.uuid",
    "config.instanceUuid",
    "config.guestId",
    "config.guestFullName",
    "config.firmware",
    "config.bootOptions.efiSecureBootEnabled",
    "config.version",
    "config.hardware.numCPU",
    "config.hardware.numCoresPerSocket",
    "config.hardware.memoryMB",
    "config.hardware.device",
    "config.changeTrackingEnabled",
    "config.extraConfig",
    "config.ftInfo",
    "config.cpuAffinity",
    "config.cpuHotAddEnabled",
    "config.memoryHotAddEnabled",
    "config.memoryAllocation",
    "config.memoryReservationLockedToMax",
    "guest.disk",
    "config.template",
    "runtime.powerState",
    "runtime.host",
    "snapshot",
    "layoutEx.file",
    "layoutEx.disk",
    "datastore",
    "network",
    "summary.config.vmPathName",
];

/// Bytes each virtual disk's files take on its datastores, by device key, from the
/// VM's `layoutEx`: the sizes of every file of every link of the disk's chain (the
/// descriptor, the extent and, with snapshots, each delta). For a thin disk that is
/// what is allocated, not its capacity: the free-space estimate of a wave plan uses
/// it. A size that does not parse or a sum that overflows gives no figure.
fn disk_usage(files: Option<&Element>, disks: Option<&Element>) -> HashMap<String, u64> {
    let mut size_of: HashMap<&str, Option<u64>> = HashMap::new();
    for f in files.map(|f| f.children.as_slice()).unwrap_or_default() {
        if let Some(k) = f.child_text("key") {
            let size = f
                .child_text("size")
                .and_then(|v| v.trim().parse::<u64>().ok());
            size_of.insert(k.trim(), size);
        }
    }
    let mut out = HashMap::new();
    for d in disks.map(|d| d.children.as_slice()).unwrap_or_default() {
        let Some(key) = d.child_text("key") else {
            continue;
        };
        let total = d
            .children_named("chain")
            .flat_map(|c| c.children_named("fileKey"))
            .try_fold(0u64, |acc, k| {
                let size = (*size_of.get(k.text.trim())?)?;
                acc.checked_add(size)
            });
        if let Some(t) = total {
            out.insert(key.trim().to_string(), t);
        }
    }
    out
}

/// Deepest snapshot tree followed (vSphere allows 32 snapshots in a chain).
pub(crate) const MAX_SNAPSHOT_DEPTH: usize = 64;

/// The critical concern only a live source can raise.
pub const POWERED_ON: &str = "powered-on";

/// Names and parents of everything a VM refers to, by managed object id.
#[derive(Debug, Default, Clone)]
pub struct Names {
    by_id: HashMap<MoRef, (String, Option<MoRef>)>,
    root: Option<MoRef>,
}

impl Names {
    pub fn name(&self, m: &MoRef) -> Option<&str> {
        self.by_id.get(m).map(|(n, _)| n.as_str())
    }

    fn parent(&self, m: &MoRef) -> Option<&MoRef> {
        self.by_id.get(m).and_then(|(_, p)| p.as_ref())
    }

    /// Inventory path of an object called `name` whose parent is `parent`
    /// (`DC0/vm/folder/name`), and the path of the datacenter it belongs to. The root
    /// folder is not part of a path.
    pub fn path(&self, parent: Option<&MoRef>, name: &str) -> (String, Option<String>) {
        let mut parts = vec![name.to_string()];
        let mut dc_at = None;
        let mut cur = parent.cloned();
        let mut guard = 0;
        while let Some(p) = cur {
            guard += 1;
            if Some(&p) == self.root.as_ref() || guard > 256 {
                break;
            }
            if p.kind == "Datacenter" {
                dc_at = Some(parts.len());
            }
            parts.push(self.name(&p).unwrap_or(&p.value).to_string());
            cur = self.parent(&p).cloned();
        }
        parts.reverse();
        // Names are escaped in inventory paths: `/` as %2f (as vSphere does).
        let esc: Vec<String> = parts
            .iter()
            .map(|p| p.replace('%', "%25").replace('/', "%2f"))
            .collect();
        let dc = dc_at.map(|i| esc[..esc.len() - i].join("/"));
        (esc.join("/"), dc)
    }
}

/// Collects the names of folders, datacenters, hosts, datastores and networks.
pub async fn names(s: &Session) -> Result<Names> {
    let root = s.content()?.root_folder;
    let kinds = [
        "Folder",
        "Datacenter",
        "HostSystem",
        "Datastore",
        "Network",
        "DistributedVirtualPortgroup",
    ];
    let specs: Vec<PropertySpec> = kinds
        .iter()
        .map(|k| PropertySpec {
            kind: (*k).into(),
            paths: vec!["name".into(), "parent".into()],
        })
        .collect();
    let objs = s.retrieve_in_container(&root, &specs).await?;
    let mut n = Names {
        root: Some(root),
        ..Names::default()
    };
    for o in objs {
        let name = o.text("name").unwrap_or_default().to_string();
        let parent = o.get("parent").and_then(MoRef::from_element);
        n.by_id.insert(o.obj.clone(), (name, parent));
    }
    Ok(n)
}

fn vm_spec() -> PropertySpec {
    PropertySpec {
        kind: "VirtualMachine".into(),
        paths: VM_PROPERTIES.iter().map(|p| (*p).to_string()).collect(),
    }
}

/// Every VM (templates included) of the server, mapped, with concerns.
pub fn list_vms(client: &Client) -> Result<Vec<Vm>> {
    let s = client.session();
    let server = s.base.authority().to_string();
    client.block_on(async {
        let names = names(s).await?;
        let root = s.content()?.root_folder;
        let objs = s.retrieve_in_container(&root, &[vm_spec()]).await?;
        objs.iter().map(|o| map_vm(o, &names, &server)).collect()
    })
}

/// The VMs an address names: one by inventory path, or every VM whose inventory
/// path matches a pattern (`DC0/vm/apps/*`), sorted by path.
pub fn vms_at(client: &Client, address: &crate::address::Address) -> Result<Vec<Vm>> {
    if !address.is_pattern() {
        return Ok(vec![get_vm(client, &address.inventory_path)?]);
    }
    let mut vms: Vec<Vm> = list_vms(client)?
        .into_iter()
        .filter(|vm| {
            vm.vsphere
                .as_ref()
                .and_then(|v| v.inventory_path.as_deref())
                .is_some_and(|p| address.matches(p))
        })
        .collect();
    vms.sort_by(|a, b| a.source.path.cmp(&b.source.path));
    Ok(vms)
}

/// One VM by inventory path (`DC0/vm/folder/name`), mapped, with concerns.
pub fn get_vm(client: &Client, inventory_path: &str) -> Result<Vm> {
    let vm = client
        .find_by_inventory_path(inventory_path)?
        .ok_or_else(|| Error::Fault {
            method: "FindByInventoryPath".into(),
            kind: crate::error::FaultKind::ManagedObjectNotFound,
            message: format!("no object at {inventory_path:?}"),
        })?;
    if vm.kind != "VirtualMachine" {
        return Err(Error::Usage(format!(
            "{inventory_path:?} is a {}, not a virtual machine",
            vm.kind
        )));
    }
    let s = client.session();
    let server = s.base.authority().to_string();
    client.block_on(async {
        let names = names(s).await?;
        let o = s.retrieve_one(&vm, &vm_spec()).await?;
        map_vm(&o, &names, &server)
    })
}

/// Most guest filesystems kept from `guest.disk` (a guest reports one per mount).
const MAX_GUEST_FILESYSTEMS: usize = 256;

/// The guest's filesystems from VMware Tools' `guest.disk` (`GuestDiskInfo`:
/// `diskPath`, `capacity`, `freeSpace`); an entry without numbers is left out.
fn guest_filesystems(e: Option<&Element>) -> Vec<GuestFilesystem> {
    e.map(|e| e.children.as_slice())
        .unwrap_or_default()
        .iter()
        .filter_map(|d| {
            let n = |k| d.child_text(k).and_then(|v| v.trim().parse::<u64>().ok());
            Some(GuestFilesystem {
                path: d.child_text("diskPath")?.trim().chars().take(256).collect(),
                capacity: n("capacity")?,
                free: n("freeSpace")?,
            })
        })
        .take(MAX_GUEST_FILESYSTEMS)
        .collect()
}

/// The VM's placement and resource tuning from its first-class vSphere properties (the
/// VMX keys of [`Tuning`] that vCenter does not list in `extraConfig`): the CPU affinity
/// set, hot-add flags, the memory reservation (MB) and "reserve all guest memory".
/// A value that does not parse is dropped, as the VMX reader does.
fn read_tuning(o: &ObjectContent, t: &mut Tuning) {
    if let Some(a) = o.get("config.cpuAffinity") {
        let set: Vec<&str> = a
            .children
            .iter()
            .filter(|c| c.name == "affinitySet")
            .map(|c| c.text.trim())
            .collect();
        t.cpu_affinity = affinity_list(&set.join(",")).unwrap_or_default();
    }
    t.cpu_hot_add = boolean(o.get("config.cpuHotAddEnabled"));
    t.memory_hot_add = boolean(o.get("config.memoryHotAddEnabled"));
    t.memory_reservation_mib = o
        .get("config.memoryAllocation")
        .and_then(|m| m.child_text("reservation"))
        .and_then(|r| r.trim().parse::<u64>().ok())
        .filter(|&r| r > 0);
    t.memory_pinned = boolean(o.get("config.memoryReservationLockedToMax"));
}

fn int<T: std::str::FromStr>(e: Option<&Element>) -> Option<T> {
    e.and_then(|e| e.text.trim().parse().ok())
}

fn boolean(e: Option<&Element>) -> bool {
    e.is_some_and(|e| e.text.trim() == "true")
}

fn text(e: Option<&Element>) -> Option<String> {
    e.map(|e| e.text.trim().to_string())
        .filter(|t| !t.is_empty())
}

/// A storage controller's bus and model from its vim25 type.
fn controller_kind(t: &str) -> Option<(BusKind, ControllerModel)> {
    Some(match t {
        "VirtualIDEController" => (BusKind::Ide, ControllerModel::Ide),
        "ParaVirtualSCSIController" => (BusKind::Scsi, ControllerModel::Pvscsi),
        "VirtualLsiLogicController" => (BusKind::Scsi, ControllerModel::Lsilogic),
        "VirtualLsiLogicSASController" => (BusKind::Scsi, ControllerModel::Lsisas1068),
        "VirtualBusLogicController" => (BusKind::Scsi, ControllerModel::Buslogic),
        "VirtualAHCIController" => (BusKind::Sata, ControllerModel::Ahci),
        "VirtualNVMEController" => (BusKind::Nvme, ControllerModel::Nvme),
        _ => return None,
    })
}

fn nic_model(t: &str) -> Option<NicModel> {
    Some(match t {
        "VirtualVmxnet3" => NicModel::Vmxnet3,
        "VirtualVmxnet2" => NicModel::Vmxnet2,
        "VirtualVmxnet" => NicModel::Vmxnet,
        "VirtualE1000" => NicModel::E1000,
        "VirtualE1000e" => NicModel::E1000e,
        "VirtualPCNet32" => NicModel::Vlance,
        "VirtualSriovEthernetCard" => NicModel::Sriov,
        // Other ethernet cards (VirtualVmxnet3Vrdma...) are kept as unknown.
        t if t.starts_with("Virtual") && t.contains("Ethernet") || t.ends_with("Vrdma") => {
            NicModel::Unknown
        }
        _ => return None,
    })
}

fn disk_mode(s: &str) -> DiskMode {
    match s {
        "nonpersistent" => DiskMode::Nonpersistent,
        "undoable" | "append" => DiskMode::Undoable,
        "independent_persistent" => DiskMode::IndependentPersistent,
        "independent_nonpersistent" => DiskMode::IndependentNonpersistent,
        _ => DiskMode::Persistent,
    }
}

/// A disk's capacity: `capacityInBytes` when present (vSphere 5.5+), else
/// `capacityInKB` (the simulator's built-in VMs have only that), checked.
pub(crate) fn disk_capacity(dev: &Element) -> Result<Option<u64>> {
    if let Some(b) = dev.child("capacityInBytes") {
        let v: i64 = b.text.trim().parse().map_err(|_| {
            Error::protocol("capacityInBytes", format!("{:?} is not an integer", b.text))
        })?;
        return u64::try_from(v)
            .map(Some)
            .map_err(|_| Error::protocol("capacityInBytes", format!("{v} is negative")));
    }
    if let Some(k) = dev.child("capacityInKB") {
        let v: i64 = k.text.trim().parse().map_err(|_| {
            Error::protocol("capacityInKB", format!("{:?} is not an integer", k.text))
        })?;
        let v = u64::try_from(v)
            .map_err(|_| Error::protocol("capacityInKB", format!("{v} is negative")))?;
        return v
            .checked_mul(1024)
            .map(Some)
            .ok_or_else(|| Error::protocol("capacityInKB", format!("{v} KiB overflows")));
    }
    Ok(None)
}

/// Flattens a snapshot tree, depth first, marking the current one.
fn snapshots(info: &Element, out: &mut Vec<Snapshot>) {
    let current = info.child("currentSnapshot").and_then(MoRef::from_element);
    fn walk(list: &Element, current: &Option<MoRef>, depth: usize, out: &mut Vec<Snapshot>) {
        if depth > MAX_SNAPSHOT_DEPTH {
            return;
        }
        let this = list.child("snapshot").and_then(MoRef::from_element);
        out.push(Snapshot {
            name: text(list.child("name")),
            uid: int(list.child("id")),
            current: this.is_some() && this == *current,
        });
        for c in list.children_named("childSnapshotList") {
            walk(c, current, depth + 1, out);
        }
    }
    for r in info.children_named("rootSnapshotList") {
        walk(r, &current, 0, out);
    }
}

/// Maps one VM's properties into the model, with concerns.
pub fn map_vm(o: &ObjectContent, names: &Names, server: &str) -> Result<Vm> {
    let name = o.text("name").unwrap_or(&o.obj.value).to_string();
    let parent = o.get("parent").and_then(MoRef::from_element);
    let (inv_path, dc) = names.path(parent.as_ref(), &name);
    let mut vm = Vm::new_empty(
        SourceKind::Vsphere,
        PathBuf::from(format!(
            "vsphere://{server}/{}",
            crate::address::encode_inventory_path(&inv_path)
        )),
    );
    vm.name = name;
    vm.bios_uuid = text(o.get("config.uuid")).map(|u| u.to_ascii_lowercase());
    let guest = text(o.get("config.guestId"));
    vm.guest_os = GuestOs {
        family: guest.as_deref().map_or(OsFamily::Other, os_family),
        id: guest,
        cim_id: None,
        description: text(o.get("config.guestFullName")),
    };
    vm.firmware = Firmware {
        kind: if o.text("config.firmware") == Some("efi") {
            FirmwareKind::Efi
        } else {
            FirmwareKind::Bios
        },
        secure_boot: boolean(o.get("config.bootOptions.efiSecureBootEnabled")),
    };
    // An explicit 0 (or past MAX_VCPUS) stays as the server said: pre-flight
    // reports it, the KVM target refuses it.
    let count: u32 = int(o.get("config.hardware.numCPU")).unwrap_or(1);
    let cores: u32 = int(o.get("config.hardware.numCoresPerSocket"))
        .unwrap_or(1)
        .max(1);
    vm.cpu = Cpu {
        count,
        cores_per_socket: cores,
    };
    vm.memory_mib = int(o.get("config.hardware.memoryMB")).unwrap_or(0);
    vm.hardware_version = o
        .text("config.version")
        .and_then(|v| v.strip_prefix("vmx-"))
        .and_then(|v| v.parse().ok());
    vm.cbt = boolean(o.get("config.changeTrackingEnabled"));
    if let Some(ec) = o.get("config.extraConfig") {
        for ov in &ec.children {
            let key = ov.child_text("key").unwrap_or_default().trim();
            let val = ov.child_text("value").unwrap_or_default().trim();
            if key.eq_ignore_ascii_case("disk.EnableUUID") {
                vm.disk_enable_uuid = val.eq_ignore_ascii_case("true");
            } else if key.eq_ignore_ascii_case("numa.nodeAffinity") {
                vm.tuning.numa_node_affinity = affinity_list(val).unwrap_or_default();
            } else if key.eq_ignore_ascii_case("numa.vcpu.maxPerVirtualNode") {
                vm.tuning.vnuma_max_vcpus_per_node = val.parse().ok().filter(|&n| n > 0);
            }
        }
    }
    read_tuning(o, &mut vm.tuning);
    if let Some(ft) = o.get("config.ftInfo") {
        // `role` 1 is the primary, 2 and up its secondaries.
        vm.fault_tolerance = Some(
            match ft
                .child_text("role")
                .and_then(|r| r.trim().parse::<i64>().ok())
            {
                Some(1) => FaultTolerance::Primary,
                Some(_) => FaultTolerance::Secondary,
                None => FaultTolerance::Configured,
            },
        );
    }
    vm.guest_filesystems = guest_filesystems(o.get("guest.disk"));
    vm.power_state = match o.text("runtime.powerState") {
        Some("poweredOn") => Some(PowerState::PoweredOn),
        Some("poweredOff") => Some(PowerState::PoweredOff),
        Some("suspended") => Some(PowerState::Suspended),
        _ => None,
    };
    if let Some(s) = o.get("snapshot") {
        snapshots(s, &mut vm.snapshots);
    }
    let host = o.get("runtime.host").and_then(MoRef::from_element);
    let datastores: Vec<String> = o
        .get("datastore")
        .map(|d| {
            d.children
                .iter()
                .filter_map(MoRef::from_element)
                .map(|m| names.name(&m).unwrap_or(&m.value).to_string())
                .collect()
        })
        .unwrap_or_default();
    let datacenter = dc.clone().unwrap_or_default();
    vm.vsphere = Some(VsphereSource {
        server: server.to_string(),
        moref: o.obj.value.clone(),
        datacenter: datacenter.clone(),
        inventory_path: Some(inv_path),
        vmx_path: text(o.get("summary.config.vmPathName")),
        host: host.map(|h| names.name(&h).unwrap_or(&h.value).to_string()),
        datastores,
        instance_uuid: text(o.get("config.instanceUuid")),
    });

    if let Some(devs) = o.get("config.hardware.device") {
        let usage = disk_usage(o.get("layoutEx.file"), o.get("layoutEx.disk"));
        map_devices(&mut vm, &devs.children, names, &datacenter, &usage)?;
    }

    if vm.power_state == Some(PowerState::PoweredOn) {
        vm.concerns.push(Concern {
            id: POWERED_ON.into(),
            severity: Severity::Critical,
            subject: None,
            message: "VM is powered on: shut it down for a cold migration (its disks are changing)"
                .into(),
        });
    }
    v2k_inventory::preflight::assess(&mut vm);
    Ok(vm)
}

fn map_devices(
    vm: &mut Vm,
    devs: &[Element],
    names: &Names,
    datacenter: &str,
    usage: &HashMap<String, u64>,
) -> Result<()> {
    // key → (bus, controller index), for the slots of disks and CD-ROMs.
    let mut ctrl: BTreeMap<i64, (BusKind, u32)> = BTreeMap::new();
    for d in devs {
        let Some(t) = d.vim_type() else { continue };
        if let Some((bus, model)) = controller_kind(t) {
            let index: u32 = int(d.child("busNumber")).unwrap_or(0);
            if let Some(k) = int(d.child("key")) {
                ctrl.insert(k, (bus, index));
            }
            let shared = match d.child_text("sharedBus").map(str::trim) {
                Some("virtualSharing") => Some("virtual".to_string()),
                Some("physicalSharing") => Some("physical".to_string()),
                _ => None,
            };
            vm.controllers.push(Controller {
                bus,
                index,
                model,
                raw_model: None,
                shared_bus: shared,
            });
        }
    }
    vm.controllers.sort_by_key(|c| (c.bus, c.index));
    let slot = |d: &Element| -> Option<Slot> {
        let (bus, controller) = *ctrl.get(&int::<i64>(d.child("controllerKey"))?)?;
        Some(Slot {
            bus,
            controller,
            unit: int(d.child("unitNumber"))?,
        })
    };
    let start_connected = |d: &Element| boolean(d.path(&["connectable", "startConnected"]));
    let mut nic_index = 0u32;
    let (mut serial, mut parallel) = (0u32, 0u32);
    for d in devs {
        let Some(t) = d.vim_type() else { continue };
        let backing = d.child("backing");
        let btype = backing.and_then(|b| b.vim_type()).unwrap_or_default();
        match t {
            "VirtualDisk" => {
                let s = slot(d);
                let id = s.map(|s| s.to_string()).unwrap_or_else(|| {
                    format!("disk-{}", d.child_text("key").unwrap_or_default().trim())
                });
                let b = backing.cloned().unwrap_or_default();
                let file = text(b.child("fileName")).unwrap_or_default();
                let rdm = match (btype, b.child_text("compatibilityMode").map(str::trim)) {
                    ("VirtualDiskRawDiskMappingVer1BackingInfo", Some("physicalMode")) => {
                        Some(RdmKind::Physical)
                    }
                    ("VirtualDiskRawDiskMappingVer1BackingInfo", _) => Some(RdmKind::Virtual),
                    (
                        "VirtualDiskRawDiskVer2BackingInfo"
                        | "VirtualDiskPartitionedRawDiskVer2BackingInfo",
                        _,
                    ) => Some(RdmKind::RawDisk),
                    _ => None,
                };
                let location = match DatastorePath::parse(&file) {
                    Ok(p) => DiskLocation::Datastore {
                        datastore: p.datastore,
                        path: p.path,
                        datacenter: datacenter.to_string(),
                        thin: boolean(b.child("thinProvisioned")),
                    },
                    Err(_) if file.is_empty() => DiskLocation::Missing {
                        reference: String::new(),
                    },
                    Err(e) => DiskLocation::Refused {
                        reference: file.clone(),
                        reason: e.to_string(),
                    },
                };
                let mut parents = Vec::new();
                let mut p = b.child("parent");
                while let Some(pb) = p {
                    if parents.len() >= v2k_converters::vmdk::MAX_CHAIN_DEPTH {
                        break;
                    }
                    if let Some(f) = text(pb.child("fileName")) {
                        parents.push(PathBuf::from(f));
                    }
                    p = pb.child("parent");
                }
                vm.disks.push(Disk {
                    id,
                    slot: s,
                    capacity: disk_capacity(d)?,
                    populated_size: d
                        .child_text("key")
                        .and_then(|k| usage.get(k.trim()))
                        .copied(),
                    location,
                    format: None,
                    mode: disk_mode(b.child_text("diskMode").unwrap_or_default().trim()),
                    sharing: if b.child_text("sharing").map(str::trim) == Some("sharingMultiWriter")
                    {
                        Sharing::MultiWriter
                    } else {
                        Sharing::None
                    },
                    rdm,
                    parents,
                    uuid: b
                        .child_text("uuid")
                        .and_then(v2k_inventory::model::disk_uuid),
                });
            }
            "VirtualCdrom" | "VirtualFloppy" => {
                let (kind, s) = if t == "VirtualCdrom" {
                    (RemovableKind::Cdrom, slot(d))
                } else {
                    (RemovableKind::Floppy, None)
                };
                let (backing_kind, file) = match btype {
                    "VirtualCdromIsoBackingInfo" | "VirtualFloppyImageBackingInfo" => (
                        RemovableBacking::Image,
                        backing.and_then(|b| text(b.child("fileName"))),
                    ),
                    "VirtualCdromAtapiBackingInfo" | "VirtualFloppyDeviceBackingInfo" => (
                        RemovableBacking::HostDevice,
                        backing.and_then(|b| text(b.child("deviceName"))),
                    ),
                    "VirtualCdromRemotePassthroughBackingInfo"
                    | "VirtualCdromRemoteAtapiBackingInfo"
                    | "VirtualFloppyRemoteDeviceBackingInfo" => (
                        RemovableBacking::Passthrough,
                        backing.and_then(|b| text(b.child("deviceName"))),
                    ),
                    _ => (RemovableBacking::None, None),
                };
                vm.removable.push(Removable {
                    kind,
                    slot: s,
                    backing: backing_kind,
                    file,
                    start_connected: start_connected(d),
                });
            }
            "VirtualSerialPort" | "VirtualParallelPort" => {
                let kind = btype
                    .trim_start_matches("VirtualSerialPort")
                    .trim_start_matches("VirtualParallelPort")
                    .trim_end_matches("BackingInfo")
                    .to_ascii_lowercase();
                let target = backing.and_then(|b| {
                    text(b.child("fileName"))
                        .or_else(|| text(b.child("deviceName")))
                        .or_else(|| text(b.child("pipeName")))
                        .or_else(|| text(b.child("serviceURI")))
                });
                let port = Port {
                    index: 0,
                    backing: (!kind.is_empty()).then_some(kind),
                    target,
                };
                if t == "VirtualSerialPort" {
                    vm.serial_ports.push(Port {
                        index: serial,
                        ..port
                    });
                    serial += 1;
                } else {
                    vm.parallel_ports.push(Port {
                        index: parallel,
                        ..port
                    });
                    parallel += 1;
                }
            }
            "VirtualUSBController" => vm.usb.controllers.push("ehci".into()),
            "VirtualUSBXHCIController" => vm.usb.controllers.push("xhci".into()),
            "VirtualUSB" => vm.usb.devices.push(
                backing
                    .and_then(|b| text(b.child("deviceName")))
                    .unwrap_or_else(|| "usb".into()),
            ),
            "VirtualPCIPassthrough" => vm.pci_passthrough.push(PciDevice {
                index: vm.pci_passthrough.len() as u32,
                id: backing
                    .and_then(|b| text(b.child("id")).or_else(|| text(b.child("deviceName")))),
                sriov: false,
            }),
            "VirtualTPM" => vm.tpm = true,
            t => {
                if let Some(model) = nic_model(t) {
                    vm.nics.push(map_nic(d, t, model, nic_index, names));
                    if model == NicModel::Sriov {
                        vm.pci_passthrough.push(PciDevice {
                            index: vm.pci_passthrough.len() as u32,
                            id: d
                                .path(&["sriovBacking", "physicalFunctionBacking", "id"])
                                .and_then(|e| text(Some(e))),
                            sriov: true,
                        });
                    }
                    nic_index += 1;
                }
            }
        }
    }
    Ok(())
}

fn map_nic(d: &Element, t: &str, model: NicModel, index: u32, names: &Names) -> Nic {
    let backing = d.child("backing");
    let btype = backing.and_then(|b| b.vim_type()).unwrap_or_default();
    let mut dvs = None;
    let network = match btype {
        "VirtualEthernetCardDistributedVirtualPortBackingInfo" => {
            let port = backing.and_then(|b| b.child("port"));
            let pg = port.and_then(|p| text(p.child("portgroupKey")));
            let network = pg.as_ref().and_then(|k| {
                names
                    .name(&MoRef::new("DistributedVirtualPortgroup", k.clone()))
                    .map(str::to_string)
            });
            dvs = Some(DvsPort {
                switch_id: port.and_then(|p| text(p.child("switchUuid"))),
                portgroup_id: pg,
                port_id: port.and_then(|p| text(p.child("portKey"))),
            });
            network
        }
        "VirtualEthernetCardOpaqueNetworkBackingInfo" => {
            backing.and_then(|b| text(b.child("opaqueNetworkId")))
        }
        _ => backing.and_then(|b| text(b.child("deviceName"))),
    };
    Nic {
        index,
        model,
        raw_model: (model == NicModel::Unknown).then(|| t.to_string()),
        mac: text(d.child("macAddress")).map(|m| m.to_ascii_lowercase()),
        address_type: match d.child_text("addressType").map(str::trim) {
            Some("generated") => AddressType::Generated,
            Some("manual") => AddressType::Static,
            Some("assigned") => AddressType::Vpx,
            _ => AddressType::Unknown,
        },
        network,
        connection_type: None,
        dvs,
        start_connected: boolean(d.path(&["connectable", "startConnected"])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml;

    fn el(s: &str) -> Element {
        xml::parse(s.as_bytes()).unwrap()
    }

    #[test]
    fn builds_inventory_paths_through_folders_and_nested_datacenters() {
        let mut n = Names {
            root: Some(MoRef::new("Folder", "group-d1")),
            ..Names::default()
        };
        let mut add = |kind: &str, id: &str, name: &str, parent: Option<(&str, &str)>| {
            n.by_id.insert(
                MoRef::new(kind, id),
                (name.into(), parent.map(|(k, v)| MoRef::new(k, v))),
            );
        };
        add("Folder", "group-d1", "Datacenters", None);
        add("Folder", "f-emea", "EMEA", Some(("Folder", "group-d1")));
        add("Datacenter", "dc-1", "Paris", Some(("Folder", "f-emea")));
        add("Folder", "f-vm", "vm", Some(("Datacenter", "dc-1")));
        add("Folder", "f-app", "app/tier", Some(("Folder", "f-vm")));
        let (path, dc) = n.path(Some(&MoRef::new("Folder", "f-app")), "web01");
        // A `/` inside a name is escaped as vSphere does.
        assert_eq!(path, "EMEA/Paris/vm/app%2ftier/web01");
        assert_eq!(dc.as_deref(), Some("EMEA/Paris"));
        let (path, dc) = n.path(None, "orphan");
        assert_eq!((path.as_str(), dc), ("orphan", None));
    }

    #[test]
    fn capacity_prefers_bytes_then_kib_checked() {
        let d = el(
            "<d><capacityInKB>1024</capacityInKB><capacityInBytes>1048577</capacityInBytes></d>",
        );
        assert_eq!(disk_capacity(&d).unwrap(), Some(1_048_577));
        let d = el("<d><capacityInKB>1024</capacityInKB></d>");
        assert_eq!(disk_capacity(&d).unwrap(), Some(1 << 20));
        assert!(disk_capacity(&el("<d><capacityInKB>-1</capacityInKB></d>")).is_err());
        assert!(disk_capacity(&el(&format!(
            "<d><capacityInKB>{}</capacityInKB></d>",
            i64::MAX
        )))
        .is_err());
        assert!(disk_capacity(&el("<d><capacityInBytes>x</capacityInBytes></d>")).is_err());
        assert_eq!(disk_capacity(&el("<d/>")).unwrap(), None);
    }

    // A recorded vCenter 7 answer (trimmed): vCenter's `xsi:` prefix, a PVSCSI disk
    // with capacityInBytes on a thin datastore file, a VMXNET3 NIC on a distributed
    // port group, EFI with secure boot, two snapshots, CBT on.
    const VCENTER_VM: &str = r#"<objects xmlns="urn:vim25" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:xsd="http://www.w3.org/2001/XMLSchema"><obj type="VirtualMachine">vm-1001</obj>
<propSet><name>name</name><val xsi:type="xsd:string">app&amp;01</val></propSet>
<propSet><name>config.uuid</name><val xsi:type="xsd:string">4211ABCD-0000-1111-2222-333344445555</val></propSet>
<propSet><name>config.guestId</name><val xsi:type="xsd:string">rhel8_64Guest</val></propSet>
<propSet><name>config.firmware</name><val xsi:type="xsd:string">efi</val></propSet>
<propSet><name>config.bootOptions.efiSecureBootEnabled</name><val xsi:type="xsd:boolean">true</val></propSet>
<propSet><name>config.version</name><val xsi:type="xsd:string">vmx-19</val></propSet>
<propSet><name>config.hardware.numCPU</name><val xsi:type="xsd:int">4</val></propSet>
<propSet><name>config.hardware.numCoresPerSocket</name><val xsi:type="xsd:int">2</val></propSet>
<propSet><name>config.hardware.memoryMB</name><val xsi:type="xsd:int">8192</val></propSet>
<propSet><name>config.changeTrackingEnabled</name><val xsi:type="xsd:boolean">true</val></propSet>
<propSet><name>config.cpuAffinity</name><val xsi:type="VirtualMachineAffinityInfo"><affinitySet>4</affinitySet><affinitySet>5</affinitySet><affinitySet>6</affinitySet><affinitySet>7</affinitySet></val></propSet>
<propSet><name>config.cpuHotAddEnabled</name><val xsi:type="xsd:boolean">true</val></propSet>
<propSet><name>config.memoryHotAddEnabled</name><val xsi:type="xsd:boolean">false</val></propSet>
<propSet><name>config.memoryAllocation</name><val xsi:type="ResourceAllocationInfo"><reservation>8192</reservation><expandableReservation>false</expandableReservation><limit>-1</limit></val></propSet>
<propSet><name>config.memoryReservationLockedToMax</name><val xsi:type="xsd:boolean">true</val></propSet>
<propSet><name>config.extraConfig</name><val xsi:type="ArrayOfOptionValue"><OptionValue xsi:type="OptionValue"><key>numa.nodeAffinity</key><value xsi:type="xsd:string">1</value></OptionValue><OptionValue xsi:type="OptionValue"><key>numa.vcpu.maxPerVirtualNode</key><value xsi:type="xsd:string">x</value></OptionValue></val></propSet>
<propSet><name>runtime.powerState</name><val xsi:type="VirtualMachinePowerState">poweredOff</val></propSet>
<propSet><name>config.hardware.device</name><val xsi:type="ArrayOfVirtualDevice">
 <VirtualDevice xsi:type="ParaVirtualSCSIController"><key>1000</key><busNumber>0</busNumber><sharedBus>noSharing</sharedBus></VirtualDevice>
 <VirtualDevice xsi:type="VirtualLsiLogicSASController"><key>1001</key><busNumber>1</busNumber><sharedBus>physicalSharing</sharedBus></VirtualDevice>
 <VirtualDevice xsi:type="VirtualDisk"><key>2000</key><backing xsi:type="VirtualDiskFlatVer2BackingInfo"><fileName>[vsanDatastore] app01/app01.vmdk</fileName><diskMode>persistent</diskMode><thinProvisioned>true</thinProvisioned><uuid>6000C293-0f83-5640-0b2c-082cac6f3574</uuid></backing><controllerKey>1000</controllerKey><unitNumber>0</unitNumber><capacityInKB>41943040</capacityInKB><capacityInBytes>42949672960</capacityInBytes></VirtualDevice>
 <VirtualDevice xsi:type="VirtualDisk"><key>2001</key><backing xsi:type="VirtualDiskFlatVer2BackingInfo"><fileName>[ds2] app01/shared.vmdk</fileName><diskMode>independent_persistent</diskMode><sharing>sharingMultiWriter</sharing></backing><controllerKey>1001</controllerKey><unitNumber>3</unitNumber><capacityInBytes>1073741824</capacityInBytes></VirtualDevice>
 <VirtualDevice xsi:type="VirtualVmxnet3"><key>4000</key><backing xsi:type="VirtualEthernetCardDistributedVirtualPortBackingInfo"><port><switchUuid>50 1a</switchUuid><portgroupKey>dvportgroup-13</portgroupKey><portKey>7</portKey></port></backing><connectable><startConnected>true</startConnected></connectable><addressType>assigned</addressType><macAddress>00:50:56:AA:BB:CC</macAddress></VirtualDevice>
 <VirtualDevice xsi:type="VirtualE1000e"><key>4001</key><backing xsi:type="VirtualEthernetCardNetworkBackingInfo"><deviceName>VM Network</deviceName></backing><addressType>manual</addressType><macAddress>00:50:56:00:00:01</macAddress></VirtualDevice>
</val></propSet>
<propSet><name>layoutEx.file</name><val xsi:type="ArrayOfVirtualMachineFileLayoutExFileInfo"><VirtualMachineFileLayoutExFileInfo><key>0</key><name>[vsanDatastore] app01/app01.vmx</name><type>config</type><size>3100</size></VirtualMachineFileLayoutExFileInfo><VirtualMachineFileLayoutExFileInfo><key>4</key><name>[vsanDatastore] app01/app01.vmdk</name><type>diskDescriptor</type><size>590</size></VirtualMachineFileLayoutExFileInfo><VirtualMachineFileLayoutExFileInfo><key>5</key><name>[vsanDatastore] app01/app01-flat.vmdk</name><type>diskExtent</type><size>7516192768</size><uniqueSize>7516192768</uniqueSize></VirtualMachineFileLayoutExFileInfo><VirtualMachineFileLayoutExFileInfo><key>6</key><name>[vsanDatastore] app01/app01-000001.vmdk</name><type>diskDescriptor</type><size>320</size></VirtualMachineFileLayoutExFileInfo><VirtualMachineFileLayoutExFileInfo><key>7</key><name>[vsanDatastore] app01/app01-000001-delta.vmdk</name><type>diskExtent</type><size>16781312</size></VirtualMachineFileLayoutExFileInfo><VirtualMachineFileLayoutExFileInfo><key>8</key><name>[ds2] app01/shared.vmdk</name><type>diskDescriptor</type><size>not-a-number</size></VirtualMachineFileLayoutExFileInfo></val></propSet>
<propSet><name>layoutEx.disk</name><val xsi:type="ArrayOfVirtualMachineFileLayoutExDiskLayout"><VirtualMachineFileLayoutExDiskLayout><key>2000</key><chain><fileKey>4</fileKey><fileKey>5</fileKey></chain><chain><fileKey>6</fileKey><fileKey>7</fileKey></chain></VirtualMachineFileLayoutExDiskLayout><VirtualMachineFileLayoutExDiskLayout><key>2001</key><chain><fileKey>8</fileKey></chain></VirtualMachineFileLayoutExDiskLayout></val></propSet>
<propSet><name>snapshot</name><val xsi:type="VirtualMachineSnapshotInfo"><currentSnapshot type="VirtualMachineSnapshot">snapshot-2</currentSnapshot><rootSnapshotList><snapshot type="VirtualMachineSnapshot">snapshot-1</snapshot><name>before</name><id>1</id><childSnapshotList><snapshot type="VirtualMachineSnapshot">snapshot-2</snapshot><name>after</name><id>2</id></childSnapshotList></rootSnapshotList></val></propSet>
</objects>"#;

    fn recorded() -> Vm {
        let e = el(&format!(
            "<r xmlns=\"urn:vim25\"><returnval>{VCENTER_VM}</returnval></r>"
        ));
        let (objs, _) = crate::client::parse_retrieve_result(&e).unwrap();
        let mut names = Names::default();
        names.by_id.insert(
            MoRef::new("DistributedVirtualPortgroup", "dvportgroup-13"),
            ("App-Frontend".into(), None),
        );
        map_vm(&objs[0], &names, "vc.example:443").unwrap()
    }

    /// [tuned]: what the VMX reader takes from `sched.*`, `vcpu.hotadd`, `mem.hotadd`,
    /// vCenter gives as properties; `numa.*` stay in extraConfig. A value that does not
    /// parse (`numa.vcpu.maxPerVirtualNode = x`) is dropped.
    #[test]
    fn tuning_comes_from_the_vm_properties_and_extra_config() {
        let t = recorded().tuning;
        assert_eq!(t.cpu_affinity, [4, 5, 6, 7]);
        assert_eq!(t.numa_node_affinity, [1]);
        assert_eq!(t.vnuma_max_vcpus_per_node, None);
        assert!(t.cpu_hot_add && !t.memory_hot_add);
        assert_eq!(t.memory_reservation_mib, Some(8192));
        assert!(t.memory_pinned);
        // A VM without them has no tuning.
        let bare = VCENTER_VM
            .lines()
            .filter(|l| {
                ![
                    "cpuAffinity",
                    "HotAdd",
                    "memoryAllocation",
                    "LockedToMax",
                    "extraConfig",
                ]
                .iter()
                .any(|k| l.contains(k))
            })
            .collect::<Vec<_>>()
            .join("\n");
        let e = el(&format!(
            "<r xmlns=\"urn:vim25\"><returnval>{bare}</returnval></r>"
        ));
        let (objs, _) = crate::client::parse_retrieve_result(&e).unwrap();
        let vm = map_vm(&objs[0], &Names::default(), "vc.example:443").unwrap();
        assert!(vm.tuning.is_empty(), "{:?}", vm.tuning);
    }

    #[test]
    fn a_fault_tolerance_secondary_and_a_full_root_are_pre_flight_concerns() {
        let text = VCENTER_VM.replace(
            "<propSet><name>snapshot</name>",
            "<propSet><name>config.ftInfo</name><val xsi:type=\"FaultToleranceSecondaryConfigInfo\"><instanceUuid>5011</instanceUuid><role>2</role></val></propSet>\
             <propSet><name>guest.disk</name><val xsi:type=\"ArrayOfGuestDiskInfo\"><GuestDiskInfo><diskPath>/</diskPath><capacity>10737418240</capacity><freeSpace>1048576</freeSpace></GuestDiskInfo><GuestDiskInfo><diskPath>/srv</diskPath><capacity>x</capacity><freeSpace>0</freeSpace></GuestDiskInfo></val></propSet>\
             <propSet><name>snapshot</name>",
        );
        let e = el(&format!(
            "<r xmlns=\"urn:vim25\"><returnval>{text}</returnval></r>"
        ));
        let (objs, _) = crate::client::parse_retrieve_result(&e).unwrap();
        let vm = map_vm(&objs[0], &Names::default(), "vc.example:443").unwrap();
        assert_eq!(vm.fault_tolerance, Some(FaultTolerance::Secondary));
        assert_eq!(
            vm.guest_filesystems,
            [GuestFilesystem {
                path: "/".into(),
                capacity: 10 << 30,
                free: 1 << 20
            }]
        );
        let ids: Vec<&str> = vm.concerns.iter().map(|c| c.id.as_str()).collect();
        assert!(ids.contains(&"fault-tolerance-secondary"), "{ids:?}");
        assert!(ids.contains(&"guest-free-space-low"), "{ids:?}");
        assert_eq!(recorded().fault_tolerance, None);
    }

    #[test]
    fn a_server_claiming_zero_vcpus_or_memory_gets_critical_concerns_not_defaults() {
        let text = VCENTER_VM
            .replace(
                "numCPU</name><val xsi:type=\"xsd:int\">4<",
                "numCPU</name><val xsi:type=\"xsd:int\">0<",
            )
            .replace(
                "memoryMB</name><val xsi:type=\"xsd:int\">8192<",
                "memoryMB</name><val xsi:type=\"xsd:int\">0<",
            );
        assert_ne!(text, VCENTER_VM);
        let e = el(&format!(
            "<r xmlns=\"urn:vim25\"><returnval>{text}</returnval></r>"
        ));
        let (objs, _) = crate::client::parse_retrieve_result(&e).unwrap();
        let mut vm = map_vm(&objs[0], &Names::default(), "vc.example:443").unwrap();
        assert_eq!((vm.cpu.count, vm.memory_mib), (0, 0));
        v2k_inventory::preflight::assess(&mut vm);
        for id in ["vcpu-count-unsupported", "memory-size-unsupported"] {
            assert!(
                vm.concerns
                    .iter()
                    .any(|c| c.id == id && c.severity == Severity::Critical),
                "{id}: {:?}",
                vm.concerns
            );
        }
    }

    #[test]
    fn maps_a_recorded_vcenter_vm() {
        let vm = recorded();
        assert_eq!(vm.name, "app&01");
        // The disk's identity, as the guest saw it with disk.EnableUUID.
        assert_eq!(
            vm.disks[0].uuid.as_deref(),
            Some("6000c2930f8356400b2c082cac6f3574")
        );
        assert_eq!(vm.disks[1].uuid, None);
        assert_eq!(vm.source.kind, SourceKind::Vsphere);
        assert_eq!(
            vm.bios_uuid.as_deref(),
            Some("4211abcd-0000-1111-2222-333344445555")
        );
        assert_eq!(vm.guest_os.family, OsFamily::Linux);
        assert_eq!(
            vm.firmware,
            Firmware {
                kind: FirmwareKind::Efi,
                secure_boot: true
            }
        );
        assert_eq!(
            vm.cpu,
            Cpu {
                count: 4,
                cores_per_socket: 2
            }
        );
        assert_eq!(vm.memory_mib, 8192);
        assert_eq!(vm.hardware_version, Some(19));
        assert!(vm.cbt);
        assert_eq!(vm.power_state, Some(PowerState::PoweredOff));
        assert_eq!(vm.controllers.len(), 2);
        assert_eq!(vm.controllers[1].model, ControllerModel::Lsisas1068);
        assert_eq!(vm.controllers[1].shared_bus.as_deref(), Some("physical"));
        let d = &vm.disks[0];
        assert_eq!(d.id, "scsi0:0");
        assert_eq!(d.capacity, Some(42_949_672_960));
        assert_eq!(
            d.location,
            DiskLocation::Datastore {
                datastore: "vsanDatastore".into(),
                path: "app01/app01.vmdk".into(),
                datacenter: String::new(),
                thin: true
            }
        );
        // layoutEx: the thin disk's descriptor, extent and snapshot delta, not its
        // 40 GiB capacity; a size that does not parse gives no figure.
        assert_eq!(
            vm.disks[0].populated_size,
            Some(590 + 7_516_192_768 + 320 + 16_781_312)
        );
        let d = &vm.disks[1];
        assert_eq!(d.populated_size, None);
        assert_eq!(d.id, "scsi1:3");
        assert_eq!(d.mode, DiskMode::IndependentPersistent);
        assert_eq!(d.sharing, Sharing::MultiWriter);
        let n = &vm.nics[0];
        assert_eq!(n.model, NicModel::Vmxnet3);
        assert_eq!(n.mac.as_deref(), Some("00:50:56:aa:bb:cc"));
        assert_eq!(n.address_type, AddressType::Vpx);
        assert_eq!(n.network.as_deref(), Some("App-Frontend"));
        assert_eq!(n.dvs.as_ref().unwrap().port_id.as_deref(), Some("7"));
        assert_eq!(vm.nics[1].network.as_deref(), Some("VM Network"));
        assert_eq!(vm.nics[1].address_type, AddressType::Static);
        assert_eq!(vm.snapshots.len(), 2);
        assert!(vm.snapshots[1].current && !vm.snapshots[0].current);
        let ids: Vec<_> = vm.concerns.iter().map(|c| c.id.as_str()).collect();
        for want in [
            "disk-shared",
            "disk-independent",
            "snapshots-present",
            "secure-boot",
            "scsi-bus-sharing",
        ] {
            assert!(ids.contains(&want), "{want} missing from {ids:?}");
        }
        assert!(!ids.contains(&POWERED_ON));
    }

    #[test]
    fn a_powered_on_vm_is_critical_and_serialises_kebab_case() {
        let e = el(&format!(
            "<r xmlns=\"urn:vim25\"><returnval>{}</returnval></r>",
            VCENTER_VM.replace(">poweredOff<", ">poweredOn<")
        ));
        let (objs, _) = crate::client::parse_retrieve_result(&e).unwrap();
        let vm = map_vm(&objs[0], &Names::default(), "vc").unwrap();
        assert_eq!(vm.concerns[0].id, POWERED_ON);
        assert_eq!(vm.concerns[0].severity, Severity::Critical);
        let v = serde_json::to_value(&vm).unwrap();
        assert_eq!(v["power-state"], "powered-on");
        assert_eq!(v["source"]["kind"], "vsphere");
        assert_eq!(v["disks"][0]["location"]["kind"], "datastore");
        let back: Vm = serde_json::from_value(v).unwrap();
        assert_eq!(back, vm);
    }
}
