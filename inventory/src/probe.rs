//! What the inventory needs to know about a VMX's disk file (capacity, create type,
//! parents), behind a small trait so the VMX reader does not care who answers.
//!
//! The pipeline uses the converter's own VMDK reader (`v2k_converters::probe::ConvertersProbe`),
//! which validates the whole image (extent paths, grain tables, the snapshot chain): a
//! disk it refuses is a disk `convert` would refuse, so pre-flight reports it. The model
//! does not depend on the converter; it only defines the question. [`BuiltinProbe`] reads only the first
//! sector (hosted sparse `KDMV` or ESX `COWD` header) or a text descriptor, never an
//! extent: it names RDM mapping files the converter refuses, and serves tests whose
//! descriptors have no extents. Layout of the hosted sparse header (little endian):
//!
//! ```text
//!  0  magic "KDMV"       4  version u32     8  flags u32
//! 12  capacity u64 (sectors)               20  grainSize u64
//! 28  descriptorOffset u64 (sectors)       36  descriptorSize u64 (sectors)
//! ```

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// A text descriptor larger than this is refused; QEMU uses the same 1 MiB cap and
/// real descriptors are a few hundred bytes.
pub const MAX_DESCRIPTOR_BYTES: u64 = 1 << 20;

const SECTOR: u64 = 512;

/// Facts about one disk file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskFacts {
    pub create_type: Option<String>,
    /// Virtual size in bytes.
    pub capacity: Option<u64>,
    pub allocated_bytes: Option<u64>,
    /// Parent disks of a snapshot delta, nearest first (the builtin probe gives
    /// only the `parentFileNameHint`, as written).
    pub parents: Vec<PathBuf>,
    pub adapter_type: Option<String>,
    /// `ddb.uuid`, as written (see [`crate::model::disk_uuid`]).
    pub uuid: Option<String>,
}

/// Learns [`DiskFacts`] from a file already checked by the caller. The error, with
/// its sources, makes one line that names the file.
pub trait DiskProbe: Sync {
    fn probe(&self, path: &Path) -> Result<DiskFacts, ProbeError>;
}

/// Why a [`DiskProbe`] could not learn a disk's facts.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The built-in reader's finding (I/O error, unknown format, bad descriptor).
    #[error("{}: {problem}", path.display())]
    Unreadable { path: PathBuf, problem: String },
    /// Another reader's error (the converter's), which names the file itself.
    #[error(transparent)]
    Reader(Box<dyn std::error::Error + Send + Sync>),
}

/// Why [`parse_descriptor`] refused a text descriptor.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DescriptorError {
    #[error("descriptor contains NUL bytes")]
    NulBytes,
    #[error("not a VMDK descriptor")]
    NotADescriptor,
    #[error("bad extent sector count {count:?}")]
    BadSectorCount { count: String },
    #[error("extent sector counts overflow")]
    SectorCountsOverflow,
    #[error("descriptor has no createType")]
    NoCreateType,
    #[error("extent sizes overflow a byte count")]
    ByteCountOverflow,
}

/// The built-in header/descriptor reader (see the module doc).
#[derive(Debug, Default, Clone, Copy)]
pub struct BuiltinProbe;

impl DiskProbe for BuiltinProbe {
    fn probe(&self, path: &Path) -> Result<DiskFacts, ProbeError> {
        builtin(path).map_err(|problem| ProbeError::Unreadable {
            path: path.to_path_buf(),
            problem,
        })
    }
}

fn builtin(path: &Path) -> Result<DiskFacts, String> {
    let mut f = v2k_untrusted::file::open(path).map_err(|e| format!("opening: {e}"))?;
    let len = f.metadata().map_err(|e| format!("stat: {e}"))?.len();
    let mut head = [0u8; 512];
    let n = read_up_to(&mut f, &mut head)?;
    let head = &head[..n];
    if head.starts_with(b"KDMV") {
        return probe_sparse(&mut f, head, len);
    }
    if head.starts_with(b"COWD") {
        let sectors = u32::from_le_bytes(field(head, 12)?);
        return Ok(DiskFacts {
            create_type: Some("vmfsSparse".into()),
            capacity: Some(u64::from(sectors) * SECTOR),
            ..DiskFacts::default()
        });
    }
    if head.starts_with(b"QFI\xfb") {
        return Err("a QCOW2 image, not a VMDK".into());
    }
    if len > MAX_DESCRIPTOR_BYTES {
        return Err(format!(
            "{len} bytes and no sparse header: not a descriptor (limit {MAX_DESCRIPTOR_BYTES})"
        ));
    }
    f.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    let mut text = Vec::new();
    f.take(MAX_DESCRIPTOR_BYTES)
        .read_to_end(&mut text)
        .map_err(|e| e.to_string())?;
    parse_descriptor(&text).map_err(|e| e.to_string())
}

fn read_up_to(f: &mut std::fs::File, buf: &mut [u8]) -> Result<usize, String> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(n)
}

fn field<const N: usize>(head: &[u8], at: usize) -> Result<[u8; N], String> {
    head.get(at..at + N)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| "truncated header".to_string())
}

fn probe_sparse(f: &mut std::fs::File, head: &[u8], len: u64) -> Result<DiskFacts, String> {
    let sectors = u64::from_le_bytes(field(head, 12)?);
    let capacity = sectors
        .checked_mul(SECTOR)
        .ok_or("header capacity overflows a byte count")?;
    let desc_off = u64::from_le_bytes(field(head, 28)?);
    let desc_size = u64::from_le_bytes(field(head, 36)?);
    let mut facts = DiskFacts {
        capacity: Some(capacity),
        ..DiskFacts::default()
    };
    if desc_off != 0 && desc_size != 0 {
        let start = desc_off
            .checked_mul(SECTOR)
            .ok_or("descriptorOffset overflows")?;
        let size = desc_size
            .checked_mul(SECTOR)
            .ok_or("descriptorSize overflows")?;
        if size > MAX_DESCRIPTOR_BYTES {
            return Err(format!(
                "embedded descriptor of {size} bytes over the limit"
            ));
        }
        let end = start.checked_add(size).ok_or("descriptor end overflows")?;
        if end > len {
            return Err("embedded descriptor past end of file".into());
        }
        f.seek(SeekFrom::Start(start)).map_err(|e| e.to_string())?;
        let mut text = Vec::new();
        f.take(size)
            .read_to_end(&mut text)
            .map_err(|e| e.to_string())?;
        // The descriptor area is NUL-padded.
        let used = text.iter().position(|&b| b == 0).unwrap_or(text.len());
        let d = parse_descriptor(&text[..used]).map_err(|e| e.to_string())?;
        facts.create_type = d.create_type;
        facts.parents = d.parents;
        facts.adapter_type = d.adapter_type;
        facts.uuid = d.uuid;
    }
    Ok(facts)
}

/// The capacity in bytes that a hosted sparse (`KDMV`) header states, from a disk
/// file's first bytes; `None` for anything else (a flat or text file says nothing
/// about its capacity in its first sector) or a capacity that overflows bytes.
pub fn sparse_header_capacity(head: &[u8]) -> Option<u64> {
    if !head.starts_with(b"KDMV") {
        return None;
    }
    u64::from_le_bytes(field(head, 12).ok()?).checked_mul(SECTOR)
}

/// The capacity stated by the header of the disk at `location`, read from its first
/// sector in place (a file, the first chunk of a chunked file, or an OVA member);
/// `None` for compressed files and anything that is not a hosted sparse header.
pub fn header_capacity(location: &crate::model::DiskLocation) -> Option<u64> {
    use crate::model::DiskLocation as L;
    use std::os::unix::fs::FileExt;
    let (path, offset, len) = match location {
        L::File {
            path,
            compression: None,
        } => (path, 0, SECTOR),
        L::FileChunks {
            paths,
            compression: None,
        } => (paths.first()?, 0, SECTOR),
        L::OvaMember {
            archive,
            chunks,
            compression: None,
            ..
        } => {
            let c = chunks.first()?;
            (archive, c.offset, c.size.min(SECTOR))
        }
        _ => return None,
    };
    let f = std::fs::File::open(path).ok()?;
    let mut head = [0u8; SECTOR as usize];
    let head = &mut head[..len as usize];
    f.read_exact_at(head, offset).ok()?;
    sparse_header_capacity(head)
}

/// Parses a text descriptor: `createType`, `parentFileNameHint`, `ddb.adapterType`,
/// `ddb.uuid`,
/// and the capacity as the sum of the extent lines' sector counts.
pub fn parse_descriptor(bytes: &[u8]) -> Result<DiskFacts, DescriptorError> {
    if bytes.contains(&0) {
        return Err(DescriptorError::NulBytes);
    }
    // Hosted products write `encoding="windows-1252"` (or Shift_JIS, GBK) descriptors;
    // only ASCII keys and numbers are read here, so replacing other bytes is harmless.
    let text = String::from_utf8_lossy(bytes);
    if !text.trim_start().starts_with('#') && !text.contains("createType") {
        return Err(DescriptorError::NotADescriptor);
    }
    let mut facts = DiskFacts::default();
    let mut sectors: Option<u64> = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim().trim_matches('"').to_string();
            match k.trim() {
                "createType" => facts.create_type = Some(v),
                "parentFileNameHint" => facts.parents = vec![PathBuf::from(v)],
                "ddb.adapterType" => facts.adapter_type = Some(v),
                "ddb.uuid" => facts.uuid = Some(v),
                _ => {}
            }
            continue;
        }
        let mut words = line.split_whitespace();
        if let (Some("RW" | "RDONLY" | "NOACCESS"), Some(n)) = (words.next(), words.next()) {
            let n: u64 = n.parse().map_err(|_| DescriptorError::BadSectorCount {
                count: n.to_string(),
            })?;
            sectors = Some(
                sectors
                    .unwrap_or(0)
                    .checked_add(n)
                    .ok_or(DescriptorError::SectorCountsOverflow)?,
            );
        }
    }
    if facts.create_type.is_none() {
        return Err(DescriptorError::NoCreateType);
    }
    facts.capacity = match sectors {
        Some(s) => Some(
            s.checked_mul(SECTOR)
                .ok_or(DescriptorError::ByteCountOverflow)?,
        ),
        None => None,
    };
    Ok(facts)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ESXI_DESC: &str = "# Disk DescriptorFile\nversion=1\nencoding=\"UTF-8\"\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"vmfs\"\n\n# Extent description\nRW 41943040 VMFS \"web01-flat.vmdk\"\n\nddb.adapterType = \"lsilogic\"\nddb.uuid = \"60 00 C2 93 0f 83 56 40-0b 2c 08 2c ac 6f 35 74\"\n";

    #[test]
    fn sums_extent_lines_of_a_text_descriptor() {
        let f = parse_descriptor(ESXI_DESC.as_bytes()).unwrap();
        assert_eq!(f.create_type.as_deref(), Some("vmfs"));
        assert_eq!(f.capacity, Some(41943040 * 512));
        assert_eq!(f.adapter_type.as_deref(), Some("lsilogic"));
        assert_eq!(
            f.uuid
                .as_deref()
                .and_then(crate::model::disk_uuid)
                .as_deref(),
            Some("6000c2930f8356400b2c082cac6f3574")
        );
    }

    #[test]
    fn refuses_overflowing_extent_counts_and_nul_bytes() {
        let d = "createType=\"twoGbMaxExtentSparse\"\nRW 18446744073709551615 SPARSE \"a.vmdk\"\nRW 1 SPARSE \"b.vmdk\"\n";
        assert!(parse_descriptor(d.as_bytes())
            .unwrap_err()
            .to_string()
            .contains("overflow"));
        assert!(parse_descriptor(b"createType=\"vmfs\"\0").is_err());
        assert!(parse_descriptor(b"RW -5 VMFS \"x\"\ncreateType=\"vmfs\"").is_err());
    }

    #[test]
    fn reads_capacity_from_a_hosted_sparse_header() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s.vmdk");
        let mut img = vec![0u8; 1024];
        img[0..4].copy_from_slice(b"KDMV"); // magic
        img[4..8].copy_from_slice(&1u32.to_le_bytes()); // version
        img[12..20].copy_from_slice(&2048u64.to_le_bytes()); // capacity in sectors
        img[20..28].copy_from_slice(&128u64.to_le_bytes()); // grain size
        img[28..36].copy_from_slice(&1u64.to_le_bytes()); // descriptor at sector 1
        img[36..44].copy_from_slice(&1u64.to_le_bytes()); // one sector long
        let desc =
            b"# Disk DescriptorFile\ncreateType=\"streamOptimized\"\nRW 2048 SPARSE \"s.vmdk\"\n";
        img[512..512 + desc.len()].copy_from_slice(desc);
        std::fs::write(&p, &img).unwrap();
        let f = BuiltinProbe.probe(&p).unwrap();
        assert_eq!(f.capacity, Some(2048 * 512));
        assert_eq!(f.create_type.as_deref(), Some("streamOptimized"));
        assert_eq!(
            sparse_header_capacity(&std::fs::read(&p).unwrap()),
            Some(2048 * 512)
        );
    }

    #[test]
    fn header_capacity_is_only_read_from_sparse_headers() {
        let mut img = vec![0u8; 512];
        img[..4].copy_from_slice(b"KDMV");
        img[12..20].copy_from_slice(&u64::MAX.to_le_bytes());
        // Sectors that overflow a byte count give no capacity, not a wrapped one.
        assert_eq!(sparse_header_capacity(&img), None);
        assert_eq!(sparse_header_capacity(b"# Disk DescriptorFile"), None);
        assert_eq!(sparse_header_capacity(b"KDMV"), None);
    }

    #[test]
    fn refuses_a_qcow2_named_vmdk() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("q.vmdk");
        std::fs::write(&p, b"QFI\xfb\0\0\0\x03rest").unwrap();
        assert!(BuiltinProbe
            .probe(&p)
            .unwrap_err()
            .to_string()
            .contains("QCOW2"));
    }
}
