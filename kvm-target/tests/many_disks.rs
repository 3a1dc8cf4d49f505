//! A VM with many disks, on real tools and without a guest: the domain XML of a
//! 32-disk VM (virtio-blk's most, one root port per disk) and of a 64-disk VM (moved
//! to virtio-scsi) is checked by `virt-xml-validate` and defined in libvirt
//! (`qemu:///system`, undefined again), and the QEMU argv of each is started paused
//! (`-S`) on small empty qcow2 disks made by qemu-img, then asked over QMP what it
//! built. No guest boots: QEMU accepting the PCI topology and showing every disk on
//! it is what these tests prove. Missing tools are failures, never skips.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use v2k_inventory::model::{
    AddressType, Disk, DiskLocation, DiskMode, Nic, NicModel, Sharing, SourceKind, Vm,
};
use v2k_kvm_target::{
    domain_xml, qemu_argv, Accel, DiskBus, GuestFeatures, NetworkMap, QemuOptions, Target,
    VIRTIO_BLK_MAX_DISKS,
};

/// Small empty qcow2 disks: QEMU opens them, no guest reads them.
fn disks(dir: &Path, n: usize) -> Vec<PathBuf> {
    (0..n)
        .map(|i| {
            let p = dir.join(format!("disk{i}.qcow2"));
            let st = Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2"])
                .arg(&p)
                .arg("1M")
                .status()
                .expect("qemu-img (qemu-utils, scripts/setup.sh)");
            assert!(st.success(), "qemu-img create {}", p.display());
            p
        })
        .collect()
}

/// The target of a VM named after this test and its pid (the libvirt domain it
/// defines is its own), with one user-mode NIC, on `n` disks, asking for virtio-blk.
fn target(test: &str, dir: &Path, n: usize) -> Target {
    let mut vm = Vm::new_empty(SourceKind::Vmx, dir.join("big.vmx"));
    vm.name = format!("v2k-test-{}-{test}", std::process::id());
    vm.cpu.count = 1;
    vm.memory_mib = 256;
    vm.nics.push(Nic {
        index: 0,
        model: NicModel::Vmxnet3,
        raw_model: None,
        mac: Some("00:50:56:aa:bb:01".into()),
        address_type: AddressType::Static,
        network: None,
        connection_type: None,
        dvs: None,
        start_connected: true,
    });
    // Each disk with a VMware identity (`6000c29` and the disk's number): its serial
    // and WWN go into the XML and argv checked below.
    for i in 0..n {
        vm.disks.push(Disk {
            id: format!("scsi0:{i}"),
            slot: None,
            capacity: Some(1 << 20),
            populated_size: None,
            location: DiskLocation::Missing {
                reference: String::new(),
            },
            format: None,
            mode: DiskMode::Persistent,
            sharing: Sharing::None,
            rdm: None,
            parents: Vec::new(),
            uuid: Some(format!("6000c29{i:025x}")),
        });
    }
    let disks = disks(dir, n);
    let bus = DiskBus::VirtioBlk.fitting(n);
    Target::from_vm(&vm, &disks, bus, &NetworkMap::default(), Accel::Tcg, dir).unwrap()
}

fn validate_and_define(t: &Target, dir: &Path) {
    let xml = domain_xml(t, &GuestFeatures::default());
    let path = dir.join("domain.xml");
    std::fs::write(&path, &xml).unwrap();
    let o = Command::new("virt-xml-validate")
        .arg(&path)
        .arg("domain")
        .output()
        .expect("virt-xml-validate (libvirt-clients, scripts/setup.sh)");
    assert!(
        o.status.success(),
        "{}\n{xml}",
        String::from_utf8_lossy(&o.stderr)
    );
    let virsh = |args: &[&str]| {
        Command::new("virsh")
            .args(["-c", "qemu:///system"])
            .args(args)
            .output()
            .expect("virsh (libvirt-clients; libvirtd running: virtlogd -d; libvirtd -d)")
    };
    let name = t.safe_name();
    let o = virsh(&["define", path.to_str().unwrap()]);
    assert!(
        o.status.success(),
        "virsh define: {}\n{xml}",
        String::from_utf8_lossy(&o.stderr)
    );
    // What libvirt kept: every disk, at the address given (libvirt added none).
    let dumped = virsh(&["dumpxml", &name]);
    let undefined = virsh(&["undefine", &name]);
    let dumped = String::from_utf8_lossy(&dumped.stdout).into_owned();
    assert!(undefined.status.success(), "virsh undefine {name}");
    assert_eq!(
        dumped.matches("<disk type='file' device='disk'>").count(),
        t.disks.len(),
        "{dumped}"
    );
    // Every disk kept its VMware identity: the last one's serial (and WWN).
    let last = format!("6000c29{:025x}", t.disks.len() - 1);
    assert!(
        dumped.contains(&format!("<serial>{}</serial>", &last[..20])),
        "{dumped}"
    );
    assert_eq!(
        dumped.contains(&format!("<wwn>{}</wwn>", &last[..16])),
        t.disk_bus == DiskBus::VirtioScsi,
        "{dumped}"
    );
    if t.disk_bus == DiskBus::VirtioBlk {
        let last = t.disks.len();
        assert!(
            dumped.contains(&format!(
                "<address type='pci' domain='0x0000' bus='{last:#04x}' slot='0x00' function='0x0'/>"
            )),
            "the last disk moved off its own root port: {dumped}"
        );
    }
}

/// Runs `argv` paused with QMP on stdio; returns the answers to `commands`.
fn qmp(argv: &[String], commands: &[&str]) -> Vec<String> {
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .args(["-S", "-qmp", "stdio"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("qemu-system-x86_64 (qemu-system-x86, scripts/setup.sh)");
    let mut input = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let read_reply = |lines: &mut std::io::Lines<_>| -> String {
        for l in lines.by_ref() {
            let l: String = l.unwrap();
            if l.contains("\"return\"") || l.contains("\"error\"") || l.contains("\"QMP\"") {
                return l;
            }
        }
        String::new()
    };
    let greeting = read_reply(&mut lines);
    if !greeting.contains("\"QMP\"") {
        let out = child.wait_with_output().unwrap();
        panic!(
            "QEMU refused the topology: {}\n{argv:?}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut answers = Vec::new();
    for c in ["{\"execute\":\"qmp_capabilities\"}"]
        .iter()
        .chain(commands)
    {
        writeln!(input, "{c}").unwrap();
        answers.push(read_reply(&mut lines));
    }
    writeln!(input, "{{\"execute\":\"quit\"}}").unwrap();
    let _ = read_reply(&mut lines);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "QEMU exit: {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    answers.split_off(1)
}

fn options(dir: &Path) -> QemuOptions {
    QemuOptions {
        serial: format!("file:{}", dir.join("serial.log").display()),
        snapshot: false,
    }
}

#[test]
fn virtio_blk_at_its_limit_puts_each_disk_on_its_own_root_port_in_libvirt_and_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let t = target("blk32", dir.path(), VIRTIO_BLK_MAX_DISKS);
    assert_eq!(t.disk_bus, DiskBus::VirtioBlk);
    validate_and_define(&t, dir.path());
    let argv = qemu_argv(&t, &options(dir.path()), &GuestFeatures::default());
    let answers = qmp(
        &argv,
        &[
            "{\"execute\":\"query-pci\"}",
            "{\"execute\":\"query-block\"}",
            "{\"execute\":\"qom-get\",\"arguments\":{\"path\":\"/machine/peripheral/v2kdisk31\",\"property\":\"serial\"}}",
        ],
    );
    // The last disk's VMware identity, cut to virtio-blk's 20 bytes.
    assert_eq!(
        answers[2],
        format!(
            "{{\"return\": \"{}\"}}",
            &format!("6000c29{:025x}", 31)[..20]
        )
    );
    // Paused before the firmware numbered the buses, QEMU shows the root bus: one
    // root port per disk (Red Hat's 1b36:000c), eight to a slot from 0x08, in disk
    // order...
    let pci: serde_json::Value = serde_json::from_str(&answers[0]).unwrap();
    let ports: Vec<(u64, u64, String)> = pci["return"][0]["devices"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["id"]["vendor"] == 0x1b36 && d["id"]["device"] == 0x000c)
        .map(|d| {
            let at = |k: &str| d[k].as_u64().unwrap();
            (
                at("slot"),
                at("function"),
                d["qdev_id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want: Vec<(u64, u64, String)> = (0..VIRTIO_BLK_MAX_DISKS as u64)
        .map(|i| (0x08 + i / 8, i % 8, format!("v2kport{i}")))
        .collect();
    assert_eq!(ports, want);
    // ...and every disk attached to its virtio-blk device.
    let block: serde_json::Value = serde_json::from_str(&answers[1]).unwrap();
    let attached = block["return"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| {
            b["qdev"]
                .as_str()
                .is_some_and(|q| q.starts_with("/machine/peripheral/v2kdisk"))
        })
        .count();
    assert_eq!(
        attached, VIRTIO_BLK_MAX_DISKS,
        "disks attached to virtio-blk"
    );
}

#[test]
fn sixty_four_disks_go_to_virtio_scsi_in_libvirt_and_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let t = target("scsi64", dir.path(), 64);
    assert_eq!(t.disk_bus, DiskBus::VirtioScsi);
    validate_and_define(&t, dir.path());
    let argv = qemu_argv(&t, &options(dir.path()), &GuestFeatures::default());
    let answers = qmp(
        &argv,
        &[
            "{\"execute\":\"query-block\"}",
            "{\"execute\":\"qom-get\",\"arguments\":{\"path\":\"/machine/peripheral/v2kdisk63\",\"property\":\"serial\"}}",
            "{\"execute\":\"qom-get\",\"arguments\":{\"path\":\"/machine/peripheral/v2kdisk63\",\"property\":\"wwn\"}}",
        ],
    );
    // The last disk's VMware identity: its first 20 digits as the serial, its first
    // 64 bits as the WWN.
    assert_eq!(
        answers[1],
        format!(
            "{{\"return\": \"{}\"}}",
            &format!("6000c29{:025x}", 63)[..20]
        )
    );
    assert_eq!(
        answers[2],
        format!("{{\"return\": {}}}", 0x6000_c290_0000_0000_u64)
    );
    let block: serde_json::Value = serde_json::from_str(&answers[0]).unwrap();
    let attached = block["return"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["qdev"].as_str().is_some_and(|q| q.starts_with("v2kdisk")))
        .count();
    assert_eq!(attached, 64, "disks attached to their scsi-hd devices");
}

#[test]
fn more_disks_than_a_bus_takes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut vm = Vm::new_empty(SourceKind::Vmx, dir.path().join("big.vmx"));
    vm.name = "big".into();
    vm.cpu.count = 1;
    vm.memory_mib = 256;
    let paths: Vec<PathBuf> = (0..VIRTIO_BLK_MAX_DISKS + 1)
        .map(|i| PathBuf::from(format!("/d/{i}.qcow2")))
        .collect();
    let e = Target::from_vm(
        &vm,
        &paths,
        DiskBus::VirtioBlk,
        &NetworkMap::default(),
        Accel::Tcg,
        dir.path(),
    )
    .unwrap_err()
    .to_string();
    assert_eq!(e, "33 disks do not fit on virtio-blk (at most 32)");
    assert_eq!(DiskBus::VirtioBlk.fitting(33), DiskBus::VirtioScsi);
    assert_eq!(DiskBus::VirtioBlk.fitting(32), DiskBus::VirtioBlk);
    assert_eq!(DiskBus::VirtioScsi.fitting(1), DiskBus::VirtioScsi);
}
