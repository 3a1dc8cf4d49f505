//! Reads in aligned clusters, and the record of what was served.
//!
//! Every read from the [`Source`] covers whole [`CLUSTER`]-sized clusters (64 KiB,
//! QCOW2's default, so that a cluster here is a cluster of the overlay and of a
//! dirty bitmap at its default granularity). A request's missing clusters are
//! fetched as one range; a small cache ([`CACHE_CLUSTERS`]) answers the guest's
//! small sequential reads without fetching a cluster again.
//!
//! The first time a cluster is served its SHA-256 goes into the [`HashRecord`]. A
//! cluster fetched again (after eviction) must hash the same: if not, the source
//! changed under a running import and the read fails with EIO rather than hand the
//! guest bytes that disagree with what it already saw. At the end, [`verify_image`]
//! compares a standalone image (after the stream) with the record: every cluster the
//! guest did not write must match, with no second read of the source.
//!
//! Record file (`save`/`load`), all integers little-endian:
//! ```text
//!  "V2KLIVE1" cluster_size:u32 reserved:u32 disk_size:u64 count:u64
//!  count × (cluster_index:u64 sha256:[u8;32])    ascending, no duplicates
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::source::Source;
use crate::Error;

/// Cluster size: QCOW2's default.
pub const CLUSTER: u64 = 64 << 10;
/// Clusters kept in the read cache (16 MiB).
pub const CACHE_CLUSTERS: usize = 256;
const RECORD_MAGIC: &[u8; 8] = b"V2KLIVE1";
const RECORD_HEADER: usize = 32;
const RECORD_ENTRY: usize = 40;

/// SHA-256 of each cluster served, by cluster index.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HashRecord {
    pub disk_size: u64,
    pub hashes: BTreeMap<u64, [u8; 32]>,
}

impl HashRecord {
    pub fn new(disk_size: u64) -> Self {
        HashRecord {
            disk_size,
            hashes: BTreeMap::new(),
        }
    }

    /// Clusters the disk has (the last one may be short).
    pub fn clusters(&self) -> u64 {
        self.disk_size.div_ceil(CLUSTER)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(RECORD_HEADER + self.hashes.len() * RECORD_ENTRY);
        b.extend_from_slice(RECORD_MAGIC);
        b.extend_from_slice(&(CLUSTER as u32).to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&self.disk_size.to_le_bytes());
        b.extend_from_slice(&(self.hashes.len() as u64).to_le_bytes());
        for (i, h) in &self.hashes {
            b.extend_from_slice(&i.to_le_bytes());
            b.extend_from_slice(h);
        }
        b
    }

    /// Parses a record file's bytes; `what` names it in errors.
    pub fn from_bytes(b: &[u8], what: &str) -> Result<HashRecord, Error> {
        let bad = |m: String| Error::Record {
            file: what.to_string(),
            message: m,
        };
        if b.len() < RECORD_HEADER || &b[..8] != RECORD_MAGIC {
            return Err(bad("not a v2k live hash record".into()));
        }
        let u64at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or([0; 8]));
        let cs = u32::from_le_bytes(b[8..12].try_into().unwrap_or([0; 4]));
        if u64::from(cs) != CLUSTER {
            return Err(bad(format!("cluster size {cs}, expected {CLUSTER}")));
        }
        let disk_size = u64at(16);
        let count = u64at(24);
        let body = &b[RECORD_HEADER..];
        if Some(body.len() as u64) != count.checked_mul(RECORD_ENTRY as u64) {
            return Err(bad(format!(
                "{count} entries announced, {} bytes of them",
                body.len()
            )));
        }
        let mut r = HashRecord::new(disk_size);
        let mut last = None;
        for e in body.chunks_exact(RECORD_ENTRY) {
            let i = u64::from_le_bytes(e[..8].try_into().unwrap_or([0; 8]));
            if last.is_some_and(|l| i <= l) || i >= r.clusters() {
                return Err(bad(format!("cluster {i} out of order or past the disk")));
            }
            last = Some(i);
            let mut h = [0u8; 32];
            h.copy_from_slice(&e[8..]);
            r.hashes.insert(i, h);
        }
        Ok(r)
    }

    /// Writes the record atomically (v2k's output rules: fresh name, fsync, rename).
    pub fn save(&self, path: &Path) -> Result<(), Error> {
        v2k_outfile::write_atomic(path, &self.to_bytes(), true)?;
        Ok(())
    }

    pub fn load(path: &Path) -> Result<HashRecord, Error> {
        let b = std::fs::read(path).map_err(|e| Error::Io {
            path: path.to_path_buf(),
            what: "reading".into(),
            source: e,
        })?;
        HashRecord::from_bytes(&b, &path.display().to_string())
    }
}

/// A bounded first-in first-out cache of clusters.
#[derive(Default)]
struct Cache {
    map: HashMap<u64, Bytes>,
    order: VecDeque<u64>,
}

impl Cache {
    fn insert(&mut self, i: u64, data: Bytes) {
        if self.map.insert(i, data).is_none() {
            self.order.push_back(i);
            while self.order.len() > CACHE_CLUSTERS {
                if let Some(old) = self.order.pop_front() {
                    self.map.remove(&old);
                }
            }
        }
    }
}

/// A [`Source`] read in clusters, with the cache and the record.
pub struct ClusterReader {
    source: Arc<dyn Source>,
    size: u64,
    cache: Mutex<Cache>,
    record: Mutex<HashRecord>,
    /// Where each new entry is written before its reply leaves (see [`crate::journal`]).
    journal: Mutex<JournalSlot>,
}

/// The journal, or why it stopped: a failed write is not the reader's failure (the
/// record in memory is whole), it is reported by [`ClusterReader::sync_journal`].
#[derive(Default)]
struct JournalSlot {
    journal: Option<crate::Journal>,
    failed: Option<Error>,
}

impl ClusterReader {
    pub fn new(source: Arc<dyn Source>) -> Self {
        let size = source.size();
        ClusterReader {
            source,
            size,
            cache: Mutex::new(Cache::default()),
            record: Mutex::new(HashRecord::new(size)),
            journal: Mutex::new(JournalSlot::default()),
        }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn source(&self) -> &Arc<dyn Source> {
        &self.source
    }

    /// A copy of the record so far.
    pub fn record(&self) -> HashRecord {
        self.record.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Takes `earlier` (what an earlier server over the same disk served, read back
    /// from its journal) as the record so far: clusters served again are checked
    /// against it, and the check after the stream covers both runs. Refused for
    /// another disk size.
    pub fn seed(&self, earlier: HashRecord) -> Result<(), Error> {
        if earlier.disk_size != self.size {
            return Err(Error::Record {
                file: self.source.name(),
                message: format!(
                    "an earlier record for {} bytes, not {}",
                    earlier.disk_size, self.size
                ),
            });
        }
        let mut rec = self.record.lock().map_err(|_| Error::Poisoned)?;
        for (i, h) in earlier.hashes {
            rec.hashes.entry(i).or_insert(h);
        }
        Ok(())
    }

    /// From now on, every cluster first recorded is written to `journal` before the
    /// read that fetched it returns.
    pub fn journal_to(&self, journal: crate::Journal) -> Result<(), Error> {
        let mut slot = self.journal.lock().map_err(|_| Error::Poisoned)?;
        *slot = JournalSlot {
            journal: Some(journal),
            failed: None,
        };
        Ok(())
    }

    /// Syncs the journal; the error of a write that failed since, if one did (the
    /// journal is then closed: what follows is not journaled).
    pub fn sync_journal(&self) -> Result<(), Error> {
        let mut slot = self.journal.lock().map_err(|_| Error::Poisoned)?;
        if let Some(e) = slot.failed.take() {
            return Err(e);
        }
        match slot.journal.as_mut() {
            Some(j) => j.sync(),
            None => Ok(()),
        }
    }

    fn cluster_len(&self, i: u64) -> u64 {
        (self.size - i * CLUSTER).min(CLUSTER)
    }

    /// Records a fetched cluster, or checks it against the record.
    fn note(&self, i: u64, data: &[u8]) -> Result<(), Error> {
        let h: [u8; 32] = Sha256::digest(data).into();
        let mut rec = self.record.lock().map_err(|_| Error::Poisoned)?;
        match rec.hashes.get(&i) {
            Some(old) if *old != h => Err(Error::SourceChanged {
                file: self.source.name(),
                offset: i * CLUSTER,
            }),
            Some(_) => Ok(()),
            None => {
                rec.hashes.insert(i, h);
                let mut slot = self.journal.lock().map_err(|_| Error::Poisoned)?;
                if let Some(j) = slot.journal.as_mut() {
                    if let Err(e) = j.write(&[(i, h)]) {
                        slot.journal = None;
                        slot.failed = Some(e);
                    }
                }
                Ok(())
            }
        }
    }

    /// Fetches clusters `[first, last]` from the source in one read; returns the
    /// run's bytes (each cluster is a slice of them, no copy).
    async fn fetch_run(&self, first: u64, last: u64) -> Result<Bytes, Error> {
        let start = first * CLUSTER;
        let end = ((last + 1) * CLUSTER).min(self.size);
        let len = usize::try_from(end - start)
            .map_err(|_| Error::Usage(format!("read of {} bytes", end - start)))?;
        let data = self.source.read_at(start, len).await?;
        if data.len() != len {
            return Err(Error::Usage(format!(
                "{}: source returned {} of {len} bytes at {start}",
                self.source.name(),
                data.len()
            )));
        }
        for i in first..=last {
            let a = ((i - first) * CLUSTER) as usize;
            let b = a + self.cluster_len(i) as usize;
            self.note(i, &data[a..b])?;
        }
        Ok(Bytes::from(data))
    }

    /// `len` bytes at `offset` (the caller checked that they lie within the disk).
    pub async fn read(&self, offset: u64, len: usize) -> Result<Bytes, Error> {
        let end = offset
            .checked_add(len as u64)
            .filter(|&e| e <= self.size)
            .ok_or_else(|| Error::Usage(format!("read of {len} bytes at {offset} past the end")))?;
        if len == 0 {
            return Ok(Bytes::new());
        }
        let first = offset / CLUSTER;
        let last = (end - 1) / CLUSTER;
        let mut got: BTreeMap<u64, Bytes> = BTreeMap::new();
        {
            let cache = self.cache.lock().map_err(|_| Error::Poisoned)?;
            for i in first..=last {
                if let Some(c) = cache.map.get(&i) {
                    got.insert(i, c.clone());
                }
            }
        }
        // Runs of consecutive missing clusters, one source read each.
        let mut i = first;
        while i <= last {
            if got.contains_key(&i) {
                i += 1;
                continue;
            }
            let mut j = i;
            while j < last && !got.contains_key(&(j + 1)) {
                j += 1;
            }
            let run = self.fetch_run(i, j).await?;
            // The common case (a stream, a sequential reader): the whole request was
            // one run, and its bytes are the answer without a copy.
            if i == first && j == last {
                self.cache_run(i, j, &run)?;
                let a = (offset - first * CLUSTER) as usize;
                return Ok(run.slice(a..a + len));
            }
            for (k, c) in self.cache_run(i, j, &run)? {
                got.insert(k, c);
            }
            i = j + 1;
        }
        let mut out = Vec::with_capacity(len);
        for (i, c) in got {
            let cstart = i * CLUSTER;
            let a = offset.max(cstart) - cstart;
            let b = end.min(cstart + c.len() as u64) - cstart;
            out.extend_from_slice(&c[a as usize..b as usize]);
        }
        Ok(Bytes::from(out))
    }

    /// Puts a fetched run's clusters in the cache (slices of it); returns them.
    fn cache_run(&self, first: u64, last: u64, run: &Bytes) -> Result<Vec<(u64, Bytes)>, Error> {
        let mut cache = self.cache.lock().map_err(|_| Error::Poisoned)?;
        let mut out = Vec::new();
        for k in first..=last {
            let a = ((k - first) * CLUSTER) as usize;
            let c = run.slice(a..a + self.cluster_len(k) as usize);
            cache.insert(k, c.clone());
            out.push((k, c));
        }
        Ok(out)
    }
}

/// What [`verify_image`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Clusters compared with their served hash, and equal.
    pub matched: u64,
    /// Clusters the guest wrote (not compared).
    pub dirty: u64,
    /// Clusters never served (nothing to compare with).
    pub unserved: u64,
    /// Clusters whose bytes differ from what was served although the guest did not
    /// write them, ascending.
    pub mismatched: Vec<u64>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.mismatched.is_empty()
    }
}

/// Reads `buf.len()` bytes of an image at an offset.
type ReadImage<'a> = dyn FnMut(u64, &mut [u8]) -> Result<(), Error> + 'a;

/// Compares an image, read through `read` at ascending offsets, with the record: every
/// served cluster not in `dirty` must hash as it did when served.
fn compare(
    record: &HashRecord,
    dirty: &BTreeSet<u64>,
    read: &mut ReadImage<'_>,
) -> Result<VerifyReport, Error> {
    let mut report = VerifyReport::default();
    let mut buf = vec![0u8; CLUSTER as usize];
    for i in 0..record.clusters() {
        if dirty.contains(&i) {
            report.dirty += 1;
            continue;
        }
        let Some(want) = record.hashes.get(&i) else {
            report.unserved += 1;
            continue;
        };
        let n = (record.disk_size - i * CLUSTER).min(CLUSTER) as usize;
        read(i * CLUSTER, &mut buf[..n])?;
        if Sha256::digest(&buf[..n]).as_slice() == want {
            report.matched += 1;
        } else {
            report.mismatched.push(i);
        }
    }
    Ok(report)
}

/// Compares a standalone image (QCOW2 with no backing file, or raw) with the record:
/// every served cluster not in `dirty` must hash as it did when served. Reads the
/// image only; the source is not touched.
pub fn verify_image(
    record: &HashRecord,
    image: &Path,
    dirty: &BTreeSet<u64>,
) -> Result<VerifyReport, Error> {
    let mut head = [0u8; 4];
    let is_qcow2 = {
        use std::io::Read;
        let mut f = std::fs::File::open(image).map_err(|e| Error::Io {
            path: image.to_path_buf(),
            what: "opening".into(),
            source: e,
        })?;
        f.read(&mut head).map_err(|e| Error::Io {
            path: image.to_path_buf(),
            what: "reading".into(),
            source: e,
        })? == 4
            && &head == b"QFI\xfb"
    };
    let size_err = |size: u64| Error::Record {
        file: image.display().to_string(),
        message: format!(
            "image is {size} bytes, the served disk {}",
            record.disk_size
        ),
    };
    if is_qcow2 {
        let r = v2k_converters::qcow2::reader::Qcow2Reader::open(image)?;
        if r.size() != record.disk_size {
            return Err(size_err(r.size()));
        }
        let mut l2 = v2k_converters::qcow2::reader::L2Cache::default();
        compare(record, dirty, &mut |off, b| Ok(r.read_at(off, b, &mut l2)?))
    } else {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::open(image).map_err(|e| Error::Io {
            path: image.to_path_buf(),
            what: "opening".into(),
            source: e,
        })?;
        let size = f.metadata().map(|m| m.len()).unwrap_or(0);
        if size != record.disk_size {
            return Err(size_err(size));
        }
        compare(record, dirty, &mut |off, b| {
            f.read_exact_at(b, off).map_err(|e| Error::Io {
                path: image.to_path_buf(),
                what: format!("reading at {off}"),
                source: e,
            })
        })
    }
}

/// Like [`verify_image`], over a disk's bytes streamed from offset 0 (a pipe from
/// `nbdcopy`): clusters not compared are read past. `name` names the stream in errors.
/// The stream must hold at least the record's disk size; what follows is not read.
pub fn verify_stream(
    record: &HashRecord,
    mut stream: impl std::io::Read,
    dirty: &BTreeSet<u64>,
    name: &str,
) -> Result<VerifyReport, Error> {
    let mut pos = 0u64;
    let mut sink = vec![0u8; CLUSTER as usize];
    let io = |what: String, e: std::io::Error| Error::Io {
        path: name.into(),
        what,
        source: e,
    };
    compare(record, dirty, &mut |off, b| {
        // `compare` reads at ascending offsets: skip to `off`, then read.
        while pos < off {
            let n = (off - pos).min(CLUSTER) as usize;
            stream
                .read_exact(&mut sink[..n])
                .map_err(|e| io(format!("reading at {pos}"), e))?;
            pos += n as u64;
        }
        stream
            .read_exact(b)
            .map_err(|e| io(format!("reading at {off}"), e))?;
        pos += b.len() as u64;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_streamed_image_is_compared_cluster_by_cluster_and_a_short_one_refused() {
        // Four clusters and a tail of 100 bytes; cluster 2 never served.
        let size = 4 * CLUSTER + 100;
        let disk: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
        let mut r = HashRecord::new(size);
        for i in [0u64, 1, 3, 4] {
            let a = (i * CLUSTER) as usize;
            let b = ((i + 1) * CLUSTER).min(size) as usize;
            r.hashes.insert(i, Sha256::digest(&disk[a..b]).into());
        }
        let none = BTreeSet::new();
        let ok = verify_stream(&r, &disk[..], &none, "s").unwrap();
        assert_eq!((ok.matched, ok.unserved, ok.dirty), (4, 1, 0));
        assert!(ok.ok());
        // A changed byte in cluster 3 is found; skipped when cluster 3 is dirty.
        let mut changed = disk.clone();
        changed[(3 * CLUSTER + 9) as usize] ^= 1;
        let bad = verify_stream(&r, &changed[..], &none, "s").unwrap();
        assert_eq!(bad.mismatched, vec![3]);
        let dirty = BTreeSet::from([3]);
        let skipped = verify_stream(&r, &changed[..], &dirty, "s").unwrap();
        assert_eq!((skipped.matched, skipped.dirty), (3, 1));
        assert!(skipped.ok());
        // The same answers as reading the image from a file.
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("img.raw");
        std::fs::write(&f, &changed).unwrap();
        assert_eq!(verify_image(&r, &f, &none).unwrap(), bad);
        // A stream that ends early is an error naming it.
        let e = verify_stream(&r, &disk[..(4 * CLUSTER) as usize], &none, "nbd+unix:///x")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("nbd+unix:///x") && e.contains("reading at"),
            "{e}"
        );
    }

    #[test]
    fn a_record_round_trips_and_bad_files_are_refused() {
        let mut r = HashRecord::new(3 * CLUSTER + 5);
        r.hashes.insert(0, [1; 32]);
        r.hashes.insert(3, [2; 32]);
        let b = r.to_bytes();
        assert_eq!(HashRecord::from_bytes(&b, "x").unwrap(), r);
        // Truncated, wrong magic, an index past the disk, entries out of order.
        assert!(HashRecord::from_bytes(&b[..b.len() - 1], "x").is_err());
        let mut m = b.clone();
        m[0] = b'X';
        assert!(HashRecord::from_bytes(&m, "x").is_err());
        let mut past = b.clone();
        past[RECORD_HEADER + RECORD_ENTRY..RECORD_HEADER + RECORD_ENTRY + 8]
            .copy_from_slice(&4u64.to_le_bytes());
        assert!(HashRecord::from_bytes(&past, "x").is_err());
        let mut order = b.clone();
        order[RECORD_HEADER..RECORD_HEADER + 8].copy_from_slice(&3u64.to_le_bytes());
        assert!(HashRecord::from_bytes(&order, "x").is_err());
        // A count that overflows when multiplied by the entry size.
        let mut huge = b[..RECORD_HEADER].to_vec();
        huge[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(HashRecord::from_bytes(&huge, "x").is_err());
    }
}

#[cfg(test)]
mod seed_tests {
    use super::*;
    use crate::FileSource;

    /// A rerun's server seeded with the killed run's record: a cluster it serves again
    /// is checked against that record, new ones are journaled, others keep theirs.
    #[test]
    fn a_seeded_record_checks_clusters_served_again() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("disk.raw");
        let data: Vec<u8> = (0..3 * CLUSTER).map(|i| (i % 251) as u8).collect();
        std::fs::write(&p, &data).unwrap();
        let reader = ClusterReader::new(Arc::new(FileSource::open(&p).unwrap()));
        let mut earlier = HashRecord::new(3 * CLUSTER);
        earlier.hashes.insert(0, [7; 32]); // not what cluster 0 holds
        earlier
            .hashes
            .insert(2, Sha256::digest(&data[2 * CLUSTER as usize..]).into());
        assert!(
            reader.seed(HashRecord::new(CLUSTER)).is_err(),
            "another size"
        );
        reader.seed(earlier).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let e = rt.block_on(reader.read(0, 512)).unwrap_err();
        assert!(matches!(e, Error::SourceChanged { offset: 0, .. }), "{e}");
        rt.block_on(reader.read(CLUSTER, 512)).unwrap();
        rt.block_on(reader.read(2 * CLUSTER, 512)).unwrap();
        assert_eq!(reader.record().hashes.len(), 3);
    }

    /// Each new cluster is in the journal by the time its read returns (no sync
    /// needed to survive the process); a cluster served again is not written twice.
    #[test]
    fn a_cluster_is_journaled_before_its_read_returns() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("disk.raw");
        let data: Vec<u8> = (0..3 * CLUSTER).map(|i| (i % 253) as u8).collect();
        std::fs::write(&p, &data).unwrap();
        let reader = ClusterReader::new(Arc::new(FileSource::open(&p).unwrap()));
        let j = d.path().join("disk0.hashes");
        reader
            .journal_to(crate::Journal::open(&j, 3 * CLUSTER).unwrap())
            .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(reader.read(CLUSTER + 5, 10)).unwrap();
        let on_disk = crate::Journal::load(&j).unwrap();
        assert_eq!(on_disk.hashes.keys().copied().collect::<Vec<_>>(), [1]);
        assert_eq!(on_disk.hashes, reader.record().hashes);
        rt.block_on(reader.read(CLUSTER, 512)).unwrap();
        rt.block_on(reader.read(0, 2 * CLUSTER as usize)).unwrap();
        reader.sync_journal().unwrap();
        let on_disk = crate::Journal::load(&j).unwrap();
        assert_eq!(on_disk.hashes, reader.record().hashes);
        assert_eq!(
            std::fs::metadata(&j).unwrap().len(),
            24 + 2 * 40,
            "two entries, cluster 1 once"
        );
    }
}
