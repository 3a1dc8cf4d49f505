//! The libvirt backend: a transient domain (`virsh create`) from the target's own
//! domain XML, renamed for the validation, with the serial console logged to a file
//! by virtlogd; `virsh screenshot` and `virsh shutdown` for the rest.
//!
//! With a remote URI (`qemu+ssh://host/system`) the disks, overlays and the log file
//! are paths on the remote host: the work directory must be shared with it.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use v2k_kvm_target::agent::POWEROFF_FW_CFG;
use v2k_kvm_target::{domain_xml, GuestFeatures, Target};

use crate::qemu::{Tail, AGENT_POWEROFF_AFTER, SHUTDOWN_TIMEOUT};
use crate::{agent, diagnose, png, run_tool, Error, Evidence, Options, Result};

const POLL: Duration = Duration::from_millis(500);

fn virsh(uri: &str) -> Command {
    let mut c = Command::new("virsh");
    c.args(["-q", "-c", uri]);
    c
}

fn running(uri: &str, name: &str) -> bool {
    virsh(uri)
        .args(["domstate", name])
        .output()
        .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "running")
        .unwrap_or(false)
}

fn wait_gone(uri: &str, name: &str, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if !running(uri, name) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    false
}

/// The validation domain's XML: the target's, with a unique name, no UUID (so it
/// cannot clash with a defined domain of the same VM), the console logged, and
/// without the destination's host placement (pinning, NUMA binding, hugepages: this
/// boot runs on the conversion host).
pub fn validation_xml(
    t: &Target,
    f: &GuestFeatures,
    name: &str,
    serial_log: &Path,
) -> Result<String> {
    let mut tt = t.for_validation();
    tt.uuid = None;
    tt.name = name.to_string();
    let xml = domain_xml(&tt, f);
    let from = "<serial type='pty'>\n";
    if !xml.contains(from) {
        return Err(Error::Tool("target XML has no serial console".into()));
    }
    let log = quick_escape(&serial_log.to_string_lossy());
    let xml = xml.replacen(
        from,
        &format!("{from}      <log file='{log}' append='off'/>\n"),
        1,
    );
    // The agent's power-off request for a validation boot (see qemu::AGENT_POWEROFF_AFTER).
    let fw_cfg = format!(
        "  <sysinfo type='fwcfg'>\n    <entry name='{POWEROFF_FW_CFG}'>{AGENT_POWEROFF_AFTER}</entry>\n  </sysinfo>\n</domain>"
    );
    match xml.rfind("</domain>") {
        Some(at) => Ok(format!(
            "{}{fw_cfg}{}",
            &xml[..at],
            &xml[at + "</domain>".len()..]
        )),
        None => Err(Error::Tool("target XML has no </domain>".into())),
    }
}

/// `virsh screenshot` of `name` on `uri` (over the connection, so a remote host works
/// too) as `work_dir/screenshot.png`; `None` when libvirt or the image failed.
pub(crate) fn screenshot(uri: &str, name: &str, work_dir: &Path) -> Option<std::path::PathBuf> {
    let raw = work_dir.join("screenshot.raw");
    let shot = work_dir.join("screenshot.png");
    // virsh writes the raw image by name: whatever sits there (a link planted in the
    // work directory) is removed first, never written through.
    let _ = std::fs::remove_file(&raw);
    let taken = run_tool(virsh(uri).args(["screenshot", name]).arg(&raw)).is_ok();
    let bytes = std::fs::read(&raw).ok().filter(|_| taken);
    let _ = std::fs::remove_file(&raw);
    let bytes = bytes?;
    let png = if bytes.starts_with(b"\x89PNG") {
        bytes
    } else {
        png::ppm_to_png(&bytes)?
    };
    v2k_outfile::write_atomic(&shot, &png, true).ok()?;
    Some(shot)
}

fn quick_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
}

pub fn boot(t: &Target, uri: &str, opts: &Options) -> Result<Evidence> {
    let w = &opts.work_dir;
    let serial = w.join("serial.log");
    let shot = w.join("screenshot.png");
    let _ = std::fs::remove_file(&serial);
    let _ = std::fs::remove_file(&shot);
    let name = format!("v2k-validate-{}-{}", t.safe_name(), std::process::id());
    let xml_path = w.join("validation-domain.xml");
    v2k_outfile::write_atomic(
        &xml_path,
        validation_xml(t, &opts.features, &name, &serial)?.as_bytes(),
        true,
    )?;
    let start = Instant::now();
    run_tool(virsh(uri).arg("create").arg(&xml_path))?;

    let mut ev = Evidence {
        serial_log: serial.clone(),
        ..Evidence::default()
    };
    let mut tail = Tail::new();
    let mut fatal = crate::FatalWatch::default();
    let mut polls = 0u32;
    let mut stopped = false;
    loop {
        tail.poll(&serial);
        if let Some(r) = agent::find_report(&tail.text) {
            ev.boot_seconds = Some(start.elapsed().as_secs_f64());
            ev.agent = Some(r);
            break;
        }
        polls += 1;
        if polls.is_multiple_of(4) && !running(uri, &name) {
            // The guest may have reported and powered off between the two looks.
            tail.poll(&serial);
            if let Some(r) = agent::find_report(&tail.text) {
                ev.boot_seconds = Some(start.elapsed().as_secs_f64());
                ev.agent = Some(r);
                ev.clean_shutdown = true;
                stopped = true;
                break;
            }
            ev.ended_early = Some("the domain stopped".into());
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
    if ev.ended_early.is_none() && !stopped {
        ev.screenshot = screenshot(uri, &name, w);
        if ev.agent.is_some() {
            let _ = run_tool(virsh(uri).args(["shutdown", &name]));
            ev.clean_shutdown = wait_gone(uri, &name, SHUTDOWN_TIMEOUT);
        }
    }
    // A transient domain disappears when it stops; destroy whatever is left.
    let _ = virsh(uri).args(["destroy", &name]).output();
    tail.poll(&serial);
    if ev.agent.is_none() {
        ev.diagnosis = diagnose(&tail.text);
    }
    Ok(ev)
}

#[cfg(test)]
mod tests {
    use super::*;
    use v2k_kvm_target::{Accel, DiskBus, Firmware, NetTarget, TargetNic};

    fn target() -> Target {
        Target {
            name: "web01".into(),
            uuid: Some("564d0000-0000-0000-0000-000000000001".into()),
            memory_mib: 1024,
            vcpus: 2,
            sockets: 1,
            cores: 2,
            firmware: Firmware::Bios,
            machine: "pc".into(),
            accel: Accel::Tcg,
            disk_bus: DiskBus::VirtioBlk,
            disks: vec!["/var/lib/v2k/web01/disk0.qcow2".into()],
            // A VMware disk identity: <serial> validated with the rest.
            disk_uuids: vec![Some("6000c2930f8356400b2c082cac6f3574".into())],
            nics: vec![TargetNic {
                mac: "00:50:56:3a:c1:01".into(),
                vmware_network: Some("VM Network".into()),
                target: NetTarget::User,
            }],
            tuning: Default::default(),
        }
    }

    #[test]
    fn validation_domain_logs_the_console_asks_for_poweroff_and_is_schema_valid() {
        let t = tempfile::tempdir().unwrap();
        let log = t.path().join("serial & log.txt");
        let xml = validation_xml(
            &target(),
            &GuestFeatures::default(),
            "v2k-validate-web01-1",
            &log,
        )
        .unwrap();
        assert!(xml.contains("<name>v2k-validate-web01-1</name>"), "{xml}");
        assert!(!xml.contains("<uuid>"), "{xml}");
        assert!(
            xml.contains("<serial>6000c2930f8356400b2c</serial>"),
            "{xml}"
        );
        assert!(
            xml.contains("serial &amp; log.txt' append='off'/>"),
            "{xml}"
        );
        assert!(
            xml.contains(&format!(
                "<entry name='{POWEROFF_FW_CFG}'>{AGENT_POWEROFF_AFTER}</entry>"
            )),
            "{xml}"
        );
        assert!(xml.trim_end().ends_with("</domain>"), "{xml}");
        // The schema check needs libvirt's tools (scripts/setup.sh installs them).
        let path = t.path().join("d.xml");
        std::fs::write(&path, &xml).unwrap();
        let o = Command::new("virt-xml-validate")
            .arg(&path)
            .arg("domain")
            .output()
            .expect("virt-xml-validate (libvirt-clients, scripts/setup.sh)");
        assert!(
            o.status.success(),
            "{}\n{xml}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}
