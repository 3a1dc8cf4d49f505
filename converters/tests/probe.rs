//! VMX disks examined by the converter's own VMDK reader (the default probe): a disk
//! it accepts gets its capacity, a disk it refuses is a critical pre-flight concern.

use v2k_converters::probe::ConvertersProbe;
use v2k_inventory::model::*;
use v2k_inventory::Options;

fn load(p: &std::path::Path, o: &Options) -> v2k_inventory::Result<Vec<Vm>> {
    v2k_inventory::load(p, o, &ConvertersProbe)
}

fn vmx(dir: &std::path::Path) -> std::path::PathBuf {
    let p = dir.join("vm.vmx");
    std::fs::write(
        &p,
        "guestOS = \"debian12-64\"\nmemsize = \"1024\"\nscsi0.present = \"TRUE\"\nscsi0.virtualDev = \"pvscsi\"\nscsi0:0.present = \"TRUE\"\nscsi0:0.fileName = \"vm.vmdk\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("vm.vmdk"),
        "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n\nRW 2048 FLAT \"vm-flat.vmdk\" 0\n\nddb.adapterType = \"lsilogic\"\n",
    )
    .unwrap();
    p
}

#[test]
fn capacity_comes_from_the_converters_reader_when_the_extent_exists() {
    let d = tempfile::tempdir().unwrap();
    let p = vmx(d.path());
    std::fs::File::create(d.path().join("vm-flat.vmdk"))
        .unwrap()
        .set_len(2048 * 512)
        .unwrap();
    let vm = &load(&p, &Options::default()).unwrap()[0];
    assert_eq!(vm.disks[0].capacity, Some(1 << 20));
    assert_eq!(vm.disks[0].format.as_deref(), Some("monolithicFlat"));
    assert!(!vm.has_critical(), "{:?}", vm.concerns);
}

#[test]
fn a_missing_flat_extent_is_a_critical_unreadable_disk() {
    let d = tempfile::tempdir().unwrap();
    let p = vmx(d.path());
    let vm = &load(&p, &Options::default()).unwrap()[0];
    let c = vm
        .concerns
        .iter()
        .find(|c| c.id == "disk-unreadable")
        .expect("disk-unreadable");
    assert_eq!(c.severity, Severity::Critical);
    assert_eq!(c.subject.as_deref(), Some("scsi0:0"));
}

/// A thin flat extent counts what it holds, not its size: the populated size (what a
/// wave's free-space estimate sums) comes from SEEK_DATA/SEEK_HOLE.
#[test]
fn a_sparse_flat_extent_is_populated_by_its_data_only() {
    use std::os::unix::fs::FileExt;
    let d = tempfile::tempdir().unwrap();
    let p = vmx(d.path());
    let f = std::fs::File::create(d.path().join("vm-flat.vmdk")).unwrap();
    f.set_len(2048 * 512).unwrap();
    let vm = &load(&p, &Options::default()).unwrap()[0];
    assert_eq!(vm.disks[0].capacity, Some(1 << 20));
    assert_eq!(vm.disks[0].populated_size, Some(0));
    f.write_all_at(&[1u8; 4096], 8192).unwrap();
    f.sync_all().unwrap();
    let vm = &load(&p, &Options::default()).unwrap()[0];
    let populated = vm.disks[0].populated_size.unwrap();
    assert!((4096..(1 << 20)).contains(&populated), "{populated}");
}
