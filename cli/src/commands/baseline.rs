//! `v2k baseline SOURCE...`: each vSphere VM's performance before migration (the last
//! day of CPU ready, virtual-disk latency and NIC drops from vCenter's
//! PerformanceManager, as min / median / p95) written as `DIR/NAME.baseline.json` and
//! shown as a table. The reading is `v2k_vsphere::perf`; a local source, which has no
//! history, is measured with `--baseline-boot` by booting it in its own shape
//! (`v2k_migrate::baseline_boot`). This file connects, writes through `v2k-outfile`
//! and prints (docs/evidence.md).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use v2k_vsphere::perf;

use crate::{console, exit};

/// Record vSphere VMs' performance before migration
#[derive(clap::Args)]
#[command(
    long_about = "Record vSphere VMs' performance before migration (docs/evidence.md).\n\n\
    Each SOURCE is a vSphere address vsphere://USER@HOST[:PORT]/DATACENTER/vm/[FOLDER/]NAME \
    (NAME may hold * and ?). For each VM, the last day of 5-minute samples of CPU ready, \
    virtual-disk read/write latency and NIC drops is read from the PerformanceManager and \
    written as DIR/NAME.baseline.json. With --baseline-boot a local VMX, OVF or OVA is \
    measured instead by booting its disks in the source's own shape under QEMU (a \
    throw-away overlay with only the first-boot agent added). Exit status: 0 every VM read, 1 some source or VM \
    could not be read (the others are written), 2 usage error or the directory cannot \
    be made."
)]
pub struct Args {
    /// vsphere:// addresses
    #[arg(required = true, value_name = "SOURCE")]
    sources: Vec<String>,
    /// Directory for the NAME.baseline.json files (created if missing)
    #[arg(long, value_name = "DIR")]
    out_dir: PathBuf,
    #[command(flatten)]
    vsphere: crate::commands::vsphere::SourceArgs,
    /// One JSON object per VM on stdout (the file's content)
    #[arg(long)]
    json: bool,
    /// Local sources (VMX, OVF, OVA): boot each VM's disks in its own shape under
    /// QEMU (on a throw-away overlay, with only the first-boot agent added) and write
    /// the agent's figures as its baseline; the boot's logs go to DIR/NAME.baseline-boot/
    #[arg(long)]
    baseline_boot: bool,
    /// Seconds a baseline boot may take from power-on to the agent's report
    #[arg(
        long,
        value_name = "S",
        default_value_t = 300,
        requires = "baseline_boot"
    )]
    boot_timeout: u64,
}

pub fn exec(args: Args) -> anyhow::Result<i32> {
    v2k_outfile::create_dir(&args.out_dir)
        .with_context(|| format!("creating {}", args.out_dir.display()))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut worst = exit::OK;
    let mut o = console::human_stdout();
    for source in &args.sources {
        if let Err(e) = one_source(source, &args, now, &mut o) {
            console::say!("v2k: error: {}: {e:#}", console::escape(source));
            worst = exit::FINDINGS;
        }
    }
    Ok(worst)
}

fn one_source(source: &str, args: &Args, now: u64, o: &mut impl Write) -> anyhow::Result<()> {
    if !v2k_vsphere::Address::is_vsphere(source) {
        if args.baseline_boot {
            return boot_source(source, args, o);
        }
        anyhow::bail!(
            "not a vsphere:// address (a local VM has no performance history: \
             --baseline-boot measures it by booting it; docs/evidence.md)"
        );
    }
    let addr = v2k_vsphere::Address::parse(source)?;
    let client = crate::commands::vsphere::connect(&addr, &args.vsphere)?;
    let vms = v2k_vsphere::inventory::vms_at(&client, &addr)?;
    if vms.is_empty() {
        anyhow::bail!("no VM matches");
    }
    for vm in vms {
        let doc = perf::BaselineFile::take(&client, &vm, now)
            .with_context(|| format!("reading the performance of {}", vm.name))?;
        show(&doc, &file_for(&args.out_dir, &vm.name), args.json, o)?;
    }
    Ok(())
}

/// Writes `doc` to `path` and shows it (a table, or the file's content with --json).
fn show(
    doc: &perf::BaselineFile,
    path: &Path,
    json: bool,
    o: &mut impl Write,
) -> anyhow::Result<()> {
    let text = serde_json::to_vec_pretty(doc)?;
    v2k_outfile::write_atomic(path, &text, true)
        .with_context(|| format!("writing {}", path.display()))?;
    if json {
        console::emit_json(&serde_json::to_value(doc)?)?;
        return Ok(());
    }
    writeln!(o, "{} ({})", doc.vm, path.display())?;
    if let Some(b) = &doc.baseline.boot {
        writeln!(
            o,
            "  measured by booting the source: {} ({})",
            b.shape, b.accel
        )?;
    }
    for (name, s) in &doc.baseline.metrics {
        writeln!(
            o,
            "  {name:24} min {:>9.2}  median {:>9.2}  p95 {:>9.2}  {} ({} samples)",
            s.min, s.median, s.p95, s.unit, s.samples
        )?;
    }
    for m in &doc.baseline.missing {
        let why = if doc.baseline.boot.is_some() {
            "no figure from the guest"
        } else {
            "not offered by the server (no sample)"
        };
        writeln!(o, "  {m} {why}")?;
    }
    Ok(())
}

/// `--baseline-boot`: each VM of a local source booted in its own shape
/// (`v2k_migrate::baseline_boot`); a refusal (an EFI guest on PVSCSI, a Windows
/// guest, hardware QEMU lacks) is this source's error, said before anything boots.
fn boot_source(source: &str, args: &Args, o: &mut impl Write) -> anyhow::Result<()> {
    let vms = v2k_migrate::stages::load(Path::new(source), true)?;
    let s = v2k_migrate::baseline_boot::BootSettings::detect(
        None,
        std::time::Duration::from_secs(args.boot_timeout),
    );
    if s.accel == v2k_kvm_target::Accel::Tcg {
        console::say!(
            "v2k: warning: KVM not usable here: booting under TCG (slow; not production timings)"
        );
    }
    for vm in vms {
        if let Some(why) = v2k_migrate::baseline_boot::refusal(&vm) {
            anyhow::bail!("{}: not booted in its source's shape: {why}", vm.name);
        }
        let plain = v2k_waves::expand::plain_name(&vm.name);
        let work = args.out_dir.join(format!("{plain}.baseline-boot"));
        let mut say = |m: &str| console::say!("v2k:   {m}");
        let doc = v2k_migrate::baseline_boot::take(&vm, &work, &s, &mut say)
            .with_context(|| format!("measuring {} by booting it", vm.name))?;
        show(&doc, &file_for(&args.out_dir, &vm.name), args.json, o)?;
    }
    Ok(())
}

/// `DIR/NAME.baseline.json`, the VM's name made a plain file name (a vSphere name may
/// hold `/` or anything else).
fn file_for(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!(
        "{}.baseline.json",
        v2k_waves::expand::plain_name(name)
    ))
}
