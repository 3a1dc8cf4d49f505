//! Errors of the inventory crate: one enum, sentence-case messages that name the file
//! and the field, never repeating the `#[source]` (the CLI prints the whole chain).

use std::path::PathBuf;

/// Everything that stops one VM (or one archive) from being read into the model.
///
/// Problems that still let the VM be described (a missing disk file, a raw device, a
/// refused `fileName`) are not errors: they become pre-flight concerns on the VM.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("reading {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {size} bytes is more than the {limit}-byte limit for a {what}")]
    TooLarge {
        path: PathBuf,
        what: &'static str,
        size: u64,
        limit: u64,
    },
    #[error("{path}: {message}")]
    Vmx { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Ovf { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Tar { path: PathBuf, message: String },
    #[error("{path}: unsafe {field} {value:?}: {reason}")]
    UnsafePath {
        path: PathBuf,
        field: &'static str,
        value: String,
        reason: String,
    },
    #[error("{path}: manifest: {message}")]
    Manifest { path: PathBuf, message: String },
    #[error("{path}: not a .vmx, .ovf or .ova file")]
    UnknownKind { path: PathBuf },
}

impl Error {
    /// Attaches a path to an I/O error; every file operation goes through here so
    /// that the message always names the file.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error and its sources on one line, each said once (`a: b: c`): a concern's
/// message, a wave report's reason and the CLI's `--json` failure all print errors so.
pub fn one_line(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}
