//! The `ubuntu-shaped-sb` fixture (UEFI with Secure Boot on, shim + signed GRUB + signed
//! kernel in `EFI/debian/`, netplan with a static address on `ens192` and DHCP on
//! `ens224`) through a one-VM wave plan (`v2k wave run`, which runs the same pipeline
//! as `v2k migrate`), validated by booting it under libvirt.
//!
//! One boot, and only a boot shows it: that after v2k's changes to the guest (the
//! removable-media fallback copied from the guest's own shim and GRUB, the initramfs
//! rebuilt with virtio, NIC names pinned by MAC) the firmware v2k picked (OVMF with
//! Microsoft's keys, Secure Boot enforced, SMM) still accepts the chain shim → signed
//! GRUB → signed kernel; that the kernel sees Secure Boot enabled; and that both NICs
//! come up under their VMware names with the source's configuration: the static
//! address, gateway and resolver on `ens192`, a DHCP lease on `ens224`. The exports and
//! the ESP's contents are checked without a boot in tests/fixtures/tests/ubuntu_shaped_sb.rs.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use v2k_fixtures::{build, Variant};

const V2K: &str = env!("CARGO_BIN_EXE_v2k");

fn read_json(path: &Path) -> Value {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn a_secure_boot_guest_migrates_in_a_wave_and_boots_enforced_with_both_nics_configured() {
    let f = build(Variant::UbuntuShapedSb).unwrap_or_else(|e| panic!("fixture: {e}"));
    assert!(f.guest.secure_boot, "the fixture declares Secure Boot");
    let t = tempfile::tempdir().unwrap();
    // libvirt's QEMU, as its own user, must reach the disks below the run directory.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    }
    let name = format!("sb-{}", std::process::id());
    let plan = t.path().join("plan.yaml");
    std::fs::write(
        &plan,
        format!(
            "version: 1\nrun-dir: run\ndefaults:\n  backend: libvirt\n  validate: true\n  \
             inject: true\n  boot-timeout: 600\nnetworks:\n  VM Network: user\n\
             waves:\n  - name: sb\n    vms:\n      - source: {}\n        name: {name}\n",
            f.ova.display()
        ),
    )
    .unwrap();
    let o = Command::new(V2K)
        .args(["wave", "run", "--json"])
        .arg(&plan)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    let run = t.path().join("run");
    let wave = read_json(&run.join("sb/wave-report.json"));
    assert_eq!(o.status.code(), Some(0), "stderr: {stderr}\n{wave:#}");
    let vm = wave["vms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name.as_str())
        .unwrap_or_else(|| panic!("{wave:#}"));
    assert_eq!(vm["status"], "migrated", "{vm:#}");
    assert_eq!(vm["result"], "validated", "{vm:#}");
    let out = PathBuf::from(vm["out"].as_str().unwrap());

    let r = read_json(&out.join("report.json"));
    assert_eq!(r["result"], "validated", "{r:#}");
    let v = &r["validation"];
    assert_eq!(v["backend"]["kind"], "libvirt", "{v:#}");
    let checks = v["checks"].as_array().unwrap();
    assert!(checks.iter().all(|c| c["passed"] == true), "{checks:#?}");
    let reason = |id: &str| -> String {
        checks
            .iter()
            .find(|c| c["id"] == id)
            .unwrap_or_else(|| panic!("no check {id}: {checks:#?}"))["reason"]
            .as_str()
            .unwrap()
            .to_string()
    };
    for id in ["agent-report", "root-rw", "mounts", "failed-units"] {
        reason(id);
    }
    assert!(reason("mounts").contains("/data"), "{checks:#?}");
    let nic0 = &f.guest.nics[0];
    let nic1 = &f.guest.nics[1];
    reason(&format!("nic:{}", nic0.name));
    reason(&format!("nic:{}", nic1.name));
    assert!(
        reason(&format!("static-ip:{}", nic0.name)).contains(&nic0.ipv4.address),
        "{checks:#?}"
    );
    assert!(
        reason("route").contains(nic0.ipv4.gateway.as_deref().unwrap()),
        "{checks:#?}"
    );
    assert!(reason("dns").contains(&nic0.ipv4.dns[0]), "{checks:#?}");
    assert!(
        reason("firmware").starts_with("UEFI with Secure Boot enforcing"),
        "{checks:#?}"
    );

    // What the guest itself reported: Secure Boot on, each NIC under its VMware name
    // with its MAC, the static address on the first and a DHCP lease on the second.
    let agent = &v["evidence"]["agent"];
    assert_eq!(agent["firmware"]["efi"], true, "{agent:#}");
    assert_eq!(agent["firmware"]["secure-boot"], true, "{agent:#}");
    let nics = agent["nics"].as_array().unwrap();
    let reported = |name: &str| -> &Value {
        nics.iter()
            .find(|n| n["name"] == name)
            .unwrap_or_else(|| panic!("no NIC {name}: {agent:#}"))
    };
    let a0 = reported(&nic0.name);
    assert_eq!(a0["mac"], nic0.mac.as_str(), "{agent:#}");
    assert_eq!(a0["ipv4"][0], nic0.ipv4.address.as_str(), "{agent:#}");
    let a1 = reported(&nic1.name);
    assert_eq!(a1["mac"], nic1.mac.as_str(), "{agent:#}");
    assert_eq!(
        a1["ipv4"][0],
        nic1.ipv4.address.as_str(),
        "ens224 has QEMU's DHCP lease: {agent:#}"
    );

    // The chain ran from the fallback v2k made out of the guest's own shim and GRUB, and
    // the kernel said Secure Boot was on.
    let log = read_json(&out.join("conversion-log.json"));
    let changes = log["changes"].as_array().unwrap();
    let fallback: Vec<&str> = changes
        .iter()
        .filter(|c| c["step"] == "efi-fallback")
        .filter_map(|c| c["file"].as_str())
        .collect();
    assert!(
        fallback
            .iter()
            .any(|p| p.eq_ignore_ascii_case("/boot/efi/EFI/BOOT/BOOTX64.EFI")),
        "{fallback:?}"
    );
    assert!(
        fallback
            .iter()
            .any(|p| p.eq_ignore_ascii_case("/boot/efi/EFI/BOOT/grubx64.efi")),
        "shim's GRUB beside it: {fallback:?}"
    );
    let serial = v["evidence"]["serial-log"]
        .as_str()
        .unwrap_or_else(|| panic!("no serial log in the evidence: {v:#}"));
    let console = String::from_utf8_lossy(
        &std::fs::read(serial).unwrap_or_else(|e| panic!("reading {serial}: {e}")),
    )
    .into_owned();
    assert!(
        console.contains("Secure boot enabled"),
        "the kernel did not log Secure Boot: {}",
        console
            .chars()
            .skip(console.chars().count().saturating_sub(3000))
            .collect::<String>()
    );

    // The domain: EFI with the secure-boot feature on and SMM, the VM's own variable
    // store in its run directory; libvirt's schema accepts it.
    let xml = std::fs::read_to_string(out.join("domain.xml")).unwrap();
    assert!(xml.contains("<os firmware='efi'>"), "{xml}");
    assert!(
        xml.contains("<feature enabled='yes' name='secure-boot'/>"),
        "{xml}"
    );
    assert!(xml.contains("<smm state='on'/>"), "{xml}");
    let nvram = xml
        .split("<nvram")
        .nth(1)
        .and_then(|s| s.split('>').nth(1))
        .and_then(|s| s.split("</nvram").next())
        .expect("an <nvram> element");
    assert!(Path::new(nvram).starts_with(&out), "{nvram}");
    let o = Command::new("virt-xml-validate")
        .arg(out.join("domain.xml"))
        .output()
        .expect("virt-xml-validate (libvirt-clients)");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}
