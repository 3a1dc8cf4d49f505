//! Change-failure rate and MTTR per wave, read from the journal alone (its records'
//! `time` stamps), so `v2k wave report` computes the same figures long after the run
//! and the gate ([`crate::gate`]) decides on what the journal proves, not on memory.
//!
//! A *change* is one VM of a wave that was started at least once. It *failed* when any
//! of its attempts ended `failed` (migration, validation or a post hook; a VM failing
//! twice is one failed change). Its failure is *repaired* by a later successful attempt
//! of the same VM in the same wave (`--retry-failed` after a fix); MTTR is the mean,
//! over repaired failures, of the seconds from the first failed `vm-finished` record to
//! the successful one. A failure not yet repaired has no end and is counted apart
//! (`unrepaired`): leaving it out of the mean would make a wave whose failures were
//! never fixed look fast to repair.
//!
//! A VM rolled back (`v2k wave rollback`, a `vm-rolled-back` record) is a failed change
//! too, and the rollback is its repair (the service is back on the source): an open
//! failure of that VM ends there; a VM that had migrated fine and was rolled back after
//! cutover gets a failure of kind `rolled-back` from its last successful `vm-finished`
//! (when the change went live: the journal knows no earlier sign of trouble, so this
//! is the longest the failure can have lasted) to the rollback.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::journal::{Entry, Record, VmStatus};

/// One VM's failure in a wave and, when it came, its repair.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Failure {
    pub vm: String,
    /// `validation` (the boot or a check failed), `migration` (anything earlier or a
    /// post hook) or `rolled-back` (rolled back after a successful migration).
    pub kind: String,
    pub reason: String,
    /// Unix seconds of the failed `vm-finished` record.
    pub failed_at: f64,
    /// Unix seconds of the successful rerun's `vm-finished` record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repaired_at: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repair_seconds: Option<f64>,
}

/// The figures of one wave.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct WaveMetrics {
    pub wave: String,
    /// VMs of the wave started at least once.
    pub attempted: usize,
    /// Attempted VMs that failed at least once.
    pub failed_changes: usize,
    /// `failed-changes / attempted`, a fraction (0.25 = 25 %); absent when nothing was
    /// attempted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change_failure_rate: Option<f64>,
    pub repaired: usize,
    pub unrepaired: usize,
    /// Mean repair time of the repaired failures; absent when none was repaired.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mttr_seconds: Option<f64>,
    pub failures: Vec<Failure>,
}

/// The figures of `wave` as the journal tells them.
pub fn wave(records: &[Record], wave: &str) -> WaveMetrics {
    // Per VM, in first-start order: its failures (at most one open at a time).
    let mut started: Vec<String> = Vec::new();
    let mut failures: BTreeMap<String, Vec<Failure>> = BTreeMap::new();
    // When each VM's last successful attempt finished: when its change went live.
    let mut live_since: BTreeMap<String, f64> = BTreeMap::new();
    for r in records {
        match &r.entry {
            Entry::VmStarted { wave: w, vm, .. } if w == wave && !started.contains(vm) => {
                started.push(vm.clone());
            }
            Entry::VmFinished {
                wave: w,
                vm,
                status,
                result,
                reason,
                ..
            } if w == wave => {
                let list = failures.entry(vm.clone()).or_default();
                let open = list.last_mut().filter(|f| f.repaired_at.is_none());
                match (status, open) {
                    (VmStatus::Failed, None) => list.push(Failure {
                        vm: vm.clone(),
                        kind: match result.as_deref() {
                            Some("validation-failed") => "validation",
                            Some("performance-regression") => "performance",
                            _ => "migration",
                        }
                        .into(),
                        reason: reason.clone().unwrap_or_default(),
                        failed_at: r.time,
                        repaired_at: None,
                        repair_seconds: None,
                    }),
                    // Failing again while already failed: the same change, still open.
                    (VmStatus::Failed, Some(_)) => {}
                    (VmStatus::Migrated, Some(f)) => {
                        f.repaired_at = Some(r.time);
                        // A clock stepped back between the records is not a negative repair.
                        f.repair_seconds = Some((r.time - f.failed_at).max(0.0));
                    }
                    (VmStatus::Migrated, None) => {}
                }
                if *status == VmStatus::Migrated {
                    live_since.insert(vm.clone(), r.time);
                }
            }
            Entry::VmRolledBack { wave: w, vm, .. } if w == wave => {
                let list = failures.entry(vm.clone()).or_default();
                let repair = |f: &mut Failure| {
                    f.repaired_at = Some(r.time);
                    f.repair_seconds = Some((r.time - f.failed_at).max(0.0));
                };
                match list.last_mut().filter(|f| f.repaired_at.is_none()) {
                    Some(f) => repair(f),
                    None => {
                        let since = live_since.get(vm).copied().unwrap_or(r.time);
                        let mut f = Failure {
                            vm: vm.clone(),
                            kind: "rolled-back".into(),
                            reason: "rolled back after cutover".into(),
                            failed_at: since,
                            repaired_at: None,
                            repair_seconds: None,
                        };
                        repair(&mut f);
                        list.push(f);
                    }
                }
            }
            _ => {}
        }
    }
    let list: Vec<Failure> = started
        .iter()
        .flat_map(|vm| failures.remove(vm).unwrap_or_default())
        .collect();
    let failed_changes = started
        .iter()
        .filter(|vm| list.iter().any(|f| &f.vm == *vm))
        .count();
    let repairs: Vec<f64> = list.iter().filter_map(|f| f.repair_seconds).collect();
    WaveMetrics {
        wave: wave.into(),
        attempted: started.len(),
        failed_changes,
        change_failure_rate: (!started.is_empty())
            .then(|| failed_changes as f64 / started.len() as f64),
        repaired: repairs.len(),
        unrepaired: list.len() - repairs.len(),
        mttr_seconds: (!repairs.is_empty())
            .then(|| repairs.iter().sum::<f64>() / repairs.len() as f64),
        failures: list,
    }
}

/// The figures of every wave the run has started, in plan order.
pub fn all(records: &[Record]) -> Vec<WaveMetrics> {
    crate::report::wave_names(records)
        .iter()
        .filter(|w| {
            records
                .iter()
                .any(|r| matches!(&r.entry, Entry::WaveStarted { wave } if wave == *w))
        })
        .map(|w| wave(records, w))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(time: f64, entry: Entry) -> Record {
        Record { time, entry }
    }
    fn started(t: f64, vm: &str) -> Record {
        at(
            t,
            Entry::VmStarted {
                wave: "w".into(),
                vm: vm.into(),
                attempt: 1,
                out: "/o".into(),
            },
        )
    }
    fn finished(t: f64, vm: &str, ok: bool, result: Option<&str>) -> Record {
        at(
            t,
            Entry::VmFinished {
                wave: "w".into(),
                vm: vm.into(),
                status: if ok {
                    VmStatus::Migrated
                } else {
                    VmStatus::Failed
                },
                result: result.map(Into::into),
                reason: (!ok).then(|| "why".into()),
                seconds: 1.0,
                migrate_seconds: 1.0,
                bytes: 0,
                report: None,
            },
        )
    }

    #[test]
    fn a_failure_repaired_by_a_rerun_counts_once_with_its_repair_time() {
        let r = vec![
            started(100.0, "a"),
            started(100.0, "b"),
            started(100.0, "c"),
            finished(110.0, "a", true, Some("not-validated")),
            finished(120.0, "b", false, None),
            finished(130.0, "c", false, Some("validation-failed")),
            // b fails again on its first retry, then succeeds: one change, one repair.
            started(200.0, "b"),
            finished(210.0, "b", false, None),
            started(300.0, "b"),
            finished(320.0, "b", true, Some("not-validated")),
            // Another wave's records are not this wave's.
            at(
                330.0,
                Entry::VmStarted {
                    wave: "other".into(),
                    vm: "z".into(),
                    attempt: 1,
                    out: "/o".into(),
                },
            ),
        ];
        let m = wave(&r, "w");
        assert_eq!(m.attempted, 3);
        assert_eq!(m.failed_changes, 2);
        assert_eq!(m.change_failure_rate, Some(2.0 / 3.0));
        assert_eq!(m.repaired, 1);
        assert_eq!(m.unrepaired, 1);
        assert_eq!(m.mttr_seconds, Some(200.0));
        assert_eq!(m.failures[0].vm, "b");
        assert_eq!(m.failures[0].kind, "migration");
        assert_eq!(m.failures[1].kind, "validation");
        assert_eq!(m.failures[1].repaired_at, None);
    }

    fn rolled_back(t: f64, vm: &str) -> Record {
        at(
            t,
            Entry::VmRolledBack {
                wave: "w".into(),
                vm: vm.into(),
                steps: vec!["undefine: done".into()],
            },
        )
    }

    #[test]
    fn a_rollback_is_a_failed_change_and_its_repair() {
        let r = vec![
            started(100.0, "a"),
            started(100.0, "b"),
            started(100.0, "c"),
            finished(110.0, "a", true, Some("validated")),
            finished(130.0, "b", false, Some("validation-failed")),
            finished(140.0, "c", true, Some("validated")),
            // a went live at 110 and was rolled back at 410; b's open failure ends
            // with its rollback at 190.
            rolled_back(190.0, "b"),
            rolled_back(410.0, "a"),
        ];
        let m = wave(&r, "w");
        assert_eq!((m.attempted, m.failed_changes), (3, 2));
        assert_eq!((m.repaired, m.unrepaired), (2, 0));
        let a = m.failures.iter().find(|f| f.vm == "a").unwrap();
        assert_eq!(a.kind, "rolled-back");
        assert_eq!(a.repair_seconds, Some(300.0));
        let b = m.failures.iter().find(|f| f.vm == "b").unwrap();
        assert_eq!(
            (b.kind.as_str(), b.repair_seconds),
            ("validation", Some(60.0))
        );
        assert_eq!(m.mttr_seconds, Some(180.0));
    }

    #[test]
    fn a_wave_without_attempts_has_no_rate_and_one_without_repairs_no_mttr() {
        let m = wave(&[], "w");
        assert_eq!((m.attempted, m.change_failure_rate), (0, None));
        let m = wave(&[started(1.0, "a"), finished(2.0, "a", false, None)], "w");
        assert_eq!(m.change_failure_rate, Some(1.0));
        assert_eq!((m.mttr_seconds, m.unrepaired), (None, 1));
    }
}
