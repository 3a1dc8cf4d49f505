//! Converting one VMDK (or several at once) to QCOW2 or raw.
//!
//! ```text
//!            rayon workers (one source reader each)          writer thread
//!  chunk i ─▶ read 1 MiB ─▶ zero-check clusters ─▶ deflate ─┐
//!  chunk j ─▶ ...          block digests (64 KiB)           ├─▶ window (in order) ─▶ qcow2/raw
//!  chunk k ─▶ ...                                           ┘        │
//!                                                       block digests folded in order
//! ```
//!
//! The disk is cut into chunks of 1 MiB (or one cluster, if larger). A window of
//! `4 × threads` chunks is processed in parallel, then handed to a writer thread
//! (a channel of depth one) while the next window is read, so at most two windows
//! are in memory: peak memory does not depend on the disk size. Chunks that the
//! allocation map shows as holes are not read at all.
//!
//! The output is written under a temporary name, read back and hashed
//! independently (unless verification is off), and only then renamed into place.

use std::collections::BTreeMap;
use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use flate2::{Compress, Compression, FlushCompress, Status};

use crate::blkhash::{self, BlockDigest, Hasher};
use crate::error::{Error, Result};
use crate::manifest::{self, HashFacts, Manifest, OutputFacts, SourceFacts, Timing};
use crate::output::PartialFile;
use crate::qcow2::{layout, Qcow2Writer};
use crate::raw::RawWriter;
pub use crate::verify::Format;
use crate::vmdk::{ReadSeek, Source, VmdkImage};

/// Smallest work unit: 1 MiB of virtual disk.
pub(crate) const MIN_CHUNK: u64 = 1 << 20;
/// Most workers a conversion uses, whatever the thread pool holds. Memory grows by
/// about 8 MiB per worker (two windows of 4 chunks of 1 MiB each, docs/convert.md),
/// so 64 keeps a conversion under the documented 64 MiB + 8 MiB × workers = 576 MiB
/// on any host, while being more workers than the disks and deflate of one
/// conversion keep busy on common conversion hosts.
pub const MAX_THREADS: usize = 64;
/// A source reader is dropped and reopened after this many chunks: the reader
/// library caches every grain table it touches (2 KiB per 32 MiB of disk), which
/// would otherwise grow with the disk size.
const READER_CHUNK_BUDGET: u32 = 4096;
/// deflate level for `--compress`; zlib's default, as `qemu-img convert -c`.
const COMPRESS_LEVEL: u32 = 6;
/// QEMU inflates compressed clusters with a 4 KiB window (windowBits 12).
const COMPRESS_WINDOW_BITS: u8 = 12;

/// Chunks written between two writeback kicks (64 MiB of virtual disk at 1 MiB chunks).
const WRITEBACK_CHUNKS: u64 = 64;

/// Flushes the output in the background while it is being written, so that the
/// fsync before the rename finds little left to write (otherwise the whole disk is
/// flushed at the end, in series with everything else). The writer kicks it every
/// [`WRITEBACK_CHUNKS`] chunks without waiting; a kick while a flush is running is
/// dropped. Only a head start: errors are ignored here, the final fsync decides.
struct Flusher {
    kick: Option<std::sync::mpsc::SyncSender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Flusher {
    fn start(f: &std::fs::File) -> Flusher {
        let Ok(f) = f.try_clone() else {
            return Flusher {
                kick: None,
                thread: None,
            };
        };
        let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
        let thread = std::thread::Builder::new()
            .name("v2k-flush".into())
            .spawn(move || {
                while rx.recv().is_ok() {
                    let _ = f.sync_data();
                }
            })
            .ok();
        Flusher {
            kick: thread.as_ref().map(|_| tx),
            thread,
        }
    }

    fn kick(&self) {
        if let Some(k) = &self.kick {
            let _ = k.try_send(());
        }
    }

    fn stop(mut self) {
        self.kick = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Virtual bytes between two copy-progress events.
const PROGRESS_STEP: u64 = 16 << 20;

/// Receives the next finished chunk. Called from a rayon worker (a caller running
/// inside the pool), it keeps executing pool tasks while it waits, so that a pool of
/// one thread cannot deadlock; elsewhere it simply blocks.
fn receive<T>(rx: &Receiver<T>) -> Option<T> {
    loop {
        if rayon::current_thread_index().is_none() {
            return rx.recv().ok();
        }
        match rx.recv_timeout(std::time::Duration::ZERO) {
            Ok(x) => return Some(x),
            Err(RecvTimeoutError::Disconnected) => return None,
            Err(RecvTimeoutError::Timeout) => {
                if rayon::yield_now() != Some(rayon::Yield::Executed) {
                    std::thread::sleep(std::time::Duration::from_micros(200));
                }
            }
        }
    }
}

/// Chunk buffers handed back by the writer for reuse, so that steady state does no
/// allocation (and no page faults on fresh memory) per chunk.
#[derive(Default)]
struct BufferPool {
    free: Mutex<Vec<Vec<u8>>>,
}

impl BufferPool {
    /// A zeroed-or-reused buffer of `len` bytes whose bytes from `keep` on are zero.
    fn take(&self, len: usize, keep: usize) -> Vec<u8> {
        let reused = self.free.lock().ok().and_then(|mut f| f.pop());
        match reused {
            Some(mut b) => {
                b.resize(len, 0);
                b[keep..].fill(0);
                b
            }
            None => vec![0u8; len],
        }
    }

    fn put(&self, b: Vec<u8>) {
        if b.capacity() > 0 {
            if let Ok(mut f) = self.free.lock() {
                f.push(b);
            }
        }
    }
}

/// How to convert.
#[derive(Debug, Clone)]
pub struct Options {
    pub format: Format,
    /// QCOW2 cluster size in bytes (power of two, 512 B..2 MiB).
    pub cluster_size: u64,
    pub compress: bool,
    pub verify: bool,
    /// Replace an existing output.
    pub overwrite: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            format: Format::Qcow2,
            cluster_size: 1 << layout::DEFAULT_CLUSTER_BITS,
            compress: false,
            verify: true,
            overwrite: false,
        }
    }
}

impl Options {
    fn validate(&self) -> Result<u32> {
        let cs = self.cluster_size;
        if !cs.is_power_of_two() || !(512..=2 << 20).contains(&cs) {
            return Err(Error::Usage(format!(
                "cluster size {cs} is not a power of two between 512 and 2097152"
            )));
        }
        if self.format == Format::Raw && self.compress {
            return Err(Error::Usage("--compress needs the qcow2 format".into()));
        }
        Ok(cs.trailing_zeros())
    }
}

/// One disk to convert.
#[derive(Debug, Clone)]
pub struct Job {
    pub source: Source,
    pub output: PathBuf,
}

/// What a conversion reports while it runs; `disk` is the job's index.
#[derive(Debug, Clone)]
pub enum Event {
    Started {
        disk: usize,
        virtual_size: u64,
        allocated_bytes: u64,
    },
    Copied {
        disk: usize,
        done: u64,
    },
    Verifying {
        disk: usize,
    },
    Verified {
        disk: usize,
        done: u64,
    },
    Finished {
        disk: usize,
    },
}

/// Receives progress events from worker threads.
pub trait Progress: Sync {
    fn event(&self, event: Event);
}

/// A progress sink that ignores everything.
pub struct NoProgress;
impl Progress for NoProgress {
    fn event(&self, _: Event) {}
}

/// Hands each worker its own source reader (the library's are not `Sync`).
struct ReaderPool<'a> {
    image: &'a VmdkImage,
    free: Mutex<Vec<(Box<dyn ReadSeek>, u32)>>,
}

impl ReaderPool<'_> {
    fn with<T>(&self, f: impl FnOnce(&mut dyn ReadSeek) -> T) -> Result<T> {
        let taken = self.free.lock().map_err(|_| poisoned())?.pop();
        let (mut r, uses) = match taken {
            Some(x) => x,
            None => (self.image.open_reader()?, 0),
        };
        let out = f(&mut *r);
        if uses + 1 < READER_CHUNK_BUDGET {
            self.free
                .lock()
                .map_err(|_| poisoned())?
                .push((r, uses + 1));
        }
        Ok(out)
    }
}

fn poisoned() -> Error {
    Error::Usage("internal: a worker panicked".into())
}

/// A processed chunk, ready to be written.
struct Chunk {
    offset: u64,
    digests: Vec<BlockDigest>,
    /// Cluster-padded data; empty when the whole chunk is zero.
    data: Vec<u8>,
    /// Per cluster: zero (skip), raw, or compressed bytes.
    clusters: Vec<Cluster>,
}

enum Cluster {
    Zero,
    Raw,
    Deflated(Vec<u8>),
}

fn deflate(cluster: &[u8], limit: usize) -> Option<Vec<u8>> {
    let mut c = Compress::new_with_window_bits(
        Compression::new(COMPRESS_LEVEL),
        false,
        COMPRESS_WINDOW_BITS,
    );
    let mut out = Vec::with_capacity(limit);
    match c.compress_vec(cluster, &mut out, FlushCompress::Finish) {
        Ok(Status::StreamEnd) if out.len() <= limit => Some(out),
        _ => None,
    }
}

#[allow(clippy::too_many_arguments)]
fn process_chunk(
    image: &VmdkImage,
    pool: &ReaderPool,
    buffers: &BufferPool,
    source: &Path,
    offset: u64,
    len: u64,
    cs: u64,
    compress_limit: Option<usize>,
) -> Result<Chunk> {
    let mut digests = Vec::with_capacity(len.div_ceil(blkhash::BLOCK as u64) as usize);
    if !image.maybe_allocated(offset, len) {
        blkhash::digest_zeros(len, &mut digests);
        return Ok(Chunk {
            offset,
            digests,
            data: Vec::new(),
            clusters: Vec::new(),
        });
    }
    let padded = len.div_ceil(cs) * cs;
    let mut data = buffers.take(padded as usize, len as usize);
    pool.with(|r| {
        r.seek(SeekFrom::Start(offset))?;
        r.read_exact(&mut data[..len as usize])
    })?
    .map_err(|e| Error::io(source, format!("reading virtual offset {offset}"), e))?;
    blkhash::digest_blocks(&data[..len as usize], &mut digests);
    let clusters = data
        .chunks(cs as usize)
        .map(|c| {
            if blkhash::is_zero(c) {
                Cluster::Zero
            } else if let Some(limit) = compress_limit {
                deflate(c, limit).map_or(Cluster::Raw, Cluster::Deflated)
            } else {
                Cluster::Raw
            }
        })
        .collect();
    Ok(Chunk {
        offset,
        digests,
        data,
        clusters,
    })
}

enum Sink<'f> {
    Qcow2(Box<Qcow2Writer<'f>>),
    Raw(RawWriter<'f>),
}

impl Sink<'_> {
    fn write(&mut self, c: &Chunk, cs: u64) -> Result<()> {
        if c.data.is_empty() {
            return Ok(());
        }
        let first = c.offset / cs;
        let csz = cs as usize;
        let mut i = 0;
        while i < c.clusters.len() {
            match &c.clusters[i] {
                Cluster::Zero => i += 1,
                Cluster::Deflated(blob) => {
                    match self {
                        Sink::Qcow2(w) => w.write_compressed(first + i as u64, blob)?,
                        Sink::Raw(_) => unreachable!("compression is refused for raw output"),
                    }
                    i += 1;
                }
                Cluster::Raw => {
                    let mut j = i + 1;
                    while j < c.clusters.len() && matches!(c.clusters[j], Cluster::Raw) {
                        j += 1;
                    }
                    let bytes = &c.data[i * csz..j * csz];
                    match self {
                        Sink::Qcow2(w) => w.write_run(first + i as u64, bytes)?,
                        Sink::Raw(w) => w.write_at(c.offset + (i * csz) as u64, bytes)?,
                    }
                    i = j;
                }
            }
        }
        Ok(())
    }
}

/// Converts one disk; `disk` is the index used in progress events.
pub fn convert(
    job: &Job,
    opts: &Options,
    disk: usize,
    progress: &dyn Progress,
) -> Result<Manifest> {
    let bits = opts.validate()?;
    let started = Instant::now();
    let started_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let image = VmdkImage::open(&job.source)?;
    refuse_output_over_source(&job.output, &image)?;
    let info = image.info().clone();
    let size = info.capacity;
    progress.event(Event::Started {
        disk,
        virtual_size: size,
        allocated_bytes: info.allocated_bytes,
    });

    let cs = opts.cluster_size;
    let chunk = MIN_CHUNK.max(cs);
    let out = open_output(&job.output, opts)?;
    let tmp = out.tmp_path().to_path_buf();
    let mut sink = match opts.format {
        Format::Qcow2 => Sink::Qcow2(Box::new(Qcow2Writer::new(out.file(), &tmp, size, bits)?)),
        Format::Raw => Sink::Raw(RawWriter::new(out.file(), &tmp, size, out.is_device())?),
    };
    let compress_limit = match (&sink, opts.compress) {
        (Sink::Qcow2(w), true) => Some(w.max_compressed_len()),
        _ => None,
    };
    let pool = ReaderPool {
        image: &image,
        free: Mutex::new(Vec::new()),
    };
    let chunks = size.div_ceil(chunk);
    let window = (rayon::current_num_threads().min(MAX_THREADS) as u64 * 4).max(4);
    let source_path = job.source.path.as_path();

    let mut hasher = Hasher::new();
    let buffers = BufferPool::default();
    // Chunks being read or waiting to be written: enough to keep every worker busy
    // while the writer catches up, and the bound on the data held in memory.
    let max_in_flight = window;
    let (tx, rx) = channel::<(u64, Result<Chunk>)>();
    let mut pending: BTreeMap<u64, Chunk> = BTreeMap::new();
    let mut failure: Option<Error> = None;
    let mut next_spawn = 0u64;
    let mut next_write = 0u64;
    let mut last_progress = 0u64;
    let flusher = Flusher::start(out.file());
    rayon::in_place_scope(|scope| {
        while next_write < chunks && failure.is_none() {
            while next_spawn < chunks && next_spawn - next_write < max_in_flight {
                let i = next_spawn;
                let tx = tx.clone();
                let (image, pool, buffers) = (&image, &pool, &buffers);
                scope.spawn(move |_| {
                    let off = i * chunk;
                    let r = process_chunk(
                        image,
                        pool,
                        buffers,
                        source_path,
                        off,
                        chunk.min(size - off),
                        cs,
                        compress_limit,
                    );
                    let _ = tx.send((i, r));
                });
                next_spawn += 1;
            }
            let (i, r) = match receive(&rx) {
                Some(x) => x,
                None => break,
            };
            match r {
                Ok(c) => {
                    pending.insert(i, c);
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
            // Write every chunk that is next in disk order.
            while let Some(c) = pending.remove(&next_write) {
                hasher.update(&c.digests);
                if let Err(e) = sink.write(&c, cs) {
                    failure = Some(e);
                    break;
                }
                buffers.put(c.data);
                next_write += 1;
                if next_write.is_multiple_of(WRITEBACK_CHUNKS) {
                    flusher.kick();
                }
            }
            let done = (next_write * chunk).min(size);
            if done - last_progress >= PROGRESS_STEP || next_write == chunks {
                progress.event(Event::Copied { disk, done });
                last_progress = done;
            }
        }
        // Leaving the scope waits for chunks still in flight; their results are dropped.
    });
    drop(rx);
    flusher.stop();
    if let Some(e) = failure {
        return Err(e);
    }
    let (stats, data_bytes) = match sink {
        Sink::Qcow2(w) => {
            let st = w.finish()?;
            let data = (st.data_clusters + st.compressed_clusters) * cs;
            (Some(st), data.min(size))
        }
        Sink::Raw(w) => (None, w.finish()?),
    };
    let source_hash = hasher.finish(size);
    let copy_seconds = started.elapsed().as_secs_f64();

    let manifest = verify_and_commit(out, opts, size, &source_hash, disk, progress, |c| {
        let total_seconds = started.elapsed().as_secs_f64();
        Manifest {
            schema_version: manifest::SCHEMA_VERSION,
            v2k_version: env!("CARGO_PKG_VERSION").into(),
            source: SourceFacts::new(&job.source, &info),
            output: OutputFacts {
                path: job.output.clone(),
                format: opts.format.name().into(),
                cluster_size: stats.map(|_| cs),
                compressed: opts.compress,
                file_size: c.file_size,
                data_bytes,
            },
            hash: HashFacts::blkhash(source_hash.clone(), c.output_hash),
            timing: Timing::measured(
                started_unix,
                copy_seconds,
                c.verify_seconds,
                total_seconds,
                size,
                info.allocated_bytes,
            ),
        }
    })?;
    progress.event(Event::Finished { disk });
    Ok(manifest)
}

/// Opens the output of a conversion: a fresh temporary file beside the final name, or,
/// for a raw output given as a block device (with `--force` as consent), the device
/// itself, written in place.
pub(crate) fn open_output(output: &Path, opts: &Options) -> Result<PartialFile> {
    Ok(match opts.format {
        Format::Raw => PartialFile::create_allowing_device(output, opts.overwrite)?,
        Format::Qcow2 => PartialFile::create(output, opts.overwrite)?,
    })
}

/// What [`verify_and_commit`] leaves for the manifest.
pub(crate) struct Committed {
    pub output_hash: Option<String>,
    pub verify_seconds: f64,
    pub file_size: u64,
}

/// The end of every conversion (file or stream): with `opts.verify`, the written output
/// is read back and hashed and must match `source_hash`; then the manifest made by
/// `manifest` is staged beside it, and both are committed as one group, the manifest
/// first and the disk last: the disk appears under its final name only once its
/// manifest is durable, and a failure at any step (a full disk at the manifest) leaves
/// neither, so a rerun starts clean. A mismatch leaves nothing under `output`. A block
/// device output is synced in place and gets no manifest file (it has no directory of
/// its own to hold one): the manifest is returned to the caller only.
pub(crate) fn verify_and_commit(
    out: PartialFile,
    opts: &Options,
    size: u64,
    source_hash: &str,
    disk: usize,
    progress: &dyn Progress,
    manifest: impl FnOnce(Committed) -> Manifest,
) -> Result<Manifest> {
    let output = out.final_path().to_path_buf();
    let verify_start = Instant::now();
    let output_hash = if opts.verify {
        progress.event(Event::Verifying { disk });
        // Read back through our own descriptor's /proc link: the bytes checked are the
        // bytes committed, whatever happens to the names in the directory meanwhile.
        let h = crate::verify::hash_output(&out.reopen_path(), opts.format, size, &|done| {
            progress.event(Event::Verified { disk, done })
        })?;
        if h != source_hash {
            return Err(Error::VerifyMismatch {
                path: output,
                expected: source_hash.to_string(),
                actual: h,
            });
        }
        Some(h)
    } else {
        None
    };
    let verify_seconds = verify_start.elapsed().as_secs_f64();
    let file_size = if out.is_device() {
        size
    } else {
        out.file()
            .metadata()
            .map_err(|e| Error::io(out.tmp_path(), "reading metadata of", e))?
            .len()
    };
    let m = manifest(Committed {
        output_hash,
        verify_seconds,
        file_size,
    });
    if out.is_device() {
        out.commit()?;
        return Ok(m);
    }
    let json = serde_json::to_vec_pretty(&m).map_err(|e| Error::Usage(format!("internal: {e}")))?;
    // The manifest always replaces a stale one (a run killed between the two renames
    // leaves a manifest without its disk); the disk's own `overwrite` was checked when
    // it was created and is checked again by its rename.
    let staged = PartialFile::staged(&manifest::manifest_path(&output), &json, true)?;
    v2k_outfile::commit_all(vec![staged, out])?;
    Ok(m)
}

/// Refuses an output path that is one of the source's own files (with `--force`
/// it would otherwise be truncated while being read).
fn refuse_output_over_source(output: &Path, image: &VmdkImage) -> Result<()> {
    let Ok(out) = std::fs::canonicalize(output) else {
        return Ok(()); // does not exist yet
    };
    let info = image.info();
    let mut sources = vec![info.source.path.clone()];
    sources.extend(info.extents.iter().filter_map(|e| e.file.clone()));
    sources.extend(info.parent_chain.iter().cloned());
    for s in sources {
        if std::fs::canonicalize(&s).is_ok_and(|c| c == out) {
            return Err(Error::Usage(format!(
                "{}: output would overwrite a source file",
                output.display()
            )));
        }
    }
    Ok(())
}

/// Refuses a set of conversions of which two would write the same output file (two
/// sources named alike converted into one directory, two disk ids that sanitise to the
/// same file name): without this, one output would silently replace the other, or the
/// second would be blamed on "another v2k process". `outputs` are `(source, output)`
/// pairs, as the caller would name them in a message. Checked before anything is
/// written.
pub fn check_distinct_outputs(outputs: &[(&Path, &Path)]) -> Result<()> {
    let mut seen: BTreeMap<PathBuf, &Path> = BTreeMap::new();
    for &(source, output) in outputs {
        if let Some(first) = seen.insert(output_key(output), source) {
            return Err(Error::Usage(format!(
                "{} and {} would both be written to {}; give them distinct output names \
                 (nothing was written)",
                first.display(),
                source.display(),
                output.display()
            )));
        }
    }
    Ok(())
}

/// What makes two output paths the same file: their directory as the system resolves
/// it (when it exists) and their name.
fn output_key(output: &Path) -> PathBuf {
    let name = output.file_name().unwrap_or(output.as_os_str());
    let dir = match output.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::canonicalize(dir)
        .unwrap_or_else(|_| dir.components().collect())
        .join(name)
}

/// Converts several disks concurrently, at most `parallel_disks` at a time, all
/// sharing the current rayon pool for their chunks; one failing disk does not stop
/// the others. Results come back in job order. Jobs that share an output are all
/// refused ([`check_distinct_outputs`]) and nothing is converted.
pub fn convert_all(
    jobs: &[Job],
    opts: &Options,
    parallel_disks: usize,
    progress: &dyn Progress,
) -> Vec<Result<Manifest>> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let pairs: Vec<(&Path, &Path)> = jobs
        .iter()
        .map(|j| (j.source.path.as_path(), j.output.as_path()))
        .collect();
    if let Err(e) = check_distinct_outputs(&pairs) {
        let msg = e.to_string();
        return jobs
            .iter()
            .map(|_| Err(Error::Usage(msg.clone())))
            .collect();
    }
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Result<Manifest>>>> =
        Mutex::new((0..jobs.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..parallel_disks.clamp(1, jobs.len().max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(job) = jobs.get(i) else { break };
                let r = convert(job, opts, i, progress);
                if let Ok(mut all) = results.lock() {
                    all[i] = Some(r);
                }
            });
        }
    });
    results
        .into_inner()
        .unwrap_or_default()
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(poisoned())))
        .collect()
}
