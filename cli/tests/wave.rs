//! End-to-end tests of `v2k wave` with the real binary: plan errors are reported with
//! their line numbers and exit 2 before anything runs; a wave of both fixture guests
//! plus a deliberately broken VM (its VMX copied without its disks), two at a time;
//! a run SIGKILLed mid-wave and resumed. Guests come from tests/fixtures (built or
//! reused); a missing prerequisite fails the test. Nothing here boots a guest
//! (docs/architecture.md, "Testing"): one appliance launch (the injector on
//! debian-classic) is this file's only heavy step.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use v2k_fixtures::{build, Variant};

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

/// `live: true` where `v2k migrate --live` would refuse it is a plan error, printed as
/// `PLAN:LINE: VM NAME: why` by `check` and `run` alike (exit 2, nothing run): a
/// local source, and a plan that delivers to a `target:`. Nothing boots or connects:
/// the refusals are the plan's own.
#[test]
fn live_settings_migrate_would_refuse_are_plan_errors_naming_the_vm() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("plan.yaml");
    std::fs::write(
        &p,
        "version: 1\n\
         defaults:\n  live: true\n\
         target:\n  uri: qemu:///system\n  pool: default\n\
         waves:\n  - name: w\n    vms:\n\
         \x20     - source: a.vmx\n\
         \x20     - source: vsphere://u@127.0.0.1:1/DC0/vm/web01\n",
    )
    .unwrap();
    for cmd in [["wave", "check"], ["wave", "run"]] {
        let o = v2k(&cmd, &p);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(
            err.contains("plan.yaml:10: VM a: `live: true` is for vSphere sources"),
            "{err}"
        );
        assert!(
            err.contains(
                "plan.yaml:11: VM web01: `live: true` runs the VM in `connect:`'s libvirt"
            ),
            "{err}"
        );
    }
    assert!(!t.path().join("plan.run").exists(), "nothing ran");
}

/// A journal is a file in the run directory that anyone who can write there can
/// edit: a wave named `../escaped` in it must not make `wave report` (or `status`)
/// write outside the run directory. Its names are refused as a plan's are: exit 2.
#[test]
fn a_journal_wave_name_that_escapes_the_run_directory_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let run = t.path().join("run");
    std::fs::create_dir(&run).unwrap();
    for (wave, vm) in [("../escaped", "vm"), ("w", "../../vm-escaped"), ("w", "")] {
        let journal = format!(
            "{{\"time\":1.0,\"type\":\"run-started\",\"schema-version\":1,\"plan\":\"/p.yaml\",\"plan-hash\":\"00\",\"waves\":[{{\"name\":{wave:?},\"vms\":[{{\"name\":{vm:?},\"source\":\"/a.vmx\",\"out\":\"/o\",\"validate\":false,\"disks\":1}}]}}]}}\n\
             {{\"time\":2.0,\"type\":\"wave-started\",\"wave\":{wave:?}}}\n"
        );
        std::fs::write(run.join("journal.jsonl"), journal).unwrap();
        for cmd in ["report", "status"] {
            let o = Command::new(V2K)
                .args(["wave", cmd])
                .arg(&run)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(2), "{cmd} {wave} {vm}: {err}");
            assert!(
                err.contains("journal.jsonl")
                    && err.contains("line 1")
                    && err.contains("not a plain name"),
                "{err}"
            );
        }
        assert!(!t.path().join("escaped").exists());
        let mut left: Vec<_> = std::fs::read_dir(t.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        left.sort();
        assert_eq!(left, vec![std::ffi::OsString::from("run")], "{wave} {vm}");
    }
}

/// A VM whose VMX names disks that are not there: it must fail with that reason.
fn broken_vmx(dir: &Path, good: &Path) -> PathBuf {
    let d = dir.join("broken");
    std::fs::create_dir_all(&d).unwrap();
    let p = d.join("broken.vmx");
    std::fs::copy(good, &p).unwrap();
    p
}

/// How the wave of three runs: the end-to-end wave tests boot nothing (the pipeline's
/// boots are cli/tests/migrate.rs's; a validated VM in a wave report is
/// waves/tests/recorded.rs's).
struct Shape {
    /// VMs migrating at once.
    vms: usize,
    /// Whether debian-classic goes through the injector (debian-dracut-lvm never does
    /// here: its injection is cli/tests/migrate.rs's).
    inject_classic: bool,
}

fn plan(dir: &Path, classic: &Path, dracut: &Path, broken: &Path, shape: &Shape) -> PathBuf {
    let text = format!(
        "version: 1
run-dir: run
defaults:
  backend: qemu
  validate: false
  hooks:
    post:
      command: [sh, -c, 'echo post $V2K_VM_NAME $V2K_RESULT >> {log}']
      timeout: 30
networks:
  VM Network: user
limits:
  vms: {vms}
waves:
  - name: cutover-1
    vms:
      - source: {classic}
        name: classic
        inject: {inject_classic}
      - source: {dracut}
        name: dracut
        inject: false
      - source: {broken}
        name: broken
",
        log = dir.join("hooks.log").display(),
        vms = shape.vms,
        inject_classic = shape.inject_classic,
        classic = classic.display(),
        dracut = dracut.display(),
        broken = broken.display(),
    );
    let p = dir.join("plan.yaml");
    std::fs::write(&p, text).unwrap();
    p
}

fn journal(run: &Path) -> Vec<Value> {
    std::fs::read_to_string(run.join("journal.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn wave_report(run: &Path) -> Value {
    serde_json::from_slice(
        &std::fs::read(run.join("cutover-1/wave-report.json")).expect("wave-report.json"),
    )
    .unwrap()
}

fn vm<'a>(r: &'a Value, name: &str) -> &'a Value {
    r["vms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
        .unwrap()
}

fn assert_results(run: &Path) -> Value {
    let r = wave_report(run);
    assert_eq!(r["summary"]["total"], 3, "{r:#}");
    assert_eq!(r["summary"]["migrated"], 2, "{r:#}");
    assert_eq!(r["summary"]["failed"], 1, "{r:#}");
    assert_eq!(vm(&r, "classic")["status"], "migrated");
    assert_eq!(vm(&r, "classic")["result"], "not-validated");
    assert_eq!(vm(&r, "dracut")["status"], "migrated");
    assert_eq!(vm(&r, "dracut")["result"], "not-validated");
    let b = vm(&r, "broken");
    assert_eq!(b["status"], "failed");
    assert!(
        b["reason"].as_str().unwrap().contains("disk-missing"),
        "{b:#}"
    );
    let junit = std::fs::read_to_string(run.join("cutover-1/junit.xml")).unwrap();
    assert_eq!(junit.matches("<testcase ").count(), 3, "{junit}");
    assert_eq!(junit.matches("<failure ").count(), 1, "{junit}");
    assert!(junit.contains("disk-missing"), "{junit}");
    r
}

/// Both fixture guests (built or reused) and the broken VM in one plan; returns the
/// test's directory, the plan and the run directory it names.
fn wave_of_three(shape: &Shape) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let classic = build(Variant::DebianClassic).unwrap_or_else(|e| panic!("fixture: {e}"));
    let dracut = build(Variant::DebianDracutLvm).unwrap_or_else(|e| panic!("fixture: {e}"));
    let t = tempfile::tempdir().unwrap();
    let broken = broken_vmx(t.path(), &classic.vmx_sparse.vmx);
    let p = plan(
        t.path(),
        &classic.vmx_sparse.vmx,
        &dracut.vmx_sparse.vmx,
        &broken,
        shape,
    );
    let run = t.path().join("run");
    (t, p, run)
}

/// The real binary on the real fixtures, two at a time: debian-classic through the
/// injector (the plan's settings reach the appliance), debian-dracut-lvm converted only,
/// the broken VM failed with its reason; reports, JUnit, hooks and status.
#[test]
fn a_wave_of_three_two_at_a_time_migrates_the_good_vms_and_fails_the_broken_one() {
    let (t, p, run) = wave_of_three(&Shape {
        vms: 2,
        inject_classic: true,
    });

    let o = v2k(&["wave", "check", "--json"], &p);
    assert_eq!(
        o.status.code(),
        Some(1),
        "check: the broken VM will fail; {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let c: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(c["problems"].as_array().unwrap().len(), 0, "{c:#}");
    assert_eq!(c["vms"][0]["disks"], 2);

    let o = v2k(&["wave", "run", "--json"], &p);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "exit code; stderr: {stderr}");
    let events: Vec<Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(events
        .iter()
        .any(|e| e["type"] == "vm-finished" && e["vm"] == "broken" && e["status"] == "failed"));
    assert_eq!(events.last().unwrap()["type"], "run-finished");
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "disk-progress" && e["vm"] == "dracut" && e["phase"] == "done"),
        "no per-disk progress events"
    );

    let r = assert_results(&run);
    let c = vm(&r, "classic");
    assert!(c["bytes"].as_u64().unwrap() > 0);
    // The injector ran on classic (its conversion log is in the VM's report), not on
    // dracut (`inject: false` says so as a concern).
    let vm_report = |name: &str| -> Value {
        let out = PathBuf::from(vm(&r, name)["out"].as_str().unwrap());
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap()
    };
    let classic_report = vm_report("classic");
    assert_eq!(
        classic_report["guest-changes"]["status"], "converted",
        "{classic_report:#}"
    );
    let dracut_report = vm_report("dracut");
    assert!(
        dracut_report["concerns"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["id"] == "guest-not-converted"),
        "{dracut_report:#}"
    );
    let html = std::fs::read_to_string(run.join("cutover-1/wave-report.html")).unwrap();
    assert!(
        html.contains("../vms/classic/out/report.html"),
        "no link to the VM report"
    );
    assert!(!html.contains("src=\"http") && !html.contains("href=\"http"));
    // Two ran at once: the second VM started before the first finished.
    let j = journal(&run);
    let idx = |ty: &str, vm: &str| {
        j.iter()
            .position(|r| r["type"] == ty && r["vm"] == vm)
            .unwrap()
    };
    assert!(
        idx("vm-started", "dracut")
            < idx("vm-finished", "classic").min(idx("vm-finished", "dracut"))
    );
    // Hooks ran with their environment, output captured.
    let hooks = std::fs::read_to_string(t.path().join("hooks.log")).unwrap();
    assert!(
        hooks.contains("post classic not-validated") && hooks.contains("post broken failed"),
        "{hooks}"
    );
    let o = v2k(&["wave", "status"], &run);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stdout).contains("finished"));
}

/// SIGKILL mid-wave, then the same plan again. One VM at a time and no injector, so
/// the kill lands in the next VM's conversion (or between VMs) within seconds; a kill
/// inside the injector is migrate's case (migrate/tests/pipeline.rs, and
/// cli/tests/migrate.rs with a real appliance).
#[test]
fn a_wave_killed_mid_run_resumes_without_redoing_finished_work() {
    let (_t, p, run) = wave_of_three(&Shape {
        vms: 1,
        inject_classic: false,
    });

    let mut child = Command::new(V2K)
        .args(["wave", "run", "--json"])
        .arg(&p)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill as soon as one good VM is journalled as finished while another is running.
    let start = Instant::now();
    let finished_before = loop {
        assert!(
            start.elapsed() < Duration::from_secs(1200),
            "no VM finished: {:#?}",
            journal(&run)
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it could be killed"
        );
        let j = journal(&run);
        let done: Vec<String> = j
            .iter()
            .filter(|r| r["type"] == "vm-finished" && r["status"] == "migrated")
            .map(|r| r["vm"].as_str().unwrap().to_string())
            .collect();
        if !done.is_empty() {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            break done;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let marker = run.join("vms").join(&finished_before[0]).join("done.json");
    let disk = run
        .join("vms")
        .join(&finished_before[0])
        .join("out/disks/scsi0-0.qcow2");
    let mtime = std::fs::metadata(&disk).unwrap().modified().unwrap();

    let o = v2k(&["wave", "status"], &run);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("interrupted"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );

    let o = v2k(&["wave", "run", "--json"], &p);
    assert_eq!(
        o.status.code(),
        Some(1),
        "resume; stderr: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_results(&run);
    assert!(marker.is_file());
    assert_eq!(
        std::fs::metadata(&disk).unwrap().modified().unwrap(),
        mtime,
        "a finished disk was rewritten"
    );

    let j = journal(&run);
    let resumed = j
        .iter()
        .position(|r| r["type"] == "run-resumed")
        .expect("run-resumed");
    let after = &j[resumed..];
    for name in &finished_before {
        assert!(
            after
                .iter()
                .any(|r| r["type"] == "vm-verified" && r["vm"] == name.as_str()),
            "{name} not re-verified"
        );
        assert!(
            !after
                .iter()
                .any(|r| r["type"] == "vm-started" && r["vm"] == name.as_str()),
            "{name} migrated twice"
        );
    }
    // No finished stage was done twice: a VM's convert is `done` once, and later only
    // `reused` (a conversion cut by the kill never reached `done`).
    for name in ["classic", "dracut"] {
        let stages: Vec<(&str, &str)> = j
            .iter()
            .filter(|r| r["type"] == "stage" && r["vm"] == name)
            .map(|r| (r["stage"].as_str().unwrap(), r["status"].as_str().unwrap()))
            .collect();
        let converts = stages.iter().filter(|s| **s == ("convert", "done")).count();
        assert_eq!(
            converts, 1,
            "{name}: convert done {converts} times: {stages:?}"
        );
        let finished = j
            .iter()
            .filter(|r| r["type"] == "vm-finished" && r["vm"] == name && r["status"] == "migrated")
            .count();
        assert_eq!(finished, 1, "{name} finished {finished} times");
    }
    let broken_runs = j
        .iter()
        .filter(|r| r["type"] == "vm-finished" && r["vm"] == "broken")
        .count();
    assert_eq!(broken_runs, 1, "the failed VM was run again");
}

/// A wave moves a data VM (`inject: false`, no boot, no libguestfs) whose VMX says
/// EFI: its run directory gets the VM's own UEFI variable store, a copy of the plain
/// template, and the target points at it, never at the system's template file.
#[test]
fn a_wave_gives_an_efi_vm_its_own_variable_store() {
    let t = tempfile::tempdir().unwrap();
    let disk = t.path().join("data.vmdk");
    v2k_fixtures::sparse_vmdk(&disk, "4M", None);
    let vmx = t.path().join("data.vmx");
    std::fs::write(
        &vmx,
        "displayName = \"efi-data\"\nguestOS = \"debian12-64\"\nfirmware = \"efi\"\n\
         numvcpus = \"1\"\nmemSize = \"512\"\nscsi0.present = \"TRUE\"\n\
         scsi0.virtualDev = \"pvscsi\"\nscsi0:0.present = \"TRUE\"\n\
         scsi0:0.fileName = \"data.vmdk\"\nethernet0.present = \"TRUE\"\n\
         ethernet0.addressType = \"static\"\nethernet0.address = \"00:50:56:00:00:2a\"\n",
    )
    .unwrap();
    let p = t.path().join("plan.yaml");
    std::fs::write(
        &p,
        format!(
            "version: 1\nrun-dir: run\nwaves:\n  - name: w\n    vms:\n      - source: {}\n        \
             name: efi-data\n        inject: false\n        validate: false\n",
            vmx.display()
        ),
    )
    .unwrap();
    let o = v2k(&["wave", "run"], &p);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let r: Value = serde_json::from_slice(
        &std::fs::read(t.path().join("run/w/wave-report.json")).expect("wave-report.json"),
    )
    .unwrap();
    let out = PathBuf::from(vm(&r, "efi-data")["out"].as_str().unwrap());
    let vars = out.join("efi-data_VARS.fd");
    let template = "/usr/share/OVMF/OVMF_VARS_4M.fd";
    assert_eq!(
        std::fs::read(&vars).expect("the VM's variable store"),
        std::fs::read(template).unwrap()
    );
    let argv = std::fs::read_to_string(out.join("qemu-cmdline.json")).unwrap();
    assert!(argv.contains(&*vars.to_string_lossy()), "{argv}");
    assert!(!argv.contains(template), "{argv}");
    let report: Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    assert!(
        report["concerns"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["id"] == "guest-not-converted"),
        "{report:#}"
    );
}
