//! `v2k rollback RUN_DIR`: undoes the delivery of a `v2k migrate --to` run (the
//! target stopped and undefined on its destination, its volumes kept unless
//! `--delete-volumes`) and powers a vSphere source back on. The steps live in the
//! `v2k-migrate` library (`migrate/src/rollback.rs`); this file maps arguments.

use std::path::PathBuf;

use anyhow::Context;
use v2k_migrate::rollback::{rollback, Options, SourcePower};
use v2k_migrate::{Event, RunDir};

use crate::{console, exit};

/// Roll a delivered VM back: stop and undefine the target, power the source on
#[derive(clap::Args)]
#[command(
    long_about = "Roll a delivered VM back: stop and undefine the target, power the source on.\n\n\
    Reads RUN_DIR/delivery.json (written by `v2k migrate --to`) or RUN_DIR/live.json (`v2k \
    migrate --live`, during the stream too: the target is stopped before anything else): \
    the domain there is stopped \
    (virsh destroy) and undefined, only when it is the one this run directory defined (same \
    UUID); its volumes are kept unless --delete-volumes; a vSphere source (the report's \
    vsphere:// address) is powered back on unless it already runs. Each step is recorded in \
    RUN_DIR/rollback.json and the report; a rerun after an interruption converges. \
    Exit status: 0 rolled back, 2 error."
)]
pub struct Args {
    /// The run directory of `v2k migrate --to`
    run_dir: PathBuf,
    /// Delete the volumes the delivery uploaded (default: kept)
    #[arg(long)]
    delete_volumes: bool,
    #[command(flatten)]
    vsphere: crate::commands::vsphere::SourceArgs,
}

pub fn exec(args: Args) -> anyhow::Result<i32> {
    let run = RunDir::at(&args.run_dir);
    // The source to power on is the report's (or a live import's), when it is a
    // vSphere VM.
    let source =
        v2k_migrate::rollback::source_address(&run).filter(|s| v2k_vsphere::Address::is_vsphere(s));
    let remote = match source {
        Some(a) => Some(crate::commands::vsphere::remote(
            v2k_vsphere::Address::parse(&a)?,
            &args.vsphere,
        )?),
        None => None,
    };
    let progress = |e: Event| {
        if let Event::Message(m) = e {
            console::say!("v2k: {m}");
        }
    };
    let opts = Options {
        delete_volumes: args.delete_volumes,
    };
    rollback(
        &run,
        &opts,
        remote.as_ref().map(|r| r as &dyn SourcePower),
        &progress,
    )
    .with_context(|| format!("rolling back {}", args.run_dir.display()))?;
    Ok(exit::OK)
}
