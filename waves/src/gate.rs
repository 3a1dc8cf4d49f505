//! The gate: a wave larger than the previous one (more VMs, or more at once) starts
//! only when the previous wave's measures allow it, as the field's checklist asks ("do
//! not scale migration until both trend down"). The figures are the journal's
//! ([`crate::metrics`]); the decision names each measure that held the wave with its
//! figures, so whoever reads the refusal knows what to repair. `--override-gate
//! REASON` lets the wave start anyway and the journal keeps who did it and why.

use crate::journal::{Entry, Record};
use crate::metrics::{self, WaveMetrics};
use crate::plan::{Gate, Plan, Wave};

/// How large a wave is, as the gate compares waves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size {
    pub vms: usize,
    /// VMs at once: the plan's `limits.vms`, or fewer when the wave has fewer VMs.
    pub at_once: usize,
}

impl Size {
    pub fn of(plan: &Plan, w: &Wave) -> Size {
        Size {
            vms: w.vms.len(),
            at_once: plan.limits.vms.min(w.vms.len()),
        }
    }
}

impl std::fmt::Display for Size {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} VMs, {} at once", self.vms, self.at_once)
    }
}

/// Why a wave may not start: the two waves compared and each measure that failed.
#[derive(Debug, Clone, PartialEq)]
pub struct Held {
    pub wave: String,
    pub size: Size,
    pub previous: String,
    pub previous_size: Size,
    pub reasons: Vec<String>,
}

impl std::fmt::Display for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the gate holds wave {} ({}): it is larger than wave {} ({}) and {}",
            self.wave,
            self.size,
            self.previous,
            self.previous_size,
            self.reasons.join("; ")
        )
    }
}

fn pct(f: f64) -> String {
    format!("{:.1} %", f * 100.0)
}

/// The last wave before `wave` in plan order that finished at least once.
fn finished_before<'p>(plan: &'p Plan, records: &[Record], wave: &str) -> Option<&'p Wave> {
    let i = plan.waves.iter().position(|w| w.name == wave)?;
    plan.waves[..i].iter().rev().find(|w| {
        records
            .iter()
            .any(|r| matches!(&r.entry, Entry::WaveFinished { wave, .. } if *wave == w.name))
    })
}

/// Whether `wave` may start; `Err` says why not. A wave no larger than the previous
/// finished one, the first wave, and a wave that already started (its decision was
/// taken when it first started) always may.
pub fn check(plan: &Plan, gate: &Gate, records: &[Record], wave: &Wave) -> Result<(), Held> {
    let already = records
        .iter()
        .any(|r| matches!(&r.entry, Entry::WaveStarted { wave: w } if *w == wave.name));
    let Some(prev) = finished_before(plan, records, &wave.name) else {
        return Ok(());
    };
    let (size, prev_size) = (Size::of(plan, wave), Size::of(plan, prev));
    if already || (size.vms <= prev_size.vms && size.at_once <= prev_size.at_once) {
        return Ok(());
    }
    let m = metrics::wave(records, &prev.name);
    let mut reasons = measures(plan, gate, records, &m);
    if reasons.is_empty() {
        if let Some(g) = gate.grow_by {
            let cap = |n: usize| (n as f64 * g).floor() as usize;
            if size.vms > cap(prev_size.vms) || size.at_once > cap(prev_size.at_once) {
                reasons.push(format!(
                    "grow-by {g} allows at most {} VMs, {} at once",
                    cap(prev_size.vms),
                    cap(prev_size.at_once)
                ));
            }
        }
    }
    if reasons.is_empty() {
        return Ok(());
    }
    Err(Held {
        wave: wave.name.clone(),
        size,
        previous: prev.name.clone(),
        previous_size: prev_size,
        reasons,
    })
}

/// Each measure of the previous wave `m` that does not allow growth, in words with
/// its figures.
fn measures(plan: &Plan, gate: &Gate, records: &[Record], m: &WaveMetrics) -> Vec<String> {
    let mut why = Vec::new();
    if let Some(max) = gate.max_change_failure_rate {
        match m.change_failure_rate {
            None => why.push(format!(
                "wave {} attempted no VM, so its change-failure rate proves nothing",
                m.wave
            )),
            Some(c) if c > max => why.push(format!(
                "the change-failure rate of wave {} is {} ({} of {} VMs failed), above \
                 max-change-failure-rate {}",
                m.wave,
                pct(c),
                m.failed_changes,
                m.attempted,
                pct(max)
            )),
            Some(_) => {}
        }
    }
    if gate.mttr_trending_down {
        if m.unrepaired > 0 {
            why.push(format!(
                "wave {} has {} failure(s) not repaired, so its MTTR is not trending down",
                m.wave, m.unrepaired
            ));
        } else if let Some(before) = finished_before(plan, records, &m.wave) {
            // No failure repaired means nothing took time to repair: 0 s.
            let mttr = m.mttr_seconds.unwrap_or(0.0);
            let earlier = metrics::wave(records, &before.name)
                .mttr_seconds
                .unwrap_or(0.0);
            if mttr > earlier {
                why.push(format!(
                    "the MTTR of wave {} is {mttr:.1} s, up from {earlier:.1} s in wave {} \
                     (mttr: trending-down)",
                    m.wave, before.name
                ));
            }
        }
    }
    why
}

/// Who is overriding, for the journal: the login name and the uid.
pub fn who() -> String {
    let uid = rustix::process::getuid().as_raw();
    match std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .or_else(|_| std::env::var("LOGNAME"))
    {
        Ok(name) if !name.is_empty() => format!("{name} (uid {uid})"),
        _ => format!("uid {uid}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::VmStatus;

    fn plan(gate: &str, sizes: &[usize], at_once: usize) -> Plan {
        let mut y = format!("version: 1\nlimits:\n  vms: {at_once}\ngate:\n{gate}waves:\n");
        for (i, n) in sizes.iter().enumerate() {
            y.push_str(&format!("  - name: w{i}\n    vms:\n"));
            for k in 0..*n {
                y.push_str(&format!("      - source: /s/w{i}v{k}.vmx\n"));
            }
        }
        crate::plan::parse(&y, std::path::Path::new("/p/plan.yaml")).unwrap()
    }

    /// A finished wave whose VMs `ok`/failed (and, for failed, repaired after `fix` s).
    fn wave(r: &mut Vec<Record>, w: &str, t: f64, vms: &[(bool, Option<f64>)]) {
        let rec = |time, entry| Record { time, entry };
        r.push(rec(t, Entry::WaveStarted { wave: w.into() }));
        for (i, (ok, fix)) in vms.iter().enumerate() {
            let vm = format!("{w}v{i}");
            let fin = |time, ok: bool| {
                rec(
                    time,
                    Entry::VmFinished {
                        wave: w.into(),
                        vm: vm.clone(),
                        status: if ok {
                            VmStatus::Migrated
                        } else {
                            VmStatus::Failed
                        },
                        result: None,
                        reason: None,
                        seconds: 1.0,
                        migrate_seconds: 1.0,
                        bytes: 0,
                        report: None,
                    },
                )
            };
            r.push(rec(
                t,
                Entry::VmStarted {
                    wave: w.into(),
                    vm: vm.clone(),
                    attempt: 1,
                    out: "/o".into(),
                },
            ));
            r.push(fin(t + 1.0, *ok));
            if let Some(s) = fix {
                r.push(fin(t + 1.0 + s, true));
            }
        }
        r.push(rec(
            t + 2.0,
            Entry::WaveFinished {
                wave: w.into(),
                migrated: 0,
                failed: 0,
                not_run: 0,
                overhead_seconds: 0.0,
                wall_seconds: 0.0,
            },
        ));
    }

    const ALL: &str = "  max-change-failure-rate: 0.2\n  mttr: trending-down\n  grow-by: 2\n";

    #[test]
    fn a_larger_wave_after_a_failing_one_is_held_with_the_figures() {
        let p = plan(ALL, &[2, 4], 4);
        let mut r = Vec::new();
        wave(&mut r, "w0", 0.0, &[(true, None), (false, None)]);
        let held = check(&p, p.gate.as_ref().unwrap(), &r, &p.waves[1]).unwrap_err();
        let msg = held.to_string();
        assert!(
            msg.contains("wave w1 (4 VMs, 4 at once)")
                && msg.contains("wave w0 (2 VMs, 2 at once)")
                && msg.contains(
                    "is 50.0 % (1 of 2 VMs failed), above max-change-failure-rate 20.0 %"
                )
                && msg.contains("1 failure(s) not repaired"),
            "{msg}"
        );
    }

    #[test]
    fn a_wave_no_larger_always_starts_and_growth_is_capped_by_grow_by() {
        let p = plan(ALL, &[2, 2, 5], 8);
        let g = p.gate.unwrap();
        let mut r = Vec::new();
        wave(&mut r, "w0", 0.0, &[(false, None), (false, None)]);
        assert_eq!(check(&p, &g, &r, &p.waves[1]), Ok(()));
        let mut r = Vec::new();
        wave(&mut r, "w0", 0.0, &[(true, None), (true, None)]);
        wave(&mut r, "w1", 10.0, &[(true, None), (true, None)]);
        let held = check(&p, &g, &r, &p.waves[2]).unwrap_err();
        assert_eq!(held.previous, "w1");
        assert_eq!(
            held.reasons,
            vec!["grow-by 2 allows at most 4 VMs, 4 at once".to_string()]
        );
    }

    #[test]
    fn mttr_must_not_rise_from_one_wave_to_the_next() {
        let p = plan(ALL, &[5, 5, 6], 1);
        let g = Gate {
            max_change_failure_rate: Some(0.5),
            ..p.gate.unwrap()
        };
        let mut r = Vec::new();
        wave(&mut r, "w0", 0.0, &[(false, Some(10.0)), (true, None)]);
        wave(&mut r, "w1", 100.0, &[(false, Some(30.0)), (true, None)]);
        let held = check(&p, &g, &r, &p.waves[2]).unwrap_err();
        assert_eq!(
            held.reasons,
            vec![
                "the MTTR of wave w1 is 30.0 s, up from 10.0 s in wave w0 (mttr: trending-down)"
                    .to_string()
            ]
        );
        // The same figures trending down let it grow.
        let mut r = Vec::new();
        wave(&mut r, "w0", 0.0, &[(false, Some(30.0)), (true, None)]);
        wave(&mut r, "w1", 100.0, &[(false, Some(10.0)), (true, None)]);
        assert_eq!(check(&p, &g, &r, &p.waves[2]), Ok(()));
    }

    #[test]
    fn bad_gate_values_are_plan_errors() {
        let y = "version: 1\ngate:\n  max-change-failure-rate: 10\n  grow-by: 0.5\n  mttr: trending-up\nwaves: []\n";
        let e = crate::plan::parse(y, std::path::Path::new("/p/plan.yaml")).unwrap_err();
        assert!(e.to_string().contains("trending-up"), "{e}");
        let y = "version: 1\ngate:\n  max-change-failure-rate: 10\n  grow-by: 0.5\nwaves: []\n";
        let e = crate::plan::parse(y, std::path::Path::new("/p/plan.yaml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 3: gate.max-change-failure-rate is a fraction")
                && e.contains("line 4: gate.grow-by is a factor"),
            "{e}"
        );
    }
}
