//! The rollback window: how long after a VM's cutover the way back is kept open
//! (a plan's `rollback-window: 72h`), and `v2k wave finalize`, the one step that
//! closes it.
//!
//! A VM's window opens when it finished migrated *and delivered* (its `deliver` stage
//! done): from then on it runs on KVM while its source sits powered off, and
//! `v2k wave rollback` can still bring the source back. Finalizing a VM records that
//! its source may now be retired: afterwards v2k refuses to roll it back (the source
//! may be gone or have diverged). So finalizing *within* the window — the only act of
//! v2k's that makes a rollback impossible — is refused unless the operator closes
//! the window early with a reason, journalled with who did it. Everything here is
//! read from the run's journal: `v2k wave status` needs no plan.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::journal::{Entry, Journal, Record, VmStatus};
use crate::plan::Plan;
use crate::{Error, Result};

/// Longest window a plan may set (a year): a typo like `72d` for `72h` is caught,
/// not honoured for ever.
pub const MAX_WINDOW_SECONDS: u64 = 366 * 24 * 3600;

/// Parses `72h`, `3d`, `90m`, `3600s`: a positive whole number and one unit.
pub fn parse_window(s: &str) -> std::result::Result<u64, String> {
    let s = s.trim();
    let unit = s.chars().last().ok_or("an empty duration")?;
    let factor = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return Err(format!("{s:?}: a duration ends in s, m, h or d (72h)")),
    };
    let n: u64 = s[..s.len() - 1]
        .parse()
        .map_err(|_| format!("{s:?}: a whole number and a unit (72h)"))?;
    let secs = n
        .checked_mul(factor)
        .filter(|&v| v > 0 && v <= MAX_WINDOW_SECONDS)
        .ok_or_else(|| format!("{s:?}: from 1s up to 366d"))?;
    Ok(secs)
}

/// Where a VM stands with respect to its way back.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(
    tag = "state",
    rename_all = "kebab-case",
    rename_all_fields = "kebab-case"
)]
pub enum Window {
    /// Delivered; the window is open for this many more seconds (`None`: the plan
    /// set no window, so it never closes by itself).
    Open {
        delivered_at: f64,
        #[serde(skip_serializing_if = "Option::is_none")]
        seconds_left: Option<f64>,
    },
    /// Delivered; the window closed this many seconds ago.
    Closed {
        delivered_at: f64,
        seconds_ago: f64,
    },
    RolledBack {
        at: f64,
    },
    Final {
        at: f64,
    },
}

impl Window {
    /// One phrase for `v2k wave status`.
    pub fn describe(&self) -> String {
        match self {
            Window::Open {
                seconds_left: Some(s),
                ..
            } => format!("rollback window: {} left", human(*s)),
            Window::Open { .. } => "rollback possible (no window set)".into(),
            Window::Closed { seconds_ago, .. } => {
                format!("rollback window closed {} ago", human(*seconds_ago))
            }
            Window::RolledBack { .. } => "rolled back".into(),
            Window::Final { .. } => "finalized: no rollback".into(),
        }
    }
}

/// `2d 3h`, `5h 12m`, `40m`, `12s`.
fn human(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    let (d, h, m) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, m) => format!("{m}m"),
        (0, h, m) => format!("{h}h {m}m"),
        (d, h, _) => format!("{d}d {h}h"),
    }
}

/// The run's window length (journalled when the run started).
pub fn window_seconds(records: &[Record]) -> Option<u64> {
    records.iter().find_map(|r| match &r.entry {
        Entry::RunStarted {
            rollback_window_seconds,
            ..
        } => *rollback_window_seconds,
        _ => None,
    })
}

/// Each delivered VM's window at `now` (Unix seconds), by (wave, VM). VMs never
/// delivered are absent.
pub fn states(records: &[Record], now: f64) -> BTreeMap<(String, String), Window> {
    let len = window_seconds(records).map(|s| s as f64);
    let mut delivered: BTreeMap<(String, String), bool> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for r in records {
        match &r.entry {
            Entry::VmStarted { wave, vm, .. } => {
                delivered.insert((wave.clone(), vm.clone()), false);
            }
            Entry::Stage {
                wave,
                vm,
                stage,
                status,
            } if stage == "deliver" && status == "done" => {
                delivered.insert((wave.clone(), vm.clone()), true);
            }
            Entry::VmFinished {
                wave, vm, status, ..
            } => {
                let key = (wave.clone(), vm.clone());
                if *status == VmStatus::Migrated && delivered.get(&key) == Some(&true) {
                    out.insert(
                        key,
                        Window::Open {
                            delivered_at: r.time,
                            seconds_left: None,
                        },
                    );
                }
            }
            Entry::VmRolledBack { wave, vm, .. } => {
                out.insert(
                    (wave.clone(), vm.clone()),
                    Window::RolledBack { at: r.time },
                );
            }
            Entry::VmFinalized { wave, vm, .. } => {
                out.insert((wave.clone(), vm.clone()), Window::Final { at: r.time });
            }
            _ => {}
        }
    }
    for w in out.values_mut() {
        if let (Window::Open { delivered_at, .. }, Some(len)) = (&*w, len) {
            let at = *delivered_at;
            let left = at + len - now;
            *w = if left > 0.0 {
                Window::Open {
                    delivered_at: at,
                    seconds_left: Some(left),
                }
            } else {
                Window::Closed {
                    delivered_at: at,
                    seconds_ago: -left,
                }
            };
        }
    }
    out
}

/// Which VMs to finalize.
pub use crate::rollback::Selection;

/// How one VM's finalize ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finalized {
    pub wave: String,
    pub vm: String,
    /// `finalized`, `finalized-early` (window closed by the operator), or why not.
    pub outcome: String,
    pub done: bool,
    /// Held by the open window (not an error of the VM's).
    pub refused: bool,
}

/// Finalizes the selected VMs of `plan`'s run: each delivered VM whose window has
/// closed (or, with `close_early`, is still open: the reason and `by` are
/// journalled). VMs not delivered, rolled back or already final are named and left.
pub fn finalize(
    plan: &Plan,
    select: &Selection,
    close_early: Option<&str>,
    by: &str,
    now: f64,
) -> Result<Vec<Finalized>> {
    let (journal, records) = Journal::open(&plan.run_dir)?;
    let waves = records
        .iter()
        .find_map(|r| match &r.entry {
            Entry::RunStarted { waves, .. } => Some(waves.clone()),
            _ => None,
        })
        .ok_or_else(|| {
            Error::Run(format!(
                "{}: this plan was never run (no journal)",
                plan.run_dir.display()
            ))
        })?;
    let chosen: Vec<(String, String)> = waves
        .iter()
        .flat_map(|w| w.vms.iter().map(move |v| (w.name.clone(), v.name.clone())))
        .filter(|(w, v)| match select {
            Selection::Vm(n) => v == n,
            Selection::Wave(n) => w == n,
        })
        .collect();
    if chosen.is_empty() {
        return Err(Error::Run(match select {
            Selection::Vm(n) => format!("no VM {n:?} in this run"),
            Selection::Wave(n) => format!("no wave {n:?} in this run"),
        }));
    }
    let st = states(&records, now);
    let mut out = Vec::new();
    for (wave, vm) in chosen {
        let open = matches!(
            st.get(&(wave.clone(), vm.clone())),
            Some(Window::Open { .. })
        );
        let (outcome, done) = match st.get(&(wave.clone(), vm.clone())) {
            None => ("not delivered: nothing to finalize".to_string(), false),
            Some(Window::RolledBack { .. }) => ("rolled back: nothing to finalize".into(), false),
            Some(Window::Final { .. }) => ("already finalized".into(), true),
            Some(Window::Closed { .. }) => {
                journal.append(Entry::VmFinalized {
                    wave: wave.clone(),
                    vm: vm.clone(),
                    by: by.to_string(),
                    early_reason: None,
                })?;
                ("finalized".into(), true)
            }
            Some(w @ Window::Open { .. }) => match close_early {
                Some(reason) => {
                    journal.append(Entry::VmFinalized {
                        wave: wave.clone(),
                        vm: vm.clone(),
                        by: by.to_string(),
                        early_reason: Some(reason.to_string()),
                    })?;
                    (
                        format!("finalized early ({}): {reason}", w.describe()),
                        true,
                    )
                }
                None => (
                    format!(
                        "refused: {} — finalizing ends the way back; wait, or close the \
                         window early with --close-window REASON",
                        w.describe()
                    ),
                    false,
                ),
            },
        };
        out.push(Finalized {
            wave,
            vm,
            outcome,
            refused: open && !done,
            done,
        });
    }
    Ok(out)
}

/// Why `v2k wave rollback` refuses a VM: it was finalized.
pub fn refuse_rollback(records: &[Record], wave: &str, vm: &str) -> Option<String> {
    records.iter().find_map(|r| match &r.entry {
        Entry::VmFinalized {
            wave: w, vm: v, by, ..
        } if w == wave && v == vm => Some(format!(
            "{vm} was finalized by {by}: its source may be retired, so v2k no longer rolls it back"
        )),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(time: f64, entry: Entry) -> Record {
        Record { time, entry }
    }

    fn run(window: Option<u64>, deliver: bool) -> Vec<Record> {
        let mut r = vec![rec(
            0.0,
            Entry::RunStarted {
                schema_version: crate::journal::SCHEMA_VERSION,
                plan: "p.yaml".into(),
                plan_hash: "h".into(),
                waves: vec![],
                conversion_host: None,
                rollback_window_seconds: window,
            },
        )];
        r.push(rec(
            1.0,
            Entry::VmStarted {
                wave: "w1".into(),
                vm: "web".into(),
                attempt: 1,
                out: "o".into(),
            },
        ));
        if deliver {
            r.push(rec(
                50.0,
                Entry::Stage {
                    wave: "w1".into(),
                    vm: "web".into(),
                    stage: "deliver".into(),
                    status: "done".into(),
                },
            ));
        }
        r.push(rec(
            100.0,
            Entry::VmFinished {
                wave: "w1".into(),
                vm: "web".into(),
                status: VmStatus::Migrated,
                result: None,
                reason: None,
                seconds: 99.0,
                migrate_seconds: 98.0,
                bytes: 0,
                report: None,
            },
        ));
        r
    }

    #[test]
    fn durations_read_as_operators_write_them() {
        assert_eq!(parse_window("72h"), Ok(72 * 3600));
        assert_eq!(parse_window("3d"), Ok(3 * 86_400));
        assert_eq!(parse_window("90m"), Ok(5400));
        assert_eq!(parse_window("15s"), Ok(15));
        for bad in [
            "",
            "72",
            "h",
            "-1h",
            "0h",
            "72 hours",
            "1.5h",
            "400d",
            "9999999999999999999d",
        ] {
            assert!(parse_window(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_plans_window_is_read_and_a_bad_one_named_with_its_line() {
        let path = std::path::Path::new("/p/plan.yaml");
        let waves = "waves:\n  - name: w\n    vms:\n      - source: /v/web.vmx\n";
        let p = crate::plan::parse(&format!("version: 1\nrollback-window: 72h\n{waves}"), path)
            .unwrap();
        assert_eq!(p.rollback_window_seconds, Some(72 * 3600));
        let e = crate::plan::parse(&format!("version: 1\nrollback-window: 72\n{waves}"), path)
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2: rollback-window: \"72\""), "{e}");
    }

    #[test]
    fn the_window_opens_at_delivery_and_closes_after_its_length() {
        let key = ("w1".to_string(), "web".to_string());
        let r = run(Some(3600), true);
        let open = states(&r, 100.0 + 600.0);
        assert_eq!(
            open[&key],
            Window::Open {
                delivered_at: 100.0,
                seconds_left: Some(3000.0)
            }
        );
        assert_eq!(open[&key].describe(), "rollback window: 50m left");
        assert_eq!(
            serde_json::to_value(&open[&key]).unwrap(),
            serde_json::json!({"state": "open", "delivered-at": 100.0, "seconds-left": 3000.0})
        );
        let closed = states(&r, 100.0 + 3600.0 + 7200.0);
        assert_eq!(closed[&key].describe(), "rollback window closed 2h 0m ago");
        // Not delivered: no window at all.
        assert!(states(&run(Some(3600), false), 200.0).is_empty());
        // No window in the plan: open for ever.
        assert_eq!(
            states(&run(None, true), 1e9)[&key].describe(),
            "rollback possible (no window set)"
        );
        // Rolled back, then finalized: the latest word counts.
        let mut r = run(Some(3600), true);
        r.push(rec(
            300.0,
            Entry::VmRolledBack {
                wave: "w1".into(),
                vm: "web".into(),
                steps: vec![],
            },
        ));
        assert_eq!(states(&r, 400.0)[&key], Window::RolledBack { at: 300.0 });
        r.push(rec(
            500.0,
            Entry::VmFinalized {
                wave: "w1".into(),
                vm: "web".into(),
                by: "ops (uid 0)".into(),
                early_reason: None,
            },
        ));
        assert_eq!(states(&r, 600.0)[&key], Window::Final { at: 500.0 });
        assert!(refuse_rollback(&r, "w1", "web")
            .unwrap()
            .contains("ops (uid 0)"));
        assert!(refuse_rollback(&r, "w1", "db").is_none());
    }
}
