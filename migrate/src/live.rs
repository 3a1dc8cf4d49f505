//! The live stage (`v2k migrate vsphere://… --live`, issue 19): instead of copying the
//! disks before the first boot, the VM starts on KVM right after the source is powered
//! off, and its disks stream in behind it.
//!
//! ```text
//!  source off (cutover) ─▶ serve: live::serve per disk on RUN/live/diskN.sock (0600,
//!  the libvirt DAC user's) ─▶ RUN/live/<disk>.qcow2 overlays over them ─▶ inject (on the
//!  overlays) ─▶ clusters changed by v2k noted, v2k-guest bitmap added ─▶ target: live
//!  domain XML (NBD backing, rerror/werror=stop) defined ─▶ started and watched (the
//!  checks after cutover) while blockpull streams every disk (outages waited out:
//!  [`outage`]) ─▶ the standalone domain defined ─▶ every served cluster the guest and
//!  v2k did not write checked against its served hash, the domain running on (read
//!  through QEMU's own NBD server: `stream::check_running`) ─▶ report (live section,
//!  downtime)
//! ```
//! The servers live on this stage's own tokio runtime until every pull has ended and
//! the overlays are checked. `live.json` in the run directory says where the stage
//! stood (and the error that stopped it); the source is never powered on here, and a
//! failure after the domain started stops the domain, which cannot run without the
//! server. A rerun resumes a killed import ([`resumable`]: serves again on the same
//! sockets with the journaled record, skips what the killed run did, and streams what
//! is left); any other overlays an earlier run left are refused (docs/live-import.md).

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

mod outage;
pub use outage::{DEFAULT_OUTAGE_LIMIT, MAX_UNEXPLAINED};

/// The export name every disk's server uses (one export per socket).
const EXPORT: &str = "disk";
/// The run directory's file saying where a live import stands.
pub const RECORD_FILE: &str = "live.json";
/// How long the domain may take to become active after the watcher starts it.
const START_WAIT: Duration = Duration::from_secs(120);
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
    /// How long v2k's server holds one read through a source outage before QEMU's
    /// request fails (`--live-hold`; [`RetryPolicy::hold`], 10 min by default).
    pub hold: Duration,
    /// How long the stream waits for a source that went away before it gives up
    /// (`--live-outage-limit`; [`DEFAULT_OUTAGE_LIMIT`]).
    pub outage_limit: Duration,
}

impl LiveOptions {
    /// In `uri`'s libvirt, the server's hold and the outage limit at their defaults
    /// (what a wave plan's `live: true` runs with).
    pub fn new(uri: impl Into<String>, bandwidth_mib: Option<u64>) -> LiveOptions {
        LiveOptions {
            uri: uri.into(),
            bandwidth_mib,
            hold: RetryPolicy::default().hold,
            outage_limit: DEFAULT_OUTAGE_LIMIT,
        }
    }
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
    /// This disk's pull started again after it failed (an outage past the hold).
    #[serde(default)]
    pub pull_restarts: u64,
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
    /// Times the stream found the source away (a pull failed or the domain paused on
    /// an I/O error, and the source did not answer), and the seconds it waited for it.
    #[serde(default)]
    pub outages: u64,
    #[serde(default)]
    pub outage_seconds: f64,
    /// Pulls started again (all disks) and resumes of a domain paused by an I/O error.
    #[serde(default)]
    pub pull_restarts: u64,
    #[serde(default)]
    pub resumes: u64,
    pub disks: Vec<LiveDisk>,
}

/// `live.json`: where a live import stands, rewritten at each step.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct LiveRecord {
    /// `serving`, `injected`, `defined`, `streaming`, `outage` (waiting for the source),
    /// `checking`, `done` or `failed`.
    pub state: String,
    pub source_off_at: u64,
    /// The source's address (`vsphere://USER@HOST/…`, no secret): what `v2k rollback`
    /// powers back on.
    #[serde(default)]
    pub source: String,
    pub uri: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// The defined domain's UUID: `v2k rollback` touches no other domain of that name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain_uuid: Option<String>,
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
    /// The served-hash journal (`live::Journal`): what was served survives a kill.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hashes: Option<PathBuf>,
}

impl LiveRecord {
    pub(crate) fn save(&self, run: &RunDir) -> crate::Result<()> {
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
            source: cx.opts.source.display().to_string(),
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
    let resume = resumable(run, uri, &overlays);
    if let Some(prev) = &resume {
        progress(Event::Message(format!(
            "resuming the live import a killed run left ({}): serving again on the same \
             sockets, with the record of what it served",
            prev.state
        )));
        stand.rec = prev.clone();
        stand.rec.error = None;
    }
    for o in overlays.iter().filter(|_| resume.is_none()) {
        if o.symlink_metadata().is_ok() {
            return Err(usage(format!(
                "{}: an earlier live import left this overlay and cannot be resumed \
                 (only one killed while streaming, its domain still defined, can: \
                 docs/live-import.md): `v2k rollback` on this run directory stops its \
                 domain and powers the source on; or make sure no domain uses it, then \
                 use a new run directory",
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
    let mut journals = Vec::new();
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
                        RetryPolicy {
                            hold: live.hold,
                            ..RetryPolicy::default()
                        },
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
        let hashes = dir.join(format!("disk{i}.hashes"));
        v2k_live::Journal::open(&hashes, server.record().disk_size)
            .and_then(|j| server.journal_to(j))
            .map_err(step(format!("opening {}", hashes.display())))?;
        journals.push(hashes.clone());
        if resume.is_some() {
            // What the killed run served (its journal) is this run's record too.
            v2k_live::Journal::load(&hashes)
                .and_then(|r| server.seed(r))
                .map_err(step(format!("reading {}", hashes.display())))?;
        }
        serving.sources.push(src);
        serving.servers.push(server);
        backings.push(NbdBacking {
            socket: sock.clone(),
            export: EXPORT.into(),
        });
        if resume.is_some() {
            continue;
        }
        overlay::create_overlay(&overlays[i], &sock, EXPORT)
            .map_err(step(format!("creating the overlay of disk {}", disk.id)))?;
        stand.rec.disks.push(RecordDisk {
            disk: disk.id.clone(),
            socket: sock.clone(),
            overlay: overlays[i].clone(),
            changed_by_v2k: Vec::new(),
            hashes: Some(dir.join(format!("disk{i}.hashes"))),
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
    let injected = if resume.is_some() {
        tl.skip(
            "inject",
            "resumed: the killed run had injected the overlays",
        );
        if !opts.inject {
            vm.concerns.push(stages::not_converted_concern());
        }
        None
    } else if opts.inject {
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
    if resume.is_some() {
        changed = stand
            .rec
            .disks
            .iter()
            .map(|d| d.changed_by_v2k.iter().copied().collect())
            .collect();
    }
    for (o, r) in overlays
        .iter()
        .zip(stand.rec.disks.iter_mut())
        .filter(|_| resume.is_none())
    {
        let c = overlay::allocated_clusters(o)
            .map_err(step(format!("reading what v2k changed in {}", o.display())))?;
        overlay::add_guest_bitmap(o).map_err(step(format!(
            "adding the guest's bitmap to {}",
            o.display()
        )))?;
        r.changed_by_v2k = c.iter().copied().collect();
        changed.push(c);
    }
    if resume.is_none() {
        stand.set("injected")?;
    }

    // target: the live domain, defined
    let t = tl.begin("target");
    let features = match (&resume, run.load_windows()) {
        // The killed run's guest features (a Windows guest's RTC) come from its record.
        (Some(_), Ok(Some(w))) => v2k_kvm_target::GuestFeatures::windows(w.inspection.rtc_utc),
        _ => stages::features(injected.as_ref()),
    };
    let mut target = stages::target(vm, &overlays, bus, &opts.network_map, accel, run.root())?;
    for c in stages::tune(&mut target, vm, &opts.host_topology)? {
        progress(Event::Message(format!("warning: {}: {}", c.id, c.message)));
        vm.concerns.push(c);
    }
    stages::write_target(run.root(), &target, &features)?;
    let name = target.safe_name();
    let domain_xml = run.root().join("domain.xml");
    if resume.is_some() {
        tl.end(
            t,
            StageStatus::Done,
            Some(format!("{name} on {uri}: defined by the killed run")),
        );
    } else {
        define_live(uri, &name, &target, &features, &backings, run, stand)?;
        tl.end(
            t,
            StageStatus::Done,
            Some(format!("{name} defined on {uri} over the NBD exports")),
        );
    }

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
        // (A resumed import's domain may still run, or be paused by the outage its
        // server's end caused.)
        if watcher.is_none() && domstate(uri, &name) == "shut off" {
            virsh(uri, &["start", &name]).map_err(step(format!("starting {name}")))?;
        }
        let streamed = (|| -> crate::Result<(f64, outage::Faults)> {
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
            outage::stream_all(
                uri,
                &name,
                &devs,
                live.bandwidth_mib,
                live.outage_limit,
                &mut outage::Served {
                    rt: &serving.rt,
                    sources: &serving.sources,
                    servers: &serving.servers,
                    journals: &journals,
                },
                stand,
                progress,
            )
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
    let (stream_seconds, faults) = streamed?;
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

    // check: every overlay against what was served, while the domain keeps running
    // (through QEMU's own NBD server; a domain that is not running, e.g. a guest that
    // shut itself down, is checked from its files and started again after)
    let t = tl.begin("live-check");
    // Standalone first: the persistent definition loses the NBD backing (the running
    // domain's did when its pulls ended), so that a failed check leaves a domain that
    // starts.
    let xml = v2k_kvm_target::domain_xml(&target, &features);
    v2k_outfile::write_atomic_mode(&domain_xml, xml.as_bytes(), true, 0o644)
        .map_err(step(format!("writing {}", domain_xml.display())))?;
    stages::define(uri, &domain_xml)?;
    let running = domstate(uri, &name) != "shut off";
    let qemu_dir = dir.join("qemu");
    if running {
        // QEMU's user creates its server's socket here.
        v2k_outfile::create_dir(&qemu_dir)
            .map_err(step(format!("creating {}", qemu_dir.display())))?;
        std::os::unix::fs::chown(&qemu_dir, Some(label.uid), Some(label.gid))
            .and_then(|_| {
                std::fs::set_permissions(&qemu_dir, std::fs::Permissions::from_mode(0o700))
            })
            .map_err(step(format!(
                "handing {} to QEMU's user",
                qemu_dir.display()
            )))?;
    }
    let mut disks = Vec::new();
    for (i, o) in overlays.iter().enumerate() {
        let record = serving.servers[i].record();
        let v = if running {
            stream::check_running(
                uri,
                &name,
                &record,
                o,
                &changed[i],
                &qemu_dir.join(format!("check{i}.sock")),
            )
        } else {
            let sock = dir.join(format!("check{i}.sock"));
            fresh_socket(&sock)?;
            stream::check_overlay(&record, o, &changed[i], &sock)
        }
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
            pull_restarts: faults.pull_restarts[i],
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
    if running {
        let _ = std::fs::remove_dir_all(&qemu_dir);
    }
    serving.shutdown();
    if !running {
        virsh(uri, &["start", &name]).map_err(step(format!("starting {name} again")))?;
    }
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
        outages: faults.outages,
        outage_seconds: faults.outage_seconds,
        pull_restarts: faults.pull_restarts.iter().sum(),
        resumes: faults.resumes,
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

/// Defines the live domain (its disks over the NBD exports) and records it; a domain
/// of that name already there is not replaced.
fn define_live(
    uri: &str,
    name: &str,
    target: &v2k_kvm_target::Target,
    features: &v2k_kvm_target::GuestFeatures,
    backings: &[NbdBacking],
    run: &RunDir,
    stand: &mut Stand,
) -> crate::Result<()> {
    if virsh(uri, &["dominfo", name]).is_ok() {
        return Err(usage(format!(
            "{uri} already has a domain named {name}: it is not replaced"
        )));
    }
    let xml = v2k_kvm_target::live_domain_xml(target, features, backings)
        .map_err(stages::TargetError::from)?;
    let domain_xml = run.root().join("domain.xml");
    v2k_outfile::write_atomic_mode(&domain_xml, xml.as_bytes(), true, 0o644)
        .map_err(step(format!("writing {}", domain_xml.display())))?;
    stages::define(uri, &domain_xml)?;
    stand.rec.domain = Some(name.to_string());
    stand.rec.domain_uuid = virsh(uri, &["domuuid", name])
        .ok()
        .map(|u| u.trim().to_string());
    stand.set("defined")
}

/// The record of a live import a killed run left in `run`, when it can be resumed:
/// it was streaming (or waiting out an outage), its domain is still defined with the
/// UUID it recorded, and every overlay is there. Anything else is refused as before.
fn resumable(run: &RunDir, uri: &str, overlays: &[PathBuf]) -> Option<LiveRecord> {
    let prev = run.load_live().ok()?;
    let streaming = matches!(prev.state.as_str(), "streaming" | "outage")
        && prev.depends_on_source
        && prev.uri == uri;
    let domain = prev.domain.as_deref().filter(|_| streaming)?;
    let ours = virsh(uri, &["domuuid", domain]).ok()?;
    let fits = prev.domain_uuid.as_deref() == Some(ours.trim())
        && prev.disks.len() == overlays.len()
        && prev
            .disks
            .iter()
            .zip(overlays)
            .all(|(d, o)| d.overlay == *o && o.is_file());
    fits.then_some(prev)
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
    fn only_an_import_killed_while_streaming_is_resumable() {
        let d = tempfile::tempdir().unwrap();
        let run = RunDir::at(d.path());
        assert!(
            resumable(&run, "qemu:///system", &[]).is_none(),
            "no live.json"
        );
        for (state, depends) in [("failed", false), ("done", false), ("injected", false)] {
            LiveRecord {
                state: state.into(),
                uri: "qemu:///system".into(),
                domain: Some("web".into()),
                depends_on_source: depends,
                ..LiveRecord::default()
            }
            .save(&run)
            .unwrap();
            assert!(
                resumable(&run, "qemu:///system", &[]).is_none(),
                "{state} is not resumable"
            );
        }
        // Streaming, but on another libvirt: not this run's to resume.
        LiveRecord {
            state: "streaming".into(),
            uri: "qemu+ssh://elsewhere/system".into(),
            domain: Some("web".into()),
            depends_on_source: true,
            ..LiveRecord::default()
        }
        .save(&run)
        .unwrap();
        assert!(resumable(&run, "qemu:///system", &[]).is_none());
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
