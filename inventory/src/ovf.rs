//! OVF 1.x / 2.x descriptors: parsed with quick-xml into a small bounded tree, then
//! mapped to the VM model, one [`Vm`] per `VirtualSystem` (a
//! `VirtualSystemCollection` yields several).
//!
//! The descriptor is untrusted: DOCTYPE (and so every entity declaration, external or
//! billion-laughs) is refused outright, only XML's predefined entities are expanded,
//! and size, depth and element count are capped before anything grows. Elements and
//! attributes are matched by local name, so `ovf:`, `rasd:`, `vmw:` and OVF 2.0's
//! `epasd:`/`sasd:` prefixes all work whatever namespace prefix a producer picked.
//!
//! Where a disk's bytes are is left to the caller (directory or OVA) through
//! [`FileRef`] and a locate function, so both packagings share this mapping.

use std::collections::HashMap;

use quick_xml::events::Event;

use crate::model::*;

/// A descriptor larger than this is refused before parsing. vSphere and ovftool
/// write 10–100 KiB; a long EULA in a ProductSection stays well under 1 MiB.
pub(crate) const MAX_OVF_BYTES: u64 = 8 << 20;
/// OVF nests about 6 deep (Envelope/VirtualSystem/VirtualHardwareSection/Item/x);
/// anything past this is an attack on the stack, not a descriptor.
pub const MAX_DEPTH: usize = 64;
/// Element count cap: a 64-disk VM has a few thousand elements.
pub const MAX_ELEMENTS: usize = 200_000;

/// One element: local name, attributes by local name, text, children.
#[derive(Debug, Default, Clone)]
pub struct Node {
    pub name: String,
    pub attrs: Vec<(String, String)>,
    pub text: String,
    pub children: Vec<Node>,
}

impl Node {
    pub fn attr(&self, local: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == local)
            .map(|(_, v)| v.as_str())
    }
    pub fn child(&self, local: &str) -> Option<&Node> {
        self.children.iter().find(|c| c.name == local)
    }
    pub fn children_named<'a>(&'a self, local: &'a str) -> impl Iterator<Item = &'a Node> + 'a {
        self.children.iter().filter(move |c| c.name == local)
    }
    fn child_text(&self, local: &str) -> Option<&str> {
        self.child(local)
            .map(|c| c.text.trim())
            .filter(|t| !t.is_empty())
    }
    fn descendants<'a>(&'a self, local: &str, out: &mut Vec<&'a Node>) {
        for c in &self.children {
            if c.name == local {
                out.push(c);
            } else {
                c.descendants(local, out);
            }
        }
    }
}

fn local(qname: &[u8]) -> String {
    let s = String::from_utf8_lossy(qname);
    match s.rsplit_once(':') {
        Some((_, l)) => l.to_string(),
        None => s.into_owned(),
    }
}

/// Why an OVF descriptor was refused ([`parse_tree`], [`parse`]). Parser errors are
/// fields written into the one-line message (callers embed it in their own), not
/// `#[source]`s.
#[derive(Debug, thiserror::Error)]
pub enum OvfError {
    #[error("descriptor over the {MAX_OVF_BYTES}-byte limit")]
    TooLarge,
    #[error("descriptor is not UTF-8")]
    NotUtf8,
    #[error("XML error at byte {at}: {error}")]
    Xml { at: u64, error: quick_xml::Error },
    #[error("DOCTYPE (and entity declarations) refused")]
    DocType,
    #[error("more than {MAX_ELEMENTS} elements")]
    TooManyElements,
    #[error("bad attribute: {detail}")]
    BadAttribute { detail: String },
    #[error("bad attribute value: {detail}")]
    BadAttributeValue { detail: String },
    #[error("nesting deeper than {MAX_DEPTH}")]
    TooDeep,
    #[error("unbalanced end tag")]
    UnbalancedEndTag,
    #[error("bad text: {detail}")]
    BadText { detail: String },
    #[error("unexpected end of document")]
    UnexpectedEnd,
    #[error("root element is {name:?}, not Envelope")]
    WrongRoot { name: String },
    #[error("no single root element")]
    NoSingleRoot,
    #[error("File without ovf:id")]
    FileWithoutId,
    #[error("File {id:?} without ovf:href")]
    FileWithoutHref { id: String },
    #[error("File {id:?}: bad ovf:{attribute} {value:?}")]
    BadFileNumber {
        id: String,
        attribute: String,
        value: String,
    },
    #[error("File {id:?}: unsupported compression {compression:?}")]
    UnsupportedCompression { id: String, compression: String },
    #[error("File id {id:?} declared twice")]
    DuplicateFileId { id: String },
}

/// Parses XML into a bounded tree. Fails on DOCTYPE, unknown entities, malformed XML,
/// and the limits above.
pub(crate) fn parse_tree(bytes: &[u8]) -> Result<Node, OvfError> {
    if bytes.len() as u64 > MAX_OVF_BYTES {
        return Err(OvfError::TooLarge);
    }
    let text = std::str::from_utf8(bytes).map_err(|_| OvfError::NotUtf8)?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut reader = quick_xml::Reader::from_str(text);
    reader.config_mut().trim_text(true);
    let mut stack: Vec<Node> = vec![Node::default()];
    let mut count = 0usize;
    loop {
        let ev = reader.read_event().map_err(|error| OvfError::Xml {
            at: reader.buffer_position(),
            error,
        })?;
        match ev {
            Event::DocType(_) => return Err(OvfError::DocType),
            Event::Start(ref e) | Event::Empty(ref e) => {
                count += 1;
                if count > MAX_ELEMENTS {
                    return Err(OvfError::TooManyElements);
                }
                let mut node = Node {
                    name: local(e.name().as_ref()),
                    ..Node::default()
                };
                for a in e.attributes() {
                    let a = a.map_err(|e| OvfError::BadAttribute {
                        detail: e.to_string(),
                    })?;
                    let key = a.key.as_ref();
                    if key.starts_with(b"xmlns") {
                        continue;
                    }
                    let v = a
                        .unescape_value()
                        .map_err(|e| OvfError::BadAttributeValue {
                            detail: e.to_string(),
                        })?;
                    node.attrs.push((local(key), v.into_owned()));
                }
                if matches!(ev, Event::Start(_)) {
                    if stack.len() > MAX_DEPTH {
                        return Err(OvfError::TooDeep);
                    }
                    stack.push(node);
                } else if let Some(parent) = stack.last_mut() {
                    parent.children.push(node);
                }
            }
            Event::End(_) => {
                let node = stack.pop().ok_or(OvfError::UnbalancedEndTag)?;
                stack
                    .last_mut()
                    .ok_or(OvfError::UnbalancedEndTag)?
                    .children
                    .push(node);
            }
            Event::Text(t) => {
                let t = t.unescape().map_err(|e| OvfError::BadText {
                    detail: e.to_string(),
                })?;
                if let Some(n) = stack.last_mut() {
                    n.text.push_str(&t);
                }
            }
            Event::CData(t) => {
                if let Some(n) = stack.last_mut() {
                    n.text.push_str(&String::from_utf8_lossy(&t));
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if stack.len() != 1 {
        return Err(OvfError::UnexpectedEnd);
    }
    let doc = stack.pop().unwrap_or_default();
    let mut roots = doc.children.into_iter();
    match (roots.next(), roots.next()) {
        (Some(root), None) if root.name == "Envelope" => Ok(root),
        (Some(root), None) => Err(OvfError::WrongRoot { name: root.name }),
        _ => Err(OvfError::NoSingleRoot),
    }
}

/// A `References/File` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRef {
    pub id: String,
    pub href: String,
    pub size: Option<u64>,
    pub compression: Option<Compression>,
    pub chunk_size: Option<u64>,
}

/// A parsed descriptor: the tree plus its References.
#[derive(Debug)]
pub struct Descriptor {
    pub root: Node,
    pub files: Vec<FileRef>,
}

/// Parses a descriptor and its References section.
pub fn parse(bytes: &[u8]) -> Result<Descriptor, OvfError> {
    let root = parse_tree(bytes)?;
    let mut files = Vec::new();
    if let Some(refs) = root.child("References") {
        for f in refs.children_named("File") {
            let id = f.attr("id").ok_or(OvfError::FileWithoutId)?.to_string();
            let href = f
                .attr("href")
                .ok_or_else(|| OvfError::FileWithoutHref { id: id.clone() })?
                .to_string();
            let num = |k: &str| -> Result<Option<u64>, OvfError> {
                f.attr(k)
                    .map(|v| {
                        v.trim().parse().map_err(|_| OvfError::BadFileNumber {
                            id: id.clone(),
                            attribute: k.to_string(),
                            value: v.to_string(),
                        })
                    })
                    .transpose()
            };
            let compression = match f.attr("compression") {
                None | Some("identity") | Some("") => None,
                Some("gzip") => Some(Compression::Gzip),
                Some(other) => {
                    return Err(OvfError::UnsupportedCompression {
                        id,
                        compression: other.to_string(),
                    })
                }
            };
            if files.iter().any(|x: &FileRef| x.id == id) {
                return Err(OvfError::DuplicateFileId { id });
            }
            files.push(FileRef {
                size: num("size")?,
                chunk_size: num("chunkSize")?,
                id,
                href,
                compression,
            });
        }
    }
    Ok(Descriptor { root, files })
}

/// Bytes per unit of a CIM programmatic unit (`byte * 2^20`, `MegaBytes`...).
pub(crate) fn unit_bytes(units: &str) -> Option<u64> {
    let u: String = units
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_lowercase();
    match u.as_str() {
        "" | "byte" | "bytes" => return Some(1),
        "kilobytes" | "kb" => return Some(1 << 10),
        "megabytes" | "mb" => return Some(1 << 20),
        "gigabytes" | "gb" => return Some(1 << 30),
        "terabytes" | "tb" => return Some(1 << 40),
        _ => {}
    }
    let mut parts = u.split('*');
    if parts.next()? != "byte" {
        return None;
    }
    let mut total: u64 = 1;
    for p in parts {
        let f = match p.split_once('^') {
            Some((b, e)) => b.parse::<u64>().ok()?.checked_pow(e.parse().ok()?)?,
            None => p.parse().ok()?,
        };
        total = total.checked_mul(f)?;
    }
    Some(total)
}

fn scaled(q: &str, units: Option<&str>) -> Option<u64> {
    q.trim()
        .parse::<u64>()
        .ok()?
        .checked_mul(unit_bytes(units.unwrap_or("byte"))?)
}

/// One `VirtualHardwareSection` item, by rasd field local name.
struct Item<'a>(&'a Node);

impl Item<'_> {
    fn get(&self, k: &str) -> Option<&str> {
        self.0.child_text(k)
    }
    fn num(&self, k: &str) -> Option<u32> {
        self.get(k).and_then(|v| v.parse().ok())
    }
    fn config(&self, key: &str) -> Option<&str> {
        self.0
            .children_named("Config")
            .find(|c| c.attr("key") == Some(key))
            .and_then(|c| c.attr("value"))
    }
}

/// Maps every VirtualSystem to a VM. `locate` turns a file reference into a disk
/// location (and may fail fatally, e.g. on an unsafe href).
pub fn to_vms<E>(
    d: &Descriptor,
    source: &Source,
    mut locate: impl FnMut(&FileRef) -> Result<DiskLocation, E>,
) -> Result<Vec<Vm>, E>
where
    E: From<String>,
{
    let mut systems = Vec::new();
    d.root.descendants("VirtualSystem", &mut systems);
    if systems.is_empty() {
        return Err(E::from("no VirtualSystem in the descriptor".to_string()));
    }
    let disk_defs: Vec<&Node> = d
        .root
        .children_named("DiskSection")
        .chain(d.root.children_named("VirtualDiskDescSection"))
        .flat_map(|s| s.children_named("Disk"))
        .collect();
    let mut vms = Vec::new();
    for vs in systems {
        let mut vm = Vm::empty(source.kind, source.path.clone());
        vm.source = source.clone();
        vm.name = vs
            .child_text("Name")
            .or_else(|| vs.attr("id"))
            .unwrap_or("unnamed")
            .to_string();
        if let Some(os) = vs.child("OperatingSystemSection") {
            vm.guest_os.cim_id = os.attr("id").and_then(|v| v.parse().ok());
            vm.guest_os.id = os.attr("osType").map(str::to_string);
            vm.guest_os.description = os.child_text("Description").map(str::to_string);
            let hint = vm
                .guest_os
                .id
                .clone()
                .or(vm.guest_os.description.clone())
                .unwrap_or_default();
            vm.guest_os.family = os_family(&hint);
            if vm.guest_os.family == OsFamily::Other {
                let h = hint.to_ascii_lowercase();
                if h.contains("windows") {
                    vm.guest_os.family = OsFamily::Windows;
                } else if h.contains("linux") {
                    vm.guest_os.family = OsFamily::Linux;
                }
            }
        }
        let Some(hw) = vs.child("VirtualHardwareSection") else {
            vms.push(vm);
            continue;
        };
        if let Some(t) = hw
            .child("System")
            .and_then(|s| s.child_text("VirtualSystemType"))
        {
            vm.hardware_version = t
                .split_whitespace()
                .filter_map(|w| w.strip_prefix("vmx-")?.parse().ok())
                .max();
        }
        // vmw:Config and vmw:ExtraConfig at section level.
        let mut cfg: HashMap<String, String> = HashMap::new();
        for c in hw
            .children
            .iter()
            .filter(|c| c.name == "Config" || c.name == "ExtraConfig")
        {
            if let (Some(k), Some(v)) = (c.attr("key"), c.attr("value")) {
                cfg.insert(k.to_ascii_lowercase(), v.to_string());
            }
        }
        let truthy = |k: &str| cfg.get(k).is_some_and(|v| v.eq_ignore_ascii_case("true"));
        if cfg
            .get("firmware")
            .is_some_and(|f| f.eq_ignore_ascii_case("efi"))
        {
            vm.firmware.kind = FirmwareKind::Efi;
        }
        vm.firmware.secure_boot =
            truthy("bootoptions.efisecurebootenabled") || truthy("uefi.secureboot.enabled");
        vm.cbt = truthy("ctkenabled") || truthy("changetrackingenabled");
        vm.disk_enable_uuid = truthy("disk.enableuuid");
        vm.tpm = truthy("vtpm.present");
        vm.bios_uuid = cfg.get("uuid.bios").and_then(|u| {
            let h: String = u
                .chars()
                .filter(char::is_ascii_hexdigit)
                .collect::<String>()
                .to_ascii_lowercase();
            (h.len() == 32).then(|| {
                format!(
                    "{}-{}-{}-{}-{}",
                    &h[0..8],
                    &h[8..12],
                    &h[12..16],
                    &h[16..20],
                    &h[20..32]
                )
            })
        });

        let items: Vec<Item> = hw
            .children
            .iter()
            .filter(|c| matches!(c.name.as_str(), "Item" | "StorageItem" | "EthernetPortItem"))
            .map(Item)
            .collect();
        // Controllers first, so devices can find them by InstanceID.
        let mut ctrl_by_id: HashMap<String, (BusKind, u32)> = HashMap::new();
        let mut next_index: HashMap<BusKind, u32> = HashMap::new();
        for it in &items {
            let sub = it.get("ResourceSubType").unwrap_or("").to_string();
            let sub_l = sub.to_ascii_lowercase();
            let (bus, model) = match it.num("ResourceType") {
                Some(5) => (BusKind::Ide, ControllerModel::Ide),
                Some(6) => (
                    BusKind::Scsi,
                    match sub_l.as_str() {
                        "virtualscsi" | "pvscsi" => ControllerModel::Pvscsi,
                        "lsilogic" => ControllerModel::Lsilogic,
                        "lsilogicsas" | "lsisas1068" => ControllerModel::Lsisas1068,
                        "buslogic" => ControllerModel::Buslogic,
                        _ => ControllerModel::Unknown,
                    },
                ),
                Some(20) if sub_l.contains("nvme") => (BusKind::Nvme, ControllerModel::Nvme),
                Some(20) => (
                    BusKind::Sata,
                    if sub_l.contains("ahci") || sub_l.is_empty() {
                        ControllerModel::Ahci
                    } else {
                        ControllerModel::Unknown
                    },
                ),
                _ => continue,
            };
            let n = next_index.entry(bus).or_insert(0);
            let index = it.num("Address").unwrap_or(*n);
            *n = (*n).max(index.saturating_add(1));
            if let Some(id) = it.get("InstanceID") {
                ctrl_by_id.insert(id.to_string(), (bus, index));
            }
            vm.controllers.push(Controller {
                bus,
                index,
                model,
                raw_model: (model == ControllerModel::Unknown).then_some(sub),
                shared_bus: None,
            });
        }
        vm.controllers.sort_by_key(|c| (c.bus, c.index));

        let slot_of = |it: &Item| -> Option<Slot> {
            let (bus, controller) = *ctrl_by_id.get(it.get("Parent")?)?;
            Some(Slot {
                bus,
                controller,
                unit: it.num("AddressOnParent").unwrap_or(0),
            })
        };
        for it in &items {
            let rt = it.num("ResourceType");
            match rt {
                Some(3) => {
                    // Kept as written: 0, absent or unparseable is 0, which
                    // pre-flight reports with the values past MAX_VCPUS.
                    vm.cpu.count = it.num("VirtualQuantity").unwrap_or(0);
                    vm.cpu.cores_per_socket =
                        it.num("CoresPerSocket").filter(|&n| n > 0).unwrap_or(1);
                }
                Some(4) => {
                    let quantity = it.get("VirtualQuantity");
                    let bytes = quantity.and_then(|q| scaled(q, it.get("AllocationUnits")));
                    vm.memory_mib = bytes.map(|b| b >> 20).unwrap_or(0);
                    // Not a number, an unknown unit, or more bytes than a u64 holds:
                    // said as written, not as the 0 it becomes.
                    if let (Some(q), None) = (quantity, bytes) {
                        vm.concerns.push(Concern {
                            id: "memory-size-unsupported".into(),
                            severity: Severity::Critical,
                            subject: None,
                            message: format!(
                                "memory VirtualQuantity {q:?} in units {:?} is not a size KVM can use",
                                it.get("AllocationUnits").unwrap_or("byte")
                            ),
                        });
                    }
                }
                Some(10) => {
                    let raw = it.get("ResourceSubType").unwrap_or("").to_string();
                    let model = crate::vmx::nic_model(&raw);
                    let mac = it.get("Address").and_then(crate::vmx::canonical_mac);
                    vm.nics.push(Nic {
                        index: vm.nics.len() as u32,
                        model,
                        raw_model: (model == NicModel::Unknown).then_some(raw),
                        address_type: if mac.is_some() {
                            AddressType::Static
                        } else {
                            AddressType::Generated
                        },
                        mac,
                        network: it.get("Connection").map(str::to_string),
                        connection_type: None,
                        dvs: None,
                        start_connected: it
                            .get("AutomaticAllocation")
                            .is_none_or(|v| v.eq_ignore_ascii_case("true")),
                    });
                }
                Some(14..=16) => {
                    let host = it.get("HostResource");
                    let file = host.and_then(|h| {
                        let id = h
                            .strip_prefix("ovf:/file/")
                            .or_else(|| h.strip_prefix("/file/"))?;
                        d.files.iter().find(|f| f.id == id).map(|f| f.href.clone())
                    });
                    vm.removable.push(Removable {
                        kind: if rt == Some(14) {
                            RemovableKind::Floppy
                        } else {
                            RemovableKind::Cdrom
                        },
                        slot: if rt == Some(14) { None } else { slot_of(it) },
                        backing: if file.is_some() {
                            RemovableBacking::Image
                        } else {
                            RemovableBacking::None
                        },
                        file,
                        start_connected: it
                            .get("AutomaticAllocation")
                            .is_some_and(|v| v.eq_ignore_ascii_case("true")),
                    });
                }
                Some(17) => {
                    let slot = slot_of(it);
                    let host = it.get("HostResource").unwrap_or("");
                    let (id, def, fref) = if let Some(did) = host
                        .strip_prefix("ovf:/disk/")
                        .or_else(|| host.strip_prefix("/disk/"))
                    {
                        let def = disk_defs
                            .iter()
                            .find(|n| n.attr("diskId") == Some(did))
                            .copied();
                        let fref = def
                            .and_then(|n| n.attr("fileRef"))
                            .and_then(|r| d.files.iter().find(|f| f.id == r));
                        (did.to_string(), def, fref)
                    } else if let Some(fid) = host
                        .strip_prefix("ovf:/file/")
                        .or_else(|| host.strip_prefix("/file/"))
                    {
                        (fid.to_string(), None, d.files.iter().find(|f| f.id == fid))
                    } else {
                        (
                            it.get("InstanceID").unwrap_or("disk").to_string(),
                            None,
                            None,
                        )
                    };
                    let capacity = def
                        .and_then(|n| {
                            scaled(n.attr("capacity")?, n.attr("capacityAllocationUnits"))
                        })
                        .or_else(|| {
                            it.get("VirtualQuantity")
                                .and_then(|q| scaled(q, it.get("AllocationUnits")))
                        });
                    let location = match fref {
                        Some(f) => locate(f)?,
                        // A disk with no file is created empty on import.
                        None => DiskLocation::Missing {
                            reference: host.to_string(),
                        },
                    };
                    let mode = match it
                        .config("backing.diskMode")
                        .map(str::to_ascii_lowercase)
                        .as_deref()
                    {
                        Some("independent_persistent") => DiskMode::IndependentPersistent,
                        Some("independent_nonpersistent") => DiskMode::IndependentNonpersistent,
                        Some("nonpersistent") => DiskMode::Nonpersistent,
                        _ => DiskMode::Persistent,
                    };
                    let sharing = if it
                        .config("backing.sharing")
                        .is_some_and(|s| s.eq_ignore_ascii_case("sharingMultiWriter"))
                    {
                        Sharing::MultiWriter
                    } else {
                        Sharing::None
                    };
                    vm.disks.push(Disk {
                        id,
                        slot,
                        capacity,
                        populated_size: def.and_then(|n| n.attr("populatedSize")?.parse().ok()),
                        location,
                        format: def.and_then(|n| n.attr("format")).map(str::to_string),
                        mode,
                        sharing,
                        rdm: None,
                        parents: Vec::new(),
                        uuid: None,
                    });
                }
                Some(21 | 22) => {
                    let port = Port {
                        index: if rt == Some(21) {
                            vm.serial_ports.len()
                        } else {
                            vm.parallel_ports.len()
                        } as u32,
                        backing: it.get("ResourceSubType").map(str::to_string),
                        target: it.get("Connection").map(str::to_string),
                    };
                    if rt == Some(21) {
                        vm.serial_ports.push(port);
                    } else {
                        vm.parallel_ports.push(port);
                    }
                }
                Some(23) => {
                    let sub = it.get("ResourceSubType").unwrap_or("").to_ascii_lowercase();
                    vm.usb.controllers.push(
                        if sub.contains("xhci") {
                            "xhci"
                        } else if sub.contains("ehci") {
                            "ehci"
                        } else {
                            "uhci"
                        }
                        .into(),
                    );
                }
                Some(1) => {
                    let sub = it.get("ResourceSubType").unwrap_or("").to_ascii_lowercase();
                    if sub.contains("pcipassthru")
                        || sub.contains("pcipassthrough")
                        || sub.contains("dvx")
                    {
                        vm.pci_passthrough.push(PciDevice {
                            index: vm.pci_passthrough.len() as u32,
                            id: it.get("ElementName").map(str::to_string),
                            sriov: false,
                        });
                    } else if sub.contains("vtpm") {
                        vm.tpm = true;
                    }
                }
                _ => {}
            }
        }
        vms.push(vm);
    }
    Ok(vms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_doctype_and_entity_declarations() {
        let x = br#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;">]><Envelope>&lol2;</Envelope>"#;
        assert!(parse_tree(x).unwrap_err().to_string().contains("DOCTYPE"));
        let x = br#"<!DOCTYPE x SYSTEM "file:///etc/passwd"><Envelope/>"#;
        assert!(parse_tree(x).unwrap_err().to_string().contains("DOCTYPE"));
    }

    #[test]
    fn refusals_are_typed_errors() {
        assert!(matches!(
            parse_tree(b"<!DOCTYPE x><Envelope/>"),
            Err(OvfError::DocType)
        ));
        let twice = b"<Envelope><References><File id=\"a\" href=\"x\"/><File id=\"a\" href=\"y\"/></References></Envelope>";
        let e = parse(twice).unwrap_err();
        assert!(
            matches!(&e, OvfError::DuplicateFileId { id } if id == "a"),
            "{e:?}"
        );
        assert_eq!(e.to_string(), "File id \"a\" declared twice");
    }

    #[test]
    fn refuses_undeclared_entity_references() {
        assert!(parse_tree(b"<Envelope><Name>&xxe;</Name></Envelope>").is_err());
        let ok = parse_tree(b"<Envelope><Name>a &amp; b &#65;</Name></Envelope>").unwrap();
        assert_eq!(ok.child("Name").unwrap().text, "a & b A");
    }

    #[test]
    fn refuses_deep_nesting_and_oversize_input() {
        let deep = format!(
            "<Envelope>{}{}</Envelope>",
            "<a>".repeat(100),
            "</a>".repeat(100)
        );
        assert!(parse_tree(deep.as_bytes())
            .unwrap_err()
            .to_string()
            .contains("deeper"));
        let big = vec![b' '; (MAX_OVF_BYTES + 1) as usize];
        assert!(parse_tree(&big).unwrap_err().to_string().contains("limit"));
    }

    #[test]
    fn refuses_a_root_that_is_not_envelope_and_truncated_xml() {
        assert!(parse_tree(b"<Other/>").is_err());
        assert!(parse_tree(b"<Envelope><References>").is_err());
    }

    #[test]
    fn understands_allocation_units() {
        assert_eq!(unit_bytes("byte * 2^20"), Some(1 << 20));
        assert_eq!(unit_bytes("byte*2^30"), Some(1 << 30));
        assert_eq!(unit_bytes("MegaBytes"), Some(1 << 20));
        assert_eq!(unit_bytes("byte * 1024"), Some(1024));
        assert_eq!(unit_bytes("byte * 2^64"), None);
        assert_eq!(unit_bytes("furlongs"), None);
        assert_eq!(scaled("18446744073709551615", Some("byte * 2^20")), None);
    }
}
