//! The one-VM pipeline that `v2k migrate`, `v2k inject` and the wave runner share:
//!
//! ```text
//!  inspect ─▶ [baseline-boot] ─▶ convert (all disks in parallel) ─▶ inject ─▶ target ─▶ validate ─▶ deliver ─▶ report
//!  vm.json     disks/<disk>.qcow2 + manifests     conversion-log.json   validation/  delivery.json  report.{json,html}
//!                                               domain.xml, qemu-cmdline.json, run-qemu.sh
//! ```
//!
//! `deliver` runs only with a destination ([`Options::deliver`]): the disks go into a
//! libvirt storage pool there and the domain is defined on it ([`deliver`]).
//!
//! Each stage is a public function over typed values ([`stages`]); [`migrate_with`]
//! reads as the list of them. The run directory belongs to this crate alone
//! ([`rundir::RunDir`]): every file in it is one typed value, and the rule that decides
//! whether a finished stage may be reused lives there once ([`rundir::Reuse`]) — a
//! stage is skipped only when its record exists *and* the disks hash to what it
//! recorded, so a run killed in the middle of the injector (which edits the disks in
//! place) converts again rather than trusting half-edited disks. The two stages that
//! boot something (the libguestfs appliance, the validation boot) sit behind
//! [`BootStages`], so the orchestration is tested without a VM.

pub mod baseline_boot;
pub mod cutover;
pub mod deliver;
pub mod live;
pub mod performance;
pub mod report;
pub mod rollback;
mod rundir;
pub mod stages;
mod staging;
pub mod vsphere;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use v2k_converters::convert as conv;
use v2k_converters::manifest::Manifest;
use v2k_inventory::model::Vm;

pub use deliver::Destination;
pub use report::{Outcome as ReportOutcome, Report};
pub use rundir::{Reuse, RunDir};
pub use stages::{BootStages, RealBoot};
// The vocabulary callers configure a migration with (the wave plan, the CLI), so
// that they need not depend on the stages behind this crate.
pub use v2k_kvm_target::{Accel, DiskBus, HostSource, NetTarget, NetworkMap};
pub use v2k_validator::{Backend, Validation};

/// A boxed error from a stage a caller plugs in (a remote source).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How to migrate one VM.
#[derive(Debug, Clone)]
pub struct Options {
    pub source: PathBuf,
    pub out: PathBuf,
    /// Which VM of a multi-VM OVF (by name); required when there are several.
    pub vm_name: Option<String>,
    pub compress: bool,
    pub disk_bus: DiskBus,
    pub network_map: NetworkMap,
    pub accel: Option<Accel>,
    pub keep_agent: bool,
    /// Convert the guest for KVM (virtio drivers, names, agent). Off for VMs whose
    /// disks hold no operating system v2k can convert (data disks, appliances): the
    /// disks are copied and verified, the report says the guest was not converted.
    pub inject: bool,
    pub validate: bool,
    pub backend: Backend,
    pub boot_timeout: Duration,
    pub keep_changes: bool,
    /// Define the domain in libvirt (not started) after the target is written.
    pub define: Option<String>,
    /// Upload the disks into a storage pool of this libvirt and define the domain
    /// there, after validation ([`deliver`]).
    pub deliver: Option<Destination>,
    /// With a delivery that starts the domain: start it paused, watch its console
    /// and judge its first boot where it lives (the "after cutover" checks).
    pub check_after_cutover: bool,
    /// Shut a running remote source down before the copy ([`cutover`]).
    pub cutover: Option<cutover::Cutover>,
    pub verify_manifest: bool,
    /// virtio-win drivers for a Windows guest (a directory); `None` reads `$VIRTIO_WIN`.
    pub virtio_win: Option<PathBuf>,
    /// The destination host whose CPUs, NUMA nodes and hugepages VMware's tuning is
    /// mapped onto (`--host-topology`; a plan's `target: host-topology:`).
    pub host_topology: HostSource,
    /// Compare the validation's figures with a baseline (`--baseline`, a plan's
    /// `baseline-dir:`): the report's `performance` section ([`performance`]).
    pub performance: Option<performance::Settings>,
    /// Boot the local source in its own shape before converting it and take that
    /// boot's figures as the baseline (`--baseline-boot`, [`baseline_boot`]), kept as
    /// `baseline.json` in the run directory (a rerun reuses it). The thresholds and
    /// fail-on-regression are `performance`'s when given.
    pub baseline_boot: bool,
    /// Import live (`--live`, a vSphere source): the VM starts on KVM over v2k's NBD
    /// server right after the source is off, and its disks stream in behind it
    /// ([`live`]).
    pub live: Option<live::LiveOptions>,
}

/// What `migrate` reports as it goes.
#[derive(Debug, Clone)]
pub enum Event {
    Stage {
        name: &'static str,
        status: &'static str,
    },
    Message(String),
    /// Copy or read-back progress of one disk (`disk` in VM order): `phase` is `copy`,
    /// `verify` or `done`; `done` and `total` are virtual bytes.
    Disk {
        disk: usize,
        phase: &'static str,
        done: u64,
        total: u64,
    },
}

/// Why a migration stopped. One variant per step; each carries its typed cause and
/// says only what the cause does not (the CLI prints the chain once).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Inspect(#[from] stages::InspectError),
    #[error(transparent)]
    Refused(#[from] stages::Refusal),
    #[error(transparent)]
    Convert(#[from] stages::ConvertError),
    #[error("converting the guest")]
    Inject(#[source] v2k_drivers_injector::Error),
    #[error(transparent)]
    Target(#[from] stages::TargetError),
    #[error("validating")]
    Validate(#[source] v2k_validator::Error),
    #[error("cutting the source over")]
    Cutover(#[source] cutover::CutoverError),
    #[error("delivering to the destination")]
    Deliver(#[source] deliver::DeliverError),
    #[error(transparent)]
    RunDir(#[from] rundir::RunDirError),
    #[error("live import")]
    Live(#[source] live::LiveError),
}

impl Error {
    /// Whether the VM itself cannot be migrated as it is (a pre-flight refusal, a
    /// guest the injector refuses), rather than a fault of this host or its input.
    pub fn is_refusal(&self) -> bool {
        match self {
            Error::Refused(_) => true,
            Error::Inject(e) => e.kind() == v2k_drivers_injector::ErrorKind::Refused,
            _ => false,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The end of a migration.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub report: Report,
    pub report_dir: PathBuf,
}

impl Outcome {
    /// 0 migrated (and validated, when asked), 1 migrated but validation failed,
    /// (with fail-on-regression) performance regressed, or delivered and started but
    /// its checks after cutover failed (or, with fail-on-regression, its performance
    /// there regressed).
    pub fn exit_code(&self) -> i32 {
        let after_failed = self
            .report
            .after_cutover
            .as_ref()
            .is_some_and(|v| !v.passed)
            || self
                .report
                .performance_after_cutover
                .as_ref()
                .is_some_and(|p| p.fails());
        match self.report.result {
            ReportOutcome::ValidationFailed | ReportOutcome::PerformanceRegression => 1,
            _ if after_failed => 1,
            _ => 0,
        }
    }
}

/// A source whose VM and disks do not come from local files: a vCenter or ESXi
/// ([`vsphere::VsphereSource`]). A trait, so that the pipeline's remote path can be
/// driven by any source (and by tests) without a server.
pub trait RemoteSource: Sync {
    /// What the source is called in messages (`vsphere://host:443/DC0/vm/web01`).
    fn describe(&self) -> String;
    /// The VM, with its pre-flight concerns.
    fn load(&self) -> std::result::Result<Vm, BoxError>;
    /// Fetches and converts every disk of `vm` into `outputs` (QCOW2, verified, a
    /// manifest beside each), reporting converter progress and every download that
    /// broke and resumed; results in disk order.
    fn convert(
        &self,
        vm: &Vm,
        outputs: &[PathBuf],
        progress: &dyn SourceProgress,
    ) -> Vec<std::result::Result<Manifest, BoxError>>;
    /// The source's power, when v2k can change it (a vSphere VM): for cutover and
    /// rollback.
    fn power(&self) -> Option<&dyn cutover::SourcePower> {
        None
    }
    /// How v2k's own NBD server reaches the disks of `vm` for a live import (a
    /// vSphere VM's datastore), or `None` when this source cannot be served live.
    fn live_access(&self, _vm: &Vm) -> Option<std::result::Result<live::LiveAccess, BoxError>> {
        None
    }
}

/// What a remote source reports while it copies: the converter's progress, and each
/// download that broke and resumed (so that a cut connection leaves a trace).
pub trait SourceProgress: conv::Progress {
    fn resumed(&self, r: report::Resume);
}

/// Migrates one VM; see the module documentation for the stages.
pub fn migrate(opts: &Options, progress: &dyn Fn(Event)) -> Result<Outcome> {
    migrate_with(opts, None, &RealBoot, progress)
}

/// As [`migrate`], reading the VM and its disks from `remote` when given (then
/// `opts.source` only names it).
pub fn migrate_from(
    opts: &Options,
    remote: Option<&dyn RemoteSource>,
    progress: &dyn Fn(Event),
) -> Result<Outcome> {
    migrate_with(opts, remote, &RealBoot, progress)
}

/// Times the stages and tells `progress` as each starts and ends.
struct Timeline<'a> {
    start: Instant,
    stages: Vec<report::Stage>,
    progress: &'a dyn Fn(Event),
}

impl Timeline<'_> {
    fn begin(&self, name: &'static str) -> (&'static str, Instant) {
        (self.progress)(Event::Stage {
            name,
            status: "started",
        });
        (name, Instant::now())
    }

    fn end(
        &mut self,
        (name, t): (&'static str, Instant),
        status: report::StageStatus,
        detail: Option<String>,
    ) {
        (self.progress)(Event::Stage {
            name,
            status: status.as_str(),
        });
        self.stages.push(report::Stage {
            name: name.into(),
            status,
            start_seconds: t.duration_since(self.start).as_secs_f64(),
            seconds: t.elapsed().as_secs_f64(),
            detail,
        });
    }

    fn skip(&mut self, name: &'static str, why: &str) {
        let t = self.begin(name);
        self.end(t, report::StageStatus::Skipped, Some(why.into()));
    }
}

/// The `baseline-boot` stage: the run directory's `baseline.json` when an earlier run
/// made it (the source's first measurement is kept), else a boot of the source in its
/// own shape ([`baseline_boot::take`]). A boot that cannot run or gives no figures is
/// said as a warning and in the report's verdict; the VM still migrates.
fn baseline_stage(
    tl: &mut Timeline,
    run: &RunDir,
    vm: &Vm,
    opts: &Options,
    progress: &dyn Fn(Event),
) -> performance::Settings {
    use report::StageStatus::{Done, Failed, Reused};
    let file = run.root().join(BASELINE_FILE);
    let (thresholds, fail_on_regression) = opts
        .performance
        .as_ref()
        .map(|p| (p.thresholds, p.fail_on_regression))
        .unwrap_or_default();
    let settings = |got: std::result::Result<performance::BaselineFile, String>| {
        let (baseline, missing) = match got {
            Ok(b) => (Some(b), None),
            Err(e) => (None, Some(e)),
        };
        performance::Settings {
            file: file.clone(),
            baseline,
            missing,
            thresholds,
            fail_on_regression,
        }
    };
    let t = tl.begin("baseline-boot");
    if file.exists() {
        if let Ok(b) = performance::BaselineFile::read(&file) {
            let why = "the source's first measurement is kept";
            tl.end(t, Reused, Some(why.into()));
            return settings(Ok(b));
        }
    }
    let s = baseline_boot::BootSettings::detect(opts.accel, opts.boot_timeout);
    let mut say = |m: &str| progress(Event::Message(m.to_string()));
    let got = baseline_boot::take(vm, &run.root().join("baseline-boot"), &s, &mut say)
        .map_err(|e| v2k_inventory::one_line(&e))
        .and_then(|b| {
            let text = serde_json::to_vec_pretty(&b).map_err(|e| e.to_string())?;
            v2k_outfile::write_atomic(&file, &text, true)
                .map_err(|e| format!("writing {}: {e}", file.display()))?;
            Ok(b)
        });
    match got {
        Ok(b) => {
            let detail = format!(
                "{} figure(s); agent report after {:.1} s",
                b.baseline.metrics.len(),
                b.baseline
                    .boot
                    .as_ref()
                    .and_then(|x| x.boot_seconds)
                    .unwrap_or(0.0)
            );
            tl.end(t, Done, Some(detail));
            settings(Ok(b))
        }
        Err(e) => {
            let why = format!("baseline boot: {e}");
            progress(Event::Message(format!("warning: {why}")));
            tl.end(t, Failed, Some(why.clone()));
            settings(Err(why))
        }
    }
}

/// The baseline a `--baseline-boot` run keeps in its run directory.
pub const BASELINE_FILE: &str = "baseline.json";

/// The pipeline with its boot-bound stages given (tests pass a recording one).
pub fn migrate_with(
    opts: &Options,
    remote: Option<&dyn RemoteSource>,
    boot: &dyn BootStages,
    progress: &dyn Fn(Event),
) -> Result<Outcome> {
    use report::StageStatus::{Done, Failed, Reused};
    let run = RunDir::at(&opts.out);
    run.create()?;
    let mut tl = Timeline {
        start: Instant::now(),
        stages: Vec::new(),
        progress,
    };

    // 0. cutover: a running source is shut down before its disks are read
    let mut source_off = None;
    if let Some(c) = &opts.cutover {
        let t = tl.begin("cutover");
        match remote.and_then(|r| r.power()) {
            Some(p) => {
                let detail = cutover::cut_over(p, c, progress).map_err(Error::Cutover)?;
                source_off = Some(Instant::now());
                tl.end(t, Done, Some(detail));
            }
            None => tl.end(
                t,
                report::StageStatus::Skipped,
                Some("a local source: nothing to shut down".into()),
            ),
        }
    }

    // 1. inspect
    let t = tl.begin("inspect");
    let mut vm = stages::inspect(
        &opts.source,
        opts.vm_name.as_deref(),
        opts.verify_manifest,
        remote,
    )?;
    stages::refuse_critical(&vm)?;
    run.save_vm(&vm)?;
    let detail = format!("{} disk(s), {} NIC(s)", vm.disks.len(), vm.nics.len());
    tl.end(t, Done, Some(detail));

    // Live: the disks are served, not copied (live.rs takes it from here).
    if let Some(l) = &opts.live {
        let r = remote.ok_or_else(|| {
            Error::Live(live::LiveError::Usage(
                "--live needs a vSphere source".into(),
            ))
        })?;
        // Never served while the source runs: its disks would change under the target.
        let off = match (source_off, r.power()) {
            (Some(t), _) => t,
            (None, Some(p)) => match p.is_powered_on() {
                Ok(false) => Instant::now(),
                Ok(true) => {
                    return Err(Error::Live(live::LiveError::Usage(format!(
                        "{} is powered on: a live import starts only once it is off \
                         (--cutover)",
                        r.describe()
                    ))))
                }
                Err(source) => {
                    return Err(Error::Live(live::LiveError::Step {
                        step: format!("reading the power state of {}", r.describe()),
                        source,
                    }))
                }
            },
            (None, None) => {
                return Err(Error::Live(live::LiveError::Usage(
                    "--live needs a source whose power v2k can read".into(),
                )))
            }
        };
        let cx = live::Context {
            run: &run,
            opts,
            live: l,
            remote: r,
            boot,
            progress,
            source_off: off,
        };
        return live::run(&cx, &mut tl, vm);
    }

    // 1b. the baseline boot: the source in its own shape, before anything converts it
    let perf_settings = if opts.baseline_boot && remote.is_none() {
        Some(baseline_stage(&mut tl, &run, &vm, opts, progress))
    } else {
        opts.performance.clone()
    };

    // 2. convert, unless the disks still prove an earlier conversion
    let disks = run.disks(&vm);
    let t = tl.begin("convert");
    let reuse = run.reuse(&vm);
    let converted = if reuse == Reuse::Nothing {
        let c = stages::convert(&run, &vm, &disks, opts.compress, remote, progress)?;
        let mut detail = format!("{} disk(s)", disks.len());
        if !c.resumes.is_empty() {
            detail.push_str(&format!("; {} download(s) resumed", c.resumes.len()));
        }
        tl.end(t, Done, Some(detail));
        c
    } else {
        let manifests = run.manifests(&disks)?;
        let why = "outputs re-verified by content hash";
        tl.end(t, Reused, Some(why.into()));
        stages::Converted {
            manifests,
            resumes: Vec::new(),
        }
    };
    // 3. inject (the guest moved to virtio), unless reused or not wanted
    let (accel, warning) = v2k_kvm_target::accel::choose(opts.accel);
    if let Some(w) = warning {
        progress(Event::Message(w));
    }
    // One bus for the injector and the target: more disks than virtio-blk takes
    // go on virtio-scsi, and the guest's device names must say so.
    let bus = opts.disk_bus.fitting(disks.len());
    if bus != opts.disk_bus {
        progress(Event::Message(format!(
            "{} disks: using {bus} (virtio-blk takes at most {})",
            disks.len(),
            v2k_kvm_target::VIRTIO_BLK_MAX_DISKS
        )));
    }
    let injected = if !opts.inject {
        tl.skip("inject", "--no-inject: the guest was not converted");
        stages::forget_injection(&run, &disks, &converted.manifests)?;
        vm.concerns.push(stages::not_converted_concern());
        None
    } else if reuse == Reuse::Injected {
        let t = tl.begin("inject");
        let done = stages::Injected {
            log: run.load_log()?,
            windows: run.load_windows()?,
        };
        tl.end(t, Reused, Some("disks re-verified by content hash".into()));
        Some(done)
    } else {
        let t = tl.begin("inject");
        let inject = stages::InjectSettings {
            bus,
            keep_agent: opts.keep_agent,
            accel,
            virtio_win: opts.virtio_win.clone(),
        };
        let done = stages::inject(
            boot,
            &run,
            &vm,
            &disks,
            &converted.manifests,
            &inject,
            progress,
        )?;
        let detail = format!("{} change(s)", done.log.changes.len());
        tl.end(t, Done, Some(detail));
        Some(done)
    };

    // 4. target
    let t = tl.begin("target");
    let features = stages::features(injected.as_ref());
    let mut target = stages::target(&vm, &disks, bus, &opts.network_map, accel, run.root())?;
    for c in stages::tune(&mut target, &vm, &opts.host_topology)? {
        progress(Event::Message(format!("warning: {}: {}", c.id, c.message)));
        vm.concerns.push(c);
    }
    stages::write_target(run.root(), &target, &features)?;
    if let Some(uri) = &opts.define {
        stages::define(uri, &run.root().join("domain.xml"))?;
    }
    tl.end(
        t,
        Done,
        opts.define.as_ref().map(|u| format!("defined in {u}")),
    );

    // 5. validate
    let validation = match (&injected, opts.validate) {
        (Some(done), true) => {
            let t = tl.begin("validate");
            let expect = stages::expectations(done, &target);
            let vopts = v2k_validator::Options {
                backend: opts.backend.clone(),
                boot_timeout: opts.boot_timeout,
                keep_changes: opts.keep_changes,
                work_dir: run.validation_dir(),
                features,
            };
            let v = boot
                .validate(&target, &expect, &vopts)
                .map_err(Error::Validate)?;
            let detail = v
                .evidence
                .boot_seconds
                .map(|s| format!("agent report after {s:.1} s"));
            tl.end(t, if v.passed { Done } else { Failed }, detail);
            Some(v)
        }
        (None, true) => {
            tl.skip(
                "validate",
                "the guest was not converted: no agent to report",
            );
            None
        }
        (_, false) => None,
    };
    // Before and after, when a baseline was given: a regression with
    // fail-on-regression fails the VM as a failed check does.
    let performance = perf_settings
        .as_ref()
        .map(|s| performance::evaluate(s, validation.as_ref()));
    let regressed = performance.as_ref().is_some_and(|p| p.fails());

    // 6. deliver, unless the validation failed: a broken copy is not put in place
    // With checks after cutover, the domain is started by them (paused first, so
    // that its console is watched from the first instruction).
    let check_after = opts.check_after_cutover
        && injected.is_some()
        && opts.deliver.as_ref().is_some_and(|d| d.start);
    let mut delivered = match &opts.deliver {
        Some(_) if regressed => {
            tl.skip("deliver", "performance regressed: nothing was delivered");
            None
        }
        Some(dest) if validation.as_ref().is_none_or(|v| v.passed) => {
            let t = tl.begin("deliver");
            let mut dest = dest.clone();
            dest.start &= !check_after;
            let d = deliver::deliver(&run, &dest, &target, &features, progress)
                .map_err(Error::Deliver)?;
            let uploaded = d
                .volumes
                .iter()
                .filter(|v| v.action == deliver::VolumeAction::Uploaded)
                .count();
            let detail = format!(
                "{} defined on {} (pool {}); {uploaded} of {} volume(s) uploaded",
                d.domain,
                d.uri,
                d.pool,
                d.volumes.len()
            );
            tl.end(t, Done, Some(detail));
            Some(d)
        }
        Some(_) => {
            tl.skip("deliver", "validation failed: nothing was delivered");
            None
        }
        None => None,
    };

    // 7. after cutover: the first boot where the VM will live, judged there
    let mut after_cutover = None;
    // With a cutover, the downtime ends with the agent's report there.
    let mut downtime = source_off.map(|off| report::Downtime::measure(false, off, None, None));
    if let (Some(d), Some(done), true) = (delivered.as_mut(), &injected, check_after) {
        let earlier = run.load_report().ok();
        let previous = earlier.as_ref().and_then(|r| r.after_cutover.clone());
        // Paused: started by a run killed before it resumed the domain (below).
        if d.state != "shut off" && d.state != "paused" {
            // A rerun after the domain started: its first boot is over. What an
            // earlier run saw of it stands.
            let why = match &previous {
                Some(_) => "the domain already runs: the earlier check stands",
                None => "the domain already runs: its first boot was not observed",
            };
            tl.skip("after-cutover", why);
            after_cutover = previous;
            // The first boot was an earlier run's, and so is its downtime.
            downtime = earlier.and_then(|r| r.downtime).or(downtime);
        } else {
            let t = tl.begin("after-cutover");
            let mut expect = stages::expectations(done, &target);
            // On the VM's own network now: its gateway and resolvers must answer.
            // (The Windows first-boot service does not report them.)
            expect.reachability = done.windows.is_none();
            let aopts = v2k_validator::AfterCutover {
                uri: d.uri.clone(),
                domain: d.domain.clone(),
                boot_timeout: opts.boot_timeout,
                work_dir: run.after_cutover_dir(),
                accel,
            };
            // The VM is delivered whatever happens here: a boot that could not be
            // watched is a failed check in the report, not a run without one.
            let started = Instant::now();
            let v = boot.after_cutover(&expect, &aopts).unwrap_or_else(|e| {
                let why = v2k_inventory::one_line(&e);
                progress(Event::Message(format!("checks after cutover: {why}")));
                v2k_validator::unobserved(&d.uri, accel, &why)
            });
            if let Some(off) = source_off {
                downtime = Some(report::Downtime::measure(
                    false,
                    off,
                    Some(started),
                    Some(&v),
                ));
            }
            d.state = deliver::domain_state(&d.uri, &d.domain).map_err(Error::Deliver)?;
            let passed = v.checks.iter().filter(|c| c.passed).count();
            let detail = format!(
                "{passed} of {} check(s) passed on {}",
                v.checks.len(),
                d.uri
            );
            tl.end(t, if v.passed { Done } else { Failed }, Some(detail));
            after_cutover = Some(v);
        }
    }

    // 8. report
    let mut rep = stages::report(
        &vm,
        &opts.source,
        &target,
        converted,
        injected.map(|i| i.log),
        validation,
        tl.stages,
    );
    rep.delivery = delivered;
    rep.downtime = downtime;
    // The same before/after with the destination's first boot as "after".
    let perf_after = perf_settings
        .as_ref()
        .zip(after_cutover.as_ref())
        .map(|(s, v)| performance::evaluate(s, Some(v)));
    rep.after_cutover = after_cutover;
    if let Some(p) = perf_after {
        rep.concerns.extend(p.concern().map(|mut c| {
            c.message = format!("after cutover: {}", c.message);
            c
        }));
        rep.performance_after_cutover = Some(p);
    }
    if let Some(p) = performance {
        rep.concerns.extend(p.concern());
        if regressed && rep.result == ReportOutcome::Validated {
            rep.result = ReportOutcome::PerformanceRegression;
        }
        rep.performance = Some(p);
    }
    run.save_report(&rep)?;
    Ok(Outcome {
        report: rep,
        report_dir: opts.out.clone(),
    })
}
