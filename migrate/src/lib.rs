//! The one-VM pipeline that `v2k migrate` and the wave runner share:
//!
//! ```text
//!  inspect ─▶ convert (all disks in parallel) ─▶ inject ─▶ target ─▶ validate ─▶ report
//!  vm.json     disks/<id>.qcow2 + manifests     conversion-log.json   validation/  report.{json,html}
//!                                               domain.xml, qemu-cmdline.json, run-qemu.sh
//! ```
//!
//! Every stage writes its outputs into the run directory, and `state.json` records,
//! after each finished stage, the content hash of every disk at that point. A rerun
//! skips a stage only when its record exists *and* the disks hash to what it
//! recorded — not because a file merely exists — so a run killed in the middle of
//! the injector (which edits the disks in place) converts again rather than trusting
//! half-edited disks.

pub mod staging;
pub mod vsphere;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use v2k_converters::convert::{self as conv, Format, Job};
use v2k_converters::vmdk::{ByteRange, Source};
use v2k_drivers_injector::{self as injector, Accel, DiskBus, InjectOptions, NetworkMap, Target};
use v2k_inventory::model::{DiskLocation, Severity, Vm};
use v2k_validator::report::{self, Hardware, Report, Stage};
use v2k_validator::{Backend, Expectations};

/// How to migrate one VM.
#[derive(Debug, Clone)]
pub struct Options {
    pub source: PathBuf,
    pub out: PathBuf,
    /// Which VM of a multi-VM OVF (by name); required when there are several.
    pub vm_name: Option<String>,
    pub compress: bool,
    pub disk_bus: DiskBus,
    pub network_map: NetworkMap,
    pub accel: Option<Accel>,
    pub keep_agent: bool,
    pub validate: bool,
    pub backend: Backend,
    pub boot_timeout: Duration,
    pub keep_changes: bool,
    /// Define the domain in libvirt (not started) after the target is written.
    pub define: Option<String>,
    pub verify_manifest: bool,
    /// virtio-win drivers for a Windows guest (a directory); `None` reads `$VIRTIO_WIN`.
    pub virtio_win: Option<PathBuf>,
}

/// What `migrate` reports as it goes.
#[derive(Debug, Clone)]
pub enum Event {
    Stage {
        name: &'static str,
        status: &'static str,
    },
    Message(String),
    /// Copy or read-back progress of one disk (`disk` in VM order): `phase` is `copy`,
    /// `verify` or `done`; `done` and `total` are virtual bytes.
    Disk {
        disk: usize,
        phase: &'static str,
        done: u64,
        total: u64,
    },
}

/// Carries the converter's progress (reported from its worker threads) to the thread
/// that runs `migrate`, whose callback need not be `Sync`.
struct ChannelProgress {
    tx: std::sync::Mutex<std::sync::mpsc::Sender<Event>>,
    totals: std::sync::Mutex<Vec<u64>>,
}

impl conv::Progress for ChannelProgress {
    fn event(&self, e: conv::Event) {
        let total_of = |disk: usize| {
            self.totals
                .lock()
                .map(|t| t.get(disk).copied().unwrap_or(0))
                .unwrap_or(0)
        };
        let ev = match e {
            conv::Event::Started {
                disk, virtual_size, ..
            } => {
                if let Ok(mut t) = self.totals.lock() {
                    if t.len() <= disk {
                        t.resize(disk + 1, 0);
                    }
                    t[disk] = virtual_size;
                }
                Event::Disk {
                    disk,
                    phase: "copy",
                    done: 0,
                    total: virtual_size,
                }
            }
            conv::Event::Copied { disk, done } => Event::Disk {
                disk,
                phase: "copy",
                done,
                total: total_of(disk),
            },
            conv::Event::Verifying { disk } => Event::Disk {
                disk,
                phase: "verify",
                done: 0,
                total: total_of(disk),
            },
            conv::Event::Verified { disk, done } => Event::Disk {
                disk,
                phase: "verify",
                done,
                total: total_of(disk),
            },
            conv::Event::Finished { disk } => {
                let total = total_of(disk);
                Event::Disk {
                    disk,
                    phase: "done",
                    done: total,
                    total,
                }
            }
        };
        if let Ok(tx) = self.tx.lock() {
            let _ = tx.send(ev);
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Input(String),
    #[error("inventory: {0}")]
    Inventory(#[from] v2k_inventory::Error),
    #[error("convert: {0}")]
    Convert(#[from] v2k_converters::Error),
    #[error("inject: {0}")]
    Inject(#[from] injector::Error),
    #[error("validate: {0}")]
    Validate(#[from] v2k_validator::Error),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// The end of a migration.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub report: Report,
    pub report_dir: PathBuf,
}

impl Outcome {
    /// 0 migrated (and validated, when asked), 1 migrated but validation failed.
    pub fn exit_code(&self) -> i32 {
        if self.report.result == "validation-failed" {
            1
        } else {
            0
        }
    }
}

/// Per-stage record of the disks' content hashes (`state.json`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct State {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    converted: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    injected: Option<Vec<String>>,
}

fn load_state(p: &Path) -> State {
    std::fs::read(p)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn save_state(p: &Path, s: &State) -> Result<()> {
    let b = serde_json::to_vec_pretty(s).map_err(|e| Error::Input(e.to_string()))?;
    v2k_converters::output::write_atomic(p, &b)?;
    Ok(())
}

fn disk_hashes(disks: &[PathBuf], sizes: &[u64]) -> Option<Vec<String>> {
    disks
        .iter()
        .zip(sizes)
        .map(|(d, &s)| v2k_converters::verify::hash_output(d, Format::Qcow2, s, &|_| {}).ok())
        .collect()
}

/// Where a disk's bytes are, for the converter.
fn disk_source(loc: &DiskLocation, id: &str) -> Result<Source> {
    match loc {
        DiskLocation::File {
            path,
            compression: None,
        } => Ok(Source::file(path)),
        DiskLocation::OvaMember {
            archive,
            chunks,
            compression: None,
            ..
        } if chunks.len() == 1 => Ok(Source {
            path: archive.clone(),
            range: Some(ByteRange {
                offset: chunks[0].offset,
                len: chunks[0].size,
            }),
        }),
        other => Err(Error::Input(format!(
            "disk {id}: its bytes cannot be read ({other:?})"
        ))),
    }
}

fn hardware_source(vm: &Vm) -> Hardware {
    Hardware {
        firmware: format!("{:?}", vm.firmware.kind).to_lowercase(),
        cpus: vm.cpu.count,
        memory_mib: vm.memory_mib,
        disks: vm
            .disks
            .iter()
            .map(|d| {
                let slot = d
                    .slot
                    .as_ref()
                    .map(|s| serde_json::to_string(s).unwrap_or_default())
                    .unwrap_or_default();
                format!(
                    "{} {} {}",
                    d.id,
                    d.capacity.map(|c| format!("{c} B")).unwrap_or_default(),
                    slot
                )
            })
            .collect(),
        nics: vm
            .nics
            .iter()
            .map(|n| serde_json::to_string(n).unwrap_or_default())
            .collect(),
    }
}

fn hardware_target(t: &Target) -> Hardware {
    Hardware {
        firmware: if t.efi {
            "efi (OVMF)".into()
        } else {
            "bios".into()
        },
        cpus: t.vcpus,
        memory_mib: t.memory_mib,
        disks: t
            .disks
            .iter()
            .map(|d| format!("{} {}", t.disk_bus, d.display()))
            .collect(),
        nics: t
            .nics
            .iter()
            .map(|n| format!("virtio-net {} → {:?}", n.mac, n.target))
            .collect(),
    }
}

/// A source whose VM and disks do not come from local files: a vCenter or ESXi
/// ([`vsphere::VsphereSource`]). A trait, so that the pipeline's remote path can be
/// driven by any source (and by tests) without a server.
pub trait RemoteSource: Sync {
    /// What the source is called in messages (`vsphere://host:443/DC0/vm/web01`).
    fn describe(&self) -> String;
    /// The VM, with its pre-flight concerns.
    fn load(&self) -> std::result::Result<Vm, String>;
    /// Fetches and converts every disk of `vm` into `outputs` (QCOW2, verified, a
    /// manifest beside each), reporting converter progress; results in disk order.
    fn convert(
        &self,
        vm: &Vm,
        outputs: &[PathBuf],
        progress: &dyn conv::Progress,
    ) -> Vec<std::result::Result<v2k_converters::manifest::Manifest, String>>;
}

/// Migrates one VM; see the module documentation for the stages.
pub fn migrate(opts: &Options, progress: &dyn Fn(Event)) -> Result<Outcome> {
    migrate_from(opts, None, progress)
}

/// As [`migrate`], reading the VM and its disks from `remote` when given (then
/// `opts.source` only names it).
pub fn migrate_from(
    opts: &Options,
    remote: Option<&dyn RemoteSource>,
    progress: &dyn Fn(Event),
) -> Result<Outcome> {
    let out = &opts.out;
    std::fs::create_dir_all(out.join("disks"))
        .map_err(io(format!("creating {}", out.display())))?;
    let mut stages: Vec<Stage> = Vec::new();
    let stage_start = |name: &'static str| {
        progress(Event::Stage {
            name,
            status: "started",
        });
        Instant::now()
    };
    let mut finish =
        |name: &'static str, status: &'static str, t: Instant, detail: Option<String>| {
            progress(Event::Stage { name, status });
            stages.push(Stage {
                name: name.into(),
                status: status.into(),
                seconds: t.elapsed().as_secs_f64(),
                detail,
            });
        };

    // 1. inspect
    let t = stage_start("inspect");
    let inv = v2k_inventory::Options {
        verify_manifest: opts.verify_manifest,
    };
    let mut vms = match remote {
        Some(r) => vec![r
            .load()
            .map_err(|e| Error::Input(format!("{}: {e}", r.describe())))?],
        None => v2k_inventory::load(&opts.source, &inv)?,
    };
    let vm = match (&opts.vm_name, vms.len()) {
        (_, 0) => {
            return Err(Error::Input(format!(
                "{}: no VM described",
                opts.source.display()
            )))
        }
        (None, 1) => vms.remove(0),
        (None, _) => {
            return Err(Error::Input(format!(
                "{}: describes {} VMs ({}); choose one with --vm-name",
                opts.source.display(),
                vms.len(),
                vms.iter()
                    .map(|v| v.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )))
        }
        (Some(n), _) => vms
            .into_iter()
            .find(|v| &v.name == n)
            .ok_or_else(|| Error::Input(format!("{}: no VM named {n:?}", opts.source.display())))?,
    };
    let critical: Vec<String> = vm
        .concerns
        .iter()
        .filter(|c| c.severity == Severity::Critical)
        .map(|c| format!("{} ({})", c.id, c.message))
        .collect();
    if !critical.is_empty() {
        return Err(Error::Input(format!(
            "{}: critical pre-flight concerns, not migrated: {}",
            vm.name,
            critical.join("; ")
        )));
    }
    let vm_json = serde_json::to_vec_pretty(&vm).map_err(|e| Error::Input(e.to_string()))?;
    v2k_converters::output::write_atomic(&out.join("vm.json"), &vm_json)?;
    finish(
        "inspect",
        "done",
        t,
        Some(format!(
            "{} disk(s), {} NIC(s)",
            vm.disks.len(),
            vm.nics.len()
        )),
    );

    // 2. convert (skipped when the recorded hashes still match)
    let state_path = out.join("state.json");
    let mut state = load_state(&state_path);
    let disks: Vec<PathBuf> = vm
        .disks
        .iter()
        .map(|d| {
            out.join("disks")
                .join(format!("{}.qcow2", safe_file_name(&d.id)))
        })
        .collect();
    let t = stage_start("convert");
    let mut manifests = Vec::new();
    let current = disk_hashes(
        &disks,
        &vm.disks
            .iter()
            .map(|d| d.capacity.unwrap_or(0))
            .collect::<Vec<_>>(),
    );
    let reuse_injected = state.injected.is_some() && state.injected == current;
    let reuse_converted =
        reuse_injected || (state.converted.is_some() && state.converted == current);
    if reuse_converted {
        for d in &disks {
            manifests.push(
                serde_json::to_value(v2k_converters::manifest::Manifest::load(
                    &v2k_converters::manifest::manifest_path(d),
                )?)
                .unwrap_or_default(),
            );
        }
        finish(
            "convert",
            "reused",
            t,
            Some("outputs re-verified by content hash".into()),
        );
    } else {
        state = State::default();
        save_state(&state_path, &state)?;
        // Chunked and gzip-compressed disks are assembled first (staging.rs).
        let mut staged = Vec::new();
        let mut jobs = Vec::new();
        // A remote source streams its disks itself (no local file to read).
        for (d, o) in vm.disks.iter().zip(&disks).filter(|_| remote.is_none()) {
            let source = if staging::needs_staging(&d.location) {
                let dest = staging::staged_path(out, &safe_file_name(&d.id));
                progress(Event::Message(format!(
                    "disk {}: assembling its chunked or compressed file into {}",
                    d.id,
                    dest.display()
                )));
                staging::stage(&d.location, d.capacity, &dest, &d.id)?;
                staged.push(dest.clone());
                Source::file(dest)
            } else {
                disk_source(&d.location, &d.id)?
            };
            jobs.push(Job {
                source,
                output: o.clone(),
            });
        }
        let copts = conv::Options {
            format: Format::Qcow2,
            compress: opts.compress,
            overwrite: true,
            ..conv::Options::default()
        };
        // The conversion runs on its own thread; its progress comes back here.
        let (tx, rx) = std::sync::mpsc::channel::<Event>();
        let sink = ChannelProgress {
            tx: std::sync::Mutex::new(tx),
            totals: std::sync::Mutex::new(Vec::new()),
        };
        let jobs_ref = &jobs;
        let copts_ref = &copts;
        let (vm_ref, disks_ref) = (&vm, &disks);
        let results: Vec<Result<v2k_converters::manifest::Manifest>> = std::thread::scope(|s| {
            let worker = s.spawn(move || match remote {
                Some(r) => r
                    .convert(vm_ref, disks_ref, &sink)
                    .into_iter()
                    .map(|x| x.map_err(Error::Input))
                    .collect(),
                None => conv::convert_all(jobs_ref, copts_ref, jobs_ref.len().min(4), &sink)
                    .into_iter()
                    .map(|x| x.map_err(Error::from))
                    .collect(),
            });
            // Ends when the worker drops the sink (its sender) on return.
            for e in rx {
                progress(e);
            }
            worker.join()
        })
        .map_err(|_| Error::Input("internal: the conversion thread panicked".into()))?;
        for r in results {
            manifests.push(serde_json::to_value(r?).unwrap_or_default());
        }
        // Converted and verified: the assembled copies are no longer needed.
        for p in &staged {
            std::fs::remove_file(p).map_err(io(format!("removing {}", p.display())))?;
        }
        if !staged.is_empty() {
            let _ = std::fs::remove_dir(out.join("staging"));
        }
        state.converted = Some(
            manifests
                .iter()
                .map(|m| m["hash"]["source"].as_str().unwrap_or_default().to_owned())
                .collect(),
        );
        save_state(&state_path, &state)?;
        finish(
            "convert",
            "done",
            t,
            Some(format!("{} disk(s)", disks.len())),
        );
    }

    // 3. inject
    let t = stage_start("inject");
    let log_path = out.join("conversion-log.json");
    let (accel, warning) = injector::accel::choose(opts.accel);
    if let Some(w) = warning {
        progress(Event::Message(w));
    }
    let windows_path = out.join("windows.json");
    // A Windows guest's target follows its own clock setting and gets Hyper-V
    // enlightenments; the injector's Windows report says which (kept for reruns).
    let mut features = injector::target::GuestFeatures::default();
    let mut windows_guest = false;
    let log: serde_json::Value = if reuse_injected {
        let b = std::fs::read(&log_path).map_err(io("reading conversion-log.json"))?;
        let v = serde_json::from_slice(&b)
            .map_err(|e| Error::Input(format!("conversion-log.json: {e}")))?;
        if let Ok(b) = std::fs::read(&windows_path) {
            let w: injector::windows::Report = serde_json::from_slice(&b)
                .map_err(|e| Error::Input(format!("windows.json: {e}")))?;
            features = injector::target::GuestFeatures::windows(w.inspection.rtc_utc);
            windows_guest = true;
        }
        finish(
            "inject",
            "reused",
            t,
            Some("disks re-verified by content hash".into()),
        );
        v
    } else {
        let iopts = InjectOptions {
            vm: vm.clone(),
            disks: disks.clone(),
            bus: opts.disk_bus,
            keep_agent: opts.keep_agent,
            accel,
        };
        let mut wopts = injector::windows::Options::from_env();
        if opts.virtio_win.is_some() {
            wopts.virtio_win = opts.virtio_win.clone();
        }
        let done = injector::inject_with(&iopts, &wopts, &mut |m| {
            progress(Event::Message(m.to_string()));
        })?;
        let log = done.log;
        match &done.windows {
            Some(w) => {
                features = injector::target::GuestFeatures::windows(w.inspection.rtc_utc);
                windows_guest = true;
                let b = serde_json::to_vec_pretty(w).map_err(|e| Error::Input(e.to_string()))?;
                v2k_converters::output::write_atomic(&windows_path, &b)?;
            }
            // A stale report of an earlier guest in this directory must not linger.
            None => match std::fs::remove_file(&windows_path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(io("removing a stale windows.json")(e))
                }
                _ => {}
            },
        }
        let v = serde_json::to_value(&log).map_err(|e| Error::Input(e.to_string()))?;
        let b = serde_json::to_vec_pretty(&v).map_err(|e| Error::Input(e.to_string()))?;
        v2k_converters::output::write_atomic(&log_path, &b)?;
        let sizes: Vec<u64> = manifests
            .iter()
            .map(|m| m["source"]["virtual-size"].as_u64().unwrap_or(0))
            .collect();
        state.injected = disk_hashes(&disks, &sizes);
        save_state(&state_path, &state)?;
        finish(
            "inject",
            "done",
            t,
            Some(format!(
                "{} change(s)",
                v["changes"].as_array().map_or(0, Vec::len)
            )),
        );
        v
    };

    // 4. target
    let t = stage_start("target");
    let target = Target::from_vm(&vm, &disks, opts.disk_bus, &opts.network_map, accel)?;
    std::fs::write(
        out.join("domain.xml"),
        injector::target::domain_xml_with(&target, &features),
    )
    .map_err(io("writing domain.xml"))?;
    let argv =
        injector::target::qemu_argv_with(&target, &injector::QemuOptions::default(), &features);
    std::fs::write(
        out.join("qemu-cmdline.json"),
        serde_json::to_vec_pretty(&argv).unwrap_or_default(),
    )
    .map_err(io("writing qemu-cmdline.json"))?;
    std::fs::write(
        out.join("run-qemu.sh"),
        injector::target::qemu_script(&argv),
    )
    .map_err(io("writing run-qemu.sh"))?;
    if let Some(uri) = &opts.define {
        let o = std::process::Command::new("virsh")
            .args(["-q", "-c", uri, "define"])
            .arg(out.join("domain.xml"))
            .output()
            .map_err(io("running virsh define"))?;
        if !o.status.success() {
            return Err(Error::Input(format!(
                "virsh define: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            )));
        }
    }
    finish(
        "target",
        "done",
        t,
        opts.define.as_ref().map(|u| format!("defined in {u}")),
    );

    // 5. validate
    let validation = if opts.validate {
        let t = stage_start("validate");
        let mut expect = Expectations {
            mounts: log["inspection"]["mounts"]
                .as_array()
                .map(|m| {
                    m.iter()
                        .filter_map(|x| x["mountpoint"].as_str())
                        .filter(|p| *p != "/")
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
            nics: log["nic-names"]
                .as_array()
                .map(|n| {
                    n.iter()
                        .filter_map(|x| {
                            Some(v2k_validator::checks::ExpectedNic {
                                name: Some(x["name"].as_str()?.into()),
                                mac: x["mac"].as_str()?.into(),
                            })
                        })
                        .collect()
                })
                .unwrap_or_default(),
        };
        // Windows names its new virtio adapters itself: every NIC of the target is
        // expected by MAC, up with an address, whatever it is called.
        if windows_guest {
            expect.nics = target
                .nics
                .iter()
                .map(|n| v2k_validator::checks::ExpectedNic {
                    name: None,
                    mac: n.mac.clone(),
                })
                .collect();
        }
        let vopts = v2k_validator::Options {
            backend: opts.backend.clone(),
            boot_timeout: opts.boot_timeout,
            keep_changes: opts.keep_changes,
            work_dir: out.join("validation"),
            features,
        };
        let v = v2k_validator::validate(&target, &expect, &vopts)?;
        finish(
            "validate",
            if v.passed { "done" } else { "failed" },
            t,
            v.evidence
                .boot_seconds
                .map(|s| format!("agent report after {s:.1} s")),
        );
        Some(v)
    } else {
        None
    };

    // 6. report
    let result = match &validation {
        None => "not-validated",
        Some(v) if v.passed => "validated",
        Some(_) => "validation-failed",
    };
    let rep = Report {
        schema_version: report::SCHEMA_VERSION,
        v2k_version: env!("CARGO_PKG_VERSION").into(),
        vm: vm.name.clone(),
        source: opts.source.display().to_string(),
        result: result.into(),
        source_hardware: hardware_source(&vm),
        target_hardware: hardware_target(&target),
        concerns: vm
            .concerns
            .iter()
            .map(|c| serde_json::to_value(c).unwrap_or_default())
            .collect(),
        disks: manifests,
        guest_changes: Some(log),
        validation,
        stages,
    };
    report::write(&rep, out).map_err(io("writing the report"))?;
    Ok(Outcome {
        report: rep,
        report_dir: out.clone(),
    })
}

/// A disk id (`scsi0:1`) as a file name.
fn safe_file_name(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use conv::Progress;

    #[test]
    fn converter_progress_arrives_as_disk_events_with_their_totals() {
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = ChannelProgress {
            tx: std::sync::Mutex::new(tx),
            totals: std::sync::Mutex::new(Vec::new()),
        };
        // Reported from another thread, as the converter's workers do.
        std::thread::scope(|s| {
            s.spawn(|| {
                sink.event(conv::Event::Started {
                    disk: 1,
                    virtual_size: 4 << 20,
                    allocated_bytes: 1 << 20,
                });
                sink.event(conv::Event::Copied {
                    disk: 1,
                    done: 2 << 20,
                });
                sink.event(conv::Event::Verified {
                    disk: 1,
                    done: 4 << 20,
                });
                sink.event(conv::Event::Finished { disk: 1 });
            });
        });
        drop(sink);
        let got: Vec<(usize, &str, u64, u64)> = rx
            .iter()
            .map(|e| match e {
                Event::Disk {
                    disk,
                    phase,
                    done,
                    total,
                } => (disk, phase, done, total),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (1, "copy", 0, 4 << 20),
                (1, "copy", 2 << 20, 4 << 20),
                (1, "verify", 4 << 20, 4 << 20),
                (1, "done", 4 << 20, 4 << 20),
            ]
        );
    }
}
