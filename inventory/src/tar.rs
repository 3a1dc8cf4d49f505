//! A read-only tar index for OVA files: member names, data offsets and sizes, so that
//! disks are read in place, never extracted. ustar, POSIX pax and GNU (`L` long names,
//! base-256 sizes) are understood.
//!
//! Every 512-byte header block (octal ASCII numbers, NUL/space terminated):
//!
//! ```text
//!   0 name[100]   100 mode[8]   108 uid[8]   116 gid[8]   124 size[12]
//! 136 mtime[12]   148 chksum[8] 156 typeflag 157 linkname[100]
//! 257 magic[6] ("ustar\0" or GNU "ustar ")   263 version[2]
//! 265 uname[32]   297 gname[32] 329 devmajor[8] 337 devminor[8] 345 prefix[155]
//! ```
//!
//! followed by the data padded to 512 bytes. Refused: links (hard and symbolic),
//! devices, FIFOs, unknown types, absolute or `..` names, duplicate names, a pax
//! `size` that disagrees with the header's (CVE-2025-62518, where two readers saw
//! different files in one archive), bad checksums, and data past the end of the file.

use std::collections::HashSet;
use std::io::{Read, Seek, SeekFrom};

const BLOCK: u64 = 512;
/// More members than this is not an OVA (a VM has an OVF, a manifest, a certificate
/// and a few disks, each perhaps in chunks); it stops a header flood early.
pub(crate) const MAX_MEMBERS: usize = 10_000;
/// pax extended headers and GNU long names larger than this are refused: a path is at
/// most a few KiB, and the record is read into memory.
pub(crate) const MAX_EXTENDED_HEADER: u64 = 64 << 10;
/// ustar octal size field maximum (11 octal digits): 8 GiB - 1.
const USTAR_SIZE_MAX: u64 = (1 << 33) - 1;

/// A regular file in the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Normalised name (no leading `./`).
    pub name: String,
    /// Offset of the first data byte in the archive.
    pub offset: u64,
    pub size: u64,
}

/// Why [`index`] refused an archive. Offsets are those of the member's header block.
/// I/O errors are fields written into the one-line message (callers embed it in
/// their own), not `#[source]`s.
#[derive(Debug, thiserror::Error)]
pub enum TarError {
    #[error("truncated header at offset {offset}")]
    TruncatedHeader { offset: u64 },
    /// Seeking or reading an extended header's data failed.
    #[error("{error}")]
    Io { error: std::io::Error },
    #[error("reading header at {offset}: {error}")]
    ReadingHeader { offset: u64, error: std::io::Error },
    /// A header block's checksum or size field is wrong.
    #[error("header at offset {offset}: {problem}")]
    BadHeader { offset: u64, problem: String },
    /// A member of a kind an OVA must not hold (link, device, FIFO, unknown type).
    #[error("{kind} at offset {offset} refused")]
    RefusedType { kind: String, offset: u64 },
    /// Any other inconsistency: sizes, names, pax records, limits.
    #[error("{problem}")]
    Malformed { problem: String },
}

impl From<String> for TarError {
    fn from(problem: String) -> Self {
        TarError::Malformed { problem }
    }
}

impl From<&str> for TarError {
    fn from(problem: &str) -> Self {
        problem.to_string().into()
    }
}

/// Indexes every regular file of the archive read from `r`, whose length is `len`.
pub fn index<R: Read + Seek>(r: &mut R, len: u64) -> Result<Vec<Member>, TarError> {
    let mut members = Vec::new();
    let mut seen = HashSet::new();
    let mut pos: u64 = 0;
    let mut pax_path: Option<String> = None;
    let mut pax_size: Option<u64> = None;
    let mut long_name: Option<String> = None;
    let mut header = [0u8; 512];
    loop {
        if pos.checked_add(BLOCK).is_none_or(|end| end > len) {
            // No end-of-archive blocks: accepted (some writers omit them) only at a
            // block boundary with nothing pending.
            if pos == len && pax_path.is_none() && pax_size.is_none() && long_name.is_none() {
                break;
            }
            return Err(TarError::TruncatedHeader { offset: pos });
        }
        r.seek(SeekFrom::Start(pos))
            .and_then(|_| r.read_exact(&mut header))
            .map_err(|error| TarError::ReadingHeader { offset: pos, error })?;
        if header.iter().all(|&b| b == 0) {
            break;
        }
        verify_checksum(&header).map_err(|problem| TarError::BadHeader {
            offset: pos,
            problem,
        })?;
        let size = parse_size(&header[124..136]).map_err(|e| TarError::BadHeader {
            offset: pos,
            problem: format!("size: {e}"),
        })?;
        let data = pos + BLOCK;
        let end = data.checked_add(size).ok_or("member size overflows")?;
        if end > len {
            return Err(TarError::from(format!(
                "member at offset {pos} runs past the end of the archive"
            )));
        }
        let next = end
            .checked_add(BLOCK - 1)
            .map(|e| e / BLOCK * BLOCK)
            .ok_or("member size overflows")?;
        let typeflag = header[156];
        match typeflag {
            b'x' | b'g' | b'L' => {
                if size > MAX_EXTENDED_HEADER {
                    return Err(TarError::from(format!(
                        "extended header of {size} bytes at offset {pos}"
                    )));
                }
                let mut buf = vec![0u8; size as usize];
                r.seek(SeekFrom::Start(data))
                    .and_then(|_| r.read_exact(&mut buf))
                    .map_err(|error| TarError::Io { error })?;
                match typeflag {
                    b'x' => {
                        let (p, s) = parse_pax(&buf)?;
                        pax_path = p.or(pax_path);
                        pax_size = s.or(pax_size);
                    }
                    b'L' => {
                        let n = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
                        long_name = Some(
                            String::from_utf8(buf[..n].to_vec())
                                .map_err(|_| "long name is not UTF-8")?,
                        );
                    }
                    // Global pax headers apply to later members; a global `size` or
                    // `path` makes no sense in an OVA, so refuse it.
                    _ => {
                        let (p, s) = parse_pax(&buf)?;
                        if p.is_some() || s.is_some() {
                            return Err("global pax header sets path or size".into());
                        }
                    }
                }
                pos = next;
                continue;
            }
            b'0' | 0 | b'7' | b'5' => {}
            t => {
                let kind = match t {
                    b'1' => "hard link".to_string(),
                    b'2' => "symbolic link".to_string(),
                    b'3' | b'4' => "device node".to_string(),
                    b'6' => "FIFO".to_string(),
                    b'K' => "GNU long link name".to_string(),
                    t => format!("member type {:?}", char::from(t)),
                };
                return Err(TarError::RefusedType { kind, offset: pos });
            }
        }
        // The size that decides where the next header is must be the one every reader
        // agrees on.
        let size = match pax_size.take() {
            Some(p) if p == size => size,
            // Writers (Python's tarfile, libarchive) put 0 in a field too small for the
            // real size; only then may pax decide.
            Some(p) if size == 0 && p > USTAR_SIZE_MAX => {
                let end = data.checked_add(p).ok_or("pax size overflows")?;
                if end > len {
                    return Err(TarError::from(format!(
                        "member at offset {pos} runs past the end of the archive"
                    )));
                }
                p
            }
            Some(p) => {
                return Err(TarError::from(format!(
                "pax size {p} disagrees with header size {size} at offset {pos} (CVE-2025-62518)"
            )))
            }
            None => size,
        };
        let next = data
            .checked_add(size)
            .and_then(|e| e.checked_add(BLOCK - 1))
            .map(|e| e / BLOCK * BLOCK)
            .ok_or("member size overflows")?;
        let name = match (pax_path.take(), long_name.take()) {
            (Some(p), _) => p,
            (None, Some(l)) => l,
            (None, None) => ustar_name(&header)?,
        };
        let name = name
            .strip_prefix("./")
            .unwrap_or(&name)
            .trim_end_matches('/')
            .to_string();
        if typeflag == b'5' {
            if size != 0 {
                return Err(TarError::from(format!("directory {name:?} with data")));
            }
            // `tar -C dir .` writes a "./" entry for the top directory itself.
            if name.is_empty() || name == "." {
                pos = next;
                continue;
            }
            crate::paths::check_relative(&name, false)
                .map_err(|r| format!("member {name:?}: {r}"))?;
            pos = next;
            continue;
        }
        crate::paths::check_relative(&name, false).map_err(|r| format!("member {name:?}: {r}"))?;
        if !seen.insert(name.clone()) {
            return Err(TarError::from(format!("duplicate member {name:?}")));
        }
        if members.len() >= MAX_MEMBERS {
            return Err(TarError::from(format!("more than {MAX_MEMBERS} members")));
        }
        members.push(Member {
            name,
            offset: data,
            size,
        });
        pos = next;
    }
    Ok(members)
}

fn verify_checksum(h: &[u8; 512]) -> Result<(), String> {
    let stored = parse_octal(&h[148..156]).map_err(|e| format!("checksum: {e}"))?;
    let sum: u64 = h
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u64::from(b)
            }
        })
        .sum();
    if sum != stored {
        return Err("bad header checksum".into());
    }
    Ok(())
}

fn parse_octal(f: &[u8]) -> Result<u64, String> {
    let s: &[u8] = {
        let end = f.iter().position(|&b| b == 0).unwrap_or(f.len());
        &f[..end]
    };
    let s = std::str::from_utf8(s).map_err(|_| "not ASCII")?.trim();
    if s.is_empty() {
        return Ok(0);
    }
    u64::from_str_radix(s, 8).map_err(|_| format!("bad octal {s:?}"))
}

/// Octal, or GNU base-256 when the high bit of the first byte is set.
fn parse_size(f: &[u8]) -> Result<u64, String> {
    if f[0] & 0x80 != 0 {
        if f[0] & 0x40 != 0 {
            return Err("negative base-256 size".into());
        }
        let mut v: u64 = u64::from(f[0] & 0x3f);
        for &b in &f[1..] {
            v = v
                .checked_mul(256)
                .and_then(|v| v.checked_add(u64::from(b)))
                .ok_or("base-256 size overflows")?;
        }
        return Ok(v);
    }
    parse_octal(f)
}

fn cstr(f: &[u8]) -> Result<String, String> {
    let end = f.iter().position(|&b| b == 0).unwrap_or(f.len());
    String::from_utf8(f[..end].to_vec()).map_err(|_| "member name is not UTF-8".to_string())
}

fn ustar_name(h: &[u8; 512]) -> Result<String, String> {
    let name = cstr(&h[0..100])?;
    // Only POSIX ustar has a prefix field; GNU uses those bytes for times.
    if &h[257..263] == b"ustar\0" {
        let prefix = cstr(&h[345..500])?;
        if !prefix.is_empty() {
            return Ok(format!("{prefix}/{name}"));
        }
    }
    Ok(name)
}

/// pax records: `LEN key=value\n`, LEN counting the whole record.
fn parse_pax(buf: &[u8]) -> Result<(Option<String>, Option<u64>), String> {
    let mut path = None;
    let mut size = None;
    let mut rest = buf;
    while !rest.is_empty() {
        if rest.iter().all(|&b| b == 0) {
            break;
        }
        let sp = rest
            .iter()
            .position(|&b| b == b' ')
            .ok_or("pax record without length")?;
        let len: usize = std::str::from_utf8(&rest[..sp])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or("bad pax record length")?;
        if len <= sp + 1 || len > rest.len() || rest[len - 1] != b'\n' {
            return Err("bad pax record".into());
        }
        let rec =
            std::str::from_utf8(&rest[sp + 1..len - 1]).map_err(|_| "pax record is not UTF-8")?;
        let (k, v) = rec.split_once('=').ok_or("pax record without '='")?;
        match k {
            "path" => path = Some(v.to_string()),
            "size" => size = Some(v.parse().map_err(|_| format!("bad pax size {v:?}"))?),
            "linkpath" => return Err("pax linkpath refused".into()),
            _ => {}
        }
        rest = &rest[len..];
    }
    Ok((path, size))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Cursor;

    /// Builds one header block with a valid checksum.
    pub fn header(name: &str, size: u64, typeflag: u8) -> [u8; 512] {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes()); // name
        h[100..108].copy_from_slice(b"0000644\0"); // mode
        h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes()); // size, octal
        h[156] = typeflag; // type
        h[257..263].copy_from_slice(b"ustar\0"); // magic
        h[263..265].copy_from_slice(b"00"); // version
        h[148..156].copy_from_slice(b"        "); // checksum counted as spaces
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        h
    }

    pub fn archive(parts: &[(&[u8; 512], &[u8])]) -> Vec<u8> {
        let mut v = Vec::new();
        for (h, data) in parts {
            v.extend_from_slice(&h[..]);
            v.extend_from_slice(data);
            v.resize(v.len().div_ceil(512) * 512, 0);
        }
        v.extend_from_slice(&[0u8; 1024]);
        v
    }

    /// One pax record, whose length prefix counts itself.
    pub fn pax_record(key: &str, value: &str) -> String {
        let body = format!(" {key}={value}\n");
        let mut n = body.len();
        loop {
            let l = n.to_string().len() + body.len();
            if l == n {
                return format!("{n}{body}");
            }
            n = l;
        }
    }

    fn idx(v: &[u8]) -> Result<Vec<Member>, TarError> {
        index(&mut Cursor::new(v), v.len() as u64)
    }

    #[test]
    fn indexes_members_with_data_offsets() {
        let a = archive(&[
            (&header("vm.ovf", 5, b'0'), b"hello"),
            (&header("d.vmdk", 600, b'0'), &[7u8; 600]),
        ]);
        let m = idx(&a).unwrap();
        assert_eq!(
            m[0],
            Member {
                name: "vm.ovf".into(),
                offset: 512,
                size: 5
            }
        );
        assert_eq!(
            m[1],
            Member {
                name: "d.vmdk".into(),
                offset: 1536,
                size: 600
            }
        );
    }

    #[test]
    fn refuses_links_devices_and_fifos() {
        for (t, what) in [
            (b'1', "hard link"),
            (b'2', "symbolic link"),
            (b'3', "device"),
            (b'4', "device"),
            (b'6', "FIFO"),
        ] {
            let a = archive(&[(&header("x", 0, t), b"")]);
            assert!(
                idx(&a).unwrap_err().to_string().contains(what),
                "type {}",
                t as char
            );
        }
    }

    #[test]
    fn a_refused_member_type_is_a_typed_error_with_its_offset() {
        let a = archive(&[(&header("x", 0, b'2'), b"")]);
        match idx(&a).unwrap_err() {
            TarError::RefusedType { kind, offset } => {
                assert_eq!((kind.as_str(), offset), ("symbolic link", 0));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn refuses_traversal_absolute_and_duplicate_names() {
        for n in ["../evil.vmdk", "/etc/passwd", "a/../../b"] {
            let a = archive(&[(&header(n, 0, b'0'), b"")]);
            assert!(idx(&a).is_err(), "{n}");
        }
        let a = archive(&[
            (&header("d.vmdk", 1, b'0'), b"a"),
            (&header("./d.vmdk", 1, b'0'), b"b"),
        ]);
        assert!(idx(&a).unwrap_err().to_string().contains("duplicate"));
    }

    #[test]
    fn refuses_pax_size_that_disagrees_with_header_size_cve_2025_62518() {
        // The smuggling shape: header size 0, pax size covering an inner archive.
        let inner = archive(&[(&header("smuggled.vmdk", 1, b'0'), b"x")]);
        let pax = pax_record("size", &inner.len().to_string());
        let a = archive(&[
            (
                &header("PaxHeaders/x", pax.len() as u64, b'x'),
                pax.as_bytes(),
            ),
            (&header("d.vmdk", 0, b'0'), &inner),
        ]);
        assert!(idx(&a).unwrap_err().to_string().contains("CVE-2025-62518"));
    }

    #[test]
    fn refuses_member_past_end_of_file_and_bad_checksum() {
        let mut a = archive(&[(&header("d.vmdk", 4096, b'0'), &[1u8; 512])]);
        a.truncate(1024);
        assert!(idx(&a).unwrap_err().to_string().contains("past the end"));
        let mut a = archive(&[(&header("d.vmdk", 1, b'0'), b"x")]);
        a[0] = b'e';
        assert!(idx(&a).unwrap_err().to_string().contains("checksum"));
    }

    #[test]
    fn accepts_pax_path_and_gnu_base256_size() {
        let rec = pax_record("path", "long/n.vmdk");
        let mut h = header("x", 3, b'0');
        // base-256 size 3
        h[124..136].copy_from_slice(&[0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3]);
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        let a = archive(&[
            (
                &header("PaxHeaders/x", rec.len() as u64, b'x'),
                rec.as_bytes(),
            ),
            (&h, b"abc"),
        ]);
        let m = idx(&a).unwrap();
        assert_eq!(m[0].name, "long/n.vmdk");
        assert_eq!(m[0].size, 3);
    }
}
