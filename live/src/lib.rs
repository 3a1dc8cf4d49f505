//! Live import's foundation (issue 19, phase 1): v2k's own read-only NBD server over
//! a disk on a vSphere datastore, so that QEMU can run a VM on a local overlay while
//! the data streams in behind it.
//!
//! [`serve`] exports a [`Source`] on a unix socket ([`server`], wire format in
//! [`protocol`]); [`DatastoreSource`] reads a flat extent with HTTP Range requests
//! through v2k's vSphere session (TLS verified or pinned, session renewed, outages
//! held and retried), [`FileSource`] a local file. Reads go through
//! [`clusters::ClusterReader`], which fetches whole 64 KiB clusters and records each
//! cluster's SHA-256 as it is first served; [`clusters::verify_image`] later checks a
//! standalone image against that record, skipping the clusters the guest wrote.
//! Phase 2's stream-stage plumbing: [`overlay`] (the QCOW2 overlays over the export,
//! the guest's dirty bitmap, the clusters the inject stage changed) and [`stream`]
//! (libvirt's `blockpull`, its progress and outcome, the check of a streamed overlay).
//! docs/live-import.md describes the design, its limits and what is not built yet.

pub mod clusters;
pub mod journal;
pub mod overlay;
pub mod protocol;
pub mod server;
pub mod source;
pub mod stream;

use std::path::PathBuf;

pub use clusters::{verify_image, HashRecord, VerifyReport, CLUSTER};
pub use journal::Journal;
pub use server::{serve, ServeOptions, ServerHandle, Stats};
pub use source::{DatastoreSource, FileSource, RetryPolicy, Source, SourceStats};

/// Errors of the live server and its sources. None carries a cookie or a password:
/// vSphere errors never do, and nothing here adds one.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Usage(String),
    #[error("{}: {what}", path.display())]
    Io {
        path: PathBuf,
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// Boxed: the vSphere error is large, and errors travel through every read.
    #[error(transparent)]
    Vsphere(Box<v2k_vsphere::Error>),
    /// A transient failure outlasted the retry policy's hold time.
    #[error("{file}: unreachable for {secs} s, giving up: {source}")]
    Unavailable {
        file: String,
        secs: u64,
        #[source]
        source: Box<v2k_vsphere::Error>,
    },
    /// A cluster read again hashed differently from when it was first served.
    #[error("{file}: the cluster at byte {offset} changed since it was first served: the source disk is being written")]
    SourceChanged { file: String, offset: u64 },
    #[error("{file}: {message}")]
    Record { file: String, message: String },
    #[error(transparent)]
    Image(Box<v2k_converters::Error>),
    #[error(transparent)]
    Output(#[from] v2k_outfile::Error),
    /// A QEMU or libvirt tool failed or said something unexpected.
    #[error("{what}: {tool}: {message}")]
    Tool {
        tool: &'static str,
        what: String,
        message: String,
    },
    /// A pull did not complete.
    #[error("{domain} {target}: {message}")]
    Stream {
        domain: String,
        target: String,
        message: String,
    },
    #[error("internal lock poisoned")]
    Poisoned,
}

impl From<v2k_vsphere::Error> for Error {
    fn from(e: v2k_vsphere::Error) -> Self {
        Error::Vsphere(Box::new(e))
    }
}

impl From<v2k_converters::Error> for Error {
    fn from(e: v2k_converters::Error) -> Self {
        Error::Image(Box::new(e))
    }
}
