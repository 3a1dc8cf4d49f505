//! `v2k migrate SOURCE --out DIR`: one VM from VMware to a validated KVM VM, with a
//! report. The pipeline itself lives in the `v2k-migrate` library (shared with the
//! wave runner); this file only maps arguments and prints.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use serde_json::json;
use v2k_migrate::{migrate_from, Accel, Backend, DiskBus, Event, HostSource, NetworkMap, Options};

use super::inject::{AccelArg, BusArg};
use crate::{console, exit};

/// Migrate one VM (VMX, OVF or OVA): inspect, convert, inject, validate, report
#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("cut").args(["cutover", "live"]).multiple(true)))]
#[command(
    long_about = "Migrate one VM (VMX, OVF or OVA): inspect, convert, inject, validate, report.\n\n\
    Writes into --out: vm.json, disks/*.qcow2 (+ manifests), conversion-log.json, domain.xml, \
    qemu-cmdline.json, run-qemu.sh, validation/ (serial log, screenshot), report.json and \
    report.html. A rerun skips stages whose outputs still verify by content hash. \
    With --to URI --pool NAME the validated VM is delivered: its disks uploaded into the \
    storage pool through libvirt's volume upload stream (qemu+ssh:// works; a rerun uploads \
    only what is missing or differs) and the domain defined there, not started; a domain or \
    volume of that name the run directory did not create is refused before any upload. \
    With --start the domain is started paused, its console watched over the libvirt \
    connection and its first boot judged there (checks after cutover: the validation's, \
    the services the source enabled, the default gateway, the resolvers), unless \
    --no-check-after-cutover. \
    With --cutover a running vSphere source is shut down through VMware Tools first (waited \
    for up to --shutdown-timeout; powered off only with --force-power-off). \
    With --live (a vSphere source; implies --cutover) the VM starts in --connect's libvirt \
    on overlays in --out/live over v2k's own NBD server right after the source is off, its \
    first boot judged while its disks stream in (--live-bandwidth MIB), then every served \
    cluster it did not write is checked; the report gives the downtime. \
    SOURCE may be a vSphere address, vsphere://USER@HOST[:PORT]/DATACENTER/vm/[FOLDER/]NAME: \
    the VM is read from the server and its disks streamed from the datastore into QCOW2 \
    (password from $V2K_VSPHERE_PASSWORD or --password-file; docs/vsphere.md). \
    With --baseline FILE the validation's performance is compared with a baseline from \
    `v2k baseline`; with --baseline-boot (local sources) with a boot of the source's disks \
    in its own shape before the conversion (docs/evidence.md). \
    Exit status: 0 migrated and validated (or migrated, with --no-validate), 1 migrated but \
    validation failed, with --start the checks after cutover failed, or with \
    --fail-on-regression performance regressed, 2 error (an unreadable --baseline or a bad \
    --threshold included)."
)]
pub struct Args {
    /// The VM: a .vmx, .ovf or .ova, or a vsphere:// address
    source: PathBuf,
    #[command(flatten)]
    vsphere: crate::commands::vsphere::SourceArgs,
    /// Run directory for every output and the report
    #[arg(long)]
    out: PathBuf,
    /// Which VM of a multi-VM OVF
    #[arg(long)]
    vm_name: Option<String>,
    /// Compress the QCOW2 disks
    #[arg(long)]
    compress: bool,
    /// Target disk bus
    #[arg(long, value_enum, default_value_t = BusArg::Virtio)]
    disk_bus: BusArg,
    /// VMware network NAME to TARGET: network:LIBVIRT_NET, bridge:BRIDGE or user
    #[arg(long = "network-map", value_name = "NAME=TARGET")]
    network_map: Vec<String>,
    /// Accelerator (default: KVM when usable, else TCG with a warning)
    #[arg(long, value_enum)]
    accel: Option<AccelArg>,
    /// Keep the first-boot agent in the guest after it reported
    #[arg(long)]
    keep_agent: bool,
    /// virtio-win driver directory for Windows guests (default: $VIRTIO_WIN)
    #[arg(long, value_name = "PATH")]
    virtio_win: Option<PathBuf>,
    /// Do not boot the result
    #[arg(long)]
    no_validate: bool,
    /// Copy and verify the disks without converting the guest (data disks, appliances
    /// v2k cannot convert); the report carries a `guest-not-converted` concern
    #[arg(long)]
    no_inject: bool,
    /// Validation backend: libvirt (by --connect URI) or qemu (direct)
    #[arg(long, value_enum, default_value_t = BackendArg::Libvirt)]
    backend: BackendArg,
    /// libvirt URI for validation and --define
    #[arg(long, default_value = "qemu:///system")]
    connect: String,
    /// Seconds allowed from power-on to the agent's report
    #[arg(long, default_value_t = 300)]
    boot_timeout: u64,
    /// Keep what the validation boot wrote to the disks (default: an overlay, thrown away)
    #[arg(long)]
    keep_changes: bool,
    /// Define the domain in libvirt (not started)
    #[arg(long, conflicts_with = "to")]
    define: bool,
    /// Deliver to this libvirt after validation: upload the disks into --pool and
    /// define the domain there (qemu:///system, qemu+ssh://root@host/system)
    #[arg(long, value_name = "URI", requires = "pool")]
    to: Option<String>,
    /// Storage pool on --to that receives the disks (and an EFI guest's variable store)
    #[arg(long, value_name = "NAME", requires = "to")]
    pool: Option<String>,
    /// Start the delivered domain on --to
    #[arg(long, requires = "to")]
    start: bool,
    /// Mark the delivered domain to start with the destination's libvirt
    #[arg(long, requires = "to")]
    autostart: bool,
    /// With --start: start the domain without watching its first boot (no checks
    /// after cutover)
    #[arg(long, requires = "start")]
    no_check_after_cutover: bool,
    /// vSphere source: shut the running VM down through VMware Tools before the copy
    #[arg(long)]
    cutover: bool,
    /// Seconds the guest may take to shut down (--cutover, --live)
    #[arg(long, value_name = "S", default_value_t = 300, requires = "cut")]
    shutdown_timeout: u64,
    /// Power the source off when it did not shut down in time (--cutover, --live)
    #[arg(long, requires = "cut")]
    force_power_off: bool,
    /// vSphere source: import live. After the cutover (implied) the VM starts in
    /// --connect's libvirt on local overlays over v2k's NBD server, and its disks
    /// stream in behind it (docs/live-import.md)
    #[arg(long, conflicts_with_all = ["to", "define", "baseline_boot", "keep_changes"])]
    live: bool,
    /// With --live: pull each disk at most this many MiB/s
    #[arg(long, value_name = "MIB", requires = "live", value_parser = clap::value_parser!(u64).range(1..))]
    live_bandwidth: Option<u64>,
    /// With --live: seconds v2k's server holds a read while the datastore is away
    /// before QEMU's request fails (the guest then pauses, the pull stops)
    #[arg(long, value_name = "S", default_value_t = 600, requires = "live", value_parser = clap::value_parser!(u64).range(1..))]
    live_hold: u64,
    /// With --live: seconds the stream waits for a datastore that went away before it
    /// gives up and stops the domain (docs/live-import.md)
    #[arg(long, value_name = "S", default_value_t = v2k_migrate::live::DEFAULT_OUTAGE_LIMIT.as_secs(), requires = "live", value_parser = clap::value_parser!(u64).range(1..))]
    live_outage_limit: u64,
    /// The destination's topology (a `virsh capabilities` file, or a libvirt URI)
    /// that VMware's CPU/NUMA affinity and hugepage reservation are mapped onto
    /// (default: --to's host, else this one)
    #[arg(long, value_name = "FILE|URI")]
    host_topology: Option<String>,
    /// Compare the validation's figures with this baseline (a NAME.baseline.json from
    /// `v2k baseline`): report.json gets a `performance` section (docs/evidence.md)
    #[arg(long, value_name = "FILE", conflicts_with = "baseline_boot")]
    baseline: Option<PathBuf>,
    /// A local source (VMX, OVF, OVA): before converting it, boot its disks in the
    /// source's own shape (its controllers, NIC models and firmware, on a throw-away
    /// overlay with only the agent added) and take that boot's figures as the
    /// baseline, kept as baseline.json in --out (docs/evidence.md)
    #[arg(long)]
    baseline_boot: bool,
    /// How much worse a metric may get before it is a regression (--baseline or
    /// --baseline-boot); the metric names of docs/evidence.md, e.g.
    /// cpu-ready-percent=3; repeatable
    #[arg(long, value_name = "METRIC=VALUE")]
    threshold: Vec<String>,
    /// A performance regression beyond the thresholds fails the VM (exit 1, not
    /// delivered) instead of being a warning (--baseline or --baseline-boot)
    #[arg(long)]
    fail_on_regression: bool,
    /// Accept an OVA whose manifest is missing or does not list every file
    #[arg(long)]
    no_verify_manifest: bool,
    /// JSON Lines on stdout: stage events and the final report summary
    #[arg(long)]
    json: bool,
}

/// The baseline read and the thresholds parsed, before anything is written: a bad
/// file or threshold is an error (exit 2), not a report without a comparison.
fn performance(
    file: &std::path::Path,
    thresholds: &[String],
    fail_on_regression: bool,
) -> anyhow::Result<v2k_migrate::performance::Settings> {
    let baseline = v2k_vsphere::perf::BaselineFile::read(file)?;
    Ok(v2k_migrate::performance::Settings {
        fail_on_regression,
        thresholds: parse_thresholds(thresholds)?,
        ..v2k_migrate::performance::Settings::with(file.to_path_buf(), baseline)
    })
}

/// `--threshold METRIC=VALUE` values, checked.
fn parse_thresholds(thresholds: &[String]) -> anyhow::Result<v2k_migrate::performance::Thresholds> {
    let mut given = serde_json::Map::new();
    for t in thresholds {
        let (k, v) = t
            .split_once('=')
            .with_context(|| format!("--threshold {t}: not METRIC=VALUE"))?;
        let n: f64 = v
            .trim()
            .parse()
            .ok()
            .filter(|n: &f64| n.is_finite())
            .with_context(|| format!("--threshold {t}: {v} is not a number"))?;
        given.insert(k.trim().to_string(), json!(n));
    }
    let thresholds: v2k_migrate::performance::Thresholds =
        serde_json::from_value(serde_json::Value::Object(given)).context("--threshold")?;
    thresholds
        .check()
        .map_err(|e| anyhow::anyhow!("--threshold: {e}"))?;
    Ok(thresholds)
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum BackendArg {
    Libvirt,
    Qemu,
}

pub fn exec(args: Args) -> anyhow::Result<i32> {
    let virtio_win = match &args.virtio_win {
        Some(vw) => {
            Some(std::path::absolute(vw).with_context(|| format!("resolving {}", vw.display()))?)
        }
        None => None,
    };
    let performance = match &args.baseline {
        Some(file) => Some(performance(file, &args.threshold, args.fail_on_regression)?),
        // The baseline is the boot's, made by the run (baseline.json in --out).
        None if args.baseline_boot => Some(v2k_migrate::performance::Settings {
            file: args.out.join(v2k_migrate::BASELINE_FILE),
            baseline: None,
            missing: None,
            thresholds: parse_thresholds(&args.threshold)?,
            fail_on_regression: args.fail_on_regression,
        }),
        None if !args.threshold.is_empty() || args.fail_on_regression => anyhow::bail!(
            "--threshold and --fail-on-regression need --baseline FILE or --baseline-boot"
        ),
        None => None,
    };
    if args.live
        && !args
            .source
            .to_str()
            .is_some_and(v2k_vsphere::Address::is_vsphere)
    {
        anyhow::bail!("--live is for vSphere sources (vsphere://…): docs/live-import.md");
    }
    if args.baseline_boot
        && args
            .source
            .to_str()
            .is_some_and(v2k_vsphere::Address::is_vsphere)
    {
        anyhow::bail!(
            "--baseline-boot is for local sources (VMX, OVF, OVA): a vSphere VM's baseline \
             comes from vCenter (`v2k baseline`, docs/evidence.md)"
        );
    }
    let mut map = NetworkMap::default();
    for m in &args.network_map {
        map.0.push(NetworkMap::parse_entry(m)?);
    }
    let opts = Options {
        source: args.source.clone(),
        out: args.out.clone(),
        vm_name: args.vm_name.clone(),
        compress: args.compress,
        disk_bus: match args.disk_bus {
            BusArg::Virtio => DiskBus::VirtioBlk,
            BusArg::Scsi => DiskBus::VirtioScsi,
        },
        network_map: map,
        accel: args.accel.map(|a| match a {
            AccelArg::Kvm => Accel::Kvm,
            AccelArg::Tcg => Accel::Tcg,
        }),
        keep_agent: args.keep_agent,
        inject: !args.no_inject,
        validate: !args.no_validate,
        backend: match args.backend {
            BackendArg::Libvirt => Backend::Libvirt {
                uri: args.connect.clone(),
            },
            BackendArg::Qemu => Backend::Qemu,
        },
        boot_timeout: Duration::from_secs(args.boot_timeout),
        keep_changes: args.keep_changes,
        define: args.define.then(|| args.connect.clone()),
        deliver: args.to.clone().zip(args.pool.clone()).map(|(uri, pool)| {
            v2k_migrate::Destination {
                uri,
                pool,
                start: args.start,
                autostart: args.autostart,
            }
        }),
        check_after_cutover: !args.no_check_after_cutover,
        cutover: (args.cutover || args.live).then_some(v2k_migrate::cutover::Cutover {
            timeout: Duration::from_secs(args.shutdown_timeout),
            force_power_off: args.force_power_off,
        }),
        verify_manifest: !args.no_verify_manifest,
        virtio_win,
        host_topology: match (&args.host_topology, &args.to) {
            (Some(h), _) => HostSource::parse(h)?,
            (None, Some(to)) => HostSource::Uri(to.clone()),
            (None, None) => HostSource::Local,
        },
        performance,
        baseline_boot: args.baseline_boot,
        live: args.live.then(|| v2k_migrate::live::LiveOptions {
            uri: args.connect.clone(),
            bandwidth_mib: args.live_bandwidth,
            hold: Duration::from_secs(args.live_hold),
            outage_limit: Duration::from_secs(args.live_outage_limit),
        }),
    };
    let json_mode = args.json;
    let progress = move |e: Event| match e {
        Event::Stage { name, status } => {
            if json_mode {
                let _ =
                    console::emit_json(&json!({"type": "stage", "stage": name, "status": status}));
            } else {
                console::say!("v2k: {name}: {status}");
            }
        }
        Event::Message(m) => {
            if json_mode {
                let _ = console::emit_json(&json!({"type": "message", "message": m}));
            } else {
                console::say!("v2k:   {m}");
            }
        }
        // Copy progress: JSON Lines only (the converter reports every 16 MiB); on a
        // terminal the stage lines say enough for one VM. Uploads to the destination
        // (every 10 %, docs/migrate.md) are told on stderr either way: over a slow
        // link they are the long part.
        Event::Disk {
            disk,
            phase,
            done,
            total,
        } => {
            if !json_mode && (phase == "upload" || phase == "stream") {
                console::say!(
                    "v2k:   {phase} {}: {}%",
                    disk,
                    done.saturating_mul(100) / total.max(1)
                );
            }
            if json_mode {
                let _ = console::emit_json(&json!({
                    "type": "disk-progress", "disk": disk, "phase": phase,
                    "done": done, "total": total
                }));
            }
        }
    };
    // A vSphere source is connected first: a wrong password or certificate fails
    // before anything is written.
    let remote = match args
        .source
        .to_str()
        .filter(|s| v2k_vsphere::Address::is_vsphere(s))
    {
        Some(a) => Some(crate::commands::vsphere::remote(
            v2k_vsphere::Address::parse(a)?,
            &args.vsphere,
        )?),
        None => None,
    };
    let outcome = match migrate_from(
        &opts,
        remote.as_ref().map(|r| r as &dyn v2k_migrate::RemoteSource),
        &progress,
    ) {
        Ok(o) => o,
        Err(e) => {
            // The last line of a --json run always says how it ended.
            if json_mode {
                console::emit_json(&json!({
                    "type": "failed", "source": args.source,
                    "refused": e.is_refusal(), "error": v2k_inventory::one_line(&e),
                }))?;
            }
            return Err(e.into());
        }
    };
    let r = &outcome.report;
    let html = outcome.report_dir.join("report.html");
    if json_mode {
        console::emit_json(&json!({
            "type": "migrated", "vm": r.vm, "result": r.result,
            "report": outcome.report_dir.join("report.json"), "report-html": html,
            "checks": r.validation.as_ref().map(|v| &v.checks),
            "after-cutover": r.after_cutover.as_ref().map(|v| json!({"passed": v.passed, "checks": v.checks})),
            "performance": r.performance.as_ref().map(|p| json!({
                "verdict": p.verdict, "regressions": p.regressions,
            })),
            "downtime": r.downtime,
            "live": r.live.as_ref().map(|l| json!({
                "verdict": l.verdict, "downtime-seconds": l.downtime_seconds,
                "stream-seconds": l.stream_seconds, "outages": l.outages,
            })),
        }))?;
    } else {
        use std::io::Write;
        let mut o = console::human_stdout();
        writeln!(o, "{}: {}", r.vm, r.result)?;
        let mut boots = Vec::new();
        boots.extend(r.validation.iter().map(|v| (None, v)));
        boots.extend(r.after_cutover.iter().map(|v| (Some("after cutover"), v)));
        for (title, v) in boots {
            if let Some(t) = title {
                let verdict = if v.passed { "passed" } else { "FAILED" };
                writeln!(o, "{t}: {verdict}")?;
            }
            for c in &v.checks {
                writeln!(
                    o,
                    "  {:6} {:16} {}",
                    if c.passed { "pass" } else { "FAIL" },
                    c.id,
                    c.reason
                )?;
            }
        }
        if let Some(p) = &r.performance {
            writeln!(o, "performance: {}", p.verdict)?;
        }
        if let (Some(d), None) = (&r.downtime, &r.live) {
            let seconds = d
                .seconds
                .map(|s| format!("{s:.1} s"))
                .unwrap_or_else(|| "not measured (no agent report on the target)".into());
            writeln!(o, "downtime (cold): {seconds}")?;
        }
        if let Some(l) = &r.live {
            let downtime = l
                .downtime_seconds
                .map(|d| format!("{d:.1} s"))
                .unwrap_or_else(|| "not measured (no agent report)".into());
            writeln!(
                o,
                "live: {:?}; streamed in {:.1} s; downtime {downtime}",
                l.verdict, l.stream_seconds
            )?;
            if l.outages > 0 || l.pull_restarts > 0 {
                writeln!(
                    o,
                    "  outages: {} ({:.0} s waited), pulls restarted: {}, resumes: {}",
                    l.outages, l.outage_seconds, l.pull_restarts, l.resumes
                )?;
            }
        }
        writeln!(o, "report: {}", html.display())?;
    }
    Ok(match outcome.exit_code() {
        0 => exit::OK,
        _ => exit::FINDINGS,
    })
}
