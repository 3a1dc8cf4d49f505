//! Finding VM files under a directory: .vmx, .ovf and .ova, recursively, without
//! following symlinks, in a stable (sorted) order. A directory given by the user is
//! trusted as a starting point; what is inside it is not followed out of it.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// How deep to descend: a datastore browse is `datastore/vm/`, an export tree a few
/// levels more; deeper is a loop or a mistake.
pub const MAX_DEPTH: usize = 16;
/// Stop listing after this many entries in total, so a wrong path (`/`) ends quickly.
pub(crate) const MAX_ENTRIES: usize = 1_000_000;

/// Whether a file name is one [`crate::load`] reads.
pub(crate) fn is_vm_file(path: &Path) -> bool {
    path.extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .is_some_and(|e| matches!(e.as_str(), "vmx" | "ovf" | "ova"))
}

/// Every .vmx/.ovf/.ova under `dir`, sorted. Symlinks are not followed. An .ovf
/// inside a directory that was itself unpacked from an .ova beside it is still listed:
/// the caller sees both, as they are both on disk.
pub fn discover(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut seen = 0usize;
    walk(dir, 0, &mut out, &mut seen)?;
    out.sort();
    Ok(out)
}

fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>, seen: &mut usize) -> Result<()> {
    if depth > MAX_DEPTH {
        return Ok(());
    }
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for entry in rd {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        *seen += 1;
        if *seen > MAX_ENTRIES {
            return Err(Error::io(
                dir,
                std::io::Error::other(format!("more than {MAX_ENTRIES} directory entries")),
            ));
        }
        let ft = entry.file_type().map_err(|e| Error::io(entry.path(), e))?;
        let p = entry.path();
        if ft.is_dir() {
            walk(&p, depth + 1, out, seen)?;
        } else if ft.is_file() && is_vm_file(&p) {
            out.push(p);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_vm_files_recursively_sorted_and_skips_symlinks() {
        let d = tempfile::tempdir().unwrap();
        let b = d.path();
        std::fs::create_dir_all(b.join("b/vm2")).unwrap();
        std::fs::write(b.join("b/vm2/vm2.VMX"), "").unwrap();
        std::fs::write(b.join("a.ova"), "").unwrap();
        std::fs::write(b.join("x.ovf"), "").unwrap();
        std::fs::write(b.join("disk.vmdk"), "").unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(b.join("b"), b.join("loop")).unwrap();
        let found = discover(b).unwrap();
        let names: Vec<_> = found
            .iter()
            .map(|p| p.strip_prefix(b).unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["a.ova", "b/vm2/vm2.VMX", "x.ovf"]);
    }
}
