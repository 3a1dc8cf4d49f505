//! The binary header of a hosted sparse VMDK extent (monolithicSparse,
//! streamOptimized, the `-s00N.vmdk` pieces of twoGbMaxExtentSparse), decoded and
//! checked before the reader library sees the file.
//!
//! ```text
//!  offset size field                 (little-endian)
//!   0      4   magic "KDMV"
//!   4      4   version               1, 2 or 3
//!   8      4   flags                 bit 16 compressed grains, bit 17 markers
//!  12      8   capacity              sectors of 512 bytes
//!  20      8   grainSize             sectors, power of two
//!  28      8   descriptorOffset      sectors (0 = no embedded descriptor)
//!  36      8   descriptorSize        sectors
//!  44      4   numGTEsPerGT          512 in every VMware-made file
//!  48      8   rgdOffset             redundant grain directory, sectors
//!  56      8   gdOffset              grain directory, sectors (~0 = in the footer)
//!  64      8   overHead              sectors before the first grain
//!  72      1   uncleanShutdown
//!  73      4   "\n \r\n"             line-ending detection bytes
//!  77      2   compressAlgorithm     0 none, 1 deflate
//! ```
//!
//! Every limit is a named constant; nothing is derived from a field before it is
//! checked, and all arithmetic is checked, so a crafted header gives an error naming
//! the field instead of a huge allocation or an overflow.

use std::fmt;

/// Bytes in a VMDK sector; every offset and size in the header counts these.
pub const SECTOR: u64 = 512;
/// "KDMV" read as a little-endian u32.
pub(crate) const MAGIC: u32 = 0x564d_444b;
/// Marks a streamOptimized header whose grain directory offset is in the footer.
pub const GD_AT_END: u64 = u64::MAX;
const FLAG_COMPRESSED: u32 = 1 << 16;
const FLAG_MARKERS: u32 = 1 << 17;
const COMPRESS_NONE: u16 = 0;
const COMPRESS_DEFLATE: u16 = 1;

/// Smallest grain VMware's spec allows (8 sectors = 4 KiB); smaller values come only
/// from crafted files and would multiply metadata reads.
pub(crate) const MIN_GRAIN_SECTORS: u64 = 8;
/// Largest grain accepted (2 MiB). VMware always writes 64 KiB; the cap bounds the
/// buffer a worker holds for one grain, and so what a compressed grain may inflate to.
pub(crate) const MAX_GRAIN_SECTORS: u64 = 4096;
/// QEMU refuses grain tables longer than 512 entries, and VMware writes exactly 512.
pub(crate) const MAX_GTES_PER_GT: u32 = 512;
/// Largest virtual capacity accepted: 64 TiB, just above VMware's 62 TiB maximum.
pub(crate) const MAX_CAPACITY_SECTORS: u64 = (64u64 << 40) / SECTOR;
/// QEMU's cap on the grain directory (32 Mi entries); it bounds the directory we load.
pub(crate) const MAX_GD_ENTRIES: u64 = 32 << 20;
/// The embedded descriptor is at most 1 MiB (2048 sectors); real ones are < 1 KiB.
pub(crate) const MAX_DESCRIPTOR_SECTORS: u64 = 2048;

/// Which binary magic a file starts with. Formats are never probed beyond this:
/// a file named `.vmdk` that is a QCOW2 (which could carry a backing file) is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Magic {
    /// "KDMV": VMDK4 hosted sparse extent.
    Vmdk4,
    /// "COWD": ESX 2.x/3.x vmfsSparse extent.
    Cowd,
    /// seSparse (vSphere 6.5+ VMFS6 snapshots).
    SeSparse,
    /// '#': a text descriptor.
    Text,
    /// "QFI\xfb": a QCOW2 image.
    Qcow2,
    /// Anything else.
    Unknown,
}

pub fn sniff(first: &[u8]) -> Magic {
    if first.len() >= 4 {
        if first[..4] == *b"KDMV" {
            return Magic::Vmdk4;
        }
        if first[..4] == *b"COWD" {
            return Magic::Cowd;
        }
        if first[..4] == *b"QFI\xfb" {
            return Magic::Qcow2;
        }
    }
    if first.len() >= 8
        && u64::from_le_bytes(first[..8].try_into().unwrap_or([0; 8])) == 0xcafe_babe
    {
        return Magic::SeSparse;
    }
    if first.first() == Some(&b'#') {
        return Magic::Text;
    }
    Magic::Unknown
}

/// A header whose fields have all been range-checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SparseHeader {
    pub version: u32,
    pub flags: u32,
    pub capacity_sectors: u64,
    pub grain_sectors: u64,
    pub descriptor_offset: u64,
    pub descriptor_sectors: u64,
    pub gtes_per_gt: u32,
    pub gd_offset: u64,
    pub compressed: bool,
    pub unclean_shutdown: bool,
}

/// A header field that failed its check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderError {
    pub field: &'static str,
    pub value: u64,
    pub reason: &'static str,
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sparse header field {} = {} is invalid: {}",
            self.field, self.value, self.reason
        )
    }
}

fn bad(field: &'static str, value: u64, reason: &'static str) -> HeaderError {
    HeaderError {
        field,
        value,
        reason,
    }
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

impl SparseHeader {
    /// Decodes and checks a 512-byte header. `file_len` bounds every offset.
    pub fn parse(bytes: &[u8], file_len: u64) -> Result<Self, HeaderError> {
        if bytes.len() < SECTOR as usize {
            return Err(bad(
                "length",
                bytes.len() as u64,
                "shorter than one 512-byte sector",
            ));
        }
        let magic = le32(bytes, 0);
        if magic != MAGIC {
            return Err(bad("magic", u64::from(magic), "not \"KDMV\""));
        }
        let version = le32(bytes, 4);
        if !(1..=3).contains(&version) {
            return Err(bad(
                "version",
                u64::from(version),
                "only versions 1 to 3 exist",
            ));
        }
        let flags = le32(bytes, 8);
        let capacity_sectors = le64(bytes, 12);
        let grain_sectors = le64(bytes, 20);
        let descriptor_offset = le64(bytes, 28);
        let descriptor_sectors = le64(bytes, 36);
        let gtes_per_gt = le32(bytes, 44);
        let gd_offset = le64(bytes, 56);
        let unclean_shutdown = bytes[72] != 0;
        let compress_algorithm = u16::from_le_bytes([bytes[77], bytes[78]]);

        if capacity_sectors > MAX_CAPACITY_SECTORS {
            return Err(bad("capacity", capacity_sectors, "larger than 64 TiB"));
        }
        if !grain_sectors.is_power_of_two() {
            return Err(bad("grainSize", grain_sectors, "not a power of two"));
        }
        if !(MIN_GRAIN_SECTORS..=MAX_GRAIN_SECTORS).contains(&grain_sectors) {
            return Err(bad(
                "grainSize",
                grain_sectors,
                "outside 8..=4096 sectors (4 KiB..2 MiB)",
            ));
        }
        if gtes_per_gt == 0 || gtes_per_gt > MAX_GTES_PER_GT {
            return Err(bad(
                "numGTEsPerGT",
                u64::from(gtes_per_gt),
                "outside 1..=512",
            ));
        }
        let grains = capacity_sectors.div_ceil(grain_sectors);
        let gd_entries = grains.div_ceil(u64::from(gtes_per_gt));
        if gd_entries > MAX_GD_ENTRIES {
            return Err(bad(
                "capacity",
                capacity_sectors,
                "needs more than 32 Mi grain directory entries",
            ));
        }
        let compressed = match compress_algorithm {
            COMPRESS_NONE => false,
            COMPRESS_DEFLATE => true,
            other => {
                return Err(bad(
                    "compressAlgorithm",
                    u64::from(other),
                    "only 0 (none) and 1 (deflate) exist",
                ))
            }
        };
        if compressed != (flags & FLAG_COMPRESSED != 0) {
            return Err(bad(
                "flags",
                u64::from(flags),
                "compressed-grains flag disagrees with compressAlgorithm",
            ));
        }
        if compressed && flags & FLAG_MARKERS == 0 {
            // Compressed grains without markers exist in no VMware product and the
            // reader cannot delimit them.
            return Err(bad(
                "flags",
                u64::from(flags),
                "compressed grains without markers",
            ));
        }
        let file_sectors = file_len / SECTOR;
        if descriptor_offset != 0 || descriptor_sectors != 0 {
            if descriptor_sectors > MAX_DESCRIPTOR_SECTORS {
                return Err(bad(
                    "descriptorSize",
                    descriptor_sectors,
                    "larger than 1 MiB",
                ));
            }
            if descriptor_offset == 0 {
                return Err(bad(
                    "descriptorOffset",
                    0,
                    "zero while descriptorSize is not",
                ));
            }
            let end = descriptor_offset
                .checked_add(descriptor_sectors)
                .ok_or_else(|| bad("descriptorOffset", descriptor_offset, "overflows"))?;
            if end > file_sectors {
                return Err(bad(
                    "descriptorOffset",
                    descriptor_offset,
                    "descriptor lies past the end of the file",
                ));
            }
        }
        if gd_offset != GD_AT_END {
            if gd_offset == 0 {
                return Err(bad("gdOffset", 0, "grain directory inside the header"));
            }
            let gd_sectors = gd_entries
                .checked_mul(4)
                .map(|b| b.div_ceil(SECTOR))
                .ok_or_else(|| bad("gdOffset", gd_offset, "overflows"))?;
            let end = gd_offset
                .checked_add(gd_sectors)
                .ok_or_else(|| bad("gdOffset", gd_offset, "overflows"))?;
            if end > file_sectors {
                return Err(bad(
                    "gdOffset",
                    gd_offset,
                    "grain directory lies past the end of the file",
                ));
            }
        } else if !compressed && flags & FLAG_MARKERS == 0 {
            return Err(bad(
                "gdOffset",
                gd_offset,
                "directory-in-footer marker on a non-stream image",
            ));
        }
        Ok(SparseHeader {
            version,
            flags,
            capacity_sectors,
            grain_sectors,
            descriptor_offset,
            descriptor_sectors,
            gtes_per_gt,
            gd_offset,
            compressed,
            unclean_shutdown,
        })
    }

    pub fn capacity_bytes(&self) -> u64 {
        // Cannot overflow: capacity is capped at 64 TiB in sectors above.
        self.capacity_sectors * SECTOR
    }

    pub(crate) fn grain_bytes(&self) -> u64 {
        self.grain_sectors * SECTOR
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A valid monolithicSparse header: 1 GiB, 64 KiB grains, directory at sector 21.
    pub fn valid_header() -> Vec<u8> {
        let mut h = vec![0u8; 512];
        h[0..4].copy_from_slice(b"KDMV");
        h[4..8].copy_from_slice(&1u32.to_le_bytes()); // version
        h[8..12].copy_from_slice(&3u32.to_le_bytes()); // flags: newline test + RGD
        h[12..20].copy_from_slice(&(2u64 << 20).to_le_bytes()); // capacity: 1 GiB
        h[20..28].copy_from_slice(&128u64.to_le_bytes()); // grainSize: 64 KiB
        h[28..36].copy_from_slice(&1u64.to_le_bytes()); // descriptorOffset
        h[36..44].copy_from_slice(&20u64.to_le_bytes()); // descriptorSize
        h[44..48].copy_from_slice(&512u32.to_le_bytes()); // numGTEsPerGT
        h[48..56].copy_from_slice(&21u64.to_le_bytes()); // rgdOffset
        h[56..64].copy_from_slice(&30u64.to_le_bytes()); // gdOffset
        h[64..72].copy_from_slice(&128u64.to_le_bytes()); // overHead
        h[73..77].copy_from_slice(b"\n \r\n");
        h
    }

    const LEN: u64 = 1 << 20;

    fn with(field_at: usize, bytes: &[u8]) -> Vec<u8> {
        let mut h = valid_header();
        h[field_at..field_at + bytes.len()].copy_from_slice(bytes);
        h
    }

    fn field_of(h: &[u8]) -> &'static str {
        SparseHeader::parse(h, LEN).unwrap_err().field
    }

    #[test]
    fn accepts_a_workstation_header() {
        let h = SparseHeader::parse(&valid_header(), LEN).unwrap();
        assert_eq!(h.capacity_bytes(), 1 << 30);
        assert_eq!(h.grain_bytes(), 64 << 10);
        assert!(!h.compressed);
    }

    #[test]
    fn rejects_capacity_at_extremes() {
        assert_eq!(field_of(&with(12, &(1u64 << 63).to_le_bytes())), "capacity");
        assert_eq!(field_of(&with(12, &u64::MAX.to_le_bytes())), "capacity");
    }

    #[test]
    fn accepts_capacity_zero() {
        let h = SparseHeader::parse(&with(12, &0u64.to_le_bytes()), LEN).unwrap();
        assert_eq!(h.capacity_bytes(), 0);
    }

    #[test]
    fn rejects_grain_sizes_zero_one_odd_and_huge() {
        for g in [0u64, 1, 3, 100, 1 << 40, 8192] {
            assert_eq!(
                field_of(&with(20, &g.to_le_bytes())),
                "grainSize",
                "grain {g}"
            );
        }
    }

    #[test]
    fn rejects_grain_table_lengths_zero_513_and_max() {
        for n in [0u32, 513, u32::MAX] {
            assert_eq!(
                field_of(&with(44, &n.to_le_bytes())),
                "numGTEsPerGT",
                "gtes {n}"
            );
        }
    }

    #[test]
    fn rejects_directory_past_end_of_file_or_in_header() {
        assert_eq!(field_of(&with(56, &(1u64 << 40).to_le_bytes())), "gdOffset");
        assert_eq!(field_of(&with(56, &0u64.to_le_bytes())), "gdOffset");
        assert_eq!(
            field_of(&with(56, &(u64::MAX - 1).to_le_bytes())),
            "gdOffset"
        );
    }

    #[test]
    fn rejects_descriptor_past_end_or_too_large() {
        assert_eq!(
            field_of(&with(28, &(u64::MAX - 2).to_le_bytes())),
            "descriptorOffset"
        );
        assert_eq!(
            field_of(&with(36, &4096u64.to_le_bytes())),
            "descriptorSize"
        );
    }

    #[test]
    fn rejects_unknown_compression_and_contradicting_flags() {
        assert_eq!(
            field_of(&with(77, &7u16.to_le_bytes())),
            "compressAlgorithm"
        );
        // compressAlgorithm deflate but the compressed flag clear.
        assert_eq!(field_of(&with(77, &1u16.to_le_bytes())), "flags");
    }

    #[test]
    fn rejects_bad_magic_version_and_short_input() {
        assert_eq!(field_of(&with(0, b"XDMV")), "magic");
        assert_eq!(field_of(&with(4, &9u32.to_le_bytes())), "version");
        assert_eq!(
            SparseHeader::parse(&[0u8; 100], LEN).unwrap_err().field,
            "length"
        );
    }

    #[test]
    fn sniffs_qcow2_disguised_as_vmdk() {
        assert_eq!(sniff(b"QFI\xfb\0\0\0\x03"), Magic::Qcow2);
        assert_eq!(sniff(b"# Disk DescriptorFile"), Magic::Text);
        assert_eq!(sniff(b"KDMV"), Magic::Vmdk4);
    }
}
