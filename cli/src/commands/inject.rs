//! `v2k inject --vm VM DISK.qcow2...`: makes converted disks boot on KVM (virtio
//! drivers, device names, NIC names pinned to MACs, VMware Tools removed, first-boot
//! agent) and writes the KVM target, through the same stage functions as `v2k migrate`
//! (`v2k_migrate::stages`); this file reads the VM model, picks the accelerator and
//! chooses the exit code (docs/inject.md): 0 converted or already converted, 2 refused
//! or failed.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde_json::json;
use v2k_drivers_injector::ErrorKind;
use v2k_inventory::Vm;
use v2k_kvm_target::{accel, Accel, DiskBus, NetworkMap};
use v2k_migrate::{stages, RealBoot, RunDir};

use crate::{console, exit};

/// Make converted disks boot on KVM and write the KVM machine definition
#[derive(clap::Args)]
#[command(
    long_about = "Make converted disks boot on KVM and write the KVM machine definition.\n\n\
    Edits the converted QCOW2 disks in place inside a libguestfs appliance (never the VMware \
    source): virtio drivers in every initramfs, sdX→vdX device names, each NIC's VMware-era \
    name pinned to its MAC, VMware Tools removed, a first-boot agent that reports on the \
    serial port; for Windows guests, the virtio drivers from --virtio-win (docs/windows.md). \
    Writes conversion-log.json, conversion-log.txt, domain.xml, qemu-cmdline.json and \
    run-qemu.sh (and windows.json for a Windows guest, NAME_VARS.fd for an EFI guest) into --out. Exit status: 0 \
    converted (or already converted), 2 refused, failed, or a usage error."
)]
pub struct Args {
    /// The VM: a VM model JSON (`v2k inspect --json` line), or a .vmx/.ovf/.ova
    #[arg(long, value_name = "VM")]
    vm: PathBuf,
    /// Converted QCOW2 disks, in the VM's disk order
    #[arg(required = true, value_name = "DISK")]
    disks: Vec<PathBuf>,
    /// Output directory (default: the first disk's directory)
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Target disk bus
    #[arg(long, value_enum, default_value_t = BusArg::Virtio)]
    disk_bus: BusArg,
    /// VMware network NAME to TARGET: network:LIBVIRT_NET, bridge:BRIDGE or user
    /// (isolated QEMU user networking, the default for unmapped networks)
    #[arg(long = "network-map", value_name = "NAME=TARGET")]
    network_map: Vec<String>,
    /// Keep the first-boot agent installed after it reported
    #[arg(long)]
    keep_agent: bool,
    /// virtio-win driver directory for Windows guests (default: $VIRTIO_WIN)
    #[arg(long, value_name = "PATH")]
    virtio_win: Option<PathBuf>,
    /// Accelerator for the appliance and the target (default: KVM when usable)
    #[arg(long, value_enum)]
    accel: Option<AccelArg>,
    /// The destination's topology (a `virsh capabilities` file, or a libvirt URI)
    /// that VMware's CPU/NUMA affinity and hugepage reservation are mapped onto
    /// (default: this host)
    #[arg(long, value_name = "FILE|URI")]
    host_topology: Option<String>,
    /// JSON Lines on stdout instead of the readable summary
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum BusArg {
    Virtio,
    Scsi,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum AccelArg {
    Kvm,
    Tcg,
}

/// A VM model is a few KiB (a VM with hundreds of disks and NICs stays far below);
/// a larger "model" is not one, and is refused before it fills memory.
const MAX_MODEL_BYTES: u64 = 16 << 20;

/// Reads the VM model from JSON or through the inventory reader.
fn load_vm(path: &Path) -> anyhow::Result<Vm> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    if ext == "json" || ext == "jsonl" {
        let text = v2k_untrusted::file::read_to_string(path, MAX_MODEL_BYTES, "VM model")
            .with_context(|| format!("reading {}", path.display()))?;
        // One VM: a plain model, or the first "vm" line of `v2k inspect --json`.
        let mut vms = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let v: serde_json::Value = match serde_json::from_str(line) {
                Ok(v) => v,
                Err(_) => {
                    vms.clear();
                    break;
                }
            };
            if v.get("type").is_none_or(|t| t == "vm") {
                vms.push(v);
            }
        }
        let value = if vms.is_empty() {
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
        } else if vms.len() == 1 {
            vms.remove(0)
        } else {
            bail!(
                "{}: {} VMs in the file; give one",
                path.display(),
                vms.len()
            );
        };
        return serde_json::from_value(value)
            .with_context(|| format!("{}: not a VM model", path.display()));
    }
    let mut vms = stages::load(path, true)?;
    match vms.len() {
        1 => Ok(vms.remove(0)),
        n => bail!("{}: describes {n} VMs; inject takes one", path.display()),
    }
}

pub fn exec(args: Args) -> anyhow::Result<i32> {
    let vm = load_vm(&args.vm)?;
    let mut map = NetworkMap::default();
    for e in &args.network_map {
        map.0.push(NetworkMap::parse_entry(e)?);
    }
    let (accel, warning) = accel::choose(args.accel.map(|a| match a {
        AccelArg::Kvm => Accel::Kvm,
        AccelArg::Tcg => Accel::Tcg,
    }));
    if let Some(w) = warning {
        console::say!("v2k: warning: {w}");
    }
    let bus = match args.disk_bus {
        BusArg::Virtio => DiskBus::VirtioBlk,
        BusArg::Scsi => DiskBus::VirtioScsi,
    };
    let disks: Vec<PathBuf> = args
        .disks
        .iter()
        .map(|d| std::path::absolute(d).with_context(|| format!("resolving {}", d.display())))
        .collect::<anyhow::Result<_>>()?;
    // More disks than virtio-blk takes go on virtio-scsi (injector and target alike).
    let bus = bus.fitting(disks.len());
    if !vm.disks.is_empty() && vm.disks.len() != disks.len() {
        console::say!(
            "v2k: warning: the VM has {} disk(s) and {} were given",
            vm.disks.len(),
            disks.len()
        );
    }
    let out = match &args.out {
        Some(o) => o.clone(),
        None => disks[0].parent().map(Path::to_path_buf).unwrap_or_default(),
    };
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    // The same stages as `v2k migrate`: the target is made first, so a VM it cannot
    // keep (a NIC without a MAC) is refused before the guest is touched.
    let mut target = stages::target(&vm, &disks, bus, &map, accel, &out)?;
    // VMware's tuning mapped onto the destination, as `v2k migrate` does; what the
    // host cannot take is said, not fatal (docs/migrate.md, "Tuning").
    let host = match &args.host_topology {
        Some(h) => v2k_migrate::HostSource::parse(h)?,
        None => v2k_migrate::HostSource::Local,
    };
    for c in stages::tune(&mut target, &vm, &host)? {
        console::say!("v2k: {:?}: {}: {}", c.severity, c.id, c.message);
    }
    let settings = stages::InjectSettings {
        bus,
        keep_agent: args.keep_agent,
        accel,
        virtio_win: args.virtio_win.clone(),
    };
    let quiet = args.json;
    let result = stages::inject_guest(&RealBoot, &vm, &disks, &settings, &mut |msg| {
        if !quiet || console::stderr_is_terminal() {
            console::say!("v2k: {msg}");
        }
    });
    let injected = match result {
        Ok(i) => i,
        Err(e) => {
            let kind = match e.kind() {
                ErrorKind::Refused => "refused",
                ErrorKind::Input => "input",
                ErrorKind::Guest => "guest",
                _ => "io",
            };
            if args.json {
                console::emit_json(
                    &json!({"type": "error", "kind": kind, "message": e.to_string()}),
                )?;
            }
            console::say!("v2k: error: {e}");
            return Ok(exit::ERROR);
        }
    };
    let dir = RunDir::at(&out);
    dir.save_windows(injected.windows.as_ref())?;
    dir.save_log(&injected.log)?;
    let log = &injected.log;
    v2k_outfile::write_atomic(
        &out.join("conversion-log.txt"),
        log.summary().as_bytes(),
        true,
    )?;
    stages::write_target(&out, &target, &stages::features(Some(&injected)))?;
    if args.json {
        let mut v = serde_json::to_value(log)?;
        v["type"] = json!("conversion-log");
        console::emit_json(&v)?;
        console::emit_json(&json!({
            "type": "target",
            "domain-xml": out.join("domain.xml"),
            "qemu-cmdline-json": out.join("qemu-cmdline.json"),
            "run-qemu-sh": out.join("run-qemu.sh"),
            "efi-vars": target.firmware.vars(),
            "conversion-log": out.join("conversion-log.json"),
        }))?;
    } else {
        let mut stdout = console::human_stdout();
        stdout.write_all(log.summary().as_bytes())?;
        writeln!(stdout, "wrote {}", out.display())?;
    }
    Ok(exit::OK)
}
