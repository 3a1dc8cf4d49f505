//! A write-once QCOW2 v3 writer: clusters arrive in increasing guest order and are
//! appended; nothing is ever rewritten except the reserved refcount-block slots and
//! the header, which is written last.
//!
//! Allocation is sequential. The host file is divided into refcount windows of
//! `R = cluster_size / 2` clusters (what one block of 16-bit refcounts covers); the
//! first cluster of each window (cluster 1 for window 0, after the header) is kept
//! for that window's refcount block, which is written when allocation leaves the
//! window. So memory holds one refcount block, one L2 table and the L1 table —
//! about 1 MiB per 64 TiB of virtual disk — whatever the disk size.
//!
//! Compressed clusters are packed at byte granularity like QEMU does; a host
//! cluster shared by several compressed clusters has a refcount equal to the number
//! of them, and their L2 entries carry no COPIED flag.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::layout::{self, Header, OFLAG_COMPRESSED, OFLAG_COPIED};
use crate::error::{Error, Result};

/// Most L1 entries accepted: QEMU refuses L1 tables over 32 MiB.
pub(crate) const MAX_L1_ENTRIES: u64 = 32 * 1024 * 1024 / 8;

/// What the writer put into the file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct WriteStats {
    pub data_clusters: u64,
    pub compressed_clusters: u64,
    pub l2_tables: u64,
    pub file_size: u64,
}

pub struct Qcow2Writer<'f> {
    file: &'f File,
    path: PathBuf,
    bits: u32,
    cs: u64,
    size: u64,
    guest_clusters: u64,
    /// Host clusters one refcount block covers.
    rb: u64,
    l2n: u64,
    l1: Vec<u64>,
    l2: Vec<u64>,
    l2_index: Option<u64>,
    next: u64,
    win: u64,
    rc: Vec<u16>,
    reftable: Vec<u64>,
    /// Where the next compressed blob may start (0: no partly used cluster).
    cpos: u64,
    last_guest: Option<u64>,
    stats: WriteStats,
}

impl<'f> Qcow2Writer<'f> {
    /// Starts an image of `size` virtual bytes with clusters of `1 << cluster_bits`.
    pub fn new(file: &'f File, path: &Path, size: u64, cluster_bits: u32) -> Result<Self> {
        if !(layout::MIN_CLUSTER_BITS..=layout::MAX_CLUSTER_BITS).contains(&cluster_bits) {
            return Err(Error::Usage(format!(
                "cluster size 2^{cluster_bits} is outside 512 B..2 MiB"
            )));
        }
        let cs = 1u64 << cluster_bits;
        let l1n = layout::l1_entries(size, cluster_bits);
        if l1n > MAX_L1_ENTRIES {
            return Err(Error::Usage(format!(
                "a {size}-byte disk needs an L1 table of {l1n} entries with {cs}-byte clusters; use larger clusters"
            )));
        }
        let rb = cs / 2;
        let mut rc = vec![0u16; rb as usize];
        rc[0] = 1; // header
        rc[1] = 1; // refcount block of window 0
        Ok(Qcow2Writer {
            file,
            path: path.to_path_buf(),
            bits: cluster_bits,
            cs,
            size,
            guest_clusters: size.div_ceil(cs),
            rb,
            l2n: layout::l2_entries(cluster_bits),
            l1: vec![0; l1n as usize],
            l2: vec![0; layout::l2_entries(cluster_bits) as usize],
            l2_index: None,
            next: 2,
            win: 0,
            rc,
            reftable: vec![cs],
            cpos: 0,
            last_guest: None,
            stats: WriteStats::default(),
        })
    }

    pub fn cluster_size(&self) -> u64 {
        self.cs
    }

    fn write_at(&self, at: u64, bytes: &[u8], what: &str) -> Result<()> {
        self.file
            .write_all_at(bytes, at)
            .map_err(|e| Error::io(&self.path, what, e))
    }

    fn reserved(&self, w: u64) -> u64 {
        if w == 0 {
            1
        } else {
            w * self.rb
        }
    }

    fn flush_window(&mut self) -> Result<()> {
        let mut block = Vec::with_capacity(self.cs as usize);
        for r in &self.rc {
            block.extend_from_slice(&r.to_be_bytes());
        }
        let at = self.reftable[self.win as usize];
        self.write_at(at, &block, "writing a refcount block")
    }

    fn open_window(&mut self, w: u64) -> Result<()> {
        self.flush_window()?;
        self.win = w;
        self.rc.fill(0);
        self.rc[0] = 1; // the window's own refcount block
        debug_assert_eq!(self.reftable.len() as u64, w);
        self.reftable.push(self.reserved(w) * self.cs);
        // A partly filled compressed cluster belongs to the closed window.
        self.cpos = 0;
        Ok(())
    }

    /// Allocates the next free host cluster (refcount 1) and returns its index.
    fn alloc_one(&mut self) -> Result<u64> {
        loop {
            let c = self.next;
            let w = c / self.rb;
            if w != self.win {
                self.open_window(w)?;
            }
            self.next += 1;
            if c == self.reserved(w) {
                continue;
            }
            self.rc[(c % self.rb) as usize] = 1;
            return Ok(c);
        }
    }

    /// Allocates `n` contiguous clusters inside one window.
    fn alloc_contiguous(&mut self, n: u64) -> Result<u64> {
        let off = self.next % self.rb;
        let end = if off == 0 { 1 + n } else { off + n };
        if end > self.rb {
            // Leave the rest of this window unused (refcount 0, a hole in the file).
            self.next = (self.next / self.rb + 1) * self.rb;
        }
        let first = self.alloc_one()?;
        for i in 1..n {
            let c = self.alloc_one()?;
            debug_assert_eq!(c, first + i);
        }
        Ok(first)
    }

    fn check_order(&mut self, g: u64) -> Result<()> {
        if g >= self.guest_clusters || self.last_guest.is_some_and(|l| g <= l) {
            return Err(Error::invalid(
                &self.path,
                format!("internal: guest cluster {g} written out of order"),
            ));
        }
        self.last_guest = Some(g);
        Ok(())
    }

    fn flush_l2(&mut self) -> Result<()> {
        let Some(i) = self.l2_index.take() else {
            return Ok(());
        };
        if self.l2.iter().all(|&e| e == 0) {
            return Ok(());
        }
        let host = self.alloc_one()?;
        let mut table = Vec::with_capacity(self.cs as usize);
        for e in &self.l2 {
            table.extend_from_slice(&e.to_be_bytes());
        }
        self.write_at(host * self.cs, &table, "writing an L2 table")?;
        self.l1[i as usize] = (host * self.cs) | OFLAG_COPIED;
        self.stats.l2_tables += 1;
        Ok(())
    }

    fn set_l2(&mut self, g: u64, entry: u64) -> Result<()> {
        let i = g / self.l2n;
        if self.l2_index != Some(i) {
            self.flush_l2()?;
            self.l2.fill(0);
            self.l2_index = Some(i);
        }
        self.l2[(g % self.l2n) as usize] = entry;
        Ok(())
    }

    /// Writes consecutive guest clusters starting at `first`; `data` is a whole
    /// number of clusters (the caller zero-pads the disk's last cluster).
    pub(crate) fn write_run(&mut self, first: u64, data: &[u8]) -> Result<()> {
        let cs = self.cs as usize;
        debug_assert_eq!(data.len() % cs, 0);
        let n = data.len() / cs;
        let mut group: Option<(u64, usize)> = None; // (first host cluster, first index)
        let mut prev = 0u64;
        for i in 0..n {
            let g = first + i as u64;
            self.check_order(g)?;
            let host = self.alloc_one()?;
            self.set_l2(g, (host * self.cs) | OFLAG_COPIED)?;
            match group {
                Some(_) if host == prev + 1 => {}
                Some((h, start)) => {
                    self.write_at(
                        h * self.cs,
                        &data[start * cs..i * cs],
                        "writing data clusters",
                    )?;
                    group = Some((host, i));
                }
                None => group = Some((host, i)),
            }
            prev = host;
        }
        if let Some((h, start)) = group {
            self.write_at(h * self.cs, &data[start * cs..], "writing data clusters")?;
        }
        self.stats.data_clusters += n as u64;
        Ok(())
    }

    /// Largest compressed cluster worth storing compressed; anything larger is
    /// written as a normal cluster (QEMU does the same).
    pub(crate) fn max_compressed_len(&self) -> usize {
        (self.cs - 512) as usize
    }

    /// Writes guest cluster `g` as a raw-deflate blob (window ≤ 4 KiB, as QEMU reads).
    pub(crate) fn write_compressed(&mut self, g: u64, blob: &[u8]) -> Result<()> {
        let len = blob.len() as u64;
        if len == 0 || len > self.max_compressed_len() as u64 {
            return Err(Error::invalid(
                &self.path,
                "internal: compressed cluster size out of range",
            ));
        }
        self.check_order(g)?;
        let cs = self.cs;
        let mut at = None;
        if self.cpos != 0 {
            let c = self.cpos / cs;
            let rci = (c % self.rb) as usize;
            if self.rc[rci] < u16::MAX {
                if self.cpos + len <= (c + 1) * cs {
                    self.rc[rci] += 1;
                    at = Some(self.cpos);
                } else if self.next == c + 1 && !(c + 1).is_multiple_of(self.rb) {
                    let c2 = self.alloc_one()?;
                    debug_assert_eq!(c2, c + 1);
                    self.rc[rci] += 1;
                    at = Some(self.cpos);
                }
            }
        }
        let at = match at {
            Some(a) => a,
            None => self.alloc_one()? * cs,
        };
        self.write_at(at, blob, "writing a compressed cluster")?;
        self.cpos = if (at + len).is_multiple_of(cs) {
            0
        } else {
            at + len
        };
        let sectors = ((at + len - 1) >> 9) - (at >> 9);
        let entry = OFLAG_COMPRESSED | (sectors << layout::compressed_shift(self.bits)) | at;
        self.set_l2(g, entry)?;
        self.stats.compressed_clusters += 1;
        Ok(())
    }

    /// Writes the remaining L2 table, the refcount blocks, the refcount table, the
    /// L1 table and finally the header. Returns what was written.
    pub fn finish(mut self) -> Result<WriteStats> {
        self.flush_l2()?;
        let cs = self.cs;
        // A zero-size disk has no L1 table; QEMU writes offset 0 for it too.
        let l1_clusters = (self.l1.len() as u64 * 8).div_ceil(cs);
        let l1_at = if l1_clusters == 0 {
            0
        } else {
            self.alloc_contiguous(l1_clusters)? * cs
        };
        let rt_clusters = ((self.win + 2) * 8).div_ceil(cs);
        let rt_at = self.alloc_contiguous(rt_clusters)? * cs;
        let windows = self.win + 1;
        debug_assert!(windows * 8 <= rt_clusters * cs);
        self.flush_window()?;

        let mut rt = vec![0u8; (rt_clusters * cs) as usize];
        for (i, off) in self.reftable.iter().enumerate() {
            rt[i * 8..i * 8 + 8].copy_from_slice(&off.to_be_bytes());
        }
        self.write_at(rt_at, &rt, "writing the refcount table")?;

        if l1_clusters > 0 {
            let mut l1 = vec![0u8; (l1_clusters * cs) as usize];
            for (i, e) in self.l1.iter().enumerate() {
                l1[i * 8..i * 8 + 8].copy_from_slice(&e.to_be_bytes());
            }
            self.write_at(l1_at, &l1, "writing the L1 table")?;
        }

        let header = Header {
            version: layout::VERSION,
            cluster_bits: self.bits,
            size: self.size,
            l1_size: self.l1.len() as u32,
            l1_table_offset: l1_at,
            refcount_table_offset: rt_at,
            refcount_table_clusters: rt_clusters as u32,
            backing_file_offset: 0,
            crypt_method: 0,
            nb_snapshots: 0,
            incompatible_features: 0,
            refcount_order: layout::REFCOUNT_ORDER,
            header_length: layout::HEADER_LEN,
        };
        self.write_at(0, &header.encode(), "writing the header")?;
        let file_size = self.next * cs;
        self.file
            .set_len(file_size)
            .map_err(|e| Error::io(&self.path, "sizing the output", e))?;
        self.stats.file_size = file_size;
        Ok(self.stats)
    }
}
