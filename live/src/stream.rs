//! The stream stage of a live import (issue 19, phase 2): libvirt's `blockpull` copies
//! every cluster the overlay does not hold from the NBD backing while the domain runs,
//! and the standalone overlay is then checked against what v2k's server served.
//!
//! ```text
//!  start_pull ─▶ wait_pull (virsh blockjob --info, polled) ─▶ job gone:
//!                     backing still there ─▶ Error::Stream (failed or cancelled)
//!                     <backingStore/>      ─▶ done
//!  domain running ─▶ check_running: through QEMU's own NBD server, every served
//!                    cluster hashed (data first), then the bitmap frozen and read;
//!                    bitmap ∪ injected clusters skipped
//!  domain stopped ─▶ check_overlay: the same, from the file and its stored bitmap
//! ```
//! A pull does not mark the guest's bitmap (measured: after a 128 KiB guest write and
//! a full pull its count is exactly 131072), so the bitmap is the guest's writes only.
//!
//! Why data first and the bitmap after, on a running guest: the bitmap only grows, so a
//! copy frozen after the read marks every cluster the guest wrote before (or while)
//! it was read. A cluster that differs from what was served and is not marked was
//! therefore changed by something other than the guest. The freeze is a QMP
//! transaction, which drains in-flight requests first.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::Deserialize;

use crate::clusters::verify_stream;
use crate::overlay::{exported_bitmap, guest_writes, nbd_uri, GuestWrites, GUEST_BITMAP};
use crate::{verify_image, Error, HashRecord, CLUSTER};

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

/// The frozen copy of the guest's bitmap a check of a running domain reads: disabled
/// and transient (never stored in the overlay), removed after the check.
pub const FROZEN_BITMAP: &str = "v2k-check";
/// The exports of QEMU's NBD server during that check.
const DATA_EXPORT: &str = "v2k-check-data";
const BITMAP_EXPORT: &str = "v2k-check-bitmap";

/// Runs a QMP command in `domain`'s QEMU through libvirt's monitor pass-through (libvirt
/// has no API exporting an existing bitmap; it marks the domain `custom-monitor`
/// tainted until its next start). Returns the command's `return` value.
fn qmp(
    uri: &str,
    domain: &str,
    command: &str,
    arguments: serde_json::Value,
) -> Result<serde_json::Value, Error> {
    let what = format!("{command} in {domain}");
    let cmd = serde_json::json!({"execute": command, "arguments": arguments}).to_string();
    let out = virsh(
        uri,
        what.clone(),
        &["qemu-monitor-command", domain, cmd.as_str()],
    )?;
    let mut v: serde_json::Value = serde_json::from_str(out.trim()).map_err(|e| Error::Tool {
        tool: "virsh",
        what: what.clone(),
        message: format!("unexpected reply: {e}"),
    })?;
    if let Some(e) = v.get("error") {
        return Err(Error::Tool {
            tool: "qemu",
            what,
            message: e
                .get("desc")
                .and_then(|d| d.as_str())
                .unwrap_or("an error without a description")
                .to_string(),
        });
    }
    Ok(v.get_mut("return").map(|r| r.take()).unwrap_or_default())
}

#[derive(Debug, Deserialize)]
struct Node {
    #[serde(rename = "node-name")]
    node_name: String,
    drv: String,
    file: String,
    #[serde(default, rename = "dirty-bitmaps")]
    dirty_bitmaps: Vec<NodeBitmap>,
}

#[derive(Debug, Deserialize)]
struct NodeBitmap {
    name: String,
    granularity: u64,
    #[serde(default)]
    inconsistent: bool,
}

/// The QCOW2 node of `overlay` among `nodes` (`query-named-block-nodes`).
fn overlay_node(nodes: Vec<Node>, overlay: &Path) -> Option<Node> {
    let want = overlay.to_string_lossy();
    nodes
        .into_iter()
        .find(|n| n.drv == "qcow2" && n.file == want)
}

/// QEMU's NBD server, started for one check; on drop it is stopped (which closes its
/// exports) and the frozen bitmap removed, so that the domain is left as it was.
struct CheckServer<'a> {
    uri: &'a str,
    domain: &'a str,
    node: String,
    frozen: bool,
}

impl Drop for CheckServer<'_> {
    fn drop(&mut self) {
        let _ = qmp(
            self.uri,
            self.domain,
            "nbd-server-stop",
            serde_json::json!({}),
        );
        if self.frozen {
            let _ = qmp(
                self.uri,
                self.domain,
                "block-dirty-bitmap-remove",
                serde_json::json!({"node": self.node, "name": FROZEN_BITMAP}),
            );
        }
    }
}

/// Checks a streamed overlay while `domain` keeps running on it: the same verdict as
/// [`check_overlay`] without stopping the guest. Every served cluster is read through
/// an NBD export of QEMU's own node (so QEMU's cached metadata is honoured) and hashed;
/// then the guest's bitmap is frozen into [`FROZEN_BITMAP`] and read through a second
/// export; the clusters it marks and `injected` are skipped (see the module
/// documentation for why this order is sound). `socket` is where QEMU's server
/// listens: in a directory QEMU's user can create files in, nothing there yet.
pub fn check_running(
    uri: &str,
    domain: &str,
    record: &HashRecord,
    overlay: &Path,
    injected: &BTreeSet<u64>,
    socket: &Path,
) -> Result<Verdict, Error> {
    let nodes: Vec<Node> = serde_json::from_value(qmp(
        uri,
        domain,
        "query-named-block-nodes",
        serde_json::json!({"flat": true}),
    )?)
    .map_err(|e| Error::Tool {
        tool: "qemu",
        what: format!("query-named-block-nodes in {domain}"),
        message: format!("unexpected reply: {e}"),
    })?;
    let node = overlay_node(nodes, overlay).ok_or_else(|| Error::Stream {
        domain: domain.into(),
        target: overlay.display().to_string(),
        message: "no QCOW2 node of this overlay in the running domain".into(),
    })?;
    let Some(b) = node.dirty_bitmaps.iter().find(|b| b.name == GUEST_BITMAP) else {
        return Ok(Verdict::CannotTell(format!(
            "{}: no bitmap of the guest's writes in the running domain: cannot tell what \
             the guest wrote",
            overlay.display()
        )));
    };
    if b.inconsistent {
        return Ok(Verdict::CannotTell(format!(
            "{}: the bitmap of the guest's writes is inconsistent (not stored by an \
             earlier QEMU): cannot tell what the guest wrote",
            overlay.display()
        )));
    }
    if b.granularity != CLUSTER {
        return Err(Error::Stream {
            domain: domain.into(),
            target: overlay.display().to_string(),
            message: format!(
                "bitmap {GUEST_BITMAP} has granularity {}, not {CLUSTER}",
                b.granularity
            ),
        });
    }
    let path = socket
        .to_str()
        .ok_or_else(|| Error::Usage(format!("{}: not a UTF-8 path", socket.display())))?;
    qmp(
        uri,
        domain,
        "nbd-server-start",
        serde_json::json!({"addr": {"type": "unix", "data": {"path": path}}}),
    )?;
    let mut server = CheckServer {
        uri,
        domain,
        node: node.node_name.clone(),
        frozen: false,
    };
    let export = |id: &str, bitmaps: &[&str]| {
        qmp(
            uri,
            domain,
            "block-export-add",
            serde_json::json!({"type": "nbd", "id": id, "node-name": node.node_name,
                "name": id, "writable": false, "bitmaps": bitmaps}),
        )
    };

    // The data, first.
    export(DATA_EXPORT, &[])?;
    let data_uri = nbd_uri(socket, DATA_EXPORT);
    let mut child = Command::new("nbdcopy")
        .arg(&data_uri)
        .arg("-")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Tool {
            tool: "nbdcopy",
            what: format!("reading {data_uri}"),
            message: format!("cannot run: {e}"),
        })?;
    let mut out = child.stdout.take().expect("stdout is piped");
    let read = verify_stream(record, &mut out, &BTreeSet::new(), &data_uri).and_then(|r| {
        // Read to the end: nbdcopy must finish cleanly to say the copy was whole.
        std::io::copy(&mut out, &mut std::io::sink()).map_err(|e| Error::Io {
            path: data_uri.clone().into(),
            what: "reading to the end".into(),
            source: e,
        })?;
        Ok(r)
    });
    drop(out);
    if read.is_err() {
        let _ = child.kill();
    }
    let st = child.wait_with_output().map_err(|e| Error::Tool {
        tool: "nbdcopy",
        what: format!("reading {data_uri}"),
        message: e.to_string(),
    })?;
    let all = read?;
    if !st.status.success() {
        return Err(Error::Tool {
            tool: "nbdcopy",
            what: format!("reading {data_uri}"),
            message: format!(
                "{}: {}",
                st.status,
                String::from_utf8_lossy(&st.stderr).trim()
            ),
        });
    }

    // Then the bitmap, frozen after the read.
    qmp(
        uri,
        domain,
        "transaction",
        serde_json::json!({"actions": [
            {"type": "block-dirty-bitmap-add", "data": {"node": node.node_name,
                "name": FROZEN_BITMAP, "granularity": CLUSTER, "persistent": false,
                "disabled": true}},
            {"type": "block-dirty-bitmap-merge", "data": {"node": node.node_name,
                "target": FROZEN_BITMAP, "bitmaps": [GUEST_BITMAP]}},
        ]}),
    )?;
    server.frozen = true;
    export(BITMAP_EXPORT, &[FROZEN_BITMAP])?;
    let written = exported_bitmap(&nbd_uri(socket, BITMAP_EXPORT), FROZEN_BITMAP)?;
    drop(server);
    Ok(judge(record, injected, &written, &all))
}

/// The verdict from a comparison made with nothing skipped (`all`) and the clusters
/// to skip learnt afterwards.
fn judge(
    record: &HashRecord,
    injected: &BTreeSet<u64>,
    written: &BTreeSet<u64>,
    all: &crate::VerifyReport,
) -> Verdict {
    let skip = |c: &u64| written.contains(c) || injected.contains(c);
    let skipped_matches = record
        .hashes
        .keys()
        .filter(|c| skip(c) && all.mismatched.binary_search(c).is_err())
        .count() as u64;
    let check = LiveCheck {
        served: record.hashes.len() as u64,
        changed_by_v2k: injected.len() as u64,
        written_by_guest: written.len() as u64,
        verified: all.matched - skipped_matches,
        mismatched: all
            .mismatched
            .iter()
            .copied()
            .filter(|c| !skip(c))
            .collect(),
    };
    if check.mismatched.is_empty() {
        Verdict::Verified(check)
    } else {
        Verdict::Mismatch(check)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_running_check_skips_what_was_learnt_after_the_read() {
        let mut r = HashRecord::new(6 * CLUSTER);
        for c in 0..5 {
            r.hashes.insert(c, [c as u8; 32]);
        }
        // Read with nothing skipped: 1 and 3 differ, 0, 2 and 4 match.
        let all = crate::VerifyReport {
            matched: 3,
            dirty: 0,
            unserved: 1,
            mismatched: vec![1, 3],
        };
        // The guest wrote 1 and 2 (2 still matched when read), v2k changed 4.
        let (injected, written) = (BTreeSet::from([4]), BTreeSet::from([1, 2, 5]));
        let Verdict::Mismatch(c) = judge(&r, &injected, &written, &all) else {
            panic!("3 differs and nobody wrote it");
        };
        assert_eq!(c.mismatched, vec![3]);
        assert_eq!((c.served, c.changed_by_v2k, c.written_by_guest), (5, 1, 3));
        assert_eq!(c.verified, 1, "only 0 is verified: {c:?}");
        let written = BTreeSet::from([1, 3]);
        let Verdict::Verified(c) = judge(&r, &injected, &written, &all) else {
            panic!("every difference was the guest's");
        };
        assert_eq!(c.verified, 2, "0 and 2: {c:?}");
    }

    #[test]
    fn the_overlay_node_is_the_qcow2_node_of_its_file() {
        let nodes: Vec<Node> = serde_json::from_str(
            r#"[{"node-name":"libvirt-1-format","drv":"qcow2","file":"/r/live/d0.qcow2",
                 "dirty-bitmaps":[{"name":"v2k-guest","granularity":65536,"recording":true}]},
                {"node-name":"libvirt-1-storage","drv":"file","file":"/r/live/d0.qcow2"},
                {"node-name":"libvirt-2-format","drv":"qcow2","file":"/r/live/d1.qcow2"}]"#,
        )
        .unwrap();
        let n = overlay_node(nodes, Path::new("/r/live/d0.qcow2")).unwrap();
        assert_eq!(n.node_name, "libvirt-1-format");
        assert_eq!(n.dirty_bitmaps[0].name, GUEST_BITMAP);
        assert!(!n.dirty_bitmaps[0].inconsistent);
    }

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
