//! An independent QCOW2 reader, used to verify an output by reading it back from
//! the file rather than trusting the writer's memory. It shares only the constants
//! in `layout` with the writer. It reads QCOW2 v2 and v3 images without backing
//! files, encryption or incompatible features — what v2k writes, and what a
//! verification should refuse to vouch for otherwise.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use flate2::{Decompress, FlushDecompress, Status};

use super::layout::{self, Header, OFFSET_MASK, OFLAG_COMPRESSED, OFLAG_ZERO};
use super::writer::MAX_L1_ENTRIES;
use crate::error::{Error, Result};

pub struct Qcow2Reader {
    file: File,
    path: PathBuf,
    header: Header,
    cs: u64,
    l1: Vec<u64>,
    file_len: u64,
}

/// One cached L2 table per worker: sequential chunks mostly hit the same table.
#[derive(Default)]
pub struct L2Cache {
    index: Option<u64>,
    table: Vec<u64>,
}

impl Qcow2Reader {
    pub fn open(path: &Path) -> Result<Self> {
        let mut file = File::open(path).map_err(|e| Error::io(path, "opening", e))?;
        let file_len = file
            .metadata()
            .map_err(|e| Error::io(path, "reading metadata of", e))?
            .len();
        let mut h = vec![0u8; layout::HEADER_LEN as usize];
        let n = file
            .read(&mut h)
            .map_err(|e| Error::io(path, "reading the header", e))?;
        let header = Header::decode(&h[..n]).map_err(|m| Error::invalid(path, m.to_string()))?;
        let bad = |m: String| Error::invalid(path, m);
        if !(2..=3).contains(&header.version) {
            return Err(bad(format!(
                "QCOW2 version {} is not 2 or 3",
                header.version
            )));
        }
        if !(layout::MIN_CLUSTER_BITS..=layout::MAX_CLUSTER_BITS).contains(&header.cluster_bits) {
            return Err(bad(format!(
                "cluster_bits {} is outside 9..=21",
                header.cluster_bits
            )));
        }
        if header.backing_file_offset != 0 {
            return Err(bad("has a backing file".into()));
        }
        if header.crypt_method != 0 {
            return Err(bad("is encrypted".into()));
        }
        if header.incompatible_features != 0 {
            return Err(bad(format!(
                "has incompatible features {:#x}",
                header.incompatible_features
            )));
        }
        let cs = 1u64 << header.cluster_bits;
        let need = layout::l1_entries(header.size, header.cluster_bits);
        let l1n = u64::from(header.l1_size);
        if l1n < need || l1n > MAX_L1_ENTRIES {
            return Err(bad(format!(
                "L1 size {l1n} does not fit a {}-byte disk",
                header.size
            )));
        }
        let l1_end = header
            .l1_table_offset
            .checked_add(l1n * 8)
            .filter(|&e| e <= file_len)
            .ok_or_else(|| bad("L1 table lies past the end of the file".into()))?;
        let _ = l1_end;
        let mut raw = vec![0u8; (l1n * 8) as usize];
        file.read_exact_at(&mut raw, header.l1_table_offset)
            .map_err(|e| Error::io(path, "reading the L1 table", e))?;
        let l1 = raw
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes(c.try_into().unwrap_or([0; 8])))
            .collect();
        Ok(Qcow2Reader {
            file,
            path: path.to_path_buf(),
            header,
            cs,
            l1,
            file_len,
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    pub fn size(&self) -> u64 {
        self.header.size
    }

    pub fn cluster_size(&self) -> u64 {
        self.cs
    }

    fn l2_entry(&self, g: u64, cache: &mut L2Cache) -> Result<u64> {
        let n = layout::l2_entries(self.header.cluster_bits);
        let i = g / n;
        if cache.index != Some(i) {
            let l1e = self.l1[i as usize] & OFFSET_MASK;
            cache.table.clear();
            if l1e != 0 {
                if l1e + self.cs > self.file_len {
                    return Err(Error::invalid(
                        &self.path,
                        format!("L1 entry {i} points past the end of the file"),
                    ));
                }
                let mut raw = vec![0u8; self.cs as usize];
                self.file
                    .read_exact_at(&mut raw, l1e)
                    .map_err(|e| Error::io(&self.path, "reading an L2 table", e))?;
                cache.table.extend(
                    raw.chunks_exact(8)
                        .map(|c| u64::from_be_bytes(c.try_into().unwrap_or([0; 8]))),
                );
            }
            cache.index = Some(i);
        }
        Ok(cache.table.get((g % n) as usize).copied().unwrap_or(0))
    }

    /// Whether every cluster of `[offset, offset + len)` reads as zeros without
    /// holding data (unallocated or zero-flagged), so it need not be read.
    pub(crate) fn is_unallocated(
        &self,
        offset: u64,
        len: u64,
        cache: &mut L2Cache,
    ) -> Result<bool> {
        let first = offset / self.cs;
        let last = (offset + len).div_ceil(self.cs);
        let per_l2 = layout::l2_entries(self.header.cluster_bits);
        let mut g = first;
        while g < last {
            if self.l1[(g / per_l2) as usize] & OFFSET_MASK == 0 {
                g = (g / per_l2 + 1) * per_l2; // a whole L2 region is unallocated
                continue;
            }
            let e = self.l2_entry(g, cache)?;
            if e & OFLAG_COMPRESSED != 0 || (e & OFFSET_MASK != 0 && e & OFLAG_ZERO == 0) {
                return Ok(false);
            }
            g += 1;
        }
        Ok(true)
    }

    /// Fills `buf` with the virtual disk's bytes at `offset` (cluster-aligned).
    /// Clusters that lie back to back in the file are read with one `pread`.
    pub fn read_at(&self, offset: u64, buf: &mut [u8], cache: &mut L2Cache) -> Result<()> {
        let cs = self.cs as usize;
        debug_assert_eq!(offset % self.cs, 0);
        let mut cbuf = Vec::new();
        // A pending run of plain data clusters: (first index in buf, host offset, bytes).
        let mut run: Option<(usize, u64, usize)> = None;
        let clusters = buf.len().div_ceil(cs);
        for k in 0..clusters {
            let g = offset / self.cs + k as u64;
            let e = self.l2_entry(g, cache)?;
            let lo = k * cs;
            let hi = (lo + cs).min(buf.len());
            let host = e & OFFSET_MASK;
            let plain = e & OFLAG_COMPRESSED == 0 && host != 0 && e & OFLAG_ZERO == 0;
            if plain {
                if host + (hi - lo) as u64 > self.file_len {
                    return Err(Error::invalid(
                        &self.path,
                        format!("cluster {g} points past the end of the file"),
                    ));
                }
                match &mut run {
                    Some((start, h, len)) if *h + *len as u64 == host && *start + *len == lo => {
                        *len += hi - lo;
                    }
                    _ => {
                        if let Some(r) = run.take() {
                            self.read_run(buf, r)?;
                        }
                        run = Some((lo, host, hi - lo));
                    }
                }
                continue;
            }
            if let Some(r) = run.take() {
                self.read_run(buf, r)?;
            }
            let out = &mut buf[lo..hi];
            if e & OFLAG_COMPRESSED != 0 {
                let shift = layout::compressed_shift(self.header.cluster_bits);
                let host = e & ((1u64 << shift) - 1);
                let sectors = (e & !OFLAG_COMPRESSED & !layout::OFLAG_COPIED) >> shift;
                let csize = (sectors + 1) * 512 - (host & 511);
                let avail = self.file_len.saturating_sub(host).min(csize) as usize;
                cbuf.resize(avail, 0);
                self.file
                    .read_exact_at(&mut cbuf, host)
                    .map_err(|err| Error::io(&self.path, "reading a compressed cluster", err))?;
                let mut full = vec![0u8; cs];
                let mut d = Decompress::new_with_window_bits(false, 12);
                let st = d.decompress(&cbuf, &mut full, FlushDecompress::Finish);
                let ok = matches!(st, Ok(Status::StreamEnd | Status::Ok | Status::BufError))
                    && d.total_out() == cs as u64;
                if !ok {
                    return Err(Error::invalid(
                        &self.path,
                        format!("compressed cluster {g} does not inflate to one cluster"),
                    ));
                }
                out.copy_from_slice(&full[..out.len()]);
            } else {
                out.fill(0);
            }
        }
        if let Some(r) = run.take() {
            self.read_run(buf, r)?;
        }
        Ok(())
    }

    fn read_run(&self, buf: &mut [u8], (start, host, len): (usize, u64, usize)) -> Result<()> {
        self.file
            .read_exact_at(&mut buf[start..start + len], host)
            .map_err(|err| Error::io(&self.path, "reading a data cluster", err))
    }
}
