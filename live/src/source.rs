//! Where served bytes come from: a [`Source`] answers `read_at(offset, len)`
//! asynchronously. [`FileSource`] reads a local file (tests, benchmarks);
//! [`DatastoreSource`] reads a disk's flat extent on a vSphere datastore with HTTP
//! Range requests through v2k's vSphere session ([`v2k_vsphere::ranged`]: same TLS
//! verification and pin as the copy path, session renewed once for all concurrent
//! reads), and holds a read through an outage: transient failures are retried with
//! exponential backoff for up to [`RetryPolicy::hold`], then the error names the file.

use std::future::Future;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use v2k_vsphere::client::Session;
use v2k_vsphere::ranged::RangedExtent;
use v2k_vsphere::{Credentials, DiskSource, Options};

use crate::Error;

/// A boxed future of a read's bytes (object-safe async).
pub type ReadFuture<'a> = Pin<Box<dyn Future<Output = Result<Vec<u8>, Error>> + Send + 'a>>;

/// Counters a source keeps, for the server's stats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SourceStats {
    /// Attempts repeated after a transient failure.
    pub retries: u64,
    /// Logins, the first one included (0 for a local file).
    pub logins: u64,
}

/// Random access to a disk's bytes.
pub trait Source: Send + Sync {
    /// The disk's size in bytes.
    fn size(&self) -> u64;
    /// Exactly `len` bytes at `offset` (the caller keeps it within [`Source::size`]).
    fn read_at(&self, offset: u64, len: usize) -> ReadFuture<'_>;
    /// What this source is, for messages (a path, a datastore file).
    fn name(&self) -> String;
    fn stats(&self) -> SourceStats {
        SourceStats::default()
    }
}

/// A local file (a raw disk image).
pub struct FileSource {
    file: Arc<std::fs::File>,
    path: PathBuf,
    size: u64,
}

impl FileSource {
    pub fn open(path: &Path) -> Result<FileSource, Error> {
        let io = |what: &str, e| Error::Io {
            path: path.to_path_buf(),
            what: what.to_string(),
            source: e,
        };
        let file = std::fs::File::open(path).map_err(|e| io("opening", e))?;
        let meta = file.metadata().map_err(|e| io("reading metadata of", e))?;
        if !meta.is_file() {
            return Err(Error::Usage(format!(
                "{}: not a regular file",
                path.display()
            )));
        }
        Ok(FileSource {
            file: Arc::new(file),
            path: path.to_path_buf(),
            size: meta.len(),
        })
    }
}

impl Source for FileSource {
    fn size(&self) -> u64 {
        self.size
    }

    fn name(&self) -> String {
        self.path.display().to_string()
    }

    fn read_at(&self, offset: u64, len: usize) -> ReadFuture<'_> {
        let file = self.file.clone();
        let path = self.path.clone();
        Box::pin(async move {
            // Blocking file I/O stays off the runtime's worker threads.
            tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; len];
                file.read_exact_at(&mut buf, offset)
                    .map(|()| buf)
                    .map_err(|e| Error::Io {
                        path,
                        what: format!("reading {len} bytes at {offset}"),
                        source: e,
                    })
            })
            .await
            .map_err(|e| Error::Usage(format!("file read task failed: {e}")))?
        })
    }
}

/// How a datastore read rides out failures.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Longest time one read keeps retrying transient failures (an outage holds the
    /// read, and the guest's I/O, this long before it fails).
    pub hold: Duration,
    /// First delay between attempts; doubled each time up to `max_delay`.
    pub first_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    /// Ten minutes: an ESXi management agent restart or a short network outage fits,
    /// and a guest waiting on its disk that long is still recoverable.
    fn default() -> Self {
        RetryPolicy {
            hold: Duration::from_secs(600),
            first_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(10),
        }
    }
}

/// A flat extent on a datastore.
pub struct DatastoreSource {
    extent: RangedExtent,
    session: Arc<Session>,
    policy: RetryPolicy,
    retries: AtomicU64,
}

impl DatastoreSource {
    /// Connects its own session (on the calling runtime, which must be the one that
    /// serves: reqwest's connections belong to the runtime that opened them), logs in
    /// and opens the disk's flat extent.
    pub async fn connect(
        opts: &Options,
        creds: Credentials,
        disk: &DiskSource,
        policy: RetryPolicy,
    ) -> Result<DatastoreSource, Error> {
        let session = Arc::new(Session::connect(opts, creds).await?);
        session.login().await?;
        let extent = RangedExtent::open(session.clone(), disk).await?;
        Ok(DatastoreSource {
            extent,
            session,
            policy,
            retries: AtomicU64::new(0),
        })
    }

    /// One read of the extent's first 512 bytes, with no retry: whether the datastore
    /// answers right now (`Ok(true)`), is still away (`Ok(false)`: a transient
    /// failure, as [`RetryPolicy`] would retry), or refuses for good (`Err`: a 404,
    /// a wrong password). What a live import polls while it waits out an outage.
    pub async fn probe(&self) -> Result<bool, Error> {
        let len = self.extent.size().min(512) as usize;
        match self.extent.read(0, len).await {
            Ok(_) => Ok(true),
            Err(e) if e.transient => Ok(false),
            Err(e) => Err(e.error.into()),
        }
    }

    /// Logs the session out (best effort; also what dropping the session does not do).
    pub async fn logout(&self) -> Result<(), Error> {
        Ok(self.session.logout().await?)
    }
}

impl Source for DatastoreSource {
    fn size(&self) -> u64 {
        self.extent.size()
    }

    fn name(&self) -> String {
        self.extent.extent().to_string()
    }

    fn stats(&self) -> SourceStats {
        SourceStats {
            retries: self.retries.load(Ordering::Relaxed),
            logins: 1 + self.extent.relogins(),
        }
    }

    fn read_at(&self, offset: u64, len: usize) -> ReadFuture<'_> {
        Box::pin(async move {
            let start = Instant::now();
            let mut delay = self.policy.first_delay;
            loop {
                match self.extent.read(offset, len).await {
                    Ok(b) => return Ok(b),
                    Err(e) if e.transient && start.elapsed() < self.policy.hold => {
                        self.retries.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(delay).await;
                        delay = delay.saturating_mul(2).min(self.policy.max_delay);
                    }
                    Err(e) if e.transient => {
                        return Err(Error::Unavailable {
                            file: self.name(),
                            secs: start.elapsed().as_secs(),
                            source: Box::new(e.error),
                        })
                    }
                    Err(e) => return Err(e.error.into()),
                }
            }
        })
    }
}
