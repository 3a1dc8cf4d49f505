//! `v2k inject --vm VM DISK.qcow2...`: makes converted disks boot on KVM (virtio
//! drivers, device names, NIC names pinned to MACs, VMware Tools removed, first-boot
//! agent) and writes the KVM target. The work is in `v2k-drivers-injector`; this file
//! reads the VM model, picks the accelerator, writes the output files and chooses the
//! exit code (docs/inject.md): 0 converted or already converted, 2 refused or failed.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde_json::json;
use v2k_drivers_injector::{
    accel, target, Accel, ConversionLog, DiskBus, ErrorKind, InjectOptions, NetworkMap,
    QemuOptions, Target,
};
use v2k_inventory::Vm;

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
    qemu-cmdline.sh (and windows.json for a Windows guest) into --out. Exit status: 0 \
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

/// Reads the VM model from JSON or through the inventory reader.
fn load_vm(path: &Path) -> anyhow::Result<Vm> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    if ext == "json" || ext == "jsonl" {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
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
    let mut vms = v2k_inventory::load(path, &v2k_inventory::Options::default())
        .with_context(|| format!("reading {}", path.display()))?;
    match vms.len() {
        1 => Ok(vms.remove(0)),
        n => bail!("{}: describes {n} VMs; inject takes one", path.display()),
    }
}

/// Writes a file under a temporary name, then renames it: never half a file.
fn write_atomic(path: &Path, content: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension()
            .map(|e| e.to_string_lossy())
            .unwrap_or_default()
    ));
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(content)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
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
        eprintln!("v2k: warning: {w}");
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
    if !vm.disks.is_empty() && vm.disks.len() != disks.len() {
        eprintln!(
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
    // The target is checked before the guest is touched: a VM without MACs fails here.
    let target = Target::from_vm(&vm, &disks, bus, &map, accel)?;

    let opts = InjectOptions {
        vm,
        disks,
        bus,
        keep_agent: args.keep_agent,
        accel,
    };
    let mut win = v2k_drivers_injector::windows::Options::from_env();
    if args.virtio_win.is_some() {
        win.virtio_win = args.virtio_win.clone();
    }
    let quiet = args.json;
    let result = v2k_drivers_injector::inject_with(&opts, &win, &mut |msg| {
        if !quiet || console::stderr_is_terminal() {
            eprintln!("v2k: {msg}");
        }
    });
    let (log, windows) = match result {
        Ok(i) => (i.log, i.windows),
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
            eprintln!("v2k: error: {e}");
            return Ok(exit::ERROR);
        }
    };
    // A Windows guest's own clock setting decides the RTC; Hyper-V enlightenments too.
    let features = match &windows {
        Some(w) => target::GuestFeatures::windows(w.inspection.rtc_utc),
        None => target::GuestFeatures::default(),
    };
    if let Some(w) = &windows {
        let text = serde_json::to_string_pretty(w)? + "\n";
        write_atomic(&out.join("windows.json"), text.as_bytes(), 0o644)?;
    }
    write_outputs(&out, &log, &target, &features)?;
    if args.json {
        let mut v = serde_json::to_value(&log)?;
        v["type"] = json!("conversion-log");
        console::emit_json(&v)?;
        console::emit_json(&json!({
            "type": "target",
            "domain-xml": out.join("domain.xml"),
            "qemu-cmdline-json": out.join("qemu-cmdline.json"),
            "qemu-cmdline-sh": out.join("qemu-cmdline.sh"),
            "conversion-log": out.join("conversion-log.json"),
        }))?;
    } else {
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(log.summary().as_bytes())?;
        writeln!(stdout, "wrote {}", out.display())?;
    }
    Ok(exit::OK)
}

fn write_outputs(
    out: &Path,
    log: &ConversionLog,
    target: &Target,
    features: &target::GuestFeatures,
) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(log)? + "\n";
    write_atomic(&out.join("conversion-log.json"), text.as_bytes(), 0o644)?;
    write_atomic(
        &out.join("conversion-log.txt"),
        log.summary().as_bytes(),
        0o644,
    )?;
    write_atomic(
        &out.join("domain.xml"),
        target::domain_xml_with(target, features).as_bytes(),
        0o644,
    )?;
    let mut q = QemuOptions::default();
    if target.efi {
        q.efi_vars = Some(out.join(format!("{}_VARS.fd", target.safe_name())));
    }
    let argv = target::qemu_argv_with(target, &q, features);
    write_atomic(
        &out.join("qemu-cmdline.json"),
        (serde_json::to_string_pretty(&argv)? + "\n").as_bytes(),
        0o644,
    )?;
    let mut script = target::qemu_script(&argv);
    if let Some(vars) = &q.efi_vars {
        // The variable store is per VM: copied from the template on first run.
        let tmpl = if target.secure_boot {
            target::OVMF_VARS_SECBOOT
        } else {
            target::OVMF_VARS
        };
        let vars = target::sh_quote(&vars.to_string_lossy());
        script = script.replacen(
            "exec",
            &format!("[ -e {vars} ] || cp {tmpl} {vars}\nexec"),
            1,
        );
    }
    write_atomic(&out.join("qemu-cmdline.sh"), script.as_bytes(), 0o755)?;
    Ok(())
}
