//! The live stage (`v2k migrate vsphere://… --live`, issue 19): instead of copying the
//! disks before the first boot, the VM starts on KVM right after the source is powered
//! off, and its disks stream in behind it.
//!
//! ```text
//!  source off (cutover) ─▶ serve: live::serve per disk on RUN/live/diskN.sock (0600,
//!  the libvirt DAC user's) ─▶ RUN/live/<disk>.qcow2 overlays over them ─▶ inject (on the
//!  overlays) ─▶ clusters changed by v2k noted, v2k-guest bitmap added ─▶ target: live
//!  domain XML (NBD backing, rerror/werror=stop) defined ─▶ started and watched (the
//!  checks after cutover) while blockpull streams every disk ─▶ domain stopped, every
//!  served cluster the guest and v2k did not write checked against its served hash ─▶
//!  the standalone domain defined again and started ─▶ report (live section, downtime)
//! ```
//! The servers live on this stage's own tokio runtime until every pull has ended and
//! the overlays are checked. `live.json` in the run directory says where the stage
//! stood (and the error that stopped it); the source is never powered on here, and a
//! failure after the domain started stops the domain, which cannot run without the
//! server. Resuming a killed live import is not built: a rerun refuses the overlays an
//! earlier run left (docs/live-import.md).

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use v2k_inventory::model::Vm;
use v2k_kvm_target::{Accel, NbdBacking, NetTarget};
use v2k_live::overlay;
use v2k_live::stream::{self, Verdict};
use v2k_live::{DatastoreSource, RetryPolicy, ServeOptions, ServerHandle};

use crate::report::{self, StageStatus};
use crate::rundir::{disk_file_stem, RunDir};
use crate::stages;
use crate::{BootStages, BoxError, Error, Event, Options, Outcome, RemoteSource, Timeline};

/// The export name every disk's server uses (one export per socket).
const EXPORT: &str = "disk";
/// The run directory's file saying where a live import stands.
pub const RECORD_FILE: &str = "live.json";
/// How long the domain may take to become active after the watcher starts it.
const START_WAIT: Duration = Duration::from_secs(120);
/// How long a guest may take to shut down for the check before it is stopped hard
/// (`virsh destroy`: SIGTERM, which still stores the bitmap; measured in phase 2a).
const SHUTDOWN_WAIT: Duration = Duration::from_secs(120);
/// How often a pull's progress is read.
const PULL_POLL: Duration = Duration::from_secs(1);

/// How v2k's server reaches a remote source's disks: the connection and login of the
/// copy path (the same TLS verification or pin), and each disk's descriptor.
pub struct LiveAccess {
    pub options: v2k_vsphere::Options,
    pub credentials: v2k_vsphere::Credentials,
    pub disks: Vec<v2k_vsphere::DiskSource>,
}

/// How to import live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveOptions {
    /// The libvirt on this machine the domain runs in (the NBD sockets are local).
    pub uri: String,
    /// At most this many MiB/s per disk's pull (`--live-bandwidth`).
    pub bandwidth_mib: Option<u64>,
}

/// Why the live stage stopped. `live.json` in the run directory says where it stood.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error("{0}")]
    Usage(String),
    #[error("{step}")]
    Step {
        step: String,
        #[source]
        source: BoxError,
    },
}

fn step<E: Into<BoxError>>(what: impl Into<String>) -> impl FnOnce(E) -> Error {
    let step = what.into();
    move |e| {
        Error::Live(LiveError::Step {
            step,
            source: e.into(),
        })
    }
}

fn usage(m: impl Into<String>) -> Error {
    Error::Live(LiveError::Usage(m.into()))
}

/// The verdict on the streamed disks.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum LiveVerdict {
    /// Every served cluster neither v2k nor the guest wrote is what was served.
    Verified,
    /// Some are not (listed per disk).
    Mismatch,
    /// What the guest wrote is unknown (its bitmap was not stored): nothing is said.
    CannotTell,
}

/// One disk of a live import.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct LiveDisk {
    pub disk: String,
    pub overlay: PathBuf,
    pub verdict: LiveVerdict,
    /// Why the verdict could not be given (`cannot-tell`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Counts of 64 KiB clusters (docs/live-import.md).
    pub served: u64,
    pub changed_by_v2k: u64,
    pub written_by_guest: u64,
    pub verified: u64,
    /// The clusters that differ from what was served, ascending.
    #[serde(default)]
    pub mismatched: Vec<u64>,
    pub bytes_served: u64,
    /// Datastore reads repeated after a transient failure, and logins (1 + renewals).
    pub retries: u64,
    pub logins: u64,
}

/// The report's `live` section.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct LiveReport {
    pub uri: String,
    pub domain: String,
    pub verdict: LiveVerdict,
    /// Sums over the disks, in 64 KiB clusters.
    pub served: u64,
    pub changed_by_v2k: u64,
    pub written_by_guest: u64,
    pub verified: u64,
    pub mismatched: u64,
    /// From the first pull's start to the last pull's end.
    pub stream_seconds: f64,
    /// The disks' virtual size over `stream_seconds`.
    pub stream_mib_per_second: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth_mib: Option<u64>,
    /// Unix seconds when the source was found powered off (after the cutover).
    pub source_off_at: u64,
    /// From the source's power-off to the agent's report on the target; absent when
    /// the agent did not report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downtime_seconds: Option<f64>,
    pub disks: Vec<LiveDisk>,
}

/// `live.json`: where a live import stands, rewritten at each step.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct LiveRecord {
    /// `serving`, `injected`, `defined`, `streaming`, `checking`, `done` or `failed`.
    pub state: String,
    pub source_off_at: u64,
    pub uri: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Whether the domain depends on the source's server (started, not yet streamed).
    pub depends_on_source: bool,
    pub disks: Vec<RecordDisk>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct RecordDisk {
    pub disk: String,
    pub socket: PathBuf,
    pub overlay: PathBuf,
    /// The clusters the inject stage changed (allocated before the first start).
    #[serde(default)]
    pub changed_by_v2k: Vec<u64>,
}

impl LiveRecord {
    fn save(&self, run: &RunDir) -> crate::Result<()> {
        let path = run.root().join(RECORD_FILE);
        let mut text = serde_json::to_vec_pretty(self).expect("a record serialises");
        text.push(b'\n');
        v2k_outfile::write_atomic(&path, &text, true)
            .map_err(step(format!("writing {}", path.display())))
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn virsh(uri: &str, args: &[&str]) -> std::result::Result<String, BoxError> {
    let o = Command::new("virsh")
        .args(["-q", "-c", uri])
        .args(args)
        .output()
        .map_err(|e| format!("running virsh: {e}"))?;
    if !o.status.success() {
        return Err(format!(
            "virsh {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        )
        .into());
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

fn domstate(uri: &str, name: &str) -> String {
    virsh(uri, &["domstate", name])
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// A fresh socket path: a socket an earlier (killed) run of this stage left in the run
/// directory is removed; anything else there is refused.
fn fresh_socket(p: &Path) -> crate::Result<()> {
    match p.symlink_metadata() {
        Err(_) => Ok(()),
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(p)
            .map_err(step(format!("removing the stale socket {}", p.display()))),
        Ok(_) => Err(usage(format!(
            "{}: exists and is not a socket an earlier run left",
            p.display()
        ))),
    }
}

/// The servers, their sources and the runtime they run on; shut down on drop.
struct Serving {
    rt: tokio::runtime::Runtime,
    servers: Vec<ServerHandle>,
    sources: Vec<Arc<DatastoreSource>>,
}

impl Serving {
    fn shutdown(mut self) -> Vec<v2k_live::Stats> {
        let servers = std::mem::take(&mut self.servers);
        let sources = std::mem::take(&mut self.sources);
        self.rt.block_on(async move {
            let mut stats = Vec::new();
            for s in servers {
                stats.push(s.shutdown().await);
            }
            for s in sources {
                let _ = s.logout().await;
            }
            stats
        })
    }
}

/// The domain's state, told by the record on every change.
struct Stand<'a> {
    run: &'a RunDir,
    rec: LiveRecord,
}

impl Stand<'_> {
    fn set(&mut self, state: &str) -> crate::Result<()> {
        self.rec.state = state.into();
        self.rec.save(self.run)
    }

    /// Records the failure; a domain that still depends on the source is stopped (it
    /// cannot run once this process and its server are gone).
    fn fail(&mut self, e: Error, progress: &dyn Fn(Event)) -> Error {
        if let (true, Some(d)) = (self.rec.depends_on_source, &self.rec.domain) {
            if virsh(&self.rec.uri, &["destroy", d]).is_ok() {
                progress(Event::Message(format!(
                    "{d} stopped: it depended on the source's server, which stops with v2k"
                )));
            }
            self.rec.depends_on_source = false;
        }
        self.rec.state = "failed".into();
        self.rec.error = Some(v2k_inventory::one_line(&e));
        let _ = self.rec.save(self.run);
        e
    }
}

/// Everything the live pipeline needs from `migrate_with`.
pub(crate) struct Context<'a> {
    pub run: &'a RunDir,
    pub opts: &'a Options,
    pub live: &'a LiveOptions,
    pub remote: &'a dyn RemoteSource,
    pub boot: &'a dyn BootStages,
    pub progress: &'a dyn Fn(Event),
    /// When the source was found off (after the cutover).
    pub source_off: Instant,
}

/// The live pipeline after inspect; see the module documentation.
pub(crate) fn run(cx: &Context, tl: &mut Timeline, mut vm: Vm) -> crate::Result<Outcome> {
    let source_off_at = unix_now()
        .saturating_sub(cx.source_off.elapsed().as_secs())
        .max(1);
    let mut stand = Stand {
        run: cx.run,
        rec: LiveRecord {
            state: "starting".into(),
            source_off_at,
            uri: cx.live.uri.clone(),
            ..LiveRecord::default()
        },
    };
    match pipeline(cx, tl, &mut vm, &mut stand) {
        Ok(o) => Ok(o),
        Err(e) => Err(stand.fail(e, cx.progress)),
    }
}

fn pipeline(
    cx: &Context,
    tl: &mut Timeline,
    vm: &mut Vm,
    stand: &mut Stand,
) -> crate::Result<Outcome> {
    let (run, opts, live, progress) = (cx.run, cx.opts, cx.live, cx.progress);
    let uri = live.uri.as_str();
    let access = cx
        .remote
        .live_access(vm)
        .ok_or_else(|| usage("--live needs a vSphere source"))?
        .map_err(step("reading where the disks are"))?;
    let (accel, warning) = v2k_kvm_target::accel::choose(opts.accel);
    if let Some(w) = warning {
        progress(Event::Message(w));
    }
    let bus = opts.disk_bus.fitting(vm.disks.len());
    let dir = run.root().join("live");
    v2k_outfile::create_dir(&dir).map_err(step(format!("creating {}", dir.display())))?;
    // QEMU's user passes through (search only) to its socket and overlay.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711))
        .map_err(step(format!("making {} searchable", dir.display())))?;
    let overlays: Vec<PathBuf> = vm
        .disks
        .iter()
        .map(|d| dir.join(format!("{}.qcow2", disk_file_stem(&d.id))))
        .collect();
    for o in &overlays {
        if o.symlink_metadata().is_ok() {
            return Err(usage(format!(
                "{}: an earlier live import left this overlay; resuming a killed live \
                 import is not built (docs/live-import.md): make sure no domain uses it, \
                 then use a new run directory",
                o.display()
            )));
        }
    }
    let dtype = match accel {
        Accel::Kvm => "kvm",
        Accel::Tcg => "qemu",
    };
    let caps =
        virsh(uri, &["capabilities"]).map_err(step(format!("reading {uri}'s capabilities")))?;
    let label = v2k_kvm_target::dac_label(&caps, dtype).ok_or_else(|| {
        usage(format!(
            "{uri}: no numeric DAC base label for {dtype} domains in `virsh capabilities`: \
             cannot hand the NBD sockets to QEMU's user"
        ))
    })?;

    // serve
    let t = tl.begin("serve");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(step("starting the serving runtime"))?;
    let mut serving = Serving {
        rt,
        servers: Vec::new(),
        sources: Vec::new(),
    };
    let mut backings = Vec::new();
    for (i, (d, disk)) in access.disks.iter().zip(&vm.disks).enumerate() {
        let sock = dir.join(format!("disk{i}.sock"));
        fresh_socket(&sock)?;
        let (src, server) = serving
            .rt
            .block_on(async {
                let src = Arc::new(
                    DatastoreSource::connect(
                        &access.options,
                        access.credentials.clone(),
                        d,
                        RetryPolicy::default(),
                    )
                    .await?,
                );
                let server = v2k_live::serve(
                    src.clone(),
                    &sock,
                    ServeOptions {
                        export: EXPORT.into(),
                        owner: Some((label.uid, label.gid)),
                    },
                )
                .await?;
                Ok::<_, v2k_live::Error>((src, server))
            })
            .map_err(step(format!("serving disk {}", disk.id)))?;
        serving.sources.push(src);
        serving.servers.push(server);
        overlay::create_overlay(&overlays[i], &sock, EXPORT)
            .map_err(step(format!("creating the overlay of disk {}", disk.id)))?;
        stand.rec.disks.push(RecordDisk {
            disk: disk.id.clone(),
            socket: sock.clone(),
            overlay: overlays[i].clone(),
            changed_by_v2k: Vec::new(),
        });
        backings.push(NbdBacking {
            socket: sock,
            export: EXPORT.into(),
        });
    }
    stand.set("serving")?;
    let detail = format!(
        "{} disk(s) served from the datastore on {}",
        backings.len(),
        dir.display()
    );
    tl.end(t, StageStatus::Done, Some(detail));

    // inject, on the overlays
    let injected = if opts.inject {
        let t = tl.begin("inject");
        let settings = stages::InjectSettings {
            bus,
            keep_agent: opts.keep_agent,
            accel,
            virtio_win: opts.virtio_win.clone(),
        };
        let uris: Vec<String> = backings
            .iter()
            .map(|b| overlay::nbd_uri(&b.socket, &b.export))
            .collect();
        let done = stages::inject_guest_live(cx.boot, vm, &overlays, &uris, &settings, &mut |m| {
            progress(Event::Message(m.to_string()))
        })
        .map_err(Error::Inject)?;
        run.save_windows(done.windows.as_ref())?;
        run.save_log(&done.log)?;
        tl.end(
            t,
            StageStatus::Done,
            Some(format!("{} change(s)", done.log.changes.len())),
        );
        Some(done)
    } else {
        tl.skip("inject", "--no-inject: the guest was not converted");
        vm.concerns.push(stages::not_converted_concern());
        None
    };
    let mut changed = Vec::new();
    for (o, r) in overlays.iter().zip(stand.rec.disks.iter_mut()) {
        let c = overlay::allocated_clusters(o)
            .map_err(step(format!("reading what v2k changed in {}", o.display())))?;
        overlay::add_guest_bitmap(o).map_err(step(format!(
            "adding the guest's bitmap to {}",
            o.display()
        )))?;
        r.changed_by_v2k = c.iter().copied().collect();
        changed.push(c);
    }
    stand.set("injected")?;

    // target: the live domain, defined
    let t = tl.begin("target");
    let features = stages::features(injected.as_ref());
    let mut target = stages::target(vm, &overlays, bus, &opts.network_map, accel, run.root())?;
    for c in stages::tune(&mut target, vm, &opts.host_topology)? {
        progress(Event::Message(format!("warning: {}: {}", c.id, c.message)));
        vm.concerns.push(c);
    }
    stages::write_target(run.root(), &target, &features)?;
    let name = target.safe_name();
    if virsh(uri, &["dominfo", &name]).is_ok() {
        return Err(usage(format!(
            "{uri} already has a domain named {name}: it is not replaced"
        )));
    }
    let xml = v2k_kvm_target::live_domain_xml(&target, &features, &backings)
        .map_err(stages::TargetError::from)?;
    let domain_xml = run.root().join("domain.xml");
    v2k_outfile::write_atomic_mode(&domain_xml, xml.as_bytes(), true, 0o644)
        .map_err(step(format!("writing {}", domain_xml.display())))?;
    stages::define(uri, &domain_xml)?;
    stand.rec.domain = Some(name.clone());
    stand.set("defined")?;
    tl.end(
        t,
        StageStatus::Done,
        Some(format!("{name} defined on {uri} over the NBD exports")),
    );

    // start (watched) and stream
    let devs: Vec<String> = (0..overlays.len())
        .map(|i| {
            let letter = (b'a' + (i % 26) as u8) as char;
            if target.disk_bus == v2k_kvm_target::DiskBus::VirtioScsi {
                format!("sd{letter}")
            } else {
                format!("vd{letter}")
            }
        })
        .collect();
    if overlays.len() > 26 {
        return Err(usage("live import takes at most 26 disks"));
    }
    let watch = injected.as_ref().filter(|_| opts.validate).map(|done| {
        let mut expect = stages::expectations(done, &target);
        // The VM's own network must answer only when it is on one (QEMU's user
        // network with restrict=on has no gateway beyond itself).
        expect.reachability =
            done.windows.is_none() && target.nics.iter().all(|n| n.target != NetTarget::User);
        let aopts = v2k_validator::AfterCutover {
            uri: uri.to_string(),
            domain: name.clone(),
            boot_timeout: opts.boot_timeout,
            work_dir: run.after_cutover_dir(),
            accel,
        };
        (expect, aopts)
    });
    stand.rec.depends_on_source = true;
    stand.set("streaming")?;
    let t = tl.begin("stream");
    let started = Instant::now();
    let validate_start = started.duration_since(tl.start).as_secs_f64();
    let boot = cx.boot;
    let (validation, streamed) = std::thread::scope(|s| {
        let watcher = watch
            .as_ref()
            .map(|(expect, aopts)| s.spawn(move || boot.after_cutover(expect, aopts)));
        if watcher.is_none() {
            virsh(uri, &["start", &name]).map_err(step(format!("starting {name}")))?;
        }
        let streamed = (|| -> crate::Result<f64> {
            // The watcher starts the domain (paused, then resumed once its console is
            // attached); block jobs need it active.
            let wait = Instant::now();
            while domstate(uri, &name) == "shut off" {
                if wait.elapsed() > START_WAIT || watcher.as_ref().is_some_and(|w| w.is_finished())
                {
                    return Err(usage(format!("{name} did not start on {uri}")));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            let pull_start = Instant::now();
            for d in &devs {
                stream::start_pull(uri, &name, d, live.bandwidth_mib)
                    .map_err(step(format!("starting the pull of {name} {d}")))?;
            }
            for (i, d) in devs.iter().enumerate() {
                let mut shown = None;
                stream::wait_pull(uri, &name, d, PULL_POLL, |p| {
                    let tenth = p.cur.saturating_mul(10) / p.end.max(1);
                    if shown != Some(tenth) {
                        shown = Some(tenth);
                        progress(Event::Disk {
                            disk: i,
                            phase: "stream",
                            done: p.cur,
                            total: p.end,
                        });
                    }
                })
                .map_err(step(format!("streaming {name} {d}")))?;
                progress(Event::Message(format!(
                    "{d}: streamed; it no longer reads from the source"
                )));
            }
            Ok(pull_start.elapsed().as_secs_f64())
        })();
        let validation = watcher.map(|w| {
            w.join().unwrap_or_else(|_| {
                Err(v2k_validator::Error::Tool(
                    "the watcher of the first boot panicked".into(),
                ))
            })
        });
        Ok::<_, Error>((validation, streamed))
    })?;
    let stream_seconds = streamed?;
    stand.rec.depends_on_source = false;
    stand.set("checking")?;
    let sizes: Vec<u64> = serving
        .servers
        .iter()
        .map(|s| s.record().disk_size)
        .collect();
    let total: u64 = sizes.iter().sum();
    let mibs = total as f64 / (1 << 20) as f64 / stream_seconds.max(0.001);
    tl.end(
        t,
        StageStatus::Done,
        Some(format!(
            "{} disk(s), {:.0} MiB in {stream_seconds:.1} s ({mibs:.1} MiB/s)",
            devs.len(),
            total as f64 / (1 << 20) as f64
        )),
    );
    let validation = validation.map(|r| {
        r.unwrap_or_else(|e| {
            let why = v2k_inventory::one_line(&e);
            progress(Event::Message(format!("checks on the target: {why}")));
            v2k_validator::unobserved(uri, accel, &why)
        })
    });
    if let Some(v) = &validation {
        tl.stages.push(report::Stage {
            name: "validate".into(),
            status: if v.passed {
                StageStatus::Done
            } else {
                StageStatus::Failed
            },
            start_seconds: validate_start,
            seconds: v.total_seconds,
            detail: v
                .evidence
                .boot_seconds
                .map(|s| format!("agent report on {uri} after {s:.1} s")),
        });
    }
    // The one definition, shared with the cold path (report::Downtime).
    let downtime =
        report::Downtime::measure(true, cx.source_off, Some(started), validation.as_ref());

    // check: the domain stopped (so that QEMU stores the guest's bitmap), every overlay
    // checked against what was served, then the standalone domain started again
    let t = tl.begin("live-check");
    stop_domain(uri, &name, progress).map_err(step(format!("stopping {name} for the check")))?;
    let mut disks = Vec::new();
    for (i, o) in overlays.iter().enumerate() {
        let record = serving.servers[i].record();
        let sock = dir.join(format!("check{i}.sock"));
        fresh_socket(&sock)?;
        let v = stream::check_overlay(&record, o, &changed[i], &sock)
            .map_err(step(format!("checking {}", o.display())))?;
        let stats = serving.servers[i].stats();
        let mut d = LiveDisk {
            disk: vm.disks[i].id.clone(),
            overlay: o.clone(),
            verdict: LiveVerdict::Verified,
            reason: None,
            served: record.hashes.len() as u64,
            changed_by_v2k: changed[i].len() as u64,
            written_by_guest: 0,
            verified: 0,
            mismatched: Vec::new(),
            bytes_served: stats.bytes_served,
            retries: stats.source.retries,
            logins: stats.source.logins,
        };
        match v {
            Verdict::Verified(c) | Verdict::Mismatch(c) => {
                d.verdict = if c.mismatched.is_empty() {
                    LiveVerdict::Verified
                } else {
                    LiveVerdict::Mismatch
                };
                d.written_by_guest = c.written_by_guest;
                d.verified = c.verified;
                d.mismatched = c.mismatched;
            }
            Verdict::CannotTell(why) => {
                d.verdict = LiveVerdict::CannotTell;
                d.reason = Some(why);
            }
        }
        disks.push(d);
    }
    serving.shutdown();
    // Standalone now: the domain is defined again without the NBD backing.
    let xml = v2k_kvm_target::domain_xml(&target, &features);
    v2k_outfile::write_atomic_mode(&domain_xml, xml.as_bytes(), true, 0o644)
        .map_err(step(format!("writing {}", domain_xml.display())))?;
    stages::define(uri, &domain_xml)?;
    virsh(uri, &["start", &name]).map_err(step(format!("starting {name} again")))?;
    let verdict = if disks.iter().any(|d| d.verdict == LiveVerdict::Mismatch) {
        LiveVerdict::Mismatch
    } else if disks.iter().any(|d| d.verdict == LiveVerdict::CannotTell) {
        LiveVerdict::CannotTell
    } else {
        LiveVerdict::Verified
    };
    let sum = |f: fn(&LiveDisk) -> u64| disks.iter().map(f).sum::<u64>();
    let live_report = LiveReport {
        uri: uri.to_string(),
        domain: name.clone(),
        verdict,
        served: sum(|d| d.served),
        changed_by_v2k: sum(|d| d.changed_by_v2k),
        written_by_guest: sum(|d| d.written_by_guest),
        verified: sum(|d| d.verified),
        mismatched: sum(|d| d.mismatched.len() as u64),
        stream_seconds,
        stream_mib_per_second: mibs,
        bandwidth_mib: live.bandwidth_mib,
        source_off_at: stand.rec.source_off_at,
        downtime_seconds: downtime.seconds,
        disks,
    };
    let detail = format!(
        "{:?}: {} cluster(s) served, {} changed by v2k, {} written by the guest, {} verified, {} mismatched; {name} running standalone",
        live_report.verdict,
        live_report.served,
        live_report.changed_by_v2k,
        live_report.written_by_guest,
        live_report.verified,
        live_report.mismatched
    );
    let status = if verdict == LiveVerdict::Mismatch {
        StageStatus::Failed
    } else {
        StageStatus::Done
    };
    tl.end(t, status, Some(detail));
    if verdict == LiveVerdict::CannotTell {
        progress(Event::Message(
            "warning: the streamed disks could not be checked (see the report's live section)"
                .into(),
        ));
    }
    stand.set("done")?;

    // report
    let mut rep = stages::report(
        vm,
        &opts.source,
        &target,
        stages::Converted::default(),
        injected.map(|i| i.log),
        validation,
        std::mem::take(&mut tl.stages),
    );
    rep.target_hardware = report::target_hardware(&target, &sizes);
    if verdict == LiveVerdict::Mismatch && rep.result == report::Outcome::Validated {
        rep.result = report::Outcome::ValidationFailed;
    }
    rep.live = Some(live_report);
    rep.downtime = Some(downtime);
    run.save_report(&rep)?;
    Ok(Outcome {
        report: rep,
        report_dir: opts.out.clone(),
    })
}

/// Shuts `name` down (ACPI), or stops it hard when it does not within
/// [`SHUTDOWN_WAIT`] (`virsh destroy` sends SIGTERM: QEMU still stores the bitmap).
fn stop_domain(uri: &str, name: &str, progress: &dyn Fn(Event)) -> Result<(), BoxError> {
    if domstate(uri, name) == "shut off" {
        return Ok(());
    }
    progress(Event::Message(format!(
        "shutting {name} down: QEMU stores the guest's bitmap when it closes the disks"
    )));
    let _ = virsh(uri, &["shutdown", name]);
    let t = Instant::now();
    while t.elapsed() < SHUTDOWN_WAIT {
        if domstate(uri, name) == "shut off" {
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    progress(Event::Message(format!(
        "{name} did not shut down within {} s: stopping it",
        SHUTDOWN_WAIT.as_secs()
    )));
    virsh(uri, &["destroy", name])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_socket_is_removed_and_anything_else_refused() {
        let d = tempfile::tempdir().unwrap();
        let missing = d.path().join("none.sock");
        fresh_socket(&missing).unwrap();
        let sock = d.path().join("disk0.sock");
        let l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        drop(l);
        fresh_socket(&sock).unwrap();
        assert!(sock.symlink_metadata().is_err(), "removed");
        let file = d.path().join("disk1.sock");
        std::fs::write(&file, b"x").unwrap();
        let e = fresh_socket(&file).unwrap_err();
        let e = v2k_inventory::one_line(&e);
        assert!(e.contains("not a socket"), "{e}");
        assert!(file.exists(), "kept");
    }

    #[test]
    fn the_record_says_where_the_import_stood() {
        let d = tempfile::tempdir().unwrap();
        let run = RunDir::at(d.path());
        let mut stand = Stand {
            run: &run,
            rec: LiveRecord {
                state: "starting".into(),
                source_off_at: 5,
                uri: "qemu:///system".into(),
                ..LiveRecord::default()
            },
        };
        stand.set("serving").unwrap();
        let e = stand.fail(usage("the server broke"), &|_| {});
        assert_eq!(e.to_string(), "live import");
        let rec: LiveRecord =
            serde_json::from_slice(&std::fs::read(d.path().join(RECORD_FILE)).unwrap()).unwrap();
        assert_eq!(rec.state, "failed");
        assert_eq!(rec.source_off_at, 5);
        assert_eq!(rec.error.as_deref(), Some("live import: the server broke"));
    }
}
