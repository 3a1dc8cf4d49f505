//! `v2k rollback RUN_DIR`: undoes a delivery ([`crate::deliver`]) and gives the
//! workload back to the source. In order:
//!
//! ```text
//!  stop-target ─▶ undefine-target ─▶ delete-volumes | keep-volumes ─▶ power-on-source
//!  virsh destroy   virsh undefine      virsh vol-delete (only with        PowerOnVM_Task
//!                  --keep-nvram        --delete-volumes)                   (vSphere sources)
//! ```
//!
//! Only what `delivery.json` says this run directory created is touched: a domain of
//! the same name with another UUID (someone defined their own since) is refused, not
//! stopped. Every step asks the destination or the source for the present state first
//! and only acts on a difference, and each finished step is appended to
//! `rollback.json`, so a rollback killed at any point and run again converges: a
//! stopped domain is not stopped twice, a source already running is not powered on a
//! second time. The report (`report.json`, `report.html`) gets the steps too.
//!
//! A live import (`live.json`, [`crate::live`]) is rolled back the same way, at any
//! point, the stream included: the domain that runs on the overlays (and may still
//! depend on the source's server) is stopped first, then undefined; the overlays are
//! kept in `RUN/live/` (the guest's writes since the cutover are there); only then is
//! the source powered on, so it never runs while a target that reads its disks does.
//! A `v2k migrate --live` still streaming sees its domain gone and fails.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::deliver::{self, DeliverError};
use crate::live::LiveRecord;
use crate::rundir::{RunDir, RunDirError};
use crate::{BoxError, Event};

/// How to roll back.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Delete the volumes the delivery uploaded (default: kept, so that a second
    /// delivery needs no upload and nothing is lost by a hasty rollback).
    pub delete_volumes: bool,
}

pub use crate::cutover::SourcePower;

/// Why a rollback stopped.
#[derive(Debug, thiserror::Error)]
pub enum RollbackError {
    #[error(
        "{0}: nothing was delivered or imported live from this run directory (no \
         delivery.json or live.json)"
    )]
    NothingDelivered(std::path::PathBuf),
    #[error(
        "{uri}: domain {name:?} has UUID {found}, not the {ours} this run directory defined; \
         refusing to touch it"
    )]
    NotOurs {
        uri: String,
        name: String,
        found: String,
        ours: String,
    },
    #[error(transparent)]
    Destination(#[from] DeliverError),
    #[error("powering {source_name} back on")]
    PowerOn {
        source_name: String,
        #[source]
        source: BoxError,
    },
    #[error(transparent)]
    RunDir(#[from] RunDirError),
    #[error(transparent)]
    Live(Box<crate::Error>),
}

/// `rollback.json`: the steps finished so far, in order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Record {
    pub steps: Vec<Step>,
}

/// One finished step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Step {
    /// `stop-target`, `undefine-target`, `delete-volumes`, `keep-volumes`,
    /// `keep-overlays` (a live import), `power-on-source`.
    pub name: String,
    /// What was found and done (`stopped`, `already stopped`, `absent`...).
    pub outcome: String,
    /// Seconds since the Unix epoch when it finished.
    pub at: u64,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Rolls back the delivery recorded in `run`; see the module documentation.
pub fn rollback(
    run: &RunDir,
    opts: &Options,
    source: Option<&dyn SourcePower>,
    progress: &dyn Fn(Event),
) -> Result<Record, RollbackError> {
    let rec = match run.load_delivery() {
        Ok(r) => r,
        Err(_) => match run.load_live() {
            Ok(l) => return rollback_live(run, l, source, progress),
            Err(_) => return Err(RollbackError::NothingDelivered(run.root().to_path_buf())),
        },
    };
    let mut done = Record { steps: Vec::new() };
    let mut finish = |name: &str, outcome: String| -> Result<(), RollbackError> {
        finish_step(run, &mut done, progress, name, outcome)
    };
    let uri = &rec.uri;

    // The domain, when it is there and ours.
    let present = deliver::domains(uri)?.contains(&rec.domain);
    if present {
        let found = deliver::virsh(uri, &["domuuid", &rec.domain])?
            .trim()
            .to_string();
        match &rec.domain_uuid {
            Some(ours) if *ours != found => {
                return Err(RollbackError::NotOurs {
                    uri: uri.clone(),
                    name: rec.domain.clone(),
                    found,
                    ours: ours.clone(),
                })
            }
            // Never claimed: the domain there is someone else's. (Claimed but killed
            // before its UUID was recorded: the name was free when the delivery
            // claimed it, so the domain there is the one it defined.)
            _ if !rec.domain_claimed => {
                return Err(RollbackError::NotOurs {
                    uri: uri.clone(),
                    name: rec.domain.clone(),
                    found,
                    ours: "none".into(),
                })
            }
            _ => {}
        }
    }

    // 1. stop-target
    finish("stop-target", stop_target(uri, &rec.domain, present)?)?;

    // 2. undefine-target; the variable store is a pool volume, kept or deleted below.
    let outcome = if present {
        deliver::virsh(uri, &["undefine", &rec.domain, "--keep-nvram"])?;
        format!("{} undefined on {uri}", rec.domain)
    } else {
        "absent".to_string()
    };
    finish("undefine-target", outcome)?;

    // 3. the volumes
    let there = deliver::volumes(uri, &rec.pool)?;
    let ours: Vec<&String> = rec.claimed.iter().filter(|v| there.contains(v)).collect();
    if opts.delete_volumes {
        for v in &ours {
            deliver::virsh(uri, &["vol-delete", "--pool", &rec.pool, v])?;
        }
        finish(
            "delete-volumes",
            format!("{} volume(s) deleted from pool {}", ours.len(), rec.pool),
        )?;
    } else {
        finish(
            "keep-volumes",
            format!("{} volume(s) kept in pool {}", ours.len(), rec.pool),
        )?;
    }

    // 4. power-on-source
    finish("power-on-source", power_on_source(source)?)?;
    save_in_report(run, &done)?;
    Ok(done)
}

/// Appends a finished step to `rollback.json` and says it.
fn finish_step(
    run: &RunDir,
    done: &mut Record,
    progress: &dyn Fn(Event),
    name: &str,
    outcome: String,
) -> Result<(), RollbackError> {
    progress(Event::Message(format!("{name}: {outcome}")));
    done.steps.push(Step {
        name: name.into(),
        outcome,
        at: now(),
    });
    run.save_rollback(done)?;
    Ok(())
}

/// Powers a vSphere source on unless it already runs; what was done.
fn power_on_source(source: Option<&dyn SourcePower>) -> Result<String, RollbackError> {
    Ok(match source {
        None => "a local source: nothing to power on".to_string(),
        Some(s) => {
            let on = s.is_powered_on().map_err(|e| RollbackError::PowerOn {
                source_name: s.describe(),
                source: e,
            })?;
            if on {
                format!("{} was already powered on", s.describe())
            } else {
                s.power_on().map_err(|e| RollbackError::PowerOn {
                    source_name: s.describe(),
                    source: e,
                })?;
                format!("{} powered on", s.describe())
            }
        }
    })
}

/// The report says it too, when there is one.
fn save_in_report(run: &RunDir, done: &Record) -> Result<(), RollbackError> {
    if let Ok(mut rep) = run.load_report() {
        rep.rollback = Some(done.clone());
        run.save_report(&rep)?;
    }
    Ok(())
}

/// The source's address a rollback powers on: the report's, or (a live import that
/// has not reported yet) `live.json`'s.
pub fn source_address(run: &RunDir) -> Option<String> {
    run.load_report()
        .map(|r| r.source)
        .or_else(|_| run.load_live().map(|l| l.source))
        .ok()
        .filter(|s| !s.is_empty())
}

/// Rolls back a live import (module documentation): stop-target, undefine-target,
/// keep-overlays, power-on-source. The target is stopped before anything else, and a
/// failure to stop it ends the rollback with the source still off.
fn rollback_live(
    run: &RunDir,
    mut rec: LiveRecord,
    source: Option<&dyn SourcePower>,
    progress: &dyn Fn(Event),
) -> Result<Record, RollbackError> {
    let mut done = Record { steps: Vec::new() };
    let mut finish = |name: &str, outcome: String| -> Result<(), RollbackError> {
        finish_step(run, &mut done, progress, name, outcome)
    };
    let uri = rec.uri.clone();
    let present = match &rec.domain {
        Some(d) => deliver::domains(&uri)?.contains(d),
        None => false,
    };
    let domain = rec.domain.clone().unwrap_or_default();
    if present {
        let found = deliver::virsh(&uri, &["domuuid", &domain])?
            .trim()
            .to_string();
        if let Some(ours) = rec.domain_uuid.as_ref().filter(|o| **o != found) {
            return Err(RollbackError::NotOurs {
                uri,
                name: domain,
                found,
                ours: ours.clone(),
            });
        }
    }

    // 1. stop-target: first, whatever the stream's state (the domain may read the
    // source's disks through v2k's server until its pulls have completed).
    finish("stop-target", stop_target(&uri, &domain, present)?)?;
    rec.depends_on_source = false;
    rec.state = "rolled-back".into();
    rec.save(run)
        .map_err(|e| RollbackError::Live(Box::new(e)))?;

    // 2. undefine-target
    let outcome = if present {
        deliver::virsh(&uri, &["undefine", &domain, "--keep-nvram"])?;
        format!("{domain} undefined on {uri}")
    } else {
        "absent".to_string()
    };
    finish("undefine-target", outcome)?;

    // 3. the overlays stay where the live import made them.
    finish(
        "keep-overlays",
        format!(
            "{} overlay(s) kept in {}",
            rec.disks.len(),
            run.root().join("live").display()
        ),
    )?;

    // 4. power-on-source: only now that no target runs on its disks.
    finish("power-on-source", power_on_source(source)?)?;
    save_in_report(run, &done)?;
    Ok(done)
}

/// Stops `domain` on `uri` when it is `present` and not shut off; says what it found.
fn stop_target(uri: &str, domain: &str, present: bool) -> Result<String, RollbackError> {
    if !present {
        return Ok("absent".into());
    }
    let state = deliver::domain_state(uri, domain)?;
    Ok(match state.as_str() {
        "shut off" => "already stopped".into(),
        _ => {
            deliver::virsh(uri, &["destroy", domain])?;
            format!("stopped (was {state})")
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_import_that_defined_no_domain_rolls_back_to_the_source_from_live_json() {
        let d = tempfile::tempdir().unwrap();
        let run = RunDir::at(d.path());
        let rec = LiveRecord {
            state: "injected".into(),
            source_off_at: 7,
            source: "vsphere://u%40x@h/DC0/vm/web".into(),
            uri: "qemu:///system".into(),
            depends_on_source: false,
            ..LiveRecord::default()
        };
        rec.save(&run).unwrap();
        // No report yet (the import never got that far): live.json names the source.
        assert_eq!(
            source_address(&run).as_deref(),
            Some("vsphere://u%40x@h/DC0/vm/web")
        );
        let done = rollback(&run, &Options::default(), None, &|_| {}).unwrap();
        let steps: Vec<(&str, &str)> = done
            .steps
            .iter()
            .map(|s| (s.name.as_str(), s.outcome.as_str()))
            .collect();
        assert_eq!(
            steps[..2],
            [("stop-target", "absent"), ("undefine-target", "absent")]
        );
        assert_eq!(steps[2].0, "keep-overlays");
        assert_eq!(steps[3].0, "power-on-source");
        assert_eq!(run.load_live().unwrap().state, "rolled-back");
    }

    #[test]
    fn a_run_with_neither_record_has_nothing_to_roll_back() {
        let d = tempfile::tempdir().unwrap();
        let run = RunDir::at(d.path());
        let e = rollback(&run, &Options::default(), None, &|_| {}).unwrap_err();
        assert!(
            e.to_string().contains("no delivery.json or live.json"),
            "{e}"
        );
        assert_eq!(source_address(&run), None);
    }
}
