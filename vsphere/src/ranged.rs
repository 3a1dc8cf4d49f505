//! Random access to a disk's flat extent on the datastore, for live import's NBD
//! server (`v2k-live`): one HTTP `Range` GET per read, through the same session,
//! TLS verification and thumbprint pin as the copy path ([`crate::datastore`]).
//!
//! Many reads are in flight at once, so a session that expires (401/403 on
//! `/folder`) is renewed once for all of them: a read that was refused compares the
//! cookie it sent with the session's current one, and only if nobody has logged in
//! since does it log in itself, under a lock. Each read is one attempt otherwise:
//! retries, backoff and how long an outage may hold a read are the caller's policy
//! ([`ReadError::transient`] says which failures are worth retrying). Every byte count
//! from the server is checked: a `Content-Range` that is not the one asked for, a body
//! longer or shorter than the range, a file whose size differs from the descriptor's.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use reqwest::header::{HeaderValue, COOKIE, RANGE};
use reqwest::{StatusCode, Url};

use crate::client::Session;
use crate::datastore::{self, DatastorePath, DiskSource, FlatDisk, MAX_DESCRIPTOR_BYTES};
use crate::error::{Error, Result};

/// Largest single read: the NBD server's own request limit is below it; a caller asking
/// for more is a bug, refused before any allocation.
pub const MAX_RANGE_BYTES: usize = 64 << 20;

/// A read that failed, and whether trying again later may succeed.
#[derive(Debug)]
pub struct ReadError {
    pub error: Error,
    /// A transport failure, a 5xx, a body cut short, a login that could not reach the
    /// server: worth retrying. Anything else (a 404, a wrong password, a server that
    /// answers a different range) is not.
    pub transient: bool,
}

impl ReadError {
    fn fatal(error: Error) -> Self {
        ReadError {
            error,
            transient: false,
        }
    }
    fn transient(error: Error) -> Self {
        ReadError {
            error,
            transient: true,
        }
    }
}

/// An open flat extent: its URL, size, and the session that reads it.
pub struct RangedExtent {
    session: Arc<Session>,
    url: Url,
    disk: FlatDisk,
    /// Held while logging in again, so that concurrent refused reads log in once.
    relogin: tokio::sync::Mutex<()>,
    logins: AtomicU64,
}

impl std::fmt::Debug for RangedExtent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RangedExtent")
            .field("extent", &self.disk.extent.to_string())
            .field("size", &self.disk.size)
            .finish()
    }
}

/// Whether a failed login is worth retrying: the server was unreachable or busy, not
/// a refusal of the credentials.
fn login_transient(e: &Error) -> bool {
    matches!(e, Error::Transport { .. })
        || matches!(e, Error::Http { status, .. } if *status >= 500)
}

impl RangedExtent {
    /// Reads the disk's descriptor, finds its single flat extent (anything else is
    /// refused: snapshot chains are consolidated first), and checks that the extent
    /// file holds at least the descriptor's size. `session` must be logged in.
    pub async fn open(session: Arc<Session>, source: &DiskSource) -> Result<RangedExtent> {
        let raw = datastore::fetch_small(
            &session,
            &source.descriptor,
            &source.datacenter,
            MAX_DESCRIPTOR_BYTES,
        )
        .await?;
        let disk = datastore::flat_extent(&source.descriptor, &raw)?;
        let url = datastore::folder_url(&session.base, &disk.extent, &source.datacenter)?;
        let actual = datastore::file_size(&session, &url).await?;
        if actual < disk.size {
            return Err(Error::protocol(
                disk.extent.to_string(),
                format!(
                    "the extent holds {actual} bytes, the descriptor says {}",
                    disk.size
                ),
            ));
        }
        Ok(RangedExtent {
            session,
            url,
            disk,
            relogin: tokio::sync::Mutex::new(()),
            logins: AtomicU64::new(0),
        })
    }

    /// The disk's virtual size (the descriptor's).
    pub fn size(&self) -> u64 {
        self.disk.size
    }

    /// The extent, as vSphere names it (`[ds] vm/vm-flat.vmdk`): for error messages.
    pub fn extent(&self) -> &DatastorePath {
        &self.disk.extent
    }

    /// Logins this extent's reads made to renew the session.
    pub fn relogins(&self) -> u64 {
        self.logins.load(Ordering::Relaxed)
    }

    /// Logs in again unless someone did since `used` was sent.
    async fn renew(&self, used: Option<&HeaderValue>) -> std::result::Result<(), ReadError> {
        let _guard = self.relogin.lock().await;
        let now = self.session.cookie_header().map_err(ReadError::fatal)?;
        if now.as_ref() != used {
            return Ok(());
        }
        self.logins.fetch_add(1, Ordering::Relaxed);
        self.session.relogin().await.map_err(|e| {
            let transient = login_transient(&e);
            ReadError {
                error: e,
                transient,
            }
        })
    }

    /// Bytes `[offset, offset + len)` of the extent: exactly `len` bytes, or an error.
    /// One attempt, except that a refused session is renewed once (see the module).
    pub async fn read(&self, offset: u64, len: usize) -> std::result::Result<Vec<u8>, ReadError> {
        let name = self.disk.extent.to_string();
        let end = offset
            .checked_add(len as u64)
            .filter(|&e| e <= self.disk.size && len <= MAX_RANGE_BYTES)
            .ok_or_else(|| {
                ReadError::fatal(Error::protocol(
                    &name,
                    format!(
                        "read of {len} bytes at {offset} is outside the {}-byte disk",
                        self.disk.size
                    ),
                ))
            })?;
        if len == 0 {
            return Ok(Vec::new());
        }
        let mut renewed = false;
        loop {
            let cookie = self.session.cookie_header().map_err(ReadError::fatal)?;
            let mut req = self
                .session
                .http
                .get(self.url.clone())
                .header(RANGE, format!("bytes={offset}-{}", end - 1));
            if let Some(c) = &cookie {
                req = req.header(COOKIE, c.clone());
            }
            let mut resp = req.send().await.map_err(|e| {
                let e = self.session.transport_error(self.url.as_str(), e);
                let transient = matches!(e, Error::Transport { .. });
                ReadError {
                    error: e,
                    transient,
                }
            })?;
            let st = resp.status();
            if st == StatusCode::UNAUTHORIZED || st == StatusCode::FORBIDDEN {
                if renewed {
                    return Err(ReadError::fatal(Error::Http {
                        url: name,
                        status: st.as_u16(),
                        detail: ": refused again after logging in anew".into(),
                    }));
                }
                renewed = true;
                self.renew(cookie.as_ref()).await?;
                continue;
            }
            let http = |detail: String| Error::Http {
                url: name.clone(),
                status: st.as_u16(),
                detail,
            };
            match st {
                StatusCode::PARTIAL_CONTENT => {
                    let got = datastore::content_range(resp.headers());
                    let total_ok = |t: Option<u64>| t.is_none_or(|t| t >= self.disk.size);
                    match got {
                        Some((a, b, t)) if a == offset && b == end - 1 && total_ok(t) => {}
                        _ => {
                            return Err(ReadError::fatal(http(format!(
                                ": asked for bytes {offset}-{}, the server answered {got:?}",
                                end - 1
                            ))))
                        }
                    }
                }
                // A server that ignores Range sends the whole file: usable only when
                // that is what was asked for.
                StatusCode::OK if offset == 0 && resp.content_length() == Some(end) => {}
                StatusCode::OK => {
                    return Err(ReadError::fatal(http(
                        ": the server ignores Range requests".into(),
                    )))
                }
                s if s.is_server_error() => return Err(ReadError::transient(http(String::new()))),
                _ => return Err(ReadError::fatal(http(String::new()))),
            }
            let mut out = Vec::with_capacity(len);
            loop {
                match resp.chunk().await {
                    Ok(Some(c)) => {
                        if out.len() + c.len() > len {
                            return Err(ReadError::fatal(Error::protocol(
                                &name,
                                format!("more than the {len} bytes asked for at {offset}"),
                            )));
                        }
                        out.extend_from_slice(&c);
                    }
                    Ok(None) => break,
                    Err(e) => {
                        return Err(ReadError::transient(Error::transport(
                            &name,
                            format!("connection lost reading {len} bytes at {offset}"),
                            e,
                        )))
                    }
                }
            }
            if out.len() != len {
                return Err(ReadError::transient(Error::protocol(
                    &name,
                    format!("body ended after {} of {len} bytes at {offset}", out.len()),
                )));
            }
            return Ok(out);
        }
    }
}
