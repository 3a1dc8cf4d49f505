//! The run directory of one migration, owned by this crate alone. Every file in it
//! is one typed value, read and written here with serde at the file boundary:
//!
//! ```text
//!  OUT/vm.json                   the VM model (inventory)
//!     disks/<disk>.qcow2         one per VM disk; <disk> is the id with anything but
//!                                [A-Za-z0-9_-] made `-` (`scsi0:0` → `scsi0-0.qcow2`)
//!     disks/<disk>.qcow2.manifest.json   the converter's manifest
//!     state.json                 per finished stage, the disks' content hashes
//!     conversion-log.json        the injector's log (Linux and Windows)
//!     windows.json               the injector's Windows report (Windows guests)
//!     domain.xml, qemu-cmdline.json, run-qemu.sh, NAME_VARS.fd (EFI)   the KVM target
//!     validation/                the validation boot's evidence
//!     delivery.json, delivered-domain.xml   what `--to` created on the destination
//!                                and the domain XML defined there (deliver.rs)
//!     rollback.json              the finished steps of `v2k rollback` (rollback.rs)
//!     report.json, report.html   the report
//! ```
//!
//! It also owns the one rule for reuse: a stage's result is trusted on a rerun only
//! when its record exists *and* the disks hash to what it recorded (see [`Reuse`]);
//! `migrate` and the wave runner's re-verification both ask [`RunDir::reuse`].

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use v2k_converters::convert::Format;
use v2k_converters::manifest::{manifest_path, Manifest};
use v2k_drivers_injector::{windows, ConversionLog};
use v2k_inventory::model::Vm;

use crate::report::Report;

/// Why a file of the run directory could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum RunDirError {
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not what v2k wrote")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: Box<v2k_outfile::Error>,
    },
    #[error("reading the manifest of {path}")]
    Manifest {
        path: PathBuf,
        #[source]
        source: Box<v2k_converters::Error>,
    },
}

type Result<T, E = RunDirError> = std::result::Result<T, E>;

/// Per-stage record of the disks' content hashes (`state.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) struct State {
    /// Virtual size of each disk, as its manifest says (what the hashes cover).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sizes: Vec<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub converted: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub injected: Option<Vec<String>>,
}

impl State {
    /// The content hashes of the disks as they are now: after injection when the
    /// guest was converted, else as converted.
    pub(crate) fn current_hashes(&self) -> Option<Vec<String>> {
        self.injected.clone().or_else(|| self.converted.clone())
    }
}

/// What an earlier run left that may be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reuse {
    /// Nothing: convert again.
    Nothing,
    /// The converted disks (they hash to the `converted` record).
    Converted,
    /// The converted and injected disks (they hash to the `injected` record).
    Injected,
}

/// One VM's run directory.
#[derive(Debug, Clone)]
pub struct RunDir {
    root: PathBuf,
}

/// A disk id (`scsi0:1`) as a file name (`scsi0-1`).
pub fn disk_file_stem(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

impl RunDir {
    /// A run directory at `root` (nothing is created until [`RunDir::create`]).
    pub fn at(root: impl Into<PathBuf>) -> RunDir {
        RunDir { root: root.into() }
    }

    /// Creates the directory (the user's choice of place) and its `disks/` (ours:
    /// a link planted there is refused, not followed).
    pub fn create(&self) -> Result<()> {
        std::fs::create_dir_all(&self.root).map_err(|source| RunDirError::Io {
            what: "creating",
            path: self.root.clone(),
            source,
        })?;
        let d = self.root.join("disks");
        v2k_outfile::create_dir(&d).map_err(|e| RunDirError::Write {
            path: d,
            source: Box::new(e),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the converted disks of `vm` go, in disk order.
    pub fn disks(&self, vm: &Vm) -> Vec<PathBuf> {
        vm.disks
            .iter()
            .map(|d| {
                self.root
                    .join("disks")
                    .join(format!("{}.qcow2", disk_file_stem(&d.id)))
            })
            .collect()
    }

    pub fn validation_dir(&self) -> PathBuf {
        self.root.join("validation")
    }

    /// The console log and screenshot of the first boot on the destination.
    pub fn after_cutover_dir(&self) -> PathBuf {
        self.root.join("after-cutover")
    }

    pub fn report_json(&self) -> PathBuf {
        self.root.join("report.json")
    }

    pub fn report_html(&self) -> PathBuf {
        self.root.join("report.html")
    }

    fn write(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let path = self.root.join(name);
        v2k_outfile::write_atomic(&path, bytes, true).map_err(|e| RunDirError::Write {
            path,
            source: Box::new(e),
        })
    }

    fn write_json<T: Serialize>(&self, name: &str, v: &T) -> Result<()> {
        let mut b = serde_json::to_vec_pretty(v).map_err(|source| RunDirError::Parse {
            path: self.root.join(name),
            source,
        })?;
        b.push(b'\n');
        self.write(name, &b)
    }

    fn read_json<T: for<'de> Deserialize<'de>>(&self, name: &str) -> Result<T> {
        let path = self.root.join(name);
        let b = std::fs::read(&path).map_err(|source| RunDirError::Io {
            what: "reading",
            path: path.clone(),
            source,
        })?;
        serde_json::from_slice(&b).map_err(|source| RunDirError::Parse { path, source })
    }

    fn remove(&self, name: &str) -> Result<()> {
        let path = self.root.join(name);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(RunDirError::Io {
                what: "removing",
                path,
                source: e,
            }),
            _ => Ok(()),
        }
    }

    pub fn save_vm(&self, vm: &Vm) -> Result<()> {
        self.write_json("vm.json", vm)
    }

    pub fn load_vm(&self) -> Result<Vm> {
        self.read_json("vm.json")
    }

    /// The state record; a missing or unreadable one is an empty record (nothing is
    /// reused on its word).
    pub(crate) fn state(&self) -> State {
        self.read_json("state.json").unwrap_or_default()
    }

    pub(crate) fn save_state(&self, s: &State) -> Result<()> {
        self.write_json("state.json", s)
    }

    /// The manifests of `disks` (written by the converter beside each disk).
    pub fn manifests(&self, disks: &[PathBuf]) -> Result<Vec<Manifest>> {
        disks
            .iter()
            .map(|d| {
                Manifest::load(&manifest_path(d)).map_err(|e| RunDirError::Manifest {
                    path: d.clone(),
                    source: Box::new(e),
                })
            })
            .collect()
    }

    pub fn save_log(&self, log: &ConversionLog) -> Result<()> {
        self.write_json("conversion-log.json", log)
    }

    pub fn load_log(&self) -> Result<ConversionLog> {
        self.read_json("conversion-log.json")
    }

    pub fn remove_log(&self) -> Result<()> {
        self.remove("conversion-log.json")
    }

    /// Saves the Windows report, or removes a stale one of an earlier guest.
    pub fn save_windows(&self, w: Option<&windows::Report>) -> Result<()> {
        match w {
            Some(w) => self.write_json("windows.json", w),
            None => self.remove("windows.json"),
        }
    }

    pub fn load_windows(&self) -> Result<Option<windows::Report>> {
        if !self.root.join("windows.json").exists() {
            return Ok(None);
        }
        self.read_json("windows.json").map(Some)
    }

    /// Writes `report.json` and `report.html`.
    pub fn save_report(&self, r: &Report) -> Result<()> {
        self.write_json("report.json", r)?;
        self.write("report.html", crate::report::render_html(r).as_bytes())
    }

    /// The delivery record (`delivery.json`).
    pub fn load_delivery(&self) -> Result<crate::deliver::Record> {
        self.read_json("delivery.json")
    }

    /// Where a live import stands (`live.json`, [`crate::live::LiveRecord`]).
    pub fn load_live(&self) -> Result<crate::live::LiveRecord> {
        self.read_json(crate::live::RECORD_FILE)
    }

    pub(crate) fn save_delivery(&self, r: &crate::deliver::Record) -> Result<()> {
        self.write_json("delivery.json", r)
    }

    pub(crate) fn save_rollback(&self, r: &crate::rollback::Record) -> Result<()> {
        self.write_json("rollback.json", r)
    }

    /// Writes the domain XML defined on the destination; its path.
    pub(crate) fn save_delivered_xml(&self, xml: &str) -> Result<PathBuf> {
        self.write("delivered-domain.xml", xml.as_bytes())?;
        Ok(self.root.join("delivered-domain.xml"))
    }

    pub fn load_report(&self) -> Result<Report> {
        self.read_json("report.json")
    }

    /// The content hashes of `disks` now, or `None` when one cannot be read.
    pub(crate) fn hashes(disks: &[PathBuf], sizes: &[u64]) -> Option<Vec<String>> {
        if disks.len() != sizes.len() {
            return None;
        }
        disks
            .iter()
            .zip(sizes)
            .map(|(d, &s)| v2k_converters::verify::hash_output(d, Format::Qcow2, s, &|_| {}).ok())
            .collect()
    }

    /// The reuse rule: which finished stage the disks of `vm` still prove. Every disk
    /// is hashed (the cost of a read of the outputs) and compared with the record.
    pub fn reuse(&self, vm: &Vm) -> Reuse {
        let state = self.state();
        let disks = self.disks(vm);
        if state.converted.is_none() && state.injected.is_none() {
            return Reuse::Nothing;
        }
        let Some(now) = Self::hashes(&disks, &state.sizes) else {
            return Reuse::Nothing;
        };
        if state.injected.as_ref() == Some(&now) {
            Reuse::Injected
        } else if state.converted.as_ref() == Some(&now) {
            Reuse::Converted
        } else {
            Reuse::Nothing
        }
    }

    /// Whether a finished migration still stands: its report exists and its disks
    /// still hash to what its last stage recorded. The wave runner asks this before
    /// counting a VM that an earlier run finished.
    pub fn reverify(&self) -> Result<(), ReverifyError> {
        let vm = self.load_vm().map_err(ReverifyError::Unreadable)?;
        self.load_report().map_err(ReverifyError::Unreadable)?;
        let state = self.state();
        let want = if state.injected.is_some() {
            Reuse::Injected
        } else {
            Reuse::Converted
        };
        if state.converted.is_none() && state.injected.is_none() {
            return Err(ReverifyError::NoRecord);
        }
        if self.reuse(&vm) != want {
            return Err(ReverifyError::Changed);
        }
        Ok(())
    }
}

/// Why a finished migration no longer stands.
#[derive(Debug, thiserror::Error)]
pub enum ReverifyError {
    #[error("its run directory cannot be read")]
    Unreadable(#[source] RunDirError),
    #[error("state.json records no finished stage")]
    NoRecord,
    #[error("a disk's content hash changed since it was migrated")]
    Changed,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_ids_become_file_names() {
        assert_eq!(disk_file_stem("scsi0:1"), "scsi0-1");
        assert_eq!(disk_file_stem("vmdisk1"), "vmdisk1");
        assert_eq!(disk_file_stem("../a b"), "---a-b");
    }

    #[test]
    fn a_directory_without_records_reuses_nothing_and_does_not_reverify() {
        let d = tempfile::tempdir().unwrap();
        let r = RunDir::at(d.path());
        assert!(matches!(r.reverify(), Err(ReverifyError::Unreadable(_))));
        assert_eq!(r.state(), State::default());
    }
}
