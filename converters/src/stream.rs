//! Converting a raw byte stream (the flat extent of a disk as it arrives over the
//! network, or any `Read`) of known virtual size, with no temporary full copy.
//!
//! ```text
//!  Read ─▶ 1 MiB chunk ─▶ block digests (64 KiB) ─▶ hasher (source content hash)
//!                     └─▶ zero clusters skipped ─▶ Qcow2Writer / RawWriter (partial name)
//!  end of stream ─▶ writer.finish ─▶ read-back hash (verify) ─▶ fsync, rename ─▶ manifest
//! ```
//!
//! The same pieces as [`crate::convert`]: the write-once QCOW2 writer (or the sparse raw
//! writer), the `v2k-blkhash-sha256` content hash computed as bytes arrive, the
//! crash-safe output file (`v2k-outfile`) and the read-back verification of [`crate::verify`]. What
//! differs is the source: a stream is read once, in order, so there is no allocation
//! map to skip holes and no parallel readers; zero clusters are detected on the bytes
//! instead. A stream that ends early or runs past the virtual size is an error, and the
//! partial output is removed.

use std::io::Read;
use std::path::PathBuf;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::blkhash::{self, Hasher};
use crate::convert::{open_output, verify_and_commit, Event, Options, Progress};
use crate::error::{Error, Result};
use crate::manifest::{self, HashFacts, Manifest, OutputFacts, SourceFacts, Timing};
use crate::qcow2::Qcow2Writer;
use crate::raw::RawWriter;
use crate::verify::Format;

/// Bytes read from the stream per step (or one cluster, if larger): the unit of
/// zero detection and writing, and the memory a conversion holds.
pub(crate) const STREAM_CHUNK: u64 = 1 << 20;
/// Virtual bytes between two copy-progress events.
const PROGRESS_STEP: u64 = 16 << 20;

/// A stream to convert.
#[derive(Debug, Clone)]
pub struct StreamJob {
    /// What the stream is, recorded as the manifest's source path (for a datastore
    /// file: `[datastore] dir/disk-flat.vmdk`). Not opened.
    pub label: PathBuf,
    /// The VMDK `createType` the stream's bytes come from (`vmfs`, `monolithicFlat`).
    pub create_type: String,
    /// Exactly how many bytes the stream holds: the disk's virtual size.
    pub virtual_size: u64,
    pub output: PathBuf,
}

/// Reads until `buf` is full or the stream ends; returns the bytes read.
fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

enum Sink<'f> {
    Qcow2(Box<Qcow2Writer<'f>>),
    Raw(RawWriter<'f>),
}

/// Converts `reader` (exactly `job.virtual_size` raw bytes) into `job.output`, hashing
/// as it reads, verifying by read-back (unless `opts.verify` is off), and writing the
/// manifest beside it. `disk` is the index used in progress events.
pub fn convert_stream(
    reader: &mut dyn Read,
    job: &StreamJob,
    opts: &Options,
    disk: usize,
    progress: &dyn Progress,
) -> Result<Manifest> {
    let cs = opts.cluster_size;
    if !cs.is_power_of_two() {
        return Err(Error::Usage(format!(
            "cluster size {cs} is not a power of two"
        )));
    }
    if opts.compress {
        // The deflate path of the file converter works on parallel chunks; a stream is
        // copied at network speed, where compression would become the bottleneck.
        return Err(Error::Usage(
            "--compress is not available for streamed (vSphere) sources".into(),
        ));
    }
    let bits = cs.trailing_zeros();
    let size = job.virtual_size;
    let started = Instant::now();
    let started_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    progress.event(Event::Started {
        disk,
        virtual_size: size,
        allocated_bytes: size,
    });

    let out = open_output(&job.output, opts)?;
    let tmp = out.tmp_path().to_path_buf();
    let mut sink = match opts.format {
        Format::Qcow2 => Sink::Qcow2(Box::new(Qcow2Writer::new(out.file(), &tmp, size, bits)?)),
        Format::Raw => Sink::Raw(RawWriter::new(out.file(), &tmp, size, out.is_device())?),
    };
    let chunk = STREAM_CHUNK.max(cs);
    let chunk_len =
        usize::try_from(chunk).map_err(|_| Error::Usage(format!("cluster size {cs} too large")))?;
    let mut buf = vec![0u8; chunk_len];
    let mut hasher = Hasher::new();
    let mut digests = Vec::with_capacity(chunk_len / blkhash::BLOCK + 1);
    let mut data_bytes = 0u64;
    let mut off = 0u64;
    let mut last_progress = 0u64;
    let label = job.label.as_path();
    while off < size {
        let len = chunk.min(size - off) as usize;
        let n = read_full(reader, &mut buf[..len])
            .map_err(|e| Error::io(label, format!("reading the stream at byte {off}"), e))?;
        if n < len {
            return Err(Error::invalid(
                label,
                format!(
                    "stream ended at byte {} of {size}",
                    off.saturating_add(n as u64)
                ),
            ));
        }
        digests.clear();
        blkhash::digest_blocks(&buf[..len], &mut digests);
        hasher.update(&digests);
        // The disk's last cluster may be partial: pad it with zeros for the writer.
        let padded = len.div_ceil(cs as usize) * cs as usize;
        buf[len..padded].fill(0);
        write_nonzero(&mut sink, &buf[..padded], off, cs, &mut data_bytes)?;
        off += len as u64;
        if off - last_progress >= PROGRESS_STEP || off == size {
            progress.event(Event::Copied { disk, done: off });
            last_progress = off;
        }
    }
    // Anything past the virtual size means the stream is not what we were told.
    let mut probe = [0u8; 1];
    if read_full(reader, &mut probe)
        .map_err(|e| Error::io(label, format!("reading the stream at byte {size}"), e))?
        > 0
    {
        return Err(Error::invalid(
            label,
            format!("stream is longer than its virtual size {size}"),
        ));
    }
    match sink {
        Sink::Qcow2(w) => {
            w.finish()?;
        }
        Sink::Raw(w) => {
            w.finish()?;
        }
    }
    let source_hash = hasher.finish(size);
    let copy_seconds = started.elapsed().as_secs_f64();

    let manifest = verify_and_commit(out, opts, size, &source_hash, disk, progress, |c| {
        let total_seconds = started.elapsed().as_secs_f64();
        Manifest {
            schema_version: manifest::SCHEMA_VERSION,
            v2k_version: env!("CARGO_PKG_VERSION").into(),
            source: SourceFacts {
                path: job.label.clone(),
                offset: None,
                length: None,
                format: "vmdk".into(),
                create_type: job.create_type.clone(),
                virtual_size: size,
                allocated_bytes: data_bytes,
                parent_chain: Vec::new(),
            },
            output: OutputFacts {
                path: job.output.clone(),
                format: opts.format.name().into(),
                cluster_size: (opts.format == Format::Qcow2).then_some(cs),
                compressed: false,
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
                data_bytes,
            ),
        }
    })?;
    progress.event(Event::Finished { disk });
    Ok(manifest)
}

/// Writes the non-zero clusters of `data` (whole clusters, at virtual offset `off`),
/// in runs, and counts their bytes (capped at the disk size by the caller's padding).
fn write_nonzero(
    sink: &mut Sink<'_>,
    data: &[u8],
    off: u64,
    cs: u64,
    data_bytes: &mut u64,
) -> Result<()> {
    let csz = cs as usize;
    let n = data.len() / csz;
    let first = off / cs;
    let mut i = 0;
    while i < n {
        if blkhash::is_zero(&data[i * csz..(i + 1) * csz]) {
            i += 1;
            continue;
        }
        let mut j = i + 1;
        while j < n && !blkhash::is_zero(&data[j * csz..(j + 1) * csz]) {
            j += 1;
        }
        let run = &data[i * csz..j * csz];
        match sink {
            Sink::Qcow2(w) => w.write_run(first + i as u64, run)?,
            Sink::Raw(w) => w.write_at(off + (i * csz) as u64, run)?,
        }
        *data_bytes += run.len() as u64;
        i = j;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::NoProgress;
    use std::path::Path;
    use std::process::Command;

    /// Whether `dir` holds no temporary or lock file of an output.
    fn no_temporaries(dir: &Path) -> bool {
        std::fs::read_dir(dir)
            .unwrap()
            .all(|e| !e.unwrap().file_name().to_string_lossy().contains(".v2k-"))
    }

    /// A disk image with data, zero runs and a partial last cluster.
    fn pattern(size: usize) -> Vec<u8> {
        let mut v = vec![0u8; size];
        let mut x = 0x2545_f491_u32;
        for (i, b) in v.iter_mut().enumerate() {
            // Zeros in [1 MiB, 3 MiB) and in every other 64 KiB after that.
            let zero = (1 << 20..3 << 20).contains(&i) || (i >= 3 << 20 && (i >> 16) % 2 == 1);
            if !zero {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                *b = x as u8;
            }
        }
        v
    }

    fn qemu_img(args: &[&str]) -> std::process::Output {
        let o = Command::new("qemu-img")
            .args(args)
            .output()
            .expect("qemu-img must be installed (scripts/setup.sh)");
        assert!(
            o.status.success(),
            "qemu-img {args:?}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        o
    }

    /// A reader that hands out at most 7,777 bytes per call, as a network does.
    struct Dribble<'a>(&'a [u8]);
    impl Read for Dribble<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.0.len()).min(7777);
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn stream_to_qcow2_matches_qemu_img_and_the_content_hash() {
        let d = tempfile::tempdir().unwrap();
        // Sector-aligned (as every VMDK capacity is) but ending inside a cluster.
        let size = (5 << 20) + 12_288;
        let raw = pattern(size);
        let raw_path = d.path().join("src.raw");
        std::fs::write(&raw_path, &raw).unwrap();
        let out = d.path().join("out.qcow2");
        let job = StreamJob {
            label: "[ds] vm/vm-flat.vmdk".into(),
            create_type: "vmfs".into(),
            virtual_size: size as u64,
            output: out.clone(),
        };
        let m = convert_stream(
            &mut Dribble(&raw),
            &job,
            &Options::default(),
            0,
            &NoProgress,
        )
        .unwrap();
        assert_eq!(m.hash.source, blkhash::hash_bytes(&raw));
        assert_eq!(m.hash.output.as_deref(), Some(m.hash.source.as_str()));
        assert!(
            m.output.data_bytes < size as u64,
            "zero clusters were skipped"
        );
        assert!(no_temporaries(d.path()));
        qemu_img(&["check", "-f", "qcow2", out.to_str().unwrap()]);
        qemu_img(&[
            "compare",
            "-f",
            "raw",
            "-F",
            "qcow2",
            raw_path.to_str().unwrap(),
            out.to_str().unwrap(),
        ]);
        // And against qemu-img's own conversion of the same bytes.
        let theirs = d.path().join("theirs.qcow2");
        qemu_img(&[
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            raw_path.to_str().unwrap(),
            theirs.to_str().unwrap(),
        ]);
        qemu_img(&[
            "compare",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            theirs.to_str().unwrap(),
            out.to_str().unwrap(),
        ]);
        let manifest =
            crate::manifest::Manifest::load(&crate::manifest::manifest_path(&out)).unwrap();
        assert_eq!(manifest.source.path, PathBuf::from("[ds] vm/vm-flat.vmdk"));
    }

    #[test]
    fn stream_to_raw_with_small_clusters() {
        let d = tempfile::tempdir().unwrap();
        let raw = pattern(4 << 20);
        let out = d.path().join("out.raw");
        let job = StreamJob {
            label: "s".into(),
            create_type: "vmfs".into(),
            virtual_size: raw.len() as u64,
            output: out.clone(),
        };
        let opts = Options {
            format: Format::Raw,
            cluster_size: 4096,
            ..Options::default()
        };
        convert_stream(&mut &raw[..], &job, &opts, 0, &NoProgress).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), raw);
    }

    #[test]
    fn a_short_or_long_stream_fails_and_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        let raw = pattern(3 << 20);
        for (given, claimed) in [(raw.len() - 1, raw.len()), (raw.len(), raw.len() - 512)] {
            let out = d.path().join("out.qcow2");
            let job = StreamJob {
                label: "s".into(),
                create_type: "vmfs".into(),
                virtual_size: claimed as u64,
                output: out.clone(),
            };
            let e = convert_stream(
                &mut &raw[..given],
                &job,
                &Options::default(),
                0,
                &NoProgress,
            )
            .unwrap_err();
            assert!(e.to_string().contains("stream"), "{e}");
            assert!(!out.exists());
            assert!(no_temporaries(d.path()));
        }
    }

    #[test]
    fn a_read_error_is_reported_with_its_offset() {
        struct Broken(usize);
        impl Read for Broken {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                if self.0 == 0 {
                    return Err(std::io::Error::other("connection reset"));
                }
                let n = buf.len().min(self.0);
                buf[..n].fill(1);
                self.0 -= n;
                Ok(n)
            }
        }
        let d = tempfile::tempdir().unwrap();
        let job = StreamJob {
            label: "s".into(),
            create_type: "vmfs".into(),
            virtual_size: 4 << 20,
            output: d.path().join("o.qcow2"),
        };
        let e = convert_stream(
            &mut Broken(2 << 20),
            &job,
            &Options::default(),
            0,
            &NoProgress,
        )
        .unwrap_err();
        assert!(e.to_string().contains("2097152"), "{e}");
    }

    #[test]
    fn an_empty_disk_converts() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("e.qcow2");
        let job = StreamJob {
            label: "s".into(),
            create_type: "vmfs".into(),
            virtual_size: 0,
            output: out.clone(),
        };
        convert_stream(&mut &b""[..], &job, &Options::default(), 0, &NoProgress).unwrap();
        qemu_img(&["check", out.to_str().unwrap()]);
    }
}
