//! The KVM target: from the VM model, the converted disks and (optionally) the
//! inspection, one [`Target`] written two ways — libvirt domain XML and a QEMU argv.
//! Every name from the VM (untrusted VMware metadata) is escaped in XML and quoted in
//! shell. Unmapped networks get isolated QEMU user networking (`restrict=on`): a guest
//! is never bridged to the host's network unless the network map says so.

use std::path::PathBuf;

use quick_xml::escape::escape;
use serde::{Deserialize, Serialize};
use v2k_inventory::model::{FirmwareKind, Vm};

use crate::accel::Accel;
use crate::edit::{self, DiskBus};
use crate::error::{Error, Result};

/// The machine type: q35 (PCIe), what current libvirt and virt-v2v choose for x86-64.
pub const MACHINE: &str = "q35";
/// OVMF images on Debian (package `ovmf`).
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
pub const OVMF_CODE_SECBOOT: &str = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd";
pub const OVMF_VARS_SECBOOT: &str = "/usr/share/OVMF/OVMF_VARS_4M.ms.fd";

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
        let (name, target) = s
            .rsplit_once('=')
            .ok_or_else(|| Error::Input(format!("network map {s:?}: expected NAME=TARGET")))?;
        let t = match target.split_once(':') {
            Some(("network", n)) if valid_host_name(n) => NetTarget::Network(n.into()),
            Some(("bridge", n)) if valid_host_name(n) => NetTarget::Bridge(n.into()),
            None if target == "user" => NetTarget::User,
            _ => {
                return Err(Error::Input(format!(
                    "network map {s:?}: TARGET must be network:NAME, bridge:NAME or user \
                     (names: letters, digits, . _ -)"
                )))
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
    pub efi: bool,
    pub secure_boot: bool,
    pub machine: String,
    pub accel: Accel,
    /// `virtio-blk` or `virtio-scsi`.
    pub disk_bus: String,
    pub disks: Vec<PathBuf>,
    pub nics: Vec<TargetNic>,
}

/// vCPU counts and memory sizes KVM cannot run (pre-flight's critical concerns) are
/// refused here too, so a hand-edited or stale vm.json never puts them in domain XML.
fn refuse_unrunnable_size(vm: &Vm) -> Result<()> {
    let problems = v2k_inventory::preflight::machine_size_problems(vm);
    if problems.is_empty() {
        return Ok(());
    }
    let what: Vec<String> = problems.into_iter().map(|(_, m)| m).collect();
    Err(Error::Input(format!(
        "VM {:?}: refusing to build a KVM machine: {}",
        vm.name,
        what.join("; ")
    )))
}

impl Target {
    /// The target of `vm` with its converted `disks` (in the VM's disk order).
    pub fn from_vm(
        vm: &Vm,
        disks: &[PathBuf],
        bus: DiskBus,
        network_map: &NetworkMap,
        accel: Accel,
    ) -> Result<Target> {
        refuse_unrunnable_size(vm)?;
        let vcpus = vm.cpu.count.max(1);
        let mut cores = vm.cpu.cores_per_socket.max(1);
        if !vcpus.is_multiple_of(cores) {
            cores = 1;
        }
        let mut nics = Vec::new();
        for n in &vm.nics {
            let Some(mac) = n.mac.as_ref().filter(|m| edit::is_mac(m)) else {
                return Err(Error::Input(format!(
                    "ethernet{}: no valid MAC address in the VM model; the target must keep it",
                    n.index
                )));
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
        Ok(Target {
            name: vm.name.clone(),
            uuid,
            memory_mib: vm.memory_mib.max(256),
            vcpus,
            sockets: vcpus / cores,
            cores,
            efi: vm.firmware.kind == FirmwareKind::Efi,
            secure_boot: vm.firmware.secure_boot,
            machine: MACHINE.into(),
            accel,
            disk_bus: bus.name().into(),
            disks: disks.to_vec(),
            nics,
        })
    }

    fn scsi(&self) -> bool {
        self.disk_bus == "virtio-scsi"
    }

    /// A name usable as a libvirt domain name and in file names: the VM name with
    /// anything but `[A-Za-z0-9._-]` replaced by `_`.
    pub fn safe_name(&self) -> String {
        let s: String = self
            .name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "._-".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .take(64)
            .collect();
        if s.is_empty() || s.starts_with(['.', '-']) {
            format!("v2k-{s}")
        } else {
            s
        }
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
        let windows = vm.guest_os.family == v2k_inventory::model::OsFamily::Windows;
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
pub const HYPERV_FLAGS: [&str; 9] = [
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

/// libvirt domain XML. User-mode NICs are emitted as QEMU arguments in the qemu
/// namespace because libvirt's `<interface type='user'>` cannot say `restrict=on`.
pub fn domain_xml(t: &Target) -> String {
    domain_xml_with(t, &GuestFeatures::default())
}

/// [`domain_xml`] with guest features (Hyper-V enlightenments, local-time RTC).
pub fn domain_xml_with(t: &Target, f: &GuestFeatures) -> String {
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
        x(&edit::printable(&t.name))
    ));
    s.push_str(&format!("  <memory unit='MiB'>{}</memory>\n", t.memory_mib));
    s.push_str(&format!("  <vcpu placement='static'>{}</vcpu>\n", t.vcpus));
    if t.efi {
        s.push_str("  <os firmware='efi'>\n");
        s.push_str(&format!(
            "    <type arch='x86_64' machine='{}'>hvm</type>\n",
            t.machine
        ));
        if t.secure_boot {
            s.push_str(
                "    <firmware>\n      <feature enabled='yes' name='secure-boot'/>\n      \
                 <feature enabled='yes' name='enrolled-keys'/>\n    </firmware>\n",
            );
        }
    } else {
        s.push_str("  <os>\n");
        s.push_str(&format!(
            "    <type arch='x86_64' machine='{}'>hvm</type>\n",
            t.machine
        ));
    }
    // Boot order is per disk (`<boot order='1'/>`); libvirt refuses both forms at once.
    s.push_str("  </os>\n");
    s.push_str("  <features>\n    <acpi/>\n    <apic/>\n");
    if t.secure_boot {
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
        "    <topology sockets='{}' dies='1' cores='{}' threads='1'/>\n  </cpu>\n",
        t.sockets, t.cores
    ));
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
    }
    for (i, d) in t.disks.iter().enumerate() {
        let (dev, bus) = if t.scsi() {
            (format!("sd{}", disk_letter(i)), "scsi")
        } else {
            (format!("vd{}", disk_letter(i)), "virtio")
        };
        s.push_str("    <disk type='file' device='disk'>\n");
        s.push_str("      <driver name='qemu' type='qcow2' discard='unmap'/>\n");
        s.push_str(&format!(
            "      <source file='{}'/>\n",
            x(&d.to_string_lossy())
        ));
        s.push_str(&format!("      <target dev='{dev}' bus='{bus}'/>\n"));
        if !t.scsi() {
            // Disks sit on the root bus in disk order, as on QEMU's own command line:
            // behind separate PCIe root ports they may be probed out of order, and a
            // guest that names its root /dev/vda1 would mount its data disk as root.
            s.push_str(&format!(
                "      <address type='pci' domain='0x0000' bus='0x00' slot='{:#04x}' function='0x0'/>\n",
                0x08 + i
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
                // itself (video at 0x1, root ports from 0x2, ICH9 at 0x1f).
                format!(
                    "virtio-net-pci,netdev=v2knet{i},mac={},bus=pcie.0,addr={:#x}",
                    n.mac,
                    0x18 + i
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

/// How to run QEMU directly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuOptions {
    /// `-serial` value: `mon:stdio` for a person, `file:PATH` for a test.
    pub serial: String,
    /// Open disks with `snapshot=on` (writes go to a temporary overlay).
    pub snapshot: bool,
    /// The UEFI variable store for an EFI guest (a copy of OVMF_VARS).
    pub efi_vars: Option<PathBuf>,
}

impl Default for QemuOptions {
    fn default() -> Self {
        QemuOptions {
            serial: "mon:stdio".into(),
            snapshot: false,
            efi_vars: None,
        }
    }
}

/// The QEMU command line as an argv array (argv[0] is `qemu-system-x86_64`). Disk
/// paths go into `-drive file=` where a comma would start a new option: QEMU's own
/// escape (a doubled comma) is applied.
pub fn qemu_argv(t: &Target, q: &QemuOptions) -> Vec<String> {
    qemu_argv_with(t, q, &GuestFeatures::default())
}

/// [`qemu_argv`] with guest features (Hyper-V enlightenments, local-time RTC).
pub fn qemu_argv_with(t: &Target, q: &QemuOptions, f: &GuestFeatures) -> Vec<String> {
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
    push(&[
        "-machine",
        &format!("{},accel={}", t.machine, t.accel.as_str()),
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
    push(&[
        "-smp",
        &format!(
            "{},sockets={},cores={},threads=1",
            t.vcpus, t.sockets, t.cores
        ),
    ]);
    push(&["-m", &t.memory_mib.to_string()]);
    push(&["-nodefaults", "-display", "none", "-serial", &q.serial]);
    if t.efi {
        let (code, vars) = if t.secure_boot {
            (OVMF_CODE_SECBOOT, OVMF_VARS_SECBOOT)
        } else {
            (OVMF_CODE, OVMF_VARS)
        };
        let vars = q
            .efi_vars
            .as_ref()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|| vars.to_string());
        push(&[
            "-drive",
            &format!("if=pflash,format=raw,readonly=on,file={}", qc(code)),
        ]);
        push(&[
            "-drive",
            &format!("if=pflash,format=raw,file={}", qc(&vars)),
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
        let boot = if i == 0 { ",bootindex=0" } else { "" };
        if t.scsi() {
            push(&[
                "-device",
                &format!("scsi-hd,bus=scsi0.0,drive=disk{i}{boot}"),
            ]);
        } else {
            push(&["-device", &format!("virtio-blk-pci,drive=disk{i}{boot}")]);
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

/// A runnable script for the argv.
pub fn qemu_script(argv: &[String]) -> String {
    let mut s = String::from(
        "#!/bin/sh\n# Written by v2k inject: runs the converted VM under QEMU directly.\n\
         # The serial console is on this terminal (Ctrl-a x quits).\nexec",
    );
    // One option per line, with its value when it has one.
    for (i, a) in argv.iter().enumerate() {
        let is_value = i > 0 && argv[i - 1].starts_with('-') && !a.starts_with('-');
        s.push_str(if is_value || i == 0 { " " } else { " \\\n    " });
        s.push_str(&sh_quote(a));
    }
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn quotes_shell_words() {
        assert_eq!(sh_quote("-m"), "-m");
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), "'it'\\''s'");
        assert_eq!(sh_quote("$(reboot)"), "'$(reboot)'");
        assert_eq!(sh_quote(""), "''");
    }

    fn windows_target(accel: Accel) -> Target {
        Target {
            name: "win".into(),
            uuid: None,
            memory_mib: 2048,
            vcpus: 2,
            sockets: 1,
            cores: 2,
            efi: true,
            secure_boot: true,
            machine: MACHINE.into(),
            accel,
            disk_bus: "virtio-blk".into(),
            disks: vec![PathBuf::from("/v/disk0.qcow2")],
            nics: Vec::new(),
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
    fn windows_gets_hyperv_and_localtime_under_kvm() {
        let f = GuestFeatures::windows(false);
        let t = windows_target(Accel::Kvm);
        let xml = domain_xml_with(&t, &f);
        assert!(xml.contains("<hyperv mode='custom'>"), "{xml}");
        assert!(xml.contains("<clock offset='localtime'>"), "{xml}");
        assert!(xml.contains("hypervclock"), "{xml}");
        assert!(xml.contains("name='secure-boot'") && xml.contains("<smm state='on'/>"));
        assert!(xml.contains("machine='q35'"));
        let argv = qemu_argv_with(&t, &QemuOptions::default(), &f);
        let cpu = &argv[argv.iter().position(|a| a == "-cpu").unwrap() + 1];
        assert!(
            cpu.starts_with("host,hv-relaxed") && cpu.contains("hv-stimer"),
            "{cpu}"
        );
        assert!(argv
            .windows(2)
            .any(|w| w[0] == "-rtc" && w[1].starts_with("base=localtime")));
        assert!(argv.iter().any(|a| a.contains(OVMF_CODE_SECBOOT)));
    }

    #[test]
    fn tcg_and_utc_guests_get_neither() {
        let t = windows_target(Accel::Tcg);
        let xml = domain_xml_with(&t, &GuestFeatures::windows(true));
        assert!(!xml.contains("<hyperv"), "{xml}");
        assert!(xml.contains("<clock offset='utc'>"), "{xml}");
        let argv = qemu_argv_with(&t, &QemuOptions::default(), &GuestFeatures::windows(false));
        assert!(!argv.iter().any(|a| a.contains("hv-")), "{argv:?}");
        assert_eq!(
            domain_xml(&t),
            domain_xml_with(&t, &GuestFeatures::default())
        );
    }

    #[test]
    fn disk_letters_follow_kernel_naming() {
        assert_eq!(disk_letter(0), "a");
        assert_eq!(disk_letter(25), "z");
        assert_eq!(disk_letter(26), "aa");
        assert_eq!(disk_letter(27), "ab");
    }
}
