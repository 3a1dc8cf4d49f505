//! Which parts of a virtual disk hold data, found by walking the grain directory and
//! grain tables of every sparse extent ourselves, and checking every pointer on the
//! way. The result is a bitmap at [`GRANULE`] granularity, so its size is bounded by
//! the disk size / 1 MiB bits (256 KiB for a 2 TiB disk) whatever the fragmentation;
//! the reader library's own iterator returns one entry per grain, which grows to
//! hundreds of MiB on large disks and is exact only for single-file images.
//!
//! A flat extent has no tables: its holes are asked of the file system with
//! `SEEK_DATA` / `SEEK_HOLE` ([`walk_flat`]), so a thin `-flat.vmdk` costs what it
//! holds, not its size.
//!
//! ```text
//!  grain directory (GD)        grain tables (GT)          grains
//!  [gt sector, 0, ...] ──────▶ [gte, gte, ... x512] ─────▶ 64 KiB of data, or a
//!                                                          marker + deflate stream
//!  gte 0 = unallocated, 1 = zero grain (only with flag bit 2), else a sector offset
//! ```

use std::io::{Read, Seek, SeekFrom};

use super::header::{SparseHeader, SECTOR};

/// Granularity of the allocation bitmap: 1 MiB, the converter's smallest work unit.
pub(crate) const GRANULE: u64 = 1 << 20;
/// Header flag: a GTE of 1 means "grain reads as zeros" (VMDK 1.1 zeroed-grain GTEs).
const FLAG_ZEROED_GRAIN_GTE: u32 = 1 << 2;
/// Size of the marker before each compressed grain: LBA (u64) + compressed size (u32).
const MARKER_LEN: u64 = 12;
/// GD entries read per I/O while walking.
const GD_BATCH: usize = 16 * 1024;

/// Allocation bitmap of a virtual disk, one bit per [`GRANULE`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkMap {
    size: u64,
    bits: Vec<u64>,
}

impl ChunkMap {
    pub fn empty(size: u64) -> Self {
        let granules = size.div_ceil(GRANULE);
        ChunkMap {
            size,
            bits: vec![0; granules.div_ceil(64) as usize],
        }
    }

    pub fn full(size: u64) -> Self {
        let mut m = Self::empty(size);
        m.mark(0, size);
        m
    }

    /// Marks `[start, start + len)` (clamped to the disk) as holding data.
    pub(crate) fn mark(&mut self, start: u64, len: u64) {
        let end = start.saturating_add(len).min(self.size);
        if start >= end {
            return;
        }
        let first = start / GRANULE;
        let last = (end - 1) / GRANULE;
        for g in first..=last {
            self.bits[(g / 64) as usize] |= 1 << (g % 64);
        }
    }

    /// Whether any granule overlapping `[start, start + len)` holds data.
    pub fn any(&self, start: u64, len: u64) -> bool {
        let end = start.saturating_add(len).min(self.size);
        if start >= end {
            return false;
        }
        (start / GRANULE..=(end - 1) / GRANULE)
            .any(|g| self.bits[(g / 64) as usize] & (1 << (g % 64)) != 0)
    }

    pub(crate) fn union_with(&mut self, other: &ChunkMap) {
        for (a, b) in self.bits.iter_mut().zip(&other.bits) {
            *a |= b;
        }
    }

    /// Bytes covered by marked granules (an upper bound of the allocated bytes).
    pub(crate) fn covered_bytes(&self) -> u64 {
        let mut total = 0;
        for g in 0..self.size.div_ceil(GRANULE) {
            if self.bits[(g / 64) as usize] & (1 << (g % 64)) != 0 {
                total += GRANULE.min(self.size - g * GRANULE);
            }
        }
        total
    }
}

/// Why [`walk_sparse`] or [`walk_flat`] could not account for an extent. The I/O
/// error is a field written into the one-line message (callers embed it in their
/// own), not a `#[source]`, so that the message alone says everything.
#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    /// Reading the extent, or asking the file system where its data is, failed.
    #[error("{what}: {error}")]
    Io { what: String, error: std::io::Error },
    /// A table, marker or pointer of the extent is inconsistent with the file.
    #[error("{problem}")]
    Layout { problem: String },
}

impl From<String> for WalkError {
    fn from(problem: String) -> Self {
        WalkError::Layout { problem }
    }
}

impl From<&str> for WalkError {
    fn from(problem: &str) -> Self {
        problem.to_string().into()
    }
}

fn read_at<R: Read + Seek + ?Sized>(r: &mut R, at: u64, buf: &mut [u8]) -> Result<(), WalkError> {
    r.seek(SeekFrom::Start(at))
        .and_then(|_| r.read_exact(buf))
        .map_err(|error| WalkError::Io {
            what: format!("reading {} bytes at offset {at}", buf.len()),
            error,
        })
}

/// Walks one sparse extent, marking its allocated grains in `map` shifted by `base`
/// bytes, and returns the bytes its allocated grains cover. `gd_offset` is the
/// grain directory's sector (the footer's, for streamOptimized). Every table and
/// grain pointer is checked against `file_len` and against the metadata regions.
pub fn walk_sparse<R: Read + Seek + ?Sized>(
    r: &mut R,
    hdr: &SparseHeader,
    gd_offset: u64,
    file_len: u64,
    base: u64,
    map: &mut ChunkMap,
) -> Result<u64, WalkError> {
    let grain = hdr.grain_bytes();
    let per_gt = u64::from(hdr.gtes_per_gt);
    let grains = hdr.capacity_sectors.div_ceil(hdr.grain_sectors);
    let gd_entries = grains.div_ceil(per_gt);
    let gd_start = gd_offset
        .checked_mul(SECTOR)
        .ok_or("grain directory offset overflows")?;
    let gd_bytes = gd_entries * 4;
    if gd_start == 0 || gd_start.checked_add(gd_bytes).is_none_or(|e| e > file_len) {
        return Err(WalkError::from(format!(
            "grain directory at sector {gd_offset} lies outside the file"
        )));
    }
    let gt_bytes = per_gt * 4;
    let zero_gte_allowed = hdr.flags & FLAG_ZEROED_GRAIN_GTE != 0;
    let mut gt_sectors_seen: Vec<u32> = Vec::new();
    let mut allocated = 0u64;
    let mut gt = vec![0u8; gt_bytes as usize];
    let mut gd_buf = vec![0u8; GD_BATCH * 4];
    let mut gd_index = 0u64;
    while gd_index < gd_entries {
        let n = (gd_entries - gd_index).min(GD_BATCH as u64) as usize;
        read_at(r, gd_start + gd_index * 4, &mut gd_buf[..n * 4])?;
        for i in 0..n {
            let gdi = gd_index + i as u64;
            let b = &gd_buf[i * 4..i * 4 + 4];
            let gt_sector = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            if gt_sector == 0 {
                continue;
            }
            let gt_start = u64::from(gt_sector) * SECTOR;
            if gt_start + gt_bytes > file_len {
                return Err(WalkError::from(format!("grain directory entry {gdi}: grain table at sector {gt_sector} lies past the end of the file")));
            }
            if gt_start < gd_start + gd_bytes && gd_start < gt_start + gt_bytes {
                return Err(WalkError::from(format!("grain directory entry {gdi}: grain table at sector {gt_sector} overlaps the grain directory")));
            }
            gt_sectors_seen.push(gt_sector);
            read_at(r, gt_start, &mut gt)?;
            for j in 0..per_gt {
                let grain_index = gdi * per_gt + j;
                if grain_index >= grains {
                    break;
                }
                let o = (j * 4) as usize;
                let gte = u32::from_le_bytes([gt[o], gt[o + 1], gt[o + 2], gt[o + 3]]);
                match gte {
                    0 => continue,
                    1 if zero_gte_allowed => continue,
                    1 => return Err(WalkError::from(format!("grain {grain_index}: table entry 1 without the zeroed-grain flag points into the header"))),
                    _ => {}
                }
                let at = u64::from(gte) * SECTOR;
                let virt = grain_index * grain;
                if hdr.compressed {
                    if at + MARKER_LEN > file_len {
                        return Err(WalkError::from(format!("grain {grain_index}: marker at sector {gte} lies past the end of the file")));
                    }
                    let mut m = [0u8; MARKER_LEN as usize];
                    read_at(r, at, &mut m)?;
                    let lba = u64::from_le_bytes(m[0..8].try_into().unwrap_or([0; 8]));
                    let size = u64::from(u32::from_le_bytes(m[8..12].try_into().unwrap_or([0; 4])));
                    if lba != virt / SECTOR {
                        return Err(WalkError::from(format!(
                            "grain {grain_index}: marker says LBA {lba}, its table slot says {}",
                            virt / SECTOR
                        )));
                    }
                    if size == 0 || size > 2 * grain {
                        return Err(WalkError::from(format!(
                            "grain {grain_index}: compressed length {size} is outside 1..={}",
                            2 * grain
                        )));
                    }
                    if at + MARKER_LEN + size > file_len {
                        return Err(WalkError::from(format!(
                            "grain {grain_index}: compressed data runs past the end of the file"
                        )));
                    }
                } else if at + grain > file_len {
                    // The last grain of a disk whose size is not grain-aligned may be
                    // stored short by some writers; only its virtual part must exist.
                    let need = grain.min(hdr.capacity_bytes() - virt);
                    if at + need > file_len {
                        return Err(WalkError::from(format!("grain {grain_index}: data at sector {gte} lies past the end of the file")));
                    }
                }
                let len = grain.min(hdr.capacity_bytes() - virt);
                map.mark(base + virt, len);
                allocated += len;
            }
        }
        gd_index += n as u64;
    }
    gt_sectors_seen.sort_unstable();
    if let Some(w) = gt_sectors_seen
        .windows(2)
        .find(|w| u64::from(w[1]) * SECTOR < u64::from(w[0]) * SECTOR + gt_bytes)
    {
        return Err(WalkError::from(format!(
            "grain tables at sectors {} and {} overlap (aliased tables)",
            w[0], w[1]
        )));
    }
    Ok(allocated)
}

/// Marks the data of a flat extent, `len` bytes from `start` in `file`, in `map`
/// shifted by `base`, and returns how many of those bytes are not holes. Holes are
/// found with `SEEK_DATA` / `SEEK_HOLE`; a file system that cannot say reports the
/// whole file as data (Linux's generic answer), and one that refuses the call
/// counts the whole extent, so a hole is never invented.
pub(crate) fn walk_flat(
    file: &std::fs::File,
    start: u64,
    len: u64,
    base: u64,
    map: &mut ChunkMap,
) -> Result<u64, WalkError> {
    use rustix::fs::{seek, SeekFrom};
    use rustix::io::Errno;
    let end = start.checked_add(len).ok_or("flat extent end overflows")?;
    let mut pos = start;
    let mut allocated = 0u64;
    while pos < end {
        let data = match seek(file, SeekFrom::Data(pos)) {
            Ok(d) => d,
            // No data from `pos` to the end of the file.
            Err(Errno::NXIO) => break,
            Err(Errno::INVAL | Errno::OPNOTSUPP) => {
                map.mark(base + (pos - start), end - pos);
                return Ok(allocated + (end - pos));
            }
            Err(e) => {
                return Err(WalkError::Io {
                    what: format!("finding data at offset {pos}"),
                    error: e.into(),
                })
            }
        };
        if data >= end {
            break;
        }
        // The end of the file is a hole, so SEEK_HOLE always answers past `data`.
        let hole = seek(file, SeekFrom::Hole(data))
            .map_err(|e| WalkError::Io {
                what: format!("finding the hole after offset {data}"),
                error: e.into(),
            })?
            .clamp(data + 1, end);
        map.mark(base + (data - start), hole - data);
        allocated += hole - data;
        pos = hole;
    }
    Ok(allocated)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_map_marks_and_queries_granules() {
        let mut m = ChunkMap::empty(5 * GRANULE + 100);
        assert!(!m.any(0, 6 * GRANULE));
        m.mark(GRANULE + 5, 10);
        assert!(m.any(GRANULE, GRANULE));
        assert!(!m.any(0, GRANULE));
        assert!(!m.any(2 * GRANULE, GRANULE));
        m.mark(5 * GRANULE, 1000);
        assert_eq!(m.covered_bytes(), GRANULE + 100);
        assert_eq!(ChunkMap::full(3).covered_bytes(), 3);
    }

    #[test]
    fn a_flat_extents_holes_are_not_marked() {
        use std::io::Write;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x-flat.vmdk");
        let mut f = std::fs::File::create(&p).unwrap();
        f.set_len(64 * GRANULE).unwrap();
        // Data at 3 MiB and at 40 MiB + 5 (crossing into the next granule).
        f.seek(SeekFrom::Start(3 * GRANULE)).unwrap();
        f.write_all(&[7u8; 4096]).unwrap();
        f.seek(SeekFrom::Start(40 * GRANULE + 5)).unwrap();
        f.write_all(&[9u8; 4096]).unwrap();
        f.sync_all().unwrap();
        // The extent starts 1 MiB into the file and is placed 10 MiB into the disk.
        let mut m = ChunkMap::empty(80 * GRANULE);
        let got = walk_flat(&f, GRANULE, 63 * GRANULE, 10 * GRANULE, &mut m).unwrap();
        // File systems report data in whole blocks: at least what was written, far
        // less than the extent.
        assert!((8192..=4 * GRANULE).contains(&got), "{got}");
        assert!(
            m.any(12 * GRANULE, GRANULE),
            "3 MiB in the file = 12 MiB on the disk"
        );
        assert!(m.any(49 * GRANULE, 2 * GRANULE));
        assert!(!m.any(0, 12 * GRANULE));
        assert!(!m.any(13 * GRANULE, 36 * GRANULE));
        assert!(!m.any(51 * GRANULE, 29 * GRANULE));
    }
}
