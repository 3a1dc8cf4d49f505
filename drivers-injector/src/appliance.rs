//! The libguestfs appliance: one handle over the converted disks, launched with the
//! chosen accelerator, with every call's error turned into ours. Guest filesystems are
//! only ever mounted inside this appliance, never by the host kernel (SECURITY.md).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use guestfs::{AddDriveOptArgs, Handle};

use crate::error::{Error, Result};
use v2k_kvm_target::Accel;

/// Appliance memory in MiB: dracut and zstd-compressed initramfs builds run inside it,
/// and libguestfs' default (1280 on x86) is enough for them with a margin.
const APPLIANCE_MEMORY_MIB: i32 = 1536;

/// Under TCG about one launch in 40 aborts at start (FIELD-NOTES §8): retry once.
const LAUNCH_ATTEMPTS: u32 = 2;

/// How long a launch waits for another process to release a disk's image lock. A
/// run killed while its appliance was up leaves that QEMU behind until libguestfs'
/// recovery process notices (it polls every couple of seconds) and kills it; a rerun
/// started at once must wait for it rather than fail on "Failed to get write lock".
const LOCK_WAIT: Duration = Duration::from_secs(30);
const LOCK_POLL: Duration = Duration::from_millis(500);

/// An open, launched appliance over the converted disks.
pub struct Appliance {
    pub(crate) g: Handle,
    pub disks: Vec<PathBuf>,
}

/// Extracts libguestfs' own message from its error (the binding offers only `Debug`).
/// Entries v2k lists in one guest directory tree (an ESP holds tens; a hostile guest
/// could hold millions, each costing memory in the appliance's reply).
const MAX_FIND_ENTRIES: usize = 100_000;

pub(crate) fn gerr(call: impl Into<String>) -> impl FnOnce(guestfs::Error) -> Error {
    let call = call.into();
    move |e| Error::Guestfs {
        call,
        message: message_of(&e),
    }
}

/// Waits until no other process holds `disk`'s QEMU image lock, probing with
/// `qemu-img info` (which fails with "Failed to get shared \"write\" lock" while a
/// writer has it open). Any other probe failure is left for the launch to report.
pub(crate) fn wait_unlocked(disk: &Path, timeout: Duration) -> Result<()> {
    let start = Instant::now();
    loop {
        let Ok(o) = Command::new("qemu-img")
            .args(["info", "-f", "qcow2", "--output=json"])
            .arg(disk)
            .output()
        else {
            return Ok(());
        };
        let stderr = String::from_utf8_lossy(&o.stderr);
        if o.status.success() || !stderr.contains("lock") {
            return Ok(());
        }
        if start.elapsed() >= timeout {
            return Err(Error::Disk {
                path: disk.to_path_buf(),
                message: format!(
                    "still in use by another process after {} s (a QEMU left by an \
                     interrupted run? `fuser` names it): {}",
                    timeout.as_secs(),
                    stderr.lines().next().unwrap_or_default().trim()
                ),
            });
        }
        std::thread::sleep(LOCK_POLL);
    }
}

fn message_of(e: &guestfs::Error) -> String {
    let dbg = format!("{e:?}");
    // APIError { operation: "mount", message: "...", errno: 5 }
    if let Some(start) = dbg.find("message: \"") {
        let rest = &dbg[start + 10..];
        if let Some(end) = rest.rfind("\", errno") {
            return rest[..end].replace("\\\"", "\"").replace("\\n", " ");
        }
    }
    dbg
}

impl Appliance {
    /// Creates a handle over `disks` (QCOW2, read-write) and launches it.
    pub fn launch(disks: &[PathBuf], accel: Accel, readonly: bool) -> Result<Appliance> {
        for d in disks {
            wait_unlocked(d, LOCK_WAIT)?;
        }
        let mut last = None;
        for _ in 0..LAUNCH_ATTEMPTS {
            match Self::try_launch(disks, accel, readonly) {
                Ok(a) => return Ok(a),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("at least one attempt"))
    }

    fn try_launch(disks: &[PathBuf], accel: Accel, readonly: bool) -> Result<Appliance> {
        let g = Handle::create().map_err(gerr("create"))?;
        // The direct backend needs no libvirt daemon; force_tcg keeps it off a KVM that
        // would hang. Explicit environment settings of the user win.
        if std::env::var_os("LIBGUESTFS_BACKEND").is_none() {
            g.set_backend("direct").map_err(gerr("set_backend"))?;
        }
        if accel == Accel::Tcg && std::env::var_os("LIBGUESTFS_BACKEND_SETTINGS").is_none() {
            g.set_backend_settings(&["force_tcg"])
                .map_err(gerr("set_backend_settings"))?;
        }
        g.set_memsize(APPLIANCE_MEMORY_MIB)
            .map_err(gerr("set_memsize"))?;
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get().min(4)) as i32;
        g.set_smp(cpus).map_err(gerr("set_smp"))?;
        for d in disks {
            let name = path_str(d)?;
            g.add_drive(
                name,
                AddDriveOptArgs {
                    readonly: Some(readonly),
                    // Never probe: a guest-controlled raw image could claim any format.
                    format: Some("qcow2"),
                    iface: None,
                    name: None,
                    label: None,
                    protocol: None,
                    server: None,
                    username: None,
                    secret: None,
                    cachemode: Some("unsafe"),
                    discard: None,
                    copyonread: None,
                },
            )
            .map_err(|e| Error::Disk {
                path: d.clone(),
                message: message_of(&e),
            })?;
        }
        g.launch().map_err(gerr("launch"))?;
        Ok(Appliance {
            g,
            disks: disks.to_vec(),
        })
    }

    /// Unmounts, syncs and shuts the appliance down so every write reaches the disks.
    pub fn close(self) -> Result<()> {
        let _ = self.g.umount_all();
        self.g.sync().map_err(gerr("sync"))?;
        self.g.shutdown().map_err(gerr("shutdown"))?;
        Ok(())
    }

    // Thin wrappers naming the guest path in errors.

    pub fn exists(&self, p: &str) -> Result<bool> {
        self.g.exists(p).map_err(gerr(format!("exists {p}")))
    }

    pub fn is_file(&self, p: &str) -> Result<bool> {
        self.g
            .is_file(
                p,
                guestfs::IsFileOptArgs {
                    followsymlinks: Some(true),
                },
            )
            .map_err(gerr(format!("is_file {p}")))
    }

    pub fn is_dir(&self, p: &str) -> Result<bool> {
        self.g
            .is_dir(
                p,
                guestfs::IsDirOptArgs {
                    followsymlinks: None,
                },
            )
            .map_err(gerr(format!("is_dir {p}")))
    }

    /// Reads a guest text file, lossily: config files are read for editing, never
    /// executed, and a stray byte must not abort a conversion.
    pub fn read(&self, p: &str) -> Result<String> {
        let b = self.g.read_file(p).map_err(gerr(format!("reading {p}")))?;
        Ok(String::from_utf8_lossy(&b).into_owned())
    }

    /// Reads a file if it exists (following symlinks inside the guest only).
    pub fn read_opt(&self, p: &str) -> Result<Option<String>> {
        if self.is_file(p)? {
            Ok(Some(self.read(p)?))
        } else {
            Ok(None)
        }
    }

    pub fn write(&self, p: &str, content: &str) -> Result<()> {
        self.g
            .write(p, content.as_bytes())
            .map_err(gerr(format!("writing {p}")))
    }

    pub fn ls(&self, dir: &str) -> Result<Vec<String>> {
        if !self.is_dir(dir)? {
            return Ok(Vec::new());
        }
        self.g.ls(dir).map_err(gerr(format!("listing {dir}")))
    }

    /// Every path under `dir` (full guest paths), at most [`MAX_FIND_ENTRIES`]: the
    /// guest controls how many there are.
    pub fn find_files(&self, dir: &str) -> Result<Vec<String>> {
        let rel = self.g.find(dir).map_err(gerr(format!("listing {dir}")))?;
        if rel.len() > MAX_FIND_ENTRIES {
            return Err(Error::Refused(format!(
                "{dir} holds {} entries, more than the {MAX_FIND_ENTRIES} v2k reads",
                rel.len()
            )));
        }
        // libguestfs gives names relative to `dir`, but with a leading `/` when `dir`
        // is a mount point (seen on an ESP at /boot/efi: `/EFI/debian/grubx64.efi`).
        let base = dir.trim_end_matches('/');
        Ok(rel
            .into_iter()
            .map(|r| format!("{base}/{}", r.trim_start_matches('/')))
            .collect())
    }

    pub fn mkdir_p(&self, p: &str) -> Result<()> {
        self.g.mkdir_p(p).map_err(gerr(format!("creating {p}")))
    }

    /// Copies a guest file to another guest path (both inside the guest's tree).
    pub fn copy_file(&self, from: &str, to: &str) -> Result<()> {
        self.g
            .cp(from, to)
            .map_err(gerr(format!("copying {from} to {to}")))
    }

    pub fn glob(&self, pattern: &str) -> Result<Vec<String>> {
        self.g
            .glob_expand(
                pattern,
                guestfs::GlobExpandOptArgs {
                    directoryslash: None,
                },
            )
            .map_err(gerr(format!("glob {pattern}")))
    }

    /// Runs a guest program (chrooted into the guest root, with /dev, /proc and /sys
    /// bound by the daemon). `what` names it in errors.
    pub fn command(&self, what: &str, argv: &[&str]) -> Result<String> {
        self.g.command(argv).map_err(|e| Error::GuestTool {
            what: what.to_string(),
            message: message_of(&e),
        })
    }
}

/// What one program of [`Appliance::run_together`] did.
#[derive(Debug)]
pub struct JobOutcome {
    /// Exit status 0.
    pub ok: bool,
    /// Its stdout and stderr, interleaved (kept for error messages).
    pub output: String,
    /// Its own duration, measured inside the guest.
    pub seconds: f64,
}

/// The shell that runs a batch: each job in the background, its output, exit status
/// and start/end times in files of a private directory under the guest's /tmp.
const TOGETHER_PROLOGUE: &str = r#"d=$(mktemp -d /tmp/v2k-jobs.XXXXXX) || exit 90
echo "$d"
job() { n=$1; shift; s=$(date +%s.%N); "$@" >"$d/$n.out" 2>&1 </dev/null; rc=$?; echo "$rc $s $(date +%s.%N)" >"$d/$n.rc"; }
"#;

impl Appliance {
    /// Runs guest programs at the same time and waits for all of them. Used for the
    /// slow, independent steps (initramfs rebuilds, GRUB regeneration, package
    /// removal): under TCG each costs tens of seconds, and the appliance has a CPU per
    /// host core. They run in ONE chrooted shell, because the daemon unbinds /dev,
    /// /proc and /sys when a command returns, which a program left running in the
    /// background would lose. Errors of the batch itself (no shell, no /tmp) are
    /// errors; each program's failure is reported in its [`JobOutcome`].
    pub fn run_together(&self, what: &str, jobs: &[Vec<String>]) -> Result<Vec<JobOutcome>> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let mut script = TOGETHER_PROLOGUE.to_string();
        for (i, argv) in jobs.iter().enumerate() {
            let words: Vec<String> = argv.iter().map(|w| v2k_kvm_target::sh_quote(w)).collect();
            script.push_str(&format!("job {i} {} &\n", words.join(" ")));
        }
        script.push_str("wait\n");
        let out = self.command(what, &["sh", "-c", &script])?;
        let dir = out.lines().next().unwrap_or("").trim().to_string();
        if !dir.starts_with("/tmp/v2k-jobs.") || dir.contains("..") {
            return Err(Error::GuestTool {
                what: what.to_string(),
                message: format!("unexpected output of the job shell: {out:?}"),
            });
        }
        let mut results = Vec::new();
        for i in 0..jobs.len() {
            let rc = self.read_opt(&format!("{dir}/{i}.rc"))?.unwrap_or_default();
            let output = self
                .read_opt(&format!("{dir}/{i}.out"))?
                .unwrap_or_default();
            let mut f = rc.split_whitespace();
            let code = f.next().and_then(|c| c.parse::<i32>().ok());
            let start = f.next().and_then(|t| t.parse::<f64>().ok());
            let end = f.next().and_then(|t| t.parse::<f64>().ok());
            results.push(JobOutcome {
                ok: code == Some(0),
                output: if code.is_none() {
                    format!("{output}(no exit status recorded)")
                } else {
                    output
                },
                seconds: match (start, end) {
                    (Some(s), Some(e)) if e >= s => e - s,
                    _ => 0.0,
                },
            });
        }
        self.g.rm_rf(&dir).map_err(gerr(format!("rm -rf {dir}")))?;
        Ok(results)
    }
}

pub(crate) fn path_str(p: &Path) -> Result<&str> {
    p.to_str().ok_or_else(|| Error::Disk {
        path: p.to_path_buf(),
        message: "path is not valid UTF-8".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Holds `disk` open for writing in a `qemu-nbd` (as an orphaned appliance would).
    fn hold(disk: &Path, sock: &Path) -> std::process::Child {
        let child = Command::new("qemu-nbd")
            .args(["--persistent", "-f", "qcow2", "-k"])
            .arg(sock)
            .arg(disk)
            .spawn()
            .expect("qemu-nbd (qemu-utils) is needed by this test");
        // qemu-nbd takes the lock as it opens the image, before its socket appears.
        let start = Instant::now();
        while !sock.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "qemu-nbd never started"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        child
    }

    fn image(dir: &Path) -> PathBuf {
        let disk = dir.join("d.qcow2");
        let st = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&disk)
            .arg("16M")
            .status()
            .expect("qemu-img");
        assert!(st.success());
        disk
    }

    #[test]
    fn a_launch_waits_for_a_lock_released_meanwhile() {
        let t = tempfile::tempdir().unwrap();
        let disk = image(t.path());
        let mut nbd = hold(&disk, &t.path().join("s"));
        let killer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(1500));
            nbd.kill().unwrap();
            nbd.wait().unwrap();
        });
        let start = Instant::now();
        wait_unlocked(&disk, Duration::from_secs(20)).unwrap();
        assert!(
            start.elapsed() >= Duration::from_millis(1000),
            "did not wait"
        );
        killer.join().unwrap();
    }

    #[test]
    fn a_lock_held_past_the_timeout_names_the_disk() {
        let t = tempfile::tempdir().unwrap();
        let disk = image(t.path());
        let mut nbd = hold(&disk, &t.path().join("s"));
        let e = wait_unlocked(&disk, Duration::from_secs(1)).unwrap_err();
        nbd.kill().unwrap();
        nbd.wait().unwrap();
        let msg = e.to_string();
        assert!(msg.contains("d.qcow2") && msg.contains("in use"), "{msg}");
        // Unlocked, it returns at once.
        wait_unlocked(&disk, Duration::from_secs(1)).unwrap();
    }
}
