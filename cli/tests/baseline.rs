//! `v2k baseline` against VMware's simulator (the harness of vsphere/tests/common): the
//! simulator's PerformanceManager answers `QueryPerf` with its recorded counters, and
//! the baseline is read, stored as `DIR/NAME.baseline.json` and shown.

#[path = "../../vsphere/tests/common/mod.rs"]
mod common;

use std::process::Command;

use common::*;
use serde_json::Value;

fn v2k() -> Command {
    Command::new(env!("CARGO_BIN_EXE_v2k"))
}

#[test]
fn baseline_reads_a_days_counters_from_vcsim_and_stores_them() {
    let sim = Vcsim::start();
    let pki = pki();
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("baseline");
    let addr = format!(
        "vsphere://{}@127.0.0.1:{}/DC0/vm/DC0_H0_VM0",
        USER.replace('@', "%40"),
        sim.port
    );
    let run = |extra: &[&str]| {
        v2k()
            .args(["baseline", "--ca-file"])
            .arg(&pki.ca)
            .arg("--out-dir")
            .arg(&dir)
            .args(extra)
            .arg(&addr)
            .env("V2K_VSPHERE_PASSWORD", PASSWORD)
            .output()
            .unwrap()
    };
    let o = run(&["--json"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{stderr}");
    let shown: Value = serde_json::from_slice(&o.stdout).unwrap();
    let stored: Value = serde_json::from_slice(
        &std::fs::read(dir.join("DC0_H0_VM0.baseline.json")).expect("the baseline file"),
    )
    .unwrap();
    assert_eq!(shown, stored);
    assert_eq!(stored["schema-version"], 1);
    assert_eq!(stored["vm"], "DC0_H0_VM0");
    let b = &stored["baseline"];
    assert_eq!(b["interval-seconds"], 300);
    assert_eq!(
        b["to"].as_u64().unwrap() - b["from"].as_u64().unwrap(),
        86400
    );
    // One day of 5-minute samples, as asked.
    let s = &b["metrics"]["cpu-ready-percent"];
    assert_eq!(s["samples"], 288, "{b:#}");
    assert_eq!(s["counter"], "cpu.ready.summation");
    let (min, med, p95) = (
        s["min"].as_f64().unwrap(),
        s["median"].as_f64().unwrap(),
        s["p95"].as_f64().unwrap(),
    );
    // The simulator's recorded CPU ready (around 100 ms per 300 s interval, with
    // noise) as a share of the interval: well above 0, well under 1 %.
    assert!(0.0 < min && min <= med && med <= p95 && p95 < 1.0, "{s}");
    // The simulator holds no samples of the other counters for a VM (and its XML
    // encoder leaves zeros out): they are reported missing, never as zero.
    assert_eq!(
        b["missing"],
        serde_json::json!([
            "virtualDisk.totalReadLatency.average",
            "virtualDisk.totalWriteLatency.average",
            "net.droppedRx.summation",
            "net.droppedTx.summation"
        ]),
        "{b:#}"
    );

    // The table names the file and each figure.
    let o = run(&[]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(
        out.contains("DC0_H0_VM0.baseline.json")
            && out.contains("cpu-ready-percent")
            && out.contains("% of interval (288 samples)")
            && out.contains("net.droppedRx.summation not offered by the server (no sample)"),
        "{out}"
    );

    // A local file has no performance history: that source fails (exit 1), named.
    let o = v2k()
        .args(["baseline", "--out-dir"])
        .arg(&dir)
        .arg("/nonexistent/a.vmx")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("/nonexistent/a.vmx: not a vsphere:// address"),
        "{err}"
    );
}
