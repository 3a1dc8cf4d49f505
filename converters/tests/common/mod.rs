//! Shared helpers for the converters' integration tests: deterministic disk
//! patterns, qemu-img, and the independent Python hash.
#![allow(dead_code)]

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Fails (never skips) when a tool the differential tests rely on is missing.
pub fn require(tool: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "{tool} is required by this test (run scripts/setup.sh)"
    );
}

/// Runs a command and panics with its stderr when it fails.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn qemu_img(args: &[&str]) -> String {
    require("qemu-img");
    run(Command::new("qemu-img").args(args))
}

/// Small deterministic PRNG (xorshift) so patterns are reproducible.
pub struct Rng(u64);
impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

/// Writes a raw disk of `size` bytes with a mix of random data, compressible text,
/// written zeros, holes, and data in the very last bytes (a non-aligned tail when
/// `size` is not a multiple of the cluster size).
pub fn write_pattern(path: &Path, size: u64, seed: u64) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    let mut rng = Rng::new(seed);
    let step = 3 * 1024 * 1024 + 4096 * 7;
    let mut off = 0u64;
    let mut kind = 0;
    while off < size {
        let len = (200_000 + rng.next_u64() % 400_000).min(size - off);
        let mut buf = vec![0u8; len as usize];
        match kind % 3 {
            0 => rng.fill(&mut buf),
            1 => {
                let text = b"the quick brown fox jumps over the lazy vmdk grain ";
                for (i, b) in buf.iter_mut().enumerate() {
                    *b = text[(i + off as usize) % text.len()];
                }
            }
            _ => {} // explicit zeros
        }
        f.write_all_at(&buf, off).unwrap();
        kind += 1;
        off += step; // the rest of the step stays a hole
    }
    if size >= 4096 {
        f.write_all_at(b"end-of-disk marker", size - 18).unwrap();
    }
}

/// The Python reference implementation of v2k-blkhash-sha256 over a raw file.
pub fn blkhash_py(raw: &Path) -> String {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/blkhash.py");
    run(Command::new("python3").arg(script).arg(raw))
        .trim()
        .to_owned()
}

/// `qemu-img check` passes and `qemu-img compare` says `a` and `b` are identical.
pub fn assert_same_disk(reference: &Path, output: &Path, output_format: &str) {
    if output_format == "qcow2" {
        let out = Command::new("qemu-img")
            .args(["check", "-f", "qcow2"])
            .arg(output)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "qemu-img check {} failed:\n{}{}",
            output.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = Command::new("qemu-img")
        .args(["compare", "-F", output_format])
        .arg(reference)
        .arg(output)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "qemu-img compare {} {}: {}{}",
        reference.display(),
        output.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
