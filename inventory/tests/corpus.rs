//! Every file in tests/data (see its README) read into the model, checking the facts a
//! converter and an engineer rely on.

use std::path::{Path, PathBuf};

use v2k_inventory::model::*;
use v2k_inventory::{BuiltinProbe, Options};

/// The corpus commits descriptors only (no multi-GiB extents), so the builtin probe,
/// which reads no extent, stands in for the converter here.
fn load(p: &Path, o: &Options) -> v2k_inventory::Result<Vec<Vm>> {
    v2k_inventory::load(p, o, &BuiltinProbe)
}

fn data(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(rel)
}

fn one(rel: &str) -> Vm {
    let mut v = load(&data(rel), &Options::default()).unwrap_or_else(|e| panic!("{rel}: {e}"));
    assert_eq!(v.len(), 1);
    v.remove(0)
}

fn has(vm: &Vm, id: &str) -> bool {
    vm.concerns.iter().any(|c| c.id == id)
}

#[test]
fn esxi67_centos7_reads_hardware_disk_capacity_and_vpx_mac() {
    let vm = one("esxi67-centos7/centos7-web01.vmx");
    assert_eq!(vm.name, "centos7-web01");
    // ESXi writes `sched.cpu.affinity = "all"` and `sched.mem.min = "0"`: no tuning.
    assert!(vm.tuning.is_empty(), "{:?}", vm.tuning);
    assert_eq!(
        vm.bios_uuid.as_deref(),
        Some("421a5b7e-8c21-d4f0-9e3b-4107c25d6601")
    );
    assert_eq!(vm.guest_os.family, OsFamily::Linux);
    assert_eq!(
        (vm.cpu.count, vm.memory_mib, vm.hardware_version),
        (2, 4096, Some(14))
    );
    assert_eq!(vm.controllers.len(), 2, "{:?}", vm.controllers); // scsi0 + implicit ide1
    assert_eq!(vm.controllers[1].model, ControllerModel::Lsilogic);
    let d = &vm.disks[0];
    assert_eq!(d.capacity, Some(16 << 30));
    assert_eq!(d.format.as_deref(), Some("vmfs"));
    assert!(
        matches!(&d.location, DiskLocation::File { path, .. } if path.ends_with("centos7-web01.vmdk"))
    );
    assert_eq!(vm.nics[0].address_type, AddressType::Vpx);
    assert_eq!(vm.nics[0].mac.as_deref(), Some("00:50:56:9a:3c:11"));
    assert_eq!(vm.removable[0].backing, RemovableBacking::HostDevice);
    assert!(!vm.has_critical(), "{:?}", vm.concerns);
}

#[test]
fn esxi70_efi_secure_boot_pvscsi_dvs_static_mac_and_independent_disk() {
    let vm = one("esxi70-ubuntu-efi/ubuntu22-db.vmx");
    assert_eq!(
        vm.firmware,
        Firmware {
            kind: FirmwareKind::Efi,
            secure_boot: true
        }
    );
    assert_eq!((vm.cpu.count, vm.cpu.cores_per_socket), (8, 4));
    assert!(vm.cbt && vm.disk_enable_uuid);
    assert_eq!(vm.disks.len(), 3);
    assert_eq!(vm.disks[2].id, "scsi1:1");
    assert_eq!(vm.disks[2].mode, DiskMode::IndependentPersistent);
    assert_eq!(vm.disks[1].capacity, Some(200 << 30));
    let n0 = &vm.nics[0];
    assert_eq!(n0.address_type, AddressType::Static);
    assert_eq!(n0.mac.as_deref(), Some("00:50:56:3f:00:10"));
    assert_eq!(n0.dvs.as_ref().unwrap().port_id.as_deref(), Some("41"));
    assert_eq!(vm.nics[1].network.as_deref(), Some("backup-vlan220"));
    for id in [
        "secure-boot",
        "disk-independent",
        "cbt-enabled",
        "nic-static-mac",
    ] {
        assert!(has(&vm, id), "{id}: {:?}", vm.concerns);
    }
    assert!(!vm.has_critical());
}

#[test]
fn esxi80_windows_with_vtpm_and_nvme_needs_drivers_and_decisions() {
    let vm = one("esxi80-win2022/win2022-dc01.vmx");
    assert_eq!(vm.guest_os.family, OsFamily::Windows);
    assert!(vm.tpm);
    assert_eq!(vm.disks[0].slot.unwrap().bus, BusKind::Nvme);
    assert_eq!(vm.nics[0].model, NicModel::E1000e);
    for id in [
        "windows-virtio-win",
        "tpm",
        "nvme-controller",
        "usb-controller",
    ] {
        assert!(has(&vm, id), "{id}");
    }
    assert!(!has(&vm, "guest-os-unsupported"));
}

#[test]
fn workstation_windows1252_vmx_finds_its_utf8_named_split_sparse_disk() {
    let vm = one("ws17-debian/Debian 12 - café.vmx");
    assert_eq!(vm.name, "Debian 12 - café");
    assert_eq!(vm.disks[0].capacity, Some((4192256 * 5 + 20480) * 512));
    assert_eq!(vm.disks[0].format.as_deref(), Some("twoGbMaxExtentSparse"));
    assert_eq!(vm.usb.controllers, vec!["uhci", "ehci", "xhci"]);
    assert_eq!(vm.usb.devices.len(), 1, "hid and hub are not host devices");
    assert_eq!(vm.nics[0].connection_type.as_deref(), Some("nat"));
    assert_eq!(vm.nics[0].mac.as_deref(), Some("00:0c:29:4a:6b:7c"));
    assert_eq!(vm.serial_ports[0].backing.as_deref(), Some("file"));
    // A Windows host path for the ISO is kept as text, never resolved.
    assert!(vm.removable[0].file.as_deref().unwrap().starts_with("C:\\"));
    assert!(!has(&vm, "vmx-invalid-text"));
}

#[test]
fn fusion_pipe_escapes_sparse_header_and_lsisas() {
    let vm = one("fusion13-rocky/rocky9.vmx");
    assert_eq!(vm.name, "Rocky \"lab\" VM");
    assert_eq!(vm.disks[0].capacity, Some(20 << 30));
    assert_eq!(vm.disks[0].format.as_deref(), Some("monolithicSparse"));
    assert!(vm
        .controllers
        .iter()
        .any(|c| c.model == ControllerModel::Lsisas1068));
    assert_eq!(vm.removable[0].kind, RemovableKind::Cdrom);
    assert_eq!(vm.firmware.kind, FirmwareKind::Efi);
    assert!(!vm.firmware.secure_boot);
}

#[test]
fn esxi65_cluster_node_reports_rdm_sharing_snapshots_passthrough_and_refused_path() {
    let vm = one("esxi65-cluster/sqlnode1.vmx");
    assert_eq!(vm.snapshots.len(), 2);
    assert!(vm.snapshots[1].current);
    let by = |id: &str| vm.disks.iter().find(|d| d.id == id).unwrap();
    assert_eq!(
        by("scsi0:0").parents,
        vec![PathBuf::from("sqlnode1-000001.vmdk")]
    );
    assert_eq!(by("scsi1:0").rdm, Some(RdmKind::Physical));
    assert_eq!(by("scsi2:0").sharing, Sharing::MultiWriter);
    assert!(matches!(
        by("scsi2:1").location,
        DiskLocation::Refused { .. }
    ));
    assert_eq!(vm.pci_passthrough.len(), 2);
    assert!(vm.pci_passthrough[1].sriov);
    for id in [
        "disk-rdm",
        "disk-shared",
        "disk-independent",
        "snapshots-present",
        "pci-passthrough",
        "sriov",
        "disk-path-refused",
        "scsi-bus-sharing",
        "serial-port",
    ] {
        assert!(has(&vm, id), "{id}: {:?}", vm.concerns);
    }
}

#[test]
fn legacy_gsx_defaults_to_buslogic_and_vlance_and_flags_an_empty_vmdk() {
    let vm = one("gsx-legacy/nt4-old.vmx");
    assert!(vm
        .controllers
        .iter()
        .any(|c| c.model == ControllerModel::Buslogic));
    assert_eq!(vm.nics[0].model, NicModel::Vlance);
    assert_eq!(vm.removable[0].kind, RemovableKind::Floppy);
    assert_eq!(vm.parallel_ports.len(), 1);
    assert_eq!(
        vm.disks.iter().find(|d| d.id == "scsi0:0").unwrap().mode,
        DiskMode::Undoable
    );
    assert!(has(&vm, "disk-unreadable"));
    assert!(has(&vm, "guest-os-unsupported"));
}

#[test]
fn vsphere_ovf_with_sha256_manifest_maps_units_efi_and_controllers() {
    let vm = one("vsphere7-ovf/app01.ovf");
    assert_eq!(vm.source.manifest, Some(ManifestStatus::Verified));
    assert_eq!(vm.guest_os.id.as_deref(), Some("rhel8_64Guest"));
    assert_eq!(vm.guest_os.family, OsFamily::Linux);
    assert_eq!(
        (vm.cpu.count, vm.cpu.cores_per_socket, vm.memory_mib),
        (4, 2, 8192)
    );
    assert_eq!(vm.hardware_version, Some(19));
    assert_eq!(
        vm.firmware,
        Firmware {
            kind: FirmwareKind::Efi,
            secure_boot: true
        }
    );
    assert!(vm.cbt && vm.disk_enable_uuid);
    assert_eq!(
        vm.controllers
            .iter()
            .find(|c| c.bus == BusKind::Scsi)
            .unwrap()
            .model,
        ControllerModel::Pvscsi
    );
    assert_eq!(vm.disks[0].capacity, Some(40 << 30));
    assert_eq!(vm.disks[1].capacity, Some(100 << 30));
    assert_eq!(vm.disks[0].populated_size, Some(6329204736));
    assert_eq!(vm.disks[1].slot.unwrap().unit, 1);
    assert!(
        matches!(&vm.disks[0].location, DiskLocation::File { path, .. } if path.ends_with("app01-1.vmdk"))
    );
    assert_eq!(vm.nics[0].model, NicModel::Vmxnet3);
    assert_eq!(vm.nics[0].network.as_deref(), Some("App-Frontend"));
    assert_eq!(vm.usb.controllers, vec!["xhci"]);
}

#[test]
fn ovftool_ovf_with_chunked_disk_and_uppercase_sha1_manifest() {
    let vm = one("ovftool-ovf/debian11.ovf");
    assert_eq!(vm.source.manifest, Some(ManifestStatus::Verified));
    assert_eq!(vm.disks[0].capacity, Some(20 << 30));
    match &vm.disks[0].location {
        DiskLocation::FileChunks { paths, .. } => {
            assert_eq!(paths.len(), 3);
            assert!(paths[2].to_string_lossy().ends_with(".000000002"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(vm.nics[0].model, NicModel::E1000);
    assert_eq!(vm.serial_ports.len(), 1);
}

#[test]
fn ovf2_collection_yields_two_vms_with_gzip_and_percent_encoded_hrefs() {
    let vms = load(&data("ovf2-collection/lamp.ovf"), &Options::default()).unwrap();
    assert_eq!(vms.len(), 2);
    let (web, db) = (&vms[0], &vms[1]);
    assert_eq!(web.name, "web");
    assert_eq!(web.source.manifest, Some(ManifestStatus::Absent));
    assert_eq!(web.hardware_version, Some(14));
    assert_eq!(web.memory_mib, 2048);
    assert!(matches!(
        web.disks[0].location,
        DiskLocation::File {
            compression: Some(Compression::Gzip),
            ..
        }
    ));
    assert_eq!(web.nics[0].mac.as_deref(), Some("00:16:3e:00:00:01"));
    assert_eq!(db.disks[0].slot.unwrap().bus, BusKind::Nvme);
    assert!(
        matches!(&db.disks[0].location, DiskLocation::File { path, .. } if path.ends_with("db disk.vmdk"))
    );
    assert_eq!(db.nics[0].model, NicModel::Unknown);
    assert!(
        has(db, "nic-unknown-model") && has(db, "nvme-controller") && has(db, "manifest-absent")
    );
}

#[test]
fn virtualbox_ovf_maps_ahci_and_slashless_host_resource() {
    let vm = one("vbox7-ovf/alpine.ovf");
    assert_eq!(vm.name, "alpine");
    assert_eq!(vm.guest_os.family, OsFamily::Linux);
    assert_eq!(vm.memory_mib, 512);
    assert_eq!(vm.disks[0].capacity, Some(8 << 30));
    assert_eq!(vm.disks[0].slot.unwrap().bus, BusKind::Sata);
    assert!(vm.disks[0].location.is_readable());
}

#[test]
fn every_corpus_vm_serialises_with_schema_version() {
    for f in v2k_inventory::discover(&data("")).unwrap() {
        for vm in load(&f, &Options::default()).unwrap() {
            let v = serde_json::to_value(&vm).unwrap();
            assert_eq!(v["schema-version"], SCHEMA_VERSION, "{}", f.display());
            let back: Vm = serde_json::from_value(v).unwrap();
            assert_eq!(back, vm);
        }
    }
}
