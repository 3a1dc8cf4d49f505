//! The "before" of a local source (VMX, OVF, OVA), which has no performance history:
//! its disks booted in the source's own shape under QEMU (`--baseline-boot`, a plan's
//! `baseline-boot: true`; docs/evidence.md). The same first-boot agent the validation
//! boot runs then reports the same counters and the same fixed probe, on the source's
//! hardware, and they are written as a baseline file of the usual format (one sample
//! each), compared by [`crate::performance`] like a vSphere baseline.
//!
//! The source is never written: each disk gets a QCOW2 overlay in the work directory
//! whose backing file is the source disk (read-only, by QEMU's VMDK driver; an OVA's
//! member read in place at its offset), the agent alone is installed on the overlay
//! ([`v2k_drivers_injector::install_agent_only`]), and the overlays are deleted after
//! the boot. The machine is [`v2k_kvm_target::source_shape`]'s; networking is QEMU
//! user networking with `restrict=on`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use v2k_inventory::model::{DiskLocation, OsFamily, Vm};
use v2k_kvm_target::{source_shape, Accel};
use v2k_vsphere::perf::{Baseline, BaselineFile, BootBaseline, Stats, FILE_SCHEMA_VERSION};

/// A descriptor larger than this is not a text VMDK descriptor.
const MAX_DESCRIPTOR_BYTES: u64 = 64 << 10;

/// Why a baseline boot gave no baseline.
#[derive(Debug, thiserror::Error)]
pub enum BaselineBootError {
    /// The source cannot boot in its own shape here (said before anything is made).
    #[error("not booted in its source's shape: {0}")]
    Refused(String),
    #[error("making the overlay over {disk}: {why}")]
    Overlay { disk: String, why: String },
    #[error("installing the agent on the overlays")]
    Agent(#[source] v2k_drivers_injector::Error),
    #[error("booting the source's shape")]
    Boot(#[source] v2k_validator::Error),
    #[error("the source-shaped boot gave no figures: {0}")]
    NoFigures(String),
    #[error(transparent)]
    Write(#[from] v2k_outfile::Error),
}

/// How to boot.
#[derive(Debug, Clone, Copy)]
pub struct BootSettings {
    pub accel: Accel,
    /// Time allowed from power-on to the agent's report.
    pub boot_timeout: Duration,
}

impl BootSettings {
    /// `requested`, else KVM when it can really run guests here, else TCG: the
    /// validator's detection ([`v2k_kvm_target::accel::choose`]).
    pub fn detect(requested: Option<Accel>, boot_timeout: Duration) -> BootSettings {
        BootSettings {
            accel: v2k_kvm_target::accel::choose(requested).0,
            boot_timeout,
        }
    }
}

/// Why `vm` cannot have a baseline boot here, before anything is made: a Windows
/// guest (its agent comes with the driver conversion), hardware QEMU or this host's
/// firmware cannot give it ([`source_shape::plan`]), or disks QEMU cannot read in place.
pub fn refusal(vm: &Vm) -> Option<String> {
    check(vm).err()
}

fn check(vm: &Vm) -> Result<(source_shape::Shape, Vec<String>), String> {
    if vm.guest_os.family == OsFamily::Windows {
        return Err(
            "a Windows guest: its first-boot agent comes with the driver \
                    conversion, so only the migrated VM is measured"
                .into(),
        );
    }
    let shape = source_shape::plan(vm)?;
    let backings = vm
        .disks
        .iter()
        .map(backing)
        .collect::<Result<Vec<_>, _>>()?;
    Ok((shape, backings))
}

/// The overlay's backing file for a source disk: the VMDK itself, or a JSON
/// description of an OVA member read in place (QEMU's `raw` driver at the member's
/// offset under its `vmdk` driver).
fn backing(d: &v2k_inventory::model::Disk) -> Result<String, String> {
    let no = |why: &str| Err(format!("disk {}: {why}", d.id));
    if !d.parents.is_empty() {
        return no("a snapshot chain: consolidate the snapshots first");
    }
    match &d.location {
        DiskLocation::File {
            path,
            compression: None,
        } => {
            check_extents(path).map_err(|why| format!("disk {}: {why}", d.id))?;
            let p = std::fs::canonicalize(path)
                .map_err(|e| format!("disk {}: {}: {e}", d.id, path.display()))?;
            Ok(p.to_string_lossy().into_owned())
        }
        DiskLocation::OvaMember {
            archive,
            chunks,
            compression: None,
            ..
        } if chunks.len() == 1 => {
            let a = std::fs::canonicalize(archive)
                .map_err(|e| format!("disk {}: {}: {e}", d.id, archive.display()))?;
            let j = serde_json::json!({
                "driver": "vmdk",
                "file": {
                    "driver": "raw", "offset": chunks[0].offset, "size": chunks[0].size,
                    "file": {"driver": "file", "filename": a},
                }
            });
            Ok(format!("json:{j}"))
        }
        DiskLocation::File { .. }
        | DiskLocation::OvaMember { .. }
        | DiskLocation::FileChunks { .. } => {
            no("compressed or split into chunks: QEMU cannot read it in place")
        }
        _ => no("not a file v2k can read"),
    }
}

/// A text descriptor's extents must be plain files beside it: QEMU follows the names
/// it holds, and the source's metadata is not trusted to name any host file.
fn check_extents(path: &Path) -> Result<(), String> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{}: not a regular file", path.display()));
    }
    if meta.len() > MAX_DESCRIPTOR_BYTES {
        // A binary sparse VMDK: its descriptor is embedded and names no extent file.
        return Ok(());
    }
    let text = v2k_untrusted::file::read(path, MAX_DESCRIPTOR_BYTES, "a VMDK descriptor")
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&text);
    let dir = path.parent().unwrap_or(Path::new("."));
    for line in text.lines().map(str::trim) {
        let access = line.split_whitespace().next().unwrap_or("");
        if !matches!(access, "RW" | "RDONLY" | "NOACCESS") {
            continue;
        }
        let Some(name) = line.split('"').nth(1) else {
            continue;
        };
        let plain = !name.is_empty() && !name.contains('/') && name != "." && name != "..";
        let ok = plain && std::fs::symlink_metadata(dir.join(name)).is_ok_and(|m| m.is_file());
        if !ok {
            return Err(format!(
                "{}: extent {name:?} is not a regular file beside the descriptor",
                path.display()
            ));
        }
    }
    Ok(())
}

/// Boots `vm`'s source disks in their own shape with `work_dir` for the overlays and
/// the logs (made here; its parent must exist) and returns the baseline its agent's
/// figures make. `progress` gets one-line messages.
pub fn take(
    vm: &Vm,
    work_dir: &Path,
    s: &BootSettings,
    progress: &mut dyn FnMut(&str),
) -> Result<BaselineFile, BaselineBootError> {
    let (shape, backings) = check(vm).map_err(BaselineBootError::Refused)?;
    v2k_outfile::create_dir(work_dir)?;
    let started = now();
    let mut overlays = Vec::new();
    let result = boot(&shape, &backings, work_dir, s, progress, &mut overlays);
    for o in &overlays {
        let _ = std::fs::remove_file(o);
    }
    let (ev, uptime, perf) = result?;
    let figures = perf.figures(uptime);
    let rows: [(&str, &str, &str, Option<f64>); 8] = [
        (
            "cpu-ready-percent",
            "agent: /proc/stat steal",
            "% of CPU time",
            figures.cpu_ready_percent,
        ),
        (
            "disk-read-latency-ms",
            "agent: /proc/diskstats reads",
            "ms",
            figures.disk_read_latency_ms,
        ),
        (
            "disk-write-latency-ms",
            "agent: /proc/diskstats writes",
            "ms",
            figures.disk_write_latency_ms,
        ),
        (
            "net-dropped-rx",
            "agent: /sys/class/net rx_dropped",
            "packets per 5 minutes",
            figures.net_dropped_rx,
        ),
        (
            "net-dropped-tx",
            "agent: /sys/class/net tx_dropped",
            "packets per 5 minutes",
            figures.net_dropped_tx,
        ),
        (
            "probe-cpu-ms",
            "agent: probe CPU loop",
            "ms",
            figures.probe_cpu_ms,
        ),
        (
            "probe-read-p50-ms",
            "agent: probe 4 KiB O_DIRECT reads",
            "ms",
            figures.probe_read_p50_ms,
        ),
        (
            "probe-read-p95-ms",
            "agent: probe 4 KiB O_DIRECT reads",
            "ms",
            figures.probe_read_p95_ms,
        ),
    ];
    let mut metrics = std::collections::BTreeMap::new();
    let mut missing = Vec::new();
    for (name, counter, unit, v) in rows {
        match v {
            Some(v) => {
                metrics.insert(
                    name.to_string(),
                    Stats {
                        counter: counter.into(),
                        unit: unit.into(),
                        samples: 1,
                        min: v,
                        median: v,
                        p95: v,
                    },
                );
            }
            None => missing.push(counter.to_string()),
        }
    }
    missing.dedup();
    Ok(BaselineFile {
        schema_version: FILE_SCHEMA_VERSION,
        vm: vm.name.clone(),
        source: vm.source.path.display().to_string(),
        baseline: Baseline {
            moref: String::new(),
            interval_seconds: uptime.round().clamp(0.0, f64::from(u32::MAX)) as u32,
            from: started,
            to: now(),
            metrics,
            missing,
            boot: Some(BootBaseline {
                shape: shape.describe(),
                accel: s.accel.as_str().into(),
                boot_seconds: ev.boot_seconds,
                serial_log: ev.serial_log.clone(),
            }),
        },
    })
}

type Booted = (v2k_validator::Evidence, f64, v2k_validator::perf::AgentPerf);

/// Overlays, agent, boot; `overlays` gets each file made (the caller deletes them).
fn boot(
    shape: &source_shape::Shape,
    backings: &[String],
    work_dir: &Path,
    s: &BootSettings,
    progress: &mut dyn FnMut(&str),
    overlays: &mut Vec<PathBuf>,
) -> Result<Booted, BaselineBootError> {
    for (i, b) in backings.iter().enumerate() {
        let o = work_dir.join(format!("source-overlay-{i}.qcow2"));
        // A link planted in the run directory is removed, never written through.
        let _ = std::fs::remove_file(&o);
        let out = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "vmdk", "-b", b])
            .arg(&o)
            .output()
            .map_err(|e| BaselineBootError::Overlay {
                disk: b.clone(),
                why: format!("running qemu-img: {e}"),
            })?;
        overlays.push(o.clone());
        if !out.status.success() {
            return Err(BaselineBootError::Overlay {
                disk: b.clone(),
                why: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
    }
    let firmware = match shape.efi_firmware(work_dir.join("efi-vars.fd")) {
        Some(f) => {
            let (_, template) = f.images().expect("EFI has images");
            let bytes = std::fs::read(template).map_err(|e| BaselineBootError::Overlay {
                disk: template.into(),
                why: e.to_string(),
            })?;
            let vars = f.vars().expect("EFI has a store").to_path_buf();
            v2k_outfile::write_atomic(&vars, &bytes, true)?;
            overlays.push(vars);
            Some(f)
        }
        None => None,
    };
    v2k_drivers_injector::install_agent_only(overlays_only(overlays), s.accel, progress)
        .map_err(BaselineBootError::Agent)?;
    progress(&format!(
        "booting the source's shape ({}; {}) for the baseline",
        shape.describe(),
        s.accel.as_str()
    ));
    let opts = v2k_validator::Options {
        backend: v2k_validator::Backend::Qemu,
        boot_timeout: s.boot_timeout,
        keep_changes: true,
        work_dir: work_dir.to_path_buf(),
        features: Default::default(),
    };
    let disks = overlays_only(overlays).to_vec();
    let ev = v2k_validator::boot_qemu(&opts, |serial| {
        source_shape::argv(shape, &disks, s.accel, serial, firmware.as_ref())
    })
    .map_err(BaselineBootError::Boot)?;
    let Some(agent) = ev.agent.clone() else {
        let why = ev
            .ended_early
            .clone()
            .or(ev.diagnosis.clone())
            .unwrap_or_else(|| {
                if ev.timed_out {
                    format!("no agent report within {} s", s.boot_timeout.as_secs())
                } else {
                    "no agent report".into()
                }
            });
        return Err(BaselineBootError::NoFigures(format!(
            "{why} (console: {})",
            ev.serial_log.display()
        )));
    };
    let Some(perf) = agent.perf.clone() else {
        return Err(BaselineBootError::NoFigures(
            "the agent sent no performance counters".into(),
        ));
    };
    Ok((ev, agent.uptime, perf))
}

/// The disk overlays among the files made (the variable store comes after them).
fn overlays_only(files: &[PathBuf]) -> &[PathBuf] {
    let n = files
        .iter()
        .take_while(|f| f.extension().is_some_and(|e| e == "qcow2"))
        .count();
    &files[..n]
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(patch: impl FnOnce(&mut serde_json::Value)) -> Vm {
        let mut v = serde_json::json!({
            "schema-version": 1, "name": "web01",
            "source": {"kind": "ova", "path": "/vms/web01.ova"},
            "guest-os": {"family": "linux"}, "firmware": {"kind": "bios"},
            "cpu": {"count": 1, "cores-per-socket": 1}, "memory-mib": 512,
            "controllers": [{"bus": "scsi", "index": 0, "model": "pvscsi"}],
            "disks": [{"id": "vmdisk1", "slot": {"bus": "scsi", "controller": 0, "unit": 0},
                "location": {"kind": "ova-member", "archive": "/nonexistent/web01.ova",
                  "name": "disk1.vmdk", "chunks": [{"member": "disk1.vmdk", "offset": 7168, "size": 512}]},
                "mode": "persistent"}],
            "nics": []
        });
        patch(&mut v);
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn what_cannot_boot_in_place_is_refused_before_anything_is_made() {
        // An OVA member read in place is fine (here its archive is missing: said).
        let e = refusal(&vm(|_| {})).unwrap();
        assert!(e.contains("/nonexistent/web01.ova"), "{e}");
        let windows = refusal(&vm(|v| v["guest-os"]["family"] = "windows".into())).unwrap();
        assert!(windows.starts_with("a Windows guest"), "{windows}");
        let gz = refusal(&vm(|v| {
            v["disks"][0]["location"]["compression"] = "gzip".into();
        }))
        .unwrap();
        assert!(gz.contains("cannot read it in place"), "{gz}");
        let chain = refusal(&vm(|v| {
            v["disks"][0]["parents"] = serde_json::json!(["/vms/base.vmdk"])
        }))
        .unwrap();
        assert!(chain.contains("snapshot chain"), "{chain}");
        let efi = refusal(&vm(|v| v["firmware"]["kind"] = "efi".into())).unwrap();
        assert!(efi.contains("OVMF has no driver"), "{efi}");
    }

    #[test]
    fn extents_outside_the_descriptors_directory_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("a.vmdk");
        std::fs::write(t.path().join("a-flat.vmdk"), b"").unwrap();
        let desc = |extent: &str| {
            format!(
                "# Disk DescriptorFile\nversion=1\ncreateType=\"vmfs\"\nRW 8 VMFS \"{extent}\"\n"
            )
        };
        std::fs::write(&d, desc("a-flat.vmdk")).unwrap();
        assert_eq!(check_extents(&d), Ok(()));
        for bad in ["/etc/shadow", "../a-flat.vmdk", "missing-flat.vmdk"] {
            std::fs::write(&d, desc(bad)).unwrap();
            let e = check_extents(&d).unwrap_err();
            assert!(e.contains("not a regular file beside"), "{bad}: {e}");
        }
        std::os::unix::fs::symlink("/etc/passwd", t.path().join("l-flat.vmdk")).unwrap();
        std::fs::write(&d, desc("l-flat.vmdk")).unwrap();
        assert!(check_extents(&d).is_err());
    }
}
