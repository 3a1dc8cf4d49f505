//! `v2k wave` with the real binary: plan errors are reported with their line numbers
//! and exit 2 before anything runs. (The end-to-end wave tests are in
//! cli/tests/pending/wave_e2e.rs until they have been seen passing.)

use std::path::Path;
use std::process::{Command, Output};

const V2K: &str = env!("CARGO_BIN_EXE_v2k");

fn v2k(args: &[&str], plan: &Path) -> Output {
    Command::new(V2K).args(args).arg(plan).output().unwrap()
}

#[test]
fn plan_errors_name_their_line_and_exit_2_before_anything_runs() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("plan.yaml");
    std::fs::write(&p, "version: 1\nwaves:\n  - name: w\n    vms:\n      - source: a.vmx\n        valdiate: false\n").unwrap();
    for cmd in [["wave", "check"], ["wave", "run"]] {
        let o = v2k(&cmd, &p);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(
            err.contains("plan.yaml:6:") && err.contains("unknown field `valdiate`"),
            "{err}"
        );
    }
    std::fs::write(
        &p,
        "version: 1\nwaves:\n  - name: w\n    vms:\n      - source: missing.vmx\n",
    )
    .unwrap();
    let o = v2k(&["wave", "run"], &p);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("plan.yaml:5:") && err.contains("does not exist"),
        "{err}"
    );
    assert!(
        !t.path().join("plan.run").exists(),
        "a run directory was made for a bad plan"
    );
}
