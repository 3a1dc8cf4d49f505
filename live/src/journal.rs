//! The served-hash record on disk while serving, so that it survives a killed v2k
//! (issue 19, scope 3): an append-only journal of `(cluster, SHA-256)` entries. The
//! server writes each entry as it first records a cluster, before the reply leaves
//! ([`crate::ServerHandle::journal_to`]): a killed v2k loses none (the kernel holds the
//! write); [`Journal::sync`] makes them durable against a crash of the machine too,
//! and the stage calls it at every poll.
//!
//! ```text
//!  offset 0   "V2KLIVEJ"           magic
//!         8   u32 le  cluster size (65536)
//!        12   u32 le  0 (reserved)
//!        16   u64 le  disk size in bytes
//!        24   entries, 40 bytes each: u64 le cluster index, 32-byte SHA-256
//! ```
//! Entries are in the order clusters were served, not sorted. A kill can leave a torn
//! last entry: [`Journal::load`] ignores a tail shorter than one entry. A cluster
//! journaled twice must hash the same both times (the server never records a cluster
//! twice; a rerun that serves it again checks it against the loaded record).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::clusters::{HashRecord, CLUSTER};
use crate::Error;

const MAGIC: &[u8; 8] = b"V2KLIVEJ";
const HEADER: usize = 24;
const ENTRY: usize = 40;

/// An open journal, appended to.
pub struct Journal {
    file: File,
    path: PathBuf,
}

fn io(path: &Path, what: &str, e: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        what: what.into(),
        source: e,
    }
}

fn header(disk_size: u64) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&(CLUSTER as u32).to_le_bytes());
    h[16..24].copy_from_slice(&disk_size.to_le_bytes());
    h
}

impl Journal {
    /// Opens the journal at `path` for a disk of `disk_size` bytes: a new one gets its
    /// header; an existing one (an earlier run's) must be for the same disk, and is
    /// appended to. Through [`v2k_outfile::open_append`]: no link followed, no FIFO.
    pub fn open(path: &Path, disk_size: u64) -> Result<Journal, Error> {
        let mut file = v2k_outfile::open_append(path)?;
        let len = file
            .metadata()
            .map_err(|e| io(path, "reading metadata of", e))?
            .len();
        if len == 0 {
            file.write_all(&header(disk_size))
                .and_then(|()| file.sync_data())
                .map_err(|e| io(path, "writing the header of", e))?;
        } else {
            let r = Journal::load(path)?;
            if r.disk_size != disk_size {
                return Err(Error::Record {
                    file: path.display().to_string(),
                    message: format!(
                        "a journal for a disk of {} bytes, not {disk_size}",
                        r.disk_size
                    ),
                });
            }
            // A torn last entry is cut off so that new entries stay aligned.
            let whole = HEADER as u64 + (len - HEADER as u64) / ENTRY as u64 * ENTRY as u64;
            if whole != len {
                file.set_len(whole)
                    .map_err(|e| io(path, "cutting the torn entry of", e))?;
            }
        }
        Ok(Journal {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Appends `entries` and syncs them.
    pub fn append(&mut self, entries: &[(u64, [u8; 32])]) -> Result<(), Error> {
        self.write(entries)?;
        self.sync()
    }

    /// Appends `entries` in one write, not synced: they survive the process, not a
    /// crash of the machine.
    pub fn write(&mut self, entries: &[(u64, [u8; 32])]) -> Result<(), Error> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut b = Vec::with_capacity(entries.len() * ENTRY);
        for (i, h) in entries {
            b.extend_from_slice(&i.to_le_bytes());
            b.extend_from_slice(h);
        }
        self.file
            .write_all(&b)
            .map_err(|e| io(&self.path, "appending to", e))
    }

    /// Makes what was written durable.
    pub fn sync(&mut self) -> Result<(), Error> {
        self.file
            .sync_data()
            .map_err(|e| io(&self.path, "syncing", e))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The record a journal holds (read bounded by the file's own size: it is v2k's
    /// file in v2k's run directory, but checked field by field all the same).
    pub fn load(path: &Path) -> Result<HashRecord, Error> {
        let b = std::fs::read(path).map_err(|e| io(path, "reading", e))?;
        Journal::from_bytes(&b, &path.display().to_string())
    }

    fn from_bytes(b: &[u8], what: &str) -> Result<HashRecord, Error> {
        let bad = |m: String| Error::Record {
            file: what.to_string(),
            message: m,
        };
        if b.len() < HEADER || &b[..8] != MAGIC {
            return Err(bad("not a v2k live hash journal".into()));
        }
        let cs = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
        if u64::from(cs) != CLUSTER {
            return Err(bad(format!("cluster size {cs}, expected {CLUSTER}")));
        }
        let mut size = [0u8; 8];
        size.copy_from_slice(&b[16..24]);
        let mut r = HashRecord::new(u64::from_le_bytes(size));
        for e in b[HEADER..].chunks_exact(ENTRY) {
            let mut i = [0u8; 8];
            i.copy_from_slice(&e[..8]);
            let i = u64::from_le_bytes(i);
            if i >= r.clusters() {
                return Err(bad(format!("cluster {i} past the disk")));
            }
            let mut h = [0u8; 32];
            h.copy_from_slice(&e[8..]);
            if r.hashes.insert(i, h).is_some_and(|old| old != h) {
                return Err(bad(format!("cluster {i} journaled with two hashes")));
            }
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(n: u8) -> [u8; 32] {
        [n; 32]
    }

    #[test]
    fn entries_survive_a_reopen_and_a_torn_tail_is_cut() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("disk0.hashes");
        let size = 10 * CLUSTER - 7;
        let mut j = Journal::open(&p, size).unwrap();
        j.append(&[(3, h(3)), (0, h(0))]).unwrap();
        drop(j);
        // A kill mid-append: half an entry at the end.
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(&[9u8; 17]).unwrap();
        drop(f);
        let r = Journal::load(&p).unwrap();
        assert_eq!(r.disk_size, size);
        assert_eq!(r.hashes.keys().copied().collect::<Vec<_>>(), [0, 3]);
        let mut j = Journal::open(&p, size).unwrap();
        j.append(&[(9, h(9))]).unwrap();
        let r = Journal::load(&p).unwrap();
        assert_eq!(r.hashes.len(), 3);
        assert_eq!(r.hashes[&9], h(9));
        assert_eq!(
            std::fs::metadata(&p).unwrap().len(),
            (HEADER + 3 * ENTRY) as u64
        );
    }

    #[test]
    fn a_journal_for_another_disk_or_with_bad_entries_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("disk0.hashes");
        Journal::open(&p, 4 * CLUSTER)
            .unwrap()
            .append(&[(1, h(1))])
            .unwrap();
        let e = Journal::open(&p, 5 * CLUSTER).err().unwrap().to_string();
        assert!(e.contains("not 327680"), "{e}");

        let mut b = header(4 * CLUSTER).to_vec();
        b.extend_from_slice(&7u64.to_le_bytes());
        b.extend_from_slice(&h(7));
        let e = Journal::from_bytes(&b, "j").unwrap_err().to_string();
        assert!(e.contains("cluster 7 past the disk"), "{e}");

        let mut b = header(4 * CLUSTER).to_vec();
        for n in [1u8, 2] {
            b.extend_from_slice(&1u64.to_le_bytes());
            b.extend_from_slice(&h(n));
        }
        let e = Journal::from_bytes(&b, "j").unwrap_err().to_string();
        assert!(e.contains("two hashes"), "{e}");
        assert!(Journal::from_bytes(b"V2KLIVE1", "j").is_err());
    }
}
