//! Agent-only injection: the first-boot agent (its script and its systemd unit, enabled)
//! and nothing else, for a guest booted in its source's own shape to measure the
//! "before" of a migration (`--baseline-boot`, docs/evidence.md). No driver, initramfs,
//! boot loader, fstab or network change: the guest must boot as it did on VMware, so
//! its figures are the source's. The disks are the caller's throw-away QCOW2 overlays
//! over the source's disks (the source itself is only ever a read-only backing file).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::appliance::Appliance;
use crate::{agent, inspect, Accel, Error, Result};

/// What [`install_agent_only`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentOnly {
    /// The guest paths written: the script, the unit, the link enabling it, and
    /// `/.autorelabel` on an SELinux guest (the files were written unlabelled).
    pub files: Vec<String>,
    /// The guest's os-release `PRETTY_NAME`.
    pub os: String,
    pub seconds: f64,
}

/// Installs the first-boot agent (reporting once, then deleting itself) on the guest
/// of `disks`: QCOW2 files, normally overlays whose backing file is the source disk.
/// A guest without a Linux root (Windows included) is refused: the Windows agent
/// comes with the driver conversion.
pub fn install_agent_only(
    disks: &[PathBuf],
    accel: Accel,
    progress: &mut dyn FnMut(&str),
) -> Result<AgentOnly> {
    if disks.is_empty() {
        return Err(Error::Input("no disk given".into()));
    }
    if let Some(d) = disks.iter().find(|d| !is_qcow2(d)) {
        return Err(Error::Disk {
            path: d.clone(),
            message: "not a QCOW2 file (the agent goes on an overlay, never on the source)".into(),
        });
    }
    let started = Instant::now();
    progress(&format!(
        "installing the agent only ({}) on {} disk(s)",
        accel.as_str(),
        disks.len()
    ));
    let app = Appliance::launch(disks, accel, false)?;
    let (_root, _mounts, rel) = inspect::mount_root(&app)?;
    let mut files = Vec::new();
    app.mkdir_p("/usr/local/sbin")?;
    app.write(agent::SCRIPT_PATH, &agent::script(false, &[]))?;
    app.g
        .chmod(0o755, agent::SCRIPT_PATH)
        .map_err(crate::appliance::gerr("chmod agent"))?;
    files.push(agent::SCRIPT_PATH.to_string());
    app.write(agent::UNIT_PATH, &agent::unit())?;
    files.push(agent::UNIT_PATH.to_string());
    app.mkdir_p("/etc/systemd/system/multi-user.target.wants")?;
    app.g
        .ln_sf(agent::UNIT_PATH, agent::WANTS_LINK)
        .map_err(crate::appliance::gerr("enabling the agent"))?;
    files.push(agent::WANTS_LINK.to_string());
    // Files written from outside carry no SELinux label: an enforcing guest would not
    // run the unit. A relabel on the first boot fixes that (and reboots once).
    let selinux = app
        .read_opt("/etc/selinux/config")?
        .and_then(|t| {
            t.lines()
                .filter_map(|l| l.trim().strip_prefix("SELINUX="))
                .map(|v| v.trim().to_string())
                .next_back()
        })
        .is_some_and(|v| v == "enforcing" || v == "permissive");
    if selinux {
        app.write("/.autorelabel", "")?;
        files.push("/.autorelabel".into());
    }
    app.close()?;
    Ok(AgentOnly {
        files,
        os: rel.pretty_name.clone(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// A regular file (not a link) starting with QCOW2's magic.
fn is_qcow2(d: &Path) -> bool {
    let mut magic = [0u8; 4];
    std::fs::symlink_metadata(d).is_ok_and(|m| m.is_file())
        && std::fs::File::open(d)
            .and_then(|mut f| f.read_exact(&mut magic))
            .is_ok()
        && &magic == b"QFI\xfb"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_qcow2_files_are_taken_never_a_vmdk_or_a_link() {
        let t = tempfile::tempdir().unwrap();
        let vmdk = t.path().join("src.vmdk");
        std::fs::write(&vmdk, b"KDMV\x01\0\0\0").unwrap();
        let q = t.path().join("o.qcow2");
        std::fs::write(&q, b"QFI\xfb\0\0\0\x03").unwrap();
        let link = t.path().join("l.qcow2");
        std::os::unix::fs::symlink(&q, &link).unwrap();
        assert!(is_qcow2(&q) && !is_qcow2(&vmdk) && !is_qcow2(&link));
        for bad in [&vmdk, &link] {
            let e =
                install_agent_only(&[q.clone(), bad.clone()], Accel::Tcg, &mut |_| {}).unwrap_err();
            assert!(e.to_string().contains("not a QCOW2 file"), "{e}");
        }
    }
}
