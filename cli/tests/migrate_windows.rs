//! `v2k migrate` of a Windows VM, end to end through the real binary: the synthetic
//! Windows Server 2019 disk of `v2k_fixtures::windows` (FIELD-NOTES §8: libguestfs
//! inspects it as Windows, nothing can boot it) exported as a VMX + monolithicSparse
//! VMDK, with a fake virtio-win tree given as an ISO. Checked: the Windows injection ran (windows.json,
//! boot driver, registry changes in the report), the target carries the guest's clock
//! setting (local time) and, under KVM, the Hyper-V enlightenments — also after a
//! rerun that reuses every stage — and a Windows VM without drivers is refused by name.
//! No validation boot: there is no Windows to boot here. A missing prerequisite fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use v2k_fixtures::windows::{self as wfx, WindowsSpec, WindowsVersion};

const V2K: &str = env!("CARGO_BIN_EXE_v2k");
const MAC: &str = "00:50:56:3a:c1:09";

/// A VMware export of the synthetic Server 2019 disk: `dir/win2019.vmx` + its VMDK.
fn export(dir: &Path) -> PathBuf {
    let img = wfx::build_windows(&WindowsSpec::new(WindowsVersion::Server2019))
        .unwrap_or_else(|e| panic!("building the synthetic Windows disk: {e}"));
    let vmdk = dir.join("win2019.vmdk");
    let o = Command::new("qemu-img")
        .args(["convert", "-q", "-f", "qcow2", "-O", "vmdk", "-o"])
        .arg("subformat=monolithicSparse")
        .arg(&img.qcow2)
        .arg(&vmdk)
        .output()
        .expect("qemu-img (run scripts/setup.sh)");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let vmx = dir.join("win2019.vmx");
    std::fs::write(
        &vmx,
        format!(
            ".encoding = \"UTF-8\"\nconfig.version = \"8\"\nvirtualHW.version = \"14\"\n\
             displayName = \"win2019\"\nguestOS = \"windows2019srv-64\"\nmemSize = \"2048\"\n\
             numvcpus = \"2\"\nscsi0.present = \"TRUE\"\nscsi0.virtualDev = \"lsisas1068\"\n\
             scsi0:0.present = \"TRUE\"\nscsi0:0.fileName = \"win2019.vmdk\"\n\
             ethernet0.present = \"TRUE\"\nethernet0.virtualDev = \"vmxnet3\"\n\
             ethernet0.addressType = \"static\"\nethernet0.address = \"{MAC}\"\n\
             ethernet0.networkName = \"VM Network\"\n"
        ),
    )
    .unwrap();
    vmx
}

fn migrate(vmx: &Path, out: &Path, virtio_win: Option<&Path>) -> Output {
    let mut c = Command::new(V2K);
    c.arg("migrate")
        .arg(vmx)
        .arg("--out")
        .arg(out)
        .args(["--no-validate", "--json"])
        .env_remove("VIRTIO_WIN");
    if let Some(t) = virtio_win {
        c.arg("--virtio-win").arg(t);
    }
    c.output().unwrap()
}

fn kvm() -> bool {
    v2k_kvm_target::accel::choose(None).0 == v2k_kvm_target::Accel::Kvm
}

#[test]
fn a_windows_vm_migrates_with_its_drivers_and_a_windows_target() {
    let t = tempfile::tempdir().unwrap();
    let vmx = export(t.path());
    // The drivers come as an ISO, as Red Hat ships them (Rock Ridge and Joliet names).
    let dir = t.path().join("virtio-win");
    wfx::fake_virtio_win(&dir, &["2k16", "2k19"], &["amd64", "x86"]).unwrap();
    let tree = t.path().join("virtio-win.iso");
    let o = Command::new("xorriso")
        .args(["-as", "mkisofs", "-quiet", "-R", "-J", "-o"])
        .arg(&tree)
        .arg(&dir)
        .output()
        .expect("xorriso (run scripts/setup.sh)");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = t.path().join("run");

    let o = migrate(&vmx, &out, Some(&tree));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "stderr: {stderr}");
    let w: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("windows.json")).expect("windows.json"))
            .unwrap();
    assert_eq!(w["boot-driver"], "viostor", "{w:#}");
    // Drivers for this Windows only, taken out of the ISO.
    let drivers = w["drivers"].as_array().unwrap();
    assert!(!drivers.is_empty(), "{w:#}");
    let text = w["drivers"].to_string();
    assert!(text.contains("2k19") && !text.contains("2k16"), "{text}");
    assert!(
        w["registry"].as_array().is_some_and(|r| r.len() > 5),
        "{w:#}"
    );
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(r["result"], "not-validated");
    assert!(!r["guest-changes"]["changes"].as_array().unwrap().is_empty());

    let check_target = |when: &str| {
        let xml = std::fs::read_to_string(out.join("domain.xml")).unwrap();
        // The synthetic guest keeps Windows' default: the RTC holds local time.
        assert!(xml.contains("<clock offset='localtime'>"), "{when}: {xml}");
        assert_eq!(xml.contains("<hyperv"), kvm(), "{when}: {xml}");
        let argv: Vec<String> =
            serde_json::from_slice(&std::fs::read(out.join("qemu-cmdline.json")).unwrap()).unwrap();
        assert!(
            argv.iter().any(|a| a.starts_with("base=localtime")),
            "{when}: {argv:?}"
        );
    };
    check_target("first run");

    // A rerun reuses every stage and still builds the Windows target.
    let o = migrate(&vmx, &out, Some(&tree));
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    let status = |n: &str| {
        r["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == n)
            .unwrap()["status"]
            .clone()
    };
    assert_eq!(status("inject"), "reused");
    check_target("rerun");
}

#[test]
fn a_windows_vm_without_drivers_is_refused_naming_virtio_win() {
    let t = tempfile::tempdir().unwrap();
    let vmx = export(t.path());
    let out = t.path().join("run");
    let o = migrate(&vmx, &out, None);
    let stderr = String::from_utf8_lossy(&o.stderr);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_ne!(o.status.code(), Some(0), "{stderr}");
    assert!(
        format!("{stderr}{stdout}").contains("virtio-win"),
        "stderr: {stderr}\nstdout: {stdout}"
    );
    assert!(!out.join("report.json").exists());
    assert!(!out.join("windows.json").exists());
}
