//! End to end on a real fixture guest: convert debian-dracut-lvm's VMware disks with the
//! converters library, inject, check every change the injector reports and that the
//! domain XML is valid for libvirt, then inject again (idempotence). Also bad inputs
//! (blank disk, damaged filesystem, unknown distribution).
//!
//! No boot here (docs/architecture.md, "Testing"): the injected guests' boot on virtio
//! (agent report, NIC name pinned to the MAC, DHCP address, mounts) is
//! cli/tests/migrate.rs's one boot per fixture, which runs this injector on the same
//! disks; debian-classic's injection (VMware Tools' repository and driver disabled,
//! every kind of change, the NIC pin) is checked there from that boot's conversion log
//! rather than by a second injection here. The un-injected negative control is
//! tests/fixtures' virtio-blk boot and validator/tests/negative.rs.
//!
//! Prerequisites missing (root, libguestfs, QEMU, debootstrap...) make these tests FAIL,
//! never skip: CI runs them as root with V2K_REQUIRE_E2E=1. Heavy tests take a global
//! lock: two TCG guests at once on a 2-core machine would time each other out.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Instant;

use v2k_drivers_injector::{inject, Accel, DiskBus, ErrorKind, InjectOptions, Status};
use v2k_fixtures::Variant;
use v2k_inventory::Vm;
use v2k_kvm_target::{GuestFeatures, NetworkMap, QemuOptions, Target};

static HEAVY: Mutex<()> = Mutex::new(());

fn heavy() -> std::sync::MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|p| p.into_inner())
}

fn require(cmd: &str) {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "missing prerequisite: command {cmd} (run scripts/setup.sh as root)"
    );
}

fn prerequisites() {
    for c in [
        "qemu-system-x86_64",
        "qemu-img",
        "qemu-io",
        "libguestfs-test-tool",
    ] {
        require(c);
    }
    if let Err(e) = v2k_fixtures::check_prerequisites() {
        panic!("{e}");
    }
}

fn accel() -> Accel {
    v2k_kvm_target::accel::choose(None).0
}

/// Converts a fixture's VMX-sparse disks to QCOW2 in `dir` and loads its VM model.
fn converted(variant: Variant, dir: &Path) -> (Vm, Vec<PathBuf>, v2k_fixtures::Fixture) {
    use v2k_converters::convert::{convert, Job, NoProgress, Options};
    use v2k_converters::vmdk::Source;
    let fx = v2k_fixtures::build(variant).unwrap_or_else(|e| panic!("fixture {variant}: {e}"));
    let mut outs = Vec::new();
    for (i, src) in fx.vmx_sparse.disks.iter().enumerate() {
        let output = dir.join(format!("disk{i}.qcow2"));
        let job = Job {
            source: Source {
                path: src.clone(),
                range: None,
            },
            output: output.clone(),
        };
        convert(&job, &Options::default(), i, &NoProgress)
            .unwrap_or_else(|e| panic!("converting {}: {e}", src.display()));
        outs.push(output);
    }
    let mut vms = v2k_inventory::load(
        &fx.vmx_sparse.vmx,
        &v2k_inventory::Options::default(),
        &v2k_converters::probe::ConvertersProbe,
    )
    .expect("loading the fixture VMX");
    (vms.remove(0), outs, fx)
}

fn opts(vm: &Vm, disks: &[PathBuf]) -> InjectOptions {
    InjectOptions {
        vm: vm.clone(),
        disks: disks.to_vec(),
        bus: DiskBus::VirtioBlk,
        keep_agent: false,
        accel: accel(),
    }
}

fn say(msg: &str) {
    eprintln!("[inject] {msg}");
}

fn end_to_end(variant: Variant) {
    prerequisites();
    let _g = heavy();
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let (vm, disks, fx) = converted(variant, dir.path());

    let t0 = Instant::now();
    let log = inject(&opts(&vm, &disks), &mut |m| say(m)).expect("inject");
    say(&format!(
        "inject took {:?}: {:?}",
        t0.elapsed(),
        log.timings
    ));
    assert_eq!(log.status, Status::Converted);
    let steps: Vec<&str> = log.changes.iter().map(|c| c.step.as_str()).collect();
    for want in ["initramfs", "nic-pin", "vmware-tools", "agent", "marker"] {
        assert!(steps.contains(&want), "no {want} change in {steps:?}");
    }
    assert!(log
        .inspection
        .kernels
        .iter()
        .all(|k| k.virtio_capable(false)));
    assert_eq!(log.nic_names.len(), 1);
    assert_eq!(log.nic_names[0].name, "ens192");
    assert_eq!(log.nic_names[0].mac, fx.mac);
    std::fs::write(
        dir.path().join("conversion-log.json"),
        serde_json::to_string_pretty(&log).unwrap(),
    )
    .unwrap();

    // The domain XML is valid for libvirt.
    let t = Target::from_vm(
        &vm,
        &disks,
        DiskBus::VirtioBlk,
        &NetworkMap::default(),
        accel(),
        dir.path(),
    )
    .unwrap();
    let xml_path = dir.path().join("domain.xml");
    std::fs::write(
        &xml_path,
        v2k_kvm_target::domain_xml(&t, &GuestFeatures::default()),
    )
    .unwrap();
    let st = Command::new("virt-xml-validate")
        .arg(&xml_path)
        .arg("domain")
        .status()
        .expect("virt-xml-validate (libvirt-clients)");
    assert!(st.success(), "domain.xml does not validate");
    // The QEMU command line isolates the guest's network.
    let q = QemuOptions {
        serial: format!("file:{}", dir.path().join("serial.log").display()),
        snapshot: true,
    };
    let argv = v2k_kvm_target::qemu_argv(&t, &q, &GuestFeatures::default());
    assert!(argv.iter().any(|a| a.contains("restrict=on")), "{argv:?}");

    // Idempotent: a second run changes nothing, on the layout with the most to
    // recognise (LVM root, dracut): the marker it finds is the same on every guest.
    let again = inject(&opts(&vm, &disks), &mut |m| say(m)).expect("second inject");
    assert_eq!(
        again.status,
        Status::AlreadyConverted,
        "{:#?}",
        again.changes
    );
    assert!(again.changes.is_empty());
    // Keep the directory for a post-mortem when asked.
    if std::env::var_os("V2K_KEEP_TEST_DIRS").is_some() {
        let kept = dir.keep();
        say(&format!("kept {}", kept.display()));
    }
}

#[test]
fn debian_dracut_lvm_is_injected_with_its_nic_name_pinned_and_idempotently() {
    end_to_end(Variant::DebianDracutLvm);
}

fn vm_stub() -> Vm {
    serde_json::from_value(serde_json::json!({
        "schema-version": 1, "name": "stub", "source": {"kind": "vmx", "path": "/nonexistent/stub.vmx"},
        "guest-os": {"family": "linux"}, "firmware": {"kind": "bios"},
        "cpu": {"count": 1, "cores-per-socket": 1}, "memory-mib": 512,
        "nics": [{"index": 0, "model": "vmxnet3", "mac": "00:50:56:00:00:01", "address-type": "static"}]
    }))
    .unwrap()
}

fn qemu_img(args: &[&str]) {
    let st = Command::new("qemu-img")
        .args(args)
        .status()
        .expect("qemu-img");
    assert!(st.success(), "qemu-img {args:?}");
}

#[test]
fn refuses_a_blank_disk() {
    prerequisites();
    let _g = heavy();
    let dir = tempfile::tempdir().unwrap();
    let blank = dir.path().join("blank.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        blank.to_str().unwrap(),
        "256M",
    ]);
    let err = inject(&opts(&vm_stub(), &[blank]), &mut say).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Refused, "{err}");
    assert!(err.to_string().contains("no operating system"), "{err}");
}

#[test]
fn refuses_a_damaged_filesystem_without_changing_the_guest() {
    prerequisites();
    let _g = heavy();
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let (vm, disks, _) = converted(Variant::DebianClassic, dir.path());
    // Overwrite the data disk's ext4 superblock (partition at 1 MiB, superblock 1 KiB in)
    // and its first backup group descriptors: /data can no longer be mounted.
    let st = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 0xa5 1049600 8192"])
        .arg(&disks[1])
        .stdout(Stdio::null())
        .status()
        .expect("qemu-io");
    assert!(st.success());
    let err = inject(&opts(&vm, &disks), &mut say).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Refused, "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("/data") || msg.contains("no operating system"),
        "{msg}"
    );
}

/// Runs a guestfish script on one qcow2 disk (no inspection, nothing mounted first).
fn guestfish(disk: &Path, script: &str) {
    let mut gf = Command::new("guestfish");
    // guestfish reads these from the environment; without force_tcg it would try the
    // KVM that hangs on hosts without vmx/svm (FIELD-NOTES §1).
    gf.env("LIBGUESTFS_BACKEND", "direct");
    if accel() == Accel::Tcg {
        gf.env("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg");
    }
    let mut child = gf
        .args(["--format=qcow2", "-a"])
        .arg(disk)
        .stdin(Stdio::piped())
        .spawn()
        .expect("guestfish (libguestfs-tools)");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "guestfish script failed");
}

#[test]
fn refuses_an_unknown_distribution() {
    prerequisites();
    let _g = heavy();
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("plan42.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        disk.to_str().unwrap(),
        "128M",
    ]);
    // A Linux-looking root whose os-release names a distribution nobody knows.
    let script = "run\n\
        part-disk /dev/sda mbr\n\
        mkfs ext4 /dev/sda1\n\
        mount /dev/sda1 /\n\
        mkdir-p /etc\nmkdir-p /bin\nmkdir-p /usr/bin\nmkdir-p /lib/modules\nmkdir-p /boot\n\
        write /etc/os-release \"NAME=Plan42\\nID=plan42\\nVERSION_ID=4.2\\nPRETTY_NAME='Plan 42'\\n\"\n\
        write /etc/fstab \"/dev/sda1 / ext4 defaults 0 1\\n\"\n\
        write /etc/hostname \"plan42\\n\"\n\
        touch /bin/sh\n";
    guestfish(&disk, script);
    let err = inject(&opts(&vm_stub(), &[disk]), &mut say).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Refused, "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("unsupported Linux distribution") || msg.contains("no operating system"),
        "{msg}"
    );
}

#[test]
fn refuses_a_windows_model_and_a_vmdk_before_any_launch() {
    let mut vm = vm_stub();
    vm.guest_os.family = v2k_inventory::model::OsFamily::Windows;
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("w.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", disk.to_str().unwrap(), "16M"]);
    let err = inject(&opts(&vm, std::slice::from_ref(&disk)), &mut say).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Refused);
    assert!(err.to_string().contains("Windows"), "{err}");
    let vmdk = dir.path().join("x.vmdk");
    qemu_img(&["create", "-q", "-f", "vmdk", vmdk.to_str().unwrap(), "16M"]);
    let err = inject(&opts(&vm_stub(), &[vmdk]), &mut say).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Input);
    assert!(err.to_string().contains("not a QCOW2"), "{err}");
    let backed = dir.path().join("b.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        disk.to_str().unwrap(),
        "-F",
        "qcow2",
        backed.to_str().unwrap(),
    ]);
    let err = inject(&opts(&vm_stub(), &[backed]), &mut say).unwrap_err();
    assert!(err.to_string().contains("backing file"), "{err}");
}
