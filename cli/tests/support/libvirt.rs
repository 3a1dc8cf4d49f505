//! virsh on this machine's system libvirt, for the end-to-end tests that deliver to
//! it (deliver.rs, vsphere_cutover.rs, vsphere_migrate.rs). Each test names what it
//! creates with its own id and removes it; these helpers only run virsh.

#![allow(dead_code)]

use std::process::{Command, Output};

/// The destination every delivery test uses.
pub const URI: &str = "qemu:///system";

/// `virsh -q -c qemu:///system ARGS`; a missing virsh is a failure, not a skip.
pub fn virsh(args: &[&str]) -> Output {
    Command::new("virsh")
        .args(["-q", "-c", URI])
        .args(args)
        .output()
        .expect("virsh (scripts/setup.sh: libvirt-clients)")
}

/// As [`virsh`], asserting success; its stdout.
pub fn virsh_ok(args: &[&str]) -> String {
    let o = virsh(args);
    assert!(
        o.status.success(),
        "virsh {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}
