//! Disks downloaded over the datastore HTTP interface:
//! `GET /folder/<path>?dcPath=<datacenter>&dsName=<datastore>` with the session cookie.
//!
//! ```text
//!  async (client's runtime)                          blocking (one thread per disk)
//!  GET descriptor ─▶ parse (converter's parser) ─▶ flat extent, size
//!  GET extent, Range: bytes=N- ─▶ chunks ─▶ bounded channel ─▶ Read ─▶ consumer
//!        ▲   connection dropped mid-body                         (e.g. the stream
//!        └── resume at the last byte received, with backoff        converter)
//! ```
//!
//! A disk is never stored whole: its extent streams through a bounded channel
//! ([`CHANNEL_CHUNKS`]) into a consumer (the QCOW2 stream converter) on its own thread,
//! while the network side runs on the client's runtime. Several disks download at
//! once, at most `per_host` from one ESXi host. Every byte count from the server is
//! checked: a body longer than the extent, a `Content-Range` that does not start where
//! we asked, or a size that changes between attempts is an error, not a guess.
//!
//! A disk that is not one flat extent (a snapshot chain, a sparse or split disk) needs
//! random access: [`Client::stage_disk`] downloads its files whole, with the same
//! resume, into a staging directory for the file converter.

use std::collections::HashMap;
use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::{CONTENT_RANGE, COOKIE, RANGE};
use reqwest::{StatusCode, Url};
use tokio::sync::{mpsc, Semaphore};

use crate::client::{read_limited, Client, Session};
use crate::error::{Error, Result};

/// Largest descriptor fetched: the converter's own descriptor limit.
pub const MAX_DESCRIPTOR_BYTES: usize = v2k_converters::vmdk::descriptor::MAX_DESCRIPTOR_BYTES;
/// Body chunks buffered between the network and a consumer. reqwest yields chunks of
/// at most a TLS record's plaintext (16 KiB) to a few hundred KiB, so this holds a few
/// MiB per disk: enough to ride out a consumer's fsync, small enough not to matter.
pub(crate) const CHANNEL_CHUNKS: usize = 256;
/// Consecutive failed attempts (no byte received in between) before a download is
/// given up. Any progress resets the count.
pub(crate) const MAX_RESUME_ATTEMPTS: u32 = 6;
/// First delay before resuming; doubled per consecutive failure.
pub(crate) const RESUME_BACKOFF: Duration = Duration::from_millis(200);
/// Bytes between two progress reports of one disk.
pub const PROGRESS_STEP: u64 = 16 << 20;

/// Why a download stopped when its consumer stopped reading (the consumer's own
/// error is the one to report).
const CONSUMER_GONE: &str = "the consumer stopped reading";

/// `[datastore] path/in/datastore.vmdk`, as vSphere names files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatastorePath {
    pub datastore: String,
    pub path: String,
}

impl DatastorePath {
    /// Parses and checks it: the path must be relative, with no `.`/`..` or empty
    /// components and no control characters (it becomes part of a URL we fetch).
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |why: &str| Error::Usage(format!("datastore path {s:?}: {why}"));
        let rest = s
            .trim()
            .strip_prefix('[')
            .ok_or_else(|| bad("does not start with [datastore]"))?;
        let (ds, path) = rest.split_once(']').ok_or_else(|| bad("no closing ]"))?;
        let path = path.trim_start();
        if ds.is_empty() {
            return Err(bad("empty datastore name"));
        }
        check_relative(path).map_err(|w| bad(&w))?;
        Ok(DatastorePath {
            datastore: ds.to_string(),
            path: path.to_string(),
        })
    }

    /// A file beside this one (an extent named by a descriptor): a plain file name only.
    pub fn sibling(&self, name: &str) -> Result<Self> {
        if name.is_empty()
            || name.contains('/')
            || name.contains('\\')
            || name == "."
            || name == ".."
        {
            return Err(Error::Usage(format!(
                "{self}: extent name {name:?} is not a plain file name beside the descriptor"
            )));
        }
        check_relative(name).map_err(|w| Error::Usage(format!("extent {name:?}: {w}")))?;
        let path = match self.path.rsplit_once('/') {
            Some((dir, _)) => format!("{dir}/{name}"),
            None => name.to_string(),
        };
        Ok(DatastorePath {
            datastore: self.datastore.clone(),
            path,
        })
    }
}

impl std::fmt::Display for DatastorePath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}] {}", self.datastore, self.path)
    }
}

fn check_relative(path: &str) -> std::result::Result<(), String> {
    if path.is_empty() {
        return Err("empty path".into());
    }
    if path.starts_with('/') {
        return Err("absolute path".into());
    }
    if path.chars().any(|c| c.is_control()) {
        return Err("control character".into());
    }
    for c in path.split('/') {
        if c.is_empty() || c == "." || c == ".." {
            return Err(format!("component {c:?} refused"));
        }
    }
    Ok(())
}

/// The `/folder` URL of a datastore file.
pub(crate) fn folder_url(base: &Url, file: &DatastorePath, datacenter: &str) -> Result<Url> {
    let mut u = base.clone();
    {
        let mut segs = u
            .path_segments_mut()
            .map_err(|_| Error::Usage(format!("{base}: cannot hold a path")))?;
        segs.clear().push("folder");
        for c in file.path.split('/') {
            // Percent-encoded by the URL library: `#`, `?`, spaces and `%` in VM
            // names stay inside their segment.
            segs.push(c);
        }
    }
    u.query_pairs_mut()
        .clear()
        .append_pair("dcPath", datacenter)
        .append_pair("dsName", &file.datastore);
    Ok(u)
}

/// What a disk's descriptor says about its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlatDisk {
    /// The extent file holding the raw bytes.
    pub extent: DatastorePath,
    /// Virtual size in bytes.
    pub size: u64,
    /// The descriptor's `createType` (`vmfs`, `vmfsThin`, `monolithicFlat`).
    pub create_type: String,
}

/// Reads a descriptor (by the converter's strict parser) and finds its single flat
/// extent. Snapshot deltas, sparse and multi-extent disks are refused with a reason
/// (as `Error::Usage`; [`shape`] turns that into [`DiskShape::Staged`]).
pub(crate) fn flat_extent(descriptor_file: &DatastorePath, raw: &[u8]) -> Result<FlatDisk> {
    let d = v2k_converters::vmdk::descriptor::parse(raw)
        .map_err(|e| Error::protocol(descriptor_file.to_string(), e.to_string()))?;
    let unsupported = |why: String| Error::Usage(format!("{descriptor_file}: {why}"));
    if d.has_parent() {
        return Err(unsupported(
            "a snapshot delta: consolidate or delete the VM's snapshots first".into(),
        ));
    }
    let [e] = d.extents.as_slice() else {
        return Err(unsupported(format!(
            "{} extents; only single-extent flat disks (ESXi vmfs/vmfsThin) are streamed",
            d.extents.len()
        )));
    };
    if !e.kind.is_flat() || e.offset != 0 {
        return Err(unsupported(format!(
            "extent type {:?} at offset {}: only a flat extent at offset 0 is streamed",
            e.kind, e.offset
        )));
    }
    let name = e
        .file
        .as_deref()
        .ok_or_else(|| unsupported("extent names no file".into()))?;
    let size = e
        .sectors
        .checked_mul(512)
        .ok_or_else(|| unsupported(format!("extent of {} sectors overflows", e.sectors)))?;
    Ok(FlatDisk {
        extent: descriptor_file.sibling(name)?,
        size,
        create_type: d.create_type.clone(),
    })
}

/// Progress of the downloads.
pub trait DownloadProgress: Sync {
    /// `done` of `total` bytes of disk `disk`, at `bytes_per_second` since its start.
    fn progress(&self, disk: usize, done: u64, total: u64, bytes_per_second: f64);
    /// A connection broke at `at` and the download resumes there.
    fn resumed(&self, _disk: usize, _at: u64, _reason: &str) {}
}

/// Reports nothing.
pub struct NoDownloadProgress;
impl DownloadProgress for NoDownloadProgress {
    fn progress(&self, _: usize, _: u64, _: u64, _: f64) {}
}

/// One disk to download: its descriptor, where it lives.
#[derive(Debug, Clone)]
pub struct DiskSource {
    pub descriptor: DatastorePath,
    pub datacenter: String,
    /// The ESXi host serving it, for the per-host limit (`None`: one shared slot).
    pub host: Option<String>,
}

type Chunk = std::result::Result<bytes::Bytes, Error>;

/// The consumer's end: a blocking `Read` over the chunks as they arrive.
pub struct StreamReader {
    rx: mpsc::Receiver<Chunk>,
    cur: bytes::Bytes,
    pos: usize,
    done: bool,
}

impl Read for StreamReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos >= self.cur.len() {
            if self.done {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(Ok(c)) => {
                    self.cur = c;
                    self.pos = 0;
                }
                Some(Err(e)) => {
                    self.done = true;
                    return Err(std::io::Error::other(e));
                }
                None => self.done = true,
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Fetches a small datastore file whole (a descriptor), within `limit` bytes.
pub async fn fetch_small(
    s: &Session,
    file: &DatastorePath,
    datacenter: &str,
    limit: usize,
) -> Result<Vec<u8>> {
    let url = folder_url(&s.base, file, datacenter)?;
    let resp = get(s, &url, None).await?;
    let st = resp.status();
    if !st.is_success() {
        return Err(Error::Http {
            url: url.to_string(),
            status: st.as_u16(),
            detail: String::new(),
        });
    }
    read_limited(resp, limit, url.as_str()).await
}

/// A datastore GET with the session cookie (and `range` when given): an expired
/// session (401/403) is renewed once and the request repeated; a busy server (503) is
/// retried with backoff. Any other status is the caller's to judge.
async fn get(s: &Session, url: &Url, range: Option<&str>) -> Result<reqwest::Response> {
    let mut relogged = false;
    let mut attempt = 1;
    let mut delay = crate::client::BACKOFF_START;
    loop {
        let mut req = s.http.get(url.clone());
        if let Some(r) = range {
            req = req.header(RANGE, r);
        }
        if let Some(c) = s.cookie_header()? {
            req = req.header(COOKIE, c);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| s.transport_error(url.as_str(), e))?;
        let st = resp.status();
        if (st == StatusCode::UNAUTHORIZED || st == StatusCode::FORBIDDEN) && !relogged {
            s.relogin().await?;
            relogged = true;
            continue;
        }
        if st == StatusCode::SERVICE_UNAVAILABLE && attempt < crate::client::MAX_ATTEMPTS_503 {
            attempt += 1;
            tokio::time::sleep(delay).await;
            delay = delay.saturating_mul(2);
            continue;
        }
        return Ok(resp);
    }
}

/// Parses `Content-Range: bytes START-END/TOTAL`.
pub(crate) fn content_range(h: &reqwest::header::HeaderMap) -> Option<(u64, u64, Option<u64>)> {
    let v = h.get(CONTENT_RANGE)?.to_str().ok()?;
    let r = v.trim().strip_prefix("bytes ")?;
    let (range, total) = r.split_once('/')?;
    let (a, b) = range.split_once('-')?;
    let total = if total == "*" {
        None
    } else {
        Some(total.parse().ok()?)
    };
    Some((a.parse().ok()?, b.parse().ok()?, total))
}

/// Streams `[0, size)` of a datastore file into `tx`, resuming after failures.
async fn stream_file(
    s: &Session,
    url: Url,
    size: u64,
    disk: usize,
    tx: mpsc::Sender<Chunk>,
    progress: &dyn DownloadProgress,
) -> Result<()> {
    let started = Instant::now();
    let mut pos = 0u64;
    let mut failures = 0u32;
    let mut relogged = false;
    let mut last_report = 0u64;
    let rate = |done: u64| done as f64 / started.elapsed().as_secs_f64().max(1e-9);
    while pos < size {
        let attempt: std::result::Result<(), (Error, bool)> = async {
            let mut req = s.http.get(url.clone()).header(RANGE, format!("bytes={pos}-"));
            if let Some(c) = s.cookie_header().map_err(|e| (e, false))? {
                req = req.header(COOKIE, c);
            }
            // Transport failures (refused, reset) are worth retrying.
            let mut resp = req
                .send()
                .await
                .map_err(|e| (s.transport_error(url.as_str(), e), true))?;
            let st = resp.status();
            if (st == StatusCode::UNAUTHORIZED || st == StatusCode::FORBIDDEN) && !relogged {
                relogged = true;
                s.relogin().await.map_err(|e| (e, false))?;
                return Err((Error::protocol(url.as_str(), "session renewed"), true));
            }
            let http = |detail: String| Error::Http {
                url: url.to_string(),
                status: st.as_u16(),
                detail,
            };
            match st {
                StatusCode::PARTIAL_CONTENT => {
                    let (a, b, total) = content_range(resp.headers())
                        .ok_or_else(|| (http(": 206 without a usable Content-Range".into()), false))?;
                    if a != pos || b.checked_add(1) != Some(size) || total.is_some_and(|t| t != size) {
                        return Err((
                            http(format!(
                                ": asked for bytes {pos}- of {size}, got {a}-{b}/{total:?} (the file changed?)"
                            )),
                            false,
                        ));
                    }
                }
                // A server that ignores Range sends everything: usable from byte 0 only.
                StatusCode::OK if pos == 0 => {
                    if resp.content_length().is_some_and(|l| l != size) {
                        return Err((
                            http(format!(
                                ": the file is {} bytes, the descriptor says {size}",
                                resp.content_length().unwrap_or(0)
                            )),
                            false,
                        ));
                    }
                }
                StatusCode::SERVICE_UNAVAILABLE => return Err((http(String::new()), true)),
                _ => return Err((http(String::new()), false)),
            }
            loop {
                let chunk = match resp.chunk().await {
                    Ok(Some(c)) => c,
                    Ok(None) => break,
                    Err(e) => {
                        return Err((Error::transport(url.as_str(), format!("connection lost at byte {pos}"), e), true))
                    }
                };
                let end = pos
                    .checked_add(chunk.len() as u64)
                    .filter(|&e| e <= size)
                    .ok_or_else(|| {
                        (Error::protocol(url.as_str(), format!("more than the {size} bytes expected")), false)
                    })?;
                if tx.send(Ok(chunk)).await.is_err() {
                    return Err((Error::protocol(url.as_str(), CONSUMER_GONE), false));
                }
                pos = end;
                failures = 0;
                if pos - last_report >= PROGRESS_STEP || pos == size {
                    progress.progress(disk, pos, size, rate(pos));
                    last_report = pos;
                }
            }
            if pos < size {
                return Err((Error::protocol(url.as_str(), format!("body ended at byte {pos} of {size}")), true));
            }
            Ok(())
        }
        .await;
        match attempt {
            Ok(()) => {}
            Err((e, true)) => {
                failures += 1;
                if failures >= MAX_RESUME_ATTEMPTS {
                    return Err(e);
                }
                progress.resumed(disk, pos, &e.to_string());
                let delay = RESUME_BACKOFF.saturating_mul(1 << (failures - 1).min(8));
                tokio::time::sleep(delay).await;
            }
            Err((e, false)) => return Err(e),
        }
    }
    if size == 0 {
        progress.progress(disk, 0, 0, 0.0);
    }
    Ok(())
}

/// Deepest snapshot chain staged (vSphere allows 32 snapshots; the converter refuses
/// deeper chains too).
pub(crate) const MAX_STAGED_CHAIN: usize = 32;

/// Bytes a staged extent may hold beyond its data and 1/64 for grain tables: headers,
/// the embedded descriptor, footer and markers.
pub(crate) const STAGED_SLACK: u64 = 16 << 20;

/// How a disk's descriptor says it can be fetched.
#[derive(Debug, Clone)]
pub enum DiskShape {
    /// One flat extent at offset 0 (ESXi `vmfs`/`vmfsThin`): streamed into the
    /// converter with no copy.
    Flat(FlatDisk),
    /// A snapshot delta, a sparse or a split disk: the converter needs random access
    /// to every file of the chain, so they are staged on local disk first. The
    /// reason the stream path does not apply.
    Staged(String),
}

/// Classifies a fetched descriptor. A descriptor that cannot be parsed is an error.
pub fn shape(descriptor_file: &DatastorePath, raw: &[u8]) -> Result<DiskShape> {
    match flat_extent(descriptor_file, raw) {
        Ok(f) => Ok(DiskShape::Flat(f)),
        Err(Error::Usage(why)) => Ok(DiskShape::Staged(why)),
        Err(e) => Err(e),
    }
}

/// Size of a datastore file: a one-byte Range request, whose `Content-Range` names the
/// total (a server that ignores Range answers 200 and its `Content-Length` is it).
pub(crate) async fn file_size(s: &Session, url: &Url) -> Result<u64> {
    let resp = get(s, url, Some("bytes=0-0")).await?;
    let st = resp.status();
    let size = match st {
        StatusCode::PARTIAL_CONTENT => content_range(resp.headers()).and_then(|(_, _, t)| t),
        StatusCode::OK => resp.content_length(),
        // An empty file cannot satisfy a range.
        StatusCode::RANGE_NOT_SATISFIABLE => Some(0),
        _ => {
            return Err(Error::Http {
                url: url.to_string(),
                status: st.as_u16(),
                detail: String::new(),
            })
        }
    };
    size.ok_or_else(|| Error::protocol(url.as_str(), "no file size in the answer"))
}

impl Client {
    /// Downloads a disk whose shape is [`DiskShape::Staged`] into `dir`: its
    /// descriptor, every extent it names and, for a snapshot delta, its parents'
    /// descriptors and extents, up to [`MAX_STAGED_CHAIN`] deep, under their own file
    /// names (each resumable like a streamed extent). Parents must lie beside the
    /// child (a linked clone's base in another folder is refused with its path).
    /// Returns the local path of the top descriptor, for the file converter, which
    /// then checks the chain (CIDs, containment, depth) like any local VMDK.
    pub(crate) fn stage_disk(
        &self,
        disk: usize,
        source: &DiskSource,
        dir: &std::path::Path,
        progress: &dyn DownloadProgress,
    ) -> Result<std::path::PathBuf> {
        // The output directory is the user's; the staging directory in it is ours and
        // never a link planted under its name.
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| Error::Io {
                path: parent.to_path_buf(),
                what: "creating the output directory".into(),
                source: e,
            })?;
        }
        v2k_outfile::create_dir(dir)?;
        let s = self.session.clone();
        let local_name = |p: &DatastorePath| -> Result<String> {
            let name = p.path.rsplit('/').next().unwrap_or(&p.path).to_string();
            // Already checked by DatastorePath::parse / sibling; kept as a guard
            // because the name becomes a local file name.
            if name.is_empty() || name == "." || name == ".." || name.contains('\\') {
                return Err(Error::Usage(format!("{p}: not a usable file name")));
            }
            Ok(name)
        };
        let mut current = source.descriptor.clone();
        let mut top = None;
        let mut seen = std::collections::HashSet::new();
        for _ in 0..MAX_STAGED_CHAIN {
            if !seen.insert(current.path.clone()) {
                return Err(Error::Usage(format!("{current}: the snapshot chain loops")));
            }
            let raw = self.block_on(fetch_small(
                &s,
                &current,
                &source.datacenter,
                MAX_DESCRIPTOR_BYTES,
            ))?;
            let d = v2k_converters::vmdk::descriptor::parse(&raw)
                .map_err(|e| Error::protocol(current.to_string(), e.to_string()))?;
            let local = dir.join(local_name(&current)?);
            v2k_outfile::write_atomic(&local, &raw, true)?;
            top.get_or_insert(local);
            for e in &d.extents {
                let Some(file) = e.file.as_deref() else {
                    continue;
                };
                let remote = current.sibling(file)?;
                let dest = dir.join(local_name(&remote)?);
                // An extent holds at most its sectors plus sparse metadata (grain
                // directory and tables: 1/64 of the data at most, plus headers); a
                // server claiming more would only fill the local disk.
                let cap = e
                    .sectors
                    .checked_mul(512)
                    .and_then(|b| b.checked_add(b / 64))
                    .and_then(|b| b.checked_add(STAGED_SLACK))
                    .ok_or_else(|| Error::protocol(remote.to_string(), "extent size overflows"))?;
                self.download_file(disk, &remote, &source.datacenter, &dest, cap, progress)?;
            }
            if !d.has_parent() {
                return Ok(top.expect("set on the first descriptor"));
            }
            let hint = d.parent_file_name_hint.as_deref().ok_or_else(|| {
                Error::protocol(current.to_string(), "a delta without parentFileNameHint")
            })?;
            current = current.sibling(hint).map_err(|e| {
                Error::Usage(format!(
                    "{current}: parent {hint:?} is not beside it ({e}); linked clones are not supported"
                ))
            })?;
        }
        Err(Error::Usage(format!(
            "{}: snapshot chain deeper than {MAX_STAGED_CHAIN}",
            source.descriptor
        )))
    }

    /// Downloads one datastore file whole into `dest` (written as `dest` directly: the
    /// caller owns the staging directory and removes it), resuming after failures.
    fn download_file(
        &self,
        disk: usize,
        file: &DatastorePath,
        datacenter: &str,
        dest: &std::path::Path,
        cap: u64,
        progress: &dyn DownloadProgress,
    ) -> Result<()> {
        use std::io::Write;
        let s = self.session.clone();
        let url = folder_url(&s.base, file, datacenter)?;
        let size = self.block_on(file_size(&s, &url))?;
        if size > cap {
            return Err(Error::protocol(
                file.to_string(),
                format!("the server says {size} bytes, more than the {cap} its descriptor allows"),
            ));
        }
        // A fresh temporary file, renamed onto `dest` once complete: a link planted in
        // the staging directory is never written through.
        let staged = v2k_outfile::OutFile::create(dest, true)?;
        let mut out = staged.file();
        let (tx, mut rx) = mpsc::channel::<Chunk>(CHANNEL_CHUNKS);
        let write_err = |e| Error::Io {
            path: dest.to_path_buf(),
            what: "writing a staged file".into(),
            source: e,
        };
        let (net, written) = self.block_on(async {
            let net = stream_file(&s, url.clone(), size, disk, tx, progress);
            let sink = async {
                let mut n = 0u64;
                while let Some(c) = rx.recv().await {
                    let c = c?;
                    out.write_all(&c).map_err(write_err)?;
                    n += c.len() as u64;
                }
                Ok::<u64, Error>(n)
            };
            tokio::join!(net, sink)
        });
        // The sink's own failure (a full disk) says more than the stream it stopped.
        let written = written?;
        net?;
        if written != size {
            return Err(Error::protocol(
                file.to_string(),
                format!("{written} bytes staged of {size}"),
            ));
        }
        staged.commit()?;
        Ok(())
    }
}

/// Facts about a disk being streamed, given to the consumer.
#[derive(Debug, Clone)]
pub struct StreamInfo {
    pub source: DiskSource,
    pub flat: FlatDisk,
}

impl Client {
    /// Uploads bytes to a datastore file (`PUT /folder/...`): for tests and fixtures.
    pub fn put_file(&self, file: &DatastorePath, datacenter: &str, body: Vec<u8>) -> Result<()> {
        let s = self.session();
        let url = folder_url(&s.base, file, datacenter)?;
        self.block_on(async {
            let mut req = s.http.put(url.clone()).body(body);
            if let Some(c) = s.cookie_header()? {
                req = req.header(COOKIE, c);
            }
            let resp = req
                .send()
                .await
                .map_err(|e| s.transport_error(url.as_str(), e))?;
            if !resp.status().is_success() {
                return Err(Error::Http {
                    url: url.to_string(),
                    status: resp.status().as_u16(),
                    detail: " uploading".into(),
                });
            }
            Ok(())
        })
    }

    /// Fetches a small datastore file whole (at most `limit` bytes).
    pub(crate) fn get_small(
        &self,
        file: &DatastorePath,
        datacenter: &str,
        limit: usize,
    ) -> Result<Vec<u8>> {
        self.block_on(fetch_small(self.session(), file, datacenter, limit))
    }

    /// Downloads several disks at once, at most `per_host` from one ESXi host, and
    /// hands each one's flat extent, as it arrives, to `consume` on a thread of its
    /// own. Results come back in input order; one disk failing does not stop the
    /// others.
    pub fn stream_disks<T, F>(
        &self,
        disks: &[DiskSource],
        per_host: usize,
        progress: &dyn DownloadProgress,
        consume: F,
    ) -> Vec<Result<T>>
    where
        T: Send,
        F: Fn(usize, &StreamInfo, &mut StreamReader) -> Result<T> + Sync,
    {
        let s = self.session.clone();
        // Descriptors first: they are small, and a bad one fails before any transfer.
        let infos: Vec<Result<StreamInfo>> = disks
            .iter()
            .map(|d| {
                let raw = self.block_on(fetch_small(
                    &s,
                    &d.descriptor,
                    &d.datacenter,
                    MAX_DESCRIPTOR_BYTES,
                ))?;
                Ok(StreamInfo {
                    source: d.clone(),
                    flat: flat_extent(&d.descriptor, &raw)?,
                })
            })
            .collect();
        let mut limits: HashMap<Option<String>, Arc<Semaphore>> = HashMap::new();
        let per_host = per_host.max(1);
        let mut channels = Vec::new();
        for (i, info) in infos.iter().enumerate() {
            match info {
                Ok(info) => {
                    let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
                    let sem = limits
                        .entry(info.source.host.clone())
                        .or_insert_with(|| Arc::new(Semaphore::new(per_host)))
                        .clone();
                    channels.push(Some((i, tx, rx, sem)));
                }
                Err(_) => channels.push(None),
            }
        }
        let mut producers = Vec::new();
        let mut readers: Vec<Option<StreamReader>> = Vec::new();
        for c in channels {
            match c {
                Some((i, tx, rx, sem)) => {
                    let info = infos[i].as_ref().ok().cloned();
                    producers.push((i, tx, sem, info));
                    readers.push(Some(StreamReader {
                        rx,
                        cur: bytes::Bytes::new(),
                        pos: 0,
                        done: false,
                    }));
                }
                None => readers.push(None),
            }
        }
        let mut results: Vec<Option<Result<T>>> = (0..disks.len()).map(|_| None).collect();
        std::thread::scope(|scope| {
            let handles: Vec<_> = readers
                .into_iter()
                .enumerate()
                .map(|(i, r)| {
                    let info = infos[i].as_ref().ok();
                    let consume = &consume;
                    r.zip(info)
                        .map(|(mut r, info)| scope.spawn(move || consume(i, info, &mut r)))
                })
                .collect();
            // The network side, on this thread's runtime, while consumers run.
            let net: Vec<(usize, Result<()>)> = self.block_on(async {
                let mut set = tokio::task::JoinSet::new();
                let mut prxs = Vec::new();
                for (i, tx, sem, info) in producers {
                    let s = s.clone();
                    let Some(info) = info else { continue };
                    // The progress callback is borrowed; tasks need 'static, so
                    // progress is funnelled through a channel to this thread.
                    let (ptx, prx) = std::sync::mpsc::channel::<(u64, u64, f64, Option<String>)>();
                    set.spawn(async move {
                        let _permit = sem.acquire_owned().await;
                        let url =
                            match folder_url(&s.base, &info.flat.extent, &info.source.datacenter) {
                                Ok(u) => u,
                                Err(e) => {
                                    let _ = tx.send(Err(Error::Usage(e.to_string()))).await;
                                    return (i, Err(e));
                                }
                            };
                        let fwd = ForwardProgress(std::sync::Mutex::new(ptx));
                        let r = stream_file(&s, url, info.flat.size, i, tx.clone(), &fwd).await;
                        if let Err(e) = &r {
                            // The consumer learns why its stream stopped.
                            let _ = tx
                                .send(Err(Error::protocol(
                                    info.flat.extent.to_string(),
                                    e.to_string(),
                                )))
                                .await;
                        }
                        (i, r)
                    });
                    prxs.push((i, prx));
                }
                let mut out = Vec::new();
                loop {
                    let next =
                        tokio::time::timeout(Duration::from_millis(100), set.join_next()).await;
                    drain_progress(&prxs, progress);
                    match next {
                        Ok(Some(Ok(r))) => out.push(r),
                        Ok(Some(Err(e))) => out.push((
                            usize::MAX,
                            Err(Error::protocol("download task", e.to_string())),
                        )),
                        Ok(None) => break,
                        Err(_) => {}
                    }
                }
                drain_progress(&prxs, progress);
                out
            });
            let mut net_err: HashMap<usize, Error> = HashMap::new();
            for (i, r) in net {
                if let Err(e) = r {
                    net_err.insert(i, e);
                }
            }
            for (i, h) in handles.into_iter().enumerate() {
                results[i] = Some(match (h, &infos[i]) {
                    (_, Err(e)) => Err(Error::protocol(
                        disks[i].descriptor.to_string(),
                        e.to_string(),
                    )),
                    (Some(h), Ok(_)) => {
                        let r = h.join().unwrap_or_else(|_| {
                            Err(Error::protocol("consumer", "the consumer thread panicked"))
                        });
                        // A network error explains a consumer's failure better than
                        // "stream ended early".
                        match (r, net_err.remove(&i)) {
                            (Err(ce), Some(ne)) => match &ne {
                                Error::Protocol { message, .. } if message == CONSUMER_GONE => {
                                    Err(ce)
                                }
                                _ => Err(ne),
                            },
                            (r, _) => r,
                        }
                    }
                    (None, Ok(_)) => Err(Error::protocol("consumer", "not started")),
                });
            }
        });
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(Error::protocol("download", "no result"))))
            .collect()
    }
}

type ProgressMsg = (u64, u64, f64, Option<String>);

/// Hands progress that download tasks sent to the caller's callback, on this thread.
fn drain_progress(
    rx: &[(usize, std::sync::mpsc::Receiver<ProgressMsg>)],
    p: &dyn DownloadProgress,
) {
    for (i, r) in rx {
        while let Ok((done, total, rate, resumed)) = r.try_recv() {
            match resumed {
                Some(why) => p.resumed(*i, done, &why),
                None => p.progress(*i, done, total, rate),
            }
        }
    }
}

struct ForwardProgress(std::sync::Mutex<std::sync::mpsc::Sender<ProgressMsg>>);

impl DownloadProgress for ForwardProgress {
    fn progress(&self, _disk: usize, done: u64, total: u64, rate: f64) {
        if let Ok(t) = self.0.lock() {
            let _ = t.send((done, total, rate, None));
        }
    }
    fn resumed(&self, _disk: usize, at: u64, reason: &str) {
        if let Ok(t) = self.0.lock() {
            let _ = t.send((at, 0, 0.0, Some(reason.to_string())));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_checks_datastore_paths() {
        let p = DatastorePath::parse("[LocalDS_0] DC0_H0_VM0/disk1.vmdk").unwrap();
        assert_eq!(p.datastore, "LocalDS_0");
        assert_eq!(p.path, "DC0_H0_VM0/disk1.vmdk");
        assert_eq!(p.to_string(), "[LocalDS_0] DC0_H0_VM0/disk1.vmdk");
        for bad in [
            "no brackets",
            "[] a.vmdk",
            "[ds] ../etc/shadow",
            "[ds] /abs",
            "[ds] a//b",
            "[ds] a/./b",
            "[ds] a\nb",
            "[ds]",
        ] {
            assert!(DatastorePath::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn extent_names_stay_beside_their_descriptor() {
        let d = DatastorePath::parse("[ds] vm/vm.vmdk").unwrap();
        assert_eq!(d.sibling("vm-flat.vmdk").unwrap().path, "vm/vm-flat.vmdk");
        for bad in ["../x-flat.vmdk", "/etc/passwd", "sub/x", "..", "a\\b", ""] {
            assert!(d.sibling(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn builds_folder_urls_with_everything_encoded() {
        let base = Url::parse("https://vc.example:443/").unwrap();
        let f = DatastorePath::parse("[my ds&1] vm #1/vm?.vmdk").unwrap();
        let u = folder_url(&base, &f, "DC 0/sub").unwrap();
        assert_eq!(
            u.as_str(),
            "https://vc.example/folder/vm%20%231/vm%3F.vmdk?dcPath=DC+0%2Fsub&dsName=my+ds%261"
        );
    }

    #[test]
    fn finds_the_flat_extent_of_an_esxi_descriptor() {
        let d = DatastorePath::parse("[ds] vm/vm.vmdk").unwrap();
        let desc = b"# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"vmfs\"\nRW 2048 VMFS \"vm-flat.vmdk\"\n";
        let f = flat_extent(&d, desc).unwrap();
        assert_eq!(f.extent.path, "vm/vm-flat.vmdk");
        assert_eq!(f.size, 2048 * 512);
        assert_eq!(f.create_type, "vmfs");
        let delta = b"# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=12345678\nparentFileNameHint=\"vm.vmdk\"\ncreateType=\"vmfsSparse\"\nRW 2048 VMFSSPARSE \"vm-000001-delta.vmdk\"\n";
        assert!(flat_extent(&d, delta)
            .unwrap_err()
            .to_string()
            .contains("snapshot"));
        let escape = b"# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"vmfs\"\nRW 2048 VMFS \"../other/vm-flat.vmdk\"\n";
        assert!(flat_extent(&d, escape).is_err());
    }

    #[test]
    fn parses_content_range() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(CONTENT_RANGE, "bytes 100-199/200".parse().unwrap());
        assert_eq!(content_range(&h), Some((100, 199, Some(200))));
        h.insert(CONTENT_RANGE, "bytes 0-1/*".parse().unwrap());
        assert_eq!(content_range(&h), Some((0, 1, None)));
        h.insert(CONTENT_RANGE, "items 0-1/2".parse().unwrap());
        assert_eq!(content_range(&h), None);
    }
}
