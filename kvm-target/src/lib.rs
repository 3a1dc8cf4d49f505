//! The KVM target of a migrated VM: from the VM model and its converted disks, one
//! [`Target`] written two ways — libvirt domain XML ([`domain_xml`]) and a QEMU argv
//! ([`qemu_argv`]) — plus what both need: the accelerator ([`accel`]), the disk bus,
//! the UEFI firmware and the VM's own variable store ([`firmware`]), the VMware tuning
//! mapped onto the destination host ([`tuning`], [`host`]), and the constants the
//! first-boot agent and the validator agree on ([`agent`]).
//!
//! Every name from the VM (untrusted VMware metadata) is escaped in XML and quoted in
//! shell. Unmapped networks get isolated QEMU user networking (`restrict=on`): a guest
//! is never bridged to the host's network unless the network map says so. An EFI
//! guest always runs on a variable store of its own (a copy of the firmware's
//! template), never on the system's template file.

pub mod accel;
pub mod agent;
pub mod dac;
mod domain;
pub mod firmware;
pub mod host;
mod qemu;
pub mod source_shape;
pub mod tuning;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use v2k_inventory::model::{is_mac, FirmwareKind, OsFamily, Vm};

pub use accel::Accel;
pub use dac::{dac_label, DacLabel};
pub use domain::{domain_xml, live_domain_xml, NbdBacking};
pub use firmware::Firmware;
pub use host::{HostSource, HostTopology};
pub use qemu::{qemu_argv, qemu_script, sh_quote, QemuOptions};
pub use tuning::{KvmTuning, TuningMapping};

/// Why a target cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("network map {entry:?}: {problem}")]
    NetworkMap {
        entry: String,
        problem: &'static str,
    },
    #[error("ethernet{index}: no valid MAC address in the VM model; the target must keep it")]
    NoMac { index: u32 },
    #[error("VM {vm:?}: refusing to build a KVM machine: {}", problems.join("; "))]
    Unrunnable { vm: String, problems: Vec<String> },
    #[error("{disks} disks do not fit on {bus} (at most {max})")]
    TooManyDisks {
        disks: usize,
        bus: DiskBus,
        max: usize,
    },
    #[error("a live import needs one NBD backing per disk: {disks} disks, {backings} backings")]
    LiveBacking { disks: usize, backings: usize },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The bus the guest's disks sit on under KVM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DiskBus {
    /// virtio-blk: `/dev/vdX`.
    #[serde(rename = "virtio-blk")]
    VirtioBlk,
    /// virtio-scsi: `/dev/sdX`.
    #[serde(rename = "virtio-scsi")]
    VirtioScsi,
}

impl DiskBus {
    /// The name used in logs, markers and targets: `virtio-blk` or `virtio-scsi`.
    pub fn name(self) -> &'static str {
        match self {
            DiskBus::VirtioBlk => "virtio-blk",
            DiskBus::VirtioScsi => "virtio-scsi",
        }
    }
}

/// How many disks v2k puts on virtio-blk. Each virtio-blk disk is a PCIe device
/// behind a root port of its own (a PCIe bus number, a hotplug slot and the
/// firmware's I/O and memory windows each); past a few dozen disks virtio-scsi, one
/// controller for them all, is the practical choice (Red Hat's advice for guests with
/// many disks), and 32 root ports fill four multifunction slots of the root bus.
pub const VIRTIO_BLK_MAX_DISKS: usize = 32;

/// How many disks v2k puts on virtio-scsi: one controller, one target per disk, and
/// QEMU's virtio-scsi addresses targets 0 to 255. VMware's own limit (4 PVSCSI
/// controllers of 64 disks) is the same number.
pub(crate) const VIRTIO_SCSI_MAX_DISKS: usize = 256;

/// The first root-bus slot of the disks' root ports: clear of what libvirt places
/// itself (video at 0x01, its own root ports from 0x02) and of the user-mode NICs
/// at [`USER_NIC_FIRST_SLOT`].
const DISK_PORT_FIRST_SLOT: usize = 0x08;

/// The first root-bus slot of user-mode NICs in libvirt's `qemu:commandline`: after
/// the disks' root ports (`VIRTIO_BLK_MAX_DISKS / 8` slots from 0x08).
pub(crate) const USER_NIC_FIRST_SLOT: usize = 0x18;

/// The functions of one PCI slot, each a root port of its own.
const FUNCTIONS_PER_SLOT: usize = 8;

const _: () = assert!(
    DISK_PORT_FIRST_SLOT + VIRTIO_BLK_MAX_DISKS / FUNCTIONS_PER_SLOT <= USER_NIC_FIRST_SLOT
);

/// Where virtio-blk disk `i`'s root port sits on the root bus: (slot, function),
/// eight ports per multifunction slot, in disk order. The guest scans the root bus
/// in slot and function order and each port's bus below it, so it meets the disks
/// in disk order and names them `vda`, `vdb`... as on VMware.
pub(crate) fn disk_port(i: usize) -> (usize, usize) {
    (
        DISK_PORT_FIRST_SLOT + i / FUNCTIONS_PER_SLOT,
        i % FUNCTIONS_PER_SLOT,
    )
}

impl DiskBus {
    /// How many disks this bus takes.
    pub(crate) fn max_disks(self) -> usize {
        match self {
            DiskBus::VirtioBlk => VIRTIO_BLK_MAX_DISKS,
            DiskBus::VirtioScsi => VIRTIO_SCSI_MAX_DISKS,
        }
    }

    /// The bus for a VM of `disks` disks when this one was asked for: virtio-scsi
    /// when there are more than virtio-blk takes (the injector and the target must
    /// both be given the result, so the guest's device names match its disks).
    pub fn fitting(self, disks: usize) -> DiskBus {
        if self == DiskBus::VirtioBlk && disks > VIRTIO_BLK_MAX_DISKS {
            DiskBus::VirtioScsi
        } else {
            self
        }
    }
}

impl std::fmt::Display for DiskBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The machine type: q35 (PCIe), what current libvirt and virt-v2v choose for x86-64.
pub(crate) const MACHINE: &str = "q35";

/// Where a VMware network goes on KVM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "name", rename_all = "kebab-case")]
pub enum NetTarget {
    /// A libvirt network (`<interface type='network'>`).
    Network(String),
    /// A host bridge (`<interface type='bridge'>`, QEMU `-netdev bridge`).
    Bridge(String),
    /// QEMU user networking with `restrict=on`: DHCP inside QEMU, nothing beyond it.
    User,
}

/// `NAME=TARGET` pairs: `network:NAME`, `bridge:NAME`, or `user`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkMap(pub Vec<(String, NetTarget)>);

impl NetworkMap {
    /// Parses one `--network-map` value.
    pub fn parse_entry(s: &str) -> Result<(String, NetTarget)> {
        let bad = |problem| Error::NetworkMap {
            entry: s.to_string(),
            problem,
        };
        let (name, target) = s.rsplit_once('=').ok_or(bad("expected NAME=TARGET"))?;
        let t = match target.split_once(':') {
            Some(("network", n)) if valid_host_name(n) => NetTarget::Network(n.into()),
            Some(("bridge", n)) if valid_host_name(n) => NetTarget::Bridge(n.into()),
            None if target == "user" => NetTarget::User,
            _ => {
                return Err(bad("TARGET must be network:NAME, bridge:NAME or user \
                     (names: letters, digits, . _ -)"))
            }
        };
        Ok((name.to_string(), t))
    }

    pub fn get(&self, vmware_network: Option<&str>) -> NetTarget {
        vmware_network
            .and_then(|n| self.0.iter().find(|(k, _)| k == n))
            .map(|(_, t)| t.clone())
            .unwrap_or(NetTarget::User)
    }
}

fn valid_host_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct TargetNic {
    pub mac: String,
    /// The VMware network name it was on (untrusted text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmware_network: Option<String>,
    pub target: NetTarget,
}

/// The KVM machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Target {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    pub memory_mib: u64,
    pub vcpus: u32,
    pub sockets: u32,
    pub cores: u32,
    pub firmware: Firmware,
    pub machine: String,
    pub accel: Accel,
    pub disk_bus: DiskBus,
    pub disks: Vec<PathBuf>,
    /// Each disk's VMware identifier (the model's `uuid`, 32 lowercase hex digits), in
    /// disk order, when known: the target gives it to the guest as the disk's serial
    /// (and WWN on virtio-scsi), see [`guest_by_id`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disk_uuids: Vec<Option<String>>,
    pub nics: Vec<TargetNic>,
    /// VMware's placement and resource tuning as applied on the destination host
    /// ([`Target::tune`]); `sockets` already counts a CPU hot-add maximum.
    #[serde(default, skip_serializing_if = "KvmTuning::is_empty")]
    pub tuning: KvmTuning,
}

/// The longest disk serial v2k gives: virtio-blk reports 20 bytes (the virtio spec's
/// `VIRTIO_BLK_ID_BYTES`), and QEMU refuses a longer SCSI serial when it doubles as
/// the device identifier.
pub(crate) const DISK_SERIAL_BYTES: usize = 20;

/// QEMU's and libvirt's WWN is 64 bits: 16 hex digits.
const WWN_HEX_DIGITS: usize = 16;

/// A disk uuid as [`v2k_inventory::model::disk_uuid`] makes it (32 lowercase hex
/// digits); anything else from a hand-edited vm.json is dropped.
fn checked_uuid(u: &str) -> Option<&str> {
    (u.len() == 32
        && u.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    .then_some(u)
}

/// The serial a disk of `uuid` gets: its first 20 digits (all the bus carries;
/// VMware's identifiers differ after the seventh digit, VMware's own prefix `6000c29`).
pub(crate) fn disk_serial(uuid: &str) -> &str {
    &uuid[..DISK_SERIAL_BYTES]
}

/// The WWN a virtio-scsi disk of `uuid` gets: its first 16 digits (QEMU's WWN is 64
/// bits, VMware's NAA identifier 128), so the guest's `wwn-0x…` name is a prefix of the
/// one it had on VMware.
pub(crate) fn disk_wwn(uuid: &str) -> &str {
    &uuid[..WWN_HEX_DIGITS]
}

/// The `/dev/disk/by-id/` name the guest gives a disk of `uuid` on `bus` (udev's
/// rules: `virtio-<serial>` for virtio-blk, `wwn-0x<wwn>` for a SCSI disk with a WWN).
pub(crate) fn guest_by_id(uuid: &str, bus: DiskBus) -> String {
    match bus {
        DiskBus::VirtioBlk => format!("virtio-{}", disk_serial(uuid)),
        DiskBus::VirtioScsi => format!("wwn-0x{}", disk_wwn(uuid)),
    }
}

/// Every `/dev/disk/by-id/` name `vm`'s disks had on VMware (with `disk.EnableUUID`:
/// `scsi-3<uuid>`, `wwn-0x<uuid>`, `scsi-SVMware_Virtual_disk_<uuid>`) and the name each has on the target on `bus`, in
/// disk order: what the injector rewrites in the guest's files. A partition's
/// `-partN` suffix follows its disk's name.
pub fn by_id_renames(vm: &Vm, bus: DiskBus) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for u in vm
        .disks
        .iter()
        .filter_map(|d| d.uuid.as_deref().and_then(checked_uuid))
    {
        let to = guest_by_id(u, bus);
        out.push((format!("scsi-3{u}"), to.clone()));
        out.push((format!("wwn-0x{u}"), to.clone()));
        // udev's name from the unit serial: vendor, model and the same digits.
        out.push((format!("scsi-SVMware_Virtual_disk_{u}"), to));
    }
    out
}

/// Every WWID `vm`'s disks had on VMware (with `disk.EnableUUID`: `3<uuid>`, what
/// `scsi_id` and udev's `ID_SERIAL` say, what multipath and Oracle ASM udev rules name
/// a disk by) and its identifier on the target on `bus`: `3<wwn>` on virtio-scsi
/// (the NAA designator of the disk's 64-bit WWN), the serial on virtio-blk (udev's
/// `ID_SERIAL` there; no SCSI inquiry). In disk order.
pub fn wwid_renames(vm: &Vm, bus: DiskBus) -> Vec<(String, String)> {
    vm.disks
        .iter()
        .filter_map(|d| d.uuid.as_deref().and_then(checked_uuid))
        .map(|u| {
            let to = match bus {
                DiskBus::VirtioBlk => disk_serial(u).to_string(),
                DiskBus::VirtioScsi => format!("3{}", disk_wwn(u)),
            };
            (format!("3{u}"), to)
        })
        .collect()
}

/// vCPU counts and memory sizes KVM cannot run (pre-flight's critical concerns) are
/// refused here too, so a hand-edited or stale vm.json never puts them in domain XML.
fn refuse_unrunnable_size(vm: &Vm) -> Result<()> {
    let problems = v2k_inventory::preflight::machine_size_problems(vm);
    if problems.is_empty() {
        return Ok(());
    }
    Err(Error::Unrunnable {
        vm: vm.name.clone(),
        problems: problems.into_iter().map(|(_, m)| m).collect(),
    })
}

impl Target {
    /// The target of `vm` with its converted `disks` (in the VM's disk order). An EFI
    /// guest's variable store is `NAME_VARS.fd` in `vars_dir` (see [`firmware`]).
    pub fn from_vm(
        vm: &Vm,
        disks: &[PathBuf],
        bus: DiskBus,
        network_map: &NetworkMap,
        accel: Accel,
        vars_dir: &Path,
    ) -> Result<Target> {
        refuse_unrunnable_size(vm)?;
        if disks.len() > bus.max_disks() {
            return Err(Error::TooManyDisks {
                disks: disks.len(),
                bus,
                max: bus.max_disks(),
            });
        }
        let vcpus = vm.cpu.count.max(1);
        let mut cores = vm.cpu.cores_per_socket.max(1);
        if !vcpus.is_multiple_of(cores) {
            cores = 1;
        }
        let mut nics = Vec::new();
        for n in &vm.nics {
            let Some(mac) = n.mac.as_ref().filter(|m| is_mac(m)) else {
                return Err(Error::NoMac { index: n.index });
            };
            nics.push(TargetNic {
                mac: mac.to_lowercase(),
                vmware_network: n.network.clone(),
                target: network_map.get(n.network.as_deref()),
            });
        }
        let uuid = vm
            .bios_uuid
            .clone()
            .filter(|u| u.len() == 36 && u.chars().all(|c| c.is_ascii_hexdigit() || c == '-'));
        let mut t = Target {
            name: vm.name.clone(),
            uuid,
            memory_mib: vm.memory_mib.max(256),
            vcpus,
            sockets: vcpus / cores,
            cores,
            firmware: Firmware::Bios,
            machine: MACHINE.into(),
            accel,
            disk_bus: bus,
            disks: disks.to_vec(),
            disk_uuids: (0..disks.len())
                .map(|i| {
                    vm.disks
                        .get(i)
                        .and_then(|d| d.uuid.as_deref().and_then(checked_uuid))
                        .map(str::to_string)
                })
                .collect(),
            nics,
            tuning: KvmTuning::default(),
        };
        if vm.firmware.kind == FirmwareKind::Efi {
            t.firmware = Firmware::Efi {
                secure_boot: vm.firmware.secure_boot,
                vars: vars_dir.join(format!("{}_VARS.fd", t.safe_name())),
            };
        }
        Ok(t)
    }

    /// Applies `vm`'s VMware tuning on `host` (the destination, see
    /// [`tuning`]); returns the concerns about what the host cannot take.
    pub fn tune(&mut self, vm: &Vm, host: &HostTopology) -> Vec<v2k_inventory::model::Concern> {
        let p = tuning::plan(vm, self.vcpus, self.cores, self.memory_mib, host);
        self.tuning = p.tuning;
        self.sockets = p.sockets;
        p.concerns
    }

    /// This target for a validation boot on the conversion host: without what binds
    /// it to the destination's hardware ([`KvmTuning::without_host_placement`]).
    pub fn for_validation(&self) -> Target {
        Target {
            tuning: self.tuning.without_host_placement(),
            ..self.clone()
        }
    }

    /// vCPUs the machine is built for (the hot-add maximum, else `vcpus`).
    pub(crate) fn max_vcpus(&self) -> u32 {
        self.tuning.max_vcpus_or(self.vcpus)
    }

    fn scsi(&self) -> bool {
        self.disk_bus == DiskBus::VirtioScsi
    }

    /// Disk `i`'s identifier, re-checked (a hand-edited target.json is untrusted).
    fn disk_uuid(&self, i: usize) -> Option<&str> {
        self.disk_uuids
            .get(i)
            .and_then(|u| u.as_deref())
            .and_then(checked_uuid)
    }

    /// Whether the guest boots through UEFI.
    pub fn efi(&self) -> bool {
        matches!(self.firmware, Firmware::Efi { .. })
    }

    /// A name usable as a libvirt domain name and in file names: the VM name with
    /// anything but `[A-Za-z0-9._-]` replaced by `_` (pre-flight's
    /// [`domain_name`](v2k_inventory::preflight::domain_name), so that it can tell
    /// VMs that would get one name).
    pub fn safe_name(&self) -> String {
        v2k_inventory::preflight::domain_name(&self.name)
    }
}

/// Guest-specific machine features the [`Target`] itself does not carry: what a
/// Windows guest wants on KVM.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct GuestFeatures {
    /// Hyper-V enlightenments (relaxed timing, virtual APIC, spinlocks, synthetic
    /// timers, reference TSC...). Windows runs markedly faster with them. Applied only
    /// under KVM: they are a KVM interface, TCG does not provide them.
    pub hyperv: bool,
    /// The RTC holds local time, as Windows keeps it unless `RealTimeIsUniversal=1`.
    pub localtime: bool,
}

impl GuestFeatures {
    /// From the VM model alone: a Windows guest gets both (Windows' default clock).
    pub fn for_vm(vm: &Vm) -> GuestFeatures {
        let windows = vm.guest_os.family == OsFamily::Windows;
        GuestFeatures {
            hyperv: windows,
            localtime: windows,
        }
    }

    /// For an inspected Windows guest: its own clock setting decides.
    pub fn windows(rtc_utc: bool) -> GuestFeatures {
        GuestFeatures {
            hyperv: true,
            localtime: !rtc_utc,
        }
    }
}

/// The Hyper-V enlightenments, as QEMU `-cpu` flags (libvirt's `<hyperv>` names the
/// same features). `hv-stimer` needs `hv-synic` and `hv-time`, `hv-synic` needs
/// `hv-vpindex`.
pub(crate) const HYPERV_FLAGS: [&str; 9] = [
    "hv-relaxed",
    "hv-vapic",
    "hv-spinlocks=0x1fff",
    "hv-vpindex",
    "hv-synic",
    "hv-time",
    "hv-stimer",
    "hv-reset",
    "hv-frequencies",
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firmware::{OVMF_CODE, OVMF_CODE_SECBOOT, OVMF_VARS, OVMF_VARS_SECBOOT};

    #[test]
    fn parses_network_map_entries() {
        assert_eq!(
            NetworkMap::parse_entry("VM Network=bridge:br0").unwrap(),
            ("VM Network".into(), NetTarget::Bridge("br0".into()))
        );
        assert_eq!(
            NetworkMap::parse_entry("a=b=network:default").unwrap(),
            ("a=b".into(), NetTarget::Network("default".into()))
        );
        assert_eq!(
            NetworkMap::parse_entry("x=user").unwrap().1,
            NetTarget::User
        );
        for bad in ["x", "x=bridge:", "x=bridge:a b", "x=tap:t0", "x=network:'"] {
            assert!(NetworkMap::parse_entry(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn vmware_by_id_names_map_to_the_names_the_target_gives() {
        use v2k_inventory::model::{Disk, DiskLocation, DiskMode, Sharing, SourceKind};
        let mut vm = Vm::new_empty(SourceKind::Vmx, "/x/a.vmx".into());
        for uuid in [
            Some("6000c2930f8356400b2c082cac6f3574"),
            None,
            Some("not-hex"),
        ] {
            vm.disks.push(Disk {
                id: "scsi0:0".into(),
                slot: None,
                capacity: None,
                populated_size: None,
                location: DiskLocation::Missing {
                    reference: String::new(),
                },
                format: None,
                mode: DiskMode::Persistent,
                sharing: Sharing::None,
                rdm: None,
                parents: Vec::new(),
                uuid: uuid.map(String::from),
            });
        }
        let u = "6000c2930f8356400b2c082cac6f3574";
        let blk = by_id_renames(&vm, DiskBus::VirtioBlk);
        assert_eq!(
            blk,
            [
                (
                    format!("scsi-3{u}"),
                    "virtio-6000c2930f8356400b2c".to_string()
                ),
                (
                    format!("wwn-0x{u}"),
                    "virtio-6000c2930f8356400b2c".to_string()
                ),
                (
                    format!("scsi-SVMware_Virtual_disk_{u}"),
                    "virtio-6000c2930f8356400b2c".to_string()
                ),
            ]
        );
        let scsi = by_id_renames(&vm, DiskBus::VirtioScsi);
        assert!(scsi.iter().all(|(_, to)| to == "wwn-0x6000c2930f835640"));
        // The target carries the identities in disk order; a hand-edited bad one is
        // dropped, never written into XML.
        vm.cpu.count = 1;
        vm.memory_mib = 512;
        let t = Target::from_vm(
            &vm,
            &[
                PathBuf::from("/a"),
                PathBuf::from("/b"),
                PathBuf::from("/c"),
            ],
            DiskBus::VirtioBlk,
            &NetworkMap::default(),
            Accel::Tcg,
            Path::new("/o"),
        )
        .unwrap();
        assert_eq!(t.disk_uuids, [Some(u.to_string()), None, None]);
        let xml = domain_xml(&t, &GuestFeatures::default());
        assert_eq!(xml.matches("<serial>").count(), 1, "{xml}");
    }

    #[test]
    fn quotes_shell_words() {
        assert_eq!(sh_quote("-m"), "-m");
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), "'it'\\''s'");
        assert_eq!(sh_quote("$(reboot)"), "'$(reboot)'");
        assert_eq!(sh_quote(""), "''");
    }

    fn efi_target(accel: Accel, secure_boot: bool) -> Target {
        Target {
            name: "win".into(),
            uuid: None,
            memory_mib: 2048,
            vcpus: 2,
            sockets: 1,
            cores: 2,
            firmware: Firmware::Efi {
                secure_boot,
                vars: PathBuf::from("/run/v2k/win_VARS.fd"),
            },
            machine: MACHINE.into(),
            accel,
            disk_bus: DiskBus::VirtioBlk,
            disks: vec![PathBuf::from("/v/disk0.qcow2")],
            disk_uuids: Vec::new(),
            nics: Vec::new(),
            tuning: KvmTuning::default(),
        }
    }

    #[test]
    fn live_domain_backs_each_overlay_with_its_nbd_socket_and_stops_on_errors() {
        let mut t = efi_target(Accel::Tcg, false);
        t.firmware = Firmware::Bios;
        t.disks.push(PathBuf::from("/v/disk1 & co.qcow2"));
        let backing = [
            NbdBacking {
                socket: PathBuf::from("/run/v2k/live/disk0.sock"),
                export: "disk".into(),
            },
            NbdBacking {
                socket: PathBuf::from("/run/v2k/live/d'1.sock"),
                export: "disk".into(),
            },
        ];
        let f = GuestFeatures::default();
        assert!(matches!(
            live_domain_xml(&t, &f, &backing[..1]),
            Err(Error::LiveBacking {
                disks: 2,
                backings: 1
            })
        ));
        let xml = live_domain_xml(&t, &f, &backing).unwrap();
        assert_eq!(
            xml.matches("error_policy='stop' rerror_policy='stop'")
                .count(),
            2,
            "{xml}"
        );
        assert!(xml.contains(
            "<source file='/v/disk0.qcow2'/>\n      <backingStore type='network'>\n        \
             <format type='raw'/>\n        <source protocol='nbd' name='disk'>\n          \
             <host transport='unix' socket='/run/v2k/live/disk0.sock'/>"
        ));
        assert!(
            xml.contains("socket='/run/v2k/live/d&apos;1.sock'"),
            "{xml}"
        );
        assert!(
            xml.contains("<source file='/v/disk1 &amp; co.qcow2'/>"),
            "{xml}"
        );
        // The cold path's XML has neither.
        let cold = domain_xml(&t, &f);
        assert!(!cold.contains("backingStore") && !cold.contains("error_policy"));
        // libvirt's schema accepts it (libvirt-clients, scripts/setup.sh).
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("live.xml");
        std::fs::write(&path, &xml).unwrap();
        let o = std::process::Command::new("virt-xml-validate")
            .arg(&path)
            .arg("domain")
            .output()
            .expect("virt-xml-validate (libvirt-clients, scripts/setup.sh)");
        assert!(
            o.status.success(),
            "{}\n{xml}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    #[test]
    fn windows_gets_hyperv_and_localtime_under_kvm() {
        let f = GuestFeatures::windows(false);
        let t = efi_target(Accel::Kvm, true);
        let xml = domain_xml(&t, &f);
        assert!(xml.contains("<hyperv mode='custom'>"), "{xml}");
        assert!(xml.contains("<clock offset='localtime'>"), "{xml}");
        assert!(xml.contains("hypervclock"), "{xml}");
        assert!(xml.contains("machine='q35'"));
        let argv = qemu_argv(&t, &QemuOptions::default(), &f);
        let cpu = &argv[argv.iter().position(|a| a == "-cpu").unwrap() + 1];
        assert!(
            cpu.starts_with("host,hv-relaxed") && cpu.contains("hv-stimer"),
            "{cpu}"
        );
        assert!(argv
            .windows(2)
            .any(|w| w[0] == "-rtc" && w[1].starts_with("base=localtime")));
    }

    #[test]
    fn tcg_and_utc_guests_get_neither() {
        let t = efi_target(Accel::Tcg, false);
        let xml = domain_xml(&t, &GuestFeatures::windows(true));
        assert!(!xml.contains("<hyperv"), "{xml}");
        assert!(xml.contains("<clock offset='utc'>"), "{xml}");
        let argv = qemu_argv(&t, &QemuOptions::default(), &GuestFeatures::windows(false));
        assert!(!argv.iter().any(|a| a.contains("hv-")), "{argv:?}");
    }

    #[test]
    fn an_efi_guest_runs_on_its_own_variable_store_never_the_template() {
        for secure_boot in [false, true] {
            let t = efi_target(Accel::Tcg, secure_boot);
            let (code, tmpl) = if secure_boot {
                (OVMF_CODE_SECBOOT, OVMF_VARS_SECBOOT)
            } else {
                (OVMF_CODE, OVMF_VARS)
            };
            let argv = qemu_argv(&t, &QemuOptions::default(), &GuestFeatures::default());
            let joined = argv.join(" ");
            assert!(
                joined.contains(&format!("readonly=on,file={code}")),
                "{joined}"
            );
            assert!(
                joined.contains("if=pflash,format=raw,file=/run/v2k/win_VARS.fd"),
                "{joined}"
            );
            assert!(!joined.contains(tmpl), "template handed to QEMU: {joined}");
            assert_eq!(joined.contains("smm=on"), secure_boot, "{joined}");
            let xml = domain_xml(&t, &GuestFeatures::default());
            assert!(xml.contains("<nvram>/run/v2k/win_VARS.fd</nvram>"), "{xml}");
            assert!(!xml.contains(tmpl), "{xml}");
            // Secure Boot is stated either way, so libvirt cannot pick it on its own.
            let on = if secure_boot { "yes" } else { "no" };
            assert!(
                xml.contains(&format!("<feature enabled='{on}' name='secure-boot'/>")),
                "{xml}"
            );
            assert_eq!(xml.contains("<smm state='on'/>"), secure_boot, "{xml}");
        }
    }

    #[test]
    fn a_vm_kvm_cannot_run_is_refused_before_any_xml() {
        use v2k_inventory::model::SourceKind;
        let build = |vcpus: u32, mib: u64| {
            let mut vm = Vm::new_empty(SourceKind::Vmx, "/x/a.vmx".into());
            vm.name = "hostile".into();
            vm.cpu.count = vcpus;
            vm.memory_mib = mib;
            Target::from_vm(
                &vm,
                &[],
                DiskBus::VirtioBlk,
                &NetworkMap::default(),
                Accel::Tcg,
                Path::new("/o"),
            )
        };
        for (vcpus, mib, want) in [
            (100_000, 1024, "100000 vCPUs"),
            (0, 1024, "0 vCPUs"),
            (2, 0, "memory size 0 MiB"),
            (2, u64::MAX, "memory size 18446744073709551615 MiB"),
        ] {
            let e = build(vcpus, mib).unwrap_err().to_string();
            assert!(e.contains("\"hostile\"") && e.contains(want), "{e}");
        }
        let t = build(4, 4096).unwrap();
        assert_eq!((t.vcpus, t.memory_mib), (4, 4096));
    }

    #[test]
    fn from_vm_puts_the_variable_store_in_the_given_directory() {
        let mut vm = Vm::new_empty(v2k_inventory::model::SourceKind::Vmx, "/x/web.vmx".into());
        vm.name = "web 01/x".into();
        vm.cpu.count = 1;
        vm.memory_mib = 512;
        vm.firmware.kind = FirmwareKind::Efi;
        let t = Target::from_vm(
            &vm,
            &[PathBuf::from("/o/disks/scsi0-0.qcow2")],
            DiskBus::VirtioBlk,
            &NetworkMap::default(),
            Accel::Tcg,
            Path::new("/o"),
        )
        .unwrap();
        assert_eq!(t.firmware.vars(), Some(Path::new("/o/web_01_x_VARS.fd")));
        vm.firmware.kind = FirmwareKind::Bios;
        let t = Target::from_vm(
            &vm,
            &[],
            DiskBus::VirtioBlk,
            &NetworkMap::default(),
            Accel::Tcg,
            Path::new("/o"),
        )
        .unwrap();
        assert_eq!(t.firmware, Firmware::Bios);
    }
}
