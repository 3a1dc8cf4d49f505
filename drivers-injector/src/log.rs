//! The conversion log: what was found and every change made to the guest, with the
//! file and a before/after excerpt. Written as `conversion-log.json`; the schema is
//! documented in docs/inject.md and versioned by [`LOG_SCHEMA_VERSION`].

use serde::{Deserialize, Serialize};

use crate::inspect::Inspection;

/// Bumped when a field is removed or changes meaning (adding one does not).
pub const LOG_SCHEMA_VERSION: u32 = 1;

/// How an injection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Changes were made; the guest should boot on virtio.
    Converted,
    /// A previous run had done everything: nothing was changed.
    AlreadyConverted,
}

/// One change to the guest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Change {
    /// Stable step id: `initramfs`, `fstab`, `crypttab`, `default-grub`, `lvm-filter`,
    /// `device-map`, `grub-config`, `efi-fallback`, `nic-pin`, `vmware-tools`, `agent`,
    /// `selinux-relabel`, `marker`.
    pub step: String,
    /// The guest file changed (or created, or removed).
    pub file: String,
    /// `edited`, `created`, `removed`, `rebuilt`, `backed-up`, `purged`, `disabled`.
    pub action: String,
    /// Lines only in the old version (or a description of the old state).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub before: String,
    /// Lines only in the new version.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub after: String,
    /// The guest command that made the change, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// How long that command ran, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
}

/// A step that found nothing to do, and why: the proof of idempotence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Unchanged {
    pub step: String,
    pub reason: String,
}

/// The whole log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ConversionLog {
    pub schema_version: u32,
    /// `conversion-log`.
    #[serde(rename = "type")]
    pub kind: String,
    pub tool: String,
    pub vm: String,
    pub disks: Vec<String>,
    /// `virtio-blk` or `virtio-scsi`.
    pub disk_bus: String,
    /// `kvm` or `tcg`, for the appliance.
    pub accel: String,
    pub status: Status,
    pub inspection: Inspection,
    pub changes: Vec<Change>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unchanged: Vec<Unchanged>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Original NIC names pinned to MACs (`name`, `mac`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nic_names: Vec<NicPin>,
    pub agent: AgentInfo,
    /// Seconds from the appliance launch to the last write.
    pub seconds: f64,
    /// Where they went: `launch`, `inspect`, `changes`, `close`.
    pub timings: Timings,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Timings {
    pub launch: f64,
    pub inspect: f64,
    pub changes: f64,
    pub close: f64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct NicPin {
    pub name: String,
    pub mac: String,
    /// How the name was found: `config-mac`, `config-order`, `vmx-slot`.
    pub source: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct AgentInfo {
    pub installed: bool,
    /// Kept after a successful report (`--keep-agent`).
    pub keep: bool,
    /// The prefix of the report line on ttyS0.
    pub line_prefix: String,
}

impl ConversionLog {
    /// A readable summary, one fact per line, for a terminal.
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let i = &self.inspection;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "VM {}: {} {}.{} ({}), root {}",
            crate::edit::printable(&self.vm),
            i.distro,
            i.major_version,
            i.minor_version,
            i.product_name,
            i.root
        );
        for k in &i.kernels {
            let have: Vec<&str> = k
                .virtio
                .iter()
                .filter(|(_, p)| p.present())
                .map(|(d, _)| d.as_str())
                .collect();
            let _ = writeln!(s, "  kernel {}: {}", k.version, have.join(" "));
        }
        let _ = writeln!(
            s,
            "  initramfs {:?}, bootloader {}, network {}",
            i.initramfs_tool,
            i.bootloader.kind,
            i.network_config.join("+")
        );
        let status = match self.status {
            Status::Converted => "converted",
            Status::AlreadyConverted => "already converted: nothing changed",
        };
        let _ = writeln!(
            s,
            "status: {status} ({} changes, {:.1} s)",
            self.changes.len(),
            self.seconds
        );
        for c in &self.changes {
            let _ = writeln!(s, "  {:<16} {:<9} {}", c.step, c.action, c.file);
        }
        for w in &self.warnings {
            let _ = writeln!(s, "  warning: {w}");
        }
        s
    }
}
