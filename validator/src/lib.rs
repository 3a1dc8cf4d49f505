//! Boots a converted VM on a KVM validation host and judges it from inside.
//!
//! [`validate`] takes the KVM [`Target`] that `v2k inject` defined, boots it on an
//! overlay of each disk (so the migrated disks are never written, unless
//! `keep_changes`), through libvirt or QEMU directly, waits for the first-boot agent's
//! report on the serial console, takes a screenshot of the console, shuts the guest
//! down, and returns each [`Check`] with its reason plus the evidence (serial log,
//! screenshot, boot time); the report that shows them is `v2k-migrate`'s. Guest networking stays what the target says; targets made
//! for tests use QEMU user networking with `restrict=on`.

mod agent;
pub mod checks;
pub mod console;
mod libvirt;
pub mod perf;
mod png;
mod qemu;
mod qmp;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use v2k_kvm_target::{Accel, GuestFeatures, Target};

pub use agent::AgentReport;
pub use checks::{Check, Expectations};

/// Where the validation boot runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Backend {
    /// A libvirt daemon, by URI (`qemu:///system`, `qemu+ssh://host/system`).
    Libvirt { uri: String },
    /// `qemu-system-x86_64` started directly on this machine.
    Qemu,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub backend: Backend,
    /// Time allowed from start to the agent's report.
    pub boot_timeout: Duration,
    /// Boot the disks themselves instead of throw-away overlays.
    pub keep_changes: bool,
    /// Where the serial log, screenshot and overlays go.
    pub work_dir: PathBuf,
    /// Guest features of the target (a Windows guest's RTC and Hyper-V settings), so
    /// that the validation boot runs the VM as it will run in production.
    pub features: GuestFeatures,
}

/// What was observed during the boot.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct Evidence {
    pub serial_log: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub screenshot: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentReport>,
    /// Seconds from start to the agent's report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_seconds: Option<f64>,
    pub timed_out: bool,
    /// The hypervisor ended before the report (its own message, or the guest's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_early: Option<String>,
    /// The guest powered off when asked (ACPI), rather than being killed.
    pub clean_shutdown: bool,
    /// What the console showed that explains a failure (initramfs alert, panic…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diagnosis: Option<String>,
    /// Why the boot had to be started again (its hypervisor crashed first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarted: Option<String>,
}

/// The result of one validation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct Validation {
    pub backend: Backend,
    pub accel: Accel,
    pub passed: bool,
    pub checks: Vec<Check>,
    pub evidence: Evidence,
    pub total_seconds: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Tool(String),
    #[error(transparent)]
    Write(#[from] v2k_outfile::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// Runs a tool and returns its stdout, or an error with its stderr.
pub(crate) fn run_tool(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().map_err(io(format!("running {cmd:?}")))?;
    if !out.status.success() {
        return Err(Error::Tool(format!(
            "{:?} failed: {}",
            cmd,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Creates throw-away QCOW2 overlays of `disks` in `dir`.
pub(crate) fn overlays(disks: &[PathBuf], dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for (i, d) in disks.iter().enumerate() {
        let base = std::fs::canonicalize(d).map_err(io(format!("resolving {}", d.display())))?;
        let o = dir.join(format!("overlay-{i}.qcow2"));
        let _ = std::fs::remove_file(&o);
        run_tool(
            Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
                .arg(&base)
                .arg(&o),
        )?;
        out.push(o);
    }
    Ok(out)
}

/// Boots `target` and judges it against `expect`.
pub fn validate(target: &Target, expect: &Expectations, opts: &Options) -> Result<Validation> {
    let start = std::time::Instant::now();
    // The work directory's parent is the caller's; the directory itself holds the
    // overlays and logs this boot writes, so a link planted in its place is refused.
    if let Some(parent) = opts.work_dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io(format!("creating {}", parent.display())))?;
    }
    v2k_outfile::create_dir(&opts.work_dir)?;
    let mut t = target.clone();
    let overlay_files = if opts.keep_changes {
        Vec::new()
    } else {
        let o = overlays(&target.disks, &opts.work_dir)?;
        t.disks = o.clone();
        o
    };
    // The firmware's variable store is the VM's NVRAM: a validation boot runs on a
    // throw-away copy of it, as on disk overlays, unless the changes are kept.
    let mut vars_copy = None;
    if let Some(vars) = target.firmware.vars() {
        let (_, template) = target
            .firmware
            .images()
            .expect("an EFI target has firmware images");
        if opts.keep_changes {
            v2k_kvm_target::firmware::ensure_vars(&target.firmware)
                .map_err(io(format!("creating {}", vars.display())))?;
        } else {
            let copy = opts.work_dir.join("efi-vars.fd");
            // The VM's own store when the target stage made it, else a fresh template.
            let src = if vars.exists() {
                vars
            } else {
                Path::new(template)
            };
            let bytes = std::fs::read(src).map_err(io(format!("reading {}", src.display())))?;
            v2k_outfile::write_atomic(&copy, &bytes, true)?;
            t.firmware = target.firmware.with_vars(copy.clone());
            vars_copy = Some(copy);
        }
    }
    let evidence = match &opts.backend {
        Backend::Qemu => qemu::boot(&t, opts),
        Backend::Libvirt { uri } => libvirt::boot(&t, uri, opts),
    };
    for o in overlay_files.iter().chain(&vars_copy) {
        let _ = std::fs::remove_file(o);
    }
    let evidence = evidence?;
    let checks = checks::judge(expect, &evidence, opts.boot_timeout);
    Ok(Validation {
        backend: opts.backend.clone(),
        accel: target.accel,
        passed: checks.iter().all(|c| c.passed),
        checks,
        evidence,
        total_seconds: start.elapsed().as_secs_f64(),
    })
}

/// Boots a machine of the caller's making directly under QEMU (`argv` builds its
/// command line from the `-serial` value) and waits for the first-boot agent's report,
/// as a validation boot does: the baseline boot of a source in its own shape
/// (docs/evidence.md). No checks are judged; the evidence (serial log, the agent's
/// report with its counters) is returned. `opts.work_dir` is made here (its parent
/// must exist); the disks are the caller's (overlays it made).
pub fn boot_qemu(opts: &Options, argv: impl FnOnce(&str) -> Vec<String>) -> Result<Evidence> {
    v2k_outfile::create_dir(&opts.work_dir)?;
    qemu::boot_argv(opts, argv)
}

/// Settings of the check after cutover ([`after_cutover`]).
#[derive(Debug, Clone)]
pub struct AfterCutover {
    /// The destination's libvirt URI and the delivered domain's name.
    pub uri: String,
    pub domain: String,
    /// Time allowed from start to the agent's report.
    pub boot_timeout: Duration,
    /// Where the console log and screenshot go (made here; its parent must exist).
    pub work_dir: PathBuf,
    /// The accelerator the delivered domain runs with (for the report).
    pub accel: Accel,
}

/// How long virsh may take to open a console stream (over ssh: a login).
const CONSOLE_CONNECT: Duration = Duration::from_secs(60);

/// Starts the delivered domain where it will live and judges it there: started
/// paused, its console attached (over the libvirt connection), then resumed, so the
/// first-boot agent's report cannot pass unseen; then `expect`'s checks (with
/// `reachability`, the VM's own network: its caller sets it for agents that report
/// it). The domain is left running: this is production.
/// A domain already running is refused: its first boot, and the report, are gone.
pub fn after_cutover(expect: &Expectations, opts: &AfterCutover) -> Result<Validation> {
    let start = std::time::Instant::now();
    let uri = opts.uri.as_str();
    let name = opts.domain.as_str();
    v2k_outfile::create_dir(&opts.work_dir)?;
    let state = run_tool(Command::new("virsh").args(["-q", "-c", uri, "domstate", name]))?;
    match state.trim() {
        "shut off" => {
            run_tool(Command::new("virsh").args(["-q", "-c", uri, "start", "--paused", name]))?;
        }
        // Started paused by a run that was killed before it resumed the domain: the
        // first boot has not begun yet.
        "paused" => {}
        other => {
            return Err(Error::Tool(format!(
                "{name} on {uri} is {other}, not shut off: its first boot (and the agent's \
                 report) cannot be observed"
            )))
        }
    }
    let watch = || {
        observe(uri, name, opts).inspect_err(|_| {
            // A domain left paused is neither the source nor a working target.
            let _ = Command::new("virsh")
                .args(["-q", "-c", uri, "resume", name])
                .output();
        })
    };
    let mut evidence = watch()?;
    // The hypervisor itself crashed before the guest reported (seen here: QEMU 10's
    // TCG aborting on an assertion in its memory map): that says nothing of the VM,
    // whose agent, having not reported, is still installed. One more start, and the
    // crash stays in the evidence.
    if evidence.agent.is_none() && crashed(uri, name) {
        run_tool(Command::new("virsh").args(["-q", "-c", uri, "start", "--paused", name]))?;
        let first = evidence.ended_early.take().unwrap_or_default();
        evidence = watch()?;
        evidence.restarted = Some(format!(
            "the hypervisor crashed during the first start (libvirt: shut off, crashed; {first}); started once more"
        ));
    }
    let checks = checks::judge(expect, &evidence, opts.boot_timeout);
    Ok(Validation {
        backend: Backend::Libvirt {
            uri: uri.to_string(),
        },
        accel: opts.accel,
        passed: checks.iter().all(|c| c.passed),
        checks,
        evidence,
        total_seconds: start.elapsed().as_secs_f64(),
    })
}

/// Whether libvirt says `name` stopped because its hypervisor crashed.
fn crashed(uri: &str, name: &str) -> bool {
    run_tool(Command::new("virsh").args(["-q", "-c", uri, "domstate", "--reason", name]))
        .is_ok_and(|s| s.trim() == "shut off (crashed)")
}

/// The verdict of a first boot that could not be watched at all (`why`): one failed
/// `agent-report` check naming the cause.
pub fn unobserved(uri: &str, accel: Accel, why: &str) -> Validation {
    Validation {
        backend: Backend::Libvirt {
            uri: uri.to_string(),
        },
        accel,
        passed: false,
        checks: vec![Check {
            id: "agent-report".into(),
            passed: false,
            reason: format!("the first boot could not be watched: {why}"),
        }],
        evidence: Evidence::default(),
        total_seconds: 0.0,
    }
}

fn observe(uri: &str, name: &str, opts: &AfterCutover) -> Result<Evidence> {
    let mut console = console::Console::attach(uri, name, CONSOLE_CONNECT)?;
    run_tool(Command::new("virsh").args(["-q", "-c", uri, "resume", name]))?;
    let t0 = std::time::Instant::now();
    let serial = opts.work_dir.join("serial.log");
    let mut ev = Evidence {
        serial_log: serial.clone(),
        ..Evidence::default()
    };
    let mut fatal = FatalWatch::default();
    loop {
        let text = console.text();
        if let Some(r) = agent::find_report(&text) {
            ev.boot_seconds = Some(t0.elapsed().as_secs_f64());
            ev.agent = Some(r);
            break;
        }
        if !console.attached() {
            ev.ended_early = Some("the console closed (the domain stopped)".into());
            break;
        }
        if t0.elapsed() > opts.boot_timeout {
            ev.timed_out = true;
            break;
        }
        if fatal.give_up(&text, std::time::Instant::now()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    ev.screenshot = libvirt::screenshot(uri, name, &opts.work_dir);
    let text = console.text();
    drop(console);
    v2k_outfile::write_atomic(&serial, text.as_bytes(), true)?;
    if ev.agent.is_none() {
        ev.diagnosis = diagnose(&text);
    }
    Ok(ev)
}

/// Signs on the serial console that explain a missing agent report: (sign, meaning,
/// fatal). A fatal sign is one the guest does not get past without help (a shell, a
/// panic, firmware with nothing to boot): once seen, waiting out the boot timeout only
/// costs time, so the validator stops [`FATAL_GRACE`] later.
const SIGNS: &[(&str, &str, bool)] = &[
    (
        "ALERT!",
        "the initramfs did not find the root filesystem",
        true,
    ),
    (
        "does not exist.  Dropping to a shell",
        "the initramfs did not find the root filesystem",
        true,
    ),
    ("Kernel panic", "kernel panic", true),
    (
        "Could not boot",
        "dracut could not boot the root filesystem",
        true,
    ),
    // dracut goes on waiting after this warning; the emergency shell comes later.
    (
        "dracut-initqueue timeout",
        "dracut timed out waiting for the root device",
        false,
    ),
    ("You are in emergency mode", "systemd emergency mode", true),
    (
        "Give root password for maintenance",
        "systemd emergency mode",
        true,
    ),
    (
        "No bootable device",
        "the firmware found no bootable disk",
        true,
    ),
    // OVMF with no boot entry and no \EFI\BOOT\BOOTX64.EFI on any disk.
    (
        "No bootable option or device was found",
        "the UEFI firmware found no boot loader (no boot entry, no \\EFI\\BOOT\\BOOTX64.EFI)",
        true,
    ),
    // The same, on an OVMF build with its shell: after the disk, the shell is the
    // last boot option (with QEMU's boot order restricting the options to the disk).
    (
        "\"EFI Internal Shell\" from Fv(",
        "the UEFI firmware found no boot loader (no boot entry, no \\EFI\\BOOT\\BOOTX64.EFI) and started its built-in shell",
        true,
    ),
    // GRUB may still find a configuration after this.
    ("error: no such device", "GRUB did not find its root", false),
];

/// How long the validator keeps reading the console after a fatal sign (the lines
/// after it often say why) before it stops waiting for a report that cannot come.
pub(crate) const FATAL_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// What the serial console says went wrong, when the agent never reported.
pub(crate) fn diagnose(serial: &str) -> Option<String> {
    SIGNS.iter().find_map(|(sign, meaning, _)| {
        let line = serial.lines().find(|l| l.contains(sign))?;
        let line: String = line.chars().filter(|c| !c.is_control()).take(200).collect();
        Some(format!("{meaning}: \"{}\"", line.trim()))
    })
}

/// Watches the console for a fatal sign; says when to stop waiting for the report.
#[derive(Default)]
pub(crate) struct FatalWatch {
    seen: Option<std::time::Instant>,
}

impl FatalWatch {
    /// True once a fatal sign has been on the console for [`FATAL_GRACE`] at `now`.
    pub(crate) fn give_up(&mut self, serial: &str, now: std::time::Instant) -> bool {
        if self.seen.is_none()
            && SIGNS
                .iter()
                .any(|(sign, _, fatal)| *fatal && serial.contains(sign))
        {
            self.seen = Some(now);
        }
        self.seen
            .is_some_and(|t| now.saturating_duration_since(t) >= FATAL_GRACE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    const OVMF: &str = "BdsDxe: failed to load Boot0001 \"UEFI Misc Device\" from PciRoot(0x0)/Pci(0x3,0x0): Not Found\n\
                        BdsDxe: No bootable option or device was found.\n";

    #[test]
    fn ovmf_falling_back_to_its_shell_is_named_and_ends_the_wait() {
        let shell = "BdsDxe: failed to load Boot0001 \"UEFI Misc Device\" from PciRoot(0x0)/Pci(0x1,0x0): Not Found\n\
                     BdsDxe: loading Boot0002 \"EFI Internal Shell\" from Fv(7CB8BDC9-F8EB-4F34-AAEA-3EE4AF6516A1)/FvFile(7C04A583-9E3E-4F1C-AD65-E05268D0B4D1)\n";
        let d = diagnose(shell).unwrap();
        assert!(d.contains("started its built-in shell"), "{d}");
        let mut w = FatalWatch::default();
        let t0 = Instant::now();
        assert!(!w.give_up(shell, t0));
        assert!(w.give_up(shell, t0 + FATAL_GRACE));
    }

    #[test]
    fn ovmf_with_nothing_to_boot_is_named_and_ends_the_wait() {
        let d = diagnose(OVMF).unwrap();
        assert!(
            d.starts_with("the UEFI firmware found no boot loader"),
            "{d}"
        );
        assert!(d.contains("No bootable option or device was found."), "{d}");
        let mut w = FatalWatch::default();
        let t0 = Instant::now();
        assert!(!w.give_up(OVMF, t0), "stops only after the grace");
        assert!(!w.give_up(OVMF, t0 + FATAL_GRACE - Duration::from_millis(1)));
        assert!(w.give_up(OVMF, t0 + FATAL_GRACE));
    }

    #[test]
    fn a_warning_the_guest_gets_past_keeps_the_wait() {
        let serial =
            "dracut-initqueue[312]: Warning: dracut-initqueue timeout - starting timeout scripts\n\
                      error: no such device: 1234-abcd.\n";
        assert!(diagnose(serial).is_some());
        let mut w = FatalWatch::default();
        let t0 = Instant::now();
        assert!(!w.give_up(serial, t0));
        assert!(!w.give_up(serial, t0 + Duration::from_secs(3600)));
    }

    #[test]
    fn an_initramfs_shell_ends_the_wait() {
        let serial = "Gave up waiting for root file system device.\nALERT!  /dev/sda1 does not exist.  Dropping to a shell!\n";
        let mut w = FatalWatch::default();
        let t0 = Instant::now();
        w.give_up(serial, t0);
        assert!(w.give_up(serial, t0 + FATAL_GRACE));
    }
}
