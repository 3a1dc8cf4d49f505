//! Delivery to the KVM host: the converted disks (and an EFI guest's own variable
//! store) uploaded into a libvirt storage pool on the destination, and the domain
//! defined there, persistently, from the same [`Target`] with its paths moved to the
//! pool's volumes.
//!
//! Everything goes through `virsh -c URI`: `vol-create-as` and `vol-upload` use
//! libvirt's volume upload stream (`virStorageVolUpload`), which libvirt carries over
//! its own connection, so `qemu+ssh://` works with no shared filesystem; `define`
//! sends the XML over the same connection. virsh rather than a binding crate because
//! the rest of v2k already drives libvirt through virsh (validation, `--define`) and
//! the C library's Rust binding would add a native build dependency for the same
//! calls. The upload reads from virsh's standard input, which v2k feeds from the disk
//! file, so that it can count the bytes and report progress.
//!
//! Crash safety and reruns rest on `delivery.json` in the run directory
//! ([`Record`]): a volume is *claimed* there before it is created and *uploaded*
//! once its upload completed, with the content hash of what it holds; the domain is
//! claimed before it is defined. A rerun therefore
//! - refuses (before uploading anything) a domain or volume of that name on the
//!   destination that this run directory never claimed: it belongs to someone else;
//! - keeps a volume whose record names the disk's current content hash and whose
//!   size on the destination is the uploaded size, and uploads the others again into
//!   the same volume (recreated when its size differs): never a second name;
//! - defines the domain again (libvirt replaces a persistent definition in place).
//!
//! A volume changed on the destination after its upload, to the same size, is not
//! detected: the destination's bytes are not read back (that would double the
//! transfer); the content hash recorded is the one of the bytes v2k sent.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use v2k_kvm_target::{GuestFeatures, Target};

use crate::rundir::{RunDir, RunDirError};
use crate::Event;

/// Where a migrated VM goes: a libvirt connection and a storage pool on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Destination {
    /// A libvirt URI: `qemu:///system`, `qemu+ssh://root@host/system`.
    pub uri: String,
    /// A storage pool defined and active on it.
    pub pool: String,
    /// Start the domain once defined.
    #[serde(default)]
    pub start: bool,
    /// Mark the domain to start with the destination's libvirt.
    #[serde(default)]
    pub autostart: bool,
}

/// The bytes read from a disk and written to virsh at a time: large enough that the
/// pipe, not the loop, sets the pace.
const CHUNK: usize = 1 << 20;

/// Progress is told at most this often (in percent of a volume), so a large disk
/// does not flood stderr.
const PROGRESS_STEP_PERCENT: u64 = 10;

/// Why a delivery stopped.
#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    #[error("running virsh")]
    Run(#[source] std::io::Error),
    #[error("virsh {command} on {uri}: {stderr}")]
    Virsh {
        uri: String,
        command: String,
        stderr: String,
    },
    #[error(
        "{uri}: a {kind} named {name:?} already exists there and this run directory did not \
         create it; refusing to overwrite it (rename or remove it on the destination)"
    )]
    Clash {
        uri: String,
        kind: &'static str,
        name: String,
    },
    #[error(
        "{uri}: domain {name:?} is running and volume {volume:?} would be uploaded again \
         under it; stop it (v2k rollback) first"
    )]
    Running {
        uri: String,
        name: String,
        volume: String,
    },
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}: no content hash is recorded for the disks (state.json); migrate again")]
    NoHashes(PathBuf),
    #[error(transparent)]
    RunDir(#[from] RunDirError),
}

type Result<T, E = DeliverError> = std::result::Result<T, E>;

/// `delivery.json`: what this run directory created on its destination, so that a
/// rerun tells its own leftovers from someone else's objects, and a rollback knows
/// what to undo.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Record {
    pub uri: String,
    pub pool: String,
    pub domain: String,
    /// Volumes this run directory created or was about to create, by name.
    #[serde(default)]
    pub claimed: Vec<String>,
    /// Volumes whose upload completed, with what they hold.
    #[serde(default)]
    pub uploaded: Vec<Uploaded>,
    /// The domain was (about to be) defined by this run directory.
    #[serde(default)]
    pub domain_claimed: bool,
    /// Its UUID once defined: a rollback touches only that domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain_uuid: Option<String>,
}

/// A volume whose upload completed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Uploaded {
    pub name: String,
    pub content_hash: String,
    pub bytes: u64,
}

/// What the delivery did, for the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Delivered {
    pub uri: String,
    pub pool: String,
    /// The domain defined (persistently, not started) on the destination.
    pub domain: String,
    /// The disks in VM order, then the EFI variable store.
    pub volumes: Vec<DeliveredVolume>,
    /// Marked to start with the destination's libvirt (`--autostart`).
    #[serde(default)]
    pub autostart: bool,
    /// The domain's state when the delivery ended: `shut off`, or `running` after
    /// `--start`.
    #[serde(default)]
    pub state: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct DeliveredVolume {
    pub name: String,
    /// Its path on the destination, as the domain refers to it.
    pub path: PathBuf,
    /// The disk's content hash (docs/blkhash.md), or `sha256:` of the variable store.
    pub content_hash: String,
    /// The file's size in bytes, as uploaded.
    pub bytes: u64,
    pub action: VolumeAction,
    pub seconds: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VolumeAction {
    /// Uploaded by this run.
    Uploaded,
    /// Already there from an earlier run, with the same content hash and size.
    Kept,
}

/// One file to put on the destination.
struct Planned {
    name: String,
    local: PathBuf,
    content_hash: String,
    bytes: u64,
}

/// The domain's state as virsh words it (`running`, `shut off`, `paused`…).
pub fn domain_state(uri: &str, domain: &str) -> Result<String> {
    Ok(virsh(uri, &["domstate", domain])?.trim().to_string())
}

/// `virsh -q -c URI ARGS...`, its stdout on success.
pub(crate) fn virsh(uri: &str, args: &[&str]) -> Result<String> {
    let o = Command::new("virsh")
        .args(["-q", "-c", uri])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(DeliverError::Run)?;
    if !o.status.success() {
        return Err(DeliverError::Virsh {
            uri: uri.into(),
            command: args.first().copied().unwrap_or_default().into(),
            stderr: String::from_utf8_lossy(&o.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// Names of every domain (running or not) on `uri`.
pub(crate) fn domains(uri: &str) -> Result<Vec<String>> {
    Ok(virsh(uri, &["list", "--all", "--name"])?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect())
}

/// Names of the volumes of `pool`. virsh prints `NAME  PATH`; our names hold no
/// blank, and a foreign name with one only makes a clash more likely (the safe side).
pub(crate) fn volumes(uri: &str, pool: &str) -> Result<Vec<String>> {
    Ok(virsh(uri, &["vol-list", "--pool", pool])?
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(String::from)
        .collect())
}

/// The size in bytes of the file behind a volume.
fn physical(uri: &str, pool: &str, name: &str) -> Result<Option<u64>> {
    let out = virsh(
        uri,
        &["vol-info", "--bytes", "--physical", "--pool", pool, name],
    )?;
    Ok(out
        .lines()
        .find_map(|l| l.strip_prefix("Physical:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok()))
}

fn sha256_file(path: &Path) -> Result<String> {
    use sha2::Digest;
    let b = std::fs::read(path).map_err(|source| DeliverError::Read {
        path: path.into(),
        source,
    })?;
    Ok(format!("sha256:{:x}", sha2::Sha256::digest(&b)))
}

fn file_len(path: &Path) -> Result<u64> {
    std::fs::metadata(path)
        .map(|m| m.len())
        .map_err(|source| DeliverError::Read {
            path: path.into(),
            source,
        })
}

/// The volumes of `target`: one per disk, named after the domain and the disk's file
/// (`web01-scsi0-0.qcow2`), then `NAME_VARS.fd` for an EFI guest.
fn plan(run: &RunDir, target: &Target) -> Result<Vec<Planned>> {
    let hashes = run
        .state()
        .current_hashes()
        .filter(|h| h.len() == target.disks.len())
        .ok_or_else(|| DeliverError::NoHashes(run.root().join("state.json")))?;
    let domain = target.safe_name();
    let mut out = Vec::new();
    for (disk, hash) in target.disks.iter().zip(hashes) {
        let file = disk.file_name().unwrap_or_default().to_string_lossy();
        out.push(Planned {
            name: format!("{domain}-{file}"),
            local: disk.clone(),
            content_hash: hash,
            bytes: file_len(disk)?,
        });
    }
    if let Some(vars) = target.firmware.vars() {
        out.push(Planned {
            name: format!("{domain}_VARS.fd"),
            local: vars.to_path_buf(),
            content_hash: sha256_file(vars)?,
            bytes: file_len(vars)?,
        });
    }
    Ok(out)
}

/// Uploads `p` into the existing volume `p.name` through virsh's standard input,
/// telling progress as `Event::Disk` (phase `upload`, index `index`) and, every
/// [`PROGRESS_STEP_PERCENT`], as a message.
fn upload(dest: &Destination, p: &Planned, index: usize, progress: &dyn Fn(Event)) -> Result<()> {
    let mut child = Command::new("virsh")
        .args(["-q", "-c", &dest.uri, "vol-upload", "--pool", &dest.pool])
        .arg(&p.name)
        .arg("/dev/stdin")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(DeliverError::Run)?;
    // virsh writes its error at the end; read it on the side so a full pipe never
    // blocks it while we write.
    let mut err_pipe = child.stderr.take();
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(e) = err_pipe.as_mut() {
            let _ = e.read_to_string(&mut s);
        }
        s
    });
    let fed = feed(&p.local, child.stdin.take(), p.bytes, |done| {
        progress(Event::Disk {
            disk: index,
            phase: "upload",
            done,
            total: p.bytes,
        })
    });
    let status = child.wait().map_err(DeliverError::Run)?;
    let stderr = err_reader.join().unwrap_or_default();
    if !status.success() {
        return Err(DeliverError::Virsh {
            uri: dest.uri.clone(),
            command: "vol-upload".into(),
            stderr: stderr.trim().to_string(),
        });
    }
    let sent = fed?;
    if sent != p.bytes {
        return Err(DeliverError::Read {
            path: p.local.clone(),
            source: std::io::Error::other(format!(
                "the file changed size during the upload ({sent} of {} bytes)",
                p.bytes
            )),
        });
    }
    progress(Event::Message(format!(
        "uploaded {} ({})",
        p.name,
        crate::report::human_bytes(p.bytes)
    )));
    Ok(())
}

/// Copies `local` into `sink` (virsh's stdin), calling `tick` every
/// [`PROGRESS_STEP_PERCENT`] of `total`; the bytes sent.
fn feed(
    local: &Path,
    sink: Option<std::process::ChildStdin>,
    total: u64,
    tick: impl Fn(u64),
) -> Result<u64> {
    let read_err = |source| DeliverError::Read {
        path: local.into(),
        source,
    };
    let mut sink = sink.ok_or_else(|| read_err(std::io::Error::other("no pipe to virsh")))?;
    let mut f = std::fs::File::open(local).map_err(read_err)?;
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    let mut told = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(read_err)?;
        if n == 0 {
            break;
        }
        // A write error means virsh stopped reading: its own message says why.
        if sink.write_all(&buf[..n]).is_err() {
            break;
        }
        done = done.saturating_add(n as u64);
        let pct = done.saturating_mul(100) / total.max(1);
        if pct >= told.saturating_add(PROGRESS_STEP_PERCENT) || done == total {
            told = pct;
            tick(done);
        }
    }
    Ok(done)
}

/// Delivers `target` (the run directory's disks and variable store) to `dest`: see
/// the module documentation.
pub fn deliver(
    run: &RunDir,
    dest: &Destination,
    target: &Target,
    features: &GuestFeatures,
    progress: &dyn Fn(Event),
) -> Result<Delivered> {
    let domain = target.safe_name();
    let planned = plan(run, target)?;
    let mut rec = run
        .load_delivery()
        .ok()
        .filter(|r| r.uri == dest.uri && r.pool == dest.pool && r.domain == domain)
        .unwrap_or_else(|| Record {
            uri: dest.uri.clone(),
            pool: dest.pool.clone(),
            domain: domain.clone(),
            ..Record::default()
        });

    // Everything that could refuse is asked before the first byte moves.
    let existing = volumes(&dest.uri, &dest.pool)?;
    let defined = domains(&dest.uri)?.contains(&domain);
    if defined && !rec.domain_claimed {
        return Err(DeliverError::Clash {
            uri: dest.uri.clone(),
            kind: "domain",
            name: domain,
        });
    }
    if let Some(p) = planned
        .iter()
        .find(|p| existing.contains(&p.name) && !rec.claimed.contains(&p.name))
    {
        return Err(DeliverError::Clash {
            uri: dest.uri.clone(),
            kind: "volume",
            name: p.name.clone(),
        });
    }

    // A running domain (started by an earlier delivery) never gets a disk rewritten
    // under it.
    let running = defined && virsh(&dest.uri, &["domstate", &domain])?.trim() != "shut off";

    let mut delivered = Vec::new();
    for (i, p) in planned.iter().enumerate() {
        let t = Instant::now();
        let exists = existing.contains(&p.name);
        let size = if exists {
            physical(&dest.uri, &dest.pool, &p.name)?
        } else {
            None
        };
        let same =
            rec.uploaded.iter().any(|u| {
                u.name == p.name && u.content_hash == p.content_hash && u.bytes == p.bytes
            }) && size == Some(p.bytes);
        let action = if same {
            progress(Event::Message(format!(
                "{} is already on {} with the same content hash",
                p.name, dest.uri
            )));
            VolumeAction::Kept
        } else {
            if running {
                return Err(DeliverError::Running {
                    uri: dest.uri.clone(),
                    name: domain,
                    volume: p.name.clone(),
                });
            }
            if !rec.claimed.contains(&p.name) {
                rec.claimed.push(p.name.clone());
            }
            rec.uploaded.retain(|u| u.name != p.name);
            run.save_delivery(&rec)?;
            // vol-upload overwrites but never truncates: a volume of another size is
            // made again at the file's exact size.
            if exists && size != Some(p.bytes) {
                virsh(&dest.uri, &["vol-delete", "--pool", &dest.pool, &p.name])?;
            }
            if !exists || size != Some(p.bytes) {
                let bytes = p.bytes.to_string();
                virsh(
                    &dest.uri,
                    &[
                        "vol-create-as",
                        &dest.pool,
                        &p.name,
                        &bytes,
                        "--format",
                        "raw",
                    ],
                )?;
            }
            upload(dest, p, i, progress)?;
            rec.uploaded.push(Uploaded {
                name: p.name.clone(),
                content_hash: p.content_hash.clone(),
                bytes: p.bytes,
            });
            run.save_delivery(&rec)?;
            VolumeAction::Uploaded
        };
        let path = virsh(&dest.uri, &["vol-path", "--pool", &dest.pool, &p.name])?;
        delivered.push(DeliveredVolume {
            name: p.name.clone(),
            path: PathBuf::from(path.trim()),
            content_hash: p.content_hash.clone(),
            bytes: p.bytes,
            action,
            seconds: t.elapsed().as_secs_f64(),
        });
    }

    // The same machine, its files moved to the pool's volumes.
    let mut placed = target.clone();
    placed.disks = delivered
        .iter()
        .take(target.disks.len())
        .map(|v| v.path.clone())
        .collect();
    if let Some(vars) = delivered.get(target.disks.len()) {
        placed.firmware = placed.firmware.with_vars(vars.path.clone());
    }
    // Our earlier definition is replaced in place only under its own UUID (libvirt
    // makes one up when the VM had none).
    if defined {
        let uuid = virsh(&dest.uri, &["domuuid", &domain])?;
        placed.uuid = Some(uuid.trim().to_string());
    }
    let xml = v2k_kvm_target::domain_xml(&placed, features);
    let xml_path = run.save_delivered_xml(&xml)?;
    rec.domain_claimed = true;
    run.save_delivery(&rec)?;
    let xml_arg = xml_path.to_string_lossy();
    virsh(&dest.uri, &["define", &xml_arg])?;
    rec.domain_uuid = Some(virsh(&dest.uri, &["domuuid", &domain])?.trim().to_string());
    run.save_delivery(&rec)?;
    progress(Event::Message(format!("defined {domain} on {}", dest.uri)));
    if dest.autostart {
        virsh(&dest.uri, &["autostart", &domain])?;
    }
    // Started only when it is not running already (a rerun after --start).
    let mut state = domain_state(&dest.uri, &domain)?;
    if dest.start && state == "shut off" {
        virsh(&dest.uri, &["start", &domain])?;
        progress(Event::Message(format!("started {domain} on {}", dest.uri)));
        state = domain_state(&dest.uri, &domain)?;
    }
    Ok(Delivered {
        uri: dest.uri.clone(),
        pool: dest.pool.clone(),
        domain,
        volumes: delivered,
        autostart: dest.autostart,
        state,
    })
}
