//! The source's own hardware under QEMU, for a baseline boot (`--baseline-boot`,
//! docs/evidence.md): the VM's disks on the controllers its VMX or OVF declares (PVSCSI,
//! LSI Logic, LSI SAS, SATA, IDE, NVMe, as QEMU has them), its NICs as the models it
//! had (VMXNET3, E1000, E1000e, PCnet for vlance) on isolated QEMU user networking
//! (`restrict=on`), its firmware. The guest is not converted for this boot, so it must
//! find its disks and NICs where VMware put them; what QEMU cannot give it is refused
//! here, before anything is booted, with the reason ([`plan`]).
//!
//! Known floor: Debian's OVMF has no PVSCSI or LSI driver (ESXi's firmware has them),
//! so an EFI guest on one of those controllers cannot reach its boot loader here: it
//! is refused, not booted into a firmware shell. SeaBIOS boots all three.

use std::path::{Path, PathBuf};

use v2k_inventory::model::{BusKind, ControllerModel, FirmwareKind, NicModel, Vm};

use crate::{Accel, Firmware};

/// The PCIe slots ESXi gives `ethernet0`…`ethernet3` by default (the guest names them
/// `ens192`, `ens224`, `ens256`, `ens1184`); the VMX's own `pciSlotNumber` is not in
/// the model. Later NICs get QEMU's own slots.
const NIC_SLOTS: [u32; 4] = [192, 224, 256, 1184];

/// One storage controller in use, as QEMU has it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ctl {
    bus: BusKind,
    index: u32,
    /// The QEMU device (`pvscsi`, `lsi53c895a`, `mptsas1068`, `ich9-ahci`), or `None`
    /// for IDE (the machine's own) and NVMe (one device per disk).
    device: Option<&'static str>,
}

/// The source's shape, checked: what [`argv`] builds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    /// `q35`, or `pc` when a disk is on IDE (q35 has no IDE controller).
    pub machine: &'static str,
    ctls: Vec<Ctl>,
    /// Per disk, in VM order: its controller (index into `ctls`) and unit.
    disks: Vec<(usize, u32)>,
    /// Per NIC: the QEMU model and the MAC, when valid.
    nics: Vec<(&'static str, Option<String>)>,
    /// The firmware: BIOS (SeaBIOS) or EFI (OVMF, Secure Boot as the VMX says).
    pub firmware: FirmwareKind,
    pub secure_boot: bool,
    pub memory_mib: u64,
    pub vcpus: u32,
}

impl Shape {
    /// In words, for the report: `q35, bios, pvscsi (scsi0), vmxnet3`.
    pub fn describe(&self) -> String {
        let mut parts = vec![
            self.machine.to_string(),
            match self.firmware {
                FirmwareKind::Efi if self.secure_boot => "efi (secure boot)".into(),
                FirmwareKind::Efi => "efi".into(),
                _ => "bios".to_string(),
            },
        ];
        for c in &self.ctls {
            let bus = match c.bus {
                BusKind::Ide => "ide",
                BusKind::Scsi => "scsi",
                BusKind::Sata => "sata",
                BusKind::Nvme => "nvme",
            };
            let dev = c.device.unwrap_or(match c.bus {
                BusKind::Nvme => "nvme",
                _ => "piix-ide",
            });
            parts.push(format!("{dev} ({bus}{})", c.index));
        }
        parts.extend(self.nics.iter().map(|(m, _)| m.to_string()));
        parts.join(", ")
    }

    /// The firmware images and the variable store an EFI boot needs (`vars`: a copy of
    /// the template the caller made), as [`Firmware`].
    pub fn efi_firmware(&self, vars: PathBuf) -> Option<Firmware> {
        (self.firmware == FirmwareKind::Efi).then_some(Firmware::Efi {
            secure_boot: self.secure_boot,
            vars,
        })
    }
}

/// The QEMU model of a VMware NIC, or why there is none.
fn nic_model(m: NicModel) -> Result<&'static str, &'static str> {
    match m {
        NicModel::Vmxnet3 => Ok("vmxnet3"),
        NicModel::E1000 => Ok("e1000"),
        NicModel::E1000e => Ok("e1000e"),
        // vlance is AMD's PCnet, which QEMU has.
        NicModel::Vlance => Ok("pcnet"),
        NicModel::Vmxnet | NicModel::Vmxnet2 => Err("QEMU has no VMXNET/VMXNET2 device"),
        NicModel::Sriov => Err("an SR-IOV passthrough NIC has no QEMU model"),
        NicModel::Unknown => Err("its model is unknown"),
    }
}

/// Checks that `vm` can boot in its own shape under QEMU and plans it; the error says
/// why not (docs/evidence.md lists the refusals).
pub fn plan(vm: &Vm) -> Result<Shape, String> {
    let mut ctls: Vec<Ctl> = Vec::new();
    let mut disks = Vec::new();
    for d in &vm.disks {
        let Some(slot) = d.slot else {
            return Err(format!(
                "disk {}: the source does not say which controller it is on",
                d.id
            ));
        };
        let model = vm
            .controllers
            .iter()
            .find(|c| c.bus == slot.bus && c.index == slot.controller)
            .map(|c| c.model);
        let device = match (slot.bus, model) {
            (BusKind::Scsi, Some(ControllerModel::Pvscsi)) => Some("pvscsi"),
            // QEMU has no LSI53C1030 (VMware's "lsilogic"); its LSI 53C895A is the
            // nearest, which the guest drives with sym53c8xx, not mptspi.
            (BusKind::Scsi, Some(ControllerModel::Lsilogic)) => Some("lsi53c895a"),
            (BusKind::Scsi, Some(ControllerModel::Lsisas1068)) => Some("mptsas1068"),
            (BusKind::Scsi, m) => {
                return Err(format!(
                    "disk {}: QEMU has no device for its SCSI controller ({})",
                    d.id,
                    match m {
                        Some(ControllerModel::Buslogic) => "BusLogic",
                        _ => "an unknown model",
                    }
                ))
            }
            (BusKind::Sata, _) if slot.unit > 5 => {
                return Err(format!(
                    "disk {}: SATA unit {} (QEMU's AHCI has ports 0-5)",
                    d.id, slot.unit
                ))
            }
            (BusKind::Sata, _) => Some("ich9-ahci"),
            (BusKind::Ide, _) if slot.controller > 1 || slot.unit > 1 => {
                return Err(format!("disk {}: IDE {slot} does not exist", d.id))
            }
            (BusKind::Ide | BusKind::Nvme, _) => None,
        };
        let c = Ctl {
            bus: slot.bus,
            index: slot.controller,
            device,
        };
        let i = match ctls.iter().position(|x| *x == c) {
            Some(i) => i,
            None => {
                ctls.push(c);
                ctls.len() - 1
            }
        };
        disks.push((i, slot.unit));
    }
    if vm.disks.is_empty() {
        return Err("the VM has no disk".into());
    }
    let efi = vm.firmware.kind == FirmwareKind::Efi;
    if efi {
        if let Some(c) = ctls
            .iter()
            .find(|c| matches!(c.device, Some("pvscsi" | "lsi53c895a" | "mptsas1068")))
        {
            return Err(format!(
                "an EFI guest on {} (scsi{}): this host's OVMF has no driver for that \
                 controller (ESXi's firmware has one), so the guest's boot loader cannot be \
                 read; measure it on the destination instead (docs/evidence.md)",
                c.device.unwrap_or_default(),
                c.index
            ));
        }
    }
    let mut nics = Vec::new();
    for n in &vm.nics {
        let m = nic_model(n.model).map_err(|why| format!("ethernet{}: {why}", n.index))?;
        nics.push((m, n.mac.clone().filter(|m| v2k_inventory::model::is_mac(m))));
    }
    let ide = ctls.iter().any(|c| c.bus == BusKind::Ide);
    Ok(Shape {
        machine: if ide { "pc" } else { crate::MACHINE },
        ctls,
        disks,
        nics,
        firmware: if efi {
            FirmwareKind::Efi
        } else {
            FirmwareKind::Bios
        },
        secure_boot: efi && vm.firmware.secure_boot,
        memory_mib: vm.memory_mib.max(256),
        vcpus: vm.cpu.count.max(1),
    })
}

/// The QEMU command line (argv[0] `qemu-system-x86_64`) that boots `disks` (QCOW2
/// overlays over the source's disks, in VM order) in `shape`, the console to `serial`
/// (a `-serial` value). `firmware` is [`Shape::efi_firmware`]'s for an EFI guest.
pub fn argv(
    shape: &Shape,
    disks: &[PathBuf],
    accel: Accel,
    serial: &str,
    firmware: Option<&Firmware>,
) -> Vec<String> {
    let qc = |s: &Path| s.to_string_lossy().replace(',', ",,");
    let mut a: Vec<String> = vec!["qemu-system-x86_64".into()];
    let mut push = |xs: &[&str]| a.extend(xs.iter().map(|s| s.to_string()));
    let secure = firmware.is_some_and(|f| f.secure_boot());
    push(&[
        "-name",
        "v2k-baseline-boot",
        "-machine",
        &format!(
            "{},accel={}{}",
            shape.machine,
            accel.as_str(),
            if secure { ",smm=on" } else { "" }
        ),
        "-cpu",
        if accel == Accel::Kvm { "host" } else { "max" },
        "-smp",
        &shape.vcpus.to_string(),
        "-m",
        &shape.memory_mib.to_string(),
        "-nodefaults",
        "-display",
        "none",
        "-serial",
        serial,
    ]);
    if let Some(f) = firmware {
        if let (Some((code, _)), Some(vars)) = (f.images(), f.vars()) {
            if secure {
                push(&["-global", "driver=cfi.pflash01,property=secure,value=on"]);
            }
            push(&[
                "-drive",
                &format!(
                    "if=pflash,format=raw,readonly=on,file={}",
                    qc(Path::new(code))
                ),
            ]);
            push(&["-drive", &format!("if=pflash,format=raw,file={}", qc(vars))]);
        }
    }
    // The NICs' root ports first, at fixed addresses, so that the devices QEMU
    // places itself never take them.
    let q35 = shape.machine == crate::MACHINE;
    if q35 && !shape.nics.is_empty() {
        // With ACPI hotplug on the root ports the guest sees no slot number (`_SUN`)
        // and names the NIC by its path (enp1s0), not by its slot as on ESXi.
        push(&[
            "-global",
            "ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off",
        ]);
    }
    for (i, (model, mac)) in shape.nics.iter().enumerate() {
        push(&["-netdev", &format!("user,id=net{i},restrict=on")]);
        let mut dev = format!("{model},netdev=net{i}");
        if let Some(m) = mac {
            dev.push_str(&format!(",mac={m}"));
        }
        if let Some(slot) = NIC_SLOTS.get(i).filter(|_| q35) {
            push(&[
                "-device",
                &format!(
                    "pcie-root-port,id=v2knic{i},bus=pcie.0,chassis={},slot={slot},addr={:#x}",
                    i + 1,
                    0x10 + i
                ),
            ]);
            dev.push_str(&format!(",bus=v2knic{i}"));
        }
        push(&["-device", &dev]);
    }
    for (i, c) in shape.ctls.iter().enumerate() {
        if let Some(d) = c.device {
            push(&["-device", &format!("{d},id=ctl{i}")]);
        }
    }
    for (i, (path, (ci, unit))) in disks.iter().zip(&shape.disks).enumerate() {
        push(&[
            "-drive",
            &format!("file={},format=qcow2,if=none,id=disk{i}", qc(path)),
        ]);
        let boot = if i == 0 { ",bootindex=0" } else { "" };
        let c = &shape.ctls[*ci];
        let dev = match (c.bus, c.device) {
            (BusKind::Scsi, _) => {
                format!("scsi-hd,bus=ctl{ci}.0,scsi-id={unit},lun=0,drive=disk{i}{boot}")
            }
            (BusKind::Sata, _) => format!("ide-hd,bus=ctl{ci}.{unit},drive=disk{i}{boot}"),
            (BusKind::Ide, _) => {
                format!("ide-hd,bus=ide.{},unit={unit},drive=disk{i}{boot}", c.index)
            }
            (BusKind::Nvme, _) => format!("nvme,serial=v2kdisk{i},drive=disk{i}{boot}"),
        };
        push(&["-device", &dev]);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use v2k_inventory::model::{Controller, Slot};

    fn vm(json_patch: impl FnOnce(&mut Vm)) -> Vm {
        let mut vm: Vm = serde_json::from_value(serde_json::json!({
            "schema-version": 1, "name": "web01",
            "source": {"kind": "vmx", "path": "/vms/web01.vmx"},
            "guest-os": {"family": "linux"}, "firmware": {"kind": "bios"},
            "cpu": {"count": 2, "cores-per-socket": 1}, "memory-mib": 1024,
            "controllers": [{"bus": "scsi", "index": 0, "model": "pvscsi"}],
            "disks": [
                {"id": "scsi0:0", "slot": {"bus": "scsi", "controller": 0, "unit": 0},
                 "location": {"kind": "missing", "reference": "a.vmdk"}, "mode": "persistent"},
                {"id": "scsi0:1", "slot": {"bus": "scsi", "controller": 0, "unit": 1},
                 "location": {"kind": "missing", "reference": "b.vmdk"}, "mode": "persistent"}
            ],
            "nics": [{"index": 0, "model": "vmxnet3", "mac": "00:50:56:3a:00:01",
                      "address-type": "static"}]
        }))
        .unwrap();
        json_patch(&mut vm);
        vm
    }

    #[test]
    fn pvscsi_and_vmxnet3_boot_as_on_esxi() {
        let v = vm(|_| {});
        let s = plan(&v).unwrap();
        assert_eq!(s.describe(), "q35, bios, pvscsi (scsi0), vmxnet3");
        let a = argv(
            &s,
            &["/run/o0.qcow2".into(), "/run/o1,x.qcow2".into()],
            Accel::Tcg,
            "file:/run/serial.log",
            None,
        )
        .join(" ");
        for want in [
            "-machine q35,accel=tcg",
            "-netdev user,id=net0,restrict=on",
            "-global ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off",
            "pcie-root-port,id=v2knic0,bus=pcie.0,chassis=1,slot=192,addr=0x10",
            "vmxnet3,netdev=net0,mac=00:50:56:3a:00:01,bus=v2knic0",
            "-device pvscsi,id=ctl0",
            "file=/run/o1,,x.qcow2,format=qcow2",
            "scsi-hd,bus=ctl0.0,scsi-id=0,lun=0,drive=disk0,bootindex=0",
            "scsi-hd,bus=ctl0.0,scsi-id=1,lun=0,drive=disk1",
        ] {
            assert!(a.contains(want), "{want} not in {a}");
        }
        assert!(!a.contains("pflash"), "{a}");
    }

    #[test]
    fn other_controllers_and_nics_map_to_qemus_devices() {
        let v = vm(|v| {
            v.controllers = vec![
                Controller {
                    bus: BusKind::Scsi,
                    index: 0,
                    model: ControllerModel::Lsisas1068,
                    raw_model: None,
                    shared_bus: None,
                },
                Controller {
                    bus: BusKind::Ide,
                    index: 1,
                    model: ControllerModel::Ide,
                    raw_model: None,
                    shared_bus: None,
                },
            ];
            v.disks[1].slot = Some(Slot {
                bus: BusKind::Ide,
                controller: 1,
                unit: 0,
            });
            v.nics[0].model = NicModel::E1000;
        });
        let s = plan(&v).unwrap();
        // IDE needs the PC machine; its NIC then has no PCIe slot.
        assert_eq!(
            s.describe(),
            "pc, bios, mptsas1068 (scsi0), piix-ide (ide1), e1000"
        );
        let a = argv(&s, &["/a".into(), "/b".into()], Accel::Kvm, "stdio", None).join(" ");
        assert!(a.contains("ide-hd,bus=ide.1,unit=0,drive=disk1"), "{a}");
        assert!(
            a.contains("e1000,netdev=net0,mac=00:50:56:3a:00:01 "),
            "{a}"
        );
        assert!(!a.contains("pcie-root-port"), "{a}");
    }

    #[test]
    fn what_qemu_or_ovmf_cannot_run_is_refused_with_the_reason() {
        let efi = vm(|v| v.firmware.kind = FirmwareKind::Efi);
        let e = plan(&efi).unwrap_err();
        assert!(
            e.contains("EFI guest on pvscsi") && e.contains("OVMF has no driver"),
            "{e}"
        );
        // EFI on SATA is fine: OVMF reads AHCI.
        let sata = vm(|v| {
            v.firmware.kind = FirmwareKind::Efi;
            for (i, d) in v.disks.iter_mut().enumerate() {
                d.slot = Some(Slot {
                    bus: BusKind::Sata,
                    controller: 0,
                    unit: i as u32,
                });
            }
        });
        let s = plan(&sata).unwrap();
        let f = s.efi_firmware("/run/vars.fd".into()).unwrap();
        let a = argv(
            &s,
            &["/a".into(), "/b".into()],
            Accel::Tcg,
            "stdio",
            Some(&f),
        )
        .join(" ");
        assert!(a.contains("-device ich9-ahci,id=ctl0"), "{a}");
        assert!(a.contains("ide-hd,bus=ctl0.1,drive=disk1"), "{a}");
        assert!(a.contains("if=pflash,format=raw,file=/run/vars.fd"), "{a}");
        let e = plan(&vm(|v| v.nics[0].model = NicModel::Vmxnet2)).unwrap_err();
        assert_eq!(e, "ethernet0: QEMU has no VMXNET/VMXNET2 device");
        let e = plan(&vm(|v| v.controllers[0].model = ControllerModel::Buslogic)).unwrap_err();
        assert!(e.contains("BusLogic"), "{e}");
        let e = plan(&vm(|v| v.disks[0].slot = None)).unwrap_err();
        assert!(e.contains("which controller"), "{e}");
    }
}
