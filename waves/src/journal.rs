//! The run journal, `RUN_DIR/journal.jsonl`: append-only JSON Lines, one [`Record`]
//! per state change, each written and `fsync`ed before the change it announces takes
//! effect (a VM is journalled as started before its migration starts, as finished
//! before its success marker is written). The runner holds an exclusive `flock` on it
//! for the whole run, so two runners can never share a run directory and `status`
//! can tell a live run from an interrupted one.
//!
//! A crash can leave a last line without its newline; opening for append cuts it off
//! (it announced nothing that took effect).

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::hooks::HookResult;
use crate::plan::valid_name;
use crate::{io, Error, Result};

/// The journal's schema version (in `run-started`).
pub const SCHEMA_VERSION: u32 = 1;
pub(crate) const FILE_NAME: &str = "journal.jsonl";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub time: f64,
    #[serde(flatten)]
    pub entry: Entry,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct VmInfo {
    pub name: String,
    pub source: PathBuf,
    pub out: PathBuf,
    pub validate: bool,
    pub disks: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct WaveInfo {
    pub name: String,
    pub vms: Vec<VmInfo>,
}

/// How a VM ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VmStatus {
    /// Migrated, and validated when asked.
    Migrated,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "kebab-case",
    rename_all_fields = "kebab-case"
)]
pub enum Entry {
    RunStarted {
        schema_version: u32,
        plan: PathBuf,
        plan_hash: String,
        waves: Vec<WaveInfo>,
        /// The plan's `conversion-host:` (a shard of `v2k wave assign`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        conversion_host: Option<String>,
        /// The plan's `rollback-window:` in seconds ([`crate::window`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rollback_window_seconds: Option<u64>,
    },
    RunResumed {
        plan_hash: String,
    },
    WaveStarted {
        wave: String,
    },
    /// Before its migration starts; `attempt` counts from 1 across resumes.
    VmStarted {
        wave: String,
        vm: String,
        attempt: u32,
        out: PathBuf,
    },
    Hook {
        wave: String,
        vm: String,
        result: HookResult,
    },
    /// A `v2k-migrate` stage event (`started`, `done`, `reused`, `failed`).
    Stage {
        wave: String,
        vm: String,
        stage: String,
        status: String,
    },
    /// On resume: a VM finished earlier whose disks still hash to their record.
    VmVerified {
        wave: String,
        vm: String,
    },
    VmFinished {
        wave: String,
        vm: String,
        status: VmStatus,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        result: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        seconds: f64,
        migrate_seconds: f64,
        bytes: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        report: Option<PathBuf>,
    },
    /// Not run: the failure policy stopped the wave.
    VmNotRun {
        wave: String,
        vm: String,
        reason: String,
    },
    WaveFinished {
        wave: String,
        migrated: usize,
        failed: usize,
        not_run: usize,
        /// The runner's own time (journal, scheduling, checks, reports) in this wave.
        overhead_seconds: f64,
        wall_seconds: f64,
    },
    /// The gate held a wave larger than the previous one (`refused`: the run stopped
    /// there) or was overridden (`overridden`: the wave ran anyway).
    Gate {
        wave: String,
        previous: String,
        decision: String,
        /// Each measure that held the wave, with its figures.
        reasons: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        override_reason: Option<String>,
        /// Who overrode: login name and uid.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
    },
    RunFinished {
        exit_code: i32,
    },
    /// `v2k wave rollback`: a VM's finished rollback steps (`name: outcome`).
    VmRolledBack {
        wave: String,
        vm: String,
        steps: Vec<String>,
    },
    /// `v2k wave finalize`: the VM's source may be retired; no rollback from here.
    VmFinalized {
        wave: String,
        vm: String,
        /// Who finalized: login name and uid.
        by: String,
        /// Set when the rollback window was closed early, with the operator's reason.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        early_reason: Option<String>,
    },
    /// A vSphere VM's performance before migration, read on its first attempt
    /// (before any cutover) and kept in `file` for every later attempt: `metrics`
    /// the day's medians, `missing` what the server had no sample of; or `error`.
    VmBaseline {
        wave: String,
        vm: String,
        file: PathBuf,
        #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
        metrics: std::collections::BTreeMap<String, f64>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        missing: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
}

impl Entry {
    /// Every wave and VM name the entry carries. They become directory and file names
    /// under the run directory (`RUN/WAVE/wave-report.html`, `RUN/vms/VM/`), so a
    /// journal's names are checked like a plan's: a journal is a file anyone with
    /// write access to the run directory can edit.
    fn names(&self) -> Vec<&str> {
        match self {
            Entry::RunStarted {
                waves,
                conversion_host,
                ..
            } => waves
                .iter()
                .flat_map(|w| {
                    std::iter::once(w.name.as_str()).chain(w.vms.iter().map(|v| v.name.as_str()))
                })
                .chain(conversion_host.as_deref())
                .collect(),
            Entry::WaveStarted { wave } | Entry::WaveFinished { wave, .. } => vec![wave],
            Entry::VmStarted { wave, vm, .. }
            | Entry::Hook { wave, vm, .. }
            | Entry::Stage { wave, vm, .. }
            | Entry::VmVerified { wave, vm }
            | Entry::VmFinished { wave, vm, .. }
            | Entry::VmNotRun { wave, vm, .. }
            | Entry::VmRolledBack { wave, vm, .. }
            | Entry::VmFinalized { wave, vm, .. }
            | Entry::VmBaseline { wave, vm, .. } => vec![wave, vm],
            Entry::Gate { wave, previous, .. } => vec![wave, previous],
            Entry::RunResumed { .. } | Entry::RunFinished { .. } => Vec::new(),
        }
    }
}

/// The journal open for appending, locked.
pub(crate) struct Journal {
    path: PathBuf,
    file: Mutex<File>,
}

impl Journal {
    /// Opens (creating) the journal in `run_dir`, takes the lock and returns what it
    /// already holds.
    pub fn open(run_dir: &Path) -> Result<(Journal, Vec<Record>)> {
        std::fs::create_dir_all(run_dir).map_err(io(format!("creating {}", run_dir.display())))?;
        let path = run_dir.join(FILE_NAME);
        // Never through a link, a FIFO or a hard link to someone else's file.
        let file = v2k_outfile::open_append(&path)?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
            |_| Error::Journal {
                path: path.display().to_string(),
                message: "another `v2k wave run` is using this run directory".into(),
            },
        )?;
        let (records, good_len) = read_from(&path)?;
        let len = file
            .metadata()
            .map_err(io("reading the journal's size"))?
            .len();
        if good_len < len {
            file.set_len(good_len)
                .map_err(io("cutting a torn journal line"))?;
            file.sync_all().map_err(io("syncing the journal"))?;
        }
        // The file's own entry in its directory must be durable too.
        if let Ok(d) = File::open(run_dir) {
            let _ = d.sync_all();
        }
        Ok((
            Journal {
                path,
                file: Mutex::new(file),
            },
            records,
        ))
    }

    /// Appends one record and syncs it to disk before returning.
    pub fn append(&self, entry: Entry) -> Result<()> {
        let rec = Record {
            time: crate::now(),
            entry,
        };
        let mut line = serde_json::to_vec(&rec).map_err(|e| Error::Journal {
            path: self.path.display().to_string(),
            message: e.to_string(),
        })?;
        line.push(b'\n');
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        f.write_all(&line)
            .map_err(io(format!("appending to {}", self.path.display())))?;
        f.sync_data()
            .map_err(io(format!("syncing {}", self.path.display())))?;
        Ok(())
    }
}

/// Reads a journal without locking it (for `status` and `report`).
pub fn read(run_dir: &Path) -> Result<Vec<Record>> {
    read_from(&run_dir.join(FILE_NAME)).map(|(r, _)| r)
}

/// Whether a runner holds the journal now.
pub fn is_locked(run_dir: &Path) -> bool {
    let Ok(f) = v2k_untrusted::file::open(&run_dir.join(FILE_NAME)) else {
        return false;
    };
    match rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockShared) {
        Ok(()) => {
            let _ = rustix::fs::flock(&f, rustix::fs::FlockOperation::Unlock);
            false
        }
        Err(_) => true,
    }
}

/// Every complete record, and the byte length they span. A torn last line (no
/// newline) is left out; a complete line that does not parse is an error.
fn read_from(path: &Path) -> Result<(Vec<Record>, u64)> {
    // A journal is a regular file v2k wrote; a FIFO or device planted in its place is
    // refused without blocking.
    let f = match v2k_untrusted::file::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(io(format!("reading {}", path.display()))(e)),
    };
    records(BufReader::new(f), &path.display().to_string())
}

/// One record is a few hundred bytes (a hook's output tail is the longest field); a
/// line longer than this is not a record, and is refused before it fills memory.
const MAX_RECORD_BYTES: u64 = 1 << 20;

/// The records of journal text, as [`read`] sees them (for fuzzing).
pub fn parse(bytes: &[u8]) -> Result<Vec<Record>> {
    records(bytes, "(memory)").map(|(r, _)| r)
}

fn records(mut r: impl BufRead, name: &str) -> Result<(Vec<Record>, u64)> {
    let mut out = Vec::new();
    let mut good = 0u64;
    let mut line = Vec::new();
    let mut n = 0usize;
    loop {
        line.clear();
        let got = (&mut r)
            .take(MAX_RECORD_BYTES + 1)
            .read_until(b'\n', &mut line)
            .map_err(io(format!("reading {name}")))?;
        if got as u64 > MAX_RECORD_BYTES {
            return Err(Error::Journal {
                path: name.to_string(),
                message: format!("line {}: longer than {MAX_RECORD_BYTES} bytes", n + 1),
            });
        }
        if got == 0 || line.last() != Some(&b'\n') {
            break;
        }
        n += 1;
        let rec: Record = serde_json::from_slice(&line).map_err(|e| Error::Journal {
            path: name.to_string(),
            message: format!("line {n}: {e}"),
        })?;
        if let Some(bad) = rec.entry.names().into_iter().find(|s| !valid_name(s)) {
            return Err(Error::Journal {
                path: name.to_string(),
                message: format!(
                    "line {n}: name {bad:?} is not a plain name (1 to 128 letters, digits, \
                     '.', '_' or '-'; not '.' or '..')"
                ),
            });
        }
        out.push(rec);
        good += got as u64;
    }
    Ok((out, good))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_a_torn_last_line_is_cut() {
        let d = tempfile::tempdir().unwrap();
        {
            let (j, old) = Journal::open(d.path()).unwrap();
            assert!(old.is_empty());
            j.append(Entry::WaveStarted { wave: "w".into() }).unwrap();
            j.append(Entry::RunFinished { exit_code: 1 }).unwrap();
        }
        let p = d.path().join(FILE_NAME);
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"time\":1,\"type\":\"wave-sta").unwrap();
        drop(f);
        let (j, old) = Journal::open(d.path()).unwrap();
        assert_eq!(old.len(), 2);
        assert_eq!(old[1].entry, Entry::RunFinished { exit_code: 1 });
        j.append(Entry::WaveStarted { wave: "x".into() }).unwrap();
        drop(j);
        let all = read(d.path()).unwrap();
        assert_eq!(all.len(), 3);
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains("\"type\":\"wave-started\""), "{text}");
    }

    #[test]
    fn a_second_runner_is_refused_while_the_first_holds_the_lock() {
        let d = tempfile::tempdir().unwrap();
        let (_j, _) = Journal::open(d.path()).unwrap();
        assert!(is_locked(d.path()));
        assert!(matches!(
            Journal::open(d.path()),
            Err(Error::Journal { .. })
        ));
    }

    #[test]
    fn fields_are_kebab_case() {
        let e = Entry::VmNotRun {
            wave: "w".into(),
            vm: "v".into(),
            reason: "r".into(),
        };
        let s = serde_json::to_string(&Record {
            time: 0.0,
            entry: e,
        })
        .unwrap();
        assert_eq!(
            s,
            r#"{"time":0.0,"type":"vm-not-run","wave":"w","vm":"v","reason":"r"}"#
        );
        let e = Entry::WaveFinished {
            wave: "w".into(),
            migrated: 1,
            failed: 0,
            not_run: 0,
            overhead_seconds: 0.5,
            wall_seconds: 2.0,
        };
        assert!(serde_json::to_string(&e)
            .unwrap()
            .contains("overhead-seconds"));
    }
}
