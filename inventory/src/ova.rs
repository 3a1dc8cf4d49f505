//! OVA packages read in place: the tar is indexed ([`crate::tar`]), the descriptor is
//! read from its member, the manifest verified by hashing member bytes straight from
//! the archive, and every disk is located as `{archive, member, offset, size}` chunks
//! so the converter can stream a streamOptimized VMDK without extracting it.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use crate::error::{Error, Result};
use crate::model::*;
use crate::tar::Member;
use crate::{manifest, ovf, Options};

/// OVF chunk suffixes are nine decimal digits; a disk split into more chunks than
/// this (at the usual 2-4 GiB each) would be petabytes.
pub const MAX_CHUNKS: usize = 100_000;

fn tar_err(path: &Path, message: impl Into<String>) -> Error {
    Error::Tar {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Reads the bytes of one member, refusing more than `limit`.
fn read_member(
    f: &mut File,
    path: &Path,
    m: &Member,
    limit: u64,
    what: &'static str,
) -> Result<Vec<u8>> {
    if m.size > limit {
        return Err(Error::TooLarge {
            path: path.join(&m.name),
            what,
            size: m.size,
            limit,
        });
    }
    f.seek(SeekFrom::Start(m.offset))
        .map_err(|e| Error::io(path, e))?;
    let mut buf = Vec::with_capacity(m.size as usize);
    f.take(m.size)
        .read_to_end(&mut buf)
        .map_err(|e| Error::io(path, e))?;
    Ok(buf)
}

/// The members holding a file reference: the member named by `href`, or its chunks
/// `href.000000000`, `href.000000001`, ... in order.
fn members_for<'a>(members: &'a [Member], name: &str) -> Vec<&'a Member> {
    if let Some(m) = members.iter().find(|m| m.name == name) {
        return vec![m];
    }
    let mut out = Vec::new();
    for i in 0..MAX_CHUNKS {
        let chunk = format!("{name}.{i:09}");
        match members.iter().find(|m| m.name == chunk) {
            Some(m) => out.push(m),
            None => break,
        }
    }
    out
}

/// Loads every VM of an OVA. `path` must be absolute.
pub fn load(path: &Path, opts: &Options) -> Result<Vec<Vm>> {
    let mut f = v2k_untrusted::file::open(path).map_err(|e| Error::io(path, e))?;
    let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    let members = crate::tar::index(&mut f, len).map_err(|m| tar_err(path, m.to_string()))?;
    let top = |ext: &str| -> Vec<&Member> {
        members
            .iter()
            .filter(|m| !m.name.contains('/') && m.name.to_ascii_lowercase().ends_with(ext))
            .collect()
    };
    let ovf_member = match top(".ovf").as_slice() {
        [one] => (*one).clone(),
        [] => return Err(tar_err(path, "no .ovf descriptor in the archive")),
        _ => {
            return Err(tar_err(
                path,
                "more than one .ovf descriptor in the archive",
            ))
        }
    };
    let xml = read_member(
        &mut f,
        path,
        &ovf_member,
        ovf::MAX_OVF_BYTES,
        "OVF descriptor",
    )?;
    let ovf_err = |message: String| Error::Ovf {
        path: path.join(&ovf_member.name),
        message,
    };
    let desc = ovf::parse(&xml).map_err(|e| ovf_err(e.to_string()))?;

    // Resolve every reference first: unsafe names are fatal for the whole package.
    let mut resolved: Vec<(String, String, Vec<Member>)> = Vec::new();
    for fr in &desc.files {
        let comps =
            crate::paths::check_relative(&fr.href, true).map_err(|reason| Error::UnsafePath {
                path: path.to_path_buf(),
                field: "href",
                value: fr.href.clone(),
                reason,
            })?;
        let name = comps.join("/");
        let parts: Vec<Member> = members_for(&members, &name).into_iter().cloned().collect();
        if let Some(expected) = fr.size {
            let total = parts
                .iter()
                .try_fold(0u64, |a, m| a.checked_add(m.size))
                .ok_or_else(|| tar_err(path, "chunk sizes overflow"))?;
            if !parts.is_empty() && total != expected {
                return Err(tar_err(
                    path,
                    format!("{name:?} holds {total} bytes but ovf:size says {expected}"),
                ));
            }
        }
        resolved.push((fr.id.clone(), name, parts));
    }

    let mf = top(".mf");
    let status = if !opts.verify_manifest {
        ManifestStatus::Skipped
    } else if let [mf] = mf.as_slice() {
        let text = read_member(&mut f, path, mf, manifest::MAX_MANIFEST_BYTES, "manifest")?;
        let merr = |e: manifest::ManifestError| Error::Manifest {
            path: path.join(&mf.name),
            message: e.to_string(),
        };
        let entries = manifest::parse(&text).map_err(merr)?;
        let mut required = vec![ovf_member.name.clone()];
        for (_, name, parts) in &resolved {
            if parts.len() == 1 && parts[0].name == *name {
                required.push(name.clone());
            } else {
                required.extend(parts.iter().map(|m| m.name.clone()));
            }
        }
        let find = |n: &str| members.iter().find(|m| m.name == n).cloned();
        manifest::verify(
            &entries,
            &required,
            |n| find(n).is_some(),
            |n| {
                let m = find(n).ok_or(std::io::ErrorKind::NotFound)?;
                let mut f = v2k_untrusted::file::open(path)?;
                f.seek(SeekFrom::Start(m.offset))?;
                Ok(f.take(m.size))
            },
        )
        .map_err(merr)?;
        ManifestStatus::Verified
    } else if mf.len() > 1 {
        return Err(tar_err(path, "more than one manifest in the archive"));
    } else {
        ManifestStatus::Absent
    };

    let source = Source {
        kind: SourceKind::Ova,
        path: path.to_path_buf(),
        manifest: Some(status),
    };
    let vms = ovf::to_vms(
        &desc,
        &source,
        |fr| -> std::result::Result<DiskLocation, String> {
            let (_, name, parts) = resolved
                .iter()
                .find(|(id, _, _)| *id == fr.id)
                .ok_or("unresolved file")?;
            if parts.is_empty() {
                return Ok(DiskLocation::Missing {
                    reference: fr.href.clone(),
                });
            }
            Ok(DiskLocation::OvaMember {
                archive: path.to_path_buf(),
                name: name.clone(),
                chunks: parts
                    .iter()
                    .map(|m| ArchiveChunk {
                        member: m.name.clone(),
                        offset: m.offset,
                        size: m.size,
                    })
                    .collect(),
                compression: fr.compression,
            })
        },
    )
    .map_err(ovf_err)?;
    Ok(vms)
}
