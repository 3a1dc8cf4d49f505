//! Per-wave cutover reports, built from the journal alone (plus each VM's own
//! `report.json`): `RUN_DIR/WAVE/wave-report.json` (schema version 1),
//! `wave-report.html` (self-contained: inline CSS, console thumbnails as `data:` URIs,
//! relative links to each VM's `report.html`) and `junit.xml` (one testcase per VM).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;
use v2k_inventory::model::{Concern, Severity};
use v2k_migrate::report::{base64, read_summary, Check, Downtime};

use crate::hooks::HookResult;
use crate::journal::{Entry, Record, VmStatus};
use crate::metrics::WaveMetrics;
use crate::{io, Result};

pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Summary {
    pub total: usize,
    pub migrated: usize,
    pub validated: usize,
    pub failed: usize,
    pub not_run: usize,
    /// Not finished: running now, or interrupted.
    pub pending: usize,
    /// Merged reports: VMs migrated on more than one conversion host.
    #[serde(skip_serializing_if = "is_zero")]
    pub conflicts: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct WaveReport {
    pub schema_version: u32,
    pub wave: String,
    pub summary: Summary,
    pub wall_seconds: f64,
    /// The runner's own time (journal, scheduling, checks, reports).
    pub overhead_seconds: f64,
    /// This wave's change-failure rate and MTTR.
    pub metrics: WaveMetrics,
    /// The same figures for every wave the run has started, in plan order (the charts).
    pub trend: Vec<WaveMetrics>,
    /// A merged report: the conversion hosts whose runs it merges.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// A merged report: VMs migrated on more than one host (each is also in `vms`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conflicts: Vec<Conflict>,
    pub vms: Vec<VmReport>,
}

/// A VM migrated on more than one conversion host: two copies exist.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Conflict {
    pub vm: String,
    pub hosts: Vec<String>,
}

/// What another host's run says of a VM (a merged report).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Elsewhere {
    pub host: String,
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct VmReport {
    pub name: String,
    pub source: PathBuf,
    pub out: PathBuf,
    /// `migrated`, `failed`, `not-run`, `pending` (not started), `running` or
    /// `interrupted`.
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub attempts: u32,
    /// Skipped on resume after its disks were re-verified.
    pub reverified: bool,
    pub seconds: f64,
    pub migrate_seconds: f64,
    /// Allocated source bytes read.
    pub bytes: u64,
    pub mib_per_second: f64,
    pub concerns: Vec<Concern>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validation: Option<VmValidation>,
    /// Before and after, when the VM was compared with a baseline.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub performance: Option<VmPerformance>,
    /// How long the VM was down at its cutover, and whether it was imported live
    /// (its report's `downtime`, one definition for both: docs/report.md).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub downtime: Option<Downtime>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub screenshot: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report_html: Option<PathBuf>,
    /// Why the VM's report.json could not be read (an unknown schema, a damaged file).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report_error: Option<String>,
    pub hooks: Vec<HookResult>,
    /// Every stage event, in order, across attempts.
    pub stages: Vec<StageEvent>,
    /// A merged report: the conversion host whose record this is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// A merged report: the VM's records on other hosts (a host it moved from, or a
    /// conflict).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub elsewhere: Vec<Elsewhere>,
}

/// The validation part of a VM's report that the wave report shows.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct VmValidation {
    pub passed: bool,
    pub checks: Vec<Check>,
}

/// The performance part of a VM's report that the wave report shows: whether it
/// regressed, and the verdict in words.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct VmPerformance {
    /// The metrics that regressed beyond their thresholds (empty: none).
    pub regressions: Vec<String>,
    /// The regression failed the VM (`fail-on-regression`).
    pub failed: bool,
    pub verdict: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct StageEvent {
    pub stage: String,
    pub status: String,
}

fn severity(s: Severity) -> &'static str {
    match s {
        Severity::Critical => "critical",
        Severity::Warning => "warning",
        Severity::Info => "info",
    }
}

/// The state of `wave` as the journal tells it. `live`: a runner holds the journal
/// now (unfinished VMs are `running`, else `interrupted`).
pub fn build(records: &[Record], wave: &str, live: bool) -> WaveReport {
    let mut vms: BTreeMap<String, VmReport> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut wall = 0.0;
    let mut overhead = 0.0;
    let blank = |name: &str, source: PathBuf, out: PathBuf| VmReport {
        name: name.into(),
        source,
        out,
        status: "pending".into(),
        result: None,
        reason: None,
        attempts: 0,
        reverified: false,
        seconds: 0.0,
        migrate_seconds: 0.0,
        bytes: 0,
        mib_per_second: 0.0,
        concerns: Vec::new(),
        validation: None,
        performance: None,
        downtime: None,
        screenshot: None,
        report_html: None,
        report_error: None,
        hooks: Vec::new(),
        stages: Vec::new(),
        host: None,
        elsewhere: Vec::new(),
    };
    for r in records {
        match &r.entry {
            Entry::RunStarted { waves, .. } => {
                for w in waves.iter().filter(|w| w.name == wave) {
                    for v in &w.vms {
                        order.push(v.name.clone());
                        vms.insert(
                            v.name.clone(),
                            blank(&v.name, v.source.clone(), v.out.clone()),
                        );
                    }
                }
            }
            Entry::VmStarted {
                wave: w,
                vm,
                attempt,
                ..
            } if w == wave => {
                if let Some(x) = vms.get_mut(vm) {
                    x.status = if live { "running" } else { "interrupted" }.into();
                    x.attempts = *attempt;
                    x.reason = None;
                    x.reverified = false;
                }
            }
            Entry::Stage {
                wave: w,
                vm,
                stage,
                status,
            } if w == wave => {
                if let Some(x) = vms.get_mut(vm) {
                    x.stages.push(StageEvent {
                        stage: stage.clone(),
                        status: status.clone(),
                    });
                }
            }
            Entry::Hook {
                wave: w,
                vm,
                result,
            } if w == wave => {
                if let Some(x) = vms.get_mut(vm) {
                    x.hooks.push(result.clone());
                }
            }
            Entry::VmVerified { wave: w, vm } if w == wave => {
                if let Some(x) = vms.get_mut(vm) {
                    x.reverified = true;
                }
            }
            Entry::VmFinished {
                wave: w,
                vm,
                status,
                result,
                reason,
                seconds,
                migrate_seconds,
                bytes,
                ..
            } if w == wave => {
                if let Some(x) = vms.get_mut(vm) {
                    x.status = match status {
                        VmStatus::Migrated => "migrated",
                        VmStatus::Failed => "failed",
                    }
                    .into();
                    x.result = result.clone();
                    x.reason = reason.clone();
                    x.seconds = *seconds;
                    x.migrate_seconds = *migrate_seconds;
                    x.bytes = *bytes;
                    x.mib_per_second = if *migrate_seconds > 0.0 {
                        *bytes as f64 / 1048576.0 / migrate_seconds
                    } else {
                        0.0
                    };
                }
            }
            Entry::VmNotRun {
                wave: w,
                vm,
                reason,
            } if w == wave => {
                if let Some(x) = vms.get_mut(vm) {
                    x.status = "not-run".into();
                    x.reason = Some(reason.clone());
                }
            }
            Entry::WaveFinished {
                wave: w,
                wall_seconds,
                overhead_seconds,
                ..
            } if w == wave => {
                wall += wall_seconds;
                overhead += overhead_seconds;
            }
            _ => {}
        }
    }
    let mut list = Vec::new();
    let mut s = Summary::default();
    for name in order {
        let Some(mut v) = vms.remove(&name) else {
            continue;
        };
        let report_json = v.out.join("report.json");
        if report_json.is_file() {
            match read_summary(&report_json) {
                Ok(r) => {
                    v.concerns = r.concerns;
                    v.downtime = r.downtime;
                    v.performance = r.performance.map(|p| VmPerformance {
                        failed: p.fails(),
                        regressions: p.regressions,
                        verdict: p.verdict,
                    });
                    if let Some(val) = r.validation {
                        v.screenshot = val.evidence.screenshot;
                        v.validation = Some(VmValidation {
                            passed: val.passed,
                            checks: val.checks,
                        });
                    }
                    if v.out.join("report.html").is_file() {
                        v.report_html = Some(v.out.join("report.html"));
                    }
                }
                // A report of a schema this v2k cannot read is named, not dropped.
                Err(e) => v.report_error = Some(e.to_string()),
            }
        }
        s.total += 1;
        match v.status.as_str() {
            "migrated" => {
                s.migrated += 1;
                if v.result.as_deref() == Some("validated") {
                    s.validated += 1;
                }
            }
            "failed" => s.failed += 1,
            "not-run" => s.not_run += 1,
            _ => s.pending += 1,
        }
        list.push(v);
    }
    WaveReport {
        schema_version: SCHEMA_VERSION,
        wave: wave.into(),
        summary: s,
        wall_seconds: wall,
        overhead_seconds: overhead,
        metrics: crate::metrics::wave(records, wave),
        trend: crate::metrics::all(records),
        hosts: Vec::new(),
        conflicts: Vec::new(),
        vms: list,
    }
}

/// One conversion host's run directory, for [`merge`].
#[derive(Debug, Clone)]
pub struct HostRun {
    /// The plan's `conversion-host:`, else the directory's name.
    pub host: String,
    pub dir: PathBuf,
    pub records: Vec<Record>,
}

impl HostRun {
    /// Reads `dir`'s journal. VM output directories the journal names that do not
    /// exist here but do under `dir/vms/NAME/out` (a run directory fetched from its
    /// host) are read from there.
    pub fn read(dir: &Path) -> Result<HostRun> {
        let mut records = crate::journal::read(dir)?;
        if records.is_empty() {
            return Err(crate::Error::Journal {
                path: dir.join(crate::journal::FILE_NAME).display().to_string(),
                message: "no journal (not a wave run directory)".into(),
            });
        }
        let mut host = None;
        for r in &mut records {
            if let Entry::RunStarted {
                waves,
                conversion_host,
                ..
            } = &mut r.entry
            {
                host = host.or(conversion_host.clone());
                for v in waves.iter_mut().flat_map(|w| &mut w.vms) {
                    let here = dir.join("vms").join(&v.name).join("out");
                    if !v.out.exists() && here.is_dir() {
                        v.out = here;
                    }
                }
            }
        }
        let host = host.unwrap_or_else(|| {
            dir.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| dir.display().to_string())
        });
        Ok(HostRun {
            host,
            dir: dir.to_path_buf(),
            records,
        })
    }
}

/// How far a VM got, for choosing which host's record a merged report shows.
fn rank(status: &str) -> u8 {
    match status {
        "migrated" => 6,
        "running" => 5,
        "failed" => 4,
        "not-run" => 3,
        "interrupted" => 2,
        _ => 1,
    }
}

/// One report per wave from several hosts' runs: each VM with the host whose record
/// went furthest (migrated, running, failed, not run, interrupted, pending), the
/// others' records beside it; a VM migrated on two hosts is a conflict, listed and
/// counted, never dropped.
pub fn merge(runs: &[HostRun]) -> Vec<WaveReport> {
    let mut waves: Vec<String> = Vec::new();
    for r in runs {
        for w in wave_names(&r.records) {
            if !waves.contains(&w) {
                waves.push(w);
            }
        }
    }
    let mut all: Vec<Record> = runs.iter().flat_map(|r| r.records.clone()).collect();
    all.sort_by(|a, b| a.time.total_cmp(&b.time));
    let mut out = Vec::new();
    for w in &waves {
        let parts: Vec<(String, WaveReport)> = runs
            .iter()
            .filter(|r| wave_names(&r.records).contains(w))
            .map(|r| (r.host.clone(), build(&r.records, w, false)))
            .collect();
        let mut order: Vec<String> = Vec::new();
        let mut by_vm: BTreeMap<String, Vec<(String, VmReport)>> = BTreeMap::new();
        for (host, rep) in &parts {
            for v in &rep.vms {
                if !by_vm.contains_key(&v.name) {
                    order.push(v.name.clone());
                }
                by_vm
                    .entry(v.name.clone())
                    .or_default()
                    .push((host.clone(), v.clone()));
            }
        }
        let mut s = Summary::default();
        let mut conflicts = Vec::new();
        let mut vms = Vec::new();
        for name in order {
            let mut cands = by_vm.remove(&name).unwrap_or_default();
            // The furthest record first; among equals, the run given first.
            cands.sort_by_key(|(_, v)| std::cmp::Reverse(rank(&v.status)));
            let migrated: Vec<String> = cands
                .iter()
                .filter(|(_, v)| v.status == "migrated")
                .map(|(h, _)| h.clone())
                .collect();
            let mut it = cands.into_iter();
            let Some((host, mut v)) = it.next() else {
                continue;
            };
            v.host = Some(host);
            v.elsewhere = it
                .filter(|(_, o)| o.status != "pending")
                .map(|(h, o)| Elsewhere {
                    host: h,
                    status: o.status,
                    reason: o.reason,
                })
                .collect();
            if migrated.len() > 1 {
                s.conflicts += 1;
                conflicts.push(Conflict {
                    vm: name.clone(),
                    hosts: migrated,
                });
            }
            s.total += 1;
            match v.status.as_str() {
                "migrated" => {
                    s.migrated += 1;
                    if v.result.as_deref() == Some("validated") {
                        s.validated += 1;
                    }
                }
                "failed" => s.failed += 1,
                "not-run" => s.not_run += 1,
                _ => s.pending += 1,
            }
            vms.push(v);
        }
        out.push(WaveReport {
            schema_version: SCHEMA_VERSION,
            wave: w.clone(),
            summary: s,
            wall_seconds: parts
                .iter()
                .map(|(_, r)| r.wall_seconds)
                .fold(0.0, f64::max),
            overhead_seconds: parts.iter().map(|(_, r)| r.overhead_seconds).sum(),
            metrics: crate::metrics::wave(&all, w),
            trend: crate::metrics::all(&all),
            hosts: parts.iter().fold(Vec::new(), |mut v, (h, _)| {
                if !v.contains(h) {
                    v.push(h.clone());
                }
                v
            }),
            conflicts,
            vms,
        });
    }
    out
}

/// The waves the journal knows, in plan order.
pub fn wave_names(records: &[Record]) -> Vec<String> {
    records
        .iter()
        .find_map(|r| match &r.entry {
            Entry::RunStarted { waves, .. } => Some(waves.iter().map(|w| w.name.clone()).collect()),
            _ => None,
        })
        .unwrap_or_default()
}

/// Writes the three files into `RUN_DIR/WAVE/`; returns the HTML's path.
pub fn write(run_dir: &Path, r: &WaveReport) -> Result<PathBuf> {
    let dir = run_dir.join(&r.wave);
    std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
    let w = |name: &str, b: &[u8]| -> Result<()> {
        v2k_outfile::write_atomic(&dir.join(name), b, true)
            .map_err(|e| crate::Error::Run(format!("writing {name}: {e}")))
    };
    w(
        "wave-report.json",
        &serde_json::to_vec_pretty(r).unwrap_or_default(),
    )?;
    w("junit.xml", junit(r).as_bytes())?;
    w("wave-report.html", html(r, &dir).as_bytes())?;
    Ok(dir.join("wave-report.html"))
}

fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            // XML 1.0 forbids most control characters even escaped.
            c if (c as u32) < 0x20 && !matches!(c, '\n' | '\t' | '\r') => o.push('\u{fffd}'),
            c => o.push(c),
        }
    }
    o
}

/// JUnit XML: a testsuite per wave, a testcase per VM; a failed VM is a `<failure>`
/// with its reason, a VM not run is `<skipped>`.
pub fn junit(r: &WaveReport) -> String {
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        x,
        "<testsuites name=\"v2k\" tests=\"{}\" failures=\"{}\" skipped=\"{}\">",
        r.summary.total,
        r.summary.failed + r.summary.pending + r.summary.conflicts,
        r.summary.not_run
    );
    let _ = writeln!(
        x,
        "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{}\" skipped=\"{}\" time=\"{:.1}\">",
        esc(&r.wave),
        r.summary.total,
        r.summary.failed + r.summary.pending + r.summary.conflicts,
        r.summary.not_run,
        r.wall_seconds
    );
    // The wave's figures for CI dashboards that chart suite properties; a figure the
    // wave does not have (no attempt, no repair) is left out rather than written as 0.
    let m = &r.metrics;
    x.push_str("    <properties>\n");
    let mut prop = |name: &str, value: String| {
        let _ = writeln!(
            x,
            "      <property name=\"v2k.{name}\" value=\"{}\"/>",
            esc(&value)
        );
    };
    prop("attempted", m.attempted.to_string());
    prop("failed-changes", m.failed_changes.to_string());
    if let Some(c) = m.change_failure_rate {
        prop("change-failure-rate", format!("{c:.4}"));
    }
    prop("repaired", m.repaired.to_string());
    prop("unrepaired", m.unrepaired.to_string());
    if let Some(t) = m.mttr_seconds {
        prop("mttr-seconds", format!("{t:.1}"));
    }
    x.push_str("    </properties>\n");
    for v in &r.vms {
        let _ = write!(
            x,
            "    <testcase classname=\"v2k.wave.{}\" name=\"{}\" time=\"{:.1}\"",
            esc(&r.wave),
            esc(&v.name),
            v.seconds
        );
        let reason = v.reason.clone().unwrap_or_default();
        // Its downtime (live or cold) and its before and after (a regression's
        // metrics and the verdict), as the VM's own properties for CI dashboards; a
        // regression that failed the VM is also its <failure> (its reason says
        // "performance regression: …").
        let mut inner = String::new();
        let mut props: Vec<(&str, String)> = Vec::new();
        if let Some(d) = &v.downtime {
            props.push(("live", d.live.to_string()));
            if let Some(s) = d.seconds {
                props.push(("downtime-seconds", format!("{s:.1}")));
            }
        }
        if let Some(p) = &v.performance {
            let regressions = if p.regressions.is_empty() {
                "none".to_string()
            } else {
                p.regressions.join(",")
            };
            props.push(("performance.regressions", regressions));
            props.push(("performance.failed", p.failed.to_string()));
            props.push(("performance.verdict", p.verdict.clone()));
        }
        if !props.is_empty() {
            inner.push_str("      <properties>\n");
            for (name, value) in &props {
                let _ = writeln!(
                    inner,
                    "        <property name=\"v2k.{name}\" value=\"{}\"/>",
                    esc(value)
                );
            }
            inner.push_str("      </properties>\n");
        }
        let failure =
            |msg: &str| format!("      <failure message=\"{0}\">{0}</failure>\n", esc(msg));
        if let Some(c) = r.conflicts.iter().find(|c| c.vm == v.name) {
            inner.push_str(&failure(&format!(
                "migrated on more than one host: {}",
                c.hosts.join(", ")
            )));
        } else {
            match v.status.as_str() {
                "migrated" => {}
                "not-run" => {
                    let _ = writeln!(inner, "      <skipped message=\"{}\"/>", esc(&reason));
                }
                "failed" => inner.push_str(&failure(&reason)),
                s => inner.push_str(&failure(&format!("{s}: the VM did not finish"))),
            }
        }
        if inner.is_empty() {
            x.push_str("/>\n");
        } else {
            let _ = write!(x, ">\n{inner}    </testcase>\n");
        }
    }
    x.push_str("  </testsuite>\n</testsuites>\n");
    x
}

/// A path relative to `from` when under the same root, for links that survive
/// copying the run directory.
fn rel(p: &Path, from: &Path) -> String {
    let a: Vec<_> = p.components().collect();
    let b: Vec<_> = from.components().collect();
    let common = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    if common <= 1 {
        return p.display().to_string();
    }
    let mut s = "../".repeat(b.len() - common);
    s.push_str(
        &a[common..]
            .iter()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/"),
    );
    s
}

/// A VM's downtime as the table shows it: the seconds and how (live or cold); empty
/// for a VM without a cutover.
fn downtime_cell(d: Option<&Downtime>) -> String {
    let Some(d) = d else {
        return String::new();
    };
    let how = if d.live { "live" } else { "cold" };
    match d.seconds {
        Some(s) => format!("{s:.1} s<br><small>{how}</small>"),
        None => format!("not measured<br><small>{how}: no agent report on the target</small>"),
    }
}

fn mib(b: u64) -> String {
    format!("{:.1}", b as f64 / 1048576.0)
}

/// Console screenshots bigger than this are not embedded (a thumbnail of a VGA
/// console PNG is far smaller; a huge one would bloat the page).
const MAX_THUMBNAIL_BYTES: u64 = 4 << 20;

/// A rate as the page shows it.
fn percent(f: f64) -> String {
    format!("{:.1} %", f * 100.0)
}

/// The wave's change-failure rate and MTTR in words, its failures, and both figures
/// charted across the waves run so far.
fn evidence(r: &WaveReport) -> String {
    let m = &r.metrics;
    let mut h = String::from("<h2>Change failure and repair</h2>\n<p>");
    match m.change_failure_rate {
        Some(c) => {
            let _ = write!(
                h,
                "Change-failure rate <b>{}</b> ({} of {} VMs attempted failed at least once). ",
                percent(c),
                m.failed_changes,
                m.attempted
            );
        }
        None => h.push_str("No VM attempted yet. "),
    }
    match m.mttr_seconds {
        Some(t) => {
            let _ = write!(
                h,
                "MTTR <b>{t:.1} s</b> over {} repaired failure(s)",
                m.repaired
            );
        }
        None if m.failed_changes == 0 => h.push_str("No failure to repair"),
        None => h.push_str("MTTR: no failure repaired yet"),
    }
    if m.unrepaired > 0 {
        let _ = write!(h, "; <b>{} not repaired</b>", m.unrepaired);
    }
    h.push_str(".</p>\n");
    if !m.failures.is_empty() {
        h.push_str(
            "<table>\n<tr><th>VM</th><th>kind</th><th>reason</th><th>repaired after</th></tr>\n",
        );
        for f in &m.failures {
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&f.vm),
                esc(&f.kind),
                esc(&f.reason),
                f.repair_seconds
                    .map_or("not repaired".to_string(), |t| format!("{t:.1} s"))
            );
        }
        h.push_str("</table>\n");
    }
    let rates: Vec<Bar> = r
        .trend
        .iter()
        .map(|w| Bar {
            wave: w.wave.clone(),
            value: w.change_failure_rate,
            label: w
                .change_failure_rate
                .map_or("none attempted".into(), percent),
        })
        .collect();
    let mttr: Vec<Bar> = r
        .trend
        .iter()
        .map(|w| Bar {
            wave: w.wave.clone(),
            value: w.mttr_seconds,
            label: match (w.mttr_seconds, w.unrepaired) {
                (Some(t), 0) => format!("{t:.1} s"),
                (Some(t), n) => format!("{t:.1} s, {n} open"),
                (None, 0) => "no failure".into(),
                (None, n) => format!("{n} open"),
            },
        })
        .collect();
    h.push_str("<div class=\"charts\">\n");
    h.push_str(&chart("Change-failure rate per wave", &rates, &r.wave, 1.0));
    h.push_str(&chart("MTTR per wave (seconds)", &mttr, &r.wave, 0.0));
    h.push_str("</div>\n");
    h
}

/// A merged report's hosts and its conflicts, first: a conflict means two copies.
fn merged(r: &WaveReport) -> String {
    if r.hosts.is_empty() {
        return String::new();
    }
    let mut h = format!(
        "<p>Merged from {} conversion host(s): {}.</p>\n",
        r.hosts.len(),
        esc(&r.hosts.join(", "))
    );
    if !r.conflicts.is_empty() {
        let _ = writeln!(
            h,
            "<h2>Conflicts</h2>\n<p><b>{} VM(s) migrated on more than one host</b>: two copies exist; keep one.</p>\n<ul>",
            r.conflicts.len()
        );
        for c in &r.conflicts {
            let _ = writeln!(
                h,
                "<li class=\"conflict\">{}: {}</li>",
                esc(&c.vm),
                esc(&c.hosts.join(", "))
            );
        }
        h.push_str("</ul>\n");
    }
    h
}

/// One bar of a chart: a wave, its figure (none: no bar) and the words above it.
struct Bar {
    wave: String,
    value: Option<f64>,
    label: String,
}

/// Chart geometry in SVG user units (pixels on screen): room for a 12-character wave
/// name under each bar and a label above it, at the page's 14 px font.
const CHART_BAR_WIDTH: usize = 90;
const CHART_PLOT_HEIGHT: f64 = 100.0;
/// Room for the longest title ("Change-failure rate per wave") at 13 px bold.
const CHART_MIN_WIDTH: usize = 260;

/// A bar chart of one figure across waves as inline SVG: no script and no colour
/// needed to read it (values are written above the bars, this wave's bar is black and
/// the others grey), so it prints. `floor` is the least top of the scale (1.0 for a
/// rate, so 5 % does not fill the chart).
fn chart(title: &str, bars: &[Bar], current: &str, floor: f64) -> String {
    let top = bars
        .iter()
        .filter_map(|b| b.value)
        .fold(floor, f64::max)
        .max(f64::MIN_POSITIVE);
    let width = (20 + CHART_BAR_WIDTH * bars.len()).max(CHART_MIN_WIDTH);
    // 40: the title line, then the label above a full-height bar.
    let base = 40.0 + CHART_PLOT_HEIGHT;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<svg width=\"{width}\" height=\"{h}\" \
         viewBox=\"0 0 {width} {h}\" role=\"img\" aria-label=\"{t}\"><title>{t}</title>\
         <text x=\"10\" y=\"14\" font-size=\"13\" font-weight=\"bold\">{t}</text>\
         <line x1=\"10\" y1=\"{base}\" x2=\"{x2}\" y2=\"{base}\" stroke=\"#000\"/>",
        h = base as usize + 22,
        t = esc(title),
        x2 = width - 10,
    );
    for (i, b) in bars.iter().enumerate() {
        let x = 10 + CHART_BAR_WIDTH * i;
        let cx = x + CHART_BAR_WIDTH / 2;
        let height = b
            .value
            .map_or(0.0, |v| (v / top).clamp(0.0, 1.0) * CHART_PLOT_HEIGHT);
        let fill = if b.wave == current { "#000" } else { "#888" };
        if height > 0.0 {
            let _ = write!(
                s,
                "<rect class=\"bar\" x=\"{}\" y=\"{:.1}\" width=\"{}\" height=\"{height:.1}\" fill=\"{fill}\"/>",
                x + 15,
                base - height,
                CHART_BAR_WIDTH - 30
            );
        }
        let name: String = b.wave.chars().take(12).collect();
        let _ = write!(
            s,
            "<text x=\"{cx}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"middle\">{}</text>\
             <text x=\"{cx}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"middle\">{}</text>",
            base - height - 4.0,
            esc(&b.label),
            base + 15.0,
            esc(&name)
        );
    }
    s.push_str("</svg>\n");
    s
}

pub fn html(r: &WaveReport, dir: &Path) -> String {
    let s = &r.summary;
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>v2k wave {w}</title><style>\
body{{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}}table{{border-collapse:collapse;width:100%}}\
td,th{{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}}th{{background:#f3f3f3}}\
.migrated{{background:#e6f6e6}}.failed{{background:#fbe3e3}}.not-run,.pending,.interrupted,.running{{background:#fff5d6}}\
.charts svg{{margin:0 2em 1em 0;vertical-align:top}}.cards span{{display:inline-block;margin-right:1.5em;font-size:1.3em}}img{{width:160px;border:1px solid #999}}\
ul{{margin:0;padding-left:1.2em}}pre{{white-space:pre-wrap;max-height:8em;overflow:auto;margin:0;font-size:12px}}\
</style></head><body>\n<h1>Wave {w}</h1>\n<p class=\"cards\"><span>{t} VMs</span><span>{m} migrated</span>\
<span>{va} validated</span><span>{f} failed</span><span>{n} not run</span><span>{p} pending</span></p>\n\
<p>Wall time {wall:.1} s; runner overhead {oh:.2} s.</p>\n{merged}{evidence}<table>\n<tr><th>VM</th><th>status</th><th>time</th>\
<th>downtime</th><th>data moved</th><th>throughput</th><th>concerns</th><th>validation</th><th>console</th><th>hooks</th></tr>\n",
        w = esc(&r.wave),
        t = s.total,
        m = s.migrated,
        va = s.validated,
        f = s.failed,
        n = s.not_run,
        p = s.pending,
        wall = r.wall_seconds,
        oh = r.overhead_seconds,
        evidence = evidence(r),
        merged = merged(r),
    );
    for v in &r.vms {
        let name = match &v.report_html {
            Some(p) => format!("<a href=\"{}\">{}</a>", esc(&rel(p, dir)), esc(&v.name)),
            None => esc(&v.name),
        };
        let mut status = esc(&v.status);
        if let Some(res) = &v.result {
            let _ = write!(status, "<br>{}", esc(res));
        }
        if v.reverified {
            status.push_str("<br>(re-verified on resume)");
        }
        if let Some(host) = &v.host {
            let _ = write!(status, "<br>on <b>{}</b>", esc(host));
        }
        for e in &v.elsewhere {
            let _ = write!(
                status,
                "<br><small>also on {}: {}</small>",
                esc(&e.host),
                esc(&e.status)
            );
        }
        if let Some(why) = &v.reason {
            let _ = write!(status, "<br><small>{}</small>", esc(why));
        }
        let concerns = v
            .concerns
            .iter()
            .map(|c| {
                format!(
                    "<li>{} {}: {}</li>",
                    severity(c.severity),
                    esc(&c.id),
                    esc(&c.message)
                )
            })
            .collect::<String>();
        let validation = match (&v.validation, &v.report_error) {
            (_, Some(e)) => format!("report unreadable: {}", esc(e)),
            (None, None) => "not validated".to_string(),
            (Some(val), None) => val
                .checks
                .iter()
                .map(|c| {
                    format!(
                        "<li>{} {}: {}</li>",
                        if c.passed { "pass" } else { "FAIL" },
                        esc(&c.id),
                        esc(&c.reason)
                    )
                })
                .collect::<String>(),
        };
        let mut validation = validation;
        if let Some(p) = &v.performance {
            // One line: whether it regressed; the VM's report has the table.
            let _ = write!(
                validation,
                "<li>performance: {}</li>",
                if p.regressions.is_empty() {
                    esc(&p.verdict)
                } else {
                    format!(
                        "<b>{}</b> ({})",
                        if p.failed {
                            "REGRESSION, failed"
                        } else {
                            "regression"
                        },
                        esc(&p.regressions.join(", "))
                    )
                }
            );
        }
        let thumb = v
            .screenshot
            .as_ref()
            .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.len() <= MAX_THUMBNAIL_BYTES))
            .and_then(|p| std::fs::read(p).ok())
            .filter(|b| b.starts_with(b"\x89PNG"))
            .map(|b| {
                format!(
                    "<img alt=\"console of {}\" src=\"data:image/png;base64,{}\">",
                    esc(&v.name),
                    base64(&b)
                )
            })
            .unwrap_or_default();
        let hooks = v
            .hooks
            .iter()
            .map(|hk| {
                format!(
                    "<li>{} {} ({:.1} s)<pre>{}</pre></li>",
                    esc(&hk.hook),
                    if hk.ok() {
                        "ok".to_string()
                    } else {
                        esc(&hk.reason())
                    },
                    hk.seconds,
                    esc(&hk.output)
                )
            })
            .collect::<String>();
        let _ = writeln!(
            h,
            "<tr class=\"{cls}\"><td>{name}<br><small>{src}</small></td><td>{status}</td><td>{secs:.1} s</td><td>{down}</td><td>{mb} MiB</td>\
<td>{tp:.1} MiB/s</td><td><ul>{concerns}</ul></td><td><ul>{validation}</ul></td><td>{thumb}</td><td><ul>{hooks}</ul></td></tr>",
            cls = esc(&v.status),
            src = esc(&v.source.display().to_string()),
            secs = v.seconds,
            down = downtime_cell(v.downtime.as_ref()),
            mb = mib(v.bytes),
            tp = v.mib_per_second,
        );
    }
    h.push_str("</table>\n</body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{VmInfo, WaveInfo};

    fn records() -> Vec<Record> {
        let rec = |entry| Record { time: 0.0, entry };
        vec![
            rec(Entry::RunStarted {
                schema_version: 1,
                plan: "/p.yaml".into(),
                plan_hash: "h".into(),
                waves: vec![WaveInfo {
                    name: "w1".into(),
                    vms: ["good", "bad<1>", "later"]
                        .iter()
                        .map(|n| VmInfo {
                            name: n.to_string(),
                            source: format!("/s/{n}.vmx").into(),
                            out: format!("/nonexistent/{n}").into(),
                            validate: true,
                            disks: 1,
                        })
                        .collect(),
                }],
                conversion_host: None,
                rollback_window_seconds: None,
            }),
            rec(Entry::VmStarted {
                wave: "w1".into(),
                vm: "good".into(),
                attempt: 1,
                out: "/o".into(),
            }),
            rec(Entry::VmStarted {
                wave: "w1".into(),
                vm: "bad<1>".into(),
                attempt: 1,
                out: "/o".into(),
            }),
            rec(Entry::VmFinished {
                wave: "w1".into(),
                vm: "bad<1>".into(),
                status: VmStatus::Failed,
                result: None,
                reason: Some("disk \"a\" & missing".into()),
                seconds: 1.0,
                migrate_seconds: 1.0,
                bytes: 0,
                report: None,
            }),
            rec(Entry::VmFinished {
                wave: "w1".into(),
                vm: "good".into(),
                status: VmStatus::Migrated,
                result: Some("validated".into()),
                reason: None,
                seconds: 10.0,
                migrate_seconds: 8.0,
                bytes: 8 << 20,
                report: None,
            }),
        ]
    }

    #[test]
    fn builds_counts_and_statuses_from_the_journal() {
        let r = build(&records(), "w1", false);
        assert_eq!(r.summary.total, 3);
        assert_eq!(r.summary.migrated, 1);
        assert_eq!(r.summary.validated, 1);
        assert_eq!(r.summary.failed, 1);
        assert_eq!(r.summary.pending, 1);
        assert_eq!(r.vms[0].mib_per_second, 1.0);
        assert_eq!(r.vms[2].status, "pending");
    }

    #[test]
    fn each_vms_downtime_and_whether_it_was_live_come_from_its_report() {
        let d = tempfile::tempdir().unwrap();
        let mut recs = records();
        let out = |n: &str| d.path().join(n);
        if let Entry::RunStarted { waves, .. } = &mut recs[0].entry {
            for v in &mut waves[0].vms {
                v.out = out(&v.name);
            }
        }
        let write = |n: &str, downtime: &str| {
            std::fs::create_dir_all(out(n)).unwrap();
            let r = format!(r#"{{"schema-version": 2, "downtime": {downtime}}}"#);
            std::fs::write(out(n).join("report.json"), r).unwrap();
        };
        write(
            "good",
            r#"{"live": true, "source-off-at": 5, "seconds": 65.04}"#,
        );
        write("bad<1>", r#"{"live": false, "source-off-at": 5}"#);
        let r = build(&recs, "w1", false);
        let good = r.vms.iter().find(|v| v.name == "good").unwrap();
        let d = good.downtime.as_ref().expect("read from report.json");
        assert!(d.live);
        assert_eq!(d.seconds, Some(65.04));
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["vms"][0]["downtime"]["live"], true);
        assert_eq!(json["vms"][0]["downtime"]["seconds"], 65.04);
        assert!(
            json["vms"][2].get("downtime").is_none(),
            "no report, no downtime"
        );

        let h = html(&r, Path::new("/"));
        assert!(h.contains("<th>downtime</th>"), "{h}");
        assert!(h.contains("<td>65.0 s<br><small>live</small></td>"), "{h}");
        assert!(
            h.contains("not measured<br><small>cold: no agent report on the target</small>"),
            "{h}"
        );
        let j = junit(&r);
        assert!(
            j.contains(r#"<property name="v2k.live" value="true"/>"#),
            "{j}"
        );
        assert!(
            j.contains(r#"<property name="v2k.downtime-seconds" value="65.0"/>"#),
            "{j}"
        );
        assert!(
            j.contains(r#"<property name="v2k.live" value="false"/>"#),
            "{j}"
        );
    }

    #[test]
    fn junit_has_one_testcase_per_vm_with_escaped_reasons() {
        let x = junit(&build(&records(), "w1", false));
        assert_eq!(x.matches("<testcase ").count(), 3);
        assert!(x.contains("name=\"bad&lt;1&gt;\""), "{x}");
        assert!(
            x.contains("<failure message=\"disk &quot;a&quot; &amp; missing\">"),
            "{x}"
        );
        assert!(x.contains("failures=\"2\""), "{x}");
    }

    #[test]
    fn html_is_self_contained_and_escaped() {
        let h = html(&build(&records(), "w1", false), Path::new("/r/w1"));
        assert!(!h.contains("http://") && !h.contains("https://"));
        assert!(h.contains("bad&lt;1&gt;"));
        assert!(h.contains("1 migrated"));
    }

    #[test]
    fn charts_scale_bars_to_the_highest_value_and_label_every_wave() {
        let bar = |w: &str, v: Option<f64>, l: &str| Bar {
            wave: w.into(),
            value: v,
            label: l.into(),
        };
        let svg = chart(
            "MTTR",
            &[
                bar("a", Some(30.0), "30.0 s"),
                bar("b", Some(15.0), "15.0 s"),
                bar("c<", None, "no failure"),
            ],
            "b",
            0.0,
        );
        // The highest value fills the plot; half of it, half; none, no bar.
        assert!(svg.contains("height=\"100.0\" fill=\"#888\""), "{svg}");
        assert!(svg.contains("height=\"50.0\" fill=\"#000\""), "{svg}");
        assert_eq!(svg.matches("<rect").count(), 2, "{svg}");
        assert!(svg.contains(">no failure</text>") && svg.contains(">c&lt;</text>"));
        // A rate's scale is at least 100 %: 5 % is a small bar.
        let svg = chart("rate", &[bar("a", Some(0.05), "5.0 %")], "a", 1.0);
        assert!(svg.contains("height=\"5.0\""), "{svg}");
    }

    #[test]
    fn junit_carries_the_wave_figures_as_properties() {
        let x = junit(&build(&records(), "w1", false));
        assert!(
            x.contains("<property name=\"v2k.attempted\" value=\"2\"/>")
                && x.contains("<property name=\"v2k.change-failure-rate\" value=\"0.5000\"/>"),
            "{x}"
        );
        // Properties come before the testcases, as the JUnit schema wants.
        assert!(x.find("<properties>") < x.find("<testcase"), "{x}");
    }

    #[test]
    fn junit_gives_a_vms_performance_verdict_as_its_properties_and_a_failing_regression_as_its_failure(
    ) {
        let mut r = build(&records(), "w1", false);
        let verdict = "Regression in 1 of 2 metric(s) compared: probe-read-p50-ms 0.20 → 3.00 ms: regression <beyond>";
        r.vms[0].performance = Some(VmPerformance {
            regressions: vec!["probe-read-p50-ms".into()],
            failed: false,
            verdict: verdict.into(),
        });
        let x = junit(&r);
        let case = |name: &str| {
            let at = x.find(&format!("name=\"{name}\"")).unwrap();
            x[at..at + x[at..].find("</testcase>").unwrap_or(0)].to_string()
        };
        let ok = case(&r.vms[0].name);
        assert!(
            ok.contains(
                "<property name=\"v2k.performance.regressions\" value=\"probe-read-p50-ms\"/>"
            ) && ok.contains("<property name=\"v2k.performance.failed\" value=\"false\"/>")
                && ok.contains("regression &lt;beyond&gt;")
                && !ok.contains("<failure"),
            "a warning is a property, not a failure: {ok}"
        );
        // fail-on-regression: the VM failed, its reason the regression.
        let i = r.vms.iter().position(|v| v.status == "failed").unwrap();
        r.vms[i].reason = Some(format!("performance regression: {verdict}"));
        r.vms[i].performance = Some(VmPerformance {
            regressions: vec!["probe-read-p50-ms".into()],
            failed: true,
            verdict: verdict.into(),
        });
        let x = junit(&r);
        let name = r.vms[i].name.replace('<', "&lt;").replace('>', "&gt;");
        let at = x.find(&format!("name=\"{name}\"")).unwrap();
        let bad = &x[at..at + x[at..].find("</testcase>").unwrap()];
        assert!(
            bad.contains("<property name=\"v2k.performance.failed\" value=\"true\"/>")
                && bad.contains("<failure message=\"performance regression: Regression in 1"),
            "{bad}"
        );
        // Properties before the failure, as the schema orders them.
        assert!(bad.find("<properties>") < bad.find("<failure"), "{bad}");
        // The suite's properties and the two compared VMs'; the third VM has none.
        assert_eq!(x.matches("<properties>").count(), 3, "{x}");
    }

    fn host_run(host: &str, vms: &[&str], migrated: &[&str], started: &[&str]) -> HostRun {
        let rec = |time, entry| Record { time, entry };
        let mut r = vec![rec(
            0.0,
            Entry::RunStarted {
                schema_version: 1,
                plan: format!("/s/{host}.yaml").into(),
                plan_hash: host.into(),
                waves: vec![WaveInfo {
                    name: "w1".into(),
                    vms: vms
                        .iter()
                        .map(|n| VmInfo {
                            name: n.to_string(),
                            source: format!("/s/{n}.vmx").into(),
                            out: format!("/nonexistent/{host}/{n}").into(),
                            validate: false,
                            disks: 1,
                        })
                        .collect(),
                }],
                conversion_host: Some(host.into()),
                rollback_window_seconds: None,
            },
        )];
        for (i, vm) in started.iter().chain(migrated).enumerate() {
            r.push(rec(
                1.0 + i as f64,
                Entry::VmStarted {
                    wave: "w1".into(),
                    vm: vm.to_string(),
                    attempt: 1,
                    out: "/o".into(),
                },
            ));
        }
        for (i, vm) in migrated.iter().enumerate() {
            r.push(rec(
                10.0 + i as f64,
                Entry::VmFinished {
                    wave: "w1".into(),
                    vm: vm.to_string(),
                    status: VmStatus::Migrated,
                    result: Some("not-validated".into()),
                    reason: None,
                    seconds: 2.0,
                    migrate_seconds: 2.0,
                    bytes: 1 << 20,
                    report: None,
                },
            ));
        }
        HostRun {
            host: host.into(),
            dir: PathBuf::from(format!("/runs/{host}")),
            records: r,
        }
    }

    #[test]
    fn a_merge_shows_each_vm_with_its_host_and_reports_a_vm_migrated_twice() {
        // conv1 migrated a and c, and was lost while running b; conv2 then migrated b
        // and, wrongly, c again.
        let runs = [
            host_run("conv1", &["a", "b", "c"], &["a", "c"], &["b"]),
            host_run("conv2", &["b", "c", "d"], &["b", "c"], &[]),
        ];
        let m = merge(&runs);
        assert_eq!(m.len(), 1);
        let r = &m[0];
        assert_eq!(r.hosts, ["conv1", "conv2"]);
        let vm = |n: &str| r.vms.iter().find(|v| v.name == n).unwrap();
        assert_eq!(vm("a").host.as_deref(), Some("conv1"));
        assert_eq!(vm("b").host.as_deref(), Some("conv2"));
        assert_eq!(vm("b").status, "migrated");
        assert_eq!(vm("b").elsewhere[0].host, "conv1");
        assert_eq!(vm("b").elsewhere[0].status, "interrupted");
        assert_eq!(vm("d").status, "pending");
        // Nothing dropped: four VMs, the conflict counted and named.
        assert_eq!(r.summary.total, 4);
        assert_eq!(r.summary.migrated, 3);
        assert_eq!(r.summary.conflicts, 1);
        assert_eq!(r.conflicts[0].vm, "c");
        assert_eq!(r.conflicts[0].hosts, ["conv1", "conv2"]);
        let x = junit(r);
        assert!(
            x.contains("migrated on more than one host: conv1, conv2"),
            "{x}"
        );
        let h = html(r, Path::new("/m/w1"));
        assert!(
            h.contains("<h2>Conflicts</h2>") && h.contains("on <b>conv2</b>"),
            "{h}"
        );
        assert!(h.contains("also on conv1: interrupted"), "{h}");
        let j = serde_json::to_value(r).unwrap();
        assert_eq!(j["summary"]["conflicts"], 1);
        assert_eq!(j["vms"][1]["host"], "conv2");
        // A single run's report carries none of the merge fields.
        let single = serde_json::to_value(build(&runs[0].records, "w1", false)).unwrap();
        assert!(single.get("hosts").is_none() && single["vms"][0].get("host").is_none());
    }

    #[test]
    fn links_are_relative_to_the_report() {
        assert_eq!(
            rel(Path::new("/r/vms/a/out/report.html"), Path::new("/r/w1")),
            "../vms/a/out/report.html"
        );
        assert_eq!(
            rel(Path::new("/srv/a/report.html"), Path::new("/r/w1")),
            "/srv/a/report.html"
        );
    }
}
