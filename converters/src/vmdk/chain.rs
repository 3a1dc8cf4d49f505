//! Our own reader over a snapshot chain (a delta and its parents), used instead of
//! vmdk-core's `VmdkChainReader`.
//!
//! Why: vmdk-core 0.8.4 opens descriptor-based sparse layers (`vmfsSparse`,
//! `vmfsThin`, `twoGbMaxExtentSparse`) as if they were flat, so their
//! `is_allocated` is true everywhere and its chain reader never falls through to the
//! parent: an ESXi snapshot delta (`-delta.vmdk`, COWD) or a Workstation split-sparse
//! snapshot came out as the delta alone, zeros wherever the parent held the data —
//! and read-back verification could not notice, since it hashes what the same reader
//! returned. Here every layer is split into its descriptor's extents, and each sparse
//! extent file is opened on its own (binary VMDK4, COWD or seSparse), where vmdk-core
//! does answer allocation per grain. A read takes the newest layer whose extent has
//! the sector allocated, and never spans a grain of any layer or an extent boundary.
//!
//! Paths were validated by `VmdkImage::open` (containment, CIDs, depth) before a
//! chain reader is built; they are resolved again here the same way.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::descriptor::{self, ExtentKind};
use super::header::SECTOR;
use super::paths;
use crate::error::{Error, Result};

/// Largest text descriptor read (the converter's own descriptor limit).
const MAX_DESCRIPTOR: u64 = descriptor::MAX_DESCRIPTOR_BYTES as u64;

/// What backs one extent of one layer.
enum Backing {
    /// Raw bytes at `offset` in a file: every sector is allocated.
    Flat { file: File, offset: u64 },
    /// A sparse extent file, opened alone so that its grain tables answer; a VMDK4
    /// one also with its own grain-table index (see [`Gtes`]).
    Sparse(Box<vmdk::VmdkFileReader>, Option<Gtes>),
    /// Reads as zeros and hides the parents (a `ZERO` extent).
    Zero,
}

struct Extent {
    /// First virtual byte.
    start: u64,
    len: u64,
    backing: Backing,
    /// Grain size of a sparse extent (bytes), for read clamping.
    grain: Option<u64>,
}

/// A `Read + Seek` over the consolidated chain, newest layer first.
pub(crate) struct ChainReader {
    /// `layers[0]` is the delta named by the user, the last is the base.
    layers: Vec<Vec<Extent>>,
    size: u64,
    pos: u64,
    /// Reads never cross a multiple of this (the smallest grain in the chain).
    clamp: u64,
}

impl ChainReader {
    /// Opens `top` and its `parents` (nearest first), each already validated.
    pub fn open(top: &Path, parents: &[PathBuf], capacity: u64) -> Result<Self> {
        let mut layers = Vec::with_capacity(parents.len() + 1);
        for p in std::iter::once(top).chain(parents.iter().map(PathBuf::as_path)) {
            layers.push(layer(p, capacity)?);
        }
        let clamp = layers
            .iter()
            .flatten()
            .filter_map(|e| e.grain)
            .filter(|&g| g > 0)
            .min()
            .unwrap_or(1 << 20);
        Ok(ChainReader {
            layers,
            size: capacity,
            pos: 0,
            clamp,
        })
    }
}

/// The extents of one layer file.
fn layer(path: &Path, capacity: u64) -> Result<Vec<Extent>> {
    let what = "opening a snapshot layer";
    // At most a descriptor's worth: the parser refuses anything longer.
    let mut raw = Vec::new();
    v2k_untrusted::file::open(path)
        .and_then(|f| f.take(MAX_DESCRIPTOR + 1).read_to_end(&mut raw))
        .map_err(|e| Error::io(path, what, e))?;
    if raw.first() != Some(&b'#') {
        // A self-contained binary sparse file (monolithicSparse): one extent.
        return Ok(vec![sparse_extent(path, 0, capacity)?]);
    }
    let d = descriptor::parse(&raw).map_err(|e| Error::invalid(path, e.to_string()))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut out = Vec::with_capacity(d.extents.len());
    let mut start = 0u64;
    for (n, e) in d.extents.iter().enumerate() {
        let len = e
            .sectors
            .checked_mul(SECTOR)
            .ok_or_else(|| Error::invalid(path, format!("extent {} overflows", n + 1)))?;
        let file = || -> Result<PathBuf> {
            let name = e
                .file
                .as_deref()
                .ok_or_else(|| Error::invalid(path, format!("extent {} has no file", n + 1)))?;
            paths::resolve_inside(dir, name)
                .map_err(|m| Error::invalid(path, format!("extent {} refused: {m}", n + 1)))
        };
        let extent = match e.kind {
            ExtentKind::Zero => Extent {
                start,
                len,
                backing: Backing::Zero,
                grain: None,
            },
            ExtentKind::Flat | ExtentKind::Vmfs => {
                let p = file()?;
                Extent {
                    start,
                    len,
                    backing: Backing::Flat {
                        file: v2k_untrusted::file::open(&p)
                            .map_err(|err| Error::io(&p, what, err))?,
                        offset: e.offset.checked_mul(SECTOR).ok_or_else(|| {
                            Error::invalid(path, format!("extent {} offset overflows", n + 1))
                        })?,
                    },
                    grain: None,
                }
            }
            ExtentKind::Sparse | ExtentKind::VmfsSparse | ExtentKind::SeSparse => {
                sparse_extent(&file()?, start, len)?
            }
            ExtentKind::VmfsRdm | ExtentKind::VmfsRaw => {
                return Err(Error::unsupported(
                    path,
                    format!("extent {} is a raw device mapping", n + 1),
                ))
            }
        };
        out.push(extent);
        start = start
            .checked_add(len)
            .ok_or_else(|| Error::invalid(path, "extents overflow"))?;
    }
    Ok(out)
}

fn sparse_extent(file: &Path, start: u64, len: u64) -> Result<Extent> {
    let r = vmdk::VmdkFileReader::open_path(file)
        .map_err(|e| Error::vmdk(file, "opening a sparse extent", e))?;
    let mut grain = r.info().grain_size_bytes;
    let what = "opening a sparse extent";
    let mut f = v2k_untrusted::file::open(file).map_err(|e| Error::io(file, what, e))?;
    let flen = f.metadata().map_err(|e| Error::io(file, what, e))?.len();
    let mut magic = [0u8; 4];
    f.read_exact(&mut magic)
        .map_err(|e| Error::io(file, what, e))?;
    let gtes = if super::header::sniff(&magic) == super::Magic::Vmdk4 {
        let (hdr, gd) = super::checked_sparse_header(file, &mut f, flen)?;
        grain = hdr.grain_bytes();
        Some(Gtes {
            file: f,
            gd: gd * SECTOR,
            grain,
            per_gt: u64::from(hdr.gtes_per_gt),
        })
    } else {
        // COWD (vmfsSparse) has no zeroed-grain entry; seSparse's types are read by
        // vmdk-core.
        None
    };
    Ok(Extent {
        start,
        len,
        backing: Backing::Sparse(Box::new(r), gtes),
        grain: Some(grain),
    })
}

/// Grain-table lookups of a VMDK4 sparse extent. vmdk-core's `is_allocated` says
/// only yes or no, but a delta's grain-table entry 1 ("zeroed grain") means "zeros
/// here, whatever the parent holds" — not "look in the parent" like 0.
struct Gtes {
    file: File,
    /// The grain directory in use (validated by the allocation walk), in bytes.
    gd: u64,
    grain: u64,
    per_gt: u64,
}

/// What a grain-table entry says about a grain.
enum Grain {
    Absent,
    Zeroed,
    Data,
}

impl Gtes {
    fn lookup(&self, within: u64) -> io::Result<Grain> {
        use std::os::unix::fs::FileExt;
        let g = within / self.grain;
        let mut b = [0u8; 4];
        self.file
            .read_exact_at(&mut b, self.gd + (g / self.per_gt) * 4)?;
        let gt = u64::from(u32::from_le_bytes(b));
        if gt == 0 {
            return Ok(Grain::Absent);
        }
        self.file
            .read_exact_at(&mut b, gt * SECTOR + (g % self.per_gt) * 4)?;
        Ok(match u32::from_le_bytes(b) {
            0 => Grain::Absent,
            1 => Grain::Zeroed,
            _ => Grain::Data,
        })
    }
}

impl Read for ChainReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() || self.pos >= self.size {
            return Ok(0);
        }
        let mut n = buf
            .len()
            .min(usize::try_from(self.size - self.pos).unwrap_or(usize::MAX));
        let to_clamp = self.clamp - self.pos % self.clamp;
        n = n.min(usize::try_from(to_clamp).unwrap_or(usize::MAX));
        let pos = self.pos;
        for layer in &mut self.layers {
            let Some(e) = layer
                .iter_mut()
                .find(|e| pos >= e.start && pos - e.start < e.len)
            else {
                continue;
            };
            let within = pos - e.start;
            let n = n.min(usize::try_from(e.len - within).unwrap_or(usize::MAX));
            let buf = &mut buf[..n];
            match &mut e.backing {
                Backing::Zero => buf.fill(0),
                Backing::Flat { file, offset } => {
                    file.seek(SeekFrom::Start(*offset + within))?;
                    file.read_exact(buf)?;
                }
                Backing::Sparse(r, gtes) => {
                    let grain = match gtes {
                        Some(g) => g.lookup(within)?,
                        None if r.is_allocated(within / SECTOR)? => Grain::Data,
                        None => Grain::Absent,
                    };
                    match grain {
                        Grain::Absent => continue,
                        Grain::Zeroed => buf.fill(0),
                        Grain::Data => {
                            r.seek(SeekFrom::Start(within))?;
                            r.read_exact(buf)?;
                        }
                    }
                }
            }
            self.pos += n as u64;
            return Ok(n);
        }
        // No layer holds these sectors: they read as zeros.
        buf[..n].fill(0);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for ChainReader {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let new = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(d) => self.size.checked_add_signed(d),
        };
        self.pos = new
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
        Ok(self.pos)
    }
}
