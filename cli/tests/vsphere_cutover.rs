//! Source cutover and rollback against VMware's simulator (vcsim), with delivery to
//! this machine's libvirt (`qemu:///system`, a `dir` pool under the test's temp
//! directory): a running vSphere VM is refused without `--cutover`; with it, it is
//! shut down through VMware Tools (ShutdownGuest) before the copy and is powered off
//! afterwards; `v2k rollback` undefines the delivered domain and powers the source
//! back on, once — a second rollback finds it running. No guest boots
//! (`--no-inject --no-validate`). The guest that ignores the shutdown (timeout,
//! refusal without `--force-power-off`) is a unit test of `migrate/src/cutover.rs`:
//! vcsim's ShutdownGuest always powers the VM off at once.

#[path = "../../vsphere/tests/common/mod.rs"]
mod common;
#[path = "support/libvirt.rs"]
mod libvirt;

use std::process::{Command, Output};

use common::*;
use libvirt::{virsh, URI};

const V2K: &str = env!("CARGO_BIN_EXE_v2k");

/// The pool and the domain of this test, removed on drop.
struct Cleanup {
    pool: String,
    domain: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = virsh(&["destroy", &self.domain]);
        let _ = virsh(&["undefine", &self.domain, "--keep-nvram"]);
        let _ = virsh(&["pool-destroy", &self.pool]);
    }
}

fn v2k(sim_ca: &std::path::Path, args: &[&str]) -> Output {
    Command::new(V2K)
        .args(args)
        .arg("--ca-file")
        .arg(sim_ca)
        .env("V2K_VSPHERE_PASSWORD", PASSWORD)
        .output()
        .unwrap()
}

#[test]
fn cutover_shuts_the_source_down_and_rollback_powers_it_on_once() {
    let sim = Vcsim::start();
    let c = sim.client();
    let name = format!("v2k-t{}-cutover", std::process::id());
    let dir = datastore_dir(&sim).join("cut");
    std::fs::create_dir_all(&dir).unwrap();
    const SIZE: usize = 4 << 20;
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "vmdk",
        "-o",
        "subformat=monolithicFlat",
        dir.join("cut.vmdk").to_str().unwrap(),
        &SIZE.to_string(),
    ]);
    std::fs::write(dir.join("cut-flat.vmdk"), pattern(SIZE, 7)).unwrap();
    create_vm_with_disks(
        &c,
        &name,
        &[("[LocalDS_0] cut/cut.vmdk".into(), SIZE as u64)],
        "00:50:56:01:02:0a",
    );
    power_on(&c, &name);

    let t = tempfile::tempdir().unwrap();
    let pool_dir = t.path().join("pool");
    std::fs::create_dir(&pool_dir).unwrap();
    let _cleanup = Cleanup {
        pool: format!("{name}-pool"),
        domain: name.clone(),
    };
    let o = virsh(&[
        "pool-create-as",
        &format!("{name}-pool"),
        "dir",
        "--target",
        &pool_dir.to_string_lossy(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let address = format!(
        "vsphere://{}@127.0.0.1:{}/DC0/vm/{name}",
        USER.replace('@', "%40"),
        sim.port
    );
    let out = t.path().join("run");
    let out_s = out.to_string_lossy().into_owned();
    let pool = format!("{name}-pool");
    let migrate = |extra: &[&str]| {
        let mut a = vec![
            "migrate",
            &address,
            "--out",
            &out_s,
            "--no-inject",
            "--no-validate",
            "--to",
            URI,
            "--pool",
            &pool,
        ];
        a.extend_from_slice(extra);
        v2k(&pki().ca, &a)
    };

    // Without --cutover a running source is refused, and left running.
    let o = migrate(&[]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(power_state(&c, &name), "poweredOn");

    let o = migrate(&["--cutover", "--shutdown-timeout", "30"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains(PASSWORD));
    assert_eq!(power_state(&c, &name), "poweredOff");
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    let cut = r["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "cutover")
        .unwrap_or_else(|| panic!("no cutover stage: {r:#}"));
    assert_eq!(cut["status"], "done");
    assert!(
        cut["detail"]
            .as_str()
            .unwrap()
            .contains("shut down through VMware Tools"),
        "{cut}"
    );
    assert!(virsh(&["dominfo", &name]).status.success(), "delivered");

    // Rollback: the target gone, the source on; again: no second power-on.
    let o = v2k(&pki().ca, &["rollback", &out_s]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(power_state(&c, &name), "poweredOn");
    assert!(!virsh(&["dominfo", &name]).status.success());
    let steps: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("rollback.json")).unwrap()).unwrap();
    assert!(
        steps["steps"][3]["outcome"]
            .as_str()
            .unwrap()
            .ends_with("powered on"),
        "{steps:#}"
    );
    let o = v2k(&pki().ca, &["rollback", &out_s]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let steps: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("rollback.json")).unwrap()).unwrap();
    assert!(
        steps["steps"][3]["outcome"]
            .as_str()
            .unwrap()
            .contains("already powered on"),
        "{steps:#}"
    );
}
