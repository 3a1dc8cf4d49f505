//! Error text says each thing once: the exact stderr line for a missing file, a file
//! that is not a VMDK, and a VM refused by pre-flight — no cause repeated, no
//! "inventory:" or "migrating X:" layers around it — and the exit code 2.

use std::path::Path;
use std::process::Command;

fn v2k(dir: &Path, args: &[&str]) -> (i32, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_v2k"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running v2k");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The `v2k: error:` line (there is exactly one).
fn error_line(stderr: &str) -> &str {
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("v2k: error:"))
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    lines[0]
}

#[test]
fn a_missing_source_is_named_once() {
    let d = tempfile::tempdir().unwrap();
    let (code, err) = v2k(d.path(), &["migrate", "nope.vmx", "--out", "o"]);
    assert_eq!(code, 2);
    assert_eq!(
        error_line(&err),
        format!(
            "v2k: error: reading {}: No such file or directory (os error 2)",
            d.path().join("nope.vmx").display()
        )
    );
}

#[test]
fn a_file_that_is_not_a_vmdk_is_named_once() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("bad.vmdk"), b"garbage").unwrap();
    let (code, err) = v2k(d.path(), &["convert", "bad.vmdk", "-o", "x.qcow2"]);
    assert_eq!(code, 2);
    assert_eq!(
        error_line(&err),
        "v2k: error: bad.vmdk: not a VMDK: no KDMV/COWD/seSparse magic and no text descriptor"
    );
    assert!(!d.path().join("x.qcow2").exists());
}

#[test]
fn a_refused_vm_says_why_once() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("b.vmx"),
        "displayName = \"b\"\nmemSize = \"1024\"\nscsi0.present = \"TRUE\"\n\
         scsi0:0.present = \"TRUE\"\nscsi0:0.fileName = \"gone.vmdk\"\n\
         ethernet0.present = \"TRUE\"\nethernet0.addressType = \"static\"\n\
         ethernet0.address = \"00:50:56:00:00:01\"\n",
    )
    .unwrap();
    let (code, err) = v2k(
        d.path(),
        &["migrate", "b.vmx", "--out", "o", "--no-validate"],
    );
    assert_eq!(code, 2);
    assert_eq!(
        error_line(&err),
        "v2k: error: b: critical pre-flight concerns, not migrated: \
         disk-missing (disk file \"gone.vmdk\" does not exist)"
    );
    // Refused before anything is written.
    assert!(!d.path().join("o/vm.json").exists());
}
