//! `v2k info DISK.vmdk`: what a VMware disk is, without converting it. Everything the
//! disk says about itself (ddb values, extent and parent names) is escaped for the
//! terminal (`console`).

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use v2k_converters::vmdk::inspect_path;

use crate::commands::convert::human;
use crate::{console, exit};

/// Show a VMDK's subformat, capacity, allocation, extents, parent chain and ddb fields
#[derive(clap::Args)]
pub struct Args {
    /// VMDK files
    #[arg(required = true)]
    disks: Vec<PathBuf>,
    /// One JSON object per disk on stdout
    #[arg(long)]
    json: bool,
}

pub fn exec(args: Args) -> anyhow::Result<i32> {
    let mut failed = false;
    for path in &args.disks {
        let info = match inspect_path(path) {
            Ok(i) => i,
            Err(e) => {
                failed = true;
                console::say!("v2k: error: {:#}", anyhow::Error::from(e));
                continue;
            }
        };
        if args.json {
            let mut v = serde_json::to_value(&info).context("encoding disk info")?;
            v["type"] = serde_json::json!("disk");
            console::emit_json(&v)?;
            continue;
        }
        let mut o = console::human_stdout();
        writeln!(o, "{}", console::escape_path(path))?;
        writeln!(
            o,
            "  create type:     {}",
            console::escape(&info.create_type)
        )?;
        writeln!(
            o,
            "  capacity:        {} ({} bytes)",
            human(info.capacity),
            info.capacity
        )?;
        writeln!(
            o,
            "  allocated:       {} ({} bytes)",
            human(info.allocated_bytes),
            info.allocated_bytes
        )?;
        if let Some(g) = info.grain_size {
            writeln!(o, "  grain size:      {}", human(g))?;
        }
        writeln!(
            o,
            "  compressed:      {}",
            if info.compressed { "yes" } else { "no" }
        )?;
        if let Some(a) = &info.adapter_type {
            writeln!(o, "  adapter type:    {}", console::escape(a))?;
        }
        if let Some(c) = info.cid {
            writeln!(o, "  CID:             {c:08x}")?;
        }
        if info.unclean_shutdown {
            writeln!(
                o,
                "  unclean shutdown: yes (the VM was not shut down cleanly)"
            )?;
        }
        for (i, e) in info.extents.iter().enumerate() {
            writeln!(
                o,
                "  extent {}:        {} {} {} sectors{}",
                i + 1,
                serde_name(&e.access),
                serde_name(&e.kind),
                e.sectors,
                e.file
                    .as_ref()
                    .map(|f| format!(" {}", console::escape_path(f)))
                    .unwrap_or_default()
            )?;
        }
        for (i, p) in info.parent_chain.iter().enumerate() {
            writeln!(o, "  parent {}:        {}", i + 1, console::escape_path(p))?;
        }
        for (k, v) in &info.ddb {
            writeln!(o, "  ddb.{} = {}", console::escape(k), console::escape(v))?;
        }
    }
    Ok(if failed { exit::ERROR } else { exit::OK })
}

/// The kebab-case name an enum has in the JSON output, for the human one too.
fn serde_name<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}
