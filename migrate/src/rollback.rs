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

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::deliver::{self, DeliverError};
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
    #[error("{0}: nothing was delivered from this run directory (no delivery.json)")]
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
    /// `power-on-source`.
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
    let rec = run
        .load_delivery()
        .map_err(|_| RollbackError::NothingDelivered(run.root().to_path_buf()))?;
    let mut done = Record { steps: Vec::new() };
    let mut finish = |name: &str, outcome: String| -> Result<(), RollbackError> {
        progress(Event::Message(format!("{name}: {outcome}")));
        done.steps.push(Step {
            name: name.into(),
            outcome,
            at: now(),
        });
        run.save_rollback(&done)?;
        Ok(())
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
    let state = if present {
        deliver::virsh(uri, &["domstate", &rec.domain])?
            .trim()
            .to_string()
    } else {
        String::new()
    };
    let outcome = match state.as_str() {
        "" => "absent".to_string(),
        "shut off" => "already stopped".to_string(),
        _ => {
            deliver::virsh(uri, &["destroy", &rec.domain])?;
            format!("stopped (was {state})")
        }
    };
    finish("stop-target", outcome)?;

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
    let outcome = match source {
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
    };
    finish("power-on-source", outcome)?;

    // The report says it too, when there is one.
    if let Ok(mut rep) = run.load_report() {
        rep.rollback = Some(done.clone());
        run.save_report(&rep)?;
    }
    Ok(done)
}
