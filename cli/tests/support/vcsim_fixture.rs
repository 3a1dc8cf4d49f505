//! A fixture guest as a VM of the vCenter simulator: its ESXi-style disks (descriptor
//! and flat extent) copied into the simulated datastore and a VM made around them, for
//! the tests that migrate a real guest from vSphere (vsphere_migrate.rs,
//! live_migrate.rs, and examples/bench_downtime.rs). Needs the crate root's `common`
//! module (vsphere/tests/common).

use std::process::Command;

use super::common::{create_vm_with_disks, datastore_dir, Vcsim};

/// Copies the fixture's ESXi-style disks into the simulated datastore under `dir`
/// and creates a VM `name` around them, with the fixture's MAC.
pub fn vm_from_fixture(sim: &Vcsim, f: &v2k_fixtures::Fixture, dir: &str, name: &str) {
    let disks = fixture_disks(sim, f, dir);
    create_vm_with_disks(&sim.client(), name, &disks, &f.mac);
}

/// Copies the fixture's ESXi-style disks (descriptor and flat extent) into the
/// simulated datastore under `dir`: each disk's datastore path and size.
pub fn fixture_disks(sim: &Vcsim, f: &v2k_fixtures::Fixture, dir: &str) -> Vec<(String, u64)> {
    let ds = datastore_dir(sim);
    std::fs::create_dir_all(ds.join(dir)).unwrap();
    let mut disks = Vec::new();
    for (i, desc) in f.vmx_flat.disks.iter().enumerate() {
        // Copies (sparse), never links: the fixture cache must stay untouched.
        for src in std::iter::once(desc).chain(f.vmx_flat.extents.iter()) {
            let dst = ds.join(dir).join(src.file_name().unwrap());
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
        let file = desc.file_name().unwrap().to_string_lossy().into_owned();
        disks.push((format!("[LocalDS_0] {dir}/{file}"), f.disk_sizes[i]));
    }
    disks
}
