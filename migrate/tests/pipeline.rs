//! The pipeline's orchestration without a VM: real VMX files and real VMDKs (made by
//! qemu-img), real conversions and hashes, and a recording implementation of the two
//! stages that boot something (the libguestfs appliance, the validation boot). The
//! recording injector edits the disks as the real one does (it writes into them), so
//! the reuse rule sees what it would see after a real injection.
//!
//! What these prove: which stages a rerun reuses after a stop at each stage, what is
//! refused before anything is written, what the report holds, and that an EFI guest
//! gets its own variable store. What only a boot shows stays in cli/tests/migrate.rs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use v2k_drivers_injector::{windows, ConversionLog, InjectOptions, Injected};
use v2k_kvm_target::Target;
use v2k_migrate::report::{Outcome, StageStatus};
use v2k_migrate::{
    migrate_with, Backend, BootStages, DiskBus, Error, Event, NetworkMap, Options,
    RemoteSource as _,
};
use v2k_validator::{Evidence, Expectations, Validation};

const MAC: &str = "00:50:56:9a:00:01";

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

/// A VM directory: `vm.vmx` with one monolithicSparse disk of 8 MiB holding a
/// pattern, and one NIC.
fn vm_dir(dir: &Path, extra: &str) -> PathBuf {
    let disk = dir.join("vm.vmdk");
    v2k_fixtures::sparse_vmdk(&disk, "8M", Some((0x11, "1M", "256k")));
    let vmx = dir.join("vm.vmx");
    std::fs::write(
        &vmx,
        format!(
            ".encoding = \"UTF-8\"\nconfig.version = \"8\"\nvirtualHW.version = \"19\"\n\
             displayName = \"pipe\"\nguestOS = \"debian12-64\"\nnumvcpus = \"2\"\nmemSize = \"1024\"\n\
             scsi0.present = \"TRUE\"\nscsi0.virtualDev = \"pvscsi\"\nscsi0:0.present = \"TRUE\"\n\
             scsi0:0.fileName = \"vm.vmdk\"\nethernet0.present = \"TRUE\"\n\
             ethernet0.virtualDev = \"vmxnet3\"\nethernet0.networkName = \"VM Network\"\n\
             ethernet0.addressType = \"static\"\nethernet0.address = \"{MAC}\"\n{extra}"
        ),
    )
    .unwrap();
    vmx
}

fn options(source: &Path, out: &Path) -> Options {
    Options {
        source: source.to_path_buf(),
        out: out.to_path_buf(),
        vm_name: None,
        compress: false,
        disk_bus: DiskBus::VirtioBlk,
        network_map: NetworkMap::default(),
        accel: Some(v2k_migrate::Accel::Tcg),
        keep_agent: false,
        inject: true,
        validate: true,
        backend: Backend::Qemu,
        boot_timeout: Duration::from_secs(5),
        keep_changes: false,
        define: None,
        deliver: None,
        check_after_cutover: true,
        cutover: None,
        verify_manifest: true,
        virtio_win: None,
        host_topology: v2k_migrate::HostSource::Local,
        performance: None,
        baseline_boot: false,
        live: None,
    }
}

/// What the recording boot stages were asked to do.
#[derive(Default)]
struct Recording {
    injected: Mutex<Vec<Vec<PathBuf>>>,
    validated: Mutex<Vec<Target>>,
    /// Make the next injection stop half-way (after it changed the disks), as a
    /// killed run would.
    fail_inject: Mutex<bool>,
    /// Make the validation report a failure.
    fail_validate: Mutex<bool>,
    /// The agent's report the validation returns (its `perf` counters), if any.
    agent: Mutex<Option<v2k_validator::AgentReport>>,
}

fn log(vm: &str, disks: &[PathBuf]) -> ConversionLog {
    serde_json::from_value(serde_json::json!({
        "schema-version": 1, "type": "conversion-log", "tool": "recording", "vm": vm,
        "disks": disks, "disk-bus": "virtio-blk", "accel": "tcg", "status": "converted",
        "inspection": {
            "root": "/dev/sda1", "os-type": "linux", "distro": "debian",
            "product-name": "Debian 12", "major-version": 12, "minor-version": 0,
            "arch": "x86_64", "package-format": "deb",
            "mounts": [{"mountpoint": "/", "device": "/dev/sda1"},
                       {"mountpoint": "/data", "device": "/dev/sda2"}],
            "kernels": [], "bootloader": {"kind": "grub2-bios"},
            "network-config": ["ifupdown"], "configured-nics": [], "already-converted": false
        },
        "changes": [{"step": "initramfs", "file": "/boot/initrd.img", "action": "rebuilt"}],
        "nic-names": [{"name": "ens192", "mac": MAC, "source": "config-order"}],
        "agent": {"installed": true, "keep": false, "line-prefix": "V2K-AGENT"},
        "seconds": 1.0,
        "timings": {"launch": 0.5, "inspect": 0.2, "changes": 0.2, "close": 0.1}
    }))
    .expect("a conversion log")
}

impl BootStages for Recording {
    fn inject(
        &self,
        opts: &InjectOptions,
        _: &windows::Options,
        _: &mut dyn FnMut(&str),
    ) -> Result<Injected, v2k_drivers_injector::Error> {
        // Edits the guest in place, as the injector does.
        for d in &opts.disks {
            run(Command::new("qemu-io")
                .args(["-f", "qcow2", "-c", "write -P 0x5a 0 64k"])
                .arg(d));
        }
        self.injected.lock().unwrap().push(opts.disks.clone());
        if std::mem::take(&mut *self.fail_inject.lock().unwrap()) {
            return Err(v2k_drivers_injector::Error::Refused(
                "stopped half-way (test)".into(),
            ));
        }
        Ok(Injected {
            log: log(&opts.vm.name, &opts.disks),
            windows: None,
        })
    }

    fn validate(
        &self,
        target: &Target,
        expect: &Expectations,
        opts: &v2k_validator::Options,
    ) -> Result<Validation, v2k_validator::Error> {
        self.validated.lock().unwrap().push(target.clone());
        // The expectations come from the conversion log: the pinned NIC and /data.
        assert_eq!(expect.mounts, vec!["/data".to_string()]);
        assert_eq!(expect.nics[0].name.as_deref(), Some("ens192"));
        assert_eq!(expect.nics[0].mac, MAC);
        Ok(Validation {
            backend: opts.backend.clone(),
            accel: target.accel,
            passed: !*self.fail_validate.lock().unwrap(),
            checks: vec![],
            evidence: Evidence {
                serial_log: opts.work_dir.join("serial.log"),
                boot_seconds: Some(1.5),
                agent: self.agent.lock().unwrap().clone(),
                ..Evidence::default()
            },
            total_seconds: 2.0,
        })
    }
}

fn stages(r: &v2k_migrate::Report) -> Vec<(String, StageStatus)> {
    r.stages
        .iter()
        .map(|s| (s.name.clone(), s.status))
        .collect()
}

fn quiet(_: Event) {}

#[test]
fn a_local_vm_runs_every_stage_and_reports_typed_results() {
    let d = tempfile::tempdir().unwrap();
    let vmx = vm_dir(d.path(), "");
    let out = d.path().join("out");
    let boot = Recording::default();
    let o = migrate_with(&options(&vmx, &out), None, &boot, &quiet).unwrap();
    use StageStatus::*;
    let want: Vec<(String, StageStatus)> = [
        ("inspect", Done),
        ("convert", Done),
        ("inject", Done),
        ("target", Done),
        ("validate", Done),
    ]
    .iter()
    .map(|(n, s)| (n.to_string(), *s))
    .collect();
    assert_eq!(stages(&o.report), want);
    assert_eq!(o.report.result, Outcome::Validated);
    assert_eq!(o.exit_code(), 0);
    // The stage timeline runs forward.
    let starts: Vec<f64> = o.report.stages.iter().map(|s| s.start_seconds).collect();
    assert!(starts.windows(2).all(|w| w[0] <= w[1]), "{starts:?}");
    // Typed hardware rows on both sides.
    let src = &o.report.source_hardware;
    assert_eq!(src.disks[0].id, "scsi0:0");
    assert_eq!(src.disks[0].controller.as_deref(), Some("pvscsi0"));
    assert_eq!(src.disks[0].capacity, Some(8 << 20));
    assert_eq!(src.nics[0].mac.as_deref(), Some(MAC));
    assert_eq!(src.nics[0].network.as_deref(), Some("VM Network"));
    let tgt = &o.report.target_hardware;
    assert_eq!(tgt.disks[0].id, "vda");
    assert_eq!(tgt.disks[0].bus, "virtio-blk");
    assert_eq!(tgt.nics[0].model, "virtio-net");
    // The disk the pipeline wrote is the one the report and the target name.
    let disk = out.join("disks/scsi0-0.qcow2");
    assert_eq!(o.report.disks[0].output.path, disk);
    assert!(o.report.disks[0].hash.verified);
    assert_eq!(boot.validated.lock().unwrap()[0].disks, vec![disk.clone()]);
    // Every file of the run directory is there, and report.json reads back typed.
    for f in [
        "vm.json",
        "state.json",
        "conversion-log.json",
        "domain.xml",
        "qemu-cmdline.json",
        "run-qemu.sh",
        "report.json",
        "report.html",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let back = v2k_migrate::RunDir::at(&out).load_report().unwrap();
    assert_eq!(back, o.report);
    assert!(v2k_migrate::RunDir::at(&out).reverify().is_ok());
}

#[test]
fn a_rerun_reuses_what_the_disks_still_prove_and_redoes_what_they_do_not() {
    let d = tempfile::tempdir().unwrap();
    let vmx = vm_dir(d.path(), "");
    let out = d.path().join("out");
    let boot = Recording::default();
    let opts = options(&vmx, &out);
    migrate_with(&opts, None, &boot, &quiet).unwrap();
    // Nothing changed: conversion and injection are reused, the guest is not edited again.
    let o = migrate_with(&opts, None, &boot, &quiet).unwrap();
    let st = stages(&o.report);
    assert_eq!(st[1], ("convert".into(), StageStatus::Reused));
    assert_eq!(st[2], ("inject".into(), StageStatus::Reused));
    assert_eq!(boot.injected.lock().unwrap().len(), 1);
    assert_eq!(o.report.guest_changes.as_ref().unwrap().changes.len(), 1);
    // A disk changed behind v2k's back: neither record holds, everything runs again.
    run(Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 0x77 2M 4k"])
        .arg(out.join("disks/scsi0-0.qcow2")));
    assert!(v2k_migrate::RunDir::at(&out).reverify().is_err());
    let o = migrate_with(&opts, None, &boot, &quiet).unwrap();
    let st = stages(&o.report);
    assert_eq!(st[1], ("convert".into(), StageStatus::Done));
    assert_eq!(st[2], ("inject".into(), StageStatus::Done));
    assert_eq!(boot.injected.lock().unwrap().len(), 2);
}

#[test]
fn a_run_stopped_inside_the_injector_converts_again_rather_than_trust_half_edited_disks() {
    let d = tempfile::tempdir().unwrap();
    let vmx = vm_dir(d.path(), "");
    let out = d.path().join("out");
    let boot = Recording::default();
    *boot.fail_inject.lock().unwrap() = true;
    let opts = options(&vmx, &out);
    let e = migrate_with(&opts, None, &boot, &quiet).unwrap_err();
    assert!(matches!(e, Error::Inject(_)), "{e:?}");
    assert!(!out.join("report.json").exists());
    // The disks were edited, then the run stopped: the converted record no longer
    // matches them, so the rerun converts from the source again.
    let o = migrate_with(&opts, None, &boot, &quiet).unwrap();
    let st = stages(&o.report);
    assert_eq!(st[1], ("convert".into(), StageStatus::Done), "{st:?}");
    assert_eq!(st[2], ("inject".into(), StageStatus::Done), "{st:?}");
}

#[test]
fn a_run_stopped_after_the_conversion_reuses_the_disks_and_injects() {
    let d = tempfile::tempdir().unwrap();
    let vmx = vm_dir(d.path(), "");
    let out = d.path().join("out");
    let mut opts = options(&vmx, &out);
    // --no-inject stands for a run that stopped right after converting: the state
    // records the converted disks only.
    opts.inject = false;
    opts.validate = false;
    let boot = Recording::default();
    migrate_with(&opts, None, &boot, &quiet).unwrap();
    opts.inject = true;
    opts.validate = true;
    let o = migrate_with(&opts, None, &boot, &quiet).unwrap();
    let st = stages(&o.report);
    assert_eq!(st[1], ("convert".into(), StageStatus::Reused), "{st:?}");
    assert_eq!(st[2], ("inject".into(), StageStatus::Done), "{st:?}");
    assert_eq!(boot.injected.lock().unwrap().len(), 1);
}

#[test]
fn a_vm_without_an_os_to_convert_moves_with_no_inject_and_says_so() {
    let d = tempfile::tempdir().unwrap();
    let vmx = vm_dir(d.path(), "");
    let out = d.path().join("out");
    let mut opts = options(&vmx, &out);
    opts.inject = false;
    let boot = Recording::default();
    let o = migrate_with(&opts, None, &boot, &quiet).unwrap();
    assert!(boot.injected.lock().unwrap().is_empty());
    assert!(boot.validated.lock().unwrap().is_empty());
    assert_eq!(o.exit_code(), 0);
    assert_eq!(o.report.result, Outcome::NotValidated);
    assert!(o.report.guest_changes.is_none());
    let st = stages(&o.report);
    assert_eq!(st[2], ("inject".into(), StageStatus::Skipped));
    assert_eq!(st[4], ("validate".into(), StageStatus::Skipped));
    assert!(
        o.report
            .concerns
            .iter()
            .any(|c| c.id == "guest-not-converted"),
        "{:?}",
        o.report.concerns
    );
    assert!(out.join("disks/scsi0-0.qcow2").is_file());
}

#[test]
fn a_critical_concern_is_refused_before_anything_is_written() {
    let d = tempfile::tempdir().unwrap();
    let vmx = vm_dir(
        d.path(),
        "scsi0:1.present = \"TRUE\"\nscsi0:1.fileName = \"gone.vmdk\"\n",
    );
    let out = d.path().join("out");
    let boot = Recording::default();
    let e = migrate_with(&options(&vmx, &out), None, &boot, &quiet).unwrap_err();
    assert!(e.is_refusal(), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("critical pre-flight concerns") && msg.contains("disk-missing"),
        "{msg}"
    );
    let disks: Vec<_> = std::fs::read_dir(out.join("disks")).unwrap().collect();
    assert!(disks.is_empty(), "{disks:?}");
    assert!(!out.join("vm.json").exists());
}

#[test]
fn an_efi_guest_gets_its_own_variable_store_in_the_run_directory() {
    let d = tempfile::tempdir().unwrap();
    let vmx = vm_dir(d.path(), "firmware = \"efi\"\n");
    let out = d.path().join("out");
    let boot = Recording::default();
    migrate_with(&options(&vmx, &out), None, &boot, &quiet).unwrap();
    let vars = out.join("pipe_VARS.fd");
    let template = v2k_kvm_target::firmware::OVMF_VARS;
    assert_eq!(
        std::fs::read(&vars).unwrap(),
        std::fs::read(template).unwrap(),
        "a copy of the plain template"
    );
    let argv = std::fs::read_to_string(out.join("qemu-cmdline.json")).unwrap();
    assert!(argv.contains(&*vars.to_string_lossy()), "{argv}");
    assert!(!argv.contains(template), "{argv}");
    let xml = std::fs::read_to_string(out.join("domain.xml")).unwrap();
    assert!(
        xml.contains(&format!("<nvram>{}</nvram>", vars.display())),
        "{xml}"
    );
    assert!(
        xml.contains("<feature enabled='no' name='secure-boot'/>"),
        "{xml}"
    );
    // The validation boot is handed the VM's store (the validator copies it).
    let t = &boot.validated.lock().unwrap()[0];
    assert_eq!(t.firmware.vars(), Some(vars.as_path()));
}

/// A remote source whose connection broke once during a disk's download: the resume
/// is told as it happens (an event), and recorded in the convert stage and the report.
struct FlakySource {
    vm: v2k_inventory::model::Vm,
}

impl v2k_migrate::RemoteSource for FlakySource {
    fn describe(&self) -> String {
        "vsphere://vc.example:443/DC0/vm/pipe".into()
    }

    fn load(&self) -> Result<v2k_inventory::model::Vm, v2k_migrate::BoxError> {
        Ok(self.vm.clone())
    }

    fn convert(
        &self,
        vm: &v2k_inventory::model::Vm,
        outputs: &[PathBuf],
        progress: &dyn v2k_migrate::SourceProgress,
    ) -> Vec<Result<v2k_converters::manifest::Manifest, v2k_migrate::BoxError>> {
        progress.resumed(v2k_migrate::report::Resume {
            disk: 0,
            at: 1 << 20,
            reason: "connection reset by peer".into(),
        });
        let jobs: Vec<v2k_converters::convert::Job> = vm
            .disks
            .iter()
            .zip(outputs)
            .map(|(d, o)| match &d.location {
                v2k_inventory::model::DiskLocation::File { path, .. } => {
                    v2k_converters::convert::Job {
                        source: v2k_converters::vmdk::Source::file(path),
                        output: o.clone(),
                    }
                }
                other => panic!("{other:?}"),
            })
            .collect();
        let opts = v2k_converters::convert::Options {
            overwrite: true,
            ..Default::default()
        };
        v2k_converters::convert::convert_all(&jobs, &opts, 1, progress)
            .into_iter()
            .map(|r| r.map_err(v2k_migrate::BoxError::from))
            .collect()
    }
}

#[test]
fn a_resumed_download_leaves_a_trace_in_the_events_and_the_report() {
    let d = tempfile::tempdir().unwrap();
    let vmx = vm_dir(d.path(), "");
    let vm = v2k_migrate::stages::load(&vmx, true).unwrap().remove(0);
    let out = d.path().join("out");
    let mut opts = options(&vmx, &out);
    opts.validate = false;
    let messages = Mutex::new(Vec::new());
    let progress = |e: Event| {
        if let Event::Message(m) = e {
            messages.lock().unwrap().push(m);
        }
    };
    let o = migrate_with(
        &opts,
        Some(&FlakySource { vm }),
        &Recording::default(),
        &progress,
    )
    .unwrap();
    assert_eq!(o.report.resumed_downloads.len(), 1, "{:?}", o.report);
    assert_eq!(o.report.resumed_downloads[0].at, 1 << 20);
    let convert = &o.report.stages[1];
    assert!(
        convert
            .detail
            .as_deref()
            .is_some_and(|d| d.contains("1 download(s) resumed")),
        "{convert:?}"
    );
    assert!(
        messages
            .lock()
            .unwrap()
            .iter()
            .any(|m| m.contains("broke at byte 1048576") && m.contains("connection reset")),
        "{messages:?}"
    );
    let json = std::fs::read_to_string(out.join("report.json")).unwrap();
    assert!(json.contains("\"resumed-downloads\""), "{json}");
}

/// A failed validation delivers nothing (the deliver stage is skipped before any
/// libvirt call: the destination here does not even exist), and `--cutover` of a
/// local source has nothing to shut down.
#[test]
fn a_failed_validation_is_not_delivered_and_a_local_source_needs_no_cutover() {
    let d = tempfile::tempdir().unwrap();
    let vmx = vm_dir(d.path(), "");
    let out = d.path().join("out");
    let boot = Recording::default();
    *boot.fail_validate.lock().unwrap() = true;
    let mut opts = options(&vmx, &out);
    opts.deliver = Some(v2k_migrate::Destination {
        uri: "qemu+ssh://root@nowhere.invalid/system".into(),
        pool: "none".into(),
        start: true,
        autostart: false,
    });
    opts.cutover = Some(v2k_migrate::cutover::Cutover {
        timeout: Duration::from_secs(1),
        force_power_off: false,
    });
    let o = migrate_with(&opts, None, &boot, &quiet).unwrap();
    use StageStatus::*;
    let st = stages(&o.report);
    assert_eq!(
        st.first(),
        Some(&("cutover".to_string(), Skipped)),
        "{st:?}"
    );
    assert_eq!(st.last(), Some(&("deliver".to_string(), Skipped)), "{st:?}");
    assert_eq!(o.report.result, Outcome::ValidationFailed);
    assert_eq!(o.report.delivery, None);
    assert!(!out.join("delivery.json").exists());
}

/// A baseline file as `v2k baseline` writes it: CPU ready 1 % and reads of 2 ms
/// (medians), NIC drops not offered by the server.
fn baseline_file(path: &Path) {
    use v2k_vsphere::perf::{Baseline, BaselineFile, Stats, FILE_SCHEMA_VERSION};
    let stat = |counter: &str, unit: &str, median: f64| Stats {
        counter: counter.into(),
        unit: unit.into(),
        samples: 288,
        min: 0.0,
        median,
        p95: median * 3.0,
    };
    let f = BaselineFile {
        schema_version: FILE_SCHEMA_VERSION,
        vm: "pipe".into(),
        source: "vsphere://u@vc/DC0/vm/pipe".into(),
        baseline: Baseline {
            moref: "vm-7".into(),
            interval_seconds: 300,
            from: 100,
            to: 86_500,
            metrics: [
                ("cpu-ready-percent", stat("cpu.ready.summation", "%", 1.0)),
                (
                    "disk-read-latency-ms",
                    stat("virtualDisk.totalReadLatency.average", "ms", 2.0),
                ),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
            missing: vec!["net.droppedRx.summation".into()],
            boot: None,
        },
    };
    std::fs::write(path, serde_json::to_vec(&f).unwrap()).unwrap();
}

/// An agent that saw 1.5 % steal and 12 ms per read on vda since boot.
fn agent_with_perf() -> v2k_validator::AgentReport {
    serde_json::from_value(serde_json::json!({
        "v": 1, "ok": true, "boot": true, "root-rw": true, "uptime": 300.0,
        "perf": {"cpu": [2000, 30], "disks": [["vda", 50, 600, 0, 0]], "nics": [["ens192", 0, 0]]}
    }))
    .unwrap()
}

/// Before (a baseline file) and after (the validation's agent counters) in the
/// report: a regression is a warning concern by default; with fail-on-regression the
/// VM fails (exit 1) and is not delivered. No VM: the recording boot returns the
/// agent's report.
#[test]
fn a_baseline_puts_before_and_after_in_the_report_and_fail_on_regression_fails_the_vm() {
    let d = tempfile::tempdir().unwrap();
    let vmx = vm_dir(d.path(), "");
    let file = d.path().join("pipe.baseline.json");
    baseline_file(&file);
    let boot = Recording::default();
    *boot.agent.lock().unwrap() = Some(agent_with_perf());
    let baseline = v2k_vsphere::perf::BaselineFile::read(&file).unwrap();
    let settings = v2k_migrate::performance::Settings::with(file.clone(), baseline);

    let out = d.path().join("warn");
    let mut opts = options(&vmx, &out);
    opts.performance = Some(settings.clone());
    let o = migrate_with(&opts, None, &boot, &quiet).unwrap();
    assert_eq!(o.report.result, Outcome::Validated);
    assert_eq!(o.exit_code(), 0);
    let p = o
        .report
        .performance
        .as_ref()
        .expect("a performance section");
    let rows: Vec<(&str, Option<f64>, Option<f64>, &str)> = p
        .rows
        .iter()
        .map(|r| (r.metric.as_str(), r.before, r.after, r.verdict.as_str()))
        .collect();
    assert_eq!(
        rows,
        [
            ("cpu-ready-percent", Some(1.0), Some(1.5), "worse"),
            ("disk-read-latency-ms", Some(2.0), Some(12.0), "regression"),
            ("disk-write-latency-ms", None, None, "not compared"),
            ("net-dropped-rx", None, Some(0.0), "not compared"),
            ("net-dropped-tx", None, Some(0.0), "not compared"),
        ]
    );
    assert_eq!(p.after_accel.as_deref(), Some("tcg"));
    assert!(
        p.verdict.contains("not production timings"),
        "{}",
        p.verdict
    );
    let c = o
        .report
        .concerns
        .iter()
        .find(|c| c.id == "performance-regression")
        .expect("a regression concern");
    assert_eq!(c.severity, v2k_inventory::model::Severity::Warning);
    assert_eq!(c.subject.as_deref(), Some("disk-read-latency-ms"));
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(
        html.contains("<h2>Performance before and after</h2>"),
        "{html}"
    );
    let back = v2k_migrate::RunDir::at(&out).load_report().unwrap();
    assert_eq!(back.performance, o.report.performance);

    // The same with fail-on-regression (and a destination that is never reached).
    let out = d.path().join("fail");
    let mut opts = options(&vmx, &out);
    opts.performance = Some(v2k_migrate::performance::Settings {
        fail_on_regression: true,
        ..settings.clone()
    });
    opts.deliver = Some(v2k_migrate::Destination {
        uri: "qemu+ssh://root@nowhere.invalid/system".into(),
        pool: "none".into(),
        start: false,
        autostart: false,
    });
    let o = migrate_with(&opts, None, &boot, &quiet).unwrap();
    assert_eq!(o.report.result, Outcome::PerformanceRegression);
    assert_eq!(o.exit_code(), 1);
    assert_eq!(
        stages(&o.report).last(),
        Some(&("deliver".to_string(), StageStatus::Skipped))
    );
    assert_eq!(o.report.delivery, None);

    // Without a validation boot there is nothing after: not compared, never failed.
    let out = d.path().join("unbooted");
    let mut opts = options(&vmx, &out);
    opts.validate = false;
    opts.performance = Some(v2k_migrate::performance::Settings {
        fail_on_regression: true,
        ..settings
    });
    let o = migrate_with(&opts, None, &boot, &quiet).unwrap();
    assert_eq!(o.report.result, Outcome::NotValidated);
    let p = o.report.performance.unwrap();
    assert!(p.rows.iter().all(|r| r.verdict == "not compared"));
    assert!(p.verdict.contains("not booted"), "{}", p.verdict);
}

/// A remote source already powered off, whose power v2k can read (a vSphere VM the
/// cutover finds off): the cutover stage starts the downtime.
struct OffSource(FlakySource);

impl v2k_migrate::cutover::SourcePower for OffSource {
    fn describe(&self) -> String {
        self.0.describe()
    }
    fn is_powered_on(&self) -> Result<bool, v2k_migrate::BoxError> {
        Ok(false)
    }
    fn power_on(&self) -> Result<(), v2k_migrate::BoxError> {
        Err("the source must not be powered on".into())
    }
    fn shutdown_guest(&self) -> Result<(), v2k_migrate::BoxError> {
        Err("the source is off".into())
    }
    fn power_off(&self) -> Result<(), v2k_migrate::BoxError> {
        Err("the source is off".into())
    }
}

impl v2k_migrate::RemoteSource for OffSource {
    fn describe(&self) -> String {
        self.0.describe()
    }
    fn load(&self) -> Result<v2k_inventory::model::Vm, v2k_migrate::BoxError> {
        self.0.load()
    }
    fn convert(
        &self,
        vm: &v2k_inventory::model::Vm,
        outputs: &[PathBuf],
        progress: &dyn v2k_migrate::SourceProgress,
    ) -> Vec<Result<v2k_converters::manifest::Manifest, v2k_migrate::BoxError>> {
        self.0.convert(vm, outputs, progress)
    }
    fn power(&self) -> Option<&dyn v2k_migrate::cutover::SourcePower> {
        Some(self)
    }
}

/// A cold run that cut its source over records when the source was found off, and no
/// downtime figure while nothing reported on a target (not delivered and started):
/// the figure is never made up from the run's own length.
#[test]
fn a_cold_cutover_without_a_start_on_the_target_records_the_power_off_but_no_downtime() {
    let d = tempfile::tempdir().unwrap();
    let vmx = vm_dir(d.path(), "");
    let vm = v2k_migrate::stages::load(&vmx, true).unwrap().remove(0);
    let out = d.path().join("out");
    let mut opts = options(&vmx, &out);
    opts.validate = false;
    opts.cutover = Some(v2k_migrate::cutover::Cutover {
        timeout: Duration::from_secs(1),
        force_power_off: false,
    });
    let o = migrate_with(
        &opts,
        Some(&OffSource(FlakySource { vm })),
        &Recording::default(),
        &quiet,
    )
    .unwrap();
    assert_eq!(
        stages(&o.report).first(),
        Some(&("cutover".to_string(), StageStatus::Done))
    );
    let down = o.report.downtime.as_ref().expect("a cutover ran");
    assert!(!down.live);
    assert!(down.source_off_at > 1_700_000_000, "{down:?}");
    assert_eq!(down.seconds, None, "no agent reported on a target");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["downtime"]["live"], false, "{json:#}");
    assert!(json["downtime"].get("seconds").is_none(), "{json:#}");
}
