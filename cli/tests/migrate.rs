//! End-to-end tests of `v2k migrate` on the real fixture guests (built or reused by
//! tests/fixtures): both variants (`debian-classic`, `debian-dracut-lvm`) in every
//! export form (VMX + monolithicSparse, VMX + ESXi flat, OVA), both validation
//! backends, the report rendered in headless Chromium, and a killed run resumed. Guests boot under QEMU
//! (TCG here) with user networking and `restrict=on`. A missing prerequisite fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use v2k_fixtures::{build, Variant};

const V2K: &str = env!("CARGO_BIN_EXE_v2k");

fn migrate(src: &Path, out: &Path, extra: &[&str]) -> Output {
    Command::new(V2K)
        .arg("migrate")
        .arg(src)
        .arg("--out")
        .arg(out)
        .args(["--json", "--boot-timeout", "400"])
        .args(extra)
        .output()
        .unwrap()
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

#[test]
fn migrate_vmx_sparse_through_libvirt_validates_and_reports() {
    let f = build(Variant::DebianClassic).unwrap_or_else(|e| panic!("fixture: {e}"));
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("run");
    let o = migrate(&f.vmx_sparse.vmx, &out, &["--backend", "libvirt"]);
    assert_validated(&o, &out, "libvirt");
    assert_renders(&out);
    // The validation domain is gone (it was transient).
    let list = Command::new("virsh")
        .args(["-q", "list", "--all", "--name"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&list.stdout).contains("v2k-validate-"));
}

#[test]
fn migrate_ova_through_direct_qemu_validates_and_a_rerun_reuses_every_stage() {
    let f = build(Variant::DebianClassic).unwrap_or_else(|e| panic!("fixture: {e}"));
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("run");
    let o = migrate(&f.ova, &out, &["--backend", "qemu"]);
    assert_validated(&o, &out, "qemu");
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
    let o = migrate(&f.ova, &out, &["--backend", "qemu", "--no-validate"]);
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
    assert_eq!(status("inject"), "reused");
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
    // The rerun also validates: debian-classic's VMX + flat form, booted and checked.
    let o = migrate(&f.vmx_flat.vmx, &out, &["--backend", "qemu"]);
    eprintln!(
        "killed run's stderr:\n{}",
        std::fs::read_to_string(t.path().join("killed.stderr")).unwrap_or_default()
    );
    assert_validated(&o, &out, "qemu");
    let r = report(&out);
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

/// debian-dracut-lvm: root on LVM, dracut host-only initramfs, systemd-networkd.
fn migrate_dracut_lvm(form: fn(&v2k_fixtures::Fixture) -> PathBuf, backend: &str) {
    let f = build(Variant::DebianDracutLvm).unwrap_or_else(|e| panic!("fixture: {e}"));
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("run");
    let o = migrate(&form(&f), &out, &["--backend", backend]);
    assert_validated(&o, &out, backend);
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

#[test]
fn migrate_dracut_lvm_vmx_sparse_through_libvirt_validates() {
    migrate_dracut_lvm(|f| f.vmx_sparse.vmx.clone(), "libvirt");
}

#[test]
fn migrate_dracut_lvm_vmx_flat_through_direct_qemu_validates() {
    migrate_dracut_lvm(|f| f.vmx_flat.vmx.clone(), "qemu");
}

#[test]
fn migrate_dracut_lvm_ova_through_direct_qemu_validates() {
    migrate_dracut_lvm(|f| f.ova.clone(), "qemu");
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
