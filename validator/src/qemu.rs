//! The direct-QEMU backend: `qemu-system-x86_64` from the target's own argv, with the
//! serial console to a file, a QMP socket for the screenshot and the ACPI power-down,
//! and a VGA device so there is a console to photograph.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use v2k_kvm_target::agent::POWEROFF_FW_CFG;
use v2k_kvm_target::{qemu_argv, QemuOptions, Target};

use crate::qmp::Qmp;
use crate::{agent, diagnose, io, Evidence, Options, Result};

/// Time the guest gets to power off after the ACPI request.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// Seconds the guest's agent waits after its report before it powers the guest off
/// itself (the validator's fw_cfg entry, see `v2k_kvm_target::agent`): time for
/// the screenshot. Guests that honour ACPI are already off by then.
pub const AGENT_POWEROFF_AFTER: u32 = 3;
/// Serial output kept in memory for matching (the file keeps everything).
const MAX_SERIAL_KEPT: usize = 8 << 20;
const POLL: Duration = Duration::from_millis(500);

/// Reads what a growing log file gained since the last call.
pub(crate) struct Tail {
    offset: u64,
    pub text: String,
}

impl Tail {
    pub fn new() -> Self {
        Tail {
            offset: 0,
            text: String::new(),
        }
    }

    pub fn poll(&mut self, path: &Path) {
        let Ok(mut f) = std::fs::File::open(path) else {
            return;
        };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut buf = Vec::new();
        if let Ok(n) = f.read_to_end(&mut buf) {
            self.offset += n as u64;
            self.text.push_str(&String::from_utf8_lossy(&buf));
            if self.text.len() > MAX_SERIAL_KEPT {
                let cut = self.text.len() - MAX_SERIAL_KEPT / 2;
                let cut = (cut..self.text.len())
                    .find(|&i| self.text.is_char_boundary(i))
                    .unwrap_or(0);
                self.text.drain(..cut);
            }
        }
    }
}

fn wait_exit(child: &mut Child, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

pub fn boot(t: &Target, opts: &Options) -> Result<Evidence> {
    boot_argv(opts, |serial| {
        let q = QemuOptions {
            serial: serial.to_string(),
            snapshot: false,
        };
        // Not the destination's host placement (pinning, NUMA binding, hugepages): this
        // boot runs on the conversion host.
        qemu_argv(&t.for_validation(), &q, &opts.features)
    })
}

/// Boots the command line `argv` makes (given the `-serial` value) and waits for the
/// agent's report: the QEMU backend's boot for any machine (a target, or the source's
/// own shape for a baseline boot).
pub fn boot_argv(opts: &Options, argv: impl FnOnce(&str) -> Vec<String>) -> Result<Evidence> {
    let w = &opts.work_dir;
    let serial = w.join("serial.log");
    let qmp_sock = w.join("qmp.sock");
    let shot = w.join("screenshot.png");
    for p in [&serial, &qmp_sock, &shot] {
        let _ = std::fs::remove_file(p);
    }
    let mut argv = argv(&format!("file:{}", serial.display()));
    argv.extend([
        "-qmp".to_string(),
        format!("unix:{},server=on,wait=off", qmp_sock.display()),
        "-device".to_string(),
        "VGA".to_string(),
        "-fw_cfg".to_string(),
        format!("name={POWEROFF_FW_CFG},string={AGENT_POWEROFF_AFTER}"),
    ]);
    let stderr_path = w.join("qemu.stderr");
    let _ = std::fs::remove_file(&stderr_path);
    let stderr = v2k_outfile::create_new(&stderr_path, 0o644)?;
    let start = Instant::now();
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .map_err(io(format!("starting {}", argv[0])))?;

    let mut ev = Evidence {
        serial_log: serial.clone(),
        ..Evidence::default()
    };
    let mut tail = Tail::new();
    let mut fatal = crate::FatalWatch::default();
    let mut exited = false;
    loop {
        tail.poll(&serial);
        if let Some(r) = agent::find_report(&tail.text) {
            ev.boot_seconds = Some(start.elapsed().as_secs_f64());
            ev.agent = Some(r);
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            // The guest may have reported and powered off between the two looks.
            tail.poll(&serial);
            if let Some(r) = agent::find_report(&tail.text) {
                ev.boot_seconds = Some(start.elapsed().as_secs_f64());
                ev.agent = Some(r);
                ev.clean_shutdown = status.success();
                exited = true;
                break;
            }
            let err = std::fs::read_to_string(&stderr_path).unwrap_or_default();
            ev.ended_early = Some(format!("QEMU exited ({status}): {}", err.trim()));
            break;
        }
        if start.elapsed() > opts.boot_timeout {
            ev.timed_out = true;
            break;
        }
        if fatal.give_up(&tail.text, Instant::now()) {
            // No report can come (crate::SIGNS); the diagnosis below quotes why.
            break;
        }
        std::thread::sleep(POLL);
    }

    if ev.ended_early.is_none() && !exited {
        match Qmp::connect(&qmp_sock, Duration::from_secs(10)) {
            Ok(mut qmp) => {
                let arg = json!({ "filename": shot.to_string_lossy(), "format": "png" });
                if qmp.execute("screendump", arg).is_ok() && shot.exists() {
                    ev.screenshot = Some(shot.clone());
                }
                // A guest that never reported is stuck (initramfs shell, panic):
                // asking it to power off would only wait out the limit.
                if ev.agent.is_some() {
                    let _ = qmp.execute("system_powerdown", json!({}));
                    ev.clean_shutdown = wait_exit(&mut child, SHUTDOWN_TIMEOUT);
                }
                if !ev.clean_shutdown {
                    let _ = qmp.execute("quit", json!({}));
                }
            }
            // No QMP: the guest may already have powered itself off (the agent does).
            Err(_) => {
                ev.clean_shutdown = ev.agent.is_some()
                    && wait_exit(&mut child, Duration::from_secs(1))
                    && matches!(child.try_wait(), Ok(Some(s)) if s.success());
            }
        }
        if !wait_exit(&mut child, Duration::from_secs(5)) {
            let _ = child.kill();
        }
    }
    let _ = child.wait();
    tail.poll(&serial);
    if ev.agent.is_none() {
        ev.diagnosis = diagnose(&tail.text);
    }
    let _ = std::fs::remove_file(&qmp_sock);
    Ok(ev)
}
