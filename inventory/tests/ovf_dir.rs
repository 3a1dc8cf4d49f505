//! OVF packages in a directory and oversize inputs: the refusals of
//! ../shared/SECURITY.md that do not need a tar archive.

use std::path::Path;

use v2k_inventory::model::*;
use v2k_inventory::{BuiltinProbe, Error, Options};

/// OVF and OVA disks are described by the OVF itself: no disk probe is asked.
fn load(p: &std::path::Path, o: &Options) -> v2k_inventory::Result<Vec<Vm>> {
    v2k_inventory::load(p, o, &BuiltinProbe)
}

fn ovf(href: &str) -> String {
    format!(
        r#"<?xml version="1.0"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData">
<References><File ovf:href="{href}" ovf:id="f1"/></References>
<DiskSection><Info>d</Info><Disk ovf:capacity="1048576" ovf:diskId="d1" ovf:fileRef="f1"/></DiskSection>
<VirtualSystem ovf:id="v"><Info>v</Info>
<VirtualHardwareSection><Info>h</Info>
<Item><rasd:InstanceID>3</rasd:InstanceID><rasd:ResourceSubType>lsilogic</rasd:ResourceSubType><rasd:ResourceType>6</rasd:ResourceType></Item>
<Item><rasd:HostResource>ovf:/disk/d1</rasd:HostResource><rasd:InstanceID>4</rasd:InstanceID><rasd:Parent>3</rasd:Parent><rasd:ResourceType>17</rasd:ResourceType></Item>
</VirtualHardwareSection></VirtualSystem></Envelope>
"#
    )
}

fn write(dir: &Path, name: &str, data: &[u8]) {
    std::fs::write(dir.join(name), data).unwrap();
}

#[test]
fn refuses_unsafe_hrefs_in_a_directory_ovf() {
    for href in [
        "../x.vmdk",
        "/etc/shadow",
        "http://h/x.vmdk",
        "file:///etc/shadow",
        "%2e%2e/x.vmdk",
        "..\\x.vmdk",
    ] {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "vm.ovf", ovf(href).as_bytes());
        let e = load(&d.path().join("vm.ovf"), &Options::default()).unwrap_err();
        assert!(
            matches!(e, Error::UnsafePath { field: "href", .. }),
            "{href}: {e}"
        );
    }
}

#[test]
fn refuses_an_href_that_is_a_symlink_to_a_host_file() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "vm.ovf", ovf("disk.vmdk").as_bytes());
    std::os::unix::fs::symlink("/etc/passwd", d.path().join("disk.vmdk")).unwrap();
    let e = load(&d.path().join("vm.ovf"), &Options::default()).unwrap_err();
    assert!(e.to_string().contains("symlink"), "{e}");
}

#[test]
fn verifies_a_directory_manifest_and_fails_on_mismatch() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "vm.ovf", ovf("disk.vmdk").as_bytes());
    write(d.path(), "disk.vmdk", b"abc");
    let ovf_sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(
            std::fs::read(d.path().join("vm.ovf")).unwrap(),
        ))
    };
    let good = format!(
        "SHA256(vm.ovf)= {ovf_sha}\nSHA256(disk.vmdk)= ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\n"
    );
    write(d.path(), "vm.mf", good.as_bytes());
    let vm = &load(&d.path().join("vm.ovf"), &Options::default()).unwrap()[0];
    assert_eq!(vm.source.manifest, Some(ManifestStatus::Verified));
    assert_eq!(vm.disks[0].capacity, Some(1 << 20));
    write(d.path(), "disk.vmdk", b"abd");
    let e = load(&d.path().join("vm.ovf"), &Options::default()).unwrap_err();
    assert!(matches!(e, Error::Manifest { .. }), "{e}");
}

#[test]
fn refuses_a_huge_vmx_and_a_huge_ovf_before_reading_them() {
    let d = tempfile::tempdir().unwrap();
    for (name, size) in [("big.vmx", 5u64 << 20), ("big.ovf", 100 << 20)] {
        let p = d.path().join(name);
        std::fs::File::create(&p).unwrap().set_len(size).unwrap();
        let t = std::time::Instant::now();
        let e = load(&p, &Options::default()).unwrap_err();
        assert!(matches!(e, Error::TooLarge { .. }), "{name}: {e}");
        assert!(t.elapsed() < std::time::Duration::from_millis(100));
    }
}

#[test]
fn billion_laughs_in_a_directory_ovf_is_refused_quickly() {
    let d = tempfile::tempdir().unwrap();
    let mut x = String::from("<?xml version=\"1.0\"?>\n<!DOCTYPE l [<!ENTITY l0 \"lol\">");
    for i in 1..10 {
        let prev = format!("&l{};", i - 1).repeat(10);
        x.push_str(&format!("<!ENTITY l{i} \"{prev}\">"));
    }
    x.push_str("]><Envelope>&l9;</Envelope>");
    write(d.path(), "vm.ovf", x.as_bytes());
    let e = load(&d.path().join("vm.ovf"), &Options::default()).unwrap_err();
    assert!(e.to_string().contains("DOCTYPE"), "{e}");
}

#[test]
fn an_unknown_extension_is_an_error_naming_the_file() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "vm.txt", b"");
    let e = load(&d.path().join("vm.txt"), &Options::default()).unwrap_err();
    assert!(matches!(e, Error::UnknownKind { .. }));
    assert!(e.to_string().contains("vm.txt"));
}

/// A hosted sparse header stating `sectors` (the rest of the file is not read).
fn sparse_header(sectors: u64) -> Vec<u8> {
    let mut h = vec![0u8; 512];
    h[..4].copy_from_slice(b"KDMV"); // magic
    h[4..8].copy_from_slice(&3u32.to_le_bytes()); // version (streamOptimized)
    h[12..20].copy_from_slice(&sectors.to_le_bytes()); // capacity in sectors
    h[20..28].copy_from_slice(&128u64.to_le_bytes()); // grainSize
    h
}

#[test]
fn the_disks_own_header_wins_over_a_disagreeing_ovf_capacity() {
    let d = tempfile::tempdir().unwrap();
    // The OVF says 1 MiB; the VMDK's header says 2 MiB.
    write(d.path(), "vm.ovf", ovf("disk.vmdk").as_bytes());
    write(d.path(), "disk.vmdk", &sparse_header(4096));
    let vm = &load(&d.path().join("vm.ovf"), &Options::default()).unwrap()[0];
    assert_eq!(vm.disks[0].capacity, Some(2 << 20));
    let c = vm
        .concerns
        .iter()
        .find(|c| c.id == "disk-capacity-mismatch")
        .unwrap_or_else(|| panic!("{:?}", vm.concerns));
    assert_eq!(c.severity, Severity::Warning);
    assert_eq!(c.subject.as_deref(), Some(vm.disks[0].id.as_str()));
    assert!(
        c.message.contains("1048576") && c.message.contains("2097152"),
        "{}",
        c.message
    );
    // Agreeing: no concern.
    write(d.path(), "disk.vmdk", &sparse_header(2048));
    let vm = &load(&d.path().join("vm.ovf"), &Options::default()).unwrap()[0];
    assert_eq!(vm.disks[0].capacity, Some(1 << 20));
    assert!(!vm.concerns.iter().any(|c| c.id == "disk-capacity-mismatch"));
}

#[test]
fn an_ovf_memory_size_that_overflows_bytes_is_critical_and_quoted() {
    let d = tempfile::tempdir().unwrap();
    // 2^60 MiB: past a u64 once in bytes.
    let text = ovf("disk.vmdk").replace(
        "<Item><rasd:InstanceID>3</rasd:InstanceID>",
        "<Item><rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits><rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>1152921504606846976</rasd:VirtualQuantity></Item>\n<Item><rasd:InstanceID>3</rasd:InstanceID>",
    );
    write(d.path(), "vm.ovf", text.as_bytes());
    write(d.path(), "disk.vmdk", b"abc");
    let vm = &load(&d.path().join("vm.ovf"), &Options::default()).unwrap()[0];
    let c: Vec<_> = vm
        .concerns
        .iter()
        .filter(|c| c.id == "memory-size-unsupported")
        .collect();
    assert_eq!(c.len(), 1, "{:?}", vm.concerns);
    assert_eq!(c[0].severity, Severity::Critical);
    assert!(
        c[0].message.contains("1152921504606846976"),
        "{}",
        c[0].message
    );
}
