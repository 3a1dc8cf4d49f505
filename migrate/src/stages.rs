//! The stages of the pipeline as functions over typed values: [`inspect`],
//! [`convert`], [`inject`], [`target`] (with [`write_target`]), the validation boot
//! (through [`BootStages`]) and [`report`]. `migrate_with` strings them together;
//! `v2k inject` calls [`inject`] and [`target`] itself, so the two commands cannot
//! drift apart.

use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;
use std::sync::Mutex;

use v2k_converters::convert::{self as conv, Format, Job};
use v2k_converters::manifest::Manifest;
use v2k_converters::vmdk::{ByteRange, Source};
use v2k_drivers_injector::{self as injector, InjectOptions};
use v2k_inventory::model::{Concern, DiskLocation, Severity, Vm};
use v2k_kvm_target::{Accel, DiskBus, GuestFeatures, NetworkMap, QemuOptions, Target};
use v2k_validator::checks::{ExpectedFirmware, ExpectedNic};
use v2k_validator::{Expectations, Validation};

pub use v2k_drivers_injector::Injected;

use crate::report::{self, Report};
use crate::rundir::{RunDir, RunDirError, State};
use crate::staging::{self, StagingError};
use crate::{BoxError, Error, Event, RemoteSource, Result};

/// The stages that boot something: the libguestfs appliance that edits the guest, and
/// the validation boot. [`RealBoot`] runs them; tests record the calls instead.
pub trait BootStages: Sync {
    fn inject(
        &self,
        opts: &InjectOptions,
        windows: &injector::windows::Options,
        progress: &mut dyn FnMut(&str),
    ) -> std::result::Result<Injected, injector::Error>;

    fn validate(
        &self,
        target: &Target,
        expect: &Expectations,
        opts: &v2k_validator::Options,
    ) -> std::result::Result<Validation, v2k_validator::Error>;

    /// [`BootStages::inject`] on a live import's overlays, each over exactly the NBD
    /// export named in `backings`.
    fn inject_live(
        &self,
        opts: &InjectOptions,
        windows: &injector::windows::Options,
        backings: &[String],
        progress: &mut dyn FnMut(&str),
    ) -> std::result::Result<Injected, injector::Error> {
        injector::inject_live(opts, windows, backings, progress)
    }

    /// Starts the delivered domain on its destination and checks it there.
    fn after_cutover(
        &self,
        expect: &Expectations,
        opts: &v2k_validator::AfterCutover,
    ) -> std::result::Result<Validation, v2k_validator::Error> {
        v2k_validator::after_cutover(expect, opts)
    }
}

/// libguestfs and a real boot (QEMU or libvirt).
#[derive(Debug, Default, Clone, Copy)]
pub struct RealBoot;

impl BootStages for RealBoot {
    fn inject(
        &self,
        opts: &InjectOptions,
        windows: &injector::windows::Options,
        progress: &mut dyn FnMut(&str),
    ) -> std::result::Result<Injected, injector::Error> {
        injector::inject_with(opts, windows, progress)
    }

    fn validate(
        &self,
        target: &Target,
        expect: &Expectations,
        opts: &v2k_validator::Options,
    ) -> std::result::Result<Validation, v2k_validator::Error> {
        v2k_validator::validate(target, expect, opts)
    }
}

// ---------------------------------------------------------------------------------
// 1. inspect

/// Why the VM could not be read.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error(transparent)]
    Inventory(#[from] v2k_inventory::Error),
    #[error("{source_name}")]
    Remote {
        source_name: String,
        #[source]
        source: BoxError,
    },
}

/// Why a readable VM is not migrated.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("{source_name}: no VM described")]
    NoVm { source_name: String },
    #[error("{source_name}: describes {} VMs ({}); choose one with --vm-name", names.len(), names.join(", "))]
    SeveralVms {
        source_name: String,
        names: Vec<String>,
    },
    #[error("{source_name}: no VM named {name:?}")]
    NoVmNamed { source_name: String, name: String },
    #[error("{vm}: critical pre-flight concerns, not migrated: {}", concerns.join("; "))]
    Critical { vm: String, concerns: Vec<String> },
}

/// Every VM a .vmx, .ovf or .ova describes, with its pre-flight concerns; VMX disks
/// are examined by the converter's own reader, so a disk `convert` would refuse is a
/// concern now.
pub fn load(source: &Path, verify_manifest: bool) -> std::result::Result<Vec<Vm>, InspectError> {
    Ok(v2k_inventory::load(
        source,
        &v2k_inventory::Options { verify_manifest },
        &v2k_converters::probe::ConvertersProbe,
    )?)
}

/// Reads the VM at `source` (or from `remote`), choosing `vm_name` among several.
pub fn inspect(
    source: &Path,
    vm_name: Option<&str>,
    verify_manifest: bool,
    remote: Option<&dyn RemoteSource>,
) -> Result<Vm> {
    let source_name = source.display().to_string();
    let mut vms = match remote {
        Some(r) => vec![r.load().map_err(|e| InspectError::Remote {
            source_name: r.describe(),
            source: e,
        })?],
        None => load(source, verify_manifest)?,
    };
    let vm = match (vm_name, vms.len()) {
        (_, 0) => return Err(Refusal::NoVm { source_name }.into()),
        (None, 1) => vms.remove(0),
        (None, _) => {
            return Err(Refusal::SeveralVms {
                source_name,
                names: vms.into_iter().map(|v| v.name).collect(),
            }
            .into())
        }
        (Some(n), _) => {
            vms.into_iter()
                .find(|v| v.name == n)
                .ok_or_else(|| Refusal::NoVmNamed {
                    source_name,
                    name: n.to_string(),
                })?
        }
    };
    Ok(vm)
}

/// Refuses a VM with a critical pre-flight concern.
pub(crate) fn refuse_critical(vm: &Vm) -> std::result::Result<(), Refusal> {
    let critical: Vec<String> = vm
        .concerns
        .iter()
        .filter(|c| c.severity == Severity::Critical)
        .map(|c| format!("{} ({})", c.id, c.message))
        .collect();
    if critical.is_empty() {
        Ok(())
    } else {
        Err(Refusal::Critical {
            vm: vm.name.clone(),
            concerns: critical,
        })
    }
}

// ---------------------------------------------------------------------------------
// 2. convert

/// Why the disks could not be converted.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("disk {disk}: its bytes cannot be read ({location})")]
    Unreadable { disk: String, location: String },
    #[error("assembling disk {disk}")]
    Staging {
        disk: String,
        #[source]
        source: StagingError,
    },
    #[error("disk {disk}")]
    Disk {
        disk: String,
        #[source]
        source: BoxError,
    },
    #[error("removing the staging copy {path}")]
    Cleanup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("internal: the conversion thread panicked")]
    Panicked,
}

/// Where a disk's bytes are, for the converter.
fn disk_source(loc: &DiskLocation, id: &str) -> std::result::Result<Source, ConvertError> {
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
        other => Err(ConvertError::Unreadable {
            disk: id.to_string(),
            location: format!("{other:?}"),
        }),
    }
}

/// Carries the converter's progress (reported from its worker threads) to the thread
/// that runs the pipeline, whose callback need not be `Sync`.
pub(crate) struct ChannelProgress {
    tx: Mutex<Sender<Event>>,
    totals: Mutex<Vec<u64>>,
    resumes: Mutex<Vec<report::Resume>>,
}

impl ChannelProgress {
    pub(crate) fn new(tx: Sender<Event>) -> Self {
        ChannelProgress {
            tx: Mutex::new(tx),
            totals: Mutex::new(Vec::new()),
            resumes: Mutex::new(Vec::new()),
        }
    }
}

impl crate::SourceProgress for ChannelProgress {
    fn resumed(&self, r: report::Resume) {
        if let Ok(tx) = self.tx.lock() {
            let _ = tx.send(Event::Message(format!(
                "disk {}: the download broke at byte {} ({}); resumed there",
                r.disk, r.at, r.reason
            )));
        }
        if let Ok(mut v) = self.resumes.lock() {
            v.push(r);
        }
    }
}

impl conv::Progress for ChannelProgress {
    fn event(&self, e: conv::Event) {
        let total_of = |disk: usize| {
            self.totals
                .lock()
                .map(|t| t.get(disk).copied().unwrap_or(0))
                .unwrap_or(0)
        };
        let (disk, phase, done, total) = match e {
            conv::Event::Started {
                disk, virtual_size, ..
            } => {
                if let Ok(mut t) = self.totals.lock() {
                    if t.len() <= disk {
                        t.resize(disk + 1, 0);
                    }
                    t[disk] = virtual_size;
                }
                (disk, "copy", 0, virtual_size)
            }
            conv::Event::Copied { disk, done } => (disk, "copy", done, total_of(disk)),
            conv::Event::Verifying { disk } => (disk, "verify", 0, total_of(disk)),
            conv::Event::Verified { disk, done } => (disk, "verify", done, total_of(disk)),
            conv::Event::Finished { disk } => {
                let total = total_of(disk);
                (disk, "done", total, total)
            }
        };
        if let Ok(tx) = self.tx.lock() {
            let _ = tx.send(Event::Disk {
                disk,
                phase,
                done,
                total,
            });
        }
    }
}

/// What the convert stage made: a manifest per disk, and the downloads that broke
/// and resumed on the way (a remote source's).
#[derive(Debug, Clone, Default)]
pub struct Converted {
    pub manifests: Vec<Manifest>,
    pub resumes: Vec<report::Resume>,
}

/// Converts every disk of `vm` into `disks` (QCOW2, verified, a manifest beside each)
/// and records their content hashes as the `converted` stage of the run directory.
pub fn convert(
    run: &RunDir,
    vm: &Vm,
    disks: &[PathBuf],
    compress: bool,
    remote: Option<&dyn RemoteSource>,
    progress: &dyn Fn(Event),
) -> Result<Converted> {
    // Two disk ids that become one file name are refused before anything is written.
    let named: Vec<(PathBuf, &Path)> = vm
        .disks
        .iter()
        .zip(disks)
        .map(|(d, o)| (PathBuf::from(&d.id), o.as_path()))
        .collect();
    let pairs: Vec<(&Path, &Path)> = named.iter().map(|(i, o)| (i.as_path(), *o)).collect();
    v2k_converters::convert::check_distinct_outputs(&pairs).map_err(|e| ConvertError::Disk {
        disk: vm.disks.first().map(|d| d.id.clone()).unwrap_or_default(),
        source: e.into(),
    })?;
    // Whatever an earlier run recorded no longer holds once a disk is rewritten.
    run.save_state(&State::default())?;
    // Chunked and gzip-compressed disks are assembled first (staging.rs).
    let mut staged = Vec::new();
    let mut jobs = Vec::new();
    // A remote source streams its disks itself (no local file to read).
    for (d, o) in vm.disks.iter().zip(disks).filter(|_| remote.is_none()) {
        let source = if staging::needs_staging(&d.location) {
            let dest = staging::staged_path(run.root(), &crate::rundir::disk_file_stem(&d.id));
            progress(Event::Message(format!(
                "disk {}: assembling its chunked or compressed file into {}",
                d.id,
                dest.display()
            )));
            staging::stage(&d.location, d.capacity, &dest, &d.id).map_err(|source| {
                ConvertError::Staging {
                    disk: d.id.clone(),
                    source,
                }
            })?;
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
        compress,
        // A rerun reconverts a disk whose recorded hash no longer verifies.
        overwrite: true,
        ..conv::Options::default()
    };
    // The conversion runs on its own thread; its progress comes back here.
    let (tx, rx) = std::sync::mpsc::channel::<Event>();
    let sink = ChannelProgress::new(tx);
    type Results = Vec<std::result::Result<Manifest, BoxError>>;
    let (results, resumes): (Results, Vec<report::Resume>) = std::thread::scope(|s| {
        let (jobs, copts) = (&jobs, &copts);
        let worker = s.spawn(move || {
            let r: Results = match remote {
                Some(r) => r.convert(vm, disks, &sink),
                None => conv::convert_all(jobs, copts, jobs.len().min(4), &sink)
                    .into_iter()
                    .map(|x| x.map_err(BoxError::from))
                    .collect(),
            };
            // Taking the record drops the sink, whose sender ends the loop below.
            (r, sink.resumes.into_inner().unwrap_or_default())
        });
        for e in rx {
            progress(e);
        }
        worker.join()
    })
    .map_err(|_| ConvertError::Panicked)?;
    let mut manifests = Vec::with_capacity(results.len());
    for (r, d) in results.into_iter().zip(&vm.disks) {
        manifests.push(r.map_err(|source| ConvertError::Disk {
            disk: d.id.clone(),
            source,
        })?);
    }
    // Converted and verified: the assembled copies are no longer needed.
    for p in &staged {
        std::fs::remove_file(p).map_err(|source| ConvertError::Cleanup {
            path: p.clone(),
            source,
        })?;
    }
    if !staged.is_empty() {
        let _ = std::fs::remove_dir(run.root().join("staging"));
    }
    run.save_state(&State {
        sizes: manifests.iter().map(|m| m.source.virtual_size).collect(),
        converted: Some(manifests.iter().map(|m| m.hash.source.clone()).collect()),
        injected: None,
    })?;
    Ok(Converted { manifests, resumes })
}

// ---------------------------------------------------------------------------------
// 3. inject

/// How to convert the guest.
#[derive(Debug, Clone)]
pub struct InjectSettings {
    pub bus: DiskBus,
    pub keep_agent: bool,
    pub accel: Accel,
    /// virtio-win drivers for a Windows guest; `None` reads `$VIRTIO_WIN`.
    pub virtio_win: Option<PathBuf>,
}

/// The injector's options for `vm` on `disks`.
fn inject_options(
    vm: &Vm,
    disks: &[PathBuf],
    s: &InjectSettings,
) -> (InjectOptions, injector::windows::Options) {
    let mut win = injector::windows::Options::from_env();
    if s.virtio_win.is_some() {
        win.virtio_win = s.virtio_win.clone();
    }
    (
        InjectOptions {
            vm: vm.clone(),
            disks: disks.to_vec(),
            bus: s.bus,
            keep_agent: s.keep_agent,
            accel: s.accel,
        },
        win,
    )
}

/// Converts the guest on `disks` (in place) through `boot`'s appliance.
pub fn inject_guest(
    boot: &dyn BootStages,
    vm: &Vm,
    disks: &[PathBuf],
    settings: &InjectSettings,
    progress: &mut dyn FnMut(&str),
) -> std::result::Result<Injected, injector::Error> {
    let (iopts, wopts) = inject_options(vm, disks, settings);
    boot.inject(&iopts, &wopts, progress)
}

/// [`inject_guest`] on a live import's overlays, each over exactly the NBD export
/// named in `backings`.
pub fn inject_guest_live(
    boot: &dyn BootStages,
    vm: &Vm,
    disks: &[PathBuf],
    backings: &[String],
    settings: &InjectSettings,
    progress: &mut dyn FnMut(&str),
) -> std::result::Result<Injected, injector::Error> {
    let (iopts, wopts) = inject_options(vm, disks, settings);
    boot.inject_live(&iopts, &wopts, backings, progress)
}

/// [`inject_guest`] on the run's disks; saves the conversion log (and a Windows
/// guest's report) and records the disks' hashes as the `injected` stage.
pub fn inject(
    boot: &dyn BootStages,
    run: &RunDir,
    vm: &Vm,
    disks: &[PathBuf],
    manifests: &[Manifest],
    settings: &InjectSettings,
    progress: &dyn Fn(Event),
) -> Result<Injected> {
    let done = inject_guest(boot, vm, disks, settings, &mut |m| {
        progress(Event::Message(m.to_string()))
    })
    .map_err(Error::Inject)?;
    run.save_windows(done.windows.as_ref())?;
    run.save_log(&done.log)?;
    let mut state = run.state();
    let sizes: Vec<u64> = manifests.iter().map(|m| m.source.virtual_size).collect();
    state.injected = RunDir::hashes(disks, &sizes);
    state.sizes = sizes;
    run.save_state(&state)?;
    Ok(done)
}

/// With `--no-inject`: what an earlier run's injector left must not speak for disks
/// that were not converted now.
pub(crate) fn forget_injection(
    run: &RunDir,
    disks: &[PathBuf],
    manifests: &[Manifest],
) -> std::result::Result<(), RunDirError> {
    run.remove_log()?;
    run.save_windows(None)?;
    let mut state = run.state();
    if state.injected.is_some() {
        let sizes: Vec<u64> = manifests.iter().map(|m| m.source.virtual_size).collect();
        state.injected = None;
        state.converted = RunDir::hashes(disks, &sizes);
        state.sizes = sizes;
        run.save_state(&state)?;
    }
    Ok(())
}

/// The concern a report carries when the guest was not converted (`--no-inject`).
pub(crate) fn not_converted_concern() -> Concern {
    Concern {
        id: "guest-not-converted".into(),
        severity: Severity::Warning,
        subject: None,
        message: "the guest was not converted for KVM (--no-inject): its disks were copied \
                  and verified, but no virtio drivers, device names or agent were added"
            .into(),
    }
}

/// The target features the guest asks for: a Windows guest's own clock setting
/// decides the RTC, and it gets Hyper-V enlightenments.
pub fn features(injected: Option<&Injected>) -> GuestFeatures {
    match injected.and_then(|i| i.windows.as_ref()) {
        Some(w) => GuestFeatures::windows(w.inspection.rtc_utc),
        None => GuestFeatures::default(),
    }
}

// ---------------------------------------------------------------------------------
// 4. target

/// Why the KVM target could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error(transparent)]
    Model(#[from] v2k_kvm_target::Error),
    #[error("creating the UEFI variable store {path}")]
    Vars {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: v2k_outfile::Error,
    },
    #[error("reading the destination host's topology")]
    Host(#[source] v2k_kvm_target::host::HostError),
    #[error("running virsh define")]
    DefineRun(#[source] std::io::Error),
    #[error("virsh define: {0}")]
    Define(String),
}

/// The KVM target of `vm` on `disks` (nothing written: a VM the target cannot keep,
/// such as a NIC without a MAC, is refused before the guest is touched). An EFI
/// guest's variable store will be `NAME_VARS.fd` in `dir`.
pub fn target(
    vm: &Vm,
    disks: &[PathBuf],
    bus: DiskBus,
    network_map: &NetworkMap,
    accel: Accel,
    dir: &Path,
) -> std::result::Result<Target, TargetError> {
    Ok(Target::from_vm(vm, disks, bus, network_map, accel, dir)?)
}

/// Maps `vm`'s VMware tuning onto the destination `host` (read only when the VM
/// has tuning to place: cores per socket alone needs no host); returns the concerns
/// about what the host cannot take.
pub fn tune(
    target: &mut Target,
    vm: &Vm,
    host: &v2k_kvm_target::HostSource,
) -> std::result::Result<Vec<Concern>, TargetError> {
    let topology = if vm.tuning.is_empty() {
        v2k_kvm_target::HostTopology::default()
    } else {
        host.load().map_err(TargetError::Host)?
    };
    Ok(target.tune(vm, &topology))
}

/// The files a target is written as: `domain.xml`, `qemu-cmdline.json`, `run-qemu.sh`
/// (and the EFI variable store).
pub(crate) const TARGET_FILES: [&str; 3] = ["domain.xml", "qemu-cmdline.json", "run-qemu.sh"];

/// Writes the target's files into `dir`, and creates an EFI guest's own variable
/// store from the firmware's template (kept when it exists: it holds the VM's boot
/// entries).
pub fn write_target(
    dir: &Path,
    t: &Target,
    f: &GuestFeatures,
) -> std::result::Result<(), TargetError> {
    if let Some(vars) = t.firmware.vars() {
        v2k_kvm_target::firmware::ensure_vars(&t.firmware).map_err(|source| TargetError::Vars {
            path: vars.to_path_buf(),
            source,
        })?;
    }
    let write = |name: &str, bytes: &[u8], mode: u32| {
        let path = dir.join(name);
        v2k_outfile::write_atomic_mode(&path, bytes, true, mode)
            .map_err(|source| TargetError::Write { path, source })
    };
    let xml = v2k_kvm_target::domain_xml(t, f);
    write(TARGET_FILES[0], xml.as_bytes(), 0o644)?;
    let argv = v2k_kvm_target::qemu_argv(t, &QemuOptions::default(), f);
    let mut json = serde_json::to_vec_pretty(&argv).expect("a list of strings serialises");
    json.push(b'\n');
    write(TARGET_FILES[1], &json, 0o644)?;
    let script = v2k_kvm_target::qemu_script(&argv, &t.tuning.vcpu_cpuset);
    write(TARGET_FILES[2], script.as_bytes(), 0o755)
}

/// Defines (does not start) the domain in libvirt at `uri`.
pub fn define(uri: &str, domain_xml: &Path) -> std::result::Result<(), TargetError> {
    let o = std::process::Command::new("virsh")
        .args(["-q", "-c", uri, "define"])
        .arg(domain_xml)
        .output()
        .map_err(TargetError::DefineRun)?;
    if !o.status.success() {
        return Err(TargetError::Define(
            String::from_utf8_lossy(&o.stderr).trim().to_string(),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// 5. validate

/// What the validation boot expects of the guest: every non-root mount the injector
/// saw, and each NIC under its pinned name and MAC, with the static addresses, default
/// gateway and resolvers its configuration sets; the firmware the target boots with.
/// Windows names its new virtio adapters itself: every NIC of the target is expected
/// by MAC, whatever it is called (its addresses are the Windows agent's own check).
pub fn expectations(injected: &Injected, target: &Target) -> Expectations {
    let log = &injected.log;
    let static_of = |name: &str| {
        log.inspection
            .configured_nics
            .iter()
            .find(|c| c.name == name)
            .and_then(|c| c.ipv4.as_ref())
    };
    let nics = if injected.windows.is_some() {
        target
            .nics
            .iter()
            .map(|n| ExpectedNic {
                name: None,
                mac: n.mac.clone(),
                static_ipv4: vec![],
            })
            .collect()
    } else {
        log.nic_names
            .iter()
            .map(|p| ExpectedNic {
                name: Some(p.name.clone()),
                mac: p.mac.clone(),
                static_ipv4: static_of(&p.name)
                    .map(|s| s.addresses.clone())
                    .unwrap_or_default(),
            })
            .collect()
    };
    // The route and resolvers of the pinned NICs' static configurations (the first
    // gateway: one default route is what a guest has).
    let statics: Vec<&injector::StaticIpv4> = if injected.windows.is_some() {
        Vec::new()
    } else {
        log.nic_names
            .iter()
            .filter_map(|p| static_of(&p.name))
            .collect()
    };
    let mut dns: Vec<String> = Vec::new();
    for d in statics.iter().flat_map(|s| &s.dns) {
        if !dns.contains(d) {
            dns.push(d.clone());
        }
    }
    Expectations {
        mounts: log
            .inspection
            .mounts
            .iter()
            .map(|m| m.mountpoint.clone())
            .filter(|p| p != "/")
            .collect(),
        nics,
        // The Windows agent does not report firmware; a Linux one always does.
        firmware: injected.windows.is_none().then(|| ExpectedFirmware {
            efi: target.efi(),
            secure_boot: target.firmware.secure_boot(),
        }),
        gateway: statics.iter().find_map(|s| s.gateway.clone()),
        dns,
        services: log.inspection.enabled_services.clone(),
        reachability: false,
    }
}

// ---------------------------------------------------------------------------------
// 6. report

/// The report of a finished run.
pub fn report(
    vm: &Vm,
    source: &Path,
    target: &Target,
    converted: Converted,
    guest_changes: Option<injector::ConversionLog>,
    validation: Option<Validation>,
    stages: Vec<report::Stage>,
) -> Report {
    let Converted {
        manifests: disks,
        resumes: resumed_downloads,
    } = converted;
    let result = match &validation {
        None => report::Outcome::NotValidated,
        Some(v) if v.passed => report::Outcome::Validated,
        Some(_) => report::Outcome::ValidationFailed,
    };
    let sizes: Vec<u64> = disks.iter().map(|m| m.source.virtual_size).collect();
    Report {
        schema_version: report::SCHEMA_VERSION,
        v2k_version: env!("CARGO_PKG_VERSION").into(),
        vm: vm.name.clone(),
        source: source.display().to_string(),
        result,
        source_hardware: report::source_hardware(vm),
        target_hardware: report::target_hardware(target, &sizes),
        concerns: vm.concerns.clone(),
        tuning: target.tuning.mappings.clone(),
        disks,
        guest_changes,
        validation,
        performance: None,
        performance_after_cutover: None,
        stages,
        resumed_downloads,
        delivery: None,
        after_cutover: None,
        rollback: None,
        live: None,
        downtime: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use conv::Progress;

    #[test]
    fn converter_progress_arrives_as_disk_events_with_their_totals() {
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = ChannelProgress::new(tx);
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
