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
//!
//! The source may also be the virtio-win ISO itself. Its listing is read with `bsdtar`
//! (libarchive reads ISO 9660 with Rock Ridge and Joliet names), the same matching and
//! limits are applied to the listing, and only the matching members are extracted into
//! a private temporary directory, which then goes through the directory checks above.
//! The ISO is never mounted by the host kernel.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use crate::error::{Error, Result};

/// Most top-level driver directories looked at (virtio-win has about 20).
pub(crate) const MAX_DRIVER_DIRS: usize = 256;
/// Most files in one `<driver>/<os>/<arch>` leaf (a driver has 3-10).
pub(crate) const MAX_FILES_PER_DRIVER: usize = 64;
/// Largest single file copied (real drivers are under 1 MiB; DLLs a few MiB).
pub(crate) const MAX_FILE_BYTES: u64 = 64 << 20;
/// Largest total copied into the guest.
pub(crate) const MAX_TOTAL_BYTES: u64 = 512 << 20;
/// Longest file or directory name accepted.
const MAX_NAME: usize = 64;
/// Most entries read from an ISO's listing (virtio-win's has about 3000).
pub(crate) const MAX_ISO_ENTRIES: usize = 100_000;
/// Largest ISO listing read from bsdtar, in bytes.
const MAX_ISO_LISTING: usize = 16 << 20;

/// The drivers v2k needs, whatever else the tree has: without the boot storage driver
/// the guest cannot boot, without NetKVM it is unreachable.
pub(crate) const NET_DRIVER: &str = "netkvm";

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
    /// The leaf directory on the host (for an ISO source, in the extraction directory).
    pub dir: PathBuf,
    /// Where it came from, for the report: the leaf directory, or `ISO:driver/os/arch`.
    pub origin: String,
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
    /// For an ISO source: the private directory the matching files were extracted to,
    /// removed when the last copy of this is dropped.
    pub extracted: Option<Arc<tempfile::TempDir>>,
}

impl Found {
    pub fn get(&self, id: &str) -> Option<&Driver> {
        self.drivers.iter().find(|d| d.id() == id)
    }
}

/// A name safe in a guest path, a registry key and a single-quoted PowerShell string.
pub(crate) fn safe_file_name(s: &str) -> bool {
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
        return scan_iso(source, os, arch);
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
            origin: leaf.display().to_string(),
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
        extracted: None,
    })
}

/// The ISO 9660 signature: "CD001" at byte 1 of sector 16 (ECMA-119 §8.1).
fn is_iso(path: &Path) -> Result<bool> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut sig = [0u8; 5];
    match f.read_exact_at(&mut sig, 16 * 2048 + 1) {
        Ok(()) => Ok(&sig == b"CD001"),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// One regular file of an ISO listing (`bsdtar -tv`): its path and size.
fn parse_listing_line(line: &str) -> Option<(String, u64)> {
    // -r--r--r--  1 0      0       12345 Jan  1  2020 viostor/2k19/amd64/viostor.sys
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() != 9 || !f[0].starts_with('-') {
        return None;
    }
    let size = f[4].parse().ok()?;
    Some((f[8].trim_start_matches("./").to_string(), size))
}

/// Which members of an ISO listing [`scan`] would take for `os`/`arch`: driver leaves
/// `<driver>/<os>/<arch>/<file>` and `guest-agent/<file>`, safe names only, with the
/// same limits as for a directory, checked on the listed sizes before extraction.
fn pick_members(
    iso: &Path,
    listing: &[(String, u64)],
    os: &str,
    arch: &str,
) -> Result<Vec<String>> {
    let mut picked = Vec::new();
    let mut total = 0u64;
    let mut per_leaf: std::collections::BTreeMap<String, usize> = Default::default();
    for (path, size) in listing {
        let parts: Vec<&str> = path.split('/').collect();
        let take = match parts.as_slice() {
            [drv, o, a, file] => {
                o.eq_ignore_ascii_case(os)
                    && a.eq_ignore_ascii_case(arch)
                    && safe_file_name(drv)
                    && safe_file_name(file)
            }
            [ga, file] => ga.eq_ignore_ascii_case("guest-agent") && safe_file_name(file),
            _ => false,
        };
        if !take {
            continue;
        }
        if *size > MAX_FILE_BYTES {
            return Err(bad(
                iso,
                format!("{path}: {size} bytes, over the {MAX_FILE_BYTES}-byte limit for one driver file"),
            ));
        }
        let leaf = path.rsplit_once('/').map_or("", |(d, _)| d).to_string();
        let n = per_leaf.entry(leaf.clone()).or_default();
        *n += 1;
        if *n > MAX_FILES_PER_DRIVER {
            return Err(bad(
                iso,
                format!("{leaf} has more than {MAX_FILES_PER_DRIVER} files"),
            ));
        }
        total = total
            .checked_add(*size)
            .ok_or_else(|| bad(iso, "driver sizes overflow".into()))?;
        if total > MAX_TOTAL_BYTES {
            return Err(bad(
                iso,
                format!("the drivers for {os}/{arch} exceed {MAX_TOTAL_BYTES} bytes"),
            ));
        }
        picked.push(path.clone());
    }
    Ok(picked)
}

fn bsdtar(iso: &Path, args: &[&str], what: &str) -> Result<Vec<u8>> {
    // `-f ISO` first: the extraction's member list ends the arguments after `--`.
    let o = Command::new("bsdtar")
        .arg("-f")
        .arg(iso)
        .args(args)
        .output()
        .map_err(|e| {
            bad(
                iso,
                format!("cannot run bsdtar to {what} (install libarchive-tools): {e}"),
            )
        })?;
    if !o.status.success() {
        return Err(bad(
            iso,
            format!(
                "bsdtar could not {what}: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ),
        ));
    }
    Ok(o.stdout)
}

/// [`scan`] of a virtio-win ISO: list, pick, extract the picked members into a private
/// directory, then scan that directory as any other.
fn scan_iso(iso: &Path, os: &str, arch: &str) -> Result<Found> {
    if !is_iso(iso)? {
        return Err(bad(
            iso,
            "is a file but not an ISO 9660 image: give the virtio-win directory or ISO".into(),
        ));
    }
    let out = bsdtar(iso, &["-tv"], "list the ISO")?;
    if out.len() > MAX_ISO_LISTING {
        return Err(bad(iso, format!("listing over {MAX_ISO_LISTING} bytes")));
    }
    let text = String::from_utf8_lossy(&out);
    if text.lines().count() > MAX_ISO_ENTRIES {
        return Err(bad(iso, format!("more than {MAX_ISO_ENTRIES} entries")));
    }
    let listing: Vec<(String, u64)> = text.lines().filter_map(parse_listing_line).collect();
    let members = pick_members(iso, &listing, os, arch)?;
    let dir = tempfile::Builder::new()
        .prefix("v2k-virtio-win.")
        .tempdir()
        .map_err(|e| Error::io(std::env::temp_dir(), e))?;
    if !members.is_empty() {
        let mut args: Vec<&str> = vec![
            "-x",
            "--no-same-owner",
            "--no-same-permissions",
            "-C",
            dir.path()
                .to_str()
                .ok_or_else(|| bad(iso, "temporary path is not UTF-8".into()))?,
        ];
        args.push("--");
        args.extend(members.iter().map(String::as_str));
        bsdtar(iso, &args, "extract the drivers")?;
    }
    let mut found = scan(dir.path(), os, arch)?;
    for d in &mut found.drivers {
        let rel = d.dir.strip_prefix(dir.path()).unwrap_or(&d.dir);
        d.origin = format!("{}:{}", iso.display(), rel.display());
    }
    found.source = iso.to_path_buf();
    found.extracted = Some(Arc::new(dir));
    Ok(found)
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

    /// Two drivers for 2k19/amd64 (in mixed case), others that must not match, an agent.
    fn sample_tree(r: &Path) {
        touch(&r.join("viostor/2k19/amd64/viostor.sys"));
        touch(&r.join("viostor/2k19/amd64/viostor.inf"));
        touch(&r.join("viostor/2k16/amd64/viostor.sys"));
        touch(&r.join("NetKVM/2K19/AMD64/netkvm.inf"));
        touch(&r.join("Balloon/w10/amd64/balloon.inf"));
        touch(&r.join("guest-agent/qemu-ga-x86_64.msi"));
    }

    #[test]
    fn picks_exact_os_and_arch_case_insensitively() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        sample_tree(r);
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
    fn refuses_a_file_that_is_not_an_iso() {
        let d = tempfile::tempdir().unwrap();
        let iso = d.path().join("virtio-win.iso");
        std::fs::write(&iso, b"CD001").unwrap();
        let e = scan(&iso, "2k19", "amd64").unwrap_err();
        assert!(e.to_string().contains("not an ISO 9660 image"), "{e}");
    }

    /// An ISO with Rock Ridge names built by xorriso from a tree.
    fn iso_of(tree: &Path, iso: &Path) {
        let o = Command::new("xorriso")
            .args(["-as", "mkisofs", "-quiet", "-R", "-J", "-o"])
            .arg(iso)
            .arg(tree)
            .output()
            .expect("xorriso (run scripts/setup.sh)");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }

    #[test]
    fn reads_an_iso_like_the_directory_and_extracts_only_what_matches() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path().join("tree");
        sample_tree(&r);
        let iso = d.path().join("virtio-win.iso");
        iso_of(&r, &iso);
        let from_dir = scan(&r, "2k19", "amd64").unwrap();
        let from_iso = scan(&iso, "2k19", "amd64").unwrap();
        assert_eq!(from_iso.source, iso);
        let ids = |f: &Found| -> Vec<(String, Vec<String>)> {
            f.drivers
                .iter()
                .map(|d| (d.id(), d.files.clone()))
                .collect()
        };
        assert_eq!(ids(&from_iso), ids(&from_dir));
        let vs = from_iso.get("viostor").unwrap();
        assert_eq!(vs.origin, format!("{}:viostor/2k19/amd64", iso.display()));
        let ga = from_iso.guest_agent.clone().unwrap();
        assert_eq!(ga.file_name().unwrap(), "qemu-ga-x86_64.msi");
        // Only the matching members left the ISO.
        let tmp = from_iso.extracted.clone().unwrap();
        assert!(!tmp.path().join("viostor/2k16").exists());
        assert!(!tmp.path().join("Balloon").exists());
        let dir = tmp.path().to_path_buf();
        drop(tmp);
        drop(from_iso);
        assert!(!dir.exists(), "the extraction directory outlived its use");
    }

    #[test]
    fn an_iso_listing_over_the_limits_is_refused_before_extraction() {
        let iso = Path::new("/srv/virtio-win.iso");
        let big = vec![(
            "viostor/2k19/amd64/viostor.sys".to_string(),
            MAX_FILE_BYTES + 1,
        )];
        let e = pick_members(iso, &big, "2k19", "amd64").unwrap_err();
        assert!(e.to_string().contains("limit"), "{e}");
        let many: Vec<(String, u64)> = (0..=MAX_FILES_PER_DRIVER)
            .map(|i| (format!("viostor/2k19/amd64/f{i}.sys"), 1))
            .collect();
        assert!(pick_members(iso, &many, "2k19", "amd64").is_err());
        // Unsafe names and other layouts are not picked at all.
        let odd = vec![
            ("viostor/2k19/amd64/a b.sys".to_string(), 1),
            ("../2k19/amd64/x.sys".to_string(), 1),
            ("viostor/2k19/amd64/sub/x.sys".to_string(), 1),
        ];
        assert!(pick_members(iso, &odd, "2k19", "amd64").unwrap().is_empty());
    }

    #[test]
    fn parses_bsdtar_listing_lines() {
        assert_eq!(
            parse_listing_line(
                "-r--r--r--  1 0      0       12345 Jan  1  2020 ./viostor/2k19/amd64/viostor.sys"
            ),
            Some(("viostor/2k19/amd64/viostor.sys".into(), 12345))
        );
        assert_eq!(
            parse_listing_line("dr-xr-xr-x  2 0      0        2048 Jan  1  2020 viostor"),
            None
        );
        assert_eq!(
            parse_listing_line("lrwxrwxrwx  1 0 0 0 Jan 1 2020 a -> b"),
            None
        );
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
