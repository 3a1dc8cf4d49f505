//! `v2k inject` through the real binary: the refusals and usage errors that need no
//! appliance (exit 2, a message naming the file, the `--json` error line), and the
//! VMware source refused as a disk. The full conversion and boot are in
//! drivers-injector/tests/e2e.rs.

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
