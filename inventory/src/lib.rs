//! VMware metadata (VMX, OVF, OVA) read into one VM model, with pre-flight concerns.
//!
//! Entry points: [`load`] reads one .vmx, .ovf or .ova into [`model::Vm`]s (an OVF
//! may describe several), with [`preflight`] concerns attached, asking a [`DiskProbe`]
//! about VMX disks (the pipeline passes the converter's reader); [`discover`] finds those files under
//! a directory. The model ([`model`]) is the interface to the later stages: each
//! [`model::Disk`] says where its bytes are ([`model::DiskLocation`]). Everything read
//! is untrusted: see ../shared/SECURITY.md and the limits named in each module.

pub mod discover;
mod error;
pub mod manifest;
pub mod model;
mod ova;
pub mod ovf;
mod paths;
pub mod preflight;
mod probe;
pub mod tar;
pub mod vmx;

use std::path::Path;

pub use discover::discover;
pub use error::{one_line, Error, Result};
pub use model::Vm;
pub use probe::{BuiltinProbe, DiskFacts, DiskProbe, ProbeError};

/// How to load.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Verify the OVF/OVA manifest (strict). On by default.
    pub verify_manifest: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            verify_manifest: true,
        }
    }
}

/// Reads one .vmx, .ovf or .ova file (by extension) into the model, with concerns.
/// VMX disks are examined by `probe`.
pub fn load(path: &Path, opts: &Options, probe: &dyn DiskProbe) -> Result<Vec<Vm>> {
    let path = vmx::absolute(path)?;
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let mut vms = match ext.as_str() {
        "vmx" => vec![vmx::load(&path, probe)?],
        "ovf" => load_ovf(&path, opts)?,
        "ova" => ova::load(&path, opts)?,
        _ => return Err(Error::UnknownKind { path }),
    };
    if ext != "vmx" {
        for vm in &mut vms {
            ovf_capacity_from_headers(vm);
        }
    }
    for vm in &mut vms {
        preflight::assess(vm);
    }
    Ok(vms)
}

/// An OVF states each disk's capacity, and so does the VMDK's own header; when they
/// disagree the header wins (it is what the converter reads, and a guest's partition
/// table was written against it) and the difference is a warning concern.
fn ovf_capacity_from_headers(vm: &mut model::Vm) {
    let mut found = Vec::new();
    for d in &mut vm.disks {
        let Some(header) = probe::header_capacity(&d.location) else {
            continue;
        };
        if let Some(declared) = d.capacity.filter(|&c| c != header) {
            found.push(model::Concern {
                id: "disk-capacity-mismatch".into(),
                severity: model::Severity::Warning,
                subject: Some(d.id.clone()),
                message: format!(
                    "the OVF says {declared} bytes, the disk's header {header}: the header is used"
                ),
            });
        }
        d.capacity = Some(header);
    }
    vm.concerns.extend(found);
}

/// Reads a whole file, refusing it if it is larger than `limit`: before reading when
/// its size says so, and on the read itself whatever its size says (a special file or
/// a link to one is refused by `v2k_untrusted::file::open`, a FIFO without blocking).
pub(crate) fn read_limited(path: &Path, limit: u64, what: &'static str) -> Result<Vec<u8>> {
    let f = v2k_untrusted::file::open(path).map_err(|e| Error::io(path, e))?;
    let meta = f.metadata().map_err(|e| Error::io(path, e))?;
    if meta.len() > limit {
        return Err(Error::TooLarge {
            path: path.to_path_buf(),
            what,
            size: meta.len(),
            limit,
        });
    }
    v2k_untrusted::file::read_from(f, limit, what).map_err(|e| Error::io(path, e))
}

/// An OVF in a directory: files resolved inside the OVF's directory; a `.mf` with the
/// same stem is verified.
fn load_ovf(path: &Path, opts: &Options) -> Result<Vec<Vm>> {
    use model::*;
    use paths::Resolved;
    let dir = path.parent().unwrap_or(Path::new("/"));
    let xml = read_limited(path, ovf::MAX_OVF_BYTES, "OVF descriptor")?;
    let ovf_err = |message: String| Error::Ovf {
        path: path.to_path_buf(),
        message,
    };
    let desc = ovf::parse(&xml).map_err(|e| ovf_err(e.to_string()))?;

    let unsafe_href = |href: &str, reason: String| Error::UnsafePath {
        path: path.to_path_buf(),
        field: "href",
        value: href.to_string(),
        reason,
    };
    // Resolve every reference (chunks too) before anything else uses them.
    let mut located: Vec<(String, Vec<std::path::PathBuf>, String, bool)> = Vec::new();
    for fr in &desc.files {
        let mut files = Vec::new();
        let mut chunked = false;
        match paths::resolve_in(dir, &fr.href, true).map_err(|r| unsafe_href(&fr.href, r))? {
            Resolved::File(p) => files.push(p),
            Resolved::Missing(_) => {
                chunked = true;
                for i in 0..ova::MAX_CHUNKS {
                    let chunk = format!("{}.{i:09}", fr.href);
                    match paths::resolve_in(dir, &chunk, true)
                        .map_err(|r| unsafe_href(&chunk, r))?
                    {
                        Resolved::File(p) => files.push(p),
                        Resolved::Missing(_) => break,
                    }
                }
            }
        }
        if let (Some(expected), false) = (fr.size, files.is_empty()) {
            let mut total: u64 = 0;
            for p in &files {
                let len = std::fs::metadata(p).map_err(|e| Error::io(p, e))?.len();
                total = total
                    .checked_add(len)
                    .ok_or_else(|| ovf_err("file sizes overflow".into()))?;
            }
            if total != expected {
                return Err(ovf_err(format!(
                    "{:?} holds {total} bytes but ovf:size says {expected}",
                    fr.href
                )));
            }
        }
        located.push((fr.id.clone(), files, fr.href.clone(), chunked));
    }

    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mf_path = match paths::resolve_in(dir, &format!("{stem}.mf"), false) {
        Ok(Resolved::File(p)) => Some(p),
        _ => None,
    };
    let status = match (opts.verify_manifest, &mf_path) {
        (false, _) => ManifestStatus::Skipped,
        (true, None) => ManifestStatus::Absent,
        (true, Some(mf)) => {
            let text = read_limited(mf, manifest::MAX_MANIFEST_BYTES, "manifest")?;
            let merr = |e: manifest::ManifestError| Error::Manifest {
                path: mf.clone(),
                message: e.to_string(),
            };
            let entries = manifest::parse(&text).map_err(merr)?;
            let mut required: Vec<String> = vec![path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()];
            for (_, files, _, _) in &located {
                for f in files {
                    if let Ok(rel) = f.strip_prefix(dir) {
                        required.push(rel.to_string_lossy().into_owned());
                    }
                }
            }
            let resolve = |n: &str| match paths::resolve_in(dir, n, false) {
                Ok(Resolved::File(p)) => Some(p),
                _ => None,
            };
            manifest::verify(
                &entries,
                &required,
                |n| resolve(n).is_some(),
                |n| v2k_untrusted::file::open(&resolve(n).ok_or(std::io::ErrorKind::NotFound)?),
            )
            .map_err(merr)?;
            ManifestStatus::Verified
        }
    };
    let source = Source {
        kind: SourceKind::Ovf,
        path: path.to_path_buf(),
        manifest: Some(status),
    };
    ovf::to_vms(
        &desc,
        &source,
        |fr| -> std::result::Result<DiskLocation, String> {
            let (_, files, href, chunked) = located
                .iter()
                .find(|(id, ..)| *id == fr.id)
                .ok_or("unresolved file")?;
            Ok(match files.as_slice() {
                [] => DiskLocation::Missing {
                    reference: href.clone(),
                },
                [one] if !chunked => DiskLocation::File {
                    path: one.clone(),
                    compression: fr.compression,
                },
                many => DiskLocation::FileChunks {
                    paths: many.to_vec(),
                    compression: fr.compression,
                },
            })
        },
    )
    .map_err(ovf_err)
}
