//! Opening and reading input files that someone else named: a VMX, OVF, OVA, `.mf`,
//! VMDK descriptor or extent, a wave plan, a password file.
//!
//! Such a name may be a FIFO (opening it for reading blocks until a writer comes),
//! `/dev/zero` or `/dev/urandom` (endless), a socket, a directory, or a link to any of
//! them. [`open`] opens without blocking (`O_NONBLOCK`, cleared once the type is
//! known), checks the type with `fstat` on the descriptor it will read (no window
//! between check and use) and refuses anything but a regular file. [`read`] then
//! bounds the read itself (`take(limit + 1)`), never trusting `metadata().len()`,
//! which a growing file or a special file makes meaningless.
//!
//! Errors are `std::io::Error`s so that each crate's own "reading PATH" error carries
//! them unchanged: [`io::ErrorKind::InvalidInput`] for a file of the wrong type,
//! [`io::ErrorKind::FileTooLarge`] for one over its limit.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// Opens `path` for reading if it is a regular file (following links, as any open
/// does, but judging what they lead to). Never blocks on a FIFO.
pub fn open(path: &Path) -> io::Result<File> {
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
    {
        Ok(f) => f,
        // A socket cannot be opened at all (ENXIO, "No such device or address"): say
        // what it is instead.
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
            return match std::fs::metadata(path) {
                Ok(m) if !m.is_file() => Err(not_regular(&m.file_type())),
                _ => Err(e),
            }
        }
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(not_regular(&meta.file_type()));
    }
    // A regular file never blocks, but later readers should see ordinary semantics.
    let flags = rustix::fs::fcntl_getfl(&file)?;
    rustix::fs::fcntl_setfl(&file, flags - rustix::fs::OFlags::NONBLOCK)?;
    Ok(file)
}

/// Reads the whole of `path` (a regular file, see [`open`]), refusing it when it holds
/// more than `limit` bytes; `what` names the file in that refusal ("wave plan").
pub fn read(path: &Path, limit: u64, what: &str) -> io::Result<Vec<u8>> {
    read_from(open(path)?, limit, what)
}

/// As [`read`], for text: invalid UTF-8 is an `InvalidData` error.
pub fn read_to_string(path: &Path, limit: u64, what: &str) -> io::Result<String> {
    String::from_utf8(read(path, limit, what)?).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the {what} is not valid UTF-8"),
        )
    })
}

/// Reads at most `limit` bytes of `file`, and refuses it if one more is there.
pub fn read_from(file: File, limit: u64, what: &str) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    file.take(limit.saturating_add(1)).read_to_end(&mut buf)?;
    if buf.len() as u64 > limit {
        return Err(too_large(limit, what));
    }
    Ok(buf)
}

/// The error for a file over its limit (also for callers that bound reads of their
/// own, such as a tar member).
pub(crate) fn too_large(limit: u64, what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::FileTooLarge,
        format!("more than {limit} bytes, the limit for a {what}"),
    )
}

fn not_regular(t: &std::fs::FileType) -> io::Error {
    let kind = if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else {
        "not a regular file"
    };
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{kind}, where a regular file is expected"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_a_fifo_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("fifo");
        rustix::fs::mkfifoat(rustix::fs::CWD, &p, rustix::fs::Mode::from_raw_mode(0o600)).unwrap();
        let e = open(&p).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("a FIFO"), "{e}");
    }

    #[test]
    fn refuses_dev_zero_and_a_link_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("plan.yaml");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        for p in [Path::new("/dev/zero"), &link] {
            let e = read(p, 1 << 20, "plan").unwrap_err();
            assert!(e.to_string().contains("a character device"), "{e}");
        }
    }

    #[test]
    fn refuses_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let e = open(dir.path()).unwrap_err();
        assert!(e.to_string().contains("a directory"), "{e}");
    }

    #[test]
    fn bounds_the_read_itself() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"12345").unwrap();
        assert_eq!(read(&p, 5, "test file").unwrap(), b"12345");
        let e = read(&p, 4, "test file").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::FileTooLarge);
        assert!(e.to_string().contains("limit for a test file"), "{e}");
    }

    #[test]
    fn reads_a_regular_file_with_blocking_semantics_restored() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"x").unwrap();
        let f = open(&p).unwrap();
        let fl = rustix::fs::fcntl_getfl(&f).unwrap();
        assert!(!fl.contains(rustix::fs::OFlags::NONBLOCK));
    }
}
