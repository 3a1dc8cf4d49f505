//! `v2k baseline` against VMware's simulator (the harness of vsphere/tests/common): the
//! simulator's PerformanceManager answers `QueryPerf` with its recorded counters, and
//! the baseline is read, stored as `DIR/NAME.baseline.json` and shown; `v2k migrate
//! --baseline` then puts it in the VM's report (a data VM, no boot: "not compared").

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

    // The file is what `v2k migrate --baseline` reads. A data VM not booted has no
    // figures after: the report's performance section says so, per metric.
    let vmdir = t.path().join("vm");
    std::fs::create_dir_all(&vmdir).unwrap();
    v2k_fixtures::sparse_vmdk(&vmdir.join("data.vmdk"), "4M", None);
    let vmx = vmdir.join("data.vmx");
    std::fs::write(
        &vmx,
        "displayName = \"data\"\nguestOS = \"debian12-64\"\nnumvcpus = \"1\"\nmemSize = \"256\"\n\
         scsi0.present = \"TRUE\"\nscsi0.virtualDev = \"pvscsi\"\nscsi0:0.present = \"TRUE\"\n\
         scsi0:0.fileName = \"data.vmdk\"\n",
    )
    .unwrap();
    let file = dir.join("DC0_H0_VM0.baseline.json");
    let migrate = |out: &str, extra: &[&str]| {
        v2k()
            .args(["migrate", "--no-inject", "--no-validate", "--out"])
            .arg(t.path().join(out))
            .arg("--baseline")
            .arg(&file)
            .args(extra)
            .arg(&vmx)
            .output()
            .unwrap()
    };
    let o = migrate(
        "out",
        &["--threshold", "cpu-ready-percent=2", "--fail-on-regression"],
    );
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        stdout.contains(
            "performance: Not compared: the migrated VM was not booted, so there are no figures after."
        ),
        "{stdout}"
    );
    let r: Value =
        serde_json::from_slice(&std::fs::read(t.path().join("out/report.json")).unwrap()).unwrap();
    let p = &r["performance"];
    assert_eq!(r["result"], "not-validated");
    assert_eq!(p["baseline"], file.display().to_string());
    assert_eq!(p["thresholds"]["cpu-ready-percent"], 2.0);
    assert_eq!(p["fail-on-regression"], true);
    let row = &p["rows"][0];
    assert_eq!(row["metric"], "cpu-ready-percent");
    // The file as the last run rewrote it (the simulator's noise differs per run).
    let stored: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(
        row["before"], stored["baseline"]["metrics"]["cpu-ready-percent"]["median"],
        "the before is the day's median"
    );
    assert_eq!(
        (row["verdict"].as_str(), row["reason"].as_str()),
        (Some("not compared"), Some("no figure after"))
    );
    assert!(row.get("after").is_none(), "absent, never 0: {row}");
    let html = std::fs::read_to_string(t.path().join("out/report.html")).unwrap();
    assert!(
        html.contains("<h2>Performance before and after</h2>"),
        "{html}"
    );

    // A threshold of no metric, or a baseline that is not one, stop before anything
    // is written (exit 2), named.
    let o = migrate("bad1", &["--threshold", "cpu-ready=2"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("unknown field `cpu-ready`"), "{err}");
    assert!(!t.path().join("bad1").exists());
    std::fs::write(&file, "{}").unwrap();
    let o = migrate("bad2", &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("DC0_H0_VM0.baseline.json: not a v2k baseline file"),
        "{err}"
    );
    // Thresholds need something to compare with, and a baseline boot a local source
    // (a vSphere VM's baseline comes from vCenter): usage errors, nothing written.
    let bare = |out: &str, source: &str, extra: &[&str]| {
        v2k()
            .args(["migrate", source, "--out"])
            .arg(t.path().join(out))
            .args(extra)
            .output()
            .unwrap()
    };
    let o = bare("bad3", "/nonexistent/a.vmx", &["--fail-on-regression"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("need --baseline FILE or --baseline-boot"),
        "{err}"
    );
    let o = bare(
        "bad4",
        "vsphere://u@127.0.0.1:1/DC0/vm/x",
        &["--baseline-boot"],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--baseline-boot is for local sources"),
        "{err}"
    );
    assert!(!t.path().join("bad3").exists() && !t.path().join("bad4").exists());
}
