//! Windows conversion without Windows (FIELD-NOTES §8): synthetic disks that libguestfs
//! inspects as Windows Server 2019 (DriverDatabase path) and Windows 7
//! (CriticalDeviceDatabase path), built by `v2k_fixtures::windows` and cached by recipe
//! hash, and a fake virtio-win tree whose files name their driver, OS and
//! architecture. The injector's result is read back key by key through hivex, and
//! compared with what virt-v2v 2.2 does to the same image: every registry value that
//! virt-v2v sets for the boot driver must be set the same way by v2k. Bad inputs: no
//! matching driver, a hibernated or Fast Startup image, a damaged hive, a missing
//! control set.
//!
//! Prerequisites missing (guestfish, qemu-img, virt-v2v, nbdkit) make these tests FAIL,
//! never skip. Heavy tests take a global lock: two TCG appliances at once on a 2-core
//! machine would time each other out.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Instant;

use guestfs::{AddDriveOptArgs, Handle};
use v2k_drivers_injector::windows::{self, registry::RegValue};
use v2k_drivers_injector::{inject_with, Accel, DiskBus, ErrorKind, InjectOptions, Status};
use v2k_fixtures::windows::{self as wfx, WindowsSpec, WindowsVersion};
use v2k_inventory::Vm;

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
    for c in ["qemu-img", "guestfish", "virt-v2v", "nbdkit"] {
        require(c);
    }
}

fn accel() -> Accel {
    v2k_kvm_target::accel::choose(None).0
}

const MAC: &str = "00:50:56:3a:c1:09";

fn vm(name: &str, family: &str) -> Vm {
    serde_json::from_value(serde_json::json!({
        "schema-version": 1, "name": name,
        "source": {"kind": "vmx", "path": "/nonexistent/win.vmx"},
        "guest-os": {"family": family}, "firmware": {"kind": "bios"},
        "cpu": {"count": 2, "cores-per-socket": 1}, "memory-mib": 2048,
        "nics": [{"index": 0, "model": "vmxnet3", "mac": MAC, "address-type": "static"}]
    }))
    .unwrap()
}

fn opts(vm: &Vm, disk: &Path) -> InjectOptions {
    InjectOptions {
        vm: vm.clone(),
        disks: vec![disk.to_path_buf()],
        bus: DiskBus::VirtioBlk,
        keep_agent: false,
        accel: accel(),
    }
}

fn win(tree: &Path) -> windows::Options {
    windows::Options {
        virtio_win: Some(tree.to_path_buf()),
        max_attempts: 3,
    }
}

fn say(msg: &str) {
    eprintln!("[windows] {msg}");
}

/// A private copy of the cached synthetic disk.
fn image(spec: WindowsSpec, dir: &Path, name: &str) -> PathBuf {
    let img = wfx::build_windows(&spec).unwrap_or_else(|e| panic!("building {spec:?}: {e}"));
    let copy = dir.join(name);
    std::fs::copy(&img.qcow2, &copy).unwrap();
    copy
}

/// The fake virtio-win tree for these OS folders (amd64 and x86).
fn tree(dir: &Path, oses: &[&str]) -> PathBuf {
    let t = dir.join("virtio-win");
    wfx::fake_virtio_win(&t, oses, &["amd64", "x86"]).unwrap();
    t
}

/// key path (lower-case) → value name (lower-case) → (type, data).
type Values = BTreeMap<String, BTreeMap<String, (i64, Vec<u8>)>>;

/// Every key and value of a hive, read with libguestfs' hivex calls.
fn walk(g: &Handle, node: i64, path: &str, out: &mut Values) {
    let mut vals = BTreeMap::new();
    for v in g.hivex_node_values(node).unwrap() {
        let h = v.hivex_value_h;
        let name = g.hivex_value_key(h).unwrap();
        vals.insert(
            name.to_lowercase(),
            (
                g.hivex_value_type(h).unwrap(),
                g.hivex_value_value(h).unwrap(),
            ),
        );
    }
    out.insert(path.to_lowercase(), vals);
    for c in g.hivex_node_children(node).unwrap() {
        let name = g.hivex_node_name(c.hivex_node_h).unwrap();
        let p = if path.is_empty() {
            name
        } else {
            format!("{path}\\{name}")
        };
        walk(g, c.hivex_node_h, &p, out);
    }
}

/// What a disk holds after a conversion: both hives and the files we look at.
struct Dump {
    system: Values,
    software: Values,
    files: BTreeMap<String, Option<Vec<u8>>>,
}

/// Reads several disks (each with Windows on partition 1) in one read-only appliance.
fn dump(disks: &[&Path], files: &[&str]) -> Vec<Dump> {
    let g = Handle::create().unwrap();
    g.set_backend("direct").unwrap();
    if accel() == Accel::Tcg {
        g.set_backend_settings(&["force_tcg"]).unwrap();
    }
    for d in disks {
        g.add_drive(
            d.to_str().unwrap(),
            AddDriveOptArgs {
                readonly: Some(true),
                format: Some("qcow2"),
                iface: None,
                name: None,
                label: None,
                protocol: None,
                server: None,
                username: None,
                secret: None,
                cachemode: None,
                discard: None,
                copyonread: None,
            },
        )
        .unwrap();
    }
    g.launch().unwrap();
    let mut out = Vec::new();
    for letter in ["a", "b", "c", "d"].iter().take(disks.len()) {
        g.mount_ro(&format!("/dev/sd{letter}1"), "/").unwrap();
        let mut hives = Vec::new();
        for h in ["SYSTEM", "SOFTWARE"] {
            g.hivex_open(
                &format!("/Windows/System32/config/{h}"),
                guestfs::HivexOpenOptArgs {
                    verbose: None,
                    debug: None,
                    write: Some(false),
                    unsafe_: None,
                },
            )
            .unwrap();
            let mut v = Values::new();
            walk(&g, g.hivex_root().unwrap(), "", &mut v);
            g.hivex_close().unwrap();
            hives.push(v);
        }
        let mut f = BTreeMap::new();
        for p in files {
            let real = g.case_sensitive_path(p).unwrap_or_else(|_| p.to_string());
            let content = if g.exists(&real).unwrap_or(false) {
                Some(g.read_file(&real).unwrap())
            } else {
                None
            };
            f.insert(p.to_string(), content);
        }
        g.umount_all().unwrap();
        let software = hives.pop().unwrap();
        let system = hives.pop().unwrap();
        out.push(Dump {
            system,
            software,
            files: f,
        });
    }
    g.shutdown().unwrap();
    out
}

fn get<'a>(v: &'a Values, key: &str, name: &str) -> Option<&'a (i64, Vec<u8>)> {
    v.get(&key.to_lowercase())?.get(&name.to_lowercase())
}

fn value(v: &Values, key: &str, name: &str) -> RegValue {
    let (t, d) = get(v, key, name).unwrap_or_else(|| panic!("no {key}\\{name}"));
    RegValue::from_raw(*t, d)
}

/// Runs virt-v2v 2.2 on `disk` (a copy) with the fake tree; returns its output disk.
fn virt_v2v(disk: &Path, tree: &Path, dir: &Path) -> PathBuf {
    // virt-v2v installs its first-boot scripts with rhsrvany.exe (or pvvxsvc.exe),
    // which Debian does not ship: a PE stub under VIRT_TOOLS_DATA_DIR satisfies it
    // (it is only copied into the guest).
    let tools = dir.join("virt-tools");
    std::fs::create_dir_all(&tools).unwrap();
    for f in ["rhsrvany.exe", "pnp_wait.exe"] {
        std::fs::write(tools.join(f), wfx::pe_stub()).unwrap();
    }
    let out = dir.join("v2v-out");
    std::fs::create_dir_all(&out).unwrap();
    let t = Instant::now();
    let mut cmd = Command::new("virt-v2v");
    cmd.env("VIRTIO_WIN", tree)
        .env("VIRT_TOOLS_DATA_DIR", &tools)
        .env("LIBGUESTFS_BACKEND", "direct")
        .args(["-i", "disk"])
        .arg(disk)
        .args(["-o", "local", "-os"])
        .arg(&out)
        .args(["-of", "qcow2", "-on", "v2v"]);
    if accel() == Accel::Tcg {
        cmd.env("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg");
    }
    let o = cmd.output().expect("running virt-v2v");
    say(&format!("virt-v2v took {:?}", t.elapsed()));
    assert!(
        o.status.success(),
        "virt-v2v failed ({}):\n{}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    out.join("v2v-sda")
}

/// Every file under `dir` (relative path and content, in name order): what a tree
/// contributes to a cache key.
fn tree_bytes(dir: &Path, out: &mut Vec<u8>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let p = e.path();
        out.extend_from_slice(p.to_string_lossy().as_bytes());
        out.push(0);
        if p.is_dir() {
            tree_bytes(&p, out);
        } else {
            let b = std::fs::read(&p).unwrap();
            out.extend_from_slice(&(b.len() as u64).to_le_bytes());
            out.extend_from_slice(&b);
        }
    }
}

/// virt-v2v's output disk for `spec`'s image with the fake tree, from the fixture cache
/// when this image, this tree and this virt-v2v version were converted before: virt-v2v
/// under TCG is this file's slowest step, and for the same input its output is the same
/// reference (FIELD-NOTES: cache slow artefacts keyed by their recipe). Returns a
/// private copy in `dir`.
fn virt_v2v_reference(spec: WindowsSpec, tree: &Path, dir: &Path) -> PathBuf {
    let img = wfx::build_windows(&spec).unwrap_or_else(|e| panic!("building {spec:?}: {e}"));
    let version = Command::new("virt-v2v")
        .arg("--version")
        .output()
        .expect("virt-v2v --version")
        .stdout;
    // Paths inside the tree differ per test directory; the key holds them relative.
    let mut tb = Vec::new();
    tree_bytes(tree, &mut tb);
    let tb = String::from_utf8_lossy(&tb).replace(&*tree.to_string_lossy(), "");
    let accel_name = format!("{:?}", accel());
    let cached = wfx::derived(
        "virt-v2v",
        &[
            img.recipe_hash.as_bytes(),
            &version,
            tb.as_bytes(),
            &wfx::pe_stub(),
            accel_name.as_bytes(),
        ],
        |work| {
            let input = work.join("in.qcow2");
            std::fs::copy(&img.qcow2, &input)
                .map_err(|e| wfx::BuildError::Io(format!("copying {}", img.qcow2.display()), e))?;
            let out = virt_v2v(&input, tree, work);
            std::fs::rename(&out, work.join("v2v-sda"))
                .map_err(|e| wfx::BuildError::Io(format!("moving {}", out.display()), e))?;
            let _ = std::fs::remove_file(&input);
            let _ = std::fs::remove_dir_all(work.join("v2v-out"));
            let _ = std::fs::remove_dir_all(work.join("virt-tools"));
            Ok(())
        },
    )
    .unwrap_or_else(|e| panic!("virt-v2v's reference output: {e}"));
    let copy = dir.join("v2v-sda.qcow2");
    std::fs::copy(cached.join("v2v-sda"), &copy).unwrap();
    copy
}

/// Whether a key belongs to the boot driver's registration (what virt-v2v does for
/// the boot disk; its other edits are first-boot machinery of its own).
fn boot_driver_key(key: &str, driver: &str) -> bool {
    let k = key.to_lowercase();
    k.ends_with(&format!("\\services\\{driver}"))
        || k.contains("\\criticaldevicedatabase\\pci#ven_1af4")
        || k.starts_with("driverdatabase\\")
}

/// Every value virt-v2v added or changed under boot-driver keys, and how v2k's output
/// differs from it. Returns (values compared, differences).
fn compare_with_virt_v2v(
    base: &Values,
    v2v: &Values,
    ours: &Values,
    driver: &str,
) -> (usize, Vec<String>) {
    let mut compared = 0;
    let mut diffs = Vec::new();
    for (key, vals) in v2v {
        for (name, data) in vals {
            let before = base.get(key).and_then(|v| v.get(name));
            if before == Some(data) {
                continue;
            }
            if !boot_driver_key(key, driver) {
                say(&format!(
                    "virt-v2v also set {key}\\{name} = {}",
                    RegValue::from_raw(data.0, &data.1).display()
                ));
                continue;
            }
            compared += 1;
            match ours.get(key).and_then(|v| v.get(name)) {
                Some(o) if o == data => {}
                Some(o) => diffs.push(format!(
                    "{key}\\{name}: virt-v2v {} / v2k {}",
                    RegValue::from_raw(data.0, &data.1).display(),
                    RegValue::from_raw(o.0, &o.1).display()
                )),
                None => diffs.push(format!(
                    "{key}\\{name}: virt-v2v {} / v2k has none",
                    RegValue::from_raw(data.0, &data.1).display()
                )),
            }
        }
    }
    (compared, diffs)
}

/// The shared body of the two good-path tests.
fn converts_and_matches_virt_v2v(version: WindowsVersion, os: &str) {
    prerequisites();
    let _g = heavy();
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let spec = WindowsSpec::new(version);
    let ours = image(spec, dir.path(), "v2k.qcow2");
    let base = image(spec, dir.path(), "base.qcow2");
    let tree = tree(dir.path(), &["w7", "2k8R2", "w10", "2k16", "2k19", "2k22"]);
    let model = vm(version.name(), "windows");

    let t = Instant::now();
    let injected = inject_with(&opts(&model, &ours), &win(&tree), &mut say).expect("inject");
    let took = t.elapsed();
    say(&format!(
        "v2k inject took {took:?}: {:?}",
        injected.log.timings
    ));
    let log = &injected.log;
    assert_eq!(log.status, Status::Converted);
    assert_eq!(log.inspection.os_type, "windows");
    let report = injected.windows.as_ref().expect("a Windows report");
    let i = &report.inspection;
    match version {
        WindowsVersion::Server2019 => {
            assert_eq!(i.name, "Windows Server 2019");
            assert_eq!((i.major, i.minor, i.build), (10, 0, 17763));
            assert!(i.server && i.driver_database);
            assert_eq!(i.hostname.as_deref(), Some("WIN2019-V2K"));
        }
        WindowsVersion::Windows7 => {
            assert_eq!(i.name, "Windows 7");
            assert_eq!((i.major, i.minor, i.build), (6, 1, 7601));
            assert!(!i.server && !i.driver_database);
            assert_eq!(i.hostname.as_deref(), Some("WIN7-V2K"));
        }
    }
    assert_eq!(i.virtio_os.as_deref(), Some(os));
    assert_eq!(
        (i.arch.as_str(), i.virtio_arch.as_str()),
        ("x86_64", "amd64")
    );
    assert_eq!(i.control_set, "ControlSet001");
    assert_eq!(i.system_root, "C:\\Windows");
    assert_eq!(i.drives.len(), 1);
    assert_eq!(i.drives[0].letter, "C:");
    assert_eq!(i.drives[0].device.as_deref(), Some("/dev/sda1"));
    assert!(!i.rtc_utc, "the synthetic guest keeps local time");
    assert_eq!(i.static_ips.len(), 1);
    assert_eq!(i.static_ips[0].addresses, [wfx::STATIC_IP]);
    assert_eq!(i.static_ips[0].mac.as_deref(), Some(MAC));
    assert_eq!(
        i.static_ips[0].connection.as_deref(),
        Some(wfx::NIC_CONNECTION)
    );
    assert_eq!(i.vmware_tools.len(), 1);
    assert_eq!(
        i.vmware_tools[0].product_code.as_deref(),
        Some(wfx::VMWARE_TOOLS_PRODUCT_CODE)
    );
    assert_eq!(report.boot_driver, "viostor");
    // Every registry change is in the log with key, value, before and after.
    let reg: Vec<_> = log
        .changes
        .iter()
        .filter(|c| c.action.starts_with("registry-"))
        .collect();
    assert_eq!(reg.len(), report.registry.len());
    let start = log
        .changes
        .iter()
        .find(|c| c.file.ends_with("\\Services\\pvscsi") && c.after.starts_with("Start"))
        .expect("pvscsi Start change in the log");
    assert_eq!(start.before, "Start = REG_DWORD 0x00000000");
    assert_eq!(start.after, "Start = REG_DWORD 0x00000003");
    std::fs::write(
        dir.path().join("conversion-log.json"),
        serde_json::to_string_pretty(log).unwrap(),
    )
    .unwrap();

    // Idempotent: a second run changes nothing.
    let again = inject_with(&opts(&model, &ours), &win(&tree), &mut say).expect("second inject");
    assert_eq!(
        again.log.status,
        Status::AlreadyConverted,
        "{:#?}",
        again.log.changes
    );

    let v2v_out = virt_v2v_reference(spec, &tree, dir.path());
    let files = [
        "/Windows/System32/drivers/viostor.sys",
        "/Windows/Drivers/VirtIO/netkvm/netkvm.inf",
        "/Windows/Drivers/VirtIO/viostor/viostor.inf",
        "/Windows/v2k/firstboot.ps1",
        "/Windows/v2k/qemu-ga-x86_64.msi",
    ];
    let mut d = dump(&[base.as_path(), ours.as_path(), v2v_out.as_path()], &files);
    let v2v = d.pop().unwrap();
    let us = d.pop().unwrap();
    let orig = d.pop().unwrap();

    // Key by key, what v2k set.
    let s = &us.system;
    let svc = "ControlSet001\\Services\\viostor";
    assert_eq!(value(s, svc, "Start"), RegValue::Dword(0));
    assert_eq!(value(s, svc, "Type"), RegValue::Dword(1));
    assert_eq!(value(s, svc, "ErrorControl"), RegValue::Dword(1));
    assert_eq!(value(s, svc, "Group"), RegValue::Sz("SCSI miniport".into()));
    assert_eq!(
        value(s, svc, "ImagePath"),
        RegValue::ExpandSz("system32\\drivers\\viostor.sys".into())
    );
    let cdd = "ControlSet001\\Control\\CriticalDeviceDatabase\\PCI#VEN_1AF4&DEV_1001&SUBSYS_00021AF4&REV_00";
    let ddb = "DriverDatabase\\DeviceIds\\PCI\\VEN_1AF4&DEV_1001&SUBSYS_00021AF4&REV_00";
    match version {
        WindowsVersion::Server2019 => {
            assert_eq!(
                value(s, ddb, "guestor.inf"),
                RegValue::Binary(vec![1, 0xff, 0, 0])
            );
            assert_eq!(
                value(
                    s,
                    "DriverDatabase\\DriverPackages\\guestor.inf_tmp\\Configurations\\guestor_conf",
                    "Service"
                ),
                RegValue::Sz("viostor".into())
            );
            assert!(get(s, cdd, "Service").is_none());
        }
        WindowsVersion::Windows7 => {
            assert_eq!(value(s, cdd, "Service"), RegValue::Sz("viostor".into()));
            assert_eq!(
                value(s, cdd, "ClassGUID"),
                RegValue::Sz("{4D36E97B-E325-11CE-BFC1-08002BE10318}".into())
            );
            assert!(!s.contains_key(&ddb.to_lowercase()));
        }
    }
    assert_eq!(
        value(s, "ControlSet001\\Services\\pvscsi", "Start"),
        RegValue::Dword(3)
    );
    assert_eq!(
        value(s, "ControlSet001\\Services\\pvscsi", "ErrorControl"),
        RegValue::Dword(1)
    );
    assert_eq!(
        value(s, "ControlSet001\\Control\\CrashControl", "AutoReboot"),
        RegValue::Dword(0)
    );
    assert_eq!(
        value(s, "ControlSet001\\Services\\v2k-firstboot", "Start"),
        RegValue::Dword(2)
    );
    assert_eq!(
        value(
            &us.software,
            "Microsoft\\Windows\\CurrentVersion",
            "DevicePath"
        ),
        RegValue::ExpandSz("%SystemRoot%\\inf;%SystemRoot%\\Drivers\\VirtIO".into())
    );
    // Nothing else in the original hive was lost.
    for (key, vals) in &orig.system {
        for (name, data) in vals {
            let now = us.system.get(key).and_then(|v| v.get(name));
            let ours_changed = report
                .registry
                .iter()
                .any(|r| r.key.eq_ignore_ascii_case(key) && r.value.eq_ignore_ascii_case(name));
            assert!(
                now == Some(data) || ours_changed,
                "{key}\\{name} changed without a log entry"
            );
        }
    }
    // Files: the right driver for this OS and architecture, and the first-boot script.
    let text = |p: &str| {
        String::from_utf8_lossy(us.files[p].as_deref().unwrap_or_else(|| panic!("no {p}")))
            .into_owned()
    };
    assert_eq!(
        text("/Windows/System32/drivers/viostor.sys"),
        format!("fake viostor for {os}/amd64 (viostor.sys)\n")
    );
    assert!(text("/Windows/Drivers/VirtIO/netkvm/netkvm.inf").contains(&format!("{os}/amd64")));
    let script = text("/Windows/v2k/firstboot.ps1");
    let mac_upper = MAC.to_uppercase();
    for want in [
        wfx::VMWARE_TOOLS_PRODUCT_CODE,
        wfx::STATIC_IP,
        mac_upper.as_str(),
        "viostor\\viostor.inf",
        "netkvm\\netkvm.inf",
        "qemu-ga-x86_64.msi",
        "$MaxAttempts = 3",
    ] {
        assert!(script.contains(want), "first-boot script lacks {want}");
    }
    assert!(us.files["/Windows/v2k/qemu-ga-x86_64.msi"].is_some());

    // And against virt-v2v on the same image.
    assert_eq!(
        v2v.files["/Windows/System32/drivers/viostor.sys"].as_deref(),
        us.files["/Windows/System32/drivers/viostor.sys"].as_deref(),
        "virt-v2v and v2k copied different boot drivers"
    );
    let (compared, diffs) = compare_with_virt_v2v(&orig.system, &v2v.system, &us.system, "viostor");
    say(&format!(
        "{compared} boot-driver registry values set by virt-v2v compared; differences: {diffs:#?}"
    ));
    assert!(
        compared >= 5,
        "virt-v2v set only {compared} boot-driver values"
    );
    assert!(diffs.is_empty(), "v2k differs from virt-v2v: {diffs:#?}");
}

#[test]
fn server_2019_gets_driver_database_entries_like_virt_v2v() {
    converts_and_matches_virt_v2v(WindowsVersion::Server2019, "2k19");
}

#[test]
fn windows_7_gets_critical_device_database_entries_like_virt_v2v() {
    converts_and_matches_virt_v2v(WindowsVersion::Windows7, "w7");
}

/// Injects into a copy of `spec`'s image and returns the error; checks the disk did
/// not change.
fn refused(spec: WindowsSpec, oses: &[&str]) -> v2k_drivers_injector::Error {
    prerequisites();
    let _g = heavy();
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let disk = image(spec, dir.path(), "disk.qcow2");
    let tree = tree(dir.path(), oses);
    let before = std::fs::read(&disk).unwrap();
    let err = inject_with(&opts(&vm("bad", "windows"), &disk), &win(&tree), &mut say)
        .expect_err("must be refused");
    say(&format!("refused: {err}"));
    assert!(
        std::fs::read(&disk).unwrap() == before,
        "the disk changed although the injection was refused"
    );
    err
}

#[test]
fn names_the_missing_driver_when_virtio_win_lacks_this_windows() {
    let err = refused(
        WindowsSpec::new(WindowsVersion::Server2019),
        &["w7", "2k16"],
    );
    assert_eq!(err.kind(), ErrorKind::Input, "{err}");
    let m = err.to_string();
    assert!(
        m.contains("viostor") && m.contains("viostor/2k19/amd64/"),
        "{m}"
    );
    assert!(m.contains("Windows Server 2019"), "{m}");
}

#[test]
fn refuses_a_hibernated_windows() {
    let mut spec = WindowsSpec::new(WindowsVersion::Windows7);
    spec.hibernated = true;
    let err = refused(spec, &["w7"]);
    assert_eq!(err.kind(), ErrorKind::Refused, "{err}");
    assert!(err.to_string().contains("hibernated"), "{err}");
}

#[test]
fn refuses_a_fast_startup_session() {
    let mut spec = WindowsSpec::new(WindowsVersion::Server2019);
    spec.fast_startup = true;
    let err = refused(spec, &["2k19"]);
    assert_eq!(err.kind(), ErrorKind::Refused, "{err}");
    assert!(err.to_string().contains("Fast Startup"), "{err}");
}

#[test]
fn refuses_a_damaged_system_hive() {
    let mut spec = WindowsSpec::new(WindowsVersion::Server2019);
    spec.damaged_system_hive = true;
    let err = refused(spec, &["2k19"]);
    assert_eq!(err.kind(), ErrorKind::Refused, "{err}");
    let m = err.to_string();
    assert!(m.contains("config/SYSTEM") && m.contains("damaged"), "{m}");
}

#[test]
fn refuses_a_missing_control_set() {
    let mut spec = WindowsSpec::new(WindowsVersion::Windows7);
    spec.missing_control_set = true;
    let err = refused(spec, &["w7"]);
    assert_eq!(err.kind(), ErrorKind::Refused, "{err}");
    assert!(err.to_string().contains("ControlSet002"), "{err}");
}

#[test]
fn refuses_a_windows_model_without_virtio_win_before_any_launch() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("w.qcow2");
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&disk)
        .arg("16M")
        .status()
        .expect("qemu-img");
    assert!(st.success());
    let t = Instant::now();
    let err = inject_with(
        &opts(&vm("w", "windows"), &disk),
        &windows::Options::default(),
        &mut say,
    )
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Refused);
    assert!(err.to_string().contains("--virtio-win"), "{err}");
    // No appliance was launched (that takes seconds even with KVM).
    assert!(t.elapsed().as_secs() < 2, "{:?}", t.elapsed());
}

#[test]
fn refuses_a_guest_with_two_windows_installations_naming_both() {
    prerequisites();
    let _g = heavy();
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let a = image(
        WindowsSpec::new(WindowsVersion::Server2019),
        dir.path(),
        "a.qcow2",
    );
    let b = image(
        WindowsSpec::new(WindowsVersion::Windows7),
        dir.path(),
        "b.qcow2",
    );
    let tree = tree(dir.path(), &["w7", "2k19"]);
    let before = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    let mut o = opts(&vm("dual", "windows"), &a);
    o.disks.push(b.clone());
    let err = inject_with(&o, &win(&tree), &mut say).expect_err("must be refused");
    assert_eq!(err.kind(), ErrorKind::Refused, "{err}");
    let m = err.to_string();
    assert!(m.contains("2 Windows installations"), "{m}");
    assert!(m.contains("/dev/sda") && m.contains("/dev/sdb"), "{m}");
    assert!(
        (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap()) == before,
        "a disk changed although the injection was refused"
    );
}
