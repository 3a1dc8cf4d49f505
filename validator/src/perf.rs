//! The guest's performance after migration, as the first-boot agent reads it since
//! boot (`perf` in its report: /proc/stat, /proc/diskstats, /sys/class/net/*/statistics),
//! turned into the same figures as the vSphere baseline (docs/evidence.md) and
//! compared with it: before, after, change and a plain-words verdict per metric.
//!
//! The counters come from an untrusted guest: every division checks its divisor, and a
//! figure that cannot be computed (no request completed, no uptime) is absent, never 0.

use serde::{Deserialize, Serialize};

/// `[name, reads completed, ms reading, writes completed, ms writing]`.
pub type DiskCounters = (String, u64, u64, u64, u64);

/// The agent's raw counters since boot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentPerf {
    /// `[total ticks (user..steal), steal ticks]`.
    pub cpu: [u64; 2],
    /// `[name, reads completed, ms reading, writes completed, ms writing]` per whole disk.
    #[serde(default)]
    pub disks: Vec<DiskCounters>,
    /// `[name, rx dropped, tx dropped]` per NIC but lo.
    #[serde(default)]
    pub nics: Vec<(String, u64, u64)>,
    /// The fixed probe's figures (agents before it send none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<Probe>,
}

/// The agent's fixed probe: a CPU loop of fixed work and O_DIRECT 4 KiB random reads
/// from the root disk (docs/evidence.md, "The probe"). Each figure is absent when the
/// guest could not make it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Probe {
    /// Milliseconds the CPU loop took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_ms: Option<f64>,
    /// Reads timed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reads: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_p50_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_p95_ms: Option<f64>,
}

/// One value per metric, as the baseline names them; absent when not measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Figures {
    /// CPU ready (vSphere) or steal (KVM guest): % of the time runnable but not run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_ready_percent: Option<f64>,
    /// The worst disk's mean time per completed read / write, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_read_latency_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_write_latency_ms: Option<f64>,
    /// Packets dropped by all NICs per 5 minutes (the baseline's interval).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_dropped_rx: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_dropped_tx: Option<f64>,
    /// The probe: the CPU loop's ms and the reads' p50 / p95 ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_cpu_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_read_p50_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_read_p95_ms: Option<f64>,
}

/// A probe figure as a number: finite and not negative, else absent (the guest's
/// text is untrusted).
fn sane(v: Option<f64>) -> Option<f64> {
    v.filter(|v| v.is_finite() && *v >= 0.0)
}

/// The baseline's interval: drops are per this many seconds on both sides.
const INTERVAL_SECONDS: f64 = 300.0;

impl AgentPerf {
    /// The figures since boot; `uptime` is the agent's (seconds since boot).
    pub fn figures(&self, uptime: f64) -> Figures {
        let [total, steal] = self.cpu;
        let worst = |pick: fn(&DiskCounters) -> (u64, u64)| {
            self.disks
                .iter()
                .map(pick)
                .filter(|(n, _)| *n > 0)
                .map(|(n, ms)| ms as f64 / n as f64)
                .reduce(f64::max)
        };
        let per_interval = |sum: u64| {
            (uptime.is_finite() && uptime > 0.0).then(|| sum as f64 / uptime * INTERVAL_SECONDS)
        };
        let rx = self.nics.iter().fold(0u64, |a, n| a.saturating_add(n.1));
        let tx = self.nics.iter().fold(0u64, |a, n| a.saturating_add(n.2));
        Figures {
            cpu_ready_percent: (total > 0 && steal <= total)
                .then(|| steal as f64 / total as f64 * 100.0),
            disk_read_latency_ms: worst(|d| (d.1, d.2)),
            disk_write_latency_ms: worst(|d| (d.3, d.4)),
            net_dropped_rx: per_interval(rx).filter(|_| !self.nics.is_empty()),
            net_dropped_tx: per_interval(tx).filter(|_| !self.nics.is_empty()),
            // A CPU loop of 0 ms did not run (or the clock did not move).
            probe_cpu_ms: sane(self.probe.as_ref().and_then(|p| p.cpu_ms)).filter(|v| *v > 0.0),
            probe_read_p50_ms: sane(self.probe.as_ref().and_then(|p| p.read_p50_ms)),
            probe_read_p95_ms: sane(self.probe.as_ref().and_then(|p| p.read_p95_ms)),
        }
    }
}

/// How much worse a figure may get before it is a regression, keyed by the metric
/// names (a plan's `thresholds:`, `v2k migrate --threshold METRIC=VALUE`): CPU
/// ready/steal in percentage points; latency in ms *and* as a factor (both must be
/// exceeded: a 0.2 → 0.9 ms change is noise, not a regression); drops per 5 minutes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Thresholds {
    pub cpu_ready_percent: f64,
    pub disk_read_latency_ms: f64,
    pub disk_write_latency_ms: f64,
    pub latency_factor: f64,
    pub net_dropped_rx: f64,
    pub net_dropped_tx: f64,
    /// The probe's CPU loop: ms longer and `cpu-factor` times longer (both).
    pub probe_cpu_ms: f64,
    pub cpu_factor: f64,
    /// The probe's reads: ms longer and `latency-factor` times longer (both).
    pub probe_read_p50_ms: f64,
    pub probe_read_p95_ms: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        // The field's rules of thumb: CPU ready above 5 % hurts; a doubled latency
        // that is also 5 ms longer is felt; a few drops per 5 minutes are routine.
        Thresholds {
            cpu_ready_percent: 5.0,
            disk_read_latency_ms: 5.0,
            disk_write_latency_ms: 5.0,
            latency_factor: 2.0,
            net_dropped_rx: 10.0,
            net_dropped_tx: 10.0,
            // The probe: a CPU half again as slow and 20 ms longer; reads doubled and
            // 1 ms (median) or 5 ms (p95) longer.
            probe_cpu_ms: 20.0,
            cpu_factor: 1.5,
            probe_read_p50_ms: 1.0,
            probe_read_p95_ms: 5.0,
        }
    }
}

impl Thresholds {
    /// Refuses a threshold that compares nothing sensibly: negative, not finite, or a
    /// latency factor below 1 (which would call an improvement a regression).
    pub fn check(&self) -> Result<(), String> {
        let all = [
            ("cpu-ready-percent", self.cpu_ready_percent),
            ("disk-read-latency-ms", self.disk_read_latency_ms),
            ("disk-write-latency-ms", self.disk_write_latency_ms),
            ("latency-factor", self.latency_factor),
            ("net-dropped-rx", self.net_dropped_rx),
            ("net-dropped-tx", self.net_dropped_tx),
            ("probe-cpu-ms", self.probe_cpu_ms),
            ("cpu-factor", self.cpu_factor),
            ("probe-read-p50-ms", self.probe_read_p50_ms),
            ("probe-read-p95-ms", self.probe_read_p95_ms),
        ];
        for (name, v) in all {
            if !v.is_finite() || v < 0.0 {
                return Err(format!("threshold {name}: {v} is not a number ≥ 0"));
            }
        }
        for (name, f) in [
            ("latency-factor", self.latency_factor),
            ("cpu-factor", self.cpu_factor),
        ] {
            if f < 1.0 {
                return Err(format!("threshold {name}: {f} is below 1"));
            }
        }
        Ok(())
    }

    /// The threshold in words, for a row's reason.
    fn describe(&self, metric: &str, unit: &str) -> String {
        match metric {
            "cpu-ready-percent" => format!("+{} points", self.cpu_ready_percent),
            "disk-read-latency-ms" => {
                format!(
                    "×{} and +{} ms",
                    self.latency_factor, self.disk_read_latency_ms
                )
            }
            "disk-write-latency-ms" => format!(
                "×{} and +{} ms",
                self.latency_factor, self.disk_write_latency_ms
            ),
            "net-dropped-rx" => format!("+{} {unit}", self.net_dropped_rx),
            "probe-cpu-ms" => format!("×{} and +{} ms", self.cpu_factor, self.probe_cpu_ms),
            "probe-read-p50-ms" => {
                format!(
                    "×{} and +{} ms",
                    self.latency_factor, self.probe_read_p50_ms
                )
            }
            "probe-read-p95-ms" => {
                format!(
                    "×{} and +{} ms",
                    self.latency_factor, self.probe_read_p95_ms
                )
            }
            _ => format!("+{} {unit}", self.net_dropped_tx),
        }
    }

    /// Whether `after` is worse than `before` beyond the threshold of `metric`.
    fn exceeded(&self, metric: &str, before: f64, after: f64) -> bool {
        let both = |factor: f64, ms: f64| after > before * factor && after > before + ms;
        let latency = |ms: f64| both(self.latency_factor, ms);
        match metric {
            "cpu-ready-percent" => after > before + self.cpu_ready_percent,
            "disk-read-latency-ms" => latency(self.disk_read_latency_ms),
            "disk-write-latency-ms" => latency(self.disk_write_latency_ms),
            "probe-cpu-ms" => both(self.cpu_factor, self.probe_cpu_ms),
            "probe-read-p50-ms" => latency(self.probe_read_p50_ms),
            "probe-read-p95-ms" => latency(self.probe_read_p95_ms),
            "net-dropped-rx" => after > before + self.net_dropped_rx,
            _ => after > before + self.net_dropped_tx,
        }
    }
}

/// One metric before and after.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Comparison {
    pub metric: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<f64>,
    /// `after - before`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<f64>,
    /// `better`, `same`, `worse` (within the thresholds), `regression`, or
    /// `not compared` (a side is missing).
    pub verdict: String,
    /// The verdict in words, with the figures.
    pub reason: String,
}

impl Comparison {
    pub fn is_regression(&self) -> bool {
        self.verdict == "regression"
    }
}

/// Each metric before and after, with its verdict. The probe's rows are there only
/// when the before has the probe (a vSphere baseline never has: no row that could
/// never be compared).
pub fn compare(before: &Figures, after: &Figures, t: &Thresholds) -> Vec<Comparison> {
    let probe = [
        ("probe-cpu-ms", before.probe_cpu_ms, after.probe_cpu_ms),
        (
            "probe-read-p50-ms",
            before.probe_read_p50_ms,
            after.probe_read_p50_ms,
        ),
        (
            "probe-read-p95-ms",
            before.probe_read_p95_ms,
            after.probe_read_p95_ms,
        ),
    ]
    .into_iter()
    .filter(|(_, b, _)| b.is_some())
    .map(|(m, b, a)| (m, "ms", b, a));
    let rows: [(&str, &str, Option<f64>, Option<f64>); 5] = [
        (
            "cpu-ready-percent",
            "%",
            before.cpu_ready_percent,
            after.cpu_ready_percent,
        ),
        (
            "disk-read-latency-ms",
            "ms",
            before.disk_read_latency_ms,
            after.disk_read_latency_ms,
        ),
        (
            "disk-write-latency-ms",
            "ms",
            before.disk_write_latency_ms,
            after.disk_write_latency_ms,
        ),
        (
            "net-dropped-rx",
            "per 5 min",
            before.net_dropped_rx,
            after.net_dropped_rx,
        ),
        (
            "net-dropped-tx",
            "per 5 min",
            before.net_dropped_tx,
            after.net_dropped_tx,
        ),
    ];
    rows.into_iter()
        .chain(probe)
        .map(|(metric, unit, b, a)| {
            let (verdict, reason) = match (b, a) {
                (Some(b), Some(a)) => {
                    let too_much = t.exceeded(metric, b, a);
                    // Within 1 % (or a hundredth of the unit) counts as the same.
                    let same = (a - b).abs() <= (b.abs() * 0.01).max(0.01);
                    let v = if too_much {
                        "regression"
                    } else if same {
                        "same"
                    } else if a < b {
                        "better"
                    } else {
                        "worse"
                    };
                    let words = match v {
                        "regression" => format!(
                            "regression beyond the threshold ({})",
                            t.describe(metric, unit)
                        ),
                        "worse" => "worse, within the threshold".to_string(),
                        other => other.to_string(),
                    };
                    (v, format!("{b:.2} → {a:.2} {unit}: {words}"))
                }
                (None, _) => ("not compared", "no figure before".to_string()),
                (_, None) => ("not compared", "no figure after".to_string()),
            };
            Comparison {
                metric: metric.into(),
                before: b,
                after: a,
                change: b.zip(a).map(|(b, a)| a - b),
                verdict: verdict.into(),
                reason,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_are_steal_share_worst_disk_and_drops_per_five_minutes() {
        let p = AgentPerf {
            cpu: [10_000, 250],
            disks: vec![
                ("vda".into(), 100, 300, 50, 500),
                ("vdb".into(), 10, 80, 0, 0),
                // An idle disk: no request, no latency (not 0 ms).
                ("vdc".into(), 0, 0, 0, 0),
            ],
            nics: vec![("ens3".into(), 6, 0), ("ens4".into(), 4, 1)],
            probe: None,
        };
        let f = p.figures(600.0);
        assert_eq!(f.cpu_ready_percent, Some(2.5));
        assert_eq!(f.disk_read_latency_ms, Some(8.0));
        assert_eq!(f.disk_write_latency_ms, Some(10.0));
        assert_eq!(f.net_dropped_rx, Some(5.0));
        assert_eq!(f.net_dropped_tx, Some(0.5));
    }

    #[test]
    fn hostile_counters_give_no_figure_instead_of_a_wrong_one() {
        let p = AgentPerf {
            cpu: [0, 7],
            disks: vec![("vda".into(), 0, 99, 0, 99)],
            nics: vec![("e".into(), u64::MAX, u64::MAX), ("f".into(), 5, 5)],
            // A probe the guest botched: no figure, not a wrong one.
            probe: Some(Probe {
                cpu_ms: Some(0.0),
                reads: Some(3),
                read_p50_ms: Some(-1.0),
                read_p95_ms: None,
            }),
        };
        let f = p.figures(0.0);
        assert_eq!(f, Figures::default());
        // Steal above total is not a share.
        let p = AgentPerf {
            cpu: [5, 7],
            disks: vec![],
            nics: vec![],
            probe: None,
        };
        assert_eq!(p.figures(10.0).cpu_ready_percent, None);
    }

    #[test]
    fn a_regression_is_beyond_the_threshold_and_small_changes_are_not() {
        let before = Figures {
            cpu_ready_percent: Some(1.0),
            disk_read_latency_ms: Some(2.0),
            disk_write_latency_ms: Some(4.0),
            net_dropped_rx: Some(0.0),
            net_dropped_tx: None,
            ..Figures::default()
        };
        let after = Figures {
            cpu_ready_percent: Some(7.5),
            disk_read_latency_ms: Some(3.0),
            disk_write_latency_ms: Some(4.01),
            net_dropped_rx: Some(0.0),
            net_dropped_tx: Some(3.0),
            ..Figures::default()
        };
        let c = compare(&before, &after, &Thresholds::default());
        let v: Vec<&str> = c.iter().map(|r| r.verdict.as_str()).collect();
        assert_eq!(
            v,
            ["regression", "worse", "same", "same", "not compared"],
            "{c:#?}"
        );
        assert_eq!(c[0].change, Some(6.5));
        assert_eq!(
            c[0].reason,
            "1.00 → 7.50 %: regression beyond the threshold (+5 points)"
        );
        assert!(c[0].is_regression() && !c[1].is_regression());
        // Doubled latency that is still under 5 ms longer: worse, not a regression.
        let c = compare(
            &Figures {
                disk_read_latency_ms: Some(0.2),
                ..Figures::default()
            },
            &Figures {
                disk_read_latency_ms: Some(0.9),
                ..Figures::default()
            },
            &Thresholds::default(),
        );
        assert_eq!(c[1].verdict, "worse");
    }

    #[test]
    fn thresholds_are_named_by_metric_and_nonsense_is_refused() {
        let t: Thresholds =
            serde_json::from_str(r#"{"cpu-ready-percent": 2, "latency-factor": 1.5}"#).unwrap();
        assert_eq!(t.cpu_ready_percent, 2.0);
        assert_eq!(t.latency_factor, 1.5);
        // Unnamed ones keep their defaults.
        assert_eq!(t.net_dropped_rx, Thresholds::default().net_dropped_rx);
        assert!(t.check().is_ok());
        let e = serde_json::from_str::<Thresholds>(r#"{"cpu-ready": 2}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `cpu-ready`"), "{e}");
        let bad = Thresholds {
            latency_factor: 0.5,
            ..Thresholds::default()
        };
        assert!(bad.check().unwrap_err().contains("latency-factor"));
        let bad = Thresholds {
            net_dropped_tx: -1.0,
            ..Thresholds::default()
        };
        assert!(bad.check().unwrap_err().contains("net-dropped-tx"));
        // A tighter CPU threshold turns the same change into a regression.
        let (b, a) = (
            Figures {
                cpu_ready_percent: Some(1.0),
                ..Figures::default()
            },
            Figures {
                cpu_ready_percent: Some(4.0),
                ..Figures::default()
            },
        );
        assert_eq!(compare(&b, &a, &Thresholds::default())[0].verdict, "worse");
        assert_eq!(compare(&b, &a, &t)[0].verdict, "regression");
    }

    #[test]
    fn the_probe_is_compared_only_when_the_before_has_it() {
        let line = "V2K-AGENT {\"v\":1,\"ok\":true,\"boot\":true,\"root-rw\":true,\"uptime\":9,\
                    \"perf\":{\"cpu\":[9,0],\"disks\":[],\"nics\":[],\
                    \"probe\":{\"cpu-ms\":80.5,\"reads\":64,\"read-p50-ms\":0.4,\"read-p95-ms\":9.0}}}";
        let after = crate::agent::find_report(line)
            .unwrap()
            .perf
            .unwrap()
            .figures(9.0);
        assert_eq!(
            (
                after.probe_cpu_ms,
                after.probe_read_p50_ms,
                after.probe_read_p95_ms
            ),
            (Some(80.5), Some(0.4), Some(9.0))
        );
        // A vSphere baseline has no probe: no probe rows at all.
        let c = compare(&Figures::default(), &after, &Thresholds::default());
        assert_eq!(c.len(), 5);
        // A before with the probe: CPU 50 → 80.5 ms is ×1.6 and +30.5 ms, a
        // regression; p50 0.3 → 0.4 worse; p95 2 → 9 ms doubled and 7 ms longer.
        let before = Figures {
            probe_cpu_ms: Some(50.0),
            probe_read_p50_ms: Some(0.3),
            probe_read_p95_ms: Some(2.0),
            ..Figures::default()
        };
        let c = compare(&before, &after, &Thresholds::default());
        let v: Vec<(&str, &str)> = c[5..]
            .iter()
            .map(|r| (r.metric.as_str(), r.verdict.as_str()))
            .collect();
        assert_eq!(
            v,
            [
                ("probe-cpu-ms", "regression"),
                ("probe-read-p50-ms", "worse"),
                ("probe-read-p95-ms", "regression")
            ]
        );
        assert_eq!(
            c[5].reason,
            "50.00 → 80.50 ms: regression beyond the threshold (×1.5 and +20 ms)"
        );
        let lax = Thresholds {
            cpu_factor: 2.0,
            ..Thresholds::default()
        };
        assert_eq!(compare(&before, &after, &lax)[5].verdict, "worse");
        assert!(Thresholds {
            cpu_factor: 0.9,
            ..Thresholds::default()
        }
        .check()
        .unwrap_err()
        .contains("cpu-factor"));
    }

    #[test]
    fn an_agent_report_carries_its_counters_and_older_ones_parse_without() {
        let line = "V2K-AGENT {\"v\":1,\"ok\":true,\"boot\":true,\"root-rw\":true,\"uptime\":12.5,\
                    \"perf\":{\"cpu\":[900,9],\"disks\":[[\"vda\",10,20,0,0]],\"nics\":[[\"ens3\",0,1]]}}";
        let r = crate::agent::find_report(line).unwrap();
        let p = r.perf.unwrap();
        assert_eq!(p.figures(r.uptime).cpu_ready_percent, Some(1.0));
        let old = "V2K-AGENT {\"v\":1,\"ok\":true,\"boot\":true,\"root-rw\":true}";
        assert_eq!(crate::agent::find_report(old).unwrap().perf, None);
    }
}
