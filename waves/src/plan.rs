//! The wave plan: its YAML schema (version 1, kebab-case keys, unknown keys refused
//! with their line number) and its resolution into a [`Plan`] whose paths are
//! absolute, whose per-VM settings are the defaults with the VM's overrides applied,
//! and whose every VM has its own output directory. docs/waves.md documents it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use sha2::Digest;
use v2k_migrate::performance::Thresholds;
use v2k_migrate::vsphere::{Address, Client, ConnectSettings, PASSWORD_ENV};
use v2k_migrate::{Accel, Backend, DiskBus, HostSource, NetworkMap};

use crate::{Error, Result};

/// The plan schema version this build reads.
pub const SCHEMA_VERSION: u32 = 1;
/// A plan larger than this is not a plan someone wrote by hand; refuse before parsing.
pub(crate) const MAX_PLAN_BYTES: u64 = 4 << 20;
/// Default wall-clock limit of a hook: long enough for a snapshot or a DNS change.
pub(crate) const DEFAULT_HOOK_TIMEOUT_S: u64 = 600;
/// Default seconds from power-on to the agent's report (as `v2k migrate`).
pub(crate) const DEFAULT_BOOT_TIMEOUT_S: u64 = 300;
/// Default seconds a source guest may take to shut down at cutover (as `v2k migrate`).
pub(crate) const DEFAULT_SHUTDOWN_TIMEOUT_S: u64 = 300;

/// One thing wrong with a plan, with where it is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    pub message: String,
}

pub(crate) fn format_problems(p: &[Problem]) -> String {
    p.iter()
        .map(|p| match p.line {
            Some(l) => format!("line {l}: {}", p.message),
            None => p.message.clone(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

// ---- the file as written -------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct PlanFile {
    pub version: u32,
    #[serde(default)]
    pub run_dir: Option<PathBuf>,
    /// The conversion host this plan is a shard for (written by `v2k wave assign`);
    /// journalled, so a merged report says which host ran each VM.
    #[serde(default)]
    pub conversion_host: Option<String>,
    #[serde(default)]
    pub defaults: Settings,
    /// VMware network or port group → `network:NAME`, `bridge:NAME` or `user`.
    #[serde(default)]
    pub networks: BTreeMap<String, String>,
    #[serde(default)]
    pub storage: Vec<StorageFile>,
    /// How to reach each vSphere server that `vsphere://` sources name, by `HOST` or
    /// `HOST:PORT` as written in the addresses.
    #[serde(default)]
    pub vsphere: BTreeMap<String, VsphereServerFile>,
    #[serde(default)]
    pub limits: LimitsFile,
    #[serde(default)]
    pub failure_policy: FailurePolicyFile,
    /// Where every VM of the plan is delivered (`v2k migrate --to --pool`).
    #[serde(default)]
    pub target: Option<TargetFile>,
    /// When a wave may be larger than the one before it (docs/waves.md, "The gate").
    #[serde(default)]
    pub gate: Option<GateFile>,
    /// How long after its cutover a delivered VM keeps its way back (`72h`):
    /// `v2k wave finalize` refuses it until then (docs/rollback.md).
    #[serde(default)]
    pub rollback_window: Option<String>,
    pub waves: Vec<WaveFile>,
}

/// `target:`: a libvirt URI and a storage pool on it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TargetFile {
    pub uri: String,
    pub pool: String,
    /// Start each delivered domain.
    #[serde(default)]
    pub start: bool,
    /// Mark each delivered domain to start with the destination's libvirt.
    #[serde(default)]
    pub autostart: bool,
    /// The destination's `virsh capabilities` (a file, relative to the plan, or a
    /// libvirt URI) that VMware's tuning is mapped onto; default: `uri`'s.
    #[serde(default)]
    pub host_topology: Option<String>,
}

/// Settings a VM can take from `defaults` or override.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Settings {
    pub disk_bus: Option<BusName>,
    pub compress: Option<bool>,
    /// `false`: copy and verify the disks without converting the guest (data VMs).
    pub inject: Option<bool>,
    pub validate: Option<bool>,
    pub boot_timeout: Option<u64>,
    pub backend: Option<BackendName>,
    pub connect: Option<String>,
    pub accel: Option<AccelName>,
    pub verify_manifest: Option<bool>,
    /// virtio-win driver directory for Windows guests.
    pub virtio_win: Option<PathBuf>,
    pub hooks: Option<HooksFile>,
    /// vSphere source: shut the running VM down through VMware Tools first.
    pub cutover: Option<bool>,
    /// Seconds the guest may take to shut down (default 300).
    pub shutdown_timeout: Option<u64>,
    /// Power the VM off when it did not shut down in time.
    pub force_power_off: Option<bool>,
    /// Where `v2k baseline` wrote the VMs' `NAME.baseline.json` (relative to the plan).
    pub baseline_dir: Option<PathBuf>,
    /// How much worse each metric may get after migration (docs/evidence.md).
    pub thresholds: Option<Thresholds>,
    /// A performance regression fails the VM instead of being a warning.
    pub fail_on_regression: Option<bool>,
    /// A local source without a `baseline-dir:` file: boot it in its own shape before
    /// its first migration and take that boot's figures as its baseline.
    pub baseline_boot: Option<bool>,
    /// vSphere source: import live (`v2k migrate --live`, docs/live-import.md); implies
    /// `cutover: true`.
    pub live: Option<bool>,
    /// With `live: true`: pull each disk at most this many MiB/s (`--live-bandwidth`).
    pub live_bandwidth: Option<u64>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum BusName {
    Virtio,
    Scsi,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum BackendName {
    Libvirt,
    Qemu,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum AccelName {
    Kvm,
    Tcg,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct HooksFile {
    pub pre: Option<HookFile>,
    pub post: Option<HookFile>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct HookFile {
    /// argv: the program, then its arguments. No shell unless you name one.
    pub command: Vec<String>,
    /// Seconds.
    pub timeout: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct StorageFile {
    pub source: PathBuf,
    pub output: PathBuf,
}

/// A vSphere server's connection settings, as `v2k migrate`'s flags. No password: a
/// plan is shared and versioned; the password is in `password-file` (mode 0600) or
/// `$V2K_VSPHERE_PASSWORD`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct VsphereServerFile {
    pub password_file: Option<PathBuf>,
    /// SHA-256 thumbprint of the server certificate (`v2k vsphere thumbprint`).
    pub thumbprint: Option<String>,
    /// Extra CA certificates (PEM).
    pub ca_file: Option<PathBuf>,
    pub insecure: Option<bool>,
    /// Accepted by the parser only to refuse it with a clear message.
    pub password: Option<serde::de::IgnoredAny>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct LimitsFile {
    pub vms: Option<usize>,
    pub disks: Option<usize>,
    pub per_datastore: Option<usize>,
    /// VMs at once from one named datastore (the key as the plan resolves it: the
    /// `storage:` source, the source's directory, or `vsphere://HOST:PORT`), over
    /// `per-datastore`. `v2k wave assign` writes each shard's share here.
    #[serde(default)]
    pub datastores: BTreeMap<String, usize>,
    /// Disks in flight from one ESXi host (Forklift's per-host limit), for VMs whose
    /// ESXi host is known (the VM's `esxi-host:` or the inspection).
    pub esxi_host_disks: Option<usize>,
    /// The same limit for one named ESXi host, over `esxi-host-disks`. `v2k wave
    /// assign` writes each shard's share of the budget here.
    #[serde(default)]
    pub esxi_hosts: BTreeMap<String, usize>,
    /// Bytes kept free on the output file system beyond a VM's estimate.
    pub free_space_margin_mib: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct FailurePolicyFile {
    /// Stop the wave (and the run) after this many failed VMs; absent: continue.
    pub stop_after: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct GateFile {
    /// The highest change-failure rate (a fraction, 0.1 = 10 %) of the previous wave
    /// that lets the next one grow.
    pub max_change_failure_rate: Option<f64>,
    pub mttr: Option<MttrRule>,
    /// How many times larger than the previous one a wave may be, when the measures
    /// allow it to grow at all; absent: no limit.
    pub grow_by: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MttrRule {
    /// The previous wave repaired every failure, no slower than the wave before it.
    TrendingDown,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct WaveFile {
    pub name: String,
    pub stop_after: Option<u32>,
    pub vms: Vec<VmFile>,
}

/// One VM; every field but `source` optional. (Written out rather than flattened:
/// serde cannot refuse unknown keys through `flatten`.)
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct VmFile {
    pub source: PathBuf,
    pub name: Option<String>,
    /// Which VM of a multi-VM OVF.
    pub ovf_vm: Option<String>,
    pub disk_bus: Option<BusName>,
    pub compress: Option<bool>,
    /// `false`: copy and verify the disks without converting the guest (data VMs).
    pub inject: Option<bool>,
    pub validate: Option<bool>,
    pub boot_timeout: Option<u64>,
    pub backend: Option<BackendName>,
    pub connect: Option<String>,
    pub accel: Option<AccelName>,
    pub verify_manifest: Option<bool>,
    pub virtio_win: Option<PathBuf>,
    pub hooks: Option<HooksFile>,
    /// vSphere source: shut the running VM down through VMware Tools first.
    pub cutover: Option<bool>,
    /// Seconds the guest may take to shut down (default 300).
    pub shutdown_timeout: Option<u64>,
    /// Power the VM off when it did not shut down in time.
    pub force_power_off: Option<bool>,
    /// The ESXi host the VM's disks are read from, for `limits.esxi-host-disks`
    /// (a vSphere source's inspection knows it; `v2k wave assign` writes it).
    pub esxi_host: Option<String>,
    pub baseline_dir: Option<PathBuf>,
    pub thresholds: Option<Thresholds>,
    pub fail_on_regression: Option<bool>,
    pub baseline_boot: Option<bool>,
    pub live: Option<bool>,
    pub live_bandwidth: Option<u64>,
}

impl VmFile {
    fn settings(&self) -> Settings {
        Settings {
            disk_bus: self.disk_bus,
            compress: self.compress,
            inject: self.inject,
            validate: self.validate,
            boot_timeout: self.boot_timeout,
            backend: self.backend,
            connect: self.connect.clone(),
            accel: self.accel,
            verify_manifest: self.verify_manifest,
            virtio_win: self.virtio_win.clone(),
            hooks: self.hooks.clone(),
            cutover: self.cutover,
            shutdown_timeout: self.shutdown_timeout,
            force_power_off: self.force_power_off,
            baseline_dir: self.baseline_dir.clone(),
            thresholds: self.thresholds,
            fail_on_regression: self.fail_on_regression,
            baseline_boot: self.baseline_boot,
            live: self.live,
            live_bandwidth: self.live_bandwidth,
        }
    }
}

// ---- the resolved plan ---------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Plan {
    /// The plan file, absolute.
    pub path: PathBuf,
    /// SHA-256 of the plan's bytes: a resumed run must run the same plan.
    pub hash: String,
    pub run_dir: PathBuf,
    /// The conversion host this plan is a shard for (`conversion-host:`).
    pub conversion_host: Option<String>,
    pub network_map: NetworkMap,
    pub limits: Limits,
    /// Absent: waves run whatever their size.
    pub gate: Option<Gate>,
    /// `rollback-window:` in seconds; absent: rollback stays possible until
    /// `v2k wave finalize`.
    pub rollback_window_seconds: Option<u64>,
    pub waves: Vec<Wave>,
    /// The YAML text, to find lines for later problems.
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub vms: usize,
    pub disks: usize,
    pub per_datastore: usize,
    /// Per-datastore limits over `per_datastore`, by datastore key.
    pub datastores: BTreeMap<PathBuf, usize>,
    /// Disks in flight per ESXi host (`usize::MAX`: no limit).
    pub esxi_host_disks: usize,
    /// Per-ESXi-host limits over `esxi_host_disks`.
    pub esxi_hosts: BTreeMap<String, usize>,
    pub free_space_margin: u64,
}

impl Limits {
    /// VMs at once from datastore `ds`.
    pub fn datastore(&self, ds: &Path) -> usize {
        self.datastores
            .get(ds)
            .copied()
            .unwrap_or(self.per_datastore)
    }

    /// Disks in flight from ESXi host `host`.
    pub fn esxi_host(&self, host: &str) -> usize {
        self.esxi_hosts
            .get(host)
            .copied()
            .unwrap_or(self.esxi_host_disks)
    }
}

/// The plan's `gate:`, checked ([`crate::gate`]) before a wave larger than the
/// previous one starts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gate {
    pub max_change_failure_rate: Option<f64>,
    pub mttr_trending_down: bool,
    pub grow_by: Option<f64>,
}

#[derive(Debug, Clone)]
pub struct Wave {
    pub name: String,
    pub stop_after: Option<u32>,
    pub vms: Vec<VmPlan>,
}

#[derive(Debug, Clone)]
pub struct VmPlan {
    pub name: String,
    /// A file, or a `vsphere://` address as written (then [`VmPlan::vsphere`] is set).
    pub source: PathBuf,
    /// The server and connection settings of a `vsphere://` source.
    pub vsphere: Option<VsphereRef>,
    pub ovf_vm: Option<String>,
    /// The VM's private run directory for `v2k-migrate` (disks, state.json, report).
    pub out: PathBuf,
    /// The source datastore or directory, for `limits.per-datastore`; for a vSphere
    /// source, its server (`vsphere://HOST:PORT`), whose downloads share one network.
    pub datastore: PathBuf,
    pub disk_bus: DiskBus,
    pub compress: bool,
    pub inject: bool,
    pub validate: bool,
    pub boot_timeout: Duration,
    pub backend: Backend,
    pub accel: Option<Accel>,
    pub verify_manifest: bool,
    /// virtio-win driver directory (absolute) for a Windows guest.
    pub virtio_win: Option<PathBuf>,
    pub pre: Option<Hook>,
    pub post: Option<Hook>,
    /// Line of the VM's entry in the plan.
    pub line: Option<usize>,
    /// The ESXi host its disks are read from, when the plan says (`esxi-host:`).
    pub esxi_host: Option<String>,
    /// Index of the plan entry it comes from, counting every VM entry of every wave
    /// in order (the VMs a pattern entry expands to share it): what `v2k wave assign`
    /// copies into a shard.
    pub entry: usize,
    /// The plan's `target:`: where the VM is delivered after validation.
    pub deliver: Option<v2k_migrate::Destination>,
    /// `cutover: true`: a running vSphere source is shut down before the copy.
    pub cutover: Option<v2k_migrate::cutover::Cutover>,
    /// The host VMware's tuning is mapped onto (the plan's `target:`, else this one).
    pub host_topology: HostSource,
    /// Where this VM's `NAME.baseline.json` is looked for (absolute).
    pub baseline_dir: Option<PathBuf>,
    /// Before/after thresholds (the plan's `thresholds:`, else the defaults).
    pub thresholds: Thresholds,
    pub fail_on_regression: bool,
    /// `baseline-boot: true`: a local source is measured by booting it in its own
    /// shape on its first attempt (crate::runner).
    pub baseline_boot: bool,
    /// `live: true`: imported live in `connect:`'s libvirt (a vSphere source; its
    /// cutover implied), as `v2k migrate --live`.
    pub live: Option<v2k_migrate::live::LiveOptions>,
}

/// A VM on a vSphere server, and how to connect to that server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsphereRef {
    pub address: Address,
    pub settings: ConnectSettings,
}

impl VsphereRef {
    /// `connecting to HOST:PORT as USER: why`, the one message for a failed login.
    pub(crate) fn connect_error(&self, why: impl std::fmt::Display) -> ConnectError {
        let a = &self.address;
        ConnectError {
            host: a.host.clone(),
            port: a.port,
            user: a.user.clone(),
            why: why.to_string(),
        }
    }
}

/// A failed login to a vSphere server. The cause is kept as text (not a `#[source]`):
/// [`Sessions`] hands the same failure to every VM of that server, and the client's
/// error cannot be cloned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("connecting to {host}:{port} as {user}: {why}")]
pub struct ConnectError {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub why: String,
}

/// One logged-in session per server and user while a plan is expanded or checked (a
/// plan may name hundreds of VMs on one vCenter), or why it could not be had.
#[derive(Debug, Default)]
pub struct Sessions(BTreeMap<(String, u16, String), std::result::Result<Client, ConnectError>>);

impl Sessions {
    /// The session for `r`'s server and user, logging in the first time.
    pub fn client(&mut self, r: &VsphereRef) -> std::result::Result<&Client, ConnectError> {
        let a = &r.address;
        self.0
            .entry((a.host.clone(), a.port, a.user.clone()))
            .or_insert_with(|| r.settings.connect(a).map_err(|e| r.connect_error(e)))
            .as_ref()
            .map_err(Clone::clone)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Hook {
    pub command: Vec<String>,
    pub timeout_s: u64,
}

impl VmPlan {
    /// Whether this entry is a `vsphere://` pattern still to be expanded into the
    /// VMs it matches ([`crate::expand`]).
    pub fn is_pattern(&self) -> bool {
        self.vsphere
            .as_ref()
            .is_some_and(|r| r.address.is_pattern())
    }

    /// The options `v2k_migrate::migrate` runs this VM with.
    pub(crate) fn migrate_options(&self, network_map: &NetworkMap) -> v2k_migrate::Options {
        v2k_migrate::Options {
            source: self.source.clone(),
            out: self.out.clone(),
            vm_name: self.ovf_vm.clone(),
            compress: self.compress,
            disk_bus: self.disk_bus,
            network_map: network_map.clone(),
            accel: self.accel,
            keep_agent: false,
            inject: self.inject,
            validate: self.validate,
            backend: self.backend.clone(),
            boot_timeout: self.boot_timeout,
            keep_changes: false,
            define: None,
            deliver: self.deliver.clone(),
            // A plan's `target: start: true` is judged where it lands.
            check_after_cutover: true,
            cutover: self.cutover,
            verify_manifest: self.verify_manifest,
            virtio_win: self.virtio_win.clone(),
            host_topology: self.host_topology.clone(),
            // Set by the runner, which reads the baseline (crate::runner), and boots
            // a local source for it itself (`baseline-boot: true`).
            performance: None,
            baseline_boot: false,
            live: self.live.clone(),
        }
    }
}

/// The line of the first occurrence of `needle` in `text` (1-based), for problems
/// found after parsing, when serde no longer knows where a value came from.
pub(crate) fn line_of(text: &str, needle: &str) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    text.lines().position(|l| l.contains(needle)).map(|i| i + 1)
}

/// The line (1-based) of every `source:` entry under `waves:`, in order: the `n`th VM's
/// line for its problems. One pass over the text (a per-VM search made resolving a
/// 5,000-VM plan quadratic).
fn source_lines(text: &str, key: &str) -> Vec<usize> {
    // Only under `waves:`: `storage:` entries have `source:` keys too.
    let start = text
        .lines()
        .position(|l| l.starts_with("waves:"))
        .unwrap_or(0);
    text.lines()
        .enumerate()
        .skip(start)
        .filter(|(_, l)| {
            let t = l.trim_start().trim_start_matches("- ").trim_start();
            t.starts_with(key)
        })
        .map(|(i, _)| i + 1)
        .collect()
}

/// Reads and resolves a plan file. Only the schema and the plan's own consistency
/// are checked here; [`crate::check`] checks what the plan refers to.
pub fn load(path: &Path) -> Result<Plan> {
    let path =
        std::path::absolute(path).map_err(crate::io(format!("resolving {}", path.display())))?;
    // Not a FIFO, device or directory, and bounded on the read itself (a link to
    // /dev/zero or a file that grows is refused at the limit, not after it).
    let text = v2k_untrusted::file::read_to_string(&path, MAX_PLAN_BYTES, "wave plan")
        .map_err(crate::io(format!("reading {}", path.display())))?;
    parse(&text, &path)
}

/// Parses plan text; `path` anchors relative paths (its directory) and names the
/// default run directory.
pub fn parse(text: &str, path: &Path) -> Result<Plan> {
    // Alias bombs and deep nesting are refused before libyaml builds anything.
    crate::prescan::check(text)
        .map_err(|(line, message)| Error::Plan(vec![Problem { line, message }]))?;
    let file: PlanFile = serde_norway::from_str(text).map_err(|e| {
        let line = e.location().map(|l| l.line());
        // serde_norway appends " at line L column C"; the line goes in front instead.
        let msg = e.to_string();
        let msg = match msg.rfind(" at line ") {
            Some(i) if line.is_some() => msg[..i].to_string(),
            _ => msg,
        };
        Error::Plan(vec![Problem { line, message: msg }])
    })?;
    resolve(file, text, path)
}

fn resolve(f: PlanFile, text: &str, path: &Path) -> Result<Plan> {
    let mut problems = Vec::new();
    let mut bad = |line: Option<usize>, message: String| problems.push(Problem { line, message });
    let base = path.parent().unwrap_or(Path::new("/")).to_path_buf();
    let abs = |p: &Path| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        }
    };

    if f.version != SCHEMA_VERSION {
        bad(
            line_of(text, "version"),
            format!(
                "version {} is not supported (this v2k reads version {SCHEMA_VERSION})",
                f.version
            ),
        );
    }
    if let Some(h) = &f.conversion_host {
        if !valid_name(h) {
            bad(
                line_of(text, "conversion-host:"),
                format!("conversion-host {h:?}: use letters, digits, . _ -"),
            );
        }
    }
    let mut host_topology = HostSource::Local;
    if let Some(t) = &f.target {
        if t.uri.trim().is_empty() || t.pool.trim().is_empty() {
            bad(
                line_of(text, "target:"),
                "target: uri and pool must both be set".into(),
            );
        }
        host_topology = match t.host_topology.as_deref().map(HostSource::parse) {
            None => HostSource::Uri(t.uri.clone()),
            Some(Ok(HostSource::File(p))) => HostSource::File(abs(&p)),
            Some(Ok(h)) => h,
            Some(Err(e)) => {
                bad(line_of(text, "host-topology:"), format!("target: {e}"));
                HostSource::Local
            }
        };
    }
    let mut network_map = NetworkMap::default();
    for (name, target) in &f.networks {
        match NetworkMap::parse_entry(&format!("{name}={target}")) {
            Ok(e) => network_map.0.push(e),
            Err(e) => bad(line_of(text, target), format!("networks: {e}")),
        }
    }
    let mut servers: BTreeMap<String, ConnectSettings> = BTreeMap::new();
    for (key, sv) in &f.vsphere {
        let line = line_of(text, &format!("{key}:"));
        if sv.password.is_some() {
            bad(
                line_of(text, "password:").or(line),
                format!("vsphere: {key}: a plan never holds a password; use `password-file:` (mode 0600) or ${}", PASSWORD_ENV),
            );
        }
        let settings = ConnectSettings {
            password_file: sv.password_file.as_deref().map(abs),
            thumbprint: sv.thumbprint.clone(),
            ca_file: sv.ca_file.as_deref().map(abs),
            insecure: sv.insecure.unwrap_or(false),
        };
        if let Err(e) = settings.tls_mode() {
            bad(line, format!("vsphere: {key}: {e}"));
        }
        servers.insert(key.clone(), settings);
    }
    let mut servers_used = BTreeSet::new();
    let storage: Vec<(PathBuf, PathBuf)> = f
        .storage
        .iter()
        .map(|s| (abs(&s.source), abs(&s.output)))
        .collect();
    let zero = |v: Option<usize>, key: &str, bad: &mut dyn FnMut(Option<usize>, String)| match v {
        Some(0) => {
            bad(
                line_of(text, key),
                format!("limits.{key} must be at least 1"),
            );
            1
        }
        Some(n) => n,
        None => usize::MAX,
    };
    let limits = Limits {
        vms: match f.limits.vms {
            None => 1,
            v => zero(v, "vms", &mut bad),
        },
        disks: zero(f.limits.disks, "disks", &mut bad),
        per_datastore: zero(f.limits.per_datastore, "per-datastore", &mut bad),
        datastores: f
            .limits
            .datastores
            .iter()
            .map(|(k, v)| {
                let n = zero(Some(*v), k, &mut bad);
                let key = if Address::is_vsphere(k) {
                    PathBuf::from(k)
                } else {
                    abs(Path::new(k))
                };
                (key, n)
            })
            .collect(),
        esxi_host_disks: zero(f.limits.esxi_host_disks, "esxi-host-disks", &mut bad),
        esxi_hosts: f
            .limits
            .esxi_hosts
            .iter()
            .map(|(k, v)| (k.clone(), zero(Some(*v), k, &mut bad)))
            .collect(),
        free_space_margin: f.limits.free_space_margin_mib.unwrap_or(1024) << 20,
    };
    let rollback_window_seconds = f.rollback_window.as_deref().and_then(|w| {
        crate::window::parse_window(w)
            .map_err(|e| {
                bad(
                    line_of(text, "rollback-window"),
                    format!("rollback-window: {e}"),
                )
            })
            .ok()
    });
    let gate = f.gate.as_ref().map(|g| {
        if let Some(r) = g.max_change_failure_rate {
            if !(0.0..=1.0).contains(&r) {
                bad(
                    line_of(text, "max-change-failure-rate"),
                    format!(
                        "gate.max-change-failure-rate is a fraction from 0 to 1 (0.1 = 10 %), not {r}"
                    ),
                );
            }
        }
        if let Some(x) = g.grow_by {
            if !(x.is_finite() && x >= 1.0) {
                bad(
                    line_of(text, "grow-by"),
                    format!("gate.grow-by is a factor of at least 1 (2 = twice as large), not {x}"),
                );
            }
        }
        Gate {
            max_change_failure_rate: g.max_change_failure_rate,
            mttr_trending_down: g.mttr == Some(MttrRule::TrendingDown),
            grow_by: g.grow_by,
        }
    });
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "plan".into());
    let run_dir = f
        .run_dir
        .as_deref()
        .map(abs)
        .unwrap_or_else(|| base.join(format!("{stem}.run")));

    if f.waves.is_empty() {
        bad(line_of(text, "waves"), "waves: the plan has no wave".into());
    }
    let mut wave_names = BTreeSet::new();
    let mut vm_names = BTreeSet::new();
    let mut waves = Vec::new();
    let mut vm_index = 0usize;
    let vm_lines = source_lines(text, "source:");
    for w in &f.waves {
        if !valid_name(&w.name) {
            bad(
                line_of(text, &w.name),
                format!("wave name {:?}: use letters, digits, . _ -", w.name),
            );
        }
        if !wave_names.insert(w.name.clone()) {
            bad(
                line_of(text, &w.name),
                format!("wave {:?} appears twice", w.name),
            );
        }
        if w.vms.is_empty() {
            bad(
                line_of(text, &w.name),
                format!("wave {:?} has no VM", w.name),
            );
        }
        let mut vms = Vec::new();
        for v in &w.vms {
            let line = vm_lines.get(vm_index).copied();
            vm_index += 1;
            let remote = match v.source.to_str() {
                Some(a) if Address::is_vsphere(a) => {
                    match Address::parse(a) {
                        Err(e) => {
                            // Not echoed: the address may hold a password.
                            bad(line, format!("source: {e}"));
                            None
                        }
                        Ok(addr) if addr.is_pattern() && v.name.is_some() => {
                            bad(
                                line,
                                "`name:` names one VM; a pattern source stands for every VM it matches, each named after itself".into(),
                            );
                            None
                        }
                        Ok(addr) => {
                            let with_port = format!("{}:{}", addr.host, addr.port);
                            let key = [with_port, addr.host.clone()]
                                .into_iter()
                                .find(|k| servers.contains_key(k));
                            let settings = match key {
                                Some(k) => {
                                    let s = servers[&k].clone();
                                    servers_used.insert(k);
                                    s
                                }
                                None => ConnectSettings::default(),
                            };
                            Some(VsphereRef {
                                address: addr,
                                settings,
                            })
                        }
                    }
                }
                _ => None,
            };
            let source = if Address::is_vsphere(&v.source.to_string_lossy()) {
                v.source.clone()
            } else {
                abs(&v.source)
            };
            let name = v.name.clone().unwrap_or_else(|| match &remote {
                Some(r) => r
                    .address
                    .inventory_path
                    .rsplit('/')
                    .next()
                    .unwrap_or_default()
                    .to_string(),
                None => source
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            });
            // A pattern's entry is a placeholder until `expand` replaces it with the
            // VMs it matches; those names are checked then.
            let pattern = remote.as_ref().is_some_and(|r| r.address.is_pattern());
            if !pattern && !valid_name(&name) {
                bad(
                    line,
                    format!("VM name {name:?}: use letters, digits, . _ - (set `name:`)"),
                );
            }
            if !pattern && !vm_names.insert(name.clone()) {
                bad(
                    line,
                    format!("VM name {name:?} appears twice; give one a `name:`"),
                );
            }
            let s = merge(&f.defaults, &v.settings());
            let (datastore, out) = match storage
                .iter()
                .filter(|(src, _)| remote.is_none() && source.starts_with(src))
                .max_by_key(|(src, _)| src.as_os_str().len())
            {
                Some((src, o)) => (src.clone(), o.join(&name)),
                None if remote.is_some() => {
                    let a = &remote.as_ref().expect("checked").address;
                    (
                        PathBuf::from(format!("vsphere://{}:{}", a.host, a.port)),
                        run_dir.join("vms").join(&name).join("out"),
                    )
                }
                None => (
                    source.parent().unwrap_or(Path::new("/")).to_path_buf(),
                    run_dir.join("vms").join(&name).join("out"),
                ),
            };
            let hook =
                |h: &Option<HookFile>, which: &str, bad: &mut dyn FnMut(Option<usize>, String)| {
                    h.as_ref().and_then(|h| {
                        if h.command.is_empty() || h.command[0].is_empty() {
                            bad(line, format!("VM {name}: {which} hook: `command` is empty"));
                            return None;
                        }
                        if h.timeout == Some(0) {
                            bad(
                                line_of(text, "timeout"),
                                format!("VM {name}: {which} hook: timeout must be at least 1 s"),
                            );
                        }
                        Some(Hook {
                            command: h.command.clone(),
                            timeout_s: h.timeout.unwrap_or(DEFAULT_HOOK_TIMEOUT_S).max(1),
                        })
                    })
                };
            if let Some(Err(e)) = s.thresholds.map(|t| t.check()) {
                bad(
                    line_of(text, "thresholds:").or(line),
                    format!("VM {name}: {e}"),
                );
            }
            let live = s.live.unwrap_or(false);
            for why in live_refusals(&s, live, remote.is_some(), f.target.is_some()) {
                bad(line, format!("VM {name}: {why}"));
            }
            let hooks = s.hooks.clone().unwrap_or_default();
            let pre = hook(&hooks.pre, "pre", &mut bad);
            let post = hook(&hooks.post, "post", &mut bad);
            let connect = s.connect.clone().unwrap_or_else(|| "qemu:///system".into());
            vms.push(VmPlan {
                name,
                source,
                vsphere: remote,
                ovf_vm: v.ovf_vm.clone(),
                out,
                datastore,
                disk_bus: match s.disk_bus {
                    Some(BusName::Scsi) => DiskBus::VirtioScsi,
                    _ => DiskBus::VirtioBlk,
                },
                compress: s.compress.unwrap_or(false),
                inject: s.inject.unwrap_or(true),
                validate: s.validate.unwrap_or(true),
                boot_timeout: Duration::from_secs(s.boot_timeout.unwrap_or(DEFAULT_BOOT_TIMEOUT_S)),
                backend: match s.backend {
                    Some(BackendName::Qemu) => Backend::Qemu,
                    _ => Backend::Libvirt {
                        uri: connect.clone(),
                    },
                },
                accel: s.accel.map(|a| match a {
                    AccelName::Kvm => Accel::Kvm,
                    AccelName::Tcg => Accel::Tcg,
                }),
                verify_manifest: s.verify_manifest.unwrap_or(true),
                virtio_win: s.virtio_win.as_deref().map(abs),
                pre,
                post,
                line,
                esxi_host: v.esxi_host.clone(),
                entry: vm_index - 1,
                deliver: f.target.as_ref().map(|t| v2k_migrate::Destination {
                    uri: t.uri.clone(),
                    pool: t.pool.clone(),
                    start: t.start,
                    autostart: t.autostart,
                }),
                // A live import starts only once the source is off: its cutover
                // is implied, as with `--live`.
                cutover: (s.cutover.unwrap_or(false) || live).then(|| {
                    v2k_migrate::cutover::Cutover {
                        timeout: Duration::from_secs(
                            s.shutdown_timeout.unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT_S),
                        ),
                        force_power_off: s.force_power_off.unwrap_or(false),
                    }
                }),
                host_topology: host_topology.clone(),
                baseline_dir: s.baseline_dir.as_deref().map(abs),
                thresholds: s.thresholds.unwrap_or_default(),
                fail_on_regression: s.fail_on_regression.unwrap_or(false),
                baseline_boot: s.baseline_boot.unwrap_or(false),
                live: live.then(|| {
                    v2k_migrate::live::LiveOptions::new(connect.clone(), s.live_bandwidth)
                }),
            });
        }
        waves.push(Wave {
            name: w.name.clone(),
            stop_after: w.stop_after.or(f.failure_policy.stop_after),
            vms,
        });
    }
    for key in servers.keys().filter(|k| !servers_used.contains(*k)) {
        bad(
            line_of(text, &format!("{key}:")),
            format!("vsphere: {key}: no VM source names this server (a typo would connect to the real one with the wrong settings)"),
        );
    }
    let mut outs = BTreeSet::new();
    for v in waves
        .iter()
        .flat_map(|w| &w.vms)
        .filter(|v| !v.is_pattern())
    {
        if !outs.insert(v.out.clone()) {
            bad(
                v.line,
                format!(
                    "VM {}: output directory {} is shared with another VM",
                    v.name,
                    v.out.display()
                ),
            );
        }
    }
    if !problems.is_empty() {
        return Err(Error::Plan(problems));
    }
    let hash = hex::encode(sha2::Sha256::digest(text.as_bytes()));
    Ok(Plan {
        path: path.to_path_buf(),
        hash,
        run_dir,
        conversion_host: f.conversion_host.clone(),
        network_map,
        limits,
        gate,
        rollback_window_seconds,
        waves,
        text: text.to_string(),
    })
}

/// Why a VM's `live:` settings cannot run, as `v2k migrate --live` refuses them: a
/// live import reads a vSphere datastore, runs the VM in `connect:`'s libvirt on this
/// host (not a delivery to the plan's `target:`, not the QEMU backend), and has no
/// boot of the source.
fn live_refusals(s: &Settings, live: bool, vsphere: bool, target: bool) -> Vec<String> {
    let mut why = Vec::new();
    if !live {
        if s.live_bandwidth.is_some() {
            why.push("`live-bandwidth:` needs `live: true`".into());
        }
        return why;
    }
    if !vsphere {
        why.push("`live: true` is for vSphere sources (vsphere://…): docs/live-import.md".into());
    }
    if target {
        why.push(
            "`live: true` runs the VM in `connect:`'s libvirt on this host; the plan's              `target:` (a delivery into a pool) is not for live imports"
                .into(),
        );
    }
    if s.backend == Some(BackendName::Qemu) {
        why.push("`live: true` runs the VM in libvirt (`connect:`), not `backend: qemu`".into());
    }
    if s.baseline_boot == Some(true) {
        why.push("`live: true` and `baseline-boot: true` do not go together (a vSphere VM's baseline comes from vCenter)".into());
    }
    if s.live_bandwidth == Some(0) {
        why.push("`live-bandwidth:` is at least 1 (MiB/s)".into());
    }
    why
}

/// A VM's settings: its own where given, else the plan's defaults.
fn merge(d: &Settings, v: &Settings) -> Settings {
    Settings {
        disk_bus: v.disk_bus.or(d.disk_bus),
        compress: v.compress.or(d.compress),
        inject: v.inject.or(d.inject),
        validate: v.validate.or(d.validate),
        boot_timeout: v.boot_timeout.or(d.boot_timeout),
        backend: v.backend.or(d.backend),
        connect: v.connect.clone().or_else(|| d.connect.clone()),
        accel: v.accel.or(d.accel),
        verify_manifest: v.verify_manifest.or(d.verify_manifest),
        virtio_win: v.virtio_win.clone().or_else(|| d.virtio_win.clone()),
        hooks: match (&v.hooks, &d.hooks) {
            (Some(vh), Some(dh)) => Some(HooksFile {
                pre: vh.pre.clone().or_else(|| dh.pre.clone()),
                post: vh.post.clone().or_else(|| dh.post.clone()),
            }),
            (vh, dh) => vh.clone().or_else(|| dh.clone()),
        },
        cutover: v.cutover.or(d.cutover),
        shutdown_timeout: v.shutdown_timeout.or(d.shutdown_timeout),
        force_power_off: v.force_power_off.or(d.force_power_off),
        baseline_dir: v.baseline_dir.clone().or_else(|| d.baseline_dir.clone()),
        // A VM's thresholds replace the defaults' as a whole.
        thresholds: v.thresholds.or(d.thresholds),
        fail_on_regression: v.fail_on_regression.or(d.fail_on_regression),
        baseline_boot: v.baseline_boot.or(d.baseline_boot),
        live: v.live.or(d.live),
        live_bandwidth: v.live_bandwidth.or(d.live_bandwidth),
    }
}

/// Names become directory and file names: keep them plain.
pub(crate) fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s != "."
        && s != ".."
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_err(text: &str) -> Vec<Problem> {
        match parse(text, Path::new("/plans/p.yaml")) {
            Err(Error::Plan(p)) => p,
            other => panic!("expected a plan error, got {other:?}"),
        }
    }

    const GOOD: &str = "\
version: 1
defaults:
  validate: false
  backend: qemu
  hooks:
    pre: { command: [/bin/true], timeout: 5 }
networks:
  VM Network: network:default
  DMZ: bridge:br0
storage:
  - source: /vmfs/ds1
    output: /srv/kvm/ds1
limits:
  vms: 2
  disks: 3
waves:
  - name: first
    vms:
      - source: /vmfs/ds1/web/web.vmx
      - source: ../other/db.ova
        name: db
        validate: true
        disk-bus: scsi
";

    #[test]
    fn resolves_defaults_overrides_storage_and_networks() {
        let p = parse(GOOD, Path::new("/plans/p.yaml")).unwrap();
        assert_eq!(p.run_dir, PathBuf::from("/plans/p.run"));
        assert_eq!(p.limits.vms, 2);
        assert_eq!(p.limits.disks, 3);
        assert_eq!(p.limits.per_datastore, usize::MAX);
        assert_eq!(p.network_map.0.len(), 2);
        let w = &p.waves[0];
        assert_eq!(w.vms[0].name, "web");
        assert_eq!(w.vms[0].out, PathBuf::from("/srv/kvm/ds1/web"));
        assert_eq!(w.vms[0].datastore, PathBuf::from("/vmfs/ds1"));
        assert!(!w.vms[0].validate);
        assert_eq!(w.vms[0].pre.as_ref().unwrap().timeout_s, 5);
        assert_eq!(w.vms[1].source, PathBuf::from("/plans/../other/db.ova"));
        assert_eq!(w.vms[1].out, PathBuf::from("/plans/p.run/vms/db/out"));
        assert!(w.vms[1].validate);
        assert_eq!(w.vms[1].disk_bus, DiskBus::VirtioScsi);
        assert_eq!(w.vms[1].backend, Backend::Qemu);
        assert_eq!(w.vms[1].line, Some(20));
    }

    #[test]
    fn virtio_win_comes_from_defaults_or_the_vm_relative_to_the_plan() {
        let text = GOOD
            .replace(
                "  validate: false\n",
                "  validate: false\n  virtio-win: drivers/vw\n",
            )
            .replace(
                "        disk-bus: scsi\n",
                "        disk-bus: scsi\n        virtio-win: /iso/vw\n",
            );
        let p = parse(&text, Path::new("/plans/p.yaml")).unwrap();
        let vms = &p.waves[0].vms;
        assert_eq!(vms[0].virtio_win, Some(PathBuf::from("/plans/drivers/vw")));
        assert_eq!(vms[1].virtio_win, Some(PathBuf::from("/iso/vw")));
        let o = vms[0].migrate_options(&p.network_map);
        assert_eq!(o.virtio_win, Some(PathBuf::from("/plans/drivers/vw")));
        assert_eq!(
            parse(GOOD, Path::new("/plans/p.yaml")).unwrap().waves[0].vms[0].virtio_win,
            None
        );
    }

    const LIVE: &str = "\
version: 1
defaults:
  live: true
  connect: qemu:///session
waves:
  - name: first
    vms:
      - source: vsphere://svc@vc01/DC1/vm/web01
        live-bandwidth: 200
        shutdown-timeout: 60
      - source: vsphere://svc@vc01/DC1/vm/db01
        live: false
";

    #[test]
    fn live_comes_from_defaults_or_the_vm_and_implies_the_cutover() {
        let p = parse(LIVE, Path::new("/plans/p.yaml")).unwrap();
        let [web, db] = &p.waves[0].vms[..] else {
            panic!("two VMs")
        };
        let o = web.migrate_options(&p.network_map);
        assert_eq!(
            o.live,
            Some(v2k_migrate::live::LiveOptions::new(
                "qemu:///session",
                Some(200)
            )),
            "run in `connect:`'s libvirt, as --live runs in --connect's"
        );
        assert_eq!(
            o.cutover,
            Some(v2k_migrate::cutover::Cutover {
                timeout: Duration::from_secs(60),
                force_power_off: false
            }),
            "implied, with the VM's own shutdown settings"
        );
        let o = db.migrate_options(&p.network_map);
        assert_eq!(o.live, None, "the VM's `live: false` wins");
        assert_eq!(o.cutover, None);
    }

    /// The refusals of `v2k migrate --live`, as plan errors naming the VM and its line.
    #[test]
    fn live_settings_that_cannot_run_are_plan_errors_naming_the_vm() {
        let local = GOOD.replace("  validate: false\n", "  validate: false\n  live: true\n");
        let p = parse_err(&local);
        let web = p
            .iter()
            .find(|p| p.message.starts_with("VM web:"))
            .expect("web refused");
        assert!(web.message.contains("for vSphere sources"), "{p:?}");
        assert_eq!(web.line, Some(20), "the VM's entry");
        let db = p.iter().find(|p| p.message.starts_with("VM db:")).unwrap();
        assert_eq!(db.line, Some(21));
        // backend: qemu comes from GOOD's defaults too.
        assert!(
            p.iter().any(|p| p.message
                == "VM web: `live: true` runs the VM in libvirt (`connect:`), not `backend: qemu`"),
            "{p:?}"
        );

        let delivered = format!("{LIVE}target:\n  uri: qemu+ssh://kvm01/system\n  pool: default\n");
        let p = parse_err(&delivered);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].message
                .starts_with("VM web01: `live: true` runs the VM in `connect:`'s libvirt")
                && p[0].message.contains("`target:`"),
            "{p:?}"
        );
        assert_eq!(p[0].line, Some(8));

        let stray = LIVE.replace(
            "        live: false\n",
            "        live: false\n        live-bandwidth: 5\n",
        );
        let p = parse_err(&stray);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(
            p[0].message,
            "VM db01: `live-bandwidth:` needs `live: true`"
        );

        let zero = LIVE.replace("live-bandwidth: 200", "live-bandwidth: 0");
        let p = parse_err(&zero);
        assert_eq!(
            p[0].message,
            "VM web01: `live-bandwidth:` is at least 1 (MiB/s)"
        );

        let booted = LIVE.replace("  live: true\n", "  live: true\n  baseline-boot: true\n");
        let p = parse_err(&booted);
        assert!(
            p[0].message
                .contains("`baseline-boot: true` do not go together"),
            "{p:?}"
        );
    }

    #[test]
    fn cutover_settings_come_from_defaults_or_the_vm() {
        let text = GOOD
            .replace("  validate: false\n", "  validate: false\n  cutover: true\n")
            .replace(
                "        disk-bus: scsi\n",
                "        disk-bus: scsi\n        shutdown-timeout: 60\n        force-power-off: true\n",
            );
        let p = parse(&text, Path::new("/plans/p.yaml")).unwrap();
        let o: Vec<_> = p.waves[0]
            .vms
            .iter()
            .map(|v| v.migrate_options(&p.network_map).cutover)
            .collect();
        assert_eq!(
            o[0],
            Some(v2k_migrate::cutover::Cutover {
                timeout: Duration::from_secs(DEFAULT_SHUTDOWN_TIMEOUT_S),
                force_power_off: false
            })
        );
        assert_eq!(
            o[1],
            Some(v2k_migrate::cutover::Cutover {
                timeout: Duration::from_secs(60),
                force_power_off: true
            })
        );
        let p = parse(GOOD, Path::new("/plans/p.yaml")).unwrap();
        assert_eq!(p.waves[0].vms[0].cutover, None);
    }

    #[test]
    fn baselines_thresholds_and_fail_on_regression_come_from_defaults_or_the_vm() {
        let text = GOOD
            .replace(
                "  validate: false\n",
                "  validate: false\n  baseline-dir: base\n  baseline-boot: true\n  thresholds:\n    cpu-ready-percent: 3\n",
            )
            .replace(
                "        disk-bus: scsi\n",
                "        disk-bus: scsi\n        fail-on-regression: true\n        baseline-boot: false\n        thresholds: { latency-factor: 4 }\n",
            );
        let p = parse(&text, Path::new("/plans/p.yaml")).unwrap();
        let (web, db) = (&p.waves[0].vms[0], &p.waves[0].vms[1]);
        assert_eq!(web.baseline_dir.as_deref(), Some(Path::new("/plans/base")));
        assert_eq!(db.baseline_dir, web.baseline_dir);
        assert_eq!(web.thresholds.cpu_ready_percent, 3.0);
        assert!(!web.fail_on_regression && db.fail_on_regression);
        // baseline-boot from the defaults, unless the VM says otherwise.
        assert!(web.baseline_boot && !db.baseline_boot);
        // A VM's thresholds replace the defaults' as a whole.
        assert_eq!(db.thresholds.latency_factor, 4.0);
        assert_eq!(db.thresholds.cpu_ready_percent, 5.0);
        let p = parse(GOOD, Path::new("/plans/p.yaml")).unwrap();
        assert_eq!(p.waves[0].vms[0].baseline_dir, None);
        assert!(!p.waves[0].vms[0].baseline_boot);
        // A metric name that does not exist, and a threshold that compares nothing.
        let e = parse_err(&GOOD.replace(
            "  validate: false\n",
            "  validate: false\n  thresholds:\n    cpu-ready: 3\n",
        ));
        assert!(e[0].message.contains("unknown field `cpu-ready`"), "{e:?}");
        let e = parse_err(&GOOD.replace(
            "  validate: false\n",
            "  validate: false\n  thresholds:\n    latency-factor: 0.5\n",
        ));
        assert!(
            e[0].message.contains("latency-factor: 0.5 is below 1") && e[0].line == Some(4),
            "{e:?}"
        );
    }

    #[test]
    fn a_target_maps_tuning_onto_its_own_host_unless_the_plan_names_one() {
        let with = |extra: &str| {
            let text = GOOD.replace(
                "limits:\n",
                &format!(
                    "target:\n  uri: qemu+ssh://root@kvm01/system\n  pool: vms\n{extra}limits:\n"
                ),
            );
            parse(&text, Path::new("/plans/p.yaml")).unwrap().waves[0].vms[0]
                .migrate_options(&NetworkMap::default())
                .host_topology
        };
        assert_eq!(
            with(""),
            HostSource::Uri("qemu+ssh://root@kvm01/system".into())
        );
        assert_eq!(
            with("  host-topology: caps/kvm01.xml\n"),
            HostSource::File("/plans/caps/kvm01.xml".into())
        );
        assert_eq!(
            with("  host-topology: qemu:///system\n"),
            HostSource::Uri("qemu:///system".into())
        );
        assert_eq!(
            parse(GOOD, Path::new("/plans/p.yaml")).unwrap().waves[0].vms[0].host_topology,
            HostSource::Local
        );
    }

    #[test]
    fn a_target_section_delivers_every_vm_to_its_pool() {
        let text = GOOD.replace(
            "limits:\n",
            "target:\n  uri: qemu+ssh://root@kvm01/system\n  pool: vms\n  autostart: true\nlimits:\n",
        );
        let p = parse(&text, Path::new("/plans/p.yaml")).unwrap();
        let want = v2k_migrate::Destination {
            uri: "qemu+ssh://root@kvm01/system".into(),
            pool: "vms".into(),
            start: false,
            autostart: true,
        };
        for vm in &p.waves[0].vms {
            assert_eq!(
                vm.migrate_options(&p.network_map).deliver,
                Some(want.clone())
            );
        }
        assert_eq!(
            parse(GOOD, Path::new("/plans/p.yaml")).unwrap().waves[0].vms[0]
                .migrate_options(&NetworkMap::default())
                .deliver,
            None
        );
        let e = parse_err(&GOOD.replace(
            "limits:\n",
            "target:\n  uri: qemu:///system\n  pool: ''\nlimits:\n",
        ));
        assert!(
            e[0].message.contains("uri and pool must both be set"),
            "{e:?}"
        );
        assert_eq!(e[0].line, Some(13), "the line of `target:`");
        let e = parse_err(&GOOD.replace("limits:\n", "target:\n  uri: qemu:///system\nlimits:\n"));
        assert!(e[0].message.contains("pool"), "{e:?}");
    }

    const VSPHERE: &str = "\
version: 1
vsphere:
  vc01.example.com:
    password-file: secrets/vc01.pw
    thumbprint: AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89
waves:
  - name: w
    vms:
      - source: vsphere://svc%40vsphere.local@vc01.example.com/DC1/vm/web/web01
      - source: vsphere://svc@esx7:8443/ha-datacenter/vm/db01
        name: db
";

    #[test]
    fn resolves_vsphere_sources_and_their_servers_settings() {
        let p = parse(VSPHERE, Path::new("/plans/p.yaml")).unwrap();
        let vms = &p.waves[0].vms;
        assert_eq!(vms[0].name, "web01");
        let r = vms[0].vsphere.as_ref().unwrap();
        assert_eq!(r.address.user, "svc@vsphere.local");
        assert_eq!(r.address.inventory_path, "DC1/vm/web/web01");
        assert_eq!(
            r.settings.password_file,
            Some(PathBuf::from("/plans/secrets/vc01.pw"))
        );
        assert!(r.settings.thumbprint.is_some());
        assert_eq!(
            vms[0].source,
            PathBuf::from("vsphere://svc%40vsphere.local@vc01.example.com/DC1/vm/web/web01")
        );
        assert_eq!(
            vms[0].datastore,
            PathBuf::from("vsphere://vc01.example.com:443")
        );
        assert_eq!(vms[0].out, PathBuf::from("/plans/p.run/vms/web01/out"));
        // A server the plan does not describe: verified against the system roots,
        // password from the environment.
        let r = vms[1].vsphere.as_ref().unwrap();
        assert_eq!(r.address.port, 8443);
        assert_eq!(r.settings, ConnectSettings::default());
        assert_eq!(vms[1].datastore, PathBuf::from("vsphere://esx7:8443"));
        assert!(
            parse(GOOD, Path::new("/plans/p.yaml")).unwrap().waves[0].vms[0]
                .vsphere
                .is_none()
        );
    }

    #[test]
    fn refuses_passwords_patterns_bad_pins_and_unused_servers() {
        let p = parse_err(&VSPHERE.replace(
            "    password-file: secrets/vc01.pw\n",
            "    password: hunter2\n",
        ));
        assert!(
            p.iter()
                .any(|p| p.line == Some(4) && p.message.contains("never holds a password")),
            "{p:?}"
        );
        assert!(!format!("{p:?}").contains("hunter2"), "{p:?}");
        let p = parse_err(&VSPHERE.replace("vm/db01", "vm/db*"));
        assert!(
            p.iter()
                .any(|p| p.line == Some(10) && p.message.contains("pattern source stands for")),
            "{p:?}"
        );
        // Without a `name:`, a pattern is a placeholder for `expand`.
        let p = parse(
            &VSPHERE.replace("vm/web/web01", "vm/web/web*"),
            Path::new("/plans/p.yaml"),
        )
        .unwrap();
        assert!(p.waves[0].vms[0].is_pattern());
        assert!(!p.waves[0].vms[1].is_pattern());
        let p = parse_err(&VSPHERE.replace("AB:CD:EF:01:23:45:67:89:AB", "ZZ"));
        assert!(
            p.iter()
                .any(|p| p.line == Some(3) && p.message.contains("thumbprint")),
            "{p:?}"
        );
        let p = parse_err(&VSPHERE.replace(
            "    password-file: secrets/vc01.pw\n",
            "    password-file: secrets/vc01.pw\n    insecure: true\n",
        ));
        assert!(
            p.iter().any(|p| p.message.contains("insecure cannot")),
            "{p:?}"
        );
        let p = parse_err(&VSPHERE.replace("  vc01.example.com:", "  vc1.example.com:"));
        assert!(
            p.iter()
                .any(|p| p.line == Some(3) && p.message.contains("no VM source names")),
            "{p:?}"
        );
        let p = parse_err(&VSPHERE.replace("svc@esx7", "svc:s3cret@esx7"));
        assert!(
            p.iter()
                .any(|p| p.line == Some(10) && p.message.contains("password")),
            "{p:?}"
        );
        assert!(!format!("{p:?}").contains("s3cret"), "{p:?}");
    }

    #[test]
    fn rejects_an_unknown_key_with_its_line_number() {
        let text = GOOD.replace("        disk-bus: scsi", "        disk-buss: scsi");
        let p = parse_err(&text);
        assert_eq!(p[0].line, Some(23), "{p:?}");
        assert!(p[0].message.contains("unknown field `disk-buss`"), "{p:?}");
    }

    #[test]
    fn rejects_an_unknown_top_level_key_with_its_line_number() {
        let p = parse_err("version: 1\nwaves: []\nlimtis: {vms: 2}\n");
        assert_eq!(p[0].line, Some(3), "{p:?}");
        assert!(p[0].message.contains("limtis"), "{p:?}");
    }

    #[test]
    fn rejects_a_bad_enum_value_with_its_line_number() {
        let text = GOOD.replace("backend: qemu", "backend: vbox");
        let p = parse_err(&text);
        assert_eq!(p[0].line, Some(4), "{p:?}");
    }

    #[test]
    fn rejects_a_bad_network_target_with_its_line_number() {
        let text = GOOD.replace("bridge:br0", "bridge:br0;rm");
        let p = parse_err(&text);
        assert_eq!(p[0].line, Some(9), "{p:?}");
        assert!(p[0].message.starts_with("networks:"), "{p:?}");
    }

    #[test]
    fn rejects_duplicate_vm_names_and_unsupported_versions() {
        let text = GOOD
            .replace("version: 1", "version: 7")
            .replace("name: db", "name: web");
        let p = parse_err(&text);
        assert!(
            p.iter()
                .any(|p| p.line == Some(1) && p.message.contains("version 7")),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|p| p.line == Some(20) && p.message.contains("appears twice")),
            "{p:?}"
        );
    }

    #[test]
    fn rejects_zero_limits_and_empty_hooks() {
        let text = GOOD
            .replace("vms: 2", "vms: 0")
            .replace("[/bin/true]", "[]");
        let p = parse_err(&text);
        assert!(p.iter().any(|p| p.message.contains("limits.vms")), "{p:?}");
        assert!(
            p.iter().any(|p| p.message.contains("`command` is empty")),
            "{p:?}"
        );
    }

    #[test]
    fn a_missing_required_key_is_reported() {
        let p = parse_err("version: 1\n");
        assert!(p[0].message.contains("waves"), "{p:?}");
    }

    #[test]
    fn a_failed_login_is_a_typed_error_with_the_same_text() {
        let e = ConnectError {
            host: "vc.example".into(),
            port: 443,
            user: "ops".into(),
            why: "connection refused".into(),
        };
        assert_eq!(
            e.to_string(),
            "connecting to vc.example:443 as ops: connection refused"
        );
    }
}
