//! Windows guests: moves a converted Windows from VMware's PVSCSI/VMXNET3 to virtio.
//!
//! Offline, inside the libguestfs appliance, only what boot needs is done (as virt-v2v
//! does, FIELD-NOTES §2): the boot storage driver (viostor, or vioscsi with
//! `--disk-bus scsi`) is copied to `System32\drivers` and registered as a boot-start
//! service bound to the virtio PCI ids; every driver package for this Windows version
//! and architecture is copied to `%SystemRoot%\Drivers\VirtIO` and put on the driver
//! search path; VMware's storage and network services are made harmless; crash-dump
//! auto-reboot is turned off. Everything else — installing the other drivers, removing
//! VMware Tools, restoring static IPs, reporting to the validator — is done by a
//! first-boot service with capped retries ([`firstboot`]).
//!
//! [`convert`] refuses (before any write) BitLocker, hibernated and Fast Startup
//! guests, unsupported versions, a damaged registry, and a virtio-win source without
//! the drivers this Windows needs. Every registry value set is recorded with its key,
//! name, old and new value. docs/windows.md is the user guide and the comparison with
//! virt-v2v.

pub mod edits;
pub mod firstboot;
pub mod inspect;
pub mod registry;
pub mod virtio_win;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::appliance::{gerr, Appliance};
use crate::edit::DiskBus;
use crate::error::{Error, Result};
use crate::inspect::{Bootloader, ConfiguredNic, Inspection, Mount};
use crate::log::{Change, Unchanged};
use edits::{Edit, HiveName};
use inspect::{Located, WindowsInspection};
use registry::{Hive, RegistryChange};

/// The environment variable naming the virtio-win source (virt-v2v's name too).
pub(crate) const VIRTIO_WIN_ENV: &str = "VIRTIO_WIN";
/// Bumped when a field of [`Report`] is removed or changes meaning.
pub(crate) const REPORT_SCHEMA_VERSION: u32 = 1;

/// Windows settings of an injection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The virtio-win directory (`--virtio-win`, else `$VIRTIO_WIN`).
    pub virtio_win: Option<PathBuf>,
    /// First-boot runs with failures before the script gives up.
    pub max_attempts: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            virtio_win: None,
            max_attempts: firstboot::DEFAULT_MAX_ATTEMPTS,
        }
    }
}

impl Options {
    /// `$VIRTIO_WIN` when set and non-empty.
    pub fn from_env() -> Options {
        Options {
            virtio_win: std::env::var_os(VIRTIO_WIN_ENV)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            ..Options::default()
        }
    }
}

/// A driver package copied into the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct CopiedDriver {
    pub name: String,
    /// Its folder in the guest (`C:\Windows\Drivers\VirtIO\viostor`).
    pub guest_dir: String,
    pub files: Vec<String>,
    /// The host folder it came from (`ISO:driver/os/arch` for an ISO source).
    pub source: String,
}

/// Everything Windows-specific an injection did: `windows.json` next to the
/// conversion log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Report {
    pub schema_version: u32,
    /// `windows-report`.
    #[serde(rename = "type")]
    pub kind: String,
    pub inspection: WindowsInspection,
    /// `viostor` or `vioscsi`.
    pub boot_driver: String,
    pub drivers: Vec<CopiedDriver>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_agent: Option<String>,
    /// Every registry value set, in order.
    pub registry: Vec<RegistryChange>,
    pub first_boot: FirstBoot,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct FirstBoot {
    pub service: String,
    /// The script's guest path (`C:\Windows\v2k\firstboot.ps1`).
    pub script: String,
    pub max_attempts: u32,
    pub driver_infs: Vec<String>,
    pub uninstall: Vec<String>,
    pub static_ips: usize,
}

/// What [`convert`] gives the caller for the conversion log.
pub struct Outcome {
    pub inspection: Inspection,
    pub report: Report,
    pub changes: Vec<Change>,
    pub unchanged: Vec<Unchanged>,
    pub warnings: Vec<String>,
}

/// libguestfs' message of an error.
pub(crate) fn gtext(e: guestfs::Error) -> String {
    match gerr("")(e) {
        Error::Guestfs { message, .. } => message,
        other => other.to_string(),
    }
}

/// The refusal when no driver source was given.
pub(crate) fn no_source_error() -> Error {
    Error::Refused(format!(
        "Windows guest: the virtio drivers are needed; give the virtio-win directory with \
         --virtio-win PATH or ${VIRTIO_WIN_ENV}; nothing was changed"
    ))
}

/// A guest path under the system root as Windows writes it (`C:\Windows\...`).
fn win_path(insp: &WindowsInspection, rel: &str) -> String {
    format!(
        "{}\\{}",
        insp.system_root.trim_end_matches('\\'),
        rel.replace('/', "\\")
    )
}

fn sha256_hex(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// A file to put under the system root.
struct Placement {
    /// Path relative to the system root, `/`-separated, with the disk's own case.
    rel: String,
    bytes: Vec<u8>,
    /// Conversion-log step and the Windows path it is logged under.
    step: &'static str,
    what: String,
}

/// A private host temporary file (created exclusively, never through a link, mode
/// 0600), by the workspace's one file-creation helper.
fn host_temp(tag: &str) -> Result<TempFile> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let p = std::env::temp_dir().join(format!("v2k-{}-{nanos}-{tag}", std::process::id()));
    let file = v2k_outfile::create_new(&p, 0o600).map_err(|e| match e {
        v2k_outfile::Error::Io { path, source, .. } => Error::io(path, source),
        other => Error::Input(other.to_string()),
    })?;
    Ok(TempFile(p, file))
}

/// A host temporary file, written by its descriptor; removed when dropped.
struct TempFile(PathBuf, std::fs::File);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// SHA-256 of every file under a guest folder, keyed by `prefix/relative path`.
fn guest_sums(
    app: &Appliance,
    dir: &str,
    prefix: &str,
) -> Result<std::collections::HashMap<String, String>> {
    let tmp = host_temp("sums")?;
    let host = crate::appliance::path_str(&tmp.0)?;
    app.g
        .checksums_out("sha256", dir, host)
        .map_err(gerr(format!("checksums_out {dir}")))?;
    let text = std::fs::read_to_string(&tmp.0).map_err(|e| Error::io(&tmp.0, e))?;
    let mut out = std::collections::HashMap::new();
    for line in text.lines() {
        if let Some((sum, path)) = line.split_once("  ") {
            let path = path.trim_start_matches("./");
            out.insert(format!("{prefix}/{path}"), sum.trim().to_ascii_lowercase());
        }
    }
    Ok(out)
}

/// Longest member name in the ustar `name` field.
const USTAR_NAME: usize = 100;

/// A POSIX ustar archive of `files` (regular files, mode 0644, owner root).
fn ustar(files: &[&Placement]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for f in files {
        let name = f.rel.as_bytes();
        if name.len() > USTAR_NAME {
            return Err(Error::Input(format!(
                "{}: path too long for the archive",
                f.rel
            )));
        }
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name);
        h[100..108].copy_from_slice(b"0000644\0");
        h[108..116].copy_from_slice(b"0000000\0");
        h[116..124].copy_from_slice(b"0000000\0");
        let size = format!("{:011o}\0", f.bytes.len());
        if size.len() != 12 {
            return Err(Error::Input(format!(
                "{}: too large for the archive",
                f.rel
            )));
        }
        h[124..136].copy_from_slice(size.as_bytes());
        h[136..148].copy_from_slice(b"00000000000\0");
        h[148..156].copy_from_slice(b"        ");
        h[156] = b'0';
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(&f.bytes);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend_from_slice(&[0u8; 1024]);
    Ok(out)
}

/// Puts the files into the guest under `root` with one tar_in.
fn place(app: &Appliance, root: &str, files: &[&Placement]) -> Result<()> {
    let tmp = host_temp("files.tar")?;
    std::io::Write::write_all(&mut &tmp.1, &ustar(files)?).map_err(|e| Error::io(&tmp.0, e))?;
    let host = crate::appliance::path_str(&tmp.0)?;
    app.g
        .tar_in(
            host,
            root,
            guestfs::TarInOptArgs {
                compress: None,
                xattrs: None,
                selinux: None,
                acls: None,
            },
        )
        .map_err(gerr(format!("tar_in {} file(s) to {root}", files.len())))
}

/// Writes a guest text file unless it already holds exactly `content`.
fn put(app: &Appliance, guest: &str, content: &str) -> Result<bool> {
    if app.is_file(guest)? {
        let old = app
            .g
            .read_file(guest)
            .map_err(gerr(format!("reading {guest}")))?;
        if old == content.as_bytes() {
            return Ok(false);
        }
    }
    app.write(guest, content)?;
    Ok(true)
}

/// The guest directory `rel` under the system root, with the case the disk has for
/// the parts that exist, created when missing. One component at a time, by listing:
/// NTFS through ntfs-3g is case-sensitive, Windows is not, so `drivers` must be found
/// as `Drivers` when that is how the disk spells it.
fn guest_dir(app: &Appliance, insp: &WindowsInspection, rel: &str) -> Result<String> {
    let mut cur = insp.system_root_path.clone();
    for comp in rel.split('/').filter(|c| !c.is_empty()) {
        let existing = app
            .ls(&cur)?
            .into_iter()
            .find(|n| n.eq_ignore_ascii_case(comp));
        let real = format!("{cur}/{}", existing.as_deref().unwrap_or(comp));
        if !app.is_dir(&real)? {
            app.g.mkdir(&real).map_err(gerr(format!("mkdir {real}")))?;
        }
        cur = real;
    }
    Ok(cur)
}

/// A NIC of the VM: its VMware index (`ethernetN`) and MAC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicRef {
    pub index: u32,
    pub mac: String,
}

/// The VMware NIC index a connection name names: `Ethernet0` → 0 (the firmware label
/// VMware hardware 13+ gives `ethernet0`, which Windows takes as the name).
fn cdn_index(name: &str) -> Option<u32> {
    let digits = name.strip_prefix("Ethernet")?;
    if digits.is_empty() || digits.len() > 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Pairs the static configurations with the VM's NICs: first by the connection
/// name's `EthernetN` (the same NIC, whatever order the adapters were installed
/// in), then the rest in adapter install order with the NICs left.
fn pair_static_ips(
    statics: &mut [inspect::StaticIp],
    nics: &[NicRef],
    warnings: &mut Vec<String>,
) -> Vec<firstboot::StaticConfig> {
    let mut taken = vec![false; nics.len()];
    let mut chosen: Vec<Option<usize>> = vec![None; statics.len()];
    for (i, s) in statics.iter().enumerate() {
        let Some(n) = s.connection.as_deref().and_then(cdn_index) else {
            continue;
        };
        if let Some(k) = nics.iter().position(|x| x.index == n) {
            if !taken[k] {
                taken[k] = true;
                chosen[i] = Some(k);
            }
        }
    }
    let by_order = chosen.iter().filter(|c| c.is_none()).count();
    if by_order > 1 {
        warnings.push(format!(
            "{by_order} interfaces with static IPv4 settings have no EthernetN connection \
             name: they are restored on the VM's remaining NICs in adapter install order \
             (check the result)"
        ));
    }
    let mut out = Vec::new();
    for (i, s) in statics.iter_mut().enumerate() {
        let k = match chosen[i] {
            Some(k) => Some(k),
            None => {
                let k = taken.iter().position(|t| !t);
                if let Some(k) = k {
                    taken[k] = true;
                }
                k
            }
        };
        let Some(k) = k else {
            warnings.push(format!(
                "static IPv4 settings of interface {} ({}) not restored: the VM has no NIC \
                 left for them",
                s.interface,
                s.addresses.join(", ")
            ));
            continue;
        };
        let mac = nics[k].mac.clone();
        s.mac = Some(mac.clone());
        out.push(firstboot::StaticConfig {
            mac,
            addresses: s.addresses.clone(),
            masks: s.masks.clone(),
            gateways: s.gateways.clone(),
            dns: s.dns.clone(),
        });
    }
    out
}

/// Applies registry edits to one open hive, recording a log change per value set.
fn apply_edits(hive: &mut Hive, list: &[Edit], changes: &mut Vec<Change>) -> Result<usize> {
    let mut n = 0;
    for e in list {
        let key: Vec<&str> = e.key.iter().map(String::as_str).collect();
        if hive.set(&key, &e.value, &e.data)? {
            n += 1;
            let rc = hive.changes.last().cloned().expect("set recorded a change");
            let name = if rc.value.is_empty() {
                "(default)"
            } else {
                rc.value.as_str()
            };
            changes.push(Change {
                step: e.step.into(),
                file: format!("HKLM\\{}\\{}", rc.hive, rc.key),
                action: if rc.before.is_some() {
                    "registry-changed"
                } else {
                    "registry-added"
                }
                .into(),
                before: rc
                    .before
                    .map(|b| format!("{name} = {b}"))
                    .unwrap_or_default(),
                after: format!("{name} = {}", rc.after),
                command: None,
                seconds: None,
            });
        }
    }
    Ok(n)
}

/// Converts the Windows install found at `loc`. `bitlocker` lists BitLocker volumes
/// of the disk set. On return the appliance is still open (the caller closes it).
pub fn convert(
    app: &Appliance,
    loc: &Located,
    bitlocker: &[String],
    bus: DiskBus,
    nics: &[NicRef],
    win: &Options,
    progress: &mut dyn FnMut(&str),
) -> Result<Outcome> {
    let g = &app.g;
    if !bitlocker.is_empty() {
        return Err(Error::Refused(format!(
            "BitLocker-encrypted volume(s) {}: v2k cannot read or change them offline; \
             decrypt them on VMware first (`manage-bde -off C:`), then migrate",
            bitlocker.join(", ")
        )));
    }
    let Some(source) = win.virtio_win.clone() else {
        return Err(no_source_error());
    };

    let t0 = std::time::Instant::now();
    // 1. Inspection, read-only.
    if !loc.mounted {
        g.mount_ro(&loc.root, "/")
            .map_err(gerr(format!("mount_ro {}", loc.root)))?;
    }
    let inspected = inspect::inspect(app, loc);
    g.umount_all().map_err(gerr("umount_all"))?;
    let mut insp = inspected?;
    progress(&format!(
        "found {} ({}, {}.{} build {}, {}), control set {}",
        insp.name,
        insp.product_name,
        insp.major,
        insp.minor,
        insp.build,
        insp.arch,
        insp.control_set
    ));
    let Some(os) = insp.virtio_os.clone() else {
        return Err(Error::Refused(format!(
            "{}: no virtio-win folder is known for this version",
            insp.name
        )));
    };

    // 2. Drivers for this version and architecture; the boot and network drivers are
    // required, everything else the source has for it is copied too.
    let found = virtio_win::scan(&source, &os, &insp.virtio_arch)?;
    let boot = match bus {
        DiskBus::VirtioBlk => "viostor",
        DiskBus::VirtioScsi => "vioscsi",
    };
    for need in [boot, virtio_win::NET_DRIVER] {
        if found.get(need).is_none() {
            return Err(virtio_win::missing(
                &source,
                need,
                &insp.name,
                &os,
                &insp.virtio_arch,
            ));
        }
    }
    let boot_drv = found.get(boot).expect("checked above");
    let boot_sys = boot_drv
        .files
        .iter()
        .find(|f| f.eq_ignore_ascii_case(&format!("{boot}.sys")))
        .cloned()
        .ok_or_else(|| {
            virtio_win::missing(
                &source,
                &format!("{boot}.sys"),
                &insp.name,
                &os,
                &insp.virtio_arch,
            )
        })?;
    let mut warnings = Vec::new();
    let statics = pair_static_ips(&mut insp.static_ips, nics, &mut warnings);

    // 3. From here on the guest is written: NTFS read-write. ntfs-3g refuses a volume
    // whose journal is dirty (an unclean shutdown, Fast Startup).
    g.mount(&loc.root, "/").map_err(|e| {
        Error::Refused(format!(
            "cannot mount the Windows volume {} read-write ({}): Windows was not shut down \
             cleanly (Fast Startup, hibernation or a crash); boot it on VMware and shut it \
             down fully, then migrate",
            loc.root,
            gtext(e)
        ))
    })?;
    let mut changes = Vec::new();
    let mut unchanged = Vec::new();

    // Every file goes in with ONE tar_in call, and what is already there is found with
    // one checksums_out per folder: under TCG each appliance call costs tens of
    // milliseconds, and a driver set is dozens of files.
    let vio_dir = guest_dir(app, &insp, &edits::DRIVER_DIR.replace('\\', "/"))?;
    let sys_dir = guest_dir(app, &insp, "System32/drivers")?;
    let v2k_dir = guest_dir(app, &insp, firstboot::DIR)?;
    let rel = |abs: &str| {
        abs.strip_prefix(&format!("{}/", insp.system_root_path))
            .unwrap_or(abs)
            .to_string()
    };
    let (vio_rel, sys_rel, v2k_rel) = (rel(&vio_dir), rel(&sys_dir), rel(&v2k_dir));
    let mut placements: Vec<Placement> = Vec::new();
    let mut copied = Vec::new();
    let mut infs = Vec::new();
    for d in &found.drivers {
        let id = d.id();
        let mut files = Vec::new();
        for f in &d.files {
            let name = f.to_ascii_lowercase();
            let host = d.dir.join(f);
            placements.push(Placement {
                rel: format!("{vio_rel}/{id}/{name}"),
                bytes: std::fs::read(&host).map_err(|e| Error::io(&host, e))?,
                step: "drivers",
                what: win_path(&insp, &format!("{}\\{id}", edits::DRIVER_DIR)),
            });
            files.push(name);
        }
        if let Some(inf) = d.inf() {
            infs.push(format!("{id}\\{}", inf.to_ascii_lowercase()));
        }
        copied.push(CopiedDriver {
            name: id.clone(),
            guest_dir: win_path(&insp, &format!("{}\\{id}", edits::DRIVER_DIR)),
            files,
            source: d.origin.clone(),
        });
    }
    // The boot driver also where the boot loader looks for it.
    let boot_host = boot_drv.dir.join(&boot_sys);
    placements.push(Placement {
        rel: format!("{sys_rel}/{boot}.sys"),
        bytes: std::fs::read(&boot_host).map_err(|e| Error::io(&boot_host, e))?,
        step: "boot-driver",
        what: win_path(&insp, &format!("System32\\drivers\\{boot}.sys")),
    });
    let mut guest_agent = None;
    if let Some(msi) = &found.guest_agent {
        let name = msi
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("qemu-ga.msi")
            .to_ascii_lowercase();
        placements.push(Placement {
            rel: format!("{v2k_rel}/{name}"),
            bytes: std::fs::read(msi).map_err(|e| Error::io(msi, e))?,
            step: "guest-agent",
            what: win_path(&insp, &format!("{}\\{name}", firstboot::DIR)),
        });
        guest_agent = Some(name);
    }

    // The first-boot script.
    let plan = firstboot::Plan {
        infs: infs.clone(),
        msi_uninstall: insp
            .vmware_tools
            .iter()
            .filter_map(|t| t.product_code.clone())
            .collect(),
        guest_agent: guest_agent.clone(),
        static_ips: statics,
        drives: insp
            .drives
            .iter()
            .filter(|d| d.device.is_some())
            .map(|d| d.letter.clone())
            .collect(),
        max_attempts: win.max_attempts,
    };
    for t in insp
        .vmware_tools
        .iter()
        .filter(|t| t.product_code.is_none())
    {
        warnings.push(format!(
            "{} ({}) is not an MSI install: it is not uninstalled at first boot",
            t.display_name, t.key
        ));
    }
    placements.push(Placement {
        rel: format!("{v2k_rel}/{}", firstboot::SCRIPT),
        bytes: firstboot::script(&plan).replace('\n', "\r\n").into_bytes(),
        step: "first-boot",
        what: win_path(&insp, &format!("{}\\{}", firstboot::DIR, firstboot::SCRIPT)),
    });
    progress(&format!(
        "inspected and prepared in {:.1} s",
        t0.elapsed().as_secs_f64()
    ));
    let mut have = guest_sums(app, &vio_dir, &vio_rel)?;
    have.extend(guest_sums(app, &v2k_dir, &v2k_rel)?);
    let boot_guest = format!("{sys_dir}/{boot}.sys");
    if app.is_file(&boot_guest)? {
        let sum = g
            .checksum("sha256", &boot_guest)
            .map_err(gerr(format!("checksum {boot_guest}")))?;
        have.insert(format!("{sys_rel}/{boot}.sys"), sum.to_ascii_lowercase());
    }
    let todo: Vec<&Placement> = placements
        .iter()
        .filter(|p| have.get(&p.rel) != Some(&sha256_hex(&p.bytes)))
        .collect();
    if !todo.is_empty() {
        place(app, &insp.system_root_path, &todo)?;
    }
    let mut seen = std::collections::BTreeSet::new();
    for p in &todo {
        if !seen.insert(p.what.clone()) {
            continue;
        }
        let names: Vec<&str> = todo
            .iter()
            .filter(|q| q.what == p.what)
            .filter_map(|q| q.rel.rsplit('/').next())
            .collect();
        changes.push(Change {
            step: p.step.into(),
            file: p.what.clone(),
            action: if p.step == "first-boot" {
                "created"
            } else {
                "copied"
            }
            .into(),
            before: String::new(),
            after: if p.step == "first-boot" {
                format!(
                    "{} driver(s), {} uninstall(s), {} static IP(s), at most {} attempts",
                    plan.infs.len(),
                    plan.msi_uninstall.len(),
                    plan.static_ips.len(),
                    plan.max_attempts
                )
            } else {
                names.join(" ")
            },
            command: None,
            seconds: None,
        });
    }
    let todo_count = todo.len();
    if todo.is_empty() {
        unchanged.push(Unchanged {
            step: "drivers".into(),
            reason: "every driver file and the first-boot script already in place".into(),
        });
    }

    progress(&format!(
        "{} file(s) placed ({:.1} s so far)",
        todo_count,
        t0.elapsed().as_secs_f64()
    ));
    // 4. SYSTEM: the boot driver, VMware services, crash control, first-boot service.
    let before_registry = changes.len();
    let cs = insp.control_set.clone();
    let mut sys = Hive::open(app, "SYSTEM", &loc.system_hive, true)?;
    let mut list = edits::boot_driver(&cs, boot, insp.driver_database);
    let mut current = Vec::new();
    for svc in &insp.vmware_services {
        let key = [cs.as_str(), "Services", svc.as_str()];
        current.push((
            svc.clone(),
            sys.get_dword(&key, "Start")?,
            sys.get_dword(&key, "ErrorControl")?,
        ));
    }
    list.extend(edits::vmware_services(&cs, &current));
    list.push(edits::crash_control(&cs));
    list.extend(firstboot::service_edits(&cs));
    apply_edits(&mut sys, &list, &mut changes)?;
    let mut registry = sys.commit()?;

    progress(&format!(
        "SYSTEM hive edited ({:.1} s so far)",
        t0.elapsed().as_secs_f64()
    ));
    // 5. SOFTWARE: the driver search path.
    if let Some(e) = edits::device_path(insp.device_path.as_deref()) {
        debug_assert_eq!(e.hive, HiveName::Software);
        let mut sw = Hive::open(app, "SOFTWARE", &loc.software_hive, true)?;
        apply_edits(&mut sw, std::slice::from_ref(&e), &mut changes)?;
        registry.extend(sw.commit()?);
    }
    if changes.len() == before_registry {
        unchanged.push(Unchanged {
            step: "registry".into(),
            reason: "every registry value already as wanted".into(),
        });
    }

    // 6. The marker, only when something else changed (a re-run stays change-free).
    let marker = serde_json::json!({
        "tool": format!("v2k inject {}", env!("CARGO_PKG_VERSION")),
        "boot-driver": boot,
        "control-set": cs,
    });
    let marker_text = serde_json::to_string_pretty(&marker).expect("marker serialises") + "\n";
    let marker_path = format!("{v2k_dir}/injected.json");
    if !changes.is_empty() && put(app, &marker_path, &marker_text)? {
        changes.push(Change {
            step: "marker".into(),
            file: win_path(&insp, &format!("{}\\injected.json", firstboot::DIR)),
            action: "created".into(),
            before: String::new(),
            after: String::new(),
            command: None,
            seconds: None,
        });
    }
    g.umount_all().map_err(gerr("umount_all"))?;

    let first_boot = FirstBoot {
        service: firstboot::SERVICE.into(),
        script: win_path(&insp, &format!("{}\\{}", firstboot::DIR, firstboot::SCRIPT)),
        max_attempts: plan.max_attempts,
        driver_infs: infs,
        uninstall: plan.msi_uninstall.clone(),
        static_ips: plan.static_ips.len(),
    };
    let inspection = summary_inspection(&insp);
    Ok(Outcome {
        inspection,
        report: Report {
            schema_version: REPORT_SCHEMA_VERSION,
            kind: "windows-report".into(),
            inspection: insp,
            boot_driver: boot.into(),
            drivers: copied,
            guest_agent,
            registry,
            first_boot,
        },
        changes,
        unchanged,
        warnings,
    })
}

/// The Windows inspection in the conversion log's (Linux-shaped) schema: drive
/// letters as mounts, static interfaces as configured NICs, no kernels.
pub(crate) fn summary_inspection(w: &WindowsInspection) -> Inspection {
    Inspection {
        root: w.root.clone(),
        os_type: "windows".into(),
        distro: "windows".into(),
        product_name: format!("{} ({}, build {})", w.product_name, w.name, w.build),
        major_version: i32::try_from(w.major).unwrap_or(i32::MAX),
        minor_version: i32::try_from(w.minor).unwrap_or(i32::MAX),
        arch: w.arch.clone(),
        hostname: w.hostname.clone(),
        package_format: "msi".into(),
        mounts: w
            .drives
            .iter()
            .filter_map(|d| {
                Some(Mount {
                    mountpoint: d.letter.clone(),
                    device: d.device.clone()?,
                    fstype: Some("ntfs".into()),
                })
            })
            .collect(),
        logical_volumes: Vec::new(),
        kernels: Vec::new(),
        initramfs_tool: None,
        bootloader: Bootloader {
            kind: if w.partition_table == "gpt" {
                "windows-bootmgr-efi"
            } else {
                "windows-bootmgr"
            }
            .into(),
            config: None,
            mkconfig: None,
        },
        network_config: vec!["tcpip".into()],
        configured_nics: w
            .static_ips
            .iter()
            .map(|s| ConfiguredNic {
                name: s.interface.clone(),
                mac: s.mac.clone(),
                file: format!(
                    "HKLM\\SYSTEM\\{}\\Services\\Tcpip\\Parameters\\Interfaces\\{}",
                    w.control_set, s.interface
                ),
                // Windows addresses are checked by MAC in the Windows agent's report.
                ipv4: None,
            })
            .collect(),
        vmware_tools: w
            .vmware_tools
            .iter()
            .map(|t| match &t.product_code {
                Some(c) => format!("{} {c}", t.display_name),
                None => t.display_name.clone(),
            })
            .collect(),
        // Windows services are not checked (the Windows agent does not report them).
        enabled_services: Vec::new(),
        selinux: None,
        already_converted: w.already_converted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn static_ip(guid: &str, connection: Option<&str>, ip: &str) -> inspect::StaticIp {
        inspect::StaticIp {
            interface: guid.into(),
            adapter: None,
            connection: connection.map(Into::into),
            addresses: vec![ip.into()],
            masks: vec!["255.255.255.0".into()],
            gateways: Vec::new(),
            dns: Vec::new(),
            mac: None,
        }
    }

    fn nic(index: u32, mac: &str) -> NicRef {
        NicRef {
            index,
            mac: mac.into(),
        }
    }

    #[test]
    fn static_ips_follow_the_ethernet_n_name_before_install_order() {
        // Installed in the order A, B, C; A is ethernet1's, B has been renamed,
        // C is ethernet0's.
        let mut s = vec![
            static_ip("{A}", Some("Ethernet1"), "192.0.2.11"),
            static_ip("{B}", Some("Backend"), "192.0.2.12"),
            static_ip("{C}", Some("Ethernet0"), "192.0.2.10"),
        ];
        let nics = [nic(0, "m0"), nic(1, "m1"), nic(2, "m2")];
        let mut w = Vec::new();
        let cfg = pair_static_ips(&mut s, &nics, &mut w);
        let macs: Vec<_> = s.iter().map(|x| x.mac.as_deref().unwrap()).collect();
        assert_eq!(macs, ["m1", "m2", "m0"]);
        assert_eq!(cfg.len(), 3);
        assert_eq!(cfg[0].mac, "m1");
        // One left to the install order: nothing ambiguous to warn about.
        assert!(w.is_empty(), "{w:?}");
    }

    #[test]
    fn static_ips_without_names_pair_in_install_order_with_a_warning() {
        let mut s = vec![
            static_ip("{A}", None, "192.0.2.11"),
            static_ip("{B}", Some("Ethernet 2"), "192.0.2.12"),
            static_ip("{C}", Some("Ethernet9"), "192.0.2.13"),
        ];
        // ethernet9 does not exist: C falls back to the order too, and finds no NIC.
        let nics = [nic(3, "m3"), nic(5, "m5")];
        let mut w = Vec::new();
        let cfg = pair_static_ips(&mut s, &nics, &mut w);
        assert_eq!(s[0].mac.as_deref(), Some("m3"));
        assert_eq!(s[1].mac.as_deref(), Some("m5"));
        assert_eq!(s[2].mac, None);
        assert_eq!(cfg.len(), 2);
        assert!(w[0].contains("install order"), "{w:?}");
        assert!(
            w[1].contains("192.0.2.13") && w[1].contains("no NIC"),
            "{w:?}"
        );
        assert_eq!(cdn_index("Ethernet0"), Some(0));
        assert_eq!(cdn_index("Ethernet 0"), None);
        assert_eq!(cdn_index("Ethernet"), None);
        assert_eq!(cdn_index("Ethernet99999"), None);
    }

    #[test]
    fn ustar_archives_are_read_back_by_tar() {
        let files = [
            Placement {
                rel: "Drivers/VirtIO/viostor/viostor.inf".into(),
                bytes: b"fake viostor\n".to_vec(),
                step: "drivers",
                what: String::new(),
            },
            Placement {
                rel: "v2k/firstboot.ps1".into(),
                bytes: vec![b'x'; 1000],
                step: "first-boot",
                what: String::new(),
            },
        ];
        let refs: Vec<&Placement> = files.iter().collect();
        let tar = ustar(&refs).unwrap();
        assert_eq!(tar.len() % 512, 0);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.tar");
        std::fs::write(&path, &tar).unwrap();
        let out = std::process::Command::new("tar")
            .arg("-xf")
            .arg(&path)
            .arg("-C")
            .arg(dir.path())
            .output()
            .expect("tar");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            std::fs::read(dir.path().join("Drivers/VirtIO/viostor/viostor.inf")).unwrap(),
            b"fake viostor\n"
        );
        assert_eq!(
            std::fs::read(dir.path().join("v2k/firstboot.ps1"))
                .unwrap()
                .len(),
            1000
        );
    }

    #[test]
    fn ustar_refuses_names_it_cannot_hold() {
        let long = Placement {
            rel: "a/".repeat(60),
            bytes: Vec::new(),
            step: "drivers",
            what: String::new(),
        };
        assert!(ustar(&[&long]).is_err());
    }
}
