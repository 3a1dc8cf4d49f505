//! The validator on disks that were converted but not injected: the negative control
//! of the whole pipeline. The unconverted guest has no virtio driver in its initramfs,
//! so it must fail validation with the console's reason, and a short timeout must be
//! reported as such rather than hang.
//!
//! This is the suite's one boot of debian-classic un-injected on virtio-blk
//! (docs/architecture.md, "Testing"): it also stands for the fixture's own claim that
//! its disks need the injector (initramfs-tools' "ALERT!  /dev/sda1 does not exist").

use std::path::PathBuf;
use std::time::{Duration, Instant};

use v2k_converters::convert::{convert, Job, NoProgress, Options as ConvertOptions};
use v2k_converters::vmdk::Source;
use v2k_fixtures::{build, Variant};
use v2k_kvm_target::accel;
use v2k_kvm_target::Target;
use v2k_kvm_target::{DiskBus, Firmware, NetTarget, TargetNic};
use v2k_validator::checks::ExpectedNic;
use v2k_validator::{validate, Backend, Expectations, Options};

fn unconverted_target(dir: &std::path::Path) -> (Target, Expectations) {
    let f = build(Variant::DebianClassic).unwrap_or_else(|e| panic!("fixture: {e}"));
    let mut disks: Vec<PathBuf> = Vec::new();
    for (i, src) in f.vmx_sparse.disks.iter().enumerate() {
        let out = dir.join(format!("disk{i}.qcow2"));
        convert(
            &Job {
                source: Source::file(src),
                output: out.clone(),
            },
            &ConvertOptions::default(),
            i,
            &NoProgress,
        )
        .unwrap_or_else(|e| panic!("converting {}: {e}", src.display()));
        disks.push(out);
    }
    let (accel, _) = accel::choose(None);
    let target = Target {
        name: "negative-control".into(),
        uuid: None,
        memory_mib: 1024,
        vcpus: 1,
        sockets: 1,
        cores: 1,
        firmware: Firmware::Bios,
        machine: "q35".into(),
        accel,
        disk_bus: DiskBus::VirtioBlk,
        disks,
        disk_uuids: Vec::new(),
        nics: vec![TargetNic {
            mac: f.mac.clone(),
            vmware_network: None,
            target: NetTarget::User,
        }],
        tuning: Default::default(),
    };
    let expect = Expectations {
        mounts: vec!["/data".into()],
        nics: vec![ExpectedNic {
            name: Some("ens192".into()),
            mac: f.mac.clone(),
            static_ipv4: vec![],
        }],
        ..Expectations::default()
    };
    (target, expect)
}

#[test]
fn an_uninjected_guest_fails_validation_with_the_initramfs_reason() {
    let t = tempfile::tempdir().unwrap();
    let (target, expect) = unconverted_target(t.path());
    let opts = Options {
        backend: Backend::Qemu,
        boot_timeout: Duration::from_secs(150),
        keep_changes: false,
        work_dir: t.path().join("validation"),
        features: Default::default(),
    };
    let v = validate(&target, &expect, &opts).unwrap();
    assert!(!v.passed);
    let first = &v.checks[0];
    assert_eq!(first.id, "agent-report");
    assert!(!first.passed);
    assert!(
        first.reason.contains("did not find the root filesystem"),
        "reason: {}\nserial: {}",
        first.reason,
        std::fs::read_to_string(&v.evidence.serial_log).unwrap_or_default()
    );
    // The fixture's claim: initramfs-tools looked for the root disk and gave up.
    let serial = std::fs::read_to_string(&v.evidence.serial_log).unwrap_or_default();
    assert!(
        serial.contains("ALERT!  /dev/sda1 does not exist")
            && serial.contains("Gave up waiting for root file system device"),
        "serial: {serial}"
    );
    // The overlays are gone and the disks were not written.
    assert!(!t.path().join("validation/overlay-0.qcow2").exists());
}

#[test]
fn a_boot_timeout_is_reported_not_hung() {
    let t = tempfile::tempdir().unwrap();
    let (target, expect) = unconverted_target(t.path());
    let opts = Options {
        backend: Backend::Qemu,
        boot_timeout: Duration::from_secs(3),
        keep_changes: false,
        work_dir: t.path().join("validation"),
        features: Default::default(),
    };
    let start = Instant::now();
    let v = validate(&target, &expect, &opts).unwrap();
    assert!(v.evidence.timed_out);
    assert!(!v.passed);
    // 3 s of boot; a guest that never reported is stopped at once.
    assert!(
        start.elapsed() < Duration::from_secs(3 + 30),
        "took {:?}",
        start.elapsed()
    );
    assert!(!v.evidence.clean_shutdown);
}
