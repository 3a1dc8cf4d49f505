//! The QCOW2 on-disk constants and header, shared by the writer and the reader.
//!
//! ```text
//!  offset size field (big-endian)          v2k writes
//!   0     4   magic "QFI\xfb"
//!   4     4   version                      3
//!   8     8   backing_file_offset          0 (never a backing file)
//!  16     4   backing_file_size            0
//!  20     4   cluster_bits                 9..=21 (16 by default: 64 KiB)
//!  24     8   size                         virtual size in bytes
//!  32     4   crypt_method                 0
//!  36     4   l1_size                      entries
//!  40     8   l1_table_offset
//!  48     8   refcount_table_offset
//!  56     4   refcount_table_clusters
//!  60     4   nb_snapshots                 0
//!  64     8   snapshots_offset             0
//!  72     8   incompatible_features        0
//!  80     8   compatible_features          0
//!  88     8   autoclear_features           0
//!  96     4   refcount_order               4 (16-bit refcounts)
//! 100     4   header_length                104
//! 104     8   end-of-extensions marker     0
//! ```

pub(crate) const MAGIC: [u8; 4] = *b"QFI\xfb";
pub(crate) const VERSION: u32 = 3;
pub(crate) const HEADER_LEN: u32 = 104;
pub(crate) const REFCOUNT_ORDER: u32 = 4;
/// Smallest and largest cluster sizes QEMU accepts (512 B and 2 MiB).
pub(crate) const MIN_CLUSTER_BITS: u32 = 9;
pub(crate) const MAX_CLUSTER_BITS: u32 = 21;
pub(crate) const DEFAULT_CLUSTER_BITS: u32 = 16;

/// L1/L2 entry: the cluster's refcount is exactly 1 (may be written in place).
pub(crate) const OFLAG_COPIED: u64 = 1 << 63;
/// L2 entry: the cluster is compressed.
pub(crate) const OFLAG_COMPRESSED: u64 = 1 << 62;
/// L2 entry (v3): the cluster reads as zeros.
pub(crate) const OFLAG_ZERO: u64 = 1;
/// Bits 9..=55 of a standard L1/L2 entry hold the host offset.
pub(crate) const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;

/// Bit position where a compressed descriptor's sector count starts.
pub(crate) fn compressed_shift(cluster_bits: u32) -> u32 {
    62 - (cluster_bits - 8)
}

/// The fields of a header that v2k reads back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    pub cluster_bits: u32,
    pub size: u64,
    pub l1_size: u32,
    pub l1_table_offset: u64,
    pub refcount_table_offset: u64,
    pub refcount_table_clusters: u32,
    pub backing_file_offset: u64,
    pub crypt_method: u32,
    pub nb_snapshots: u32,
    pub incompatible_features: u64,
    pub refcount_order: u32,
    pub header_length: u32,
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

impl Header {
    /// Encodes the header plus the end-of-extensions marker (112 bytes).
    pub fn encode(&self) -> Vec<u8> {
        let mut h = vec![0u8; HEADER_LEN as usize + 8];
        h[0..4].copy_from_slice(&MAGIC);
        h[4..8].copy_from_slice(&self.version.to_be_bytes());
        h[20..24].copy_from_slice(&self.cluster_bits.to_be_bytes());
        h[24..32].copy_from_slice(&self.size.to_be_bytes());
        h[36..40].copy_from_slice(&self.l1_size.to_be_bytes());
        h[40..48].copy_from_slice(&self.l1_table_offset.to_be_bytes());
        h[48..56].copy_from_slice(&self.refcount_table_offset.to_be_bytes());
        h[56..60].copy_from_slice(&self.refcount_table_clusters.to_be_bytes());
        h[96..100].copy_from_slice(&self.refcount_order.to_be_bytes());
        h[100..104].copy_from_slice(&self.header_length.to_be_bytes());
        h
    }

    /// Decodes the fixed part of a header (at least 104 bytes for v3, 72 for v2).
    pub fn decode(b: &[u8]) -> Result<Self, HeaderError> {
        if b.len() < 72 {
            return Err(HeaderError::TooShort);
        }
        if b[0..4] != MAGIC {
            return Err(HeaderError::BadMagic);
        }
        let version = be32(b, 4);
        let v3 = version >= 3;
        if v3 && b.len() < HEADER_LEN as usize {
            return Err(HeaderError::TruncatedV3);
        }
        Ok(Header {
            version,
            backing_file_offset: be64(b, 8),
            cluster_bits: be32(b, 20),
            size: be64(b, 24),
            crypt_method: be32(b, 32),
            l1_size: be32(b, 36),
            l1_table_offset: be64(b, 40),
            refcount_table_offset: be64(b, 48),
            refcount_table_clusters: be32(b, 56),
            nb_snapshots: be32(b, 60),
            incompatible_features: if v3 { be64(b, 72) } else { 0 },
            refcount_order: if v3 { be32(b, 96) } else { 4 },
            header_length: if v3 { be32(b, 100) } else { 72 },
        })
    }
}

/// Why [`Header::decode`] refused the bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("shorter than a QCOW2 header")]
    TooShort,
    #[error("not a QCOW2 image (bad magic)")]
    BadMagic,
    #[error("version 3 header is truncated")]
    TruncatedV3,
}

/// Entries in one L2 table (or refcount block of 64-bit entries) for a cluster size.
pub(crate) fn l2_entries(cluster_bits: u32) -> u64 {
    1 << (cluster_bits - 3)
}

/// L1 entries needed for a virtual size.
pub(crate) fn l1_entries(size: u64, cluster_bits: u32) -> u64 {
    let per_l2 = (1u64 << cluster_bits) * l2_entries(cluster_bits);
    size.div_ceil(per_l2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let h = Header {
            version: 3,
            cluster_bits: 16,
            size: 1 << 40,
            l1_size: 2048,
            l1_table_offset: 0x30000,
            refcount_table_offset: 0x10000,
            refcount_table_clusters: 1,
            backing_file_offset: 0,
            crypt_method: 0,
            nb_snapshots: 0,
            incompatible_features: 0,
            refcount_order: 4,
            header_length: 104,
        };
        assert_eq!(Header::decode(&h.encode()).unwrap(), h);
        assert_eq!(l1_entries(1 << 40, 16), 2048);
        assert_eq!(l1_entries(0, 16), 0);
        assert_eq!(compressed_shift(16), 54);
    }

    #[test]
    fn refusals_are_typed_errors() {
        assert_eq!(Header::decode(&[0u8; 10]), Err(HeaderError::TooShort));
        assert_eq!(Header::decode(&[0u8; 72]), Err(HeaderError::BadMagic));
        let mut v3 = [0u8; 80];
        v3[0..4].copy_from_slice(&MAGIC);
        v3[4..8].copy_from_slice(&3u32.to_be_bytes());
        assert_eq!(Header::decode(&v3), Err(HeaderError::TruncatedV3));
    }
}
