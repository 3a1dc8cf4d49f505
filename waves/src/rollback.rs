//! `v2k wave rollback PLAN --vm NAME | --wave NAME`: the one-VM rollback of
//! `v2k-migrate` (`migrate/src/rollback.rs`) over the VMs of a wave run. The VMs and
//! their run directories come from the run's journal (what was actually run, patterns
//! expanded), a vSphere source's connection settings from the plan; each VM's steps
//! are appended to the journal (`vm-rolled-back`) after they finished, and one VM
//! failing does not stop the others.

use std::path::PathBuf;

use v2k_migrate::rollback::{self, SourcePower};
use v2k_migrate::vsphere::VsphereSource;
use v2k_migrate::RunDir;

use crate::journal::{Entry, Journal};
use crate::plan::Plan;
use crate::{Error, Result};

/// Which VMs to roll back.
#[derive(Debug, Clone)]
pub enum Selection {
    Vm(String),
    Wave(String),
}

/// How one VM's rollback ended.
#[derive(Debug)]
pub struct VmRollback {
    pub wave: String,
    pub vm: String,
    pub out: PathBuf,
    pub result: std::result::Result<rollback::Record, String>,
}

/// Rolls back the selected VMs of `plan`'s run; `progress` gets each step's line.
pub fn rollback(
    plan: &Plan,
    select: &Selection,
    opts: &rollback::Options,
    progress: &dyn Fn(&str, &str),
) -> Result<Vec<VmRollback>> {
    let (journal, records) = Journal::open(&plan.run_dir)?;
    let started = records.iter().find_map(|r| match &r.entry {
        Entry::RunStarted { waves, .. } => Some(waves.clone()),
        _ => None,
    });
    let Some(waves) = started else {
        return Err(Error::Run(format!(
            "{}: this plan was never run (no journal)",
            plan.run_dir.display()
        )));
    };
    let chosen: Vec<(String, String, PathBuf)> = waves
        .iter()
        .flat_map(|w| w.vms.iter().map(move |v| (w, v)))
        .filter(|(w, v)| match select {
            Selection::Vm(n) => &v.name == n,
            Selection::Wave(n) => &w.name == n,
        })
        .map(|(w, v)| (w.name.clone(), v.name.clone(), v.out.clone()))
        .collect();
    if chosen.is_empty() {
        return Err(Error::Run(match select {
            Selection::Vm(n) => format!("no VM {n:?} in this run"),
            Selection::Wave(n) => format!("no wave {n:?} in this run"),
        }));
    }
    let mut done = Vec::new();
    for (wave, vm, out) in chosen {
        let run = RunDir::at(&out);
        if let Some(why) = crate::window::refuse_rollback(&records, &wave, &vm) {
            done.push(VmRollback {
                wave,
                vm,
                out,
                result: Err(why),
            });
            continue;
        }
        let result = source_of(plan, &wave, &run).and_then(|src| {
            rollback::rollback(
                &run,
                opts,
                src.as_ref().map(|s| s as &dyn SourcePower),
                &|e| {
                    if let v2k_migrate::Event::Message(m) = e {
                        progress(&vm, &m);
                    }
                },
            )
            .map_err(|e| v2k_inventory::one_line(&e))
        });
        if let Ok(r) = &result {
            journal.append(Entry::VmRolledBack {
                wave: wave.clone(),
                vm: vm.clone(),
                steps: r
                    .steps
                    .iter()
                    .map(|s| format!("{}: {}", s.name, s.outcome))
                    .collect(),
            })?;
        }
        done.push(VmRollback {
            wave,
            vm,
            out,
            result,
        });
    }
    Ok(done)
}

/// The vSphere source of a VM's run, connected with the plan's settings for its
/// server; `None` for a local source.
fn source_of(
    plan: &Plan,
    wave: &str,
    run: &RunDir,
) -> std::result::Result<Option<VsphereSource>, String> {
    let Some(addr) = run
        .load_report()
        .ok()
        .map(|r| r.source)
        .filter(|s| v2k_migrate::vsphere::Address::is_vsphere(s))
    else {
        return Ok(None);
    };
    let addr =
        v2k_migrate::vsphere::Address::parse(&addr).map_err(|e| v2k_inventory::one_line(&e))?;
    let settings = plan
        .waves
        .iter()
        .filter(|w| w.name == wave)
        .flat_map(|w| &w.vms)
        .filter_map(|v| v.vsphere.as_ref())
        .find(|r| r.address.host == addr.host && r.address.port == addr.port)
        .map(|r| r.settings.clone())
        .ok_or_else(|| format!("{}: no server settings in the plan", addr.host))?;
    VsphereSource::connect(addr, &settings)
        .map(Some)
        .map_err(|e| v2k_inventory::one_line(&e))
}
