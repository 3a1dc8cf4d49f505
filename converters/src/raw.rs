//! Raw output: a sparse file of the virtual size whose all-zero clusters are left
//! as holes, and its read-back.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

pub struct RawWriter<'f> {
    file: &'f File,
    path: PathBuf,
    size: u64,
    written: u64,
}

impl<'f> RawWriter<'f> {
    pub fn new(file: &'f File, path: &Path, size: u64) -> Result<Self> {
        // Setting the length first makes every unwritten range a hole.
        file.set_len(size)
            .map_err(|e| Error::io(path, "sizing the output", e))?;
        Ok(RawWriter {
            file,
            path: path.to_path_buf(),
            size,
            written: 0,
        })
    }

    /// Writes `data` at virtual `offset`; bytes past the virtual size are dropped
    /// (the caller's buffers are cluster-padded).
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        let end = (offset + data.len() as u64).min(self.size);
        if end <= offset {
            return Ok(());
        }
        let n = (end - offset) as usize;
        self.file
            .write_all_at(&data[..n], offset)
            .map_err(|e| Error::io(&self.path, "writing data", e))?;
        self.written += n as u64;
        Ok(())
    }

    /// Bytes of data written (the rest are holes).
    pub fn finish(self) -> u64 {
        self.written
    }
}
