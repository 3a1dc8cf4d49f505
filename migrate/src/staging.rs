//! Disks the converter cannot read in place: an OVF disk split into chunks
//! (`disk.vmdk.000000000`, …, as files beside the OVF or as members of an OVA) and a disk
//! stored gzip-compressed (`ovf:compression="gzip"`). Both are assembled — chunks read
//! one after the other, gzip inflated as it streams — into one staging file in the run
//! directory, written crash-safely like every output, which the converter then reads
//! like any VMDK; it is removed once the conversion has finished.
//!
//! A gzip stream is untrusted: the assembled size is capped by the disk's capacity (a
//! sparse or stream-optimized VMDK never exceeds its capacity plus its own metadata),
//! so a decompression bomb stops with an error instead of filling the disk.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use v2k_converters::output::PartialFile;
use v2k_converters::vmdk::FileSlice;
use v2k_inventory::model::{Compression, DiskLocation};

/// Why a disk could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum StagingError {
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{location}: not a location whose bytes can be read")]
    Unreadable { location: String },
    #[error(
        "disk {id}: assembles to more than {max} bytes, beyond what a disk of capacity \
         {capacity} can hold (a decompression bomb or a wrong capacity); refused"
    )]
    TooLarge {
        id: String,
        max: u64,
        capacity: String,
    },
    #[error(transparent)]
    Output(#[from] v2k_converters::Error),
}

type Result<T, E = StagingError> = std::result::Result<T, E>;

fn io(what: String) -> impl FnOnce(std::io::Error) -> StagingError {
    move |source| StagingError::Io { what, source }
}

/// Bytes a staged disk may hold beyond its capacity (VMDK headers, grain tables and
/// markers take a small fraction of that).
pub const STAGING_SLACK: u64 = 256 << 20;
/// Copy buffer.
const BUF: usize = 1 << 20;

/// Whether the converter needs `loc` staged first (and can read it once staged).
pub fn needs_staging(loc: &DiskLocation) -> bool {
    match loc {
        DiskLocation::File { compression, .. } => compression.is_some(),
        DiskLocation::FileChunks { .. } => true,
        DiskLocation::OvaMember {
            chunks,
            compression,
            ..
        } => chunks.len() != 1 || compression.is_some(),
        _ => false,
    }
}

/// The largest staged file accepted for a disk of `capacity` bytes: capacity, plus
/// 1/64 of it (grain tables are 1/16384 of a sparse disk, markers of a stream-optimized
/// one about 1/128 of its *stored* grains), plus [`STAGING_SLACK`].
pub fn limit(capacity: Option<u64>) -> u64 {
    let c = capacity.unwrap_or(0);
    c.saturating_add(c / 64).saturating_add(STAGING_SLACK)
}

/// The bytes of `loc` as stored (chunks in order), not yet inflated.
fn stored_bytes(loc: &DiskLocation) -> Result<Box<dyn Read + Send>> {
    let mut parts: Vec<Box<dyn Read + Send>> = Vec::new();
    let open = |p: &Path| File::open(p).map_err(io(format!("opening {}", p.display())));
    match loc {
        DiskLocation::File { path, .. } => parts.push(Box::new(open(path)?)),
        DiskLocation::FileChunks { paths, .. } => {
            for p in paths {
                parts.push(Box::new(open(p)?));
            }
        }
        DiskLocation::OvaMember {
            archive, chunks, ..
        } => {
            for c in chunks {
                parts.push(Box::new(FileSlice::new(open(archive)?, c.offset, c.size)));
            }
        }
        other => {
            return Err(StagingError::Unreadable {
                location: format!("{other:?}"),
            })
        }
    }
    Ok(parts
        .into_iter()
        .fold(Box::new(io::empty()) as Box<dyn Read + Send>, |a, b| {
            Box::new(a.chain(b))
        }))
}

/// Assembles `loc` into `dest` (atomically: a killed run leaves nothing under `dest`)
/// and returns the bytes written. `id` names the disk in errors.
pub fn stage(loc: &DiskLocation, capacity: Option<u64>, dest: &Path, id: &str) -> Result<u64> {
    let stored = stored_bytes(loc)?;
    let compression = match loc {
        DiskLocation::File { compression, .. }
        | DiskLocation::FileChunks { compression, .. }
        | DiskLocation::OvaMember { compression, .. } => *compression,
        _ => None,
    };
    let mut src: Box<dyn Read + Send> = match compression {
        // Multi-member: gzip(1) of a concatenation is one valid stream of several members.
        Some(Compression::Gzip) => Box::new(flate2::read::MultiGzDecoder::new(
            BufReader::with_capacity(BUF, stored),
        )),
        None => stored,
    };
    let max = limit(capacity);
    if let Some(dir) = dest.parent() {
        // The run directory is the user's; the staging directory inside it is ours and
        // must not be a link planted there.
        if let Some(run) = dir.parent() {
            std::fs::create_dir_all(run).map_err(io(format!("creating {}", run.display())))?;
        }
        v2k_outfile::create_dir(dir).map_err(v2k_converters::Error::from)?;
    }
    // Errors of the output helper reach this crate's error through the converters' one.
    let part = PartialFile::create(dest, true).map_err(v2k_converters::Error::from)?;
    let written = {
        let mut w = BufWriter::with_capacity(BUF, part.file());
        let n = io::copy(&mut (&mut src).take(max.saturating_add(1)), &mut w).map_err(|e| {
            let what = if compression.is_some() {
                format!("disk {id}: inflating its gzip stream")
            } else {
                format!("disk {id}: reading its chunks")
            };
            StagingError::Io { what, source: e }
        })?;
        w.flush()
            .map_err(io(format!("writing {}", dest.display())))?;
        n
    };
    if written > max {
        return Err(StagingError::TooLarge {
            id: id.to_string(),
            max,
            capacity: capacity.map_or_else(|| "unknown".into(), |c| c.to_string()),
        });
    }
    part.commit().map_err(v2k_converters::Error::from)?;
    Ok(written)
}

/// Where a staged disk goes in the run directory.
pub fn staged_path(out: &Path, safe_id: &str) -> PathBuf {
    out.join("staging").join(format!("{safe_id}.vmdk"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use v2k_inventory::model::ArchiveChunk;

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 251) as u8).collect()
    }

    fn gz(b: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn chunks_as_files_and_as_ova_members_assemble_in_order() {
        let t = tempfile::tempdir().unwrap();
        let whole = data(3_000_001);
        let mut paths = Vec::new();
        for (i, c) in whole.chunks(1_000_000).enumerate() {
            let p = t.path().join(format!("d.vmdk.{i:09}"));
            std::fs::write(&p, c).unwrap();
            paths.push(p);
        }
        let loc = DiskLocation::FileChunks {
            paths,
            compression: None,
        };
        assert!(needs_staging(&loc));
        let dest = staged_path(t.path(), "scsi0_0");
        assert_eq!(
            stage(&loc, Some(4 << 20), &dest, "scsi0:0").unwrap(),
            3_000_001
        );
        assert_eq!(std::fs::read(&dest).unwrap(), whole);

        // The same chunks as members of an archive, with junk between them.
        let mut archive = Vec::new();
        let mut chunks = Vec::new();
        for (i, c) in whole.chunks(1_000_000).enumerate() {
            archive.extend_from_slice(&[0xAA; 512]);
            chunks.push(ArchiveChunk {
                member: format!("d.vmdk.{i:09}"),
                offset: archive.len() as u64,
                size: c.len() as u64,
            });
            archive.extend_from_slice(c);
        }
        let ova = t.path().join("x.ova");
        std::fs::write(&ova, &archive).unwrap();
        let loc = DiskLocation::OvaMember {
            archive: ova,
            name: "d.vmdk".into(),
            chunks,
            compression: None,
        };
        assert!(needs_staging(&loc));
        stage(&loc, Some(4 << 20), &dest, "scsi0:0").unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), whole);
    }

    #[test]
    fn a_gzip_disk_is_inflated_even_when_chunked_after_compression() {
        let t = tempfile::tempdir().unwrap();
        let whole = data(2_500_000);
        let z = gz(&whole);
        let mut paths = Vec::new();
        for (i, c) in z.chunks(z.len() / 3 + 1).enumerate() {
            let p = t.path().join(format!("d.vmdk.{i:09}"));
            std::fs::write(&p, c).unwrap();
            paths.push(p);
        }
        let loc = DiskLocation::FileChunks {
            paths,
            compression: Some(Compression::Gzip),
        };
        let dest = staged_path(t.path(), "d");
        assert_eq!(stage(&loc, Some(4 << 20), &dest, "d").unwrap(), 2_500_000);
        assert_eq!(std::fs::read(&dest).unwrap(), whole);
        // A single, unchunked file that is gzip-compressed needs staging too.
        let single = DiskLocation::File {
            path: t.path().join("d.vmdk.000000000"),
            compression: Some(Compression::Gzip),
        };
        assert!(needs_staging(&single));
        assert!(!needs_staging(&DiskLocation::File {
            path: "/x.vmdk".into(),
            compression: None
        }));
    }

    #[test]
    fn a_decompression_bomb_stops_at_the_limit_and_leaves_nothing() {
        let t = tempfile::tempdir().unwrap();
        // 512 MiB of zeros compress to about 0.5 MiB; the disk claims 1 MiB.
        let mut e = GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..512 {
            e.write_all(&zeros).unwrap();
        }
        let p = t.path().join("bomb.vmdk.gz");
        std::fs::write(&p, e.finish().unwrap()).unwrap();
        let loc = DiskLocation::File {
            path: p,
            compression: Some(Compression::Gzip),
        };
        let dest = staged_path(t.path(), "bomb");
        let err = stage(&loc, Some(1 << 20), &dest, "scsi0:0").unwrap_err();
        assert!(err.to_string().contains("decompression bomb"), "{err}");
        assert!(!dest.exists());
        let left: Vec<_> = std::fs::read_dir(dest.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn a_corrupt_gzip_stream_names_the_disk() {
        let t = tempfile::tempdir().unwrap();
        let mut z = gz(&data(100_000));
        let n = z.len();
        z[n / 2] ^= 0xFF;
        z.truncate(n - 4);
        let p = t.path().join("d.gz");
        std::fs::write(&p, z).unwrap();
        let loc = DiskLocation::File {
            path: p,
            compression: Some(Compression::Gzip),
        };
        let dest = staged_path(t.path(), "d");
        let err = stage(&loc, Some(1 << 20), &dest, "scsi0:1").unwrap_err();
        assert!(err.to_string().contains("scsi0:1"), "{err}");
        assert!(!dest.exists());
    }
}
