//! Secrets stay in v2k: the vSphere password given in `$V2K_VSPHERE_PASSWORD` is read
//! once and removed from the environment before any child is spawned. Shown with the
//! real binary running a wave whose pre hook records its whole environment (a hook is
//! a child like qemu-img or the libguestfs appliance; all inherit the same
//! environment), then fails so that nothing is converted.

use std::process::Command;

const V2K: &str = env!("CARGO_BIN_EXE_v2k");
/// A value that appears nowhere else, so finding it anywhere is a leak.
const PASSWORD: &str = "fake-pw-5f0c1e-never-inherited";

#[test]
fn a_wave_hook_never_inherits_the_vsphere_password() {
    let t = tempfile::tempdir().unwrap();
    let vm_dir = t.path().join("vm");
    std::fs::create_dir(&vm_dir).unwrap();
    let vmx = vm_dir.join("secrets-vm.vmx");
    std::fs::write(
        &vmx,
        "displayName = \"secrets-vm\"\nguestOS = \"debian12-64\"\nnumvcpus = \"1\"\nmemsize = \"512\"\n",
    )
    .unwrap();
    let dump = t.path().join("hook-env");
    let plan = t.path().join("plan.yaml");
    std::fs::write(
        &plan,
        format!(
            "version: 1
run-dir: run
defaults:
  validate: false
  backend: qemu
  hooks:
    pre:
      command: [sh, -c, 'env > {dump}; echo seen-the-hook >> {dump}; exit 1']
      timeout: 30
waves:
  - name: w
    vms:
      - source: {vmx}
        name: secrets-vm
",
            dump = dump.display(),
            vmx = vmx.display()
        ),
    )
    .unwrap();
    let o = Command::new(V2K)
        .args(["wave", "run"])
        .arg(&plan)
        .env("V2K_VSPHERE_PASSWORD", PASSWORD)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    // The hook failed, so the VM failed: exit 1 (some VMs failed).
    assert_eq!(o.status.code(), Some(1), "{err}");
    let env = std::fs::read_to_string(&dump).unwrap();
    assert!(env.contains("seen-the-hook") && env.contains("V2K_VM_NAME=secrets-vm"));
    assert!(
        !env.contains(PASSWORD) && !env.contains("V2K_VSPHERE_PASSWORD"),
        "the hook inherited the password:\n{env}"
    );
    // Nor does anything v2k wrote or printed hold it.
    assert!(!err.contains(PASSWORD) && !String::from_utf8_lossy(&o.stdout).contains(PASSWORD));
    for e in walk(&t.path().join("run")) {
        let b = std::fs::read(&e).unwrap();
        assert!(
            !String::from_utf8_lossy(&b).contains(PASSWORD),
            "{} holds the password",
            e.display()
        );
    }
}

/// Every regular file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else if p.is_file() {
                out.push(p);
            }
        }
    }
    out
}
