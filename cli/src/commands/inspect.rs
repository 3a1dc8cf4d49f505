//! `v2k inspect PATH...`: VMX, OVF and OVA files (or directories searched for them)
//! read into the VM model, shown as a table per VM or as JSON Lines, with pre-flight
//! concerns. The reading and the concerns live in `v2k-inventory`; this file only
//! expands paths, runs the loads in parallel, prints and picks the exit code
//! (docs/inspect.md): 0 no critical concern, 1 a critical concern, 2 a file that could
//! not be read (the others are still reported).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Context;
use v2k_inventory::model::{DiskLocation, Severity, Vm};
use v2k_inventory::Options;

use crate::commands::convert::human;
use crate::{console, exit};

/// Show what VMware VMs are made of and what will not migrate cleanly
#[derive(clap::Args)]
#[command(
    long_about = "Show what VMware VMs are made of and what will not migrate cleanly.\n\n\
    Each PATH is a .vmx, .ovf or .ova file, or a directory searched (recursively, \
    without following symlinks) for them, or a vSphere address \
    vsphere://USER@HOST[:PORT]/DATACENTER/vm/[FOLDER/]NAME (NAME may hold * and ?; \
    the password comes from $V2K_VSPHERE_PASSWORD or --password-file, never the \
    command line; docs/vsphere.md). Exit status: 0 no critical concern, 1 at \
    least one critical concern, 2 a file could not be read or a usage error."
)]
pub struct Args {
    /// VMX, OVF or OVA files, directories to search, or vsphere:// addresses
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
    #[command(flatten)]
    vsphere: crate::commands::vsphere::SourceArgs,
    /// JSON Lines on stdout: one `"type":"vm"` object per VM, then a summary
    #[arg(long)]
    json: bool,
    /// Do not verify OVF/OVA manifests (.mf); a warning concern is added instead
    #[arg(long)]
    no_verify_manifest: bool,
}

pub fn exec(args: Args) -> anyhow::Result<i32> {
    let opts = Options {
        verify_manifest: !args.no_verify_manifest,
    };
    let mut failures = 0usize;
    let mut files = Vec::new();
    let mut remote = Vec::new();
    for p in &args.paths {
        if let Some(a) = p.to_str().filter(|s| v2k_vsphere::Address::is_vsphere(s)) {
            remote.push(a.to_string());
            continue;
        }
        match std::fs::metadata(p) {
            Ok(m) if m.is_dir() => match v2k_inventory::discover(p) {
                Ok(found) if found.is_empty() => {
                    console::say!(
                        "v2k: warning: {}: no .vmx, .ovf or .ova file found",
                        p.display()
                    );
                }
                Ok(found) => files.extend(found),
                Err(e) => {
                    failures += 1;
                    report(&anyhow::Error::from(e).context(format!("searching {}", p.display())));
                }
            },
            Ok(_) => files.push(p.clone()),
            Err(e) => {
                failures += 1;
                report(&anyhow::Error::from(e).context(format!("reading {}", p.display())));
            }
        }
    }

    let mut results: Vec<anyhow::Result<Vec<Vm>>> = load_all(&files, &opts)
        .into_iter()
        .map(|r| r.map_err(anyhow::Error::from))
        .collect();
    let mut labels: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
    for a in &remote {
        labels.push(a.clone());
        results.push(load_vsphere(a, &args.vsphere));
    }
    let mut all: Vec<Vm> = Vec::new();
    for (path, result) in labels.iter().zip(results) {
        match result {
            Ok(list) => all.extend(list),
            Err(e) => {
                failures += 1;
                report(&e.context(format!("inspecting {path}")));
            }
        }
    }
    // What only shows across them: two VMs with one domain name, one disk file.
    use v2k_inventory::preflight::Together;
    v2k_inventory::preflight::assess_together(&mut all, Together::All);
    let vms = all.len();
    let mut critical = 0usize;
    for vm in all {
        if vm.has_critical() {
            critical += 1;
        }
        if args.json {
            let body = serde_json::to_string(&vm).context("encoding the VM model")?;
            // The tag goes first (the model serialises as a non-empty object)
            // so a reader can dispatch on it before parsing the rest.
            emit_line(&format!("{{\"type\":\"vm\",{}", &body[1..]))?;
        } else {
            print_table(&vm)?;
        }
    }
    if args.json {
        emit_line(&format!(
            "{{\"type\":\"summary\",\"vms\":{vms},\"critical\":{critical},\"errors\":{failures}}}"
        ))?;
    }
    if failures > 0 {
        anyhow::bail!("{failures} path(s) could not be inspected (see above)");
    }
    if vms == 0 {
        anyhow::bail!("no VM found");
    }
    Ok(if critical > 0 {
        exit::FINDINGS
    } else {
        exit::OK
    })
}

/// The VMs a vsphere:// address names (one, or all matching a pattern).
fn load_vsphere(
    address: &str,
    a: &crate::commands::vsphere::SourceArgs,
) -> anyhow::Result<Vec<Vm>> {
    let addr = v2k_vsphere::Address::parse(address)?;
    let client = crate::commands::vsphere::connect(&addr, a)?;
    let vms = v2k_vsphere::inventory::vms_at(&client, &addr)?;
    if vms.is_empty() {
        anyhow::bail!("no VM matches");
    }
    Ok(vms)
}

/// One JSON Lines record, flushed at once like `console::emit_json`, but keeping the
/// field order of the schema (serde_json's `Value` would sort the keys).
fn emit_line(line: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(v2k_untrusted::term::json_safe(line).as_bytes())?;
    out.write_all(b"\n")?;
    out.flush()
}

fn report(err: &anyhow::Error) {
    console::say!("v2k: error: {err:#}");
}

/// Loads every file on a few threads; results come back in input order so output is
/// stable whatever the scheduling.
fn load_all(files: &[PathBuf], opts: &Options) -> Vec<v2k_inventory::Result<Vec<Vm>>> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(files.len().max(1));
    let next = AtomicUsize::new(0);
    let mut slots: Vec<Option<v2k_inventory::Result<Vec<Vm>>>> =
        (0..files.len()).map(|_| None).collect();
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(f) = files.get(i) else { break };
                        done.push((
                            i,
                            v2k_inventory::load(f, opts, &v2k_converters::probe::ConvertersProbe),
                        ));
                    }
                    done
                })
            })
            .collect();
        for w in workers {
            // A panicking worker is a bug; surface it rather than hide a VM.
            for (i, r) in w.join().expect("inspect worker panicked") {
                slots[i] = Some(r);
            }
        }
    });
    slots
        .into_iter()
        .map(|r| r.expect("every file loaded"))
        .collect()
}

/// Untrusted names (VM, disk, network) escaped for the terminal (`v2k_untrusted::term`).
fn clean(s: &str) -> String {
    console::escape(s).into_owned()
}

fn path_str(p: &Path) -> String {
    clean(&p.display().to_string())
}

fn location(l: &DiskLocation) -> String {
    match l {
        DiskLocation::File { path, compression } => {
            format!(
                "{}{}",
                path_str(path),
                if compression.is_some() { " (gzip)" } else { "" }
            )
        }
        DiskLocation::FileChunks { paths, compression } => format!(
            "{} + {} more chunk(s){}",
            paths.first().map(|p| path_str(p)).unwrap_or_default(),
            paths.len().saturating_sub(1),
            if compression.is_some() { " (gzip)" } else { "" }
        ),
        DiskLocation::OvaMember {
            name,
            chunks,
            compression,
            ..
        } => format!(
            "ova:{} @{}{}{}",
            clean(name),
            chunks.first().map_or(0, |c| c.offset),
            if chunks.len() > 1 {
                format!(" ({} chunks)", chunks.len())
            } else {
                String::new()
            },
            if compression.is_some() { " (gzip)" } else { "" }
        ),
        DiskLocation::Datastore {
            datastore,
            path,
            thin,
            ..
        } => format!(
            "[{}] {}{}",
            clean(datastore),
            clean(path),
            if *thin { " (thin)" } else { "" }
        ),
        DiskLocation::HostDevice { path } => format!("host device {}", clean(path)),
        DiskLocation::Missing { reference } => format!("MISSING {}", clean(reference)),
        DiskLocation::Refused { reference, .. } => format!("REFUSED {}", clean(reference)),
    }
}

fn lower<T: std::fmt::Debug>(v: T) -> String {
    format!("{v:?}").to_ascii_lowercase()
}

fn print_table(vm: &Vm) -> std::io::Result<()> {
    let mut o = console::human_stdout();
    writeln!(
        o,
        "{}  ({} {})",
        clean(&vm.name),
        lower(vm.source.kind),
        path_str(&vm.source.path)
    )?;
    writeln!(
        o,
        "  guest      {} ({})",
        clean(
            vm.guest_os
                .id
                .as_deref()
                .or(vm.guest_os.description.as_deref())
                .unwrap_or("unknown")
        ),
        lower(vm.guest_os.family)
    )?;
    writeln!(
        o,
        "  firmware   {}{}",
        lower(vm.firmware.kind),
        if vm.firmware.secure_boot {
            ", secure boot"
        } else {
            ""
        }
    )?;
    writeln!(
        o,
        "  cpu        {} vCPU ({} per socket)   memory {} MiB{}",
        vm.cpu.count,
        vm.cpu.cores_per_socket,
        vm.memory_mib,
        vm.hardware_version
            .map(|v| format!("   hardware vmx-{v}"))
            .unwrap_or_default()
    )?;
    if let Some(u) = &vm.bios_uuid {
        writeln!(o, "  bios uuid  {u}")?;
    }
    if let Some(m) = vm.source.manifest {
        writeln!(o, "  manifest   {}", lower(m))?;
    }
    if !vm.controllers.is_empty() {
        let list: Vec<String> = vm
            .controllers
            .iter()
            .map(|c| {
                format!(
                    "{}{} {}",
                    lower(c.bus),
                    c.index,
                    c.raw_model.as_deref().map_or_else(|| lower(c.model), clean)
                )
            })
            .collect();
        writeln!(o, "  controllers {}", list.join(", "))?;
    }
    if !vm.disks.is_empty() {
        writeln!(o, "  disks")?;
        for d in &vm.disks {
            writeln!(
                o,
                "    {:<9} {:>10}  {:<22} {:<26} {}",
                clean(&d.id),
                d.capacity.map_or_else(|| "?".into(), human),
                d.mode.as_str(),
                d.format
                    .as_deref()
                    .map(|f| clean(f.rsplit('#').next().unwrap_or(f)))
                    .unwrap_or_default(),
                location(&d.location)
            )?;
        }
    }
    for r in &vm.removable {
        writeln!(
            o,
            "  {:<10} {} {}",
            lower(r.kind),
            r.slot.map(|s| s.to_string()).unwrap_or_default(),
            r.file
                .as_deref()
                .map(clean)
                .unwrap_or_else(|| lower(r.backing))
        )?;
    }
    if !vm.nics.is_empty() {
        writeln!(o, "  nics")?;
        for n in &vm.nics {
            writeln!(
                o,
                "    ethernet{:<2} {:<8} {:<17} {:<9} {}",
                n.index,
                n.raw_model.as_deref().map_or_else(|| lower(n.model), clean),
                n.mac.as_deref().unwrap_or("-"),
                lower(n.address_type),
                clean(
                    n.network
                        .as_deref()
                        .or(n.connection_type.as_deref())
                        .unwrap_or("-")
                )
            )?;
        }
    }
    if vm.concerns.is_empty() {
        writeln!(o, "  concerns   none")?;
    } else {
        writeln!(o, "  concerns")?;
        for c in &vm.concerns {
            let sev = match c.severity {
                Severity::Critical => "CRITICAL",
                Severity::Warning => "warning ",
                Severity::Info => "info    ",
            };
            let subject = c
                .subject
                .as_deref()
                .map(|s| format!(" [{}]", clean(s)))
                .unwrap_or_default();
            writeln!(o, "    {sev} {}{subject}: {}", c.id, clean(&c.message))?;
        }
    }
    writeln!(o)?;
    Ok(())
}
