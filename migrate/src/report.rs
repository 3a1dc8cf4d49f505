//! The migration report: `report.json` (schema 2, docs/report.md) and a
//! self-contained `report.html` (inline CSS, the console screenshot embedded as a
//! data URI, no external assets) that an application owner can read.
//!
//! Every part is a typed value from the stage that made it — the inventory's concerns,
//! the converter's manifests, the injector's conversion log, the validator's checks —
//! so renaming a field fails to compile instead of printing an empty cell. Schema 1
//! (v2k before the typed pipeline) is still readable through [`Summary`], the part of
//! a report that the wave report needs.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use v2k_converters::manifest::Manifest;
use v2k_drivers_injector::ConversionLog;
use v2k_inventory::model::{Concern, Vm};
use v2k_kvm_target::Target;
pub use v2k_validator::{Check, Validation};

/// The schema this version writes.
pub const SCHEMA_VERSION: u32 = 2;
/// The oldest schema [`Summary`] still reads (schema 1 held the same concerns and
/// validation, with untyped hardware rows).
pub(crate) const OLDEST_READABLE_SCHEMA: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct Report {
    pub schema_version: u32,
    pub v2k_version: String,
    pub vm: String,
    /// The VMX, OVF, OVA or `vsphere://` address the VM came from.
    pub source: String,
    pub result: Outcome,
    pub source_hardware: Hardware,
    pub target_hardware: Hardware,
    /// Pre-flight concerns from the inventory, plus what the run itself found (a
    /// guest that was not converted, for one).
    #[serde(default)]
    pub concerns: Vec<Concern>,
    /// Each VMware tuning setting and what the KVM target made of it (shown in the
    /// hardware table as VMware → KVM).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tuning: Vec<v2k_kvm_target::TuningMapping>,
    /// One converter manifest per disk (docs/convert.md).
    #[serde(default)]
    pub disks: Vec<Manifest>,
    /// The injector's conversion log (docs/inject.md); absent with `--no-inject`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_changes: Option<ConversionLog>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<Validation>,
    /// Before (a baseline) and after (the validation's agent), per metric.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub performance: Option<crate::performance::Performance>,
    /// The same comparison with the first boot on the destination as "after" (the
    /// production host, where its timings mean most): with a baseline and `--start`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub performance_after_cutover: Option<crate::performance::Performance>,
    /// The stages in the order they ran, with their start and duration.
    pub stages: Vec<Stage>,
    /// Downloads from a remote source that broke and resumed where they stopped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resumed_downloads: Vec<Resume>,
    /// Where `--to` delivered the VM: the destination's volumes and domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<crate::deliver::Delivered>,
    /// The first boot on the destination, judged there (`--start`): the validation's
    /// checks plus the VM's services, gateway and resolvers. Its own verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_cutover: Option<Validation>,
    /// The steps of `v2k rollback`, once it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<crate::rollback::Record>,
    /// A live import's stream and its check against the served bytes (`--live`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<crate::live::LiveReport>,
    /// How long the VM was down, live or cold ([`Downtime`]): runs that powered a
    /// vSphere source off (`--cutover`, `--live`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downtime: Option<Downtime>,
}

/// How long the VM was down at its cutover, the one definition for live and cold
/// runs: from the instant v2k found the source powered off (after its cutover) to the
/// agent's report on the target (the domain's start plus the agent's `boot-seconds`,
/// counted from the watched start). Cold, the target is the destination (`--to …
/// --start`, its checks after cutover); live, it is the domain on the overlays.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct Downtime {
    /// Imported live (`--live`), or copied first (cold).
    pub live: bool,
    /// Unix seconds when the source was found powered off.
    pub source_off_at: u64,
    /// Absent when no agent reported on the target: the VM was not started there
    /// (cold without `--start`), or its first boot did not report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
}

impl Downtime {
    /// The downtime of a run whose source was found off at `source_off` and whose
    /// target was started at `target_started`, judged by `on_target` (the watched
    /// first boot there, when there was one).
    pub fn measure(
        live: bool,
        source_off: std::time::Instant,
        target_started: Option<std::time::Instant>,
        on_target: Option<&Validation>,
    ) -> Downtime {
        let off_to_start = target_started.map(|t| t.saturating_duration_since(source_off));
        Downtime {
            live,
            source_off_at: unix_seconds_at(source_off),
            seconds: off_to_start.and_then(|d| downtime_seconds(d, on_target)),
        }
    }
}

/// The arithmetic of [`Downtime`]: source off → target start, plus the agent's
/// report after the start; nothing when the agent did not report (a boot that timed
/// out has a `boot-seconds` of its own, but no report to end the downtime).
pub fn downtime_seconds(
    off_to_start: std::time::Duration,
    on_target: Option<&Validation>,
) -> Option<f64> {
    let e = &on_target?.evidence;
    let boot = e.boot_seconds.filter(|_| e.agent.is_some())?;
    Some(off_to_start.as_secs_f64() + boot)
}

/// The Unix time (seconds, at least 1) of an instant in the past.
pub fn unix_seconds_at(t: std::time::Instant) -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        .saturating_sub(t.elapsed().as_secs())
        .max(1)
}

/// A download that broke and resumed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct Resume {
    /// The disk, in VM order.
    pub disk: usize,
    /// The byte offset the download resumed at.
    pub at: u64,
    /// Why the connection broke.
    pub reason: String,
}

/// What the run achieved.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Converted, booted on KVM and every check passed.
    Validated,
    /// Converted and booted, and at least one check failed.
    ValidationFailed,
    /// Converted; the validation boot was not asked for.
    NotValidated,
    /// Validated, but a figure regressed beyond its threshold and the run was asked
    /// to fail on that (`--fail-on-regression`, `fail-on-regression: true`).
    PerformanceRegression,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Validated => "validated",
            Outcome::ValidationFailed => "validation-failed",
            Outcome::NotValidated => "not-validated",
            Outcome::PerformanceRegression => "performance-regression",
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One side of the hardware comparison.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct Hardware {
    /// `bios`, `efi` or `efi secure-boot`.
    pub firmware: String,
    pub cpus: u32,
    pub memory_mib: u64,
    pub disks: Vec<DiskRow>,
    pub nics: Vec<NicRow>,
}

/// A disk as one side sees it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct DiskRow {
    /// The VM's disk id (`scsi0:0`, an OVF disk id) or the target's device (`vda`).
    pub id: String,
    /// `scsi`, `sata`, `ide`, `nvme` (VMware) or `virtio-blk`, `virtio-scsi` (KVM).
    pub bus: String,
    /// The controller model (`pvscsi`, `lsilogic`…) and index, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<u32>,
    /// Virtual size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<u64>,
    /// The target's disk file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
}

/// A NIC as one side sees it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct NicRow {
    /// `ethernet0` (VMware) or `net0` (KVM).
    pub id: String,
    /// `vmxnet3`, `e1000e`… or `virtio-net`.
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// The VMware port group, or where the KVM NIC is attached (`user`,
    /// `network:NAME`, `bridge:NAME`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
}

/// One stage of the run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct Stage {
    pub name: String,
    pub status: StageStatus,
    /// Seconds from the start of the run to the start of this stage.
    #[serde(default)]
    pub start_seconds: f64,
    pub seconds: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// How a stage ended.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum StageStatus {
    Done,
    /// Finished by an earlier run and re-verified by content hash.
    Reused,
    /// Ran and found a problem (a failed validation).
    Failed,
    /// Not asked for (`--no-validate`, `--no-inject`).
    Skipped,
}

impl StageStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            StageStatus::Done => "done",
            StageStatus::Reused => "reused",
            StageStatus::Failed => "failed",
            StageStatus::Skipped => "skipped",
        }
    }
}

/// The VMware side, from the VM model.
pub fn source_hardware(vm: &Vm) -> Hardware {
    let controller = |bus, index| {
        vm.controllers
            .iter()
            .find(|c| c.bus == bus && c.index == index)
            .map(|c| format!("{}{index}", kebab(&c.model)))
    };
    Hardware {
        firmware: match (vm.firmware.kind, vm.firmware.secure_boot) {
            (v2k_inventory::model::FirmwareKind::Bios, _) => "bios".into(),
            (_, false) => "efi".into(),
            (_, true) => "efi secure-boot".into(),
        },
        cpus: vm.cpu.count,
        memory_mib: vm.memory_mib,
        disks: vm
            .disks
            .iter()
            .map(|d| DiskRow {
                id: d.id.clone(),
                bus: d.slot.map(|s| kebab(&s.bus)).unwrap_or_default(),
                controller: d.slot.and_then(|s| controller(s.bus, s.controller)),
                unit: d.slot.map(|s| s.unit),
                capacity: d.capacity,
                file: None,
            })
            .collect(),
        nics: vm
            .nics
            .iter()
            .map(|n| NicRow {
                id: format!("ethernet{}", n.index),
                model: n.raw_model.clone().unwrap_or_else(|| kebab(&n.model)),
                mac: n.mac.clone(),
                network: n.network.clone(),
            })
            .collect(),
    }
}

/// The KVM side, from the target; `sizes` are the disks' virtual sizes in order.
pub fn target_hardware(t: &Target, sizes: &[u64]) -> Hardware {
    let scsi = t.disk_bus == v2k_kvm_target::DiskBus::VirtioScsi;
    Hardware {
        firmware: t.firmware.describe().into(),
        cpus: t.vcpus,
        memory_mib: t.memory_mib,
        disks: t
            .disks
            .iter()
            .enumerate()
            .map(|(i, d)| DiskRow {
                id: format!("{}{}", if scsi { "sd" } else { "vd" }, letter(i)),
                bus: t.disk_bus.name().into(),
                controller: scsi.then(|| "virtio-scsi0".into()),
                unit: scsi.then_some(i as u32),
                capacity: sizes.get(i).copied(),
                file: Some(d.clone()),
            })
            .collect(),
        nics: t
            .nics
            .iter()
            .enumerate()
            .map(|(i, n)| NicRow {
                id: format!("net{i}"),
                model: "virtio-net".into(),
                mac: Some(n.mac.clone()),
                network: Some(match &n.target {
                    v2k_kvm_target::NetTarget::User => "user (isolated)".into(),
                    v2k_kvm_target::NetTarget::Network(x) => format!("network:{x}"),
                    v2k_kvm_target::NetTarget::Bridge(x) => format!("bridge:{x}"),
                }),
            })
            .collect(),
    }
}

fn letter(i: usize) -> String {
    if i < 26 {
        ((b'a' + i as u8) as char).to_string()
    } else {
        format!(
            "{}{}",
            (b'a' + (i / 26 - 1) as u8) as char,
            (b'a' + (i % 26) as u8) as char
        )
    }
}

/// An enum's kebab-case serde name (`Pvscsi` → `pvscsi`).
fn kebab<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The part of a report (any readable schema) that the wave report shows.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct Summary {
    pub schema_version: u32,
    #[serde(default)]
    pub concerns: Vec<Concern>,
    #[serde(default)]
    pub validation: Option<Validation>,
    #[serde(default)]
    pub performance: Option<crate::performance::Brief>,
    #[serde(default)]
    pub downtime: Option<Downtime>,
}

/// Why a report cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("reading {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a v2k report")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "{path}: report schema {found} is not readable by this v2k (reads {OLDEST_READABLE_SCHEMA} to {SCHEMA_VERSION})"
    )]
    Schema { path: PathBuf, found: u32 },
}

/// Reads the summary of `report.json` of schema 1 or 2, or names the schema it cannot read.
pub fn read_summary(path: &Path) -> Result<Summary, ReadError> {
    let b = std::fs::read(path).map_err(|source| ReadError::Io {
        path: path.into(),
        source,
    })?;
    #[derive(Deserialize)]
    #[serde(rename_all = "kebab-case")]
    struct Version {
        schema_version: u32,
    }
    let parse = |source| ReadError::Parse {
        path: path.into(),
        source,
    };
    let v: Version = serde_json::from_slice(&b).map_err(parse)?;
    if !(OLDEST_READABLE_SCHEMA..=SCHEMA_VERSION).contains(&v.schema_version) {
        return Err(ReadError::Schema {
            path: path.into(),
            found: v.schema_version,
        });
    }
    serde_json::from_slice(&b).map_err(parse)
}

/// HTML-escapes untrusted text; control characters are dropped.
/// The downtime in one line, live or cold, with its definition.
fn downtime_html(h: &mut String, d: &Downtime) {
    let how = if d.live {
        "live import"
    } else {
        "cold (copied, then started)"
    };
    let _ = write!(
        h,
        "<p>Downtime ({how}; from the source's power-off to the agent's report on the target): <b>{}</b></p>",
        match d.seconds {
            Some(s) => format!("{s:.1} s"),
            None => "not measured (no agent report on the target)".into(),
        }
    );
}

/// The live section: the verdict, the counts per disk, the stream and the downtime.
fn live_html(h: &mut String, l: &crate::live::LiveReport) {
    use crate::live::LiveVerdict;
    let (class, verdict) = match l.verdict {
        LiveVerdict::Verified => ("pass", "verified"),
        LiveVerdict::Mismatch => ("fail", "MISMATCH"),
        LiveVerdict::CannotTell => ("warning", "cannot tell"),
    };
    let downtime = l
        .downtime_seconds
        .map(|d| format!("{d:.1} s"))
        .unwrap_or_else(|| "not measured (no agent report)".into());
    let _ = write!(
        h,
        "<h2>Live import</h2><p><span class=\"badge {class}\">{verdict}</span> \
         Domain <code>{}</code> on <code>{}</code>. Downtime (source off → agent report on \
         the target): <b>{downtime}</b>. Streamed in {:.1} s ({:.1} MiB/s{}).</p>\
         <table><tr><th>Disk</th><th>Verdict</th><th>Served</th><th>Changed by v2k</th>\
         <th>Written by the guest</th><th>Verified</th><th>Mismatched</th><th>Bytes served</th>\
         <th>Retries</th></tr>",
        esc(&l.domain),
        esc(&l.uri),
        l.stream_seconds,
        l.stream_mib_per_second,
        l.bandwidth_mib
            .map(|b| format!(", limit {b} MiB/s"))
            .unwrap_or_default(),
    );
    for d in &l.disks {
        let v = match d.verdict {
            LiveVerdict::Verified => "verified".to_string(),
            LiveVerdict::Mismatch => format!("mismatch at clusters {:?}", d.mismatched),
            LiveVerdict::CannotTell => format!(
                "cannot tell: {}",
                d.reason
                    .as_deref()
                    .unwrap_or("the guest's writes are unknown")
            ),
        };
        let _ = write!(
            h,
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&d.disk),
            esc(&v),
            d.served,
            d.changed_by_v2k,
            d.written_by_guest,
            d.verified,
            d.mismatched.len(),
            human_bytes(d.bytes_served),
            d.retries,
        );
    }
    h.push_str("</table><p>Counts are 64 KiB clusters; every served cluster neither v2k nor the guest wrote was compared with the hash taken as it was served.</p>");
    if l.outages > 0 || l.pull_restarts > 0 || l.resumes > 0 {
        let _ = write!(
            h,
            "<p>Source outages during the stream: {} ({:.0} s waited for the source); \
             pulls started again: {}; resumes of the paused domain: {}.</p>",
            l.outages, l.outage_seconds, l.pull_restarts, l.resumes
        );
    }
}

pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c if c.is_control() && c != '\n' => {}
            c => o.push(c),
        }
    }
    o
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding, for the embedded screenshot.
pub fn base64(data: &[u8]) -> String {
    let mut o = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        o.push(B64[(n >> 18) as usize & 63] as char);
        o.push(B64[(n >> 12) as usize & 63] as char);
        o.push(if c.len() > 1 {
            B64[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        o.push(if c.len() > 2 {
            B64[n as usize & 63] as char
        } else {
            '='
        });
    }
    o
}

/// A byte count for people: `2.0 GiB`, `512 MiB`, `4.0 KiB`, `17 B`.
pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if v.fract() == 0.0 {
        format!("{v:.0} {}", UNITS[u])
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

const CSS: &str = "body{font-family:sans-serif;margin:2em;color:#222;max-width:1100px}\
h1{margin-bottom:0}.sub{color:#666;margin-top:.2em}table{border-collapse:collapse;margin:1em 0;width:100%}\
td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top;font-size:90%}\
th{background:#f3f3f3}.pass{color:#fff;background:#2e7d32}.fail{color:#fff;background:#c62828}\
.badge{display:inline-block;padding:.2em .8em;border-radius:1em;font-weight:bold}\
.critical{color:#c62828;font-weight:bold}.warning{color:#b26a00}code{font-size:85%}\
img{max-width:100%;border:1px solid #999}.bar{background:#e3e3e3;height:1em;position:relative;min-width:20em}\
.bar span{position:absolute;top:0;height:1em;background:#1565c0}";

fn disk_rows(rows: &[DiskRow]) -> String {
    rows.iter()
        .map(|d| {
            let mut s = format!("{} ({}", d.id, d.bus);
            if let Some(c) = &d.controller {
                let _ = write!(s, " {c}");
            }
            if let Some(u) = d.unit {
                let _ = write!(s, " unit {u}");
            }
            s.push(')');
            if let Some(c) = d.capacity {
                let _ = write!(s, " {}", human_bytes(c));
            }
            s
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn nic_rows(rows: &[NicRow]) -> String {
    rows.iter()
        .map(|n| {
            format!(
                "{} {} {} → {}",
                n.id,
                n.model,
                n.mac.as_deref().unwrap_or("(no MAC)"),
                n.network.as_deref().unwrap_or("(no network)")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Renders the report as one self-contained HTML page.
/// One boot's checks: how it ran, each check with its reason, and the console.
fn checks_html(h: &mut String, v: &Validation, booted: &str, console: &str) {
    let backend = match &v.backend {
        v2k_validator::Backend::Libvirt { uri } => format!("libvirt {uri}"),
        v2k_validator::Backend::Qemu => "QEMU".into(),
    };
    let _ = write!(
        h,
        "<p>{booted} {} ({}); agent report after {}.</p><table><tr><th>Check</th><th>Result</th><th>Reason</th></tr>",
        esc(&backend),
        v.accel.as_str(),
        v.evidence.boot_seconds.map_or("—".to_string(), |s| format!("{s:.1} s")),
    );
    if let Some(r) = &v.evidence.restarted {
        let _ = write!(h, "<p class=\"warning\">{}</p>", esc(r));
    }
    for c in &v.checks {
        let _ = write!(
            h,
            "<tr><td>{}</td><td><span class=\"badge {}\">{}</span></td><td>{}</td></tr>",
            esc(&c.id),
            if c.passed { "pass" } else { "fail" },
            if c.passed { "pass" } else { "fail" },
            esc(&c.reason)
        );
    }
    h.push_str("</table>");
    if let Some(shot) = &v.evidence.screenshot {
        if let Ok(png) = std::fs::read(shot) {
            let _ = write!(
                h,
                "<h3>{console}</h3><img alt=\"console screenshot\" src=\"data:image/png;base64,{}\">",
                base64(&png)
            );
        }
    }
}

pub(crate) fn render_html(r: &Report) -> String {
    let mut h = String::new();
    let ok = r.result == Outcome::Validated;
    let _ = write!(
        h,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>v2k report: {vm}</title><style>{CSS}</style></head><body>\
         <h1>{vm}</h1><p class=\"sub\">VMware → KVM migration report · v2k {ver} · source <code>{src}</code></p>\
         <p><span class=\"badge {cls}\">{result}</span>{after}</p>",
        after = match &r.after_cutover {
            Some(v) if v.passed => " <span class=\"badge pass\">after cutover: passed</span>",
            Some(_) => " <span class=\"badge fail\">after cutover: failed</span>",
            None => "",
        },
        vm = esc(&r.vm),
        ver = esc(&r.v2k_version),
        src = esc(&r.source),
        cls = if ok { "pass" } else { "fail" },
        result = r.result,
    );
    if let Some(d) = &r.downtime {
        downtime_html(&mut h, d);
    }
    // Hardware side by side.
    h.push_str(
        "<h2>Hardware</h2><table><tr><th></th><th>VMware (source)</th><th>KVM (target)</th></tr>",
    );
    let (s, t) = (&r.source_hardware, &r.target_hardware);
    let mib = |m: u64| human_bytes(m.saturating_mul(1 << 20));
    let rows = [
        ("Firmware", s.firmware.clone(), t.firmware.clone()),
        ("vCPUs", s.cpus.to_string(), t.cpus.to_string()),
        ("Memory", mib(s.memory_mib), mib(t.memory_mib)),
        ("Disks", disk_rows(&s.disks), disk_rows(&t.disks)),
        ("NICs", nic_rows(&s.nics), nic_rows(&t.nics)),
    ];
    for (k, a, b) in rows {
        let _ = write!(
            h,
            "<tr><th>{k}</th><td>{}</td><td>{}</td></tr>",
            esc(&a).replace('\n', "<br>"),
            esc(&b).replace('\n', "<br>")
        );
    }
    // VMware's tuning, each setting beside its KVM answer (or why it is not carried).
    for m in &r.tuning {
        let _ = write!(
            h,
            "<tr class=\"tuning\"><th>{}</th><td><code>{}</code></td><td>{}{}</td></tr>",
            esc(&m.setting),
            esc(&m.vmware),
            if m.carried { "→ " } else { "✗ " },
            esc(&m.kvm)
        );
    }
    h.push_str("</table>");
    // Validation, then the first boot where the VM lives, each with its verdict.
    h.push_str("<h2>Validation</h2>");
    match &r.validation {
        None => h.push_str("<p>The migrated VM was not booted (validation skipped).</p>"),
        Some(v) => checks_html(&mut h, v, "Booted with", "Console after boot"),
    }
    if let Some(v) = &r.after_cutover {
        let _ = write!(
            h,
            "<h2>After cutover</h2><p><span class=\"badge {}\">{}</span></p>",
            if v.passed { "pass" } else { "fail" },
            if v.passed {
                "passed on the destination"
            } else {
                "failed on the destination"
            },
        );
        checks_html(
            &mut h,
            v,
            "First boot on the destination, started by v2k through",
            "Console on the destination",
        );
        if let Some(p) = &r.performance_after_cutover {
            performance_html(
                &mut h,
                p,
                "<h3>Performance after cutover</h3>",
                "the first boot on the destination",
            );
        }
    }
    if let Some(p) = &r.performance {
        performance_html(
            &mut h,
            p,
            "<h2>Performance before and after</h2>",
            "the validation boot",
        );
    }
    // Concerns.
    h.push_str("<h2>Pre-flight concerns</h2>");
    if r.concerns.is_empty() {
        h.push_str("<p>None.</p>");
    } else {
        h.push_str(
            "<table><tr><th>Severity</th><th>Id</th><th>Subject</th><th>Explanation</th></tr>",
        );
        for c in &r.concerns {
            let sev = kebab(&c.severity);
            let _ = write!(
                h,
                "<tr><td class=\"{sev}\">{sev}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&c.id),
                esc(c.subject.as_deref().unwrap_or("")),
                esc(&c.message)
            );
        }
        h.push_str("</table>");
    }
    // Disks.
    h.push_str("<h2>Disks</h2><table><tr><th>Source</th><th>Output</th><th>Virtual size</th><th>Data</th><th>Copy</th><th>Content hash (v2k-blkhash-sha256)</th><th>Verified</th></tr>");
    for d in &r.disks {
        let _ = write!(
            h,
            "<tr><td><code>{}</code><br>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{:.1} s</td><td><code>{}</code></td><td>{}</td></tr>",
            esc(&d.source.path.to_string_lossy()),
            esc(&d.source.create_type),
            esc(&d.output.path.to_string_lossy()),
            human_bytes(d.source.virtual_size),
            human_bytes(d.output.data_bytes),
            d.timing.copy_seconds,
            esc(&d.hash.source),
            if d.hash.verified { "yes" } else { "no" },
        );
    }
    h.push_str("</table>");
    if let Some(d) = &r.delivery {
        let _ = write!(
            h,
            "<h2>Delivered</h2><p>Domain <code>{}</code> defined on <code>{}</code>, pool <code>{}</code>.</p>\
             <table><tr><th>Volume</th><th>Path</th><th>Size</th><th>Content hash</th><th>Action</th></tr>",
            esc(&d.domain),
            esc(&d.uri),
            esc(&d.pool)
        );
        for v in &d.volumes {
            let _ = write!(
                h,
                "<tr><td><code>{}</code></td><td><code>{}</code></td><td>{}</td><td><code>{}</code></td><td>{}</td></tr>",
                esc(&v.name),
                esc(&v.path.to_string_lossy()),
                human_bytes(v.bytes),
                esc(&v.content_hash),
                match v.action {
                    crate::deliver::VolumeAction::Uploaded => "uploaded",
                    crate::deliver::VolumeAction::Kept => "kept (same content hash)",
                },
            );
        }
        h.push_str("</table>");
    }
    if let Some(l) = &r.live {
        live_html(&mut h, l);
    }
    if let Some(rb) = &r.rollback {
        h.push_str("<h2>Rolled back</h2><table><tr><th>Step</th><th>Outcome</th></tr>");
        for s in &rb.steps {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td></tr>",
                esc(&s.name),
                esc(&s.outcome)
            );
        }
        h.push_str("</table>");
    }
    // Guest changes.
    h.push_str("<h2>Changes made to the guest</h2>");
    match &r.guest_changes {
        Some(log) if !log.changes.is_empty() => {
            h.push_str("<table><tr><th>What</th><th>File</th><th>Before</th><th>After</th></tr>");
            for c in &log.changes {
                let _ = write!(
                    h,
                    "<tr><td>{}</td><td><code>{}</code></td><td><code>{}</code></td><td><code>{}</code></td></tr>",
                    esc(&c.action),
                    esc(&c.file),
                    esc(&c.before).replace('\n', "<br>"),
                    esc(&c.after).replace('\n', "<br>"),
                );
            }
            h.push_str("</table>");
        }
        Some(_) => h.push_str("<p>None needed: the guest was already converted.</p>"),
        None => h.push_str("<p>The guest was not converted (<code>--no-inject</code>).</p>"),
    }
    // Stage timeline.
    let total = r
        .stages
        .iter()
        .map(|s| s.start_seconds + s.seconds)
        .fold(0.0f64, f64::max)
        .max(f64::EPSILON);
    let _ = write!(
        h,
        "<h2>Stages</h2><p>{:.1} s in all.</p><table><tr><th>Stage</th><th>Status</th><th>Start</th><th>Duration</th><th>Timeline</th><th>Detail</th></tr>",
        total
    );
    for s in &r.stages {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{:.1} s</td><td>{:.1} s</td><td><div class=\"bar\"><span style=\"left:{:.1}%;width:{:.1}%\"></span></div></td><td>{}</td></tr>",
            esc(&s.name),
            s.status.as_str(),
            s.start_seconds,
            s.seconds,
            100.0 * s.start_seconds / total,
            (100.0 * s.seconds / total).max(0.5),
            esc(s.detail.as_deref().unwrap_or(""))
        );
    }
    h.push_str("</table></body></html>\n");
    h
}

/// Before and after: the verdict in words, then one row per metric.
/// `heading` is the section's whole heading element; `boot` says which boot's
/// counters are the "after".
fn performance_html(
    h: &mut String,
    p: &crate::performance::Performance,
    heading: &str,
    boot: &str,
) {
    let cls = if p.regressions.is_empty() {
        ""
    } else if p.fail_on_regression {
        "critical"
    } else {
        "warning"
    };
    let _ = write!(
        h,
        "{heading}<p class=\"{cls}\">{}</p>\
         <p class=\"sub\">Before: the median of <code>{}</code>; after: {boot}'s own counters since boot (docs/evidence.md).</p>\
         <table><tr><th>Metric</th><th>Before</th><th>After</th><th>Change</th><th>Verdict</th><th>Reason</th></tr>",
        esc(&p.verdict),
        esc(&p.baseline.to_string_lossy()),
    );
    let num = |v: Option<f64>| v.map_or("—".to_string(), |v| format!("{v:.2}"));
    for row in &p.rows {
        let badge = match row.verdict.as_str() {
            "regression" => "fail",
            "better" | "same" => "pass",
            _ => "",
        };
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><span class=\"badge {badge}\">{}</span></td><td>{}</td></tr>",
            esc(&row.metric),
            num(row.before),
            num(row.after),
            row.change.map_or("—".to_string(), |c| format!("{c:+.2}")),
            esc(&row.verdict),
            esc(&row.reason),
        );
    }
    h.push_str("</table>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard_alphabet_and_padding() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human_bytes(17), "17 B");
        assert_eq!(human_bytes(4096), "4 KiB");
        assert_eq!(human_bytes(2 << 30), "2 GiB");
        assert_eq!(human_bytes(1536 << 20), "1.5 GiB");
    }

    fn report() -> Report {
        Report {
            schema_version: SCHEMA_VERSION,
            v2k_version: "0".into(),
            vm: "<script>alert(1)</script>".into(),
            source: "x.vmx".into(),
            result: Outcome::NotValidated,
            source_hardware: Hardware {
                firmware: "bios".into(),
                cpus: 2,
                memory_mib: 2048,
                disks: vec![DiskRow {
                    id: "scsi0:0".into(),
                    bus: "scsi".into(),
                    controller: Some("pvscsi0".into()),
                    unit: Some(0),
                    capacity: Some(2 << 30),
                    file: None,
                }],
                nics: vec![NicRow {
                    id: "ethernet0".into(),
                    model: "vmxnet3".into(),
                    mac: Some("00:50:56:00:00:01".into()),
                    network: Some("VM <Network>".into()),
                }],
            },
            target_hardware: Hardware::default(),
            concerns: vec![],
            tuning: vec![],
            disks: vec![],
            guest_changes: None,
            validation: None,
            performance: None,
            performance_after_cutover: None,
            stages: vec![Stage {
                name: "convert".into(),
                status: StageStatus::Done,
                start_seconds: 0.5,
                seconds: 3.25,
                detail: None,
            }],
            resumed_downloads: vec![],
            delivery: None,
            after_cutover: None,
            rollback: None,
            live: None,
            downtime: None,
        }
    }

    /// A watched boot on the target whose agent reported `boot` s after its start
    /// (`agent: false`: the boot timed out after `boot` s without a report).
    fn boot_on_target(boot: f64, agent: bool) -> Validation {
        let report: v2k_validator::AgentReport =
            serde_json::from_str(r#"{"v":1,"ok":true,"boot":true,"root-rw":true}"#).unwrap();
        Validation {
            backend: v2k_validator::Backend::Libvirt {
                uri: "qemu:///system".into(),
            },
            accel: v2k_kvm_target::Accel::Tcg,
            passed: agent,
            checks: vec![],
            evidence: v2k_validator::Evidence {
                agent: agent.then_some(report),
                boot_seconds: Some(boot),
                timed_out: !agent,
                ..Default::default()
            },
            total_seconds: boot,
        }
    }

    #[test]
    fn downtime_is_power_off_to_target_start_plus_the_agents_report_and_needs_a_report() {
        use std::time::{Duration, Instant};
        let v = boot_on_target(26.5, true);
        assert_eq!(
            downtime_seconds(Duration::from_millis(38_500), Some(&v)),
            Some(65.0)
        );
        // No report, no end to the downtime: not a number made up from a timeout.
        let timed_out = boot_on_target(300.0, false);
        assert_eq!(
            downtime_seconds(Duration::from_secs(10), Some(&timed_out)),
            None
        );
        assert_eq!(downtime_seconds(Duration::from_secs(10), None), None);

        // Live and cold measure the same way from the same instants.
        let off = Instant::now();
        let started = off + Duration::from_secs(40);
        let cold = Downtime::measure(false, off, Some(started), Some(&v));
        let live = Downtime::measure(true, off, Some(started), Some(&v));
        assert_eq!(cold.seconds, Some(66.5));
        assert_eq!(cold.seconds, live.seconds);
        assert!(!cold.live && live.live);
        assert!(cold.source_off_at > 1_700_000_000, "{}", cold.source_off_at);
        // A target started before the source was found off (a clock oddity) counts
        // from zero rather than wrapping around.
        let early = Downtime::measure(false, started, Some(off), Some(&v));
        assert_eq!(early.seconds, Some(26.5));
        // Cut over but never started on the target (cold without --start).
        assert_eq!(Downtime::measure(false, off, None, None).seconds, None);
    }

    #[test]
    fn the_downtime_line_says_live_or_cold_and_round_trips() {
        let mut r = report();
        assert!(
            !render_html(&r).contains("Downtime"),
            "no line without a cutover"
        );
        r.downtime = Some(Downtime {
            live: false,
            source_off_at: 1_765_000_000,
            seconds: Some(312.25),
        });
        let h = render_html(&r);
        assert!(h.contains("Downtime (cold (copied, then started)"), "{h}");
        assert!(h.contains("<b>312.2 s</b>"), "{h}");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["downtime"]["seconds"], 312.25);
        assert_eq!(json["downtime"]["live"], false);
        assert_eq!(json["downtime"]["source-off-at"], 1_765_000_000u64);
        let back: Report = serde_json::from_value(json).unwrap();
        assert_eq!(back, r);
        r.downtime = Some(Downtime {
            live: true,
            source_off_at: 1,
            seconds: None,
        });
        let h = render_html(&r);
        assert!(h.contains("Downtime (live import"), "{h}");
        assert!(
            h.contains("not measured (no agent report on the target)"),
            "{h}"
        );
        // The wave report reads it through the summary.
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("report.json");
        std::fs::write(&p, serde_json::to_vec(&r).unwrap()).unwrap();
        assert_eq!(read_summary(&p).unwrap().downtime, r.downtime);
    }

    #[test]
    fn html_escapes_untrusted_names_and_shows_typed_rows_in_human_units() {
        let h = render_html(&report());
        assert!(!h.contains("<script>"));
        assert!(h.contains("&lt;script&gt;"));
        assert!(
            h.contains("scsi0:0 (scsi pvscsi0 unit 0) 2 GiB"),
            "disk row: {h}"
        );
        assert!(h.contains("2 GiB</td>") || h.contains("Memory</th><td>2 GiB"));
        assert!(h.contains("VM &lt;Network&gt;"));
        let body = &h[h.find("<body>").unwrap()..];
        assert!(!body.contains('{'), "no JSON inside the page: {body}");
        assert!(h.contains("3.2 s") || h.contains("3.3 s"), "{h}");
    }

    #[test]
    fn each_tuning_mapping_is_a_vmware_to_kvm_row_of_the_hardware_table() {
        let mut r = report();
        r.tuning = vec![
            v2k_kvm_target::TuningMapping {
                setting: "CPU affinity".into(),
                vmware: "sched.cpu.affinity = 0-3,6".into(),
                kvm: "<vcpupin> every vCPU on host CPUs 0-3,6".into(),
                carried: true,
            },
            v2k_kvm_target::TuningMapping {
                setting: "Memory hot-add".into(),
                vmware: "mem.hotadd = TRUE".into(),
                kvm: "not carried: no room".into(),
                carried: false,
            },
        ];
        let h = render_html(&r);
        let table =
            &h[h.find("<h2>Hardware</h2>").unwrap()..h.find("<h2>Validation</h2>").unwrap()];
        assert!(
            table.contains("<th>CPU affinity</th><td><code>sched.cpu.affinity = 0-3,6</code></td><td>→ &lt;vcpupin&gt; every vCPU on host CPUs 0-3,6</td>"),
            "{table}"
        );
        assert!(table.contains("<td>✗ not carried: no room</td>"), "{table}");
        let back: Report = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back.tuning, r.tuning);
    }

    #[test]
    fn performance_is_a_table_with_the_verdict_in_words_and_round_trips() {
        let mut r = report();
        let s = crate::performance::Settings::with(
            "b/<web>.baseline.json".into(),
            crate::performance::tests::baseline(1.0, 2.0),
        );
        let v = crate::performance::tests::validation(crate::Accel::Kvm);
        r.performance = Some(crate::performance::evaluate(&s, Some(&v)));
        let h = render_html(&r);
        let part = &h[h.find("<h2>Performance before and after</h2>").unwrap()
            ..h.find("<h2>Pre-flight concerns</h2>").unwrap()];
        assert!(
            part.contains("<p class=\"warning\">Regression in 1 of 2 metric(s) compared: disk-read-latency-ms"),
            "{part}"
        );
        assert!(
            part.contains("<code>b/&lt;web&gt;.baseline.json</code>"),
            "{part}"
        );
        assert!(
            part.contains("<tr><td>disk-read-latency-ms</td><td>2.00</td><td>12.00</td><td>+10.00</td><td><span class=\"badge fail\">regression</span></td>"),
            "{part}"
        );
        assert!(
            part.contains("<tr><td>net-dropped-rx</td><td>—</td><td>0.00</td><td>—</td><td><span class=\"badge \">not compared</span></td><td>no figure before</td></tr>"),
            "{part}"
        );
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["performance"]["rows"][1]["verdict"], "regression");
        assert_eq!(v["performance"]["thresholds"]["latency-factor"], 2.0);
        assert_eq!(serde_json::from_value::<Report>(v).unwrap(), r);
        // Without a baseline asked for there is no section at all.
        assert!(!render_html(&report()).contains("Performance before"));
    }

    #[test]
    fn the_first_boot_on_the_destination_has_its_own_section_and_verdict() {
        let mut r = report();
        let h = render_html(&r);
        assert!(!h.contains("After cutover"), "no section without the check");
        r.after_cutover = Some(Validation {
            backend: v2k_validator::Backend::Libvirt {
                uri: "qemu+ssh://root@kvm01/system".into(),
            },
            accel: v2k_kvm_target::Accel::Kvm,
            passed: false,
            checks: vec![Check {
                id: "gateway".into(),
                passed: false,
                reason: "default gateway 10.0.0.1 did not answer".into(),
            }],
            evidence: Default::default(),
            total_seconds: 40.0,
        });
        let h = render_html(&r);
        let after = &h[h.find("<h2>After cutover</h2>").unwrap()..];
        assert!(after.contains("failed on the destination"), "{after}");
        assert!(after.contains("qemu+ssh://root@kvm01/system"), "{after}");
        assert!(after.contains("10.0.0.1 did not answer"), "{after}");
        assert!(h.contains("after cutover: failed"), "top verdict");
        // With a baseline, its own before/after inside the section.
        let mut s = crate::performance::Settings::with(
            "web.baseline.json".into(),
            crate::performance::tests::baseline(1.0, 2.0),
        );
        let v = crate::performance::tests::validation(crate::Accel::Kvm);
        r.performance_after_cutover = Some(crate::performance::evaluate(&s, Some(&v)));
        let h = render_html(&r);
        let after = &h[h.find("<h2>After cutover</h2>").unwrap()
            ..h.find("<h2>Pre-flight concerns</h2>").unwrap()];
        assert!(
            after.contains("<h3>Performance after cutover</h3>"),
            "{after}"
        );
        assert!(
            after.contains("the first boot on the destination"),
            "{after}"
        );
        assert!(after.contains("disk-read-latency-ms"), "{after}");
        // A strict regression there fails the run (exit 1) even with its checks passed.
        r.after_cutover.as_mut().unwrap().passed = true;
        let out = crate::Outcome {
            report: r.clone(),
            report_dir: "x".into(),
        };
        assert_eq!(out.exit_code(), 0, "a regression alone is a warning");
        s.fail_on_regression = true;
        r.performance_after_cutover = Some(crate::performance::evaluate(&s, Some(&v)));
        let out = crate::Outcome {
            report: r.clone(),
            report_dir: "x".into(),
        };
        assert_eq!(out.exit_code(), 1);
        // Beside the validation, before the concerns.
        assert!(h.find("<h2>Validation</h2>") < h.find("<h2>After cutover</h2>"));
        assert!(h.find("<h2>After cutover</h2>") < h.find("<h2>Pre-flight concerns</h2>"));
    }

    #[test]
    fn report_json_has_typed_rows_and_round_trips() {
        let r = report();
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["schema-version"], 2);
        assert_eq!(v["result"], "not-validated");
        assert_eq!(v["source-hardware"]["disks"][0]["controller"], "pvscsi0");
        assert_eq!(v["source-hardware"]["nics"][0]["mac"], "00:50:56:00:00:01");
        assert_eq!(v["stages"][0]["status"], "done");
        let back: Report = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn a_summary_reads_a_later_performance_section_it_does_not_fully_know() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("report.json");
        let mut v = serde_json::to_value(report()).unwrap();
        v["performance"] = serde_json::json!({
            "baseline": "b.json", "thresholds": {"some-later-metric": 3.0},
            "fail-on-regression": true, "rows": [], "regressions": ["probe-cpu-ms"],
            "verdict": "Regression in 1 of 1 metric(s) compared: …"
        });
        std::fs::write(&p, v.to_string()).unwrap();
        let b = read_summary(&p).unwrap().performance.unwrap();
        assert!(b.fails() && b.verdict.starts_with("Regression"), "{b:?}");
    }

    #[test]
    fn summaries_read_schema_1_and_name_unknown_schemas() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("report.json");
        // A schema 1 report as v2k 0.1 wrote it: hardware rows as strings.
        std::fs::write(
            &p,
            r#"{"schema-version":1,"v2k-version":"0.1.0","vm":"a","source":"/a.vmx",
                "result":"not-validated",
                "source-hardware":{"firmware":"bios","cpus":1,"memory-mib":512,
                  "disks":["scsi0:0 2147483648 B {\"bus\":\"scsi\"}"],"nics":[]},
                "target-hardware":{"firmware":"bios","cpus":1,"memory-mib":512,"disks":[],"nics":[]},
                "concerns":[{"id":"cbt-enabled","severity":"info","message":"m"}],
                "disks":[],"stages":[]}"#,
        )
        .unwrap();
        let s = read_summary(&p).unwrap();
        assert_eq!(s.schema_version, 1);
        assert_eq!(s.concerns[0].id, "cbt-enabled");
        std::fs::write(&p, r#"{"schema-version":9}"#).unwrap();
        let e = read_summary(&p).unwrap_err().to_string();
        assert!(
            e.contains("report schema 9") && e.contains("report.json"),
            "{e}"
        );
    }

    #[test]
    fn the_live_section_shows_the_verdict_counts_and_downtime_escaped() {
        use crate::live::{LiveDisk, LiveReport, LiveVerdict};
        let mut r = report();
        let disk = LiveDisk {
            disk: "scsi0:<0>".into(),
            overlay: "/run/live/scsi0-0.qcow2".into(),
            verdict: LiveVerdict::CannotTell,
            reason: Some("no bitmap <here>".into()),
            served: 10,
            changed_by_v2k: 2,
            written_by_guest: 3,
            verified: 0,
            mismatched: vec![],
            bytes_served: 655360,
            retries: 1,
            logins: 1,
            pull_restarts: 2,
        };
        r.live = Some(LiveReport {
            uri: "qemu:///system".into(),
            domain: "web<01>".into(),
            verdict: LiveVerdict::CannotTell,
            served: 10,
            changed_by_v2k: 2,
            written_by_guest: 3,
            verified: 0,
            mismatched: 0,
            stream_seconds: 12.34,
            stream_mib_per_second: 80.0,
            bandwidth_mib: Some(100),
            source_off_at: 1,
            downtime_seconds: Some(51.25),
            outages: 1,
            outage_seconds: 40.0,
            pull_restarts: 2,
            resumes: 1,
            disks: vec![disk],
        });
        let h = render_html(&r);
        let live = &h[h.find("<h2>Live import</h2>").unwrap()..];
        assert!(live.contains("cannot tell"), "{live}");
        assert!(live.contains("<b>51.2 s</b>"), "{live}");
        assert!(live.contains("limit 100 MiB/s"), "{live}");
        assert!(
            live.contains("outages during the stream: 1 (40 s waited")
                && live.contains("pulls started again: 2; resumes of the paused domain: 1"),
            "{live}"
        );
        assert!(live.contains("web&lt;01&gt;") && live.contains("no bitmap &lt;here&gt;"));
        assert!(!live.contains("web<01>"));
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["live"]["verdict"], "cannot-tell");
        assert_eq!(json["live"]["downtime-seconds"], 51.25);
        assert_eq!(json["live"]["disks"][0]["written-by-guest"], 3);
        assert_eq!(json["live"]["pull-restarts"], 2);
        assert_eq!(json["live"]["outage-seconds"], 40.0);
        assert_eq!(json["live"]["disks"][0]["pull-restarts"], 2);
    }
}
