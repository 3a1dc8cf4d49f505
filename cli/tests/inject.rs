//! `v2k inject` through the real binary: the refusals and usage errors that need no
//! appliance (exit 2, a message naming the file, the `--json` error line), the VMware
//! source refused as a disk, and one real injection (its target files and an EFI
//! guest's own variable store). The injector's guest changes in detail are in
//! drivers-injector/tests/e2e.rs; the boots in cli/tests/migrate.rs.

use std::path::Path;
use std::process::{Command, Output};

fn v2k(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_v2k"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("v2k runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn vm_json(dir: &Path) -> std::path::PathBuf {
    let p = dir.join("vm.json");
    std::fs::write(
        &p,
        r#"{"type":"vm","schema-version":1,"name":"web<01>","source":{"kind":"vmx","path":"/nonexistent/web.vmx"},
"guest-os":{"family":"linux"},"firmware":{"kind":"bios"},"cpu":{"count":2,"cores-per-socket":1},"memory-mib":1024,
"nics":[{"index":0,"model":"vmxnet3","mac":"00:50:56:00:00:01","address-type":"static","network":"VM Network"}]}"#
            .replace('\n', ""),
    )
    .unwrap();
    p
}

#[test]
fn refuses_a_disk_that_is_not_qcow2_with_exit_2_and_a_json_error() {
    let dir = tempfile::tempdir().unwrap();
    let vm = vm_json(dir.path());
    std::fs::write(dir.path().join("disk.raw"), vec![0u8; 4096]).unwrap();
    let out = v2k(
        &[
            "inject",
            "--accel",
            "tcg",
            "--json",
            "--vm",
            vm.to_str().unwrap(),
            "disk.raw",
        ],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let line: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    assert_eq!(line["type"], "error");
    assert_eq!(line["kind"], "input");
    assert!(
        line["message"].as_str().unwrap().contains("not a QCOW2"),
        "{line}"
    );
    assert!(text(&out.stderr).contains("disk.raw"));
}

#[test]
fn refuses_the_vmware_source_itself() {
    let dir = tempfile::tempdir().unwrap();
    // A model whose disk location is the very file given as the "converted" disk.
    let src = dir.path().join("src.qcow2");
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", src.to_str().unwrap(), "16M"])
        .status()
        .expect("qemu-img");
    assert!(st.success());
    let vm = dir.path().join("vm.json");
    std::fs::write(
        &vm,
        serde_json::json!({"schema-version":1,"name":"x","source":{"kind":"vmx","path":"/x.vmx"},
            "guest-os":{"family":"linux"},"firmware":{"kind":"bios"},"cpu":{"count":1,"cores-per-socket":1},
            "memory-mib":512,"disks":[{"id":"scsi0:0","location":{"kind":"file","path":src},"mode":"persistent"}],
            "nics":[{"index":0,"model":"vmxnet3","mac":"00:50:56:00:00:01","address-type":"static"}]})
        .to_string(),
    )
    .unwrap();
    let out = v2k(
        &[
            "inject",
            "--accel",
            "tcg",
            "--vm",
            vm.to_str().unwrap(),
            "src.qcow2",
        ],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("VMware source"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn rejects_a_bad_network_map_and_a_windows_vm() {
    let dir = tempfile::tempdir().unwrap();
    let vm = vm_json(dir.path());
    let out = v2k(
        &[
            "inject",
            "--vm",
            vm.to_str().unwrap(),
            "--network-map",
            "VM Network=tap:x",
            "d.qcow2",
        ],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("network map"),
        "{}",
        text(&out.stderr)
    );

    let win = dir.path().join("win.json");
    let t = std::fs::read_to_string(&vm)
        .unwrap()
        .replace("\"linux\"", "\"windows\"");
    std::fs::write(&win, t).unwrap();
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "w.qcow2", "16M"])
        .current_dir(dir.path())
        .status()
        .unwrap();
    assert!(st.success());
    let out = v2k(
        &[
            "inject",
            "--accel",
            "tcg",
            "--vm",
            win.to_str().unwrap(),
            "w.qcow2",
        ],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("Windows"),
        "{}",
        text(&out.stderr)
    );
}

/// `v2k inject` through the binary, on debian-classic's converted disks, with a VM model
/// that says EFI (the guest itself is BIOS: the injector does not care, the target
/// does). One appliance launch, no boot: what it shows is that the command writes the
/// same target files as `v2k migrate` (one set of stage functions) and gives an EFI
/// guest its own variable store, never the system's template.
#[test]
fn inject_writes_the_target_and_an_efi_guest_gets_its_own_variable_store() {
    use v2k_fixtures::{build, Variant};
    let f = build(Variant::DebianClassic).unwrap_or_else(|e| panic!("fixture: {e}"));
    let t = tempfile::tempdir().unwrap();
    let mut disks = Vec::new();
    for (i, d) in f.vmx_sparse.disks.iter().enumerate() {
        let o = t.path().join(format!("disk{i}.qcow2"));
        let c = v2k(
            &["convert", &d.to_string_lossy(), "-o", &o.to_string_lossy()],
            t.path(),
        );
        assert!(c.status.success(), "{}", text(&c.stderr));
        disks.push(o);
    }
    // The fixture's model, as `v2k inspect --json` gives it, turned EFI.
    let i = v2k(
        &["inspect", "--json", &f.vmx_sparse.vmx.to_string_lossy()],
        t.path(),
    );
    assert!(i.status.success(), "{}", text(&i.stderr));
    let mut vm: serde_json::Value = text(&i.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["type"] == "vm")
        .expect("a vm line");
    vm["firmware"] = serde_json::json!({"kind": "efi"});
    vm["name"] = serde_json::json!("classic-efi");
    // And pinned to host CPUs 2-3 on VMware: mapped onto a two-CPU destination
    // (--host-topology), the pin is renumbered onto its CPUs 0-1.
    vm["tuning"] = serde_json::json!({"cpu-affinity": [2, 3]});
    let caps = t.path().join("caps.xml");
    std::fs::write(
        &caps,
        "<capabilities><host><topology><cells num='1'><cell id='0'>\
         <memory unit='KiB'>4194304</memory>\
         <cpus num='2'><cpu id='0'/><cpu id='1'/></cpus></cell></cells></topology></host></capabilities>",
    )
    .unwrap();
    let model = t.path().join("vm.json");
    std::fs::write(&model, vm.to_string()).unwrap();
    let out = t.path().join("out");
    let mut args = vec![
        "inject".to_string(),
        "--vm".into(),
        model.display().to_string(),
        "--out".into(),
        out.display().to_string(),
        "--accel".into(),
        "tcg".into(),
        "--host-topology".into(),
        caps.display().to_string(),
    ];
    args.extend(disks.iter().map(|d| d.display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = v2k(&args, t.path());
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    for f in [
        "conversion-log.json",
        "conversion-log.txt",
        "domain.xml",
        "qemu-cmdline.json",
        "run-qemu.sh",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let vars = out.join("classic-efi_VARS.fd");
    let template = "/usr/share/OVMF/OVMF_VARS_4M.fd";
    assert_eq!(
        std::fs::read(&vars).expect("the VM's variable store"),
        std::fs::read(template).unwrap()
    );
    let argv = std::fs::read_to_string(out.join("qemu-cmdline.json")).unwrap();
    assert!(argv.contains(&*vars.to_string_lossy()), "{argv}");
    assert!(!argv.contains(template), "{argv}");
    let xml = std::fs::read_to_string(out.join("domain.xml")).unwrap();
    assert!(xml.contains("<nvram>"), "{xml}");
    assert!(xml.contains("<vcpupin vcpu='0' cpuset='0-1'/>"), "{xml}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(out.join("run-qemu.sh"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o111, 0o111, "run-qemu.sh is executable");
}
