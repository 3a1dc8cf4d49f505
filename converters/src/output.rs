//! Crash-safe output files: written under a hidden temporary name in the same
//! directory, then fsync, rename, fsync of the directory. A run killed at any moment
//! leaves nothing under the final name; a failed one removes its temporary file.
//! The temporary name is fixed per output (`.NAME.v2k-partial`) and locked, so a
//! stale one from a killed run is reused rather than piling up, and two runs
//! writing the same output cannot interleave.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// An output file being written.
pub struct PartialFile {
    final_path: PathBuf,
    tmp_path: PathBuf,
    file: Option<File>,
}

/// The temporary name used while `final_path` is being written.
pub fn partial_path(final_path: &Path) -> PathBuf {
    let name = final_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    final_path.with_file_name(format!(".{name}.v2k-partial"))
}

impl PartialFile {
    /// Creates (or takes over a stale) temporary file for `final_path`. Refuses when
    /// `final_path` exists unless `overwrite`, and when another process is writing it.
    pub fn create(final_path: &Path, overwrite: bool) -> Result<Self> {
        if final_path.file_name().is_none() {
            return Err(Error::Usage(format!(
                "{}: output path names no file",
                final_path.display()
            )));
        }
        if !overwrite && final_path.exists() {
            return Err(Error::Usage(format!(
                "{}: output exists (use --force to replace it)",
                final_path.display()
            )));
        }
        let tmp_path = partial_path(final_path);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&tmp_path)
            .map_err(|e| Error::io(&tmp_path, "creating the temporary output", e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::Usage(format!(
                    "{}: another v2k process is writing this output",
                    final_path.display()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(Error::io(&tmp_path, "locking the temporary output", e))
            }
        }
        file.set_len(0)
            .map_err(|e| Error::io(&tmp_path, "truncating the temporary output", e))?;
        Ok(PartialFile {
            final_path: final_path.to_path_buf(),
            tmp_path,
            file: Some(file),
        })
    }

    pub fn file(&self) -> &File {
        self.file.as_ref().expect("file is present until commit")
    }

    pub fn tmp_path(&self) -> &Path {
        &self.tmp_path
    }

    pub fn final_path(&self) -> &Path {
        &self.final_path
    }

    /// fsync, rename to the final name, fsync the directory.
    pub fn commit(mut self) -> Result<()> {
        let file = self.file.take().expect("file is present until commit");
        file.sync_all()
            .map_err(|e| Error::io(&self.tmp_path, "syncing the output", e))?;
        std::fs::rename(&self.tmp_path, &self.final_path).map_err(|e| {
            Error::io(
                &self.final_path,
                "renaming the finished output into place",
                e,
            )
        })?;
        drop(file);
        sync_dir(&self.final_path)
    }
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp_path);
        }
    }
}

/// fsyncs the directory holding `path`, so that a rename survives a crash.
pub fn sync_dir(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, "syncing the directory", e))
}

/// Writes a small file atomically (temporary name, fsync, rename, directory fsync).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let p = PartialFile::create(path, true)?;
    use std::io::Write;
    let mut f = p.file();
    f.write_all(bytes)
        .map_err(|e| Error::io(p.tmp_path(), "writing", e))?;
    p.commit()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn nothing_appears_under_the_final_name_until_commit() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("disk.qcow2");
        let p = PartialFile::create(&out, false).unwrap();
        p.file().write_all(b"data").unwrap();
        assert!(!out.exists());
        assert!(p.tmp_path().exists());
        p.commit().unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"data");
        assert!(!partial_path(&out).exists());
    }

    #[test]
    fn a_dropped_partial_file_is_removed() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("disk.qcow2");
        {
            let p = PartialFile::create(&out, false).unwrap();
            p.file().write_all(b"half").unwrap();
        }
        assert!(!out.exists());
        assert!(!partial_path(&out).exists());
    }

    #[test]
    fn refuses_existing_output_and_concurrent_writer() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("disk.qcow2");
        std::fs::write(&out, b"old").unwrap();
        assert!(PartialFile::create(&out, false).is_err());
        let a = PartialFile::create(&out, true).unwrap();
        let e = PartialFile::create(&out, true).err().unwrap();
        assert!(e.to_string().contains("another v2k process"), "{e}");
        drop(a);
        assert_eq!(std::fs::read(&out).unwrap(), b"old");
    }
}
