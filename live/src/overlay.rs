//! A live import's overlays and what they record (issue 19, phase 2).
//!
//! ```text
//!  OV.qcow2 (64 KiB clusters) ──backing, raw──▶ nbd+unix:///EXPORT?socket=S (v2k's server)
//!     │ bitmap "v2k-guest": persistent, enabled, 64 KiB granularity
//!     │   added after the inject stage, before the first start: it records the guest's
//!     │   writes only; the injector's are the clusters allocated in OV at that moment
//! ```
//! Everything here runs QEMU's own tools (`qemu-img`, `qemu-nbd`, `nbdinfo`), whose
//! JSON is parsed into typed values. A bitmap left `in-use` (QEMU killed without
//! storing it) is reported as such: what the guest wrote is then unknown, and a caller
//! must say so rather than verify against it.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::{Error, CLUSTER};

/// The persistent dirty bitmap on each overlay: the clusters the guest wrote.
pub const GUEST_BITMAP: &str = "v2k-guest";
/// How long `qemu-nbd` may take to start listening before reading a bitmap gives up.
const QEMU_NBD_START: Duration = Duration::from_secs(10);

/// The NBD URI QEMU opens for an export of v2k's server.
pub fn nbd_uri(socket: &Path, export: &str) -> String {
    format!("nbd+unix:///{export}?socket={}", socket.display())
}

fn tool_err(tool: &'static str, what: String, message: String) -> Error {
    Error::Tool {
        tool,
        what,
        message,
    }
}

fn run(tool: &'static str, what: &str, c: &mut Command) -> Result<Output, Error> {
    let o = c
        .output()
        .map_err(|e| tool_err(tool, what.to_string(), format!("cannot run: {e}")))?;
    if !o.status.success() {
        return Err(tool_err(
            tool,
            what.to_string(),
            format!(
                "{}: {}",
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            ),
        ));
    }
    Ok(o)
}

fn utf8(p: &Path) -> Result<&str, Error> {
    p.to_str()
        .ok_or_else(|| Error::Usage(format!("{}: not a UTF-8 path", p.display())))
}

/// The overlay alone, its backing file not opened (`"backing": null`): its own
/// allocation and bitmaps are read without the NBD server.
fn standalone(overlay: &Path) -> Result<String, Error> {
    Ok(serde_json::json!({
        "driver": "qcow2",
        "backing": null,
        "file": {"driver": "file", "filename": utf8(overlay)?},
    })
    .to_string())
}

/// Creates `overlay` (which must not exist), a QCOW2 of 64 KiB clusters whose backing
/// is the raw export `export` on `socket`. The server must be running: `qemu-img`
/// reads the disk's size from it.
pub fn create_overlay(overlay: &Path, socket: &Path, export: &str) -> Result<(), Error> {
    if overlay.symlink_metadata().is_ok() {
        return Err(Error::Usage(format!(
            "{}: exists; an overlay is never replaced",
            overlay.display()
        )));
    }
    run(
        "qemu-img",
        &format!("creating the overlay {}", overlay.display()),
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-o"])
            .arg(format!("cluster_size={CLUSTER}"))
            .arg("-b")
            .arg(nbd_uri(socket, export))
            .args(["-F", "raw"])
            .arg(overlay),
    )?;
    Ok(())
}

/// Adds the enabled persistent bitmap [`GUEST_BITMAP`] (granularity one cluster).
/// Call after the inject stage and before the domain's first start.
pub fn add_guest_bitmap(overlay: &Path) -> Result<(), Error> {
    run(
        "qemu-img",
        &format!("adding bitmap {GUEST_BITMAP} to {}", overlay.display()),
        Command::new("qemu-img")
            .args(["bitmap", "--add", "--enable", "-g"])
            .arg(CLUSTER.to_string())
            .arg(format!("json:{}", standalone(overlay)?))
            .arg(GUEST_BITMAP),
    )?;
    Ok(())
}

#[derive(Deserialize)]
struct MapEntry {
    start: u64,
    length: u64,
    present: bool,
}

/// Clusters a `[start, start+len)` range touches.
fn clusters_of(start: u64, len: u64, into: &mut BTreeSet<u64>) {
    if len == 0 {
        return;
    }
    let first = start / CLUSTER;
    let last = (start + len - 1) / CLUSTER;
    into.extend(first..=last);
}

/// The clusters allocated in the overlay itself (data or zeroes): before the first
/// start, exactly what the inject stage changed.
pub fn allocated_clusters(overlay: &Path) -> Result<BTreeSet<u64>, Error> {
    let what = format!("mapping {}", overlay.display());
    let o = run(
        "qemu-img",
        &what,
        Command::new("qemu-img")
            .args(["map", "--output=json"])
            .arg(format!("json:{}", standalone(overlay)?)),
    )?;
    let map: Vec<MapEntry> = serde_json::from_slice(&o.stdout)
        .map_err(|e| tool_err("qemu-img", what, format!("unexpected output: {e}")))?;
    let mut set = BTreeSet::new();
    for e in map.iter().filter(|e| e.present) {
        clusters_of(e.start, e.length, &mut set);
    }
    Ok(set)
}

/// What the overlay's bitmap says the guest wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestWrites {
    /// The bitmap is consistent: these clusters, and only these, were written.
    Known(BTreeSet<u64>),
    /// QEMU did not store the bitmap (killed, or still running): unknown.
    InUse,
    /// The overlay has no such bitmap.
    Missing,
}

#[derive(Deserialize)]
struct Info {
    #[serde(rename = "format-specific")]
    specific: Option<Specific>,
}
#[derive(Deserialize)]
struct Specific {
    data: SpecificData,
}
#[derive(Deserialize)]
struct SpecificData {
    #[serde(default)]
    bitmaps: Vec<BitmapInfo>,
}
#[derive(Deserialize)]
struct BitmapInfo {
    name: String,
    #[serde(default)]
    flags: Vec<String>,
    granularity: u64,
}
#[derive(Deserialize)]
struct Extent {
    offset: u64,
    length: u64,
    #[serde(rename = "type")]
    kind: u64,
}

/// Reads [`GUEST_BITMAP`] of a stopped domain's overlay: its flags from `qemu-img
/// info`, then its bits through `qemu-nbd -B` and `nbdinfo --map` (QEMU's own reading
/// of the qcow2 bitmap directory; `qemu-img map` does not show bitmaps). `socket` is a
/// path for qemu-nbd's temporary socket, in a private directory.
pub fn guest_writes(overlay: &Path, socket: &Path) -> Result<GuestWrites, Error> {
    let what = format!("reading the bitmaps of {}", overlay.display());
    let o = run(
        "qemu-img",
        &what,
        Command::new("qemu-img")
            .args(["info", "--output=json", "-U"])
            .arg(format!("json:{}", standalone(overlay)?)),
    )?;
    let info: Info = serde_json::from_slice(&o.stdout)
        .map_err(|e| tool_err("qemu-img", what.clone(), format!("unexpected output: {e}")))?;
    let bitmaps = info.specific.map(|s| s.data.bitmaps).unwrap_or_default();
    let Some(b) = bitmaps.iter().find(|b| b.name == GUEST_BITMAP) else {
        return Ok(GuestWrites::Missing);
    };
    if b.flags.iter().any(|f| f == "in-use") {
        return Ok(GuestWrites::InUse);
    }
    if b.granularity != CLUSTER {
        return Err(tool_err(
            "qemu-img",
            what,
            format!(
                "bitmap {GUEST_BITMAP} has granularity {}, not {CLUSTER}",
                b.granularity
            ),
        ));
    }
    // qemu-nbd serves one client and exits; nbdinfo is retried until it listens.
    let mut child = Command::new("qemu-nbd")
        .args(["-r", "-B", GUEST_BITMAP, "--socket"])
        .arg(socket)
        .arg(format!("json:{}", standalone(overlay)?))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| tool_err("qemu-nbd", what.clone(), format!("cannot run: {e}")))?;
    let uri = format!("nbd+unix:///?socket={}", socket.display());
    let start = Instant::now();
    let out = loop {
        if let Ok(Some(st)) = child.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            let _ = std::fs::remove_file(socket);
            return Err(tool_err("qemu-nbd", what, format!("{st}: {}", err.trim())));
        }
        let o = Command::new("nbdinfo")
            .arg(format!("--map=qemu:dirty-bitmap:{GUEST_BITMAP}"))
            .arg("--json")
            .arg(&uri)
            .output();
        match o {
            Ok(o) if o.status.success() => break o,
            Ok(o) if start.elapsed() > QEMU_NBD_START => {
                let _ = child.kill();
                let _ = child.wait();
                let _ = std::fs::remove_file(socket);
                return Err(tool_err(
                    "nbdinfo",
                    what,
                    String::from_utf8_lossy(&o.stderr).trim().to_string(),
                ));
            }
            Ok(_) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                let _ = std::fs::remove_file(socket);
                return Err(tool_err("nbdinfo", what, format!("cannot run: {e}")));
            }
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(socket);
    Ok(GuestWrites::Known(dirty_clusters(&out.stdout, what)?))
}

/// The clusters `nbdinfo --map=qemu:dirty-bitmap:… --json` says are dirty.
fn dirty_clusters(json: &[u8], what: String) -> Result<BTreeSet<u64>, Error> {
    let extents: Vec<Extent> = serde_json::from_slice(json)
        .map_err(|e| tool_err("nbdinfo", what, format!("unexpected output: {e}")))?;
    let mut set = BTreeSet::new();
    // NBD's dirty-bitmap context: bit 0 set = dirty.
    for e in extents.iter().filter(|e| e.kind & 1 == 1) {
        clusters_of(e.offset, e.length, &mut set);
    }
    Ok(set)
}

/// Reads bitmap `bitmap` exported with an NBD export at `uri` (QEMU's own server):
/// the clusters it marks dirty.
pub fn exported_bitmap(uri: &str, bitmap: &str) -> Result<BTreeSet<u64>, Error> {
    let what = format!("reading bitmap {bitmap} from {uri}");
    let o = run(
        "nbdinfo",
        &what,
        Command::new("nbdinfo")
            .arg(format!("--map=qemu:dirty-bitmap:{bitmap}"))
            .arg("--json")
            .arg(uri),
    )?;
    dirty_clusters(&o.stdout, what)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_covers_every_cluster_it_touches() {
        let mut s = BTreeSet::new();
        clusters_of(0, 0, &mut s);
        assert!(s.is_empty());
        clusters_of(CLUSTER - 1, 2, &mut s);
        assert_eq!(s, BTreeSet::from([0, 1]));
        s.clear();
        clusters_of(3 * CLUSTER, 2 * CLUSTER, &mut s);
        assert_eq!(s, BTreeSet::from([3, 4]));
    }

    #[test]
    fn the_uri_names_export_and_socket() {
        assert_eq!(
            nbd_uri(Path::new("/run/v/d0.sock"), "disk"),
            "nbd+unix:///disk?socket=/run/v/d0.sock"
        );
    }
}
