//! The NBD server: one read-only export on a unix socket, served by [`serve`].
//!
//! ```text
//!  accept ─▶ connection task: handshake (options) ─▶ request loop
//!                                   READ ─▶ spawned task ─▶ ClusterReader ─▶ Source
//!                                                 └─▶ reply (header + data) under the
//!                                                     connection's write lock
//! ```
//! Each READ runs in its own task, so a client's requests are answered in whatever
//! order their data arrives (NBD matches replies to requests by handle); the bytes in
//! flight are bounded by [`MAX_IN_FLIGHT_BYTES`] over all connections. Replies are written
//! whole under a lock, never interleaved. A client that breaks the protocol (bad
//! magic, an option or a WRITE payload over the limit) is disconnected; a request the
//! server will not do gets an error reply. Nothing a client sends can panic the server.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Mutex, Semaphore};
use tokio::task::JoinSet;

use crate::clusters::{ClusterReader, HashRecord};
use crate::protocol::{self as p, Action};
use crate::source::{Source, SourceStats};
use crate::Error;

/// Bytes of READ data in flight over all connections (64 MiB: two maximal requests),
/// which bounds the server's memory whatever the clients send.
pub const MAX_IN_FLIGHT_BYTES: u32 = 64 << 20;
/// Connections served at once; more are closed at accept. QEMU opens one per node
/// (a few per disk with multi-conn).
pub const MAX_CONNECTIONS: usize = 16;
/// Longest a client may take to negotiate: a connection that never finishes its
/// handshake does not hold one of the [`MAX_CONNECTIONS`] slots for ever.
pub const NEGOTIATION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// Pause after a failed accept.
const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(50);

/// How to serve.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The export's name (QEMU: `nbd+unix:///NAME?socket=PATH`). The empty name, the
    /// protocol's default export, is accepted too.
    pub export: String,
    /// The `(uid, gid)` to hand the socket to (mode 0600 either way): the user libvirt
    /// runs QEMU as (`v2k_kvm_target::dac_label`), which libvirt's dynamic ownership
    /// does not relabel a backing NBD socket for. `None` leaves it to the server's user.
    pub owner: Option<(u32, u32)>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            export: "disk".into(),
            owner: None,
        }
    }
}

/// What the server did so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub connections: u64,
    /// Transmission requests received (all kinds).
    pub requests: u64,
    /// READ data sent.
    pub bytes_served: u64,
    /// Requests answered with an error.
    pub errors: u64,
    /// Connections closed because the client broke the protocol.
    pub protocol_errors: u64,
    /// The source's retries and logins.
    pub source: SourceStats,
}

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    requests: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
    protocol: AtomicU64,
}

struct Shared {
    reader: ClusterReader,
    export: String,
    counters: Counters,
    /// Permits are KiB of READ data in flight.
    budget: Arc<Semaphore>,
}

/// A running server. [`ServerHandle::shutdown`] stops it; dropping it stops accepting
/// and aborts the connections too, but leaves the socket file.
pub struct ServerHandle {
    shared: Arc<Shared>,
    path: PathBuf,
    accept: Option<tokio::task::JoinHandle<()>>,
}

impl ServerHandle {
    pub fn stats(&self) -> Stats {
        let c = &self.shared.counters;
        Stats {
            connections: c.connections.load(Ordering::Relaxed),
            requests: c.requests.load(Ordering::Relaxed),
            bytes_served: c.bytes.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
            protocol_errors: c.protocol.load(Ordering::Relaxed),
            source: self.shared.reader.source().stats(),
        }
    }

    /// The SHA-256 of every cluster served so far.
    pub fn record(&self) -> HashRecord {
        self.shared.reader.record()
    }

    /// Merges what an earlier server over the same disk served (its journal) into the
    /// record: a rerun after a kill checks both runs' clusters.
    pub fn seed(&self, earlier: HashRecord) -> Result<(), Error> {
        self.shared.reader.seed(earlier)
    }

    /// Journals every cluster first served from now on, before its reply leaves
    /// ([`crate::journal`]).
    pub fn journal_to(&self, journal: crate::Journal) -> Result<(), Error> {
        self.shared.reader.journal_to(journal)
    }

    /// Makes the journal durable; the error of a journal write that failed, if any.
    pub fn sync_journal(&self) -> Result<(), Error> {
        self.shared.reader.sync_journal()
    }

    pub fn socket(&self) -> &Path {
        &self.path
    }

    /// Stops accepting, ends every connection, removes the socket; returns the final
    /// stats.
    pub async fn shutdown(mut self) -> Stats {
        if let Some(a) = self.accept.take() {
            a.abort();
            let _ = a.await;
        }
        let _ = std::fs::remove_file(&self.path);
        self.stats()
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if let Some(a) = &self.accept {
            a.abort();
        }
    }
}

/// Serves `source` read-only on a new unix socket at `socket` (which must not exist:
/// an existing file is never replaced; the socket is made mode 0600, owned by
/// `opts.owner` when given, and its directory should be private to that user). Must be called within a tokio runtime, which runs
/// the server until [`ServerHandle::shutdown`].
pub async fn serve(
    source: Arc<dyn Source>,
    socket: &Path,
    opts: ServeOptions,
) -> Result<ServerHandle, Error> {
    let io = |what: &str, e| Error::Io {
        path: socket.to_path_buf(),
        what: what.to_string(),
        source: e,
    };
    let listener = UnixListener::bind(socket).map_err(|e| io("creating the NBD socket", e))?;
    {
        use std::os::unix::fs::PermissionsExt;
        if let Err(e) = std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600)) {
            let _ = std::fs::remove_file(socket);
            return Err(io("restricting the NBD socket", e));
        }
        if let Some((uid, gid)) = opts.owner {
            if let Err(e) = std::os::unix::fs::chown(socket, Some(uid), Some(gid)) {
                let _ = std::fs::remove_file(socket);
                return Err(io("handing the NBD socket to QEMU's user", e));
            }
        }
    }
    let shared = Arc::new(Shared {
        reader: ClusterReader::new(source),
        export: opts.export,
        counters: Counters::default(),
        budget: Arc::new(Semaphore::new((MAX_IN_FLIGHT_BYTES >> 10) as usize)),
    });
    let s2 = shared.clone();
    let accept = tokio::spawn(async move {
        // Connection tasks live in the set, so aborting this task aborts them all.
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                a = listener.accept() => {
                    let Ok((stream, _)) = a else {
                        // Out of descriptors, say: do not spin on the error.
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    };
                    while conns.try_join_next().is_some() {}
                    if conns.len() >= MAX_CONNECTIONS {
                        continue;
                    }
                    s2.counters.connections.fetch_add(1, Ordering::Relaxed);
                    let s3 = s2.clone();
                    conns.spawn(async move {
                        if let Err(ConnEnd::Protocol) = connection(s3.clone(), stream).await {
                            s3.counters.protocol.fetch_add(1, Ordering::Relaxed);
                        }
                    });
                }
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
    });
    Ok(ServerHandle {
        shared,
        path: socket.to_path_buf(),
        accept: Some(accept),
    })
}

/// Why a connection ended early: the client went away, or broke the protocol
/// (counted in [`Stats::protocol_errors`]).
#[derive(Debug)]
enum ConnEnd {
    Io,
    Protocol,
}

impl From<std::io::Error> for ConnEnd {
    fn from(_: std::io::Error) -> Self {
        ConnEnd::Io
    }
}
impl From<p::ProtocolError> for ConnEnd {
    fn from(_: p::ProtocolError) -> Self {
        ConnEnd::Protocol
    }
}

/// What the negotiation ended with.
enum Negotiated {
    Transmission,
    Closed,
}

async fn connection(shared: Arc<Shared>, stream: UnixStream) -> Result<(), ConnEnd> {
    let (mut rd, mut wr) = stream.into_split();
    let negotiated =
        tokio::time::timeout(NEGOTIATION_TIMEOUT, negotiate(&shared, &mut rd, &mut wr))
            .await
            .map_err(|_| ConnEnd::Protocol)??;
    match negotiated {
        Negotiated::Closed => return Ok(()),
        Negotiated::Transmission => {}
    }
    transmission(shared, rd, wr).await
}

fn export_matches(shared: &Shared, name: &[u8]) -> bool {
    name.is_empty() || name == shared.export.as_bytes()
}

async fn negotiate(
    shared: &Shared,
    rd: &mut tokio::net::unix::OwnedReadHalf,
    wr: &mut OwnedWriteHalf,
) -> Result<Negotiated, ConnEnd> {
    wr.write_all(&p::greeting()).await?;
    let mut f = [0u8; 4];
    rd.read_exact(&mut f).await?;
    let no_zeroes = p::parse_client_flags(f)?;
    let size = shared.reader.size();
    for _ in 0..p::MAX_OPTIONS {
        let mut h = [0u8; 16];
        rd.read_exact(&mut h).await?;
        let h = p::parse_option_header(&h)?;
        if h.len > p::MAX_OPTION_LEN {
            wr.write_all(&p::option_reply(h.option, p::REP_ERR_TOO_BIG, &[]))
                .await?;
            return Ok(Negotiated::Closed);
        }
        let mut data = vec![0u8; h.len as usize];
        rd.read_exact(&mut data).await?;
        let reply = |kind, d: &[u8]| p::option_reply(h.option, kind, d);
        match h.option {
            p::OPT_EXPORT_NAME => {
                if !export_matches(shared, &data) {
                    // The protocol has no error reply here: closing is the answer.
                    return Ok(Negotiated::Closed);
                }
                wr.write_all(&p::export_name_reply(size, no_zeroes)).await?;
                return Ok(Negotiated::Transmission);
            }
            p::OPT_ABORT => {
                wr.write_all(&reply(p::REP_ACK, &[])).await?;
                return Ok(Negotiated::Closed);
            }
            p::OPT_LIST if !data.is_empty() => {
                wr.write_all(&reply(p::REP_ERR_INVALID, &[])).await?;
            }
            p::OPT_LIST => {
                let mut out = reply(p::REP_SERVER, &p::list_entry(&shared.export));
                out.extend_from_slice(&reply(p::REP_ACK, &[]));
                wr.write_all(&out).await?;
            }
            p::OPT_INFO | p::OPT_GO => match p::parse_info_request(&data) {
                Err(_) => wr.write_all(&reply(p::REP_ERR_INVALID, &[])).await?,
                Ok(r) if !export_matches(shared, &r.name) => {
                    wr.write_all(&reply(p::REP_ERR_UNKNOWN, &[])).await?
                }
                Ok(r) => {
                    let mut out = reply(p::REP_INFO, &p::info_export(size));
                    if r.infos.contains(&p::INFO_BLOCK_SIZE) {
                        out.extend_from_slice(&reply(p::REP_INFO, &p::info_block_size()));
                    }
                    out.extend_from_slice(&reply(p::REP_ACK, &[]));
                    wr.write_all(&out).await?;
                    if h.option == p::OPT_GO {
                        return Ok(Negotiated::Transmission);
                    }
                }
            },
            // STARTTLS, STRUCTURED_REPLY, meta contexts, extended headers, and anything
            // unknown: unsupported; the client carries on without.
            _ => wr.write_all(&reply(p::REP_ERR_UNSUP, &[])).await?,
        }
    }
    Ok(Negotiated::Closed)
}

async fn transmission(
    shared: Arc<Shared>,
    mut rd: tokio::net::unix::OwnedReadHalf,
    wr: OwnedWriteHalf,
) -> Result<(), ConnEnd> {
    let wr = Arc::new(Mutex::new(wr));
    let mut reads = JoinSet::new();
    let size = shared.reader.size();
    let result = loop {
        let mut b = [0u8; p::REQUEST_LEN];
        if rd.read_exact(&mut b).await.is_err() {
            break Err(ConnEnd::Io);
        }
        let r = match p::parse_request(&b) {
            Ok(r) => r,
            Err(_) => break Err(ConnEnd::Protocol),
        };
        shared.counters.requests.fetch_add(1, Ordering::Relaxed);
        while reads.try_join_next().is_some() {}
        match p::classify(&r, size) {
            Action::Read { offset, len } => {
                let kib = len.div_ceil(1024).max(1);
                let Ok(permit) = shared.budget.clone().acquire_many_owned(kib).await else {
                    break Ok(());
                };
                let (shared, wr) = (shared.clone(), wr.clone());
                reads.spawn(async move {
                    let _permit = permit;
                    let data = shared.reader.read(offset, len as usize).await;
                    let mut w = wr.lock().await;
                    match data {
                        Ok(d) => {
                            w.write_all(&p::simple_reply(0, r.handle)).await?;
                            w.write_all(&d).await?;
                            shared
                                .counters
                                .bytes
                                .fetch_add(d.len() as u64, Ordering::Relaxed);
                        }
                        Err(_) => {
                            shared.counters.errors.fetch_add(1, Ordering::Relaxed);
                            w.write_all(&p::simple_reply(p::EIO, r.handle)).await?;
                        }
                    }
                    Ok::<(), std::io::Error>(())
                });
            }
            Action::Refuse { error, skip } => {
                if skip > 0 {
                    // Read and drop a WRITE's payload (bounded by MAX_REQUEST_LEN).
                    let mut sink = tokio::io::sink();
                    let mut payload = (&mut rd).take(u64::from(skip));
                    match tokio::io::copy(&mut payload, &mut sink).await {
                        Ok(n) if n == u64::from(skip) => {}
                        Ok(_) => break Ok(()),
                        Err(_) => break Err(ConnEnd::Io),
                    }
                }
                shared.counters.errors.fetch_add(1, Ordering::Relaxed);
                let sent = wr
                    .lock()
                    .await
                    .write_all(&p::simple_reply(error, r.handle))
                    .await;
                if sent.is_err() {
                    break Err(ConnEnd::Io);
                }
            }
            Action::Fatal { error } => {
                shared.counters.errors.fetch_add(1, Ordering::Relaxed);
                let _ = wr
                    .lock()
                    .await
                    .write_all(&p::simple_reply(error, r.handle))
                    .await;
                break Ok(());
            }
            Action::Disconnect => break Ok(()),
        }
    };
    // Answer what is in flight before closing (DISC: the protocol asks for it).
    while reads.join_next().await.is_some() {}
    let _ = wr.lock().await.shutdown().await;
    result
}
