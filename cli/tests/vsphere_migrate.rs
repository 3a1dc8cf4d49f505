//! `v2k migrate` of the `debian-classic` fixture straight from VMware's simulator:
//! its ESXi-style disks (`createType="vmfs"` descriptor + flat extent) are copied into
//! the simulated datastore, a VM is created around them (CreateVM_Task), and
//! `v2k migrate vsphere://…` inspects it over SOAP, streams its disks into QCOW2,
//! injects virtio, boots it under QEMU (TCG, restrict=on) and validates it like any
//! other migration.

#[path = "../../vsphere/tests/common/mod.rs"]
mod common;

use std::process::Command;

use common::*;
use v2k_fixtures::{build, Variant};

#[test]
fn migrate_debian_classic_from_vcsim_validates() {
    let f = build(Variant::DebianClassic).expect("building the debian-classic fixture");
    let sim = Vcsim::start();
    let ds = datastore_dir(&sim);
    std::fs::create_dir_all(ds.join("deb")).unwrap();
    let mut disks = Vec::new();
    for (i, desc) in f.vmx_flat.disks.iter().enumerate() {
        // Copies (sparse), never links: the fixture cache must stay untouched.
        for src in std::iter::once(desc).chain(f.vmx_flat.extents.iter()) {
            let dst = ds.join("deb").join(src.file_name().unwrap());
            if !dst.exists() {
                let st = Command::new("cp")
                    .args(["--sparse=always"])
                    .arg(src)
                    .arg(&dst)
                    .status()
                    .unwrap();
                assert!(st.success());
            }
        }
        let name = desc.file_name().unwrap().to_string_lossy().into_owned();
        disks.push((format!("[LocalDS_0] deb/{name}"), f.disk_sizes[i]));
    }
    let c = sim.client();
    create_vm_with_disks(&c, "debian-classic", &disks, &f.mac);
    drop(c);

    let out = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_v2k"))
        .arg("migrate")
        .arg(format!(
            "vsphere://{}@127.0.0.1:{}/DC0/vm/debian-classic",
            USER.replace('@', "%40"),
            sim.port
        ))
        .arg("--ca-file")
        .arg(&pki().ca)
        .arg("--out")
        .arg(out.path())
        .args(["--json", "--boot-timeout", "400", "--backend", "qemu"])
        .env("V2K_VSPHERE_PASSWORD", PASSWORD)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!stdout.contains(PASSWORD) && !stderr.contains(PASSWORD));
    assert_eq!(o.status.code(), Some(0), "{stdout}\n{stderr}");
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("report.json")).unwrap()).unwrap();
    assert_eq!(r["result"], "validated", "{r:#}");
    let vm: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("vm.json")).unwrap()).unwrap();
    assert_eq!(vm["source"]["kind"], "vsphere");
    assert_eq!(vm["nics"][0]["mac"], f.mac.to_lowercase());
    // Every disk was streamed and verified by content hash (converter manifests).
    let manifests = std::fs::read_dir(out.path().join("disks"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".manifest.json"))
        .count();
    assert_eq!(manifests, f.vmx_flat.disks.len());
}
