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

/// Why [`resolve_inside`] refused a file name. An I/O error is kept as a field (and
/// written into the one-line message, which callers embed in their own) rather than as
/// a `#[source]`, so the message alone says everything.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NameRefused {
    #[error("empty file name")]
    Empty,
    #[error("file name {name:?} contains NUL")]
    Nul { name: String },
    #[error("file name {name:?} contains a backslash (a Windows path?)")]
    Backslash { name: String },
    #[error("file name {name:?} is a URL")]
    Url { name: String },
    #[error("file name {name:?} climbs out with `..`")]
    ClimbsOut { name: String },
    #[error("file name {name:?} is absolute")]
    Absolute { name: String },
    #[error("file name {name:?} names no file")]
    NamesNoFile { name: String },
    /// A component on the way could not be looked at (missing, no permission).
    #[error("{name:?}: {}: {error}", at.display())]
    ComponentUnreadable {
        name: String,
        at: PathBuf,
        error: std::io::Error,
    },
    #[error("{name:?}: {} is a symbolic link", at.display())]
    SymbolicLink { name: String, at: PathBuf },
    /// The file itself could not be looked at.
    #[error("{}: {error}", at.display())]
    Unreadable { at: PathBuf, error: std::io::Error },
    #[error("{name:?} is a directory")]
    Directory { name: String },
    #[error("{name:?} is a device node")]
    DeviceNode { name: String },
    #[error("{name:?} is a FIFO or socket")]
    FifoOrSocket { name: String },
    #[error("{name:?} is not a regular file")]
    NotRegular { name: String },
}

/// Resolves `name` inside `dir`; the result is a regular file reached without
/// following any symlink below `dir`. The error says why the name was refused.
pub(crate) fn resolve_inside(dir: &Path, name: &str) -> Result<PathBuf, NameRefused> {
    let named = || name.to_string();
    if name.is_empty() {
        return Err(NameRefused::Empty);
    }
    if name.contains('\0') {
        return Err(NameRefused::Nul { name: named() });
    }
    if name.contains('\\') {
        return Err(NameRefused::Backslash { name: named() });
    }
    if name.contains("://") || name.starts_with("file:") {
        return Err(NameRefused::Url { name: named() });
    }
    let rel = Path::new(name);
    let mut current = dir.to_path_buf();
    let mut seen_normal = false;
    for comp in rel.components() {
        match comp {
            Component::Normal(part) => {
                current.push(part);
                seen_normal = true;
                let meta = fs::symlink_metadata(&current).map_err(|error| {
                    NameRefused::ComponentUnreadable {
                        name: named(),
                        at: current.clone(),
                        error,
                    }
                })?;
                let ft = meta.file_type();
                if ft.is_symlink() {
                    return Err(NameRefused::SymbolicLink {
                        name: named(),
                        at: current,
                    });
                }
            }
            Component::CurDir => {}
            Component::ParentDir => return Err(NameRefused::ClimbsOut { name: named() }),
            Component::RootDir | Component::Prefix(_) => {
                return Err(NameRefused::Absolute { name: named() });
            }
        }
    }
    if !seen_normal {
        return Err(NameRefused::NamesNoFile { name: named() });
    }
    let meta = fs::symlink_metadata(&current).map_err(|error| NameRefused::Unreadable {
        at: current.clone(),
        error,
    })?;
    let ft = meta.file_type();
    if ft.is_dir() {
        return Err(NameRefused::Directory { name: named() });
    }
    if ft.is_block_device() || ft.is_char_device() {
        return Err(NameRefused::DeviceNode { name: named() });
    }
    if ft.is_fifo() || ft.is_socket() {
        return Err(NameRefused::FifoOrSocket { name: named() });
    }
    if !ft.is_file() {
        return Err(NameRefused::NotRegular { name: named() });
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
    fn refusals_are_typed_errors() {
        let t = setup();
        let dir = t.path().join("vm");
        assert!(matches!(
            resolve_inside(&dir, "../secret"),
            Err(NameRefused::ClimbsOut { name }) if name == "../secret"
        ));
        assert!(matches!(
            resolve_inside(&dir, "sub"),
            Err(NameRefused::Directory { .. })
        ));
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
            .to_string()
            .contains("symbolic link"));
        assert!(resolve_inside(&dir, "up/secret")
            .unwrap_err()
            .to_string()
            .contains("symbolic link"));
    }

    #[test]
    fn rejects_directory_and_fifo() {
        let t = setup();
        let dir = t.path().join("vm");
        assert!(resolve_inside(&dir, "sub")
            .unwrap_err()
            .to_string()
            .contains("directory"));
        let fifo = dir.join("pipe");
        assert!(std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success());
        assert!(resolve_inside(&dir, "pipe")
            .unwrap_err()
            .to_string()
            .contains("FIFO"));
    }
}
