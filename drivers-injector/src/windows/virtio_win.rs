//! The virtio-win driver source on the host: a directory laid out as
//! `<driver>/<os>/<arch>/<files>` (FIELD-NOTES §8, e.g. `viostor/2k19/amd64/viostor.sys`),
//! given by `--virtio-win PATH` or `$VIRTIO_WIN`. [`scan`] picks, for one Windows
//! version and architecture, every driver directory that has a matching `<os>/<arch>`
//! leaf, and the guest agent MSI. Matching is exact (no silent fallback to an older
//! Windows' driver) and case-insensitive, as the ISO's names vary in case.
//!
//! The tree is the user's, but it is still read defensively: only real directories and
//! regular files (no symlinks, devices or FIFOs), names that are safe in a guest path
//! and a PowerShell literal, and size limits checked before anything is read.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Most top-level driver directories looked at (virtio-win has about 20).
pub const MAX_DRIVER_DIRS: usize = 256;
/// Most files in one `<driver>/<os>/<arch>` leaf (a driver has 3-10).
pub const MAX_FILES_PER_DRIVER: usize = 64;
/// Largest single file copied (real drivers are under 1 MiB; DLLs a few MiB).
pub const MAX_FILE_BYTES: u64 = 64 << 20;
/// Largest total copied into the guest.
pub const MAX_TOTAL_BYTES: u64 = 512 << 20;
/// Longest file or directory name accepted.
const MAX_NAME: usize = 64;

/// The drivers v2k needs, whatever else the tree has: without the boot storage driver
/// the guest cannot boot, without NetKVM it is unreachable.
pub const NET_DRIVER: &str = "netkvm";

/// The virtio-win directory names of the OS folders, from old to new.
pub const OS_DIRS: [&str; 15] = [
    "xp", "2k3", "2k8", "2k8R2", "w7", "w8", "w8.1", "2k12", "2k12R2", "w10", "2k16", "2k19",
    "w11", "2k22", "2k25",
];

/// One driver found for the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Driver {
    /// The top-level directory name as in the tree (`viostor`, `NetKVM`).
    pub name: String,
    /// The leaf directory on the host.
    pub dir: PathBuf,
    /// File names in it (regular files only), sorted.
    pub files: Vec<String>,
    /// Total bytes.
    pub bytes: u64,
}

impl Driver {
    /// The driver name lower-cased: virt-v2v's and Windows' service names are.
    pub fn id(&self) -> String {
        self.name.to_ascii_lowercase()
    }

    /// The `.inf` file, if the leaf has one.
    pub fn inf(&self) -> Option<&str> {
        self.files
            .iter()
            .find(|f| f.to_ascii_lowercase().ends_with(".inf"))
            .map(String::as_str)
    }
}

/// What the source offers this guest.
#[derive(Debug, Clone)]
pub struct Found {
    pub source: PathBuf,
    pub drivers: Vec<Driver>,
    /// The guest agent installer for this architecture, when present.
    pub guest_agent: Option<PathBuf>,
}

impl Found {
    pub fn get(&self, id: &str) -> Option<&Driver> {
        self.drivers.iter().find(|d| d.id() == id)
    }
}

/// A name safe in a guest path, a registry key and a single-quoted PowerShell string.
pub fn safe_file_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME
        && !s.starts_with(['.', '-'])
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

fn bad(source: &Path, message: String) -> Error {
    Error::VirtioWin {
        path: source.to_path_buf(),
        message,
    }
}

/// Real (non-symlink) subdirectories of `dir` with safe names, capped.
fn subdirs(source: &Path, dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let ft = entry.file_type().map_err(|e| Error::io(entry.path(), e))?;
        if !ft.is_dir() {
            continue;
        }
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if !safe_file_name(&name) {
            continue;
        }
        if out.len() == MAX_DRIVER_DIRS {
            return Err(bad(
                source,
                format!(
                    "{} has more than {MAX_DRIVER_DIRS} subdirectories: not a virtio-win tree?",
                    dir.display()
                ),
            ));
        }
        out.push((name, entry.path()));
    }
    out.sort();
    Ok(out)
}

/// The subdirectory of `dir` named `want`, case-insensitively.
fn child_ci(source: &Path, dir: &Path, want: &str) -> Result<Option<PathBuf>> {
    Ok(subdirs(source, dir)?
        .into_iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(want))
        .map(|(_, p)| p))
}

/// The regular files of a leaf, checked against the limits.
fn leaf_files(source: &Path, dir: &Path) -> Result<(Vec<String>, u64)> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut files = Vec::new();
    let mut total = 0u64;
    for entry in rd {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let meta =
            std::fs::symlink_metadata(entry.path()).map_err(|e| Error::io(entry.path(), e))?;
        if !meta.is_file() {
            // Symlinks, FIFOs and devices are never read.
            continue;
        }
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if !safe_file_name(&name) {
            return Err(bad(
                source,
                format!("{}: file name not accepted", entry.path().display()),
            ));
        }
        if meta.len() > MAX_FILE_BYTES {
            return Err(bad(
                source,
                format!(
                    "{}: {} bytes, over the {MAX_FILE_BYTES}-byte limit for one driver file",
                    entry.path().display(),
                    meta.len()
                ),
            ));
        }
        if files.len() == MAX_FILES_PER_DRIVER {
            return Err(bad(
                source,
                format!(
                    "{} has more than {MAX_FILES_PER_DRIVER} files",
                    dir.display()
                ),
            ));
        }
        total = total
            .checked_add(meta.len())
            .ok_or_else(|| bad(source, "driver sizes overflow".into()))?;
        files.push(name);
    }
    files.sort();
    Ok((files, total))
}

/// Every driver of `source` for virtio-win OS folder `os` and architecture folder
/// `arch`, and the guest agent MSI.
pub fn scan(source: &Path, os: &str, arch: &str) -> Result<Found> {
    let meta = std::fs::metadata(source).map_err(|e| Error::io(source, e))?;
    if meta.is_file() {
        return Err(bad(
            source,
            "is a file: virtio-win ISOs are not read yet; extract it (for example \
             `bsdtar -xf virtio-win.iso -C DIR`) and give the directory"
                .into(),
        ));
    }
    if !meta.is_dir() {
        return Err(bad(source, "not a directory".into()));
    }
    let mut drivers = Vec::new();
    let mut total = 0u64;
    for (name, dir) in subdirs(source, source)? {
        let Some(osdir) = child_ci(source, &dir, os)? else {
            continue;
        };
        let Some(leaf) = child_ci(source, &osdir, arch)? else {
            continue;
        };
        let (files, bytes) = leaf_files(source, &leaf)?;
        if files.is_empty() {
            continue;
        }
        total = total
            .checked_add(bytes)
            .ok_or_else(|| bad(source, "driver sizes overflow".into()))?;
        if total > MAX_TOTAL_BYTES {
            return Err(bad(
                source,
                format!("the drivers for {os}/{arch} exceed {MAX_TOTAL_BYTES} bytes"),
            ));
        }
        drivers.push(Driver {
            name,
            dir: leaf,
            files,
            bytes,
        });
    }
    let ga_names: &[&str] = match arch {
        "amd64" => &["qemu-ga-x86_64.msi", "qemu-ga-x64.msi"],
        "x86" => &["qemu-ga-i386.msi", "qemu-ga-x86.msi"],
        _ => &[],
    };
    let mut guest_agent = None;
    if let Some(ga) = child_ci(source, source, "guest-agent")? {
        let (files, _) = leaf_files(source, &ga)?;
        guest_agent = files
            .iter()
            .find(|f| ga_names.iter().any(|n| f.eq_ignore_ascii_case(n)))
            .map(|f| ga.join(f));
    }
    Ok(Found {
        source: source.to_path_buf(),
        drivers,
        guest_agent,
    })
}

/// The error naming a driver the source lacks for this guest.
pub fn missing(source: &Path, driver: &str, windows: &str, os: &str, arch: &str) -> Error {
    Error::MissingDriver {
        source_path: source.to_path_buf(),
        driver: driver.to_string(),
        windows: windows.to_string(),
        looked_for: format!("{driver}/{os}/{arch}/"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(p: &Path) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"x").unwrap();
    }

    #[test]
    fn picks_exact_os_and_arch_case_insensitively() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        touch(&r.join("viostor/2k19/amd64/viostor.sys"));
        touch(&r.join("viostor/2k19/amd64/viostor.inf"));
        touch(&r.join("viostor/2k16/amd64/viostor.sys"));
        touch(&r.join("NetKVM/2K19/AMD64/netkvm.inf"));
        touch(&r.join("Balloon/w10/amd64/balloon.inf"));
        touch(&r.join("guest-agent/qemu-ga-x86_64.msi"));
        let f = scan(r, "2k19", "amd64").unwrap();
        let names: Vec<String> = f.drivers.iter().map(Driver::id).collect();
        assert_eq!(names, ["netkvm", "viostor"]);
        assert_eq!(f.get("viostor").unwrap().inf(), Some("viostor.inf"));
        assert_eq!(
            f.guest_agent.as_deref(),
            Some(r.join("guest-agent/qemu-ga-x86_64.msi").as_path())
        );
        assert!(scan(r, "2k19", "x86").unwrap().drivers.is_empty());
    }

    #[test]
    fn never_follows_symlinks_or_reads_unsafe_names() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        touch(&r.join("viostor/2k19/amd64/viostor.sys"));
        std::os::unix::fs::symlink("/etc/shadow", r.join("viostor/2k19/amd64/shadow.sys")).unwrap();
        std::os::unix::fs::symlink(r.join("viostor"), r.join("linked")).unwrap();
        let f = scan(r, "2k19", "amd64").unwrap();
        assert_eq!(f.drivers.len(), 1);
        assert_eq!(f.drivers[0].files, ["viostor.sys"]);
        touch(&r.join("viostor/2k19/amd64/bad name.sys"));
        let e = scan(r, "2k19", "amd64").unwrap_err();
        assert!(e.to_string().contains("bad name.sys"), "{e}");
    }

    #[test]
    fn refuses_an_iso_file_with_a_hint() {
        let d = tempfile::tempdir().unwrap();
        let iso = d.path().join("virtio-win.iso");
        std::fs::write(&iso, b"CD001").unwrap();
        let e = scan(&iso, "2k19", "amd64").unwrap_err();
        assert!(e.to_string().contains("extract"), "{e}");
    }

    #[test]
    fn names_the_missing_driver() {
        let e = missing(
            Path::new("/srv/vw"),
            "viostor",
            "Windows Server 2019",
            "2k19",
            "amd64",
        );
        let s = e.to_string();
        assert!(
            s.contains("viostor") && s.contains("viostor/2k19/amd64/"),
            "{s}"
        );
    }

    #[test]
    fn safe_names() {
        assert!(safe_file_name("viostor.inf"));
        assert!(safe_file_name("qemu-ga-x86_64.msi"));
        for bad in ["", "..", "a b", "a'b", "-x", "a\\b", "a/b", "é"] {
            assert!(!safe_file_name(bad), "{bad}");
        }
    }
}
