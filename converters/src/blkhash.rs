//! The content hash of a virtual disk, `v2k-blkhash-sha256`:
//!
//! ```text
//!   split the virtual disk into blocks of 64 KiB (the last one may be shorter)
//!   d[i] = SHA-256(block i)
//!   hash = SHA-256(d[0] || d[1] || ... || d[n-1] || u64_le(virtual size))
//! ```
//!
//! It is a hash of the content only: a sparse VMDK, a qcow2 and a raw file of the
//! same disk hash the same. Blocks are hashed in parallel and every all-zero block
//! uses one precomputed digest, so hashing costs little beyond the copy; a single
//! SHA-256 over every byte would cost more than the conversion itself
//! (FIELD-NOTES §4). docs/blkhash.md and scripts/blkhash.py reproduce it.

use sha2::{Digest, Sha256};

/// Size of a hash block. It divides every conversion chunk and every QCOW2 cluster
/// size of 64 KiB and more; it is a constant so that hashes compare across outputs.
pub const BLOCK: usize = 64 * 1024;
/// The name recorded in manifests next to the hex digest.
pub(crate) const ALGORITHM: &str = "v2k-blkhash-sha256";

pub(crate) type BlockDigest = [u8; 32];

/// Digest of a full block of zeros, computed once.
pub(crate) fn zero_block_digest() -> BlockDigest {
    static ZERO: std::sync::OnceLock<BlockDigest> = std::sync::OnceLock::new();
    *ZERO.get_or_init(|| Sha256::digest([0u8; BLOCK]).into())
}

/// Whether `buf` is all zeros, a word at a time.
pub(crate) fn is_zero(buf: &[u8]) -> bool {
    let (words, rest) = buf.as_chunks::<16>();
    words.iter().all(|w| u128::from_ne_bytes(*w) == 0) && rest.iter().all(|&b| b == 0)
}

/// Digest of one block (of at most [`BLOCK`] bytes).
pub(crate) fn block_digest(block: &[u8]) -> BlockDigest {
    if block.len() == BLOCK && is_zero(block) {
        return zero_block_digest();
    }
    Sha256::digest(block).into()
}

/// Digest of a block known to be all zeros, of `len` bytes.
pub(crate) fn zero_digest_of_len(len: usize) -> BlockDigest {
    if len == BLOCK {
        zero_block_digest()
    } else {
        Sha256::digest(vec![0u8; len]).into()
    }
}

/// Appends the digests of `data` (starting on a block boundary) to `out`.
pub(crate) fn digest_blocks(data: &[u8], out: &mut Vec<BlockDigest>) {
    out.extend(data.chunks(BLOCK).map(block_digest));
}

/// Appends the digests of `len` zero bytes (starting on a block boundary).
pub(crate) fn digest_zeros(len: u64, out: &mut Vec<BlockDigest>) {
    let full = len / BLOCK as u64;
    let z = zero_block_digest();
    out.extend(std::iter::repeat_n(z, full as usize));
    let rest = (len % BLOCK as u64) as usize;
    if rest > 0 {
        out.push(zero_digest_of_len(rest));
    }
}

/// Folds block digests, fed in disk order, into the final hash.
pub(crate) struct Hasher {
    outer: Sha256,
    blocks: u64,
}

impl Default for Hasher {
    fn default() -> Self {
        Self::new()
    }
}

impl Hasher {
    pub fn new() -> Self {
        Hasher {
            outer: Sha256::new(),
            blocks: 0,
        }
    }

    pub fn update(&mut self, digests: &[BlockDigest]) {
        for d in digests {
            self.outer.update(d);
        }
        self.blocks += digests.len() as u64;
    }

    pub fn finish(mut self, virtual_size: u64) -> String {
        self.outer.update(virtual_size.to_le_bytes());
        hex::encode(self.outer.finalize())
    }
}

/// Hashes a whole in-memory disk image (tests and small inputs).
pub fn hash_bytes(data: &[u8]) -> String {
    let mut digests = Vec::new();
    digest_blocks(data, &mut digests);
    let mut h = Hasher::new();
    h.update(&digests);
    h.finish(data.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_detection_finds_a_single_set_byte_anywhere() {
        let mut b = vec![0u8; 4099];
        assert!(is_zero(&b));
        for i in [0, 15, 16, 4095, 4098] {
            b[i] = 1;
            assert!(!is_zero(&b), "byte {i}");
            b[i] = 0;
        }
    }

    #[test]
    fn zero_shortcut_matches_real_digest() {
        assert_eq!(
            zero_block_digest(),
            <[u8; 32]>::from(Sha256::digest(vec![0u8; BLOCK]))
        );
        let mut a = Vec::new();
        digest_zeros(BLOCK as u64 * 2 + 5, &mut a);
        let mut b = Vec::new();
        digest_blocks(&vec![0u8; BLOCK * 2 + 5], &mut b);
        assert_eq!(a, b);
    }

    #[test]
    fn hash_depends_on_size_and_content() {
        assert_ne!(hash_bytes(&[0u8; 10]), hash_bytes(&[0u8; 11]));
        assert_ne!(hash_bytes(&[0u8; 10]), hash_bytes(&[1u8; 10]));
        // Known answer, reproduced by scripts/blkhash.py on the same bytes.
        assert_eq!(
            hash_bytes(b""),
            "af5570f5a1810b7af78caf4bc70a660f0df51e42baf91d4de5b2328de0e83dfc"
        );
    }
}
