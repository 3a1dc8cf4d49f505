//! Errors of the injector: one enum whose messages name the disk, the guest file or the
//! appliance call that failed. [`Error::kind`] tells a caller whether the guest was
//! refused before anything changed, or whether something broke.

use std::path::PathBuf;

/// What kind of failure, for callers that branch (exit codes, batch reports).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The guest is not one we convert (no OS, Windows, unknown distribution, no
    /// virtio-capable kernel, encrypted root...). Nothing was changed.
    Refused,
    /// Bad input from the caller (a disk that is not a QCOW2 output, a bad network map).
    Input,
    /// libguestfs or a guest tool failed; the guest may be partly changed.
    Guest,
    /// A host file could not be read or written.
    Io,
}

/// Everything that stops an injection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("refused: {0}")]
    Refused(String),
    #[error("{path}: {message}")]
    Disk { path: PathBuf, message: String },
    #[error("{0}")]
    Input(String),
    #[error("libguestfs {call}: {message}")]
    Guestfs { call: String, message: String },
    #[error("in the guest, {what}: {message}")]
    GuestTool { what: String, message: String },
    /// A Windows registry hive that cannot be read (damaged, truncated, not a hive).
    #[error("registry hive {path}: {message}")]
    Hive { path: String, message: String },
    /// The virtio-win source has no driver the Windows guest needs.
    #[error(
        "virtio-win {}: no {driver} driver for {windows} (looked for {looked_for})",
        source_path.display()
    )]
    MissingDriver {
        source_path: PathBuf,
        driver: String,
        windows: String,
        looked_for: String,
    },
    /// The virtio-win source itself is unusable.
    #[error("virtio-win {}: {message}", path.display())]
    VirtioWin { path: PathBuf, message: String },
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Refused(_) => ErrorKind::Refused,
            // A damaged hive is found while reading, before any write.
            Error::Hive { .. } => ErrorKind::Refused,
            Error::Disk { .. }
            | Error::Input(_)
            | Error::MissingDriver { .. }
            | Error::VirtioWin { .. } => ErrorKind::Input,
            Error::Guestfs { .. } | Error::GuestTool { .. } => ErrorKind::Guest,
            Error::Io { .. } => ErrorKind::Io,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
