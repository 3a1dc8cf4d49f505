//! Errors of the converters crate: each names the file it is about and the field or
//! step that failed, so that the binary can print one clear line.

use std::path::PathBuf;

/// What went wrong, with the file it concerns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file failed at the OS level.
    #[error("{path}: {what}")]
    Io {
        path: PathBuf,
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The input is not what it claims to be, or breaks a limit.
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    /// The input is valid but uses something v2k deliberately does not convert.
    #[error("{path}: {message}")]
    Unsupported { path: PathBuf, message: String },
    /// The VMDK reader library refused the image.
    #[error("{path}: {what}")]
    Vmdk {
        path: PathBuf,
        what: String,
        #[source]
        source: vmdk::VmdkError,
    },
    /// The output read back does not hash to what was read from the source.
    #[error("{path}: verification failed: source content hash {expected}, output {actual}")]
    VerifyMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    /// The caller asked for something impossible (bad option value).
    #[error("{0}")]
    Usage(String),
    /// Creating or committing an output file failed, or was refused (it exists, it is
    /// not a regular file, another process writes it).
    #[error(transparent)]
    Output(#[from] v2k_outfile::Error),
}

/// A coarse classification callers can branch on (exit codes, retries).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Io,
    InvalidInput,
    Unsupported,
    VerifyMismatch,
    Usage,
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Io { .. } => ErrorKind::Io,
            Error::Invalid { .. } | Error::Vmdk { .. } => ErrorKind::InvalidInput,
            Error::Unsupported { .. } => ErrorKind::Unsupported,
            Error::VerifyMismatch { .. } => ErrorKind::VerifyMismatch,
            Error::Usage(_) => ErrorKind::Usage,
            Error::Output(e) if e.is_refusal() => ErrorKind::Usage,
            Error::Output(_) => ErrorKind::Io,
        }
    }

    pub(crate) fn io(
        path: impl Into<PathBuf>,
        what: impl Into<String>,
        source: std::io::Error,
    ) -> Self {
        Error::Io {
            path: path.into(),
            what: what.into(),
            source,
        }
    }

    pub(crate) fn invalid(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Invalid {
            path: path.into(),
            message: message.into(),
        }
    }

    pub(crate) fn unsupported(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Unsupported {
            path: path.into(),
            message: message.into(),
        }
    }

    /// Turns an error from the VMDK library into ours. The library reports I/O
    /// failures on bad offsets as `io::Error`s; both are the image's fault here.
    pub(crate) fn vmdk(path: impl Into<PathBuf>, what: &str, source: vmdk::VmdkError) -> Self {
        let path = path.into();
        match source {
            vmdk::VmdkError::Io(e) => Error::Io {
                path,
                what: what.to_owned(),
                source: e,
            },
            other => Error::Vmdk {
                path,
                what: what.to_owned(),
                source: other,
            },
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
