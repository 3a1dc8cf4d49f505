//! OVF manifests (`.mf`): one `ALGO(name)= hexdigest` line per file, ALGO one of SHA1,
//! SHA256, SHA512, the digest in either hex case. Verification streams each file
//! through the hash with a fixed buffer, so memory stays bounded whatever the disk size.
//!
//! Strict by default, as the issue asks: an unparseable line, a file named by the OVF
//! but missing from the manifest, a manifest line naming a file the package does not
//! have, or a digest mismatch is fatal.

use std::io::Read;

use sha1::Digest;

/// A manifest larger than this is refused: one line per file of a package is a few
/// hundred bytes.
pub(crate) const MAX_MANIFEST_BYTES: u64 = 1 << 20;
/// Read buffer for hashing: large enough for disk speed, small enough to not matter.
const HASH_BUF: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algo {
    Sha1,
    Sha256,
    Sha512,
}

impl Algo {
    fn digest_len(self) -> usize {
        match self {
            Algo::Sha1 => 20,
            Algo::Sha256 => 32,
            Algo::Sha512 => 64,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub algo: Algo,
    pub name: String,
    pub digest: Vec<u8>,
}

/// Why a manifest was refused ([`parse`]) or a package did not match it ([`verify`]).
/// Lines are 1-based. The hashing I/O error is a field written into the one-line
/// message (callers embed it in their own), not a `#[source]`.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("not UTF-8")]
    NotUtf8,
    #[error("line {line}: expected ALGO(file)= hex, got {text:?}")]
    BadLine { line: usize, text: String },
    #[error("line {line}: unsupported algorithm {algo:?}")]
    UnsupportedAlgorithm { line: usize, algo: String },
    #[error("line {line}: digest length does not match {algo:?}")]
    DigestLength { line: usize, algo: Algo },
    #[error("line {line}: {name:?} listed twice")]
    ListedTwice { line: usize, name: String },
    #[error("{name:?} is not in the manifest")]
    NotListed { name: String },
    #[error("lists {name:?}, which the package does not have")]
    NotInPackage { name: String },
    #[error("hashing {name:?}: {error}")]
    Hashing { name: String, error: std::io::Error },
    #[error(
        "{name:?} does not match: manifest {algo:?} {}, file {}",
        hex::encode(expected),
        hex::encode(actual)
    )]
    Mismatch {
        name: String,
        algo: Algo,
        expected: Vec<u8>,
        actual: Vec<u8>,
    },
}

/// Parses a manifest; every non-blank line must be an entry.
pub fn parse(text: &[u8]) -> Result<Vec<Entry>, ManifestError> {
    let text = std::str::from_utf8(text).map_err(|_| ManifestError::NotUtf8)?;
    let mut out: Vec<Entry> = Vec::new();
    for (no, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let bad = || ManifestError::BadLine {
            line: no + 1,
            text: line.to_string(),
        };
        let (algo, rest) = line.split_once('(').ok_or_else(bad)?;
        let algo = match algo.trim() {
            "SHA1" => Algo::Sha1,
            "SHA256" => Algo::Sha256,
            "SHA512" => Algo::Sha512,
            other => {
                return Err(ManifestError::UnsupportedAlgorithm {
                    line: no + 1,
                    algo: other.to_string(),
                })
            }
        };
        let (name, hex) = rest.rsplit_once(')').ok_or_else(bad)?;
        let hex = hex.trim_start().strip_prefix('=').ok_or_else(bad)?.trim();
        let digest = hex::decode(hex).map_err(|_| bad())?;
        if digest.len() != algo.digest_len() {
            return Err(ManifestError::DigestLength { line: no + 1, algo });
        }
        if out.iter().any(|e| e.name == name) {
            return Err(ManifestError::ListedTwice {
                line: no + 1,
                name: name.to_string(),
            });
        }
        out.push(Entry {
            algo,
            name: name.to_string(),
            digest,
        });
    }
    Ok(out)
}

/// Buffers in flight between the reading thread and the hashing one: reading the
/// next megabyte overlaps hashing this one, and memory stays at a few MiB.
const BUFFERS_IN_FLIGHT: usize = 2;

/// Hashes everything `r` yields. A second thread reads ahead into fixed-size buffers
/// so that I/O and hashing overlap; memory is bounded by [`BUFFERS_IN_FLIGHT`].
pub fn hash<R: Read + Send>(algo: Algo, r: R) -> std::io::Result<Vec<u8>> {
    use std::sync::mpsc::sync_channel;
    let (full_tx, full_rx) = sync_channel::<std::io::Result<Vec<u8>>>(BUFFERS_IN_FLIGHT);
    let (empty_tx, empty_rx) = sync_channel::<Vec<u8>>(BUFFERS_IN_FLIGHT + 1);
    std::thread::scope(|s| {
        s.spawn(move || {
            let mut r = r;
            loop {
                let mut buf = empty_rx.try_recv().unwrap_or_default();
                buf.resize(HASH_BUF, 0);
                let mut n = 0;
                // Fill the buffer (or reach the end) so the hasher sees large blocks.
                let res = loop {
                    match r.read(&mut buf[n..]) {
                        Ok(0) => break Ok(()),
                        Ok(k) => {
                            n += k;
                            if n == buf.len() {
                                break Ok(());
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => break Err(e),
                    }
                };
                buf.truncate(n);
                let end = n == 0 || res.is_err();
                let msg = res.map(|()| buf);
                // The hasher has gone (it saw an error): stop reading.
                if full_tx.send(msg).is_err() || end {
                    return;
                }
            }
        });
        macro_rules! run {
            ($h:expr) => {{
                let mut h = $h;
                for msg in full_rx.iter() {
                    let buf = msg?;
                    if buf.is_empty() {
                        break;
                    }
                    h.update(&buf);
                    let _ = empty_tx.try_send(buf);
                }
                h.finalize().to_vec()
            }};
        }
        Ok(match algo {
            Algo::Sha1 => run!(sha1::Sha1::new()),
            Algo::Sha256 => run!(sha2::Sha256::new()),
            Algo::Sha512 => run!(sha2::Sha512::new()),
        })
    })
}

/// Checks a package against its manifest. `required` are the files the OVF names (the
/// ones that will be used); `exists` says whether the package has a file; `open`
/// yields its stored bytes.
pub fn verify<R: Read + Send>(
    entries: &[Entry],
    required: &[String],
    exists: impl Fn(&str) -> bool,
    open: impl Fn(&str) -> std::io::Result<R>,
) -> Result<(), ManifestError> {
    for name in required {
        if !entries.iter().any(|e| &e.name == name) {
            return Err(ManifestError::NotListed { name: name.clone() });
        }
    }
    for e in entries {
        if !exists(&e.name) {
            return Err(ManifestError::NotInPackage {
                name: e.name.clone(),
            });
        }
        let got = open(&e.name)
            .and_then(|r| hash(e.algo, r))
            .map_err(|error| ManifestError::Hashing {
                name: e.name.clone(),
                error,
            })?;
        if got != e.digest {
            return Err(ManifestError::Mismatch {
                name: e.name.clone(),
                algo: e.algo,
                expected: e.digest.clone(),
                actual: got,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ABC_SHA256: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn parses_all_algorithms_in_either_hex_case() {
        let text = format!(
            "SHA1(a.ovf)= A9993E364706816ABA3E25717850C26C9CD0D89D\nSHA256(disk1.vmdk)= {}\nSHA512(x)= {}\n",
            ABC_SHA256.to_uppercase(),
            "ab".repeat(64)
        );
        let m = parse(text.as_bytes()).unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m[1].name, "disk1.vmdk");
        assert_eq!(m[0].algo, Algo::Sha1);
    }

    #[test]
    fn rejects_unparseable_lines_wrong_lengths_and_md5() {
        assert!(parse(b"garbage\n")
            .unwrap_err()
            .to_string()
            .contains("line 1"));
        assert!(parse(b"SHA256(a)= abcd\n")
            .unwrap_err()
            .to_string()
            .contains("length"));
        assert!(parse(b"MD5(a)= 900150983cd24fb0d6963f7d28e17f72\n")
            .unwrap_err()
            .to_string()
            .contains("unsupported"));
    }

    #[test]
    fn hashes_inputs_longer_than_several_buffers_like_a_one_shot_digest() {
        let data: Vec<u8> = (0..(HASH_BUF * 3 + 12345))
            .map(|i| (i % 251) as u8)
            .collect();
        let got = hash(Algo::Sha256, &data[..]).unwrap();
        assert_eq!(got, sha2::Sha256::digest(&data).to_vec());
        assert_eq!(
            hash(Algo::Sha1, &b""[..]).unwrap(),
            sha1::Sha1::digest(b"").to_vec()
        );
    }

    #[test]
    fn a_read_error_is_returned_not_hashed_over() {
        struct Failing(usize);
        impl Read for Failing {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                if self.0 == 0 {
                    return Err(std::io::Error::other("disk on fire"));
                }
                self.0 -= 1;
                buf[0] = 1;
                Ok(1)
            }
        }
        let e = hash(Algo::Sha512, Failing(5)).unwrap_err();
        assert_eq!(e.to_string(), "disk on fire");
    }

    #[test]
    fn verifies_and_reports_mismatch_missing_and_extra() {
        let files = |n: &str| -> std::io::Result<&'static [u8]> {
            match n {
                "d.vmdk" => Ok(b"abc"),
                _ => Err(std::io::ErrorKind::NotFound.into()),
            }
        };
        let exists = |n: &str| n == "d.vmdk";
        let ok = parse(format!("SHA256(d.vmdk)= {ABC_SHA256}\n").as_bytes()).unwrap();
        verify(&ok, &["d.vmdk".into()], exists, files).unwrap();
        let bad = parse(format!("SHA256(d.vmdk)= {}\n", "00".repeat(32)).as_bytes()).unwrap();
        assert!(verify(&bad, &[], exists, files)
            .unwrap_err()
            .to_string()
            .contains("does not match"));
        assert!(verify(&ok, &["e.vmdk".into()], exists, files)
            .unwrap_err()
            .to_string()
            .contains("not in the manifest"));
        let extra = parse(format!("SHA256(z.vmdk)= {ABC_SHA256}\n").as_bytes()).unwrap();
        assert!(verify(&extra, &[], exists, files)
            .unwrap_err()
            .to_string()
            .contains("does not have"));
    }

    #[test]
    fn errors_are_typed_and_keep_their_text() {
        let e = parse(b"\nMD5(b)= 00\n").unwrap_err();
        assert!(
            matches!(&e, ManifestError::UnsupportedAlgorithm { line: 2, algo } if algo == "MD5"),
            "{e:?}"
        );
        assert_eq!(
            parse(b"SHA1(a)= 00\n").unwrap_err().to_string(),
            "line 1: digest length does not match Sha1"
        );
    }
}
