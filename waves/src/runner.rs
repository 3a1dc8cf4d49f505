//! The wave runner: the waves in order, the VMs of a wave in parallel (one std thread
//! each) within the plan's limits, every VM through `v2k_migrate::migrate` in its own
//! output directory. Every state change is journalled first ([`crate::journal`]); a
//! VM's success marker (`RUN_DIR/vms/NAME/done.json`) is written last.
//!
//! Resuming (the same plan on a run directory that has a journal): a VM journalled as
//! migrated whose marker exists and whose disks still hash to the record in its
//! `state.json` is skipped; a VM that was running is migrated again in the same
//! directory, where `migrate` reuses every stage whose outputs still verify; a VM
//! that failed keeps its result unless `retry_failed` is asked.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use v2k_migrate::performance::BaselineFile;
use v2k_migrate::vsphere::VsphereSource;
use v2k_migrate::{BootStages, RealBoot, RunDir};

use crate::check::CheckReport;
use crate::hooks::{self, HookResult};
use crate::journal::{Entry, Journal, Record, VmInfo, VmStatus, WaveInfo};
use crate::plan::{Plan, VmPlan};
use crate::{io, report, Error, Result};

#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Run only this wave.
    pub wave: Option<String>,
    /// Migrate again VMs that failed in an earlier, interrupted run.
    pub retry_failed: bool,
    /// Start a wave the gate holds, for this reason (journalled with who gave it).
    pub override_gate: Option<String>,
}

/// What the runner reports as it goes (the CLI draws bars or prints JSON Lines).
#[derive(Debug, Clone)]
pub enum RunEvent {
    WaveStarted {
        wave: String,
        vms: usize,
    },
    VmStarted {
        wave: String,
        vm: String,
        attempt: u32,
    },
    Stage {
        wave: String,
        vm: String,
        stage: String,
        status: String,
    },
    Message {
        vm: String,
        text: String,
    },
    /// Copy or read-back progress of one of the VM's disks (virtual bytes).
    Disk {
        vm: String,
        disk: usize,
        phase: String,
        done: u64,
        total: u64,
    },
    VmVerified {
        wave: String,
        vm: String,
    },
    VmFinished {
        wave: String,
        vm: String,
        status: VmStatus,
        result: Option<String>,
        reason: Option<String>,
        seconds: f64,
    },
    VmNotRun {
        wave: String,
        vm: String,
        reason: String,
    },
    WaveFinished {
        wave: String,
        report: Box<report::WaveReport>,
        html: PathBuf,
    },
    /// The gate held `wave` (`overridden`: it runs anyway).
    Gate {
        wave: String,
        overridden: bool,
        message: String,
    },
}

#[derive(Debug, Clone)]
pub struct RunSummary {
    pub exit_code: i32,
    /// Why the gate held a wave, when it did (the run stopped before that wave).
    pub held: Option<String>,
    pub waves: Vec<report::WaveReport>,
}

/// The runner's own time, summed over threads, in nanoseconds.
struct Overhead(AtomicU64);

impl Overhead {
    fn add(&self, d: Duration) {
        self.0.fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }
    fn take(&self) -> f64 {
        self.0.swap(0, Ordering::Relaxed) as f64 / 1e9
    }
}

/// Where the runner keeps a VM's own files (hook logs, success marker).
pub fn vm_dir(run_dir: &Path, vm: &str) -> PathBuf {
    run_dir.join("vms").join(vm)
}

pub fn marker_path(run_dir: &Path, vm: &str) -> PathBuf {
    vm_dir(run_dir, vm).join("done.json")
}

/// What an earlier (interrupted) run left, per VM.
#[derive(Default, Clone)]
struct Prior {
    attempts: u32,
    finished: Option<VmStatus>,
    pre_hook_done: bool,
}

fn prior_state(records: &[Record]) -> BTreeMap<String, Prior> {
    let mut m: BTreeMap<String, Prior> = BTreeMap::new();
    for r in records {
        match &r.entry {
            Entry::VmStarted { vm, attempt, .. } => {
                let p = m.entry(vm.clone()).or_default();
                p.attempts = p.attempts.max(*attempt);
                p.finished = None;
            }
            Entry::Hook { vm, result, .. } if result.hook == "pre" && result.ok() => {
                m.entry(vm.clone()).or_default().pre_hook_done = true;
            }
            Entry::VmFinished { vm, status, .. } => {
                m.entry(vm.clone()).or_default().finished = Some(*status)
            }
            _ => {}
        }
    }
    m
}

/// Runs (or resumes) `plan`. `checks` is [`crate::check`]'s report, which must have
/// no problems.
pub fn run(
    plan: &Plan,
    checks: &CheckReport,
    opts: &RunOptions,
    events: &(dyn Fn(RunEvent) + Sync),
) -> Result<RunSummary> {
    run_with(plan, checks, opts, &RealBoot, events)
}

/// [`run`] with the stages that boot something (the injector's appliance, the
/// validation boot) given by the caller: the same seam as `v2k_migrate::migrate_with`,
/// so a wave's orchestration (journal, resume, reports) is tested without a VM.
pub fn run_with(
    plan: &Plan,
    checks: &CheckReport,
    opts: &RunOptions,
    boot: &dyn BootStages,
    events: &(dyn Fn(RunEvent) + Sync),
) -> Result<RunSummary> {
    if !checks.problems.is_empty() {
        return Err(Error::Plan(checks.problems.clone()));
    }
    if let Some(w) = &opts.wave {
        if !plan.waves.iter().any(|x| &x.name == w) {
            return Err(Error::Run(format!("the plan has no wave named {w:?}")));
        }
    }
    let overhead = Overhead(AtomicU64::new(0));
    let t0 = Instant::now();
    let (journal, records) = Journal::open(&plan.run_dir)?;
    match records.iter().find_map(|r| match &r.entry {
        Entry::RunStarted { plan_hash, .. } => Some(plan_hash.clone()),
        _ => None,
    }) {
        Some(h) if h != plan.hash => {
            return Err(Error::Run(format!(
                "{} holds a run of a different plan (the plan changed since); use another run-dir",
                plan.run_dir.display()
            )))
        }
        Some(_) => journal.append(Entry::RunResumed {
            plan_hash: plan.hash.clone(),
        })?,
        None => journal.append(Entry::RunStarted {
            schema_version: crate::journal::SCHEMA_VERSION,
            plan: plan.path.clone(),
            plan_hash: plan.hash.clone(),
            waves: plan
                .waves
                .iter()
                .map(|w| WaveInfo {
                    name: w.name.clone(),
                    vms: w
                        .vms
                        .iter()
                        .map(|v| VmInfo {
                            name: v.name.clone(),
                            source: v.source.clone(),
                            out: v.out.clone(),
                            validate: v.validate,
                            disks: checks.vm(&v.name).map_or(0, |c| c.disks),
                        })
                        .collect(),
                })
                .collect(),
            conversion_host: plan.conversion_host.clone(),
            rollback_window_seconds: plan.rollback_window_seconds,
        })?,
    }
    let prior = prior_state(&records);
    overhead.add(t0.elapsed());

    let mut summaries = Vec::new();
    let mut stopped: Option<String> = None;
    let mut any_bad = false;
    let mut held = None;
    for wave in &plan.waves {
        if opts.wave.as_ref().is_some_and(|w| w != &wave.name) {
            continue;
        }
        if let (Some(g), None) = (&plan.gate, &stopped) {
            let records = crate::journal::read(&plan.run_dir)?;
            if let Err(h) = crate::gate::check(plan, g, &records, wave) {
                journal.append(Entry::Gate {
                    wave: wave.name.clone(),
                    previous: h.previous.clone(),
                    decision: if opts.override_gate.is_some() {
                        "overridden"
                    } else {
                        "refused"
                    }
                    .into(),
                    reasons: h.reasons.clone(),
                    override_reason: opts.override_gate.clone(),
                    by: opts.override_gate.as_ref().map(|_| crate::gate::who()),
                })?;
                events(RunEvent::Gate {
                    wave: wave.name.clone(),
                    overridden: opts.override_gate.is_some(),
                    message: h.to_string(),
                });
                if opts.override_gate.is_none() {
                    held = Some(h.to_string());
                    break;
                }
            }
        }
        let tw = Instant::now();
        let t = Instant::now();
        journal.append(Entry::WaveStarted {
            wave: wave.name.clone(),
        })?;
        events(RunEvent::WaveStarted {
            wave: wave.name.clone(),
            vms: wave.vms.len(),
        });
        let mut failed = 0u32;
        let mut queue: VecDeque<&VmPlan> = VecDeque::new();
        for v in &wave.vms {
            let p = prior.get(&v.name).cloned().unwrap_or_default();
            if let Some(reason) = &stopped {
                journal.append(Entry::VmNotRun {
                    wave: wave.name.clone(),
                    vm: v.name.clone(),
                    reason: reason.clone(),
                })?;
                events(RunEvent::VmNotRun {
                    wave: wave.name.clone(),
                    vm: v.name.clone(),
                    reason: reason.clone(),
                });
                continue;
            }
            match p.finished {
                // Journalled as migrated and its disks still hash to their record: done.
                // A missing marker means the crash fell between the `vm-finished`
                // record and the marker, where nothing else happens: write it now.
                Some(VmStatus::Migrated) if RunDir::at(&v.out).reverify().is_ok() => {
                    journal.append(Entry::VmVerified {
                        wave: wave.name.clone(),
                        vm: v.name.clone(),
                    })?;
                    let m = marker_path(&plan.run_dir, &v.name);
                    if !m.is_file() {
                        let body =
                            serde_json::json!({"vm": v.name, "reverified": true}).to_string();
                        v2k_outfile::write_atomic(&m, body.as_bytes(), true).map_err(|e| {
                            Error::Run(format!("writing the success marker of {}: {e}", v.name))
                        })?;
                    }
                    events(RunEvent::VmVerified {
                        wave: wave.name.clone(),
                        vm: v.name.clone(),
                    });
                }
                Some(VmStatus::Failed) if !opts.retry_failed => failed += 1,
                _ => queue.push_back(v),
            }
        }
        overhead.add(t.elapsed());
        let limits = &plan.limits;
        let (tx, rx) = mpsc::channel::<(String, VmStatus)>();
        std::thread::scope(|s| -> Result<()> {
            let mut running: Vec<Running> = Vec::new();
            let mut stop = wave.stop_after.is_some_and(|n| failed >= n);
            loop {
                let t = Instant::now();
                if stop {
                    while let Some(v) = queue.pop_front() {
                        let reason = format!(
                            "wave {} stopped after {failed} failure(s) (failure-policy)",
                            wave.name
                        );
                        journal.append(Entry::VmNotRun {
                            wave: wave.name.clone(),
                            vm: v.name.clone(),
                            reason: reason.clone(),
                        })?;
                        events(RunEvent::VmNotRun {
                            wave: wave.name.clone(),
                            vm: v.name.clone(),
                            reason,
                        });
                    }
                }
                // Start every queued VM that fits, in plan order (a VM that does not
                // fit does not hold back a smaller one behind it).
                let mut i = 0;
                while i < queue.len() && running.len() < limits.vms {
                    let v = queue[i];
                    let ck = checks.vm(&v.name);
                    let next = Running {
                        name: v.name.clone(),
                        disks: ck.map_or(1, |c| c.disks.max(1)),
                        datastore: v.datastore.clone(),
                        esxi_host: v
                            .esxi_host
                            .clone()
                            .or_else(|| ck.and_then(|c| c.esxi_host.clone())),
                        estimate: ck.map_or(0, |c| c.estimated_bytes),
                    };
                    if !fits(limits, &running, &next) {
                        i += 1;
                        continue;
                    }
                    queue.remove(i);
                    let est = next.estimate;
                    let reserved: u64 = running.iter().map(|r| r.estimate).sum();
                    running.push(next);
                    let attempt = prior.get(&v.name).map_or(0, |p| p.attempts) + 1;
                    let pre_done = prior.get(&v.name).is_some_and(|p| p.pre_hook_done);
                    let tx = tx.clone();
                    let (journal, overhead, wave_name) = (&journal, &overhead, &wave.name);
                    s.spawn(move || {
                        let st = run_vm(
                            plan, wave_name, v, attempt, pre_done, est, reserved, journal,
                            overhead, boot, events,
                        )
                        .unwrap_or_else(|e| {
                            events(RunEvent::Message {
                                vm: v.name.clone(),
                                text: format!("runner error: {}", v2k_inventory::one_line(&e)),
                            });
                            VmStatus::Failed
                        });
                        let _ = tx.send((v.name.clone(), st));
                    });
                }
                overhead.add(t.elapsed());
                if running.is_empty() {
                    break;
                }
                let Ok((name, st)) = rx.recv() else {
                    break;
                };
                running.retain(|r| r.name != name);
                if st == VmStatus::Failed {
                    failed += 1;
                    if wave.stop_after.is_some_and(|n| failed >= n) {
                        stop = true;
                    }
                }
            }
            if stop {
                stopped = Some(format!(
                    "an earlier wave ({}) was stopped by its failure policy",
                    wave.name
                ));
            }
            Ok(())
        })?;
        let t = Instant::now();
        let records = crate::journal::read(&plan.run_dir)?;
        let mut rep = report::build(&records, &wave.name, false);
        let oh = overhead.take() + t.elapsed().as_secs_f64();
        journal.append(Entry::WaveFinished {
            wave: wave.name.clone(),
            migrated: rep.summary.migrated,
            failed: rep.summary.failed,
            not_run: rep.summary.not_run,
            overhead_seconds: oh,
            wall_seconds: tw.elapsed().as_secs_f64(),
        })?;
        rep.overhead_seconds = oh;
        rep.wall_seconds = tw.elapsed().as_secs_f64();
        let html = report::write(&plan.run_dir, &rep)?;
        any_bad |= rep.summary.failed + rep.summary.not_run > 0;
        events(RunEvent::WaveFinished {
            wave: wave.name.clone(),
            report: Box::new(rep.clone()),
            html,
        });
        summaries.push(rep);
    }
    let exit_code = if held.is_some() {
        crate::EXIT_HELD
    } else if any_bad {
        crate::EXIT_FAILED
    } else {
        crate::EXIT_OK
    };
    journal.append(Entry::RunFinished { exit_code })?;
    Ok(RunSummary {
        exit_code,
        held,
        waves: summaries,
    })
}

/// A VM running now, as the limits count it.
struct Running {
    name: String,
    disks: usize,
    datastore: PathBuf,
    esxi_host: Option<String>,
    estimate: u64,
}

/// Whether `next` may start beside `running` within `limits`: the disks in flight
/// (a VM with more disks than the limit runs alone), the VMs per datastore, and the
/// disks in flight per ESXi host. A VM with more disks than its ESXi host's limit
/// waits until nothing else of that host is in flight and then runs alone on it;
/// that happens only in a hand-written plan: `v2k wave assign` never gives a shard a
/// share below its largest VM, since a shard's share is part of a budget other
/// conversion hosts hold the rest of.
fn fits(limits: &crate::plan::Limits, running: &[Running], next: &Running) -> bool {
    let disks_used: usize = running.iter().map(|r| r.disks).sum();
    if !running.is_empty() && disks_used + next.disks > limits.disks {
        return false;
    }
    let same_ds = running
        .iter()
        .filter(|r| r.datastore == next.datastore)
        .count();
    if same_ds >= limits.datastore(&next.datastore) {
        return false;
    }
    if let Some(h) = &next.esxi_host {
        let on_host: usize = running
            .iter()
            .filter(|r| r.esxi_host.as_ref() == Some(h))
            .map(|r| r.disks)
            .sum();
        if on_host > 0 && on_host + next.disks > limits.esxi_host(h) {
            return false;
        }
    }
    true
}

/// One VM: free space, pre hook, migrate, post hook, journal, marker.
#[allow(clippy::too_many_arguments)]
fn run_vm(
    plan: &Plan,
    wave: &str,
    v: &VmPlan,
    attempt: u32,
    pre_done: bool,
    estimate: u64,
    reserved: u64,
    journal: &Journal,
    overhead: &Overhead,
    boot: &dyn BootStages,
    events: &(dyn Fn(RunEvent) + Sync),
) -> Result<VmStatus> {
    let start = Instant::now();
    let mut outside = Duration::ZERO; // time in migrate and hooks: not the runner's
    let base = plan.path.parent().unwrap_or(Path::new("/")).to_path_buf();
    let dir = vm_dir(&plan.run_dir, &v.name);
    std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
    journal.append(Entry::VmStarted {
        wave: wave.into(),
        vm: v.name.clone(),
        attempt,
        out: v.out.clone(),
    })?;
    events(RunEvent::VmStarted {
        wave: wave.into(),
        vm: v.name.clone(),
        attempt,
    });
    let finish = |status: VmStatus,
                  result: Option<String>,
                  reason: Option<String>,
                  migrate_s: f64,
                  bytes: u64,
                  report: Option<PathBuf>,
                  outside: Duration|
     -> Result<VmStatus> {
        let t = Instant::now();
        let seconds = start.elapsed().as_secs_f64();
        journal.append(Entry::VmFinished {
            wave: wave.into(),
            vm: v.name.clone(),
            status,
            result: result.clone(),
            reason: reason.clone(),
            seconds,
            migrate_seconds: migrate_s,
            bytes,
            report,
        })?;
        if status == VmStatus::Migrated {
            // The success marker, last: what a resumed run trusts (with the hashes).
            let m = serde_json::json!({"vm": v.name, "attempt": attempt, "result": result});
            v2k_outfile::write_atomic(
                &marker_path(&plan.run_dir, &v.name),
                m.to_string().as_bytes(),
                true,
            )
            .map_err(|e| Error::Run(format!("writing the success marker of {}: {e}", v.name)))?;
        }
        events(RunEvent::VmFinished {
            wave: wave.into(),
            vm: v.name.clone(),
            status,
            result,
            reason,
            seconds,
        });
        overhead.add(start.elapsed().saturating_sub(outside).min(start.elapsed()));
        let _ = t;
        Ok(status)
    };
    // Free space: this VM's estimate plus what the VMs already running may still write.
    if let Some((have, fs)) = free_space(&v.out) {
        let need = estimate
            .saturating_add(reserved)
            .saturating_add(plan.limits.free_space_margin);
        if have < need {
            let reason = format!(
                "not enough free space on {}: {} MiB available, {} MiB needed (this VM, the running ones, and the margin)",
                fs.display(),
                have >> 20,
                need >> 20
            );
            return finish(VmStatus::Failed, None, Some(reason), 0.0, 0, None, outside);
        }
    }
    let mut env: Vec<(&str, String)> = vec![
        ("V2K_WAVE", wave.into()),
        ("V2K_VM_NAME", v.name.clone()),
        ("V2K_VM_SOURCE", v.source.display().to_string()),
        ("V2K_OUT_DIR", v.out.display().to_string()),
        ("V2K_RUN_DIR", plan.run_dir.display().to_string()),
        ("V2K_ATTEMPT", attempt.to_string()),
    ];
    let run_hook =
        |which: &str, h: &crate::plan::Hook, env: &[(&str, String)]| -> Result<HookResult> {
            let mut env = env.to_vec();
            env.push(("V2K_HOOK", which.into()));
            let r = hooks::run(
                which,
                h,
                &base,
                &env,
                &dir.join(format!("{which}-hook.log")),
            )?;
            journal.append(Entry::Hook {
                wave: wave.into(),
                vm: v.name.clone(),
                result: r.clone(),
            })?;
            Ok(r)
        };
    if let (Some(h), false) = (&v.pre, pre_done) {
        let t = Instant::now();
        let r = run_hook("pre", h, &env)?;
        outside += t.elapsed();
        if !r.ok() {
            return finish(
                VmStatus::Failed,
                None,
                Some(r.reason()),
                0.0,
                0,
                None,
                outside,
            );
        }
    }
    let mut opts = v.migrate_options(&plan.network_map);
    // The baseline, before the migration (and its cutover) starts.
    let baseline = |remote: Option<&VsphereSource>| -> Result<_> {
        let say = |m: &str| {
            events(RunEvent::Message {
                vm: v.name.clone(),
                text: m.to_string(),
            })
        };
        let s = performance(v, &dir, remote, attempt, &|e| journal.append(e), wave, &say)?;
        if let Some(why) = s.as_ref().and_then(|p| p.missing.as_ref()) {
            events(RunEvent::Message {
                vm: v.name.clone(),
                text: format!("warning: no baseline to compare with: {why}"),
            });
        }
        Ok(s)
    };
    let progress = |e: v2k_migrate::Event| match e {
        v2k_migrate::Event::Stage { name, status } => {
            let t = Instant::now();
            let _ = journal.append(Entry::Stage {
                wave: wave.into(),
                vm: v.name.clone(),
                stage: name.into(),
                status: status.into(),
            });
            overhead.add(t.elapsed());
            events(RunEvent::Stage {
                wave: wave.into(),
                vm: v.name.clone(),
                stage: name.into(),
                status: status.into(),
            });
        }
        v2k_migrate::Event::Message(m) => events(RunEvent::Message {
            vm: v.name.clone(),
            text: m,
        }),
        // Not journalled: progress is display only, and resuming never depends on it.
        v2k_migrate::Event::Disk {
            disk,
            phase,
            done,
            total,
        } => events(RunEvent::Disk {
            vm: v.name.clone(),
            disk,
            phase: phase.into(),
            done,
            total,
        }),
    };
    let t = Instant::now();
    // A vSphere source connects per VM: one session each, so a VM's failure (an
    // expired session, a lost connection) stays its own.
    let outcome: std::result::Result<v2k_migrate::Outcome, String> = match &v.vsphere {
        Some(r) => match VsphereSource::connect(r.address.clone(), &r.settings) {
            Ok(remote) => {
                opts.performance = baseline(Some(&remote))?;
                v2k_migrate::migrate_with(&opts, Some(&remote), boot, &progress)
                    .map_err(|e| v2k_inventory::one_line(&e))
            }
            Err(e) => Err(r.connect_error(e).to_string()),
        },
        None => {
            opts.performance = baseline(None)?;
            v2k_migrate::migrate_with(&opts, None, boot, &progress)
                .map_err(|e| v2k_inventory::one_line(&e))
        }
    };
    let migrate_s = t.elapsed().as_secs_f64();
    outside += t.elapsed();
    let (mut status, result, mut reason, bytes, report) = match outcome {
        Ok(o) => {
            let bytes = o
                .report
                .disks
                .iter()
                .map(|d| d.source.allocated_bytes)
                .sum();
            let rj = Some(o.report_dir.join("report.json"));
            if o.exit_code() == 0 {
                (
                    VmStatus::Migrated,
                    Some(o.report.result.to_string()),
                    None,
                    bytes,
                    rj,
                )
            } else if let Some(p) = o.report.performance.as_ref().filter(|p| p.fails()) {
                (
                    VmStatus::Failed,
                    Some(o.report.result.to_string()),
                    Some(format!("performance regression: {}", p.verdict)),
                    bytes,
                    rj,
                )
            } else if let Some(p) = o
                .report
                .performance_after_cutover
                .as_ref()
                .filter(|p| p.fails())
            {
                (
                    VmStatus::Failed,
                    Some(o.report.result.to_string()),
                    Some(format!(
                        "performance regression after cutover: {}",
                        p.verdict
                    )),
                    bytes,
                    rj,
                )
            } else {
                let failed = |v: &v2k_migrate::Validation| -> Vec<String> {
                    v.checks
                        .iter()
                        .filter(|c| !c.passed)
                        .map(|c| format!("{}: {}", c.id, c.reason))
                        .collect()
                };
                // The validation failed, or (validated) the first boot on the
                // destination did: a failed change either way.
                let (what, why) = match (&o.report.validation, &o.report.after_cutover) {
                    (Some(v), _) if !v.passed => ("validation failed", failed(v)),
                    (_, Some(a)) if !a.passed => ("checks after cutover failed", failed(a)),
                    _ => ("validation failed", Vec::new()),
                };
                (
                    VmStatus::Failed,
                    Some(o.report.result.to_string()),
                    Some(format!("{what}: {}", why.join("; "))),
                    bytes,
                    rj,
                )
            }
        }
        Err(msg) => (VmStatus::Failed, None, Some(msg), 0, None),
    };
    if let Some(h) = &v.post {
        env.push((
            "V2K_RESULT",
            result.clone().unwrap_or_else(|| "failed".into()),
        ));
        env.push(("V2K_REASON", reason.clone().unwrap_or_default()));
        env.push((
            "V2K_REPORT",
            report
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
        ));
        let t = Instant::now();
        let r = run_hook("post", h, &env)?;
        outside += t.elapsed();
        if !r.ok() && status == VmStatus::Migrated {
            status = VmStatus::Failed;
            reason = Some(r.reason());
        }
    }
    finish(status, result, reason, migrate_s, bytes, report, outside)
}

/// The file a wave keeps a vSphere VM's own baseline in: `RUN_DIR/vms/NAME/`.
pub const BASELINE_FILE: &str = "baseline.json";

/// What the VM's report compares its validation with (docs/evidence.md):
/// `baseline-dir/NAME.baseline.json` when the plan names a directory and the file is
/// there; else, for a vSphere source, the baseline this run recorded in the VM's
/// directory, read from the server once, on the VM's first attempt — before its
/// cutover shuts the source down; without `cutover:` on the first attempt that gets
/// one — and journalled (`vm-baseline`). A baseline that cannot be
/// had is said in the report and as a warning; the VM still migrates.
fn performance(
    v: &VmPlan,
    dir: &Path,
    remote: Option<&VsphereSource>,
    attempt: u32,
    journal: &dyn Fn(Entry) -> Result<()>,
    wave: &str,
    say: &dyn Fn(&str),
) -> Result<Option<v2k_migrate::performance::Settings>> {
    let settings = |file: PathBuf, got: std::result::Result<BaselineFile, String>| {
        let (baseline, missing) = match got {
            Ok(b) => (Some(b), None),
            Err(e) => (None, Some(e)),
        };
        v2k_migrate::performance::Settings {
            file,
            baseline,
            missing,
            thresholds: v.thresholds,
            fail_on_regression: v.fail_on_regression,
        }
    };
    let read = |f: &Path| BaselineFile::read(f).map_err(|e| e.to_string());
    let planned = v
        .baseline_dir
        .as_ref()
        .map(|d| d.join(format!("{}.baseline.json", v.name)));
    if let Some(f) = planned.as_ref().filter(|f| f.exists()) {
        return Ok(Some(settings(f.clone(), read(f))));
    }
    let own = dir.join(BASELINE_FILE);
    if remote.is_none() && v.baseline_boot {
        return boot_baseline(v, dir, attempt, journal, wave, say)
            .map(|got| Some(settings(own, got)));
    }
    let Some(remote) = remote else {
        return Ok(planned.map(|f| {
            let why = format!("{}: not found", f.display());
            settings(f, Err(why))
        }));
    };
    if own.exists() {
        return Ok(Some(settings(own.clone(), read(&own))));
    }
    if attempt > 1 && v.cutover.is_some() {
        // A later attempt may follow this VM's cutover: the source's day is no
        // longer the one before migration. (Without cutover the source still runs.)
        let why = format!(
            "{}: not recorded on the VM's first attempt, and its cutover may have shut the source down since (see the journal)",
            own.display()
        );
        return Ok(Some(settings(own, Err(why))));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let taken = remote.baseline(now);
    let entry = |metrics, missing, error| Entry::VmBaseline {
        wave: wave.into(),
        vm: v.name.clone(),
        file: own.clone(),
        metrics,
        missing,
        error,
    };
    match taken {
        Ok(b) => {
            let medians = keep_baseline(&own, &v.name, &b)?;
            journal(entry(medians, b.baseline.missing.clone(), None))?;
            Ok(Some(settings(own, Ok(b))))
        }
        Err(e) => {
            let why = format!(
                "reading the baseline from vSphere: {}",
                v2k_inventory::one_line(&e)
            );
            journal(entry(Default::default(), Vec::new(), Some(why.clone())))?;
            Ok(Some(settings(own, Err(why))))
        }
    }
}

/// A baseline a VM's first attempt took (from vSphere or by booting the source),
/// written into the VM's directory; each metric's median, for its `vm-baseline` record.
fn keep_baseline(own: &Path, vm: &str, b: &BaselineFile) -> Result<BTreeMap<String, f64>> {
    let text = serde_json::to_vec_pretty(b)
        .map_err(|e| Error::Run(format!("encoding the baseline of {vm}: {e}")))?;
    v2k_outfile::write_atomic(own, &text, true)
        .map_err(|e| Error::Run(format!("writing {}: {e}", own.display())))?;
    Ok(b.baseline
        .metrics
        .iter()
        .map(|(k, s)| (k.clone(), s.median))
        .collect())
}

/// `baseline-boot: true` for a local source without a `baseline-dir:` file: the
/// baseline its first attempt made by booting it in its own shape
/// (`v2k_migrate::baseline_boot`), kept in the VM's directory and journalled
/// (`vm-baseline`) as a vSphere reading is; later attempts reuse it and never boot
/// the source again. A refusal or a boot without figures is journalled as the error;
/// the VM still migrates.
fn boot_baseline(
    v: &VmPlan,
    dir: &Path,
    attempt: u32,
    journal: &dyn Fn(Entry) -> Result<()>,
    wave: &str,
    say: &dyn Fn(&str),
) -> Result<std::result::Result<BaselineFile, String>> {
    let own = dir.join(BASELINE_FILE);
    if own.exists() {
        return Ok(BaselineFile::read(&own).map_err(|e| e.to_string()));
    }
    if attempt > 1 {
        return Ok(Err(format!(
            "{}: the baseline boot of the VM's first attempt gave none (see the journal)",
            own.display()
        )));
    }
    let entry = |metrics, missing, error| Entry::VmBaseline {
        wave: wave.into(),
        vm: v.name.clone(),
        file: own.clone(),
        metrics,
        missing,
        error,
    };
    let s = v2k_migrate::baseline_boot::BootSettings::detect(v.accel, v.boot_timeout);
    let taken =
        v2k_migrate::stages::inspect(&v.source, v.ovf_vm.as_deref(), v.verify_manifest, None)
            .map_err(|e| v2k_inventory::one_line(&e))
            .and_then(|vm| {
                v2k_migrate::baseline_boot::take(&vm, &dir.join("baseline-boot"), &s, &mut |m| {
                    say(m)
                })
                .map_err(|e| v2k_inventory::one_line(&e))
            });
    match taken {
        Ok(b) => {
            let medians = keep_baseline(&own, &v.name, &b)?;
            journal(entry(medians, b.baseline.missing.clone(), None))?;
            Ok(Ok(b))
        }
        Err(e) => {
            let why = format!("booting the source for its baseline: {e}");
            journal(entry(Default::default(), Vec::new(), Some(why.clone())))?;
            Ok(Err(why))
        }
    }
}

/// Bytes available to an unprivileged writer on the file system that will hold
/// `path` (its nearest existing ancestor), and that ancestor.
fn free_space(path: &Path) -> Option<(u64, PathBuf)> {
    let mut p = path.to_path_buf();
    while !p.exists() {
        p = p.parent()?.to_path_buf();
    }
    let s = rustix::fs::statvfs(&p).ok()?;
    Some((s.f_bavail.saturating_mul(s.f_frsize), p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prior_state_sees_interrupted_and_finished_vms() {
        let rec = |entry| Record { time: 0.0, entry };
        let r = vec![
            rec(Entry::VmStarted {
                wave: "w".into(),
                vm: "a".into(),
                attempt: 1,
                out: "/o/a".into(),
            }),
            rec(Entry::VmStarted {
                wave: "w".into(),
                vm: "b".into(),
                attempt: 1,
                out: "/o/b".into(),
            }),
            rec(Entry::VmFinished {
                wave: "w".into(),
                vm: "a".into(),
                status: VmStatus::Migrated,
                result: None,
                reason: None,
                seconds: 1.0,
                migrate_seconds: 1.0,
                bytes: 0,
                report: None,
            }),
        ];
        let p = prior_state(&r);
        assert_eq!(p["a"].finished, Some(VmStatus::Migrated));
        assert_eq!(p["b"].finished, None);
        assert_eq!(p["b"].attempts, 1);
    }

    #[test]
    fn the_esxi_share_and_datastore_limits_hold_back_a_vm_that_would_exceed_them() {
        let limits = crate::plan::Limits {
            vms: 10,
            disks: 10,
            per_datastore: usize::MAX,
            datastores: [(PathBuf::from("/ds1"), 1)].into(),
            esxi_host_disks: usize::MAX,
            esxi_hosts: [("esx-a".to_string(), 2)].into(),
            free_space_margin: 0,
        };
        let vm = |name: &str, disks, ds: &str, host: Option<&str>| Running {
            name: name.into(),
            disks,
            datastore: ds.into(),
            esxi_host: host.map(String::from),
            estimate: 0,
        };
        let running = vec![vm("a", 1, "/ds2", Some("esx-a"))];
        assert!(fits(&limits, &running, &vm("b", 1, "/ds2", Some("esx-a"))));
        assert!(!fits(&limits, &running, &vm("b", 2, "/ds2", Some("esx-a"))));
        // Another ESXi host, or none, is not held back by esx-a's share.
        assert!(fits(&limits, &running, &vm("b", 2, "/ds2", Some("esx-b"))));
        assert!(fits(&limits, &running, &vm("b", 2, "/ds2", None)));
        // One VM at once from /ds1.
        let running = vec![vm("a", 1, "/ds1", None)];
        assert!(!fits(&limits, &running, &vm("b", 1, "/ds1", None)));
        assert!(fits(&limits, &running, &vm("b", 1, "/ds3", None)));
    }

    #[test]
    fn free_space_looks_at_the_nearest_existing_ancestor() {
        let d = tempfile::tempdir().unwrap();
        let (n, p) = free_space(&d.path().join("a/b/c")).unwrap();
        assert!(n > 0);
        assert_eq!(p, d.path());
    }
}
