//! The VMDK side: every subformat a VMware estate produces, opened through the
//! `vmdk` reader library behind this small adapter, which adds what the library
//! leaves out — strict header and descriptor checks with named limits, contained
//! extent and parent paths, strict snapshot-chain validation, a bounded allocation
//! map for every layout (split extents and chains included), and reading straight
//! out of a byte range of a larger file (an OVA member).

pub mod alloc;
pub mod chain;
pub mod descriptor;
pub mod header;
pub mod paths;

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use alloc::ChunkMap;
use descriptor::{Access, ExtentKind};
use header::{Magic, SparseHeader, SECTOR};

/// Deepest snapshot chain accepted. VMware supports 32 snapshots per VM; a deeper
/// chain in a descriptor is a loop or a crafted file.
pub const MAX_CHAIN_DEPTH: usize = 32;

/// `Read + Seek` that can move to another thread: one per worker.
pub(crate) trait ReadSeek: Read + Seek + Send {}
impl<T: Read + Seek + Send> ReadSeek for T {}

/// Where a disk's bytes are: a whole file, or a byte range inside one (a member of
/// an OVA, read in place).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Source {
    pub path: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub range: Option<ByteRange>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ByteRange {
    pub offset: u64,
    pub len: u64,
}

impl Source {
    pub fn file(path: impl Into<PathBuf>) -> Self {
        Source {
            path: path.into(),
            range: None,
        }
    }
}

/// A byte range of a file as `Read + Seek`, reading with `pread` so that several can
/// share nothing but the file.
pub struct FileSlice {
    file: File,
    start: u64,
    len: u64,
    pos: u64,
}

impl FileSlice {
    pub fn new(file: File, start: u64, len: u64) -> Self {
        FileSlice {
            file,
            start,
            len,
            pos: 0,
        }
    }
}

impl Read for FileSlice {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.len.saturating_sub(self.pos);
        let n = (buf.len() as u64).min(left) as usize;
        if n == 0 {
            return Ok(0);
        }
        let got = self.file.read_at(&mut buf[..n], self.start + self.pos)?;
        self.pos += got as u64;
        Ok(got)
    }
}

impl Seek for FileSlice {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let new = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match new {
            Some(p) => {
                self.pos = p;
                Ok(p)
            }
            None => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the slice",
            )),
        }
    }
}

/// One extent as reported by `v2k info`.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ExtentInfo {
    pub access: Access,
    pub kind: ExtentKind,
    pub sectors: u64,
    pub offset: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
}

/// What `v2k info` and the inventory need to know about a disk.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct DiskInfo {
    pub source: Source,
    /// `createType` of the top layer (`monolithicSparse`, `streamOptimized`, `vmfs` …).
    pub create_type: String,
    /// Virtual size in bytes.
    pub capacity: u64,
    /// Bytes the image's grain tables (or flat extents) say hold data, over the whole
    /// chain; for chains the union is counted at 1 MiB granularity.
    pub allocated_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grain_size: Option<u64>,
    pub compressed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_cid: Option<u32>,
    pub extents: Vec<ExtentInfo>,
    /// Parent disks, nearest first (empty for a base disk).
    pub parent_chain: Vec<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adapter_type: Option<String>,
    /// Every `ddb.*` key, without the prefix.
    pub ddb: BTreeMap<String, String>,
    /// The VM was not shut down cleanly while this disk was open.
    pub unclean_shutdown: bool,
}

/// What one file of a chain contributes.
struct Layer {
    create_type: String,
    capacity: u64,
    cid: Option<u32>,
    parent_cid: Option<u32>,
    parent_hint: Option<String>,
    extents: Vec<ExtentInfo>,
    ddb: BTreeMap<String, String>,
    grain_size: Option<u64>,
    compressed: bool,
    unclean_shutdown: bool,
    map: ChunkMap,
    allocated: u64,
}

/// An opened, validated VMDK (possibly a snapshot chain) ready to be read.
pub struct VmdkImage {
    info: DiskInfo,
    map: ChunkMap,
}

/// Checks a disk and returns what is known about it without converting it.
pub fn inspect_path(path: &Path) -> Result<DiskInfo> {
    Ok(VmdkImage::open(&Source::file(path))?.info)
}

impl VmdkImage {
    /// Opens and validates `source`: headers, descriptors, extent paths, every
    /// grain-table pointer, and for a delta disk its whole parent chain.
    pub fn open(source: &Source) -> Result<Self> {
        let top = analyse_layer(source)?;
        let mut map = top.map.clone();
        let mut parent_chain = Vec::new();
        let mut allocated = top.allocated;
        if top
            .parent_cid
            .is_some_and(|c| c != descriptor::NO_PARENT_CID)
        {
            if source.range.is_some() {
                return Err(Error::unsupported(
                    &source.path,
                    "a delta (snapshot) disk inside an archive",
                ));
            }
            let mut seen = HashSet::new();
            seen.insert(canonical(&source.path)?);
            let mut child_path = source.path.clone();
            let mut child_parent_cid = top.parent_cid;
            let mut child_hint = top.parent_hint.clone();
            loop {
                if parent_chain.len() >= MAX_CHAIN_DEPTH {
                    return Err(Error::invalid(
                        &source.path,
                        format!("snapshot chain deeper than {MAX_CHAIN_DEPTH}"),
                    ));
                }
                let hint = child_hint.as_deref().ok_or_else(|| {
                    Error::invalid(
                        &child_path,
                        "delta disk (parentCID set) without parentFileNameHint",
                    )
                })?;
                let dir = child_path.parent().unwrap_or(Path::new("."));
                let parent = paths::resolve_inside(dir, hint).map_err(|m| {
                    Error::invalid(&child_path, format!("parentFileNameHint refused: {m}"))
                })?;
                if !seen.insert(canonical(&parent)?) {
                    return Err(Error::invalid(
                        &child_path,
                        format!("snapshot chain loops back to {}", parent.display()),
                    ));
                }
                let layer = analyse_layer(&Source::file(&parent))?;
                if layer.cid != child_parent_cid {
                    return Err(Error::invalid(
                        &child_path,
                        format!(
                            "parentCID {} does not match the CID {} of parent {} (the parent changed after the snapshot)",
                            fmt_cid(child_parent_cid),
                            fmt_cid(layer.cid),
                            parent.display()
                        ),
                    ));
                }
                if layer.capacity != top.capacity {
                    return Err(Error::invalid(
                        &parent,
                        format!(
                            "capacity {} differs from the delta's {}",
                            layer.capacity, top.capacity
                        ),
                    ));
                }
                map.union_with(&layer.map);
                parent_chain.push(parent.clone());
                if layer
                    .parent_cid
                    .is_none_or(|c| c == descriptor::NO_PARENT_CID)
                {
                    break;
                }
                child_path = parent;
                child_parent_cid = layer.parent_cid;
                child_hint = layer.parent_hint;
            }
            allocated = map.covered_bytes();
        }
        let info = DiskInfo {
            source: source.clone(),
            create_type: top.create_type,
            capacity: top.capacity,
            allocated_bytes: allocated,
            grain_size: top.grain_size,
            compressed: top.compressed,
            cid: top.cid,
            parent_cid: top.parent_cid,
            extents: top.extents,
            parent_chain,
            adapter_type: top.ddb.get("adapterType").cloned(),
            ddb: top.ddb,
            unclean_shutdown: top.unclean_shutdown,
        };
        Ok(VmdkImage { info, map })
    }

    pub fn info(&self) -> &DiskInfo {
        &self.info
    }

    pub fn capacity(&self) -> u64 {
        self.info.capacity
    }

    /// Whether any byte of `[start, start + len)` may hold data; `false` means the
    /// range reads as zeros in every layer and need not be read.
    pub(crate) fn maybe_allocated(&self, start: u64, len: u64) -> bool {
        self.map.any(start, len)
    }

    /// A new independent reader over the virtual disk (the library's readers are
    /// not `Sync`, so each worker takes its own).
    pub(crate) fn open_reader(&self) -> Result<Box<dyn ReadSeek>> {
        let src = &self.info.source;
        let what = "opening the disk for reading";
        if let Some(r) = src.range {
            let f =
                v2k_untrusted::file::open(&src.path).map_err(|e| Error::io(&src.path, what, e))?;
            let slice = BufReader::new(FileSlice::new(f, r.offset, r.len));
            let reader =
                vmdk::VmdkReader::open(slice).map_err(|e| Error::vmdk(&src.path, what, e))?;
            return Ok(Box::new(reader));
        }
        if self.info.parent_chain.is_empty() {
            let reader = vmdk::VmdkFileReader::open_path(&src.path)
                .map_err(|e| Error::vmdk(&src.path, what, e))?;
            Ok(Box::new(reader))
        } else {
            // Not vmdk-core's chain reader: it loses the parents under descriptor-based
            // sparse deltas (chain.rs says why).
            let reader =
                chain::ChainReader::open(&src.path, &self.info.parent_chain, self.info.capacity)?;
            Ok(Box::new(reader))
        }
    }
}

fn fmt_cid(c: Option<u32>) -> String {
    c.map_or_else(|| "(none)".to_owned(), |c| format!("{c:08x}"))
}

fn canonical(p: &Path) -> Result<PathBuf> {
    std::fs::canonicalize(p).map_err(|e| Error::io(p, "resolving path", e))
}

/// Opens the source's bytes (whole file or slice) and returns a reader and length.
fn open_bytes(source: &Source) -> Result<(Box<dyn ReadSeek>, u64)> {
    let path = &source.path;
    // Regular files only, and a FIFO never blocks the open.
    let f = v2k_untrusted::file::open(path).map_err(|e| Error::io(path, "opening", e))?;
    let meta = f
        .metadata()
        .map_err(|e| Error::io(path, "reading metadata of", e))?;
    match source.range {
        None => Ok((Box::new(BufReader::new(f)), meta.len())),
        Some(r) => {
            let end = r
                .offset
                .checked_add(r.len)
                .ok_or_else(|| Error::invalid(path, "byte range overflows"))?;
            if end > meta.len() {
                return Err(Error::invalid(
                    path,
                    format!(
                        "member range {}+{} lies past the end of the file",
                        r.offset, r.len
                    ),
                ));
            }
            Ok((
                Box::new(BufReader::new(FileSlice::new(f, r.offset, r.len))),
                r.len,
            ))
        }
    }
}

fn read_exact_at(r: &mut dyn ReadSeek, at: u64, buf: &mut [u8]) -> io::Result<()> {
    r.seek(SeekFrom::Start(at))?;
    r.read_exact(buf)
}

fn analyse_layer(source: &Source) -> Result<Layer> {
    let path = &source.path;
    let (mut r, len) = open_bytes(source)?;
    let mut first = vec![0u8; len.min(SECTOR) as usize];
    read_exact_at(&mut *r, 0, &mut first)
        .map_err(|e| Error::io(path, "reading the first sector", e))?;
    match header::sniff(&first) {
        Magic::Vmdk4 => analyse_sparse_file(path, &mut *r, len),
        Magic::Text => {
            if source.range.is_some() {
                return Err(Error::unsupported(path, "a text descriptor inside an archive"));
            }
            analyse_descriptor_file(path, len)
        }
        Magic::Cowd | Magic::SeSparse => {
            // Legacy ESX vmfsSparse and seSparse are read by the library; their
            // allocation is not walked here, so the whole disk is treated as data.
            let reader = vmdk::VmdkFileReader::open_path(path).map_err(|e| Error::vmdk(path, "opening", e))?;
            let capacity = reader.virtual_disk_size();
            Ok(Layer {
                create_type: reader.disk_type().to_owned(),
                capacity,
                cid: Some(reader.cid()),
                parent_cid: Some(reader.parent_cid()),
                parent_hint: None,
                extents: Vec::new(),
                ddb: BTreeMap::new(),
                grain_size: None,
                compressed: false,
                unclean_shutdown: false,
                map: ChunkMap::full(capacity),
                allocated: capacity,
            })
        }
        Magic::Qcow2 => Err(Error::unsupported(
            path,
            "this is a QCOW2 image, not a VMDK (v2k never guesses formats: a QCOW2 may name a backing file)",
        )),
        Magic::Unknown => Err(Error::invalid(path, "not a VMDK: no KDMV/COWD/seSparse magic and no text descriptor")),
    }
}

/// Header (and footer) of a hosted sparse extent, checked. Returns the header and
/// the grain directory's sector.
fn checked_sparse_header(
    path: &Path,
    r: &mut dyn ReadSeek,
    len: u64,
) -> Result<(SparseHeader, u64)> {
    let mut h = [0u8; SECTOR as usize];
    read_exact_at(r, 0, &mut h).map_err(|e| Error::io(path, "reading the sparse header", e))?;
    let hdr = SparseHeader::parse(&h, len).map_err(|e| Error::invalid(path, e.to_string()))?;
    let mut gd = hdr.gd_offset;
    if gd == header::GD_AT_END {
        // streamOptimized: the real header is the footer, 1024 bytes before the end,
        // followed by the end-of-stream marker.
        if len < 3 * SECTOR {
            return Err(Error::invalid(
                path,
                "streamOptimized file too short for its footer",
            ));
        }
        let mut tail = [0u8; 2 * SECTOR as usize];
        read_exact_at(r, len - 2 * SECTOR, &mut tail)
            .map_err(|e| Error::io(path, "reading the footer", e))?;
        let footer = SparseHeader::parse(&tail[..512], len)
            .map_err(|e| Error::invalid(path, format!("footer: {e}")))?;
        if footer.gd_offset == header::GD_AT_END {
            return Err(Error::invalid(
                path,
                "footer does not give the grain directory offset",
            ));
        }
        if footer.capacity_sectors != hdr.capacity_sectors
            || footer.grain_sectors != hdr.grain_sectors
        {
            return Err(Error::invalid(
                path,
                "footer contradicts the header (capacity or grain size)",
            ));
        }
        if tail[512..528].iter().any(|&b| b != 0) {
            return Err(Error::invalid(
                path,
                "missing end-of-stream marker after the footer",
            ));
        }
        gd = footer.gd_offset;
    }
    Ok((hdr, gd))
}

fn analyse_sparse_file(path: &Path, r: &mut dyn ReadSeek, len: u64) -> Result<Layer> {
    let (hdr, gd) = checked_sparse_header(path, r, len)?;
    let desc = if hdr.descriptor_offset != 0 && hdr.descriptor_sectors != 0 {
        let mut raw = vec![0u8; (hdr.descriptor_sectors * SECTOR) as usize];
        read_exact_at(r, hdr.descriptor_offset * SECTOR, &mut raw)
            .map_err(|e| Error::io(path, "reading the embedded descriptor", e))?;
        Some(descriptor::parse_embedded(&raw).map_err(|e| Error::invalid(path, e.to_string()))?)
    } else {
        None
    };
    let capacity = hdr.capacity_bytes();
    if let Some(d) = &desc {
        if let Some(c) = d.capacity_bytes().filter(|_| !d.extents.is_empty()) {
            if c != capacity {
                return Err(Error::invalid(
                    path,
                    format!("descriptor extents total {c} bytes but the header says {capacity}"),
                ));
            }
        }
    }
    let mut map = ChunkMap::empty(capacity);
    let allocated = alloc::walk_sparse(r, &hdr, gd, len, 0, &mut map)
        .map_err(|m| Error::invalid(path, m.to_string()))?;
    let desc = desc.unwrap_or_default();
    let create_type = if desc.create_type.is_empty() {
        if hdr.compressed {
            "streamOptimized"
        } else {
            "monolithicSparse"
        }
        .to_owned()
    } else {
        desc.create_type
    };
    Ok(Layer {
        create_type,
        capacity,
        cid: desc.cid,
        parent_cid: desc.parent_cid,
        parent_hint: desc.parent_file_name_hint,
        extents: Vec::new(),
        ddb: desc.ddb,
        grain_size: Some(hdr.grain_bytes()),
        compressed: hdr.compressed,
        unclean_shutdown: hdr.unclean_shutdown,
        map,
        allocated,
    })
}

fn analyse_descriptor_file(path: &Path, len: u64) -> Result<Layer> {
    if len > descriptor::MAX_DESCRIPTOR_BYTES as u64 {
        return Err(Error::invalid(
            path,
            format!("descriptor is {len} bytes, more than the 1 MiB limit"),
        ));
    }
    // Bounded on the read too: the file may have grown since it was measured.
    let raw = v2k_untrusted::file::read(
        path,
        descriptor::MAX_DESCRIPTOR_BYTES as u64,
        "VMDK descriptor",
    )
    .map_err(|e| Error::io(path, "reading the descriptor", e))?;
    let desc = descriptor::parse(&raw).map_err(|e| Error::invalid(path, e.to_string()))?;
    if desc.extents.is_empty() {
        return Err(Error::invalid(path, "descriptor lists no extents"));
    }
    let capacity = desc
        .capacity_bytes()
        .ok_or_else(|| Error::invalid(path, "extent sizes overflow"))?;
    if capacity > header::MAX_CAPACITY_SECTORS * SECTOR {
        return Err(Error::invalid(path, "extents total more than 64 TiB"));
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut map = ChunkMap::empty(capacity);
    let mut allocated = 0u64;
    let mut base = 0u64;
    let mut extents = Vec::with_capacity(desc.extents.len());
    let mut grain_size = None;
    let mut unclean = false;
    for (i, e) in desc.extents.iter().enumerate() {
        let n = i + 1;
        let bytes = e.sectors * SECTOR; // bounded by the capacity check above
        if e.access == Access::Noaccess {
            return Err(Error::unsupported(
                path,
                format!("extent {n} is NOACCESS: its content is unavailable, and v2k does not substitute zeros"),
            ));
        }
        if matches!(e.kind, ExtentKind::VmfsRdm | ExtentKind::VmfsRaw) {
            return Err(Error::unsupported(
                path,
                format!("extent {n} is a raw device mapping: copy the LUN itself, v2k converts only disk files"),
            ));
        }
        let file = match (&e.file, e.kind) {
            (_, ExtentKind::Zero) => None,
            (Some(name), _) => Some(
                paths::resolve_inside(dir, name)
                    .map_err(|m| Error::invalid(path, format!("extent {n} refused: {m}")))?,
            ),
            (None, _) => return Err(Error::invalid(path, format!("extent {n} has no file"))),
        };
        match (e.kind, &file) {
            (ExtentKind::Zero, _) => {}
            (ExtentKind::Flat | ExtentKind::Vmfs, Some(f)) => {
                let flen = std::fs::metadata(f)
                    .map_err(|err| Error::io(f, "reading metadata of", err))?
                    .len();
                let need = e
                    .offset
                    .checked_add(e.sectors)
                    .and_then(|s| s.checked_mul(SECTOR))
                    .ok_or_else(|| Error::invalid(path, format!("extent {n}: offset overflows")))?;
                if flen < need {
                    return Err(Error::invalid(
                        path,
                        format!("extent {n}: {} is {flen} bytes, shorter than the {need} the extent needs", f.display()),
                    ));
                }
                // Only the extent's data is marked: holes read as zeros and are
                // neither read nor counted (a thin -flat.vmdk is mostly holes).
                let file = File::open(f).map_err(|err| Error::io(f, "opening", err))?;
                allocated += alloc::walk_flat(&file, e.offset * SECTOR, bytes, base, &mut map)
                    .map_err(|m| Error::invalid(f, m.to_string()))?;
            }
            (ExtentKind::Sparse | ExtentKind::VmfsSparse, Some(f)) => {
                let (mut r, flen) = open_bytes(&Source::file(f))?;
                let mut first = [0u8; 4];
                read_exact_at(&mut *r, 0, &mut first)
                    .map_err(|err| Error::io(f, "reading the first sector", err))?;
                if header::sniff(&first) == Magic::Vmdk4 {
                    let (hdr, gd) = checked_sparse_header(f, &mut *r, flen)?;
                    if hdr.capacity_sectors != e.sectors {
                        return Err(Error::invalid(
                            f,
                            format!(
                                "sparse extent holds {} sectors but descriptor line {n} says {}",
                                hdr.capacity_sectors, e.sectors
                            ),
                        ));
                    }
                    grain_size.get_or_insert(hdr.grain_bytes());
                    unclean |= hdr.unclean_shutdown;
                    allocated += alloc::walk_sparse(&mut *r, &hdr, gd, flen, base, &mut map)
                        .map_err(|m| Error::invalid(f, m.to_string()))?;
                } else {
                    map.mark(base, bytes);
                    allocated += bytes;
                }
            }
            (ExtentKind::SeSparse, Some(_)) => {
                map.mark(base, bytes);
                allocated += bytes;
            }
            _ => return Err(Error::invalid(path, format!("extent {n} has no file"))),
        }
        extents.push(ExtentInfo {
            access: e.access,
            kind: e.kind,
            sectors: e.sectors,
            offset: e.offset,
            file,
        });
        base += bytes;
    }
    Ok(Layer {
        create_type: desc.create_type,
        capacity,
        cid: desc.cid,
        parent_cid: desc.parent_cid,
        parent_hint: desc.parent_file_name_hint,
        extents,
        ddb: desc.ddb,
        grain_size,
        compressed: false,
        unclean_shutdown: unclean,
        map,
        allocated,
    })
}
