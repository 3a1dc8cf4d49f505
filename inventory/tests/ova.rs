//! OVA packages built at test time with the real `tar` (and Python's `tarfile` for
//! shapes GNU tar will not write), read in place: offsets, manifests, chunks, gzip,
//! and every refusal of ../shared/SECURITY.md's OVA section.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::Digest;
use v2k_inventory::model::*;
use v2k_inventory::{BuiltinProbe, Error, Options};

/// OVF and OVA disks are described by the OVF itself: no disk probe is asked.
fn load(p: &std::path::Path, o: &Options) -> v2k_inventory::Result<Vec<Vm>> {
    v2k_inventory::load(p, o, &BuiltinProbe)
}

/// A minimal vSphere-shaped OVF naming one file (`href`, `size` bytes).
fn ovf(href: &str, size: Option<usize>, extra_file_attrs: &str) -> String {
    let size = size
        .map(|s| format!(r#" ovf:size="{s}""#))
        .unwrap_or_default();
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vmw="http://www.vmware.com/schema/ovf">
  <References><File ovf:href="{href}" ovf:id="file1"{size}{extra_file_attrs}/></References>
  <DiskSection><Info>d</Info><Disk ovf:capacity="1" ovf:capacityAllocationUnits="byte * 2^30" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/></DiskSection>
  <VirtualSystem ovf:id="t1"><Info>vm</Info><Name>t1</Name>
    <OperatingSystemSection ovf:id="94" vmw:osType="ubuntu64Guest"><Info>os</Info></OperatingSystemSection>
    <VirtualHardwareSection><Info>hw</Info>
      <Item><rasd:InstanceID>3</rasd:InstanceID><rasd:ResourceSubType>VirtualSCSI</rasd:ResourceSubType><rasd:ResourceType>6</rasd:ResourceType></Item>
      <Item><rasd:AddressOnParent>0</rasd:AddressOnParent><rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource><rasd:InstanceID>4</rasd:InstanceID><rasd:Parent>3</rasd:Parent><rasd:ResourceType>17</rasd:ResourceType></Item>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"#
    )
}

fn sha256(b: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(b))
}

/// Deterministic non-trivial bytes.
fn content(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 513) as u8).collect()
}

struct Pkg {
    dir: tempfile::TempDir,
}

impl Pkg {
    fn new() -> Pkg {
        Pkg {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn src(&self) -> PathBuf {
        let p = self.dir.path().join("src");
        std::fs::create_dir_all(&p).unwrap();
        p
    }
    fn write(&self, name: &str, data: &[u8]) {
        std::fs::write(self.src().join(name), data).unwrap();
    }
    fn manifest(&self, names: &[&str]) {
        let mut mf = String::new();
        for n in names {
            let b = std::fs::read(self.src().join(n)).unwrap();
            mf.push_str(&format!("SHA256({n})= {}\n", sha256(&b)));
        }
        self.write("vm.mf", mf.as_bytes());
    }
    /// Runs GNU tar in the given format over `members`, in order (the OVF first, as
    /// the OVF spec asks).
    fn tar(&self, format: &str, members: &[&str]) -> PathBuf {
        let out = self.dir.path().join("vm.ova");
        let st = Command::new("tar")
            .arg(format!("--format={format}"))
            .arg("-cf")
            .arg(&out)
            .arg("-C")
            .arg(self.src())
            .args(members)
            .status()
            .expect("tar runs");
        assert!(st.success());
        out
    }
    fn python(&self, script: &str) -> PathBuf {
        let out = self.dir.path().join("vm.ova");
        let st = Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(&out)
            .arg(self.src())
            .status()
            .expect("python3 runs");
        assert!(st.success());
        out
    }
}

fn read_at(path: &Path, offset: u64, size: u64) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    let mut v = vec![0; size as usize];
    f.read_exact(&mut v).unwrap();
    v
}

fn standard(format: &str) -> (Pkg, PathBuf, Vec<u8>) {
    let p = Pkg::new();
    let disk = content(70_000);
    p.write("vm.ovf", ovf("disk1.vmdk", Some(disk.len()), "").as_bytes());
    p.write("disk1.vmdk", &disk);
    p.manifest(&["vm.ovf", "disk1.vmdk"]);
    let ova = p.tar(format, &["vm.ovf", "vm.mf", "disk1.vmdk"]);
    (p, ova, disk)
}

#[test]
fn locates_the_disk_member_in_place_for_ustar_pax_and_gnu_archives() {
    for format in ["ustar", "pax", "gnu"] {
        let (_p, ova, disk) = standard(format);
        let vms = load(&ova, &Options::default()).unwrap();
        let vm = &vms[0];
        assert_eq!(vm.source.kind, SourceKind::Ova);
        assert_eq!(
            vm.source.manifest,
            Some(ManifestStatus::Verified),
            "{format}"
        );
        match &vm.disks[0].location {
            DiskLocation::OvaMember {
                archive,
                name,
                chunks,
                compression,
            } => {
                assert_eq!(archive, &ova);
                assert_eq!(name, "disk1.vmdk");
                assert_eq!(compression, &None);
                assert_eq!(chunks.len(), 1);
                assert_eq!(
                    read_at(&ova, chunks[0].offset, chunks[0].size),
                    disk,
                    "{format}"
                );
            }
            other => panic!("{format}: {other:?}"),
        }
        assert_eq!(vm.disks[0].capacity, Some(1 << 30));
    }
}

#[test]
fn a_long_member_name_in_pax_and_gnu_form_is_found() {
    let long = format!("{}.vmdk", "d".repeat(150));
    for format in ["pax", "gnu"] {
        let p = Pkg::new();
        p.write("vm.ovf", ovf(&long, Some(5), "").as_bytes());
        p.write(&long, b"hello");
        p.manifest(&["vm.ovf", &long]);
        let ova = p.tar(format, &["vm.ovf", "vm.mf", &long]);
        let vm = &load(&ova, &Options::default()).unwrap()[0];
        let DiskLocation::OvaMember { chunks, .. } = &vm.disks[0].location else {
            panic!()
        };
        assert_eq!(read_at(&ova, chunks[0].offset, 5), b"hello");
    }
}

#[test]
fn joins_chunked_gzip_members_in_order() {
    let p = Pkg::new();
    let mut gz = Vec::new();
    {
        use std::io::Write;
        let mut c = Command::new("gzip")
            .arg("-cn")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(&content(5000)).unwrap();
        gz.extend(c.wait_with_output().unwrap().stdout);
    }
    let (a, b) = gz.split_at(gz.len() / 2);
    p.write(
        "vm.ovf",
        ovf(
            "disk1.vmdk.gz",
            Some(gz.len()),
            r#" ovf:compression="gzip" ovf:chunkSize="4096""#,
        )
        .as_bytes(),
    );
    p.write("disk1.vmdk.gz.000000000", a);
    p.write("disk1.vmdk.gz.000000001", b);
    p.manifest(&[
        "vm.ovf",
        "disk1.vmdk.gz.000000000",
        "disk1.vmdk.gz.000000001",
    ]);
    let ova = p.tar(
        "ustar",
        &[
            "vm.ovf",
            "vm.mf",
            "disk1.vmdk.gz.000000000",
            "disk1.vmdk.gz.000000001",
        ],
    );
    let vm = &load(&ova, &Options::default()).unwrap()[0];
    let DiskLocation::OvaMember {
        chunks,
        compression,
        ..
    } = &vm.disks[0].location
    else {
        panic!()
    };
    assert_eq!(*compression, Some(Compression::Gzip));
    assert_eq!(chunks.len(), 2);
    let mut joined = read_at(&ova, chunks[0].offset, chunks[0].size);
    joined.extend(read_at(&ova, chunks[1].offset, chunks[1].size));
    assert_eq!(joined, gz);
}

#[test]
fn manifest_mismatch_is_fatal_unless_verification_is_off() {
    let p = Pkg::new();
    let disk = content(1000);
    p.write("vm.ovf", ovf("disk1.vmdk", Some(1000), "").as_bytes());
    p.write("disk1.vmdk", &disk);
    p.manifest(&["vm.ovf", "disk1.vmdk"]);
    p.write(
        "disk1.vmdk",
        &content(999).into_iter().chain([0u8]).collect::<Vec<_>>(),
    );
    let ova = p.tar("ustar", &["vm.ovf", "vm.mf", "disk1.vmdk"]);
    let e = load(&ova, &Options::default()).unwrap_err();
    assert!(matches!(e, Error::Manifest { .. }), "{e}");
    assert!(e.to_string().contains("does not match"), "{e}");
    let vm = &load(
        &ova,
        &Options {
            verify_manifest: false,
        },
    )
    .unwrap()[0];
    assert_eq!(vm.source.manifest, Some(ManifestStatus::Skipped));
    assert!(vm.concerns.iter().any(|c| c.id == "manifest-skipped"));
}

#[test]
fn a_disk_missing_from_the_manifest_or_an_unparseable_line_is_fatal() {
    let p = Pkg::new();
    p.write("vm.ovf", ovf("disk1.vmdk", Some(3), "").as_bytes());
    p.write("disk1.vmdk", b"abc");
    p.manifest(&["vm.ovf"]);
    let ova = p.tar("ustar", &["vm.ovf", "vm.mf", "disk1.vmdk"]);
    assert!(load(&ova, &Options::default())
        .unwrap_err()
        .to_string()
        .contains("not in the manifest"));

    p.manifest(&["vm.ovf", "disk1.vmdk"]);
    let mut mf = std::fs::read(p.src().join("vm.mf")).unwrap();
    mf.extend_from_slice(b"this is not a manifest line\n");
    p.write("vm.mf", &mf);
    let ova = p.tar("ustar", &["vm.ovf", "vm.mf", "disk1.vmdk"]);
    assert!(load(&ova, &Options::default())
        .unwrap_err()
        .to_string()
        .contains("line 3"));
}

#[test]
fn accepts_uppercase_sha512_and_sha1_manifests() {
    let p = Pkg::new();
    p.write("vm.ovf", ovf("disk1.vmdk", Some(3), "").as_bytes());
    p.write("disk1.vmdk", b"abc");
    let ovf_bytes = std::fs::read(p.src().join("vm.ovf")).unwrap();
    let mf = format!(
        "SHA512(vm.ovf)= {}\nSHA1(disk1.vmdk)= {}\n",
        hex::encode_upper(sha2::Sha512::digest(&ovf_bytes)),
        "A9993E364706816ABA3E25717850C26C9CD0D89D"
    );
    p.write("vm.mf", mf.as_bytes());
    let ova = p.tar("ustar", &["vm.ovf", "vm.mf", "disk1.vmdk"]);
    assert_eq!(
        load(&ova, &Options::default()).unwrap()[0].source.manifest,
        Some(ManifestStatus::Verified)
    );
}

#[test]
fn an_ova_without_manifest_loads_with_a_warning() {
    let p = Pkg::new();
    p.write("vm.ovf", ovf("disk1.vmdk", None, "").as_bytes());
    p.write("disk1.vmdk", b"abc");
    let ova = p.tar("ustar", &["vm.ovf", "disk1.vmdk"]);
    let vm = &load(&ova, &Options::default()).unwrap()[0];
    assert_eq!(vm.source.manifest, Some(ManifestStatus::Absent));
    assert!(vm
        .concerns
        .iter()
        .any(|c| c.id == "manifest-absent" && c.severity == Severity::Warning));
}

#[test]
fn refuses_symlink_and_hard_link_members() {
    let p = Pkg::new();
    p.write("vm.ovf", ovf("disk1.vmdk", None, "").as_bytes());
    std::os::unix::fs::symlink("/etc/passwd", p.src().join("disk1.vmdk")).unwrap();
    let ova = p.tar("ustar", &["vm.ovf", "disk1.vmdk"]);
    assert!(load(&ova, &Options::default())
        .unwrap_err()
        .to_string()
        .contains("symbolic link"));

    let p = Pkg::new();
    p.write("vm.ovf", ovf("disk1.vmdk", None, "").as_bytes());
    p.write("disk1.vmdk", b"abc");
    std::fs::hard_link(p.src().join("disk1.vmdk"), p.src().join("disk2.vmdk")).unwrap();
    let ova = p.tar("ustar", &["vm.ovf", "disk1.vmdk", "disk2.vmdk"]);
    assert!(load(&ova, &Options::default())
        .unwrap_err()
        .to_string()
        .contains("hard link"));
}

const PY_PREAMBLE: &str = "import sys, tarfile, io\nout, src = sys.argv[1], sys.argv[2]\novf = open(src + '/vm.ovf','rb').read()\ndef add(t, name, data, typ=tarfile.REGTYPE):\n    ti = tarfile.TarInfo(name); ti.size = len(data) if typ == tarfile.REGTYPE else 0; ti.type = typ\n    t.addfile(ti, io.BytesIO(data) if typ == tarfile.REGTYPE else None)\n";

#[test]
fn refuses_traversal_absolute_device_fifo_and_duplicate_members() {
    for (case, expect) in [
        ("add(t, '../disk1.vmdk', b'abc')", "parent-directory"),
        ("add(t, '/etc/disk1.vmdk', b'abc')", "absolute"),
        ("add(t, 'dev', b'', tarfile.CHRTYPE)", "device"),
        ("add(t, 'blk', b'', tarfile.BLKTYPE)", "device"),
        ("add(t, 'fifo', b'', tarfile.FIFOTYPE)", "FIFO"),
        (
            "add(t, 'disk1.vmdk', b'abc'); add(t, 'disk1.vmdk', b'xyz')",
            "duplicate",
        ),
    ] {
        let p = Pkg::new();
        p.write("vm.ovf", ovf("disk1.vmdk", None, "").as_bytes());
        let ova = p.python(&format!(
            "{PY_PREAMBLE}t = tarfile.open(out, 'w', format=tarfile.USTAR_FORMAT if 'etc' not in {case:?} else tarfile.GNU_FORMAT)\nadd(t, 'vm.ovf', ovf)\n{case}\nt.close()\n"
        ));
        let e = load(&ova, &Options::default()).unwrap_err();
        assert!(matches!(e, Error::Tar { .. }), "{case}: {e}");
        assert!(e.to_string().contains(expect), "{case}: {e}");
    }
}

#[test]
fn refuses_a_pax_size_that_disagrees_with_the_ustar_size() {
    // CVE-2025-62518: the ustar header says 0 bytes, the pax header says more, and the
    // "data" is another tar header that a reader trusting the ustar size would see.
    let p = Pkg::new();
    p.write("vm.ovf", ovf("disk1.vmdk", None, "").as_bytes());
    let ova = p.python(&format!(
        "{PY_PREAMBLE}inner = io.BytesIO(); it = tarfile.open(fileobj=inner, mode='w', format=tarfile.USTAR_FORMAT); add(it, 'disk1.vmdk', b'smuggled'); it.close()\n\
inner = inner.getvalue()[:1024]\n\
t = tarfile.open(out, 'w', format=tarfile.PAX_FORMAT)\nadd(t, 'vm.ovf', ovf)\n\
rec = ' size=%d\\n' % len(inner); n = len(rec) + 2\nwhile len(str(n)) + len(rec) != n: n = len(str(n)) + len(rec)\nrec = (str(n) + rec).encode()\n\
ph = tarfile.TarInfo('PaxHeaders/disk1.vmdk'); ph.type = tarfile.XHDTYPE; ph.size = len(rec)\n\
t.fileobj.write(ph.tobuf(tarfile.USTAR_FORMAT)); t.fileobj.write(rec + b'\\0' * (512 - len(rec) % 512))\n\
h = tarfile.TarInfo('disk1.vmdk'); h.size = 0\nt.fileobj.write(h.tobuf(tarfile.USTAR_FORMAT)); t.fileobj.write(inner)\n\
t.offset = t.fileobj.tell(); t.close()\n"
    ));
    let e = load(&ova, &Options::default()).unwrap_err();
    assert!(e.to_string().contains("CVE-2025-62518"), "{e}");
}

#[test]
fn refuses_a_member_running_past_the_end_of_the_file() {
    let (_p, ova, _) = standard("ustar");
    let len = std::fs::metadata(&ova).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&ova).unwrap();
    f.set_len(len - 1024 - 40_000).unwrap();
    let e = load(&ova, &Options::default()).unwrap_err();
    assert!(e.to_string().contains("past the end"), "{e}");
}

#[test]
fn refuses_unsafe_hrefs_inside_an_ova() {
    for href in [
        "../disk1.vmdk",
        "/etc/shadow",
        "http://evil.example/d.vmdk",
        "file:///etc/shadow",
        "%2e%2e/d.vmdk",
        "a\\..\\d.vmdk",
    ] {
        let p = Pkg::new();
        p.write("vm.ovf", ovf(href, None, "").as_bytes());
        let ova = p.tar("ustar", &["vm.ovf"]);
        let e = load(
            &ova,
            &Options {
                verify_manifest: false,
            },
        )
        .unwrap_err();
        assert!(
            matches!(e, Error::UnsafePath { field: "href", .. }),
            "{href}: {e}"
        );
    }
}

#[test]
fn refuses_an_ova_whose_ovf_declares_entities() {
    let p = Pkg::new();
    p.write("vm.ovf", br#"<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><Envelope>&e;</Envelope>"#);
    let ova = p.tar("ustar", &["vm.ovf"]);
    assert!(load(&ova, &Options::default())
        .unwrap_err()
        .to_string()
        .contains("DOCTYPE"));
}

#[test]
fn an_ovf_size_that_disagrees_with_the_member_is_fatal() {
    let p = Pkg::new();
    p.write("vm.ovf", ovf("disk1.vmdk", Some(4), "").as_bytes());
    p.write("disk1.vmdk", b"abc");
    let ova = p.tar("ustar", &["vm.ovf", "disk1.vmdk"]);
    assert!(load(&ova, &Options::default())
        .unwrap_err()
        .to_string()
        .contains("ovf:size"));
}

#[test]
fn a_missing_disk_member_is_a_critical_concern_not_an_error() {
    let p = Pkg::new();
    p.write("vm.ovf", ovf("disk1.vmdk", None, "").as_bytes());
    let ova = p.tar("ustar", &["vm.ovf"]);
    let vm = &load(&ova, &Options::default()).unwrap()[0];
    assert!(matches!(vm.disks[0].location, DiskLocation::Missing { .. }));
    assert!(vm.has_critical());
}

#[test]
fn an_ova_made_with_tar_of_dot_is_read() {
    // `tar -cf x.ova -C dir .` names members "./vm.ovf" and adds a "./" directory.
    let p = Pkg::new();
    p.write("vm.ovf", ovf("disk1.vmdk", Some(3), "").as_bytes());
    p.write("disk1.vmdk", b"abc");
    p.manifest(&["vm.ovf", "disk1.vmdk"]);
    let ova = p.tar("pax", &["."]);
    let vm = &load(&ova, &Options::default()).unwrap()[0];
    assert_eq!(vm.source.manifest, Some(ManifestStatus::Verified));
    let DiskLocation::OvaMember { chunks, .. } = &vm.disks[0].location else {
        panic!()
    };
    assert_eq!(chunks[0].member, "disk1.vmdk");
}

#[test]
fn an_ova_members_own_header_wins_over_a_disagreeing_ovf_capacity() {
    let p = Pkg::new();
    // The OVF says 1 GiB; the member's hosted sparse header says 2048 sectors.
    p.write("vm.ovf", ovf("disk1.vmdk", None, "").as_bytes());
    let mut disk = vec![0u8; 1024];
    disk[..4].copy_from_slice(b"KDMV"); // magic
    disk[4..8].copy_from_slice(&3u32.to_le_bytes()); // version
    disk[12..20].copy_from_slice(&2048u64.to_le_bytes()); // capacity in sectors
    p.write("disk1.vmdk", &disk);
    let ova = p.tar("ustar", &["vm.ovf", "disk1.vmdk"]);
    let vm = &load(&ova, &Options::default()).unwrap()[0];
    assert_eq!(vm.disks[0].capacity, Some(2048 * 512));
    assert!(
        vm.concerns.iter().any(|c| c.id == "disk-capacity-mismatch"
            && c.severity == Severity::Warning
            && c.message.contains("1073741824")),
        "{:?}",
        vm.concerns
    );
}
