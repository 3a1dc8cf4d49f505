//! Containment of file names that a VM file gives us (VMX `fileName`, OVF `href`,
//! tar member names): resolved component by component inside the directory they
//! belong to, never by string prefix.
//!
//! Refused: empty names, absolute paths, `..`, backslashes, NUL, URL schemes and drive
//! letters (`http://`, `file:`, `C:`), percent-encoded traversal (`%2e%2e`), and on disk
//! a symlink at any component, or a last component that is not a regular file (device,
//! FIFO, socket, directory). CVE-2022-47951 is the reason: a disk name pointing at a
//! host file made qemu-img copy that file into the image.

use std::path::{Path, PathBuf};

/// Why a name was refused, for the error or concern message.
pub type Reason = String;

/// Splits a relative name into checked components. `decode` percent-decodes first
/// (OVF `href`s are URIs); the raw form is always checked too, so `%2e%2e` is refused
/// whichever way a later tool reads it.
pub fn check_relative(raw: &str, decode: bool) -> Result<Vec<String>, Reason> {
    let raw_checked = check_components(raw)?;
    match percent_decode(raw) {
        Some(decoded) => {
            let decoded_checked = check_components(&decoded)?;
            Ok(if decode { decoded_checked } else { raw_checked })
        }
        // A VMX name is not a URI: a stray `%` is just a character there.
        None if !decode => Ok(raw_checked),
        None => Err("bad percent-encoding".into()),
    }
}

fn check_components(name: &str) -> Result<Vec<String>, Reason> {
    if name.is_empty() {
        return Err("empty name".into());
    }
    if name.contains('\0') {
        return Err("contains a NUL byte".into());
    }
    if name.contains('\\') {
        return Err("contains a backslash".into());
    }
    if name.starts_with('/') {
        return Err("absolute path".into());
    }
    let mut out = Vec::new();
    for (i, comp) in name.split('/').enumerate() {
        match comp {
            "" => return Err("empty path component".into()),
            "." => continue,
            ".." => return Err("parent-directory component".into()),
            c if i == 0 && c.contains(':') => {
                return Err("URL scheme or drive letter".into());
            }
            c => out.push(c.to_string()),
        }
    }
    if out.is_empty() {
        return Err("names no file".into());
    }
    Ok(out)
}

/// `%XX` decoding; `None` on a malformed escape or a result that is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_string());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Outcome of resolving a name on disk.
#[derive(Debug, PartialEq, Eq)]
pub enum Resolved {
    /// A regular file inside `base`, reached without any symlink.
    File(PathBuf),
    /// Some component does not exist.
    Missing(PathBuf),
}

/// Resolves `raw` inside `base` (which the caller has made absolute), checking every
/// component with `lstat`.
pub fn resolve_in(base: &Path, raw: &str, decode: bool) -> Result<Resolved, Reason> {
    let comps = check_relative(raw, decode)?;
    let mut cur = base.to_path_buf();
    let last = comps.len() - 1;
    for (i, comp) in comps.iter().enumerate() {
        cur.push(comp);
        let meta = match std::fs::symlink_metadata(&cur) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Resolved::Missing(cur))
            }
            Err(e) => return Err(format!("cannot stat {}: {e}", cur.display())),
        };
        let ft = meta.file_type();
        if ft.is_symlink() {
            return Err(format!("{} is a symlink", cur.display()));
        }
        if i < last {
            if !ft.is_dir() {
                return Err(format!("{} is not a directory", cur.display()));
            }
        } else if !ft.is_file() {
            let what = if ft.is_dir() {
                "a directory"
            } else {
                "not a regular file (device, FIFO or socket)"
            };
            return Err(format!("{} is {what}", cur.display()));
        }
    }
    Ok(Resolved::File(cur))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_and_nested_relative_names() {
        assert_eq!(
            check_relative("disk.vmdk", false).unwrap(),
            vec!["disk.vmdk"]
        );
        assert_eq!(
            check_relative("./a/b.vmdk", false).unwrap(),
            vec!["a", "b.vmdk"]
        );
        assert_eq!(
            check_relative("my%20disk.vmdk", true).unwrap(),
            vec!["my disk.vmdk"]
        );
    }

    #[test]
    fn refuses_every_traversal_shape_from_security_md() {
        for bad in [
            "../x",
            "a/../../b",
            "/etc/shadow",
            "http://evil/x.vmdk",
            "file:///etc/passwd",
            "%2e%2e/x",
            "%2E%2E/x",
            "a\\..\\b",
            "C:\\vm\\x.vmdk",
            "",
            "a//b",
            "x\0y",
        ] {
            assert!(
                check_relative(bad, true).is_err(),
                "{bad:?} accepted with decoding"
            );
            assert!(
                check_relative(bad, false).is_err(),
                "{bad:?} accepted without decoding"
            );
        }
        assert!(check_relative("%zz", true).is_err());
        assert!(check_relative("100%.vmdk", false).is_ok());
    }

    #[cfg(unix)]
    #[test]
    fn refuses_symlinks_in_any_component_and_non_regular_files() {
        let d = tempfile::tempdir().unwrap();
        let base = d.path();
        std::fs::create_dir(base.join("real")).unwrap();
        std::fs::write(base.join("real/x.vmdk"), b"x").unwrap();
        std::os::unix::fs::symlink(base.join("real"), base.join("link")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", base.join("last.vmdk")).unwrap();
        assert!(matches!(
            resolve_in(base, "real/x.vmdk", false),
            Ok(Resolved::File(_))
        ));
        assert!(resolve_in(base, "link/x.vmdk", false)
            .unwrap_err()
            .contains("symlink"));
        assert!(resolve_in(base, "last.vmdk", false)
            .unwrap_err()
            .contains("symlink"));
        assert!(resolve_in(base, "real", false)
            .unwrap_err()
            .contains("directory"));
        assert!(matches!(
            resolve_in(base, "nope.vmdk", false),
            Ok(Resolved::Missing(_))
        ));
    }

    #[cfg(unix)]
    #[test]
    fn refuses_a_fifo_as_disk_file() {
        let d = tempfile::tempdir().unwrap();
        let st = std::process::Command::new("mkfifo")
            .arg(d.path().join("f.vmdk"))
            .status();
        if st.map(|s| s.success()).unwrap_or(false) {
            assert!(resolve_in(d.path(), "f.vmdk", false)
                .unwrap_err()
                .contains("regular"));
        }
    }
}
