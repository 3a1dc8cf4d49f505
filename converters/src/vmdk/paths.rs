//! Containment of file names that a VMDK gives us (extent files, parent disks).
//!
//! A descriptor is untrusted: CVE-2022-47951 was a flat extent naming a host file,
//! which qemu-img then copied into the output image. A name is resolved component
//! by component inside the directory of the file that named it; `..`, absolute
//! paths, symlinks at any depth, device nodes, FIFOs, sockets and directories are
//! refused. A string-prefix check would not be enough (`dir/../dir2`, symlinks).

use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::path::{Component, Path, PathBuf};

/// Resolves `name` inside `dir`; the result is a regular file reached without
/// following any symlink below `dir`. The error says why the name was refused.
pub fn resolve_inside(dir: &Path, name: &str) -> Result<PathBuf, String> {
    if name.is_empty() {
        return Err("empty file name".into());
    }
    if name.contains('\0') {
        return Err(format!("file name {name:?} contains NUL"));
    }
    if name.contains('\\') {
        return Err(format!(
            "file name {name:?} contains a backslash (a Windows path?)"
        ));
    }
    if name.contains("://") || name.starts_with("file:") {
        return Err(format!("file name {name:?} is a URL"));
    }
    let rel = Path::new(name);
    let mut current = dir.to_path_buf();
    let mut seen_normal = false;
    for comp in rel.components() {
        match comp {
            Component::Normal(part) => {
                current.push(part);
                seen_normal = true;
                let meta = fs::symlink_metadata(&current)
                    .map_err(|e| format!("{name:?}: {}: {e}", current.display()))?;
                let ft = meta.file_type();
                if ft.is_symlink() {
                    return Err(format!(
                        "{name:?}: {} is a symbolic link",
                        current.display()
                    ));
                }
            }
            Component::CurDir => {}
            Component::ParentDir => return Err(format!("file name {name:?} climbs out with `..`")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!("file name {name:?} is absolute"));
            }
        }
    }
    if !seen_normal {
        return Err(format!("file name {name:?} names no file"));
    }
    let meta = fs::symlink_metadata(&current).map_err(|e| format!("{}: {e}", current.display()))?;
    let ft = meta.file_type();
    if ft.is_dir() {
        return Err(format!("{name:?} is a directory"));
    }
    if ft.is_block_device() || ft.is_char_device() {
        return Err(format!("{name:?} is a device node"));
    }
    if ft.is_fifo() || ft.is_socket() {
        return Err(format!("{name:?} is a FIFO or socket"));
    }
    if !ft.is_file() {
        return Err(format!("{name:?} is not a regular file"));
    }
    Ok(current)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn setup() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir(t.path().join("vm")).unwrap();
        fs::create_dir(t.path().join("vm/sub")).unwrap();
        fs::write(t.path().join("vm/disk-flat.vmdk"), b"x").unwrap();
        fs::write(t.path().join("vm/sub/inner.vmdk"), b"x").unwrap();
        fs::write(t.path().join("secret"), b"x").unwrap();
        t
    }

    #[test]
    fn accepts_plain_and_nested_names() {
        let t = setup();
        let dir = t.path().join("vm");
        assert_eq!(
            resolve_inside(&dir, "disk-flat.vmdk").unwrap(),
            dir.join("disk-flat.vmdk")
        );
        assert_eq!(
            resolve_inside(&dir, "./sub/inner.vmdk").unwrap(),
            dir.join("sub/inner.vmdk")
        );
    }

    #[test]
    fn rejects_extent_path_outside_descriptor_dir() {
        let t = setup();
        let dir = t.path().join("vm");
        for bad in [
            "../secret",
            "sub/../../secret",
            "/etc/passwd",
            "/dev/sda",
            "/proc/self/fd/0",
            "a\\b",
            "file:///etc/shadow",
            "http://x/y",
        ] {
            assert!(resolve_inside(&dir, bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn rejects_symlink_last_or_middle_component() {
        let t = setup();
        let dir = t.path().join("vm");
        symlink(t.path().join("secret"), dir.join("link.vmdk")).unwrap();
        symlink(t.path(), dir.join("up")).unwrap();
        assert!(resolve_inside(&dir, "link.vmdk")
            .unwrap_err()
            .contains("symbolic link"));
        assert!(resolve_inside(&dir, "up/secret")
            .unwrap_err()
            .contains("symbolic link"));
    }

    #[test]
    fn rejects_directory_and_fifo() {
        let t = setup();
        let dir = t.path().join("vm");
        assert!(resolve_inside(&dir, "sub")
            .unwrap_err()
            .contains("directory"));
        let fifo = dir.join("pipe");
        assert!(std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success());
        assert!(resolve_inside(&dir, "pipe").unwrap_err().contains("FIFO"));
    }
}
