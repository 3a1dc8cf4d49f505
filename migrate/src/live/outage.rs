//! The stream loop of a live import, and what it does when the source goes away
//! (issue 19, scope 3). v2k's server holds a read through a short outage
//! ([`v2k_live::RetryPolicy::hold`]); past that hold QEMU's request fails, and two
//! things can happen: the pull job ends with the disk still on its NBD backing, and a
//! guest touching unstreamed data pauses the domain (`rerror=stop`). Either one makes
//! this loop wait for the source, then put things back:
//!
//! ```text
//!  every PULL_POLL: domain `paused (I/O error)`?  pull gone, backing still there?
//!        │ either                                   │
//!        ▼                                          ▼
//!  wait: probe every disk's source (one read, no retry), backoff 1 s … 5 s,
//!        for at most the outage limit ─▶ past it: error (the caller stops the domain)
//!        ▼ every source answers
//!  resume the domain (stream::resume_after_outage) ─▶ start the failed pulls again
//! ```
//! A new pull copies only what the overlay does not hold yet (QEMU's `block-stream`
//! skips allocated clusters; the test checks the bytes served stay within the disk's
//! size). A pull that fails while its source answers at once has failed for another
//! reason (a source disk being written: `SourceChanged`); it is started again at most
//! [`MAX_UNEXPLAINED`] times before the stage gives up.
//!
//! Every poll also syncs each disk's journal (`RUN/live/disk<N>.hashes`,
//! [`v2k_live::Journal`]), which the server writes as it serves: the served-hash record
//! survives a killed v2k whole, and a crash of the machine up to the last poll.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use v2k_live::stream::{self, PullProgress};
use v2k_live::{DatastoreSource, ServerHandle};

use super::{step, usage, Stand, PULL_POLL};
use crate::Event;

/// How long v2k waits for the source to come back by default (`--live-outage-limit`):
/// 30 minutes. An ESXi host's management agents restarting, a storage path failing
/// over or a short network maintenance fit in it; the VM keeps running meanwhile
/// unless it reads data not streamed yet. Longer, and the operator should decide
/// (`v2k rollback` gives the workload back to the source, which holds the only whole
/// copy of the disks): past the limit the stage fails and stops the domain.
pub const DEFAULT_OUTAGE_LIMIT: Duration = Duration::from_secs(30 * 60);
/// First pause between two probes of a source that is away; doubled up to
/// [`PROBE_MAX_DELAY`]: a source coming back is seen within 5 s, for one 512-byte
/// read per disk every 5 s while it is away.
const PROBE_FIRST_DELAY: Duration = Duration::from_secs(1);
const PROBE_MAX_DELAY: Duration = Duration::from_secs(5);
/// A probe that has not answered in this long counts as "still away" (a black-holed
/// network does not refuse connections, it lets them hang).
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);
/// Resumes tried after an outage: QEMU's NBD client reconnects in the background after
/// a failed request, so the first resume may pause again (measured: the second runs).
const RESUME_ATTEMPTS: u32 = 10;
const RESUME_DELAY: Duration = Duration::from_secs(1);
/// Pull failures per disk with no outage to explain them before the stage gives up.
pub const MAX_UNEXPLAINED: u32 = 3;

/// What the loop met, for the report's `live` section.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Faults {
    /// Times the source was found away (one wait each).
    pub outages: u64,
    /// Seconds v2k waited for the source, over all outages.
    pub outage_seconds: f64,
    /// Resumes of a domain paused by an I/O error.
    pub resumes: u64,
    /// Pulls started again, per disk.
    pub pull_restarts: Vec<u64>,
}

/// The serving side the loop probes and counts with.
pub(super) struct Served<'a> {
    pub rt: &'a tokio::runtime::Runtime,
    pub sources: &'a [Arc<DatastoreSource>],
    pub servers: &'a [ServerHandle],
    /// One per disk (each server writes it as it serves): synced at every poll.
    pub journals: &'a [PathBuf],
}

impl Served<'_> {
    /// Makes each disk's journal durable.
    fn journal(&mut self) -> crate::Result<()> {
        for (s, j) in self.servers.iter().zip(self.journals) {
            s.sync_journal()
                .map_err(step(format!("journaling to {}", j.display())))?;
        }
        Ok(())
    }
}

/// Starts a pull of every disk in `devs` and waits for all of them, riding out
/// outages (module documentation). Returns the seconds from the first pull's start to
/// the last pull's end, and the faults met.
#[allow(clippy::too_many_arguments)]
pub(super) fn stream_all(
    uri: &str,
    name: &str,
    devs: &[String],
    bandwidth_mib: Option<u64>,
    limit: Duration,
    served: &mut Served,
    stand: &mut Stand,
    progress: &dyn Fn(Event),
) -> crate::Result<(f64, Faults)> {
    let start = Instant::now();
    let mut done = vec![false; devs.len()];
    for (i, d) in devs.iter().enumerate() {
        // A resumed import (a killed run's domain) may have a disk already standalone,
        // or a pull still running.
        if stream::pull_progress(uri, name, d)
            .map_err(step(format!("reading the pull of {name} {d}")))?
            .is_some()
        {
            continue;
        }
        if !stream::has_backing(uri, name, d)
            .map_err(step(format!("reading the disks of {name}")))?
        {
            done[i] = true;
            continue;
        }
        stream::start_pull(uri, name, d, bandwidth_mib)
            .map_err(step(format!("starting the pull of {name} {d}")))?;
    }
    let mut faults = Faults {
        pull_restarts: vec![0; devs.len()],
        ..Faults::default()
    };
    let mut unexplained = vec![0u32; devs.len()];
    let mut shown: Vec<Option<u64>> = vec![None; devs.len()];
    loop {
        let state = domstate_reason(uri, name)?;
        if state.starts_with("shut off") || state.starts_with("crashed") {
            return Err(usage(format!(
                "{name} stopped during the stream ({state}): its disks still depend on the \
                 source"
            )));
        }
        let paused = is_io_pause(&state);
        let mut failed = Vec::new();
        for (i, d) in devs.iter().enumerate() {
            if done[i] {
                continue;
            }
            match stream::pull_progress(uri, name, d)
                .map_err(step(format!("reading the pull of {name} {d}")))?
            {
                Some(p) => show(progress, i, p, &mut shown[i]),
                None => {
                    let backed = stream::has_backing(uri, name, d)
                        .map_err(step(format!("reading the disks of {name}")))?;
                    if backed {
                        failed.push(i);
                    } else {
                        done[i] = true;
                        progress(Event::Message(format!(
                            "{d}: streamed; it no longer reads from the source"
                        )));
                    }
                }
            }
        }
        served.journal()?;
        if done.iter().all(|&d| d) {
            return Ok((start.elapsed().as_secs_f64(), faults));
        }
        if paused || !failed.is_empty() {
            let why = match (paused, failed.len()) {
                (true, 0) => format!("{name} paused on an I/O error"),
                (false, _) => format!("the pull of {} failed", names(devs, &failed)),
                (true, _) => format!(
                    "{name} paused on an I/O error and the pull of {} failed",
                    names(devs, &failed)
                ),
            };
            stand.set("outage")?;
            let away = wait_for_sources(served, limit, &why, progress)?;
            let back = Instant::now();
            if let Some(secs) = away {
                faults.outages += 1;
                faults.outage_seconds += secs;
            }
            if paused || is_io_pause(&domstate_reason(uri, name)?) {
                let n = stream::resume_after_outage(uri, name, RESUME_ATTEMPTS, RESUME_DELAY)
                    .map_err(step(format!("resuming {name} after the outage")))?;
                faults.resumes += u64::from(n);
            }
            for &i in &failed {
                if away.is_none() {
                    unexplained[i] += 1;
                    if unexplained[i] > MAX_UNEXPLAINED {
                        return Err(usage(format!(
                            "the pull of {name} {} failed {} times while its source answered: \
                             not an outage (a source disk being written?); the domain \
                             depends on the source",
                            devs[i], unexplained[i]
                        )));
                    }
                }
                stream::start_pull(uri, name, &devs[i], bandwidth_mib).map_err(step(format!(
                    "starting the pull of {name} {} again",
                    devs[i]
                )))?;
                faults.pull_restarts[i] += 1;
                shown[i] = None;
            }
            let what = match (paused, failed.len()) {
                (true, 0) => "the domain resumed".to_string(),
                (false, n) => format!("{n} pull(s) started again"),
                (true, n) => format!("the domain resumed and {n} pull(s) started again"),
            };
            let outage = away
                .map(|s| format!(" after {s:.1} s away"))
                .unwrap_or_default();
            progress(Event::Message(format!(
                "{why}: the source answers{outage}; {what} {:.1} s after it came back",
                back.elapsed().as_secs_f64()
            )));
            stand.set("streaming")?;
            continue;
        }
        std::thread::sleep(PULL_POLL);
    }
}

fn names(devs: &[String], which: &[usize]) -> String {
    which
        .iter()
        .map(|&i| devs[i].as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn show(progress: &dyn Fn(Event), disk: usize, p: PullProgress, shown: &mut Option<u64>) {
    let tenth = p.cur.saturating_mul(10) / p.end.max(1);
    if *shown != Some(tenth) {
        *shown = Some(tenth);
        progress(Event::Disk {
            disk,
            phase: "stream",
            done: p.cur,
            total: p.end,
        });
    }
}

/// `paused (I/O error)`: what `rerror=stop` does when a read fails. Other pauses (the
/// watcher's own start, a user's `virsh suspend`) are not the stage's to undo.
fn is_io_pause(state: &str) -> bool {
    state.starts_with("paused") && state.contains("I/O error")
}

fn domstate_reason(uri: &str, name: &str) -> crate::Result<String> {
    super::virsh(uri, &["domstate", "--reason", name])
        .map(|s| s.trim().to_string())
        .map_err(step(format!("reading the state of {name}")))
}

/// Probes every source until all answer. `Ok(None)`: all answered at the first probe
/// (no outage seen); `Ok(Some(s))`: they were away and came back after `s` seconds;
/// an error past `limit`, or when a source refuses for good.
fn wait_for_sources(
    served: &Served,
    limit: Duration,
    why: &str,
    progress: &dyn Fn(Event),
) -> crate::Result<Option<f64>> {
    let t = Instant::now();
    let mut delay = PROBE_FIRST_DELAY;
    let mut told = false;
    loop {
        let mut away = None;
        for s in served.sources {
            let up = served
                .rt
                .block_on(async { tokio::time::timeout(PROBE_TIMEOUT, s.probe()).await })
                .unwrap_or(Ok(false))
                .map_err(step(format!("probing {}", s_name(s))))?;
            if !up {
                away = Some(s_name(s));
                break;
            }
        }
        let Some(file) = away else {
            return Ok(told.then(|| t.elapsed().as_secs_f64()));
        };
        if !told {
            told = true;
            progress(Event::Message(format!(
                "{why}: {file} does not answer; waiting for it (at most {} s, \
                 --live-outage-limit)",
                limit.as_secs()
            )));
        }
        if t.elapsed() >= limit {
            return Err(usage(format!(
                "{file} did not answer for {} s (the outage limit, --live-outage-limit): \
                 giving up; the domain is stopped, the source stays off (`v2k rollback` \
                 powers it on)",
                t.elapsed().as_secs()
            )));
        }
        std::thread::sleep(delay.min(limit.saturating_sub(t.elapsed())));
        delay = next_delay(delay);
    }
}

fn s_name(s: &DatastoreSource) -> String {
    use v2k_live::Source;
    s.name()
}

fn next_delay(d: Duration) -> Duration {
    d.saturating_mul(2).min(PROBE_MAX_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_io_error_pause_is_resumed() {
        assert!(is_io_pause("paused (I/O error)"));
        assert!(!is_io_pause("paused (user)"));
        assert!(!is_io_pause("paused (starting up)"));
        assert!(!is_io_pause("running (booted)"));
    }

    #[test]
    fn probes_back_off_to_five_seconds() {
        let mut d = PROBE_FIRST_DELAY;
        let mut seen = vec![d.as_secs()];
        for _ in 0..6 {
            d = next_delay(d);
            seen.push(d.as_secs());
        }
        assert_eq!(seen, [1, 2, 4, 5, 5, 5, 5]);
    }
}
