//! The text descriptor of a VMDK: a separate `.vmdk` file (monolithicFlat,
//! twoGbMaxExtent*, ESXi `vmfs`/`vmfsThin`, snapshot deltas) or embedded in a sparse
//! extent. Parsed strictly, with named limits, because it names the files v2k will
//! open next.
//!
//! ```text
//! # Disk DescriptorFile
//! version=1
//! CID=fffffffe
//! parentCID=ffffffff
//! createType="vmfs"
//! parentFileNameHint="base.vmdk"          (delta disks only)
//! RW 4194304 VMFS "disk-flat.vmdk"        access, sectors, type, file, [offset]
//! ddb.adapterType = "pvscsi"
//! ```

use std::collections::BTreeMap;
use std::fmt;

/// Largest descriptor accepted (1 MiB), checked on the raw bytes before parsing.
/// Real ones are under 2 KiB; the largest legitimate one, an 8 TiB (Workstation's
/// maximum) twoGbMaxExtent disk, has 4,096 extent lines, about 170 KiB.
pub const MAX_DESCRIPTOR_BYTES: usize = 1 << 20;
/// Most extents accepted: a 64 TiB disk split at 2 GiB needs 32,768.
pub(crate) const MAX_EXTENTS: usize = 32_768;
/// Longest line accepted; a valid extent line with a long path is well under this.
pub(crate) const MAX_LINE_BYTES: usize = 8192;
/// `parentCID` of a disk that has no parent.
pub(crate) const NO_PARENT_CID: u32 = 0xffff_ffff;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    Rw,
    Rdonly,
    Noaccess,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExtentKind {
    Flat,
    Sparse,
    Zero,
    Vmfs,
    VmfsSparse,
    VmfsRdm,
    VmfsRaw,
    SeSparse,
}

impl ExtentKind {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "FLAT" => Self::Flat,
            "SPARSE" => Self::Sparse,
            "ZERO" => Self::Zero,
            "VMFS" => Self::Vmfs,
            "VMFSSPARSE" => Self::VmfsSparse,
            "VMFSRDM" => Self::VmfsRdm,
            "VMFSRAW" => Self::VmfsRaw,
            "SESPARSE" => Self::SeSparse,
            _ => return None,
        })
    }

    /// Whether the extent's file holds raw bytes at `offset` (as opposed to a
    /// sparse container with its own header).
    pub fn is_flat(self) -> bool {
        matches!(self, Self::Flat | Self::Vmfs)
    }
}

/// One extent line.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Extent {
    pub access: Access,
    pub sectors: u64,
    pub kind: ExtentKind,
    /// The file name exactly as written (checked for containment when opened).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Start of the extent's data inside a flat file, in sectors.
    pub offset: u64,
}

/// A parsed descriptor.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Descriptor {
    pub create_type: String,
    pub cid: Option<u32>,
    pub parent_cid: Option<u32>,
    pub parent_file_name_hint: Option<String>,
    pub encoding: Option<String>,
    pub extents: Vec<Extent>,
    /// `ddb.*` keys without the prefix (adapterType, geometry.cylinders, uuid …).
    pub ddb: BTreeMap<String, String>,
}

impl Descriptor {
    /// Sum of the extents' sizes in bytes, checked.
    pub fn capacity_bytes(&self) -> Option<u64> {
        self.extents
            .iter()
            .try_fold(0u64, |acc, e| acc.checked_add(e.sectors))?
            .checked_mul(super::header::SECTOR)
    }

    pub fn has_parent(&self) -> bool {
        self.parent_cid.is_some_and(|c| c != NO_PARENT_CID)
    }
}

/// Why a descriptor was refused, with the 1-based line when there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescriptorError {
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for DescriptorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(n) => write!(f, "descriptor line {n}: {}", self.message),
            None => write!(f, "descriptor: {}", self.message),
        }
    }
}

fn err(line: Option<usize>, message: impl Into<String>) -> DescriptorError {
    DescriptorError {
        line,
        message: message.into(),
    }
}

/// Decodes descriptor bytes to text: UTF-8, or Latin-1 when the descriptor declares
/// a single-byte Windows/ISO encoding (old Workstation hosts wrote those).
fn decode(bytes: &[u8]) -> Result<String, DescriptorError> {
    match std::str::from_utf8(bytes) {
        Ok(s) => Ok(s.to_owned()),
        Err(e) => {
            let lower = String::from_utf8_lossy(bytes).to_ascii_lowercase();
            let single_byte = [
                "encoding=\"windows-125",
                "encoding=\"iso-8859-",
                "encoding=\"latin1",
            ]
            .iter()
            .any(|p| lower.replace(' ', "").contains(p));
            if single_byte {
                Ok(bytes.iter().map(|&b| char::from(b)).collect())
            } else {
                Err(err(
                    None,
                    format!(
                        "not valid UTF-8 (byte {}) and no single-byte encoding declared",
                        e.valid_up_to()
                    ),
                ))
            }
        }
    }
}

fn unquote(v: &str) -> &str {
    let v = v.trim();
    v.strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(v)
}

fn parse_hex_u32(v: &str, line: usize, key: &str) -> Result<u32, DescriptorError> {
    u32::from_str_radix(unquote(v), 16)
        .map_err(|_| err(Some(line), format!("{key} is not a 32-bit hex number")))
}

/// Parses the descriptor embedded in a hosted sparse file. Its text ends at the first
/// NUL and the rest of the area is ignored, as QEMU reads it: QEMU's own CID update
/// rewrites a shorter text in place (`CID=%x` drops leading zeros) and leaves the old
/// tail after the new NUL, so a disk QEMU wrote to can carry bytes there (about one
/// write in sixteen). Nothing after the NUL is interpreted.
pub(crate) fn parse_embedded(raw: &[u8]) -> Result<Descriptor, DescriptorError> {
    if raw.len() > MAX_DESCRIPTOR_BYTES {
        return Err(err(
            None,
            format!("larger than {MAX_DESCRIPTOR_BYTES} bytes"),
        ));
    }
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    parse(&raw[..end])
}

/// Bytes of an older text QEMU may leave after a descriptor file's NUL: its CID update
/// rewrites the file in place with `CID=%x`, which drops leading zeros, so the new text
/// can be up to 7 bytes shorter than the old and the old one's last bytes stay behind
/// the new NUL (seen about once in sixteen writes). Too few for an extent line.
const MAX_STALE_TAIL: usize = 7;

/// Parses a descriptor. Descriptors are padded with NULs to whole sectors (embedded
/// ones always, separate ones when qemu-img wrote them); in a descriptor file text
/// after a NUL is refused, but for QEMU's stale tail ([`MAX_STALE_TAIL`]).
pub fn parse(raw: &[u8]) -> Result<Descriptor, DescriptorError> {
    if raw.len() > MAX_DESCRIPTOR_BYTES {
        return Err(err(
            None,
            format!("larger than {MAX_DESCRIPTOR_BYTES} bytes"),
        ));
    }
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    let after = raw.get(end + 1..).unwrap_or_default();
    if after.iter().rposition(|&b| b != 0) >= Some(MAX_STALE_TAIL) {
        return Err(err(None, "NUL byte inside the text"));
    }
    let bytes = &raw[..end];
    let text = decode(bytes)?;
    let mut d = Descriptor::default();
    let mut saw_create_type = false;
    for (i, line) in text.split('\n').enumerate() {
        let n = i + 1;
        if line.len() > MAX_LINE_BYTES {
            return Err(err(Some(n), format!("longer than {MAX_LINE_BYTES} bytes")));
        }
        let line = line.trim_end_matches('\r').trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let first = line.split_whitespace().next().unwrap_or("");
        if matches!(first, "RW" | "RDONLY" | "NOACCESS") {
            if d.extents.len() >= MAX_EXTENTS {
                return Err(err(Some(n), format!("more than {MAX_EXTENTS} extents")));
            }
            d.extents.push(parse_extent(line, n)?);
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(err(Some(n), "neither `key = value` nor an extent line"));
        };
        let key = key.trim();
        let value = value.trim();
        match key {
            "createType" => {
                d.create_type = unquote(value).to_owned();
                saw_create_type = true;
            }
            "CID" => d.cid = Some(parse_hex_u32(value, n, key)?),
            "parentCID" => d.parent_cid = Some(parse_hex_u32(value, n, key)?),
            "parentFileNameHint" => d.parent_file_name_hint = Some(unquote(value).to_owned()),
            "encoding" => d.encoding = Some(unquote(value).to_owned()),
            _ => {
                if let Some(k) = key.strip_prefix("ddb.") {
                    d.ddb.insert(k.to_owned(), unquote(value).to_owned());
                }
                // Other keys (version, isNativeSnapshot, changeTrackPath …) carry
                // nothing the conversion needs.
            }
        }
    }
    if !saw_create_type || d.create_type.is_empty() {
        return Err(err(None, "no createType"));
    }
    if d.capacity_bytes().is_none() {
        return Err(err(None, "extent sizes overflow"));
    }
    Ok(d)
}

fn parse_extent(line: &str, n: usize) -> Result<Extent, DescriptorError> {
    // ACCESS SIZE TYPE ["FILE" [OFFSET]]; the file name is quoted and may hold spaces.
    let (head, rest) = match line.find('"') {
        Some(q) => (&line[..q], Some(&line[q..])),
        None => (line, None),
    };
    let mut words = head.split_whitespace();
    let access = match words.next() {
        Some("RW") => Access::Rw,
        Some("RDONLY") => Access::Rdonly,
        Some("NOACCESS") => Access::Noaccess,
        _ => return Err(err(Some(n), "extent access is not RW, RDONLY or NOACCESS")),
    };
    let size = words
        .next()
        .ok_or_else(|| err(Some(n), "extent has no size"))?;
    let sectors: u64 = size.parse().map_err(|_| {
        err(
            Some(n),
            format!("extent size {size:?} is not a sector count"),
        )
    })?;
    let kind_word = words
        .next()
        .ok_or_else(|| err(Some(n), "extent has no type"))?;
    let kind = ExtentKind::parse(kind_word)
        .ok_or_else(|| err(Some(n), format!("unknown extent type {kind_word:?}")))?;
    if words.next().is_some() {
        return Err(err(Some(n), "unexpected words before the extent file name"));
    }
    let (file, offset) = match rest {
        None => (None, 0),
        Some(r) => {
            let r = &r[1..];
            let close = r
                .find('"')
                .ok_or_else(|| err(Some(n), "unterminated extent file name"))?;
            let name = &r[..close];
            let tail = r[close + 1..].trim();
            let offset = if tail.is_empty() {
                0
            } else {
                tail.parse().map_err(|_| {
                    err(
                        Some(n),
                        format!("extent offset {tail:?} is not a sector count"),
                    )
                })?
            };
            (Some(name.to_owned()), offset)
        }
    };
    if kind != ExtentKind::Zero && file.as_deref().is_none_or(str::is_empty) {
        return Err(err(Some(n), "extent has no file name"));
    }
    Ok(Extent {
        access,
        sectors,
        kind,
        file,
        offset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ESXI: &str = "# Disk DescriptorFile\nversion=1\nencoding=\"UTF-8\"\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"vmfs\"\n\n# Extent description\nRW 4194304 VMFS \"web 01-flat.vmdk\"\n\n# The Disk Data Base\n#DDB\n\nddb.adapterType = \"pvscsi\"\nddb.geometry.cylinders = \"261\"\nddb.virtualHWVersion = \"19\"\n";

    #[test]
    fn an_embedded_descriptor_ends_at_its_first_nul_as_qemu_reads_it() {
        // What QEMU's CID update leaves: a shorter text, its NUL, the old tail.
        let mut raw = b"# Disk DescriptorFile\nversion=1\nCID=1a2b3c\nparentCID=ffffffff\n\
createType=\"monolithicSparse\"\nRW 16384 SPARSE \"a.vmdk\"\n"
            .to_vec();
        raw.extend_from_slice(b"\0\"\n");
        raw.resize(10 * 512, 0);
        let d = parse_embedded(&raw).unwrap();
        assert_eq!(d.create_type, "monolithicSparse");
        assert_eq!(d.extents.len(), 1);
        // A descriptor file takes QEMU's short stale tail too, and nothing longer.
        assert_eq!(parse(&raw).unwrap().extents.len(), 1);
        raw.splice(raw.len() - 100..raw.len() - 91, *b"RW 8 ZERO");
        assert!(parse(&raw).is_err());
    }

    #[test]
    fn parses_an_esxi_vmfs_descriptor() {
        let d = parse(ESXI.as_bytes()).unwrap();
        assert_eq!(d.create_type, "vmfs");
        assert_eq!(d.cid, Some(0xffff_fffe));
        assert!(!d.has_parent());
        assert_eq!(d.extents.len(), 1);
        assert_eq!(d.extents[0].file.as_deref(), Some("web 01-flat.vmdk"));
        assert_eq!(d.extents[0].kind, ExtentKind::Vmfs);
        assert_eq!(d.capacity_bytes(), Some(2 << 30));
        assert_eq!(d.ddb.get("adapterType").map(String::as_str), Some("pvscsi"));
    }

    #[test]
    fn accepts_crlf_line_endings() {
        let d = parse(ESXI.replace('\n', "\r\n").as_bytes()).unwrap();
        assert_eq!(d.extents[0].sectors, 4_194_304);
    }

    #[test]
    fn parses_split_sparse_and_zero_extents_with_offsets() {
        let t = "createType=\"twoGbMaxExtentSparse\"\nRW 4192256 SPARSE \"a-s001.vmdk\"\nRW 8 ZERO\nRDONLY 100 FLAT \"b.raw\" 2048\n";
        let d = parse(t.as_bytes()).unwrap();
        assert_eq!(d.extents.len(), 3);
        assert_eq!(d.extents[1].kind, ExtentKind::Zero);
        assert_eq!(d.extents[2].access, Access::Rdonly);
        assert_eq!(d.extents[2].offset, 2048);
    }

    #[test]
    fn rejects_create_type_only_in_a_comment() {
        let e = parse(b"# createType=\"vmfs\"\nRW 8 ZERO\n").unwrap_err();
        assert!(e.message.contains("createType"));
    }

    #[test]
    fn rejects_negative_and_overflowing_sector_counts() {
        let e = parse(b"createType=\"vmfs\"\nRW -5 VMFS \"x\"\n").unwrap_err();
        assert_eq!(e.line, Some(2));
        let e = parse(b"createType=\"vmfs\"\nRW 99999999999999999999 VMFS \"x\"\n").unwrap_err();
        assert_eq!(e.line, Some(2));
        let big = format!(
            "createType=\"vmfs\"\nRW {} VMFS \"x\"\nRW {} VMFS \"y\"\n",
            u64::MAX / 2,
            u64::MAX / 2 + 10
        );
        assert!(parse(big.as_bytes())
            .unwrap_err()
            .message
            .contains("overflow"));
    }

    #[test]
    fn a_descriptor_file_qemu_rewrote_shorter_keeps_its_text_and_drops_the_stale_tail() {
        // `CID=0a1b2c3d` rewritten as `CID=1f` (6 bytes shorter): the old last 5 bytes
        // and its NUL stay behind the new NUL.
        let old = "# Disk DescriptorFile\nversion=1\nCID=0a1b2c3d\nparentCID=ffffffff\n\
                   createType=\"monolithicFlat\"\nRW 8 FLAT \"x-flat.vmdk\" 0\n";
        let new = old.replace("CID=0a1b2c3d", "CID=1f");
        let mut raw = vec![0u8; 512];
        raw[..old.len()].copy_from_slice(old.as_bytes());
        raw[..new.len()].copy_from_slice(new.as_bytes());
        raw[new.len()] = 0;
        assert_ne!(raw[new.len() + 1], 0, "the stale tail is there");
        let d = parse(&raw).unwrap();
        assert_eq!(d.cid, Some(0x1f));
        assert_eq!(d.extents.len(), 1);
    }

    #[test]
    fn rejects_nul_bytes_oversize_and_bad_utf8() {
        assert!(parse(b"createType=\"vmfs\"\0\nRW 8 ZERO\n")
            .unwrap_err()
            .message
            .contains("NUL"));
        let huge = vec![b'#'; MAX_DESCRIPTOR_BYTES + 1];
        assert!(parse(&huge).unwrap_err().message.contains("larger"));
        assert!(parse(b"createType=\"vmfs\xff\"\n")
            .unwrap_err()
            .message
            .contains("UTF-8"));
    }

    #[test]
    fn decodes_latin1_when_declared() {
        let d = parse(
            b"encoding=\"windows-1252\"\ncreateType=\"vmfs\"\nRW 8 VMFS \"caf\xe9-flat.vmdk\"\n",
        )
        .unwrap();
        assert_eq!(d.extents[0].file.as_deref(), Some("caf\u{e9}-flat.vmdk"));
    }

    #[test]
    fn descriptor_may_be_nul_padded_but_not_nul_split() {
        let mut b = b"createType=\"monolithicSparse\"\nRW 8 SPARSE \"x.vmdk\"\n".to_vec();
        b.resize(512, 0);
        assert!(parse(&b).is_ok());
        b[300] = b'x';
        assert!(parse(&b).is_err());
    }

    #[test]
    fn rejects_a_million_extent_lines_without_parsing_them_all() {
        let mut t = String::from("createType=\"twoGbMaxExtentFlat\"\n");
        while t.len() < MAX_DESCRIPTOR_BYTES - 32 {
            t.push_str("RW 8 ZERO\n");
        }
        let e = parse(t.as_bytes()).unwrap_err();
        assert!(e.message.contains("extents"), "{e}");
    }

    #[test]
    fn rejects_unknown_extent_type_and_missing_file() {
        assert!(parse(b"createType=\"vmfs\"\nRW 8 WEIRD \"x\"\n").is_err());
        assert!(parse(b"createType=\"vmfs\"\nRW 8 VMFS\n").is_err());
        assert!(parse(b"createType=\"vmfs\"\nRW 8 VMFS \"x\n").is_err());
    }

    #[test]
    fn reads_parent_links_of_a_delta() {
        let d = parse(b"CID=12345678\nparentCID=abcdef01\ncreateType=\"monolithicSparse\"\nparentFileNameHint=\"base.vmdk\"\nRW 8 SPARSE \"d.vmdk\"\n").unwrap();
        assert!(d.has_parent());
        assert_eq!(d.parent_cid, Some(0xabcd_ef01));
        assert_eq!(d.parent_file_name_hint.as_deref(), Some("base.vmdk"));
    }
}
