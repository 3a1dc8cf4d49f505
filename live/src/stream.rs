//! The stream stage of a live import (issue 19, phase 2): libvirt's `blockpull` copies
//! every cluster the overlay does not hold from the NBD backing while the domain runs,
//! and the standalone overlay is then checked against what v2k's server served.
//!
//! ```text
//!  start_pull ─▶ wait_pull (virsh blockjob --info, polled) ─▶ job gone:
//!                     backing still there ─▶ Error::Stream (failed or cancelled)
//!                     <backingStore/>      ─▶ done
//!  domain stopped ─▶ check_overlay: bitmap (guest writes) ∪ injected clusters skipped,
//!                    every other served cluster hashed against the record
//! ```
//! A pull does not mark the guest's bitmap (measured: after a 128 KiB guest write and
//! a full pull its count is exactly 131072), so the bitmap is the guest's writes only.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::overlay::{guest_writes, GuestWrites};
use crate::{verify_image, Error, HashRecord};

fn virsh(uri: &str, what: String, args: &[&str]) -> Result<String, Error> {
    let o = Command::new("virsh")
        .args(["-q", "-c", uri])
        .args(args)
        .output()
        .map_err(|e| Error::Tool {
            tool: "virsh",
            what: what.clone(),
            message: format!("cannot run: {e}"),
        })?;
    if !o.status.success() {
        return Err(Error::Tool {
            tool: "virsh",
            what,
            message: String::from_utf8_lossy(&o.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// Starts pulling disk `target` (`vda`) of `domain` from its backing into the overlay,
/// at most `bandwidth_mib` MiB/s when given.
pub fn start_pull(
    uri: &str,
    domain: &str,
    target: &str,
    bandwidth_mib: Option<u64>,
) -> Result<(), Error> {
    let bw = bandwidth_mib.map(|b| b.to_string());
    let mut args = vec!["blockpull", domain, target];
    if let Some(b) = &bw {
        args.extend(["--bandwidth", b]);
    }
    virsh(
        uri,
        format!("starting the pull of {domain} {target}"),
        &args,
    )?;
    Ok(())
}

/// A running pull's position, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PullProgress {
    pub cur: u64,
    pub end: u64,
}

/// Parses `virsh blockjob --info --raw`: ` type=…`, ` cur=N`, ` end=N`; no `type=` line
/// means no job.
fn parse_job(out: &str) -> Option<PullProgress> {
    let mut ty = false;
    let (mut cur, mut end) = (None, None);
    for l in out.lines() {
        let Some((k, v)) = l.trim().split_once('=') else {
            continue;
        };
        match k {
            "type" => ty = true,
            "cur" => cur = v.parse().ok(),
            "end" => end = v.parse().ok(),
            _ => {}
        }
    }
    match (ty, cur, end) {
        (true, Some(cur), Some(end)) => Some(PullProgress { cur, end }),
        _ => None,
    }
}

/// The block job on `target`, or `None` when there is none.
pub fn pull_progress(uri: &str, domain: &str, target: &str) -> Result<Option<PullProgress>, Error> {
    let out = virsh(
        uri,
        format!("reading the block job of {domain} {target}"),
        &["blockjob", domain, target, "--info", "--raw"],
    )?;
    Ok(parse_job(&out))
}

/// Whether disk `target` in the live domain XML still has a backing store (libvirt
/// writes an empty `<backingStore/>` once the overlay is standalone).
pub fn has_backing(uri: &str, domain: &str, target: &str) -> Result<bool, Error> {
    let xml = virsh(
        uri,
        format!("reading the domain XML of {domain}"),
        &["dumpxml", domain],
    )?;
    disk_has_backing(&xml, target).ok_or_else(|| Error::Stream {
        domain: domain.into(),
        target: target.into(),
        message: "no such disk in the domain XML".into(),
    })
}

fn disk_has_backing(xml: &str, target: &str) -> Option<bool> {
    let want = [format!("dev='{target}'"), format!("dev=\"{target}\"")];
    xml.split("<disk ").skip(1).find_map(|d| {
        let d = d.split("</disk>").next()?;
        let t = d.split("<target ").nth(1)?;
        let t = t.split('>').next()?;
        if !want.iter().any(|w| t.contains(w.as_str())) {
            return None;
        }
        Some(d.contains("<backingStore type="))
    })
}

/// Waits for the pull on `target` to end, reporting its progress every `poll`. The
/// job's disappearance alone does not mean success: libvirt drops a failed or
/// cancelled job too, so the disk must also have lost its backing.
pub fn wait_pull(
    uri: &str,
    domain: &str,
    target: &str,
    poll: Duration,
    mut progress: impl FnMut(PullProgress),
) -> Result<(), Error> {
    let mut last = None;
    loop {
        match pull_progress(uri, domain, target)? {
            Some(p) => {
                last = Some(p);
                progress(p);
                std::thread::sleep(poll);
            }
            None => {
                if !has_backing(uri, domain, target)? {
                    return Ok(());
                }
                let at = last
                    .map(|p| format!(" at {} of {} bytes", p.cur, p.end))
                    .unwrap_or_default();
                return Err(Error::Stream {
                    domain: domain.into(),
                    target: target.into(),
                    message: format!(
                        "the pull ended{at} but the disk still reads from its NBD backing: \
                         it failed or was cancelled; the domain depends on the source until \
                         a pull completes"
                    ),
                });
            }
        }
    }
}

/// Resumes `domain` after its source came back from an outage that paused it
/// (`rerror=stop`): QEMU's NBD client reconnects in the background after the failed
/// request, so the first resume can retry too early and pause again (measured: the
/// second one runs). Tries up to `attempts` times, `delay` apart; returns how many
/// resumes it took (0 if the domain was running).
pub fn resume_after_outage(
    uri: &str,
    domain: &str,
    attempts: u32,
    delay: Duration,
) -> Result<u32, Error> {
    let mut resumes = 0;
    let mut state = String::new();
    for _ in 0..=attempts {
        state = virsh(
            uri,
            format!("reading the state of {domain}"),
            &["domstate", "--reason", domain],
        )?
        .trim()
        .to_string();
        if state.starts_with("running") {
            return Ok(resumes);
        }
        if !state.starts_with("paused") || resumes == attempts {
            break;
        }
        virsh(uri, format!("resuming {domain}"), &["resume", domain])?;
        resumes += 1;
        std::thread::sleep(delay);
    }
    Err(Error::Tool {
        tool: "virsh",
        what: format!("resuming {domain}"),
        message: format!("{state} after {resumes} resumes: is the source back?"),
    })
}

/// What the check of a streamed overlay found (counts of 64 KiB clusters).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LiveCheck {
    /// Clusters v2k's server served (hashes in the record).
    pub served: u64,
    /// Clusters the inject stage changed (allocated in the overlay before the bitmap).
    pub changed_by_v2k: u64,
    /// Clusters the guest wrote (the bitmap).
    pub written_by_guest: u64,
    /// Served clusters neither changed nor written, equal to what was served.
    pub verified: u64,
    /// Served clusters neither changed nor written that differ, ascending.
    pub mismatched: Vec<u64>,
}

/// The verdict on one overlay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every cluster outside the guest's and the injector's writes is what was served.
    Verified(LiveCheck),
    /// Some are not: `mismatched` lists them.
    Mismatch(LiveCheck),
    /// The guest's writes are unknown (the bitmap was not stored: QEMU killed, or
    /// missing), so nothing can be said either way.
    CannotTell(String),
}

/// Checks a standalone overlay (the pull finished, the domain stopped) against the
/// served-hash record: the guest's writes come from its bitmap, `injected` are the
/// clusters the inject stage changed ([`crate::overlay::allocated_clusters`] before the
/// first start). `socket` is a temporary path for reading the bitmap.
pub fn check_overlay(
    record: &HashRecord,
    overlay: &Path,
    injected: &BTreeSet<u64>,
    socket: &Path,
) -> Result<Verdict, Error> {
    let written = match guest_writes(overlay, socket)? {
        GuestWrites::Known(w) => w,
        GuestWrites::InUse => {
            return Ok(Verdict::CannotTell(format!(
                "{}: the bitmap of the guest's writes was not stored (QEMU still runs, or \
                 ended without closing the disk): cannot tell what the guest wrote",
                overlay.display()
            )))
        }
        GuestWrites::Missing => {
            return Ok(Verdict::CannotTell(format!(
                "{}: no bitmap of the guest's writes: cannot tell what the guest wrote",
                overlay.display()
            )))
        }
    };
    let skip: BTreeSet<u64> = written.union(injected).copied().collect();
    let r = verify_image(record, overlay, &skip)?;
    let check = LiveCheck {
        served: record.hashes.len() as u64,
        changed_by_v2k: injected.len() as u64,
        written_by_guest: written.len() as u64,
        verified: r.matched,
        mismatched: r.mismatched,
    };
    Ok(if check.mismatched.is_empty() {
        Verdict::Verified(check)
    } else {
        Verdict::Mismatch(check)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_running_job_and_no_job() {
        let out = " type=Block Pull\n bandwidth=4\n cur=2752512\n end=8388608\n\n";
        assert_eq!(
            parse_job(out),
            Some(PullProgress {
                cur: 2752512,
                end: 8388608
            })
        );
        assert_eq!(parse_job(""), None);
        assert_eq!(parse_job("No current block job for vda\n"), None);
    }

    #[test]
    fn finds_the_backing_of_the_named_disk_only() {
        let xml = "<domain><devices>\
            <disk type='file' device='disk'><source file='/a'/><backingStore/>\
            <target dev='vda' bus='virtio'/></disk>\
            <disk type='file' device='disk'><source file='/b'/>\
            <backingStore type='network' index='2'><format type='raw'/></backingStore>\
            <target dev='vdb' bus='virtio'/></disk></devices></domain>";
        assert_eq!(disk_has_backing(xml, "vda"), Some(false));
        assert_eq!(disk_has_backing(xml, "vdb"), Some(true));
        assert_eq!(disk_has_backing(xml, "vdc"), None);
    }
}
