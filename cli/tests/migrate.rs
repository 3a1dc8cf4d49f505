//! End-to-end tests of `v2k migrate` on the real fixture guests (built or reused by
//! tests/fixtures): the BIOS variants (`debian-classic`, `debian-dracut-lvm`) in every
//! export form (VMX + monolithicSparse, VMX + ESXi flat, OVA), both validation
//! backends, the report rendered in headless Chromium, and a killed run resumed. Guests boot under QEMU (TCG here) with user
//! networking and `restrict=on`. A missing prerequisite fails.
//!
//! Each variant is booted once (docs/architecture.md, "Testing"): debian-classic's VMX +
//! monolithicSparse through libvirt, debian-dracut-lvm's VMX + ESXi flat through QEMU.
//! The UEFI layout (rhel-shaped-efi's OVA through libvirt on virtio-scsi) is booted in
//! a wave run through the Ansible collection instead (cli/tests/scale.rs), where the
//! same pipeline validates it on a conversion host.
//! Every other form and run uses `--no-validate` and proves instead that its disks have
//! the content hashes of the booted form's: the same bytes, so the same boot.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use v2k_fixtures::{build, Variant};

const V2K: &str = env!("CARGO_BIN_EXE_v2k");

fn migrate(src: &Path, out: &Path, extra: &[&str]) -> Output {
    migrate_with_pid(src, out, extra).0
}

/// `migrate`, also giving the process id of the `v2k` that ran (the validator names its
/// libvirt domain after it, so a test can find its own domain among others').
fn migrate_with_pid(src: &Path, out: &Path, extra: &[&str]) -> (Output, u32) {
    let child = Command::new(V2K)
        .arg("migrate")
        .arg(src)
        .arg("--out")
        .arg(out)
        .args(["--json", "--boot-timeout", "400"])
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    (child.wait_with_output().unwrap(), pid)
}

/// The content hash (`hash.source`) of each of `disks`, in order, as `v2k convert`
/// computes it: what another form of the same guest must convert to.
fn content_hashes(disks: &[PathBuf]) -> Vec<serde_json::Value> {
    let t = tempfile::tempdir().unwrap();
    disks
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let out = t.path().join(format!("{i}.qcow2"));
            run(Command::new(V2K).arg("convert").arg(d).arg("-o").arg(&out));
            let m: serde_json::Value = serde_json::from_slice(
                &std::fs::read(t.path().join(format!("{i}.qcow2.manifest.json"))).unwrap(),
            )
            .unwrap();
            assert!(m["hash"]["source"].is_string(), "{m:#}");
            m["hash"]["source"].clone()
        })
        .collect()
}

/// The content hashes of debian-classic's booted form (VMX + monolithicSparse), computed
/// once per test binary.
fn classic_booted_hashes(f: &v2k_fixtures::Fixture) -> &'static [serde_json::Value] {
    static HASHES: std::sync::OnceLock<Vec<serde_json::Value>> = std::sync::OnceLock::new();
    HASHES.get_or_init(|| content_hashes(&f.vmx_sparse.disks))
}

/// The content hashes of the disks a migration's report lists, in order.
fn report_hashes(r: &serde_json::Value) -> Vec<serde_json::Value> {
    r["disks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["hash"]["source"].clone())
        .collect()
}

fn report(out: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(out.join("report.json")).expect("report.json")).unwrap()
}

/// Exit code 0, or the failure with the run's stderr.
fn assert_ok(o: &Output) {
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn assert_validated(o: &Output, out: &Path, backend: &str) {
    let stderr = String::from_utf8_lossy(&o.stderr);
    // A run that failed before its report says why on stderr: show it, not a bare ENOENT.
    assert!(
        out.join("report.json").is_file(),
        "no report.json; exit {:?}; stderr: {stderr}",
        o.status.code()
    );
    let r = report(out);
    assert_eq!(
        o.status.code(),
        Some(0),
        "exit code; stderr: {stderr}\nreport: {r:#}"
    );
    assert_eq!(r["result"], "validated");
    let v = &r["validation"];
    assert_eq!(v["backend"]["kind"], backend);
    let checks = v["checks"].as_array().unwrap();
    let ids: Vec<&str> = checks.iter().map(|c| c["id"].as_str().unwrap()).collect();
    for want in [
        "agent-report",
        "root-rw",
        "mounts",
        "nic:ens192",
        "failed-units",
    ] {
        assert!(ids.contains(&want), "missing check {want}: {ids:?}");
    }
    assert!(checks.iter().all(|c| c["passed"] == true), "{checks:#?}");
    let mounts = checks.iter().find(|c| c["id"] == "mounts").unwrap();
    assert!(
        mounts["reason"].as_str().unwrap().contains("/data"),
        "{mounts}"
    );
    let nic = &v["evidence"]["agent"]["nics"][0];
    assert_eq!(nic["name"], "ens192");
    assert!(
        nic["ipv4"][0].as_str().unwrap().starts_with("10.0.2."),
        "{nic}"
    );
    // The agent's performance counters since boot (docs/evidence.md, "after").
    let perf = &v["evidence"]["agent"]["perf"];
    assert!(perf["cpu"][0].as_u64().unwrap() > 0, "{perf}");
    assert!(
        perf["disks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d[1].as_u64().unwrap() > 0),
        "{perf}"
    );
    assert_eq!(perf["nics"][0][0], "ens192", "{perf}");
    // The fixed probe ran in the guest: the CPU loop timed, O_DIRECT reads of the root
    // disk (a partition, or an LVM volume) as p50 ≤ p95 (docs/evidence.md, "The probe").
    let probe = &perf["probe"];
    assert!(probe["cpu-ms"].as_f64().unwrap() > 0.0, "{perf}");
    assert!(probe["reads"].as_u64().unwrap() >= 2, "{perf}");
    assert!(
        probe["read-p50-ms"].as_f64().unwrap() <= probe["read-p95-ms"].as_f64().unwrap(),
        "{perf}"
    );
    let shot = PathBuf::from(v["evidence"]["screenshot"].as_str().expect("a screenshot"));
    assert!(std::fs::read(&shot).unwrap().starts_with(b"\x89PNG"));
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(
        html.contains("data:image/png;base64,"),
        "screenshot not embedded"
    );
    assert!(
        !html.contains("src=\"http") && !html.contains("href=\"http"),
        "external asset in report.html"
    );
    // The migrated disks were not written by the validation boot.
    for d in r["disks"].as_array().unwrap() {
        let path = d["output"]["path"].as_str().unwrap();
        let info = Command::new("qemu-img")
            .args(["check", path])
            .output()
            .unwrap();
        assert!(
            info.status.success(),
            "{path}: {}",
            String::from_utf8_lossy(&info.stdout)
        );
    }
}

/// Renders report.html in headless Chromium and checks the page is not blank: the
/// screenshot of the rendered page must hold more than one colour's worth of data.
fn assert_renders(out: &Path) {
    let png = out.join("rendered.png");
    let profile = tempfile::tempdir().unwrap();
    let st = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1200,1600",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", out.join("report.html").display()))
        .output()
        .expect("chromium is required (scripts/setup.sh)");
    assert!(
        png.exists(),
        "chromium made no screenshot: {}",
        String::from_utf8_lossy(&st.stderr)
    );
    // A blank 1200×1600 page compresses to a few KiB; text, tables and the console
    // screenshot make it far larger.
    let len = std::fs::metadata(&png).unwrap().len();
    assert!(len > 40_000, "rendered report looks blank ({len} bytes)");
}

/// How many disks debian-classic's one boot carries: its own two and small empty data
/// disks, so that the boot also proves a VM with more disks than one PCI bus has slots
/// (each virtio-blk disk behind its own PCIe root port) comes up with its disks in VMX
/// order — root on `vda`, /data on `vdb` after the injector renamed `sdX` to `vdX`.
const MANY_DISKS: usize = 30;

/// debian-classic's VMX + monolithicSparse form with `MANY_DISKS - 2` data disks added
/// on a second PVSCSI controller's units and the first's free ones: empty 1 MiB ones,
/// and a first one mounted by its VMware by-id name (below). The fixture's data disk is
/// a hard link (a copy across filesystems), its root disk a copy: the cache stays as
/// it is.
fn classic_with_many_disks(f: &v2k_fixtures::Fixture, dir: &Path) -> PathBuf {
    for (i, d) in f.vmx_sparse.disks.iter().enumerate() {
        let to = dir.join(d.file_name().unwrap());
        // The root disk is copied: the fstab line below is written into it.
        if i == 0 || std::fs::hard_link(d, &to).is_err() {
            run(Command::new("cp").arg("--sparse=always").arg(d).arg(&to));
        }
    }
    // The by-id proof: the first extra disk holds an ext4 filesystem and a VMware
    // identity (ddb.uuid, seen by the guest with disk.EnableUUID), and the guest's
    // fstab mounts it by the name VMware gives it, /dev/disk/by-id/scsi-3<uuid>; the
    // injector must rewrite it to the target's name for the mount to come up. The
    // same filesystem is mounted a second time through a udev rule in Oracle ASM's
    // style, which names the disk by its WWID (`ID_SERIAL` = 3<uuid>): the injector
    // must rewrite that to the target's identifier for the link, and so /asm, to exist.
    let flat = dir.join("extra0-flat.vmdk");
    std::fs::File::create(&flat)
        .unwrap()
        .set_len(BYID_MIB << 20)
        .unwrap();
    run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&flat));
    std::fs::write(
        dir.join("extra0.vmdk"),
        format!(
            "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n\
             createType=\"monolithicFlat\"\n\nRW {} FLAT \"extra0-flat.vmdk\" 0\n\n\
             ddb.adapterType = \"lsilogic\"\nddb.uuid = \"{BYID_UUID}\"\n",
            BYID_MIB * 2048
        ),
    )
    .unwrap();
    let root = dir.join(f.vmx_sparse.disks[0].file_name().unwrap());
    // The direct backend on TCG: it runs anywhere (the injector forces TCG only when
    // the VM runs on TCG; a KVM that refuses the appliance's MSRs aborts it).
    run(Command::new("guestfish")
        .env("LIBGUESTFS_BACKEND", "direct")
        .env("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg")
        .args(["--rw", "--format=vmdk", "-a"])
        .arg(&root)
        .args(["-i", "mkdir-p", "/byid", ":", "mkdir-p", "/asm", ":"])
        // What a guest that once ran VMware's own Tools carries: their apt repository and
        // an out-of-tree driver for a kernel it no longer boots (checked in the
        // conversion log below; the boot is unaffected).
        .args(["write", "/etc/apt/sources.list.d/vmware-tools.list"])
        .arg("deb https://packages.vmware.com/tools/releases/latest/ubuntu jammy main\n")
        .args([":", "mkdir-p", "/lib/modules/0.0.0-v2k-test/misc", ":"])
        .args(["touch", "/lib/modules/0.0.0-v2k-test/misc/vmxnet.ko", ":"])
        .args(["write-append", "/etc/fstab"])
        .arg(format!(
            "/dev/disk/by-id/{} /byid ext4 defaults,nofail 0 2\n\
             /dev/oracleasm/disks/DATA1 /asm ext4 defaults,nofail 0 2\n",
            byid_name()
        ))
        .args([":", "write", "/etc/udev/rules.d/99-oracle-asmdevices.rules"])
        .arg(format!(
            "KERNEL==\"sd*|vd*\", ENV{{DEVTYPE}}==\"disk\", ENV{{ID_SERIAL}}==\"{}\", \
             SYMLINK+=\"oracleasm/disks/DATA1\"\n",
            byid_name().trim_start_matches("scsi-")
        )));
    let mut vmx = std::fs::read_to_string(&f.vmx_sparse.vmx).unwrap();
    vmx.push_str("disk.EnableUUID = \"TRUE\"\n");
    vmx.push_str("scsi1.present = \"TRUE\"\nscsi1.virtualDev = \"pvscsi\"\n");
    // Unit 7 of a SCSI controller is the controller itself.
    let units = (2..16)
        .filter(|u| *u != 7)
        .map(|u| (0, u))
        .chain((0..16).filter(|u| *u != 7).map(|u| (1, u)));
    for (i, (c, u)) in units.take(MANY_DISKS - 2).enumerate() {
        let name = format!("extra{i}.vmdk");
        if i > 0 {
            v2k_fixtures::sparse_vmdk(&dir.join(&name), "1M", None);
        }
        vmx.push_str(&format!(
            "scsi{c}:{u}.present = \"TRUE\"\nscsi{c}:{u}.deviceType = \"scsi-hardDisk\"\n\
             scsi{c}:{u}.fileName = \"{name}\"\n"
        ));
    }
    let p = dir.join("debian-classic.vmx");
    std::fs::write(&p, vmx).unwrap();
    p
}

/// The by-id disk's size, and its VMware identity as a VMDK writes it.
const BYID_MIB: u64 = 8;
const BYID_UUID: &str = "60 00 C2 9b 1d 00 00 00-00 00 00 00 00 00 b1 d0";

/// The name a VMware guest gives that disk with disk.EnableUUID: `scsi-3` and the
/// identity's 32 hex digits.
fn byid_name() -> String {
    format!("scsi-3{}", BYID_UUID.replace([' ', '-'], "").to_lowercase())
}

/// The guest's name of the `i`th virtio-blk disk: vda … vdz, vdaa …
fn vd_name(i: usize) -> String {
    let letter = |n: usize| (b'a' + n as u8) as char;
    if i < 26 {
        format!("vd{}", letter(i))
    } else {
        format!("vd{}{}", letter(i / 26 - 1), letter(i % 26))
    }
}

/// debian-classic's one boot: only a boot shows that the migrated guest comes up on
/// virtio with its NIC name, address and mounts, that the libvirt backend judges it from
/// the agent's report, what the report shows of it (screenshot, rendered page), and
/// that thirty disks come up in order ([`MANY_DISKS`]).
#[test]
fn migrate_vmx_sparse_through_libvirt_validates_and_reports() {
    let f = build(Variant::DebianClassic).unwrap_or_else(|e| panic!("fixture: {e}"));
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let vmx = classic_with_many_disks(&f, &src);
    let out = t.path().join("run");
    let (o, pid) = migrate_with_pid(&vmx, &out, &["--backend", "libvirt"]);
    assert_validated(&o, &out, "libvirt");
    assert_renders(&out);
    // Every disk reached the guest, in VMX order, each behind its own root port.
    let r = report(&out);
    let seen: Vec<&str> = r["validation"]["evidence"]["agent"]["perf"]["disks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d[0].as_str().unwrap())
        .collect();
    let want: Vec<String> = (0..MANY_DISKS).map(vd_name).collect();
    assert_eq!(seen, want, "the guest's disks");
    let xml = std::fs::read_to_string(out.join("domain.xml")).unwrap();
    assert_eq!(xml.matches("pcie-root-port").count(), MANY_DISKS, "{xml}");
    // The disk mounted by its VMware by-id name came up under the target's name.
    let mounts = &r["validation"]["evidence"]["agent"]["mounts"];
    assert!(
        mounts
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["target"] == "/byid" && m["ok"] == true),
        "{mounts}"
    );
    let log = std::fs::read_to_string(out.join("conversion-log.json")).unwrap();
    assert!(log.contains(&byid_name()), "no by-id rewrite logged: {log}");
    assert_classic_injection(&f, &log);
    // ... and through the udev rule naming its WWID, rewritten to the target's serial.
    assert!(
        mounts
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["target"] == "/asm" && m["ok"] == true),
        "{mounts}"
    );
    assert!(
        log.contains("\"udev-rules\""),
        "no udev rule rewrite logged: {log}"
    );
    // This run's validation domain (`v2k-validate-NAME-PID`) is gone: it was transient.
    // Other tests' domains may exist at this moment; they are not this test's business.
    let list = Command::new("virsh")
        .args(["-q", "list", "--all", "--name"])
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    let suffix = format!("-{pid}");
    assert!(
        !list
            .lines()
            .any(|d| d.starts_with("v2k-validate-") && d.trim_end().ends_with(&suffix)),
        "this run's domain (pid {pid}) outlived it: {list}"
    );
}

/// What the injector did to debian-classic, from the run's conversion log (the
/// injector's own end-to-end test covers debian-dracut-lvm; this boot's injection is
/// debian-classic's): every kind of change, VMware Tools' repository and driver
/// disabled, the kernel able to boot on virtio-blk, ens192 pinned to the fixture's MAC.
fn assert_classic_injection(f: &v2k_fixtures::Fixture, log: &str) {
    let log: v2k_drivers_injector::ConversionLog = serde_json::from_str(log).unwrap();
    assert_eq!(log.status, v2k_drivers_injector::Status::Converted);
    let steps: Vec<&str> = log.changes.iter().map(|c| c.step.as_str()).collect();
    for want in ["initramfs", "nic-pin", "vmware-tools", "agent", "marker"] {
        assert!(steps.contains(&want), "no {want} change in {steps:?}");
    }
    let repo = log
        .changes
        .iter()
        .find(|c| c.file == "/etc/apt/sources.list.d/vmware-tools.list")
        .unwrap_or_else(|| panic!("VMware repository not disabled: {:#?}", log.changes));
    assert_eq!(repo.step, "vmware-repo");
    assert!(repo.after.contains("Disabled by v2k"), "{repo:?}");
    let drv = log
        .changes
        .iter()
        .find(|c| c.step == "vmware-drivers")
        .unwrap_or_else(|| panic!("VMware driver not blacklisted: {:#?}", log.changes));
    assert!(drv.after.contains("blacklist vmxnet"), "{drv:?}");
    assert!(
        !log.inspection.kernels.is_empty()
            && log
                .inspection
                .kernels
                .iter()
                .all(|k| k.virtio_capable(false)),
        "{:#?}",
        log.inspection.kernels
    );
    let pins: Vec<(&str, &str)> = log
        .nic_names
        .iter()
        .map(|p| (p.name.as_str(), p.mac.as_str()))
        .collect();
    assert_eq!(pins, [("ens192", f.mac.as_str())]);
}

/// The OVA form without a boot or the injector (both are the VMX form's, above, on the
/// same bytes): its disks have the content hashes of the booted VMX form's, and a rerun
/// reuses the conversion. (Reusing an injection is migrate/tests/pipeline.rs's, and
/// cli/tests/wave.rs's on a real one.)
#[test]
fn migrate_ova_converts_the_booted_disks_and_a_rerun_reuses_them() {
    let f = build(Variant::DebianClassic).unwrap_or_else(|e| panic!("fixture: {e}"));
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("run");
    let o = migrate(&f.ova, &out, &["--no-inject", "--no-validate"]);
    assert_ok(&o);
    assert_eq!(report_hashes(&report(&out)), classic_booted_hashes(&f));
    // --json carries each disk's copy progress, ending with the whole disk done.
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for disk in 0..2 {
        let p: Vec<&serde_json::Value> = events
            .iter()
            .filter(|e| e["type"] == "disk-progress" && e["disk"] == disk)
            .collect();
        assert!(p.iter().any(|e| e["phase"] == "copy"), "disk {disk}: {p:?}");
        let last = p
            .last()
            .unwrap_or_else(|| panic!("no progress for disk {disk}"));
        assert_eq!(last["phase"], "done");
        assert_eq!(last["done"], last["total"]);
        assert!(last["total"].as_u64().unwrap() > 0);
    }
    let o = migrate(&f.ova, &out, &["--no-inject", "--no-validate"]);
    assert_ok(&o);
    let r = report(&out);
    let status = |name: &str| {
        r["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap()["status"]
            .clone()
    };
    assert_eq!(status("convert"), "reused");
    assert_eq!(status("inject"), "skipped");
    assert_eq!(r["result"], "not-validated");
}

#[test]
fn a_killed_migration_resumes_without_redoing_finished_stages() {
    let f = build(Variant::DebianClassic).unwrap_or_else(|e| panic!("fixture: {e}"));
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("run");
    let mut child = Command::new(V2K)
        .arg("migrate")
        .arg(&f.vmx_flat.vmx)
        .arg("--out")
        .arg(&out)
        .arg("--no-validate")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(t.path().join("killed.stderr")).unwrap())
        .spawn()
        .unwrap();
    // Kill it the moment the injector's appliance has the converted disks open. That
    // is the hardest point to resume from: nothing is written yet, so the rerun reuses
    // the conversion, and the orphaned appliance QEMU still holds the disk's image lock
    // for a second or two until libguestfs' recovery process kills it.
    let state = out.join("state.json");
    let disks = out.join("disks");
    let start = std::time::Instant::now();
    loop {
        let converted = std::fs::read_to_string(&state).is_ok_and(|s| s.contains("\"converted\""));
        if converted && qemu_has_open(&disks) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "the injector's appliance never started"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "migrate ended before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // No boot: the rerun's disks hash as the booted form's did after conversion (state.json
    // re-verifies them), and its inject stage runs whole, as in the booted run.
    let o = migrate(&f.vmx_flat.vmx, &out, &["--no-validate"]);
    eprintln!(
        "killed run's stderr:\n{}",
        std::fs::read_to_string(t.path().join("killed.stderr")).unwrap_or_default()
    );
    assert_ok(&o);
    let r = report(&out);
    assert_eq!(r["result"], "not-validated");
    assert_eq!(report_hashes(&r), classic_booted_hashes(&f));
    let stages = r["stages"].as_array().unwrap();
    let convert = stages.iter().find(|s| s["name"] == "convert").unwrap();
    let inject = stages.iter().find(|s| s["name"] == "inject").unwrap();
    // Killed before inject finished, the rerun injects; the conversion is reused when
    // the appliance had written nothing yet, redone when it had (a mount writes).
    assert_eq!(inject["status"], "done", "{stages:#?}");
    assert!(["done", "reused"].contains(&convert["status"].as_str().unwrap()));
    let log: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("conversion-log.json")).unwrap()).unwrap();
    assert!(!log["changes"].as_array().unwrap().is_empty() || log["status"] == "already-converted");
    // Read from the guest's own /bin/sh (a symlink to dash), not guessed.
    assert_eq!(log["inspection"]["arch"], "x86_64", "{log:#}");
}

/// Whether a QEMU process has a file under `dir` on its command line.
fn qemu_has_open(dir: &Path) -> bool {
    let needle = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .any(|p| {
            std::fs::read(p.path().join("cmdline")).is_ok_and(|c| {
                let c = String::from_utf8_lossy(&c);
                c.contains("qemu-system") && c.contains(&needle)
            })
        })
}

/// SHA-256 of every file in `dir` (a VMX directory: descriptors and flat extents).
fn dir_hashes(dir: &Path) -> Vec<(String, String)> {
    use sha2::{Digest, Sha256};
    let mut v: Vec<(String, String)> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| {
            let mut h = Sha256::new();
            let mut f = std::fs::File::open(e.path()).unwrap();
            std::io::copy(&mut f, &mut h).unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                hex::encode(h.finalize()),
            )
        })
        .collect();
    v.sort();
    v
}

/// debian-dracut-lvm's one boot (root on LVM, dracut host-only initramfs,
/// systemd-networkd), its VMX + ESXi flat form through QEMU: only a boot shows that the
/// initramfs dracut rebuilt finds the LVM root on virtio, and the QEMU backend's verdict.
///
/// With `--baseline-boot`, the one extra boot of the suite (~100 s under TCG: the
/// appliance adding the agent, then the guest up to the agent's report): the same
/// disks booted unconverted on the source's own shape (PVSCSI, VMXNET3 in slot 192,
/// SeaBIOS) on an overlay, only a boot shows that the agent alone on the source's
/// hardware reports its counters and probe, so that the report's rows — the probe's
/// included — gain a "before" measured the same way as the validation's "after", and
/// that the source files are untouched (hashed before and after).
#[test]
fn migrate_dracut_lvm_vmx_flat_through_direct_qemu_validates() {
    let f = build(Variant::DebianDracutLvm).unwrap_or_else(|e| panic!("fixture: {e}"));
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("run");
    let src_dir = f.vmx_flat.vmx.parent().unwrap();
    let before = dir_hashes(src_dir);
    let o = migrate(
        &f.vmx_flat.vmx,
        &out,
        &["--backend", "qemu", "--baseline-boot"],
    );
    assert_validated(&o, &out, "qemu");
    assert_eq!(dir_hashes(src_dir), before, "the source was written");
    let b: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("baseline.json")).unwrap()).unwrap();
    assert_eq!(
        b["baseline"]["boot"]["shape"], "q35, bios, pvscsi (scsi0), vmxnet3",
        "{b:#}"
    );
    // The overlays are gone; the boot's console stays, with the agent's report.
    let left: Vec<String> = std::fs::read_dir(out.join("baseline-boot"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!left.iter().any(|n| n.ends_with(".qcow2")), "{left:?}");
    let console = std::fs::read_to_string(out.join("baseline-boot/serial.log")).unwrap();
    assert!(
        console.contains("V2K-AGENT {"),
        "no report on the source's shape"
    );
    // The source booted as on ESXi: its NIC is ens192 on VMXNET3, unconverted; and the
    // fixture's own marker service (the guest's, not v2k's) saw what its boot on ESXi
    // shows: root on LVM and /boot and /data from their PVSCSI devices, the known file,
    // ens192 with its address. This is the fixture's source-shape boot: tests/fixtures
    // does not boot it a second time.
    assert!(console.contains("vmxnet3") && console.contains("ens192"));
    let problems = f.marker_problems(&v2k_fixtures::Markers::from_serial(&console));
    assert!(problems.is_empty(), "source-shape boot: {problems:#?}");
    let r = report(&out);
    let stage = r["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "baseline-boot")
        .unwrap_or_else(|| panic!("no baseline-boot stage: {r:#}"));
    assert_eq!(stage["status"], "done", "{stage:#}");
    let p = &r["performance"];
    assert_eq!(
        p["baseline"],
        out.join("baseline.json").display().to_string()
    );
    for metric in ["probe-cpu-ms", "probe-read-p50-ms", "cpu-ready-percent"] {
        let row = p["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["metric"] == metric)
            .unwrap_or_else(|| panic!("no {metric}: {p:#}"));
        assert!(
            row["before"].is_number()
                && row["after"].is_number()
                && row["verdict"] != "not compared",
            "{metric} has both sides: {row:#}"
        );
    }
    assert!(
        !p["verdict"].as_str().unwrap().starts_with("Not compared"),
        "{p:#}"
    );
    let log: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("conversion-log.json")).unwrap()).unwrap();
    assert!(
        log["changes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["step"] == "initramfs"
                && c["command"]
                    .as_str()
                    .is_some_and(|x| x.starts_with("dracut "))),
        "the initramfs was not rebuilt by dracut: {log:#}"
    );
}

/// debian-dracut-lvm's other forms (VMX + monolithicSparse, OVA) carry the disks that
/// were booted above: the same content hashes. (Their migration through every stage is
/// debian-classic's, in the tests above: the form changes only the conversion.)
#[test]
fn dracut_lvm_sparse_and_ova_forms_convert_to_the_booted_disks() {
    let f = build(Variant::DebianDracutLvm).unwrap_or_else(|e| panic!("fixture: {e}"));
    let booted = content_hashes(&f.vmx_flat.disks);
    assert_eq!(booted.len(), f.disk_sizes.len());
    assert_eq!(content_hashes(&f.vmx_sparse.disks), booted, "VMX + sparse");
    let t = tempfile::tempdir().unwrap();
    run(Command::new("tar")
        .arg("-xf")
        .arg(&f.ova)
        .arg("-C")
        .arg(t.path()));
    let ova_disks: Vec<PathBuf> = f
        .ova_members
        .iter()
        .filter(|m| m.ends_with(".vmdk"))
        .map(|m| t.path().join(m))
        .collect();
    assert_eq!(content_hashes(&ova_disks), booted, "OVA");
}

/// Runs a command, failing the test with its stderr.
fn run(c: &mut Command) -> Output {
    let o = c.output().unwrap_or_else(|e| panic!("{c:?}: {e}"));
    assert!(
        o.status.success(),
        "{c:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

#[test]
fn a_gzip_compressed_chunked_ova_disk_is_assembled_converted_and_cleaned_up() {
    use std::io::Write;
    let f = build(Variant::DebianClassic).unwrap_or_else(|e| panic!("fixture: {e}"));
    let t = tempfile::tempdir().unwrap();
    let x = t.path().join("x");
    std::fs::create_dir(&x).unwrap();
    run(Command::new("tar").arg("-xf").arg(&f.ova).arg("-C").arg(&x));
    // The reference: the disk's content hash as `v2k convert` computes it.
    let name = "debian-classic-disk1.vmdk";
    let reference = t.path().join("ref.qcow2");
    run(Command::new(V2K)
        .arg("convert")
        .arg(x.join(name))
        .arg("-o")
        .arg(&reference));
    let manifest = |p: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
    };
    let want = manifest(&t.path().join("ref.qcow2.manifest.json"))["hash"]["source"].clone();
    assert!(want.is_string(), "{want}");
    // ovftool --compress: the disk gzip-compressed, then split into chunks.
    let raw = std::fs::read(x.join(name)).unwrap();
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(&raw).unwrap();
    let z = e.finish().unwrap();
    std::fs::remove_file(x.join(name)).unwrap();
    let chunk = z.len() / 3 + 1;
    let mut members = vec!["debian-classic.ovf".to_string()];
    for (i, c) in z.chunks(chunk).enumerate() {
        let m = format!("{name}.{i:09}");
        std::fs::write(x.join(&m), c).unwrap();
        members.push(m);
    }
    members.push("debian-classic-disk2.vmdk".into());
    let ovf_path = x.join("debian-classic.ovf");
    let ovf = std::fs::read_to_string(&ovf_path).unwrap();
    let old = format!(
        "ovf:href=\"{name}\" ovf:id=\"file1\" ovf:size=\"{}\"",
        raw.len()
    );
    assert!(ovf.contains(&old), "{ovf}");
    let ovf = ovf.replace(
        &old,
        &format!(
            "ovf:href=\"{name}\" ovf:id=\"file1\" ovf:size=\"{}\" ovf:compression=\"gzip\" \
             ovf:chunkSize=\"{chunk}\"",
            z.len()
        ),
    );
    std::fs::write(&ovf_path, ovf).unwrap();
    let sums = run(Command::new("sha256sum").args(&members).current_dir(&x));
    let mf: String = String::from_utf8(sums.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (h, n) = l.split_once("  ").unwrap();
            format!("SHA256({n})= {h}\n")
        })
        .collect();
    std::fs::write(x.join("debian-classic.mf"), mf).unwrap();
    members.push("debian-classic.mf".into());
    let ova = t.path().join("compressed.ova");
    run(Command::new("tar")
        .arg("-cf")
        .arg(&ova)
        .arg("--format=ustar")
        .arg("-C")
        .arg(&x)
        .args(&members));

    let out = t.path().join("run");
    let o = migrate(&ova, &out, &["--no-validate"]);
    assert_ok(&o);
    let r = report(&out);
    assert_eq!(r["disks"][0]["hash"]["source"], want, "{:#}", r["disks"]);
    assert!(
        !out.join("staging").exists(),
        "the staging copy outlived the conversion"
    );
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("assembling"), "{stdout}");
}
