//! Before and after in the VM's report: the baseline (`NAME.baseline.json` from `v2k
//! baseline`, a plan's `baseline-dir:` or a wave's own reading) against the figures
//! of the validation boot's agent, compared by [`v2k_validator::perf::compare`] into
//! the report's `performance` section, with a plain-words verdict (docs/evidence.md).
//!
//! A regression beyond the thresholds is a warning concern; with `fail-on-regression`
//! it also fails the VM ([`crate::report::Outcome::PerformanceRegression`]). A side
//! that is missing (no baseline, no validation boot, an agent without counters) makes
//! its rows `not compared`, never a verdict on a 0.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use v2k_inventory::model::{Concern, Severity};
/// The thresholds' type, for callers that configure a migration (the CLI, a plan).
pub use v2k_validator::perf::Thresholds;
use v2k_validator::perf::{compare, Comparison, Figures};
use v2k_validator::Validation;
/// The baseline file's type, for callers that read or write one (the wave runner).
pub use v2k_vsphere::perf::BaselineFile;

/// What to compare a migration's figures with, and how strictly.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The baseline file (as named, or where the plan says it should be).
    pub file: PathBuf,
    /// The baseline read from it; `None` when it could not be had (`missing`).
    pub baseline: Option<BaselineFile>,
    /// Why there is no baseline (`DIR/NAME.baseline.json: not found`).
    pub missing: Option<String>,
    pub thresholds: Thresholds,
    pub fail_on_regression: bool,
}

impl Settings {
    /// Settings from a baseline file already read.
    pub fn with(file: PathBuf, baseline: BaselineFile) -> Settings {
        Settings {
            file,
            baseline: Some(baseline),
            missing: None,
            thresholds: Thresholds::default(),
            fail_on_regression: false,
        }
    }
}

/// The report's `performance` section (docs/report.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Performance {
    /// The baseline file.
    pub baseline: PathBuf,
    /// The day the baseline covers, Unix seconds (absent without a baseline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_from: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_to: Option<u64>,
    /// How the "after" figures were measured: `kvm`, `tcg` (not production timings),
    /// or absent (no validation boot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_accel: Option<String>,
    pub thresholds: Thresholds,
    pub fail_on_regression: bool,
    /// One row per metric: before, after, change, verdict, reason.
    pub rows: Vec<Comparison>,
    /// The metrics whose verdict is `regression`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub regressions: Vec<String>,
    /// The whole comparison in one sentence.
    pub verdict: String,
}

impl Performance {
    /// Whether this VM fails for it (a regression, and the plan or flag says fail).
    pub fn fails(&self) -> bool {
        self.fail_on_regression && !self.regressions.is_empty()
    }

    /// The warning concern a regression is (`performance-regression`).
    pub fn concern(&self) -> Option<Concern> {
        if self.regressions.is_empty() {
            return None;
        }
        Some(Concern {
            id: "performance-regression".into(),
            severity: Severity::Warning,
            subject: Some(self.regressions.join(", ")),
            message: self.verdict.clone(),
        })
    }
}

/// The part of a report's `performance` that the wave report shows, read leniently
/// (no threshold names): a report written by a later v2k, with thresholds this one
/// does not know, still reads.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Brief {
    #[serde(default)]
    pub regressions: Vec<String>,
    #[serde(default)]
    pub fail_on_regression: bool,
    #[serde(default)]
    pub verdict: String,
}

impl Brief {
    /// As [`Performance::fails`].
    pub fn fails(&self) -> bool {
        self.fail_on_regression && !self.regressions.is_empty()
    }
}

/// The baseline's "before": each metric's median over the day.
pub fn before(b: &BaselineFile) -> Figures {
    let m = |name: &str| b.baseline.metrics.get(name).map(|s| s.median);
    Figures {
        cpu_ready_percent: m("cpu-ready-percent"),
        disk_read_latency_ms: m("disk-read-latency-ms"),
        disk_write_latency_ms: m("disk-write-latency-ms"),
        net_dropped_rx: m("net-dropped-rx"),
        net_dropped_tx: m("net-dropped-tx"),
        // A baseline made by the agent's probe on the source's hardware has these.
        probe_cpu_ms: m("probe-cpu-ms"),
        probe_read_p50_ms: m("probe-read-p50-ms"),
        probe_read_p95_ms: m("probe-read-p95-ms"),
    }
}

/// The validation boot's "after": the agent's counters since boot.
pub fn after(v: &Validation) -> Option<Figures> {
    let a = v.evidence.agent.as_ref()?;
    Some(a.perf.as_ref()?.figures(a.uptime))
}

/// Compares the baseline with the validation's figures.
pub fn evaluate(s: &Settings, validation: Option<&Validation>) -> Performance {
    let b = s.baseline.as_ref().map(before).unwrap_or_default();
    let a = validation.and_then(after);
    let rows = compare(&b, a.as_ref().unwrap_or(&Figures::default()), &s.thresholds);
    let regressions: Vec<String> = rows
        .iter()
        .filter(|r| r.is_regression())
        .map(|r| r.metric.clone())
        .collect();
    let count = |v: &str| rows.iter().filter(|r| r.verdict == v).count();
    let tcg = validation.is_some_and(|v| v.accel == crate::Accel::Tcg);
    let verdict = if let Some(why) = &s.missing {
        format!("Not compared: no baseline ({why}).")
    } else if validation.is_none() {
        "Not compared: the migrated VM was not booted, so there are no figures after.".into()
    } else if a.is_none() {
        "Not compared: the guest's agent sent no performance counters.".into()
    } else {
        let compared = rows.len() - count("not compared");
        let mut v = if compared == 0 {
            "Not compared: no metric has a figure on both sides.".to_string()
        } else if regressions.is_empty() {
            format!(
                "No regression: of {compared} metric(s) compared, {} better, {} the same, {} worse within the thresholds.",
                count("better"),
                count("same"),
                count("worse")
            )
        } else {
            let what: Vec<&str> = rows
                .iter()
                .filter(|r| r.is_regression())
                .map(|r| r.reason.as_str())
                .collect();
            format!(
                "Regression in {} of {compared} metric(s) compared: {}{}.",
                regressions.len(),
                regressions
                    .iter()
                    .zip(&what)
                    .map(|(m, r)| format!("{m} {r}"))
                    .collect::<Vec<_>>()
                    .join("; "),
                if s.fail_on_regression {
                    " (fail-on-regression: the VM fails)"
                } else {
                    ""
                }
            )
        };
        if tcg {
            v.push_str(" Measured under TCG (no KVM): these timings are not production timings.");
        }
        if let Some(b) = s.baseline.as_ref().and_then(|b| b.baseline.boot.as_ref()) {
            v.push_str(&format!(
                " The before was measured by booting the source in its own shape ({}; {}).",
                b.shape, b.accel
            ));
        }
        v
    };
    Performance {
        baseline: s.file.clone(),
        baseline_from: s.baseline.as_ref().map(|b| b.baseline.from),
        baseline_to: s.baseline.as_ref().map(|b| b.baseline.to),
        after_accel: validation.map(|v| v.accel.as_str().to_string()),
        thresholds: s.thresholds,
        fail_on_regression: s.fail_on_regression,
        rows,
        regressions,
        verdict,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use v2k_validator::perf::AgentPerf;
    use v2k_vsphere::perf::{Baseline, Stats};

    pub(crate) fn baseline(cpu: f64, read_ms: f64) -> BaselineFile {
        let stat = |counter: &str, unit: &str, median: f64| Stats {
            counter: counter.into(),
            unit: unit.into(),
            samples: 288,
            min: median / 2.0,
            median,
            p95: median * 2.0,
        };
        BaselineFile {
            schema_version: 1,
            vm: "web01".into(),
            source: "vsphere://u@vc/DC0/vm/web01".into(),
            baseline: Baseline {
                moref: "vm-42".into(),
                interval_seconds: 300,
                from: 1_000,
                to: 87_400,
                metrics: BTreeMap::from([
                    (
                        "cpu-ready-percent".into(),
                        stat("cpu.ready.summation", "% of interval", cpu),
                    ),
                    (
                        "disk-read-latency-ms".into(),
                        stat("virtualDisk.totalReadLatency.average", "ms", read_ms),
                    ),
                ]),
                missing: vec!["net.droppedRx.summation".into()],
                boot: None,
            },
        }
    }

    /// A validation whose agent saw 2 % steal and 12 ms per read.
    pub(crate) fn validation(accel: crate::Accel) -> Validation {
        let agent: v2k_validator::AgentReport = serde_json::from_value(serde_json::json!({
            "v": 1, "ok": true, "boot": true, "root-rw": true, "uptime": 600.0,
            "perf": {"cpu": [10000, 200], "disks": [["vda", 100, 1200, 10, 10]], "nics": [["ens3", 0, 0]]}
        }))
        .unwrap();
        Validation {
            backend: v2k_validator::Backend::Qemu,
            accel,
            passed: true,
            checks: vec![],
            evidence: v2k_validator::Evidence {
                agent: Some(agent),
                ..Default::default()
            },
            total_seconds: 1.0,
        }
    }

    #[test]
    fn before_is_the_baselines_median_and_after_the_agents_figures() {
        let s = Settings::with("web01.baseline.json".into(), baseline(1.0, 2.0));
        let p = evaluate(&s, Some(&validation(crate::Accel::Kvm)));
        let row = |m: &str| p.rows.iter().find(|r| r.metric == m).unwrap().clone();
        let cpu = row("cpu-ready-percent");
        assert_eq!((cpu.before, cpu.after), (Some(1.0), Some(2.0)));
        assert_eq!(cpu.verdict, "worse");
        // 2 ms → 12 ms: doubled and 5 ms longer.
        let read = row("disk-read-latency-ms");
        assert_eq!((read.before, read.after), (Some(2.0), Some(12.0)));
        assert!(read.is_regression());
        // The baseline's missing counter is not compared, not a 0.
        assert_eq!(row("net-dropped-rx").verdict, "not compared");
        assert_eq!(p.regressions, vec!["disk-read-latency-ms".to_string()]);
        assert!(
            p.verdict.starts_with(
                "Regression in 1 of 2 metric(s) compared: disk-read-latency-ms 2.00 → 12.00 ms"
            ),
            "{}",
            p.verdict
        );
        assert!(!p.fails(), "a warning unless fail-on-regression");
        let c = p.concern().unwrap();
        assert_eq!(
            (c.id.as_str(), c.severity),
            ("performance-regression", Severity::Warning)
        );
        assert_eq!(
            (p.baseline_from, p.after_accel.as_deref()),
            (Some(1_000), Some("kvm"))
        );
        let strict = Settings {
            fail_on_regression: true,
            ..s.clone()
        };
        assert!(evaluate(&strict, Some(&validation(crate::Accel::Kvm))).fails());
        // Looser thresholds: no regression, no concern.
        let loose = Settings {
            thresholds: Thresholds {
                disk_read_latency_ms: 20.0,
                ..Thresholds::default()
            },
            ..strict
        };
        let p = evaluate(&loose, Some(&validation(crate::Accel::Tcg)));
        assert!(!p.fails() && p.concern().is_none());
        assert!(
            p.verdict.starts_with(
                "No regression: of 2 metric(s) compared, 0 better, 0 the same, 2 worse"
            ),
            "{}",
            p.verdict
        );
        assert!(
            p.verdict.contains("not production timings"),
            "{}",
            p.verdict
        );
    }

    #[test]
    fn a_baseline_from_a_boot_of_the_source_says_so_in_the_verdict() {
        let mut b = baseline(1.0, 2.0);
        b.baseline.boot = Some(v2k_vsphere::perf::BootBaseline {
            shape: "q35, bios, pvscsi (scsi0), vmxnet3".into(),
            accel: "tcg".into(),
            boot_seconds: Some(54.0),
            serial_log: "run/baseline-boot/serial.log".into(),
        });
        let p = evaluate(
            &Settings::with("run/baseline.json".into(), b),
            Some(&validation(crate::Accel::Tcg)),
        );
        assert!(
            p.verdict.ends_with(
                " The before was measured by booting the source in its own shape (q35, bios, pvscsi (scsi0), vmxnet3; tcg)."
            ),
            "{}",
            p.verdict
        );
    }

    #[test]
    fn a_missing_side_is_not_compared_and_says_which() {
        let s = Settings::with("b.json".into(), baseline(1.0, 2.0));
        let p = evaluate(&s, None);
        assert!(p.rows.iter().all(|r| r.verdict == "not compared"));
        assert!(p.verdict.contains("not booted"), "{}", p.verdict);
        assert!(p.regressions.is_empty() && !p.fails());
        let mut v = validation(crate::Accel::Kvm);
        v.evidence.agent.as_mut().unwrap().perf = None::<AgentPerf>;
        assert!(evaluate(&s, Some(&v))
            .verdict
            .contains("no performance counters"));
        let none = Settings {
            baseline: None,
            missing: Some("dir/b.json: not found".into()),
            ..s
        };
        let p = evaluate(&none, Some(&validation(crate::Accel::Kvm)));
        assert_eq!(
            p.verdict,
            "Not compared: no baseline (dir/b.json: not found)."
        );
        assert!(p.rows.iter().all(|r| r.verdict == "not compared"));
        assert_eq!(p.baseline_from, None);
    }
}
