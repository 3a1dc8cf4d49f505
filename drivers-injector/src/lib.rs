//! Moves a converted Linux or Windows guest from VMware's devices (PVSCSI, VMXNET3) to
//! virtio, and defines its KVM target.
//!
//! [`inject`] opens the converted QCOW2 disks (never the VMware source) in a libguestfs
//! appliance, inspects the guest ([`inspect::Inspection`]), refuses what it cannot
//! convert before changing anything, then makes the changes of [`linux`] (or of
//! [`windows`] for a Windows guest, with [`inject_with`]'s virtio-win source) and
//! returns a [`log::ConversionLog`]. [`agent`] is the first-boot validation agent
//! installed in the guest ([`install_agent_only`]: that agent alone, for a
//! baseline boot of the unconverted source). The KVM target (domain XML, QEMU argv) is the
//! `v2k-kvm-target` crate. docs/inject.md and docs/windows.md are the user guides.

mod agent;
mod agent_only;
mod appliance;
mod edit;
mod efi;
mod error;
mod inspect;
mod linux;
mod log;
mod netconf;
pub mod windows;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use v2k_inventory::model::{DiskLocation, Vm};

pub use agent_only::{install_agent_only, AgentOnly};
pub use error::{Error, ErrorKind, Result};
pub use log::{ConversionLog, Status};
pub use netconf::StaticIpv4;
pub use v2k_kvm_target::{Accel, DiskBus};

/// What to inject.
#[derive(Debug, Clone)]
pub struct InjectOptions {
    /// The VM model (MACs of the NICs, names for the log).
    pub vm: Vm,
    /// The converted QCOW2 disks, in the VM's disk order. Modified in place.
    pub disks: Vec<PathBuf>,
    pub bus: DiskBus,
    /// Leave the first-boot agent installed after it reported.
    pub keep_agent: bool,
    pub accel: Accel,
}

/// QCOW2 header bytes read to check a disk (fields up to `incompatible_features`).
const QCOW2_HEADER_LEN: usize = 80;
/// QCOW2 v3 incompatible feature bit 2: an external data file.
const QCOW2_INCOMPAT_DATA_FILE: u64 = 1 << 2;

/// Checks a disk is a standalone QCOW2 file and not one of the VM's source files;
/// `backing`, when given, is the one backing file name the disk may have (a live
/// import's overlay over v2k's own NBD export, [`inject_live`]).
pub(crate) fn check_disk(path: &Path, vm: &Vm, backing: Option<&str>) -> Result<()> {
    let bad = |message: String| Error::Disk {
        path: path.to_path_buf(),
        message,
    };
    let meta = std::fs::symlink_metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(bad("not a regular file".into()));
    }
    let canon = std::fs::canonicalize(path).map_err(|e| Error::io(path, e))?;
    for d in &vm.disks {
        let sources: Vec<&PathBuf> = match &d.location {
            DiskLocation::File { path, .. } => vec![path],
            DiskLocation::FileChunks { paths, .. } => paths.iter().collect(),
            DiskLocation::OvaMember { archive, .. } => vec![archive],
            _ => Vec::new(),
        };
        if sources
            .iter()
            .any(|s| std::fs::canonicalize(s).is_ok_and(|c| c == canon))
        {
            return Err(bad(format!(
                "this is the VMware source of disk {}: inject edits converted copies only",
                d.id
            )));
        }
    }
    let mut hdr = [0u8; QCOW2_HEADER_LEN];
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let n = f.read(&mut hdr).map_err(|e| Error::io(path, e))?;
    let be32 = |o: usize| u32::from_be_bytes(hdr[o..o + 4].try_into().expect("4 bytes"));
    let be64 = |o: usize| u64::from_be_bytes(hdr[o..o + 8].try_into().expect("8 bytes"));
    if n < 72 || &hdr[..4] != b"QFI\xfb" {
        return Err(bad(
            "not a QCOW2 image (convert it with `v2k convert` first)".into(),
        ));
    }
    if be64(8) != 0 {
        let named = backing.is_some_and(|want| {
            // The name is at offset 8's value, be32(16) bytes long (at most 1023).
            let (at, len) = (be64(8), be32(16) as usize);
            let mut name = vec![0u8; len.min(1023)];
            len == want.len()
                && std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(at)).is_ok()
                && std::io::Read::read_exact(&mut f, &mut name).is_ok()
                && name == want.as_bytes()
        });
        if !named {
            return Err(bad(
                "QCOW2 with a backing file: refused (it could name any host file)".into(),
            ));
        }
    }
    if be32(4) >= 3 && n >= QCOW2_HEADER_LEN && be64(72) & QCOW2_INCOMPAT_DATA_FILE != 0 {
        return Err(bad("QCOW2 with an external data file: refused".into()));
    }
    Ok(())
}

/// Converts the guest on `opts.disks` for KVM. `progress` receives one-line messages
/// for a human (stderr). Refusals happen before the first write. A Windows guest takes
/// its drivers from `$VIRTIO_WIN` ([`inject_with`] takes them from anywhere).
pub fn inject(opts: &InjectOptions, progress: &mut dyn FnMut(&str)) -> Result<ConversionLog> {
    inject_with(opts, &windows::Options::from_env(), progress).map(|i| i.log)
}

/// What [`inject_with`] did: the conversion log, and for a Windows guest the
/// Windows report (`windows.json`: inspection, drivers, every registry value set).
#[derive(Debug)]
pub struct Injected {
    pub log: ConversionLog,
    pub windows: Option<windows::Report>,
}

/// [`inject`] with explicit Windows settings (the `--virtio-win` source).
pub fn inject_with(
    opts: &InjectOptions,
    win: &windows::Options,
    progress: &mut dyn FnMut(&str),
) -> Result<Injected> {
    if opts.disks.is_empty() {
        return Err(Error::Input("no disk given".into()));
    }
    for d in &opts.disks {
        check_disk(d, &opts.vm, None)?;
    }
    inject_checked(opts, win, progress)
}

/// [`inject_with`] on a live import's overlays: disk `i` may have exactly the backing
/// file `backings[i]` (the `nbd+unix://` URI of v2k's own server, which the appliance
/// reads through) and no other.
pub fn inject_live(
    opts: &InjectOptions,
    win: &windows::Options,
    backings: &[String],
    progress: &mut dyn FnMut(&str),
) -> Result<Injected> {
    if opts.disks.is_empty() || backings.len() != opts.disks.len() {
        return Err(Error::Input(format!(
            "{} disk(s) and {} backing(s)",
            opts.disks.len(),
            backings.len()
        )));
    }
    for (d, b) in opts.disks.iter().zip(backings) {
        check_disk(d, &opts.vm, Some(b))?;
    }
    inject_checked(opts, win, progress)
}

/// The injection itself, on disks already checked.
fn inject_checked(
    opts: &InjectOptions,
    win: &windows::Options,
    progress: &mut dyn FnMut(&str),
) -> Result<Injected> {
    // Without drivers a Windows guest cannot be converted: say so before launching.
    if opts.vm.guest_os.family == v2k_inventory::model::OsFamily::Windows
        && win.virtio_win.is_none()
    {
        return Err(windows::no_source_error());
    }
    let started = Instant::now();
    progress(&format!(
        "launching the libguestfs appliance ({}) over {} disk(s)",
        opts.accel.as_str(),
        opts.disks.len()
    ));
    let mut timings = log::Timings::default();
    let mut lap = Instant::now();
    let mut split = move || {
        let s = lap.elapsed().as_secs_f64();
        lap = Instant::now();
        s
    };
    let app = appliance::Appliance::launch(&opts.disks, opts.accel, false)?;
    timings.launch = split();
    progress(&format!(
        "inspecting the guest (launch took {:.1} s)",
        timings.launch
    ));
    let macs: Vec<String> = opts
        .vm
        .nics
        .iter()
        .filter_map(|n| n.mac.clone())
        .filter(|m| edit::is_mac(m))
        .map(|m| m.to_lowercase())
        .collect();
    let scan = windows::inspect::scan(&app)?;
    if scan.windows.len() > 1 {
        let list: Vec<&str> = scan.windows.iter().map(|w| w.root.as_str()).collect();
        return Err(Error::Refused(format!(
            "{} Windows installations found ({}): multi-boot guests are not converted",
            list.len(),
            list.join(", ")
        )));
    }
    if let Some(loc) = scan.windows.first() {
        let nics: Vec<windows::NicRef> = opts
            .vm
            .nics
            .iter()
            .filter_map(|n| {
                let mac = n.mac.as_deref().filter(|m| edit::is_mac(m))?;
                Some(windows::NicRef {
                    index: n.index,
                    mac: mac.to_lowercase(),
                })
            })
            .collect();
        let out = windows::convert(&app, loc, &scan.bitlocker, opts.bus, &nics, win, progress)?;
        // Windows inspection and changes share one mount sequence: timed together.
        timings.changes = split();
        progress("syncing and closing the appliance");
        app.close()?;
        timings.close = split();
        let mut log = conversion_log(opts, out.inspection, out.changes, started, timings);
        log.unchanged = out.unchanged;
        log.warnings = out.warnings;
        // The Windows first-boot service has no keep option (it ignores --keep-agent).
        log.agent.keep = false;
        return Ok(Injected {
            log,
            windows: Some(out.report),
        });
    }
    let (root, mounts, rel) = match inspect::mount_root(&app) {
        // A BitLocker volume is unreadable: it may well hold the missing OS.
        Err(Error::Refused(m)) if !scan.bitlocker.is_empty() => {
            return Err(Error::Refused(format!(
                "{m}; BitLocker-encrypted volume(s) {} cannot be read offline: decrypt \
                 them on the source first",
                scan.bitlocker.join(", ")
            )))
        }
        other => other?,
    };
    let insp = inspect::inspect(&app, &root, mounts, &rel)?;
    timings.inspect = split();
    linux::check(&insp, opts.bus)?;
    let (pins, mut warnings) = linux::plan_pins(&macs, &insp.configured_nics);
    progress(&format!(
        "converting {} {}.{} ({} kernel(s), {:?})",
        insp.distro,
        insp.major_version,
        insp.minor_version,
        insp.kernels.len(),
        insp.initramfs_tool
    ));
    let by_id = v2k_kvm_target::by_id_renames(&opts.vm, opts.bus);
    let wwids = v2k_kvm_target::wwid_renames(&opts.vm, opts.bus);
    let plan = linux::Plan {
        bus: opts.bus,
        keep_agent: opts.keep_agent,
        pins: &pins,
        by_id: &by_id,
        wwids: &wwids,
    };
    let outcome = linux::apply(&app, &insp, &plan)?;
    timings.changes = split();
    progress(&format!(
        "syncing and closing the appliance (inspection {:.1} s, changes {:.1} s)",
        timings.inspect, timings.changes
    ));
    app.close()?;
    timings.close = split();
    warnings.extend(outcome.warnings);
    let mut log = conversion_log(opts, insp, outcome.changes, started, timings);
    log.unchanged = outcome.unchanged;
    log.warnings = warnings;
    log.nic_names = pins;
    Ok(Injected { log, windows: None })
}

/// The conversion log of a finished run, with the fields every guest OS shares; the
/// caller adds what its path found (unchanged steps, warnings, pinned NIC names).
fn conversion_log(
    opts: &InjectOptions,
    inspection: inspect::Inspection,
    changes: Vec<log::Change>,
    started: Instant,
    timings: log::Timings,
) -> ConversionLog {
    ConversionLog {
        schema_version: log::LOG_SCHEMA_VERSION,
        kind: "conversion-log".into(),
        tool: format!("v2k inject {}", env!("CARGO_PKG_VERSION")),
        vm: opts.vm.name.clone(),
        disks: opts.disks.iter().map(|d| d.display().to_string()).collect(),
        disk_bus: opts.bus.name().into(),
        accel: opts.accel.as_str().into(),
        status: if changes.is_empty() {
            Status::AlreadyConverted
        } else {
            Status::Converted
        },
        inspection,
        changes,
        unchanged: Vec::new(),
        warnings: Vec::new(),
        nic_names: Vec::new(),
        agent: log::AgentInfo {
            installed: true,
            keep: opts.keep_agent,
            line_prefix: agent::LINE_PREFIX.into(),
        },
        seconds: started.elapsed().as_secs_f64(),
        timings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A QCOW2 v3 header whose backing file name is `backing` (at offset 512).
    fn qcow2_with_backing(path: &Path, backing: &str) {
        let mut b = vec![0u8; 512];
        b[..4].copy_from_slice(b"QFI\xfb");
        b[4..8].copy_from_slice(&3u32.to_be_bytes());
        b[8..16].copy_from_slice(&512u64.to_be_bytes());
        b[16..20].copy_from_slice(&(backing.len() as u32).to_be_bytes());
        b[20..24].copy_from_slice(&16u32.to_be_bytes());
        b[100..104].copy_from_slice(&104u32.to_be_bytes());
        b.extend_from_slice(backing.as_bytes());
        std::fs::write(path, b).unwrap();
    }

    fn vm(dir: &Path) -> Vm {
        let vmx = dir.join("t.vmx");
        std::fs::write(
            &vmx,
            "config.version = \"8\"\nvirtualHW.version = \"14\"\ndisplayName = \"t\"\n\
             guestOS = \"debian10-64\"\nmemsize = \"512\"\nnumvcpus = \"1\"\n",
        )
        .unwrap();
        v2k_inventory::vmx::load(&vmx, &v2k_inventory::BuiltinProbe).unwrap()
    }

    /// A live import's overlay may name exactly the NBD export it was made over, and
    /// nothing else: not another export, not a host file, not when no backing is
    /// expected.
    #[test]
    fn an_overlay_is_accepted_only_over_the_named_export() {
        let d = tempfile::tempdir().unwrap();
        let vm = vm(d.path());
        let ov = d.path().join("disk0.qcow2");
        let export = "nbd+unix:///disk?socket=/run/v2k/live/disk0.sock";
        qcow2_with_backing(&ov, export);
        check_disk(&ov, &vm, Some(export)).unwrap();
        for (named, want) in [
            (export, None),
            (
                export,
                Some("nbd+unix:///disk?socket=/run/v2k/live/disk1.sock"),
            ),
            ("/etc/shadow", Some(export)),
            (
                "nbd+unix:///disk?socket=/run/v2k/live/disk0.sock2",
                Some(export),
            ),
            (
                "nbd+unix:///disk?socket=/run/v2k/live/disk0.soc",
                Some(export),
            ),
        ] {
            qcow2_with_backing(&ov, named);
            let e = check_disk(&ov, &vm, want).unwrap_err().to_string();
            assert!(
                e.contains("backing file: refused"),
                "{named} / {want:?}: {e}"
            );
        }
        // As many backings as disks, or nothing is done.
        let opts = InjectOptions {
            vm,
            disks: vec![ov.clone()],
            bus: DiskBus::VirtioBlk,
            keep_agent: false,
            accel: Accel::Tcg,
        };
        let e = inject_live(&opts, &windows::Options::default(), &[], &mut |_| {})
            .err()
            .expect("refused")
            .to_string();
        assert!(e.contains("1 disk(s) and 0 backing(s)"), "{e}");
    }
}
