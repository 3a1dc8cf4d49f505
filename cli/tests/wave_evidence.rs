//! End-to-end tests of a wave's evidence with the real binary: change-failure rate and
//! MTTR read from the journal of real small waves, and the gate that holds a larger
//! wave until they allow it. The VMs are tiny data disks (`inject: false`,
//! `validate: false`: no libguestfs, no boot), so the failures are real ones (a VM
//! whose disk is missing, then created and the VM rerun) at a few seconds per run.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

const V2K: &str = env!("CARGO_BIN_EXE_v2k");

/// A 4 MiB sparse VMDK at `path`.
fn disk(path: &Path) {
    v2k_fixtures::sparse_vmdk(path, "4M", None);
}

/// A data VM `name` in `dir`; its disk is made only when `with_disk`.
fn vm(dir: &Path, name: &str, with_disk: bool) {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    if with_disk {
        disk(&d.join("data.vmdk"));
    }
    std::fs::write(
        d.join(format!("{name}.vmx")),
        format!(
            "displayName = \"{name}\"\nguestOS = \"debian12-64\"\nnumvcpus = \"1\"\n\
             memSize = \"256\"\nscsi0.present = \"TRUE\"\nscsi0.virtualDev = \"pvscsi\"\n\
             scsi0:0.present = \"TRUE\"\nscsi0:0.fileName = \"data.vmdk\"\n"
        ),
    )
    .unwrap();
}

fn run(plan: &Path, extra: &[&str]) -> Output {
    Command::new(V2K)
        .args(["wave", "run", "--json"])
        .args(extra)
        .arg(plan)
        .output()
        .unwrap()
}

fn json(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .unwrap()
}

fn journal(run: &Path) -> Vec<Value> {
    std::fs::read_to_string(run.join("journal.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Wave `first` has a VM whose disk is missing: it fails, so the change-failure rate
/// is 50 % and `second` (3 VMs, larger) is held with the figures (exit 3). The disk is
/// made and the VM rerun: the failure is repaired, its repair time is the MTTR, but
/// the rate stays 50 % (a failed change stays failed), so the gate still holds;
/// `--override-gate` starts it and the journal keeps who and why. The second wave's
/// report charts both waves.
#[test]
fn wave_metrics_come_from_the_journal_and_the_gate_holds_a_larger_wave() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    vm(d, "good1", true);
    vm(d, "broken", false);
    for n in ["w2a", "w2b", "w2c"] {
        vm(d, n, true);
    }
    let entry = |n: &str| {
        format!(
            "      - source: {}\n        inject: false\n",
            d.join(n).join(format!("{n}.vmx")).display()
        )
    };
    let plan = d.join("plan.yaml");
    std::fs::write(
        &plan,
        format!(
            "version: 1\nrun-dir: run\ndefaults:\n  validate: false\nlimits:\n  vms: 2\n\
             gate:\n  max-change-failure-rate: 0.2\n  mttr: trending-down\n  grow-by: 2\n\
             waves:\n  - name: first\n    vms:\n{}{}  - name: second\n    vms:\n{}{}{}",
            entry("good1"),
            entry("broken"),
            entry("w2a"),
            entry("w2b"),
            entry("w2c"),
        ),
    )
    .unwrap();
    let run_dir = d.join("run");

    // 1. The broken VM fails; the gate holds the larger second wave.
    let o = run(&plan, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(
        err.contains(
            "the gate holds wave second (3 VMs, 2 at once): it is larger than wave first \
             (2 VMs, 2 at once) and the change-failure rate of wave first is 50.0 % (1 of 2 \
             VMs failed), above max-change-failure-rate 20.0 %; wave first has 1 failure(s) \
             not repaired"
        ) && err.contains("--override-gate"),
        "{err}"
    );
    assert!(!run_dir.join("second").exists(), "the held wave ran");
    let r = json(&run_dir.join("first/wave-report.json"));
    let m = &r["metrics"];
    assert_eq!(m["attempted"], 2, "{m:#}");
    assert_eq!(m["failed-changes"], 1, "{m:#}");
    assert_eq!(m["change-failure-rate"], 0.5, "{m:#}");
    assert_eq!(
        (m["repaired"].clone(), m["unrepaired"].clone()),
        (0.into(), 1.into())
    );
    assert!(m.get("mttr-seconds").is_none(), "{m:#}");
    assert_eq!(m["failures"][0]["vm"], "broken");
    assert!(
        m["failures"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("disk-missing"),
        "{m:#}"
    );
    let junit = std::fs::read_to_string(run_dir.join("first/junit.xml")).unwrap();
    assert!(
        junit.contains("<property name=\"v2k.change-failure-rate\" value=\"0.5000\"/>")
            && junit.contains("<property name=\"v2k.unrepaired\" value=\"1\"/>")
            && !junit.contains("v2k.mttr-seconds"),
        "{junit}"
    );
    let html = std::fs::read_to_string(run_dir.join("first/wave-report.html")).unwrap();
    assert!(
        html.contains("Change-failure rate <b>50.0 %</b>")
            && html.matches("<svg ").count() == 2
            && !html.contains("<script"),
        "{html}"
    );
    let refused: Vec<Value> = journal(&run_dir)
        .into_iter()
        .filter(|r| r["type"] == "gate")
        .collect();
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0]["decision"], "refused");
    assert_eq!(refused[0]["previous"], "first");

    // 2. Repair: the disk is made, the failed VM rerun.
    disk(&d.join("broken/data.vmdk"));
    let o = run(&plan, &["--retry-failed", "--wave", "first"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let m = json(&run_dir.join("first/wave-report.json"))["metrics"].clone();
    assert_eq!(
        (m["repaired"].clone(), m["unrepaired"].clone()),
        (1.into(), 0.into())
    );
    assert_eq!(m["change-failure-rate"], 0.5, "{m:#}");
    let mttr = m["mttr-seconds"].as_f64().expect("an MTTR once repaired");
    let f = &m["failures"][0];
    assert_eq!(
        mttr,
        f["repaired-at"].as_f64().unwrap() - f["failed-at"].as_f64().unwrap()
    );
    assert!(mttr > 0.0, "{m:#}");

    // 3. Still held: the rate is the rate; the reason no longer names repairs.
    let o = run(&plan, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(err.contains("is 50.0 % (1 of 2 VMs failed)"), "{err}");
    assert!(!err.contains("not repaired"), "{err}");

    // 4. Overridden: the wave runs and the journal says who and why.
    let o = run(&plan, &["--override-gate", "CAB-42 accepted the risk"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let gates: Vec<Value> = journal(&run_dir)
        .into_iter()
        .filter(|r| r["type"] == "gate")
        .collect();
    assert_eq!(gates.len(), 3, "{gates:#?}");
    let g = &gates[2];
    assert_eq!(g["decision"], "overridden");
    assert_eq!(g["override-reason"], "CAB-42 accepted the risk");
    assert!(g["by"].as_str().unwrap().contains("uid "), "{g:#}");
    assert!(
        g["reasons"][0].as_str().unwrap().contains("50.0 %"),
        "{g:#}"
    );
    let r = json(&run_dir.join("second/wave-report.json"));
    assert_eq!(r["metrics"]["attempted"], 3);
    assert_eq!(r["metrics"]["change-failure-rate"], 0.0);
    let trend: Vec<&str> = r["trend"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["wave"].as_str().unwrap())
        .collect();
    assert_eq!(trend, ["first", "second"]);
    let html = std::fs::read_to_string(run_dir.join("second/wave-report.html")).unwrap();
    // The rate chart: one bar for first's 50 % (second's 0 % has none), labelled.
    assert!(
        html.contains(">50.0 %</text>") && html.contains(">0.0 %</text>"),
        "{html}"
    );
    assert!(html.contains(&format!(">{mttr:.1} s</text>")), "{html}");
    assert!(html.contains(">no failure</text>"), "{html}");
}

/// `baseline-dir:` in a plan, with the real binary and no boot: `wave check` says per
/// VM where its "before" comes from (and, in words, which VM has none), and `wave run`
/// puts a performance section in each report — "not compared" here, since data VMs
/// are not booted (a compared one is waves/tests/recorded.rs's), the missing file
/// named in the verdict, the VM migrated all the same.
#[test]
fn a_plans_baseline_dir_is_checked_and_reaches_each_report() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    vm(d, "based", true);
    vm(d, "unbased", true);
    std::fs::create_dir_all(d.join("baselines")).unwrap();
    let file = d.join("baselines/based.baseline.json");
    std::fs::write(
        &file,
        r#"{"schema-version": 1, "vm": "based", "source": "vsphere://u@vc/DC0/vm/based",
            "baseline": {"moref": "vm-9", "interval-seconds": 300, "from": 0, "to": 86400,
              "metrics": {"cpu-ready-percent": {"counter": "cpu.ready.summation",
                "unit": "% of interval", "samples": 288, "min": 0.1, "median": 0.5, "p95": 2.0}},
              "missing": []}}"#,
    )
    .unwrap();
    let entry = |n: &str| {
        format!(
            "      - source: {}\n        inject: false\n",
            d.join(n).join(format!("{n}.vmx")).display()
        )
    };
    let plan = d.join("plan.yaml");
    std::fs::write(
        &plan,
        format!(
            "version: 1\nrun-dir: run\ndefaults:\n  validate: false\n  baseline-dir: baselines\n\
             waves:\n  - name: w\n    vms:\n{}{}",
            entry("based"),
            entry("unbased"),
        ),
    )
    .unwrap();
    let o = Command::new(V2K)
        .args(["wave", "check", "--json"])
        .arg(&plan)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{stdout}");
    let c: Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    let check = |n: &str| {
        c["vms"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == n)
            .unwrap()["baseline"]
            .clone()
    };
    assert_eq!(check("based"), file.display().to_string());
    let none = format!(
        "none: {} not found",
        d.join("baselines/unbased.baseline.json").display()
    );
    assert_eq!(check("unbased"), none.as_str());
    let o = Command::new(V2K)
        .args(["wave", "check"])
        .arg(&plan)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains(&format!("no performance baseline: {none}")),
        "{stdout}"
    );

    let o = run(&plan, &[]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let report = |n: &str| json(&d.join(format!("run/vms/{n}/out/report.json")));
    let p = report("based")["performance"].clone();
    assert_eq!(p["rows"][0]["before"], 0.5, "{p:#}");
    assert!(
        p["verdict"].as_str().unwrap().contains("not booted"),
        "{p:#}"
    );
    let p = report("unbased")["performance"].clone();
    assert_eq!(
        p["verdict"],
        format!(
            "Not compared: no baseline ({}: not found).",
            d.join("baselines/unbased.baseline.json").display()
        ),
        "{p:#}"
    );
    let w = json(&d.join("run/w/wave-report.json"));
    assert!(
        w["vms"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["status"] == "migrated"
                && v["performance"]["regressions"] == serde_json::json!([])),
        "{w:#}"
    );
}

/// `baseline-boot: true` for a local VM that cannot boot in its own shape here — an EFI
/// guest on PVSCSI: this host's OVMF has no PVSCSI driver (docs/evidence.md) — without
/// a boot: `wave check` says where its baseline will come from, `wave run` refuses the
/// boot before anything is made, journals the refusal as the `vm-baseline` error, says
/// it in the report's verdict and still migrates the VM; `v2k baseline --baseline-boot`
/// on the same VMX exits 1 with the reason and writes nothing.
#[test]
fn a_baseline_boot_the_source_cannot_have_is_refused_journalled_and_the_vm_migrates() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let dir = d.join("efi");
    std::fs::create_dir_all(&dir).unwrap();
    disk(&dir.join("data.vmdk"));
    let vmx = dir.join("efi.vmx");
    std::fs::write(
        &vmx,
        "displayName = \"efi\"\nguestOS = \"debian12-64\"\nfirmware = \"efi\"\nnumvcpus = \"1\"\n\
         memSize = \"256\"\nscsi0.present = \"TRUE\"\nscsi0.virtualDev = \"pvscsi\"\n\
         scsi0:0.present = \"TRUE\"\nscsi0:0.fileName = \"data.vmdk\"\n",
    )
    .unwrap();
    let plan = d.join("plan.yaml");
    std::fs::write(
        &plan,
        format!(
            "version: 1\nrun-dir: run\ndefaults:\n  validate: false\n  inject: false\n  \
             baseline-boot: true\nwaves:\n  - name: w\n    vms:\n      - source: {}\n",
            vmx.display()
        ),
    )
    .unwrap();
    let o = Command::new(V2K)
        .args(["wave", "check", "--json"])
        .arg(&plan)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{stdout}");
    let c: Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    assert_eq!(
        c["vms"][0]["baseline"],
        "measured by booting the source on the first attempt (baseline-boot)",
        "{c:#}"
    );

    let o = run(&plan, &[]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let readings: Vec<Value> = journal(&d.join("run"))
        .into_iter()
        .filter(|e| e["type"] == "vm-baseline")
        .collect();
    assert_eq!(readings.len(), 1, "{readings:#?}");
    let error = readings[0]["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with(
            "booting the source for its baseline: not booted in its source's shape: an EFI guest on pvscsi"
        ) && error.contains("OVMF has no driver"),
        "{:#}",
        readings[0]
    );
    // Refused before anything was made: no work directory, no baseline file.
    assert!(!d.join("run/vms/efi/baseline-boot").exists());
    assert!(!d.join("run/vms/efi/baseline.json").exists());
    let r = json(&d.join("run/vms/efi/out/report.json"));
    assert_eq!(
        r["performance"]["verdict"],
        format!("Not compared: no baseline ({error})."),
        "{r:#}"
    );
    let w = json(&d.join("run/w/wave-report.json"));
    assert_eq!(w["vms"][0]["status"], "migrated", "{w:#}");

    let out = d.join("baselines");
    let o = Command::new(V2K)
        .args(["baseline", "--baseline-boot", "--out-dir"])
        .arg(&out)
        .arg(&vmx)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("efi: not booted in its source's shape: an EFI guest on pvscsi"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_dir(&out).unwrap().count(),
        0,
        "nothing written"
    );
}
