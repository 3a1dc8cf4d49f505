//! Output files of the converters, through the workspace's one file-creation helper
//! (`v2k-outfile`): a fresh unpredictable temporary name created with
//! `O_EXCL | O_NOFOLLOW` in the destination directory held by descriptor, fsync,
//! rename, directory fsync; a lock against a second writer of the same output. A run
//! killed at any moment leaves nothing under the final name; a failed one removes its
//! temporary file. The names below are kept for the crates that still call them.

use std::path::Path;

use crate::error::Result;

/// An output file being written (see [`v2k_outfile::OutFile`]).
pub use v2k_outfile::OutFile as PartialFile;

/// Writes a small file atomically, replacing a regular file of that name (never a
/// link or special file). New code calls `v2k_outfile::write_atomic` directly.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(v2k_outfile::write_atomic(path, bytes, true)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn leftovers(dir: &Path) -> usize {
        std::fs::read_dir(dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .contains(".v2k-")
            })
            .count()
    }

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
        assert_eq!(leftovers(d.path()), 0);
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
        assert_eq!(leftovers(d.path()), 0);
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
