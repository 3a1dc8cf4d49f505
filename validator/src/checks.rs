//! The checks a validation boot is judged by, each passed or failed with its reason.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Evidence;

/// What the converted guest must show.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct Expectations {
    /// Mount points that must be mounted (besides `/`), e.g. `/data`.
    pub mounts: Vec<String>,
    /// NICs that must be up with this MAC (and name, when one is expected) and hold
    /// an IPv4 address.
    pub nics: Vec<ExpectedNic>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExpectedNic {
    /// The name the guest must give it; `None` when the guest names it itself (a
    /// Windows adapter, "Ethernet 2"), so that only the MAC and address count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub mac: String,
}

impl ExpectedNic {
    /// The check id: `nic:<name>`, or `nic:<mac>` for a NIC named by the guest.
    pub(crate) fn check_id(&self) -> String {
        format!("nic:{}", self.name.as_deref().unwrap_or(&self.mac))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct Check {
    /// Stable id: `agent-report`, `root-rw`, `mounts`, `nic:<name>` (`nic:<mac>` when
    /// the guest names the NIC), `failed-units`.
    /// How the guest stopped afterwards is evidence (`clean-shutdown`), not a check:
    /// a guest without an ACPI handler (no logind) is still a working guest.
    pub id: String,
    pub passed: bool,
    pub reason: String,
}

fn check(id: impl Into<String>, passed: bool, reason: impl Into<String>) -> Check {
    Check {
        id: id.into(),
        passed,
        reason: reason.into(),
    }
}

/// MACs compared by their hex digits: Linux writes `00:50:56:aa:bb:cc`, Windows
/// tools `00-50-56-AA-BB-CC`.
fn same_mac(a: &str, b: &str) -> bool {
    let hex = |s: &str| -> String {
        s.chars()
            .filter(char::is_ascii_hexdigit)
            .map(|c| c.to_ascii_lowercase())
            .collect()
    };
    let (a, b) = (hex(a), hex(b));
    a.len() == 12 && a == b
}

/// Judges the evidence. Without an agent report every guest-side check fails with
/// the reason the report is missing.
pub fn judge(expect: &Expectations, ev: &Evidence, timeout: Duration) -> Vec<Check> {
    let mut out = Vec::new();
    let Some(a) = &ev.agent else {
        let why = if let Some(d) = &ev.diagnosis {
            d.clone()
        } else if let Some(e) = &ev.ended_early {
            format!("the VM stopped before reporting: {e}")
        } else {
            format!("no report within {} s", timeout.as_secs())
        };
        out.push(check("agent-report", false, why.clone()));
        out.push(check("root-rw", false, "not reported"));
        out.push(check("mounts", false, "not reported"));
        for n in &expect.nics {
            out.push(check(n.check_id(), false, "not reported"));
        }
        out.push(check("failed-units", false, "not reported"));
        return out;
    };
    out.push(check(
        "agent-report",
        true,
        format!(
            "reported after {:.1} s",
            ev.boot_seconds.unwrap_or_default()
        ),
    ));
    out.push(check(
        "root-rw",
        a.root_rw,
        if a.root_rw {
            "/ is mounted read-write"
        } else {
            "/ is read-only"
        },
    ));
    let mut missing: Vec<String> = a
        .mounts
        .iter()
        .filter(|m| !m.ok)
        .map(|m| m.target.clone())
        .collect();
    for m in &expect.mounts {
        if !a.mounts.iter().any(|r| &r.target == m && r.ok) && !missing.contains(m) {
            missing.push(m.clone());
        }
    }
    let present: Vec<&str> = a
        .mounts
        .iter()
        .filter(|m| m.ok)
        .map(|m| m.target.as_str())
        .collect();
    out.push(if missing.is_empty() {
        check(
            "mounts",
            true,
            format!("all fstab mounts present: {}", present.join(", ")),
        )
    } else {
        check(
            "mounts",
            false,
            format!("not mounted: {}", missing.join(", ")),
        )
    });
    for n in &expect.nics {
        let id = n.check_id();
        let found = a.nics.iter().find(|r| same_mac(&r.mac, &n.mac));
        out.push(match (found, &n.name) {
            (None, _) => check(id, false, format!("no NIC with MAC {}", n.mac)),
            (Some(r), Some(want)) if &r.name != want => check(
                id,
                false,
                format!("MAC {} is named {}, expected {want}", n.mac, r.name),
            ),
            (Some(r), _) if r.ipv4.is_empty() => {
                check(id, false, format!("{} has no IPv4 address", r.name))
            }
            (Some(r), _) => check(
                id,
                true,
                format!("{} {} has {}", r.name, r.mac, r.ipv4.join(", ")),
            ),
        });
    }
    out.push(if a.failed_units.is_empty() {
        check("failed-units", true, "no failed systemd units")
    } else {
        check(
            "failed-units",
            false,
            format!("failed: {}", a.failed_units.join(", ")),
        )
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::find_report;

    fn evidence(line: &str) -> Evidence {
        Evidence {
            agent: find_report(line),
            boot_seconds: Some(30.0),
            clean_shutdown: true,
            ..Evidence::default()
        }
    }

    fn expect() -> Expectations {
        Expectations {
            mounts: vec!["/data".into()],
            nics: vec![ExpectedNic {
                name: Some("ens192".into()),
                mac: "00:50:56:aa:bb:cc".into(),
            }],
        }
    }

    #[test]
    fn a_good_report_passes_every_check() {
        let ev = evidence(
            r#"V2K-AGENT {"v":1,"ok":true,"boot":true,"root-rw":true,"mounts":[{"target":"/data","ok":true}],"nics":[{"name":"ens192","mac":"00:50:56:AA:BB:CC","ipv4":["10.0.2.15/24"]}],"failed-units":[],"uptime":20}"#,
        );
        let c = judge(&expect(), &ev, Duration::from_secs(60));
        assert!(c.iter().all(|c| c.passed), "{c:?}");
    }

    #[test]
    fn a_renamed_nic_and_a_missing_mount_fail_with_reasons() {
        let ev = evidence(
            r#"V2K-AGENT {"v":1,"ok":false,"boot":true,"root-rw":true,"mounts":[],"nics":[{"name":"enp1s0","mac":"00:50:56:aa:bb:cc","ipv4":["10.0.2.15/24"]}],"failed-units":["foo.service"],"uptime":20}"#,
        );
        let c = judge(&expect(), &ev, Duration::from_secs(60));
        let by = |id: &str| c.iter().find(|c| c.id == id).unwrap().clone();
        assert!(!by("mounts").passed && by("mounts").reason.contains("/data"));
        assert!(!by("nic:ens192").passed && by("nic:ens192").reason.contains("enp1s0"));
        assert!(!by("failed-units").passed);
    }

    #[test]
    fn a_nic_the_guest_names_itself_is_judged_by_mac_and_address() {
        // A Windows guest calls its new virtio adapter whatever it likes.
        let expect = Expectations {
            mounts: vec![],
            nics: vec![
                ExpectedNic {
                    name: None,
                    mac: "00:50:56:aa:bb:cc".into(),
                },
                ExpectedNic {
                    name: None,
                    mac: "00:50:56:aa:bb:dd".into(),
                },
            ],
        };
        let ev = evidence(
            r#"V2K-AGENT {"v":1,"ok":true,"boot":true,"root-rw":true,"mounts":[{"target":"C:","ok":true}],"nics":[{"name":"Ethernet 2","mac":"00-50-56-AA-BB-CC","ipv4":["10.0.2.15/24"]},{"name":"Ethernet 3","mac":"00:50:56:aa:bb:dd","ipv4":[]}],"failed-units":[],"uptime":90}"#,
        );
        let c = judge(&expect, &ev, Duration::from_secs(60));
        let by = |id: &str| c.iter().find(|c| c.id == id).unwrap().clone();
        assert!(by("nic:00:50:56:aa:bb:cc").passed, "{c:?}");
        let second = by("nic:00:50:56:aa:bb:dd");
        assert!(
            !second.passed && second.reason.contains("no IPv4"),
            "{second:?}"
        );
    }

    #[test]
    fn no_report_fails_with_the_diagnosis() {
        let ev = Evidence {
            timed_out: true,
            diagnosis: crate::diagnose(
                "Begin: ...\nALERT!  /dev/sda1 does not exist.  Dropping to a shell!\n",
            ),
            ..Evidence::default()
        };
        let c = judge(&expect(), &ev, Duration::from_secs(60));
        assert!(!c[0].passed);
        assert!(c[0].reason.contains("root filesystem"), "{}", c[0].reason);
    }
}
