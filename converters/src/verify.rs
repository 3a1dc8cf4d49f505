//! Hashing an output by reading it back from its file, in parallel and in bounded
//! memory: windows of chunks (256 MiB of virtual disk) are hashed by the rayon pool,
//! each worker reusing one buffer, and their block digests are folded in disk order
//! before the next window starts.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use rayon::prelude::*;

use crate::blkhash::{self, BlockDigest, Hasher};
use crate::error::{Error, Result};
use crate::qcow2::reader::{L2Cache, Qcow2Reader};

/// Bytes hashed per work item.
pub(crate) const CHUNK: u64 = 1 << 20;

/// The output formats v2k writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    Qcow2,
    Raw,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Qcow2 => "qcow2",
            Format::Raw => "raw",
        }
    }
}

/// Virtual bytes hashed between two folds. Only block digests (32 B per 64 KiB) are
/// kept across a window, so it can be large: the pool idles only at its end.
const WINDOW_BYTES: u64 = 256 << 20;

/// Per-worker state reused across chunks: a read buffer and the L2 table cache, so
/// that no chunk allocates (fresh zeroed pages fault in one by one) or re-reads a table.
#[derive(Default)]
struct Scratch {
    buf: Vec<u8>,
    l2: L2Cache,
}

/// Runs `digest(scratch, offset, len)` over the disk in windows and folds the results.
fn hash_in_windows<F>(size: u64, chunk: u64, progress: &dyn Fn(u64), digest: F) -> Result<String>
where
    F: Fn(&mut Scratch, u64, u64) -> Result<Vec<BlockDigest>> + Sync,
{
    let chunks = size.div_ceil(chunk);
    let win = (WINDOW_BYTES / chunk).max(rayon::current_num_threads() as u64 * 4);
    let mut hasher = Hasher::new();
    let mut start = 0;
    while start < chunks {
        let end = (start + win).min(chunks);
        let parts: Vec<Result<Vec<BlockDigest>>> = (start..end)
            .into_par_iter()
            .map_init(Scratch::default, |s, i| {
                let off = i * chunk;
                digest(s, off, chunk.min(size - off))
            })
            .collect();
        for p in parts {
            hasher.update(&p?);
        }
        progress((end * chunk).min(size));
        start = end;
    }
    Ok(hasher.finish(size))
}

/// Content hash of a QCOW2 file, read back independently of the writer.
pub(crate) fn hash_qcow2(path: &Path, progress: &dyn Fn(u64)) -> Result<String> {
    let r = Qcow2Reader::open(path)?;
    let chunk = CHUNK.max(r.cluster_size());
    let cs = r.cluster_size();
    hash_in_windows(r.size(), chunk, progress, |s, off, len| {
        let mut d = Vec::with_capacity(len.div_ceil(blkhash::BLOCK as u64) as usize);
        if r.is_unallocated(off, len, &mut s.l2)? {
            blkhash::digest_zeros(len, &mut d);
            return Ok(d);
        }
        s.buf.resize(len.div_ceil(cs) as usize * cs as usize, 0);
        r.read_at(off, &mut s.buf, &mut s.l2)?;
        blkhash::digest_blocks(&s.buf[..len as usize], &mut d);
        Ok(d)
    })
}

/// Content hash of a raw file of `size` virtual bytes.
pub(crate) fn hash_raw(path: &Path, size: u64, progress: &dyn Fn(u64)) -> Result<String> {
    let f = File::open(path).map_err(|e| Error::io(path, "opening", e))?;
    let meta = f
        .metadata()
        .map_err(|e| Error::io(path, "reading metadata of", e))?;
    use std::os::unix::fs::FileTypeExt;
    // A block device output is at least the disk's size; only its first `size` bytes
    // are the disk.
    let device = meta.file_type().is_block_device();
    let len = if device {
        crate::raw::device_size(&f, path)?
    } else {
        meta.len()
    };
    if (device && len < size) || (!device && len != size) {
        return Err(Error::invalid(
            path,
            format!("raw file is {len} bytes, expected {size}"),
        ));
    }
    hash_in_windows(size, CHUNK, progress, |s, off, n| {
        let mut d = Vec::new();
        if !device && is_hole(&f, off, n) {
            blkhash::digest_zeros(n, &mut d);
            return Ok(d);
        }
        s.buf.resize(n as usize, 0);
        f.read_exact_at(&mut s.buf, off)
            .map_err(|e| Error::io(path, "reading back", e))?;
        blkhash::digest_blocks(&s.buf, &mut d);
        Ok(d)
    })
}

/// Whether `[off, off + len)` of `f` is a hole, so it reads as zeros (SEEK_DATA
/// finds no data before its end). Any error just means "read it".
fn is_hole(f: &File, off: u64, len: u64) -> bool {
    match rustix::fs::seek(f, rustix::fs::SeekFrom::Data(off)) {
        Ok(next_data) => next_data >= off + len,
        // ENXIO: no data at or after `off`.
        Err(e) => e == rustix::io::Errno::NXIO,
    }
}

/// Content hash of an output file of the given format.
pub fn hash_output(
    path: &Path,
    format: Format,
    size: u64,
    progress: &dyn Fn(u64),
) -> Result<String> {
    match format {
        Format::Qcow2 => hash_qcow2(path, progress),
        Format::Raw => hash_raw(path, size, progress),
    }
}
