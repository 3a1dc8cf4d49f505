//! Raw output: a sparse file of the virtual size whose all-zero clusters are left
//! as holes, or an existing block device written in full (zeros included: a device
//! has no holes and may hold old data).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

pub struct RawWriter<'f> {
    file: &'f File,
    path: PathBuf,
    size: u64,
    written: u64,
    /// Writing into a block device: nothing is a hole, every byte up to `size` is
    /// written (zeros included), since the device may hold old data.
    device: bool,
    /// For a device: every byte before this offset has been written.
    filled: u64,
}

/// Zeros written per step when filling a device's gaps.
const ZERO_STEP: usize = 1 << 20;

impl<'f> RawWriter<'f> {
    /// A raw output of `size` bytes in `file` (a new regular file, or with `device` an
    /// existing block device of at least `size` bytes).
    pub fn new(file: &'f File, path: &Path, size: u64, device: bool) -> Result<Self> {
        if device {
            let dev_size = device_size(file, path)?;
            if dev_size < size {
                return Err(Error::Usage(format!(
                    "{}: the device holds {dev_size} bytes, the disk needs {size}",
                    path.display()
                )));
            }
        } else {
            // Setting the length first makes every unwritten range a hole.
            file.set_len(size)
                .map_err(|e| Error::io(path, "sizing the output", e))?;
        }
        Ok(RawWriter {
            file,
            path: path.to_path_buf(),
            size,
            written: 0,
            device,
            filled: 0,
        })
    }

    /// Writes `data` at virtual `offset`; bytes past the virtual size are dropped
    /// (the caller's buffers are cluster-padded). Offsets only grow (the converters
    /// write in disk order), which is what lets a device's gaps be zeroed on the way.
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        let end = (offset + data.len() as u64).min(self.size);
        if end <= offset {
            return Ok(());
        }
        if self.device {
            self.zero_to(offset)?;
        }
        let n = (end - offset) as usize;
        self.file
            .write_all_at(&data[..n], offset)
            .map_err(|e| Error::io(&self.path, "writing data", e))?;
        self.written += n as u64;
        self.filled = self.filled.max(end);
        Ok(())
    }

    /// For a device: writes zeros over `[filled, to)`.
    fn zero_to(&mut self, to: u64) -> Result<()> {
        if self.filled >= to {
            return Ok(());
        }
        let zeros = vec![0u8; ZERO_STEP];
        while self.filled < to {
            let n = (to - self.filled).min(ZERO_STEP as u64) as usize;
            self.file
                .write_all_at(&zeros[..n], self.filled)
                .map_err(|e| Error::io(&self.path, "zeroing the device", e))?;
            self.filled += n as u64;
        }
        Ok(())
    }

    /// Bytes of data written (the rest are holes, or zeros written into a device).
    pub fn finish(mut self) -> Result<u64> {
        if self.device {
            self.zero_to(self.size)?;
        }
        Ok(self.written)
    }
}

/// The size of a block device (its end, found by seeking there).
pub fn device_size(file: &File, path: &Path) -> Result<u64> {
    rustix::fs::seek(file, rustix::fs::SeekFrom::End(0))
        .map_err(|e| Error::io(path, "reading the size of the device", e.into()))
}
