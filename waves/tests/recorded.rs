//! A wave's orchestration without a VM: real VMX files and VMDKs (made by qemu-img), real
//! conversions, hashes, journal and reports, through `v2k_waves::run_with` with a
//! recording implementation of the two stages that boot something (the injector's
//! appliance and the validation boot).
//!
//! What these prove, that the end-to-end wave tests (cli/tests/wave.rs, no boot) do not:
//! a validated VM's verdict and console thumbnail reach the wave report; a run stopped
//! between a VM's start and its finish (the journal is written first, so a kill leaves
//! exactly a journal cut there) resumes without redoing the other VMs' work and reuses
//! the stopped VM's finished stages; a failed VM keeps its result until `retry_failed`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use serde_json::Value;
use v2k_drivers_injector::{windows, ConversionLog, InjectOptions, Injected};
use v2k_kvm_target::Target;
use v2k_migrate::BootStages;
use v2k_validator::checks::Check;
use v2k_validator::{Evidence, Expectations, Validation};
use v2k_waves::{RunEvent, RunOptions};

/// A real 1x1 PNG (what the validator's screenshot is): signature, IHDR, IDAT, IEND.
const PNG: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x02, 0x00, 0x00, 0x00, 0x90, 0x77, 0x53,
    0xde, 0x00, 0x00, 0x00, 0x0c, 0x49, 0x44, 0x41, 0x54, 0x08, 0xd7, 0x63, 0xf8, 0xcf, 0xc0, 0x00,
    0x00, 0x03, 0x01, 0x01, 0x00, 0x18, 0xdd, 0x8d, 0xb0, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4e,
    0x44, 0xae, 0x42, 0x60, 0x82,
];

fn run(cmd: &mut Command) {
    let o = cmd
        .output()
        .expect("running a tool (qemu-utils, scripts/setup.sh)");
    assert!(
        o.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// `DIR/NAME/NAME.vmx` with one 8 MiB monolithicSparse disk holding a pattern (or none
/// when `with_disk` is false: the VM then fails with `disk-missing`).
fn vm(dir: &Path, name: &str, mac: &str, with_disk: bool) -> PathBuf {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    if with_disk {
        make_disk(&d.join("disk.vmdk"));
    }
    let vmx = d.join(format!("{name}.vmx"));
    std::fs::write(
        &vmx,
        format!(
            "displayName = \"{name}\"\nguestOS = \"debian12-64\"\nnumvcpus = \"1\"\nmemSize = \"512\"\n\
             scsi0.present = \"TRUE\"\nscsi0.virtualDev = \"pvscsi\"\nscsi0:0.present = \"TRUE\"\n\
             scsi0:0.fileName = \"disk.vmdk\"\nethernet0.present = \"TRUE\"\n\
             ethernet0.virtualDev = \"vmxnet3\"\nethernet0.networkName = \"VM Network\"\n\
             ethernet0.addressType = \"static\"\nethernet0.address = \"{mac}\"\n"
        ),
    )
    .unwrap();
    vmx
}

fn make_disk(path: &Path) {
    v2k_fixtures::sparse_vmdk(path, "8M", Some((0x22, "2M", "192k")));
}

/// The recording boot stages: what they were asked, by VM name.
#[derive(Default)]
struct Recording {
    injected: Mutex<Vec<String>>,
    validated: Mutex<Vec<String>>,
    /// The agent's report each validation returns (its `perf` counters), if any.
    agent: Option<v2k_validator::AgentReport>,
}

impl BootStages for Recording {
    fn inject(
        &self,
        opts: &InjectOptions,
        _: &windows::Options,
        _: &mut dyn FnMut(&str),
    ) -> Result<Injected, v2k_drivers_injector::Error> {
        // Edits the guest in place, as the injector does, so the reuse rule sees it.
        for d in &opts.disks {
            run(Command::new("qemu-io")
                .args(["-f", "qcow2", "-c", "write -P 0x5a 0 64k"])
                .arg(d));
        }
        self.injected.lock().unwrap().push(opts.vm.name.clone());
        let mac = &opts.vm.nics[0].mac;
        let log: ConversionLog = serde_json::from_value(serde_json::json!({
            "schema-version": 1, "type": "conversion-log", "tool": "recording", "vm": opts.vm.name,
            "disks": opts.disks, "disk-bus": "virtio-blk", "accel": "tcg", "status": "converted",
            "inspection": {
                "root": "/dev/sda1", "os-type": "linux", "distro": "debian",
                "product-name": "Debian 12", "major-version": 12, "minor-version": 0,
                "arch": "x86_64", "package-format": "deb",
                "mounts": [{"mountpoint": "/", "device": "/dev/sda1"}],
                "kernels": [], "bootloader": {"kind": "grub2-bios"},
                "network-config": ["ifupdown"], "configured-nics": [], "already-converted": false
            },
            "changes": [{"step": "initramfs", "file": "/boot/initrd.img", "action": "rebuilt"}],
            "nic-names": [{"name": "ens192", "mac": mac, "source": "config-order"}],
            "agent": {"installed": true, "keep": false, "line-prefix": "V2K-AGENT"},
            "seconds": 1.0,
            "timings": {"launch": 0.5, "inspect": 0.2, "changes": 0.2, "close": 0.1}
        }))
        .expect("a conversion log");
        Ok(Injected { log, windows: None })
    }

    fn validate(
        &self,
        target: &Target,
        _: &Expectations,
        opts: &v2k_validator::Options,
    ) -> Result<Validation, v2k_validator::Error> {
        self.validated.lock().unwrap().push(target.name.clone());
        std::fs::create_dir_all(&opts.work_dir).unwrap();
        let shot = opts.work_dir.join("screen.png");
        std::fs::write(&shot, PNG).unwrap();
        Ok(Validation {
            backend: opts.backend.clone(),
            accel: target.accel,
            passed: true,
            checks: vec![Check {
                id: "agent-report".into(),
                passed: true,
                reason: "the agent reported after 1.5 s".into(),
            }],
            evidence: Evidence {
                serial_log: opts.work_dir.join("serial.log"),
                screenshot: Some(shot),
                boot_seconds: Some(1.5),
                agent: self.agent.clone(),
                ..Evidence::default()
            },
            total_seconds: 2.0,
        })
    }
}

/// A plan of three VMs, two at a time: `a` validated, `b` migrated only, `c` without its
/// disk.
fn plan(dir: &Path) -> PathBuf {
    let a = vm(dir, "a", "00:50:56:00:10:01", true);
    let b = vm(dir, "b", "00:50:56:00:10:02", true);
    let c = vm(dir, "c", "00:50:56:00:10:03", false);
    let p = dir.join("plan.yaml");
    std::fs::write(
        &p,
        format!(
            "version: 1\nrun-dir: run\ndefaults:\n  backend: qemu\n  accel: tcg\n\
             networks:\n  VM Network: user\nlimits:\n  vms: 2\nwaves:\n  - name: w1\n    vms:\n\
             \x20     - source: {}\n      - source: {}\n        validate: false\n      - source: {}\n",
            a.display(),
            b.display(),
            c.display()
        ),
    )
    .unwrap();
    p
}

fn run_plan(p: &Path, boot: &Recording, retry_failed: bool) -> v2k_waves::RunSummary {
    let mut plan = v2k_waves::plan::load(p).expect("plan");
    assert!(v2k_waves::expand(&mut plan).is_empty());
    let checks = v2k_waves::check(&plan);
    assert!(checks.problems.is_empty(), "{:?}", checks.problems);
    let opts = RunOptions {
        retry_failed,
        ..RunOptions::default()
    };
    let quiet = |_: RunEvent| {};
    v2k_waves::run_with(&plan, &checks, &opts, boot, &quiet).expect("the run")
}

fn journal(run: &Path) -> Vec<Value> {
    std::fs::read_to_string(run.join("journal.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn status_of(s: &v2k_waves::RunSummary, vm: &str) -> (String, Option<String>) {
    let v = s.waves[0].vms.iter().find(|v| v.name == vm).unwrap();
    (v.status.clone(), v.result.clone())
}

#[test]
fn a_validated_vm_reaches_the_wave_report_with_its_verdict_and_thumbnail() {
    let t = tempfile::tempdir().unwrap();
    let p = plan(t.path());
    let boot = Recording::default();
    let s = run_plan(&p, &boot, false);
    assert_eq!(s.exit_code, v2k_waves::EXIT_FAILED);
    assert_eq!(
        status_of(&s, "a"),
        ("migrated".into(), Some("validated".into()))
    );
    assert_eq!(
        status_of(&s, "b"),
        ("migrated".into(), Some("not-validated".into()))
    );
    assert_eq!(status_of(&s, "c").0, "failed");
    let mut injected = boot.injected.lock().unwrap().clone();
    injected.sort();
    assert_eq!(injected, ["a", "b"]);
    assert_eq!(boot.validated.lock().unwrap().as_slice(), ["a"]);

    let run = t.path().join("run");
    let html = std::fs::read_to_string(run.join("w1/wave-report.html")).unwrap();
    let thumb = format!(
        "src=\"data:image/png;base64,{}\"",
        v2k_migrate::report::base64(PNG)
    );
    assert!(html.contains(&thumb), "thumbnail not embedded: {html}");
    assert!(html.contains("../vms/a/out/report.html"), "{html}");
    assert!(
        html.contains("agent-report"),
        "the check is not shown: {html}"
    );
    let r: Value =
        serde_json::from_slice(&std::fs::read(run.join("w1/wave-report.json")).unwrap()).unwrap();
    let a = r["vms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "a");
    assert_eq!(a.unwrap()["validation"]["passed"], true, "{r:#}");
    let c = r["vms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "c");
    assert!(
        c.unwrap()["reason"]
            .as_str()
            .unwrap()
            .contains("disk-missing"),
        "{r:#}"
    );
}

#[test]
fn a_run_cut_inside_a_vm_resumes_it_and_leaves_the_others_alone() {
    let t = tempfile::tempdir().unwrap();
    let p = plan(t.path());
    let boot = Recording::default();
    run_plan(&p, &boot, false);
    let run = t.path().join("run");

    // Make the journal what a kill inside `b`'s migration leaves: its stage records
    // but no `vm-finished` (the journal is written first, the marker last), no wave or
    // run end, and the marker gone. The other VMs' records stay whatever their order
    // (they ran in parallel): `a` and `c` had finished.
    let text = std::fs::read_to_string(run.join("journal.jsonl")).unwrap();
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| {
            let r: Value = serde_json::from_str(l).unwrap();
            !(r["type"] == "vm-finished" && r["vm"] == "b")
                && r["type"] != "wave-finished"
                && r["type"] != "run-finished"
        })
        .collect();
    std::fs::write(run.join("journal.jsonl"), kept.join("\n") + "\n").unwrap();
    std::fs::remove_file(run.join("vms/b/done.json")).unwrap();
    let a_disk = run.join("vms/a/out/disks/scsi0-0.qcow2");
    let a_mtime = std::fs::metadata(&a_disk).unwrap().modified().unwrap();

    let again = Recording::default();
    let s = run_plan(&p, &again, false);
    assert_eq!(
        status_of(&s, "b"),
        ("migrated".into(), Some("not-validated".into()))
    );
    assert_eq!(
        status_of(&s, "a"),
        ("migrated".into(), Some("validated".into()))
    );
    // `a` finished before the cut: verified by its hashes, not migrated again.
    assert!(again.validated.lock().unwrap().is_empty());
    assert_eq!(
        std::fs::metadata(&a_disk).unwrap().modified().unwrap(),
        a_mtime
    );
    // `b` ran again in its directory and reused its converted, injected disks.
    assert!(
        again.injected.lock().unwrap().is_empty(),
        "b injected twice"
    );
    let j = journal(&run);
    let resumed = j.iter().position(|r| r["type"] == "run-resumed").unwrap();
    let after = &j[resumed..];
    assert!(after
        .iter()
        .any(|r| r["type"] == "vm-verified" && r["vm"] == "a"));
    assert!(!after
        .iter()
        .any(|r| r["type"] == "vm-started" && r["vm"] == "a"));
    let b_stages: Vec<(&str, &str)> = after
        .iter()
        .filter(|r| r["type"] == "stage" && r["vm"] == "b")
        .map(|r| (r["stage"].as_str().unwrap(), r["status"].as_str().unwrap()))
        .collect();
    assert!(b_stages.contains(&("convert", "reused")), "{b_stages:?}");
    assert!(b_stages.contains(&("inject", "reused")), "{b_stages:?}");
    assert!(run.join("vms/b/done.json").is_file());
    // `c` failed before the cut: it keeps its result, not run again.
    assert!(!after
        .iter()
        .any(|r| r["type"] == "vm-started" && r["vm"] == "c"));
    assert_eq!(status_of(&s, "c").0, "failed");

    // Its disk restored, `retry_failed` migrates `c` and only `c`.
    make_disk(&t.path().join("c/disk.vmdk"));
    let retry = Recording::default();
    let s = run_plan(&p, &retry, true);
    assert_eq!(s.exit_code, v2k_waves::EXIT_OK);
    assert_eq!(retry.injected.lock().unwrap().as_slice(), ["c"]);
    assert_eq!(
        status_of(&s, "c"),
        ("migrated".into(), Some("validated".into()))
    );
}

/// The same plan split over two conversion hosts (`assign`), each shard run VM-free,
/// the runs merged: every VM once, with the host that ran it, the validated VM's
/// verdict and thumbnail carried into the merged report, the failed VM's reason kept.
#[test]
fn shards_of_a_plan_run_apart_merge_into_one_report_with_each_vms_host() {
    let t = tempfile::tempdir().unwrap();
    let p = plan(t.path());
    let mut whole = v2k_waves::plan::load(&p).unwrap();
    assert!(v2k_waves::expand(&mut whole).is_empty());
    let checks = v2k_waves::check(&whole);
    let opts = v2k_waves::assign::Options {
        hosts: vec!["conv1".into(), "conv2".into()],
        ..Default::default()
    };
    let a = v2k_waves::assign::assign(&whole, &checks, &opts, None).unwrap();
    let shards = t.path().join("shards");
    v2k_waves::assign::write(&shards, &a).unwrap();
    assert_eq!(a.record.shards.len(), 2);
    let boot = Recording::default();
    let mut runs = Vec::new();
    for s in &a.record.shards {
        run_plan(&shards.join(&s.plan), &boot, false);
        runs.push(shards.join(format!("{}.run", s.id)));
    }
    let host_runs: Vec<_> = runs
        .iter()
        .map(|d| v2k_waves::report::HostRun::read(d).unwrap())
        .collect();
    assert_eq!(host_runs[0].host, "conv1");
    let merged = v2k_waves::report::merge(&host_runs);
    assert_eq!(merged.len(), 1);
    let r = &merged[0];
    assert_eq!(r.hosts, ["conv1", "conv2"]);
    assert_eq!(
        (r.summary.total, r.summary.migrated, r.summary.failed),
        (3, 2, 1)
    );
    assert!(r.conflicts.is_empty());
    for v in &r.vms {
        let ran_on = a
            .record
            .shards
            .iter()
            .find(|s| s.vms.iter().any(|x| x.name == v.name))
            .unwrap();
        assert_eq!(v.host.as_deref(), Some(ran_on.host.as_str()), "{}", v.name);
    }
    let va = r.vms.iter().find(|v| v.name == "a").unwrap();
    assert!(va.validation.as_ref().unwrap().passed);
    let vc = r.vms.iter().find(|v| v.name == "c").unwrap();
    assert!(vc.reason.as_deref().unwrap().contains("disk-missing"));
    let out = t.path().join("merged");
    v2k_outfile::create_dir(&out).unwrap();
    let html = std::fs::read_to_string(v2k_waves::report::write(&out, r).unwrap()).unwrap();
    let thumb = format!(
        "src=\"data:image/png;base64,{}\"",
        v2k_migrate::report::base64(PNG)
    );
    assert!(html.contains(&thumb), "thumbnail not in the merged report");
    assert!(html.contains("Merged from 2 conversion host(s): conv1, conv2."));
}

/// A baseline file as `v2k baseline` writes it (the documented format, written out):
/// CPU ready 1 %, reads 2 ms (medians of the day).
fn baseline(path: &Path, vm: &str) {
    let stat = |counter: &str, unit: &str, median: f64| {
        serde_json::json!({"counter": counter, "unit": unit, "samples": 288,
                           "min": 0.0, "median": median, "p95": median * 2.0})
    };
    let doc = serde_json::json!({
        "schema-version": 1, "vm": vm, "source": format!("vsphere://u@vc/DC0/vm/{vm}"),
        "baseline": {"moref": "vm-1", "interval-seconds": 300, "from": 0, "to": 86400,
            "metrics": {
                "cpu-ready-percent": stat("cpu.ready.summation", "% of interval", 1.0),
                "disk-read-latency-ms": stat("virtualDisk.totalReadLatency.average", "ms", 2.0),
            },
            "missing": ["net.droppedRx.summation", "net.droppedTx.summation"]}
    });
    std::fs::write(path, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
}

/// Before and after in a wave: `baseline-dir:` points at the baselines, the recording
/// validation's agent reads 12 ms per read (2 ms before: a regression). `slow`
/// regresses as a warning and migrates; `strict` (`fail-on-regression: true`) fails,
/// counted as a failed change of kind `performance`; `nobase` has no file and says so.
/// The wave report shows per VM whether it regressed.
#[test]
fn a_plans_baselines_give_each_vm_before_and_after_and_a_strict_regression_fails_it() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let (slow, strict, nobase) = (
        vm(d, "slow", "00:50:56:00:00:a1", true),
        vm(d, "strict", "00:50:56:00:00:a2", true),
        vm(d, "nobase", "00:50:56:00:00:a3", true),
    );
    std::fs::create_dir_all(d.join("baselines")).unwrap();
    baseline(&d.join("baselines/slow.baseline.json"), "slow");
    baseline(&d.join("baselines/strict.baseline.json"), "strict");
    let p = d.join("plan.yaml");
    std::fs::write(
        &p,
        format!(
            "version: 1\nrun-dir: run\ndefaults:\n  backend: qemu\n  accel: tcg\n\
             \x20 baseline-dir: baselines\n  thresholds:\n    cpu-ready-percent: 2\n\
             networks:\n  VM Network: user\nlimits:\n  vms: 1\nwaves:\n  - name: w1\n    vms:\n\
             \x20     - source: {}\n      - source: {}\n        fail-on-regression: true\n\
             \x20     - source: {}\n",
            slow.display(),
            strict.display(),
            nobase.display()
        ),
    )
    .unwrap();
    let boot = Recording {
        agent: Some(
            serde_json::from_value(serde_json::json!({
                "v": 1, "ok": true, "boot": true, "root-rw": true, "uptime": 300.0,
                "perf": {"cpu": [1000, 20], "disks": [["vda", 10, 120, 0, 0]], "nics": []}
            }))
            .unwrap(),
        ),
        ..Recording::default()
    };
    let s = run_plan(&p, &boot, false);
    assert_eq!(
        status_of(&s, "slow"),
        ("migrated".into(), Some("validated".into()))
    );
    assert_eq!(
        status_of(&s, "strict"),
        ("failed".into(), Some("performance-regression".into()))
    );
    assert_eq!(
        status_of(&s, "nobase"),
        ("migrated".into(), Some("validated".into()))
    );
    let run = d.join("run");
    let r: Value =
        serde_json::from_slice(&std::fs::read(run.join("w1/wave-report.json")).unwrap()).unwrap();
    let vm = |n: &str| {
        r["vms"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == n)
            .unwrap()
            .clone()
    };
    let perf = vm("slow")["performance"].clone();
    assert_eq!(
        perf["regressions"],
        serde_json::json!(["disk-read-latency-ms"]),
        "{perf:#}"
    );
    assert_eq!(perf["failed"], false);
    // The plan's CPU threshold (2 points) is used: 1 % → 2 % is worse, not a regression.
    let report: Value =
        serde_json::from_slice(&std::fs::read(run.join("vms/slow/out/report.json")).unwrap())
            .unwrap();
    assert_eq!(
        report["performance"]["thresholds"]["cpu-ready-percent"],
        2.0
    );
    assert_eq!(report["performance"]["rows"][0]["verdict"], "worse");
    assert!(
        report["concerns"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["id"] == "performance-regression" && c["severity"] == "warning"),
        "{report:#}"
    );
    let strict = vm("strict");
    assert_eq!(strict["performance"]["failed"], true);
    assert!(
        strict["reason"]
            .as_str()
            .unwrap()
            .starts_with("performance regression: Regression in 1 of 2 metric(s) compared"),
        "{strict:#}"
    );
    assert_eq!(
        r["metrics"]["failures"][0]["kind"], "performance",
        "{:#}",
        r["metrics"]
    );
    let verdict = vm("nobase")["performance"]["verdict"].clone();
    assert!(
        verdict
            .as_str()
            .unwrap()
            .starts_with("Not compared: no baseline (")
            && verdict
                .as_str()
                .unwrap()
                .contains("nobase.baseline.json: not found"),
        "{verdict}"
    );
    let html = std::fs::read_to_string(run.join("w1/wave-report.html")).unwrap();
    assert!(
        html.contains("<li>performance: <b>regression</b> (disk-read-latency-ms)</li>")
            && html
                .contains("<li>performance: <b>REGRESSION, failed</b> (disk-read-latency-ms)</li>"),
        "{html}"
    );
    // junit.xml: each compared VM's verdict as its own properties; the strict one's
    // regression is also its failure.
    let junit = std::fs::read_to_string(run.join("w1/junit.xml")).unwrap();
    let case = |n: &str| {
        let at = junit
            .find(&format!("name=\"{n}\""))
            .unwrap_or_else(|| panic!("no testcase {n}: {junit}"));
        let end = junit[at..]
            .find("</testcase>")
            .map_or(junit.len(), |e| at + e);
        junit[at..end].to_string()
    };
    let slow = case("slow");
    assert!(
        slow.contains(
            "<property name=\"v2k.performance.regressions\" value=\"disk-read-latency-ms\"/>"
        ) && slow.contains("<property name=\"v2k.performance.failed\" value=\"false\"/>")
            && slow.contains(
                "<property name=\"v2k.performance.verdict\" value=\"Regression in 1 of 2"
            )
            && !slow.contains("<failure"),
        "{slow}"
    );
    let strict = case("strict");
    assert!(
        strict.contains("<property name=\"v2k.performance.failed\" value=\"true\"/>")
            && strict.contains("<failure message=\"performance regression: Regression in 1 of 2"),
        "{strict}"
    );
    assert!(
        case("nobase").contains("<property name=\"v2k.performance.regressions\" value=\"none\"/>"),
        "{junit}"
    );
}
