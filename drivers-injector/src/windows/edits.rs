//! The registry edits of a Windows conversion, as data: which value goes where, with
//! no appliance involved, so each rule is unit-tested and compared key by key with
//! what virt-v2v writes (docs/windows.md lists every difference and why).
//!
//! - The boot storage driver (viostor, or vioscsi on virtio-scsi) as a boot-start
//!   service: `Type=1 Start=0 Group="SCSI miniport" ErrorControl=1
//!   ImagePath=system32\drivers\<drv>.sys`, as virt-v2v sets it.
//! - Its PCI ids bound to it before PnP runs: `CriticalDeviceDatabase\PCI#<id>`
//!   before Windows 8, `DriverDatabase` entries (under virt-v2v's own labels
//!   `guestor.inf`/`guestor_conf`) from Windows 8 on.
//! - VMware's PVSCSI and VMXNET3 services made harmless: demand-start and a normal
//!   error control, so neither can send the boot to LastKnownGood on KVM.
//! - `CrashControl\AutoReboot=0`: a 0x7B stays on screen instead of looping.
//! - `DevicePath` in SOFTWARE extended with the copied drivers' folder.
//! - The first-boot service (see [`super::firstboot`]).

use super::registry::RegValue;

/// The SCSI adapter setup class (storage controllers).
pub(crate) const SCSI_CLASS_GUID: &str = "{4D36E97B-E325-11CE-BFC1-08002BE10318}";
/// virt-v2v's labels for the boot driver's DriverDatabase entries. The same names are
/// used so that a guest converted by either tool carries one set of entries, which
/// Windows supersedes when pnputil installs the real package at first boot.
pub(crate) const DDB_INF: &str = "guestor.inf";
pub(crate) const DDB_INF_LABEL: &str = "guestor.inf_tmp";
pub(crate) const DDB_CONFIG: &str = "guestor_conf";
/// Where the driver packages are copied, relative to the system root.
pub(crate) const DRIVER_DIR: &str = "Drivers\\VirtIO";
/// VMware driver services that may be boot- or system-start on the source.
pub(crate) const VMWARE_SERVICES: [&str; 3] = ["pvscsi", "vmxnet3ndis6", "vmxnet3"];
/// Windows service start types.
pub(crate) const START_BOOT: u32 = 0;
pub(crate) const START_DEMAND: u32 = 3;
/// ErrorControl "normal": log and continue (2 "severe" and 3 "critical" fall back to
/// LastKnownGood).
pub(crate) const ERROR_NORMAL: u32 = 1;

/// Which hive a value lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HiveName {
    System,
    Software,
}

/// One value to set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edit {
    /// Conversion-log step id: `boot-driver`, `driver-database`,
    /// `critical-device-database`, `vmware-services`, `crash-control`, `driver-path`,
    /// `first-boot`.
    pub step: &'static str,
    pub hive: HiveName,
    pub key: Vec<String>,
    pub value: String,
    pub data: RegValue,
}

fn edit(step: &'static str, hive: HiveName, key: &[&str], value: &str, data: RegValue) -> Edit {
    Edit {
        step,
        hive,
        key: key.iter().map(|s| s.to_string()).collect(),
        value: value.to_string(),
        data,
    }
}

/// The PCI ids a boot driver is bound to: the transitional (legacy) and modern virtio
/// devices, each as its full hardware id and as the vendor/device/revision form
/// virt-v2v uses.
pub(crate) fn pci_ids(driver: &str) -> Vec<String> {
    let (legacy, legacy_sub, modern) = if driver == "vioscsi" {
        ("1004", "00081AF4", "1048")
    } else {
        ("1001", "00021AF4", "1042")
    };
    vec![
        format!("VEN_1AF4&DEV_{legacy}&SUBSYS_{legacy_sub}&REV_00"),
        format!("VEN_1AF4&DEV_{legacy}&REV_00"),
        format!("VEN_1AF4&DEV_{modern}&SUBSYS_11001AF4&REV_01"),
        format!("VEN_1AF4&DEV_{modern}&REV_01"),
    ]
}

/// The DriverPackages `Version` blob virt-v2v writes (Windows-Kernel-Pnp on 10/2016
/// wants it): a header, the SCSI class GUID in its binary form, then zeros.
pub(crate) fn ddb_version_blob() -> Vec<u8> {
    let mut v = vec![0x00, 0xff, 0x09, 0x00, 0x00, 0x00, 0x00, 0x00];
    v.extend([
        0x7b, 0xe9, 0x36, 0x4d, 0x25, 0xe3, 0xce, 0x11, 0xbf, 0xc1, 0x08, 0x00, 0x2b, 0xe1, 0x03,
        0x18,
    ]);
    v.extend([0u8; 24]);
    v
}

/// The boot driver's service and its device bindings.
pub fn boot_driver(cs: &str, driver: &str, driver_database: bool) -> Vec<Edit> {
    use HiveName::System;
    let svc = [cs, "Services", driver];
    let mut out = vec![
        edit("boot-driver", System, &svc, "Type", RegValue::Dword(1)),
        edit(
            "boot-driver",
            System,
            &svc,
            "Start",
            RegValue::Dword(START_BOOT),
        ),
        edit(
            "boot-driver",
            System,
            &svc,
            "Group",
            RegValue::Sz("SCSI miniport".into()),
        ),
        edit(
            "boot-driver",
            System,
            &svc,
            "ErrorControl",
            RegValue::Dword(ERROR_NORMAL),
        ),
        edit(
            "boot-driver",
            System,
            &svc,
            "ImagePath",
            RegValue::ExpandSz(format!("system32\\drivers\\{driver}.sys")),
        ),
    ];
    if driver_database {
        let ddb = "driver-database";
        out.push(edit(
            ddb,
            System,
            &["DriverDatabase", "DriverInfFiles", DDB_INF],
            "",
            RegValue::MultiSz(vec![DDB_INF_LABEL.into()]),
        ));
        out.push(edit(
            ddb,
            System,
            &["DriverDatabase", "DriverInfFiles", DDB_INF],
            "Active",
            RegValue::Sz(DDB_INF_LABEL.into()),
        ));
        out.push(edit(
            ddb,
            System,
            &["DriverDatabase", "DriverInfFiles", DDB_INF],
            "Configurations",
            RegValue::MultiSz(vec![DDB_CONFIG.into()]),
        ));
        out.push(edit(
            ddb,
            System,
            &["DriverDatabase", "DriverPackages", DDB_INF_LABEL],
            "Version",
            RegValue::Binary(ddb_version_blob()),
        ));
        let conf = [
            "DriverDatabase",
            "DriverPackages",
            DDB_INF_LABEL,
            "Configurations",
            DDB_CONFIG,
        ];
        out.push(edit(ddb, System, &conf, "ConfigFlags", RegValue::Dword(0)));
        out.push(edit(
            ddb,
            System,
            &conf,
            "Service",
            RegValue::Sz(driver.into()),
        ));
        for id in pci_ids(driver) {
            out.push(edit(
                ddb,
                System,
                &["DriverDatabase", "DeviceIds", "PCI", id.as_str()],
                DDB_INF,
                RegValue::Binary(vec![0x01, 0xff, 0x00, 0x00]),
            ));
            out.push(edit(
                ddb,
                System,
                &[
                    "DriverDatabase",
                    "DriverPackages",
                    DDB_INF_LABEL,
                    "Descriptors",
                    "PCI",
                    id.as_str(),
                ],
                "Configuration",
                RegValue::Sz(DDB_CONFIG.into()),
            ));
        }
    } else {
        for id in pci_ids(driver) {
            let key = format!("PCI#{id}");
            let path = [cs, "Control", "CriticalDeviceDatabase", key.as_str()];
            out.push(edit(
                "critical-device-database",
                System,
                &path,
                "Service",
                RegValue::Sz(driver.into()),
            ));
            out.push(edit(
                "critical-device-database",
                System,
                &path,
                "ClassGUID",
                RegValue::Sz(SCSI_CLASS_GUID.into()),
            ));
        }
    }
    out
}

/// VMware's driver services made harmless, from their current Start/ErrorControl.
pub(crate) fn vmware_services(
    cs: &str,
    current: &[(String, Option<u32>, Option<u32>)],
) -> Vec<Edit> {
    let mut out = Vec::new();
    for (svc, start, error_control) in current {
        let key = [cs, "Services", svc.as_str()];
        if start.is_some_and(|s| s < START_DEMAND) {
            out.push(edit(
                "vmware-services",
                HiveName::System,
                &key,
                "Start",
                RegValue::Dword(START_DEMAND),
            ));
        }
        if error_control.is_some_and(|e| e > ERROR_NORMAL) {
            out.push(edit(
                "vmware-services",
                HiveName::System,
                &key,
                "ErrorControl",
                RegValue::Dword(ERROR_NORMAL),
            ));
        }
    }
    out
}

/// No automatic reboot after a bug check.
pub(crate) fn crash_control(cs: &str) -> Edit {
    edit(
        "crash-control",
        HiveName::System,
        &[cs, "Control", "CrashControl"],
        "AutoReboot",
        RegValue::Dword(0),
    )
}

/// `DevicePath` with the VirtIO folder appended, unless it is there already.
pub(crate) fn device_path(current: Option<&str>) -> Option<Edit> {
    let ours = format!("%SystemRoot%\\{DRIVER_DIR}");
    let cur = current.unwrap_or("%SystemRoot%\\inf");
    if cur.split(';').any(|p| p.trim().eq_ignore_ascii_case(&ours)) {
        return None;
    }
    let new = if cur.trim().is_empty() {
        ours
    } else {
        format!("{};{ours}", cur.trim_end_matches(';'))
    };
    Some(edit(
        "driver-path",
        HiveName::Software,
        &["Microsoft", "Windows", "CurrentVersion"],
        "DevicePath",
        RegValue::ExpandSz(new),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find<'a>(edits: &'a [Edit], key_end: &str, value: &str) -> &'a Edit {
        edits
            .iter()
            .find(|e| e.key.last().map(String::as_str) == Some(key_end) && e.value == value)
            .unwrap_or_else(|| panic!("no {key_end}\\{value}"))
    }

    #[test]
    fn boot_driver_is_a_boot_start_scsi_miniport() {
        let e = boot_driver("ControlSet001", "viostor", true);
        assert_eq!(find(&e, "viostor", "Start").data, RegValue::Dword(0));
        assert_eq!(find(&e, "viostor", "Type").data, RegValue::Dword(1));
        assert_eq!(
            find(&e, "viostor", "ImagePath").data,
            RegValue::ExpandSz("system32\\drivers\\viostor.sys".into())
        );
        assert!(e.iter().all(|x| x.step != "critical-device-database"));
        assert_eq!(
            find(&e, "VEN_1AF4&DEV_1001&REV_00", "guestor.inf").data,
            RegValue::Binary(vec![1, 0xff, 0, 0])
        );
        assert_eq!(
            find(&e, DDB_CONFIG, "Service").data,
            RegValue::Sz("viostor".into())
        );
    }

    #[test]
    fn windows_7_gets_critical_device_database_entries() {
        let e = boot_driver("ControlSet001", "vioscsi", false);
        let cdd = find(
            &e,
            "PCI#VEN_1AF4&DEV_1004&SUBSYS_00081AF4&REV_00",
            "Service",
        );
        assert_eq!(cdd.data, RegValue::Sz("vioscsi".into()));
        assert_eq!(
            cdd.key[..3],
            ["ControlSet001", "Control", "CriticalDeviceDatabase"]
        );
        assert!(e.iter().all(|x| x.key[0] != "DriverDatabase"));
    }

    #[test]
    fn version_blob_embeds_the_scsi_class_guid() {
        let b = ddb_version_blob();
        assert_eq!(b.len(), 48);
        assert_eq!(&b[8..12], &[0x7b, 0xe9, 0x36, 0x4d]);
    }

    #[test]
    fn vmware_services_only_change_what_is_harmful() {
        let e = vmware_services(
            "ControlSet001",
            &[
                ("pvscsi".into(), Some(0), Some(3)),
                ("vmxnet3ndis6".into(), Some(3), Some(1)),
            ],
        );
        assert_eq!(e.len(), 2);
        assert!(e.iter().all(|x| x.key[2] == "pvscsi"));
    }

    #[test]
    fn device_path_is_appended_once() {
        let e = device_path(Some("%SystemRoot%\\inf")).unwrap();
        assert_eq!(
            e.data,
            RegValue::ExpandSz("%SystemRoot%\\inf;%SystemRoot%\\Drivers\\VirtIO".into())
        );
        assert!(device_path(Some("%SystemRoot%\\inf;%SYSTEMROOT%\\drivers\\virtio")).is_none());
    }
}
